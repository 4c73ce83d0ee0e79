//! The managed resources. Names are stable CLI identifiers (`--only`, `--skip`, JSON).

pub mod compose;
pub mod deploy_key;
pub mod docker;
pub mod firewall;
pub mod guarded;
pub mod hostname;
pub mod ntp;
pub mod packages;
pub mod sshd;
pub mod swap;
pub mod tailscale;
pub mod ufw;
pub mod users;

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use crate::config::Config;
use crate::engine::Managed;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Name {
    Hostname,
    Users,
    Sshd,
    DeployKey,
    Ufw,
    Packages,
    Docker,
    Firewall,
    Swap,
    Ntp,
    Tailscale,
    Compose,
}

impl Name {
    /// Every resource, in the fixed order converge walks them (dependencies first).
    pub const ALL: [Name; 12] = [
        Name::Hostname,
        Name::Users,
        Name::Sshd,
        Name::DeployKey,
        Name::Ufw,
        Name::Packages,
        Name::Docker,
        Name::Firewall,
        Name::Swap,
        Name::Ntp,
        Name::Tailscale,
        Name::Compose,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Name::Hostname => "hostname",
            Name::Users => "users",
            Name::Sshd => "sshd",
            Name::DeployKey => "deploy-key",
            Name::Ufw => "ufw",
            Name::Packages => "packages",
            Name::Docker => "docker",
            Name::Firewall => "firewall",
            Name::Swap => "swap",
            Name::Ntp => "ntp",
            Name::Tailscale => "tailscale",
            Name::Compose => "compose",
        }
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Name {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Name::ALL
            .iter()
            .copied()
            .find(|n| n.as_str() == s)
            .ok_or_else(|| {
                let valid: Vec<&str> = Name::ALL.iter().map(|n| n.as_str()).collect();
                format!("unknown resource `{s}`; valid names: {}", valid.join(" "))
            })
    }
}

/// Facts about this run that are not configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunContext {
    /// `--force`: apply a firewall that would not admit the current SSH client, or remove
    /// the key the current SSH session logged in with.
    pub force: bool,
    /// The address this run was started from over SSH (`SSH_CONNECTION`).
    pub ssh_client: Option<std::net::IpAddr>,
    /// The rest of `SSH_CONNECTION`: client port, and the address and port it reached.
    pub ssh_link: Option<SshLink>,
    /// The user who logged in over SSH (before sudo), when known.
    pub ssh_user: Option<String>,
    /// Started from a terminal: an operator is at the keyboard.
    pub interactive: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshLink {
    pub client_port: u16,
    pub server: std::net::IpAddr,
    pub server_port: u16,
}

impl RunContext {
    /// Read `SSH_CONNECTION` ("client_ip client_port server_ip server_port").
    pub fn from_env(force: bool) -> Self {
        // Through sudo too: it drops SSH_CONNECTION, and operators converge with sudo.
        let conn = crate::host::sys::ssh_connection().unwrap_or_default();
        let f: Vec<&str> = conn.split_whitespace().collect();
        let ssh_client = f.first().and_then(|ip| ip.parse().ok());
        let ssh_link = match f.as_slice() {
            [_, cp, sip, sp] => match (cp.parse(), sip.parse(), sp.parse()) {
                (Ok(client_port), Ok(server), Ok(server_port)) => Some(SshLink {
                    client_port,
                    server,
                    server_port,
                }),
                _ => None,
            },
            _ => None,
        };
        let ssh_user = ssh_client.and(
            std::env::var("SUDO_USER")
                .ok()
                .or_else(|| std::env::var("USER").ok())
                .filter(|u| !u.is_empty()),
        );
        use std::io::IsTerminal;
        Self {
            force,
            ssh_client,
            ssh_link,
            ssh_user,
            interactive: std::io::stdin().is_terminal(),
        }
    }
}

/// The implemented resources, configured, in dependency order.
pub fn registry(cfg: &Config, ctx: &RunContext) -> Vec<Box<dyn Managed>> {
    vec![
        Box::new(hostname::Hostname::new(&cfg.hostname)),
        Box::new(users::Users::new(&cfg.users, ctx)),
        Box::new(
            sshd::Sshd::new(&cfg.sshd, &cfg.users.name.0, ctx)
                .with_operator_ips(&cfg.access.operator_ips),
        ),
        Box::new(deploy_key::DeployKey::new(&cfg.deploy_key, &cfg.users)),
        Box::new(
            ufw::Ufw::new(&cfg.ufw, &cfg.access.operator_ips, ctx)
                .with_lock_timeout(cfg.packages.lock_timeout.0),
        ),
        Box::new(
            packages::Packages::new(&cfg.packages, &cfg.ufw)
                .with_operator_ips(&cfg.access.operator_ips),
        ),
        Box::new(docker::Docker::new(&cfg.docker)),
        Box::new(firewall::Firewall::new(&cfg.firewall, &cfg.agent)),
        Box::new(swap::Swap::new(&cfg.swap)),
        Box::new(ntp::Ntp::new(&cfg.ntp)),
        Box::new(
            tailscale::Tailscale::new(&cfg.tailscale, &cfg.hostname.name.0)
                .with_lock_timeout(cfg.packages.lock_timeout.0),
        ),
        Box::new(compose::Compose::new(&cfg.compose, &cfg.agent)),
    ]
}

/// Which resources a run covers, with the reason for each one left out.
pub fn select(only: &[Name], skip: &[Name]) -> Vec<(Name, Option<String>)> {
    Name::ALL
        .iter()
        .map(|&n| {
            let why = if !only.is_empty() && !only.contains(&n) {
                Some("not selected by --only".to_string())
            } else if skip.contains(&n) {
                Some("skipped by --skip".to_string())
            } else {
                None
            };
            (n, why)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_lists_valid() {
        for n in Name::ALL {
            assert_eq!(n.as_str().parse::<Name>().unwrap(), n);
            assert_eq!(serde_json::to_value(n).unwrap(), n.as_str());
        }
        let e = "swapp".parse::<Name>().unwrap_err();
        assert!(e.contains(
            "hostname users sshd deploy-key ufw packages docker firewall swap ntp tailscale compose"
        ));
    }

    #[test]
    fn registry_follows_fixed_order() {
        let names: Vec<Name> = registry(&Config::default(), &RunContext::default())
            .iter()
            .map(|r| r.name())
            .collect();
        let mut sorted = names.clone();
        sorted.sort_by_key(|n| Name::ALL.iter().position(|a| a == n));
        assert_eq!(names, sorted);
    }

    #[test]
    fn selection() {
        let s = select(&[Name::Swap], &[]);
        assert!(s.iter().all(|(n, why)| (*n == Name::Swap) == why.is_none()));
        let s = select(&[], &[Name::Ntp]);
        assert_eq!(s.iter().filter(|(_, w)| w.is_some()).count(), 1);
    }
}
