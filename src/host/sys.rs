//! Kernel interfaces the agent uses directly (no external command needed):
//! hostname, swap, filesystem type, memory figures and the NTP synchronisation state.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use anyhow::{Context, Result, bail};

pub fn hostname() -> Result<String> {
    Ok(nix::unistd::gethostname()
        .context("gethostname")?
        .to_string_lossy()
        .into_owned())
}

pub fn set_hostname(name: &str) -> Result<()> {
    nix::unistd::sethostname(name).with_context(|| format!("sethostname({name})"))
}

fn cpath(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .with_context(|| format!("path {} contains a NUL byte", path.display()))
}

pub fn swapon(path: &Path) -> Result<()> {
    let c = cpath(path)?;
    // SAFETY: c is a valid NUL-terminated path for the duration of the call.
    if unsafe { libc::swapon(c.as_ptr(), 0) } != 0 {
        let e = std::io::Error::last_os_error();
        let hint = match e.raw_os_error() {
            Some(libc::EINVAL) => {
                ": the filesystem cannot hold swap (overlay, tmpfs, a file with holes, or btrfs copy-on-write)"
            }
            Some(libc::EPERM) => ": not permitted (not root, or a container that filters swapon)",
            _ => "",
        };
        bail!("swapon {} failed: {e}{hint}", path.display());
    }
    Ok(())
}

pub fn swapoff(path: &Path) -> Result<()> {
    let c = cpath(path)?;
    // SAFETY: as above.
    if unsafe { libc::swapoff(c.as_ptr()) } != 0 {
        let e = std::io::Error::last_os_error();
        bail!("swapoff {} failed: {e}", path.display());
    }
    Ok(())
}

/// Allocate real blocks (swap refuses files with holes). Falls back to writing zeros
/// where the filesystem has no fallocate.
pub fn allocate(path: &Path, size: u64) -> Result<()> {
    use std::io::Write;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match nix::fcntl::fallocate(
        &f,
        nix::fcntl::FallocateFlags::empty(),
        0,
        size as libc::off_t,
    ) {
        Ok(()) => {}
        Err(nix::errno::Errno::EOPNOTSUPP) => {
            let zeros = vec![0u8; 1 << 20];
            let mut w = std::io::BufWriter::new(&f);
            let mut left = size;
            while left > 0 {
                let n = left.min(zeros.len() as u64) as usize;
                w.write_all(&zeros[..n])
                    .with_context(|| format!("cannot write {}", path.display()))?;
                left -= n as u64;
            }
            w.flush()?;
        }
        Err(e) => {
            let hint = if e == nix::errno::Errno::ENOSPC {
                " (not enough free space)"
            } else {
                ""
            };
            bail!(
                "cannot allocate {size} bytes for {}: {e}{hint}",
                path.display()
            );
        }
    }
    f.sync_all()
        .with_context(|| format!("cannot sync {}", path.display()))
}

/// The filesystem holding `path` (or its nearest existing ancestor), by statfs magic.
pub fn fs_type(path: &Path) -> Result<FsKind> {
    let mut p = path;
    while !p.exists() {
        p = p.parent().unwrap_or(Path::new("/"));
    }
    let st = nix::sys::statfs::statfs(p).with_context(|| format!("statfs {}", p.display()))?;
    #[allow(clippy::useless_conversion, clippy::unnecessary_cast)]
    let magic = st.filesystem_type().0 as u64;
    Ok(FsKind::from_magic(magic))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsKind {
    Ext4,
    Xfs,
    Btrfs,
    /// Filesystems the kernel cannot swap to (overlay, tmpfs, network filesystems...).
    NoSwap(&'static str),
    Other(u64),
}

impl FsKind {
    pub fn from_magic(m: u64) -> Self {
        match m {
            0xEF53 => FsKind::Ext4,
            0x5846_5342 => FsKind::Xfs,
            0x9123_683E => FsKind::Btrfs,
            0x794C_7630 => FsKind::NoSwap("overlayfs"),
            0x0102_1994 => FsKind::NoSwap("tmpfs"),
            0x6969 => FsKind::NoSwap("nfs"),
            0xFF53_4D42 | 0xFE53_4D42 => FsKind::NoSwap("cifs/smb"),
            0x6573_5546 => FsKind::NoSwap("fuse"),
            0x2FC1_2FC1 => FsKind::NoSwap("zfs"),
            0x858458F6 => FsKind::NoSwap("ramfs"),
            0x9FA0 => FsKind::NoSwap("proc"),
            m => FsKind::Other(m),
        }
    }
}

/// Kernel clock discipline state, read with adjtimex(2) in read-only mode: what
/// `timedatectl`'s NTPSynchronized is derived from, available even without systemd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockState {
    pub synchronized: bool,
    pub max_error_us: i64,
}

pub fn clock_state() -> Result<ClockState> {
    // SAFETY: timex is plain data; modes = 0 makes adjtimex read-only.
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    tx.modes = 0;
    let state = unsafe { libc::adjtimex(&mut tx) };
    if state < 0 {
        return Err(std::io::Error::last_os_error()).context("adjtimex");
    }
    Ok(ClockState {
        synchronized: state != libc::TIME_ERROR && (tx.status & libc::STA_UNSYNC) == 0,
        #[allow(clippy::useless_conversion)]
        max_error_us: i64::from(tx.maxerror),
    })
}

/// Who holds a POSIX (fcntl) write lock on `path`, as apt and dpkg take on
/// /var/lib/dpkg/lock-frontend: `Some((pid, command name))`, or None when it is free.
/// Asking (F_GETLK) takes no lock.
pub fn lock_holder(path: &Path) -> Result<Option<(i32, String)>> {
    use std::os::fd::AsRawFd;
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot open {}", path.display())),
    };
    // SAFETY: flock is plain data; F_GETLK only fills it in.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as _;
    fl.l_whence = libc::SEEK_SET as _;
    if unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETLK, &mut fl) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("cannot query the lock on {}", path.display()));
    }
    if i32::from(fl.l_type) == libc::F_UNLCK {
        return Ok(None);
    }
    let pid = fl.l_pid;
    let name = std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    Ok(Some((pid, name)))
}

/// `SSH_CONNECTION` ("client_ip client_port server_ip server_port") of the SSH session this
/// process runs in: from its own environment, else from the nearest ancestor's. `sudo`
/// resets the environment it passes on, but the session's shell above it keeps the variable.
pub fn ssh_connection() -> Option<String> {
    if let Ok(v) = std::env::var("SSH_CONNECTION")
        && !v.trim().is_empty()
    {
        return Some(v.trim().to_string());
    }
    let mut pid = std::process::id();
    // Bounded: a process tree is shallow, and a loop must not spin on a racing /proc.
    for _ in 0..64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let ppid = parse_ppid(&stat)?;
        if ppid <= 1 {
            return None;
        }
        if let Ok(env) = std::fs::read(format!("/proc/{ppid}/environ"))
            && let Some(v) = environ_var(&env, "SSH_CONNECTION")
        {
            return Some(v);
        }
        pid = ppid;
    }
    None
}

/// The SSH login this process runs under: the nearest ancestor whose command is sshd's
/// (`sshd`, or `sshd-session` since OpenSSH 9.8), which sshd forks for each connection. Its
/// start time tells when that login happened; unlike `SSH_CONNECTION`, tmux or screen cannot
/// carry it over from an older login, and a multiplexed `ssh` reuses the old process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshSession {
    pub pid: u32,
    pub comm: String,
    /// When that process started, in milliseconds of CLOCK_BOOTTIME (see [`boottime_ms`]).
    pub started_ms: u64,
}

/// The SSH session of this process (None: no sshd process above it, so not over SSH, or
/// inside a tmux/screen server that outlives logins).
pub fn ssh_session() -> Option<SshSession> {
    ssh_session_from(
        std::process::id(),
        |pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok(),
        clock_ticks_per_sec(),
    )
}

/// [`ssh_session`] from `pid` upwards, with /proc/PID/stat read by `read_stat`.
pub fn ssh_session_from(
    pid: u32,
    read_stat: impl Fn(u32) -> Option<String>,
    ticks_per_sec: u64,
) -> Option<SshSession> {
    let mut stat = parse_stat(&read_stat(pid)?)?;
    // Bounded, as in ssh_connection: a racing /proc must not make this spin.
    for _ in 0..64 {
        let ppid = stat.ppid;
        if ppid <= 1 {
            return None;
        }
        let parent = parse_stat(&read_stat(ppid)?)?;
        if parent.comm.starts_with("sshd") {
            return Some(SshSession {
                pid: ppid,
                started_ms: ticks_to_ms(parent.starttime, ticks_per_sec),
                comm: parent.comm,
            });
        }
        stat = parent;
    }
    None
}

/// The parts of /proc/PID/stat the session lookup needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcStat {
    pub comm: String,
    pub ppid: u32,
    /// Field 22: clock ticks after boot (CLOCK_BOOTTIME) when the process started.
    pub starttime: u64,
}

pub fn parse_stat(stat: &str) -> Option<ProcStat> {
    // The command name may itself contain spaces and parentheses: it runs from the first
    // `(` to the last `)`.
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_string();
    let rest: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    // Fields are numbered from 1 and `rest` starts at field 3 (state).
    Some(ProcStat {
        comm,
        ppid: rest.get(1)?.parse().ok()?,
        starttime: rest.get(19)?.parse().ok()?,
    })
}

pub fn ticks_to_ms(ticks: u64, ticks_per_sec: u64) -> u64 {
    let hz = u128::from(ticks_per_sec.max(1));
    u64::try_from(u128::from(ticks) * 1000 / hz).unwrap_or(u64::MAX)
}

/// sysconf(_SC_CLK_TCK), the unit of /proc/PID/stat times (100 on every Linux build).
pub fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf reads a constant.
    let v = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(v).ok().filter(|&v| v > 0).unwrap_or(100)
}

/// CLOCK_BOOTTIME in milliseconds: the clock process start times in /proc count on, so a
/// time read here compares with [`SshSession::started_ms`]. Counts from this boot only
/// (pair it with /proc/sys/kernel/random/boot_id) and does not jump with the wall clock.
pub fn boottime_ms() -> Result<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec for clock_gettime to fill in.
    if unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) } != 0 {
        return Err(std::io::Error::last_os_error()).context("clock_gettime(CLOCK_BOOTTIME)");
    }
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
    Ok(secs * 1000 + nanos / 1_000_000)
}

/// Whether a process named `comm` runs in this process's network namespace: a dockerd there
/// publishes ports on these interfaces; one in another namespace (a container, a test) does not.
pub fn process_in_own_netns(comm: &str) -> bool {
    let Ok(own) = std::fs::read_link("/proc/self/ns/net") else {
        return false;
    };
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return false;
    };
    rd.flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .any(|e| {
            let p = e.path();
            std::fs::read_to_string(p.join("comm")).is_ok_and(|c| c.trim() == comm)
                && std::fs::read_link(p.join("ns/net")).is_ok_and(|n| n == own)
        })
}

/// The parent pid from /proc/PID/stat (the command name may contain spaces and parentheses).
pub fn parse_ppid(stat: &str) -> Option<u32> {
    let close = stat.rfind(')')?;
    stat[close + 1..].split_whitespace().nth(1)?.parse().ok()
}

/// A variable from the NUL-separated contents of /proc/PID/environ; None when unset or empty.
pub fn environ_var(env: &[u8], key: &str) -> Option<String> {
    env.split(|&b| b == 0).find_map(|kv| {
        let kv = std::str::from_utf8(kv).ok()?;
        let (k, v) = kv.split_once('=')?;
        (k == key && !v.trim().is_empty()).then(|| v.trim().to_string())
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Memory {
    pub total: u64,
    pub available: u64,
    pub swap_total: u64,
    pub swap_free: u64,
}

pub fn memory() -> Result<Memory> {
    let mut s = sysinfo::System::new().context("cannot read memory figures")?;
    s.refresh_memory();
    Ok(Memory {
        total: s.total_memory(),
        available: s.available_memory(),
        swap_total: s.total_swap(),
        swap_free: s.free_swap(),
    })
}

/// Free bytes on the filesystem that holds (or will hold) `path`.
pub fn free_bytes(path: &Path) -> Result<u64> {
    let mut dir = path.parent().unwrap_or(Path::new("/"));
    while !dir.exists() {
        dir = dir.parent().unwrap_or(Path::new("/"));
    }
    let st = nix::sys::statvfs::statvfs(dir)
        .with_context(|| format!("cannot read the free space of {}", dir.display()))?;
    #[allow(clippy::useless_conversion)]
    let (blocks, frag) = (
        u64::from(st.blocks_available()),
        u64::from(st.fragment_size()),
    );
    Ok(blocks.saturating_mul(frag))
}

/// The effective uid of this process (0: root).
pub fn euid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// Where this program's binary is, as the kernel reports it (`/proc/self/exe`; a binary
/// replaced on disk reads as "... (deleted)").
pub fn current_exe() -> std::io::Result<std::path::PathBuf> {
    std::env::current_exe()
}

/// From now on a hang-up (the SSH session that started this run dropping) does not kill
/// the process.
pub fn ignore_sighup() {
    // SAFETY: installing SIG_IGN runs no handler code.
    unsafe {
        let _ = nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGHUP,
            nix::sys::signal::SigHandler::SigIgn,
        );
    }
}

#[cfg(test)]
mod tests;
