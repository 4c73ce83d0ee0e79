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
    let logged_out = r#"{"BackendState":"NeedsLogin","Self":{"HostName":"x","TailscaleIPs":[]}}"#;
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
    assert_eq!(r.disabled(), Some("tailscale.enabled"));
    assert_eq!(res().disabled(), None);
    let mut s = state(Err("not installed"), KeyFile::Ok);
    s.installed = false;
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
    use tokio::io::AsyncWriteExt;

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
        crate::host::http::test_server::serve(|path, port, mut tcp| async move {
            reply(&path, port, &mut tcp).await
        })
        .await
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_download_is_capped_while_streaming() {
        let (port, _) = serve().await;
        let client =
            crate::host::http::Client::new(&key_client_options().allow_http_for_tests()).unwrap();
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
        let client =
            crate::host::http::Client::new(&key_client_options().allow_http_for_tests()).unwrap();
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
