//! `tailscale`: the box joined to the tailnet with its hostname and `tag:server`, so CI can
//! reach it (the tailnet IPv4 is CI's SSH_HOST). The auth key only ever travels as
//! `--auth-key=file:PATH`: never on a command line, in a log, a report or an error.

use std::os::unix::fs::MetadataExt;

use anyhow::{Result, bail};
use async_trait::async_trait;
use serde::Deserialize;

use crate::config::TailscaleSettings;
use crate::engine::{Change, Check, Describe, Level, Plan, Resource};
use crate::host::{Cmd, Host};
use crate::resources::Name;

/// Tailscale's package repository signing key, as Tailscale publishes it.
pub const TAILSCALE_FINGERPRINT: &str = "2596A99EAAB33821893C0A79458CA832957F5868";
const KEYRING: &str = "/usr/share/keyrings/tailscale-archive-keyring.gpg";
const SOURCES: &str = "/etc/apt/sources.list.d/tailscale.list";

pub struct Tailscale {
    cfg: TailscaleSettings,
    hostname: String,
}

impl Tailscale {
    pub fn new(cfg: &TailscaleSettings, default_hostname: &str) -> Self {
        let hostname = if cfg.hostname.is_empty() {
            default_hostname.to_string()
        } else {
            cfg.hostname.clone()
        };
        Self {
            cfg: cfg.clone(),
            hostname,
        }
    }
}

/// The parts of `tailscale status --json` the agent reads.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct Status {
    #[serde(default)]
    pub backend_state: String,
    #[serde(default, rename = "Self")]
    pub self_node: Option<Node>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct Node {
    #[serde(default)]
    pub host_name: String,
    #[serde(default, rename = "TailscaleIPs")]
    pub tailscale_ips: Vec<String>,
    #[serde(default)]
    pub tags: Option<Vec<String>>,
}

impl Status {
    pub fn ipv4(&self) -> Option<&str> {
        self.self_node
            .as_ref()?
            .tailscale_ips
            .iter()
            .find(|ip| ip.contains('.'))
            .map(String::as_str)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum KeyFile {
    Missing,
    /// Present, but readable or writable by someone other than root.
    Unsafe(String),
    Ok,
}

#[derive(Debug, Clone)]
pub struct State {
    pub installed: bool,
    pub os_id: String,
    pub codename: String,
    /// `tailscale status --json`, or why it could not be read (daemon down).
    pub status: Result<Status, String>,
    pub key_file: KeyFile,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    Install { os_id: String, codename: String },
    StartDaemon,
    Up,
    SetHostname { from: String },
}

impl Describe for Step {
    fn change(&self) -> Change {
        match self {
            Step::Install { os_id, codename } => Change::value(
                "tailscale package",
                Some("absent".into()),
                Some(format!(
                    "installed from Tailscale's {os_id} {codename} repository"
                )),
            ),
            Step::StartDaemon => {
                Change::value("tailscaled", Some("stopped".into()), Some("running".into()))
            }
            Step::Up => Change::value("tailnet", Some("not joined".into()), Some("joined".into())),
            Step::SetHostname { from } => {
                Change::value("tailnet hostname", Some(from.clone()), None)
            }
        }
    }
}

impl Tailscale {
    fn up_cmd(&self) -> Cmd {
        Cmd::new("tailscale")
            .arg("up")
            .arg(format!("--auth-key=file:{}", self.cfg.auth_key_file))
            .arg(format!("--hostname={}", self.hostname))
            .arg(format!("--advertise-tags={}", self.cfg.tags.join(",")))
            .timeout(std::time::Duration::from_secs(120))
    }
}

#[async_trait]
impl Resource for Tailscale {
    type State = State;
    type Step = Step;

    fn name(&self) -> Name {
        Name::Tailscale
    }

    fn depends_on(&self) -> &'static [Name] {
        &[Name::Packages]
    }

    async fn observe(&self, host: &Host) -> Result<State> {
        let installed = host.program_exists("tailscale");
        let status = if installed {
            let o = host
                .query(&Cmd::new("tailscale").args(["status", "--json"]))
                .await?;
            // A logged-out node exits non-zero but still prints its state.
            match serde_json::from_str::<Status>(&o.stdout) {
                Ok(s) => Ok(s),
                Err(_) => Err(o.stderr.trim().to_string()),
            }
        } else {
            Err("not installed".into())
        };
        let key_file = match std::fs::metadata(&self.cfg.auth_key_file.0) {
            Err(_) => KeyFile::Missing,
            Ok(m) if m.uid() != 0 || m.mode() & 0o077 != 0 => KeyFile::Unsafe(format!(
                "owned by uid {} with mode {:04o}",
                m.uid(),
                m.mode() & 0o7777
            )),
            Ok(_) => KeyFile::Ok,
        };
        let (os_id, codename) = host.os_release()?;
        Ok(State {
            installed,
            os_id,
            codename,
            status,
            key_file,
        })
    }

    fn plan(&self, s: &State) -> Result<Plan<Step>> {
        let mut plan = Plan::default();
        if !self.cfg.enabled {
            plan.notes
                .push("tailscale management disabled (tailscale.enabled = false)".into());
            return Ok(plan);
        }
        if !s.installed {
            if !matches!(s.os_id.as_str(), "ubuntu" | "debian") || s.codename.is_empty() {
                bail!(
                    "tailscale is not installed and Tailscale's apt repository needs Ubuntu or Debian (found ID={:?} VERSION_CODENAME={:?}); install it by hand or set tailscale.enabled = false",
                    s.os_id,
                    s.codename
                );
            }
            plan.steps.push(Step::Install {
                os_id: s.os_id.clone(),
                codename: s.codename.clone(),
            });
        }
        let key = self.cfg.auth_key_file.to_string();
        let need_key = || -> Result<()> {
            match &s.key_file {
                KeyFile::Ok => Ok(()),
                KeyFile::Missing => bail!(
                    "not joined to the tailnet and no auth key: put one in {key} (root-owned, mode 0600) and converge again"
                ),
                KeyFile::Unsafe(why) => bail!(
                    "{key} is {why}; the auth key must be readable by root only (fix: chown root:root {key}; chmod 600 {key})"
                ),
            }
        };
        match &s.status {
            Err(_) => {
                plan.steps.push(Step::StartDaemon);
                need_key()?;
                plan.steps.push(Step::Up);
            }
            Ok(st) if st.backend_state != "Running" => {
                need_key()?;
                plan.steps.push(Step::Up);
            }
            Ok(st) => {
                let node = st.self_node.clone().unwrap_or_default();
                let tags = node.tags.unwrap_or_default();
                if self.cfg.tags.iter().any(|t| !tags.contains(t)) {
                    // Tags can only be advertised by `up`; our flags are the only ones set.
                    plan.steps.push(Step::Up);
                } else if !node.host_name.eq_ignore_ascii_case(&self.hostname) {
                    plan.steps.push(Step::SetHostname {
                        from: node.host_name.clone(),
                    });
                }
                if let Some(ip) = st.ipv4() {
                    plan.notes
                        .push(format!("tailnet IPv4 {ip} (CI's SSH_HOST)"));
                }
            }
        }
        Ok(plan)
    }

    async fn apply(&self, host: &Host, _s: &State, steps: &[Step]) -> Result<()> {
        for step in steps {
            match step {
                Step::Install { os_id, codename } => install(host, os_id, codename).await?,
                Step::StartDaemon => {
                    host.run(&Cmd::new("systemctl").args([
                        "enable",
                        "--now",
                        "tailscaled.service",
                    ]))
                    .await?;
                }
                Step::Up => {
                    host.run(&self.up_cmd()).await?;
                }
                Step::SetHostname { .. } => {
                    host.run(
                        &Cmd::new("tailscale")
                            .args(["set", &format!("--hostname={}", self.hostname)]),
                    )
                    .await?;
                }
            }
        }
        Ok(())
    }

    fn checks(&self, s: &State) -> Vec<Check> {
        if !self.cfg.enabled {
            return vec![];
        }
        let (level, detail) = match &s.status {
            Ok(st) if st.backend_state == "Running" => (
                Level::Pass,
                format!("joined, tailnet IPv4 {}", st.ipv4().unwrap_or("unknown")),
            ),
            Ok(st) => (Level::Fail, format!("backend {}", st.backend_state)),
            Err(e) => (Level::Fail, e.clone()),
        };
        vec![Check::new(
            "tailscale",
            level,
            detail,
            "sapari-agent converge --only tailscale",
        )]
    }
}

/// Tailscale's repository, trusted only through its pinned key: the key is downloaded over
/// HTTPS and written only if its OpenPGP fingerprint is Tailscale's published one.
async fn install(host: &Host, os_id: &str, codename: &str) -> Result<()> {
    let base = format!("https://pkgs.tailscale.com/stable/{os_id}");
    let url = format!("{base}/{codename}.noarmor.gpg");
    crate::progress(
        Name::Tailscale,
        &format!("fetching Tailscale's signing key from {url}"),
    );
    let key = async {
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()?;
        let resp = client.get(&url).send().await?.error_for_status()?;
        anyhow::Ok(resp.bytes().await?.to_vec())
    }
    .await
    .map_err(|e| anyhow::anyhow!("cannot fetch Tailscale's signing key from {url}: {e:#}"))?;
    if key.len() > 64 * 1024 {
        bail!(
            "{url} returned {} bytes, not a signing key; nothing written",
            key.len()
        );
    }
    let fp = crate::openpgp::fingerprint(&key)
        .map_err(|e| anyhow::anyhow!("{url} is not an OpenPGP key ({e}); nothing written"))?;
    if fp != TAILSCALE_FINGERPRINT {
        bail!(
            "the key from {url} has fingerprint {fp}, not Tailscale's {TAILSCALE_FINGERPRINT}; nothing written"
        );
    }
    let spec = crate::host::FileSpec::root(0o644);
    host.write(std::path::Path::new(KEYRING), &key, spec, false)?;
    let list = format!(
        "# Managed by sapari-agent: Tailscale's repository, pinned to key {TAILSCALE_FINGERPRINT}.\ndeb [signed-by={KEYRING}] {base} {codename} main\n"
    );
    host.write(std::path::Path::new(SOURCES), list.as_bytes(), spec, false)?;
    crate::resources::packages::wait_for_dpkg(host, std::time::Duration::from_secs(600)).await?;
    let apt = |args: &[&str]| {
        Cmd::new("apt-get")
            .args(["-q", "-y", "-o", "DPkg::Lock::Timeout=120"])
            .args(crate::resources::packages::APT_DPKG_NO_PTY)
            .args(args.iter().copied())
            .env("DEBIAN_FRONTEND", "noninteractive")
            .timeout(std::time::Duration::from_secs(1800))
    };
    host.run(&apt(&["update"])).await?;
    host.run(&apt(&["install", "--no-install-recommends", "tailscale"]))
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AbsPath;

    const RUNNING: &str = r#"{"BackendState":"Running","Self":{"HostName":"sapari-prod","DNSName":"sapari-prod.tail1.ts.net.","TailscaleIPs":["100.101.102.103","fd7a:115c:a1e0::1"],"Tags":["tag:server"],"Online":true}}"#;

    fn res() -> Tailscale {
        Tailscale::new(&TailscaleSettings::default(), "sapari-prod")
    }

    fn state(status: Result<&str, &str>, key: KeyFile) -> State {
        State {
            installed: true,
            os_id: "ubuntu".into(),
            codename: "noble".into(),
            status: status
                .map(|j| serde_json::from_str(j).unwrap())
                .map_err(str::to_string),
            key_file: key,
        }
    }

    #[test]
    fn running_with_name_and_tag_is_converged_and_reports_the_ip() {
        let p = res().plan(&state(Ok(RUNNING), KeyFile::Missing)).unwrap();
        assert!(p.steps.is_empty());
        assert!(p.notes[0].contains("100.101.102.103"));
    }

    #[test]
    fn renamed_node_uses_set_and_missing_tag_uses_up() {
        let j = RUNNING.replace(
            "\"HostName\":\"sapari-prod\"",
            "\"HostName\":\"ubuntu-4gb\"",
        );
        let p = res().plan(&state(Ok(&j), KeyFile::Ok)).unwrap();
        assert_eq!(
            p.steps,
            vec![Step::SetHostname {
                from: "ubuntu-4gb".into()
            }]
        );
        let j = RUNNING.replace("\"Tags\":[\"tag:server\"],", "");
        assert_eq!(
            res().plan(&state(Ok(&j), KeyFile::Ok)).unwrap().steps,
            vec![Step::Up]
        );
    }

    #[test]
    fn not_joined_needs_a_safe_key_file() {
        let logged_out =
            r#"{"BackendState":"NeedsLogin","Self":{"HostName":"x","TailscaleIPs":[]}}"#;
        assert_eq!(
            res()
                .plan(&state(Ok(logged_out), KeyFile::Ok))
                .unwrap()
                .steps,
            vec![Step::Up]
        );
        let e = res()
            .plan(&state(Ok(logged_out), KeyFile::Missing))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/etc/sapari-agent/tailscale.key"), "{e}");
        let e = res()
            .plan(&state(
                Ok(logged_out),
                KeyFile::Unsafe("owned by uid 1000 with mode 0644".into()),
            ))
            .unwrap_err()
            .to_string();
        assert!(e.contains("chmod 600"), "{e}");
        let down = res()
            .plan(&state(
                Err("failed to connect to local tailscaled"),
                KeyFile::Ok,
            ))
            .unwrap();
        assert_eq!(down.steps, vec![Step::StartDaemon, Step::Up]);
    }

    #[test]
    fn the_key_travels_as_a_file_reference_only() {
        let r = Tailscale::new(
            &TailscaleSettings {
                auth_key_file: AbsPath("/etc/sapari-agent/ts.key".into()),
                ..TailscaleSettings::default()
            },
            "web-1",
        );
        let line = r.up_cmd().to_string();
        assert!(
            line.contains("--auth-key=file:/etc/sapari-agent/ts.key"),
            "{line}"
        );
        assert!(
            line.contains("--hostname=web-1") && line.contains("--advertise-tags=tag:server"),
            "{line}"
        );
    }

    #[test]
    fn disabled_and_not_installed() {
        let r = Tailscale::new(
            &TailscaleSettings {
                enabled: false,
                ..TailscaleSettings::default()
            },
            "x",
        );
        let mut s = state(Err("not installed"), KeyFile::Ok);
        s.installed = false;
        assert!(r.plan(&s).unwrap().steps.is_empty());
        let p = res().plan(&s).unwrap();
        assert_eq!(
            p.steps,
            vec![
                Step::Install {
                    os_id: "ubuntu".into(),
                    codename: "noble".into()
                },
                Step::StartDaemon,
                Step::Up
            ]
        );
        s.os_id = "fedora".into();
        assert!(
            res()
                .plan(&s)
                .unwrap_err()
                .to_string()
                .contains("tailscale.enabled = false")
        );
    }
}
