//! The HTTPS list server standing in for Cloudflare, and its PKI.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::topology::*;
use super::*;

// ---------------------------------------------------------------------------------------------
// The list server

pub(crate) const LIST_SERVER_PY: &str = r#"
import http.server, json, os, socketserver, ssl, sys, threading, time
root, addr = sys.argv[1], sys.argv[2]

class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        path = self.path.split("?")[0]
        with open(os.path.join(root, "hits.log"), "a") as f:
            f.write("%s %s\n" % (self.server.scheme, path))
        try:
            with open(os.path.join(root, "routes.json")) as f:
                routes = json.load(f)
        except Exception:
            routes = {}
        r = routes.get(self.server.scheme + ":" + path) or routes.get(path)
        if r is None:
            r = {"status": 404, "type": "text/plain", "body": "not found\n"}
        if r.get("hang"):
            time.sleep(r["hang"])
            self.close_connection = True
            return
        body = r.get("body", "").encode()
        self.send_response(r.get("status", 200))
        self.send_header("Content-Type", r.get("type", "text/plain"))
        if r.get("location"):
            self.send_header("Location", r["location"])
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass

class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    def server_bind(self):
        # HTTPServer.server_bind would resolve our name (getfqdn): no DNS in here, 10 s lost
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

def serve(port, scheme, cert=None):
    s = S((addr, port), H)
    s.scheme = scheme
    if cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(os.path.join(root, cert + ".pem"), os.path.join(root, cert + ".key"))
        # handshake in the handler thread: a silent client must not block accept()
        s.socket = ctx.wrap_socket(s.socket, server_side=True, do_handshake_on_connect=False)
    threading.Thread(target=s.serve_forever, daemon=True).start()

serve(443, "https", "server")
serve(8443, "https", "rogue")
serve(80, "http")
open(os.path.join(root, "ready"), "w").close()
while True:
    time.sleep(3600)
"#;

pub(crate) const PKI_SH: &str = r#"
cd "$1"; ip=$2
exec >/dev/null 2>openssl.err
ec="-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes"
openssl req -x509 -new $ec -keyout ca.key -out ca.pem -days 3 -subj "/CN=sapari-agent test CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:%s\n' "$ip" > server.ext
openssl req -new $ec -keyout server.key -out server.csr -subj "/CN=$ip"
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 3 -extfile server.ext -out server.pem
# A certificate for the same address from a CA nobody trusts.
openssl req -x509 -new $ec -keyout rogue.key -out rogue.pem -days 3 -subj "/CN=$ip" -addext "subjectAltName=IP:$ip"
"#;

impl Edge {
    // ---- list server ------------------------------------------------------------------------

    pub(crate) fn www(&self) -> PathBuf {
        self.dir().join("www")
    }

    /// The CA the agent is told to trust (`firewall.ca_file`).
    pub fn ca_file(&self) -> PathBuf {
        self.www().join("ca.pem")
    }

    pub(crate) fn pki_and_lists(&mut self) {
        let www = self.www();
        fs::create_dir(&www).unwrap();
        host(&["sh", "-ec", PKI_SH, "sh", &www.to_string_lossy(), LISTS_IP]);
        fs::write(www.join("server.py"), LIST_SERVER_PY).unwrap();
        self.serve(Fam::V4, Reply::Text(cf_list(Fam::V4)));
        self.serve(Fam::V6, Reply::Text(cf_list(Fam::V6)));
        self.start_lists();
    }

    /// URL path of a family's list.
    pub fn list_path(fam: Fam) -> String {
        format!("/ips-{}", fam.suffix())
    }

    pub fn list_url(fam: Fam) -> String {
        format!("https://{LISTS_IP}{}", Self::list_path(fam))
    }

    /// What the list server answers for a family's list from now on.
    pub fn serve(&self, fam: Fam, reply: Reply) {
        self.serve_path(&Self::list_path(fam), reply);
    }

    /// What the list server answers on `path` (HTTPS on :443 and :8443) from now on.
    pub fn serve_path(&self, path: &str, reply: Reply) {
        let mut routes = self.routes.lock().unwrap();
        let http_key = format!("http:{path}");
        routes.remove(&http_key);
        let v = match reply {
            Reply::Text(body) => {
                serde_json::json!({"status": 200, "type": "text/plain", "body": body})
            }
            Reply::Raw {
                status,
                content_type,
                body,
            } => serde_json::json!({"status": status, "type": content_type, "body": body}),
            Reply::RedirectToHttp { body } => {
                routes.insert(
                    http_key,
                    serde_json::json!({"status": 200, "type": "text/plain", "body": body}),
                );
                serde_json::json!({"status": 302, "type": "text/plain", "body": "",
                    "location": format!("http://{LISTS_IP}{path}")})
            }
            Reply::Hang(d) => serde_json::json!({"hang": d.as_secs_f64()}),
        };
        routes.insert(path.to_string(), v);
        let text = serde_json::to_string_pretty(&*routes).unwrap();
        let tmp = self.www().join("routes.json.tmp");
        fs::write(&tmp, text).unwrap();
        fs::rename(&tmp, self.www().join("routes.json")).unwrap();
    }

    /// (scheme, path) of every request the list server has seen.
    pub fn list_hits(&self) -> Vec<(String, String)> {
        fs::read_to_string(self.www().join("hits.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                l.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
            })
            .collect()
    }

    pub fn start_lists(&self) {
        let mut g = self.lists.lock().unwrap();
        assert!(g.is_none(), "list server already running");
        let www = self.www();
        let _ = fs::remove_file(www.join("ready"));
        let log = fs::File::create(www.join("server.log")).unwrap();
        let py = which(&["/usr/bin/python3", "python3"]).expect("python3");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns(Host::Lists)])
            .arg(py)
            .arg(www.join("server.py"))
            .arg(&www)
            .arg(LISTS_IP)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("spawn list server");
        *g = Some(child);
        let t0 = Instant::now();
        while !www.join("ready").exists() {
            if let Some(st) = g.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "list server exited ({st}):\n{}",
                    fs::read_to_string(www.join("server.log")).unwrap_or_default()
                );
            }
            assert!(
                t0.elapsed() < Duration::from_secs(15),
                "list server not ready after 15 s"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the list server: connections to it are refused until `start_lists`.
    pub fn stop_lists(&self) {
        if let Some(mut c) = self.lists.lock().unwrap().take() {
            signal_group(c.id(), "KILL");
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
