//! Host commands with a deadline, process groups, /proc lookups and exit-code helpers.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// Running host commands with a deadline

#[derive(Debug)]
pub struct TimedOut {
    pub after: Duration,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// Runs `cmd` to completion with piped stdout/stderr, or kills its whole process group at the deadline.
/// The own process group also keeps a terminal Ctrl-C away from it; the watchdog cleans up then.
pub fn run_bounded(
    cmd: &mut Command,
    stdin: Option<&[u8]>,
    timeout: Duration,
) -> Result<Output, TimedOut> {
    run_bounded_then(cmd, stdin, timeout, &|| {})
}

/// `on_timeout` runs after the process group is killed and before the output is collected: a
/// process outside the group (a systemd unit given our pipes by --pipe) may still hold the pipes.
pub(crate) fn run_bounded_then(
    cmd: &mut Command,
    stdin: Option<&[u8]>,
    timeout: Duration,
    on_timeout: &dyn Fn(),
) -> Result<Output, TimedOut> {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .process_group(0);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn {cmd:?}: {e}"));
    let writer = stdin.map(|data| {
        let mut w = child.stdin.take().unwrap();
        let data = data.to_vec();
        thread::spawn(move || {
            let _ = w.write_all(&data);
        })
    });
    let reader = |r: Option<Box<dyn Read + Send>>| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out_t = reader(
        child
            .stdout
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let err_t = reader(
        child
            .stderr
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let t0 = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None) if t0.elapsed() >= timeout => break None,
            Ok(None) => thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("wait for {cmd:?}: {e}"),
        }
    };
    let Some(status) = status else {
        signal_group(child.id(), "KILL");
        let _ = child.kill();
        let _ = child.wait();
        on_timeout();
        // Grandchildren in other sessions could hold the pipes open; don't wait for them forever.
        let stdout = join_with_deadline(out_t, Duration::from_secs(2));
        let stderr = join_with_deadline(err_t, Duration::from_secs(2));
        return Err(TimedOut {
            after: timeout,
            stdout,
            stderr,
        });
    };
    if let Some(w) = writer {
        let _ = w.join();
    }
    // The process exited; a descendant that escaped (setsid + kept our pipe) must not hang the test.
    let stdout = join_with_deadline(out_t, Duration::from_secs(10));
    let stderr = join_with_deadline(err_t, Duration::from_secs(10));
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

pub(crate) fn join_with_deadline(h: thread::JoinHandle<Vec<u8>>, d: Duration) -> Vec<u8> {
    let t0 = Instant::now();
    while !h.is_finished() && t0.elapsed() < d {
        thread::sleep(Duration::from_millis(10));
    }
    if h.is_finished() {
        h.join().unwrap_or_default()
    } else {
        b"<output still open, not collected>".to_vec()
    }
}

/// Runs a command with piped output and a deadline; at the deadline the whole process group is
/// killed and the output so far is returned as killed by SIGKILL.
pub fn run(cmd: &mut Command, stdin: Option<&[u8]>, timeout: Duration) -> Output {
    run_bounded(cmd, stdin, timeout).unwrap_or_else(|t| Output {
        // The wait status of a process killed by SIGKILL (9).
        status: ExitStatus::from_raw(9),
        stdout: t.stdout,
        stderr: t.stderr,
    })
}

/// `kill -SIG -- -PGID`, errors ignored (the group may be gone).
pub fn signal_group(pgid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{sig}"), "--", &format!("-{pgid}")])
        .stderr(Stdio::null())
        .status();
}

/// `kill -SIG PID`, errors ignored (the process may be gone).
pub fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// Host-side setup command (ip, openssl, tar...): panics with its output on failure; returns stdout.
pub fn host(args: &[&str]) -> String {
    let o = run(
        Command::new(args[0]).args(&args[1..]),
        None,
        Duration::from_secs(60),
    );
    assert!(o.status.success(), "{args:?} failed\n{}", describe(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub(crate) fn host_quiet(args: &[&str]) -> bool {
    run_bounded(
        Command::new(args[0]).args(&args[1..]),
        None,
        Duration::from_secs(30),
    )
    .map(|o| o.status.success())
    .unwrap_or(false)
}

/// Exit code and both streams, for assertion messages.
pub fn describe(o: &Output) -> String {
    format!(
        "exit {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        code(o),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

// ---------------------------------------------------------------------------------------------
// /proc helpers

/// (ppid, comm) from /proc/PID/stat; comm may contain spaces and parentheses.
pub(crate) fn proc_stat(pid: u32) -> Option<(u32, String)> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = s.find('(')?;
    let close = s.rfind(')')?;
    let comm = s[open + 1..close].to_string();
    let ppid = s[close + 1..].split_whitespace().nth(1)?.parse().ok()?;
    Some((ppid, comm))
}

pub(crate) fn all_pids() -> Vec<u32> {
    fs::read_dir("/proc")
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

pub(crate) fn ns_link(pid: &str, ns: &str) -> Option<String> {
    fs::read_link(format!("/proc/{pid}/ns/{ns}"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

pub(crate) fn netns_id(name: &str) -> Option<String> {
    fs::metadata(format!("/run/netns/{name}"))
        .ok()
        .map(|m| format!("net:[{}]", m.ino()))
}

/// Exit code of an Output, treating death-by-signal as 128+N like a shell.
pub fn code(o: &Output) -> i32 {
    status_code(&o.status)
}

pub fn status_code(s: &ExitStatus) -> i32 {
    s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0))
}

pub fn stdout_str(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr_str(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
