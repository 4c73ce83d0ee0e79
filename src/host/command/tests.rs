use super::*;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn failure_carries_command_line_and_stderr() {
    let e = rt()
        .block_on(Cmd::new("sh").args(["-c", "echo boom >&2; exit 3"]).run())
        .unwrap_err();
    let m = e.to_string();
    assert!(m.contains("`sh -c 'echo boom >&2; exit 3'`"), "{m}");
    assert!(m.contains("status 3") && m.contains("boom"), "{m}");
}

#[test]
fn timeout_kills() {
    let t0 = std::time::Instant::now();
    let e = rt()
        .block_on(
            Cmd::new("sleep")
                .arg("5")
                .timeout(Duration::from_millis(200))
                .run(),
        )
        .unwrap_err();
    assert!(matches!(e, CmdError::Timeout { .. }), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(3));
}

#[test]
fn secrets_are_redacted_everywhere() {
    let c = Cmd::new("sh")
        .args(["-c", "echo tskey-123 >&2; exit 1"])
        .secret("tskey-123");
    assert!(!c.to_string().contains("tskey-123"));
    let e = rt().block_on(c.run()).unwrap_err().to_string();
    assert!(!e.contains("tskey-123") && e.contains("<redacted>"), "{e}");
}

#[test]
fn stdin_is_fed() {
    let out = rt().block_on(Cmd::new("cat").stdin("hello").run()).unwrap();
    assert_eq!(out.stdout, "hello");
}

/// Whether PID is a live `sleep`: absent, a zombie (killed, reparented, not yet reaped
/// by init) or a reused number that is not `sleep` all count as dead.
fn sleep_alive(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
        return false;
    };
    let comm = &stat[open + 1..close];
    let state = stat[close + 1..].split_whitespace().next();
    comm == "sleep" && state != Some("Z")
}

/// Kills a leftover `sleep` if an assertion failed, so a failing test does not leave it.
struct KillSleep(Option<i32>);

impl Drop for KillSleep {
    fn drop(&mut self) {
        if let Some(pid) = self.0.filter(|&p| p > 1 && sleep_alive(p)) {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

fn read_pid(file: &std::path::Path) -> i32 {
    let text = std::fs::read_to_string(file).unwrap();
    text.trim()
        .parse()
        .unwrap_or_else(|e| panic!("pid file {text:?}: {e}"))
}

fn wait_dead(pid: i32) -> bool {
    let t0 = std::time::Instant::now();
    while t0.elapsed() < Duration::from_secs(5) {
        if !sleep_alive(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn timeout_covers_stdin_the_child_never_reads() {
    let t0 = std::time::Instant::now();
    let e = rt()
        .block_on(
            Cmd::new("sh")
                .args(["-c", "sleep 30"])
                .stdin(vec![b'x'; 4 << 20])
                .timeout(Duration::from_secs(1))
                .output(),
        )
        .unwrap_err();
    assert!(matches!(e, CmdError::Timeout { .. }), "{e}");
    // Far above the 1 s timeout, far below the 30 s the child would take.
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    let m = e.to_string();
    assert!(m.contains("`sh -c 'sleep 30'`") && m.contains("1s"), "{m}");
}

#[test]
fn unread_stdin_is_not_an_error_the_exit_status_decides() {
    let data = vec![b'x'; 4 << 20];
    let ok = rt()
        .block_on(
            Cmd::new("sh")
                .args(["-c", "exit 0"])
                .stdin(data.clone())
                .run(),
        )
        .unwrap();
    assert_eq!(ok.status, 0);
    let e = rt()
        .block_on(Cmd::new("sh").args(["-c", "exit 4"]).stdin(data).run())
        .unwrap_err();
    assert!(matches!(e, CmdError::Failed { status: 4, .. }), "{e}");
}

#[test]
fn large_stdin_stdout_and_stderr_at_once_do_not_deadlock() {
    const N: usize = 2 << 20;
    // Both outputs are written before stdin is read: feeding stdin first, then reading,
    // would block both sides for good.
    let script = format!(
        "head -c {N} /dev/zero | tr '\\0' a; head -c {N} /dev/zero | tr '\\0' b >&2; wc -c"
    );
    let cmd = Cmd::new("sh")
        .args(["-c", &script])
        .stdin(vec![b'x'; N])
        .timeout(Duration::from_secs(60));
    // The outer bound turns a deadlock into a failure instead of a hung test.
    let out = rt()
        .block_on(async { tokio::time::timeout(Duration::from_secs(90), cmd.run()).await })
        .expect("deadlocked")
        .unwrap();
    let (a, count) = out.stdout.split_at(N);
    assert!(a.bytes().all(|b| b == b'a'), "stdout is not {N} 'a's");
    assert_eq!(count.trim(), N.to_string(), "the child read all of stdin");
    assert_eq!(out.stderr.len(), N);
    assert!(out.stderr.bytes().all(|b| b == b'b'));
}

#[test]
fn timeout_kills_grandchildren() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pid");
    let script = format!("sleep 300 & echo $! > {}; wait", file.display());
    let mut guard = KillSleep(None);
    let e = rt()
        .block_on(
            Cmd::new("sh")
                .args(["-c", &script])
                .timeout(Duration::from_secs(1))
                .output(),
        )
        .unwrap_err();
    assert!(matches!(e, CmdError::Timeout { .. }), "{e}");
    let pid = read_pid(&file);
    guard.0 = Some(pid);
    assert!(
        wait_dead(pid),
        "grandchild sleep {pid} survived the timeout"
    );
}

#[test]
fn dropping_the_future_kills_the_group() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pid");
    let script = format!("sleep 300 & echo $! > {}; wait", file.display());
    let mut guard = KillSleep(None);
    let cmd = Cmd::new("sh")
        .args(["-c", &script])
        .timeout(Duration::from_secs(60));
    let gave_up = rt().block_on(async {
        tokio::time::timeout(Duration::from_secs(1), cmd.output())
            .await
            .is_err()
    });
    assert!(gave_up);
    let pid = read_pid(&file);
    guard.0 = Some(pid);
    assert!(wait_dead(pid), "grandchild sleep {pid} survived the drop");
}

#[test]
fn a_normal_exit_leaves_background_processes_alone() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pid");
    // Detached from our pipes, as a daemon would be.
    let script = format!(
        "sleep 300 </dev/null >/dev/null 2>&1 & echo $! > {}",
        file.display()
    );
    let mut guard = KillSleep(None);
    rt().block_on(Cmd::new("sh").args(["-c", &script]).run())
        .unwrap();
    let pid = read_pid(&file);
    guard.0 = Some(pid);
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        sleep_alive(pid),
        "a normal exit killed background sleep {pid}"
    );
}

#[test]
fn lc_all_is_c_unless_the_caller_sets_it() {
    let out = rt()
        .block_on(Cmd::new("sh").args(["-c", "echo \"$LC_ALL\""]).run())
        .unwrap();
    assert_eq!(out.stdout, "C\n");
    let out = rt()
        .block_on(
            Cmd::new("sh")
                .args(["-c", "echo \"$LC_ALL\""])
                .env("LC_ALL", "C.UTF-8")
                .run(),
        )
        .unwrap();
    assert_eq!(out.stdout, "C.UTF-8\n");
}

#[test]
fn exit_code_is_the_code_or_128_plus_the_signal() {
    use std::os::unix::process::ExitStatusExt;
    // wait(2) status words: the code in the second byte, a signal in the low bits.
    assert_eq!(exit_code(ExitStatus::from_raw(0)), 0);
    assert_eq!(exit_code(ExitStatus::from_raw(3 << 8)), 3);
    assert_eq!(exit_code(ExitStatus::from_raw(9)), 137);
    assert_eq!(exit_code(ExitStatus::from_raw(15)), 143);
}

#[test]
fn missing_program_is_a_spawn_error() {
    let e = rt()
        .block_on(Cmd::new("/nonexistent/prog").run())
        .unwrap_err();
    assert!(matches!(e, CmdError::Spawn { .. }));
    assert!(e.to_string().contains("/nonexistent/prog"));
}
