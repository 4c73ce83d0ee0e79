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
//! By default ([`Edge::up`]) Docker is Debian 12's docker.io 20.10 with `--ipv6 --ip6tables
//! --experimental`: it publishes over IPv6 too, but creates neither DOCKER-USER nor the FORWARD
//! jump in ip6tables, and when it restarts it puts its own FORWARD rules back on top, so a v6 jump
//! added earlier (by the agent) ends up last, behind Docker's ACCEPTs. The agent has to cope with
//! both; the tests check it.
//!
//! [`Edge::up_docker`] with [`DockerOptions`] picks the daemon and its config:
//! - `ipv6: false` is Docker's own default config (no `ipv6`, no `ip6tables` flag, userland proxy
//!   on), the one real servers have: `docker-proxy` listens on `[::]:443` and an IPv6 client
//!   reaches the container through srv's INPUT chain, never through DOCKER-USER.
//! - [`Daemon::Trixie`] (docker.io 26.1, Debian 13) and [`Daemon::Forky`] (docker.io 28.5) run from
//!   a cached Debian tree (tests/harness/build-docker-tree.sh) by chroot in srv's netns. The tree
//!   is bound read-only; everything dockerd writes goes to our temp dir, bound at `/sfw` in it.
//!   The host's docker CLI (20.10) talks to all three daemons through the socket (API version
//!   negotiation).
//!
//! Continuous probes ([`Edge::start_probe`]) open a new TCP connection every 10 ms during an event
//! ([`Edge::kill_dockerd`], [`Edge::flush_netfilter`], a dockerd start, an agent run) and count
//! who got through.
//!
//! Safety: every netfilter command, dockerd and the agent run inside namespaces created here
//! (their inodes are checked against the host's at creation). dockerd also gets a private mount
//! namespace with its own `/run` (a directory of ours) and a private `/etc/docker`, and
//! `--data-root`/`--exec-root` in our temp dir, so the host's `/var/lib/docker`, `/run/docker`
//! and `/etc/docker` are never written; a docker tree is mounted read-only. Teardown (Drop, also on panic) kills only what it started: processes inside our
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

/// Which dockerd runs in srv.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Daemon {
    /// The host's own Debian 12 docker.io 20.10 (`/usr/sbin/dockerd`).
    #[default]
    Bookworm,
    /// Debian 13's docker.io 26.1, from a cached tree, by chroot.
    Trixie,
    /// Debian forky's docker.io 28.5, from a cached tree, by chroot.
    Forky,
}

impl Daemon {
    pub const ALL: [Daemon; 3] = [Daemon::Bookworm, Daemon::Trixie, Daemon::Forky];

    /// The Debian suite it comes from.
    pub fn suite(self) -> &'static str {
        match self {
            Daemon::Bookworm => "bookworm",
            Daemon::Trixie => "trixie",
            Daemon::Forky => "forky",
        }
    }

    /// The major version of Docker it is (`docker version` must agree).
    pub fn major(self) -> u32 {
        match self {
            Daemon::Bookworm => 20,
            Daemon::Trixie => 26,
            Daemon::Forky => 28,
        }
    }

    /// The tree dockerd runs from: `None` for the host's own; else built (once, cached) by
    /// tests/harness/build-docker-tree.sh.
    pub fn tree(self) -> Option<PathBuf> {
        if self == Daemon::Bookworm {
            return None;
        }
        static TREES: Mutex<BTreeMap<Daemon, PathBuf>> = Mutex::new(BTreeMap::new());
        // Held while building: two tests wanting the same tree wait for one build.
        let mut g = TREES.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = g.get(&self) {
            return Some(p.clone());
        }
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/harness/build-docker-tree.sh");
        let t0 = Instant::now();
        let o = run(
            Command::new("bash").arg(&script).arg(self.suite()),
            None,
            Duration::from_secs(900),
        );
        let stdout = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success(),
            "{} {} failed\n{}",
            script.display(),
            self.suite(),
            describe(&o)
        );
        let p = PathBuf::from(
            stdout
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .trim(),
        );
        assert!(
            p.join("usr/sbin/dockerd").is_file() && p.join("sfw").is_dir(),
            "build-docker-tree.sh {} printed {p:?}, which is not a docker tree",
            self.suite()
        );
        if t0.elapsed() > Duration::from_secs(5) {
            eprintln!(
                "netfw: built the {} docker tree in {:.0?}",
                self.suite(),
                t0.elapsed()
            );
        }
        g.insert(self, p.clone());
        Some(p)
    }
}

/// The daemon and its config, for [`Edge::up_docker`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DockerOptions {
    /// `true`: `--ipv6 --fixed-cidr-v6 fd00:18::/64 --ip6tables --experimental` (what
    /// [`Edge::up`] runs). `false`: none of these, Docker's defaults (IPv6 clients reach the
    /// container through `docker-proxy` on `[::]:443`).
    pub ipv6: bool,
    pub daemon: Daemon,
    /// `"live-restore": true` in daemon.json: containers keep running while dockerd is down.
    pub live_restore: bool,
}

impl Default for DockerOptions {
    /// What [`Edge::up`] runs: Debian 12's dockerd with IPv6 on.
    fn default() -> Self {
        DockerOptions {
            ipv6: true,
            daemon: Daemon::Bookworm,
            live_restore: false,
        }
    }
}

impl DockerOptions {
    /// Docker's own default daemon config (no IPv6 flags), on Debian 12's dockerd.
    pub fn default_docker() -> Self {
        DockerOptions {
            ipv6: false,
            daemon: Daemon::Bookworm,
            live_restore: false,
        }
    }

    pub fn live_restore(mut self, on: bool) -> Self {
        self.live_restore = on;
        self
    }

    pub fn daemon(mut self, daemon: Daemon) -> Self {
        self.daemon = daemon;
        self
    }

    pub fn ipv6(mut self, ipv6: bool) -> Self {
        self.ipv6 = ipv6;
        self
    }
}

/// Where a docker tree's dockerd sees our docker dir (bound there, tree read-only).
const TREE_MNT: &str = "/sfw";

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
    dopts: DockerOptions,
    /// The docker tree dockerd runs from by chroot (None: the host's dockerd).
    tree: Option<PathBuf>,
    dockerd: Mutex<Option<Child>>,
    probes: AtomicU32,
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
        ("nft", "nftables"),
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
// Events

/// Run in srv's netns by [`Edge::flush_netfilter`]. The legacy tables are looked at only when
/// srv has some (listing them with iptables-legacy could load the legacy modules host-wide).
const FLUSH_NETFILTER_SH: &str = r#"set -e
nft flush ruleset
for f in ip:iptables-legacy ip6:ip6tables-legacy; do
  names=/proc/net/${f%%:*}_tables_names; cmd=${f#*:}
  [ -r "$names" ] || continue
  for t in $(cat "$names"); do
    $cmd -t "$t" -F
    $cmd -t "$t" -X
    for c in $($cmd -t "$t" -S | awk '$1=="-P" {print $2}'); do $cmd -t "$t" -P "$c" ACCEPT; done
  done
done
# conntrack: IPCTNL_MSG_CT_DELETE without a tuple flushes the table of this netns
python3 -c '
import errno, socket, struct
s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12)  # NETLINK_NETFILTER
for seq, fam in enumerate((socket.AF_INET, socket.AF_INET6), 1):
    # nlmsghdr (type NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_DELETE, REQUEST|ACK) + nfgenmsg
    s.send(struct.pack("=LHHLL", 20, (1 << 8) | 2, 0x1 | 0x4, seq, 0) + struct.pack("=BBH", fam, 0, 0))
    r = s.recv(4096)
    err = -struct.unpack_from("=i", r, 16)[0]
    if err not in (0, errno.ENOENT):
        raise SystemExit("conntrack flush (family %d): %s" % (fam, errno.errorcode.get(err, err)))
'
"#;

/// The client of [`Edge::start_probe`]: a fresh non-blocking TCP connect every `interval`, each
/// given `timeout` to complete; stats (JSON) are rewritten every 100 ms and at the end.
const PROBE_PY: &str = r#"
import errno, json, os, selectors, signal, socket, struct, sys, time
fam, addr, port, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
interval, timeout, max_s, max_n = (float(sys.argv[5]), float(sys.argv[6]),
                                   float(sys.argv[7]), int(sys.argv[8]))
af = socket.AF_INET6 if fam == "6" else socket.AF_INET
st = {"attempts": 0, "connected": 0, "refused": 0, "timed_out": 0, "other": 0,
      "unfinished": 0, "first": None, "last": None, "elapsed_ms": 0, "done": False}
stop = False
def term(*_):
    global stop
    stop = True
signal.signal(signal.SIGTERM, term)
signal.signal(signal.SIGINT, term)
sel = selectors.DefaultSelector()
pending = {}
t0 = time.monotonic()
def ms():
    return int((time.monotonic() - t0) * 1000)
def dump():
    st["elapsed_ms"] = ms()
    with open(out + ".tmp", "w") as f:
        json.dump(st, f)
    os.replace(out + ".tmp", out)
# close with RST: no TIME_WAIT pile-up over thousands of connections
linger = struct.pack("ii", 1, 0)
def finish(s, err):
    if err == 0:
        st["connected"] += 1
        m = ms()
        if st["first"] is None:
            st["first"] = m
        st["last"] = m
    elif err == errno.ECONNREFUSED:
        st["refused"] += 1
    elif err == errno.ETIMEDOUT:
        st["timed_out"] += 1
    else:
        st["other"] += 1
    s.close()
def collect(wait):
    for key, _ in sel.select(wait):
        s = key.fileobj
        sel.unregister(s)
        del pending[s]
        finish(s, s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR))
next_at = t0
next_dump = t0 + 0.1
dump()
while not stop:
    now = time.monotonic()
    if now - t0 >= max_s or (st["attempts"] >= max_n and not pending):
        break
    if now >= next_at and st["attempts"] < max_n:
        s = socket.socket(af, socket.SOCK_STREAM)
        s.setblocking(False)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        st["attempts"] += 1
        err = s.connect_ex((addr, port))
        if err == errno.EINPROGRESS:
            pending[s] = now + timeout
            sel.register(s, selectors.EVENT_WRITE)
        else:
            finish(s, err)
        next_at += interval
        if next_at < now:
            next_at = now + interval  # late (a busy machine): no burst to catch up
    now = time.monotonic()
    wake = min([next_at if st["attempts"] < max_n else now + 0.05, next_dump]
               + list(pending.values()))
    collect(max(0.0, wake - now))
    now = time.monotonic()
    for s, deadline in list(pending.items()):
        if now >= deadline:
            sel.unregister(s)
            del pending[s]
            finish(s, errno.ETIMEDOUT)
    if now >= next_dump:
        dump()
        next_dump = now + 0.1
collect(0)
st["unfinished"] = len(pending)
for s in list(pending):
    s.close()
st["done"] = True
dump()
"#;

/// What a [`Probe`] saw. Times are ms since the probe started, taken when a handshake completed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeStats {
    /// Connections opened (each a new socket).
    pub attempts: u64,
    /// Handshakes completed: the client reached the port.
    pub connected: u64,
    /// Answered by RST (e.g. nothing listening, or a REJECT).
    pub refused: u64,
    /// No answer within the probe's connect timeout (e.g. a DROP).
    pub timed_out: u64,
    /// Other errors (unreachable...).
    pub other: u64,
    /// Still in flight when the probe stopped (not counted as anything else).
    pub unfinished: u64,
    pub first_connected_ms: Option<u64>,
    pub last_connected_ms: Option<u64>,
    /// How long the probe ran.
    pub elapsed_ms: u64,
    /// The probe ended by itself or by `stop` (false: read while running, or it was killed).
    pub done: bool,
}

impl ProbeStats {
    fn parse(text: &str) -> Option<ProbeStats> {
        let v: Value = serde_json::from_str(text).ok()?;
        let n = |k: &str| v[k].as_u64().unwrap_or(0);
        Some(ProbeStats {
            attempts: n("attempts"),
            connected: n("connected"),
            refused: n("refused"),
            timed_out: n("timed_out"),
            other: n("other"),
            unfinished: n("unfinished"),
            first_connected_ms: v["first"].as_u64(),
            last_connected_ms: v["last"].as_u64(),
            elapsed_ms: n("elapsed_ms"),
            done: v["done"].as_bool().unwrap_or(false),
        })
    }
}

/// A running continuous probe (see [`Edge::start_probe`]). Dropping it kills it.
pub struct Probe {
    child: Option<Child>,
    stats: PathBuf,
    log: PathBuf,
    label: String,
}

impl Probe {
    /// Connect interval, connect timeout, hard limits: a probe always ends by itself.
    pub const INTERVAL: Duration = Duration::from_millis(10);
    pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(200);
    pub const MAX_DURATION: Duration = Duration::from_secs(180);
    pub const MAX_ATTEMPTS: u64 = 20_000;

    /// "evil/v4:443"
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The stats as last written (every 100 ms) while it runs.
    pub fn stats_so_far(&self) -> ProbeStats {
        fs::read_to_string(&self.stats)
            .ok()
            .and_then(|t| ProbeStats::parse(&t))
            .unwrap_or_default()
    }

    /// Handshakes completed so far (at most 100 ms old).
    pub fn connected_so_far(&self) -> u64 {
        self.stats_so_far().connected
    }

    /// Stops the probe (SIGTERM; it collects what completed, then writes its stats) and returns
    /// what it saw. Panics if the probe died instead of finishing.
    pub fn stop(mut self) -> ProbeStats {
        let mut c = self.child.take().expect("probe child");
        signal(c.id(), "TERM");
        let t0 = Instant::now();
        while c.try_wait().ok().flatten().is_none() && t0.elapsed() < Duration::from_secs(10) {
            thread::sleep(Duration::from_millis(10));
        }
        if c.try_wait().ok().flatten().is_none() {
            signal_group(c.id(), "KILL");
            let _ = c.kill();
        }
        let _ = c.wait();
        let st = self.stats_so_far();
        assert!(
            st.done,
            "probe {} did not finish cleanly: {st:?}\n{}",
            self.label,
            fs::read_to_string(&self.log).unwrap_or_default()
        );
        st
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal_group(c.id(), "KILL");
            let _ = c.kill();
            let _ = c.wait();
        }
    }
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
        Self::up_parts(opts.docker, opts.docker, true, DockerOptions::default())
    }

    /// Like [`up`](Self::up) with another daemon or daemon config, e.g.
    /// `Edge::up_docker(DockerOptions::default_docker().daemon(Daemon::Forky))`.
    pub fn up_docker(d: DockerOptions) -> Edge {
        Self::up_parts(true, true, true, d)
    }

    /// For the compose tests: the topology and dockerd with the imported image, but no `web`
    /// container and no list server (the compose project brings its own containers).
    pub fn up_compose() -> Edge {
        Self::up_parts(true, false, false, DockerOptions::default())
    }

    /// The topology alone (the agent runs in srv, e.g. for file-only subcommands).
    pub fn up_bare() -> Edge {
        Self::up_parts(false, false, false, DockerOptions::default())
    }

    fn up_parts(docker: bool, web: bool, lists: bool, dopts: DockerOptions) -> Edge {
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
        // Before anything exists: a first build of a tree takes about a minute.
        let tree = if opts.docker {
            dopts.daemon.tree()
        } else {
            None
        };
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
            dopts,
            tree,
            dockerd: Mutex::new(None),
            probes: AtomicU32::new(0),
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
            "netfw: {} up in {:.1?} ({}){}",
            e.name,
            t0.elapsed(),
            steps.join(", "),
            if opts.docker {
                format!(
                    " with the {} dockerd, ipv6 {}",
                    dopts.daemon.suite(),
                    dopts.ipv6
                )
            } else {
                String::new()
            }
        );
        e
    }

    /// The daemon and its config this edge runs.
    pub fn docker_options(&self) -> DockerOptions {
        self.dopts
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

    /// Runs the agent in srv's network namespace, in a private mount namespace whose /run is
    /// this edge's own directory (shared by the edge's runs, as a box's /run is: its lock;
    /// no journald), without SSH_* in the environment.
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
        let run_dir = self.agent_run_dir();
        fs::create_dir_all(&run_dir).unwrap();
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns(Host::Srv)])
            .args(["unshare", "-m", "--propagation", "private", "sh", "-c"])
            .arg("mount --bind \"$0\" /run && exec \"$@\"")
            .arg(&run_dir)
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

    /// What the agent's runs see as /run.
    fn agent_run_dir(&self) -> PathBuf {
        self.dir().join("agent-run")
    }

    /// Holds the agent's run lock (/run/sapari-agent.lock of the edge's runs) for `d`, as a
    /// long converge would, until the guard is dropped. Returns once the lock is held.
    pub fn hold_lock(&self, d: Duration) -> LockHolder {
        let run_dir = self.agent_run_dir();
        fs::create_dir_all(&run_dir).unwrap();
        let lock = run_dir.join("sapari-agent.lock");
        let child = Command::new("flock")
            .arg("-x")
            .arg(&lock)
            .args(["sleep", &d.as_secs().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("spawn flock");
        let t0 = Instant::now();
        loop {
            let free = Command::new("flock")
                .args(["-n", "-x"])
                .arg(&lock)
                .arg("true")
                .status()
                .is_ok_and(|s| s.success());
            if !free {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "flock never took {lock:?}"
            );
            thread::sleep(Duration::from_millis(20));
        }
        LockHolder(Some(child))
    }

    /// A commit-confirmed change waiting for `sapari-agent confirm` (the record a
    /// `converge --confirm` leaves), with its deadline 10 minutes ahead.
    pub fn write_pending_confirm(&self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let p = sapari_agent::confirm::Pending {
            id: format!("{now}-1"),
            state: sapari_agent::confirm::PendingState::Pending,
            started_at: "2026-12-01T00:00:00Z".into(),
            deadline: "in 10 minutes".into(),
            deadline_unix: now + 600,
            window_secs: 600,
            ssh_connection: None,
            resources: vec!["firewall".into()],
            config: Some(self.config_path()),
            config_sha256: String::new(),
            unit: format!("sapari-agent-rollback-{now}-1"),
            changed: None,
        };
        let d = self.state_dir().join("confirm");
        fs::create_dir_all(&d).unwrap();
        fs::write(
            d.join("pending.json"),
            serde_json::to_vec_pretty(&p).unwrap(),
        )
        .unwrap();
    }

    pub fn remove_pending_confirm(&self) {
        let _ = fs::remove_file(self.state_dir().join("confirm/pending.json"));
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

    /// Starts a continuous probe in `from`'s netns: a new TCP connection to srv's address of
    /// `fam` on `port` every [`Probe::INTERVAL`], each given [`Probe::CONNECT_TIMEOUT`] (so about
    /// 20 are in flight against a DROP), until [`Probe::stop`] or its hard limits
    /// ([`Probe::MAX_DURATION`], [`Probe::MAX_ATTEMPTS`]). Several may run at once. Returns
    /// once the probe runs (its first stats are written).
    pub fn start_probe(&self, from: Host, fam: Fam, port: u16) -> Probe {
        let n = self.probes.fetch_add(1, Ordering::SeqCst);
        let pdir = self.dir().join("probes");
        fs::create_dir_all(&pdir).unwrap();
        let script = pdir.join("probe.py");
        if !script.exists() {
            let tmp = pdir.join(format!(".probe.py.{n}"));
            fs::write(&tmp, PROBE_PY).unwrap();
            fs::rename(&tmp, &script).unwrap();
        }
        let label = format!("{}/{}:{port}", from.role(), fam.suffix());
        let base = format!("{n}-{}-{}", from.role(), fam.suffix());
        let stats = pdir.join(format!("{base}.json"));
        let log_path = pdir.join(format!("{base}.log"));
        let log = fs::File::create(&log_path).unwrap();
        let py = which(&["/usr/bin/python3", "python3"]).expect("python3");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns(from)])
            .arg(py)
            .arg(&script)
            .arg(match fam {
                Fam::V4 => "4",
                Fam::V6 => "6",
            })
            .arg(fam.srv_addr())
            .arg(port.to_string())
            .arg(&stats)
            .arg(Probe::INTERVAL.as_secs_f64().to_string())
            .arg(Probe::CONNECT_TIMEOUT.as_secs_f64().to_string())
            .arg(Probe::MAX_DURATION.as_secs_f64().to_string())
            .arg(Probe::MAX_ATTEMPTS.to_string())
            .env("PATH", PATH_ENV)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("spawn probe");
        let mut p = Probe {
            child: Some(child),
            stats,
            log: log_path,
            label,
        };
        let t0 = Instant::now();
        while !p.stats.exists() {
            if let Some(st) = p.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "probe {} exited ({st}):\n{}",
                    p.label,
                    fs::read_to_string(&p.log).unwrap_or_default()
                );
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "probe {} not running after 10 s",
                p.label
            );
            thread::sleep(Duration::from_millis(5));
        }
        p
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
        //
        // The TCP responder runs echo on the socket itself (nofork): with a pipe in between,
        // socat may see echo exit before it has read "hello" and close without it (seen as an
        // empty answer about 1 exchange in 20 under load, e.g. while a killed dockerd exits).
        //
        // socat's default listen backlog (5) overflows under continuous probes (start_probe):
        // the kernel then drops SYNs, which look like a firewall DROP to a prober.
        //
        // Nothing goes to the container's stdout/stderr: after a crash of dockerd (kill_dockerd)
        // nobody drains them, and a container that logs stalls. Seen: socat's "Broken pipe" for
        // every probe connection closed by RST stopped the container answering within a second.
        let cmd = "exec >/dev/null 2>&1; socat TCP6-LISTEN:443,fork,reuseaddr,ipv6only=0,backlog=4096 EXEC:'echo hello',nofork & socat UDP6-RECVFROM:443,fork,ipv6only=0 SYSTEM:'read -r l; echo pong' & wait";
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
    /// Without `ipv6` in the daemon config the container has no v6 address: v4 only.
    pub fn wait_container(&self) {
        let t0 = Instant::now();
        let mut want = vec![(Proto::Tcp, CONTAINER_V4.to_string())];
        want.push((Proto::Udp, CONTAINER_V4.to_string()));
        if self.dopts.ipv6 {
            let v6 = self.container_v6();
            assert!(
                !v6.is_empty(),
                "the container has no IPv6 address although dockerd runs with --ipv6\n{}",
                describe(&self.docker(&["inspect", "web"]))
            );
            want.push((Proto::Tcp, v6.clone()));
            want.push((Proto::Udp, v6));
        }
        for (p, a) in want {
            let a = a.as_str();
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
    /// (no rules yet: everyone does). Proves the whole path before a test relies on it; without
    /// `ipv6` in the daemon config the v6 path is docker-proxy on `[::]:443`.
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

    /// dockerd's arguments, with our docker dir at `d` (as dockerd sees it).
    fn dockerd_args(&self, d: &str) -> Vec<String> {
        let mut a: Vec<String> = [
            "--config-file",
            &format!("{d}/daemon.json"),
            "--data-root",
            &format!("{d}/data"),
            "--exec-root",
            &format!("{d}/exec"),
            "--pidfile",
            &format!("{d}/docker.pid"),
            "-H",
            &format!("unix://{d}/docker.sock"),
            "--iptables=true",
            "--bip",
            "172.18.0.1/16",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if self.dopts.ipv6 {
            a.extend(
                [
                    "--ipv6",
                    "--fixed-cidr-v6",
                    "fd00:18::/64",
                    "--ip6tables",
                    "--experimental",
                ]
                .map(String::from),
            );
        }
        a.extend(
            [
                "--cgroup-parent",
                &format!("/{}", self.cgroup_parent()),
                "--storage-driver",
                "overlay2",
                "--shutdown-timeout",
                "2",
                "--log-level",
                "warn",
            ]
            .map(String::from),
        );
        a
    }

    /// Starts dockerd in srv and waits for its API. The host's dockerd runs in a private mount
    /// ns with a fresh sysfs for the netns, the host's cgroup hierarchies, a private /etc/docker
    /// and a private /run; a tree's dockerd by chroot into the read-only tree (see
    /// [`start_dockerd_async`](Self::start_dockerd_async)). Also after
    /// [`kill_dockerd`](Self::kill_dockerd) and [`flush_netfilter`](Self::flush_netfilter).
    ///
    /// /run is a directory of ours (`docker/run`) that outlives a dockerd, as a host's /run
    /// outlives a crash: the next dockerd's containerd finds the shims of the containers that
    /// kept running (their sockets are there) and dockerd can kill and restart them.
    pub fn start_dockerd(&self) {
        self.start_dockerd_async();
        self.wait_dockerd();
    }

    /// Starts dockerd and returns at once (the socket may not exist yet): for a test that
    /// probes while dockerd comes up. [`wait_dockerd`](Self::wait_dockerd) waits for the API.
    pub fn start_dockerd_async(&self) {
        let mut g = self.dockerd.lock().unwrap();
        assert!(g.is_none(), "dockerd already running");
        let d = self.dockerd_dir();
        for sub in ["etc", "cli", "cg", "run"] {
            fs::create_dir_all(d.join(sub)).unwrap();
        }
        let daemon_json = if self.dopts.live_restore {
            "{\"live-restore\": true}\n"
        } else {
            "{}\n"
        };
        fs::write(d.join("daemon.json"), daemon_json).unwrap();
        let mut c = Command::new("unshare");
        c.args(["-m", "--propagation", "private", "nsenter"])
            .arg(format!("--net=/run/netns/{}", self.ns(Host::Srv)));
        if let Some(tree) = &self.tree {
            // The tree is bound on itself (a chroot root must be a mount point, or dockerd
            // finds no mount point for its data root) and made read-only: nothing a daemon does
            // can change it. What dockerd writes lives on mounts of its own: our docker dir on
            // /sfw, our run dir on /run, a tmpfs /tmp, a private /etc/docker. The sysfs is this
            // netns's; the cgroup hierarchies and /dev are the host's.
            let script = format!(
                r#"set -e
D=$1; R=$2; shift 2
mount --bind "$R" "$R"
mount -o remount,bind,ro "$R"
mount -t proc proc "$R/proc"
mount -t sysfs sysfs "$R/sys"
mount --rbind /sys/fs/cgroup "$R/sys/fs/cgroup"
mount --rbind /dev "$R/dev"
mount --bind "$D/run" "$R/run"
mount -t tmpfs -o mode=1777 tmpfs "$R/tmp"
mount --bind "$D" "$R{TREE_MNT}"
mount --bind "$D/etc" "$R/etc/docker"
exec chroot "$R" /usr/sbin/dockerd "$@""#
            );
            c.args(["sh", "-c", &script, "sh"])
                .arg(&d)
                .arg(tree)
                .args(self.dockerd_args(TREE_MNT))
                .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
        } else {
            // dockerd 20.10 writes /etc/docker/key.json: give it a private /etc/docker. The
            // docker.io package ships that directory, so it exists wherever dockerd does.
            assert!(
                Path::new("/etc/docker").is_dir(),
                "/etc/docker is missing: is docker.io installed?"
            );
            let script = r#"set -e
D=$1; shift
# `ip netns exec` would mount a sysfs without the cgroup hierarchies: keep them by hand.
mount --rbind /sys/fs/cgroup "$D/cg"
mount -t sysfs sysfs /sys
mount --rbind "$D/cg" /sys/fs/cgroup
umount -l "$D/cg"
mount --bind "$D/run" /run
mount --bind "$D/etc" /etc/docker
exec dockerd "$@""#;
            c.args(["sh", "-c", script, "sh"])
                .arg(&d)
                .args(self.dockerd_args(&d.to_string_lossy()))
                .env("PATH", PATH_ENV);
        }
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join("dockerd.log"))
            .unwrap();
        let child = c
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("spawn dockerd");
        *g = Some(child);
    }

    /// Waits (30 s at most) until dockerd started by [`start_dockerd_async`] answers, and checks
    /// that it lives in srv's network namespace.
    pub fn wait_dockerd(&self) {
        let d = self.dockerd_dir();
        let pid = self
            .dockerd
            .lock()
            .unwrap()
            .as_ref()
            .map(Child::id)
            .expect("dockerd not started");
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

    /// `docker version`'s server version, e.g. "20.10.24+dfsg1", "28.5.2+dfsg4".
    pub fn docker_server_version(&self) -> String {
        self.docker_ok(&["version", "--format", "{{.Server.Version}}"])
            .trim()
            .to_string()
    }

    /// The pid of the running dockerd (started by us), if any.
    pub fn dockerd_pid(&self) -> Option<u32> {
        self.dockerd.lock().unwrap().as_ref().map(Child::id)
    }

    /// A crash of dockerd: SIGKILL to dockerd alone, nothing else is signalled. What stays
    /// behind is what a crash leaves (seen on 20.10, 26.1 and 28.5 alike): the containers keep
    /// running under their shims (not dockerd's children) and stay reachable through the NAT
    /// rules, which also stay; dockerd's own containerd and the docker-proxy processes die with
    /// it (the kernel kills them when their parent dies, Pdeathsig), so the IPv6 path of a
    /// daemon without `ipv6` is down, and so is every path after a
    /// [`flush_netfilter`](Self::flush_netfilter). Returns when containerd and docker-proxy are
    /// gone. The next [`start_dockerd`](Self::start_dockerd) finds the shims (in our /run),
    /// kills the old containers and starts them again (restart policy `always`; RestartCount
    /// stays 0, StartedAt changes).
    pub fn kill_dockerd(&self) {
        let mut c = self
            .dockerd
            .lock()
            .unwrap()
            .take()
            .expect("kill_dockerd: dockerd is not running");
        let ctr_pidfile = self.dockerd_dir().join("exec/containerd/containerd.pid");
        let ctr_pid = fs::read_to_string(&ctr_pidfile)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok());
        signal(c.id(), "KILL");
        let _ = c.wait();
        // An exited process that nobody has reaped yet is a zombie (state Z).
        let dead = |pid: u32| {
            fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| s.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('Z')))
                .unwrap_or(true)
        };
        let t0 = Instant::now();
        loop {
            let mut left = self.srv_processes("docker-proxy");
            left.extend(ctr_pid.filter(|&p| !dead(p)));
            if left.is_empty() {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "10 s after dockerd was killed, {left:?} still run (containerd, docker-proxy)"
            );
            thread::sleep(Duration::from_millis(20));
        }
        // The orphaned containerd is reparented to this machine's PID 1, which reaps late: it
        // can stay a zombie for seconds. The next dockerd would take the pid in containerd.pid
        // for a containerd that "is still running" (kill(pid, 0) succeeds on a zombie) and
        // give up waiting for its socket. systemd reaps at once: drop the pid file of a dead
        // containerd, as if it had.
        if ctr_pid.is_some_and(dead) {
            let _ = fs::remove_file(&ctr_pidfile);
        }
    }

    /// The process half of a reboot (the other half is [`flush_netfilter`](Self::flush_netfilter)):
    /// every process in srv's netns (dockerd, containerd, shims, docker-proxy) and every
    /// container dies at once (SIGKILL), and what lives on tmpfs on a real server is emptied:
    /// our /run and dockerd's exec root (`/run/docker` there). The data root stays.
    /// [`start_dockerd`](Self::start_dockerd) then starts from nothing, and the container
    /// comes back through its restart policy.
    pub fn power_off(&self) {
        let child = self.dockerd.lock().unwrap().take();
        let srv = self.ns(Host::Srv);
        let t0 = Instant::now();
        loop {
            let mut pids = pids_in_netns(&srv);
            for h in cgroup_roots() {
                cgroup_pids(&h.join(self.cgroup_parent()), &mut pids);
            }
            pids.retain(|&p| p != std::process::id());
            if pids.is_empty() {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "power_off: {pids:?} still run after 10 s"
            );
            for p in &pids {
                signal(*p, "KILL");
            }
            thread::sleep(Duration::from_millis(50));
        }
        if let Some(mut c) = child {
            let _ = c.wait();
        }
        // Nothing is left in dockerd's mount namespace, so nothing is mounted below these.
        let d = self.dockerd_dir();
        for sub in ["run", "exec"] {
            let p = d.join(sub);
            if p.exists() {
                let o = run(
                    Command::new("rm")
                        .args(["-rf", "--one-file-system"])
                        .arg(&p),
                    None,
                    Duration::from_secs(60),
                );
                assert!(o.status.success(), "rm {}\n{}", p.display(), describe(&o));
            }
        }
        let _ = fs::remove_file(d.join("docker.pid"));
        let _ = fs::remove_file(d.join("docker.sock"));
        // The containers' cgroups went with the boot.
        for h in cgroup_roots() {
            let cg = h.join(self.cgroup_parent());
            if let Ok(rd) = fs::read_dir(&cg) {
                for e in rd.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        rmdir_tree(&e.path());
                    }
                }
            }
        }
    }

    /// Empties netfilter in srv as a reboot does: `nft flush ruleset` (all tables, iptables-nft
    /// ones included), the legacy iptables tables that exist in srv (listed in srv's
    /// /proc/net/ip{,6}_tables_names; flushed, chains deleted, policies ACCEPT) and the conntrack
    /// table (flushed over ctnetlink, both families). dockerd (if running) is not told.
    pub fn flush_netfilter(&self) {
        self.srv_sh_ok(FLUSH_NETFILTER_SH);
    }

    /// Processes of a name (`comm`) running in srv's network namespace.
    pub fn srv_processes(&self, comm: &str) -> Vec<u32> {
        pids_in_netns(&self.ns(Host::Srv))
            .into_iter()
            .filter(|p| {
                fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == comm)
            })
            .collect()
    }

    /// SIGTERM to dockerd (it stops the container within --shutdown-timeout), then waits. A
    /// no-op when dockerd is not running (e.g. after [`kill_dockerd`](Self::kill_dockerd)).
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

/// The process holding the agent's lock for [`Edge::hold_lock`]; killed when dropped.
pub struct LockHolder(Option<Child>);

impl Drop for LockHolder {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            signal_group(c.id(), "KILL");
            let _ = c.kill();
            let _ = c.wait();
        }
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
