//! Directories a user controls (their home, `~/.ssh`, a deploy key's directory), touched by
//! root without following anything the user could have planted there.
//!
//! Interface: the `openat(2)` family through nix. A directory is opened once with
//! `O_DIRECTORY|O_NOFOLLOW` and its owner checked; every file below it is reached relative
//! to that descriptor with `O_NOFOLLOW|O_NONBLOCK` and judged by `fstat` of what was opened
//! (a regular file, owned by the user or root, one link, under a size cap), and every write
//! is a temp file created and renamed inside that same descriptor. So a symlink to
//! /etc/shadow is refused instead of read, a FIFO cannot hang the run, a sparse 1 TiB file
//! cannot exhaust memory, and swapping `~/.ssh` for a link between observe and apply cannot
//! redirect root's write: the write lands in the directory that was checked, or fails.

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow, bail};
use nix::errno::Errno;
use nix::fcntl::{OFlag, openat, renameat};
use nix::sys::stat::{FileStat, Mode, SFlag, fchmod, fstat, fstatat, mkdirat};
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, unlinkat};

use super::files::{FileSpec, FileState, TEMP_PREFIX};

/// Larger than any authorized_keys, known_hosts or ssh config a person writes; a file over
/// this is refused rather than read.
pub const MAX_FILE: u64 = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Other,
}

/// What `lstat` says of an entry: never followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub kind: Kind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u64,
    pub size: u64,
}

impl Meta {
    fn of(st: &FileStat) -> Meta {
        let fmt = SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits());
        let kind = match fmt {
            SFlag::S_IFREG => Kind::File,
            SFlag::S_IFDIR => Kind::Dir,
            SFlag::S_IFLNK => Kind::Symlink,
            _ => Kind::Other,
        };
        Meta {
            kind,
            mode: st.st_mode & 0o7777,
            uid: st.st_uid,
            gid: st.st_gid,
            nlink: st.st_nlink,
            size: st.st_size.max(0) as u64,
        }
    }
}

/// An open directory that belongs to `owner` (or root).
#[derive(Debug)]
pub struct UserDir {
    fd: OwnedFd,
    path: PathBuf,
    owner: u32,
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::File => "a regular file",
        Kind::Dir => "a directory",
        Kind::Symlink => "a symbolic link",
        Kind::Other => "a special file (FIFO, socket or device)",
    }
}

fn owner_ok(meta: &Meta, owner: u32) -> bool {
    meta.uid == owner || meta.uid == 0
}

impl UserDir {
    /// Open `path` as `owner`'s directory. `follow` only for a path root chose (the home in
    /// /etc/passwd): its last component is then followed, everything below never is.
    /// `None` when it does not exist.
    pub fn open(path: &Path, owner: u32, follow: bool) -> Result<Option<UserDir>> {
        let mut flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        if !follow {
            flags |= OFlag::O_NOFOLLOW;
        }
        let fd = match nix::fcntl::open(path, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(None),
            Err(e) => return Err(open_error(path, e)),
        };
        Self::checked(fd, path.to_path_buf(), owner).map(Some)
    }

    fn checked(fd: OwnedFd, path: PathBuf, owner: u32) -> Result<UserDir> {
        let meta = Meta::of(&fstat(fd.as_fd()).map_err(|e| stat_error(&path, e))?);
        if !owner_ok(&meta, owner) {
            bail!(
                "{} is owned by uid {}, not by uid {owner} or root; refusing to use it (fix its owner, e.g. chown {owner} {})",
                path.display(),
                meta.uid,
                path.display()
            );
        }
        Ok(UserDir { fd, path, owner })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn owner(&self) -> u32 {
        self.owner
    }

    fn child(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// The directory itself, as opened.
    pub fn meta(&self) -> Result<Meta> {
        Ok(Meta::of(
            &fstat(self.fd.as_fd()).map_err(|e| stat_error(&self.path, e))?,
        ))
    }

    /// The entry `name` itself (links not followed); `None` when absent.
    pub fn lstat(&self, name: &str) -> Result<Option<Meta>> {
        check_name(name)?;
        match fstatat(
            self.fd.as_fd(),
            name,
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Ok(st) => Ok(Some(Meta::of(&st))),
            Err(Errno::ENOENT) => Ok(None),
            Err(e) => Err(stat_error(&self.child(name), e)),
        }
    }

    /// The subdirectory `name`, which must be a real directory of the same owner (or root).
    pub fn subdir(&self, name: &str) -> Result<Option<UserDir>> {
        check_name(name)?;
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        match openat(self.fd.as_fd(), name, flags, Mode::empty()) {
            Ok(fd) => Self::checked(fd, self.child(name), self.owner).map(Some),
            Err(Errno::ENOENT) => Ok(None),
            Err(e) => Err(self.refusal(name, e)),
        }
    }

    /// Open `name` for reading and judge what was opened, not what the name pointed to a
    /// moment earlier.
    fn open_file(&self, name: &str) -> Result<Option<(std::fs::File, Meta)>> {
        check_name(name)?;
        let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
        let fd = match openat(self.fd.as_fd(), name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(None),
            Err(e) => return Err(self.refusal(name, e)),
        };
        let path = self.child(name);
        let meta = Meta::of(&fstat(fd.as_fd()).map_err(|e| stat_error(&path, e))?);
        if meta.kind != Kind::File {
            bail!(
                "{} is {}, not a regular file; root does not read it. Replace it with a regular file",
                path.display(),
                kind_name(meta.kind)
            );
        }
        if !owner_ok(&meta, self.owner) {
            bail!(
                "{} is owned by uid {}, not by uid {} or root; root does not read it. Fix its owner",
                path.display(),
                meta.uid,
                self.owner
            );
        }
        if meta.nlink != 1 {
            bail!(
                "{} has {} hard links; root reads only a file with one link (it could be another file's contents). Replace it with a copy",
                path.display(),
                meta.nlink
            );
        }
        if meta.size > MAX_FILE {
            bail!(
                "{} is {} bytes, over the {MAX_FILE}-byte limit for files in a user's directory; shorten it",
                path.display(),
                meta.size
            );
        }
        Ok(Some((std::fs::File::from(fd), meta)))
    }

    /// Content, mode and owner of the regular file `name`; `None` when absent, an error
    /// naming the file and the fix for anything else.
    pub fn read(&self, name: &str) -> Result<Option<FileState>> {
        let Some((f, meta)) = self.open_file(name)? else {
            return Ok(None);
        };
        let mut content = Vec::with_capacity(meta.size as usize);
        // The size was checked, but the file can grow after the fstat.
        f.take(MAX_FILE + 1)
            .read_to_end(&mut content)
            .map_err(|e| anyhow!("cannot read {}: {e}", self.child(name).display()))?;
        if content.len() as u64 > MAX_FILE {
            bail!(
                "{} grew past the {MAX_FILE}-byte limit while being read",
                self.child(name).display()
            );
        }
        Ok(Some(FileState {
            content,
            mode: meta.mode,
            uid: meta.uid,
            gid: meta.gid,
        }))
    }

    pub fn read_text(&self, name: &str) -> Result<Option<String>> {
        Ok(self.read(name)?.map(|f| f.text()))
    }

    /// Write `name` atomically inside this directory: a temp file created here (O_EXCL,
    /// never a link), mode and owner set on its descriptor, fsync, renamed over `name`. The
    /// rename replaces a link or a hard link by name, so nothing outside is written through.
    pub(super) fn write(
        &self,
        name: &str,
        content: &[u8],
        spec: FileSpec,
        backup: bool,
    ) -> Result<()> {
        check_name(name)?;
        let path = self.child(name);
        if backup && let Some(old) = self.read(name)? {
            let bak = format!("{name}.sapari-agent.bak");
            let old_spec = FileSpec {
                mode: old.mode,
                uid: old.uid,
                gid: old.gid,
            };
            self.write(&bak, &old.content, old_spec, false)?;
        }
        self.remove_stale_temps();
        let ctx = |e: &dyn std::fmt::Display| anyhow!("cannot write {}: {e}", path.display());
        let tmp = temp_name();
        let flags =
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = openat(
            self.fd.as_fd(),
            tmp.as_str(),
            flags,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(|e| ctx(&e))?;
        let result = (|| {
            let mut f = std::fs::File::from(fd);
            f.write_all(content).map_err(|e| ctx(&e))?;
            fchown(
                f.as_fd(),
                Some(Uid::from_raw(spec.uid)),
                Some(Gid::from_raw(spec.gid)),
            )
            .map_err(|e| ctx(&e))?;
            // After the chown: chown clears setuid/setgid bits, and the mode is ours to set.
            fchmod(f.as_fd(), Mode::from_bits_truncate(spec.mode)).map_err(|e| ctx(&e))?;
            f.sync_all().map_err(|e| ctx(&e))?;
            super::crash::point(|| format!("write {}: before rename", path.display()));
            renameat(self.fd.as_fd(), tmp.as_str(), self.fd.as_fd(), name).map_err(|e| ctx(&e))
        })();
        if result.is_err() {
            let _ = unlinkat(self.fd.as_fd(), tmp.as_str(), UnlinkatFlags::NoRemoveDir);
            return result;
        }
        super::crash::point(|| format!("write {}: before directory fsync", path.display()));
        nix::unistd::fsync(self.fd.as_fd()).map_err(|e| ctx(&e))
    }

    /// Create the subdirectory `name` if missing and give it `spec`; a link or a file of
    /// that name is refused.
    pub(super) fn ensure_subdir(&self, name: &str, spec: FileSpec) -> Result<()> {
        check_name(name)?;
        match mkdirat(self.fd.as_fd(), name, Mode::from_bits_truncate(0o700)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => bail!(
                "cannot create directory {}: {e}",
                self.child(name).display()
            ),
        }
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = openat(self.fd.as_fd(), name, flags, Mode::empty())
            .map_err(|e| self.refusal(name, e))?;
        set_meta(&fd, &self.child(name), spec)
    }

    /// Give the existing entry `name` `spec`, through a descriptor opened without following.
    pub(super) fn set_meta(&self, name: &str, spec: FileSpec) -> Result<()> {
        check_name(name)?;
        let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
        let fd = openat(self.fd.as_fd(), name, flags, Mode::empty())
            .map_err(|e| self.refusal(name, e))?;
        let path = self.child(name);
        // Judge what was opened: a name swapped for a hard link to /etc/shadow after the
        // plan must not be handed to the user by a chown.
        let meta = Meta::of(&fstat(fd.as_fd()).map_err(|e| stat_error(&path, e))?);
        match meta.kind {
            Kind::Dir => {}
            Kind::File if meta.nlink == 1 => {}
            Kind::File => bail!(
                "{} has {} hard links; root changes the owner only of a file with one link. Replace it with a copy",
                path.display(),
                meta.nlink
            ),
            k => bail!(
                "{} is {}; refusing to change it",
                path.display(),
                kind_name(k)
            ),
        }
        set_meta(&fd, &path, spec)
    }

    pub(super) fn remove(&self, name: &str) -> Result<()> {
        check_name(name)?;
        match unlinkat(self.fd.as_fd(), name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => bail!("cannot remove {}: {e}", self.child(name).display()),
        }
    }

    /// Temp files a killed run left here (this directory's, found through its descriptor).
    fn remove_stale_temps(&self) {
        let listing = PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()));
        let Ok(entries) = std::fs::read_dir(listing) else {
            return;
        };
        for e in entries.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with(TEMP_PREFIX) {
                let _ = unlinkat(self.fd.as_fd(), n.as_str(), UnlinkatFlags::NoRemoveDir);
            }
        }
    }

    fn refusal(&self, name: &str, e: Errno) -> anyhow::Error {
        let path = self.child(name);
        // O_NOFOLLOW|O_DIRECTORY on a link fails with ENOTDIR, not ELOOP: ask what it is.
        let kind = self.lstat(name).ok().flatten().map(|m| m.kind);
        match (e, kind) {
            (Errno::ELOOP, _) | (Errno::ENOTDIR, Some(Kind::Symlink)) => anyhow!(
                "{} is a symbolic link; root does not follow links in a user's directory. Replace it with a regular file or directory",
                path.display()
            ),
            (Errno::ENOTDIR, _) => anyhow!("{} is not a directory", path.display()),
            (e, _) => open_error(&path, e),
        }
    }
}

fn set_meta(fd: &OwnedFd, path: &Path, spec: FileSpec) -> Result<()> {
    fchown(
        fd.as_fd(),
        Some(Uid::from_raw(spec.uid)),
        Some(Gid::from_raw(spec.gid)),
    )
    .map_err(|e| anyhow!("cannot chown {}: {e}", path.display()))?;
    fchmod(fd.as_fd(), Mode::from_bits_truncate(spec.mode))
        .map_err(|e| anyhow!("cannot chmod {}: {e}", path.display()))
}

/// Only plain names: a `/` or `..` would walk out of the checked directory.
fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        bail!("internal error: {name:?} is not a plain file name");
    }
    Ok(())
}

fn temp_name() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "{TEMP_PREFIX}{}.{}.{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn open_error(path: &Path, e: Errno) -> anyhow::Error {
    match e {
        Errno::ELOOP => anyhow!(
            "{} is a symbolic link; refusing to follow it. Replace it with a real directory",
            path.display()
        ),
        e => anyhow!("cannot open {}: {e}", path.display()),
    }
}

fn stat_error(path: &Path, e: Errno) -> anyhow::Error {
    anyhow!("cannot inspect {}: {e}", path.display())
}

#[cfg(test)]
mod tests;
