//! `agent.toml`: schema, defaults that mirror the launch runbook, and validation.
//!
//! Validation lives in the `Deserialize` impls of small newtypes so that every error
//! comes back from the TOML parser with its span, which is how we can name the line,
//! column and field path of a bad value instead of just "invalid config".

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

pub const DEFAULT_PATH: &str = "/etc/sapari-agent/agent.toml";

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub agent: AgentSettings,
    pub access: Access,
    pub hostname: HostnameSettings,
    pub users: UsersSettings,
    pub sshd: SshdSettings,
    pub deploy_key: DeployKeySettings,
    pub ufw: UfwSettings,
    pub firewall: FirewallSettings,
    pub swap: SwapSettings,
    pub tailscale: TailscaleSettings,
    pub packages: PackagesSettings,
    pub docker: DockerSettings,
    pub compose: ComposeSettings,
    pub ntp: NtpSettings,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct UsersSettings {
    /// The non-root account operators and CI log in as.
    pub name: Username,
    /// Public keys (authorized_keys lines) that may log in as that user.
    pub authorized_keys: Vec<AuthorizedKey>,
    /// Also install the keys cloud-init put in /root/.ssh/authorized_keys (Hetzner project keys).
    pub import_root_keys: bool,
    /// Remove keys from the user's authorized_keys that are not listed above. Off by default
    /// so keys added by hand (the CI key from `ssh-copy-id`) survive timer runs.
    pub exclusive_keys: bool,
    /// NOPASSWD sudo for the user (intentional for CD: SSH is key-only and tailnet-gated).
    pub passwordless_sudo: bool,
}

impl Default for UsersSettings {
    fn default() -> Self {
        Self {
            name: Username("deploy".into()),
            authorized_keys: Vec::new(),
            import_root_keys: true,
            exclusive_keys: false,
            passwordless_sudo: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SshdSettings {
    /// Drop-in file name in /etc/ssh/sshd_config.d/; must sort before 50-cloud-init.conf,
    /// because sshd keeps the first value it reads.
    pub drop_in: DropInName,
    /// Only these users may log in (empty: no AllowUsers line).
    pub allow_users: Vec<Username>,
    /// Only members of these groups may log in (empty: no AllowGroups line).
    pub allow_groups: Vec<Username>,
    /// Add curve25519-sha256 to the key exchanges, for clients without sntrup761
    /// (Go's x/crypto/ssh as used by Terraform and some CI actions, paramiko).
    pub compat_kex: bool,
    /// Comment out managed settings in drop-ins that sort before ours instead of failing.
    pub neutralize_overrides: bool,
}

impl Default for SshdSettings {
    fn default() -> Self {
        Self {
            drop_in: DropInName("10-sapari-agent.conf".into()),
            allow_users: Vec::new(),
            allow_groups: Vec::new(),
            compat_kex: false,
            neutralize_overrides: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DeployKeySettings {
    pub enabled: bool,
    /// Private key path; default `<home of users.name>/.ssh/github_deploy_key`.
    pub path: Option<AbsPath>,
    /// Comment stored in the public key (shows up in GitHub's Deploy keys list).
    pub comment: String,
}

impl Default for DeployKeySettings {
    fn default() -> Self {
        Self {
            enabled: true,
            path: None,
            comment: "sapari-prod deploy key".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AgentSettings {
    /// How long a converge waits for another run's lock before giving up.
    pub lock_timeout: Interval,
    /// Where the last run's report is kept.
    pub state_dir: PathBuf,
}

impl Default for AgentSettings {
    fn default() -> Self {
        Self {
            lock_timeout: Interval(Duration::from_secs(120)),
            state_dir: PathBuf::from("/var/lib/sapari-agent"),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Access {
    /// Operator addresses allowed to reach SSH (`setup-server.sh --my-ip`).
    pub operator_ips: Vec<IpAddr>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HostnameSettings {
    pub name: Hostname,
    /// Tell cloud-init not to put the image's hostname back on the next boot.
    pub preserve_in_cloud_init: bool,
}

impl Default for HostnameSettings {
    fn default() -> Self {
        Self {
            name: Hostname("sapari-prod".into()),
            preserve_in_cloud_init: true,
        }
    }
}

/// How SSH from the tailnet is admitted.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TailscaleSsh {
    /// `allow in on tailscale0 to any port 22`: whatever arrives through the tunnel.
    Interface,
    /// From the tailnet address ranges (`tailscale_cidrs`), on any interface.
    Cidr,
    /// No Tailscale rule.
    Off,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct UfwSettings {
    pub enabled: bool,
    pub ssh_port: u16,
    pub tailscale: TailscaleSsh,
    #[serde(deserialize_with = "interface_name")]
    pub tailscale_interface: String,
    pub tailscale_cidrs: Vec<ipnet::IpNet>,
    /// Delete rules the agent did not declare (otherwise they are reported as drift).
    pub prune: bool,
    /// Accept a rule set in which SSH is reachable only over Tailscale (no operator IP).
    pub ssh_only_via_tailscale: bool,
}

impl Default for UfwSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            ssh_port: 22,
            tailscale: TailscaleSsh::Interface,
            tailscale_interface: "tailscale0".into(),
            tailscale_cidrs: vec![
                "100.64.0.0/10".parse().expect("literal"),
                "fd7a:115c:a1e0::/48".parse().expect("literal"),
            ],
            prune: false,
            ssh_only_via_tailscale: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FirewallSettings {
    /// Manage the DOCKER-USER chain (Cloudflare-only :443).
    pub enabled: bool,
    /// WAN interface; empty means the interface of the default route.
    #[serde(deserialize_with = "interface_name_or_empty")]
    pub wan_interface: String,
    /// Cloudflare's published lists (HTTPS).
    pub list_url_v4: String,
    pub list_url_v6: String,
    /// Extra CA certificate (PEM) to trust for the list URLs, e.g. a local mirror.
    pub ca_file: Option<AbsPath>,
    pub fetch_timeout: Interval,
    /// Largest list body accepted, in bytes.
    pub max_list_bytes: u64,
    /// Most CIDRs accepted in one family's list.
    pub max_entries: usize,
    /// Ports besides 443 that Docker may publish to the whole internet. New connections from
    /// the WAN to any other published port are dropped (the origin lock's `published` chain).
    pub public_ports: Vec<PublicPort>,
}

impl Default for FirewallSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            wan_interface: String::new(),
            list_url_v4: "https://www.cloudflare.com/ips-v4".into(),
            list_url_v6: "https://www.cloudflare.com/ips-v6".into(),
            ca_file: None,
            fetch_timeout: Interval(Duration::from_secs(10)),
            max_list_bytes: 64 * 1024,
            max_entries: 1000,
            public_ports: Vec::new(),
        }
    }
}

/// Which resource profile sizes the compose services.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ProfileChoice {
    /// cpx62 on a box with at least 16 vCPUs and 30 GiB, staging otherwise.
    Auto,
    /// The runbook's production values for a CPX62 (16 vCPU, 32 GB).
    Cpx62,
    /// The compose file's own defaults.
    Staging,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ComposeSettings {
    pub enabled: bool,
    /// The checked-out application (Phase 3.1: `git clone ... ~/sapari`).
    pub project_dir: AbsPath,
    /// Relative to project_dir.
    pub compose_file: String,
    /// The operator's env file, relative to project_dir; read, never written.
    pub env_file: String,
    /// Compose project name; empty: compose's default (the directory name).
    pub project_name: String,
    pub profile: ProfileChoice,
    /// Values that win over the profile, e.g. `WEB_MEMORY = "5g"`: environment variable
    /// names, and values compose.env holds single-quoted, so compose keeps `$` and `#`.
    #[serde(deserialize_with = "compose_overrides")]
    pub overrides: std::collections::BTreeMap<String, String>,
    /// Memory kept free of container limits; more is a failure before anything changes.
    pub memory_headroom: Size,
    /// Relative to project_dir: a changed Caddyfile forces `up -d --force-recreate` of
    /// `caddy_service` (the runbook's F1: the bind mount keeps the old inode).
    pub caddyfile: String,
    pub caddy_service: String,
    /// Checked by `status` (the runbook's post-deploy checks).
    pub health_urls: Vec<String>,
}

impl Default for ComposeSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            project_dir: AbsPath(PathBuf::from("/home/deploy/sapari")),
            compose_file: "docker-compose.prod.yml".into(),
            env_file: ".env".into(),
            project_name: String::new(),
            profile: ProfileChoice::Auto,
            overrides: Default::default(),
            memory_headroom: Size(2 << 30),
            caddyfile: "caddy/Caddyfile".into(),
            caddy_service: "caddy".into(),
            health_urls: vec![
                "http://localhost:8000/health".into(),
                "http://localhost:8000/health/ready".into(),
            ],
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DockerSource {
    /// Docker's own apt repository (what the runbook's get.docker.com install gives).
    Official,
    /// The distribution's docker.io and compose packages.
    Distro,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DockerSettings {
    pub enabled: bool,
    pub source: DockerSource,
    /// How long to wait for the dpkg lock before installing.
    pub lock_timeout: Interval,
}

impl Default for DockerSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            source: DockerSource::Official,
            lock_timeout: Interval(Duration::from_secs(600)),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PackagesSettings {
    pub enabled: bool,
    /// Installed in one apt transaction when missing.
    pub install: Vec<String>,
    /// `apt-get update` first when the package lists are older than this (or lack a package).
    pub lists_max_age: Interval,
    /// How long to wait for the dpkg lock (cloud-init and unattended-upgrades hold it at
    /// first boot) before failing with the holder's name.
    pub lock_timeout: Interval,
    /// fail2ban's sshd jail: failures within `findtime` before a ban of `bantime`.
    pub fail2ban_maxretry: u32,
    pub fail2ban_findtime: Interval,
    pub fail2ban_bantime: Interval,
}

impl Default for PackagesSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            install: [
                "unattended-upgrades",
                "fail2ban",
                "python3-systemd",
                "nftables",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
            lists_max_age: Interval(Duration::from_secs(24 * 3600)),
            lock_timeout: Interval(Duration::from_secs(600)),
            fail2ban_maxretry: 5,
            fail2ban_findtime: Interval(Duration::from_secs(600)),
            fail2ban_bantime: Interval(Duration::from_secs(3600)),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TailscaleSettings {
    pub enabled: bool,
    /// One-time or reusable auth key, in a root-only (0600) file: never on a command line.
    pub auth_key_file: AbsPath,
    /// Tailnet machine name; empty means `hostname.name`.
    pub hostname: String,
    /// ACL tags to advertise (CI's ACL grants `tag:ci -> tag:server`).
    #[serde(deserialize_with = "tailscale_tags")]
    pub tags: Vec<String>,
}

impl Default for TailscaleSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            auth_key_file: AbsPath(PathBuf::from("/etc/sapari-agent/tailscale.key")),
            hostname: String::new(),
            tags: vec!["tag:server".into()],
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SwapSettings {
    pub enabled: bool,
    pub path: AbsPath,
    pub size: Size,
    /// Active swap elsewhere (a `/swap.img`, a partition) of at least `size` in total
    /// counts as done: the runbook only needs enough swap, not this particular file.
    pub accept_existing: bool,
}

impl Default for SwapSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            path: AbsPath(PathBuf::from("/swapfile")),
            size: Size(4 << 30),
            accept_existing: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NtpSettings {
    /// An unsynchronized clock fails the run (JWT media tokens and ACME break with skew).
    pub require_sync: bool,
    /// How long a converge waits for the clock to synchronize.
    pub sync_timeout: Interval,
}

impl Default for NtpSettings {
    fn default() -> Self {
        Self {
            require_sync: true,
            sync_timeout: Interval(Duration::from_secs(60)),
        }
    }
}

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
    use std::os::unix::fs::MetadataExt;
    let (path, explicit) = match path {
        Some(p) => (p.to_path_buf(), true),
        None => (PathBuf::from(DEFAULT_PATH), false),
    };
    let meta = match std::fs::metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
            return Ok((Config::default(), None));
        }
        Err(e) => {
            return Err(ConfigError::plain(Some(&path), format!("cannot read: {e}")));
        }
    };
    if !meta.is_file() {
        return Err(ConfigError::plain(Some(&path), "not a regular file"));
    }
    let own = |m: &std::fs::Metadata| Ownership {
        uid: m.uid(),
        mode: m.mode(),
    };
    check_ownership(&path, own(&meta), euid)?;
    // Whoever can write the directory can replace the file, unless the sticky bit
    // (as on /tmp) stops them from touching files they do not own.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && let Ok(dm) = std::fs::metadata(dir)
        && dm.mode() & 0o1000 == 0
    {
        check_ownership(dir, own(&dm), euid)?;
    }
    let text = std::fs::read_to_string(&path)
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
        && let Ok(m) = std::fs::metadata(&ca.0)
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
    let text = std::fs::read_to_string(path)
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

macro_rules! string_newtype {
    ($name:ident) => {
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
    };
}

/// A hostname valid under RFC 1123: dot-separated labels of 1-63 letters, digits or
/// hyphens, not starting or ending with a hyphen, 253 characters at most.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hostname(pub String);
string_newtype!(Hostname);

impl FromStr for Hostname {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            Err(format!(
                "invalid hostname `{s}`: {why} (RFC 1123: labels of letters, digits and hyphens, e.g. sapari-prod)"
            ))
        };
        if s.is_empty() || s.len() > 253 {
            return bad("must be 1 to 253 characters");
        }
        for label in s.split('.') {
            if label.is_empty() || label.len() > 63 {
                return bad("each dot-separated label must be 1 to 63 characters");
            }
            if !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            {
                return bad("only letters, digits and hyphens are allowed");
            }
            if label.starts_with('-') || label.ends_with('-') {
                return bad("a label cannot start or end with a hyphen");
            }
        }
        Ok(Hostname(s.to_string()))
    }
}

impl fmt::Display for Hostname {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A user or group name as useradd accepts it: lowercase letter or underscore first, then
/// lowercase letters, digits, `_` or `-`, at most 32 characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Username(pub String);
string_newtype!(Username);

impl FromStr for Username {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let ok = !s.is_empty()
            && s.len() <= 32
            && s.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !ok {
            return Err(format!(
                "invalid user or group name `{s}`: use lowercase letters, digits, `_` and `-`, starting with a letter (e.g. deploy)"
            ));
        }
        if s == "root" {
            return Err(
                "`root` cannot be the managed user: the point is a non-root sudo user".into(),
            );
        }
        Ok(Username(s.to_string()))
    }
}

impl fmt::Display for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One `authorized_keys` line (options allowed), checked for a known key type and valid
/// base64 key data before anything is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizedKey(pub String);
string_newtype!(AuthorizedKey);

impl FromStr for AuthorizedKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let line = s.trim();
        let short: String = line.chars().take(40).collect();
        if line.contains('\n') {
            return Err(format!(
                "authorized key `{short}...` spans several lines; give one key per list entry"
            ));
        }
        crate::authorized_keys::parse(line)
            .map_err(|e| format!("invalid authorized key `{short}...`: {e} (expected e.g. `ssh-ed25519 AAAAC3... you@laptop`)"))?;
        Ok(AuthorizedKey(line.to_string()))
    }
}

impl fmt::Display for AuthorizedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A drop-in file name for /etc/ssh/sshd_config.d: `*.conf` (sshd's Include glob) and
/// sorting before `50-cloud-init.conf`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DropInName(pub String);
string_newtype!(DropInName);

impl FromStr for DropInName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.contains('/') || !s.ends_with(".conf") || s.len() <= 5 {
            return Err(format!(
                "`{s}` must be a plain file name ending in .conf (e.g. 10-sapari-agent.conf)"
            ));
        }
        if s >= "50-cloud-init.conf" {
            return Err(format!(
                "`{s}` sorts after 50-cloud-init.conf, whose values would win (sshd keeps the first value it reads); use a name like 10-sapari-agent.conf"
            ));
        }
        Ok(DropInName(s.to_string()))
    }
}

impl fmt::Display for DropInName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A Linux interface name as the kernel's `dev_valid_name` takes it (1-15 bytes, no `/`,
/// `:` or whitespace, not `.` or `..`), further kept to `[A-Za-z0-9_.@-]` and no leading
/// `-`: it reaches ufw, nft and iptables command lines, where `+` is a wildcard and a
/// leading `-` an option.
pub fn check_interface_name(s: &str) -> Result<(), String> {
    let bad = |why: &str| {
        Err(format!(
            "invalid interface name `{}`: {why} (e.g. eth0, enp1s0, tailscale0; `ip -br link` lists them)",
            s.escape_debug()
        ))
    };
    if s.is_empty() || s.len() > 15 {
        return bad("must be 1 to 15 characters");
    }
    if s == "." || s == ".." {
        return bad("`.` and `..` are not interface names");
    }
    if s.starts_with('-') {
        return bad("must not start with `-`");
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"_.@-".contains(&b))
    {
        return bad("only letters, digits and `_.@-` are allowed");
    }
    Ok(())
}

fn interface_name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    check_interface_name(&s).map_err(serde::de::Error::custom)?;
    Ok(s)
}

/// Empty means "find it" (the default route's interface).
fn interface_name_or_empty<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    if !s.is_empty() {
        check_interface_name(&s).map_err(|e| {
            serde::de::Error::custom(format!(
                "{e}; or leave it \"\" to use the default route's interface"
            ))
        })?;
    }
    Ok(s)
}

/// Tailscale's `tailcfg.CheckTag`: `tag:` and a name of ASCII letters, digits and `-`,
/// starting with a letter. tailscale up refuses anything else, after the agent has
/// already changed other things.
pub fn check_tailscale_tag(s: &str) -> Result<(), String> {
    let ok = s.strip_prefix("tag:").is_some_and(|n| {
        n.starts_with(|c: char| c.is_ascii_alphabetic())
            && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid Tailscale tag `{}`: write `tag:` and a name of letters, digits and `-` that starts with a letter (e.g. tag:server)",
            s.escape_debug()
        ))
    }
}

struct TailscaleTag(String);

impl<'de> Deserialize<'de> for TailscaleTag {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        check_tailscale_tag(&s).map_err(serde::de::Error::custom)?;
        Ok(TailscaleTag(s))
    }
}

/// Through a per-element type, so an error names the element (`tailscale.tags[1]`).
fn tailscale_tags<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(Vec::<TailscaleTag>::deserialize(d)?
        .into_iter()
        .map(|t| t.0)
        .collect())
}

/// A `[compose.overrides]` key: an environment variable name compose can interpolate.
pub fn check_override_key(key: &str) -> Result<(), String> {
    let ok = key.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`compose.overrides` key `{}` is not an environment variable name: use letters, digits and `_`, not starting with a digit (e.g. WEB_MEMORY)",
            key.escape_debug()
        ))
    }
}

/// A `[compose.overrides]` value, which compose.env holds as `KEY='value'`. The value is
/// never shown: an override may carry a secret.
pub fn check_override_value(value: &str) -> Result<(), String> {
    if value.contains(['\n', '\r', '\0']) {
        return Err(
            "the value contains a line break or NUL, which would end its line in compose.env and start another variable: put the value on one line"
                .into(),
        );
    }
    // compose-go ends a single-quoted value at the first `'` not preceded by a backslash,
    // and a backslash before the closing quote hides it: neither can be written so that
    // compose reads the value back unchanged.
    if value.contains('\'') {
        return Err(
            "the value contains a single quote, which compose.env cannot hold inside its single-quoted values: remove it"
                .into(),
        );
    }
    if value.ends_with('\\') {
        return Err(
            "the value ends with a backslash, which compose would read as escaping the closing quote: remove it"
                .into(),
        );
    }
    Ok(())
}

/// Both checks, for values that did not come through the TOML reader.
pub fn check_override(key: &str, value: &str) -> Result<(), String> {
    check_override_key(key)?;
    check_override_value(value).map_err(|e| format!("compose.overrides.{key}: {e}"))
}

/// Keys and values are checked while each is read, so an error carries that key's or
/// value's position and the field path `compose.overrides.KEY`.
fn compose_overrides<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<std::collections::BTreeMap<String, String>, D::Error> {
    use serde::de::{DeserializeSeed, Error, MapAccess, Visitor};
    struct Key;
    impl<'de> DeserializeSeed<'de> for Key {
        type Value = String;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
            let key = String::deserialize(d)?;
            check_override_key(&key).map_err(D::Error::custom)?;
            Ok(key)
        }
    }
    struct Value;
    impl<'de> DeserializeSeed<'de> for Value {
        type Value = String;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
            let value = String::deserialize(d)?;
            check_override_value(&value).map_err(D::Error::custom)?;
            Ok(value)
        }
    }
    struct Table;
    impl<'de> Visitor<'de> for Table {
        type Value = std::collections::BTreeMap<String, String>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a table of environment variable names and string values")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
            let mut out = std::collections::BTreeMap::new();
            while let Some(key) = m.next_key_seed(Key)? {
                let value = m.next_value_seed(Value)?;
                out.insert(key, value);
            }
            Ok(out)
        }
    }
    d.deserialize_map(Table)
}

/// A byte size written like `4G`, `512M`, `1048576` (binary units, as fallocate reads them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Size(pub u64);
string_newtype!(Size);

impl FromStr for Size {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let err = || {
            format!(
                "invalid size `{s}`: expected a whole number with an optional K, M, G or T suffix (e.g. 4G)"
            )
        };
        let t = s.trim();
        let t = t.strip_suffix(['B', 'b']).unwrap_or(t);
        let t = t.strip_suffix('i').unwrap_or(t);
        let (digits, shift) = match t.chars().last() {
            Some('K' | 'k') => (&t[..t.len() - 1], 10),
            Some('M' | 'm') => (&t[..t.len() - 1], 20),
            Some('G' | 'g') => (&t[..t.len() - 1], 30),
            Some('T' | 't') => (&t[..t.len() - 1], 40),
            _ => (t, 0),
        };
        let n: u64 = digits.trim().parse().map_err(|_| err())?;
        n.checked_mul(1u64 << shift).map(Size).ok_or_else(err)
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (shift, unit) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] {
            if self.0 != 0 && self.0.is_multiple_of(1u64 << shift) {
                return write!(f, "{}{unit}", self.0 >> shift);
            }
        }
        write!(f, "{}", self.0)
    }
}

/// A duration written like `60s`, `2m`, `1h 30m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interval(pub Duration);
string_newtype!(Interval);

impl FromStr for Interval {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        humantime::parse_duration(s)
            .map(Interval)
            .map_err(|e| format!("invalid duration `{s}`: {e} (e.g. 30s, 2m)"))
    }
}

impl fmt::Display for Interval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

/// A port Docker may publish to the whole internet (`firewall.public_ports`): 1-65535, and
/// not 443, which is public only through Cloudflare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct PublicPort(pub u16);

impl PublicPort {
    pub fn check(n: i64) -> Result<Self, String> {
        match u16::try_from(n) {
            Ok(443) => Err(
                "443 is the origin port: it is reachable only from Cloudflare and cannot be made public"
                    .into(),
            ),
            Ok(p) if p > 0 => Ok(PublicPort(p)),
            _ => Err(format!("invalid port {n}: use 1-65535")),
        }
    }
}

impl<'de> Deserialize<'de> for PublicPort {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = i64::deserialize(d)?;
        PublicPort::check(n).map_err(serde::de::Error::custom)
    }
}

/// An absolute, normalised path (no `..`), so it can be compared with fstab and /proc/swaps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AbsPath(pub PathBuf);
string_newtype!(AbsPath);

impl FromStr for AbsPath {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let p = Path::new(s);
        if !p.is_absolute() {
            return Err(format!("`{s}` must be an absolute path"));
        }
        if p.components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(format!("`{s}` must not contain `..`"));
        }
        if s.chars().any(char::is_whitespace) {
            return Err(format!(
                "`{s}` must not contain whitespace (fstab cannot hold it)"
            ));
        }
        Ok(AbsPath(p.components().collect()))
    }
}

impl fmt::Display for AbsPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.display())
    }
}

#[cfg(test)]
mod tests;
