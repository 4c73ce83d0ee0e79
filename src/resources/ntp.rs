//! `ntp`: a time service enabled and the kernel clock synchronized. The runbook calls this
//! load-bearing: media-token JWTs break with a few seconds of skew, Caddy's DNS-01 ACME
//! with more than five minutes.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use async_trait::async_trait;

use crate::config::NtpSettings;
use crate::engine::Name;
use crate::engine::{Change, Check, Describe, Level, Plan, Resource};
use crate::host::sys::ClockState;
use crate::host::{Cmd, Host, systemctl};

/// Time services in order of preference when none is enabled: a full NTP daemon if the
/// operator installed one, else systemd's client.
const SERVICES: &[&str] = &[
    "chrony.service",
    "ntpsec.service",
    "ntp.service",
    "openntpd.service",
    "systemd-timesyncd.service",
];

const WHY: &str = "media-token JWTs (5 min TTL) fail with a few seconds of skew and Caddy's DNS-01 ACME with more than 5 min";

pub struct Ntp {
    cfg: NtpSettings,
}

impl Ntp {
    pub fn new(cfg: &NtpSettings) -> Self {
        Self { cfg: cfg.clone() }
    }
}

#[derive(Debug, Clone)]
pub struct State {
    pub clock: ClockState,
    /// Installed time services and their `systemctl is-enabled` state.
    pub services: BTreeMap<String, String>,
    pub systemd_booted: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    Enable { unit: String },
    WaitForSync,
}

impl Describe for Step {
    fn change(&self) -> Change {
        match self {
            Step::Enable { unit } => Change::value(
                format!("{unit} enabled"),
                Some("no".into()),
                Some("yes".into()),
            ),
            Step::WaitForSync => {
                Change::value("clock synchronized", Some("no".into()), Some("yes".into()))
            }
        }
    }
}

fn is_enabled(state: &str) -> bool {
    matches!(state, "enabled" | "enabled-runtime" | "alias" | "static")
}

impl State {
    fn enabled_service(&self) -> Option<&str> {
        SERVICES
            .iter()
            .find(|u| self.services.get(**u).is_some_and(|s| is_enabled(s)))
            .copied()
    }
}

#[async_trait]
impl Resource for Ntp {
    type State = State;
    type Step = Step;

    fn name(&self) -> Name {
        Name::Ntp
    }

    async fn observe(&self, host: &Host) -> Result<State> {
        let installed: Vec<&str> = SERVICES
            .iter()
            .copied()
            .filter(|u| host.unit_installed(u))
            .collect();
        let services = if installed.is_empty() {
            BTreeMap::new()
        } else {
            // Exits non-zero when any unit is not enabled; the lines are what we want.
            let out = host.query(&systemctl::is_enabled(&installed)).await?;
            systemctl::parse_states(&installed, &out.stdout)
        };
        let clock = match host.clock() {
            Ok(c) => c,
            // Some container runtimes filter even read-only adjtimex; timedated reads the
            // same kernel flag from outside the sandbox.
            Err(e) if host.systemd_booted() => {
                let out = host
                    .query(&Cmd::new("timedatectl").args([
                        "show",
                        "-p",
                        "NTPSynchronized",
                        "--value",
                    ]))
                    .await?;
                if out.status != 0 {
                    return Err(e.context("and `timedatectl show` failed too"));
                }
                ClockState {
                    synchronized: out.stdout.trim() == "yes",
                    max_error_us: 0,
                }
            }
            Err(e) => return Err(e),
        };
        Ok(State {
            clock,
            services,
            systemd_booted: host.systemd_booted(),
        })
    }

    fn plan(&self, s: &State) -> Result<Plan<Step>> {
        let mut plan = Plan::default();
        if s.enabled_service().is_none() {
            let Some((unit, state)) = SERVICES
                .iter()
                .find_map(|u| s.services.get(*u).map(|st| (*u, st)))
            else {
                bail!(
                    "no time service is installed; install one (apt-get install systemd-timesyncd, or chrony): {WHY}"
                );
            };
            if state == "masked" {
                bail!(
                    "{unit} is masked, so no time service can run; unmask it (systemctl unmask {unit}) or install chrony: {WHY}"
                );
            }
            plan.steps.push(Step::Enable {
                unit: unit.to_string(),
            });
        }
        if !s.clock.synchronized {
            if self.cfg.require_sync {
                plan.steps.push(Step::WaitForSync);
            } else {
                plan.notes.push(format!(
                    "clock not synchronized (allowed by ntp.require_sync = false): {WHY}"
                ));
            }
        }
        Ok(plan)
    }

    async fn apply(&self, host: &Host, s: &State, steps: &[Step]) -> Result<()> {
        for step in steps {
            match step {
                Step::Enable { unit } => {
                    host.run(&systemctl::enable(unit, s.systemd_booted)).await?;
                }
                Step::WaitForSync => wait_for_sync(host, self.cfg.sync_timeout.0).await?,
            }
        }
        Ok(())
    }

    fn checks(&self, s: &State) -> Vec<Check> {
        let service = s.enabled_service();
        vec![
            Check::new(
                "clock synchronized",
                if s.clock.synchronized {
                    Level::Pass
                } else {
                    Level::Fail
                },
                if s.clock.synchronized {
                    format!("yes (max error {} ms)", s.clock.max_error_us / 1000)
                } else {
                    "no (kernel reports STA_UNSYNC)".to_string()
                },
                "check `timedatectl timesync-status` and that UDP 123 outbound is open; skew breaks media-token JWTs and ACME",
            ),
            Check::new(
                "time service",
                if service.is_some() {
                    Level::Pass
                } else {
                    Level::Fail
                },
                service.map_or_else(|| "none enabled".to_string(), |u| format!("{u} enabled")),
                "sapari-agent converge --only ntp",
            ),
        ]
    }
}

async fn wait_for_sync(host: &Host, timeout: Duration) -> Result<()> {
    let start = Instant::now();
    let mut next_report = Duration::from_secs(10);
    loop {
        if host.clock()?.synchronized {
            return Ok(());
        }
        let waited = start.elapsed();
        if waited >= timeout {
            bail!(
                "clock not synchronized after waiting {}: {WHY}; check `timedatectl timesync-status` and that UDP 123 outbound is open",
                humantime::format_duration(Duration::from_secs(timeout.as_secs()))
            );
        }
        if waited >= next_report {
            crate::engine::progress(
                Name::Ntp,
                &format!(
                    "waiting for clock synchronization ({}s of {}s)",
                    waited.as_secs(),
                    timeout.as_secs()
                ),
            );
            next_report += Duration::from_secs(10);
        }
        tokio::time::sleep(Duration::from_millis(500).min(timeout.saturating_sub(waited))).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(synced: bool, services: &[(&str, &str)]) -> State {
        State {
            clock: ClockState {
                synchronized: synced,
                max_error_us: 1000,
            },
            services: services
                .iter()
                .map(|(u, s)| (u.to_string(), s.to_string()))
                .collect(),
            systemd_booted: true,
        }
    }

    fn res(require: bool) -> Ntp {
        Ntp::new(&NtpSettings {
            require_sync: require,
            ..NtpSettings::default()
        })
    }

    #[test]
    fn synced_with_enabled_service_is_converged() {
        let s = state(true, &[("systemd-timesyncd.service", "enabled")]);
        assert!(res(true).plan(&s).unwrap().steps.is_empty());
        let s = state(
            true,
            &[
                ("chrony.service", "enabled"),
                ("systemd-timesyncd.service", "disabled"),
            ],
        );
        assert!(res(true).plan(&s).unwrap().steps.is_empty());
    }

    #[test]
    fn enables_preferred_service_then_waits() {
        let s = state(
            false,
            &[
                ("chrony.service", "disabled"),
                ("systemd-timesyncd.service", "disabled"),
            ],
        );
        assert_eq!(
            res(true).plan(&s).unwrap().steps,
            vec![
                Step::Enable {
                    unit: "chrony.service".into()
                },
                Step::WaitForSync
            ]
        );
    }

    #[test]
    fn unsynced_is_a_note_when_allowed() {
        let s = state(false, &[("systemd-timesyncd.service", "enabled")]);
        let p = res(false).plan(&s).unwrap();
        assert!(p.steps.is_empty());
        assert!(p.notes[0].contains("JWT"));
    }

    #[test]
    fn no_service_or_masked_is_an_error_with_the_fix() {
        let e = res(true).plan(&state(true, &[])).unwrap_err().to_string();
        assert!(e.contains("apt-get install systemd-timesyncd"), "{e}");
        let e = res(true)
            .plan(&state(true, &[("systemd-timesyncd.service", "masked")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("systemctl unmask"), "{e}");
    }

    #[test]
    fn checks() {
        let c = res(true).checks(&state(false, &[("systemd-timesyncd.service", "enabled")]));
        assert_eq!(c[0].level, Level::Fail);
        assert!(c[0].hint.contains("UDP 123"));
        assert_eq!(c[1].level, Level::Pass);
    }
}
