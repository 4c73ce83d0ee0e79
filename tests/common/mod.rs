//! System-test harness: boots a throwaway Debian container (systemd-nspawn --boot, volatile overlay
//! root) inside its own network namespace and runs commands in it the way the agent would run.
//!
//! Everything system-level happens inside namespaces this module creates; the host is only touched
//! through swapoff of swap files that the container put on the (host-side) ext4 directory we bind in,
//! because swap is kernel-global. See tests/harness/README.md.
#![allow(dead_code)] // each integration-test crate uses a different subset

pub mod apt_repo;
pub mod cleanup;
pub mod config;
pub mod files;
pub mod netfw;
pub mod netns;
pub mod nspawn;
pub mod peer;
pub mod process;
pub mod report;
pub mod ssh;

// Each integration-test crate uses a different subset of these.
#[allow(unused_imports)]
pub use cleanup::{cleanup_stale, spawn_watchdog};
#[allow(unused_imports)]
pub use files::snapshot_diff;
#[allow(unused_imports)]
pub use nspawn::{BoxOptions, SshActivation, Suite, TestBox};
#[allow(unused_imports)]
pub use peer::Peer;
#[allow(unused_imports)]
pub use process::{TimedOut, code, describe, run_bounded, status_code, stderr_str, stdout_str};
#[allow(unused_imports)]
pub use ssh::{OperatorKey, operator_key};

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::AtomicU32;
use std::time::{Duration, Instant};

/// Container-side path of the agent binary.
pub const AGENT_PATH: &str = "/usr/local/bin/sapari-agent";
/// The agent's config file inside a box.
pub const CONFIG_PATH: &str = "/etc/sapari-agent/agent.toml";
/// The server's WAN address in every test network (box peers and the netfw edge alike).
pub const SERVER: &str = "203.0.113.10";
/// PATH for commands run in boxes and namespaces.
pub const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Container-side mount point of the host ext4 directory (overlay roots cannot hold swap).
pub const SWAP_MOUNT: &str = "/mnt/swap";
pub const NETNS_PREFIX: &str = "sapt-";
pub const DEFAULT_EXEC_TIMEOUT: Duration = Duration::from_secs(120);
pub const DEFAULT_BOOT_TIMEOUT: Duration = Duration::from_secs(60);

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

/// Shell for a test's setup that changed sshd's files: a reload, or under socket activation
/// (where a SIGHUP makes sshd exit) a restart of ssh.service if it runs.
pub const SSHD_TAKE_CONFIG: &str = "if systemctl -q is-active ssh.socket; then systemctl try-restart ssh.service; else systemctl reload ssh.service; fi";

/// Path of the cached Debian rootfs of `suite`, built by tests/harness/build-rootfs.sh on first use.
pub fn rootfs(suite: Suite) -> PathBuf {
    static ROOTFS: Mutex<BTreeMap<Suite, PathBuf>> = Mutex::new(BTreeMap::new());
    let mut cache = ROOTFS.lock().unwrap_or_else(|e| e.into_inner());
    cache
        .entry(suite)
        .or_insert_with(|| {
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
                .arg(suite.codename())
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
