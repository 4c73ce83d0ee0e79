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

/// Most bytes a keyring download may have: Tailscale's is a few KiB; more is not a key, and
/// the cap holds while streaming so a hostile server cannot fill memory.
const KEY_MAX_BYTES: usize = 64 * 1024;
const KEY_MAX_REDIRECTS: usize = 5;

/// Redirects are followed only to https: a hop to plain http would let anyone on the path
/// choose what the download holds, whatever the first URL was.
fn https_redirects_only() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        if attempt.url().scheme() != "https" {
            let to = attempt.url().to_string();
            attempt.error(format!("refusing redirect to non-HTTPS {to}"))
        } else if attempt.previous().len() > KEY_MAX_REDIRECTS {
            attempt.error(format!("more than {KEY_MAX_REDIRECTS} redirects"))
        } else {
            attempt.follow()
        }
    })
}

/// Everything but the https-only switch, which tests leave off to reach a loopback server.
fn key_client_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .redirect(https_redirects_only())
        .connect_timeout(std::time::Duration::from_secs(10))
        .timeout(std::time::Duration::from_secs(30))
        .user_agent(concat!("sapari-agent/", env!("CARGO_PKG_VERSION")))
}

fn key_client() -> Result<reqwest::Client> {
    key_client_builder()
        .https_only(true)
        .build()
        .map_err(|e| anyhow::anyhow!("cannot set up the HTTPS client: {}", crate::error_chain(&e)))
}

/// The body of `url`, refused as soon as more than `cap` bytes are announced or arrive.
async fn fetch_capped(client: &reqwest::Client, url: &str, cap: usize) -> Result<Vec<u8>> {
    let mut resp = client
        .get(url)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("cannot fetch {url}: {}", crate::request_error(&e)))?;
    let from = if resp.url().as_str() == url {
        url.to_string()
    } else {
        format!("{url} (redirected to {})", resp.url())
    };
    let status = resp.status();
    if !status.is_success() {
        bail!("{from} answered HTTP {status}");
    }
    if let Some(len) = resp.content_length()
        && len > cap as u64
    {
        bail!("{from} announced {len} bytes, more than the {cap} a signing key may have");
    }
    let mut body = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(c)) => {
                if body.len() + c.len() > cap {
                    bail!("{from} sent more than {cap} bytes, more than a signing key may have");
                }
                body.extend_from_slice(&c);
            }
            Ok(None) => return Ok(body),
            Err(e) => bail!("cannot read {from}: {}", crate::request_error(&e)),
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
async fn install(host: &Host, os_id: &str, codename: &str) -> Result<()> {
    let base = format!("https://pkgs.tailscale.com/stable/{os_id}");
    let url = format!("{base}/{codename}.noarmor.gpg");
    crate::progress(
        Name::Tailscale,
        &format!("fetching Tailscale's signing key from {url}"),
    );
    let download = fetch_capped(&key_client()?, &url, KEY_MAX_BYTES)
        .await
        .map_err(|e| anyhow::anyhow!("Tailscale's signing key: {e:#}; nothing written"))?;
    let key = keyring(&download, &url, TAILSCALE_FINGERPRINT)?;
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

    const REPO: &[u8] = include_bytes!("../../testdata/openpgp/repo.gpg");
    const REPO_FP: &str = "AA07D3C91E7CF053EB2618D4AD2543E5EBBB8742";
    const ATTACKER: &[u8] = include_bytes!("../../testdata/openpgp/attacker.gpg");

    #[test]
    fn the_keyring_holds_only_the_pinned_key() {
        let url = "https://example.invalid/noble.noarmor.gpg";
        let out = keyring(REPO, url, REPO_FP).unwrap();
        assert_eq!(crate::openpgp::fingerprint(&out).unwrap(), REPO_FP);
        let body = |b: &[u8]| -> Vec<(u8, Vec<u8>)> {
            crate::openpgp::packets(b)
                .unwrap()
                .iter()
                .map(|p| (p.tag, p.body.to_vec()))
                .collect()
        };
        assert_eq!(body(&out), body(REPO));

        let e = keyring(&[REPO, ATTACKER].concat(), url, REPO_FP)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!(
                "refusing Tailscale's signing key from {url}: the download holds 2 primary keys"
            )),
            "{e}"
        );
        assert!(
            e.ends_with(&format!(
                "only Tailscale's {REPO_FP} is accepted; nothing written"
            )),
            "{e}"
        );
        let e = keyring(REPO, url, TAILSCALE_FINGERPRINT)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!(
                "the primary key is {REPO_FP}, not Tailscale's {TAILSCALE_FINGERPRINT}"
            )),
            "{e}"
        );
        let e = keyring(&[REPO, b"\0"].concat(), url, REPO_FP)
            .unwrap_err()
            .to_string();
        assert!(e.contains("is not an OpenPGP packet header"), "{e}");
    }

    /// A plain-HTTP server on 127.0.0.1 for the download limits; the paths are the cases.
    mod http {
        use super::*;
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        async fn reply(path: &str, port: u16, tcp: &mut tokio::net::TcpStream) {
            let head = |status: &str, extra: &str| {
                format!("HTTP/1.1 {status}\r\n{extra}Connection: close\r\n\r\n").into_bytes()
            };
            let redirect = |to: String| {
                head(
                    "302 Found",
                    &format!("Location: {to}\r\nContent-Length: 0\r\n"),
                )
            };
            let (head, body, chunk): (Vec<u8>, Vec<u8>, usize) = match path {
                "/key" => (
                    head("200 OK", &format!("Content-Length: {}\r\n", REPO.len())),
                    REPO.to_vec(),
                    REPO.len(),
                ),
                // No Content-Length: only the streaming count can stop these.
                p if p.starts_with("/stream/") => {
                    let n: usize = p["/stream/".len()..].parse().unwrap();
                    (head("200 OK", ""), vec![0xA5; n], 1000)
                }
                "/announced" => (
                    head("200 OK", "Content-Length: 100000\r\n"),
                    vec![0xA5; 100],
                    100,
                ),
                "/to-http" => (redirect(format!("http://127.0.0.1:{port}/key")), vec![], 1),
                _ => (head("404 Not Found", "Content-Length: 0\r\n"), vec![], 1),
            };
            if tcp.write_all(&head).await.is_err() {
                return;
            }
            for c in body.chunks(chunk) {
                // The client hangs up once over its cap; the rest of the body is never sent.
                if tcp.write_all(c).await.is_err() || tcp.flush().await.is_err() {
                    return;
                }
                tokio::task::yield_now().await;
            }
            let _ = tcp.shutdown().await;
        }

        /// The port, and how many connections the server accepted.
        async fn serve() -> (u16, Arc<AtomicUsize>) {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let accepted = Arc::new(AtomicUsize::new(0));
            let count = accepted.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((mut tcp, _)) = listener.accept().await else {
                        return;
                    };
                    count.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 4096];
                        let mut got = Vec::new();
                        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                            match tcp.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => got.extend_from_slice(&buf[..n]),
                            }
                        }
                        let req = String::from_utf8_lossy(&got);
                        let path = req.split_whitespace().nth(1).unwrap_or("/").to_string();
                        reply(&path, port, &mut tcp).await;
                    });
                }
            });
            (port, accepted)
        }

        #[tokio::test(flavor = "current_thread")]
        async fn the_download_is_capped_while_streaming() {
            let (port, _) = serve().await;
            let client = key_client_builder().build().unwrap();
            let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
            let get = |p: &str| {
                let (c, u) = (client.clone(), url(p));
                async move { fetch_capped(&c, &u, KEY_MAX_BYTES).await }
            };

            assert_eq!(get("/key").await.unwrap(), REPO);
            assert_eq!(get("/stream/65536").await.unwrap().len(), 65536);

            let e = get("/stream/65537").await.unwrap_err().to_string();
            assert_eq!(
                e,
                format!(
                    "{} sent more than 65536 bytes, more than a signing key may have",
                    url("/stream/65537")
                )
            );
            let e = get("/stream/10000000").await.unwrap_err().to_string();
            assert!(e.contains("sent more than 65536 bytes"), "{e}");
            let e = get("/announced").await.unwrap_err().to_string();
            assert!(
                e.contains("announced 100000 bytes, more than the 65536 a signing key may have"),
                "{e}"
            );
            let e = get("/missing").await.unwrap_err().to_string();
            assert!(e.contains("answered HTTP 404 Not Found"), "{e}");
        }

        #[tokio::test(flavor = "current_thread")]
        async fn a_redirect_to_http_is_refused() {
            let (port, accepted) = serve().await;
            let client = key_client_builder().build().unwrap();
            let url = format!("http://127.0.0.1:{port}/to-http");
            let e = fetch_capped(&client, &url, KEY_MAX_BYTES)
                .await
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(&format!(
                    "refusing redirect to non-HTTPS http://127.0.0.1:{port}/key"
                )),
                "{e}"
            );
            assert_eq!(
                accepted.load(Ordering::SeqCst),
                1,
                "the redirect was followed"
            );
        }

        #[tokio::test(flavor = "current_thread")]
        async fn the_key_client_never_speaks_plain_http() {
            let (port, accepted) = serve().await;
            let url = format!("http://127.0.0.1:{port}/key");
            let e = fetch_capped(&key_client().unwrap(), &url, KEY_MAX_BYTES)
                .await
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(&format!("cannot fetch {url}")), "{e}");
            assert_eq!(accepted.load(Ordering::SeqCst), 0, "it connected over http");
        }
    }
}
