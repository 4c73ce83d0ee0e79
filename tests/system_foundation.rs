// Tests drive the machine from outside the agent: clippy.toml's boundary is the agent's.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]
//! System tests for the foundation: the agent runs inside a booted Debian container
//! (systemd-nspawn in its own network namespace) and is checked from outside.
//! Root only; run through scripts/test.sh.

mod common;

use common::AGENT_PATH;

use common::describe;
use common::report::{json, resource};

use std::time::{Duration, Instant};

use common::{CONFIG_PATH, TestBox};
use sapari_agent::config::Config;
use serde_json::Value;

/// Unique per test process (nextest runs one test per process): /proc/swaps is global, and
/// mkswap refuses a path that another box has active under the same name.
static SWAP: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| format!("/mnt/swap/swapfile-{}", std::process::id()));
/// Any valid key: the full converge hardens sshd, which needs a user who can log in.
const OPERATOR_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIL5XCtKcP+JC48vXbIoe+UVO/zcUdqfXFZ2HI0vvRsPW operator";

fn config(edit: impl FnOnce(&mut Config)) -> String {
    common::config::to_toml(&common::config::config(|c| {
        c.access.operator_ips = vec!["192.0.2.50".parse().unwrap()];
        c.hostname.name = "sapari-prod".parse().unwrap();
        c.users.authorized_keys = vec![OPERATOR_KEY.parse().unwrap()];
        c.swap.path = SWAP.parse().unwrap();
        c.swap.size = "64M".parse().unwrap();
        c.tailscale.enabled = false;
        c.packages.enabled = false;
        c.docker.enabled = false;
        c.firewall.enabled = false;
        c.ntp.require_sync = false;
        c.ntp.sync_timeout = "2s".parse().unwrap();
        edit(c);
    }))
}

fn install_config(b: &TestBox, text: &str) {
    b.nsenter("mkdir -p /etc/sapari-agent && chmod 755 /etc/sapari-agent");
    b.write(CONFIG_PATH, text.as_bytes(), 0o600);
}

fn text(b: &TestBox, path: &str) -> String {
    String::from_utf8_lossy(&b.read(path).unwrap_or_default()).into_owned()
}

/// Everything `plan` or a rejected config must leave alone.
fn observable_state(b: &TestBox) -> (std::collections::BTreeMap<String, String>, String, String) {
    let files = b.snapshot(&[
        "/etc",
        "/mnt/swap",
        "/var/lib/sapari-agent",
        "/run/sapari-agent.lock",
    ]);
    let hostname = String::from_utf8_lossy(&b.exec("hostname").stdout).into_owned();
    // Rules without counters: traffic must not count as a change.
    let firewall = b.nsenter_ok("iptables -S; ip6tables -S");
    let swaps = text(b, "/proc/swaps");
    (files, hostname + &firewall, swaps)
}

/// Ask the kernel directly (not through the agent) whether the clock is synchronized.
fn kernel_clock_synced(b: &TestBox) -> bool {
    let py = r#"
import ctypes, ctypes.util
class T(ctypes.Structure):
    _fields_ = [("modes", ctypes.c_uint), ("pad", ctypes.c_long * 4), ("status", ctypes.c_int), ("rest", ctypes.c_long * 40)]
t = T(); l = ctypes.CDLL(ctypes.util.find_library("c")); rc = l.adjtimex(ctypes.byref(t))
print("synced" if rc != 5 and not (t.status & 0x40) else "unsynced")
"#;
    let o = b.exec(&format!("python3 -c '{py}'"));
    let s = String::from_utf8_lossy(&o.stdout);
    assert!(
        s.contains("synced"),
        "adjtimex probe failed: {}",
        describe(&o)
    );
    s.trim() == "synced"
}

#[test]
#[ignore = "system test: needs root; run scripts/test.sh"]
// One box: the second run must change nothing the first one set.
fn converge_sets_hostname_and_swap_then_second_run_changes_nothing() {
    let b = TestBox::boot();
    install_config(&b, &config(|_| {}));
    assert_ne!(
        String::from_utf8_lossy(&b.exec("hostname").stdout).trim(),
        "sapari-prod"
    );

    let o = b.agent(&["converge", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    let r = json(&o);
    assert_eq!(r["mode"], "converge");
    assert_eq!(resource(&r, "hostname")["status"], "changed", "{r:#}");
    assert_eq!(resource(&r, "swap")["status"], "changed", "{r:#}");

    // Observed from outside the agent.
    assert_eq!(
        String::from_utf8_lossy(&b.exec("hostname").stdout).trim(),
        "sapari-prod"
    );
    assert_eq!(text(&b, "/etc/hostname").trim(), "sapari-prod");
    let hosts = text(&b, "/etc/hosts");
    assert!(
        hosts
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["127.0.1.1", "sapari-prod"]),
        "{hosts}"
    );
    assert!(
        hosts.lines().any(|l| l.starts_with("127.0.0.1")),
        "other lines kept: {hosts}"
    );
    let swaps = text(&b, "/proc/swaps");
    assert!(swaps.contains("swapfile"), "swap not active: {swaps}");
    let fstab = text(&b, "/etc/fstab");
    assert_eq!(
        fstab
            .matches(&format!("{} none swap sw,nofail 0 0", *SWAP))
            .count(),
        1,
        "{fstab}"
    );
    let st = b.exec(&format!("stat -c '%a %u' {}", *SWAP));
    assert_eq!(String::from_utf8_lossy(&st.stdout).trim(), "600 0");
    let last = b
        .read("/var/lib/sapari-agent/last-run.json")
        .expect("last-run.json");
    let last: Value = serde_json::from_slice(&last).unwrap();
    assert_eq!(last["summary"], r["summary"]);
    // Structured journal fields, so `journalctl RESOURCE=swap` works.
    let j = b.exec("journalctl -t sapari-agent RESOURCE=swap STATUS=changed -o cat --no-pager");
    assert!(
        !j.stdout.is_empty(),
        "journal has no RESOURCE/STATUS fields: {}",
        describe(&j)
    );

    let o2 = b.agent(&["converge", "--json", "--detailed-exitcodes"]);
    assert_eq!(
        o2.status.code(),
        Some(0),
        "second run must have nothing to do: {}",
        describe(&o2)
    );
    let r2 = json(&o2);
    assert_eq!(r2["summary"]["changed"], 0, "{r2:#}");
    assert_eq!(r2["summary"]["failed"], 0, "{r2:#}");
    for name in [
        "hostname",
        "users",
        "sshd",
        "deploy-key",
        "ufw",
        "swap",
        "ntp",
    ] {
        assert_eq!(resource(&r2, name)["status"], "unchanged", "{name}: {r2:#}");
    }
    assert_eq!(
        text(&b, "/etc/fstab"),
        fstab,
        "fstab touched by a no-op run"
    );

    let s = b.agent(&["status", "--json", "--only", "swap,hostname"]);
    let s = json(&s);
    for c in s["checks"].as_array().unwrap() {
        if c["name"] != "last converge" {
            assert_eq!(c["level"], "PASS", "{c}");
        }
    }
}

#[test]
#[ignore = "system test: needs root; run scripts/test.sh"]
fn plan_reports_changes_and_changes_nothing() {
    let b = TestBox::boot();
    install_config(&b, &config(|_| {}));
    let before = observable_state(&b);

    let o = b.agent(&[
        "plan",
        "--json",
        "--detailed-exitcodes",
        "--hostname",
        "web-01",
    ]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "pending changes -> 2: {}",
        describe(&o)
    );
    let r = json(&o);
    assert_eq!(r["mode"], "plan");
    let h = resource(&r, "hostname");
    assert_eq!(h["status"], "would_change");
    assert_eq!(h["changes"][0]["to"], "web-01");
    let hosts = h["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["what"] == "/etc/hosts");
    assert!(
        hosts.unwrap()["diff"]
            .as_str()
            .unwrap()
            .contains("+127.0.1.1\tweb-01")
    );
    assert_eq!(resource(&r, "swap")["status"], "would_change");

    let human = b.agent(&["plan"]);
    assert_eq!(human.status.code(), Some(0), "{}", describe(&human));
    let h = String::from_utf8_lossy(&human.stdout);
    assert!(
        h.contains("swap file: absent -> 64M") && h.contains("plan: "),
        "{h}"
    );

    assert_eq!(observable_state(&b), before, "plan changed the system");
}

#[test]
#[ignore = "system test: needs root; run scripts/test.sh"]
fn broken_config_exits_78_and_changes_nothing() {
    let b = TestBox::boot();
    let before = observable_state(&b);
    for (cfg, mode, needle) in [
        (format!("{}[swap2]\n", config(|_| {})), 0o600, "swap2"),
        (config(|_| {}).replace("64M", "64X"), 0o600, "swap.size"),
        (
            config(|_| {}).replace("sapari-prod", "sapari_prod"),
            0o600,
            "hostname.name",
        ),
        ("[swap\n".to_string(), 0o600, "agent.toml:1"),
        (config(|_| {}), 0o666, "chmod go-w"),
    ] {
        install_config(&b, &cfg);
        b.nsenter(&format!("chmod {mode:o} /etc/sapari-agent/agent.toml"));
        let start = observable_state(&b);
        let o = b.agent(&["converge"]);
        assert_eq!(o.status.code(), Some(78), "{needle}: {}", describe(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(needle), "error must name {needle}: {err}");
        assert!(err.contains(CONFIG_PATH), "{err}");
        assert_eq!(
            observable_state(&b),
            start,
            "{needle}: a rejected config changed the system"
        );
    }
    let o = b.agent(&["converge", "--only", "nope"]);
    assert_eq!(o.status.code(), Some(64), "{}", describe(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("valid names: hostname users"));
    b.nsenter("rm -rf /etc/sapari-agent");
    assert_eq!(observable_state(&b).1, before.1, "hostname untouched");
}

#[test]
#[ignore = "system test: needs root; run scripts/test.sh"]
fn ntp_reports_the_kernel_clock_honestly() {
    let b = TestBox::boot();
    install_config(&b, &config(|c| c.ntp.require_sync = true));
    let synced = kernel_clock_synced(&b);
    let t0 = Instant::now();
    let o = b.agent(&["converge", "--only", "ntp", "--json"]);
    let r = json(&o);
    let ntp = resource(&r, "ntp");
    if synced {
        assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
        assert_ne!(ntp["status"], "failed", "{r:#}");
    } else {
        assert_eq!(o.status.code(), Some(1), "{}", describe(&o));
        assert_eq!(ntp["status"], "failed", "{r:#}");
        let e = ntp["error"].as_str().unwrap();
        assert!(e.contains("not synchronized") && e.contains("JWT"), "{e}");
        assert!(
            t0.elapsed() >= Duration::from_secs(2),
            "must wait sync_timeout first"
        );
        // The other resources were not selected, and say so.
        assert_eq!(resource(&r, "swap")["status"], "skipped");
    }
    let en = b.exec("systemctl is-enabled systemd-timesyncd.service");
    assert_eq!(
        String::from_utf8_lossy(&en.stdout).trim(),
        "enabled",
        "{}",
        describe(&en)
    );

    let st = b.agent(&["status", "--json", "--only", "ntp"]);
    let st = json(&st);
    let clock = st["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "clock synchronized")
        .unwrap();
    assert_eq!(
        clock["level"],
        if synced { "PASS" } else { "FAIL" },
        "{clock}"
    );
}

#[test]
#[ignore = "system test: needs root; run scripts/test.sh"]
fn swap_on_an_overlay_root_fails_clearly_and_others_still_converge() {
    let b = TestBox::boot();
    install_config(&b, &config(|c| c.swap.path = "/swapfile".parse().unwrap()));
    let o = b.agent(&["converge", "--json"]);
    assert_eq!(o.status.code(), Some(1), "{}", describe(&o));
    let r = json(&o);
    let swap = resource(&r, "swap");
    assert_eq!(swap["status"], "failed");
    let e = swap["error"].as_str().unwrap();
    assert!(e.contains("overlayfs") && e.contains("swap.path"), "{e}");
    assert_eq!(resource(&r, "hostname")["status"], "changed");
    assert!(b.read("/swapfile").is_none(), "no file left behind");
    assert!(!text(&b, "/etc/fstab").contains("/swapfile"));
}

#[test]
#[ignore = "system test: needs root; run scripts/test.sh"]
fn concurrent_converges_serialize() {
    let b = TestBox::boot();
    install_config(
        &b,
        &config(|c| c.agent.lock_timeout = "1s".parse().unwrap()),
    );

    // A run that holds the lock past our timeout makes us give up with 75, naming it.
    let holder = b.spawn("exec flock /run/sapari-agent.lock sleep 4");
    std::thread::sleep(Duration::from_millis(800));
    let o = b.agent(&["converge"]);
    assert_eq!(o.status.code(), Some(75), "{}", describe(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("another sapari-agent run"));
    assert!(b.read(&SWAP).is_none(), "gave up without changing anything");

    // With a longer timeout it waits for the holder, then runs.
    install_config(
        &b,
        &config(|c| c.agent.lock_timeout = "30s".parse().unwrap()),
    );
    let t0 = Instant::now();
    let mut holder = holder;
    let o = b.agent(&["converge", "--json"]);
    let _ = holder.wait();
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("waiting up to"),
        "{}",
        describe(&o)
    );
    assert!(
        t0.elapsed() >= Duration::from_millis(1500),
        "did not wait for the holder"
    );

    // Two real runs at once: one does the work, the other then finds nothing to do.
    b.nsenter(&format!(
        "swapoff {s}; rm -f {s}; sed -i '\\|{s}|d' /etc/fstab",
        s = *SWAP
    ));
    let a = b.spawn(&format!("{AGENT_PATH} converge --json --only swap"));
    let c = b.spawn(&format!("{AGENT_PATH} converge --json --only swap"));
    let (a, c) = (a.wait_with_output().unwrap(), c.wait_with_output().unwrap());
    assert_eq!(a.status.code(), Some(0), "{}", describe(&a));
    assert_eq!(c.status.code(), Some(0), "{}", describe(&c));
    let mut changed: Vec<u64> = [json(&a), json(&c)]
        .iter()
        .map(|r| r["summary"]["changed"].as_u64().unwrap())
        .collect();
    changed.sort();
    assert_eq!(changed, vec![0, 1], "exactly one run applied the swap");
    assert_eq!(text(&b, "/etc/fstab").matches(SWAP.as_str()).count(), 1);
}
