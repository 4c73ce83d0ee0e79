// Tests drive the machine from outside the agent: clippy.toml's boundary is the agent's.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]
//! Security properties of the users and sshd resources, checked against a real sshd in a
//! container with a real `ssh` client in "operator" network namespaces: a restricted root
//! key stays restricted for deploy, root does not follow a user's planted links or read
//! their FIFOs, the lock-out guard refuses an AllowUsers that lets nobody in, and a run
//! killed between writing sshd's files and reloading sshd is finished by the next run.
//! Root only; run through scripts/test.sh.

mod common;

use common::{AGENT_PATH, CONFIG_PATH, SERVER, SSHD_TAKE_CONFIG};

use common::describe;
use common::report::{json, resource};

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use common::{BoxOptions, Peer, TestBox, sh_quote};

const ROOT_PW: &str = "Root-pw-4711";
const ALICE_PW: &str = "Alice-pw-4711";
const BASE_TOML: &str = "[ntp]\nrequire_sync = false\n[swap]\nenabled = false\n";
const RELOAD_PENDING: &str = "/run/sapari-agent/sshd.reload-pending";
/// The options cloud-init's `disable_root_opts` puts before root's keys.
const CLOUD_INIT_REDIRECT: &str = r#"no-port-forwarding,no-agent-forwarding,no-X11-forwarding,command="echo 'Please login as the user \"debian\" rather than the user \"root\".';echo;sleep 10;exit 142""#;

use common::ssh::logged_in;

fn ssh_key(peer: &Peer, key: &Path, user: &str, cmd: &str) -> Output {
    common::ssh::with_key(peer, SERVER, key, user, cmd)
}

fn ssh_password(peer: &Peer, user: &str, pw: &str) -> Output {
    common::ssh::with_password(peer, SERVER, user, pw)
}

fn deploy_key_login(op: &Peer, key: &Path) -> bool {
    logged_in(&ssh_key(op, key, "deploy", "echo LOGIN-OK"))
}

/// A fresh cloud image as Hetzner hands it over: root with a password and `root_keys` in
/// /root/.ssh/authorized_keys, cloud-init's drop-in allowing passwords, and a second user
/// (alice) with a password.
fn cloud_image(b: &TestBox, root_keys: &str) {
    b.nsenter_ok(&format!(
        "echo root:{ROOT_PW} | chpasswd
         useradd -m -s /bin/bash alice && echo alice:{ALICE_PW} | chpasswd
         install -d -m 700 /root/.ssh
         printf '%s\\n' {} > /root/.ssh/authorized_keys
         chmod 600 /root/.ssh/authorized_keys
         printf 'PasswordAuthentication yes\\nPermitRootLogin yes\\n' > /etc/ssh/sshd_config.d/50-cloud-init.conf
         {SSHD_TAKE_CONFIG}",
        sh_quote(root_keys)
    ));
    std::thread::sleep(Duration::from_millis(300));
}

fn configure(b: &TestBox, extra: &str) {
    b.nsenter_ok("mkdir -p /etc/sapari-agent");
    b.write(CONFIG_PATH, format!("{BASE_TOML}{extra}").as_bytes(), 0o600);
}

fn boot_box(agent: Option<PathBuf>) -> (TestBox, Peer) {
    let b = TestBox::boot_with(BoxOptions {
        agent,
        ..BoxOptions::default()
    });
    let op = b.add_peer("op", &format!("{SERVER}/24"), "192.0.2.50/24");
    configure(&b, "");
    (b, op)
}

fn converge_ok(b: &TestBox, only: &str) -> serde_json::Value {
    let o = b.agent(&["converge", "--json", "--only", only]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "converge --only {only}: {}",
        describe(&o)
    );
    json(&o)
}

fn error_of(r: &serde_json::Value, name: &str) -> String {
    let res = resource(r, name);
    assert_eq!(res["status"], "failed", "{r:#}");
    res["error"]
        .as_str()
        .unwrap_or_else(|| panic!("{name} failed without an error: {r:#}"))
        .to_string()
}

fn sshd_effective(b: &TestBox, user: &str) -> String {
    b.nsenter_ok(&format!("sshd -T -C user={user},host=x,addr=192.0.2.50"))
}

#[test]
#[ignore = "system test: needs root; run scripts/test.sh"]
// One box: the logins after the converge are judged against the controls taken before it.
fn restricted_root_key_stays_restricted() {
    let t0 = Instant::now();
    let restricted = common::operator_key();
    let redirected = common::operator_key();
    let (b, op) = boot_box(None);
    // The one address the restricted key admits, with a client there: a refusal from the
    // operator's address is then from= at work, not a key or account that does not work.
    let near = b.add_peer("near", &format!("{SERVER}/24"), "198.51.100.99/24");
    let restricted_line = format!(
        r#"from="198.51.100.99",command="echo FORCED-COMMAND",restrict {}"#,
        restricted.public
    );
    cloud_image(
        &b,
        &format!(
            "{restricted_line}\n{CLOUD_INIT_REDIRECT} {}",
            redirected.public
        ),
    );

    // Controls: root honours the options before the agent runs.
    let o = ssh_key(&op, &restricted.private, "root", "echo LOGIN-OK");
    assert!(
        !logged_in(&o),
        "control: from= refuses root from 192.0.2.50: {}",
        describe(&o)
    );
    let o = ssh_key(&near, &restricted.private, "root", "echo LOGIN-OK");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("FORCED-COMMAND") && !out.contains("LOGIN-OK"),
        "control: root from 198.51.100.99 gets the forced command: {}",
        describe(&o)
    );

    let r = converge_ok(&b, "users,sshd");
    assert_eq!(resource(&r, "users")["status"], "changed", "{r:#}");
    assert_eq!(resource(&r, "sshd")["status"], "changed", "{r:#}");

    let ak = b.read_string("/home/deploy/.ssh/authorized_keys").unwrap();
    let lines: Vec<&str> = ak.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        b.nsenter_ok("grep -c 'from=\"198.51.100.99\"' /home/deploy/.ssh/authorized_keys")
            .trim(),
        "1",
        "{ak}"
    );
    assert!(
        lines.contains(&restricted_line.as_str()),
        "the restricted line is kept verbatim:\n{ak}"
    );
    let redirected_body = redirected.public.split_whitespace().nth(1).unwrap();
    let redirected_line = lines
        .iter()
        .find(|l| l.contains(redirected_body))
        .unwrap_or_else(|| panic!("cloud-init's redirected key was not imported:\n{ak}"));
    assert!(
        !redirected_line.contains("Please login"),
        "cloud-init's redirect is dropped: {redirected_line}"
    );

    // From the operator's address the restricted key is refused for deploy too; the
    // other imported key logs in from the same address, so the account and sshd work.
    let o = ssh_key(&op, &restricted.private, "deploy", "echo LOGIN-OK");
    assert!(
        !logged_in(&o) && !String::from_utf8_lossy(&o.stdout).contains("FORCED-COMMAND"),
        "restricted root key must not admit deploy from 192.0.2.50: {}",
        describe(&o)
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Permission denied"),
        "refused by authentication: {}",
        describe(&o)
    );
    assert!(
        deploy_key_login(&op, &redirected.private),
        "control: the redirected root key admits deploy from 192.0.2.50"
    );
    // From the address it names, the key still only runs its forced command.
    let o = ssh_key(&near, &restricted.private, "deploy", "echo LOGIN-OK");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("FORCED-COMMAND") && !out.contains("LOGIN-OK"),
        "deploy from 198.51.100.99 gets the forced command only: {}",
        describe(&o)
    );
    eprintln!("restricted_root_key_stays_restricted: {:.1?}", t0.elapsed());
}

/// Every non-empty line of /etc/shadow that `text` contains.
fn shadow_lines_in(shadow: &str, text: &str) -> Vec<String> {
    shadow
        .lines()
        .filter(|l| !l.trim().is_empty() && text.contains(l.trim()))
        .map(str::to_string)
        .collect()
}

#[test]
#[ignore = "system test: needs root; run scripts/test.sh"]
// One box and one deploy user: each plant is made in the home the previous run left.
fn planted_links_and_fifos_are_refused() {
    let t0 = Instant::now();
    let k = common::operator_key();
    let (b, op) = boot_box(None);
    cloud_image(&b, &k.public);
    converge_ok(&b, "users");
    assert!(
        deploy_key_login(&op, &k.private),
        "control: deploy key login"
    );

    let shadow = b.read_string("/etc/shadow").unwrap();
    assert!(shadow.contains("root:"), "{shadow}");
    let shadow_hash = b.nsenter_ok("sha256sum /etc/shadow");
    let as_deploy = |script: &str| {
        b.nsenter_ok(&format!(
            "runuser -u deploy -- sh -ec {}",
            sh_quote(&format!(
                "cd /home/deploy/.ssh 2>/dev/null || cd /home/deploy; {script}"
            ))
        ))
    };

    // 1. ~/.ssh/authorized_keys -> /etc/shadow
    as_deploy("rm -f authorized_keys && ln -s /etc/shadow authorized_keys");
    let o = b.agent(&["converge", "--json", "--only", "users"]);
    assert_ne!(o.status.code(), Some(0), "{}", describe(&o));
    let r = json(&o);
    let e = error_of(&r, "users");
    assert!(
        e.contains("symbolic link") && e.contains("authorized_keys"),
        "{e}"
    );
    let leaked = shadow_lines_in(&shadow, &format!("{}{}", stdout(&o), stderr(&o)));
    assert!(leaked.is_empty(), "shadow lines in the output: {leaked:?}");
    let g = b.nsenter("grep -r '^root:' /home/deploy");
    assert_eq!(
        g.status.code(),
        Some(1),
        "no deploy-owned file holds shadow's root line: {}",
        describe(&g)
    );
    let found =
        b.nsenter_ok("find /home/deploy -user deploy -type f -exec cat {} + 2>/dev/null; true");
    let leaked = shadow_lines_in(&shadow, &found);
    assert!(
        leaked.is_empty(),
        "shadow lines in deploy's files: {leaked:?}"
    );
    assert_eq!(
        b.nsenter_ok("sha256sum /etc/shadow"),
        shadow_hash,
        "/etc/shadow changed"
    );
    assert_eq!(
        b.nsenter_ok("readlink /home/deploy/.ssh/authorized_keys")
            .trim(),
        "/etc/shadow",
        "the link is left for its owner to remove"
    );
    assert_eq!(
        b.nsenter_ok("stat -c '%U %a' /etc/shadow").trim(),
        "root 640",
        "/etc/shadow's owner and mode are untouched"
    );

    // 2. a FIFO: the run must end, not block on opening it
    as_deploy("rm -f authorized_keys && mkfifo authorized_keys");
    let started = Instant::now();
    let o = b.exec(&format!(
        "timeout 60 {} converge --json --only users",
        AGENT_PATH
    ));
    let took = started.elapsed();
    assert_ne!(
        o.status.code(),
        Some(124),
        "converge hung on the FIFO: {}",
        describe(&o)
    );
    assert_ne!(o.status.code(), Some(0), "{}", describe(&o));
    assert!(took < Duration::from_secs(55), "converge took {took:?}");
    let e = error_of(&json(&o), "users");
    assert!(
        e.contains("authorized_keys") && (e.contains("FIFO") || e.contains("special file")),
        "{e}"
    );
    assert_eq!(
        b.nsenter_ok("stat -c %F /home/deploy/.ssh/authorized_keys")
            .trim(),
        "fifo",
        "the FIFO is left alone"
    );

    // 3. ~/.ssh -> /root/.ssh: root's keys neither read into nor written through it
    let root_before = b.snapshot(&["/root/.ssh"]);
    let root_keys = b.read_string("/root/.ssh/authorized_keys").unwrap();
    as_deploy("cd /home/deploy && rm -rf .ssh && ln -s /root/.ssh .ssh");
    let o = b.agent(&["converge", "--json", "--only", "users"]);
    assert_ne!(o.status.code(), Some(0), "{}", describe(&o));
    let e = error_of(&json(&o), "users");
    assert!(e.contains("/home/deploy/.ssh"), "{e}");
    assert_eq!(
        b.snapshot(&["/root/.ssh"]),
        root_before,
        "/root/.ssh changed:\n{}",
        common::snapshot_diff(&root_before, &b.snapshot(&["/root/.ssh"]))
    );
    assert_eq!(
        b.read_string("/root/.ssh/authorized_keys").unwrap(),
        root_keys
    );
    assert_eq!(
        b.nsenter_ok("readlink /home/deploy/.ssh").trim(),
        "/root/.ssh",
        "the link is left for its owner to remove"
    );

    // Once the owner removes the link, the next run makes a real ~/.ssh again.
    as_deploy("cd /home/deploy && rm .ssh");
    converge_ok(&b, "users");
    assert_eq!(
        b.nsenter_ok("stat -c '%F %U %a' /home/deploy/.ssh").trim(),
        "directory deploy 700"
    );
    assert!(
        deploy_key_login(&op, &k.private),
        "deploy key login after the repair"
    );
    eprintln!("planted_links_and_fifos_are_refused: {:.1?}", t0.elapsed());
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
#[ignore = "system test: needs root; run scripts/test.sh"]
fn allow_users_that_lock_everyone_out_is_refused() {
    let t0 = Instant::now();
    let k = common::operator_key();
    let (b, op) = boot_box(None);
    cloud_image(&b, &k.public);
    converge_ok(&b, "users,sshd");
    assert!(
        deploy_key_login(&op, &k.private),
        "control: deploy key login"
    );

    configure(&b, "[sshd]\nallow_users = [\"alice\"]\n");
    let before = b.snapshot(&["/etc/ssh"]);
    let pid_before = b.exec_ok("systemctl show -p MainPID --value ssh.service");
    let o = b.agent(&["converge", "--json", "--only", "sshd"]);
    assert_ne!(o.status.code(), Some(0), "{}", describe(&o));
    let e = error_of(&json(&o), "sshd");
    assert!(
        e.contains("refusing") && e.contains("AllowUsers") && e.contains("deploy"),
        "{e}"
    );
    assert_eq!(
        b.snapshot(&["/etc/ssh"]),
        before,
        "files changed:\n{}",
        common::snapshot_diff(&before, &b.snapshot(&["/etc/ssh"]))
    );
    let t = sshd_effective(&b, "deploy");
    assert!(
        !t.lines()
            .any(|l| l.to_ascii_lowercase().starts_with("allowusers")),
        "AllowUsers reached sshd:\n{t}"
    );
    assert!(
        !b.nsenter_ok("grep -rli allowusers /etc/ssh/sshd_config /etc/ssh/sshd_config.d || true")
            .contains("sshd_config"),
        "AllowUsers written to a file"
    );
    assert_eq!(
        b.exec_ok("systemctl show -p MainPID --value ssh.service"),
        pid_before,
        "sshd restarted"
    );
    assert!(
        b.read(RELOAD_PENDING).is_none(),
        "no reload is left pending"
    );
    assert!(
        deploy_key_login(&op, &k.private),
        "deploy still logs in with the key"
    );

    // Control: an AllowUsers that lists deploy is applied, so the refusal above was the guard.
    configure(&b, "[sshd]\nallow_users = [\"deploy\"]\n");
    converge_ok(&b, "sshd");
    let t = sshd_effective(&b, "deploy");
    assert!(t.lines().any(|l| l == "allowusers deploy"), "{t}");
    assert!(
        deploy_key_login(&op, &k.private),
        "deploy key login with AllowUsers deploy"
    );
    eprintln!(
        "allow_users_that_lock_everyone_out_is_refused: {:.1?}",
        t0.elapsed()
    );
}

/// The binary with the crash hooks: $SAPARI_AGENT_CRASH_BIN, else the one every test uses.
fn crash_binary() -> PathBuf {
    std::env::var_os("SAPARI_AGENT_CRASH_BIN")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(common::agent_binary)
}

/// The points of a counting run: (number, label).
fn points(b: &TestBox, file: &str) -> Vec<(usize, String)> {
    b.read_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (n, label) = l.split_once('\t')?;
            Some((n.parse().ok()?, label.to_string()))
        })
        .collect()
}

#[test]
#[ignore = "system test: needs root; run scripts/test.sh"]
// One box: the crash run, the retry and the quiet run each start from what the previous one left.
fn pending_reload_is_retried() {
    let t0 = Instant::now();
    let k = common::operator_key();
    let (b, op) = boot_box(Some(crash_binary()));
    cloud_image(&b, &k.public);
    assert!(
        logged_in(&ssh_password(&op, "alice", ALICE_PW)),
        "control: password login before the agent"
    );
    converge_ok(&b, "users");

    // A counting run learns where sshd's reload comes; /etc/ssh is then put back as it was,
    // so the crash run below starts from the same state and reaches the same points.
    b.nsenter_ok("cp -a /etc/ssh /root/etc-ssh.orig");
    let o = b.agent_env(
        &["converge", "--json", "--only", "sshd"],
        &[("SAPARI_AGENT_TEST_CRASH_COUNT", "/root/count")],
    );
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    let counted = points(&b, "/root/count");
    // A binary without the hooks must fail this test, not pass it unseen.
    assert!(
        !counted.is_empty(),
        "the agent binary {} has no crash points (the counting run listed none); set SAPARI_AGENT_CRASH_BIN to a build with --features crash-points (scripts/test.sh does)",
        crash_binary().display()
    );
    let is_reload = |l: &str| l.starts_with("before systemctl reload ssh");
    let &(at, ref label) = counted
        .iter()
        .find(|(_, l)| is_reload(l))
        .unwrap_or_else(|| panic!("no point before sshd's reload: {counted:#?}"));
    let drop_in_written = counted
        .iter()
        .any(|(n, l)| *n < at && l.starts_with("write /etc/ssh/sshd_config.d/"));
    assert!(
        drop_in_written,
        "the drop-in is written before the reload: {counted:#?}"
    );
    // Control: a whole run refuses passwords, and leaves no marker.
    assert!(
        !logged_in(&ssh_password(&op, "alice", ALICE_PW)),
        "control: a complete run refuses passwords"
    );
    assert!(
        b.read(RELOAD_PENDING).is_none(),
        "a complete run removes the marker"
    );

    b.nsenter_ok(&format!(
        "rm -rf /etc/ssh && cp -a /root/etc-ssh.orig /etc/ssh && {{ {SSHD_TAKE_CONFIG}; }}"
    ));
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        logged_in(&ssh_password(&op, "alice", ALICE_PW)),
        "control: the restored files allow passwords again"
    );

    // Killed after the files are written, before sshd is reloaded.
    let o = b.agent_env(
        &["converge", "--json", "--only", "sshd"],
        &[
            ("SAPARI_AGENT_TEST_CRASH_AT", &at.to_string()),
            ("SAPARI_AGENT_TEST_CRASH_COUNT", "/root/crash"),
        ],
    );
    assert_eq!(
        o.status.code(),
        Some(128 + 9),
        "SIGKILL at {at}: {}",
        describe(&o)
    );
    let died = points(&b, "/root/crash");
    assert_eq!(
        died.last().map(|(n, l)| (*n, l.as_str())),
        Some((at, label.as_str())),
        "the crash run reached other points than the counting run: {died:#?}"
    );
    let on_disk = sshd_effective(&b, "alice");
    assert!(
        on_disk.lines().any(|l| l == "passwordauthentication no"),
        "the files on disk are hardened:\n{on_disk}"
    );
    assert!(
        b.read(RELOAD_PENDING).is_some(),
        "the marker is left behind"
    );
    assert!(
        logged_in(&ssh_password(&op, "alice", ALICE_PW)),
        "the live sshd still runs the old configuration (what the marker is for)"
    );

    // The next run sees files that already match and reloads because of the marker: the
    // plan says why, the converge reports the reload (its notes are those of the check
    // after the apply, when nothing is pending any more).
    let o = b.agent(&["plan", "--json", "--only", "sshd"]);
    let r = json(&o);
    let sshd = resource(&r, "sshd");
    assert_eq!(sshd["status"], "would_change", "{r:#}");
    assert!(
        sshd["notes"]
            .to_string()
            .contains("stopped before reloading"),
        "{r:#}"
    );
    let o = b.agent(&["converge", "--json", "--only", "sshd"]);
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    let r = json(&o);
    let sshd = resource(&r, "sshd");
    assert_eq!(sshd["status"], "changed", "{r:#}");
    let changes = sshd["changes"].as_array().unwrap();
    assert!(
        changes
            .iter()
            .any(|c| c["what"] == "sshd" && c["to"] == "reloaded"),
        "{r:#}"
    );
    assert_eq!(changes.len(), 1, "only the reload, no file: {r:#}");
    assert!(b.read(RELOAD_PENDING).is_none(), "the marker is removed");
    assert!(
        !logged_in(&ssh_password(&op, "alice", ALICE_PW)),
        "password login refused after the retried reload"
    );
    assert!(
        !logged_in(&ssh_password(&op, "root", ROOT_PW)),
        "root password login refused after the retried reload"
    );
    assert!(deploy_key_login(&op, &k.private), "deploy key login");

    // And then nothing is left to do.
    let r = converge_ok(&b, "sshd");
    assert_eq!(r["summary"]["changed"], 0, "{r:#}");
    eprintln!("pending_reload_is_retried: {:.1?}", t0.elapsed());
}
