//! dockerd (distro or a cached Debian tree) and its container in srv.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::probe::*;
use super::topology::*;
use super::*;

impl Edge {
    // ---- docker -----------------------------------------------------------------------------

    pub(crate) fn dockerd_dir(&self) -> PathBuf {
        self.dir().join("docker")
    }

    pub fn docker_sock(&self) -> PathBuf {
        self.dockerd_dir().join("docker.sock")
    }

    pub(crate) fn cgroup_parent(&self) -> String {
        format!("{}-docker", self.name)
    }

    /// The docker CLI against our daemon.
    pub fn docker(&self, args: &[&str]) -> Output {
        let mut c = Command::new(&self.docker_cli);
        c.arg("-H")
            .arg(format!("unix://{}", self.docker_sock().display()))
            .args(args)
            .env_remove("DOCKER_HOST")
            .env("DOCKER_CONFIG", self.dockerd_dir().join("cli"));
        run(&mut c, None, Duration::from_secs(60))
    }

    /// A container's State (started, finished, restarts) and dockerd's events for it over the
    /// last 60 s: what a failure message needs to tell a restarted container from a DROP.
    pub fn docker_state(&self, name: &str) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let state = self.docker(&[
            "inspect",
            "-f",
            "{{json .State}} RestartCount={{.RestartCount}}",
            name,
        ]);
        let (since, until) = ((now - 60).to_string(), now.to_string());
        let filter = format!("container={name}");
        let events = self.docker(&[
            "events", "--since", &since, "--until", &until, "--filter", &filter,
        ]);
        let top = self.docker(&["top", name, "-eo", "pid,ppid,stat,etime,args"]);
        let log = self.docker(&["exec", name, "cat", "/tmp/responder.log"]);
        format!(
            "{}\nprocesses:\n{}\nresponder exits: {}\nevents:\n{}",
            String::from_utf8_lossy(&state.stdout).trim(),
            String::from_utf8_lossy(&top.stdout).trim(),
            String::from_utf8_lossy(&log.stdout).trim(),
            String::from_utf8_lossy(&events.stdout).trim()
        )
    }

    pub fn docker_ok(&self, args: &[&str]) -> String {
        let o = self.docker(args);
        assert!(o.status.success(), "docker {args:?}\n{}", describe(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// The environment that points a docker client (or the agent) at our daemon: DOCKER_HOST
    /// with our socket, and a private DOCKER_CONFIG so nothing reads or writes ~/.docker.
    pub fn docker_env(&self) -> Vec<(String, String)> {
        vec![
            (
                "DOCKER_HOST".into(),
                format!("unix://{}", self.docker_sock().display()),
            ),
            (
                "DOCKER_CONFIG".into(),
                self.dockerd_dir()
                    .join("cli")
                    .to_string_lossy()
                    .into_owned(),
            ),
        ]
    }

    /// Whether the server's compose is v2 (`docker compose`, the tree's): see
    /// [`up_compose_on`](Self::up_compose_on).
    pub fn compose_is_v2(&self) -> bool {
        self.agent_in_tree
    }

    /// Compose by hand from `dir`, as an operator on the server runs it: Debian 12's standalone
    /// `docker-compose` (v1) on the host, or the tree's `docker compose` (v2) inside the tree;
    /// with only PATH, LANG, the [`docker_env`](Self::docker_env) and `env`.
    pub fn compose_by_hand(&self, dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut c = if self.agent_in_tree {
            // the command starts in the tree's /
            let d = dir.to_string_lossy();
            let mut a = vec!["sh", "-c", "cd \"$0\" && exec docker compose \"$@\"", &d];
            a.extend_from_slice(args);
            self.srv_command(None, &a)
        } else {
            let bin = which(&["docker-compose"]).expect("docker-compose (apt: docker-compose)");
            let mut c = self.srv_command(Some(&bin), args);
            c.current_dir(dir);
            c
        };
        c.envs(self.docker_env()).envs(env.iter().copied());
        run(&mut c, None, Duration::from_secs(180))
    }

    /// The image every test container runs (busybox and socat, imported, no registry).
    pub const IMAGE: &'static str = "sfw-echo:1";

    pub(crate) fn build_image_rootfs(&self) {
        let r = self.dockerd_dir().join("rootfs");
        fs::create_dir_all(r.join("bin")).unwrap();
        fs::create_dir_all(r.join("usr/bin")).unwrap();
        fs::create_dir_all(r.join("tmp")).unwrap();
        fs::create_dir_all(r.join("etc")).unwrap();
        let bb = which(&["/bin/busybox", "busybox"]).expect("busybox (apt: busybox-static)");
        let socat = which(&["socat"]).expect("socat");
        fs::copy(&bb, r.join("bin/busybox")).unwrap();
        for a in ["sh", "echo", "cat", "sleep", "ls", "ps", "date"] {
            std::os::unix::fs::symlink("busybox", r.join("bin").join(a)).unwrap();
        }
        fs::copy(&socat, r.join("usr/bin/socat")).unwrap();
        // socat is dynamically linked on Debian: bring its libraries along.
        let ldd = host(&["ldd", &socat.to_string_lossy()]);
        for tok in ldd.split_whitespace() {
            if tok.starts_with('/') {
                let dst = r.join(tok.trim_start_matches('/'));
                fs::create_dir_all(dst.parent().unwrap()).unwrap();
                fs::copy(tok, &dst).unwrap_or_else(|e| panic!("copy {tok}: {e}"));
            }
        }
    }

    pub(crate) fn import_image(&self) {
        let r = self.dockerd_dir().join("rootfs");
        let tar = self.dockerd_dir().join("rootfs.tar");
        host(&[
            "tar",
            "-C",
            &r.to_string_lossy(),
            "-cf",
            &tar.to_string_lossy(),
            ".",
        ]);
        self.docker_ok(&["import", &tar.to_string_lossy(), "sfw-echo:1"]);
        let _ = fs::remove_file(&tar);
    }

    /// The web container: :443 published for TCP ("hello") and UDP ("pong"), restarted by
    /// dockerd after a daemon restart.
    pub(crate) fn run_container(&self) {
        // The UDP responder reads the datagram before it answers: with a plain `echo pong` the
        // echo may exit before socat hands it the datagram, socat dies of EPIPE and the answer
        // is lost (about 1 exchange in 100 here).
        //
        // The TCP responder runs echo on the socket itself (nofork): with a pipe in between,
        // socat may see echo exit before it has read "hello" and close without it (seen as an
        // empty answer about 1 exchange in 20 under load, e.g. while a killed dockerd exits).
        //
        // socat's default listen backlog (5) overflows under continuous probes (start_probe):
        // the kernel then drops SYNs, which look like a firewall DROP to a prober.
        //
        // Nothing goes to the container's stdout/stderr: after a crash of dockerd (kill_dockerd)
        // nobody drains them, and a container that logs stalls. Seen: socat's "Broken pipe" for
        // every probe connection closed by RST stopped the container answering within a second.
        //
        // The TCP listener is restarted if it exits, and each exit is logged in the container's
        // /tmp/responder.log (see docker_state): seen once in about a dozen runs of
        // system_origin on Docker 26, a container still running whose :443 answered every
        // connection with RST from about 1 s after it started (the DNAT and DOCKER-USER in
        // place): the web server gone, not the firewall, which drops rather than resets.
        let cmd = "exec >/dev/null 2>&1; (while :; do socat TCP6-LISTEN:443,fork,reuseaddr,ipv6only=0,backlog=4096 EXEC:'echo hello',nofork; echo \"tcp responder exited $? at $(date +%s)\" >> /tmp/responder.log; sleep 0.05; done) & socat UDP6-RECVFROM:443,fork,ipv6only=0 SYSTEM:'read -r l; echo pong' & wait";
        self.docker_ok(&[
            "run",
            "-d",
            "--name",
            "web",
            "--restart",
            "always",
            // PID 1 must reap: a socat as PID 1 collects the other socat's orphans and its
            // recvfrom/fork loop then stalls for seconds (seen as lost UDP answers)
            "--init",
            // no duplicate address detection on the container's v6 address (saves ~2 s)
            "--sysctl",
            "net.ipv6.conf.all.accept_dad=0",
            "--sysctl",
            "net.ipv6.conf.default.accept_dad=0",
            "-p",
            "443:443/tcp",
            "-p",
            "443:443/udp",
            "sfw-echo:1",
            "/bin/sh",
            "-c",
            cmd,
        ]);
        self.wait_container();
    }

    /// Waits until the container answers on its own addresses, v4 and v6 (from srv, not
    /// through DOCKER-USER). The v6 ones are usable only after duplicate address detection.
    /// Without `ipv6` in the daemon config the container has no v6 address: v4 only.
    pub fn wait_container(&self) {
        let t0 = Instant::now();
        let mut want = vec![(Proto::Tcp, CONTAINER_V4.to_string())];
        want.push((Proto::Udp, CONTAINER_V4.to_string()));
        if self.dopts.ipv6 {
            let v6 = self.container_v6();
            assert!(
                !v6.is_empty(),
                "the container has no IPv6 address although dockerd runs with --ipv6\n{}",
                describe(&self.docker(&["inspect", "web"]))
            );
            want.push((Proto::Tcp, v6.clone()));
            want.push((Proto::Udp, v6));
        }
        for (p, a) in want {
            let a = a.as_str();
            while !self.probe_addr(Host::Srv, p, a) {
                assert!(
                    t0.elapsed() < Duration::from_secs(20),
                    "container not answering on {a}:443/{p:?} after 20 s\n{}",
                    describe(&self.docker(&["ps", "-a"]))
                );
                thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// Waits until the Cloudflare client reaches the published port over TCP and UDP, v4 and v6
    /// (no rules yet: everyone does). Proves the whole path before a test relies on it; without
    /// `ipv6` in the daemon config the v6 path is docker-proxy on `[::]:443`.
    pub fn wait_wan(&self) {
        let t0 = Instant::now();
        for f in [Fam::V4, Fam::V6] {
            for p in [Proto::Tcp, Proto::Udp] {
                while !self.probe(Host::Cf, p, f) {
                    assert!(
                        t0.elapsed() < Duration::from_secs(20),
                        "cf cannot reach {}:443/{p:?} after 20 s",
                        f.srv_addr()
                    );
                    thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    /// The container's IPv6 address on docker0.
    pub fn container_v6(&self) -> String {
        self.docker_ok(&[
            "inspect",
            "-f",
            "{{range .NetworkSettings.Networks}}{{.GlobalIPv6Address}}{{end}}",
            "web",
        ])
        .trim()
        .to_string()
    }

    /// dockerd's arguments, with our docker dir at `d` (as dockerd sees it).
    pub(crate) fn dockerd_args(&self, d: &str) -> Vec<String> {
        let mut a: Vec<String> = [
            "--config-file",
            &format!("{d}/daemon.json"),
            "--data-root",
            &format!("{d}/data"),
            "--exec-root",
            &format!("{d}/exec"),
            "--pidfile",
            &format!("{d}/docker.pid"),
            "-H",
            &format!("unix://{d}/docker.sock"),
            "--iptables=true",
            "--bip",
            "172.18.0.1/16",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if self.dopts.ipv6 {
            a.extend(
                [
                    "--ipv6",
                    "--fixed-cidr-v6",
                    "fd00:18::/64",
                    "--ip6tables",
                    "--experimental",
                ]
                .map(String::from),
            );
        }
        a.extend(
            [
                "--cgroup-parent",
                &format!("/{}", self.cgroup_parent()),
                "--storage-driver",
                "overlay2",
                "--shutdown-timeout",
                "2",
                "--log-level",
                "warn",
            ]
            .map(String::from),
        );
        a
    }

    /// Starts dockerd in srv and waits for its API. The host's dockerd runs in a private mount
    /// ns with a fresh sysfs for the netns, the host's cgroup hierarchies, a private /etc/docker
    /// and a private /run; a tree's dockerd with the read-only tree as its root (tree.rs; see
    /// [`start_dockerd_async`](Self::start_dockerd_async)). Also after
    /// [`kill_dockerd`](Self::kill_dockerd) and [`flush_netfilter`](Self::flush_netfilter).
    ///
    /// /run is a directory of ours (`docker/run`) that outlives a dockerd, as a host's /run
    /// outlives a crash: the next dockerd's containerd finds the shims of the containers that
    /// kept running (their sockets are there) and dockerd can kill and restart them.
    pub fn start_dockerd(&self) {
        self.start_dockerd_async();
        self.wait_dockerd();
    }

    /// Starts dockerd and returns at once (the socket may not exist yet): for a test that
    /// probes while dockerd comes up. [`wait_dockerd`](Self::wait_dockerd) waits for the API.
    pub fn start_dockerd_async(&self) {
        let mut g = self.dockerd.lock().unwrap();
        assert!(g.is_none(), "dockerd already running");
        let d = self.dockerd_dir();
        for sub in ["etc", "cli", "cg", "run"] {
            fs::create_dir_all(d.join(sub)).unwrap();
        }
        let daemon_json = if self.dopts.live_restore {
            "{\"live-restore\": true}\n"
        } else {
            "{}\n"
        };
        fs::write(d.join("daemon.json"), daemon_json).unwrap();
        let mut c = Command::new("unshare");
        c.args(["-m", "--propagation", "private", "nsenter"])
            .arg(format!("--net=/run/netns/{}", self.ns(Host::Srv)));
        if let Some(tree) = &self.tree {
            // What dockerd writes lives on mounts of its own: our docker dir on /sfw, our run
            // dir on /run, a private /etc/docker (see tree.rs for the rest).
            let script = super::tree::dockerd_script();
            c.args(["sh", "-c", &script, "sh"])
                .arg(&d)
                .arg(tree)
                .arg(self.dir())
                .args(self.dockerd_args(TREE_MNT))
                .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
        } else {
            // dockerd 20.10 writes /etc/docker/key.json: give it a private /etc/docker. The
            // docker.io package ships that directory, so it exists wherever dockerd does.
            assert!(
                Path::new("/etc/docker").is_dir(),
                "/etc/docker is missing: is docker.io installed?"
            );
            let script = r#"set -e
D=$1; shift
# `ip netns exec` would mount a sysfs without the cgroup hierarchies: keep them by hand.
mount --rbind /sys/fs/cgroup "$D/cg"
mount -t sysfs sysfs /sys
mount --rbind "$D/cg" /sys/fs/cgroup
umount -l "$D/cg"
mount --bind "$D/run" /run
mount --bind "$D/etc" /etc/docker
exec dockerd "$@""#;
            c.args(["sh", "-c", script, "sh"])
                .arg(&d)
                .args(self.dockerd_args(&d.to_string_lossy()))
                .env("PATH", PATH);
        }
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join("dockerd.log"))
            .unwrap();
        let child = c
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("spawn dockerd");
        *g = Some(child);
    }

    /// Waits (30 s at most) until dockerd started by [`start_dockerd_async`] answers, and checks
    /// that it lives in srv's network namespace.
    pub fn wait_dockerd(&self) {
        let d = self.dockerd_dir();
        let pid = self
            .dockerd
            .lock()
            .unwrap()
            .as_ref()
            .map(Child::id)
            .expect("dockerd not started");
        let t0 = Instant::now();
        loop {
            let o = self.docker(&["version", "--format", "{{.Server.Version}}"]);
            if o.status.success() {
                break;
            }
            let exited = self
                .dockerd
                .lock()
                .unwrap()
                .as_mut()
                .map(|c| c.try_wait().ok().flatten().is_some())
                .unwrap_or(true);
            if exited || t0.elapsed() > Duration::from_secs(30) {
                panic!(
                    "dockerd (pid {pid}) {} \n--- dockerd.log ---\n{}",
                    if exited {
                        "exited"
                    } else {
                        "not up after 30 s"
                    },
                    fs::read_to_string(d.join("dockerd.log")).unwrap_or_default()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
        // dockerd really lives in srv (and not in the host's netns).
        let srv_ino = format!("net:[{}]", netns_inode(&self.ns(Host::Srv)).unwrap());
        let got = fs::read_link(format!("/proc/{pid}/ns/net"))
            .map(|l| l.to_string_lossy().into_owned())
            .unwrap_or_default();
        assert_eq!(got, srv_ino, "dockerd is not in the srv netns");
    }

    /// `docker version`'s server version, e.g. "20.10.24+dfsg1", "28.5.2+dfsg4".
    pub fn docker_server_version(&self) -> String {
        self.docker_ok(&["version", "--format", "{{.Server.Version}}"])
            .trim()
            .to_string()
    }

    /// A crash of dockerd: SIGKILL to dockerd alone, nothing else is signalled. What stays
    /// behind is what a crash leaves (seen on 20.10, 26.1 and 28.5 alike): the containers keep
    /// running under their shims (not dockerd's children) and stay reachable through the NAT
    /// rules, which also stay; dockerd's own containerd and the docker-proxy processes die with
    /// it (the kernel kills them when their parent dies, Pdeathsig), so the IPv6 path of a
    /// daemon without `ipv6` is down, and so is every path after a
    /// [`flush_netfilter`](Self::flush_netfilter). Returns when containerd and docker-proxy are
    /// gone. The next [`start_dockerd`](Self::start_dockerd) finds the shims (in our /run),
    /// kills the old containers and starts them again (restart policy `always`; RestartCount
    /// stays 0, StartedAt changes).
    pub fn kill_dockerd(&self) {
        let mut c = self
            .dockerd
            .lock()
            .unwrap()
            .take()
            .expect("kill_dockerd: dockerd is not running");
        let ctr_pidfile = self.dockerd_dir().join("exec/containerd/containerd.pid");
        let ctr_pid = fs::read_to_string(&ctr_pidfile)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok());
        signal(c.id(), "KILL");
        let _ = c.wait();
        // An exited process that nobody has reaped yet is a zombie (state Z).
        let dead = |pid: u32| {
            fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| s.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('Z')))
                .unwrap_or(true)
        };
        let t0 = Instant::now();
        loop {
            let mut left = self.srv_processes("docker-proxy");
            left.extend(ctr_pid.filter(|&p| !dead(p)));
            if left.is_empty() {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "10 s after dockerd was killed, {left:?} still run (containerd, docker-proxy)"
            );
            thread::sleep(Duration::from_millis(20));
        }
        // The orphaned containerd is reparented to this machine's PID 1, which reaps late: it
        // can stay a zombie for seconds. The next dockerd would take the pid in containerd.pid
        // for a containerd that "is still running" (kill(pid, 0) succeeds on a zombie) and
        // give up waiting for its socket. systemd reaps at once: drop the pid file of a dead
        // containerd, as if it had.
        if ctr_pid.is_some_and(dead) {
            let _ = fs::remove_file(&ctr_pidfile);
        }
    }

    /// The process half of a reboot (the other half is [`flush_netfilter`](Self::flush_netfilter)):
    /// every process in srv's netns (dockerd, containerd, shims, docker-proxy) and every
    /// container dies at once (SIGKILL), and what lives on tmpfs on a real server is emptied:
    /// our /run and dockerd's exec root (`/run/docker` there). The data root stays.
    /// [`start_dockerd`](Self::start_dockerd) then starts from nothing, and the container
    /// comes back through its restart policy.
    pub fn power_off(&self) {
        let child = self.dockerd.lock().unwrap().take();
        let srv = self.ns(Host::Srv);
        let t0 = Instant::now();
        loop {
            let mut pids = pids_in_netns(&srv);
            for h in cgroup_roots() {
                cgroup_pids(&h.join(self.cgroup_parent()), &mut pids);
            }
            pids.retain(|&p| p != std::process::id());
            if pids.is_empty() {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "power_off: {pids:?} still run after 10 s"
            );
            for p in &pids {
                signal(*p, "KILL");
            }
            thread::sleep(Duration::from_millis(50));
        }
        if let Some(mut c) = child {
            let _ = c.wait();
        }
        // Nothing is left in dockerd's mount namespace, so nothing is mounted below these.
        let d = self.dockerd_dir();
        for sub in ["run", "exec"] {
            let p = d.join(sub);
            if p.exists() {
                let o = run(
                    Command::new("rm")
                        .args(["-rf", "--one-file-system"])
                        .arg(&p),
                    None,
                    Duration::from_secs(60),
                );
                assert!(o.status.success(), "rm {}\n{}", p.display(), describe(&o));
            }
        }
        let _ = fs::remove_file(d.join("docker.pid"));
        let _ = fs::remove_file(d.join("docker.sock"));
        // The containers' cgroups went with the boot.
        for h in cgroup_roots() {
            let cg = h.join(self.cgroup_parent());
            if let Ok(rd) = fs::read_dir(&cg) {
                for e in rd.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        remove_cgroup_tree(&e.path());
                    }
                }
            }
        }
    }

    /// Empties netfilter in srv as a reboot does: `nft flush ruleset` (all tables, iptables-nft
    /// ones included), the legacy iptables tables that exist in srv (listed in srv's
    /// /proc/net/ip{,6}_tables_names; flushed, chains deleted, policies ACCEPT) and the conntrack
    /// table (flushed over ctnetlink, both families). dockerd (if running) is not told.
    pub fn flush_netfilter(&self) {
        self.srv_sh_ok(FLUSH_NETFILTER_SH);
    }

    /// Processes of a name (`comm`) running in srv's network namespace.
    pub fn srv_processes(&self, comm: &str) -> Vec<u32> {
        pids_in_netns(&self.ns(Host::Srv))
            .into_iter()
            .filter(|p| {
                fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == comm)
            })
            .collect()
    }

    /// SIGTERM to dockerd (it stops the container within --shutdown-timeout), then waits. A
    /// no-op when dockerd is not running (e.g. after [`kill_dockerd`](Self::kill_dockerd)).
    pub fn stop_dockerd(&self) {
        let Some(mut c) = self.dockerd.lock().unwrap().take() else {
            return;
        };
        signal(c.id(), "TERM");
        let t0 = Instant::now();
        while c.try_wait().ok().flatten().is_none() && t0.elapsed() < Duration::from_secs(20) {
            thread::sleep(Duration::from_millis(50));
        }
        if c.try_wait().ok().flatten().is_none() {
            eprintln!("netfw: dockerd did not stop within 20 s; killing it");
            signal_group(c.id(), "KILL");
            let _ = c.kill();
        }
        let _ = c.wait();
    }

    /// Stops and starts dockerd, as `systemctl restart docker` would; the container comes back
    /// (restart policy) and Docker re-creates its chains.
    pub fn restart_dockerd(&self) {
        self.stop_dockerd();
        self.start_dockerd();
        self.wait_container();
    }
}
