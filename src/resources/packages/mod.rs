//! `packages`: unattended-upgrades and fail2ban (plus what the config adds) installed in one
//! apt transaction, automatic security updates switched on, and fail2ban's sshd jail on the
//! systemd backend (the classic failure: a jail waiting for an auth.log that does not exist).
//! At first boot cloud-init and unattended-upgrades hold the dpkg lock: wait, then name them.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Result, bail};
use async_trait::async_trait;

use crate::config::{PackagesSettings, UfwSettings};
use crate::engine::{Change, Check, Describe, Level, Plan, Resource};
use crate::host::{Cmd, FileSpec, Host, systemd};
use crate::resources::Name;

const DPKG_STATUS: &str = "/var/lib/dpkg/status";
const DPKG_LOCK: &str = "/var/lib/dpkg/lock-frontend";
pub const APT_LISTS: &str = "/var/lib/apt/lists";
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

/// apt-get options every install passes: without a pty, dpkg's own messages (which package
/// failed, in which maintainer script, with the script's output) go to apt-get's stderr, so
/// they end up in the error instead of only apt's "Sub-process /usr/bin/dpkg returned an error
/// code (1)".
pub const APT_DPKG_NO_PTY: [&str; 2] = ["-o", "Dpkg::Use-Pty=0"];

/// Installed packages from dpkg's status database (no process needed).
pub fn installed(status: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for stanza in status.split("\n\n") {
        let mut pkg = None;
        let mut ok = false;
        for line in stanza.lines() {
            if let Some(p) = line.strip_prefix("Package: ") {
                pkg = Some(p.trim());
            } else if let Some(s) = line.strip_prefix("Status: ") {
                ok = s.trim() == "install ok installed";
            }
        }
        if let (Some(p), true) = (pkg, ok) {
            out.insert(p.to_string());
        }
    }
    out
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

fn lists_age(dir: &Path) -> Option<Duration> {
    let newest = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with("_Packages"))
        .filter_map(|e| e.metadata().ok()?.modified().ok())
        .max()?;
    SystemTime::now().duration_since(newest).ok()
}

/// Packages no list in `dir` mentions (read only when something is missing).
pub fn unknown_in_lists(dir: &Path, wanted: &[String]) -> Vec<String> {
    use std::io::BufRead;
    let mut left: BTreeSet<&str> = wanted.iter().map(String::as_str).collect();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with("_Packages"))
        {
            // Line by line: a full list is tens of MB, and reading it whole set the agent's
            // peak memory.
            let Ok(f) = std::fs::File::open(e.path()) else {
                continue;
            };
            for line in std::io::BufReader::new(f)
                .split(b'\n')
                .map_while(Result::ok)
            {
                if let Some(name) = line.strip_prefix(b"Package: ") {
                    if let Ok(name) = std::str::from_utf8(name) {
                        left.remove(name.trim_end());
                    }
                    if left.is_empty() {
                        break;
                    }
                }
            }
            if left.is_empty() {
                break;
            }
        }
    }
    left.into_iter().map(str::to_string).collect()
}

#[async_trait]
impl Resource for Packages {
    type State = State;
    type Step = Step;

    fn name(&self) -> Name {
        Name::Packages
    }

    async fn observe(&self, host: &Host) -> Result<State> {
        let installed = installed(&host.read_text(Path::new(DPKG_STATUS))?.unwrap_or_default());
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
            let is_enabled = systemd::enabled_states(&units);
            let is_active = Cmd::new("systemctl")
                .arg("is-active")
                .args(units.iter().copied());
            let (e, a) = tokio::join!(host.query(&is_enabled), host.query(&is_active));
            let pair = |out: &str| {
                systemd::parse_enabled(&units, out)
                    .into_iter()
                    .collect::<Vec<_>>()
            };
            (pair(&e?.stdout), pair(&a?.stdout))
        };
        Ok(State {
            lists_age: lists_age(Path::new(APT_LISTS)),
            unknown: if missing.is_empty() || !self.cfg.enabled {
                Vec::new()
            } else {
                unknown_in_lists(Path::new(APT_LISTS), &missing)
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
        if !self.cfg.enabled {
            plan.notes
                .push("package management disabled (packages.enabled = false)".into());
            return Ok(plan);
        }
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
        if steps
            .iter()
            .any(|st| matches!(st, Step::Update { .. } | Step::Install(_)))
        {
            wait_for_dpkg(host, self.cfg.lock_timeout.0).await?;
        }
        let apt = |args: &[&str]| {
            Cmd::new("apt-get")
                .args(["-q", "-y", "-o", "DPkg::Lock::Timeout=120"])
                .args(APT_DPKG_NO_PTY)
                .args(args.iter().copied())
                .env("DEBIAN_FRONTEND", "noninteractive")
                .timeout(Duration::from_secs(1800))
        };
        for step in steps {
            match step {
                Step::Update { .. } => {
                    crate::progress(Name::Packages, "updating package lists (apt-get update)");
                    host.run(&apt(&["update"])).await?;
                }
                Step::Install(p) => {
                    crate::progress(Name::Packages, &format!("installing {}", p.join(" ")));
                    let mut args = vec![
                        "install",
                        "--no-install-recommends",
                        "-o",
                        "Dpkg::Options::=--force-confdef",
                        "-o",
                        "Dpkg::Options::=--force-confold",
                    ];
                    args.extend(p.iter().map(String::as_str));
                    host.run(&apt(&args)).await?;
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
                    if !Path::new("/etc/fail2ban/jail.d").is_dir() {
                        bail!("/etc/fail2ban/jail.d is missing: is fail2ban installed?");
                    }
                    host.write(
                        Path::new(JAIL),
                        new.as_bytes(),
                        FileSpec::root(0o644),
                        false,
                    )?;
                }
                Step::Enable(unit) => {
                    let mut cmd = Cmd::new("systemctl").arg("enable");
                    if s.systemd_booted {
                        cmd = cmd.arg("--now");
                    }
                    // fail2ban can take a while to start or stop on a busy box.
                    let slow = Duration::from_secs(180);
                    host.run(&cmd.arg(unit.as_str()).timeout(slow)).await?;
                    let was_running = s.active.iter().any(|(u, a)| u == unit && a == "active");
                    if s.systemd_booted && was_running {
                        // Already running: only a restart loads a changed jail. A unit that
                        // was stopped has just started with the new files.
                        host.run(
                            &Cmd::new("systemctl")
                                .args(["restart", unit.as_str()])
                                .timeout(slow),
                        )
                        .await?;
                    }
                }
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

/// At first boot cloud-init and unattended-upgrades hold the dpkg lock for minutes: wait for
/// it with a progress line, then fail naming the holder.
pub async fn wait_for_dpkg(host: &Host, timeout: Duration) -> Result<()> {
    let start = Instant::now();
    let mut next = Duration::ZERO;
    while let Some((pid, name)) = host.lock_holder(Path::new(DPKG_LOCK))? {
        let waited = start.elapsed();
        if waited >= timeout {
            bail!(
                "the dpkg lock ({DPKG_LOCK}) is still held by {name} (pid {pid}) after {}s; let it finish (first boot: cloud-init or unattended-upgrades) and converge again",
                timeout.as_secs()
            );
        }
        if waited >= next {
            crate::progress(
                Name::Packages,
                &format!(
                    "waiting for the dpkg lock held by {name} (pid {pid}), {}s of {}s",
                    waited.as_secs(),
                    timeout.as_secs()
                ),
            );
            next += Duration::from_secs(10);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_packages_are_found_line_by_line() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path()
                .join("deb_dists_bookworm_main_binary-amd64_Packages"),
            "Package: fail2ban\nVersion: 1.0\n\nPackage: ufw\r\nVersion: 0.36\n",
        )
        .unwrap();
        std::fs::write(d.path().join("lock"), "").unwrap();
        let wanted = ["fail2ban", "ufw", "nope", "fail2"].map(String::from);
        assert_eq!(unknown_in_lists(d.path(), &wanted), ["fail2", "nope"]);
    }

    const STATUS: &str = "Package: bash\nStatus: install ok installed\nVersion: 5\n\nPackage: fail2ban\nStatus: deinstall ok config-files\n\nPackage: unattended-upgrades\nStatus: install ok installed\n";

    fn res() -> Packages {
        Packages::new(&PackagesSettings::default(), &UfwSettings::default())
    }

    fn converged(r: &Packages) -> State {
        State {
            installed: [
                "unattended-upgrades",
                "fail2ban",
                "python3-systemd",
                "nftables",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
            lists_age: Some(Duration::from_secs(60)),
            unknown: vec![],
            auto_upgrades: Some(AUTO_UPGRADES_CONTENT.into()),
            jail: Some(r.jail()),
            enabled: SERVICES
                .iter()
                .map(|u| (u.to_string(), "enabled".into()))
                .collect(),
            active: SERVICES
                .iter()
                .map(|u| (u.to_string(), "active".into()))
                .collect(),
            systemd_booted: true,
        }
    }

    #[test]
    fn dpkg_status_parsing_ignores_removed_packages() {
        let i = installed(STATUS);
        assert!(i.contains("bash") && i.contains("unattended-upgrades"));
        assert!(
            !i.contains("fail2ban"),
            "config-files only is not installed"
        );
    }

    #[test]
    fn converged_plans_nothing() {
        let r = res();
        assert!(r.plan(&converged(&r)).unwrap().steps.is_empty());
    }

    #[test]
    fn missing_packages_one_transaction_update_only_when_needed() {
        let r = res();
        let mut s = converged(&r);
        s.installed.remove("fail2ban");
        s.installed.remove("python3-systemd");
        let p = r.plan(&s).unwrap();
        assert_eq!(
            p.steps[0],
            Step::Install(vec!["fail2ban".into(), "python3-systemd".into()])
        );
        assert!(p.steps.contains(&Step::Enable("fail2ban.service".into())));
        s.lists_age = Some(Duration::from_secs(3 * 86400));
        assert!(
            matches!(&r.plan(&s).unwrap().steps[0], Step::Update { why } if why.contains("3days"))
        );
        s.lists_age = Some(Duration::from_secs(60));
        s.unknown = vec!["fail2ban".into()];
        assert!(
            matches!(&r.plan(&s).unwrap().steps[0], Step::Update { why } if why.contains("unknown"))
        );
    }

    #[test]
    fn jail_uses_the_systemd_backend_and_restarts_fail2ban() {
        let r = res();
        assert!(r.jail().contains("backend = systemd") && r.jail().contains("port = 22"));
        let mut s = converged(&r);
        s.jail = Some("[sshd]\nenabled = true\n".into());
        let p = r.plan(&s).unwrap();
        assert!(matches!(p.steps[0], Step::Jail { .. }));
        assert_eq!(p.steps[1], Step::Enable("fail2ban.service".into()));
    }

    #[test]
    fn jail_never_bans_loopback_the_tailnet_or_the_operators() {
        let ops: [IpAddr; 3] = [
            "192.0.2.50".parse().unwrap(),
            "2001:db8::7".parse().unwrap(),
            "192.0.2.50".parse().unwrap(),
        ];
        let r = res().with_operator_ips(&ops);
        let jail = r.jail();
        let line = jail
            .lines()
            .find_map(|l| l.strip_prefix("ignoreip = "))
            .unwrap_or_else(|| panic!("no ignoreip in\n{jail}"));
        assert_eq!(
            line,
            "127.0.0.1/8 ::1 100.64.0.0/10 fd7a:115c:a1e0::/48 192.0.2.50 2001:db8::7"
        );
        // Inside [sshd], the only section: a line under another would not apply to it.
        assert_eq!(jail.matches('[').count(), 1, "{jail}");
        // Without operators the tailnet and loopback are still there.
        assert!(
            res()
                .jail()
                .contains("ignoreip = 127.0.0.1/8 ::1 100.64.0.0/10 fd7a:115c:a1e0::/48\n")
        );
        // ufw's configured tailnet ranges are the ones fail2ban ignores.
        let ufw = UfwSettings {
            tailscale_cidrs: vec!["100.100.0.0/16".parse().unwrap()],
            ..UfwSettings::default()
        };
        let r = Packages::new(&PackagesSettings::default(), &ufw);
        assert!(
            r.jail()
                .contains("ignoreip = 127.0.0.1/8 ::1 100.100.0.0/16\n")
        );
    }

    #[test]
    fn jail_without_ignoreip_is_rewritten_and_fail2ban_restarted() {
        let ops: [IpAddr; 1] = ["198.51.100.9".parse().unwrap()];
        let r = res().with_operator_ips(&ops);
        let mut s = converged(&r);
        assert!(r.plan(&s).unwrap().steps.is_empty());
        // The jail an earlier version wrote: the same but for ignoreip.
        let old: String = r
            .jail()
            .lines()
            .filter(|l| !l.starts_with("ignoreip"))
            .map(|l| format!("{l}\n"))
            .collect();
        s.jail = Some(old.clone());
        let p = r.plan(&s).unwrap();
        assert_eq!(
            p.steps,
            vec![
                Step::Jail {
                    old: Some(old),
                    new: r.jail()
                },
                Step::Enable("fail2ban.service".into())
            ]
        );
        // A new operator address is a change too.
        s.jail = Some(r.jail());
        let more: [IpAddr; 2] = [ops[0], "203.0.113.4".parse().unwrap()];
        let r2 = res().with_operator_ips(&more);
        assert!(
            matches!(&r2.plan(&s).unwrap().steps[0], Step::Jail { new, .. } if new.contains("198.51.100.9 203.0.113.4"))
        );
    }

    #[test]
    fn only_what_the_list_names_is_configured() {
        let r = Packages::new(
            &PackagesSettings {
                install: vec!["python3-systemd".into()],
                ..PackagesSettings::default()
            },
            &UfwSettings::default(),
        );
        let mut s = converged(&res());
        s.jail = None;
        s.auto_upgrades = None;
        s.active[0].1 = "inactive".into();
        assert!(r.plan(&s).unwrap().steps.is_empty());
    }

    #[test]
    fn stopped_service_is_started() {
        let r = res();
        let mut s = converged(&r);
        s.active[1].1 = "inactive".into();
        assert_eq!(
            r.plan(&s).unwrap().steps,
            vec![Step::Enable("unattended-upgrades.service".into())]
        );
    }
}
