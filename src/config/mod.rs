//! `agent.toml`: schema, defaults that mirror the launch runbook, and validation.
//!
//! Validation lives in the `Deserialize` impls of small newtypes so that every error
//! comes back from the TOML parser with its span, which is how we can name the line,
//! column and field path of a bad value instead of just "invalid config".

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

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

mod load;
mod types;

pub use load::*;
pub use types::*;
use types::{compose_overrides, interface_name, interface_name_or_empty, tailscale_tags};

#[cfg(test)]
mod tests;
