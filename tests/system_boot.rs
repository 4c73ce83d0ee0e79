// Tests drive the machine from outside the agent: clippy.toml's boundary is the agent's.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]
//! Boot tests: a Debian 12 VM (qemu, TCG) does its first boot with the user-data that
//! `sapari-agent cloud-init render` prints, from a NoCloud seed, as a Hetzner server would,
//! and is checked from outside; and `cloud-init schema` (Debian 12's, run by chroot in the VM
//! image's tree) accepts that user-data.
//!
//! The guest reaches nothing but one forwarded port (qemu `restrict=on` plus `guestfwd`) to an
//! HTTP server on the host's loopback that serves the agent; the test reaches the guest's SSH
//! through a port forward bound to 127.0.0.1. Root only (debootstrap, chroot); run through
//! scripts/test.sh. See tests/harness/README.md.

mod common;

use common::{AGENT_PATH, CONFIG_PATH};

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use common::{agent_binary, harness_tmp_root, run_bounded, sh_quote, spawn_watchdog};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tempfile::TempDir;

/// Where a guest finds its user-data, which decides the addresses of its qemu network.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Source {
    /// A NoCloud seed ISO (volume `cidata`), on qemu's default 10.0.2.0/24.
    NoCloud,
    /// cloud-init's real DataSourceHetzner: SMBIOS vendor "Hetzner", metadata and user-data over
    /// HTTP from 169.254.169.254. qemu forwards a guest address only from inside its virtual
    /// network, so that network is 169.254.0.0/16 here.
    Hetzner,
}

impl Source {
    fn net(self) -> &'static str {
        match self {
            Source::NoCloud => "",
            Source::Hetzner => "net=169.254.0.0/16,host=169.254.0.2,dhcpstart=169.254.0.15,",
        }
    }

    /// The address the guest downloads the agent from; qemu forwards it to the test's server.
    fn guest_http(self) -> &'static str {
        match self {
            Source::NoCloud => "10.0.2.100:8080",
            Source::Hetzner => "169.254.0.100:8080",
        }
    }

    /// qemu's own address in the guest's network: every forwarded connection (the test's SSH)
    /// comes from it, so it is the operator.
    fn host(self) -> &'static str {
        match self {
            Source::NoCloud => "10.0.2.2",
            Source::Hetzner => "169.254.0.2",
        }
    }
}

/// Hetzner's metadata service, as cloud-init's DataSourceHetzner asks it.
const HETZNER_MD: &str = "169.254.169.254:80";
/// Where the test's server has the static binary (the .deb gets its own name).
const ARTIFACT_PATH: &str = "/sapari-agent";
const WORK_PREFIX: &str = "sapvm-";

static COUNTER: AtomicU32 = AtomicU32::new(0);
/// Under plain `cargo test` the tests of this file share a process: one VM at a time, since a
/// TCG guest keeps both cores busy. nextest runs them in the `vm` test group instead.
static VM_LOCK: Mutex<()> = Mutex::new(());

fn env_secs(var: &str, default: u64) -> Duration {
    Duration::from_secs(
        std::env::var(var)
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(default),
    )
}

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "boot tests need root (debootstrap, chroot); run scripts/test.sh as root"
    );
}

fn need(tool: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    assert!(found, "{tool} not found: apt-get install {package}");
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn describe(o: &Output) -> String {
    format!(
        "status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        o.status,
        text(&o.stdout),
        text(&o.stderr)
    )
}

fn run(cmd: &mut Command, timeout: Duration) -> Output {
    let shown = format!("{cmd:?}");
    run_bounded(cmd, None, timeout).unwrap_or_else(|t| {
        panic!(
            "timed out after {:?}: {shown}\n{}{}",
            t.after,
            text(&t.stdout),
            text(&t.stderr)
        )
    })
}

fn run_ok(cmd: &mut Command, timeout: Duration) -> Output {
    let shown = format!("{cmd:?}");
    let o = run(cmd, timeout);
    assert!(o.status.success(), "{shown} failed\n{}", describe(&o));
    o
}

// ---------------------------------------------------------------------------------------------
// The VM image and per-test directories

/// The directory build-vm.sh made for `suite` (or $SAPARI_TEST_VM for bookworm,
/// $SAPARI_TEST_VM_TRIXIE for trixie): base.qcow2, vmlinuz, initrd.img, rootfs/.
fn vm_image_of(suite: &'static str) -> PathBuf {
    static IMAGES: Mutex<Vec<(&'static str, PathBuf)>> = Mutex::new(Vec::new());
    let mut images = IMAGES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, p)) = images.iter().find(|(s, _)| *s == suite) {
        return p.clone();
    }
    let var = match suite {
        "bookworm" => "SAPARI_TEST_VM".to_string(),
        other => format!("SAPARI_TEST_VM_{}", other.to_uppercase()),
    };
    let dir = match std::env::var_os(&var) {
        Some(p) => PathBuf::from(p),
        None => build_vm(suite),
    };
    assert!(
        dir.join("base.qcow2").is_file(),
        "the {suite} VM image {} has no base.qcow2",
        dir.display()
    );
    images.push((suite, dir.clone()));
    dir
}

fn build_vm(suite: &str) -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/harness/build-vm.sh");
    let t0 = Instant::now();
    let out = Command::new("bash")
        .arg(&script)
        .arg(suite)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "{} {suite} failed ({}); stdout:\n{stdout}",
        script.display(),
        out.status
    );
    let dir = PathBuf::from(stdout.lines().last().unwrap_or("").trim());
    if t0.elapsed() > Duration::from_secs(5) {
        eprintln!(
            "boot-test: {suite} VM image built in {:.0?}: {}",
            t0.elapsed(),
            dir.display()
        );
    }
    dir
}

/// The Debian 12 image most tests boot.
fn vm_image() -> PathBuf {
    vm_image_of("bookworm")
}

/// Kills the qemu of a test process that died without running Drop, and removes its directory.
/// qemu's command line names the directory, so a recycled pid is never killed.
const VM_CLEANUP_SH: &str = r#"
root=$1
dead() { case $1 in ''|*[!0-9]*) return 1;; esac; [ ! -d "/proc/$1" ]; }
for d in "$root"/sapvm-*; do
  [ -d "$d" ] || continue
  dead "$(echo "${d##*/}" | cut -d- -f2)" || continue
  for f in "$d"/*/qemu.pid; do
    [ -f "$f" ] || continue
    q=$(cat "$f")
    case $q in ''|*[!0-9]*) continue;; esac
    if tr '\0' ' ' < "/proc/$q/cmdline" 2>/dev/null | grep -qF "$d/"; then
      kill -KILL "$q" 2>/dev/null; sleep 1
    fi
  done
  rm -rf --one-file-system "$d"
done
exit 0
"#;

/// A fresh directory under the harness temp root, named after this process so the watchdog
/// (or the next run) can clean up after a test killed before Drop.
fn workdir(tag: &str) -> TempDir {
    require_root();
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        let root = harness_tmp_root();
        fs::create_dir_all(&root).unwrap();
        let _ = run_bounded(
            Command::new("sh")
                .arg("-c")
                .arg(VM_CLEANUP_SH)
                .arg("sh")
                .arg(&root),
            None,
            Duration::from_secs(60),
        );
        spawn_watchdog("boot-test", VM_CLEANUP_SH);
    });
    tempfile::Builder::new()
        .prefix(&format!(
            "{WORK_PREFIX}{}-{}-{tag}-",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ))
        .tempdir_in(harness_tmp_root())
        .expect("create the test's work directory")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

fn keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let key = dir.join(name);
    run_ok(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
            .arg(&key),
        Duration::from_secs(30),
    );
    let public = fs::read_to_string(key.with_extension("pub")).unwrap();
    (key, public.trim().to_string())
}

// ---------------------------------------------------------------------------------------------
// The artifact server

/// Serves one file over HTTP on 127.0.0.1 and records every request line.
struct ArtifactServer {
    port: u16,
    path: String,
    guest_http: &'static str,
    requests: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl ArtifactServer {
    fn serve(path: &str, body: Vec<u8>) -> Self {
        Self::serve_files(vec![(path.to_string(), body)])
    }

    /// Serves each (path, body); `path` (for `guest_url`) is the first one.
    fn serve_files(files: Vec<(String, Vec<u8>)>) -> Self {
        let path = files[0].0.clone();
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the artifact server");
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, s) = (requests.clone(), stop.clone());
        let thread = thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        if let Some(line) = Self::answer(conn, &files) {
                            r.lock().unwrap().push(line);
                        }
                    }
                    Err(_) => thread::sleep(Duration::from_millis(50)),
                }
            }
        });
        ArtifactServer {
            port,
            path,
            guest_http: Source::NoCloud.guest_http(),
            requests,
            stop,
            thread: Some(thread),
        }
    }

    /// The same server, reached by the guest at `src`'s address.
    fn for_guest(mut self, src: Source) -> Self {
        self.guest_http = src.guest_http();
        self
    }

    fn answer(mut conn: TcpStream, files: &[(String, Vec<u8>)]) -> Option<String> {
        conn.set_nonblocking(false).ok()?;
        conn.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
        conn.set_write_timeout(Some(Duration::from_secs(120)))
            .ok()?;
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16384 {
            let n = conn.read(&mut buf).ok()?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        let line = text(&head).lines().next().unwrap_or("").to_string();
        let mut words = line.split_whitespace();
        let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
        let body = files
            .iter()
            .find(|(p, _)| p == path)
            .map(|(_, b)| b.as_slice())
            .filter(|_| method == "GET" || method == "HEAD");
        let found = body.is_some();
        let status = if found { "200 OK" } else { "404 Not Found" };
        let body = body.unwrap_or(b"");
        let payload: &[u8] = if method == "GET" { body } else { b"" };
        let len = body.len();
        let _ = conn.write_all(
            format!("HTTP/1.1 {status}\r\nContent-Type: application/octet-stream\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n").as_bytes(),
        );
        let _ = conn.write_all(payload);
        Some(line)
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }

    /// The URL the guest uses for the file.
    fn guest_url(&self) -> String {
        format!("http://{}{}", self.guest_http, self.path)
    }

    /// At least one request, and all of them for the file.
    fn assert_only_fetched(&self) {
        let r = self.requests();
        let get = format!("GET {} ", self.path);
        assert!(
            !r.is_empty() && r.iter().all(|l| l.starts_with(&get)),
            "requests to the artifact server: {r:?}"
        );
    }
}

impl Drop for ArtifactServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The VM

/// The NoCloud seed ISO (volume `cidata`) made of `user_data` and `meta_data`, in `dir`.
fn seed_iso(dir: &Path, user_data: &str, meta_data: &str) -> PathBuf {
    let seed = dir.join("seed");
    fs::create_dir_all(&seed).unwrap();
    fs::write(seed.join("user-data"), user_data).unwrap();
    fs::write(seed.join("meta-data"), meta_data).unwrap();
    let iso = dir.join("seed.iso");
    let mkisofs = if Path::new("/usr/bin/genisoimage").exists() {
        vec!["genisoimage"]
    } else {
        need("xorriso", "genisoimage (or xorriso)");
        vec!["xorriso", "-as", "mkisofs"]
    };
    run_ok(
        Command::new(mkisofs[0])
            .args(&mkisofs[1..])
            .args(["-quiet", "-volid", "cidata", "-joliet", "-rock", "-output"])
            .arg(&iso)
            .arg(seed.join("user-data"))
            .arg(seed.join("meta-data")),
        Duration::from_secs(60),
    );
    iso
}

struct Vm {
    dir: PathBuf,
    child: Option<Child>,
    ssh_port: u16,
    started: Instant,
}

impl Vm {
    /// Boots a throwaway overlay of the image with a NoCloud seed made of `user_data` and
    /// `meta_data`. The guest's 10.0.2.100:8080 is forwarded to 127.0.0.1:`http_port`.
    fn boot(image: &Path, dir: &Path, user_data: &str, meta_data: &str, http_port: u16) -> Vm {
        let iso = seed_iso(dir, user_data, meta_data);
        let seed = format!("file={},if=virtio,format=raw,readonly=on", iso.display());
        Self::launch(
            image,
            dir,
            Source::NoCloud,
            http_port,
            "",
            &["-drive", &seed],
        )
    }

    /// Boots as a Hetzner server: no seed; SMBIOS says Hetzner with `serial` (the instance id
    /// the datasource checks), and the guest's 169.254.169.254:80 is forwarded to
    /// 127.0.0.1:`md_port`, the test's metadata server.
    fn boot_hetzner(image: &Path, dir: &Path, serial: &str, http_port: u16, md_port: u16) -> Vm {
        let smbios = format!("type=1,manufacturer=Hetzner,product=vServer,serial={serial}");
        let md = format!(",guestfwd=tcp:{HETZNER_MD}-cmd:socat - TCP:127.0.0.1:{md_port}");
        Self::launch(
            image,
            dir,
            Source::Hetzner,
            http_port,
            &md,
            &["-smbios", &smbios],
        )
    }

    fn launch(
        image: &Path,
        dir: &Path,
        src: Source,
        http_port: u16,
        more_fwd: &str,
        more_args: &[&str],
    ) -> Vm {
        need("qemu-system-x86_64", "qemu-system-x86");
        need("qemu-img", "qemu-utils");
        need("socat", "socat");
        fs::create_dir_all(dir).unwrap();
        let overlay = dir.join("disk.qcow2");
        run_ok(
            Command::new("qemu-img")
                .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
                .arg(image.join("base.qcow2"))
                .arg(&overlay),
            Duration::from_secs(60),
        );
        let ssh_port = free_port();
        let netdev = format!(
            "user,id=n0,{}restrict=on,hostfwd=tcp:127.0.0.1:{ssh_port}-:22,guestfwd=tcp:{}-cmd:socat - TCP:127.0.0.1:{http_port}{more_fwd}",
            src.net(),
            src.guest_http()
        );
        let log = fs::File::create(dir.join("qemu.log")).unwrap();
        let mut cmd = Command::new("qemu-system-x86_64");
        // KVM does not work on this kind of machine (the rig's findings): TCG, as many threads as vCPUs.
        cmd.args([
            "-accel",
            "tcg,thread=multi",
            "-cpu",
            "max",
            "-machine",
            "q35",
        ])
        .args(["-smp", "2", "-m", "2048", "-nodefaults", "-display", "none"])
        .arg("-kernel")
        .arg(image.join("vmlinuz"))
        .arg("-initrd")
        .arg(image.join("initrd.img"))
        .args(["-append", "root=LABEL=saparivm rw console=ttyS0"])
        .arg("-drive")
        .arg(format!("file={},if=virtio,format=qcow2", overlay.display()))
        .args(more_args)
        .args(["-netdev", &netdev, "-device", "virtio-net-pci,netdev=n0"])
        .arg("-serial")
        .arg(format!("file:{}", dir.join("console.log").display()))
        .arg("-pidfile")
        .arg(dir.join("qemu.pid"))
        .arg("-no-reboot")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        // its own group: Drop kills qemu and the socat processes it spawned for guestfwd
        .process_group(0);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn qemu-system-x86_64: {e}"));
        eprintln!(
            "boot-test: qemu pid {} booting {} (ssh on 127.0.0.1:{ssh_port})",
            child.id(),
            dir.display()
        );
        Vm {
            dir: dir.to_path_buf(),
            child: Some(child),
            ssh_port,
            started: Instant::now(),
        }
    }

    fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    fn console(&self) -> String {
        text(&fs::read(self.dir.join("console.log")).unwrap_or_default())
    }

    fn console_tail(&self) -> String {
        let c = self.console();
        let lines: Vec<&str> = c.lines().collect();
        let qemu = text(&fs::read(self.dir.join("qemu.log")).unwrap_or_default());
        format!(
            "--- last console lines ---\n{}\n--- qemu ---\n{qemu}",
            lines[lines.len().saturating_sub(60)..].join("\n")
        )
    }

    /// Waits for cloud-init's final stage to report completion on the serial console (success
    /// or not: the message is the same) and returns the time since qemu started.
    fn wait_cloud_init_finished(&mut self, timeout: Duration) -> Duration {
        loop {
            let c = self.console();
            if c.lines()
                .any(|l| l.contains("Cloud-init v.") && l.contains(" finished at "))
            {
                return self.started.elapsed();
            }
            assert!(
                self.alive(),
                "qemu exited before cloud-init finished\n{}",
                self.console_tail()
            );
            assert!(
                self.started.elapsed() < timeout,
                "cloud-init did not finish within {timeout:?}\n{}",
                self.console_tail()
            );
            thread::sleep(Duration::from_secs(2));
        }
    }

    fn ssh_base(&self, user: &str) -> Command {
        let mut c = Command::new("ssh");
        c.args(["-F", "/dev/null", "-p", &self.ssh_port.to_string()])
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
            ])
            .args(["-o", "ConnectTimeout=15", "-o", "LogLevel=ERROR"])
            .arg(format!("{user}@127.0.0.1"));
        c
    }

    /// `cmd` as `user`, logging in with `key` only.
    fn ssh(&self, user: &str, key: &Path, cmd: &str) -> Output {
        let mut c = self.ssh_base(user);
        c.args(["-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-i"])
            .arg(key)
            .arg("--")
            .arg(cmd);
        run(&mut c, Duration::from_secs(120))
    }

    fn ssh_ok(&self, user: &str, key: &Path, cmd: &str) -> String {
        let o = self.ssh(user, key, cmd);
        assert!(
            o.status.success(),
            "ssh {user}: `{cmd}` failed\n{}",
            describe(&o)
        );
        text(&o.stdout)
    }

    /// `cmd` as `user`, offering only a password (sshpass types it).
    fn ssh_password(&self, user: &str, password: &str, cmd: &str) -> Output {
        need("sshpass", "sshpass");
        let mut c = Command::new("sshpass");
        c.args(["-p", password]);
        let base = self.ssh_base(user);
        c.arg(base.get_program()).args(base.get_args());
        c.args(["-o", "PubkeyAuthentication=no", "-o", "BatchMode=no"])
            .args([
                "-o",
                "PreferredAuthentications=password,keyboard-interactive",
            ])
            .args(["-o", "NumberOfPasswordPrompts=1", "--", cmd]);
        run(&mut c, Duration::from_secs(120))
    }

    fn wait_ssh(&mut self, user: &str, key: &Path, timeout: Duration) {
        let t0 = Instant::now();
        loop {
            let o = self.ssh(user, key, "true");
            if o.status.success() {
                return;
            }
            assert!(self.alive(), "qemu exited\n{}", self.console_tail());
            assert!(
                t0.elapsed() < timeout,
                "no ssh as {user} within {timeout:?}: {}\n{}",
                text(&o.stderr),
                self.console_tail()
            );
            thread::sleep(Duration::from_secs(3));
        }
    }

    /// Waits for qemu to exit after the guest was asked to power off; kills it after `timeout`.
    fn wait_exit(&mut self, timeout: Duration) -> bool {
        let t0 = Instant::now();
        while self.alive() && t0.elapsed() < timeout {
            thread::sleep(Duration::from_millis(500));
        }
        let clean = !self.alive();
        self.kill();
        clean
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            if matches!(c.try_wait(), Ok(None)) {
                let _ = Command::new("kill")
                    .args(["-KILL", "--", &format!("-{}", c.id())])
                    .stderr(Stdio::null())
                    .status();
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    }

    /// The guest disk as a raw image (sparse), for debugfs after power-off.
    fn disk_raw(&self) -> PathBuf {
        let raw = self.dir.join("disk.raw");
        run_ok(
            Command::new("qemu-img")
                .args(["convert", "-O", "raw"])
                .arg(self.dir.join("disk.qcow2"))
                .arg(&raw),
            Duration::from_secs(300),
        );
        raw
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The bootstrap's own lines and the converge's summary, from the console, for the test log.
fn log_bootstrap(console: &str) {
    for l in console.lines().filter(|l| {
        l.contains("sapari-agent bootstrap:")
            || l.contains("]: converge: ")
            || l.contains("Cloud-init v.")
    }) {
        eprintln!("boot-test: console: {}", l.trim_end());
    }
}

/// A file of an ext4 image (None when it does not exist), read with debugfs: no mount needed.
fn debugfs_cat(raw: &Path, path: &str) -> Option<String> {
    need("debugfs", "e2fsprogs");
    let stat = run(
        Command::new("debugfs")
            .args(["-R", &format!("stat {path}")])
            .arg(raw),
        Duration::from_secs(60),
    );
    if text(&stat.stderr).contains("File not found") {
        return None;
    }
    let o = run_ok(
        Command::new("debugfs")
            .args(["-R", &format!("cat {path}")])
            .arg(raw),
        Duration::from_secs(60),
    );
    Some(text(&o.stdout))
}

// ---------------------------------------------------------------------------------------------
// What the tests boot with

fn test_config(deploy_key: &str) -> String {
    test_config_for(deploy_key, Source::NoCloud)
}

fn test_config_for(deploy_key: &str, src: Source) -> String {
    // qemu's user network shows every forwarded connection as coming from its own address, so
    // that is the operator. The guest has no archive and no tailnet: what packages needs is in the
    // image, and Docker, compose and Tailscale stay off. Nothing can synchronize the clock.
    format!(
        r#"# sapari-agent boot test
[access]
operator_ips = ["{}"]

[hostname]
name = "sapari-prod"

[users]
authorized_keys = ["{deploy_key}"]

[docker]
enabled = false

[compose]
enabled = false

[tailscale]
enabled = false

[ntp]
require_sync = false
"#,
        src.host()
    )
}

fn meta_data(tag: &str, root_key: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    // public-keys is how Hetzner's project SSH keys arrive; the image gives them to root.
    format!(
        "instance-id: sapari-test-{tag}-{}-{nanos}\nlocal-hostname: fresh-server\npublic-keys:\n  - {root_key}\n",
        std::process::id()
    )
}

/// What Hetzner's metadata service answers (its documented shape): the metadata as YAML with
/// the project's key in `public-keys`, the instance id cloud-init compares with the SMBIOS
/// serial, and the user-data as given when the server was created.
fn hetzner_metadata(serial: &str, root_key: &str, user_data: &str) -> Vec<(String, Vec<u8>)> {
    let md = format!(
        "hostname: fresh-server\ninstance-id: {serial}\npublic-ipv4: 169.254.0.15\n\
         network-config:\n  config:\n  - name: eth0\n    subnets:\n    - type: dhcp\n    \
         type: physical\n  version: 1\npublic-keys:\n- {root_key}\n"
    );
    let base = "/hetzner/v1";
    vec![
        (format!("{base}/metadata"), md.into_bytes()),
        (
            format!("{base}/metadata/instance-id"),
            serial.as_bytes().to_vec(),
        ),
        (format!("{base}/userdata"), user_data.as_bytes().to_vec()),
    ]
}

/// `sapari-agent cloud-init render` on the host, as an operator runs it.
fn render(agent: &Path, config: &Path, url: &str, sha256: &str) -> String {
    let o = run_ok(
        Command::new(agent)
            .args(["cloud-init", "render", "--config"])
            .arg(config)
            .args(["--artifact-url", url, "--sha256", sha256]),
        Duration::from_secs(30),
    );
    let ud = text(&o.stdout);
    assert!(ud.starts_with("#cloud-config\n"), "{ud}");
    ud
}

fn write_config(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("agent.toml");
    fs::write(&p, text).unwrap();
    p
}

fn artifact_url() -> String {
    format!("http://{}{ARTIFACT_PATH}", Source::NoCloud.guest_http())
}

fn root_password(image: &Path) -> String {
    fs::read_to_string(image.join("root-password"))
        .expect("root-password in the VM image")
        .trim()
        .to_string()
}

// ---------------------------------------------------------------------------------------------
// Tests

/// A guest after a first boot that converged, and what the checks need. Fields drop in order:
/// qemu first, then the server, then the directory.
struct Converged {
    vm: Vm,
    // Held for their Drop: the guest may still fetch (the timer's run), and the directory
    // holds the keys and the overlay.
    _server: ArtifactServer,
    /// Hetzner's metadata service, for a boot through that datasource.
    _metadata: Option<ArtifactServer>,
    _work: TempDir,
    deploy_key: PathBuf,
    project_key: PathBuf,
    config_text: String,
    t0: Instant,
}

/// Boots a new guest whose user-data installs `artifact` (served as `name`) and waits until
/// cloud-init is done: no errors, the download verified, SSH as deploy working (the deploy
/// user exists only if the converge ran).
fn converged_first_boot(
    image: &Path,
    src: Source,
    tag: &str,
    name: &str,
    artifact: Vec<u8>,
    work: TempDir,
) -> Converged {
    let t0 = Instant::now();
    let agent = agent_binary();
    let sha = sha256_hex(&artifact);
    let server = ArtifactServer::serve(&format!("/{name}"), artifact).for_guest(src);

    let (deploy_key, deploy_pub) = keygen(work.path(), "deploy");
    let (project_key, project_pub) = keygen(work.path(), "hetzner-project");
    let config_text = test_config_for(&deploy_pub, src);
    let config = write_config(work.path(), &config_text);
    let user_data = render(&agent, &config, &server.guest_url(), &sha);

    let dir = work.path().join("vm");
    let (mut vm, metadata) = match src {
        Source::NoCloud => {
            let md = meta_data(tag, &project_pub);
            let vm = Vm::boot(image, &dir, &user_data, &md, server.port);
            (vm, None)
        }
        Source::Hetzner => {
            let serial = format!(
                "{}{}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::SeqCst)
            );
            let md =
                ArtifactServer::serve_files(hetzner_metadata(&serial, &project_pub, &user_data));
            let vm = Vm::boot_hetzner(image, &dir, &serial, server.port, md.port);
            (vm, Some(md))
        }
    };
    let finished = vm.wait_cloud_init_finished(env_secs("SAPARI_TEST_VM_BOOT_TIMEOUT", 600));
    eprintln!("boot-test: {tag}: cloud-init finished {finished:.0?} after qemu started");
    log_bootstrap(&vm.console());
    vm.wait_ssh("deploy", &deploy_key, Duration::from_secs(60));

    let st = vm.ssh(
        "deploy",
        &deploy_key,
        "cloud-init status --wait --long; echo rc=$?",
    );
    let st = text(&st.stdout);
    assert!(
        st.lines().any(|l| l.trim() == "status: done") && st.contains("rc=0"),
        "cloud-init status:\n{st}\n{}",
        vm.console_tail()
    );
    let result: Value = serde_json::from_str(&vm.ssh_ok(
        "deploy",
        &deploy_key,
        "cat /var/lib/cloud/data/result.json",
    ))
    .expect("result.json");
    assert_eq!(
        result["v1"]["errors"],
        serde_json::json!([]),
        "cloud-init errors: {result}"
    );
    assert!(
        vm.console().contains(&format!("sha256 verified: {sha}")),
        "{}",
        vm.console_tail()
    );
    server.assert_only_fetched();
    if let Some(md) = &metadata {
        // The user-data came through DataSourceHetzner, not a leftover seed.
        let platform = vm.ssh_ok("deploy", &deploy_key, "cloud-init query platform");
        assert_eq!(platform.trim(), "hetzner", "{}", vm.console_tail());
        let r = md.requests();
        for path in ["/hetzner/v1/metadata", "/hetzner/v1/userdata"] {
            let get = format!("GET {path} ");
            assert!(
                r.iter().any(|l| l.starts_with(&get)),
                "{path} never fetched: {r:?}"
            );
        }
    }
    Converged {
        vm,
        _server: server,
        _metadata: metadata,
        _work: work,
        deploy_key,
        project_key,
        config_text,
        t0,
    }
}

impl Converged {
    /// Runs `script` as deploy (bash, so pipefail) and checks that its output has every line
    /// of `want`.
    fn facts(&self, script: &str, want: &[String]) {
        let facts = self.vm.ssh_ok("deploy", &self.deploy_key, script);
        for w in want {
            assert!(
                facts.lines().any(|l| l == w),
                "missing {w:?} in:\n{facts}\n{}",
                self.vm.console_tail()
            );
        }
    }

    /// What every converged first boot has, whatever the artifact was.
    fn common_facts(&self) -> Vec<String> {
        vec![
            "sudo=ok".into(),
            "sapari-prod".into(),
            format!(
                "{}  /etc/sapari-agent/agent.toml",
                sha256_hex(self.config_text.as_bytes())
            ),
            "toml=root:root:600".into(),
            "timer=enabled/active".into(),
            "dfw=enabled".into(),
            "boot=enabled".into(),
            "lock=1".into(),
            "swap=/swapfile".into(),
        ]
    }

    fn last_run(&self) -> Value {
        let last: Value = serde_json::from_str(&self.vm.ssh_ok(
            "deploy",
            &self.deploy_key,
            "sudo cat /var/lib/sapari-agent/last-run.json",
        ))
        .expect("last-run.json");
        assert_eq!(last["mode"], "converge", "{last}");
        assert_eq!(last["summary"]["failed"], 0, "{last}");
        last
    }
}

const COMMON_FACTS_SH: &str = "set -eo pipefail; sudo -n true; echo sudo=ok; hostname; \
     sudo sha256sum /etc/sapari-agent/agent.toml; \
     sudo stat -c 'toml=%U:%G:%a' /etc/sapari-agent/agent.toml; \
     echo timer=$(systemctl is-enabled sapari-agent.timer)/$(systemctl is-active sapari-agent.timer); \
     echo dfw=$(systemctl is-enabled sapari-docker-firewall.service); \
     echo boot=$(systemctl is-enabled sapari-firewall-boot.service); \
     echo lock=$(sudo nft -j list table inet sapari_agent | grep -c cloudflare_only); \
     sudo swapon --show=NAME --noheadings | sed 's/^/swap=/'";

#[test]
#[ignore = "system test: needs root; run scripts/test.sh"]
fn first_boot_installs_converges_and_hardens_the_server() {
    binary_first_boot(&vm_image(), Source::NoCloud, "binary");
}

#[test]
#[ignore = "system test: needs root; run scripts/test.sh"]
// Debian 13 brings cloud-init 25 (cloud-init-main.service, a new stage layout) and systemd 257:
// the same user-data must converge there too.
fn first_boot_on_debian_13_installs_converges_and_hardens_the_server() {
    binary_first_boot(&vm_image_of("trixie"), Source::NoCloud, "trixie");
}

#[test]
#[ignore = "system test: needs root; run scripts/test.sh"]
// As a Hetzner server boots: no seed, cloud-init's own DataSourceHetzner finds the vendor in
// SMBIOS, takes a DHCP lease and reads metadata and user-data from 169.254.169.254 (the test's
// server on loopback, through qemu). Debian 13's cloud-init 25, as current Ubuntu's.
fn first_boot_through_hetzners_datasource_converges_and_hardens_the_server() {
    binary_first_boot(&vm_image_of("trixie"), Source::Hetzner, "hetzner");
}

/// A first boot that installs the static binary, with every check of a converged server.
fn binary_first_boot(image: &Path, src: Source, tag: &str) {
    let _one_vm = VM_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let binary = fs::read(agent_binary()).unwrap();
    let agent_sha = sha256_hex(&binary);
    let c = converged_first_boot(
        image,
        src,
        tag,
        ARTIFACT_PATH.trim_start_matches('/'),
        binary,
        workdir(tag),
    );
    let mut want = c.common_facts();
    want.extend([
        format!("{agent_sha}  /usr/local/bin/sapari-agent"),
        "ExecStart=/usr/local/bin/sapari-agent converge".into(),
        "ExecStart=/usr/local/bin/sapari-agent firewall apply".into(),
    ]);
    c.facts(
        &format!(
            "{COMMON_FACTS_SH}; sudo sha256sum /usr/local/bin/sapari-agent; \
             grep -h '^ExecStart=' /usr/local/lib/systemd/system/sapari-agent.service \
               /usr/local/lib/systemd/system/sapari-docker-firewall.service"
        ),
        &want,
    );
    c.last_run();

    // The project key cloud-init gave root was imported for deploy (Hetzner's flow)...
    c.vm.ssh_ok("deploy", &c.project_key, "true");
    // ...and root may no longer use it. Last, and few: fail2ban bans after 5 failures.
    let o = c.vm.ssh("root", &c.project_key, "true");
    assert!(
        !o.status.success() && text(&o.stderr).contains("Permission denied"),
        "root login with its authorized key:\n{}",
        describe(&o)
    );
    // The image lets root log in with a password (as Hetzner's do): the server no longer even
    // offers password authentication.
    for user in ["root", "deploy"] {
        let o = c.vm.ssh_password(user, &root_password(image), "true");
        assert!(
            !o.status.success() && text(&o.stderr).contains("Permission denied (publickey)"),
            "password login as {user}:\n{}",
            describe(&o)
        );
    }
    eprintln!("boot-test: {tag}: checked in {:.0?}", c.t0.elapsed());
}

#[test]
#[ignore = "system test: needs root; run scripts/test.sh"]
fn first_boot_from_the_deb_installs_the_package_and_converges() {
    let _one_vm = VM_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let work = workdir("deb");
    let agent = agent_binary();
    let agent_sha = sha256_hex(&fs::read(&agent).unwrap());
    // The package as the repository builds it, around the same binary.
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/build-deb.sh");
    let o = run_ok(
        Command::new("bash")
            .arg(&script)
            .arg(&agent)
            .env("SAPARI_DEB_OUT", work.path().join("deb")),
        Duration::from_secs(120),
    );
    let deb = PathBuf::from(text(&o.stdout).lines().last().unwrap_or("").trim());
    let name = deb.file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.ends_with(".deb"), "build-deb.sh printed {deb:?}");
    let c = converged_first_boot(
        &vm_image(),
        Source::NoCloud,
        "deb",
        &name,
        fs::read(&deb).unwrap(),
        work,
    );
    let mut want = c.common_facts();
    want.extend([
        format!("{agent_sha}  /usr/bin/sapari-agent"),
        "pkg=install ok installed".into(),
        "ExecStart=/usr/bin/sapari-agent converge".into(),
        "local=none".into(),
    ]);
    c.facts(
        &format!(
            "{COMMON_FACTS_SH}; sudo sha256sum /usr/bin/sapari-agent; \
             echo pkg=$(dpkg-query -W -f='${{Status}}' sapari-agent); \
             systemctl cat sapari-agent.service | grep '^ExecStart='; \
             ls /usr/local/bin/sapari-agent /usr/local/lib/systemd/system/sapari-agent.service 2>/dev/null \
               | sed 's/^/local=/' | grep . || echo local=none"
        ),
        &want,
    );
    c.last_run();
    eprintln!("boot-test: deb: checked in {:.0?}", c.t0.elapsed());
}

#[test]
#[ignore = "system test: needs root; run scripts/test.sh"]
// One VM boot, looked at live and then from its disk after power-off: the boot is the slow part.
fn wrong_sha256_installs_nothing_and_cloud_init_reports_it() {
    let _one_vm = VM_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let t0 = Instant::now();
    let image = vm_image();
    let work = workdir("badsha");
    let agent = agent_binary();
    let binary = fs::read(&agent).unwrap();
    let agent_sha = sha256_hex(&binary);
    let wrong_sha = sha256_hex(b"not the agent");
    let server = ArtifactServer::serve(ARTIFACT_PATH, binary);

    let (_deploy_key, deploy_pub) = keygen(work.path(), "deploy");
    let (_project_key, project_pub) = keygen(work.path(), "hetzner-project");
    let config = write_config(work.path(), &test_config(&deploy_pub));
    let user_data = render(&agent, &config, &server.guest_url(), &wrong_sha);

    let mut vm = Vm::boot(
        &image,
        &work.path().join("vm"),
        &user_data,
        &meta_data("badsha", &project_pub),
        server.port,
    );
    let finished = vm.wait_cloud_init_finished(env_secs("SAPARI_TEST_VM_BOOT_TIMEOUT", 600));
    eprintln!("boot-test: wrong sha256: cloud-init finished {finished:.0?} after qemu started");
    log_bootstrap(&vm.console());
    let mismatch = format!(
        "sha256 mismatch for {}: expected {wrong_sha}, got {agent_sha}",
        server.guest_url()
    );
    assert!(
        vm.console().contains(&mismatch),
        "no `{mismatch}` on the console\n{}",
        vm.console_tail()
    );
    server.assert_only_fetched();

    // The agent never ran, so the box is as Hetzner delivers it: root logs in with its
    // password. That is also how an operator would look at cloud-init's verdict.
    let o = vm.ssh_password(
        "root",
        &root_password(&image),
        "cloud-init status --long; echo rc=$?",
    );
    let st = text(&o.stdout);
    eprintln!("boot-test: wrong sha256: `cloud-init status --long` as root:\n{st}");
    assert!(
        st.lines().any(|l| l.trim() == "status: error") && !st.contains("rc=0"),
        "cloud-init status after a bad download:\n{}",
        describe(&o)
    );
    let _ = vm.ssh_password("root", &root_password(&image), "systemctl poweroff");
    let clean = vm.wait_exit(Duration::from_secs(120));
    eprintln!("boot-test: wrong sha256: guest powered off (clean: {clean})");

    // From the disk, after power-off: what cloud-init recorded, and what is not there.
    let raw = vm.disk_raw();
    let result: Value = serde_json::from_str(
        &debugfs_cat(&raw, "/var/lib/cloud/data/result.json").expect("result.json on the disk"),
    )
    .expect("result.json");
    let errors = result["v1"]["errors"].to_string();
    eprintln!("boot-test: wrong sha256: result.json errors on the disk: {errors}");
    assert!(
        errors.contains("scripts_user") || errors.contains("scripts-user"),
        "errors in result.json: {result}"
    );
    let output = debugfs_cat(&raw, "/var/log/cloud-init-output.log").unwrap_or_default();
    assert!(
        output.contains(&mismatch),
        "cloud-init-output.log:\n{output}"
    );
    // The script's exit code is the one cloud-init saw: 65 is the verification's. cloud-init
    // 22.4 logs it in the ProcessExecutionError text, on the line after the command.
    let log = debugfs_cat(&raw, "/var/log/cloud-init.log").unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    assert!(
        lines.windows(2).any(|w| {
            w[0].contains("Command: ['/var/lib/cloud/instance/scripts/runcmd']")
                && w[1].trim() == "Exit code: 65"
        }),
        "cloud-init.log does not show runcmd's exit code 65:\n{}",
        lines
            .iter()
            .filter(|l| l.contains("runcmd") || l.contains("Exit code"))
            .copied()
            .collect::<Vec<_>>()
            .join("\n")
    );
    for absent in [
        AGENT_PATH,
        "/usr/local/lib/systemd/system/sapari-agent.service",
        "/usr/local/lib/systemd/system/sapari-agent.timer",
        "/var/lib/sapari-agent/last-run.json",
        "/etc/sudoers.d/90-sapari-deploy",
    ] {
        assert!(
            debugfs_cat(&raw, absent).is_none(),
            "{absent} exists although the download was refused"
        );
    }
    // write_files ran before the script: the config is there, ready for a re-run by hand.
    assert!(debugfs_cat(&raw, CONFIG_PATH).is_some());
    eprintln!("boot-test: wrong sha256 checked in {:.0?}", t0.elapsed());
}

/// Runs `script` with `sh` in a private mount namespace, in a chroot of an overlay of the
/// image's tree: cloud-init stays off the test host, and the cached tree is never written.
fn in_image_chroot(image: &Path, work: &Path, files: &[(&str, &[u8])], script: &str) -> Output {
    let ov = work.join("overlay");
    for d in ["upper", "work", "merged"] {
        fs::create_dir_all(ov.join(d)).unwrap();
    }
    let stage = work.join("stage");
    fs::create_dir_all(&stage).unwrap();
    for (name, data) in files {
        fs::write(stage.join(name), data).unwrap();
    }
    let merged = ov.join("merged");
    let outer = format!(
        "set -e; mount -t overlay overlay -o lowerdir={},upperdir={},workdir={} {m}; \
         mount -t proc proc {m}/proc; mkdir -p {m}/tmp/in; cp -a {}/. {m}/tmp/in/; \
         exec chroot {m} /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1 /bin/sh -c {}",
        sh_quote(&image.join("rootfs").to_string_lossy()),
        sh_quote(&ov.join("upper").to_string_lossy()),
        sh_quote(&ov.join("work").to_string_lossy()),
        sh_quote(&stage.to_string_lossy()),
        sh_quote(script),
        m = sh_quote(&merged.to_string_lossy()),
    );
    run(
        Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c"])
            .arg(outer),
        Duration::from_secs(300),
    )
}

/// Prints, as JSON, what cloud-init's YAML loader makes of a user-data file: the top-level
/// keys, runcmd, and the files write_files would write (b64 decoded).
const LOAD_PY: &str = r#"
import base64, json, sys, yaml
d = yaml.safe_load(open(sys.argv[1], encoding="utf-8"))
files = {}
for f in d.get("write_files", []):
    c = f.get("content", "")
    if f.get("encoding") == "b64":
        c = base64.b64decode(c).decode("utf-8")
    files[f["path"]] = {"content": c, "permissions": f.get("permissions"), "owner": f.get("owner")}
print(json.dumps({"keys": sorted(d), "runcmd": d.get("runcmd"), "files": files}))
"#;

/// (name, artifact URL, agent.toml) for each user-data the schema test renders.
fn schema_cases() -> Vec<(&'static str, String, String)> {
    let example =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/agent.toml"))
            .unwrap();
    vec![
        (
            "binary",
            "https://example.com/releases/sapari-agent".into(),
            example.clone(),
        ),
        (
            "deb",
            "https://example.com/sapari-agent_0.1.0_amd64.deb".into(),
            example,
        ),
        (
            "boot-test",
            artifact_url(),
            test_config(
                "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIL5XCtKcP+JC48vXbIoe+UVO/zcUdqfXFZ2HI0vvRsPW operator",
            ),
        ),
        (
            "no-final-newline",
            "https://example.com/a".into(),
            "[swap]\nsize = \"2G\"".into(),
        ),
        (
            "indented-and-blank-lines",
            "https://example.com/a".into(),
            "  # indented first line\n\n[swap]\n   \nsize = \"2G\"\n\n\n".into(),
        ),
        (
            "tabs-go-base64",
            "https://example.com/a".into(),
            "[swap]\n\tsize = \"2G\"\n".into(),
        ),
        (
            "unicode",
            "https://example.com/a".into(),
            "# déjà vu, 日本語\n[hostname]\nname = \"a\"\n".into(),
        ),
        ("empty", "https://example.com/a".into(), String::new()),
    ]
}

#[test]
#[ignore = "system test: needs root; run scripts/test.sh"]
fn rendered_user_data_passes_cloud_init_schema() {
    let image = vm_image();
    let work = workdir("schema");
    let agent = agent_binary();
    let sha = sha256_hex(b"some artifact");
    let cases = schema_cases();
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    let mut script = String::from("set -u; cd /tmp/in; fail=0\n");
    for (name, url, cfg) in &cases {
        let dir = work.path().join(name);
        fs::create_dir_all(&dir).unwrap();
        let ud = render(&agent, &write_config(&dir, cfg), url, &sha);
        files.push((format!("{name}.yaml"), ud.into_bytes()));
        script.push_str(&format!(
            "echo \"== {name}\"; cloud-init schema --config-file {name}.yaml || fail=1; python3 load.py {name}.yaml > {name}.json || fail=1\n\
             python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[\"files\"][\"/usr/local/sbin/sapari-agent-bootstrap\"][\"content\"], end=\"\")' {name}.json > {name}.sh && dash -n {name}.sh || fail=1\n"
        ));
    }
    // The check must be able to fail: a user-data cloud-init would reject.
    files.push((
        "invalid.yaml".into(),
        b"#cloud-config\nruncmd: 5\nwrite_files: nope\n".to_vec(),
    ));
    files.push(("load.py".into(), LOAD_PY.as_bytes().to_vec()));
    script.push_str(
        "echo '== invalid'; if cloud-init schema --config-file invalid.yaml; then echo 'invalid.yaml passed'; fail=1; fi\n\
         for f in *.json; do echo \"@@ $f\"; cat \"$f\"; done\nexit $fail\n",
    );
    let refs: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(n, d)| (n.as_str(), d.as_slice()))
        .collect();
    let o = in_image_chroot(&image, work.path(), &refs, &script);
    let out = text(&o.stdout);
    assert!(
        o.status.success(),
        "cloud-init schema in the image:\n{}",
        describe(&o)
    );
    for (name, url, cfg) in &cases {
        assert!(
            out.contains(&format!("Valid cloud-config: {name}.yaml")),
            "{name}: no `Valid cloud-config`\n{out}"
        );
        let json = out
            .split(&format!("@@ {name}.json\n"))
            .nth(1)
            .and_then(|s| s.lines().next())
            .unwrap_or_else(|| panic!("{name}: no loader output\n{out}"));
        let v: Value = serde_json::from_str(json).unwrap();
        assert_eq!(
            v["keys"],
            serde_json::json!(["runcmd", "write_files"]),
            "{name}"
        );
        assert_eq!(
            v["runcmd"],
            serde_json::json!([["/bin/sh", "/usr/local/sbin/sapari-agent-bootstrap"]]),
            "{name}: exactly one runcmd entry"
        );
        let toml = &v["files"][CONFIG_PATH];
        assert_eq!(
            toml["content"].as_str(),
            Some(cfg.as_str()),
            "{name}: agent.toml as YAML loads it"
        );
        assert_eq!(toml["permissions"], "0600", "{name}");
        assert_eq!(toml["owner"], "root:root", "{name}");
        let boot = v["files"]["/usr/local/sbin/sapari-agent-bootstrap"]["content"]
            .as_str()
            .unwrap();
        assert!(boot.contains(&format!("SHA256={sha}\n")), "{name}");
        assert!(boot.contains(&format!("URL='{url}'\n")), "{name}");
    }
}
