//! The agent's one HTTP client, over reqwest 0.13 (hyper, and rustls with the platform's
//! root store): timeouts chosen by each caller, redirects either refused or followed to
//! https only and counted, the system roots plus an operator's CA bundle, bodies read
//! chunk by chunk under a byte cap, and reqwest's errors worded for messages.
//!
//! Its users: Tailscale's signing key and Cloudflare's address lists (downloads, https
//! only) and compose's health probes (any scheme, no redirect). Unit tests reach a server
//! on 127.0.0.1 over plain http through [`Options::allow_http_for_tests`], which exists
//! only in test builds, or over https with their own CA through [`Options::with_roots_pem`].

use std::time::Duration;

pub use reqwest::{Error, StatusCode, Url};

/// What a client does with a redirect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redirects {
    /// Never followed: the 3xx is the answer.
    None,
    /// Followed to https only, at most `max` times: a hop to plain http would let anyone
    /// on the path choose what the download holds, whatever the first URL was.
    HttpsOnly { max: usize },
}

/// How one caller's client behaves. Each caller keeps its own limits; only the way they
/// are applied is shared.
#[derive(Clone)]
pub struct Options {
    timeout: Duration,
    connect_timeout: Option<Duration>,
    redirects: Redirects,
    https_only: bool,
    user_agent: bool,
    roots: Vec<reqwest::Certificate>,
}

/// Why an operator's CA bundle cannot be used.
#[derive(Debug)]
pub enum CaError {
    Unreadable(Error),
    Empty,
}

impl Options {
    /// A download: https only (the first URL and every redirect), at most `max_redirects`
    /// redirects, `timeout` for the whole request, `connect_timeout` for the connection,
    /// the agent's user agent.
    pub fn download(timeout: Duration, connect_timeout: Duration, max_redirects: usize) -> Self {
        Self {
            timeout,
            connect_timeout: Some(connect_timeout),
            redirects: Redirects::HttpsOnly { max: max_redirects },
            https_only: true,
            user_agent: true,
            roots: Vec::new(),
        }
    }

    /// A status probe of a URL the operator configured: any scheme (a health endpoint is
    /// often plain http on loopback), no redirect followed, `timeout` for the whole request.
    pub fn probe(timeout: Duration) -> Self {
        Self {
            timeout,
            connect_timeout: None,
            redirects: Redirects::None,
            https_only: false,
            user_agent: false,
            roots: Vec::new(),
        }
    }

    /// Trust the certificates of a PEM bundle as well as the system roots.
    pub fn with_roots_pem(mut self, pem: &[u8]) -> Result<Self, CaError> {
        let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(CaError::Unreadable)?;
        if certs.is_empty() {
            return Err(CaError::Empty);
        }
        self.roots.extend(certs);
        Ok(self)
    }

    /// The test seam: everything as configured but the https-only switch, so a test can
    /// reach a plain-http server on 127.0.0.1. Redirects keep their policy.
    #[cfg(test)]
    pub fn allow_http_for_tests(mut self) -> Self {
        self.https_only = false;
        self
    }
}

fn redirect_policy(r: Redirects) -> reqwest::redirect::Policy {
    match r {
        Redirects::None => reqwest::redirect::Policy::none(),
        Redirects::HttpsOnly { max } => reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.url().scheme() != "https" {
                let to = attempt.url().to_string();
                attempt.error(format!("refusing redirect to non-HTTPS {to}"))
            } else if attempt.previous().len() > max {
                attempt.error(format!("more than {max} redirects"))
            } else {
                attempt.follow()
            }
        }),
    }
}

/// A body refused or not received, with what a message needs.
#[derive(Debug)]
pub enum FetchError {
    /// No answer: connection, TLS, a refused redirect, the time limit.
    Send(Error),
    /// `from` is the URL asked for, with where it was redirected to when it was.
    Status { from: String, status: StatusCode },
    /// A `Content-Length` above the cap: refused before any byte of the body.
    Announced { from: String, len: u64 },
    /// More bytes than the cap arrived; reading stopped there.
    TooLong { from: String },
    /// The body broke off.
    Read { from: String, error: Error },
}

/// A body received whole.
#[derive(Debug)]
pub struct Body {
    /// The URL asked for, with where it was redirected to when it was: for messages.
    pub from: String,
    pub bytes: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct Client {
    inner: reqwest::Client,
}

impl Client {
    pub fn new(opts: &Options) -> Result<Client, Error> {
        let mut b = reqwest::Client::builder()
            .https_only(opts.https_only)
            .redirect(redirect_policy(opts.redirects))
            .timeout(opts.timeout);
        if let Some(t) = opts.connect_timeout {
            b = b.connect_timeout(t);
        }
        if opts.user_agent {
            b = b.user_agent(concat!("sapari-agent/", env!("CARGO_PKG_VERSION")));
        }
        if !opts.roots.is_empty() {
            b = b.tls_certs_merge(opts.roots.clone());
        }
        Ok(Client { inner: b.build()? })
    }

    /// The status code `url` answers a GET with (the body is not read).
    pub async fn status(&self, url: &str) -> Result<u16, Error> {
        self.inner
            .get(url)
            .send()
            .await
            .map(|r| r.status().as_u16())
    }

    /// The body of a successful GET of `url`, refused as soon as more than `cap` bytes are
    /// announced or arrive, so a hostile server cannot fill memory.
    pub async fn get_capped(&self, url: &str, cap: u64) -> Result<Body, FetchError> {
        let mut resp = self.inner.get(url).send().await.map_err(FetchError::Send)?;
        let from = if resp.url().as_str() == url {
            url.to_string()
        } else {
            format!("{url} (redirected to {})", resp.url())
        };
        let status = resp.status();
        if !status.is_success() {
            return Err(FetchError::Status { from, status });
        }
        if let Some(len) = resp.content_length()
            && len > cap
        {
            return Err(FetchError::Announced { from, len });
        }
        let mut bytes: Vec<u8> = Vec::new();
        loop {
            match resp.chunk().await {
                Ok(Some(c)) => {
                    if (bytes.len() + c.len()) as u64 > cap {
                        return Err(FetchError::TooLong { from });
                    }
                    bytes.extend_from_slice(&c);
                }
                Ok(None) => return Ok(Body { from, bytes }),
                Err(error) => return Err(FetchError::Read { from, error }),
            }
        }
    }
}

/// An error with its sources, for messages (a source already quoted by the one above it
/// is not repeated).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

/// Why a request failed (connection refused, timed out, certificate): reqwest's own top
/// line, "error sending request for url (...)", only repeats the URL.
pub fn request_error(e: &Error) -> String {
    match std::error::Error::source(e) {
        Some(src) => error_chain(src),
        None => e.to_string(),
    }
}

/// The loopback HTTP server of the unit tests that exercise this client (here and in the
/// resources that download through it): plain HTTP on 127.0.0.1, reached only through
/// [`Options::allow_http_for_tests`].
#[cfg(test)]
pub mod test_server {
    use std::future::Future;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::AsyncReadExt;
    use tokio::net::TcpStream;

    /// Reads each request's head and hands its path, the server's port and the connection to
    /// `answer`. Returns the port and how many connections were accepted.
    pub async fn serve<F, Fut>(answer: F) -> (u16, Arc<AtomicUsize>)
    where
        F: Fn(String, u16, TcpStream) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let answer = Arc::new(answer);
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let answer = answer.clone();
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
                    answer(path, port, tcp).await;
                });
            }
        });
        (port, accepted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A plain-http server on 127.0.0.1 that answers every request with `reply`.
    async fn serve(reply: &'static str) -> u16 {
        let (port, _) = test_server::serve(move |_, _, mut tcp| async move {
            let _ = tcp.write_all(reply.as_bytes()).await;
            let _ = tcp.shutdown().await;
        })
        .await;
        port
    }

    const FOUND: &str = "HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:1/x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

    #[tokio::test(flavor = "current_thread")]
    async fn a_probe_reports_a_redirect_without_following_it() {
        let port = serve(FOUND).await;
        let c = Client::new(&Options::probe(Duration::from_secs(3))).unwrap();
        let code = c.status(&format!("http://127.0.0.1:{port}/")).await;
        assert_eq!(code.unwrap(), 302);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_download_refuses_plain_http_and_a_redirect_to_it() {
        let port = serve(FOUND).await;
        let url = format!("http://127.0.0.1:{port}/");
        let opts = Options::download(Duration::from_secs(5), Duration::from_secs(5), 3);
        let e = Client::new(&opts).unwrap().get_capped(&url, 10).await;
        assert!(matches!(e, Err(FetchError::Send(_))), "{e:?}");
        let c = Client::new(&opts.allow_http_for_tests()).unwrap();
        let Err(FetchError::Send(e)) = c.get_capped(&url, 10).await else {
            panic!("the redirect was followed");
        };
        let e = request_error(&e);
        assert!(
            e.contains("refusing redirect to non-HTTPS http://127.0.0.1:1/x"),
            "{e}"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_cap_holds_for_an_announced_and_a_streamed_body() {
        let port =
            serve("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello").await;
        let url = format!("http://127.0.0.1:{port}/");
        let opts = Options::download(Duration::from_secs(5), Duration::from_secs(5), 3);
        let c = Client::new(&opts.allow_http_for_tests()).unwrap();
        assert_eq!(c.get_capped(&url, 5).await.unwrap().bytes, b"hello");
        let e = c.get_capped(&url, 4).await;
        assert!(
            matches!(e, Err(FetchError::Announced { len: 5, .. })),
            "{e:?}"
        );
        let port = serve("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nhello").await;
        let url = format!("http://127.0.0.1:{port}/");
        let e = c.get_capped(&url, 4).await;
        assert!(
            matches!(&e, Err(FetchError::TooLong { from }) if *from == url),
            "{e:?}"
        );
    }

    #[test]
    fn a_pem_without_certificates_is_refused() {
        let opts = Options::probe(Duration::from_secs(1));
        assert!(matches!(opts.with_roots_pem(b"junk"), Err(CaError::Empty)));
    }
}
