//! `docker`: Docker Engine and compose, from Docker's own apt repository (the signing key
//! is built into the agent and checked against Docker's published fingerprint before it is
//! written) or from the distribution's packages; the service enabled and running; and the
//! compose command that works here (`docker compose` v2 first, `docker-compose` v1 after).

use std::path::Path;

use anyhow::{Result, bail};
use async_trait::async_trait;

use crate::config::{DockerSettings, DockerSource};
use crate::engine::Name;
use crate::engine::{Change, Check, Describe, Level, Plan, Resource};
use crate::host::apt::{self, APT_LISTS};
use crate::host::{Host, compose, systemctl};

/// Docker's release signing key, as Docker publishes it.
pub const DOCKER_KEY: &str = include_str!("docker.asc");
/// Docker's published fingerprint of that key.
pub const DOCKER_FINGERPRINT: &str = "9DC858229FC7DD38854AE2D88D81803C0EBFCD88";
const KEYRING: &str = "/etc/apt/keyrings/docker.asc";
const SOURCES: &str = "/etc/apt/sources.list.d/docker.sources";
const OFFICIAL: &[&str] = &[
    "docker-ce",
    "docker-ce-cli",
    "containerd.io",
    "docker-buildx-plugin",
    "docker-compose-plugin",
];

/// The OpenPGP fingerprint of an armored key.
pub fn fingerprint(armored: &str) -> Result<String> {
    crate::openpgp::fingerprint(armored.as_bytes())
}

pub struct Docker {
    cfg: DockerSettings,
}

impl Docker {
    pub fn new(cfg: &DockerSettings) -> Self {
        Self { cfg: cfg.clone() }
    }

    fn sources(&self, s: &State) -> String {
        format!(
            "# Managed by sapari-agent: Docker's own repository, verified with its pinned key.\nTypes: deb\nURIs: https://download.docker.com/linux/{}\nSuites: {}\nComponents: stable\nSigned-By: {KEYRING}\n",
            s.os_id, s.codename
        )
    }

    /// `update` when the repository was just added.
    async fn install(&self, host: &Host, p: &[String], update: bool) -> Result<()> {
        let lock = self.cfg.lock_timeout.0;
        apt::wait_for_dpkg(host, lock, &|m| crate::engine::progress(Name::Packages, m)).await?;
        // Also when the lists do not know a package: never downloaded (a fresh image keeps
        // only `partial/` and `lock` there) or from before it existed.
        if update || !apt::unknown_in_lists(Path::new(APT_LISTS), p).is_empty() {
            crate::engine::progress(Name::Docker, "updating package lists");
            apt::update(host).await?;
        }
        crate::engine::progress(Name::Docker, &format!("installing {}", p.join(" ")));
        apt::install(host, p).await
    }

    fn packages(&self, s: &State) -> Vec<&'static str> {
        match self.cfg.source {
            DockerSource::Official => OFFICIAL.to_vec(),
            // Ubuntu packages compose v2; Debian 12 only has the Python compose v1.
            DockerSource::Distro if s.os_id == "ubuntu" => vec!["docker.io", "docker-compose-v2"],
            DockerSource::Distro if debian_without_cli_split(&s.codename) => {
                vec!["docker.io", "docker-compose"]
            }
            // From Debian 13 the `docker` command is its own package, which docker.io only
            // recommends (and we install without recommends); docker-compose is v2 there.
            DockerSource::Distro => vec!["docker.io", "docker-cli", "docker-compose"],
        }
    }
}

/// Debian releases whose docker.io still carries the `docker` command itself.
fn debian_without_cli_split(codename: &str) -> bool {
    matches!(codename, "buster" | "bullseye" | "bookworm")
}

#[derive(Debug, Clone)]
pub struct State {
    pub os_id: String,
    pub codename: String,
    pub installed: std::collections::BTreeSet<String>,
    pub keyring: Option<String>,
    pub sources: Option<String>,
    pub enabled: Option<String>,
    pub active: Option<String>,
    pub systemd_booted: bool,
    /// `docker compose` (v2) or `docker-compose` (v1), whichever answers.
    pub compose: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    Keyring,
    Sources { old: Option<String>, new: String },
    Install(Vec<String>),
    Enable,
}

impl Describe for Step {
    fn change(&self) -> Change {
        match self {
            Step::Keyring => Change::value(
                KEYRING,
                None,
                Some(format!("Docker's key {DOCKER_FINGERPRINT}")),
            ),
            Step::Sources { old, new } => Change::file(SOURCES, old.as_deref(), new),
            Step::Install(p) => {
                Change::value("packages", None, Some(format!("install {}", p.join(" "))))
            }
            Step::Enable => Change::value(
                "docker.service",
                Some("stopped or disabled".into()),
                Some("enabled, running".into()),
            ),
        }
    }
}

#[async_trait]
impl Resource for Docker {
    type State = State;
    type Step = Step;

    fn name(&self) -> Name {
        Name::Docker
    }

    fn disabled(&self) -> Option<&'static str> {
        (!self.cfg.enabled).then_some("docker.enabled")
    }

    fn depends_on(&self) -> &'static [Name] {
        &[Name::Packages]
    }

    async fn observe(&self, host: &Host) -> Result<State> {
        let (os_id, codename) = host.os_release()?;
        let booted = host.systemd_booted();
        let unit = host.unit_installed("docker.service");
        let (enabled, active) = if unit {
            let (mut e, mut a) = systemctl::states(host, &["docker.service"]).await?;
            (e.remove("docker.service"), a.remove("docker.service"))
        } else {
            (None, None)
        };
        let compose = compose::detect(host).await.map(|f| f.command().to_string());
        Ok(State {
            os_id,
            codename,
            installed: apt::installed_now(host)?,
            keyring: host.read_text(Path::new(KEYRING))?,
            sources: host.read_text(Path::new(SOURCES))?,
            enabled,
            active,
            systemd_booted: booted,
            compose,
        })
    }

    fn plan(&self, s: &State) -> Result<Plan<Step>> {
        let mut plan = Plan::default();
        let distro_present = s.installed.contains("docker.io");
        let official_present = s.installed.contains("docker-ce");
        if self.cfg.source == DockerSource::Official && distro_present && !official_present {
            plan.notes.push(
                "the distribution's docker.io is installed; it is kept (switching to Docker's repository is a manual step: remove docker.io first)".into(),
            );
        } else {
            if self.cfg.source == DockerSource::Official {
                if !matches!(s.os_id.as_str(), "ubuntu" | "debian") || s.codename.is_empty() {
                    bail!(
                        "Docker's repository needs Ubuntu or Debian with a release codename (found ID={:?} VERSION_CODENAME={:?}); set docker.source = \"distro\"",
                        s.os_id,
                        s.codename
                    );
                }
                let fp = fingerprint(DOCKER_KEY)?;
                if fp != DOCKER_FINGERPRINT {
                    bail!(
                        "the built-in Docker key has fingerprint {fp}, not Docker's {DOCKER_FINGERPRINT}; nothing written"
                    );
                }
                if s.keyring.as_deref() != Some(DOCKER_KEY) {
                    plan.steps.push(Step::Keyring);
                }
                let src = self.sources(s);
                if s.sources.as_deref() != Some(src.as_str()) {
                    plan.steps.push(Step::Sources {
                        old: s.sources.clone(),
                        new: src,
                    });
                }
            }
            let missing: Vec<String> = self
                .packages(s)
                .into_iter()
                .filter(|p| !s.installed.contains(*p))
                .map(str::to_string)
                .collect();
            if !missing.is_empty() {
                plan.steps.push(Step::Install(missing));
            }
        }
        let running = !s.systemd_booted || s.active.as_deref() == Some("active");
        if s.enabled.as_deref() != Some("enabled")
            || !running
            || plan.steps.iter().any(|p| matches!(p, Step::Install(_)))
        {
            plan.steps.push(Step::Enable);
        }
        match &s.compose {
            Some(c) => plan.notes.push(format!("compose command: {c}")),
            None if plan.steps.is_empty() => plan
                .notes
                .push("no compose command found (docker compose / docker-compose)".into()),
            None => {}
        }
        Ok(plan)
    }

    async fn apply(&self, host: &Host, s: &State, steps: &[Step]) -> Result<()> {
        let mut update = false;
        for step in steps {
            match step {
                // One write of the repository for both steps: the plan has them only for
                // the files that differ, and add_repo writes only those.
                Step::Keyring | Step::Sources { .. } if !update => {
                    apt::add_repo(
                        host,
                        &apt::Repo {
                            keyring: Path::new(KEYRING),
                            key: DOCKER_KEY.as_bytes(),
                            sources: Path::new(SOURCES),
                            sources_text: &self.sources(s),
                        },
                    )?;
                    update = true;
                }
                Step::Keyring | Step::Sources { .. } => {}
                Step::Install(p) => self.install(host, p, update).await?,
                Step::Enable => {
                    host.run(&systemctl::enable("docker.service", s.systemd_booted))
                        .await?;
                }
            }
        }
        Ok(())
    }

    fn checks(&self, s: &State) -> Vec<Check> {
        let running = s.active.as_deref() == Some("active");
        vec![
            Check::new(
                "docker",
                if running { Level::Pass } else { Level::Fail },
                if running {
                    "running".to_string()
                } else {
                    "not running".to_string()
                },
                "sapari-agent converge --only docker",
            ),
            Check::new(
                "compose",
                if s.compose.is_some() {
                    Level::Pass
                } else {
                    Level::Fail
                },
                s.compose.clone().unwrap_or_else(|| "not found".into()),
                "sapari-agent converge --only docker",
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DockerSettings;

    fn state() -> State {
        State {
            os_id: "ubuntu".into(),
            codename: "noble".into(),
            installed: Default::default(),
            keyring: None,
            sources: None,
            enabled: None,
            active: None,
            systemd_booted: true,
            compose: None,
        }
    }

    #[test]
    fn built_in_key_is_dockers() {
        assert_eq!(fingerprint(DOCKER_KEY).unwrap(), DOCKER_FINGERPRINT);
        let tampered = DOCKER_KEY.replacen("mQINBFit2ioBEADh", "mQINBFit2ioBEADi", 1);
        assert_ne!(fingerprint(&tampered).unwrap(), DOCKER_FINGERPRINT);
    }

    #[test]
    fn official_source_on_a_fresh_box() {
        let r = Docker::new(&DockerSettings::default());
        let p = r.plan(&state()).unwrap();
        assert_eq!(p.steps[0], Step::Keyring);
        assert!(
            matches!(&p.steps[1], Step::Sources { new, .. } if new.contains("linux/ubuntu\nSuites: noble"))
        );
        assert!(
            matches!(&p.steps[2], Step::Install(pk) if pk.contains(&"docker-compose-plugin".to_string()))
        );
        assert_eq!(p.steps[3], Step::Enable);
    }

    #[test]
    fn converged_plans_nothing_and_reports_compose() {
        let r = Docker::new(&DockerSettings::default());
        let mut s = state();
        s.installed = OFFICIAL.iter().map(|p| p.to_string()).collect();
        s.keyring = Some(DOCKER_KEY.into());
        s.sources = Some(r.sources(&s));
        s.enabled = Some("enabled".into());
        s.active = Some("active".into());
        s.compose = Some("docker compose".into());
        let p = r.plan(&s).unwrap();
        assert!(p.steps.is_empty(), "{:?}", p.steps);
        assert_eq!(p.notes, vec!["compose command: docker compose"]);
    }

    #[test]
    fn distro_source_picks_the_compose_package_by_os() {
        let r = Docker::new(&DockerSettings {
            source: DockerSource::Distro,
            ..DockerSettings::default()
        });
        let mut s = state();
        s.os_id = "debian".into();
        s.codename = "bookworm".into();
        let p = r.plan(&s).unwrap();
        assert_eq!(
            p.steps[0],
            Step::Install(vec!["docker.io".into(), "docker-compose".into()])
        );
        s.codename = "trixie".into();
        assert_eq!(
            r.plan(&s).unwrap().steps[0],
            Step::Install(vec![
                "docker.io".into(),
                "docker-cli".into(),
                "docker-compose".into()
            ])
        );
        s.os_id = "ubuntu".into();
        assert_eq!(
            r.plan(&s).unwrap().steps[0],
            Step::Install(vec!["docker.io".into(), "docker-compose-v2".into()])
        );
    }

    #[test]
    fn existing_distro_docker_is_kept_under_official() {
        let r = Docker::new(&DockerSettings::default());
        let mut s = state();
        s.installed.insert("docker.io".into());
        s.enabled = Some("enabled".into());
        s.active = Some("active".into());
        let p = r.plan(&s).unwrap();
        assert!(p.steps.is_empty());
        assert!(p.notes[0].contains("docker.io is installed"));
    }
}
