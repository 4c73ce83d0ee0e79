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
mod tests {
    use super::*;
    use crate::config;

    const SHA: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn artifact(url: &str) -> Artifact {
        parse_artifact(url, SHA).unwrap()
    }

    /// Reads back `content:` of the write_files entry for `path` the way YAML does for the
    /// subset [`write_files_content`] emits (literal block with indicator 2, or b64).
    fn decode_content(user_data: &str, path: &str) -> String {
        let lines: Vec<&str> = user_data.lines().collect();
        let start = lines
            .iter()
            .position(|l| *l == format!("  - path: {path}"))
            .unwrap_or_else(|| panic!("no write_files entry for {path}"));
        let mut i = start + 1;
        let mut b64 = false;
        loop {
            let l = lines[i];
            if l == "    encoding: b64" {
                b64 = true;
            }
            if let Some(v) = l.strip_prefix("    content: ") {
                if b64 {
                    let bytes = base64ct::Base64::decode_vec(v).unwrap();
                    return String::from_utf8(bytes).unwrap();
                }
                if v == "\"\"" {
                    return String::new();
                }
                let chomp = v
                    .strip_prefix("|2")
                    .expect("literal block with indicator 2");
                let mut body: Vec<&str> = Vec::new();
                for l in &lines[i + 1..] {
                    if l.is_empty() {
                        body.push("");
                    } else if let Some(c) = l.strip_prefix("      ") {
                        body.push(c);
                    } else {
                        break;
                    }
                }
                let mut s: String = body.iter().map(|l| format!("{l}\n")).collect();
                match chomp {
                    "-" => {
                        s.pop();
                    }
                    "" => {
                        while s.ends_with("\n\n") {
                            s.pop();
                        }
                    }
                    "+" => {}
                    other => panic!("unexpected chomping {other:?}"),
                }
                return s;
            }
            i += 1;
        }
    }

    fn example() -> &'static str {
        include_str!("../examples/agent.toml")
    }

    #[test]
    fn binary_user_data_installs_units_pointing_at_local_bin() {
        let a = artifact("https://example.com/releases/0.1.0/sapari-agent-x86_64");
        assert_eq!(a.kind, Kind::Binary);
        let u = render_user_data(example(), &a).unwrap();
        assert!(u.starts_with("#cloud-config\n"), "{u}");
        assert!(u.len() <= USER_DATA_LIMIT);
        let script = decode_content(&u, BOOTSTRAP_PATH);
        assert!(script.starts_with("#!/bin/sh\n"));
        assert!(script.contains("KIND=binary\n"), "{script}");
        assert!(script.contains(&format!("SHA256={SHA}\n")));
        assert!(script.contains("URL='https://example.com/releases/0.1.0/sapari-agent-x86_64'\n"));
        for (name, text) in UNITS {
            assert!(
                script.contains(&format!("\"$units/{name}\"")),
                "{name} not written"
            );
            let local = local_unit(text);
            assert!(script.contains(&local), "{name} not verbatim");
            for l in local.lines().filter(|l| l.starts_with("Exec")) {
                assert!(
                    l.contains(LOCAL_BIN) && !l.contains(PACKAGED_BIN),
                    "{name}: {l}"
                );
            }
            assert!(
                !local.lines().any(|l| l == UNIT_EOF),
                "{name} contains the heredoc terminator"
            );
        }
        assert!(!u.contains(&format!("@{}", "UNITS@")), "placeholder left");
    }

    #[test]
    fn the_repo_units_run_the_packaged_binary() {
        // If the units stop naming /usr/bin/sapari-agent, the rewrite to /usr/local/bin
        // silently does nothing and the binary install gets units that run nothing.
        for (name, text) in UNITS.iter().filter(|(n, _)| n.ends_with(".service")) {
            assert!(
                text.lines()
                    .any(|l| l.starts_with("ExecStart=") && l.contains(PACKAGED_BIN)),
                "{name}"
            );
        }
    }

    #[test]
    fn deb_user_data_installs_the_package_and_writes_no_units() {
        for url in [
            "https://example.com/sapari-agent_0.1.0_amd64.deb",
            "https://example.com/dl/sapari-agent_0.1.0_amd64.DEB?token=abc",
        ] {
            let a = artifact(url);
            assert_eq!(a.kind, Kind::Deb, "{url}");
            let u = render_user_data(example(), &a).unwrap();
            let script = decode_content(&u, BOOTSTRAP_PATH);
            assert!(script.contains("KIND=deb\n"));
            assert!(!script.contains("[Unit]"), "units in a .deb bootstrap");
            assert!(script.contains("apt-get install -y"));
        }
    }

    #[test]
    fn exactly_one_runcmd_entry_runs_the_bootstrap() {
        let u = render_user_data(example(), &artifact("http://10.0.2.100/sapari-agent")).unwrap();
        let after: Vec<&str> = u
            .split_once("\nruncmd:\n")
            .expect("runcmd")
            .1
            .lines()
            .collect();
        assert_eq!(
            after,
            [format!("  - [/bin/sh, {BOOTSTRAP_PATH}]").as_str()],
            "{u}"
        );
        // top-level keys: only these two modules
        let keys: Vec<&str> = u
            .lines()
            .filter(|l| !l.starts_with([' ', '#']) && !l.is_empty())
            .collect();
        assert_eq!(keys, ["write_files:", "runcmd:"]);
    }

    #[test]
    fn the_config_arrives_byte_for_byte() {
        let a = artifact("https://example.com/sapari-agent");
        let tricky = [
            example().to_string(),
            "[swap]\nsize = \"2G\"".to_string(), // no final newline
            "[swap]\nsize = \"2G\"\n\n\n".to_string(), // several
            "  # indented first line\n[swap]\n   \nsize = \"2G\"\n".to_string(),
            "# déjà vu, 日本\n[hostname]\nname = \"a\"\n".to_string(),
            "\n\n[swap]\nsize = \"2G\"\n".to_string(),
            "[swap]\n\tsize = \"2G\"\n".to_string(), // tab: base64
            "[swap]\r\nsize = \"2G\"\r\n".to_string(), // CRLF: base64
            "\n".to_string(),
            String::new(),
            "# @URL@ @SHA256@ @CONFIG@\n".to_string(), // placeholders are not expanded twice
        ];
        for t in tricky {
            let u = render_user_data(&t, &a).unwrap();
            assert_eq!(
                decode_content(&u, "/etc/sapari-agent/agent.toml"),
                t,
                "round trip of {t:?}\n{u}"
            );
        }
        let u = render_user_data("[swap]\n\tsize = \"2G\"\n", &a).unwrap();
        assert!(u.contains("    encoding: b64\n"));
        let u = render_user_data(example(), &a).unwrap();
        assert!(
            u.contains("      lock_timeout = \"2m\"\n"),
            "readable, not base64"
        );
    }

    #[test]
    fn urls_and_hashes_are_checked() {
        for bad in [
            "ftp://example.com/a",
            "file:///tmp/sapari-agent",
            "example.com/sapari-agent",
            "",
            "https://",
        ] {
            let e = parse_artifact(bad, SHA).unwrap_err();
            assert_eq!(e.exit_code(), exit::USAGE, "{bad}: {e}");
            assert!(e.to_string().contains("--artifact-url"), "{e}");
        }
        for bad in [
            &SHA[1..],
            &format!("{SHA}0"),
            &SHA.replace('a', "g"),
            "",
            "sha256:abc",
        ] {
            let e = parse_artifact("https://example.com/a", bad).unwrap_err();
            assert_eq!(e.exit_code(), exit::USAGE, "{bad}");
            assert!(e.to_string().contains("64 hexadecimal digits"), "{e}");
        }
        let e =
            parse_artifact("https://example.com/a", &format!("{SHA}  sapari-agent")).unwrap_err();
        assert!(
            e.to_string().contains("without sha256sum's file name"),
            "{e}"
        );
        let a = parse_artifact(" https://Example.COM/a ", &SHA.to_uppercase()).unwrap();
        assert_eq!(a.sha256, SHA);
        assert_eq!(a.url, "https://example.com/a");
    }

    #[test]
    fn a_url_with_quotes_stays_one_shell_word() {
        let a = artifact("https://example.com/it's/$(reboot)/a");
        let u = render_user_data("", &a).unwrap();
        let script = decode_content(&u, BOOTSTRAP_PATH);
        assert!(
            script.contains(r"URL='https://example.com/it'\''s/$(reboot)/a'"),
            "{script}"
        );
    }

    #[test]
    fn oversized_user_data_is_refused_with_its_size() {
        let big = format!("# {}\n", "x".repeat(USER_DATA_LIMIT));
        let e = render_user_data(&big, &artifact("https://example.com/a")).unwrap_err();
        assert_eq!(e.exit_code(), exit::CONFIG);
        let m = e.to_string();
        assert!(m.contains("32768"), "{m}");
        assert!(m.contains(&format!("{} bytes of it", big.len())), "{m}");
    }

    #[test]
    fn templates_have_only_known_placeholders() {
        let known = [
            "VERSION",
            "BOOTSTRAP_PATH",
            "URL_SH",
            "URL",
            "SHA256",
            "KIND",
            "UNITS",
            "CONFIG",
            "BOOTSTRAP",
        ];
        for t in [USER_DATA_TEMPLATE, BOOTSTRAP_TEMPLATE] {
            for (i, _) in t.match_indices('@') {
                let rest = &t[i + 1..];
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_uppercase() || *c == '_' || c.is_ascii_digit())
                    .collect();
                if !name.is_empty() && rest[name.len()..].starts_with('@') {
                    assert!(
                        known.contains(&name.as_str()),
                        "unknown placeholder @{name}@"
                    );
                }
            }
        }
        let u = render_user_data(example(), &artifact("https://example.com/a")).unwrap();
        let script = decode_content(&u, BOOTSTRAP_PATH);
        for k in known {
            let p = format!("@{k}@");
            assert!(!u.contains(&p) && !script.contains(&p), "{p} left");
        }
    }

    #[test]
    fn the_bootstrap_is_valid_sh() {
        for url in ["https://example.com/a", "https://example.com/a.deb"] {
            let u = render_user_data(example(), &artifact(url)).unwrap();
            let script = decode_content(&u, BOOTSTRAP_PATH);
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("bootstrap");
            std::fs::write(&p, &script).unwrap();
            // -n: parse only. The script is never run here: it installs and converges.
            let o = std::process::Command::new("sh")
                .arg("-n")
                .arg(&p)
                .output()
                .unwrap();
            assert!(
                o.status.success(),
                "{url}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
    }

    #[test]
    fn output_is_deterministic() {
        let a = artifact("https://example.com/a");
        assert_eq!(
            render_user_data(example(), &a).unwrap(),
            render_user_data(example(), &a).unwrap()
        );
    }

    #[test]
    fn warnings_name_what_will_fail_on_first_boot() {
        let c = config::parse(example(), None).unwrap();
        let w = warnings(&c);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("tailscale"), "{w:?}");
        let mut c = Config::default();
        c.tailscale.enabled = false;
        c.users.import_root_keys = false;
        let w = warnings(&c).join("\n");
        assert!(w.contains("operator_ips"), "{w}");
        assert!(w.contains("import_root_keys"), "{w}");
    }

    #[test]
    fn validate_file_ignores_ownership_but_not_content() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("agent.toml");
        std::fs::write(&p, "[swap]\nsize = \"2G\"\n").unwrap();
        // group- and world-writable: load() refuses it, render has no business doing so
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o666)).unwrap();
        let (c, text) = config::validate_file(&p).unwrap();
        assert_eq!(c.swap.size, config::Size(2 << 30));
        assert_eq!(text, "[swap]\nsize = \"2G\"\n");
        std::fs::write(&p, "[swap]\nsize = \"2X\"\n").unwrap();
        let e = config::validate_file(&p).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("swap.size"));
        assert!(config::validate_file(&d.path().join("missing.toml")).is_err());
    }
}
