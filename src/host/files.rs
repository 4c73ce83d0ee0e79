//! Files: reads that treat "absent" as a value, and atomic writes (temp file in the same
//! directory, fsync, mode and owner set before the rename, rename, fsync of the directory),
//! so a crash leaves either the old or the new content, never a torn file.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Prefix of our temp files, so leftovers from a killed run can be recognised and removed.
pub const TEMP_PREFIX: &str = ".sapari-agent-tmp.";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileSpec {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

impl FileSpec {
    pub const fn root(mode: u32) -> Self {
        Self {
            mode,
            uid: 0,
            gid: 0,
        }
    }
}

impl std::fmt::Display for FileSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04o} {}:{}", self.mode, self.uid, self.gid)
    }
}

/// What an entry is (the kinds `host::userdir` reads too).
pub use crate::host::userdir::Kind;

/// What is at a path: its kind, its permission bits and owner, and its size in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub kind: Kind,
    pub spec: FileSpec,
    pub size: u64,
}

impl Entry {
    fn of(m: &fs::Metadata) -> Self {
        let t = m.file_type();
        let kind = if t.is_symlink() {
            Kind::Symlink
        } else if t.is_dir() {
            Kind::Dir
        } else if t.is_file() {
            Kind::File
        } else {
            Kind::Other
        };
        Entry {
            kind,
            spec: FileSpec {
                mode: m.mode() & 0o7777,
                uid: m.uid(),
                gid: m.gid(),
            },
            size: m.len(),
        }
    }
}

/// Up to `buf.len()` bytes from the start of `path`; 0 when it cannot be read (a caller
/// that only looks for a signature treats both the same).
pub fn read_head(path: &Path, buf: &mut [u8]) -> usize {
    use std::io::Read;
    File::open(path).and_then(|mut f| f.read(buf)).unwrap_or(0)
}

/// What is at `path` itself (lstat: a link is reported as a link); None when nothing is.
pub fn inspect(path: &Path) -> Result<Option<Entry>> {
    entry_or_none(path, fs::symlink_metadata(path))
}

/// What `path` points to (stat: links followed), for paths root chose; None when absent.
pub fn inspect_target(path: &Path) -> Result<Option<Entry>> {
    entry_or_none(path, fs::metadata(path))
}

/// [`inspect_target`] with the io error as it is, for callers that word their own message.
pub fn stat(path: &Path) -> io::Result<Entry> {
    fs::metadata(path).map(|m| Entry::of(&m))
}

/// Whether `path` is a directory (links followed); false when it cannot be inspected.
pub fn is_dir(path: &Path) -> bool {
    path.is_dir()
}

/// Whether anything is at `path` (links followed); false when it cannot be inspected.
pub fn exists(path: &Path) -> bool {
    path.exists()
}

/// The whole file as UTF-8, with the io error as it is, for callers that word their own
/// message.
pub fn read_to_string(path: &Path) -> io::Result<String> {
    fs::read_to_string(path)
}

fn entry_or_none(path: &Path, m: io::Result<fs::Metadata>) -> Result<Option<Entry>> {
    match m {
        Ok(m) => Ok(Some(Entry::of(&m))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow::anyhow!("cannot inspect {}: {e}", path.display())),
    }
}

/// What is on disk at a path, as far as the planners care.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileState {
    pub content: Vec<u8>,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

impl FileState {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.content).into_owned()
    }
}

pub fn read_opt(path: &Path) -> Result<Option<FileState>> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot open {}", path.display())),
    };
    let meta = f
        .metadata()
        .with_context(|| format!("cannot stat {}", path.display()))?;
    let mut content = Vec::with_capacity(meta.len() as usize);
    io::Read::read_to_end(&mut f, &mut content)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(Some(FileState {
        content,
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
    }))
}

/// Owner root (or the user running this, for read-only commands) and not writable by
/// group or others: the same rule as agent.toml, for files whose content decides what root
/// does (the state directory's lists, compose.env, confirm records).
fn trusted(what: &Path, uid: u32, mode: u32) -> Result<()> {
    let me = nix::unistd::geteuid().as_raw();
    if uid != 0 && uid != me {
        anyhow::bail!(
            "{} is owned by uid {uid}; it decides what root does, so only root may own it (fix: chown root:root {})",
            what.display(),
            what.display()
        );
    }
    if mode & 0o022 != 0 {
        anyhow::bail!(
            "{} has mode {:04o}: users other than its owner can write it, and it decides what root does (fix: chmod go-w {})",
            what.display(),
            mode & 0o7777,
            what.display()
        );
    }
    Ok(())
}

/// A file of the agent's state directory: refused, not read, when it or its directory
/// could have been written by someone other than root, or when it is a link.
pub fn read_state(path: &Path) -> Result<Option<String>> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    match fs::symlink_metadata(dir) {
        Ok(m) => trusted(dir, m.uid(), m.mode())?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot inspect {}", dir.display())),
    }
    use std::os::unix::fs::OpenOptionsExt;
    let f = match fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(e).with_context(|| {
                format!("cannot open {} (links are refused here)", path.display())
            });
        }
    };
    let m = f
        .metadata()
        .with_context(|| format!("cannot stat {}", path.display()))?;
    if !m.is_file() {
        anyhow::bail!("{} is not a regular file", path.display());
    }
    trusted(path, m.uid(), m.mode())?;
    let mut text = String::new();
    io::Read::read_to_string(&mut &f, &mut text)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(Some(text))
}

pub fn read_text_opt(path: &Path) -> Result<Option<String>> {
    Ok(read_opt(path)?.map(|f| f.text()))
}

pub fn backup_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".sapari-agent.bak");
    PathBuf::from(s)
}

/// Replace `path` atomically. With `backup`, the previous content is first copied to
/// `<path>.sapari-agent.bak` (itself written atomically).
pub fn write_atomic(path: &Path, content: &[u8], spec: FileSpec, backup: bool) -> Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if backup && let Some(old) = read_opt(path)? {
        write_atomic(
            &backup_path(path),
            &old.content,
            FileSpec {
                mode: old.mode,
                uid: old.uid,
                gid: old.gid,
            },
            false,
        )?;
    }
    // A run killed between creating its temp file and the rename leaves the temp behind
    // (harmless: no reader includes a dot-file of ours, but litter). Runs hold the lock, so
    // any temp of ours here is such a leftover; the write that was cut short is redone now.
    remove_stale_temps(dir);
    let ctx = || format!("cannot write {}", path.display());
    let mut tmp = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .tempfile_in(dir)
        .with_context(ctx)?;
    tmp.write_all(content).with_context(ctx)?;
    let f = tmp.as_file();
    f.set_permissions(fs::Permissions::from_mode(spec.mode))
        .with_context(ctx)?;
    std::os::unix::fs::fchown(f, Some(spec.uid), Some(spec.gid)).with_context(ctx)?;
    f.sync_all().with_context(ctx)?;
    super::crash::point(|| format!("write {}: before rename", path.display()));
    tmp.persist(path).map_err(|e| e.error).with_context(ctx)?;
    super::crash::point(|| format!("write {}: before directory fsync", path.display()));
    sync_dir(dir)
}

pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync directory {}", dir.display()))
}

/// Remove temp files a killed run may have left next to `path`.
pub fn remove_stale_temps(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
                let _ = fs::remove_file(e.path());
            }
        }
    }
}

/// Remove directories named `<prefix>*` in `dir` that a killed run left (the private
/// directories of validated writes in /tmp). Only root's: in a world-writable directory,
/// another user's directory of that name is theirs.
pub fn remove_stale_dirs(dir: &Path, prefix: &str) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let me = nix::unistd::geteuid().as_raw();
    for e in entries.flatten() {
        if !e.file_name().to_string_lossy().starts_with(prefix) {
            continue;
        }
        // symlink_metadata: a symlink of that name is not followed, only left alone.
        if let Ok(m) = fs::symlink_metadata(e.path())
            && m.is_dir()
            && m.uid() == me
        {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

/// Whether this process runs as root (effective uid 0): what decides if root-only files such as
/// sshd's host keys can be read.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> FileSpec {
        FileSpec {
            mode: 0o640,
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
        }
    }

    #[test]
    fn writes_content_mode_and_leaves_no_temp() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        write_atomic(&p, b"one\n", me(), false).unwrap();
        let s = read_opt(&p).unwrap().unwrap();
        assert_eq!(s.content, b"one\n");
        assert_eq!(s.mode, 0o640);
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn backup_keeps_previous_content() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        write_atomic(&p, b"old", me(), false).unwrap();
        write_atomic(&p, b"new", me(), true).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"new");
        assert_eq!(fs::read(backup_path(&p)).unwrap(), b"old");
    }

    #[test]
    fn absent_is_none_and_stale_temps_are_removed() {
        let d = tempfile::tempdir().unwrap();
        assert!(read_opt(&d.path().join("nope")).unwrap().is_none());
        fs::write(d.path().join(format!("{TEMP_PREFIX}abc")), b"x").unwrap();
        fs::write(d.path().join("keep"), b"x").unwrap();
        remove_stale_temps(d.path());
        let names: Vec<_> = fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("keep")]);
    }

    #[test]
    fn a_write_removes_the_temps_a_killed_run_left_in_its_directory() {
        let d = tempfile::tempdir().unwrap();
        let stale = d.path().join(format!("{TEMP_PREFIX}killed"));
        fs::write(&stale, b"half").unwrap();
        fs::write(d.path().join("other"), b"x").unwrap();
        write_atomic(&d.path().join("f"), b"new", me(), true).unwrap();
        assert!(!stale.exists(), "the killed run's temp is still there");
        let mut names: Vec<_> = fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["f", "other"]);
    }

    #[test]
    fn stale_candidate_directories_are_removed_symlinks_are_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let stale = d.path().join("sapari-agent-candidate.abc");
        fs::create_dir(&stale).unwrap();
        fs::write(stale.join("90-sapari-deploy"), b"x").unwrap();
        let target = d.path().join("precious");
        fs::create_dir(&target).unwrap();
        fs::write(target.join("keep"), b"x").unwrap();
        std::os::unix::fs::symlink(&target, d.path().join("sapari-agent-candidate.link")).unwrap();
        fs::create_dir(d.path().join("unrelated")).unwrap();
        remove_stale_dirs(d.path(), "sapari-agent-candidate.");
        assert!(!stale.exists());
        assert!(target.join("keep").exists(), "followed a symlink");
        assert!(d.path().join("sapari-agent-candidate.link").is_symlink());
        assert!(d.path().join("unrelated").exists());
    }

    #[test]
    fn failed_write_leaves_old_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("missing-dir").join("f");
        assert!(write_atomic(&p, b"x", me(), false).is_err());
        assert!(!p.exists());
    }

    #[test]
    fn state_files_others_could_write_are_refused() {
        let d = tempfile::tempdir().unwrap();
        fs::set_permissions(d.path(), fs::Permissions::from_mode(0o700)).unwrap();
        let p = d.path().join("lists");
        assert!(read_state(&p).unwrap().is_none());
        write_atomic(
            &p,
            b"1.2.3.0/24\n",
            FileSpec {
                mode: 0o600,
                ..me()
            },
            false,
        )
        .unwrap();
        assert_eq!(read_state(&p).unwrap().as_deref(), Some("1.2.3.0/24\n"));
        fs::set_permissions(&p, fs::Permissions::from_mode(0o666)).unwrap();
        let e = read_state(&p).unwrap_err().to_string();
        assert!(e.contains("chmod go-w"), "{e}");
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
        fs::set_permissions(d.path(), fs::Permissions::from_mode(0o777)).unwrap();
        assert!(
            read_state(&p).is_err(),
            "a world-writable directory lets anyone swap the file"
        );
        fs::set_permissions(d.path(), fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::symlink(&p, d.path().join("link")).unwrap();
        assert!(read_state(&d.path().join("link")).is_err());
    }
}
