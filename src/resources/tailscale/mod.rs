//! `tailscale`: the box joined to the tailnet with its hostname and `tag:server`, so CI can
//! reach it (the tailnet IPv4 is CI's SSH_HOST). The auth key only ever travels as
//! `--auth-key=file:PATH`: never on a command line, in a log, a report or an error.

use std::path::Path;
use std::time::Duration;

use anyhow::{Result, bail};
use async_trait::async_trait;
use serde::Deserialize;

use crate::config::TailscaleSettings;
use crate::engine::Name;
use crate::engine::{Change, Check, Describe, Level, Plan, Resource};
use crate::host::{Cmd, Host, apt, files, http, systemctl};

/// Tailscale's package repository signing key, as Tailscale publishes it.
pub const TAILSCALE_FINGERPRINT: &str = "2596A99EAAB33821893C0A79458CA832957F5868";
const KEYRING: &str = "/usr/share/keyrings/tailscale-archive-keyring.gpg";
const SOURCES: &str = "/etc/apt/sources.list.d/tailscale.list";

pub struct Tailscale {
    cfg: TailscaleSettings,
    hostname: String,
    /// How long installing tailscale waits for the dpkg lock (packages.lock_timeout).
    lock_timeout: Duration,
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
            lock_timeout: apt::LOCK_TIMEOUT,
        }
    }

    pub fn with_lock_timeout(mut self, lock_timeout: Duration) -> Self {
        self.lock_timeout = lock_timeout;
        self
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

    fn disabled(&self) -> Option<&'static str> {
        (!self.cfg.enabled).then_some("tailscale.enabled")
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
        let key_file = match files::inspect_target(&self.cfg.auth_key_file.0) {
            Err(_) | Ok(None) => KeyFile::Missing,
            Ok(Some(e)) if e.spec.uid != 0 || e.spec.mode & 0o077 != 0 => KeyFile::Unsafe(format!(
                "owned by uid {} with mode {:04o}",
                e.spec.uid, e.spec.mode
            )),
            Ok(Some(_)) => KeyFile::Ok,
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
                Step::Install { os_id, codename } => {
                    install(host, os_id, codename, self.lock_timeout).await?
                }
                Step::StartDaemon => {
                    host.run(&systemctl::enable("tailscaled.service", true))
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

/// Most bytes a keyring download may have: Tailscale's is a few KiB; more is not a key, and
/// the cap holds while streaming so a hostile server cannot fill memory.
const KEY_MAX_BYTES: usize = 64 * 1024;
const KEY_MAX_REDIRECTS: usize = 5;

/// Everything but the https-only switch, which tests leave off to reach a loopback server.
fn key_client_options() -> http::Options {
    http::Options::download(
        std::time::Duration::from_secs(30),
        std::time::Duration::from_secs(10),
        KEY_MAX_REDIRECTS,
    )
}

fn key_client() -> Result<http::Client> {
    http::Client::new(&key_client_options())
        .map_err(|e| anyhow::anyhow!("cannot set up the HTTPS client: {}", http::error_chain(&e)))
}

/// The body of `url`, refused as soon as more than `cap` bytes are announced or arrive.
async fn fetch_capped(client: &http::Client, url: &str, cap: usize) -> Result<Vec<u8>> {
    use http::FetchError as F;
    match client.get_capped(url, cap as u64).await {
        Ok(body) => Ok(body.bytes),
        Err(F::Send(e)) => bail!("cannot fetch {url}: {}", http::request_error(&e)),
        Err(F::Status { from, status }) => bail!("{from} answered HTTP {status}"),
        Err(F::Announced { from, len }) => {
            bail!("{from} announced {len} bytes, more than the {cap} a signing key may have")
        }
        Err(F::TooLong { from }) => {
            bail!("{from} sent more than {cap} bytes, more than a signing key may have")
        }
        Err(F::Read { from, error }) => {
            bail!("cannot read {from}: {}", http::request_error(&error))
        }
    }
}

/// The keyring apt gets: only the one key with fingerprint `pin`, rebuilt from its own
/// packets, so nothing else the download holds can become trusted.
fn keyring(download: &[u8], url: &str, pin: &str) -> Result<Vec<u8>> {
    crate::openpgp::pinned_keyring(download, "Tailscale", pin).map_err(|e| {
        anyhow::anyhow!("refusing Tailscale's signing key from {url}: {e:#}; nothing written")
    })
}

/// Tailscale's repository, trusted only through its pinned key: the key is downloaded over
/// HTTPS and apt gets only the primary key with Tailscale's published fingerprint.
async fn install(host: &Host, os_id: &str, codename: &str, lock: Duration) -> Result<()> {
    let base = format!("https://pkgs.tailscale.com/stable/{os_id}");
    let url = format!("{base}/{codename}.noarmor.gpg");
    crate::engine::progress(
        Name::Tailscale,
        &format!("fetching Tailscale's signing key from {url}"),
    );
    let download = fetch_capped(&key_client()?, &url, KEY_MAX_BYTES)
        .await
        .map_err(|e| anyhow::anyhow!("Tailscale's signing key: {e:#}; nothing written"))?;
    let key = keyring(&download, &url, TAILSCALE_FINGERPRINT)?;
    let list = format!(
        "# Managed by sapari-agent: Tailscale's repository, pinned to key {TAILSCALE_FINGERPRINT}.\ndeb [signed-by={KEYRING}] {base} {codename} main\n"
    );
    apt::add_repo(
        host,
        &apt::Repo {
            keyring: Path::new(KEYRING),
            key: &key,
            sources: Path::new(SOURCES),
            sources_text: &list,
        },
    )?;
    apt::wait_for_dpkg(host, lock, &|m| crate::engine::progress(Name::Packages, m)).await?;
    apt::update(host).await?;
    apt::install(host, &["tailscale".to_string()]).await
}

#[cfg(test)]
mod tests;
