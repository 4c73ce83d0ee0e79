//! `sapari-agent cloud-init render`: user-data that installs and converges a new server.
//!
//! The output is one `#cloud-config` document made from the templates in `cloud-init/`:
//! `write_files` carries agent.toml and a bootstrap script, and a single `runcmd` entry runs
//! the script, so what cloud-init reports is the converge's exit code (or the failed
//! download's or verification's). Every input is checked before anything is printed.

use std::fmt;

use base64ct::Encoding;

use crate::config::Config;
use crate::exit;

/// Hetzner Cloud refuses larger user-data when the server is created.
pub const USER_DATA_LIMIT: usize = 32 * 1024;
/// Where cloud-init writes the bootstrap script; it stays, so a failed first boot can be
/// finished by hand after fixing the cause.
pub const BOOTSTRAP_PATH: &str = "/usr/local/sbin/sapari-agent-bootstrap";
/// The static binary's home when it is not installed from the .deb.
pub const LOCAL_BIN: &str = "/usr/local/bin/sapari-agent";
/// The binary's path in the units, which are written for the .deb.
const PACKAGED_BIN: &str = "/usr/bin/sapari-agent";

const USER_DATA_TEMPLATE: &str = include_str!("../cloud-init/user-data.template");
const BOOTSTRAP_TEMPLATE: &str = include_str!("../cloud-init/bootstrap.sh.template");

/// The units the .deb ships; the binary download gets the same ones, with ExecStart= moved
/// to [`LOCAL_BIN`].
pub const UNITS: [(&str, &str); 4] = [
    (
        "sapari-agent.service",
        include_str!("../units/sapari-agent.service"),
    ),
    (
        "sapari-agent.timer",
        include_str!("../units/sapari-agent.timer"),
    ),
    (
        "sapari-docker-firewall.service",
        include_str!("../units/sapari-docker-firewall.service"),
    ),
    (
        "sapari-firewall-boot.service",
        include_str!("../units/sapari-firewall-boot.service"),
    ),
];

const UNIT_EOF: &str = "SAPARI_AGENT_UNIT_EOF";
/// write_files entries start at column 2 (`  - path:`), so their keys sit at column 4.
const ENTRY_INDENT: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Installed with `apt-get install ./file.deb`; the package brings the units.
    Deb,
    /// The static binary, installed to [`LOCAL_BIN`] with the units written next to it.
    Binary,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    /// Normalised by the URL parser: ASCII, no whitespace.
    pub url: String,
    pub kind: Kind,
    /// Lowercase, as sha256sum prints it.
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RenderError {
    /// A bad `--artifact-url` or `--sha256`.
    Usage(String),
    /// The configuration is invalid or makes the user-data too large.
    Config(String),
}

impl RenderError {
    pub fn exit_code(&self) -> i32 {
        match self {
            RenderError::Usage(_) => exit::USAGE,
            RenderError::Config(_) => exit::CONFIG,
        }
    }
}

impl fmt::Display for RenderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RenderError::Usage(m) | RenderError::Config(m) => f.write_str(m),
        }
    }
}

pub fn parse_artifact(url: &str, sha256: &str) -> Result<Artifact, RenderError> {
    let usage = |m: String| RenderError::Usage(m);
    let u = reqwest::Url::parse(url.trim())
        .map_err(|e| usage(format!("--artifact-url `{url}` is not a valid URL: {e}")))?;
    if !matches!(u.scheme(), "http" | "https") {
        return Err(usage(format!(
            "--artifact-url `{url}` must be an http:// or https:// URL (the server downloads it with curl, wget or python3; the sha256 check makes plain http safe)"
        )));
    }
    if u.host_str().is_none_or(str::is_empty) {
        return Err(usage(format!("--artifact-url `{url}` has no host")));
    }
    let kind = if u.path().to_ascii_lowercase().ends_with(".deb") {
        Kind::Deb
    } else {
        Kind::Binary
    };
    let hex = |s: &str| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit());
    let sha = sha256.trim();
    if !hex(sha) {
        let hint = if sha.split_whitespace().next().is_some_and(hex) {
            " (pass the hash alone, without sha256sum's file name)"
        } else {
            ""
        };
        return Err(usage(format!(
            "--sha256 must be 64 hexadecimal digits, as `sha256sum FILE` prints them; got `{sha}`{hint}"
        )));
    }
    Ok(Artifact {
        url: u.as_str().to_string(),
        kind,
        sha256: sha.to_ascii_lowercase(),
    })
}

/// The user-data for `config_text` (already validated) and `artifact`.
pub fn render_user_data(config_text: &str, artifact: &Artifact) -> Result<String, RenderError> {
    let version = crate::engine::VERSION;
    let (kind, units) = match artifact.kind {
        Kind::Deb => (
            "deb",
            "  : # not reached: the package brings its units".into(),
        ),
        Kind::Binary => ("binary", units_heredocs()),
    };
    let script = fill(
        BOOTSTRAP_TEMPLATE,
        &[
            ("VERSION", version),
            ("BOOTSTRAP_PATH", BOOTSTRAP_PATH),
            ("URL_SH", &sh_quote(&artifact.url)),
            ("SHA256", &artifact.sha256),
            ("KIND", kind),
            // whole-line placeholders: the template's line break ends the value's last line
            ("UNITS", units.strip_suffix('\n').unwrap_or(&units)),
        ],
    );
    let config_lines = write_files_content(config_text, ENTRY_INDENT);
    let script_lines = write_files_content(&script, ENTRY_INDENT);
    let user_data = fill(
        USER_DATA_TEMPLATE,
        &[
            ("VERSION", version),
            ("URL", &artifact.url),
            ("SHA256", &artifact.sha256),
            ("BOOTSTRAP_PATH", BOOTSTRAP_PATH),
            (
                "CONFIG",
                config_lines.strip_suffix('\n').unwrap_or(&config_lines),
            ),
            (
                "BOOTSTRAP",
                script_lines.strip_suffix('\n').unwrap_or(&script_lines),
            ),
        ],
    );
    if user_data.len() > USER_DATA_LIMIT {
        return Err(RenderError::Config(format!(
            "the user-data would be {} bytes, over Hetzner's limit of {USER_DATA_LIMIT} bytes (32 KiB); the configuration is {} bytes of it: remove comments and settings left at their defaults",
            user_data.len(),
            config_text.len()
        )));
    }
    Ok(user_data)
}

/// Things in a valid configuration that will make the first converge fail on a new server.
pub fn warnings(cfg: &Config) -> Vec<String> {
    let mut w = Vec::new();
    if cfg.ufw.enabled && cfg.access.operator_ips.is_empty() && !cfg.ufw.ssh_only_via_tailscale {
        w.push(
            "access.operator_ips is empty: the first converge's ufw step will refuse to run (set operator_ips, or ufw.ssh_only_via_tailscale = true)".to_string(),
        );
    }
    if cfg.tailscale.enabled {
        w.push(format!(
            "tailscale is enabled, but its auth key file {} is not part of the user-data (every process on the server can read user-data from the metadata service): tailscale fails on the first converge until the key is there; the timer or `sapari-agent converge` then finishes",
            cfg.tailscale.auth_key_file
        ));
    }
    if cfg.users.authorized_keys.is_empty() && !cfg.users.import_root_keys {
        w.push(
            "users.authorized_keys is empty and users.import_root_keys is false: sshd will refuse to turn off password login, since nobody could log in with a key".to_string(),
        );
    }
    w
}

/// Shell commands (inside the bootstrap's `case`) that write the units for [`LOCAL_BIN`].
fn units_heredocs() -> String {
    let mut s = String::new();
    for (name, text) in UNITS {
        let mut body = local_unit(text);
        if !body.ends_with('\n') {
            body.push('\n');
        }
        s.push_str(&format!(
            "  cat > \"$units/{name}\" <<'{UNIT_EOF}' || fail 70 \"cannot write $units/{name}\"\n{body}{UNIT_EOF}\n"
        ));
    }
    s
}

/// A unit with its Exec*= lines pointed at [`LOCAL_BIN`]; comments stay as they are.
pub fn local_unit(text: &str) -> String {
    text.split_inclusive('\n')
        .map(|l| {
            if l.starts_with("Exec") {
                l.replace(PACKAGED_BIN, LOCAL_BIN)
            } else {
                l.to_string()
            }
        })
        .collect()
}

/// Replaces `@NAME@` placeholders of `template` in one pass, so values are never scanned: a
/// comment in agent.toml that says `@URL@` stays as it is.
fn fill(template: &str, vars: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(i) = rest.find('@') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let hit = vars
            .iter()
            .find(|(k, _)| after.strip_prefix(k).is_some_and(|r| r.starts_with('@')));
        match hit {
            Some((k, v)) => {
                out.push_str(v);
                rest = &after[k.len() + 1..];
            }
            None => {
                out.push('@');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The `content:` (and `encoding:`) lines of a write_files entry whose keys are at column
/// `indent`, holding `text` byte for byte. A literal block keeps the file readable in the
/// Hetzner console; base64 takes what a block cannot hold exactly (tabs, CR, control
/// characters, text of nothing but line breaks).
pub fn write_files_content(text: &str, indent: usize) -> String {
    let pad = " ".repeat(indent);
    if text.is_empty() {
        return format!("{pad}content: \"\"\n");
    }
    if !literal_ok(text) {
        return format!(
            "{pad}encoding: b64\n{pad}content: {}\n",
            base64ct::Base64::encode_string(text.as_bytes())
        );
    }
    let body = text.strip_suffix('\n').unwrap_or(text);
    let chomp = match text.len() - text.trim_end_matches('\n').len() {
        0 => "-",
        1 => "",
        _ => "+",
    };
    // The explicit indentation indicator lets the first line start with spaces.
    let mut out = format!("{pad}content: |2{chomp}\n");
    for line in body.split('\n') {
        if !line.is_empty() {
            out.push_str(&pad);
            out.push_str("  ");
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

/// Whether a YAML literal block reproduces `text` exactly: only printable characters and
/// `\n` (YAML folds CR and treats NEL, LS and PS as line breaks), and at least one line
/// that is not empty (a block of only empty lines loses them under clip chomping).
fn literal_ok(text: &str) -> bool {
    let printable = |c: char| match c {
        '\n' | ' '..='~' => true,
        '\u{85}' | '\u{2028}' | '\u{2029}' | '\u{feff}' | '\u{fffe}' | '\u{ffff}' => false,
        c => c >= '\u{a0}',
    };
    text.chars().all(printable) && text.chars().any(|c| c != '\n')
}

#[cfg(test)]
mod tests;
