// Tests drive the machine from outside the agent: clippy.toml's boundary is the agent's.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]
//! Delivery: the .deb built by packaging/build-deb.sh, installed, upgraded and purged with
//! dpkg inside the nspawn container; its units checked by `systemd-analyze verify` there;
//! lintian on the package. Root only; run through scripts/test.sh.

mod common;

use common::CONFIG_PATH;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::describe;
use common::{TestBox, sh_quote};

const UNITS: &[&str] = &[
    "sapari-agent.service",
    "sapari-agent.timer",
    "sapari-docker-firewall.service",
    "sapari-firewall-boot.service",
];

/// Builds the package at `version` from the binary under test into `dir`.
fn build_deb(version: &str, dir: &Path) -> PathBuf {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("packaging/build-deb.sh");
    let o = Command::new(script)
        .arg(common::agent_binary())
        .env("SAPARI_DEB_VERSION", version)
        .env("SAPARI_DEB_OUT", dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "build-deb.sh: {}", describe(&o));
    let deb = PathBuf::from(
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .last()
            .unwrap()
            .trim(),
    );
    assert!(deb.is_file(), "{} missing", deb.display());
    deb
}

fn put_deb(b: &TestBox, deb: &Path, at: &str) {
    b.write(at, &std::fs::read(deb).unwrap(), 0o644);
}

fn installed_version(b: &TestBox) -> Option<String> {
    let o = b.exec("dpkg-query -W -f='${Status} ${Version}' sapari-agent 2>/dev/null");
    let s = String::from_utf8_lossy(&o.stdout).to_string();
    s.strip_prefix("install ok installed ")
        .map(|v| v.trim().to_string())
}

fn is_enabled(b: &TestBox, unit: &str) -> String {
    let o = b.exec(&format!("systemctl is-enabled {unit}"));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn exists(b: &TestBox, path: &str) -> bool {
    b.exec(&format!("test -e {}", sh_quote(path)))
        .status
        .success()
}

#[test]
#[ignore = "system test: needs root; run scripts/test.sh"]
fn lintian_reports_no_errors_or_warnings() {
    let d = tempfile::tempdir().unwrap();
    let deb = build_deb("0.1.0", d.path());
    // Overrides in the package cover the false positives, with the reason beside each.
    let o = Command::new("lintian")
        .args(["--fail-on", "error,warning", "--tag-display-limit", "0"])
        .arg(&deb)
        .output()
        .expect("lintian (apt-get install lintian)");
    assert!(o.status.success(), "lintian: {}", describe(&o));
    let tags: Vec<String> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter(|l| l.starts_with("E:") || l.starts_with("W:"))
        .map(str::to_string)
        .collect();
    assert!(tags.is_empty(), "lintian tags: {tags:#?}");
}

#[test]
#[ignore = "system test: needs root; run scripts/test.sh"]
// One box: install, start, upgrade, remove and purge each act on what the step before left.
fn deb_installs_changes_nothing_upgrades_and_purges_cleanly() {
    let d = tempfile::tempdir().unwrap();
    let v1 = build_deb("0.1.0", &d.path().join("v1"));
    let v2 = build_deb("0.1.1~test1", &d.path().join("v2"));
    let b = TestBox::boot();
    put_deb(&b, &v1, "/root/v1.deb");
    put_deb(&b, &v2, "/root/v2.deb");
    // What cloud-init's write_files leaves before the package arrives: the package must
    // neither ask about it nor replace it.
    let cfg = b"# written before the package\n";
    b.write(CONFIG_PATH, cfg, 0o600);
    let before = b.snapshot(&["/etc/ssh", "/etc/ufw", "/etc/passwd", "/etc/sudoers.d"]);

    let o = b.exec("DEBIAN_FRONTEND=noninteractive dpkg -i /root/v1.deb </dev/null");
    assert!(o.status.success(), "dpkg -i v1: {}", describe(&o));
    assert_eq!(installed_version(&b).as_deref(), Some("0.1.0"));
    let v = b.exec_ok("/usr/bin/sapari-agent version");
    assert!(v.contains("sapari-agent "), "{v}");
    assert_eq!(b.read(CONFIG_PATH).as_deref(), Some(&cfg[..]));
    assert!(exists(&b, "/etc/sapari-agent/agent.toml.example"));
    assert!(exists(&b, "/usr/share/man/man8/sapari-agent.8.gz"));

    // The units are valid where they are installed, next to the binary they start.
    let paths: Vec<String> = UNITS
        .iter()
        .map(|u| format!("/usr/lib/systemd/system/{u}"))
        .collect();
    let o = b.exec(&format!("systemd-analyze verify {} 2>&1", paths.join(" ")));
    let verify = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        o.status.success(),
        "systemd-analyze verify: {}",
        describe(&o)
    );
    let complaints: Vec<&str> = verify.lines().filter(|l| l.contains("sapari")).collect();
    assert!(
        complaints.is_empty(),
        "systemd-analyze verify: {complaints:#?}"
    );

    // Enabled, not started: installing the package converges nothing.
    assert_eq!(is_enabled(&b, "sapari-agent.timer"), "enabled");
    assert_eq!(is_enabled(&b, "sapari-docker-firewall.service"), "enabled");
    assert_eq!(is_enabled(&b, "sapari-agent.service"), "static");
    // The origin lock at boot: before the network and Docker, and required by Docker.
    assert_eq!(is_enabled(&b, "sapari-firewall-boot.service"), "enabled");
    assert!(exists(
        &b,
        "/etc/systemd/system/docker.service.requires/sapari-firewall-boot.service"
    ));
    let before_units = b.exec_ok("systemctl show -p Before --value sapari-firewall-boot.service");
    for u in ["docker.service", "network-pre.target"] {
        assert!(
            before_units.contains(u),
            "Before= lacks {u}: {before_units}"
        );
    }
    let active = b.exec("systemctl is-active sapari-agent.timer sapari-agent.service");
    assert_eq!(
        String::from_utf8_lossy(&active.stdout).trim(),
        "inactive\ninactive"
    );
    assert!(!exists(&b, "/var/lib/sapari-agent/last-run.json"));
    assert_eq!(
        b.snapshot(&["/etc/ssh", "/etc/ufw", "/etc/passwd", "/etc/sudoers.d"]),
        before,
        "installing the package changed the server"
    );

    // Started as at boot, under systemd and the box's sandbox: the table is in the kernel,
    // from the lists built into the binary (no last good list yet, no network needed), even
    // with this agent.toml, which converge refuses as truncated.
    let o = b.exec("systemctl start sapari-firewall-boot.service");
    assert!(
        o.status.success(),
        "boot unit: {}\n{}",
        describe(&o),
        describe(&b.exec("journalctl -u sapari-firewall-boot.service --no-pager"))
    );
    let table = b.exec_ok("nft list table inet sapari_agent");
    assert!(
        table.contains("set cloudflare_v4") && table.contains("hook prerouting"),
        "{table}"
    );
    let journal = b.exec_ok("journalctl -u sapari-firewall-boot.service --no-pager -o cat");
    assert!(journal.contains("built-in"), "{journal}");
    b.exec_ok("nft delete table inet sapari_agent && systemctl stop sapari-firewall-boot.service");

    // Upgrade: the administrator's edits and choices survive.
    b.exec_ok("echo '# local note' >> /etc/sapari-agent/agent.toml.example");
    b.exec_ok("systemctl disable sapari-agent.timer");
    let o = b.exec("DEBIAN_FRONTEND=noninteractive dpkg -i /root/v2.deb </dev/null");
    assert!(o.status.success(), "dpkg -i v2: {}", describe(&o));
    assert_eq!(installed_version(&b).as_deref(), Some("0.1.1~test1"));
    let example = b
        .read_string("/etc/sapari-agent/agent.toml.example")
        .unwrap();
    assert!(example.ends_with("# local note\n"), "conffile edit lost");
    assert_eq!(is_enabled(&b, "sapari-agent.timer"), "disabled");
    assert_eq!(is_enabled(&b, "sapari-docker-firewall.service"), "enabled");

    // Remove keeps the configuration; purge leaves nothing of the package behind.
    b.exec_ok("mkdir -p /var/lib/sapari-agent && echo '{}' > /var/lib/sapari-agent/last-run.json");
    let o = b.exec("dpkg -r sapari-agent");
    assert!(o.status.success(), "dpkg -r: {}", describe(&o));
    assert!(!exists(&b, "/usr/bin/sapari-agent"));
    assert!(!exists(&b, "/usr/lib/systemd/system/sapari-agent.timer"));
    assert!(exists(&b, "/etc/sapari-agent/agent.toml.example"));
    // Neither masked nor still required: Docker must start without the package.
    for p in [
        "/etc/systemd/system/sapari-firewall-boot.service",
        "/etc/systemd/system/docker.service.requires/sapari-firewall-boot.service",
    ] {
        let o = b.exec(&format!("test -e {0} || test -L {0}", sh_quote(p)));
        assert!(!o.status.success(), "{p} left after remove");
    }
    let o = b.exec("dpkg --purge sapari-agent");
    assert!(o.status.success(), "dpkg --purge: {}", describe(&o));
    assert_eq!(installed_version(&b), None);
    for p in ["/etc/sapari-agent", "/var/lib/sapari-agent"] {
        assert!(!exists(&b, p), "{p} left after purge");
    }
    let left = b.exec_ok(
        "find /etc/systemd /usr/lib/systemd /var/lib/systemd -name 'sapari*' 2>/dev/null; \
         dpkg -S sapari-agent 2>/dev/null; true",
    );
    assert_eq!(left.trim(), "", "left after purge");
    assert_eq!(
        b.snapshot(&["/etc/ssh", "/etc/ufw", "/etc/passwd", "/etc/sudoers.d"]),
        before,
        "the package's life cycle changed the server"
    );
}

const OPERATOR: &str = "192.0.2.50";
const OPERATOR_KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl operator@laptop";

/// Starts sapari-agent.service as its timer does and waits for the oneshot to finish.
fn run_service(b: &TestBox) -> String {
    let o = b.exec_with(
        "systemctl start sapari-agent.service; systemctl show -p Result -p ExecMainStatus --value sapari-agent.service",
        &[],
        std::time::Duration::from_secs(300),
    );
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Resources the journal says the last run of the service changed: the RESOURCE= and
/// STATUS= fields the agent logs with each outcome, for that run's invocation id.
fn journal_changed(b: &TestBox) -> Vec<String> {
    let id = b.exec_ok("systemctl show -p InvocationID --value sapari-agent.service");
    let out = b.exec_ok(&format!(
        "journalctl -q --no-pager -o json _SYSTEMD_INVOCATION_ID={}",
        id.trim()
    ));
    let mut v: Vec<String> = out
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["STATUS"] == "changed")
        .filter_map(|e| e["RESOURCE"].as_str().map(str::to_string))
        .collect();
    v.sort();
    v
}

#[test]
#[ignore = "system test: needs root; run scripts/test.sh"]
fn timer_service_corrects_drift_and_the_journal_names_what_changed() {
    let d = tempfile::tempdir().unwrap();
    let deb = build_deb("0.1.0", d.path());
    let (b, _repo) = common::apt_repo::boot_with_repo(common::Suite::default().docker_packages());
    b.enable_ipv4_forwarding();
    put_deb(&b, &deb, "/root/agent.deb");
    b.exec_ok("dpkg -i /root/agent.deb");
    b.write(
        CONFIG_PATH,
        format!(
            "[access]\noperator_ips = [\"{OPERATOR}\"]\n\n[users]\nauthorized_keys = [\"{OPERATOR_KEY}\"]\n\n\
             [sshd]\nneutralize_overrides = true\n\n[docker]\nsource = \"distro\"\n\n\
             [firewall]\nfetch_timeout = \"3s\"\n\n[swap]\nenabled = false\n\n[packages]\nenabled = false\n\n\
             [tailscale]\nenabled = false\n\n[compose]\nenabled = false\n\n[ntp]\nrequire_sync = false\n"
        )
        .as_bytes(),
        0o600,
    );
    // The first run installs Docker and converges everything.
    let first = run_service(&b);
    assert_eq!(
        first,
        "success 0",
        "first run: {}",
        b.exec_ok("journalctl -u sapari-agent.service --no-pager | tail -40")
    );
    let chain = |b: &TestBox| b.exec_ok("iptables -S DOCKER-USER");
    let good_chain = chain(&b);
    assert!(good_chain.contains("--ctorigdstport 443"), "{good_chain}");
    let ufw_rules = |b: &TestBox| b.exec_ok("ufw status | grep -c ALLOW || true");
    let good_ufw = ufw_rules(&b);
    assert!(b.exec_ok("ufw status").contains(OPERATOR));

    // Drift, the three ways it happens: an operator deletes a UFW rule, a package drops in
    // a file re-enabling passwords, a Docker restart or a script flushes DOCKER-USER.
    b.exec_ok(&format!(
        "ufw delete allow from {OPERATOR} to any port 22 proto tcp >/dev/null"
    ));
    assert!(!b.exec_ok("ufw status").contains(OPERATOR), "tamper failed");
    b.write(
        "/etc/ssh/sshd_config.d/01-tamper.conf",
        b"PasswordAuthentication yes\n",
        0o644,
    );
    b.exec_ok(common::SSHD_TAKE_CONFIG);
    assert!(b.exec_ok("sshd -T").contains("passwordauthentication yes"));
    b.exec_ok("iptables -F DOCKER-USER");
    assert_ne!(chain(&b), good_chain);

    let second = run_service(&b);
    assert_eq!(second, "success 0");
    assert!(
        b.exec_ok("ufw status").contains(OPERATOR),
        "UFW rule not restored"
    );
    assert_eq!(ufw_rules(&b), good_ufw);
    assert!(b.exec_ok("sshd -T").contains("passwordauthentication no"));
    let tamper = b
        .read_string("/etc/ssh/sshd_config.d/01-tamper.conf")
        .unwrap();
    assert!(tamper.contains("# disabled by sapari-agent"), "{tamper}");
    assert_eq!(chain(&b), good_chain, "DOCKER-USER not restored");
    assert_eq!(
        journal_changed(&b),
        ["firewall", "sshd", "ufw"],
        "journal of the drift run"
    );

    // A third run finds nothing to do, and says so in the journal.
    assert_eq!(run_service(&b), "success 0");
    assert_eq!(journal_changed(&b), Vec::<String>::new());
    let last: serde_json::Value = serde_json::from_str(
        &b.read_string("/var/lib/sapari-agent/last-run.json")
            .unwrap(),
    )
    .unwrap();
    assert_eq!(last["summary"]["changed"], 0, "{last:#}");
}
