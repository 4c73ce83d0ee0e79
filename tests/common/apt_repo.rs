//! A local apt repository for the box: the .debs (with whatever the rootfs lacks) are
//! downloaded on the host once by tests/harness/build-debs.sh, cached per package list, and
//! served over HTTP from a peer namespace; the box's apt sources point only there.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::TestBox;
use super::describe;

pub const REPO_IP: &str = "198.18.1.10";

fn repo_dir(packages: &[&str]) -> PathBuf {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/harness/build-debs.sh");
    let o = Command::new(script)
        .arg(super::rootfs(super::Suite::default()))
        .args(packages)
        .output()
        .unwrap();
    assert!(o.status.success(), "build-debs.sh: {}", describe(&o));
    PathBuf::from(
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .last()
            .unwrap()
            .trim(),
    )
}

/// The HTTP server of the local repository; stopped with the test.
pub struct Repo(Child);

impl Drop for Repo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A box whose apt sees only the local repository holding `packages`, with no package lists
/// downloaded yet (as on a fresh image), and /etc/sapari-agent created.
pub fn boot_with_repo(packages: &[&str]) -> (TestBox, Repo) {
    let dir = repo_dir(packages);
    let b = TestBox::boot();
    let peer = b.add_peer("repo", "203.0.113.10/24", &format!("{REPO_IP}/24"));
    let server = Command::new("ip")
        .args([
            "netns",
            "exec",
            &peer.netns,
            "python3",
            "-m",
            "http.server",
            "8080",
            "--bind",
            REPO_IP,
            "--directory",
        ])
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let repo = Repo(server);
    std::thread::sleep(Duration::from_millis(800));
    b.nsenter_ok(&format!(
        "echo > /etc/apt/sources.list; rm -f /etc/apt/sources.list.d/*; echo 'deb [trusted=yes] http://{REPO_IP}:8080/ ./' > /etc/apt/sources.list.d/local.list; rm -rf /var/lib/apt/lists/*_Packages; mkdir -p /etc/sapari-agent"
    ));
    (b, repo)
}
