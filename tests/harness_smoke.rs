// Tests drive the machine from outside the agent: clippy.toml's boundary is the agent's.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]
//! Proves the system-test harness itself (tests/common). Independent of the agent's features: the
//! container gets a placeholder "agent" that only echoes its arguments.

mod common;

use common::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// Placeholder agent: prints each argument in brackets, so shell quoting of `agent()` is visible.
fn placeholder_agent() -> (tempfile::TempDir, BoxOptions) {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("fake-agent");
    fs::write(
        &p,
        "#!/bin/sh\nfor a in \"$@\"; do printf '[%s]\\n' \"$a\"; done\n",
    )
    .unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
    let opts = BoxOptions {
        agent: Some(p),
        ..BoxOptions::default()
    };
    (dir, opts)
}

fn cap_mask(status: &str, field: &str) -> u64 {
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("no {field} in:\n{status}"));
    u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
}

const CAP_NET_ADMIN: u64 = 1 << 12;
const CAP_SYS_MODULE: u64 = 1 << 16;
const CAP_SYS_TIME: u64 = 1 << 25;

#[test]
#[ignore = "system test: needs root; run scripts/test.sh"]
fn exec_runs_inside_container_with_exit_codes_and_separate_streams() {
    let (_agent_dir, opts) = placeholder_agent();
    let b = TestBox::boot_with(opts);

    let host_name = fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string();
    let o = b.exec("hostname");
    assert!(o.status.success(), "{o:?}");
    assert_eq!(stdout_str(&o).trim(), "fresh-server");
    assert_ne!(stdout_str(&o).trim(), host_name, "exec ran on the host?");

    assert_eq!(code(&b.exec("exit 3")), 3);
    assert_eq!(code(&b.exec("exit 0")), 0);
    assert_eq!(code(&b.exec("exit 200")), 200);
    // systemd alone reports SIGTERM as success; the harness must not.
    assert_eq!(code(&b.exec("kill -TERM $$")), 143);

    let o = b.exec("echo to-out; echo to-err >&2; exit 5");
    assert_eq!(code(&o), 5);
    assert_eq!(stdout_str(&o), "to-out\n");
    assert_eq!(stderr_str(&o), "to-err\n");

    // systemd expands $VAR and $$ in ExecStart; scripts must reach sh verbatim.
    let o = b.exec(r#"x=5; printf '%s|' "$x" '$x' "${x}" '100%' "a\b" 'q"q' "it's"; echo"#);
    assert_eq!(stdout_str(&o), "5|$x|5|100%|a\\b|q\"q|it's|\n", "{o:?}");
    let o = b.exec("echo line1\necho line2");
    assert_eq!(stdout_str(&o), "line1\nline2\n");

    let o = b.exec_env(
        r#"printf '%s' "$SAPT_A/$SAPT_B""#,
        &[("SAPT_A", "x y $z %n"), ("SAPT_B", "2")],
    );
    assert_eq!(stdout_str(&o), "x y $z %n/2", "{o:?}");

    let o = b.agent(&["plan", "a b", "it's", "$HOME", ""]);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(stdout_str(&o), "[plan]\n[a b]\n[it's]\n[$HOME]\n[]\n");

    // The box netns is isolated: only lo.
    let links = b.exec_ok("ls /sys/class/net");
    assert_eq!(
        links.split_whitespace().collect::<Vec<_>>(),
        ["lo"],
        "unexpected links: {links}"
    );
}

#[test]
#[ignore = "system test: needs root; run scripts/test.sh"]
fn exec_has_the_containers_reduced_privileges_nsenter_does_not() {
    let (_agent_dir, opts) = placeholder_agent();
    let b = TestBox::boot_with(opts);
    let unit = b.exec_ok("cat /proc/self/status");
    let priv_ = b.nsenter_ok("cat /proc/self/status");
    let (u, p) = (cap_mask(&unit, "CapEff:"), cap_mask(&priv_, "CapEff:"));
    // a strict subset: nspawn drops some of whatever the runner has
    assert_eq!(
        u & !p,
        0,
        "exec has capabilities nsenter lacks: {u:x} vs {p:x}"
    );
    assert_ne!(u, p, "exec has the same capabilities as nsenter");
    assert_eq!(
        u & CAP_SYS_MODULE,
        0,
        "exec must not have CAP_SYS_MODULE: {u:x}"
    );
    assert_ne!(
        u & CAP_NET_ADMIN,
        0,
        "--capability=CAP_NET_ADMIN not granted: {u:x}"
    );
    // adjtimex is let through the seccomp filter for reading clock status; only safe without this.
    assert_eq!(
        u & CAP_SYS_TIME,
        0,
        "exec must not be able to set the clock: {u:x}"
    );
    let o = b.exec(
        "python3 -c 'import ctypes; t = ctypes.create_string_buffer(512); \
         r = ctypes.CDLL(None, use_errno=True).adjtimex(t); print(r, ctypes.get_errno())'",
    );
    let r: Vec<i64> = stdout_str(&o)
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    assert!(
        r.len() == 2 && r[0] >= 0,
        "read-only adjtimex refused: {o:?}"
    );
    // nspawn's seccomp filter applies to units (mode 2), not to nsenter (mode 0).
    let seccomp = |s: &str| {
        s.lines()
            .find(|l| l.starts_with("Seccomp:"))
            .map(|l| l.split_whitespace().nth(1).unwrap().to_string())
    };
    assert_eq!(seccomp(&unit).as_deref(), Some("2"));
    assert_eq!(seccomp(&priv_).as_deref(), Some("0"));
    // CAP_NET_ADMIN really works for a unit (rtnetlink set needs it).
    let o = b.exec("ip link set lo up && echo ok");
    assert_eq!(stdout_str(&o), "ok\n", "{o:?}");
    // Unit runs are under the container's systemd, in their own transient service.
    let cg = b.exec_ok("cat /proc/self/cgroup");
    assert!(cg.contains("sapt-exec-"), "not in a transient unit: {cg}");
    // Each box has its own cgroup subtree on the host; shared ones let boxes stop each other's units.
    let host_view = fs::read_to_string(format!("/proc/{}/cgroup", b.pid())).unwrap();
    let own = format!("/{}/payload", b.netns());
    assert!(
        host_view
            .lines()
            .filter(|l| l.contains("name=systemd") || l.starts_with("0::"))
            .all(|l| l.contains(&own)),
        "{host_view}"
    );
}

#[test]
#[ignore = "system test: needs root; run scripts/test.sh"]
// One box: each snapshot is compared with the one taken before it.
fn write_read_and_snapshot() {
    let (_agent_dir, opts) = placeholder_agent();
    let b = TestBox::boot_with(opts);

    b.write("/etc/sapt-test/a.conf", b"hello\n", 0o640);
    assert_eq!(
        b.read("/etc/sapt-test/a.conf").as_deref(),
        Some(&b"hello\n"[..])
    );
    assert_eq!(
        b.exec_ok("stat -c '%a %U %G' /etc/sapt-test/a.conf"),
        "640 root root\n"
    );
    assert_eq!(b.read("/etc/sapt-test/missing"), None);
    assert_eq!(b.read("/no/such/dir/file"), None);
    assert_eq!(
        b.read_string("/etc/hostname").unwrap().trim(),
        "fresh-server"
    );

    // Absolute symlinks resolve inside the container, never on the host.
    let host_only = b.swap_host_dir().join("host-only");
    fs::write(&host_only, b"HOST").unwrap();
    b.exec_ok(&format!(
        "ln -s {} /etc/sapt-test/to-host; ln -s /etc/hostname /etc/sapt-test/to-hostname",
        sh_quote(&host_only.to_string_lossy())
    ));
    assert_eq!(
        b.read("/etc/sapt-test/to-host"),
        None,
        "read followed a symlink onto the host"
    );
    assert_eq!(
        b.read_string("/etc/sapt-test/to-hostname").unwrap().trim(),
        "fresh-server"
    );

    let paths = [
        "/etc/sapt-test",
        "/etc/hostname",
        "/etc/ssh",
        "/nonexistent",
    ];
    let s1 = b.snapshot(&paths);
    let s2 = b.snapshot(&paths);
    assert_eq!(s1, s2, "snapshot not stable:\n{}", snapshot_diff(&s1, &s2));
    assert_eq!(s1["/nonexistent"], "absent");
    assert!(
        s1["/etc/sapt-test"].starts_with("40755 0 0 "),
        "{}",
        s1["/etc/sapt-test"]
    );
    assert_eq!(
        s1["/etc/sapt-test/a.conf"],
        "100640 0 0 5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"
    );
    assert_eq!(
        s1["/etc/sapt-test/to-hostname"],
        "120777 0 0 -> /etc/hostname"
    );
    assert!(s1.contains_key("/etc/ssh/sshd_config"));

    b.exec_ok("echo changed > /etc/sapt-test/a.conf");
    let s3 = b.snapshot(&paths);
    let d = snapshot_diff(&s1, &s3);
    assert_eq!(d.lines().count(), 1, "expected exactly one change:\n{d}");
    assert!(d.contains("/etc/sapt-test/a.conf"), "{d}");

    b.exec_ok("chmod 600 /etc/ssh/sshd_config");
    let s4 = b.snapshot(&paths);
    assert!(
        snapshot_diff(&s3, &s4).contains("~ /etc/ssh/sshd_config: 100644 0 0"),
        "{}",
        snapshot_diff(&s3, &s4)
    );

    b.exec_ok("touch /etc/sapt-test/new");
    assert!(
        snapshot_diff(&s4, &b.snapshot(&paths)).starts_with("+ /etc/sapt-test/new: 100644 0 0 ")
    );

    // The rootfs cache is never modified by a box (volatile overlay).
    assert!(!rootfs(Suite::default()).join("etc/sapt-test").exists());
}

#[test]
#[ignore = "system test: needs root; run scripts/test.sh"]
fn swap_and_netns_are_gone_after_drop() {
    let (_agent_dir, opts) = placeholder_agent();
    let swap_name = format!("sapt-smoke-{}.swap", std::process::id());
    let (netns, host_dir, pid);
    {
        let b = TestBox::boot_with(opts);
        netns = b.netns().to_string();
        host_dir = b.swap_host_dir().to_path_buf();
        pid = b.pid();
        assert!(Path::new("/run/netns").join(&netns).exists());
        // As a unit: proves --system-call-filter=@swap and the ext4 bind mount.
        let o = b.exec(&format!(
            "set -e; f=/mnt/swap/{swap_name}; fallocate -l 16M $f; chmod 600 $f; mkswap $f >/dev/null; swapon $f; grep -c {swap_name} /proc/swaps"
        ));
        assert!(
            o.status.success(),
            "swapon inside the container failed: {o:?}"
        );
        let swaps = fs::read_to_string("/proc/swaps").unwrap();
        assert!(
            swaps.contains(&swap_name),
            "swap not visible on the host:\n{swaps}"
        );
        assert!(host_dir.join(&swap_name).exists());
    }
    let swaps = fs::read_to_string("/proc/swaps").unwrap();
    assert!(
        !swaps.contains(&swap_name),
        "swap survived the drop:\n{swaps}"
    );
    assert!(
        !Path::new("/run/netns").join(&netns).exists(),
        "netns {netns} survived the drop"
    );
    assert!(
        !host_dir.exists(),
        "{} survived the drop",
        host_dir.display()
    );
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "container init {pid} survived the drop"
    );
}

#[test]
#[ignore = "system test: needs root; run scripts/test.sh"]
fn drop_cleans_up_when_the_test_panics() {
    let (_agent_dir, opts) = placeholder_agent();
    let mut seen = None;
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let b = TestBox::boot_with(opts);
        seen = Some((
            b.netns().to_string(),
            b.swap_host_dir().to_path_buf(),
            b.pid(),
        ));
        b.exec_ok("f=/mnt/swap/p; fallocate -l 16M $f && chmod 600 $f && mkswap $f >/dev/null && swapon $f");
        panic!("deliberate test panic");
    }));
    assert!(r.is_err());
    let (netns, dir, pid) = seen.expect("box did not boot");
    assert!(
        !Path::new("/run/netns").join(&netns).exists(),
        "netns {netns} left after panic"
    );
    assert!(!dir.exists(), "{} left after panic", dir.display());
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "container {pid} left after panic"
    );
}

#[test]
#[ignore = "system test: needs root; run scripts/test.sh"]
fn spawn_runs_concurrently_and_peers_are_routed() {
    let (_agent_dir, opts) = placeholder_agent();
    let b = TestBox::boot_with(opts);

    let t0 = Instant::now();
    let kids: Vec<_> = (0..3)
        .map(|i| b.spawn(&format!("sleep 2; echo done-{i}")))
        .collect();
    for (i, k) in kids.into_iter().enumerate() {
        let o = k.wait_with_output().unwrap();
        assert!(o.status.success(), "{o:?}");
        assert_eq!(stdout_str(&o), format!("done-{i}\n"));
    }
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "spawned units did not overlap: {:?}",
        t0.elapsed()
    );

    let op = b.add_peer("op", "203.0.113.10/24", "192.0.2.50/24");
    let evil = b.add_peer("evil", "203.0.113.10/24", "198.51.100.66/24");
    assert_eq!(
        b.exec_ok("ip -4 -o addr show dev wan0 | awk '{print $4}'"),
        "203.0.113.10/24\n"
    );
    let o = b.exec("ping -c1 -W3 192.0.2.50 >/dev/null && ping -c1 -W3 198.51.100.66 >/dev/null && echo reachable");
    assert_eq!(stdout_str(&o), "reachable\n", "{o:?}");
    // sshd in the container is reachable from a peer (host-side client in the peer netns)
    let o = op.exec("timeout 5 bash -c '</dev/tcp/203.0.113.10/22' && echo open");
    assert_eq!(stdout_str(&o), "open\n", "{o:?}");
    assert_eq!(evil.addr(), "198.51.100.66");
    let peers = [op.netns.clone(), evil.netns.clone()];
    drop(b);
    for p in peers {
        assert!(
            !Path::new("/run/netns").join(&p).exists(),
            "peer netns {p} survived the drop"
        );
    }
}
