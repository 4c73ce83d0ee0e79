// Tests drive the machine from outside the agent: clippy.toml's boundary is the agent's.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]
//! Packages, installed for real by apt inside the container from a local repository: the
//! .debs are downloaded on the host once (cached), indexed, and served over HTTP from a
//! peer namespace; the container's apt sources point there (the box reaches no archive).
//! Root only; run through scripts/test.sh.

mod common;

use common::describe;
use common::report::{json, resource};

use std::time::Duration;

use common::apt_repo::{self, Repo};
use common::{TestBox, sh_quote};
use sapari_agent::config::PackagesSettings;

const PACKAGES: &[&str] = &["fail2ban", "unattended-upgrades", "python3-systemd"];

fn boot_with_repo() -> (TestBox, Repo) {
    apt_repo::boot_with_repo(PACKAGES)
}

fn config(b: &TestBox, edit: impl FnOnce(&mut PackagesSettings)) {
    b.write_config(&common::config::config(|c| edit(&mut c.packages)));
}

#[test]
#[ignore = "system test: needs root; run scripts/test.sh"]
fn installs_in_one_transaction_and_runs_fail2ban_on_the_journal() {
    let (b, _repo) = boot_with_repo();
    config(&b, |_| {});
    let o = b.agent(&["converge", "--only", "packages", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    let r = json(&o);
    assert_eq!(resource(&r, "packages")["status"], "changed", "{r:#}");
    let changes = resource(&r, "packages")["changes"].to_string();
    assert!(
        changes.contains("package lists") && changes.contains("fail2ban python3-systemd"),
        "{changes}"
    );

    for p in PACKAGES {
        let s = b.exec_ok(&format!("dpkg-query -W -f '${{db:Status-Abbrev}}' {p}"));
        assert_eq!(s.trim(), "ii", "{p} installed");
    }
    assert_eq!(
        b.exec_ok("systemctl is-active fail2ban unattended-upgrades")
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["active", "active"]
    );
    assert_eq!(
        b.exec_ok("systemctl is-enabled fail2ban unattended-upgrades")
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["enabled", "enabled"]
    );
    // The jail runs, on the journal: no auth.log exists on this system.
    assert!(b.read("/var/log/auth.log").is_none());
    let mut jail = String::new();
    for _ in 0..20 {
        jail = String::from_utf8_lossy(&b.exec("fail2ban-client status sshd").stdout).into_owned();
        if jail.contains("Journal matches") {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        jail.contains("Journal matches"),
        "sshd jail not reading the journal: {jail}"
    );
    let auto = b
        .read_string("/etc/apt/apt.conf.d/20auto-upgrades")
        .unwrap();
    assert!(
        auto.contains("APT::Periodic::Unattended-Upgrade \"1\";"),
        "{auto}"
    );

    let o = b.agent(&["converge", "--only", "packages", "--json"]);
    assert_eq!(
        resource(&json(&o), "packages")["status"],
        "unchanged",
        "{}",
        describe(&o)
    );
}

#[test]
#[ignore = "system test: needs root; run scripts/test.sh"]
fn a_held_dpkg_lock_is_waited_for_then_reported_with_its_holder() {
    let (b, _repo) = boot_with_repo();
    config(&b, |p| {
        p.install = vec!["python3-systemd".into()];
        p.lock_timeout = "3s".parse().unwrap();
    });
    // Hold apt's lock the way apt does (fcntl), as unattended-upgrades does at first boot.
    let holder = "import fcntl, time; f = open('/var/lib/dpkg/lock-frontend', 'w'); fcntl.lockf(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(8)";
    let mut h = b.spawn(&format!("exec python3 -c {}", sh_quote(holder)));
    std::thread::sleep(Duration::from_millis(1500));
    let o = b.agent(&["converge", "--only", "packages", "--json"]);
    assert_eq!(o.status.code(), Some(1), "{}", describe(&o));
    let e = resource(&json(&o), "packages")["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        e.contains("dpkg lock") && e.contains("python3 (pid"),
        "must name the holder: {e}"
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("waiting for the dpkg lock held by python3"),
        "{}",
        describe(&o)
    );
    assert!(
        !b.exec_ok("dpkg-query -W -f '${db:Status-Abbrev}' python3-systemd 2>/dev/null || true")
            .contains("ii")
    );

    // Once the holder is gone, the same converge goes through.
    let _ = h.wait();
    config(&b, |p| {
        p.install = vec!["python3-systemd".into()];
        p.lock_timeout = "30s".parse().unwrap();
    });
    let o = b.agent(&["converge", "--only", "packages", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    assert_eq!(
        b.exec_ok("dpkg-query -W -f '${db:Status-Abbrev}' python3-systemd")
            .trim(),
        "ii"
    );
}
