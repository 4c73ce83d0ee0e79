//! The only code that touches the machine. Resources observe and change the system through
//! a `Host`; a read-only `Host` (used by `plan` and `status`) refuses every change, so a
//! bug in a resource cannot turn a plan into a converge.

// clippy.toml forbids filesystem, process, signal and HTTP calls everywhere else: this is
// the layer that wraps them.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

pub mod accounts;
pub mod apt;
pub mod command;
pub mod compose;
pub mod crash;
pub mod files;
pub mod http;
pub mod iptables;
pub mod lock;
pub mod nft;
pub mod sockets;
pub mod state_dir;
pub mod sys;
pub mod systemctl;
pub mod systemd;
pub mod userdir;

use std::path::Path;

use anyhow::{Result, bail};

pub use command::{Cmd, CmdOutput};
pub use files::{FileSpec, FileState};
pub use userdir::UserDir;

/// Prefix of the private directories validated writes assemble their candidate in.
pub const CANDIDATE_PREFIX: &str = "sapari-agent-candidate.";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    ReadOnly,
    ReadWrite,
}

#[derive(Debug)]
pub struct Host {
    access: Access,
}

impl Host {
    pub fn new(access: Access) -> Self {
        Self { access }
    }

    fn guard(&self, what: &dyn std::fmt::Display) -> Result<()> {
        if self.access == Access::ReadOnly {
            bail!("internal error: attempted to change the system ({what}) in a read-only run");
        }
        crash::point(|| format!("before {what}"));
        Ok(())
    }

    // ---- reads ----

    pub fn read(&self, path: &Path) -> Result<Option<FileState>> {
        files::read_opt(path)
    }

    pub fn read_text(&self, path: &Path) -> Result<Option<String>> {
        files::read_text_opt(path)
    }

    /// A file of the agent's state directory, with agent.toml's ownership rule
    /// ([`files::read_state`]).
    pub fn read_state(&self, path: &Path) -> Result<Option<String>> {
        files::read_state(path)
    }

    /// A directory `uid` controls, opened for reads and writes that never follow a link
    /// below it ([`userdir`]). `follow` only for a path root chose, such as the home
    /// directory from /etc/passwd.
    pub fn user_dir(&self, path: &Path, uid: u32, follow: bool) -> Result<Option<UserDir>> {
        UserDir::open(path, uid, follow)
    }

    /// Names of the entries of a directory, sorted; empty when the directory does not exist.
    pub fn list_dir(&self, path: &Path) -> Result<Vec<String>> {
        let rd = match std::fs::read_dir(path) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(
                    anyhow::Error::new(e).context(format!("cannot list {}", path.display()))
                );
            }
        };
        let mut names: Vec<String> = rd
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        Ok(names)
    }

    /// Run a command that only observes.
    pub async fn query(&self, cmd: &Cmd) -> Result<CmdOutput> {
        Ok(cmd.output().await?)
    }

    /// /etc/passwd and /etc/group as they are now.
    pub fn accounts(&self) -> Result<accounts::Accounts> {
        let passwd = self
            .read_text(Path::new("/etc/passwd"))?
            .unwrap_or_default();
        let group = self.read_text(Path::new("/etc/group"))?.unwrap_or_default();
        Ok(accounts::Accounts {
            users: accounts::parse_passwd(&passwd),
            groups: accounts::parse_group(&group),
        })
    }

    /// `ID` and `VERSION_CODENAME` from /etc/os-release (empty when absent).
    pub fn os_release(&self) -> Result<(String, String)> {
        let text = self
            .read_text(Path::new("/etc/os-release"))?
            .unwrap_or_default();
        let var = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{k}=")))
                .map(|v| v.trim_matches('"').to_string())
                .unwrap_or_default()
        };
        Ok((var("ID"), var("VERSION_CODENAME")))
    }

    pub fn hostname(&self) -> Result<String> {
        sys::hostname()
    }

    pub fn clock(&self) -> Result<sys::ClockState> {
        sys::clock_state()
    }

    pub fn lock_holder(&self, path: &Path) -> Result<Option<(i32, String)>> {
        sys::lock_holder(path)
    }

    pub fn memory(&self) -> Result<sys::Memory> {
        sys::memory()
    }

    pub fn fs_type(&self, path: &Path) -> Result<sys::FsKind> {
        sys::fs_type(path)
    }

    /// `SSH_CONNECTION` of the session this run came from, looking through `sudo`.
    pub fn ssh_connection(&self) -> Option<String> {
        sys::ssh_connection()
    }

    /// A process named `comm` runs in this network namespace.
    pub fn process_in_own_netns(&self, comm: &str) -> bool {
        sys::process_in_own_netns(comm)
    }

    /// Sockets on `port` that accept new peers, in this network namespace.
    pub fn listeners(&self, port: u16) -> Result<Vec<sockets::Listener>> {
        sockets::listeners(port)
    }

    pub fn systemd_booted(&self) -> bool {
        systemd::booted()
    }

    pub fn unit_installed(&self, unit: &str) -> bool {
        systemd::unit_installed(unit)
    }

    pub fn program_exists(&self, name: &str) -> bool {
        [
            "/usr/local/sbin",
            "/usr/local/bin",
            "/usr/sbin",
            "/usr/bin",
            "/sbin",
            "/bin",
        ]
        .iter()
        .any(|d| Path::new(d).join(name).exists())
    }

    // ---- changes ----

    pub async fn run(&self, cmd: &Cmd) -> Result<CmdOutput> {
        self.guard(cmd)?;
        log::info!("running {cmd}");
        let out = cmd.clone().mutating().run().await?;
        crash::point(|| format!("after {cmd}"));
        Ok(out)
    }

    pub fn write(&self, path: &Path, content: &[u8], spec: FileSpec, backup: bool) -> Result<()> {
        self.guard(&path.display())?;
        log::info!("writing {}", path.display());
        files::write_atomic(path, content, spec, backup)
    }

    /// Install `content` at `path` only if `validate(candidate)` accepts it. The candidate is
    /// written with the final mode and owner in a private directory first, so a file the
    /// validator rejects never reaches `path`.
    pub async fn write_validated(
        &self,
        path: &Path,
        content: &[u8],
        spec: FileSpec,
        backup: bool,
        validate: impl Fn(&Path) -> Cmd,
    ) -> Result<()> {
        self.guard(&path.display())?;
        // A run killed while its candidate existed left the directory behind; the install
        // it was validating did not happen, so that run's redo passes here.
        files::remove_stale_dirs(&std::env::temp_dir(), CANDIDATE_PREFIX);
        let dir = tempfile::Builder::new()
            .prefix(CANDIDATE_PREFIX)
            .tempdir()
            .map_err(|e| anyhow::anyhow!("cannot create a temporary directory: {e}"))?;
        let name = path
            .file_name()
            .unwrap_or(std::ffi::OsStr::new("candidate"));
        let candidate = dir.path().join(name);
        files::write_atomic(&candidate, content, spec, false)?;
        let cmd = validate(&candidate);
        let verdict = cmd.run().await;
        // Gone before the install: once the file is in place a rerun has no reason to come
        // back here, so a candidate still on disk then would never be cleaned up.
        let _ = dir.close();
        if let Err(e) = verdict {
            anyhow::bail!(
                "refusing to install {}: the candidate was rejected: {e}",
                path.display()
            );
        }
        self.write(path, content, spec, backup)
    }

    pub fn remove_file(&self, path: &Path) -> Result<()> {
        self.guard(&path.display())?;
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(anyhow::Error::new(e).context(format!("cannot remove {}", path.display())))
            }
            _ => Ok(()),
        }
    }

    /// Remove a directory and everything below it (absent is fine).
    pub fn remove_tree(&self, path: &Path) -> Result<()> {
        self.guard(&path.display())?;
        match std::fs::remove_dir_all(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(anyhow::Error::new(e).context(format!("cannot remove {}", path.display())))
            }
            _ => Ok(()),
        }
    }

    /// Write `name` inside a user's directory (see [`userdir`]): never through a link, and
    /// into the directory that was checked even if its path was swapped since.
    pub fn write_in(
        &self,
        dir: &UserDir,
        name: &str,
        content: &[u8],
        spec: FileSpec,
        backup: bool,
    ) -> Result<()> {
        let path = dir.path().join(name);
        self.guard(&path.display())?;
        log::info!("writing {}", path.display());
        dir.write(name, content, spec, backup)
    }

    /// Create the directory `name` in a user's directory if missing, with `spec`.
    pub fn ensure_dir_in(&self, dir: &UserDir, name: &str, spec: FileSpec) -> Result<()> {
        self.guard(&dir.path().join(name).display())?;
        dir.ensure_subdir(name, spec)
    }

    /// Set mode and owner of `name` in a user's directory, refusing a link.
    pub fn set_meta_in(&self, dir: &UserDir, name: &str, spec: FileSpec) -> Result<()> {
        self.guard(&dir.path().join(name).display())?;
        dir.set_meta(name, spec)
    }

    pub fn remove_in(&self, dir: &UserDir, name: &str) -> Result<()> {
        self.guard(&dir.path().join(name).display())?;
        dir.remove(name)
    }

    /// An empty root-only marker file (its directory made if missing): "written but not
    /// loaded yet" for sshd and ufw.
    pub fn write_marker(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent() {
            self.ensure_dir(dir, FileSpec::root(0o700))?;
        }
        self.write(path, b"", FileSpec::root(0o600), false)
    }

    pub fn set_hostname(&self, name: &str) -> Result<()> {
        self.guard(&"sethostname")?;
        sys::set_hostname(name)
    }

    pub fn swapon(&self, path: &Path) -> Result<()> {
        self.guard(&"swapon")?;
        sys::swapon(path)
    }

    pub fn swapoff(&self, path: &Path) -> Result<()> {
        self.guard(&"swapoff")?;
        sys::swapoff(path)
    }

    /// Create (or truncate) `path` as an empty root-owned 0600 file.
    pub fn create_private_file(&self, path: &Path) -> Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        self.guard(&path.display())?;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", path.display()))?;
        std::os::unix::fs::fchown(&f, Some(0), Some(0))
            .map_err(|e| anyhow::anyhow!("cannot chown {}: {e}", path.display()))?;
        Ok(())
    }

    /// Create `path` (not its parents) if missing, then set mode and owner.
    pub fn ensure_dir(&self, path: &Path, spec: FileSpec) -> Result<()> {
        self.guard(&path.display())?;
        match std::fs::create_dir(path) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                return Err(anyhow::anyhow!(
                    "cannot create directory {}: {e}",
                    path.display()
                ));
            }
            _ => {}
        }
        self.set_owner_mode(path, Some((spec.uid, spec.gid)), Some(spec.mode))
    }

    pub fn allocate(&self, path: &Path, size: u64) -> Result<()> {
        self.guard(&path.display())?;
        sys::allocate(path, size)
    }

    pub fn chmod(&self, path: &Path, mode: u32) -> Result<()> {
        self.set_owner_mode(path, None, Some(mode))
    }

    pub fn chown(&self, path: &Path, uid: u32, gid: u32) -> Result<()> {
        self.set_owner_mode(path, Some((uid, gid)), None)
    }

    /// Owner and mode are set through a descriptor opened with O_NOFOLLOW: in a directory a
    /// user controls (their ~/.ssh), a file swapped for a symlink must not redirect root's
    /// chown to /etc/shadow.
    fn set_owner_mode(
        &self,
        path: &Path,
        owner: Option<(u32, u32)>,
        mode: Option<u32>,
    ) -> Result<()> {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        self.guard(&path.display())?;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path)
            .map_err(|e| {
                anyhow::anyhow!("cannot open {} (symlinks are refused): {e}", path.display())
            })?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::fchown(&f, Some(uid), Some(gid))
                .map_err(|e| anyhow::anyhow!("cannot chown {}: {e}", path.display()))?;
        }
        if let Some(mode) = mode {
            f.set_permissions(std::fs::Permissions::from_mode(mode))
                .map_err(|e| anyhow::anyhow!("cannot chmod {}: {e}", path.display()))?;
        }
        Ok(())
    }
}

/// A private directory under [`CANDIDATE_PREFIX`] where a configuration made of several
/// files (sshd's main file and its drop-ins) is assembled for its validator to judge as a
/// whole. Nothing in it is ever installed; it is removed when dropped.
#[derive(Debug)]
pub struct CandidateTree {
    dir: tempfile::TempDir,
}

impl Host {
    /// An empty [`CandidateTree`]. Refused in a read-only run like every change, but without
    /// a crash point: the tree is private, and a run killed while it exists left nothing
    /// installed, so the next candidate's stale-directory cleanup is all it needs.
    pub fn candidate_tree(&self) -> Result<CandidateTree> {
        if self.access == Access::ReadOnly {
            bail!(
                "internal error: attempted to change the system (candidate tree) in a read-only run"
            );
        }
        files::remove_stale_dirs(&std::env::temp_dir(), CANDIDATE_PREFIX);
        // The caller names what the directory was for.
        let dir = tempfile::Builder::new()
            .prefix(CANDIDATE_PREFIX)
            .tempdir()?;
        Ok(CandidateTree { dir })
    }
}

impl CandidateTree {
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Create the directory `rel` (relative to the tree; its parent must exist).
    pub fn create_dir(&self, rel: &Path) -> std::io::Result<()> {
        std::fs::create_dir(self.dir.path().join(rel))
    }

    /// Write the file `rel` (relative to the tree) with the default mode.
    pub fn write(&self, rel: &Path, content: &[u8]) -> std::io::Result<()> {
        std::fs::write(self.dir.path().join(rel), content)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn read_only_host_refuses_every_change() {
        let h = Host::new(Access::ReadOnly);
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        assert!(h.write(&p, b"x", FileSpec::root(0o600), false).is_err());
        assert!(h.run(&Cmd::new("true")).await.is_err());
        assert!(h.set_hostname("x").is_err());
        assert!(h.swapon(&p).is_err());
        assert!(h.create_private_file(&p).is_err());
        assert!(h.remove_tree(d.path()).is_err());
        assert!(!p.exists());
        assert!(h.query(&Cmd::new("true")).await.is_ok());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn validated_write_installs_after_its_candidate_is_gone() {
        let h = Host::new(Access::ReadWrite);
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        let me = FileSpec {
            mode: 0o600,
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
        };
        let seen = std::sync::Mutex::new(None);
        h.write_validated(&p, b"ok", me, false, |c| {
            *seen.lock().unwrap() = Some(c.parent().unwrap().to_path_buf());
            Cmd::new("test").args(["-s", &c.to_string_lossy()])
        })
        .await
        .unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"ok");
        let cand = seen.lock().unwrap().clone().unwrap();
        assert!(
            cand.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(CANDIDATE_PREFIX)
        );
        assert!(!cand.exists(), "candidate directory left behind");
        let e = h
            .write_validated(&p, b"bad", me, false, |_| Cmd::new("false"))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("rejected"), "{e}");
        assert_eq!(std::fs::read(&p).unwrap(), b"ok");
    }

    #[test]
    fn owner_and_mode_changes_refuse_symlinks() {
        use std::os::unix::fs::PermissionsExt;
        let h = Host::new(Access::ReadWrite);
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("target");
        std::fs::write(&target, b"x").unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(h.chmod(&link, 0o666).is_err());
        let mode = std::fs::metadata(&target).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the symlink's target must not change");
        h.chmod(&target, 0o640).unwrap();
        assert_eq!(
            std::fs::metadata(&target).unwrap().permissions().mode() & 0o777,
            0o640
        );
        let me = FileSpec {
            mode: 0o700,
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
        };
        let dir = d.path().join("sub");
        h.ensure_dir(&dir, me).unwrap();
        assert_eq!(
            std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        std::os::unix::fs::symlink(&dir, d.path().join("dirlink")).unwrap();
        assert!(h.ensure_dir(&d.path().join("dirlink"), me).is_err());
    }
}
