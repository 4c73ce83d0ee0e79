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
use common::{Peer, SERVER, TestBox, sh_quote, ssh};
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
    // The running daemon uses our jail, not the package's defaults (bantime 600): on Debian 13
    // fail2ban's postinst starts it before the jail is written.
    assert_eq!(b.exec_ok("fail2ban-client get sshd bantime").trim(), "3600");
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

/// fail2ban's sshd jail as it is attacked: real failed logins from a peer get that address
/// dropped, while the operator's address (`access.operator_ips`) fails as often and still gets
/// in. On Debian 13 the lines come from OpenSSH 10's `sshd-session`, not `sshd`.
#[test]
#[ignore = "system test: needs root; run scripts/test.sh"]
fn bans_a_peer_that_keeps_failing_and_never_the_operator() {
    const OP: &str = "192.0.2.50";
    const EVIL: &str = "198.51.100.66";
    let (b, _repo) = boot_with_repo();
    let key = common::operator_key();
    b.nsenter_ok(&format!(
        "install -d -m 700 /root/.ssh && echo {} > /root/.ssh/authorized_keys",
        sh_quote(&key.public)
    ));
    let op = b.add_peer("op", &format!("{SERVER}/24"), &format!("{OP}/24"));
    let evil = b.add_peer("evil", &format!("{SERVER}/24"), &format!("{EVIL}/24"));
    b.write_config(&common::config::config(|c| {
        c.access.operator_ips = vec![OP.parse().unwrap()];
        c.packages.fail2ban_maxretry = 3;
    }));
    let o = b.agent(&["converge", "--only", "packages", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    wait_for_jail(&b);

    let port_open = |p: &Peer| {
        p.exec(&format!("timeout 4 bash -c '</dev/tcp/{SERVER}/22'"))
            .status
            .success()
    };
    let operator_login = || ssh::with_key(&op, SERVER, &key.private, "root", "echo LOGIN-OK");
    // Controls: both reach sshd, and the operator's key works, so what changes is the jail's.
    assert!(port_open(&evil), "control: the peer reaches port 22");
    assert!(
        ssh::logged_in(&operator_login()),
        "control: operator key login"
    );

    // Each side tries a user that does not exist, with a key the server never saw.
    for p in [&evil, &op] {
        for _ in 0..5 {
            let o = ssh::with_key(p, SERVER, &key.private, "admin-guess", "true");
            assert!(
                !o.status.success(),
                "login as a missing user: {}",
                describe(&o)
            );
        }
    }
    // fail2ban reads the journal on its own schedule, and before its first ban it looks up
    // the box's own name (ignoreself), which in a box without DNS takes ~15 s to fail.
    let mut jail = String::new();
    for _ in 0..120 {
        jail = b.exec_ok("fail2ban-client status sshd");
        if jail.contains(EVIL) {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        jail.contains(EVIL),
        "the failing peer was not banned:\n{jail}\n{}",
        fail2ban_evidence(&b)
    );
    assert!(
        !jail.contains(OP),
        "the operator was banned:\n{jail}\n{}",
        fail2ban_evidence(&b)
    );
    // The ban is real: the peer's connections are dropped now; the operator still logs in.
    // `status` lists the address before the ban action has inserted its rule.
    let mut open = true;
    for _ in 0..30 {
        open = port_open(&evil);
        if !open {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        !open,
        "banned peer still reaches port 22\n{}",
        fail2ban_evidence(&b)
    );
    let o = operator_login();
    assert!(
        ssh::logged_in(&o),
        "operator after its own failures: {}",
        describe(&o)
    );
}

fn wait_for_jail(b: &TestBox) {
    for _ in 0..40 {
        if b.exec("fail2ban-client status sshd").status.success() {
            return;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!("the sshd jail never came up\n{}", fail2ban_evidence(b));
}

/// What fail2ban and sshd logged, for a failed ban.
fn fail2ban_evidence(b: &TestBox) -> String {
    b.exec_ok(
        "fail2ban-client get sshd ignoreip 2>&1; cat /etc/fail2ban/jail.d/*; \
         journalctl -u fail2ban --no-pager -n 30 2>&1; tail -n 30 /var/log/fail2ban.log 2>&1; \
         journalctl -u ssh.service --no-pager -n 20 -o verbose 2>&1 | grep -E '_COMM|MESSAGE=' ; \
         (nft list ruleset || iptables-save) 2>&1 | tail -n 30",
    )
}
