//! Real-traffic fixture for the `firewall` resource: an "internet" made of network namespaces
//! around a server that runs a real `dockerd` publishing :443 (TCP and UDP, IPv4 and IPv6), a
//! local HTTPS server for the Cloudflare lists, and clients that connect for real.
//!
//! Include it next to the harness: `mod common;` and `#[path = "common/netfw.rs"] mod netfw;`
//! (it borrows `agent_binary`, `harness_tmp_root` and `sh_quote` from `common`).
//!
//! ```text
//!   cf    173.245.48.10/24  2606:4700:10::10/64 --+
//!   evil  198.51.100.66/24  2001:db8:bad::66/64 --+
//!   op    192.0.2.50/24                         --+-- rt (router: forwards v4+v6, no way out)
//!   lists 198.18.0.10/24 (HTTPS :443 with our CA,  |
//!         :8443 untrusted cert, HTTP :80)       --+
//!                                                  |
//!   srv   wan0 203.0.113.10/24 2001:db8:10::10/64 -+   (default routes via rt)
//!         tailscale0 100.64.5.1/24 fd7a:115c:a1e0::1/64 -- ts 100.64.5.7 fd7a:115c:a1e0::7
//!         docker0 172.18.0.1/16 fd00:18::1/64 -- container "web": -p 443:443/tcp -p 443:443/udp
//!                                                  (TCP answers "hello", UDP answers "pong")
//! ```
//!
//! `ts` is wired straight into the server on an interface called `tailscale0`, the way tailnet
//! traffic really arrives: it is the client whose traffic does not arrive on the WAN interface.
//!
//! Docker is Debian 12's docker.io 20.10 with `--ipv6 --ip6tables --experimental`: it publishes
//! over IPv6 too, but creates neither DOCKER-USER nor the FORWARD jump in ip6tables, and when it
//! restarts it puts its own FORWARD rules back on top, so a v6 jump added earlier (by the agent)
//! ends up last, behind Docker's ACCEPTs. The agent has to cope with both; the tests check it.
//!
//! Safety: every netfilter command, dockerd and the agent run inside namespaces created here
//! (their inodes are checked against the host's at creation). dockerd also gets a private mount
//! namespace with its own tmpfs `/run` and a private `/etc/docker`, and `--data-root`/`--exec-root`
//! in our temp dir, so the host's `/var/lib/docker`, `/run/docker` and `/etc/docker` are never
//! written. Teardown (Drop, also on panic) kills only what it started: processes inside our
//! namespaces and in our cgroups. A watchdog process and `cleanup_stale()` remove leftovers of
//! test processes that died without running Drop (names carry the owner's pid: `sfw-<pid>-<n>-`).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

use crate::common::{agent_binary, harness_tmp_root, sh_quote};

pub const PREFIX: &str = "sfw-";
pub const SRV_V4: &str = "203.0.113.10";
pub const SRV_V6: &str = "2001:db8:10::10";
pub const LISTS_IP: &str = "198.18.0.10";
pub const CONTAINER_V4: &str = "172.18.0.2";
pub const WAN: &str = "wan0";
pub const PATH_ENV: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Cloudflare's published ranges (www.cloudflare.com/ips-v4, /ips-v6), as the lists serve them.
pub const CF_V4: &[&str] = &[
    "173.245.48.0/20",
    "103.21.244.0/22",
    "103.22.200.0/22",
    "103.31.4.0/22",
    "141.101.64.0/18",
    "108.162.192.0/18",
    "190.93.240.0/20",
    "188.114.96.0/20",
    "197.234.240.0/22",
    "198.41.128.0/17",
    "162.158.0.0/15",
    "104.16.0.0/13",
    "104.24.0.0/14",
    "172.64.0.0/13",
    "131.0.72.0/22",
];
pub const CF_V6: &[&str] = &[
    "2400:cb00::/32",
    "2606:4700::/32",
    "2803:f800::/32",
    "2405:b500::/32",
    "2405:8100::/32",
    "2a06:98c0::/29",
    "2c0f:f248::/32",
];

/// The list body as Cloudflare serves it: one CIDR per line, trailing newline.
pub fn list_body(cidrs: &[&str]) -> String {
    let mut s = cidrs.join("\n");
    s.push('\n');
    s
}

pub fn cf_list(fam: Fam) -> String {
    list_body(match fam {
        Fam::V4 => CF_V4,
        Fam::V6 => CF_V6,
    })
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// (host, its device, router address v4, host address v4, (router v6, host v6))
type WanLink = (
    Host,
    &'static str,
    &'static str,
    &'static str,
    Option<(&'static str, &'static str)>,
);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Host {
    /// The server under test (runs dockerd and the agent).
    Srv,
    /// A client inside Cloudflare's 173.245.48.0/20 and 2606:4700::/32.
    Cf,
    /// A random internet client.
    Evil,
    /// The operator's address (no business on :443 either).
    Op,
    /// A tailnet client on the server's `tailscale0`, i.e. not arriving on the WAN interface.
    Ts,
    /// The list server.
    Lists,
}

impl Host {
    pub const ALL: [Host; 6] = [
        Host::Srv,
        Host::Cf,
        Host::Evil,
        Host::Op,
        Host::Ts,
        Host::Lists,
    ];

    pub fn role(self) -> &'static str {
        match self {
            Host::Srv => "srv",
            Host::Cf => "cf",
            Host::Evil => "evil",
            Host::Op => "op",
            Host::Ts => "ts",
            Host::Lists => "lists",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fam {
    V4,
    V6,
}

impl Fam {
    pub fn suffix(self) -> &'static str {
        match self {
            Fam::V4 => "v4",
            Fam::V6 => "v6",
        }
    }
    fn save(self) -> &'static str {
        match self {
            Fam::V4 => "iptables-save",
            Fam::V6 => "ip6tables-save",
        }
    }
    fn restore(self) -> &'static str {
        match self {
            Fam::V4 => "iptables-restore",
            Fam::V6 => "ip6tables-restore",
        }
    }
    pub fn iptables(self) -> &'static str {
        match self {
            Fam::V4 => "iptables",
            Fam::V6 => "ip6tables",
        }
    }
    pub fn srv_addr(self) -> &'static str {
        match self {
            Fam::V4 => SRV_V4,
            Fam::V6 => SRV_V6,
        }
    }
}

/// What the list server answers on one path.
#[derive(Clone, Debug)]
pub enum Reply {
    /// 200 text/plain with this body.
    Text(String),
    /// Anything: status, content type, body.
    Raw {
        status: u16,
        content_type: String,
        body: String,
    },
    /// 302 to `http://<lists>/<path>` (plain HTTP), where `body` is served: a client that follows
    /// the downgrade would get a list that differs from the last good one.
    RedirectToHttp { body: String },
    /// Accepts the connection and the request, then says nothing for this long.
    Hang(Duration),
}

#[derive(Clone, Debug)]
pub struct EdgeOptions {
    /// Start dockerd in srv and run the :443 container.
    pub docker: bool,
}

impl Default for EdgeOptions {
    fn default() -> Self {
        EdgeOptions { docker: true }
    }
}

/// The result of one agent run.
#[derive(Debug)]
pub struct AgentRun {
    pub args: Vec<String>,
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl AgentRun {
    /// The `--json` report; panics with the whole run if stdout is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("agent output is not JSON ({e}):\n{self}"))
    }

    /// The `firewall` entry of the report's `resources`.
    pub fn firewall(&self) -> Value {
        let j = self.json();
        j["resources"]
            .as_array()
            .and_then(|a| a.iter().find(|r| r["name"] == "firewall"))
            .cloned()
            .unwrap_or_else(|| panic!("no firewall resource in the report:\n{self}"))
    }
}

impl std::fmt::Display for AgentRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "sapari-agent {:?}: exit {} after {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.args, self.code, self.elapsed, self.stdout, self.stderr
        )
    }
}

pub struct Edge {
    name: String,
    dir: Option<TempDir>,
    /// Namespaces made so far (deleted in reverse order).
    netns: Vec<String>,
    docker: bool,
    dockerd: Mutex<Option<Child>>,
    lists: Mutex<Option<Child>>,
    routes: Mutex<BTreeMap<String, Value>>,
    agent: PathBuf,
    docker_cli: PathBuf,
}

// ---------------------------------------------------------------------------------------------
// Small process helpers

/// Runs a command with piped output and a deadline (the harness's runner); at the deadline the
/// whole process group is killed and the output so far is returned as killed by SIGKILL.
pub fn run(cmd: &mut Command, stdin: Option<&[u8]>, timeout: Duration) -> Output {
    use std::os::unix::process::ExitStatusExt;
    super::common::run_bounded(cmd, stdin, timeout).unwrap_or_else(|t| Output {
        // The wait status of a process killed by SIGKILL (9).
        status: std::process::ExitStatus::from_raw(9),
        stdout: t.stdout,
        stderr: t.stderr,
    })
}

fn signal_group(pgid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{sig}"), "--", &format!("-{pgid}")])
        .stderr(Stdio::null())
        .status();
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

fn code_of(o: &Output) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    o.status
        .code()
        .unwrap_or_else(|| 128 + o.status.signal().unwrap_or(0))
}

pub fn describe(o: &Output) -> String {
    format!(
        "exit {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        code_of(o),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Host-side setup command (ip, openssl, tar...): panics with its output on failure.
fn host(args: &[&str]) -> String {
    let o = run(
        Command::new(args[0]).args(&args[1..]),
        None,
        Duration::from_secs(60),
    );
    assert!(o.status.success(), "{args:?} failed\n{}", describe(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn netns_inode(name: &str) -> Option<u64> {
    fs::metadata(format!("/run/netns/{name}"))
        .ok()
        .map(|m| m.ino())
}

fn self_netns_inode() -> u64 {
    fs::metadata("/proc/self/ns/net")
        .expect("stat /proc/self/ns/net")
        .ino()
}

/// pids whose network namespace is `/run/netns/<name>`.
fn pids_in_netns(name: &str) -> Vec<u32> {
    let Some(ino) = netns_inode(name) else {
        return Vec::new();
    };
    let want = format!("net:[{ino}]");
    let mut v = Vec::new();
    if let Ok(rd) = fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if fs::read_link(format!("/proc/{pid}/ns/net"))
                .is_ok_and(|l| l.to_string_lossy() == want)
            {
                v.push(pid);
            }
        }
    }
    v
}

fn cgroup_roots() -> Vec<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (mp, ty) = (f.get(1)?, f.get(2)?);
            (*ty == "cgroup2" || *ty == "cgroup").then(|| PathBuf::from(mp.replace("\\040", " ")))
        })
        .collect()
}

fn cgroup_pids(dir: &Path, out: &mut Vec<u32>) {
    if let Ok(s) = fs::read_to_string(dir.join("cgroup.procs")) {
        out.extend(s.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
    }
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                cgroup_pids(&e.path(), out);
            }
        }
    }
}

fn rmdir_tree(dir: &Path) {
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                rmdir_tree(&e.path());
            }
        }
    }
    let _ = fs::remove_dir(dir);
}

fn which(names: &[&str]) -> Option<PathBuf> {
    for n in names {
        let p = Path::new(n);
        if p.is_absolute() {
            if p.is_file() {
                return Some(p.to_path_buf());
            }
            continue;
        }
        for d in PATH_ENV.split(':') {
            let c = Path::new(d).join(n);
            if c.is_file() {
                return Some(c);
            }
        }
    }
    None
}

fn require_tools() {
    let need = [
        ("ip", "iproute2"),
        ("iptables-restore", "iptables"),
        ("ip6tables-restore", "iptables"),
        ("socat", "socat"),
        ("openssl", "openssl"),
        ("python3", "python3"),
        ("unshare", "util-linux"),
        ("nsenter", "util-linux"),
    ];
    let missing: Vec<String> = need
        .iter()
        .filter(|(t, _)| which(&[t]).is_none())
        .map(|(t, p)| format!("{t} (apt: {p})"))
        .collect();
    assert!(
        missing.is_empty(),
        "firewall system tests need: {}; scripts/test.sh installs them",
        missing.join(", ")
    );
}

// ---------------------------------------------------------------------------------------------
// Stale cleanup (shared by cleanup_stale() and the watchdog, hence shell)

const CLEANUP_SH: &str = r#"
root=$1
dead() { case $1 in ''|*[!0-9]*) return 1;; esac; [ ! -d "/proc/$1" ]; }
owner() { echo "$1" | cut -d- -f2; }
# 1. processes inside a dead owner's namespaces (dockerd, containerd, shims, list server, socat)
for f in /run/netns/sfw-*; do
  [ -e "$f" ] || continue
  n=${f##*/}; dead "$(owner "$n")" || continue
  id="net:[$(stat -L -c %i "$f")]"
  for p in /proc/[0-9]*; do
    [ "$(readlink "$p/ns/net" 2>/dev/null)" = "$id" ] && kill -KILL "${p#/proc/}" 2>/dev/null
  done
done
# 2. container processes, found through the cgroup parent dockerd was given
for h in $(awk '$3=="cgroup2" || $3=="cgroup" {print $2}' /proc/self/mounts); do
  for c in "$h"/sfw-*; do
    [ -d "$c" ] || continue
    dead "$(owner "${c##*/}")" || continue
    find "$c" -name cgroup.procs -exec cat {} + 2>/dev/null | xargs -r kill -KILL 2>/dev/null
  done
done
sleep 0.5
for h in $(awk '$3=="cgroup2" || $3=="cgroup" {print $2}' /proc/self/mounts); do
  for c in "$h"/sfw-*; do
    [ -d "$c" ] || continue
    dead "$(owner "${c##*/}")" && find "$c" -depth -type d -exec rmdir {} \; 2>/dev/null
  done
done
for f in /run/netns/sfw-*; do
  [ -e "$f" ] || continue
  n=${f##*/}; dead "$(owner "$n")" && ip netns del "$n" 2>/dev/null
done
for d in "$root"/sfw-*; do
  [ -d "$d" ] || continue
  dead "$(owner "${d##*/}")" && rm -rf --one-file-system "$d"
done
exit 0
"#;

/// Removes namespaces, processes, cgroups and temp dirs of dead test processes.
pub fn cleanup_stale() {
    let o = run(
        Command::new("sh")
            .arg("-c")
            .arg(CLEANUP_SH)
            .arg("sh")
            .arg(harness_tmp_root()),
        None,
        Duration::from_secs(60),
    );
    if !o.stderr.is_empty() {
        eprintln!(
            "netfw: cleanup_stale: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

/// One per test process: cleans up within about a second if the process dies without Drop.
fn start_watchdog() {
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| super::common::spawn_watchdog("netfw", CLEANUP_SH));
}

// ---------------------------------------------------------------------------------------------
// The list server

const LIST_SERVER_PY: &str = r#"
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

const PKI_SH: &str = r#"
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

// ---------------------------------------------------------------------------------------------
// Edge

impl Edge {
    /// Topology, dockerd with the :443 container, list server serving Cloudflare's real lists,
    /// agent config. Takes ~2-4 s.
    pub fn up() -> Edge {
        Self::up_with(EdgeOptions::default())
    }

    pub fn up_with(opts: EdgeOptions) -> Edge {
        Self::up_parts(opts.docker, opts.docker, true)
    }

    /// For the compose tests: the topology and dockerd with the imported image, but no `web`
    /// container and no list server (the compose project brings its own containers).
    pub fn up_compose() -> Edge {
        Self::up_parts(true, false, false)
    }

    /// The topology alone (the agent runs in srv, e.g. for file-only subcommands).
    pub fn up_bare() -> Edge {
        Self::up_parts(false, false, false)
    }

    fn up_parts(docker: bool, web: bool, lists: bool) -> Edge {
        let opts = EdgeOptions { docker };
        let uid = fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("Uid:"))
                    .and_then(|l| l.split_whitespace().nth(2).map(String::from))
            })
            .unwrap_or_default();
        assert_eq!(uid, "0", "firewall system tests need root");
        require_tools();
        start_watchdog();
        cleanup_stale();
        let t0 = Instant::now();
        let agent = fs::canonicalize(agent_binary()).expect("agent binary");
        let docker_cli = which(&["/usr/bin/docker", "docker"]).unwrap_or_default();
        if opts.docker {
            assert!(
                which(&["dockerd"]).is_some() && docker_cli.is_file(),
                "dockerd/docker not found (apt: docker.io)"
            );
        }
        let name = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let root = harness_tmp_root();
        fs::create_dir_all(&root).unwrap();
        let dir = tempfile::Builder::new()
            .prefix(&format!("{name}-"))
            .tempdir_in(&root)
            .unwrap();
        // From here on a panic drops `e`, which undoes whatever exists.
        let mut e = Edge {
            name,
            dir: Some(dir),
            netns: Vec::new(),
            docker: opts.docker,
            dockerd: Mutex::new(None),
            lists: Mutex::new(None),
            routes: Mutex::new(BTreeMap::new()),
            agent,
            docker_cli,
        };
        let mut steps = Vec::new();
        let mut lap = Instant::now();
        let mut step = |what: &str| {
            steps.push(format!("{what} {:.2?}", lap.elapsed()));
            lap = Instant::now();
        };
        e.topology();
        step("netns");
        if lists {
            e.pki_and_lists();
            e.write_config("");
            step("pki+lists");
        }
        if opts.docker {
            e.build_image_rootfs();
            e.start_dockerd();
            step("dockerd");
            e.import_image();
            if web {
                e.run_container();
                e.wait_wan();
                step("container");
            } else {
                step("image");
            }
        }
        eprintln!(
            "netfw: {} up in {:.1?} ({})",
            e.name,
            t0.elapsed(),
            steps.join(", ")
        );
        e
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn dir(&self) -> &Path {
        self.dir.as_ref().expect("edge dir").path()
    }

    /// Network namespace name of a host.
    pub fn ns(&self, h: Host) -> String {
        format!("{}-{}", self.name, h.role())
    }

    fn add_ns(&mut self, n: &str) {
        host(&["ip", "netns", "add", n]);
        self.netns.push(n.to_string());
        let ino = netns_inode(n).expect("netns handle");
        assert_ne!(ino, self_netns_inode(), "netns {n} is the host's?!");
        host(&["ip", "-n", n, "link", "set", "lo", "up"]);
        // No duplicate address detection on any interface made later (link-local addresses
        // included): addresses are usable at once, and a first probe never races DAD.
        host(&[
            "ip",
            "netns",
            "exec",
            n,
            "sh",
            "-c",
            "echo 0 > /proc/sys/net/ipv6/conf/default/accept_dad && echo 0 > /proc/sys/net/ipv6/conf/all/accept_dad",
        ]);
    }

    fn topology(&mut self) {
        let rt = format!("{}-rt", self.name);
        self.add_ns(&rt);
        for h in Host::ALL {
            self.add_ns(&self.ns(h));
        }
        host(&[
            "ip",
            "netns",
            "exec",
            &rt,
            "sh",
            "-c",
            "echo 1 > /proc/sys/net/ipv4/ip_forward && echo 1 > /proc/sys/net/ipv6/conf/all/forwarding",
        ]);
        let wan: [WanLink; 5] = [
            (
                Host::Srv,
                WAN,
                "203.0.113.1/24",
                "203.0.113.10/24",
                Some(("2001:db8:10::1/64", "2001:db8:10::10/64")),
            ),
            (
                Host::Cf,
                "eth0",
                "173.245.48.1/24",
                "173.245.48.10/24",
                Some(("2606:4700:10::1/64", "2606:4700:10::10/64")),
            ),
            (
                Host::Evil,
                "eth0",
                "198.51.100.1/24",
                "198.51.100.66/24",
                Some(("2001:db8:bad::1/64", "2001:db8:bad::66/64")),
            ),
            (Host::Op, "eth0", "192.0.2.1/24", "192.0.2.50/24", None),
            (Host::Lists, "eth0", "198.18.0.1/24", "198.18.0.10/24", None),
        ];
        for (h, dev, r4, p4, v6) in wan {
            let n = self.ns(h);
            let rdev = format!("i-{}", h.role());
            host(&[
                "ip", "-n", &rt, "link", "add", &rdev, "type", "veth", "peer", "name", dev,
                "netns", &n,
            ]);
            host(&["ip", "-n", &rt, "addr", "add", r4, "dev", &rdev]);
            host(&["ip", "-n", &n, "addr", "add", p4, "dev", dev]);
            if let Some((r6, p6)) = v6 {
                host(&["ip", "-n", &rt, "addr", "add", r6, "dev", &rdev, "nodad"]);
                host(&["ip", "-n", &n, "addr", "add", p6, "dev", dev, "nodad"]);
            }
            host(&["ip", "-n", &rt, "link", "set", &rdev, "up"]);
            host(&["ip", "-n", &n, "link", "set", dev, "up"]);
            let gw4 = r4.split('/').next().unwrap();
            host(&["ip", "-n", &n, "route", "add", "default", "via", gw4]);
            if let Some((r6, _)) = v6 {
                let gw6 = r6.split('/').next().unwrap();
                host(&["ip", "-n", &n, "-6", "route", "add", "default", "via", gw6]);
            }
        }
        // The tailnet client hangs directly off the server's tailscale0.
        let srv = self.ns(Host::Srv);
        let ts = self.ns(Host::Ts);
        host(&[
            "ip",
            "-n",
            &srv,
            "link",
            "add",
            "tailscale0",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &ts,
        ]);
        for (n, dev, a4, a6) in [
            (&srv, "tailscale0", "100.64.5.1/24", "fd7a:115c:a1e0::1/64"),
            (&ts, "eth0", "100.64.5.7/24", "fd7a:115c:a1e0::7/64"),
        ] {
            host(&["ip", "-n", n, "addr", "add", a4, "dev", dev]);
            host(&["ip", "-n", n, "addr", "add", a6, "dev", dev, "nodad"]);
            host(&["ip", "-n", n, "link", "set", dev, "up"]);
        }
        host(&[
            "ip",
            "-n",
            &ts,
            "route",
            "add",
            "default",
            "via",
            "100.64.5.1",
        ]);
        host(&[
            "ip",
            "-n",
            &ts,
            "-6",
            "route",
            "add",
            "default",
            "via",
            "fd7a:115c:a1e0::1",
        ]);
        host(&[
            "ip",
            "netns",
            "exec",
            &srv,
            "sh",
            "-c",
            "echo 1 > /proc/sys/net/ipv4/ip_forward && echo 1 > /proc/sys/net/ipv6/conf/all/forwarding",
        ]);
    }

    // ---- list server ------------------------------------------------------------------------

    fn www(&self) -> PathBuf {
        self.dir().join("www")
    }

    /// The CA the agent is told to trust (`firewall.ca_file`).
    pub fn ca_file(&self) -> PathBuf {
        self.www().join("ca.pem")
    }

    fn pki_and_lists(&mut self) {
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

    // ---- agent ------------------------------------------------------------------------------

    pub fn config_path(&self) -> PathBuf {
        self.dir().join("etc/agent.toml")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir().join("state")
    }

    /// The test config: state in our dir, lists from the local server, WAN `wan0`.
    /// `firewall_extra` is appended to the `[firewall]` table (e.g. `max_entries = 100`); a
    /// `wan_interface`/`list_url_*` line there replaces the default.
    pub fn config_text(&self, firewall_extra: &str) -> String {
        let mut fw = String::new();
        let keys = ["wan_interface", "list_url_v4", "list_url_v6", "ca_file"];
        let defaults = [
            format!("wan_interface = \"{WAN}\""),
            format!("list_url_v4 = \"{}\"", Self::list_url(Fam::V4)),
            format!("list_url_v6 = \"{}\"", Self::list_url(Fam::V6)),
            format!("ca_file = \"{}\"", self.ca_file().display()),
        ];
        for (k, d) in keys.iter().zip(defaults) {
            let overridden = firewall_extra.lines().any(|l| {
                l.trim_start().starts_with(&format!("{k} "))
                    || l.trim_start().starts_with(&format!("{k}="))
            });
            if !overridden {
                fw.push_str(&d);
                fw.push('\n');
            }
        }
        if !firewall_extra
            .lines()
            .any(|l| l.trim_start().starts_with("fetch_timeout"))
        {
            fw.push_str("fetch_timeout = \"3s\"\n");
        }
        fw.push_str(firewall_extra);
        format!(
            "# written by tests/common/netfw.rs\n[agent]\nstate_dir = \"{}\"\nlock_timeout = \"20s\"\n\n[firewall]\n{fw}\n",
            self.state_dir().display()
        )
    }

    /// Writes the agent config (0600 root, in a 0700 dir).
    pub fn write_config(&self, firewall_extra: &str) {
        let p = self.config_path();
        let d = p.parent().unwrap();
        fs::create_dir_all(d).unwrap();
        fs::set_permissions(d, fs::Permissions::from_mode(0o700)).unwrap();
        let tmp = d.join(".agent.toml.tmp");
        fs::write(&tmp, self.config_text(firewall_extra)).unwrap();
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600)).unwrap();
        fs::rename(&tmp, &p).unwrap();
    }

    /// Runs the agent in srv's network namespace, in a private mount namespace with a tmpfs
    /// /run (its lock, no journald), without SSH_* in the environment.
    pub fn agent(&self, args: &[&str]) -> AgentRun {
        self.agent_with(args, &[], Duration::from_secs(90))
    }

    /// Like [`agent`](Self::agent) with extra environment (e.g. [`docker_env`](Self::docker_env))
    /// and its own deadline.
    pub fn agent_with(
        &self,
        args: &[&str],
        env: &[(String, String)],
        timeout: Duration,
    ) -> AgentRun {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns(Host::Srv)])
            .args(["unshare", "-m", "--propagation", "private", "sh", "-c"])
            .arg("mount -t tmpfs -o mode=755 tmpfs /run && exec \"$@\"")
            .arg("sh")
            .arg(&self.agent)
            .args(args)
            .env_clear()
            .env("PATH", PATH_ENV)
            .env("LANG", "C.UTF-8")
            .envs(env.iter().map(|(k, v)| (k, v)));
        let t0 = Instant::now();
        let o = run(&mut c, None, timeout);
        AgentRun {
            args: args.iter().map(|s| s.to_string()).collect(),
            code: code_of(&o),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
            elapsed: t0.elapsed(),
        }
    }

    fn cfg(&self) -> String {
        self.config_path().to_string_lossy().into_owned()
    }

    /// `sapari-agent firewall apply --config <ours> --json`
    pub fn fw_apply(&self) -> AgentRun {
        let c = self.cfg();
        self.agent(&["firewall", "apply", "--config", &c, "--json"])
    }

    /// `sapari-agent firewall check --config <ours>`
    pub fn fw_check(&self) -> AgentRun {
        let c = self.cfg();
        self.agent(&["firewall", "check", "--config", &c])
    }

    /// `sapari-agent firewall show --config <ours>`
    pub fn fw_show(&self) -> AgentRun {
        let c = self.cfg();
        self.agent(&["firewall", "show", "--config", &c])
    }

    /// `sapari-agent converge --only firewall --config <ours> --json`
    pub fn converge_firewall(&self) -> AgentRun {
        let c = self.cfg();
        self.agent(&["converge", "--only", "firewall", "--config", &c, "--json"])
    }

    /// Last-good list files and their metadata, name -> content.
    pub fn state_files(&self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        if let Ok(rd) = fs::read_dir(self.state_dir()) {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.starts_with("cloudflare-ips") {
                    m.insert(n, fs::read_to_string(e.path()).unwrap_or_default());
                }
            }
        }
        m
    }

    pub fn last_good(&self, fam: Fam) -> Option<String> {
        fs::read_to_string(
            self.state_dir()
                .join(format!("cloudflare-ips-{}.txt", fam.suffix())),
        )
        .ok()
    }

    // ---- netfilter in srv -------------------------------------------------------------------

    /// `sh -c script` in srv's network namespace (host filesystem). Panics on timeout only.
    pub fn srv_sh(&self, script: &str) -> Output {
        self.sh_in(Host::Srv, script, Duration::from_secs(30))
    }

    pub fn srv_sh_ok(&self, script: &str) -> String {
        let o = self.srv_sh(script);
        assert!(o.status.success(), "in srv: {script}\n{}", describe(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    pub fn sh_in(&self, h: Host, script: &str, timeout: Duration) -> Output {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns(h), "sh", "-c", script])
            .env("PATH", PATH_ENV);
        run(&mut c, None, timeout)
    }

    /// `iptables-save -t filter` of one family, without counters and comments lines.
    pub fn filter_table(&self, fam: Fam) -> String {
        let out = self.srv_sh_ok(&format!("{} -t filter", fam.save()));
        out.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| {
                // ":CHAIN POLICY [p:b]" -> ":CHAIN POLICY"
                if l.starts_with(':') {
                    l.rsplit_once(' ').map_or(l, |(a, _)| a)
                } else {
                    l
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The `-A DOCKER-USER ...` lines of one family (empty if the chain is missing or empty).
    pub fn docker_user(&self, fam: Fam) -> Vec<String> {
        self.chain_rules(fam, "DOCKER-USER")
    }

    pub fn chain_rules(&self, fam: Fam, chain: &str) -> Vec<String> {
        let pfx = format!("-A {chain} ");
        self.filter_table(fam)
            .lines()
            .filter(|l| l.starts_with(&pfx))
            .map(String::from)
            .collect()
    }

    pub fn chain_exists(&self, fam: Fam, chain: &str) -> bool {
        let pfx = format!(":{chain} ");
        self.filter_table(fam).lines().any(|l| l.starts_with(&pfx))
    }

    /// Feeds `text` to `iptables-restore --noflush` (or ip6tables-) in srv.
    pub fn restore_noflush(&self, fam: Fam, text: &str) -> Output {
        let mut c = Command::new("ip");
        c.args([
            "netns",
            "exec",
            &self.ns(Host::Srv),
            fam.restore(),
            "--noflush",
        ])
        .env("PATH", PATH_ENV);
        run(&mut c, Some(text.as_bytes()), Duration::from_secs(30))
    }

    /// The DOCKER-USER policy as the design describes it, written by hand (from the rig's
    /// cf_rules.sh): the control that proves the topology can block before the agent exists.
    pub fn hand_rules(cidrs: &[&str]) -> String {
        let mut s = String::from("*filter\n:DOCKER-USER - [0:0]\n");
        s.push_str(&format!(
            "-A DOCKER-USER -i {WAN} -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN\n"
        ));
        for p in ["tcp", "udp"] {
            for n in cidrs {
                s.push_str(&format!("-A DOCKER-USER -s {n} -i {WAN} -p {p} -m conntrack --ctorigdstport 443 --ctdir ORIGINAL -m comment --comment netfw-hand -j RETURN\n"));
            }
            s.push_str(&format!("-A DOCKER-USER -i {WAN} -p {p} -m conntrack --ctorigdstport 443 --ctdir ORIGINAL -m comment --comment netfw-hand -j DROP\n"));
        }
        s.push_str("-A DOCKER-USER -j RETURN\nCOMMIT\n");
        s
    }

    // ---- probes -----------------------------------------------------------------------------

    /// One real exchange with srv's published :443 from `from`: TCP expects "hello", UDP "pong".
    pub fn probe(&self, from: Host, proto: Proto, fam: Fam) -> bool {
        self.probe_addr(from, proto, fam.srv_addr())
    }

    /// Like [`probe`](Self::probe) to any address (e.g. the container's own).
    pub fn probe_addr(&self, from: Host, proto: Proto, addr: &str) -> bool {
        let (a, v) = if addr.contains(':') {
            (format!("[{addr}]"), "6")
        } else {
            (addr.to_string(), "")
        };
        let (script, want) = match proto {
            Proto::Tcp => (
                format!("timeout 6 socat -t3 -T3 - TCP{v}:{a}:443,connect-timeout=1 </dev/null"),
                "hello",
            ),
            // socat would wait out its whole -t after a reply: a one-shot client returns at once
            Proto::Udp => (
                format!(
                    "timeout 5 python3 -c {}",
                    sh_quote(&format!(
                        "import socket\n\
                         s = socket.socket(socket.AF_INET{v}, socket.SOCK_DGRAM)\n\
                         s.settimeout(2)\n\
                         s.sendto(b'ping\\n', ('{addr}', 443))\n\
                         print(s.recv(64).decode())\n"
                    ))
                ),
                "pong",
            ),
        };
        let o = self.sh_in(from, &script, Duration::from_secs(10));
        String::from_utf8_lossy(&o.stdout).trim() == want
    }

    /// Reachability of srv's :443 from `from` over both protocols (and v6 where it has it),
    /// keyed "cf/tcp/v4". Probes run in parallel: a blocked one costs its 1-2 s timeout.
    pub fn reach(&self, from: Host) -> BTreeMap<String, bool> {
        let fams: &[Fam] = match from {
            Host::Op | Host::Lists => &[Fam::V4],
            _ => &[Fam::V4, Fam::V6],
        };
        let mut want = Vec::new();
        for &f in fams {
            for p in [Proto::Tcp, Proto::Udp] {
                want.push((from, p, f));
            }
        }
        self.probes(&want).into_iter().collect()
    }

    /// Several probes in parallel: ("cf/tcp/v4", reached) in the order asked.
    pub fn probes(&self, which: &[(Host, Proto, Fam)]) -> Vec<(String, bool)> {
        thread::scope(|s| {
            let hs: Vec<_> = which
                .iter()
                .map(|&(h, p, f)| {
                    s.spawn(move || {
                        (
                            format!("{}/{:?}/{}", h.role(), p, f.suffix()).to_lowercase(),
                            self.probe(h, p, f),
                        )
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    // ---- docker -----------------------------------------------------------------------------

    fn dockerd_dir(&self) -> PathBuf {
        self.dir().join("docker")
    }

    pub fn docker_sock(&self) -> PathBuf {
        self.dockerd_dir().join("docker.sock")
    }

    fn cgroup_parent(&self) -> String {
        format!("{}-docker", self.name)
    }

    /// The docker CLI against our daemon.
    pub fn docker(&self, args: &[&str]) -> Output {
        let mut c = Command::new(&self.docker_cli);
        c.arg("-H")
            .arg(format!("unix://{}", self.docker_sock().display()))
            .args(args)
            .env_remove("DOCKER_HOST")
            .env("DOCKER_CONFIG", self.dockerd_dir().join("cli"));
        run(&mut c, None, Duration::from_secs(60))
    }

    pub fn docker_ok(&self, args: &[&str]) -> String {
        let o = self.docker(args);
        assert!(o.status.success(), "docker {args:?}\n{}", describe(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// The environment that points a docker client (or the agent) at our daemon: DOCKER_HOST
    /// with our socket, and a private DOCKER_CONFIG so nothing reads or writes ~/.docker.
    pub fn docker_env(&self) -> Vec<(String, String)> {
        vec![
            (
                "DOCKER_HOST".into(),
                format!("unix://{}", self.docker_sock().display()),
            ),
            (
                "DOCKER_CONFIG".into(),
                self.dockerd_dir()
                    .join("cli")
                    .to_string_lossy()
                    .into_owned(),
            ),
        ]
    }

    /// Debian's standalone `docker-compose` (v1), run in srv's network namespace against our
    /// daemon from `dir`, with only PATH, the [`docker_env`](Self::docker_env) and `env`.
    pub fn docker_compose(&self, dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
        let bin = which(&["docker-compose"]).expect("docker-compose (apt: docker-compose)");
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns(Host::Srv)])
            .arg(bin)
            .args(args)
            .current_dir(dir)
            .env_clear()
            .env("PATH", PATH_ENV)
            .env("LANG", "C.UTF-8")
            .envs(self.docker_env())
            .envs(env.iter().copied());
        run(&mut c, None, Duration::from_secs(180))
    }

    /// The image every test container runs (busybox and socat, imported, no registry).
    pub const IMAGE: &'static str = "sfw-echo:1";

    fn build_image_rootfs(&self) {
        let r = self.dockerd_dir().join("rootfs");
        fs::create_dir_all(r.join("bin")).unwrap();
        fs::create_dir_all(r.join("usr/bin")).unwrap();
        fs::create_dir_all(r.join("tmp")).unwrap();
        fs::create_dir_all(r.join("etc")).unwrap();
        let bb = which(&["/bin/busybox", "busybox"]).expect("busybox (apt: busybox-static)");
        let socat = which(&["socat"]).expect("socat");
        fs::copy(&bb, r.join("bin/busybox")).unwrap();
        for a in ["sh", "echo", "cat", "sleep", "ls", "ps"] {
            std::os::unix::fs::symlink("busybox", r.join("bin").join(a)).unwrap();
        }
        fs::copy(&socat, r.join("usr/bin/socat")).unwrap();
        // socat is dynamically linked on Debian: bring its libraries along.
        let ldd = host(&["ldd", &socat.to_string_lossy()]);
        for tok in ldd.split_whitespace() {
            if tok.starts_with('/') {
                let dst = r.join(tok.trim_start_matches('/'));
                fs::create_dir_all(dst.parent().unwrap()).unwrap();
                fs::copy(tok, &dst).unwrap_or_else(|e| panic!("copy {tok}: {e}"));
            }
        }
    }

    fn import_image(&self) {
        let r = self.dockerd_dir().join("rootfs");
        let tar = self.dockerd_dir().join("rootfs.tar");
        host(&[
            "tar",
            "-C",
            &r.to_string_lossy(),
            "-cf",
            &tar.to_string_lossy(),
            ".",
        ]);
        self.docker_ok(&["import", &tar.to_string_lossy(), "sfw-echo:1"]);
        let _ = fs::remove_file(&tar);
    }

    /// The web container: :443 published for TCP ("hello") and UDP ("pong"), restarted by
    /// dockerd after a daemon restart.
    fn run_container(&self) {
        // The UDP responder reads the datagram before it answers: with a plain `echo pong` the
        // echo may exit before socat hands it the datagram, socat dies of EPIPE and the answer
        // is lost (about 1 exchange in 100 here).
        let cmd = "socat TCP6-LISTEN:443,fork,reuseaddr,ipv6only=0 EXEC:'echo hello' & socat UDP6-RECVFROM:443,fork,ipv6only=0 SYSTEM:'read -r l; echo pong' & wait";
        self.docker_ok(&[
            "run",
            "-d",
            "--name",
            "web",
            "--restart",
            "always",
            // PID 1 must reap: a socat as PID 1 collects the other socat's orphans and its
            // recvfrom/fork loop then stalls for seconds (seen as lost UDP answers)
            "--init",
            // no duplicate address detection on the container's v6 address (saves ~2 s)
            "--sysctl",
            "net.ipv6.conf.all.accept_dad=0",
            "--sysctl",
            "net.ipv6.conf.default.accept_dad=0",
            "-p",
            "443:443/tcp",
            "-p",
            "443:443/udp",
            "sfw-echo:1",
            "/bin/sh",
            "-c",
            cmd,
        ]);
        self.wait_container();
    }

    /// Waits until the container answers on its own addresses, v4 and v6 (from srv, not
    /// through DOCKER-USER). The v6 ones are usable only after duplicate address detection.
    pub fn wait_container(&self) {
        let t0 = Instant::now();
        let v6 = self.container_v6();
        for (p, a) in [
            (Proto::Tcp, CONTAINER_V4),
            (Proto::Udp, CONTAINER_V4),
            (Proto::Tcp, v6.as_str()),
            (Proto::Udp, v6.as_str()),
        ] {
            while !self.probe_addr(Host::Srv, p, a) {
                assert!(
                    t0.elapsed() < Duration::from_secs(20),
                    "container not answering on {a}:443/{p:?} after 20 s\n{}",
                    describe(&self.docker(&["ps", "-a"]))
                );
                thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// Waits until the Cloudflare client reaches the published port over TCP and UDP, v4 and v6
    /// (no rules yet: everyone does). Proves the whole path before a test relies on it.
    pub fn wait_wan(&self) {
        let t0 = Instant::now();
        for f in [Fam::V4, Fam::V6] {
            for p in [Proto::Tcp, Proto::Udp] {
                while !self.probe(Host::Cf, p, f) {
                    assert!(
                        t0.elapsed() < Duration::from_secs(20),
                        "cf cannot reach {}:443/{p:?} after 20 s",
                        f.srv_addr()
                    );
                    thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    /// The container's IPv6 address on docker0.
    pub fn container_v6(&self) -> String {
        self.docker_ok(&[
            "inspect",
            "-f",
            "{{range .NetworkSettings.Networks}}{{.GlobalIPv6Address}}{{end}}",
            "web",
        ])
        .trim()
        .to_string()
    }

    /// Starts dockerd in srv (private mount ns, fresh sysfs for the netns, the host's cgroup
    /// hierarchies, tmpfs /run, private /etc/docker) and waits for its API.
    pub fn start_dockerd(&self) {
        let mut g = self.dockerd.lock().unwrap();
        assert!(g.is_none(), "dockerd already running");
        let d = self.dockerd_dir();
        for sub in ["etc", "cli", "cg"] {
            fs::create_dir_all(d.join(sub)).unwrap();
        }
        fs::write(d.join("daemon.json"), "{}\n").unwrap();
        // dockerd 20.10 writes /etc/docker/key.json: give it a private /etc/docker. The docker.io
        // package ships that directory, so it exists wherever dockerd does.
        assert!(
            Path::new("/etc/docker").is_dir(),
            "/etc/docker is missing: is docker.io installed?"
        );
        let script = format!(
            r#"set -e
D=$1
# `ip netns exec` would mount a sysfs without the cgroup hierarchies: keep them by hand.
mount --rbind /sys/fs/cgroup "$D/cg"
mount -t sysfs sysfs /sys
mount --rbind "$D/cg" /sys/fs/cgroup
umount -l "$D/cg"
mount -t tmpfs -o mode=755 tmpfs /run
mount --bind "$D/etc" /etc/docker
exec dockerd --config-file "$D/daemon.json" --data-root "$D/data" --exec-root "$D/exec" \
  --pidfile "$D/docker.pid" -H "unix://$D/docker.sock" \
  --iptables=true --bip 172.18.0.1/16 \
  --ipv6 --fixed-cidr-v6 fd00:18::/64 --ip6tables --experimental \
  --cgroup-parent "/{cg}" --storage-driver overlay2 --shutdown-timeout 2 --log-level warn"#,
            cg = self.cgroup_parent()
        );
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join("dockerd.log"))
            .unwrap();
        let child = Command::new("unshare")
            .args(["-m", "--propagation", "private", "nsenter"])
            .arg(format!("--net=/run/netns/{}", self.ns(Host::Srv)))
            .args(["sh", "-c", &script, "sh"])
            .arg(&d)
            .env("PATH", PATH_ENV)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("spawn dockerd");
        let pid = child.id();
        *g = Some(child);
        drop(g);
        let t0 = Instant::now();
        loop {
            let o = self.docker(&["version", "--format", "{{.Server.Version}}"]);
            if o.status.success() {
                break;
            }
            let exited = self
                .dockerd
                .lock()
                .unwrap()
                .as_mut()
                .map(|c| c.try_wait().ok().flatten().is_some())
                .unwrap_or(true);
            if exited || t0.elapsed() > Duration::from_secs(30) {
                panic!(
                    "dockerd (pid {pid}) {} \n--- dockerd.log ---\n{}",
                    if exited {
                        "exited"
                    } else {
                        "not up after 30 s"
                    },
                    fs::read_to_string(d.join("dockerd.log")).unwrap_or_default()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
        // dockerd really lives in srv (and not in the host's netns).
        let srv_ino = format!("net:[{}]", netns_inode(&self.ns(Host::Srv)).unwrap());
        let got = fs::read_link(format!("/proc/{pid}/ns/net"))
            .map(|l| l.to_string_lossy().into_owned())
            .unwrap_or_default();
        assert_eq!(got, srv_ino, "dockerd is not in the srv netns");
    }

    /// SIGTERM to dockerd (it stops the container within --shutdown-timeout), then waits.
    pub fn stop_dockerd(&self) {
        let Some(mut c) = self.dockerd.lock().unwrap().take() else {
            return;
        };
        signal(c.id(), "TERM");
        let t0 = Instant::now();
        while c.try_wait().ok().flatten().is_none() && t0.elapsed() < Duration::from_secs(20) {
            thread::sleep(Duration::from_millis(50));
        }
        if c.try_wait().ok().flatten().is_none() {
            eprintln!("netfw: dockerd did not stop within 20 s; killing it");
            signal_group(c.id(), "KILL");
            let _ = c.kill();
        }
        let _ = c.wait();
    }

    /// Stops and starts dockerd, as `systemctl restart docker` would; the container comes back
    /// (restart policy) and Docker re-creates its chains.
    pub fn restart_dockerd(&self) {
        self.stop_dockerd();
        self.start_dockerd();
        self.wait_container();
    }

    // ---- teardown ---------------------------------------------------------------------------

    fn teardown(&mut self) {
        let mut problems = Vec::new();
        self.stop_lists();
        if self.docker && self.dockerd.lock().map(|g| g.is_some()).unwrap_or(false) {
            let _ = self.docker(&["rm", "-f", "web"]);
            // Whatever else the test made (compose projects): killed now, not at shutdown.
            let o = self.docker(&["ps", "-aq"]);
            let ids: Vec<String> = String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .map(String::from)
                .collect();
            if !ids.is_empty() {
                let mut a = vec!["rm", "-f"];
                a.extend(ids.iter().map(String::as_str));
                let _ = self.docker(&a);
            }
            self.stop_dockerd();
        }
        // Whatever is still inside our namespaces (shims, docker-proxy, probes) or cgroups.
        for _ in 0..3 {
            let mut pids = Vec::new();
            for n in &self.netns {
                pids.extend(pids_in_netns(n));
            }
            for h in cgroup_roots() {
                cgroup_pids(&h.join(self.cgroup_parent()), &mut pids);
            }
            pids.retain(|&p| p != std::process::id());
            if pids.is_empty() {
                break;
            }
            for p in &pids {
                signal(*p, "KILL");
            }
            thread::sleep(Duration::from_millis(300));
        }
        for h in cgroup_roots() {
            let cg = h.join(self.cgroup_parent());
            if cg.exists() {
                rmdir_tree(&cg);
                if cg.exists() {
                    problems.push(format!("cgroup {} not removed", cg.display()));
                }
            }
        }
        for n in self.netns.drain(..).rev() {
            let ok = Command::new("ip")
                .args(["netns", "del", &n])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                problems.push(format!("ip netns del {n} failed"));
            }
        }
        if let Some(d) = self.dir.take() {
            let p = d.path().to_path_buf();
            if std::env::var_os("SAPARI_TEST_KEEP").is_some() {
                eprintln!("netfw: keeping {} (SAPARI_TEST_KEEP)", p.display());
                let _ = d.keep();
            } else if let Err(e) = d.close() {
                // overlay work dirs etc.: one more try with rm
                let _ = Command::new("rm")
                    .args(["-rf", "--one-file-system"])
                    .arg(&p)
                    .status();
                if p.exists() {
                    problems.push(format!("remove {}: {e}", p.display()));
                }
            }
        }
        if !problems.is_empty() {
            eprintln!(
                "netfw: WARNING teardown of {}: {}",
                self.name,
                problems.join("; ")
            );
        }
    }

    /// dockerd's log so far (for failure messages).
    pub fn dockerd_log(&self) -> String {
        fs::read_to_string(self.dockerd_dir().join("dockerd.log")).unwrap_or_default()
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.teardown()));
        if r.is_err() {
            eprintln!(
                "netfw: WARNING teardown of {} panicked; the watchdog will retry",
                self.name
            );
        }
    }
}
