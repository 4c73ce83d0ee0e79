//! `hostname`: the kernel hostname, /etc/hostname, the `127.0.1.1` line of /etc/hosts, and
//! (where cloud-init is installed) `preserve_hostname: true` so a reboot keeps the name.

use std::path::Path;

use anyhow::Result;
use async_trait::async_trait;

use crate::config::HostnameSettings;
use crate::engine::Name;
use crate::engine::{Change, Check, Describe, Level, Plan, Resource};
use crate::host::{Cmd, FileSpec, Host, files};

const ETC_HOSTNAME: &str = "/etc/hostname";
const ETC_HOSTS: &str = "/etc/hosts";
const CLOUD_CFG_DIR: &str = "/etc/cloud/cloud.cfg.d";
const CLOUD_CFG: &str = "/etc/cloud/cloud.cfg.d/99-sapari-agent-hostname.cfg";
const CLOUD_CFG_CONTENT: &str = "# Managed by sapari-agent: keep the hostname it sets across reboots.\npreserve_hostname: true\n";

pub struct Hostname {
    cfg: HostnameSettings,
}

impl Hostname {
    pub fn new(cfg: &HostnameSettings) -> Self {
        Self { cfg: cfg.clone() }
    }
}

#[derive(Debug, Clone)]
pub struct State {
    pub kernel: String,
    pub etc_hostname: Option<String>,
    pub hosts: Option<String>,
    pub hostnamectl: bool,
    pub cloud_init: bool,
    pub cloud_cfg: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    SetName { from: String, to: String },
    WriteHosts { old: Option<String>, new: String },
    PreserveInCloudInit { old: Option<String> },
}

impl Describe for Step {
    fn change(&self) -> Change {
        match self {
            Step::SetName { from, to } => {
                Change::value("hostname", Some(from.clone()), Some(to.clone()))
            }
            Step::WriteHosts { old, new } => Change::file(ETC_HOSTS, old.as_deref(), new),
            Step::PreserveInCloudInit { old } => {
                Change::file(CLOUD_CFG, old.as_deref(), CLOUD_CFG_CONTENT)
            }
        }
    }
}

/// Make `/etc/hosts` map 127.0.1.1 to `name` (Debian's convention for a host without a
/// static address), leaving every other line alone.
pub fn ensure_hosts_line(content: &str, name: &str) -> String {
    let short = name.split('.').next().unwrap_or(name);
    let wanted = if short == name {
        format!("127.0.1.1\t{name}")
    } else {
        format!("127.0.1.1\t{name} {short}")
    };
    let mut out: Vec<String> = Vec::new();
    let mut placed = false;
    for line in content.lines() {
        let fields: Vec<&str> = line
            .split('#')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        if fields.first() == Some(&"127.0.1.1") {
            if !placed {
                // The first name after the address is the canonical one; only it counts.
                out.push(if fields.get(1) == Some(&name) {
                    line.to_string()
                } else {
                    wanted.clone()
                });
                placed = true;
            }
            continue;
        }
        out.push(line.to_string());
    }
    if !placed {
        let at = out
            .iter()
            .position(|l| l.split_whitespace().next() == Some("127.0.0.1"))
            .map_or(0, |i| i + 1);
        out.insert(at, wanted);
    }
    let mut s = out.join("\n");
    s.push('\n');
    s
}

#[async_trait]
impl Resource for Hostname {
    type State = State;
    type Step = Step;

    fn name(&self) -> Name {
        Name::Hostname
    }

    async fn observe(&self, host: &Host) -> Result<State> {
        Ok(State {
            kernel: host.hostname()?,
            etc_hostname: host.read_text(Path::new(ETC_HOSTNAME))?,
            hosts: host.read_text(Path::new(ETC_HOSTS))?,
            hostnamectl: host.systemd_booted() && host.program_exists("hostnamectl"),
            cloud_init: files::is_dir(Path::new(CLOUD_CFG_DIR)),
            cloud_cfg: host.read_text(Path::new(CLOUD_CFG))?,
        })
    }

    fn plan(&self, s: &State) -> Result<Plan<Step>> {
        let name = &self.cfg.name.0;
        let mut plan = Plan::default();
        let file_name = s.etc_hostname.as_deref().map(str::trim).unwrap_or("");
        if &s.kernel != name || file_name != name {
            plan.steps.push(Step::SetName {
                from: if s.kernel != file_name && !file_name.is_empty() {
                    format!("{} (/etc/hostname: {file_name})", s.kernel)
                } else {
                    s.kernel.clone()
                },
                to: name.clone(),
            });
        }
        let hosts = ensure_hosts_line(s.hosts.as_deref().unwrap_or(""), name);
        if s.hosts.as_deref() != Some(hosts.as_str()) {
            plan.steps.push(Step::WriteHosts {
                old: s.hosts.clone(),
                new: hosts,
            });
        }
        if self.cfg.preserve_in_cloud_init
            && s.cloud_init
            && s.cloud_cfg.as_deref() != Some(CLOUD_CFG_CONTENT)
        {
            plan.steps.push(Step::PreserveInCloudInit {
                old: s.cloud_cfg.clone(),
            });
        }
        Ok(plan)
    }

    async fn apply(&self, host: &Host, s: &State, steps: &[Step]) -> Result<()> {
        let name = &self.cfg.name.0;
        for step in steps {
            match step {
                Step::SetName { .. } if s.hostnamectl => {
                    host.run(&Cmd::new("hostnamectl").args(["set-hostname", name]))
                        .await?;
                }
                Step::SetName { .. } => {
                    host.write(
                        Path::new(ETC_HOSTNAME),
                        format!("{name}\n").as_bytes(),
                        FileSpec::root(0o644),
                        false,
                    )?;
                    host.set_hostname(name)?;
                }
                Step::WriteHosts { new, .. } => {
                    host.write(
                        Path::new(ETC_HOSTS),
                        new.as_bytes(),
                        FileSpec::root(0o644),
                        true,
                    )?;
                }
                Step::PreserveInCloudInit { .. } => {
                    host.write(
                        Path::new(CLOUD_CFG),
                        CLOUD_CFG_CONTENT.as_bytes(),
                        FileSpec::root(0o644),
                        false,
                    )?;
                }
            }
        }
        Ok(())
    }

    fn checks(&self, s: &State) -> Vec<Check> {
        let name = &self.cfg.name.0;
        let hosts_ok = s
            .hosts
            .as_deref()
            .is_some_and(|h| ensure_hosts_line(h, name) == h);
        vec![
            Check::new(
                "hostname",
                if &s.kernel == name {
                    Level::Pass
                } else {
                    Level::Warn
                },
                format!("{} (wanted {name})", s.kernel),
                "sapari-agent converge --only hostname",
            ),
            Check::new(
                "/etc/hosts 127.0.1.1",
                if hosts_ok { Level::Pass } else { Level::Warn },
                if hosts_ok {
                    format!("maps to {name}")
                } else {
                    format!("does not map to {name}")
                },
                "sapari-agent converge --only hostname",
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> State {
        State {
            kernel: "sapari-prod".into(),
            etc_hostname: Some("sapari-prod\n".into()),
            hosts: Some("127.0.0.1\tlocalhost\n127.0.1.1\tsapari-prod\n".into()),
            hostnamectl: true,
            cloud_init: false,
            cloud_cfg: None,
        }
    }

    fn res() -> Hostname {
        Hostname::new(&HostnameSettings::default())
    }

    #[test]
    fn converged_state_plans_nothing() {
        assert!(res().plan(&state()).unwrap().steps.is_empty());
    }

    #[test]
    fn wrong_kernel_or_file_name_sets_name() {
        let mut s = state();
        s.kernel = "ubuntu-4gb".into();
        let p = res().plan(&s).unwrap();
        assert_eq!(
            p.steps,
            vec![Step::SetName {
                from: "ubuntu-4gb (/etc/hostname: sapari-prod)".into(),
                to: "sapari-prod".into()
            }]
        );
        let mut s = state();
        s.etc_hostname = None;
        assert_eq!(res().plan(&s).unwrap().steps.len(), 1);
    }

    #[test]
    fn cloud_init_preserve_only_where_installed() {
        let mut s = state();
        s.cloud_init = true;
        let p = res().plan(&s).unwrap();
        assert!(matches!(p.steps[..], [Step::PreserveInCloudInit { .. }]));
        s.cloud_cfg = Some(CLOUD_CFG_CONTENT.into());
        assert!(res().plan(&s).unwrap().steps.is_empty());
    }

    #[test]
    fn hosts_line_replaced_in_place_others_untouched() {
        let before = "127.0.0.1 localhost\n127.0.1.1 ubuntu-4gb ubuntu-4gb\n# comment\n::1 localhost ip6-localhost\n";
        let after = ensure_hosts_line(before, "sapari-prod");
        assert_eq!(
            after,
            "127.0.0.1 localhost\n127.0.1.1\tsapari-prod\n# comment\n::1 localhost ip6-localhost\n"
        );
        assert_eq!(
            ensure_hosts_line(&after, "sapari-prod"),
            after,
            "idempotent"
        );
    }

    #[test]
    fn hosts_line_inserted_after_localhost_and_duplicates_dropped() {
        let after = ensure_hosts_line("127.0.0.1 localhost\n::1 localhost", "web");
        assert_eq!(
            after,
            "127.0.0.1 localhost\n127.0.1.1\tweb\n::1 localhost\n"
        );
        let after = ensure_hosts_line("127.0.1.1 web\n127.0.1.1 old\n", "web");
        assert_eq!(after, "127.0.1.1 web\n");
        assert_eq!(ensure_hosts_line("", "web"), "127.0.1.1\tweb\n");
    }

    #[test]
    fn alias_is_not_enough_and_fqdn_gets_short_name() {
        assert_eq!(
            ensure_hosts_line("127.0.1.1 old sapari-prod\n", "sapari-prod"),
            "127.0.1.1\tsapari-prod\n"
        );
        assert_eq!(
            ensure_hosts_line("", "api.sapari.io"),
            "127.0.1.1\tapi.sapari.io api\n"
        );
        // A commented-out 127.0.1.1 line is not a mapping.
        assert_eq!(
            ensure_hosts_line("#127.0.1.1 web\n", "web"),
            "127.0.1.1\tweb\n#127.0.1.1 web\n"
        );
    }

    #[test]
    fn checks_report_mismatch() {
        let mut s = state();
        s.kernel = "other".into();
        let c = res().checks(&s);
        assert_eq!(c[0].level, Level::Warn);
        assert!(!c[0].hint.is_empty());
        assert_eq!(c[1].level, Level::Pass);
    }
}
