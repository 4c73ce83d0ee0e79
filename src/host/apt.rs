//! Interface to `apt-get`, `dpkg-query` and apt's lists.
//!
//! dpkg's status database and apt's package lists are read as files (no process needed);
//! `apt-get` runs with one set of options for every resource that installs something, so
//! a lock wait or a config-file prompt behaves the same whichever resource hit it.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Result, bail};

use super::{Cmd, FileSpec, Host};

pub const DPKG_STATUS: &str = "/var/lib/dpkg/status";
pub const DPKG_LOCK: &str = "/var/lib/dpkg/lock-frontend";
pub const APT_LISTS: &str = "/var/lib/apt/lists";

/// How long to wait for the dpkg lock where no configuration says otherwise: the default
/// of `packages.lock_timeout`.
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(600);

/// How long apt-get itself waits for a dpkg lock taken after [`wait_for_dpkg`] saw it free
/// (a second apt run that started in between): the value packages and docker always passed.
const APT_LOCK_TIMEOUT: Duration = Duration::from_secs(120);

/// An install or update that runs longer is stuck, not slow.
const APT_TIMEOUT: Duration = Duration::from_secs(1800);

/// Without a pty, dpkg's own messages (which package failed, in which maintainer script,
/// with the script's output) go to apt-get's stderr, so they end up in the error instead of
/// only apt's "Sub-process /usr/bin/dpkg returned an error code (1)".
const DPKG_NO_PTY: [&str; 2] = ["-o", "Dpkg::Use-Pty=0"];

/// Installed packages from dpkg's status database text.
pub fn installed(status: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for stanza in status.split("\n\n") {
        let mut pkg = None;
        let mut ok = false;
        for line in stanza.lines() {
            if let Some(p) = line.strip_prefix("Package: ") {
                pkg = Some(p.trim());
            } else if let Some(s) = line.strip_prefix("Status: ") {
                ok = s.trim() == "install ok installed";
            }
        }
        if let (Some(p), true) = (pkg, ok) {
            out.insert(p.to_string());
        }
    }
    out
}

/// The packages installed now ([`DPKG_STATUS`]; none when it is absent).
pub fn installed_now(host: &Host) -> Result<BTreeSet<String>> {
    Ok(installed(
        &host.read_text(Path::new(DPKG_STATUS))?.unwrap_or_default(),
    ))
}

fn package_lists(dir: &Path) -> impl Iterator<Item = std::fs::DirEntry> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with("_Packages"))
}

/// Age of the newest package list in `dir`; None when there are none.
pub fn lists_age(dir: &Path) -> Option<Duration> {
    let newest = package_lists(dir)
        .filter_map(|e| e.metadata().ok()?.modified().ok())
        .max()?;
    SystemTime::now().duration_since(newest).ok()
}

/// Packages no list in `dir` mentions (read only when something is missing).
pub fn unknown_in_lists(dir: &Path, wanted: &[String]) -> Vec<String> {
    use std::io::BufRead;
    let mut left: BTreeSet<&str> = wanted.iter().map(String::as_str).collect();
    for e in package_lists(dir) {
        if left.is_empty() {
            break;
        }
        // Line by line: a full list is tens of MB, and reading it whole set the agent's
        // peak memory.
        let Ok(f) = std::fs::File::open(e.path()) else {
            continue;
        };
        for line in std::io::BufReader::new(f)
            .split(b'\n')
            .map_while(Result::ok)
        {
            if let Some(name) = line.strip_prefix(b"Package: ") {
                if let Ok(name) = std::str::from_utf8(name) {
                    left.remove(name.trim_end());
                }
                if left.is_empty() {
                    break;
                }
            }
        }
    }
    left.into_iter().map(str::to_string).collect()
}

/// At first boot cloud-init and unattended-upgrades hold the dpkg lock for minutes: wait for
/// it, telling `progress` every 10 s, then fail naming the holder.
pub async fn wait_for_dpkg(
    host: &Host,
    timeout: Duration,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<()> {
    let start = Instant::now();
    let mut next = Duration::ZERO;
    while let Some((pid, name)) = host.lock_holder(Path::new(DPKG_LOCK))? {
        let waited = start.elapsed();
        if waited >= timeout {
            bail!(
                "the dpkg lock ({DPKG_LOCK}) is still held by {name} (pid {pid}) after {}s; let it finish (first boot: cloud-init or unattended-upgrades) and converge again",
                timeout.as_secs()
            );
        }
        if waited >= next {
            progress(&format!(
                "waiting for the dpkg lock held by {name} (pid {pid}), {}s of {}s",
                waited.as_secs(),
                timeout.as_secs()
            ));
            next += Duration::from_secs(10);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(())
}

/// `apt-get` with the options every run passes.
fn apt_get() -> Cmd {
    Cmd::new("apt-get")
        .args(["-q", "-y", "-o"])
        .arg(format!(
            "DPkg::Lock::Timeout={}",
            APT_LOCK_TIMEOUT.as_secs()
        ))
        .args(DPKG_NO_PTY)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .timeout(APT_TIMEOUT)
}

pub fn update_cmd() -> Cmd {
    apt_get().arg("update")
}

/// Installs without recommends, and keeps a config file the admin changed (no prompt).
pub fn install_cmd(packages: &[String]) -> Cmd {
    apt_get()
        .args([
            "install",
            "--no-install-recommends",
            "-o",
            "Dpkg::Options::=--force-confdef",
            "-o",
            "Dpkg::Options::=--force-confold",
        ])
        .args(packages.iter().map(String::as_str))
}

/// `apt-get update`.
pub async fn update(host: &Host) -> Result<()> {
    host.run(&update_cmd()).await?;
    Ok(())
}

/// `apt-get install` of `packages`, in one transaction.
pub async fn install(host: &Host, packages: &[String]) -> Result<()> {
    host.run(&install_cmd(packages)).await?;
    Ok(())
}

/// A third-party apt repository: the key apt checks its signatures with, and the sources
/// file that names it (whose `Signed-By`/`signed-by=` points at `keyring`).
pub struct Repo<'a> {
    pub keyring: &'a Path,
    /// Already pinned by the caller: only a key with the vendor's published fingerprint
    /// may get here.
    pub key: &'a [u8],
    pub sources: &'a Path,
    pub sources_text: &'a str,
}

/// Add `repo`: the keyring first (its directory made if missing), then the sources file, so
/// apt never sees a source without its key. A file that already holds its content is left
/// alone.
pub fn add_repo(host: &Host, repo: &Repo) -> Result<()> {
    let current = |p: &Path| -> Result<Option<Vec<u8>>> { Ok(host.read(p)?.map(|f| f.content)) };
    let spec = FileSpec::root(0o644);
    if current(repo.keyring)?.as_deref() != Some(repo.key) {
        if let Some(dir) = repo.keyring.parent()
            && !dir.is_dir()
        {
            host.ensure_dir(dir, FileSpec::root(0o755))?;
        }
        host.write(repo.keyring, repo.key, spec, false)?;
    }
    if current(repo.sources)?.as_deref() != Some(repo.sources_text.as_bytes()) {
        host.write(repo.sources, repo.sources_text.as_bytes(), spec, false)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_packages_are_found_line_by_line() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path()
                .join("deb_dists_bookworm_main_binary-amd64_Packages"),
            "Package: fail2ban\nVersion: 1.0\n\nPackage: ufw\r\nVersion: 0.36\n",
        )
        .unwrap();
        std::fs::write(d.path().join("lock"), "").unwrap();
        let wanted = ["fail2ban", "ufw", "nope", "fail2"].map(String::from);
        assert_eq!(unknown_in_lists(d.path(), &wanted), ["fail2", "nope"]);
        assert!(lists_age(d.path()).is_some());
        assert!(lists_age(&d.path().join("none")).is_none());
        assert_eq!(
            unknown_in_lists(&d.path().join("none"), &wanted[..1]),
            ["fail2ban"]
        );
    }

    const STATUS: &str = "Package: bash\nStatus: install ok installed\nVersion: 5\n\nPackage: fail2ban\nStatus: deinstall ok config-files\n\nPackage: unattended-upgrades\nStatus: install ok installed\n";

    #[test]
    fn dpkg_status_parsing_ignores_removed_packages() {
        let i = installed(STATUS);
        assert!(i.contains("bash") && i.contains("unattended-upgrades"));
        assert!(
            !i.contains("fail2ban"),
            "config-files only is not installed"
        );
    }

    #[test]
    fn every_apt_get_run_has_the_same_options() {
        assert_eq!(
            update_cmd().to_string(),
            "apt-get -q -y -o DPkg::Lock::Timeout=120 -o Dpkg::Use-Pty=0 update"
        );
        let i = install_cmd(&["ufw".into(), "fail2ban".into()]).to_string();
        assert!(
            i.starts_with("apt-get -q -y -o DPkg::Lock::Timeout=120 -o Dpkg::Use-Pty=0 install --no-install-recommends -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold ufw fail2ban"),
            "{i}"
        );
    }

    #[test]
    fn add_repo_writes_only_what_differs_key_first() {
        let d = tempfile::tempdir().unwrap();
        let host = Host::new(super::super::Access::ReadOnly);
        let keyring = d.path().join("keyrings/k.gpg");
        let sources = d.path().join("k.sources");
        std::fs::create_dir(d.path().join("keyrings")).unwrap();
        std::fs::write(&keyring, b"key").unwrap();
        std::fs::write(&sources, b"deb x\n").unwrap();
        let repo = Repo {
            keyring: &keyring,
            key: b"key",
            sources: &sources,
            sources_text: "deb x\n",
        };
        // Read-only: any write would fail, so passing means nothing was written.
        add_repo(&host, &repo).unwrap();
        let changed = Repo {
            sources_text: "deb y\n",
            ..repo
        };
        let e = add_repo(&host, &changed).unwrap_err().to_string();
        assert!(e.contains("k.sources"), "{e}");
    }
}
