//! The managed resources: each one implements [`crate::engine::Resource`] and the engine
//! runs them in the order of [`registry`].
//!
//! To add a resource:
//!
//! 1. Add its variant to [`crate::engine::Name`] (its kebab-case name is the CLI and JSON
//!    identifier) and to `Name::ALL` where it belongs in the dependency order.
//! 2. Give it a config section in `config/mod.rs` (`XSettings`, `deny_unknown_fields`,
//!    defaults that are safe on a fresh box) with `enabled` when an operator may turn it off,
//!    and mirror the defaults in `examples/agent.toml` (a test keeps the two equal).
//! 3. Write `resources/<name>.rs` (or `<name>/mod.rs`): a `State` that `observe` reads through
//!    `Host` only, a `Step` enum with `Describe`, a pure `plan`, an `apply` that performs the
//!    steps, and `checks` for `status`. Anything that touches the machine goes to `host/`.
//! 4. Implement `disabled()` returning the config key (`Some("x.enabled")`) when it is off,
//!    and `disabled_checks()` if status must still warn about an unmanaged part. Never test
//!    `cfg.enabled` in observe/plan/apply: the engine does not call them for a disabled
//!    resource.
//! 5. Add it to [`registry`] at its place in the dependency order, and list what it needs
//!    first in `depends_on` (the registry test keeps the registry equal to `Name::ALL`).
//! 6. Unit-test the planner (`tests.rs` beside it): converged state plans nothing, each drift
//!    plans its step, refusals say what to do. No root needed.
//! 7. Add a system test (`tests/system_<name>.rs`, in an nspawn box or VM the test creates):
//!    converge, then a second converge reports it unchanged.
//! 8. Document it in README.md: its section under Resources, its config keys, and Layout.

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

use crate::config::Config;
use crate::engine::Managed;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Name;

    /// The engine relies on it: every Name has exactly one resource, in the fixed order.
    #[test]
    fn registry_covers_every_name_in_fixed_order() {
        let names: Vec<Name> = registry(&Config::default(), &RunContext::default())
            .iter()
            .map(|r| r.name())
            .collect();
        assert_eq!(names, Name::ALL);
    }
}
