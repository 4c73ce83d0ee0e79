//! `TestBox`: one booted systemd-nspawn container in its own netns and cgroups.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::cleanup::*;
use super::files::*;
use super::process::*;
use super::*;

/// The Debian release a box boots: $SAPARI_TEST_SUITE (bookworm or trixie), Bookworm if unset.
/// scripts/test.sh runs the nspawn suites once per release; the rootfs cache is per suite.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Suite {
    /// Debian 12: OpenSSH 9.2, systemd 252.
    Bookworm,
    /// Debian 13: OpenSSH 10.0 (sshd-session), systemd 257, ssh.socket with Accept=no.
    Trixie,
}

impl Suite {
    /// The codename debootstrap knows it by.
    pub fn codename(self) -> &'static str {
        match self {
            Suite::Bookworm => "bookworm",
            Suite::Trixie => "trixie",
        }
    }

    /// What `docker.source = "distro"` installs on this release (the agent's own list): on
    /// Debian 13 the docker command is its own package, and docker-compose is the v2 plugin.
    pub fn docker_packages(self) -> &'static [&'static str] {
        match self {
            Suite::Bookworm => &["docker.io", "docker-compose"],
            Suite::Trixie => &["docker.io", "docker-cli", "docker-compose"],
        }
    }
}

impl Default for Suite {
    fn default() -> Self {
        match std::env::var("SAPARI_TEST_SUITE").as_deref() {
            Err(_) | Ok("") | Ok("bookworm") => Suite::Bookworm,
            Ok("trixie") => Suite::Trixie,
            Ok(other) => panic!("SAPARI_TEST_SUITE={other:?}: expected bookworm or trixie"),
        }
    }
}

/// How the box's sshd is started: $SAPARI_TEST_SSH_ACTIVATION (service or socket), Service if
/// unset. Socket stands for Ubuntu 24.04: ssh.socket listens (`Accept=no`) and starts
/// ssh.service on the first connection; it needs a release whose ssh.socket has that model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SshActivation {
    Service,
    Socket,
}

impl Default for SshActivation {
    fn default() -> Self {
        match std::env::var("SAPARI_TEST_SSH_ACTIVATION").as_deref() {
            Err(_) | Ok("") | Ok("service") => SshActivation::Service,
            Ok("socket") => SshActivation::Socket,
            Ok(other) => {
                panic!("SAPARI_TEST_SSH_ACTIVATION={other:?}: expected service or socket")
            }
        }
    }
}

/// Options for [`TestBox::boot_with`].
#[derive(Clone, Debug)]
pub struct BoxOptions {
    /// Host file bound read-only at /usr/local/bin/sapari-agent; None = [`agent_binary()`].
    pub agent: Option<PathBuf>,
    /// Default: $SAPARI_TEST_BOOT_TIMEOUT seconds or 60 s.
    pub boot_timeout: Duration,
    /// Default: $SAPARI_TEST_EXEC_TIMEOUT seconds or 120 s.
    pub exec_timeout: Duration,
    /// Appended to the systemd-nspawn command line (e.g. more --bind=).
    pub extra_nspawn_args: Vec<String>,
    /// The Debian release of the rootfs.
    pub suite: Suite,
    /// How sshd is started in the box.
    pub ssh: SshActivation,
}

impl Default for BoxOptions {
    fn default() -> Self {
        BoxOptions {
            agent: None,
            boot_timeout: env_secs("SAPARI_TEST_BOOT_TIMEOUT", DEFAULT_BOOT_TIMEOUT),
            exec_timeout: env_secs("SAPARI_TEST_EXEC_TIMEOUT", DEFAULT_EXEC_TIMEOUT),
            extra_nspawn_args: Vec::new(),
            suite: Suite::default(),
            ssh: SshActivation::default(),
        }
    }
}

pub struct TestBox {
    pub(crate) name: String,
    pub(crate) dir: Option<TempDir>,
    pub(crate) swap_dir: PathBuf,
    pub(crate) netns_made: bool,
    pub(crate) netns_id: String,
    pub(crate) nspawn: Option<Child>,
    pub(crate) pid: u32,
    pub(crate) extra_netns: Mutex<Vec<String>>,
    pub(crate) opts: BoxOptions,
}

/// The agent binary to bind in, checked: a file whose path nspawn's --bind can carry.
fn checked_agent(opts: &BoxOptions) -> PathBuf {
    let agent = opts.agent.clone().unwrap_or_else(agent_binary);
    let agent = fs::canonicalize(&agent)
        .unwrap_or_else(|e| panic!("agent binary {}: {e}", agent.display()));
    assert!(
        agent.is_file(),
        "agent binary {} is not a file",
        agent.display()
    );
    // ':' separates source and destination in nspawn's --bind
    assert!(
        !agent.to_string_lossy().contains(':'),
        "agent path {} must not contain ':'",
        agent.display()
    );
    agent
}

impl TestBox {
    pub fn boot() -> TestBox {
        Self::boot_with(BoxOptions::default())
    }

    pub fn boot_with(opts: BoxOptions) -> TestBox {
        require_root();
        start_watchdog();
        cleanup_stale();
        let agent = checked_agent(&opts);
        let rootfs = rootfs(opts.suite);
        let t0 = Instant::now();

        let name = format!(
            "{NETNS_PREFIX}{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        // From here on, every early return is a panic that drops `b`, undoing what exists so far.
        let mut b = TestBox {
            name: name.clone(),
            dir: None,
            swap_dir: PathBuf::new(),
            netns_made: false,
            netns_id: String::new(),
            nspawn: None,
            pid: 0,
            extra_netns: Mutex::new(Vec::new()),
            opts,
        };
        let d = b.make_dir();
        let host_net = b.make_netns();
        let nspawn_pid = b.spawn_nspawn(&d, &agent, &rootfs);
        b.find_init(nspawn_pid, &host_net);
        let state = b.wait_booted();
        b.assert_no_sys_time();
        if b.opts.ssh == SshActivation::Socket {
            b.use_ssh_socket();
        }
        if state == "degraded" {
            b.report_degraded();
        }
        eprintln!(
            "harness: {name} booted in {:.1?} (container pid {})",
            t0.elapsed(),
            b.pid
        );
        b
    }

    /// How this box's sshd is started.
    pub fn ssh_activation(&self) -> SshActivation {
        self.opts.ssh
    }

    /// Hands port 22 to ssh.socket, as Ubuntu 24.04 ships it: ssh.service disabled and stopped,
    /// started by the socket on the first connection.
    fn use_ssh_socket(&self) {
        assert_eq!(
            self.opts.suite,
            Suite::Trixie,
            "socket-activated sshd needs a release whose ssh.socket has Accept=no (trixie)"
        );
        self.nsenter_ok(
            "systemctl disable --now ssh.service 2>&1 && systemctl enable --now ssh.socket 2>&1 \\
             && systemctl is-active ssh.socket && ! systemctl is-active ssh.service",
        );
    }

    /// The box's host directory and its swap dir, which must be on ext4/xfs.
    fn make_dir(&mut self) -> PathBuf {
        let name = self.name.clone();
        let root = harness_tmp_root();
        assert!(
            root.is_absolute() && !root.to_string_lossy().contains(':'),
            "SAPARI_TEST_TMP must be absolute, without ':'"
        );
        fs::create_dir_all(&root).unwrap_or_else(|e| panic!("create {}: {e}", root.display()));
        let dir = tempfile::Builder::new()
            .prefix(&format!("{name}-"))
            .tempdir_in(&root)
            .unwrap_or_else(|e| panic!("tempdir in {}: {e}", root.display()));
        let d = dir.path().to_path_buf();
        self.dir = Some(dir);
        self.swap_dir = d.join("swap");
        fs::create_dir(&self.swap_dir).unwrap();
        let fst = fstype(&self.swap_dir);
        if fst != "ext4" && fst != "xfs" {
            panic!(
                "{} is on {fst:?}; swap files need ext4 or xfs. Point SAPARI_TEST_TMP at a directory on such a filesystem",
                self.swap_dir.display()
            );
        }
        d
    }

    /// The box's own netns (only `lo` up), after removing a stale one of the same name; returns
    /// the host's netns identity for the safety checks that follow.
    fn make_netns(&mut self) -> String {
        let name = self.name.clone();
        // A netns or cgroup of this name can only be left over from a dead process whose pid we
        // now have.
        if Path::new("/run/netns").join(&name).exists() {
            let _ = Command::new("ip").args(["netns", "del", &name]).status();
        }
        for h in cgroup_hierarchies() {
            remove_cgroup_tree(&h.join(&name));
        }
        host(&["ip", "netns", "add", &name]);
        self.netns_made = true;
        host(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        self.netns_id = netns_id(&name).expect("netns vanished right after creation");
        let host_net = ns_link("self", "net").expect("read /proc/self/ns/net");
        assert_ne!(
            self.netns_id, host_net,
            "new netns has the host's identity?!"
        );
        host_net
    }

    /// Starts systemd-nspawn in a private mount ns inside the box's netns and cgroups; returns
    /// its pid.
    fn spawn_nspawn(&mut self, d: &Path, agent: &Path, rootfs: &Path) -> u32 {
        let name = self.name.clone();
        let netns_bind = d.join("netns");
        fs::write(&netns_bind, b"").unwrap();
        let log_path = d.join("nspawn.log");
        let log = fs::File::create(&log_path).unwrap();
        let mut nspawn_args: Vec<String> = vec![
            "systemd-nspawn".into(),
            format!("--directory={}", rootfs.display()),
            "--boot".into(),
            "--volatile=overlay".into(),
            "--register=no".into(),
            "--keep-unit".into(),
            "--link-journal=no".into(),
            "--console=passive".into(),
            format!("--machine={name}"),
            "--hostname=fresh-server".into(),
            format!("--network-namespace-path={}", netns_bind.display()),
            "--capability=CAP_NET_ADMIN".into(),
            // adjtimex/clock_adjtime: nspawn's filter blocks even the read-only call the agent uses
            // for clock-sync status (musl's adjtimex is clock_adjtime). Setting the clock still
            // needs CAP_SYS_TIME, which the container lacks (asserted below).
            "--system-call-filter=@swap adjtimex clock_adjtime".into(),
            format!("--bind-ro={}:{AGENT_PATH}", agent.display()),
            format!("--bind={}:{SWAP_MOUNT}", self.swap_dir.display()),
        ];
        nspawn_args.extend(self.opts.extra_nspawn_args.iter().cloned());
        let quoted: Vec<String> = nspawn_args.iter().map(|a| sh_quote(a)).collect();
        // /run must be a tmpfs for nspawn, and hiding the host's /run also hides /run/netns, so
        // the netns handle is bound to a file first. The private mount ns keeps both off the host.
        // nspawn itself also runs in the box netns: the sysfs it mounts for the container shows
        // the devices of the netns it was mounted from (with only --network-namespace-path the
        // container's /sys/class/net listed the host's interfaces).
        let nb = sh_quote(&netns_bind.to_string_lossy());
        let mut cg_moves = String::new();
        for h in cgroup_hierarchies() {
            let cg = sh_quote(&h.join(&name).to_string_lossy());
            cg_moves.push_str(&format!("mkdir {cg} && echo $$ > {cg}/cgroup.procs && "));
        }
        let script = format!(
            "{cg_moves}mount --bind {} {nb} && mount -t tmpfs -o mode=755 tmpfs /run && exec nsenter --net={nb} -- {}",
            sh_quote(&format!("/run/netns/{name}")),
            quoted.join(" ")
        );
        let child = Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn unshare/systemd-nspawn: {e}"));
        let nspawn_pid = child.id();
        self.nspawn = Some(child);
        nspawn_pid
    }

    /// Finds the container's init and proves it is in the box's namespaces, not the host's.
    fn find_init(&mut self, nspawn_pid: u32, host_net: &str) {
        let name = self.name.clone();
        // unshare, sh and nsenter all exec, so the child *is* systemd-nspawn; the container
        // init is its child.
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.pid == 0 {
            self.check_nspawn_alive("while waiting for the container init");
            self.pid = all_pids()
                .into_iter()
                .find(|&p| {
                    proc_stat(p).is_some_and(|(pp, comm)| pp == nspawn_pid && comm == "systemd")
                })
                .unwrap_or(0);
            if self.pid == 0 {
                assert!(
                    Instant::now() < deadline,
                    "container init did not appear within 15 s\n{}",
                    self.nspawn_log()
                );
                thread::sleep(Duration::from_millis(20));
            }
        }
        // Safety: a wrong pid here would make every later nsenter act on the host.
        let pid_net = ns_link(&self.pid.to_string(), "net").unwrap_or_default();
        assert_eq!(
            pid_net, self.netns_id,
            "container pid {} is not in test netns {name}",
            self.pid
        );
        assert_ne!(
            pid_net, host_net,
            "container pid {} is in the host netns",
            self.pid
        );
        assert_ne!(
            ns_link(&self.pid.to_string(), "mnt"),
            ns_link("self", "mnt"),
            "container shares the host mount ns"
        );
    }

    /// Waits until `systemctl is-system-running` says running or degraded; returns which.
    fn wait_booted(&mut self) -> String {
        let name = self.name.clone();
        let deadline = Instant::now() + self.opts.boot_timeout;
        let mut state = String::new();
        loop {
            self.check_nspawn_alive("while booting");
            if let Ok(o) = self.nsenter_bounded(
                &["systemctl", "is-system-running"],
                None,
                Duration::from_secs(10),
            ) {
                state = String::from_utf8_lossy(&o.stdout).trim().to_string();
                if state == "running" || state == "degraded" {
                    break;
                }
            }
            if Instant::now() >= deadline {
                let jobs = self
                    .nsenter_bounded(
                        &["systemctl", "list-jobs", "--no-pager"],
                        None,
                        Duration::from_secs(10),
                    )
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default();
                panic!(
                    "container {name} not booted after {:?} (state {state:?})\njobs:\n{jobs}\nnspawn log:\n{}",
                    self.opts.boot_timeout,
                    self.nspawn_log()
                );
            }
            thread::sleep(Duration::from_millis(200));
        }
        state
    }

    fn assert_no_sys_time(&self) {
        // The clock is host-global: the syscall filter above is only safe without CAP_SYS_TIME.
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap_or_default();
        let capbnd = status
            .lines()
            .find_map(|l| l.strip_prefix("CapBnd:"))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .expect("CapBnd of container init");
        assert_eq!(
            capbnd & (1 << 25),
            0,
            "container must not have CAP_SYS_TIME"
        );
    }

    fn report_degraded(&self) {
        let name = &self.name;
        let failed = self
            .nsenter_bounded(
                &["systemctl", "--failed", "--no-legend", "--plain"],
                None,
                Duration::from_secs(10),
            )
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        eprintln!("harness: {name} booted degraded; failed units:\n{failed}");
    }

    pub(crate) fn check_nspawn_alive(&mut self, when: &str) {
        if let Some(c) = self.nspawn.as_mut()
            && let Ok(Some(st)) = c.try_wait()
        {
            self.nspawn = None;
            panic!(
                "systemd-nspawn exited ({st}) {when}\nnspawn log:\n{}",
                self.nspawn_log()
            );
        }
    }

    pub fn nspawn_log(&self) -> String {
        self.dir
            .as_ref()
            .and_then(|d| fs::read(d.path().join("nspawn.log")).ok())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// True while the recorded pid still is our container (guards against pid reuse after a crash).
    pub(crate) fn container_alive(&self) -> bool {
        self.pid != 0
            && ns_link(&self.pid.to_string(), "net").as_deref() == Some(self.netns_id.as_str())
    }

    pub(crate) fn guard(&self) {
        assert!(
            self.container_alive(),
            "container {} (pid {}) is gone; refusing to nsenter\nnspawn log:\n{}",
            self.name,
            self.pid,
            self.nspawn_log()
        );
    }

    pub(crate) fn nsenter_cmd(&self, argv: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.env_clear().env("PATH", PATH).env("LANG", "C.UTF-8");
        c.args(["-t", &self.pid.to_string(), "-a", "--"]).args(argv);
        c
    }

    pub(crate) fn nsenter_bounded(
        &self,
        argv: &[&str],
        stdin: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<Output, TimedOut> {
        self.guard();
        run_bounded(&mut self.nsenter_cmd(argv), stdin, timeout)
    }

    /// Command that runs `sh -c script` as a transient service of the container's systemd, so it has
    /// the container's capability bounding set and seccomp filter, like the agent under its timer.
    pub(crate) fn unit_cmd(&self, script: &str, env: &[(&str, &str)], unit: &str) -> Command {
        // systemd expands $VAR in ExecStart argv (not in -E values): $$ is a literal $.
        // The outer shell turns death-by-signal into 128+N; systemd-run alone would report
        // SIGTERM as success (0) and SIGKILL as 255.
        let wrapper = r#"/bin/sh -c "$$1"; exit $$?"#;
        let mut argv: Vec<String> = vec![
            "systemd-run".into(),
            "--wait".into(),
            "--pipe".into(),
            "--quiet".into(),
            "--collect".into(),
            "--service-type=exec".into(),
            format!("--unit={unit}"),
        ];
        for (k, v) in env {
            assert!(!k.is_empty() && !k.contains('='), "bad env var name {k:?}");
            argv.push(format!("--setenv={k}={v}"));
        }
        argv.extend([
            "--".into(),
            "/bin/sh".into(),
            "-c".into(),
            wrapper.into(),
            "sh".into(),
            script.replace('$', "$$"),
        ]);
        let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
        self.nsenter_cmd(&refs)
    }

    pub(crate) fn next_unit(&self) -> String {
        format!("sapt-exec-{}", COUNTER.fetch_add(1, Ordering::SeqCst))
    }

    /// `sh -c script` inside the container as a transient service; exit status is the script's
    /// (128+N if it died of signal N). Panics after the exec timeout.
    pub fn exec(&self, script: &str) -> Output {
        self.exec_with(script, &[], self.opts.exec_timeout)
    }

    pub fn exec_env(&self, script: &str, env: &[(&str, &str)]) -> Output {
        self.exec_with(script, env, self.opts.exec_timeout)
    }

    pub fn exec_with(&self, script: &str, env: &[(&str, &str)], timeout: Duration) -> Output {
        self.guard();
        let unit = self.next_unit();
        // Killing systemd-run does not stop the unit, and the unit holds our pipes.
        let stop_unit = || {
            let svc = format!("{unit}.service");
            let _ = self.nsenter_bounded(
                &["systemctl", "kill", "--signal=KILL", &svc],
                None,
                Duration::from_secs(10),
            );
            let _ =
                self.nsenter_bounded(&["systemctl", "stop", &svc], None, Duration::from_secs(10));
        };
        match run_bounded_then(
            &mut self.unit_cmd(script, env, &unit),
            None,
            timeout,
            &stop_unit,
        ) {
            Ok(o) => o,
            Err(t) => {
                panic!(
                    "exec in {} timed out after {:?}\n--- script ---\n{script}\n--- stdout so far ---\n{}\n--- stderr so far ---\n{}",
                    self.name,
                    t.after,
                    String::from_utf8_lossy(&t.stdout),
                    String::from_utf8_lossy(&t.stderr)
                )
            }
        }
    }

    /// Like [`exec`](Self::exec) but not waited for; stdout/stderr are piped, stdin is null.
    pub fn spawn(&self, script: &str) -> Child {
        self.spawn_env(script, &[])
    }

    pub fn spawn_env(&self, script: &str, env: &[(&str, &str)]) -> Child {
        self.guard();
        self.unit_cmd(script, env, &self.next_unit())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn nsenter: {e}"))
    }

    /// Privileged `sh -c script` via nsenter -a (host capabilities, no seccomp): setup/inspection only.
    pub fn nsenter(&self, script: &str) -> Output {
        self.nsenter_bounded(&["/bin/sh", "-c", script], None, self.opts.exec_timeout)
            .unwrap_or_else(|t| {
                panic!(
                    "nsenter in {} timed out after {:?}: {script}\n{}",
                    self.name,
                    t.after,
                    String::from_utf8_lossy(&t.stderr)
                )
            })
    }

    /// [`nsenter`](Self::nsenter) that panics unless the script succeeds; returns stdout.
    pub fn nsenter_ok(&self, script: &str) -> String {
        let o = self.nsenter(script);
        assert!(
            o.status.success(),
            "nsenter script failed: {script}\n{}",
            describe(&o)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// [`exec`](Self::exec) that panics unless the script succeeds; returns stdout.
    pub fn exec_ok(&self, script: &str) -> String {
        let o = self.exec(script);
        assert!(
            o.status.success(),
            "exec script failed: {script}\n{}",
            describe(&o)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Runs the agent inside the container (as [`exec`](Self::exec)) with shell-quoted args.
    pub fn agent(&self, args: &[&str]) -> Output {
        self.agent_env(args, &[])
    }

    pub fn agent_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut s = String::from(AGENT_PATH);
        for a in args {
            s.push(' ');
            s.push_str(&sh_quote(a));
        }
        self.exec_env(&s, env)
    }
}

impl TestBox {
    /// nspawn mounts /proc/sys read-only, so a dockerd inside the box cannot switch IPv4
    /// forwarding on and dies ("Enabling IP forwarding failed"); on a real server it can. The
    /// setting is per network namespace: this writes the box's, never the host's.
    pub fn enable_ipv4_forwarding(&self) {
        assert!(self.netns().starts_with(NETNS_PREFIX));
        let o = Command::new("ip")
            .args(["netns", "exec", self.netns(), "sysctl", "-qw"])
            .arg("net.ipv4.ip_forward=1")
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "sysctl in the box netns: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    pub fn swap_host_dir(&self) -> &Path {
        &self.swap_dir
    }

    pub fn netns(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// swapoff (via host paths, which the kernel matches by file, not by name) of every swap file
    /// under our host directory. Returns the files that are still active afterwards.
    pub(crate) fn swapoff_all(&self) -> Vec<PathBuf> {
        if self.swap_dir.as_os_str().is_empty() {
            return Vec::new();
        }
        let mut candidates = Vec::new();
        collect_files(&self.swap_dir, &mut candidates);
        // /proc/swaps shows the container-side path; map it back in case the walk missed a file.
        if let Ok(swaps) = fs::read_to_string("/proc/swaps") {
            for line in swaps.lines().skip(1) {
                let Some(p) = line.split_whitespace().next() else {
                    continue;
                };
                let p = p.replace("\\040", " ");
                if let Some(rest) = p.strip_prefix(&format!("{SWAP_MOUNT}/")) {
                    let hp = self.swap_dir.join(rest);
                    if hp.exists() && !candidates.contains(&hp) {
                        candidates.push(hp);
                    }
                }
            }
        }
        let mut still = Vec::new();
        for f in candidates {
            let ok = Command::new("swapoff")
                .arg(&f)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                eprintln!("harness: swapoff {}", f.display());
            }
            if is_active_swap(&f) {
                still.push(f);
            }
        }
        still
    }

    /// Powers the container off (killing it after 20 s, or at once if it cannot take the
    /// request) and reaps systemd-nspawn.
    fn stop_container(&mut self, problems: &mut Vec<String>) {
        if let Some(mut child) = self.nspawn.take() {
            let alive = |c: &mut Child| matches!(c.try_wait(), Ok(None));
            if self.container_alive() && alive(&mut child) {
                let asked = run_bounded(
                    &mut self.nsenter_cmd(&["systemctl", "poweroff", "--no-block"]),
                    None,
                    Duration::from_secs(10),
                )
                .is_ok_and(|o| o.status.success());
                // A container that never finished booting cannot take the request: kill it now.
                let wait = if asked {
                    Duration::from_secs(20)
                } else {
                    Duration::ZERO
                };
                let t0 = Instant::now();
                while alive(&mut child) && t0.elapsed() < wait {
                    thread::sleep(Duration::from_millis(50));
                }
                if asked && alive(&mut child) {
                    problems.push("container did not power off within 20 s; killed".into());
                }
            }
            if alive(&mut child) {
                // Killing the pid-namespace init takes every container process with it. Match by
                // netns rather than self.pid: boot may have failed before the pid was known.
                kill_netns_inits(&self.netns_id);
                let t0 = Instant::now();
                while alive(&mut child) && t0.elapsed() < Duration::from_secs(5) {
                    thread::sleep(Duration::from_millis(50));
                }
                signal_group(child.id(), "KILL");
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }

    /// Removes the box's cgroup in every hierarchy its systemd writes to.
    fn remove_cgroups(&self, problems: &mut Vec<String>) {
        for h in cgroup_hierarchies() {
            let cg = h.join(&self.name);
            let t0 = Instant::now();
            while cg.exists() && !remove_cgroup_tree(&cg) && t0.elapsed() < Duration::from_secs(5) {
                thread::sleep(Duration::from_millis(100));
            }
            if cg.exists() {
                problems.push(format!("cgroup {} not removed", cg.display()));
            }
        }
    }

    pub(crate) fn teardown(&mut self) {
        let mut problems: Vec<String> = Vec::new();
        self.swapoff_all();
        self.stop_container(&mut problems);
        if !self.netns_id.is_empty() {
            let t0 = Instant::now();
            while kill_netns_inits(&self.netns_id) && t0.elapsed() < Duration::from_secs(10) {
                thread::sleep(Duration::from_millis(100));
            }
        }
        self.remove_cgroups(&mut problems);
        let still = self.swapoff_all();
        if !still.is_empty() {
            problems.push(format!("swap still active: {still:?}"));
        }
        let extra: Vec<String> =
            std::mem::take(&mut *self.extra_netns.lock().unwrap_or_else(|e| e.into_inner()));
        for n in extra.iter().rev() {
            if !host_quiet(&["ip", "netns", "del", n]) {
                problems.push(format!("ip netns del {n} failed"));
            }
        }
        if self.netns_made {
            self.netns_made = false;
            if !host_quiet(&["ip", "netns", "del", &self.name]) {
                problems.push(format!("ip netns del {} failed", self.name));
            }
        }
        if let Some(d) = self.dir.take() {
            let p = d.path().to_path_buf();
            if still.is_empty() {
                if let Err(e) = d.close() {
                    problems.push(format!("remove {}: {e}", p.display()));
                }
            } else {
                // Deleting an active swap file would leave kernel swap we can no longer name.
                let _ = d.keep();
                problems.push(format!(
                    "kept {} because swap in it is still active",
                    p.display()
                ));
            }
        }
        if !problems.is_empty() {
            eprintln!(
                "harness: WARNING teardown of {}: {}",
                self.name,
                problems.join("; ")
            );
        }
    }
}

impl Drop for TestBox {
    fn drop(&mut self) {
        // Never panic here: during unwinding that would abort and skip the rest of the cleanup.
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.teardown()));
        if r.is_err() {
            eprintln!(
                "harness: WARNING teardown of {} panicked; the watchdog/cleanup_stale will retry",
                self.name
            );
        }
    }
}

pub(crate) fn fstype(p: &Path) -> String {
    let out = host(&[
        "findmnt",
        "-n",
        "-o",
        "FSTYPE",
        "--target",
        &p.to_string_lossy(),
    ]);
    out.trim().to_string()
}
