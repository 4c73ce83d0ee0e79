//! Test-only crash points: the crash-consistency system test (tests/system_crash.rs) kills
//! the agent with SIGKILL at the Nth change it makes, then checks that the box is still
//! sound (sshd, sudoers, fstab, DOCKER-USER) and that a rerun converges.
//!
//! Every change goes through the host layer, which calls [`point`] before each change, inside
//! atomic writes (before the rename, before the directory fsync), while a mutating command
//! runs and after it returns. The points are numbered in the order they are reached; apply is
//! sequential, so the same configuration on the same box reaches the same points in the same
//! order.
//!
//! - `SAPARI_AGENT_TEST_CRASH_AT=N`: SIGKILL ourselves at point N (1-based).
//! - `SAPARI_AGENT_TEST_CRASH_COUNT=PATH`: append one line `N<TAB>label` to PATH per point
//!   reached (the file is created if needed), so a counting run learns how many points a
//!   full converge has and what each one is; with both set, the last line names the point
//!   the agent died at.
//!
//! Without either variable (every real run) [`point`] is one load of an initialised
//! `OnceLock` and a branch: no counter, no label is formatted.

use std::io::Write;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

pub const CRASH_AT_ENV: &str = "SAPARI_AGENT_TEST_CRASH_AT";
pub const CRASH_COUNT_ENV: &str = "SAPARI_AGENT_TEST_CRASH_COUNT";

#[derive(Debug, Default, PartialEq, Eq)]
struct Settings {
    at: Option<u64>,
    count_file: Option<PathBuf>,
}

impl Settings {
    fn from_values(at: Option<String>, count_file: Option<PathBuf>) -> Option<Settings> {
        let at = at
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|n| *n > 0);
        let count_file = count_file.filter(|p| !p.as_os_str().is_empty());
        (at.is_some() || count_file.is_some()).then_some(Settings { at, count_file })
    }
}

static SETTINGS: OnceLock<Option<Settings>> = OnceLock::new();
static REACHED: AtomicU64 = AtomicU64::new(0);

fn settings() -> Option<&'static Settings> {
    SETTINGS
        .get_or_init(|| {
            Settings::from_values(
                std::env::var(CRASH_AT_ENV).ok(),
                std::env::var_os(CRASH_COUNT_ENV).map(PathBuf::from),
            )
        })
        .as_ref()
}

/// A crash point. `label` (what is about to happen, e.g. "write /etc/fstab: before rename")
/// is only evaluated when the test hook is on.
pub fn point(label: impl FnOnce() -> String) {
    let Some(s) = settings() else { return };
    let n = REACHED.fetch_add(1, Ordering::SeqCst) + 1;
    if let Some(path) = &s.count_file {
        let line = format!("{n}\t{}\n", label().replace(['\n', '\t'], " "));
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = f.write_all(line.as_bytes());
        }
    }
    if s.at == Some(n) {
        let _ = nix::sys::signal::kill(nix::unistd::getpid(), nix::sys::signal::Signal::SIGKILL);
        // SIGKILL is not deliverable late; should it somehow fail, never run past the point.
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_unless_a_variable_is_set() {
        assert_eq!(Settings::from_values(None, None), None);
        assert_eq!(Settings::from_values(Some("0".into()), None), None);
        assert_eq!(Settings::from_values(Some("x".into()), None), None);
        assert_eq!(
            Settings::from_values(Some(" 7 ".into()), None),
            Some(Settings {
                at: Some(7),
                count_file: None
            })
        );
        assert_eq!(
            Settings::from_values(None, Some("/run/c".into())),
            Some(Settings {
                at: None,
                count_file: Some("/run/c".into())
            })
        );
    }

    #[test]
    fn unset_in_unit_tests() {
        // The unit tests never set the variables: points are no-ops and count nothing.
        if std::env::var_os(CRASH_AT_ENV).is_none() && std::env::var_os(CRASH_COUNT_ENV).is_none() {
            point(|| unreachable!("labels are not built when the hook is off"));
            assert_eq!(REACHED.load(Ordering::SeqCst), 0);
        }
    }
}
