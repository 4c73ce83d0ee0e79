//! Real-traffic fixture for the `firewall` resource: an "internet" made of network namespaces
//! around a server that runs a real `dockerd` publishing :443 (TCP and UDP, IPv4 and IPv6), a
//! local HTTPS server for the Cloudflare lists, and clients that connect for real.
//!
//! A submodule of the harness: `mod common;` and `use common::netfw;`.
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
//!   a cached Debian tree (tests/harness/build-docker-tree.sh) in srv's netns, the tree as the root of
//!   its mount namespace (pivot_root: see tree.rs). The tree
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

mod agent;
mod docker;
mod lists;
mod probe;
mod topology;
mod tree;

#[allow(unused_imports)] // each test crate uses a different subset
pub use probe::{Probe, ProbeStats};
use topology::{netns_inode, pids_in_netns, require_tools, self_netns_inode, which};

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

use super::cleanup::{cgroup_pids, cgroup_roots, remove_cgroup_tree, start_watchdog};
use super::process::{describe, host, run, signal, signal_group};
use super::{PATH, SERVER, agent_binary, cleanup_stale, code, harness_tmp_root, sh_quote};

pub const PREFIX: &str = "sfw-";
pub const SRV_V4: &str = SERVER;
pub const SRV_V6: &str = "2001:db8:10::10";
pub const LISTS_IP: &str = "198.18.0.10";
pub const CONTAINER_V4: &str = "172.18.0.2";
pub const WAN: &str = "wan0";

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
    /// Debian 13's docker.io 26.1, from a cached tree.
    Trixie,
    /// Debian forky's docker.io 28.5, from a cached tree.
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

    /// The major version of the compose its release ships ("1": Debian 12's docker-compose).
    pub fn compose_major(self) -> &'static str {
        match self {
            Daemon::Bookworm => "1",
            Daemon::Trixie | Daemon::Forky => "2",
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
pub(crate) const TREE_MNT: &str = "/sfw";

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

/// The tests make namespaces, cgroups and iptables rules: without root they would fail
/// half-way, with less clear messages.
fn assert_root() {
    let uid = fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(String::from))
        })
        .unwrap_or_default();
    assert_eq!(uid, "0", "firewall system tests need root");
}

pub struct Edge {
    name: String,
    dir: Option<TempDir>,
    /// The probes' script and stats, on tmpfs: a probe rewrites its stats every 100 ms, and on
    /// the disk that write waits behind other tests' dpkg fsyncs, long enough (0.5-0.8 s
    /// measured in CI) to leave the port unprobed.
    probe_dir: Option<TempDir>,
    /// Namespaces made so far (deleted in reverse order).
    netns: Vec<String>,
    docker: bool,
    dopts: DockerOptions,
    /// The docker tree dockerd runs from (None: the host's dockerd).
    tree: Option<PathBuf>,
    /// The agent (and compose by hand) run in the tree as well, with its docker
    /// CLI and compose plugin: the server is that Debian release (see [`Edge::up_compose_on`]).
    agent_in_tree: bool,
    dockerd: Mutex<Option<Child>>,
    probes: AtomicU32,
    lists: Mutex<Option<Child>>,
    routes: Mutex<BTreeMap<String, Value>>,
    agent: PathBuf,
    docker_cli: PathBuf,
}

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

    /// Like [`up_compose`](Self::up_compose) on `daemon` with Docker's default config. With a
    /// tree's daemon the agent runs in the tree too (its root), so the compose it drives is
    /// that release's (`docker compose` v2 with the tree's docker CLI), against the tree's
    /// dockerd, reading that release's /etc/os-release.
    pub fn up_compose_on(daemon: Daemon) -> Edge {
        let d = DockerOptions::default_docker().daemon(daemon);
        Self::up_inner(true, false, false, d, daemon != Daemon::Bookworm)
    }

    /// The topology alone (the agent runs in srv, e.g. for file-only subcommands).
    pub fn up_bare() -> Edge {
        Self::up_parts(false, false, false, DockerOptions::default())
    }

    fn up_parts(docker: bool, web: bool, lists: bool, dopts: DockerOptions) -> Edge {
        Self::up_inner(docker, web, lists, dopts, false)
    }

    fn up_inner(
        docker: bool,
        web: bool,
        lists: bool,
        dopts: DockerOptions,
        agent_in_tree: bool,
    ) -> Edge {
        assert_root();
        require_tools();
        start_watchdog();
        cleanup_stale();
        let t0 = Instant::now();
        let mut e = Self::empty(docker, dopts);
        e.agent_in_tree = agent_in_tree;
        let steps = e.bring_up(web, lists);
        eprintln!(
            "netfw: {} up in {:.1?} ({}){}",
            e.name,
            t0.elapsed(),
            steps.join(", "),
            if e.docker {
                format!(
                    " with the {} dockerd, ipv6 {}",
                    e.dopts.daemon.suite(),
                    e.dopts.ipv6
                )
            } else {
                String::new()
            }
        );
        e
    }

    /// An edge with its directory and nothing else yet: from here on a panic drops it, which
    /// undoes whatever exists.
    fn empty(docker: bool, dopts: DockerOptions) -> Edge {
        let agent = fs::canonicalize(agent_binary()).expect("agent binary");
        let docker_cli = which(&["/usr/bin/docker", "docker"]).unwrap_or_default();
        if docker {
            assert!(
                which(&["dockerd"]).is_some() && docker_cli.is_file(),
                "dockerd/docker not found (apt: docker.io)"
            );
        }
        // Before anything exists: a first build of a tree takes about a minute.
        let tree = if docker { dopts.daemon.tree() } else { None };
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
        let probe_dir = tempfile::Builder::new()
            .prefix(&format!("{name}-"))
            .tempdir_in("/dev/shm")
            .unwrap();
        Edge {
            name,
            dir: Some(dir),
            probe_dir: Some(probe_dir),
            netns: Vec::new(),
            docker,
            dopts,
            tree,
            agent_in_tree: false,
            dockerd: Mutex::new(None),
            probes: AtomicU32::new(0),
            lists: Mutex::new(None),
            routes: Mutex::new(BTreeMap::new()),
            agent,
            docker_cli,
        }
    }

    /// Topology, then (as asked) lists and config, dockerd, image and web container; returns
    /// how long each step took, for the line `up_parts` prints.
    fn bring_up(&mut self, web: bool, lists: bool) -> Vec<String> {
        let mut steps = Vec::new();
        let mut lap = Instant::now();
        let mut step = |what: &str| {
            steps.push(format!("{what} {:.2?}", lap.elapsed()));
            lap = Instant::now();
        };
        self.topology();
        step("netns");
        if lists {
            self.pki_and_lists();
            self.write_config("");
            step("pki+lists");
        }
        if self.docker {
            self.build_image_rootfs();
            self.start_dockerd();
            step("dockerd");
            self.import_image();
            if web {
                self.run_container();
                self.wait_wan();
                step("container");
            } else {
                step("image");
            }
        }
        steps
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn dir(&self) -> &Path {
        self.dir.as_ref().expect("edge dir").path()
    }

    pub(crate) fn probe_dir(&self) -> &Path {
        self.probe_dir.as_ref().expect("edge probe dir").path()
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
                remove_cgroup_tree(&cg);
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
        if let Some(d) = self.probe_dir.take()
            && std::env::var_os("SAPARI_TEST_KEEP").is_some()
        {
            eprintln!("netfw: keeping {} (SAPARI_TEST_KEEP)", d.path().display());
            let _ = d.keep();
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
