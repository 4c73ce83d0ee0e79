// Tests drive the machine from outside the agent: clippy.toml's boundary is the agent's.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]
//! The `docker` resource with `source = "distro"`, installed for real by apt inside the
//! container: Debian 12's docker.io and docker-compose (1.29, the only compose bookworm has), or
//! with SAPARI_TEST_SUITE=trixie Debian 13's docker.io 26.1, docker-cli and compose v2 (2.26),
//! served from a local apt repository in a peer namespace as in system_packages.rs (built once
//! by tests/harness/build-debs.sh, cached per package list; the box reaches no archive).
//!
//! dockerd really runs inside the nspawn box. It needs nothing from nspawn beyond the harness
//! defaults, and no daemon.json, with one exception in the test environment: nspawn mounts
//! /proc/sys read-only, so dockerd cannot switch on IPv4 forwarding itself and dies with
//! "Error initializing network controller: ... Enabling IP forwarding failed: open
//! /proc/sys/net/ipv4/ip_forward: read-only file system". On a real server it can. The test
//! sets the sysctl beforehand from the host in the box's own network namespace; it is a
//! per-namespace setting, and dockerd does not write it when it is already 1. Storage: overlay2
//! cannot mount on the box's overlayfs root, so dockerd falls back to vfs by itself, which is
//! enough for a daemon that answers `docker info` (no image is pulled or run here). Cgroups are
//! v1 and read-only in the box; that only matters for running containers.
//!
//! Root only; run through scripts/test.sh.

mod common;

use common::{AGENT_PATH, CONFIG_PATH};

use common::describe;
use common::report::{json, resource};

use std::process::Output;
use std::time::{Duration, Instant};

use common::apt_repo::{self, Repo};
use common::{Suite, TestBox};

/// What `source = "distro"` installs and finds on the box's release.
struct Release {
    packages: &'static [&'static str],
    compose: &'static str,
    server: &'static str,
    compose_version: &'static str,
}

fn release() -> Release {
    match Suite::default() {
        // Debian 12: the docker command is in docker.io; compose is the Python v1.
        Suite::Bookworm => Release {
            packages: Suite::Bookworm.docker_packages(),
            compose: "docker-compose",
            server: "20.10.",
            compose_version: "1.29.",
        },
        // Debian 13: the docker command is its own package; docker-compose is the v2 plugin.
        Suite::Trixie => Release {
            packages: Suite::Trixie.docker_packages(),
            compose: "docker compose",
            server: "26.1.",
            compose_version: "2.26",
        },
    }
}
const CONFIG: &str = "[docker]\nsource = \"distro\"\n";
/// Installing docker.io and starting dockerd takes 15-30 s; allow for a loaded machine.
const AGENT_TIMEOUT: Duration = Duration::from_secs(240);

fn boot_with_repo() -> (TestBox, Repo) {
    let (b, repo) = apt_repo::boot_with_repo(release().packages);
    b.enable_ipv4_forwarding();
    b.write(CONFIG_PATH, CONFIG.as_bytes(), 0o600);
    (b, repo)
}

fn converge(b: &TestBox) -> Output {
    b.exec_with(
        &format!("{AGENT_PATH} converge --only users,docker --json"),
        &[],
        AGENT_TIMEOUT,
    )
}

#[test]
#[ignore = "system test: needs root; run scripts/test.sh"]
// One box: the second converge must find what the first one installed and leave it.
fn installs_debian_docker_runs_it_for_deploy_and_reports_compose() {
    let rel = release();
    let notes = serde_json::json!([format!("compose command: {}", rel.compose)]);
    let (b, _repo) = boot_with_repo();
    let t0 = Instant::now();
    let o = converge(&b);
    eprintln!("first converge took {:.1?}", t0.elapsed());
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    let r = json(&o);
    let d = resource(&r, "docker");
    assert_eq!(d["status"], "changed", "{r:#}");
    let changes = d["changes"].to_string();
    assert!(
        changes.contains(&format!("install {}", rel.packages.join(" ")))
            && changes.contains("docker.service"),
        "{changes}"
    );
    // The box has no package lists: the install must fetch them first.
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("docker: updating package lists"),
        "{}",
        describe(&o)
    );
    // The compose the release packages is found and named (v1 on Debian 12, v2 on 13).
    assert_eq!(d["notes"], notes, "{r:#}");
    assert_eq!(resource(&r, "users")["status"], "changed", "{r:#}");

    for p in rel.packages {
        let s = b.exec_ok(&format!("dpkg-query -W -f '${{db:Status-Abbrev}}' {p}"));
        assert_eq!(s.trim(), "ii", "{p} installed");
    }
    assert_eq!(
        b.exec_ok("systemctl is-enabled docker.service").trim(),
        "enabled"
    );
    assert_eq!(
        b.exec_ok("systemctl is-active docker.service").trim(),
        "active"
    );
    let info = b.exec_ok("docker info --format '{{.ServerVersion}} {{.Driver}}'");
    assert!(
        info.starts_with(rel.server),
        "dockerd answers `docker info`: {info}"
    );
    let groups = b.exec_ok("id -nG deploy");
    assert!(
        groups.split_whitespace().any(|g| g == "docker"),
        "deploy in docker: {groups}"
    );
    // The membership is the one the socket honours: deploy talks to dockerd without sudo.
    let v = b.exec_ok("runuser -u deploy -- docker version --format '{{.Server.Version}}'");
    assert!(v.starts_with(rel.server), "{v}");
    let cv = b.exec_ok(&format!("{} version --short", rel.compose));
    assert!(cv.trim().starts_with(rel.compose_version), "compose: {cv}");

    let o = converge(&b);
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    let r = json(&o);
    let d = resource(&r, "docker");
    assert_eq!(d["status"], "unchanged", "{r:#}");
    assert_eq!(d["changes"], serde_json::json!([]), "{r:#}");
    assert_eq!(d["notes"], notes, "{r:#}");
    assert_eq!(resource(&r, "users")["status"], "unchanged", "{r:#}");

    let o = b.agent(&["status", "--only", "docker", "--json"]);
    let checks = json(&o)["checks"].clone();
    let level = |name: &str| {
        checks
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .map(|c| (c["level"].clone(), c["detail"].clone()))
            .unwrap_or_else(|| panic!("no {name} check: {checks:#}"))
    };
    assert_eq!(
        level("docker"),
        ("PASS".into(), "running".into()),
        "{checks:#}"
    );
    assert_eq!(
        level("compose"),
        ("PASS".into(), rel.compose.into()),
        "{checks:#}"
    );
}

#[test]
#[ignore = "system test: needs root; run scripts/test.sh"]
fn a_daemon_that_cannot_start_fails_naming_the_unit_and_its_log() {
    let (b, _repo) = boot_with_repo();
    // An operator's broken daemon.json, there before the package: dockerd refuses to start.
    b.write(
        "/etc/docker/daemon.json",
        br#"{"storage-driver": "no-such-driver"}"#,
        0o644,
    );
    let o = converge(&b);
    assert_eq!(o.status.code(), Some(1), "{}", describe(&o));
    let r = json(&o);
    let d = resource(&r, "docker");
    assert_eq!(d["status"], "failed", "{r:#}");
    let e = d["error"].as_str().unwrap();
    assert!(
        e.contains("docker.service") && e.contains("journalctl -xeu docker.service"),
        "must name the unit and where its log is: {e}"
    );
    assert_eq!(
        b.exec_ok("dpkg-query -W -f '${db:Status-Abbrev}' docker.io")
            .trim(),
        "ii"
    );
    assert_ne!(
        b.exec("systemctl is-active docker.service").stdout,
        b"active\n"
    );
    assert!(
        b.exec_ok("id -nG deploy")
            .split_whitespace()
            .any(|g| g == "docker")
    );

    // Not silently "unchanged" the next time either, and status says what is wrong.
    let o = converge(&b);
    assert_eq!(o.status.code(), Some(1), "{}", describe(&o));
    assert_eq!(resource(&json(&o), "docker")["status"], "failed");
    let o = b.agent(&["status", "--only", "docker"]);
    let s = String::from_utf8_lossy(&o.stdout);
    assert!(
        s.lines()
            .any(|l| l.starts_with("docker ") && l.contains("FAIL") && l.contains("not running")),
        "{}",
        describe(&o)
    );
}
