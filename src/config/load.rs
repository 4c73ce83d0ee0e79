//! Reading `agent.toml`: errors that name the file, line, column and field; loading with
//! the ownership checks; command-line overrides.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use super::{Config, DEFAULT_PATH};
use crate::host::files::{self, Entry, Kind};

/// A configuration problem: names the file, where in it, the field and what is allowed.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub file: Option<PathBuf>,
    pub line_col: Option<(usize, usize)>,
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "configuration error")?;
        if let Some(file) = &self.file {
            write!(f, " in {}", file.display())?;
            if let Some((l, c)) = self.line_col {
                write!(f, ":{l}:{c}")?;
            }
        }
        if let Some(field) = &self.field {
            write!(f, ": field `{field}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl ConfigError {
    fn plain(file: Option<&Path>, message: impl Into<String>) -> Self {
        Self {
            file: file.map(Path::to_path_buf),
            line_col: None,
            field: None,
            message: message.into(),
        }
    }
}

/// Parse a TOML document. `file` is only used to name the source in errors.
pub fn parse(text: &str, file: Option<&Path>) -> Result<Config, ConfigError> {
    let de = toml::Deserializer::parse(text).map_err(|e| from_toml(e, text, file, None))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let field = (path != ".").then_some(path);
        from_toml(e.into_inner(), text, file, field)
    })
}

fn from_toml(
    e: toml::de::Error,
    text: &str,
    file: Option<&Path>,
    field: Option<String>,
) -> ConfigError {
    let line_col = e.span().map(|s| line_col(text, s.start));
    ConfigError {
        file: file.map(Path::to_path_buf),
        line_col,
        field,
        message: e.message().trim().to_string(),
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, col)
}

/// How a config file on disk may be owned: only root (or the user running a read-only
/// command) may be able to write it, since its contents decide what root does.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ownership {
    pub uid: u32,
    pub mode: u32,
}

pub fn check_ownership(path: &Path, own: Ownership, euid: u32) -> Result<(), ConfigError> {
    if own.uid != 0 && own.uid != euid {
        return Err(ConfigError::plain(
            Some(path),
            format!(
                "owned by uid {}; it decides what root does, so only root may own it (fix: chown root:root {})",
                own.uid,
                path.display()
            ),
        ));
    }
    if own.mode & 0o022 != 0 {
        return Err(ConfigError::plain(
            Some(path),
            format!(
                "mode {:04o} lets users other than its owner write it (fix: chmod go-w {})",
                own.mode & 0o7777,
                path.display()
            ),
        ));
    }
    Ok(())
}

/// Load the config. A missing file at the default location means "all defaults"; a
/// missing file that was asked for by name is an error.
pub fn load(path: Option<&Path>, euid: u32) -> Result<(Config, Option<PathBuf>), ConfigError> {
    let (path, explicit) = match path {
        Some(p) => (p.to_path_buf(), true),
        None => (PathBuf::from(DEFAULT_PATH), false),
    };
    let meta = match files::stat(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
            return Ok((Config::default(), None));
        }
        Err(e) => {
            return Err(ConfigError::plain(Some(&path), format!("cannot read: {e}")));
        }
    };
    if meta.kind != Kind::File {
        return Err(ConfigError::plain(Some(&path), "not a regular file"));
    }
    let own = |m: &Entry| Ownership {
        uid: m.spec.uid,
        mode: m.spec.mode,
    };
    check_ownership(&path, own(&meta), euid)?;
    // Whoever can write the directory can replace the file, unless the sticky bit
    // (as on /tmp) stops them from touching files they do not own.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && let Ok(dm) = files::stat(dir)
        && dm.spec.mode & 0o1000 == 0
    {
        check_ownership(dir, own(&dm), euid)?;
    }
    let text = files::read_to_string(&path)
        .map_err(|e| ConfigError::plain(Some(&path), format!("cannot read: {e}")))?;
    // An empty file is a truncated one (an interrupted copy, a full disk), not a request for
    // the defaults: those would undo whatever the lost settings said. No file means defaults.
    if text.trim().is_empty() {
        return Err(ConfigError::plain(
            Some(&path),
            "the file is empty (truncated?): write the settings into it, or delete it to use the defaults",
        ));
    }
    let cfg = parse(&text, Some(&path))?;
    // Files the config points to decide what root does too (a CA decides which list server
    // is believed): the same ownership rule applies.
    if let Some(ca) = &cfg.firewall.ca_file
        && let Ok(m) = files::stat(&ca.0)
    {
        check_ownership(&ca.0, own(&m), euid).map_err(|mut e| {
            e.field = Some("firewall.ca_file".into());
            e
        })?;
    }
    Ok((cfg, Some(path)))
}

/// Read and validate a configuration meant for another machine (`cloud-init render`): the
/// same parsing and validation as [`load`], without its ownership checks, which are about the
/// copy root reads on the server. Returns the text too, so the caller ships exactly what was
/// validated.
pub fn validate_file(path: &Path) -> Result<(Config, String), ConfigError> {
    let text = files::read_to_string(path)
        .map_err(|e| ConfigError::plain(Some(path), format!("cannot read: {e}")))?;
    let cfg = parse(&text, Some(path))?;
    Ok((cfg, text))
}

/// Apply command-line overrides (`--my-ip`, `--hostname`), validated like file values.
pub fn apply_overrides(
    cfg: &mut Config,
    my_ips: &[String],
    hostname: Option<&str>,
) -> Result<(), ConfigError> {
    for ip in my_ips {
        let ip: IpAddr = ip.parse().map_err(|_| ConfigError {
            file: None,
            line_col: None,
            field: Some("--my-ip".into()),
            message: format!("`{ip}` is not an IPv4 or IPv6 address"),
        })?;
        if !cfg.access.operator_ips.contains(&ip) {
            cfg.access.operator_ips.push(ip);
        }
    }
    if let Some(name) = hostname {
        cfg.hostname.name = name.parse().map_err(|message| ConfigError {
            file: None,
            line_col: None,
            field: Some("--hostname".into()),
            message,
        })?;
    }
    Ok(())
}
