use super::*;

#[test]
fn magic_numbers() {
    assert_eq!(FsKind::from_magic(0xEF53), FsKind::Ext4);
    assert_eq!(FsKind::from_magic(0x9123683E), FsKind::Btrfs);
    assert_eq!(FsKind::from_magic(0x794C7630), FsKind::NoSwap("overlayfs"));
    assert_eq!(FsKind::from_magic(0x01021994), FsKind::NoSwap("tmpfs"));
}

#[test]
fn lock_holder_names_the_process() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("lock");
    std::fs::write(&p, b"").unwrap();
    assert_eq!(lock_holder(&p).unwrap(), None);
    // A lock held by another process (fcntl locks are per process), as apt takes it.
    let mut c = std::process::Command::new("python3")
            .args([
                "-c",
                "import fcntl,sys,time; f=open(sys.argv[1],'w'); fcntl.lockf(f, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(10)",
            ])
            .arg(&p)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 is needed for this test");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(c.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    let held = lock_holder(&p).unwrap();
    let _ = c.kill();
    let _ = c.wait();
    let (pid, name) = held.expect("the lock must be seen as held");
    assert_eq!(pid as u32, c.id());
    assert!(name.starts_with("python"), "{name}");
    assert_eq!(lock_holder(&d.path().join("absent")).unwrap(), None);
}

#[test]
fn ssh_connection_parts() {
    assert_eq!(parse_ppid("812 (sudo (x) y) S 77 812 812 0"), Some(77));
    assert_eq!(parse_ppid("garbage"), None);
    let env =
        b"HOME=/home/deploy\0SSH_CONNECTION=192.0.2.50 51000 203.0.113.10 22\0SSH_CONNECTIONX=no\0";
    assert_eq!(
        environ_var(env, "SSH_CONNECTION").as_deref(),
        Some("192.0.2.50 51000 203.0.113.10 22")
    );
    assert_eq!(environ_var(b"SSH_CONNECTION=\0", "SSH_CONNECTION"), None);
    assert_eq!(environ_var(b"", "SSH_CONNECTION"), None);
}

#[test]
fn stat_fields_survive_odd_command_names() {
    // Field 22 (starttime) is the 20th after the command name.
    let stat =
        "812 (sshd: a (b)) S 77 812 812 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 123456 1000 10";
    assert_eq!(
        parse_stat(stat),
        Some(ProcStat {
            comm: "sshd: a (b)".into(),
            ppid: 77,
            starttime: 123456
        })
    );
    assert_eq!(parse_stat("812 (x) S 77"), None, "truncated");
    assert_eq!(parse_stat("garbage"), None);
    assert_eq!(ticks_to_ms(123456, 100), 1_234_560);
    assert_eq!(
        ticks_to_ms(3, 0),
        3000,
        "a zero rate does not divide by zero"
    );
}

fn fake_stat(pid: u32, comm: &str, ppid: u32, start: u64) -> String {
    format!("{pid} ({comm}) S {ppid} 0 0 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 {start} 0 0")
}

#[test]
fn the_session_is_the_nearest_sshd_above_sudo() {
    // agent <- sudo (use_pty monitor) <- sudo <- bash <- sshd-session (the user's) <-
    // sshd-session (privileged) <- sshd (listener)
    let tree = [
        (100, "sapari-agent", 90, 9000),
        (90, "sudo", 80, 8900),
        (80, "sudo", 70, 8900),
        (70, "bash", 60, 5000),
        (60, "sshd-session", 50, 4000),
        (50, "sshd-session", 10, 3990),
        (10, "sshd", 1, 10),
    ];
    let read = |pid: u32| {
        tree.iter()
            .find(|t| t.0 == pid)
            .map(|t| fake_stat(t.0, t.1, t.2, t.3))
    };
    assert_eq!(
        ssh_session_from(100, read, 100),
        Some(SshSession {
            pid: 60,
            comm: "sshd-session".into(),
            started_ms: 40_000
        })
    );
    // A tmux server outlives logins: the pane's shell has no sshd above it.
    let tmux = [
        (100, "sapari-agent", 90, 9000),
        (90, "sudo", 70, 8900),
        (70, "bash", 20, 500),
        (20, "tmux: server", 1, 400),
    ];
    let read = |pid: u32| {
        tmux.iter()
            .find(|t| t.0 == pid)
            .map(|t| fake_stat(t.0, t.1, t.2, t.3))
    };
    assert_eq!(ssh_session_from(100, read, 100), None);
    // A process that vanished mid-walk ends it.
    assert_eq!(
        ssh_session_from(100, |p| (p == 100).then(|| fake_stat(100, "a", 90, 1)), 100),
        None
    );
}

#[test]
fn the_session_walk_reads_the_real_proc_and_boottime_compares() {
    // A shell under a name sshd's session processes have: the walk from its child must
    // stop there, and that start time must fall between two CLOCK_BOOTTIME readings.
    let d = tempfile::tempdir().unwrap();
    let fake = d.path().join("sshd-session");
    std::fs::copy("/bin/sh", &fake).unwrap();
    let before = boottime_ms().unwrap();
    let mut sh = std::process::Command::new(&fake)
        .args(["-c", "sleep 30; true"])
        .spawn()
        .unwrap();
    let children = format!("/proc/{0}/task/{0}/children", sh.id());
    let mut child = None;
    for _ in 0..100 {
        child = std::fs::read_to_string(&children)
            .ok()
            .and_then(|c| c.split_whitespace().next().and_then(|p| p.parse().ok()));
        if child.is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let found = child.and_then(|c: u32| {
        ssh_session_from(
            c,
            |pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok(),
            clock_ticks_per_sec(),
        )
    });
    let after = boottime_ms().unwrap();
    let _ = sh.kill();
    let _ = sh.wait();
    let s = found.expect("the walk finds the process named sshd-session");
    assert_eq!(s.pid, sh.id());
    assert_eq!(s.comm, "sshd-session");
    // /proc truncates to clock ticks (10 ms at 100 Hz).
    let tick = 1000 / clock_ticks_per_sec();
    assert!(
        s.started_ms + tick >= before && s.started_ms <= after,
        "{before} <= {} <= {after}",
        s.started_ms
    );
}

#[test]
fn reads_are_harmless() {
    // Read-only calls: safe to make on the development machine itself.
    assert!(!hostname().unwrap().is_empty());
    clock_state().unwrap();
    assert!(memory().unwrap().total > 0);
    fs_type(Path::new("/definitely/not/here")).unwrap();
}
