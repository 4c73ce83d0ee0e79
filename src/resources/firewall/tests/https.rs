use super::*;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

fn pki(dir: &Path) -> bool {
    let script = r#"
set -e
ec="-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes"
openssl req -x509 -new $ec -keyout ca.key -out ca.pem -days 2 -subj "/CN=test CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1\n' > server.ext
openssl req -new $ec -keyout server.key -out server.csr -subj "/CN=127.0.0.1"
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile server.ext -out server.pem
"#;
    std::process::Command::new("sh")
        .args(["-c", script])
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn reply(path: &str, port: u16) -> Vec<u8> {
    let ok = |body: &str| {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    let redirect = |to: String| {
        format!(
            "HTTP/1.1 302 Found\r\nLocation: {to}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
    };
    match path {
        "/ips-v4" => ok(builtin_lists::V4),
        "/html" => ok("<!DOCTYPE html>\n<html>Just a moment...</html>\n"),
        "/private" => ok("173.245.48.0/20\n10.0.0.0/8\n"),
        "/to-http" => redirect(format!("http://127.0.0.1:{port}/ips-v4")),
        "/to-https" => redirect(format!("https://127.0.0.1:{port}/ips-v4")),
        "/loop" => redirect(format!("https://127.0.0.1:{port}/loop")),
        "/big" => {
            // no Content-Length: the limit must hold while streaming
            let mut s = String::from(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n",
            );
            for i in 0..5000 {
                s.push_str(&format!("104.{}.{}.0/24\n", i / 256 % 256, i % 256));
            }
            s
        }
        _ => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into(),
    }
    .into_bytes()
}

async fn serve(dir: &Path) -> u16 {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(dir.join("server.pem"))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(dir.join("server.key")).unwrap();
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let req = String::from_utf8_lossy(&got);
                let path = req.split_whitespace().nth(1).unwrap_or("/").to_string();
                let _ = tls.write_all(&reply(&path, port)).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    port
}

#[tokio::test(flavor = "current_thread")]
// Every case asks the one server behind the one private CA the test sets up first.
async fn fetch_over_https_with_a_private_ca() {
    let d = tempfile::tempdir().unwrap();
    if !pki(d.path()) {
        eprintln!("skipped: openssl could not make test certificates");
        return;
    }
    let port = serve(d.path()).await;
    let ca = std::fs::read(d.path().join("ca.pem")).unwrap();
    let ca_path = d.path().join("ca.pem");
    let c = lists::client(Duration::from_secs(5), Some((&ca_path, &ca))).unwrap();
    let url = |p: &str| format!("https://127.0.0.1:{port}{p}");
    let get = |p: &str, max_bytes: u64| {
        let c = c.clone();
        let u = url(p);
        async move { lists::fetch(&c, &u, Family::V4, max_bytes, 1000).await }
    };

    assert_eq!(get("/ips-v4", 65536).await.unwrap(), cf(Family::V4));
    assert_eq!(get("/to-https", 65536).await.unwrap(), cf(Family::V4));

    let e = get("/to-http", 65536).await.unwrap_err();
    assert!(
        e.contains("refusing redirect to non-HTTPS http://127.0.0.1"),
        "{e}"
    );
    let e = get("/loop", 65536).await.unwrap_err();
    assert!(e.contains("more than 3 redirects"), "{e}");
    let e = get("/missing", 65536).await.unwrap_err();
    assert!(e.contains("answered HTTP 404 Not Found"), "{e}");
    let e = get("/html", 65536).await.unwrap_err();
    assert!(
        e.contains("rejected: line 1: \"<!DOCTYPE html>\" is not a CIDR"),
        "{e}"
    );
    let e = get("/private", 65536).await.unwrap_err();
    assert!(
        e.contains("line 2: 10.0.0.0/8 is in 10.0.0.0/8, private"),
        "{e}"
    );
    let e = get("/big", 65536).await.unwrap_err();
    assert!(
        e.contains("sent more than firewall.max_list_bytes (65536 bytes)"),
        "{e}"
    );
    let e = get("/ips-v4", 100).await.unwrap_err();
    assert!(
        e.contains("announced") && e.contains("max_list_bytes"),
        "{e}"
    );
    let e = lists::fetch(
        &c,
        &format!("http://127.0.0.1:{port}/ips-v4"),
        Family::V4,
        65536,
        1000,
    )
    .await
    .unwrap_err();
    assert!(e.contains("not an https:// URL"), "{e}");

    // Without the CA the server is not trusted.
    let plain = lists::client(Duration::from_secs(5), None).unwrap();
    let e = lists::fetch(&plain, &url("/ips-v4"), Family::V4, 65536, 1000)
        .await
        .unwrap_err();
    assert!(
        e.starts_with("cannot fetch") && e.to_lowercase().contains("certificate"),
        "{e}"
    );

    // Nothing listening: a clear connect error well within the timeout.
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_port = dead.local_addr().unwrap().port();
    drop(dead);
    let e = lists::fetch(
        &c,
        &format!("https://127.0.0.1:{dead_port}/ips-v4"),
        Family::V4,
        65536,
        1000,
    )
    .await
    .unwrap_err();
    assert!(
        e.starts_with(&format!(
            "cannot fetch https://127.0.0.1:{dead_port}/ips-v4"
        )),
        "{e}"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_silent_server_hits_the_timeout() {
    let d = tempfile::tempdir().unwrap();
    if !pki(d.path()) {
        return;
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let ca = std::fs::read(d.path().join("ca.pem")).unwrap();
    let ca_path = d.path().join("ca.pem");
    let c = lists::client(Duration::from_millis(500), Some((&ca_path, &ca))).unwrap();
    let t0 = std::time::Instant::now();
    let e = lists::fetch(
        &c,
        &format!("https://127.0.0.1:{port}/ips-v4"),
        Family::V4,
        65536,
        1000,
    )
    .await
    .unwrap_err();
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    assert!(e.contains("timed out") || e.contains("timeout"), "{e}");
}

#[test]
fn a_bad_ca_file_is_named() {
    let e = lists::client(
        Duration::from_secs(1),
        Some((Path::new("/etc/x.pem"), b"junk")),
    )
    .unwrap_err();
    assert!(e.starts_with("firewall.ca_file /etc/x.pem"), "{e}");
}
