//! `packages`: unattended-upgrades and fail2ban (plus what the config adds) installed in one
//! apt transaction, automatic security updates switched on, and fail2ban's sshd jail on the
//! systemd backend (the classic failure: a jail waiting for an auth.log that does not exist).
//! At first boot cloud-init and unattended-upgrades hold the dpkg lock: wait, then name them.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Result, bail};
use async_trait::async_trait;

use crate::config::{PackagesSettings, UfwSettings};
use crate::engine::Name;
use crate::engine::{Change, Check, Describe, Level, Plan, Resource};
use crate::host::apt::{self, APT_LISTS};
use crate::host::{FileSpec, Host, files, systemctl};

const AUTO_UPGRADES: &str = "/etc/apt/apt.conf.d/20auto-upgrades";
const AUTO_UPGRADES_CONTENT: &str = "// Managed by sapari-agent: daily package lists and unattended security upgrades.\nAPT::Periodic::Update-Package-Lists \"1\";\nAPT::Periodic::Unattended-Upgrade \"1\";\n";
const JAIL: &str = "/etc/fail2ban/jail.d/sapari-agent.local";
const SERVICES: [&str; 2] = ["fail2ban.service", "unattended-upgrades.service"];

pub struct Packages {
    cfg: PackagesSettings,
    ssh_port: u16,
    /// Sources the sshd jail never bans: loopback, the tailnet ranges, the operators.
    ignore: Vec<String>,
}

impl Packages {
    pub fn new(cfg: &PackagesSettings, ufw: &UfwSettings) -> Self {
        let mut ignore: Vec<String> = ["127.0.0.1/8", "::1"].map(String::from).to_vec();
        ignore.extend(ufw.tailscale_cidrs.iter().map(|n| n.to_string()));
        Self {
            cfg: cfg.clone(),
            ssh_port: ufw.ssh_port,
            ignore,
        }
    }

    /// The operators' addresses (`access.operator_ips`) join the jail's `ignoreip`: a few
    /// mistyped passphrases from the office must not ban the one address ufw lets in.
    pub fn with_operator_ips(mut self, ips: &[IpAddr]) -> Self {
        for ip in ips.iter().map(IpAddr::to_string) {
            if !self.ignore.contains(&ip) {
                self.ignore.push(ip);
            }
        }
        self
    }

    fn jail(&self) -> String {
        let secs = |d: Duration| format!("{}s", d.as_secs());
        // ignoreip here replaces jail.conf's default (loopback), which is why it is repeated.
        format!(
            "# Managed by sapari-agent: SSH brute-force throttling, read from the journal.\n[sshd]\nenabled = true\nbackend = systemd\nport = {}\nmaxretry = {}\nfindtime = {}\nbantime = {}\nignoreip = {}\n",
            self.ssh_port,
            self.cfg.fail2ban_maxretry,
            secs(self.cfg.fail2ban_findtime.0),
            secs(self.cfg.fail2ban_bantime.0),
            self.ignore.join(" ")
        )
    }
}

#[derive(Debug, Clone)]
pub struct State {
    pub installed: BTreeSet<String>,
    /// Age of the newest package list; None when there are none.
    pub lists_age: Option<Duration>,
    /// Missing packages the package lists do not know (so `apt-get update` is due).
    pub unknown: Vec<String>,
    pub auto_upgrades: Option<String>,
    pub jail: Option<String>,
    pub enabled: Vec<(String, String)>,
    pub active: Vec<(String, String)>,
    pub systemd_booted: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    Update { why: String },
    Install(Vec<String>),
    AutoUpgrades { old: Option<String> },
    Jail { old: Option<String>, new: String },
    Enable(String),
}

impl Describe for Step {
    fn change(&self) -> Change {
        match self {
            Step::Update { why } => {
                Change::value("package lists", Some(why.clone()), Some("updated".into()))
            }
            Step::Install(p) => {
                Change::value("packages", None, Some(format!("install {}", p.join(" "))))
            }
            Step::AutoUpgrades { old } => {
                Change::file(AUTO_UPGRADES, old.as_deref(), AUTO_UPGRADES_CONTENT)
            }
            Step::Jail { old, new } => Change::file(JAIL, old.as_deref(), new),
            Step::Enable(u) => Change::value(
                u.clone(),
                Some("stopped or disabled".into()),
                Some("enabled, running".into()),
            ),
        }
    }
}

#[async_trait]
impl Resource for Packages {
    type State = State;
    type Step = Step;

    fn name(&self) -> Name {
        Name::Packages
    }

    fn disabled(&self) -> Option<&'static str> {
        (!self.cfg.enabled).then_some("packages.enabled")
    }

    async fn observe(&self, host: &Host) -> Result<State> {
        let installed = apt::installed_now(host)?;
        let missing: Vec<String> = self
            .cfg
            .install
            .iter()
            .filter(|p| !installed.contains(*p))
            .cloned()
            .collect();
        let units: Vec<&str> = SERVICES
            .iter()
            .copied()
            .filter(|u| host.unit_installed(u))
            .collect();
        let (enabled, active) = if units.is_empty() {
            (Vec::new(), Vec::new())
        } else {
            let (e, a) = systemctl::states(host, &units).await?;
            (e.into_iter().collect(), a.into_iter().collect())
        };
        Ok(State {
            lists_age: apt::lists_age(Path::new(APT_LISTS)),
            unknown: if missing.is_empty() {
                Vec::new()
            } else {
                apt::unknown_in_lists(Path::new(APT_LISTS), &missing)
            },
            installed,
            auto_upgrades: host.read_text(Path::new(AUTO_UPGRADES))?,
            jail: host.read_text(Path::new(JAIL))?,
            enabled,
            active,
            systemd_booted: host.systemd_booted(),
        })
    }

    fn plan(&self, s: &State) -> Result<Plan<Step>> {
        let mut plan = Plan::default();
        let missing: Vec<String> = self
            .cfg
            .install
            .iter()
            .filter(|p| !s.installed.contains(*p))
            .cloned()
            .collect();
        if !missing.is_empty() {
            let why = match s.lists_age {
                None => Some("none downloaded yet".to_string()),
                Some(age) if age > self.cfg.lists_max_age.0 => Some(format!(
                    "{} old",
                    humantime::format_duration(Duration::from_secs(age.as_secs()))
                )),
                _ if !s.unknown.is_empty() => {
                    Some(format!("{} unknown to them", s.unknown.join(", ")))
                }
                _ => None,
            };
            if let Some(why) = why {
                plan.steps.push(Step::Update { why });
            }
            plan.steps.push(Step::Install(missing));
        }
        let wants = |p: &str| self.cfg.install.iter().any(|x| x == p);
        if wants("unattended-upgrades") && s.auto_upgrades.as_deref() != Some(AUTO_UPGRADES_CONTENT)
        {
            plan.steps.push(Step::AutoUpgrades {
                old: s.auto_upgrades.clone(),
            });
        }
        let jail = self.jail();
        let jail_changed = wants("fail2ban") && s.jail.as_deref() != Some(jail.as_str());
        if jail_changed {
            plan.steps.push(Step::Jail {
                old: s.jail.clone(),
                new: jail,
            });
        }
        let will_install: Vec<String> = plan
            .steps
            .iter()
            .flat_map(|st| match st {
                Step::Install(p) => p.clone(),
                _ => Vec::new(),
            })
            .collect();
        for unit in SERVICES {
            let pkg = unit.trim_end_matches(".service");
            if !self.cfg.install.iter().any(|p| p == pkg) {
                continue;
            }
            let state = |v: &Vec<(String, String)>| {
                v.iter().find(|(u, _)| u == unit).map(|(_, s)| s.clone())
            };
            let enabled = state(&s.enabled).is_some_and(|e| e == "enabled");
            let active = !s.systemd_booted || state(&s.active).is_some_and(|a| a == "active");
            if !enabled
                || !active
                || jail_changed && pkg == "fail2ban"
                || will_install.iter().any(|p| *p == pkg)
            {
                plan.steps.push(Step::Enable(unit.to_string()));
            }
        }
        Ok(plan)
    }

    async fn apply(&self, host: &Host, s: &State, steps: &[Step]) -> Result<()> {
        let lock = self.cfg.lock_timeout.0;
        if steps
            .iter()
            .any(|st| matches!(st, Step::Update { .. } | Step::Install(_)))
        {
            apt::wait_for_dpkg(host, lock, &|m| crate::engine::progress(Name::Packages, m)).await?;
        }
        for step in steps {
            match step {
                Step::Update { .. } => {
                    crate::engine::progress(
                        Name::Packages,
                        "updating package lists (apt-get update)",
                    );
                    apt::update(host).await?;
                }
                Step::Install(p) => {
                    crate::engine::progress(Name::Packages, &format!("installing {}", p.join(" ")));
                    apt::install(host, p).await?;
                }
                Step::AutoUpgrades { .. } => {
                    host.write(
                        Path::new(AUTO_UPGRADES),
                        AUTO_UPGRADES_CONTENT.as_bytes(),
                        FileSpec::root(0o644),
                        true,
                    )?;
                }
                Step::Jail { new, .. } => {
                    if !files::is_dir(Path::new("/etc/fail2ban/jail.d")) {
                        bail!("/etc/fail2ban/jail.d is missing: is fail2ban installed?");
                    }
                    host.write(
                        Path::new(JAIL),
                        new.as_bytes(),
                        FileSpec::root(0o644),
                        false,
                    )?;
                }
                Step::Enable(unit) => enable(host, s, unit).await?,
            }
        }
        Ok(())
    }

    fn checks(&self, s: &State) -> Vec<Check> {
        SERVICES
            .iter()
            .filter(|u| {
                self.cfg
                    .install
                    .iter()
                    .any(|p| p == u.trim_end_matches(".service"))
            })
            .map(|u| {
                let active = s.active.iter().any(|(n, a)| n == u && a == "active");
                Check::new(
                    u.trim_end_matches(".service"),
                    if active { Level::Pass } else { Level::Fail },
                    if active {
                        "active".to_string()
                    } else {
                        "not running".to_string()
                    },
                    "sapari-agent converge --only packages",
                )
            })
            .collect()
    }
}

/// Enabled, and (re)started so the unit runs with the files this run wrote.
async fn enable(host: &Host, s: &State, unit: &str) -> Result<()> {
    // fail2ban can take a while to start or stop on a busy box.
    let slow = Duration::from_secs(180);
    host.run(&systemctl::enable(unit, false).timeout(slow))
        .await?;
    if s.systemd_booted {
        // Always a restart, never "start unless it ran before the run": the package's postinst
        // may have started it during this run's install, before the jail existed (Debian 13's
        // fail2ban starts fine on its own defaults), and such a daemon would never load our
        // jail. A restart also starts a unit that is stopped.
        host.run(&systemctl::restart(unit).timeout(slow)).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
