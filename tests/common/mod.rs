//! System-test harness: boots a throwaway Debian container (systemd-nspawn --boot, volatile overlay
//! root) inside its own network namespace and runs commands in it the way the agent would run.
//!
//! Everything system-level happens inside namespaces this module creates; the host is only touched
//! through swapoff of swap files that the container put on the (host-side) ext4 directory we bind in,
//! because swap is kernel-global. See tests/harness/README.md.
#![allow(dead_code)] // each integration-test crate uses a different subset

pub mod apt_repo;
pub mod report;
pub mod ssh;

use std::collections::{BTreeMap, VecDeque};
use std::ffi::OsString;
use std::fs;
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Component, Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// Container-side path of the agent binary.
pub const AGENT_PATH: &str = "/usr/local/bin/sapari-agent";
/// Container-side mount point of the host ext4 directory (overlay roots cannot hold swap).
pub const SWAP_MOUNT: &str = "/mnt/swap";
pub const NETNS_PREFIX: &str = "sapt-";
pub const DEFAULT_EXEC_TIMEOUT: Duration = Duration::from_secs(120);
pub const DEFAULT_BOOT_TIMEOUT: Duration = Duration::from_secs(60);
const CONTAINER_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn env_secs(var: &str, default: Duration) -> Duration {
    match std::env::var(var) {
        Ok(v) => Duration::from_secs(
            v.trim()
                .parse()
                .unwrap_or_else(|_| panic!("{var}={v:?} is not a number of seconds")),
        ),
        Err(_) => default,
    }
}

/// Host directory holding one TempDir per box (must be on ext4/xfs: swap files live there).
pub fn harness_tmp_root() -> PathBuf {
    std::env::var_os("SAPARI_TEST_TMP")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/sapari-agent-tests"))
}

/// The agent binary to bind into containers: $SAPARI_AGENT_BIN, else the musl release build.
pub fn agent_binary() -> PathBuf {
    let p = match std::env::var_os("SAPARI_AGENT_BIN") {
        Some(p) => PathBuf::from(p),
        None => std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| manifest_dir().join("target"))
            .join("x86_64-unknown-linux-musl/release/sapari-agent"),
    };
    if !p.is_file() {
        panic!(
            "agent binary not found at {}: build it with \
             `cargo build --release --target x86_64-unknown-linux-musl` (or set SAPARI_AGENT_BIN)",
            p.display()
        );
    }
    p
}

/// Path of the cached Debian rootfs, built by tests/harness/build-rootfs.sh on first use.
pub fn rootfs() -> PathBuf {
    static ROOTFS: OnceLock<PathBuf> = OnceLock::new();
    ROOTFS
        .get_or_init(|| {
            if let Some(p) = std::env::var_os("SAPARI_TEST_ROOTFS") {
                let p = PathBuf::from(p);
                assert!(
                    p.join("usr/lib/systemd/systemd").exists()
                        || p.join("lib/systemd/systemd").exists(),
                    "SAPARI_TEST_ROOTFS={} does not look like a rootfs with systemd",
                    p.display()
                );
                return p;
            }
            let script = manifest_dir().join("tests/harness/build-rootfs.sh");
            let t0 = Instant::now();
            let out = Command::new("bash")
                .arg(&script)
                .stdin(Stdio::null())
                .stderr(Stdio::inherit())
                .output()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
            let stdout = String::from_utf8_lossy(&out.stdout);
            if !out.status.success() {
                panic!(
                    "{} failed ({}); stdout:\n{stdout}",
                    script.display(),
                    out.status
                );
            }
            let path = stdout
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .trim();
            let path = PathBuf::from(path);
            assert!(
                path.is_dir(),
                "build-rootfs.sh printed {path:?}, which is not a directory"
            );
            if t0.elapsed() > Duration::from_secs(5) {
                eprintln!(
                    "harness: rootfs ready in {:.0?}: {}",
                    t0.elapsed(),
                    path.display()
                );
            }
            path
        })
        .clone()
}

/// Single-quote for sh.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn require_root() {
    let uid = fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2).unwrap_or("").to_string())
        })
        .unwrap_or_default();
    assert_eq!(
        uid, "0",
        "system tests need root (effective uid is {uid}); run scripts/test.sh as root"
    );
}

// ---------------------------------------------------------------------------------------------
// Running host commands with a deadline

#[derive(Debug)]
pub struct TimedOut {
    pub after: Duration,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// Runs `cmd` to completion with piped stdout/stderr, or kills its whole process group at the deadline.
/// The own process group also keeps a terminal Ctrl-C away from it; the watchdog cleans up then.
pub fn run_bounded(
    cmd: &mut Command,
    stdin: Option<&[u8]>,
    timeout: Duration,
) -> Result<Output, TimedOut> {
    run_bounded_then(cmd, stdin, timeout, &|| {})
}

/// `on_timeout` runs after the process group is killed and before the output is collected: a
/// process outside the group (a systemd unit given our pipes by --pipe) may still hold the pipes.
fn run_bounded_then(
    cmd: &mut Command,
    stdin: Option<&[u8]>,
    timeout: Duration,
    on_timeout: &dyn Fn(),
) -> Result<Output, TimedOut> {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .process_group(0);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn {cmd:?}: {e}"));
    let writer = stdin.map(|data| {
        let mut w = child.stdin.take().unwrap();
        let data = data.to_vec();
        thread::spawn(move || {
            let _ = w.write_all(&data);
        })
    });
    let reader = |r: Option<Box<dyn Read + Send>>| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out_t = reader(
        child
            .stdout
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let err_t = reader(
        child
            .stderr
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let t0 = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None) if t0.elapsed() >= timeout => break None,
            Ok(None) => thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("wait for {cmd:?}: {e}"),
        }
    };
    let Some(status) = status else {
        kill_group(child.id());
        let _ = child.kill();
        let _ = child.wait();
        on_timeout();
        // Grandchildren in other sessions could hold the pipes open; don't wait for them forever.
        let stdout = join_with_deadline(out_t, Duration::from_secs(2));
        let stderr = join_with_deadline(err_t, Duration::from_secs(2));
        return Err(TimedOut {
            after: timeout,
            stdout,
            stderr,
        });
    };
    if let Some(w) = writer {
        let _ = w.join();
    }
    // The process exited; a descendant that escaped (setsid + kept our pipe) must not hang the test.
    let stdout = join_with_deadline(out_t, Duration::from_secs(10));
    let stderr = join_with_deadline(err_t, Duration::from_secs(10));
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

fn join_with_deadline(h: thread::JoinHandle<Vec<u8>>, d: Duration) -> Vec<u8> {
    let t0 = Instant::now();
    while !h.is_finished() && t0.elapsed() < d {
        thread::sleep(Duration::from_millis(10));
    }
    if h.is_finished() {
        h.join().unwrap_or_default()
    } else {
        b"<output still open, not collected>".to_vec()
    }
}

fn kill_group(pgid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .stderr(Stdio::null())
        .status();
}

fn kill_pid(pid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// Host-side helper command: panics with its output on failure.
fn host(args: &[&str]) -> Output {
    let out = run_bounded(
        Command::new(args[0]).args(&args[1..]),
        None,
        Duration::from_secs(30),
    )
    .unwrap_or_else(|_| panic!("host command timed out: {args:?}"));
    if !out.status.success() {
        panic!(
            "host command failed ({}): {args:?}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

fn host_quiet(args: &[&str]) -> bool {
    run_bounded(
        Command::new(args[0]).args(&args[1..]),
        None,
        Duration::from_secs(30),
    )
    .map(|o| o.status.success())
    .unwrap_or(false)
}

fn describe(o: &Output) -> String {
    format!(
        "status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

// ---------------------------------------------------------------------------------------------
// /proc helpers

/// (ppid, comm) from /proc/PID/stat; comm may contain spaces and parentheses.
fn proc_stat(pid: u32) -> Option<(u32, String)> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = s.find('(')?;
    let close = s.rfind(')')?;
    let comm = s[open + 1..close].to_string();
    let ppid = s[close + 1..].split_whitespace().nth(1)?.parse().ok()?;
    Some((ppid, comm))
}

fn all_pids() -> Vec<u32> {
    fs::read_dir("/proc")
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn ns_link(pid: &str, ns: &str) -> Option<String> {
    fs::read_link(format!("/proc/{pid}/ns/{ns}"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

fn netns_id(name: &str) -> Option<String> {
    fs::metadata(format!("/run/netns/{name}"))
        .ok()
        .map(|m| format!("net:[{}]", m.ino()))
}

/// Mount points of the cgroup hierarchies a container's systemd writes to: cgroup2 and the v1
/// name=systemd one. With --keep-unit nspawn puts the container below the *caller's* cgroup, so
/// every box needs its own there; otherwise all boxes share /payload and their systemds manage
/// (and stop, and kill) each other's system.slice units. Seen as EXIT_CGROUP (219) under load.
fn cgroup_hierarchies() -> Vec<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (mp, ty, opts) = (f.get(1)?, f.get(2)?, f.get(3)?);
            let named_systemd = *ty == "cgroup" && opts.split(',').any(|o| o == "name=systemd");
            (*ty == "cgroup2" || named_systemd).then(|| PathBuf::from(mp.replace("\\040", " ")))
        })
        .collect()
}

/// rmdir a cgroup tree bottom-up (cgroupfs dirs only go away empty, control files and all).
fn remove_cgroup_tree(p: &Path) -> bool {
    if let Ok(rd) = fs::read_dir(p) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    fs::remove_dir(p).is_ok() || !p.exists()
}

fn fstype(p: &Path) -> String {
    let out = host(&[
        "findmnt",
        "-n",
        "-o",
        "FSTYPE",
        "--target",
        &p.to_string_lossy(),
    ]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Resolves `path` as if `root` were `/`: absolute symlinks restart at `root`, `..` never leaves it.
/// Going through /proc/PID/root naively would follow absolute links into the *host*.
fn resolve_in_root(root: &Path, path: &str, follow_last: bool) -> PathBuf {
    let mut todo: VecDeque<OsString> = Path::new(path)
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect();
    let mut done: Vec<OsString> = Vec::new();
    let mut links = 0;
    while let Some(c) = todo.pop_front() {
        if c == ".." {
            done.pop();
            continue;
        }
        let mut cand = root.to_path_buf();
        cand.extend(&done);
        cand.push(&c);
        let is_last = todo.is_empty();
        match fs::symlink_metadata(&cand) {
            Ok(m) if m.file_type().is_symlink() && (!is_last || follow_last) => {
                links += 1;
                if links > 40 {
                    return cand; // let the caller's I/O report ELOOP-ish failure
                }
                let target = fs::read_link(&cand).unwrap_or_default();
                if target.is_absolute() {
                    done.clear();
                }
                let mut comps: Vec<OsString> = target
                    .components()
                    .filter_map(|c| match c {
                        Component::Normal(s) => Some(s.to_os_string()),
                        Component::ParentDir => Some(OsString::from("..")),
                        _ => None,
                    })
                    .collect();
                comps.reverse();
                for x in comps {
                    todo.push_front(x);
                }
            }
            _ => done.push(c),
        }
    }
    let mut p = root.to_path_buf();
    p.extend(&done);
    p
}

// ---------------------------------------------------------------------------------------------
// Stale-state cleanup

/// Removes what a dead test process left behind: container inits inside its netns (killing the pid
/// namespace init ends the whole container), swap files under its temp dirs, its netns, its dirs.
/// Only names carrying a dead pid are touched, so parallel test processes are safe.
/// Shared by cleanup_stale() and the per-process watchdog, hence shell.
const CLEANUP_SH: &str = r#"
root=$1
dead() { case $1 in ''|*[!0-9]*) return 1;; esac; [ ! -d "/proc/$1" ]; }
pid_of() { echo "$1" | cut -d- -f2; }
for f in /run/netns/sapt-*; do
  [ -e "$f" ] || continue
  n=${f##*/}; dead "$(pid_of "$n")" || continue
  id="net:[$(stat -L -c %i "$f")]"
  for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do
    left=0
    for p in /proc/[0-9]*; do
      [ "$(readlink "$p/ns/net" 2>/dev/null)" = "$id" ] || continue
      left=1
      nspid=$(awk '/^NSpid:/{print (NF > 2) ? $NF : ""}' "$p/status" 2>/dev/null)
      [ "$nspid" = 1 ] && kill -KILL "${p#/proc/}" 2>/dev/null
    done
    [ $left = 0 ] && break
    sleep 0.5
  done
done
for d in "$root"/sapt-*; do
  [ -d "$d" ] || continue
  dead "$(pid_of "${d##*/}")" || continue
  find "$d" -xdev -type f -exec swapoff {} \; 2>/dev/null
done
for f in /run/netns/sapt-*; do
  [ -e "$f" ] || continue
  n=${f##*/}; dead "$(pid_of "$n")" && ip netns del "$n" 2>/dev/null
done
for d in "$root"/sapt-*; do
  [ -d "$d" ] || continue
  dead "$(pid_of "${d##*/}")" && rm -rf --one-file-system "$d"
done
for h in $(awk '$3=="cgroup2" || ($3=="cgroup" && $4 ~ /(^|,)name=systemd(,|$)/) {print $2}' /proc/self/mounts); do
  for c in "$h"/sapt-*; do
    [ -d "$c" ] || continue
    dead "$(pid_of "${c##*/}")" && find "$c" -depth -type d -exec rmdir {} \; 2>/dev/null
  done
done
exit 0
"#;

/// Cleans up netns, containers, swap and temp dirs of test processes that no longer exist.
pub fn cleanup_stale() {
    let root = harness_tmp_root();
    let out = run_bounded(
        Command::new("sh")
            .arg("-c")
            .arg(CLEANUP_SH)
            .arg("sh")
            .arg(&root),
        None,
        Duration::from_secs(60),
    );
    match out {
        Ok(o) if !o.stderr.is_empty() => eprintln!(
            "harness: cleanup_stale: {}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(_) => eprintln!("harness: cleanup_stale timed out"),
        _ => {}
    }
}

/// One per test process: if the process dies without running Drop (SIGKILL, nextest timeout,
/// Ctrl-C, abort), this cleans up within about a second, so no swap or container outlives it.
fn start_watchdog() {
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| spawn_watchdog("harness", CLEANUP_SH));
}

/// Run `cleanup_sh` (with the harness temp root as $1) once this test process is gone.
pub fn spawn_watchdog(tag: &str, cleanup_sh: &str) {
    let me = std::process::id();
    let script = format!("while [ -d /proc/{me} ]; do sleep 1; done\n{cleanup_sh}");
    let spawned = Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg("sh")
        .arg(harness_tmp_root())
        .stdin(Stdio::null())
        .stdout(Stdio::null()) // must not hold the test runner's capture pipes open
        .stderr(Stdio::null())
        .process_group(0)
        .spawn();
    if let Err(e) = spawned {
        eprintln!("{tag}: could not start cleanup watchdog: {e}");
    }
    // Not waited: it outlives us by design and is reaped by init.
}

/// An operator's ed25519 key pair in a temporary directory (removed on drop).
pub struct OperatorKey {
    _dir: TempDir,
    /// The private key file, for `ssh -i`.
    pub private: PathBuf,
    /// The public key line, for authorized_keys and the agent's config.
    pub public: String,
}

pub fn operator_key() -> OperatorKey {
    let dir = tempfile::tempdir().unwrap();
    let private = dir.path().join("op");
    let st = Command::new("ssh-keygen")
        .args([
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "operator@laptop",
            "-f",
        ])
        .arg(&private)
        .status()
        .unwrap();
    assert!(st.success(), "ssh-keygen");
    let public = fs::read_to_string(private.with_extension("pub"))
        .unwrap()
        .trim()
        .to_string();
    OperatorKey {
        _dir: dir,
        private,
        public,
    }
}

// ---------------------------------------------------------------------------------------------
// TestBox

/// Options for [`TestBox::boot_with`].
#[derive(Clone, Debug)]
pub struct BoxOptions {
    /// Host file bound read-only at /usr/local/bin/sapari-agent; None = [`agent_binary()`].
    pub agent: Option<PathBuf>,
    /// Default: $SAPARI_TEST_BOOT_TIMEOUT seconds or 60 s.
    pub boot_timeout: Duration,
    /// Default: $SAPARI_TEST_EXEC_TIMEOUT seconds or 120 s.
    pub exec_timeout: Duration,
    /// Appended to the systemd-nspawn command line (e.g. more --bind=).
    pub extra_nspawn_args: Vec<String>,
}

impl Default for BoxOptions {
    fn default() -> Self {
        BoxOptions {
            agent: None,
            boot_timeout: env_secs("SAPARI_TEST_BOOT_TIMEOUT", DEFAULT_BOOT_TIMEOUT),
            exec_timeout: env_secs("SAPARI_TEST_EXEC_TIMEOUT", DEFAULT_EXEC_TIMEOUT),
            extra_nspawn_args: Vec::new(),
        }
    }
}

/// A peer network namespace reachable from the box through the router namespace.
#[derive(Clone, Debug)]
pub struct Peer {
    pub netns: String,
    /// Peer address with prefix, e.g. "192.0.2.50/24".
    pub ip: String,
}

impl Peer {
    /// Runs `sh -c script` in the peer's network namespace. Only the network is namespaced: the
    /// command sees the host filesystem, so use it for clients (ssh, nc, curl), not for setup.
    pub fn exec(&self, script: &str) -> Output {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.netns, "sh", "-c", script]);
        run_bounded(&mut c, None, DEFAULT_EXEC_TIMEOUT).unwrap_or_else(|t| {
            panic!(
                "peer {} exec timed out after {:?}: {script}\n{}",
                self.netns,
                t.after,
                String::from_utf8_lossy(&t.stderr)
            )
        })
    }

    pub fn addr(&self) -> &str {
        self.ip.split('/').next().unwrap()
    }
}

pub struct TestBox {
    name: String,
    dir: Option<TempDir>,
    swap_dir: PathBuf,
    netns_made: bool,
    netns_id: String,
    nspawn: Option<Child>,
    pid: u32,
    extra_netns: Mutex<Vec<String>>,
    opts: BoxOptions,
}

impl TestBox {
    pub fn boot() -> TestBox {
        Self::boot_with(BoxOptions::default())
    }

    pub fn boot_with(opts: BoxOptions) -> TestBox {
        require_root();
        start_watchdog();
        cleanup_stale();
        let agent = opts.agent.clone().unwrap_or_else(agent_binary);
        let agent = fs::canonicalize(&agent)
            .unwrap_or_else(|e| panic!("agent binary {}: {e}", agent.display()));
        assert!(
            agent.is_file(),
            "agent binary {} is not a file",
            agent.display()
        );
        // ':' separates source and destination in nspawn's --bind
        assert!(
            !agent.to_string_lossy().contains(':'),
            "agent path {} must not contain ':'",
            agent.display()
        );
        let rootfs = rootfs();
        let t0 = Instant::now();

        let name = format!(
            "{NETNS_PREFIX}{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        // From here on, every early return is a panic that drops `b`, undoing what exists so far.
        let mut b = TestBox {
            name: name.clone(),
            dir: None,
            swap_dir: PathBuf::new(),
            netns_made: false,
            netns_id: String::new(),
            nspawn: None,
            pid: 0,
            extra_netns: Mutex::new(Vec::new()),
            opts,
        };

        let root = harness_tmp_root();
        assert!(
            root.is_absolute() && !root.to_string_lossy().contains(':'),
            "SAPARI_TEST_TMP must be absolute, without ':'"
        );
        fs::create_dir_all(&root).unwrap_or_else(|e| panic!("create {}: {e}", root.display()));
        let dir = tempfile::Builder::new()
            .prefix(&format!("{name}-"))
            .tempdir_in(&root)
            .unwrap_or_else(|e| panic!("tempdir in {}: {e}", root.display()));
        let d = dir.path().to_path_buf();
        b.dir = Some(dir);
        b.swap_dir = d.join("swap");
        fs::create_dir(&b.swap_dir).unwrap();
        let fst = fstype(&b.swap_dir);
        if fst != "ext4" && fst != "xfs" {
            panic!(
                "{} is on {fst:?}; swap files need ext4 or xfs. Point SAPARI_TEST_TMP at a directory on such a filesystem",
                b.swap_dir.display()
            );
        }

        // A netns or cgroup of this name can only be left over from a dead process whose pid we
        // now have.
        if Path::new("/run/netns").join(&name).exists() {
            let _ = Command::new("ip").args(["netns", "del", &name]).status();
        }
        for h in cgroup_hierarchies() {
            remove_cgroup_tree(&h.join(&name));
        }
        host(&["ip", "netns", "add", &name]);
        b.netns_made = true;
        host(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        b.netns_id = netns_id(&name).expect("netns vanished right after creation");
        let host_net = ns_link("self", "net").expect("read /proc/self/ns/net");
        assert_ne!(b.netns_id, host_net, "new netns has the host's identity?!");

        let netns_bind = d.join("netns");
        fs::write(&netns_bind, b"").unwrap();
        let log_path = d.join("nspawn.log");
        let log = fs::File::create(&log_path).unwrap();
        let mut nspawn_args: Vec<String> = vec![
            "systemd-nspawn".into(),
            format!("--directory={}", rootfs.display()),
            "--boot".into(),
            "--volatile=overlay".into(),
            "--register=no".into(),
            "--keep-unit".into(),
            "--link-journal=no".into(),
            "--console=passive".into(),
            format!("--machine={name}"),
            "--hostname=fresh-server".into(),
            format!("--network-namespace-path={}", netns_bind.display()),
            "--capability=CAP_NET_ADMIN".into(),
            // adjtimex/clock_adjtime: nspawn's filter blocks even the read-only call the agent uses
            // for clock-sync status (musl's adjtimex is clock_adjtime). Setting the clock still
            // needs CAP_SYS_TIME, which the container lacks (asserted below).
            "--system-call-filter=@swap adjtimex clock_adjtime".into(),
            format!("--bind-ro={}:{AGENT_PATH}", agent.display()),
            format!("--bind={}:{SWAP_MOUNT}", b.swap_dir.display()),
        ];
        nspawn_args.extend(b.opts.extra_nspawn_args.iter().cloned());
        let quoted: Vec<String> = nspawn_args.iter().map(|a| sh_quote(a)).collect();
        // /run must be a tmpfs for nspawn, and hiding the host's /run also hides /run/netns, so
        // the netns handle is bound to a file first. The private mount ns keeps both off the host.
        // nspawn itself also runs in the box netns: the sysfs it mounts for the container shows
        // the devices of the netns it was mounted from (with only --network-namespace-path the
        // container's /sys/class/net listed the host's interfaces).
        let nb = sh_quote(&netns_bind.to_string_lossy());
        let mut cg_moves = String::new();
        for h in cgroup_hierarchies() {
            let cg = sh_quote(&h.join(&name).to_string_lossy());
            cg_moves.push_str(&format!("mkdir {cg} && echo $$ > {cg}/cgroup.procs && "));
        }
        let script = format!(
            "{cg_moves}mount --bind {} {nb} && mount -t tmpfs -o mode=755 tmpfs /run && exec nsenter --net={nb} -- {}",
            sh_quote(&format!("/run/netns/{name}")),
            quoted.join(" ")
        );
        let child = Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn unshare/systemd-nspawn: {e}"));
        let nspawn_pid = child.id();
        b.nspawn = Some(child);

        // unshare, sh and nsenter all exec, so the child *is* systemd-nspawn; the container
        // init is its child.
        let deadline = Instant::now() + Duration::from_secs(15);
        while b.pid == 0 {
            b.check_nspawn_alive("while waiting for the container init");
            b.pid = all_pids()
                .into_iter()
                .find(|&p| {
                    proc_stat(p).is_some_and(|(pp, comm)| pp == nspawn_pid && comm == "systemd")
                })
                .unwrap_or(0);
            if b.pid == 0 {
                assert!(
                    Instant::now() < deadline,
                    "container init did not appear within 15 s\n{}",
                    b.nspawn_log()
                );
                thread::sleep(Duration::from_millis(20));
            }
        }
        // Safety: a wrong pid here would make every later nsenter act on the host.
        let pid_net = ns_link(&b.pid.to_string(), "net").unwrap_or_default();
        assert_eq!(
            pid_net, b.netns_id,
            "container pid {} is not in test netns {name}",
            b.pid
        );
        assert_ne!(
            pid_net, host_net,
            "container pid {} is in the host netns",
            b.pid
        );
        assert_ne!(
            ns_link(&b.pid.to_string(), "mnt"),
            ns_link("self", "mnt"),
            "container shares the host mount ns"
        );

        let deadline = Instant::now() + b.opts.boot_timeout;
        let mut state = String::new();
        loop {
            b.check_nspawn_alive("while booting");
            if let Ok(o) = b.nsenter_bounded(
                &["systemctl", "is-system-running"],
                None,
                Duration::from_secs(10),
            ) {
                state = String::from_utf8_lossy(&o.stdout).trim().to_string();
                if state == "running" || state == "degraded" {
                    break;
                }
            }
            if Instant::now() >= deadline {
                let jobs = b
                    .nsenter_bounded(
                        &["systemctl", "list-jobs", "--no-pager"],
                        None,
                        Duration::from_secs(10),
                    )
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default();
                panic!(
                    "container {name} not booted after {:?} (state {state:?})\njobs:\n{jobs}\nnspawn log:\n{}",
                    b.opts.boot_timeout,
                    b.nspawn_log()
                );
            }
            thread::sleep(Duration::from_millis(200));
        }
        // The clock is host-global: the syscall filter above is only safe without CAP_SYS_TIME.
        let status = fs::read_to_string(format!("/proc/{}/status", b.pid)).unwrap_or_default();
        let capbnd = status
            .lines()
            .find_map(|l| l.strip_prefix("CapBnd:"))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .expect("CapBnd of container init");
        assert_eq!(
            capbnd & (1 << 25),
            0,
            "container must not have CAP_SYS_TIME"
        );
        if state == "degraded" {
            let failed = b
                .nsenter_bounded(
                    &["systemctl", "--failed", "--no-legend", "--plain"],
                    None,
                    Duration::from_secs(10),
                )
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            eprintln!("harness: {name} booted degraded; failed units:\n{failed}");
        }
        eprintln!(
            "harness: {name} booted in {:.1?} (container pid {})",
            t0.elapsed(),
            b.pid
        );
        b
    }

    fn check_nspawn_alive(&mut self, when: &str) {
        if let Some(c) = self.nspawn.as_mut()
            && let Ok(Some(st)) = c.try_wait()
        {
            self.nspawn = None;
            panic!(
                "systemd-nspawn exited ({st}) {when}\nnspawn log:\n{}",
                self.nspawn_log()
            );
        }
    }

    pub fn nspawn_log(&self) -> String {
        self.dir
            .as_ref()
            .and_then(|d| fs::read(d.path().join("nspawn.log")).ok())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// True while the recorded pid still is our container (guards against pid reuse after a crash).
    fn container_alive(&self) -> bool {
        self.pid != 0
            && ns_link(&self.pid.to_string(), "net").as_deref() == Some(self.netns_id.as_str())
    }

    fn guard(&self) {
        assert!(
            self.container_alive(),
            "container {} (pid {}) is gone; refusing to nsenter\nnspawn log:\n{}",
            self.name,
            self.pid,
            self.nspawn_log()
        );
    }

    fn nsenter_cmd(&self, argv: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.env_clear()
            .env("PATH", CONTAINER_PATH)
            .env("LANG", "C.UTF-8");
        c.args(["-t", &self.pid.to_string(), "-a", "--"]).args(argv);
        c
    }

    fn nsenter_bounded(
        &self,
        argv: &[&str],
        stdin: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<Output, TimedOut> {
        self.guard();
        run_bounded(&mut self.nsenter_cmd(argv), stdin, timeout)
    }

    /// Command that runs `sh -c script` as a transient service of the container's systemd, so it has
    /// the container's capability bounding set and seccomp filter, like the agent under its timer.
    fn unit_cmd(&self, script: &str, env: &[(&str, &str)], unit: &str) -> Command {
        // systemd expands $VAR in ExecStart argv (not in -E values): $$ is a literal $.
        // The outer shell turns death-by-signal into 128+N; systemd-run alone would report
        // SIGTERM as success (0) and SIGKILL as 255.
        let wrapper = r#"/bin/sh -c "$$1"; exit $$?"#;
        let mut argv: Vec<String> = vec![
            "systemd-run".into(),
            "--wait".into(),
            "--pipe".into(),
            "--quiet".into(),
            "--collect".into(),
            "--service-type=exec".into(),
            format!("--unit={unit}"),
        ];
        for (k, v) in env {
            assert!(!k.is_empty() && !k.contains('='), "bad env var name {k:?}");
            argv.push(format!("--setenv={k}={v}"));
        }
        argv.extend([
            "--".into(),
            "/bin/sh".into(),
            "-c".into(),
            wrapper.into(),
            "sh".into(),
            script.replace('$', "$$"),
        ]);
        let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
        self.nsenter_cmd(&refs)
    }

    fn next_unit(&self) -> String {
        format!("sapt-exec-{}", COUNTER.fetch_add(1, Ordering::SeqCst))
    }

    /// `sh -c script` inside the container as a transient service; exit status is the script's
    /// (128+N if it died of signal N). Panics after the exec timeout.
    pub fn exec(&self, script: &str) -> Output {
        self.exec_with(script, &[], self.opts.exec_timeout)
    }

    pub fn exec_env(&self, script: &str, env: &[(&str, &str)]) -> Output {
        self.exec_with(script, env, self.opts.exec_timeout)
    }

    pub fn exec_with(&self, script: &str, env: &[(&str, &str)], timeout: Duration) -> Output {
        self.guard();
        let unit = self.next_unit();
        // Killing systemd-run does not stop the unit, and the unit holds our pipes.
        let stop_unit = || {
            let svc = format!("{unit}.service");
            let _ = self.nsenter_bounded(
                &["systemctl", "kill", "--signal=KILL", &svc],
                None,
                Duration::from_secs(10),
            );
            let _ =
                self.nsenter_bounded(&["systemctl", "stop", &svc], None, Duration::from_secs(10));
        };
        match run_bounded_then(
            &mut self.unit_cmd(script, env, &unit),
            None,
            timeout,
            &stop_unit,
        ) {
            Ok(o) => o,
            Err(t) => {
                panic!(
                    "exec in {} timed out after {:?}\n--- script ---\n{script}\n--- stdout so far ---\n{}\n--- stderr so far ---\n{}",
                    self.name,
                    t.after,
                    String::from_utf8_lossy(&t.stdout),
                    String::from_utf8_lossy(&t.stderr)
                )
            }
        }
    }

    /// Like [`exec`](Self::exec) but not waited for; stdout/stderr are piped, stdin is null.
    pub fn spawn(&self, script: &str) -> Child {
        self.spawn_env(script, &[])
    }

    pub fn spawn_env(&self, script: &str, env: &[(&str, &str)]) -> Child {
        self.guard();
        self.unit_cmd(script, env, &self.next_unit())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn nsenter: {e}"))
    }

    /// Privileged `sh -c script` via nsenter -a (host capabilities, no seccomp): setup/inspection only.
    pub fn nsenter(&self, script: &str) -> Output {
        self.nsenter_bounded(&["/bin/sh", "-c", script], None, self.opts.exec_timeout)
            .unwrap_or_else(|t| {
                panic!(
                    "nsenter in {} timed out after {:?}: {script}\n{}",
                    self.name,
                    t.after,
                    String::from_utf8_lossy(&t.stderr)
                )
            })
    }

    /// [`nsenter`](Self::nsenter) that panics unless the script succeeds; returns stdout.
    pub fn nsenter_ok(&self, script: &str) -> String {
        let o = self.nsenter(script);
        assert!(
            o.status.success(),
            "nsenter script failed: {script}\n{}",
            describe(&o)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// [`exec`](Self::exec) that panics unless the script succeeds; returns stdout.
    pub fn exec_ok(&self, script: &str) -> String {
        let o = self.exec(script);
        assert!(
            o.status.success(),
            "exec script failed: {script}\n{}",
            describe(&o)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Runs the agent inside the container (as [`exec`](Self::exec)) with shell-quoted args.
    pub fn agent(&self, args: &[&str]) -> Output {
        self.agent_env(args, &[])
    }

    pub fn agent_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut s = String::from(AGENT_PATH);
        for a in args {
            s.push(' ');
            s.push_str(&sh_quote(a));
        }
        self.exec_env(&s, env)
    }

    /// Host path that reaches `path` inside the container, with symlinks resolved inside it.
    pub fn host_path(&self, path: &str) -> PathBuf {
        self.guard();
        resolve_in_root(
            &PathBuf::from(format!("/proc/{}/root", self.pid)),
            path,
            true,
        )
    }

    /// Contents of a file inside the container; None if it does not exist.
    pub fn read(&self, path: &str) -> Option<Vec<u8>> {
        let p = self.host_path(path);
        match fs::read(&p) {
            Ok(b) => Some(b),
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    || e.raw_os_error() == Some(20 /* ENOTDIR */) =>
            {
                None
            }
            Err(e) => panic!("read {path} in {}: {e}", self.name),
        }
    }

    pub fn read_string(&self, path: &str) -> Option<String> {
        self.read(path)
            .map(|b| String::from_utf8(b).unwrap_or_else(|e| panic!("{path} is not UTF-8: {e}")))
    }

    /// Writes a file inside the container (parents created), owned root:root, replaced atomically.
    pub fn write(&self, path: &str, content: &[u8], mode: u32) {
        assert!(
            path.starts_with('/'),
            "write needs an absolute path, got {path:?}"
        );
        let script = r#"set -e; d=$(dirname -- "$1"); mkdir -p -- "$d"; t=$(mktemp "$d/.sapt-write.XXXXXX"); trap 'rm -f -- "$t"' EXIT
cat > "$t"; chown root:root -- "$t"; chmod "$2" -- "$t"; mv -f -- "$t" "$1"; trap - EXIT"#;
        let mode = format!("{:o}", mode);
        let o = self
            .nsenter_bounded(
                &["/bin/sh", "-c", script, "sh", path, &mode],
                Some(content),
                self.opts.exec_timeout,
            )
            .unwrap_or_else(|_| panic!("write {path} timed out"));
        assert!(
            o.status.success(),
            "write {path} in {} failed\n{}",
            self.name,
            describe(&o)
        );
    }

    /// For each path (file or directory, recursively; symlinks recorded, never followed; other
    /// mounts below a directory not descended): container path -> "MODE UID GID CONTENT", MODE the
    /// full st_mode in octal, CONTENT the sha256 of a file, "-> target" of a symlink, "-" otherwise.
    /// A missing path maps to "absent".
    pub fn snapshot(&self, paths: &[&str]) -> BTreeMap<String, String> {
        self.guard();
        let root = PathBuf::from(format!("/proc/{}/root", self.pid));
        let mut map = BTreeMap::new();
        let mut files: Vec<(String, PathBuf)> = Vec::new();
        for p in paths {
            assert!(
                p.starts_with('/'),
                "snapshot needs absolute paths, got {p:?}"
            );
            let key = p.trim_end_matches('/');
            let key = if key.is_empty() { "/" } else { key };
            let hp = resolve_in_root(&root, key, false);
            match fs::symlink_metadata(&hp) {
                Ok(m) => walk(&hp, key, &m, None, &mut map, &mut files),
                Err(_) => {
                    map.insert(key.to_string(), "absent".to_string());
                }
            }
        }
        for (key, hash) in sha256_many(&files) {
            if let Some(v) = map.get_mut(&key) {
                v.push_str(&hash);
            }
        }
        map
    }

    /// nspawn mounts /proc/sys read-only, so a dockerd inside the box cannot switch IPv4
    /// forwarding on and dies ("Enabling IP forwarding failed"); on a real server it can. The
    /// setting is per network namespace: this writes the box's, never the host's.
    pub fn enable_ipv4_forwarding(&self) {
        assert!(self.netns().starts_with(NETNS_PREFIX));
        let o = Command::new("ip")
            .args(["netns", "exec", self.netns(), "sysctl", "-qw"])
            .arg("net.ipv4.ip_forward=1")
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "sysctl in the box netns: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    pub fn swap_host_dir(&self) -> &Path {
        &self.swap_dir
    }

    pub fn netns(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Connects a peer netns to the box through a router netns (created on first use). The box
    /// gets `wan0` with `server_ip` (e.g. "203.0.113.10/24") and a default route via the router;
    /// the peer gets `eth0` with `peer_ip` (e.g. "192.0.2.50/24"). Each peer needs its own subnet.
    pub fn add_peer(&self, name: &str, server_ip: &str, peer_ip: &str) -> Peer {
        assert!(
            !name.is_empty()
                && name.len() <= 12
                && name
                    .bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()),
            "peer name must be 1-12 chars [a-z0-9], got {name:?}"
        );
        let rt = format!("{}-rt", self.name);
        let pn = format!("{}-{name}", self.name);
        assert!(name != "rt", "peer name 'rt' is reserved for the router");
        let mut made = self.extra_netns.lock().unwrap();
        if !made.contains(&rt) {
            host(&["ip", "netns", "add", &rt]);
            made.push(rt.clone());
            host(&["ip", "-n", &rt, "link", "set", "lo", "up"]);
            // per-netns sysctl: only the router namespace forwards
            host(&[
                "ip",
                "netns",
                "exec",
                &rt,
                "sh",
                "-c",
                "echo 1 > /proc/sys/net/ipv4/ip_forward",
            ]);
        }
        let (sgw, slen) = gateway(server_ip);
        let has_wan = host_quiet(&["ip", "-n", &self.name, "link", "show", "wan0"]);
        if !has_wan {
            host(&[
                "ip", "-n", &rt, "link", "add", "srv", "type", "veth", "peer", "name", "wan0",
                "netns", &self.name,
            ]);
            host(&[
                "ip",
                "-n",
                &rt,
                "addr",
                "add",
                &format!("{sgw}/{slen}"),
                "dev",
                "srv",
            ]);
            host(&["ip", "-n", &rt, "link", "set", "srv", "up"]);
            host(&[
                "ip", "-n", &self.name, "addr", "add", server_ip, "dev", "wan0",
            ]);
            host(&["ip", "-n", &self.name, "link", "set", "wan0", "up"]);
            host(&[
                "ip",
                "-n",
                &self.name,
                "route",
                "replace",
                "default",
                "via",
                &sgw.to_string(),
            ]);
        }
        let (pgw, plen) = gateway(peer_ip);
        host(&["ip", "netns", "add", &pn]);
        made.push(pn.clone());
        host(&["ip", "-n", &pn, "link", "set", "lo", "up"]);
        let rdev = format!("p-{name}");
        host(&[
            "ip", "-n", &rt, "link", "add", &rdev, "type", "veth", "peer", "name", "eth0", "netns",
            &pn,
        ]);
        host(&[
            "ip",
            "-n",
            &rt,
            "addr",
            "add",
            &format!("{pgw}/{plen}"),
            "dev",
            &rdev,
        ]);
        host(&["ip", "-n", &rt, "link", "set", &rdev, "up"]);
        host(&["ip", "-n", &pn, "addr", "add", peer_ip, "dev", "eth0"]);
        host(&["ip", "-n", &pn, "link", "set", "eth0", "up"]);
        host(&[
            "ip",
            "-n",
            &pn,
            "route",
            "add",
            "default",
            "via",
            &pgw.to_string(),
        ]);
        Peer {
            netns: pn,
            ip: peer_ip.to_string(),
        }
    }

    /// swapoff (via host paths, which the kernel matches by file, not by name) of every swap file
    /// under our host directory. Returns the files that are still active afterwards.
    fn swapoff_all(&self) -> Vec<PathBuf> {
        if self.swap_dir.as_os_str().is_empty() {
            return Vec::new();
        }
        let mut candidates = Vec::new();
        collect_files(&self.swap_dir, &mut candidates);
        // /proc/swaps shows the container-side path; map it back in case the walk missed a file.
        if let Ok(swaps) = fs::read_to_string("/proc/swaps") {
            for line in swaps.lines().skip(1) {
                let Some(p) = line.split_whitespace().next() else {
                    continue;
                };
                let p = p.replace("\\040", " ");
                if let Some(rest) = p.strip_prefix(&format!("{SWAP_MOUNT}/")) {
                    let hp = self.swap_dir.join(rest);
                    if hp.exists() && !candidates.contains(&hp) {
                        candidates.push(hp);
                    }
                }
            }
        }
        let mut still = Vec::new();
        for f in candidates {
            let ok = Command::new("swapoff")
                .arg(&f)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                eprintln!("harness: swapoff {}", f.display());
            }
            if is_active_swap(&f) {
                still.push(f);
            }
        }
        still
    }

    fn teardown(&mut self) {
        let mut problems: Vec<String> = Vec::new();
        self.swapoff_all();
        if let Some(mut child) = self.nspawn.take() {
            let alive = |c: &mut Child| matches!(c.try_wait(), Ok(None));
            if self.container_alive() && alive(&mut child) {
                let asked = run_bounded(
                    &mut self.nsenter_cmd(&["systemctl", "poweroff", "--no-block"]),
                    None,
                    Duration::from_secs(10),
                )
                .is_ok_and(|o| o.status.success());
                // A container that never finished booting cannot take the request: kill it now.
                let wait = if asked {
                    Duration::from_secs(20)
                } else {
                    Duration::ZERO
                };
                let t0 = Instant::now();
                while alive(&mut child) && t0.elapsed() < wait {
                    thread::sleep(Duration::from_millis(50));
                }
                if asked && alive(&mut child) {
                    problems.push("container did not power off within 20 s; killed".into());
                }
            }
            if alive(&mut child) {
                // Killing the pid-namespace init takes every container process with it. Match by
                // netns rather than self.pid: boot may have failed before the pid was known.
                kill_netns_inits(&self.netns_id);
                let t0 = Instant::now();
                while alive(&mut child) && t0.elapsed() < Duration::from_secs(5) {
                    thread::sleep(Duration::from_millis(50));
                }
                kill_group(child.id());
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        if !self.netns_id.is_empty() {
            let t0 = Instant::now();
            while kill_netns_inits(&self.netns_id) && t0.elapsed() < Duration::from_secs(10) {
                thread::sleep(Duration::from_millis(100));
            }
        }
        {
            for h in cgroup_hierarchies() {
                let cg = h.join(&self.name);
                let t0 = Instant::now();
                while cg.exists()
                    && !remove_cgroup_tree(&cg)
                    && t0.elapsed() < Duration::from_secs(5)
                {
                    thread::sleep(Duration::from_millis(100));
                }
                if cg.exists() {
                    problems.push(format!("cgroup {} not removed", cg.display()));
                }
            }
        }
        let still = self.swapoff_all();
        if !still.is_empty() {
            problems.push(format!("swap still active: {still:?}"));
        }
        let extra: Vec<String> =
            std::mem::take(&mut *self.extra_netns.lock().unwrap_or_else(|e| e.into_inner()));
        for n in extra.iter().rev() {
            if !host_quiet(&["ip", "netns", "del", n]) {
                problems.push(format!("ip netns del {n} failed"));
            }
        }
        if self.netns_made {
            self.netns_made = false;
            if !host_quiet(&["ip", "netns", "del", &self.name]) {
                problems.push(format!("ip netns del {} failed", self.name));
            }
        }
        if let Some(d) = self.dir.take() {
            let p = d.path().to_path_buf();
            if still.is_empty() {
                if let Err(e) = d.close() {
                    problems.push(format!("remove {}: {e}", p.display()));
                }
            } else {
                // Deleting an active swap file would leave kernel swap we can no longer name.
                let _ = d.keep();
                problems.push(format!(
                    "kept {} because swap in it is still active",
                    p.display()
                ));
            }
        }
        if !problems.is_empty() {
            eprintln!(
                "harness: WARNING teardown of {}: {}",
                self.name,
                problems.join("; ")
            );
        }
    }
}

impl Drop for TestBox {
    fn drop(&mut self) {
        // Never panic here: during unwinding that would abort and skip the rest of the cleanup.
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.teardown()));
        if r.is_err() {
            eprintln!(
                "harness: WARNING teardown of {} panicked; the watchdog/cleanup_stale will retry",
                self.name
            );
        }
    }
}

/// The kernel refuses to resize an active swap file (ETXTBSY); a same-size ftruncate is a harmless probe.
fn is_active_swap(f: &Path) -> bool {
    let Ok(file) = fs::OpenOptions::new().write(true).open(f) else {
        return false;
    };
    let Ok(len) = file.metadata().map(|m| m.len()) else {
        return false;
    };
    matches!(file.set_len(len), Err(e) if e.raw_os_error() == Some(26 /* ETXTBSY */))
}

/// SIGKILL every pid-namespace init (NSpid ends in 1 and is nested) whose netns is `netns_id`.
/// Returns whether any process at all is still in that netns.
fn kill_netns_inits(netns_id: &str) -> bool {
    let mut any = false;
    for p in all_pids() {
        if ns_link(&p.to_string(), "net").as_deref() != Some(netns_id) {
            continue;
        }
        any = true;
        let nspid = fs::read_to_string(format!("/proc/{p}/status"))
            .ok()
            .and_then(|s| {
                s.lines().find(|l| l.starts_with("NSpid:")).map(|l| {
                    l.split_whitespace()
                        .skip(1)
                        .map(String::from)
                        .collect::<Vec<_>>()
                })
            })
            .unwrap_or_default();
        if nspid.len() >= 2 && nspid.last().map(String::as_str) == Some("1") {
            kill_pid(p);
        }
    }
    any
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            collect_files(&e.path(), out);
        } else if ft.is_file() {
            out.push(e.path());
        }
    }
}

fn walk(
    hp: &Path,
    key: &str,
    m: &fs::Metadata,
    parent_dev: Option<u64>,
    map: &mut BTreeMap<String, String>,
    files: &mut Vec<(String, PathBuf)>,
) {
    let ft = m.file_type();
    let head = format!("{:o} {} {} ", m.mode(), m.uid(), m.gid());
    if ft.is_symlink() {
        let t = fs::read_link(hp)
            .map(|t| t.to_string_lossy().into_owned())
            .unwrap_or_default();
        map.insert(key.to_string(), format!("{head}-> {t}"));
    } else if ft.is_file() {
        map.insert(key.to_string(), head);
        files.push((key.to_string(), hp.to_path_buf()));
    } else if ft.is_dir() {
        map.insert(key.to_string(), format!("{head}-"));
        if parent_dev.is_some_and(|d| d != m.dev()) {
            return; // another mount (e.g. /proc below /): out of scope
        }
        let Ok(rd) = fs::read_dir(hp) else { return };
        let mut names: Vec<OsString> = rd.flatten().map(|e| e.file_name()).collect();
        names.sort();
        for n in names {
            let child = hp.join(&n);
            let ckey = if key == "/" {
                format!("/{}", n.to_string_lossy())
            } else {
                format!("{key}/{}", n.to_string_lossy())
            };
            if let Ok(cm) = fs::symlink_metadata(&child) {
                walk(&child, &ckey, &cm, Some(m.dev()), map, files);
            }
        }
    } else {
        map.insert(key.to_string(), format!("{head}rdev={:x}", m.rdev()));
    }
}

/// sha256 of many files with one `sha256sum -z` per batch (-z also disables name escaping).
fn sha256_many(files: &[(String, PathBuf)]) -> Vec<(String, String)> {
    let mut res = Vec::new();
    for chunk in files.chunks(500) {
        let mut c = Command::new("sha256sum");
        c.arg("-z").arg("--");
        for (_, p) in chunk {
            c.arg(p);
        }
        let out = run_bounded(&mut c, None, Duration::from_secs(120))
            .unwrap_or_else(|_| panic!("sha256sum timed out"));
        let mut by_path: BTreeMap<Vec<u8>, String> = BTreeMap::new();
        for rec in out.stdout.split(|&b| b == 0) {
            if rec.len() > 66 {
                by_path.insert(
                    rec[66..].to_vec(),
                    String::from_utf8_lossy(&rec[..64]).into_owned(),
                );
            }
        }
        for (k, p) in chunk {
            let h = by_path
                .get(p.as_os_str().as_bytes())
                .cloned()
                .unwrap_or_else(|| "unreadable".into());
            res.push((k.clone(), h));
        }
    }
    res
}

/// Human-readable difference of two snapshots, empty if equal.
pub fn snapshot_diff(
    before: &BTreeMap<String, String>,
    after: &BTreeMap<String, String>,
) -> String {
    let mut s = String::new();
    for (k, v) in before {
        match after.get(k) {
            None => s.push_str(&format!("- {k}: {v}\n")),
            Some(w) if w != v => s.push_str(&format!("~ {k}: {v} => {w}\n")),
            _ => {}
        }
    }
    for (k, w) in after {
        if !before.contains_key(k) {
            s.push_str(&format!("+ {k}: {w}\n"));
        }
    }
    s
}

/// First usable address of the subnet of `cidr` ("a.b.c.d/len"), avoiding the host's own address.
fn gateway(cidr: &str) -> (Ipv4Addr, u8) {
    let (ip, len) = cidr
        .split_once('/')
        .unwrap_or_else(|| panic!("expected a.b.c.d/len, got {cidr:?}"));
    let ip: Ipv4Addr = ip.parse().unwrap_or_else(|e| panic!("{cidr}: {e}"));
    let len: u8 = len.parse().unwrap_or_else(|e| panic!("{cidr}: {e}"));
    assert!(
        (1..=30).contains(&len),
        "{cidr}: prefix length must be 1..=30"
    );
    let mask = u32::MAX << (32 - len);
    let net = u32::from(ip) & mask;
    let mut gw = net + 1;
    if gw == u32::from(ip) {
        gw = (net | !mask) - 1;
    }
    (Ipv4Addr::from(gw), len)
}

/// Exit code of an Output, treating death-by-signal as 128+N like a shell.
pub fn code(o: &Output) -> i32 {
    status_code(&o.status)
}

pub fn status_code(s: &ExitStatus) -> i32 {
    s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0))
}

pub fn stdout_str(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr_str(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
