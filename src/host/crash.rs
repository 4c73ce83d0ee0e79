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
//! The hooks exist only in builds with the `crash-points` cargo feature (scripts/test.sh
//! builds a separate binary for the crash tests). Without it, as in the release binary and
//! the .deb, [`point`] is an empty inline function: the variables are never read, so an
//! environment that leaks into a production converge cannot kill it halfway.

pub const CRASH_AT_ENV: &str = "SAPARI_AGENT_TEST_CRASH_AT";
pub const CRASH_COUNT_ENV: &str = "SAPARI_AGENT_TEST_CRASH_COUNT";

#[cfg(feature = "crash-points")]
pub use hooks::point;

/// A crash point. `label` (what is about to happen, e.g. "write /etc/fstab: before rename")
/// is only evaluated in `crash-points` builds with a variable set; here it never is.
#[cfg(not(feature = "crash-points"))]
#[inline(always)]
pub fn point(_label: impl FnOnce() -> String) {}

#[cfg(feature = "crash-points")]
mod hooks {
    use std::io::Write;
    use std::path::PathBuf;
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::{CRASH_AT_ENV, CRASH_COUNT_ENV};

    #[derive(Debug, Default, PartialEq, Eq)]
    pub(super) struct Settings {
        pub(super) at: Option<u64>,
        pub(super) count_file: Option<PathBuf>,
    }

    impl Settings {
        pub(super) fn from_values(
            at: Option<String>,
            count_file: Option<PathBuf>,
        ) -> Option<Settings> {
            let at = at
                .and_then(|v| v.trim().parse::<u64>().ok())
                .filter(|n| *n > 0);
            let count_file = count_file.filter(|p| !p.as_os_str().is_empty());
            (at.is_some() || count_file.is_some()).then_some(Settings { at, count_file })
        }
    }

    static SETTINGS: OnceLock<Option<Settings>> = OnceLock::new();
    pub(super) static REACHED: AtomicU64 = AtomicU64::new(0);

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

    /// A crash point. `label` (what is about to happen, e.g. "write /etc/fstab: before
    /// rename") is only evaluated when a variable is set; otherwise this is one load of an
    /// initialised `OnceLock` and a branch.
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
            let _ =
                nix::sys::signal::kill(nix::unistd::getpid(), nix::sys::signal::Signal::SIGKILL);
            // SIGKILL is not deliverable late; should it somehow fail, never run past the point.
            std::process::abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Set only in the child process [`run_child`] starts.
    const CHILD_ENV: &str = "SAPARI_AGENT_CRASH_UNIT_CHILD";

    /// This test binary, run again for [`child_reaches_three_points`] alone, with the crash
    /// variables set: the variables are read once per process, so only a fresh process
    /// shows what a converge started with them would do.
    fn run_child(at: &str, count: &std::path::Path) -> std::process::Output {
        let module = module_path!().split_once("::").map_or("", |(_, m)| m);
        std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                &format!("{module}::child_reaches_three_points"),
                "--test-threads=1",
            ])
            .env(CHILD_ENV, "1")
            .env(CRASH_AT_ENV, at)
            .env(CRASH_COUNT_ENV, count)
            .output()
            .unwrap()
    }

    #[test]
    fn child_reaches_three_points() {
        if std::env::var_os(CHILD_ENV).is_none() {
            return;
        }
        for i in 1..=3 {
            point(|| format!("point {i}"));
        }
    }

    #[cfg(not(feature = "crash-points"))]
    #[test]
    fn without_the_feature_the_variables_are_ignored() {
        let d = tempfile::tempdir().unwrap();
        let count = d.path().join("count");
        let out = run_child("2", &count);
        assert!(
            out.status.success(),
            "a build without crash-points must not die at a crash point: {out:?}"
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("1 passed"),
            "the child did not run the points: {out:?}"
        );
        assert!(
            !count.exists(),
            "{CRASH_COUNT_ENV} was written by a build without crash-points"
        );
    }

    #[cfg(feature = "crash-points")]
    #[test]
    fn with_the_feature_the_agent_dies_at_the_chosen_point() {
        use std::os::unix::process::ExitStatusExt;
        let d = tempfile::tempdir().unwrap();
        let count = d.path().join("count");
        let out = run_child("2", &count);
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGKILL),
            "expected SIGKILL at point 2: {out:?}"
        );
        assert_eq!(
            std::fs::read_to_string(&count).unwrap(),
            "1\tpoint 1\n2\tpoint 2\n"
        );
    }

    #[cfg(feature = "crash-points")]
    #[test]
    fn off_unless_a_variable_is_set() {
        use hooks::Settings;
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

    #[cfg(feature = "crash-points")]
    #[test]
    fn unset_in_unit_tests() {
        // The unit tests never set the variables: points are no-ops and count nothing.
        if std::env::var_os(CRASH_AT_ENV).is_none() && std::env::var_os(CRASH_COUNT_ENV).is_none() {
            point(|| unreachable!("labels are not built when the hook is off"));
            assert_eq!(hooks::REACHED.load(std::sync::atomic::Ordering::SeqCst), 0);
        }
    }
}
