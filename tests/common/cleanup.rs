//! Cleanup of what a test process left behind: cgroups, container inits, swap, netns, temp dirs.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use super::process::*;
use super::*;

/// Mount points of the cgroup hierarchies in /proc/self/mounts whose (type, options) `keep` accepts.
fn cgroup_mounts(keep: impl Fn(&str, &str) -> bool) -> Vec<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (mp, ty, opts) = (f.get(1)?, f.get(2)?, f.get(3)?);
            keep(ty, opts).then(|| PathBuf::from(mp.replace("\\040", " ")))
        })
        .collect()
}

/// Mount points of the cgroup hierarchies a container's systemd writes to: cgroup2 and the v1
/// name=systemd one. With --keep-unit nspawn puts the container below the *caller's* cgroup, so
/// every box needs its own there; otherwise all boxes share /payload and their systemds manage
/// (and stop, and kill) each other's system.slice units. Seen as EXIT_CGROUP (219) under load.
pub fn cgroup_hierarchies() -> Vec<PathBuf> {
    cgroup_mounts(|ty, opts| {
        ty == "cgroup2" || (ty == "cgroup" && opts.split(',').any(|o| o == "name=systemd"))
    })
}

/// Every cgroup hierarchy, v2 and all v1 controllers: where dockerd puts its containers.
pub fn cgroup_roots() -> Vec<PathBuf> {
    cgroup_mounts(|ty, _| ty == "cgroup2" || ty == "cgroup")
}

/// The pids in a cgroup and all cgroups below it.
pub fn cgroup_pids(dir: &Path, out: &mut Vec<u32>) {
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

/// rmdir a cgroup tree bottom-up (cgroupfs dirs only go away empty, control files and all).
pub fn remove_cgroup_tree(p: &Path) -> bool {
    if let Ok(rd) = fs::read_dir(p) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    fs::remove_dir(p).is_ok() || !p.exists()
}

/// Removes what a dead test process left behind, for boxes (sapt-<pid>-<n>) and netfw edges
/// (sfw-<pid>-<n>) alike: container inits inside its netns (killing the pid
/// namespace init ends the whole container), swap files under its temp dirs, its netns, its dirs.
/// Only names carrying a dead pid are touched, so parallel test processes are safe.
/// Shared by cleanup_stale() and the per-process watchdog, hence shell.
pub(crate) const CLEANUP_SH: &str = r#"
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
# The netfw edges (sfw-<pid>-<n>-): 1. processes inside a dead owner's namespaces (dockerd,
# containerd, shims, list server, socat)
for f in /run/netns/sfw-*; do
  [ -e "$f" ] || continue
  n=${f##*/}; dead "$(pid_of "$n")" || continue
  id="net:[$(stat -L -c %i "$f")]"
  for p in /proc/[0-9]*; do
    [ "$(readlink "$p/ns/net" 2>/dev/null)" = "$id" ] && kill -KILL "${p#/proc/}" 2>/dev/null
  done
done
# 2. container processes, found through the cgroup parent dockerd was given
killed=
for h in $(awk '$3=="cgroup2" || $3=="cgroup" {print $2}' /proc/self/mounts); do
  for c in "$h"/sfw-*; do
    [ -d "$c" ] || continue
    dead "$(pid_of "${c##*/}")" || continue
    killed=1
    find "$c" -name cgroup.procs -exec cat {} + 2>/dev/null | xargs -r kill -KILL 2>/dev/null
  done
done
[ -n "$killed" ] && sleep 0.5
for h in $(awk '$3=="cgroup2" || $3=="cgroup" {print $2}' /proc/self/mounts); do
  for c in "$h"/sfw-*; do
    [ -d "$c" ] || continue
    dead "$(pid_of "${c##*/}")" && find "$c" -depth -type d -exec rmdir {} \; 2>/dev/null
  done
done
for f in /run/netns/sfw-*; do
  [ -e "$f" ] || continue
  n=${f##*/}; dead "$(pid_of "$n")" && ip netns del "$n" 2>/dev/null
done
for d in "$root"/sfw-* /dev/shm/sfw-*; do
  [ -d "$d" ] || continue
  dead "$(pid_of "${d##*/}")" && rm -rf --one-file-system "$d"
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
pub(crate) fn start_watchdog() {
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

/// The kernel refuses to resize an active swap file (ETXTBSY); a same-size ftruncate is a harmless probe.
pub(crate) fn is_active_swap(f: &Path) -> bool {
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
pub(crate) fn kill_netns_inits(netns_id: &str) -> bool {
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
            signal(p, "KILL");
        }
    }
    any
}
