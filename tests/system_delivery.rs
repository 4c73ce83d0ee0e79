//! Delivery: the .deb built by packaging/build-deb.sh, installed, upgraded and purged with
//! dpkg inside the nspawn container; its units checked by `systemd-analyze verify` there;
//! lintian on the package. Root only; run through scripts/test.sh.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::report::out_str;
use common::{TestBox, sh_quote};

const UNITS: &[&str] = &[
    "sapari-agent.service",
    "sapari-agent.timer",
    "sapari-docker-firewall.service",
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
    assert!(o.status.success(), "build-deb.sh: {}", out_str(&o));
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
    assert!(o.status.success(), "lintian: {}", out_str(&o));
    let tags: Vec<String> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter(|l| l.starts_with("E:") || l.starts_with("W:"))
        .map(str::to_string)
        .collect();
    assert!(tags.is_empty(), "lintian tags: {tags:#?}");
}

#[test]
#[ignore = "system test: needs root; run scripts/test.sh"]
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
    b.write("/etc/sapari-agent/agent.toml", cfg, 0o600);
    let before = b.snapshot(&["/etc/ssh", "/etc/ufw", "/etc/passwd", "/etc/sudoers.d"]);

    let o = b.exec("DEBIAN_FRONTEND=noninteractive dpkg -i /root/v1.deb </dev/null");
    assert!(o.status.success(), "dpkg -i v1: {}", out_str(&o));
    assert_eq!(installed_version(&b).as_deref(), Some("0.1.0"));
    let v = b.exec_ok("/usr/bin/sapari-agent version");
    assert!(v.contains("sapari-agent "), "{v}");
    assert_eq!(
        b.read("/etc/sapari-agent/agent.toml").as_deref(),
        Some(&cfg[..])
    );
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
        out_str(&o)
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

    // Upgrade: the administrator's edits and choices survive.
    b.exec_ok("echo '# local note' >> /etc/sapari-agent/agent.toml.example");
    b.exec_ok("systemctl disable sapari-agent.timer");
    let o = b.exec("DEBIAN_FRONTEND=noninteractive dpkg -i /root/v2.deb </dev/null");
    assert!(o.status.success(), "dpkg -i v2: {}", out_str(&o));
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
    assert!(o.status.success(), "dpkg -r: {}", out_str(&o));
    assert!(!exists(&b, "/usr/bin/sapari-agent"));
    assert!(!exists(&b, "/usr/lib/systemd/system/sapari-agent.timer"));
    assert!(exists(&b, "/etc/sapari-agent/agent.toml.example"));
    let o = b.exec("dpkg --purge sapari-agent");
    assert!(o.status.success(), "dpkg --purge: {}", out_str(&o));
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
