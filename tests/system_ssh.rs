// Tests drive the machine from outside the agent: clippy.toml's boundary is the agent's.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]
//! SSH access, checked the way an operator would: a real `ssh` client in an "operator"
//! network namespace logs in (or fails to) against the container's real sshd.
//! Root only; run through scripts/test.sh.

mod common;

use common::{CONFIG_PATH, SERVER, SSHD_TAKE_CONFIG};

use common::describe;
use common::report::{json, resource};

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{Peer, SshActivation, TestBox, sh_quote};

const ROOT_PW: &str = "Root-pw-4711";
const ALICE_PW: &str = "Alice-pw-4711";

fn keys() -> common::OperatorKey {
    common::operator_key()
}

use common::ssh::logged_in;

fn ssh_key(peer: &Peer, key: &Path, user: &str, cmd: &str) -> Output {
    common::ssh::with_key(peer, SERVER, key, user, cmd)
}

fn ssh_password(peer: &Peer, user: &str, pw: &str) -> Output {
    common::ssh::with_password(peer, SERVER, user, pw)
}

/// A fresh cloud image as Hetzner hands it over: root with the project's key and a
/// password, cloud-init's drop-in allowing passwords, and a second user with a password.
fn cloud_image(b: &TestBox, op_pub: &str, root_key: bool) {
    b.nsenter_ok(&format!(
        "echo root:{ROOT_PW} | chpasswd
         useradd -m -s /bin/bash alice && echo alice:{ALICE_PW} | chpasswd
         install -d -m 700 /root/.ssh
         {}
         printf 'PasswordAuthentication yes\\nPermitRootLogin yes\\n' > /etc/ssh/sshd_config.d/50-cloud-init.conf
         {SSHD_TAKE_CONFIG}",
        if root_key {
            format!("echo {} > /root/.ssh/authorized_keys", sh_quote(op_pub))
        } else {
            String::new()
        }
    ));
    std::thread::sleep(Duration::from_millis(300));
}

fn boot_with_operator() -> (TestBox, Peer) {
    let b = TestBox::boot();
    let op = b.add_peer("op", &format!("{SERVER}/24"), "192.0.2.50/24");
    b.nsenter_ok("mkdir -p /etc/sapari-agent");
    b.write(
        CONFIG_PATH,
        b"[ntp]\nrequire_sync = false\n[swap]\nenabled = false\n",
        0o600,
    );
    (b, op)
}

fn host_key_fingerprints(b: &TestBox) -> String {
    b.nsenter_ok("for k in /etc/ssh/ssh_host_*_key.pub; do ssh-keygen -lf $k; done")
}

fn ssh_audit() -> String {
    std::env::var("SSH_AUDIT")
        .unwrap_or_else(|_| "/var/cache/sapari-agent-tests/venv-ssh-audit/bin/ssh-audit".into())
}

#[test]
#[ignore = "system test: needs root; run scripts/test.sh"]
// One box: the rerun must find the host keys and the deploy key the first converge left.
fn hardened_sshd_admits_the_deploy_key_only() {
    let k = keys();
    let op_pub = std::fs::read_to_string(k.private.with_extension("pub")).unwrap();
    let (b, op) = boot_with_operator();
    cloud_image(&b, op_pub.trim(), true);

    // Controls: before the agent runs, passwords and root work, so refusals later are its doing.
    assert!(
        logged_in(&ssh_password(&op, "alice", ALICE_PW)),
        "control: password login"
    );
    assert!(
        logged_in(&ssh_key(&op, &k.private, "root", "echo LOGIN-OK")),
        "control: root key login"
    );
    let fingerprints = host_key_fingerprints(&b);

    // An open session across the converge: reload, not restart, must keep it.
    let session = Command::new("ip")
        .args(["netns", "exec", &op.netns, "ssh"])
        .args(common::ssh::SSH_OPTS.split(' '))
        .args(["-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-i"])
        .arg(&k.private)
        .arg(format!("root@{SERVER}"))
        .arg("echo SESSION-UP; sleep 6; echo SESSION-SURVIVED")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let socket_since = "systemctl show -p ActiveEnterTimestampMonotonic --value ssh.socket";
    let (listener_before, pid_before) = (
        b.exec_ok(socket_since),
        b.exec_ok("systemctl show -p MainPID --value ssh.service"),
    );

    let o = b.agent(&["converge", "--json", "--only", "users,sshd,deploy-key"]);
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    let r = json(&o);
    assert_eq!(resource(&r, "users")["status"], "changed", "{r:#}");
    assert_eq!(resource(&r, "sshd")["status"], "changed", "{r:#}");
    if b.ssh_activation() == SshActivation::Socket {
        // Restarted (a SIGHUP would have made it exit), while ssh.socket kept port 22.
        assert_eq!(
            b.exec_ok(socket_since),
            listener_before,
            "ssh.socket restarted"
        );
        assert_ne!(
            b.exec_ok("systemctl show -p MainPID --value ssh.service"),
            pid_before,
            "ssh.service was not restarted"
        );
        assert_eq!(
            b.exec_ok("systemctl is-active ssh.service").trim(),
            "active"
        );
        let notes = resource(&r, "sshd").to_string();
        assert!(notes.contains("started by ssh.socket"), "{notes}");
    }

    let s = session.wait_with_output().unwrap();
    assert!(
        String::from_utf8_lossy(&s.stdout).contains("SESSION-SURVIVED"),
        "open session died in the reload: {}",
        describe(&s)
    );

    let deploy = ssh_key(
        &op,
        &k.private,
        "deploy",
        "id -nG; sudo -n true && echo SUDO-OK; echo LOGIN-OK",
    );
    let out = String::from_utf8_lossy(&deploy.stdout);
    assert!(
        out.contains("LOGIN-OK"),
        "deploy key login: {}",
        describe(&deploy)
    );
    assert!(
        out.contains("SUDO-OK"),
        "passwordless sudo: {}",
        describe(&deploy)
    );
    assert!(
        out.contains("sudo") && out.contains("docker"),
        "groups: {out}"
    );

    assert!(
        !logged_in(&ssh_password(&op, "alice", ALICE_PW)),
        "password login must be refused"
    );
    assert!(
        !logged_in(&ssh_password(&op, "root", ROOT_PW)),
        "root password login must be refused"
    );
    assert!(
        !logged_in(&ssh_key(&op, &k.private, "root", "echo LOGIN-OK")),
        "root key login must be refused"
    );

    // Effective values, despite 50-cloud-init.conf saying yes.
    let t = b.nsenter_ok("sshd -T -C user=deploy,host=x,addr=192.0.2.50");
    for want in [
        "passwordauthentication no",
        "permitrootlogin no",
        "kbdinteractiveauthentication no",
        "authenticationmethods publickey",
        "maxauthtries 3",
        "allowtcpforwarding no",
        "x11forwarding no",
        "maxstartups 10:30:60",
        "loglevel VERBOSE",
        "kexalgorithms sntrup761x25519-sha512@openssh.com",
    ] {
        assert!(t.lines().any(|l| l == want), "sshd -T lacks `{want}`:\n{t}");
    }
    assert!(
        b.read_string("/etc/ssh/sshd_config.d/50-cloud-init.conf")
            .unwrap()
            .contains("PasswordAuthentication yes"),
        "cloud-init's file is left alone; ours wins by sorting first"
    );

    // ssh-audit from the operator's side: no failures, no warnings.
    let audit = op.exec(&format!(
        "{} --no-colors --skip-rate-test {SERVER}",
        ssh_audit()
    ));
    let text = String::from_utf8_lossy(&audit.stdout);
    assert!(
        text.contains("sntrup761"),
        "ssh-audit did not run: {}",
        describe(&audit)
    );
    let bad: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("[fail]") || l.contains("[warn]"))
        .collect();
    assert!(
        bad.is_empty(),
        "ssh-audit findings:\n{}\n\nfull report:\n{text}",
        bad.join("\n")
    );

    // The GitHub deploy key: made once, printed for pasting, used by git over ssh.
    assert_eq!(resource(&r, "deploy-key")["status"], "changed", "{r:#}");
    let key = "/home/deploy/.ssh/github_deploy_key";
    assert_eq!(
        b.exec_ok(&format!("stat -c '%a %U' {key} {key}.pub")),
        "600 deploy\n644 deploy\n"
    );
    let public = b.read_string(&format!("{key}.pub")).unwrap();
    let pub_body: String = public
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        resource(&r, "deploy-key")["notes"]
            .to_string()
            .contains(&pub_body),
        "public key not in the report: {r:#}"
    );
    let deploy_fp = b.exec_ok(&format!("ssh-keygen -lf {key}.pub"));
    let derived = b.exec_ok(&format!("ssh-keygen -y -f {key}"));
    assert_eq!(
        derived.split_whitespace().nth(1),
        public.split_whitespace().nth(1),
        "pub matches private"
    );
    let known = b.read_string("/home/deploy/.ssh/known_hosts").unwrap();
    assert!(known.contains("github.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"), "{known}");
    let g = b.exec_ok("runuser -u deploy -- ssh -G github.com");
    assert!(g.lines().any(|l| l == format!("identityfile {key}")), "{g}");
    assert!(g.lines().any(|l| l == "identitiesonly yes"), "{g}");
    assert!(g.lines().any(|l| l == "user git"), "{g}");

    // Idempotence: nothing to do, host keys and the deploy key untouched.
    let o2 = b.agent(&["converge", "--json", "--only", "users,sshd,deploy-key"]);
    assert_eq!(o2.status.code(), Some(0), "{}", describe(&o2));
    let r2 = json(&o2);
    assert_eq!(r2["summary"]["changed"], 0, "{r2:#}");
    assert_eq!(host_key_fingerprints(&b), fingerprints, "host keys changed");
    assert_eq!(
        b.exec_ok(&format!("ssh-keygen -lf {key}.pub")),
        deploy_fp,
        "deploy key rotated"
    );

    let st = json(&b.agent(&["status", "--json", "--only", "users,sshd,deploy-key"]));
    for c in st["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["name"] != "last converge")
    {
        assert_eq!(c["level"], "PASS", "{c}");
    }
}

#[test]
#[ignore = "system test: needs root; run scripts/test.sh"]
fn lockout_guard_leaves_sshd_untouched_without_a_usable_key() {
    let k = keys();
    let op_pub = std::fs::read_to_string(k.private.with_extension("pub")).unwrap();
    let (b, op) = boot_with_operator();
    cloud_image(&b, op_pub.trim(), false);
    let before = b.snapshot(&["/etc/ssh"]);

    let o = b.agent(&["converge", "--json", "--only", "users,sshd"]);
    assert_eq!(o.status.code(), Some(1), "{}", describe(&o));
    let r = json(&o);
    let sshd = resource(&r, "sshd");
    assert_eq!(sshd["status"], "failed", "{r:#}");
    let e = sshd["error"].as_str().unwrap();
    assert!(
        e.contains("refusing") && e.contains("authorized_keys"),
        "{e}"
    );
    assert!(
        resource(&r, "users")["notes"]
            .to_string()
            .contains("no authorized key"),
        "users warns too: {r:#}"
    );

    assert_eq!(b.snapshot(&["/etc/ssh"]), before, "sshd files changed");
    assert!(
        logged_in(&ssh_password(&op, "alice", ALICE_PW)),
        "password login must still work"
    );
}

#[test]
#[ignore = "system test: needs root; run scripts/test.sh"]
// One box: each drop-in case starts from the sshd the previous converge left.
fn broken_or_overriding_drop_ins_are_named_and_never_reloaded_into() {
    let k = keys();
    let op_pub = std::fs::read_to_string(k.private.with_extension("pub")).unwrap();
    let (b, op) = boot_with_operator();
    cloud_image(&b, op_pub.trim(), true);

    // Someone else's broken file: no reload into a daemon that would not start.
    b.write(
        "/etc/ssh/sshd_config.d/05-broken.conf",
        b"PermitRootLogn no\n",
        0o644,
    );
    let pid_before = b.exec_ok("systemctl show -p MainPID --value ssh.service");
    let before = b.snapshot(&["/etc/ssh"]);
    let o = b.agent(&["converge", "--json", "--only", "users,sshd"]);
    assert_eq!(o.status.code(), Some(1), "{}", describe(&o));
    let r = json(&o);
    let e = resource(&r, "sshd")["error"].as_str().unwrap().to_string();
    assert!(
        e.contains("05-broken.conf"),
        "error must name the file: {e}"
    );
    assert_eq!(
        b.snapshot(&["/etc/ssh"]),
        before,
        "files changed despite the broken config"
    );
    assert_eq!(
        b.exec_ok("systemctl show -p MainPID --value ssh.service"),
        pid_before
    );
    if b.ssh_activation() == SshActivation::Socket {
        // No daemon ran before the first login, and the agent started none: the next
        // connection's ssh.service fails its `sshd -t` on the foreign file, agent or not.
        assert_ne!(
            b.exec_ok("systemctl is-active ssh.service || true").trim(),
            "active"
        );
    } else {
        assert!(
            logged_in(&ssh_password(&op, "alice", ALICE_PW)),
            "old daemon still serving"
        );
    }

    // An earlier-sorting file that re-enables passwords: named, then neutralized on request.
    b.nsenter_ok("rm /etc/ssh/sshd_config.d/05-broken.conf");
    b.write(
        "/etc/ssh/sshd_config.d/01-legacy.conf",
        b"PasswordAuthentication yes\nBanner none\n",
        0o644,
    );
    let o = b.agent(&["converge", "--json", "--only", "users,sshd"]);
    assert_eq!(o.status.code(), Some(1), "{}", describe(&o));
    let e = resource(&json(&o), "sshd")["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        e.contains("01-legacy.conf") && e.contains("neutralize_overrides"),
        "{e}"
    );
    assert!(
        logged_in(&ssh_password(&op, "alice", ALICE_PW)),
        "nothing applied"
    );

    b.write(
        CONFIG_PATH,
        b"[ntp]\nrequire_sync = false\n[swap]\nenabled = false\n[sshd]\nneutralize_overrides = true\n",
        0o600,
    );
    let o = b.agent(&["converge", "--json", "--only", "users,sshd"]);
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    let legacy = b
        .read_string("/etc/ssh/sshd_config.d/01-legacy.conf")
        .unwrap();
    assert!(legacy.starts_with("# disabled by sapari-agent"), "{legacy}");
    assert!(
        legacy.contains("Banner none"),
        "other settings kept: {legacy}"
    );
    assert!(
        !logged_in(&ssh_password(&op, "alice", ALICE_PW)),
        "password login refused now"
    );
    assert!(logged_in(&ssh_key(
        &op,
        &k.private,
        "deploy",
        "echo LOGIN-OK"
    )));
}
