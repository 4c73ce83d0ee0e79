//! One converge at a time: timer runs, cloud-init and operators over SSH must never
//! interleave. A second run waits a bounded time for the first, then gives up clearly.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};

pub const DEFAULT_PATH: &str = "/run/sapari-agent.lock";

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("cannot open lock file {path}: {source} (converge must run as root)")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "another sapari-agent run{holder} still holds {path} after waiting {waited:?}; \
         try again when it has finished (see `journalctl -t sapari-agent`)"
    )]
    Busy {
        path: String,
        holder: String,
        waited: Duration,
    },
}

#[derive(Debug)]
pub struct Lock {
    _flock: Flock<File>,
}

fn holder(f: &mut File) -> String {
    let mut s = String::new();
    let _ = f.rewind().and_then(|_| f.read_to_string(&mut s));
    match s.trim().parse::<u32>() {
        Ok(pid) => format!(" (pid {pid})"),
        Err(_) => String::new(),
    }
}

/// Take the lock, waiting up to `timeout`. `on_wait` is called once when we start waiting,
/// with a description of the holder, so the operator sees why nothing happens.
pub fn acquire(
    path: &Path,
    timeout: Duration,
    mut on_wait: impl FnMut(&str),
) -> Result<Lock, LockError> {
    let shown = path.display().to_string();
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|source| LockError::Open {
            path: shown.clone(),
            source,
        })?;
    let start = Instant::now();
    let mut told = false;
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(mut l) => {
                let _ = l.set_len(0);
                let _ = l.rewind();
                let _ = write!(l, "{}", std::process::id());
                return Ok(Lock { _flock: l });
            }
            Err((mut f, _)) => {
                if !told {
                    on_wait(&holder(&mut f));
                    told = true;
                }
                if start.elapsed() >= timeout {
                    return Err(LockError::Busy {
                        path: shown,
                        holder: holder(&mut f),
                        waited: timeout,
                    });
                }
                file = f;
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_taker_waits_then_gives_up_naming_the_holder() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("lock");
        let first = acquire(&p, Duration::ZERO, |_| {}).unwrap();
        let mut waited = String::new();
        let e = acquire(&p, Duration::from_millis(300), |h| waited = h.to_string()).unwrap_err();
        let pid = std::process::id().to_string();
        assert!(waited.contains(&pid), "{waited}");
        assert!(e.to_string().contains(&pid), "{e}");
        drop(first);
        acquire(&p, Duration::ZERO, |_| {}).unwrap();
    }
}
