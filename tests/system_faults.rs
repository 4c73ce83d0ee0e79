// Tests drive the machine from outside the agent: clippy.toml's boundary is the agent's.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]
//! Fault injection ("Proof"): each fault ends with a clear error that names its cause, the
//! previous state intact (compared with `snapshot` before and after), and a rerun that succeeds
//! once the fault is gone. Cases other tests already prove are not repeated here (see the
//! table in README.md, Tests). Cheap cases share one box boot.
//! Root only; run through scripts/test.sh.

mod common;

use common::netfw;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::apt_repo;
use common::describe;
use common::netfw::Fam::{V4, V6};
use common::netfw::{Edge, Reply};
use common::report::{json, resource};
use common::{CONFIG_PATH as CONFIG, PATH, TestBox};

const SUDOERS_D: &str = "/etc/sudoers.d";
const DROP_IN: &str = "/etc/sudoers.d/90-sapari-deploy";
/// The same package set as system_packages, so the cached local repository is shared.
const PACKAGES: &[&str] = &["fail2ban", "unattended-upgrades", "python3-systemd"];

fn operator_key() -> (common::OperatorKey, String) {
    let k = common::operator_key();
    let public = k.public.clone();
    (k, public)
}

fn config(key: &str) -> String {
    common::config::to_toml(&common::config::config(|c| {
        c.users.authorized_keys = vec![key.parse().unwrap()];
        c.swap.enabled = false;
        c.ntp.require_sync = false;
        c.packages.install = vec!["python3-systemd".into()];
        c.packages.lock_timeout = "5s".parse().unwrap();
    }))
}

/// The agent's JSON run of `--only what`, with the exit code checked.
fn converge(b: &TestBox, what: &str, want: i32) -> serde_json::Value {
    let o = b.agent(&["converge", "--json", "--only", what]);
    assert_eq!(o.status.code(), Some(want), "{what}: {}", describe(&o));
    json(&o)
}

fn error_of(r: &serde_json::Value, name: &str) -> String {
    let e = resource(r, name);
    assert_eq!(e["status"], "failed", "{r:#}");
    let msg = e["error"].as_str().unwrap_or_default().to_string();
    eprintln!("{name} failed: {msg}");
    msg
}

/// Temp files and candidate directories a failed write must not leave behind.
fn leftovers(b: &TestBox, dirs: &[&str]) -> String {
    let mut script = String::from("ls -d /tmp/sapari-agent-candidate.* /tmp/sapari-agent-sshd.*");
    for d in dirs {
        script.push_str(&format!(" {d}/.sapari-agent-tmp.*"));
    }
    let o = b.nsenter(&format!("{script} 2>/dev/null; true"));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn assert_same(what: &str, before: &BTreeMap<String, String>, after: &BTreeMap<String, String>) {
    let diff = common::snapshot_diff(before, after);
    assert!(before == after, "{what}: state changed:\n{diff}");
}

/// A visudo that rejects: `mode` "candidate" rejects `visudo -c -f FILE` (the drop-in checked
/// before it is installed), "global" only the whole-configuration `visudo -c` after it.
fn fake_visudo(b: &TestBox, mode: &str) {
    let test = match mode {
        "candidate" => r#"case " $* " in *" -f "*) reject=1;; esac"#,
        _ => r#"case " $* " in *" -f "*) ;; *) reject=1;; esac"#,
    };
    b.write(
        "/usr/local/sbin/visudo",
        format!(
            "#!/bin/sh\nreject=\n{test}\nif [ -n \"$reject\" ]; then echo \"visudo: simulated: syntax error near line 7 <<<\" >&2; exit 1; fi\nexec /usr/sbin/visudo \"$@\"\n"
        )
        .as_bytes(),
        0o755,
    );
}

/// Faults on one box: a broken or unreadable config file, visudo rejecting (the candidate, then
/// the whole configuration), disk full under /etc/sudoers.d, `sshd -t` failing on someone
/// else's drop-in, and apt failing in the middle of an install (a postinst that fails).
#[test]
#[ignore = "system test: needs root; run scripts/test.sh"]
// One box: each fault starts from the state the previous fault's recovery left.
fn faults_on_one_box_fail_clearly_keep_state_and_recover() {
    let t0 = Instant::now();
    let (_kd, key) = operator_key();
    let (b, _repo) = apt_repo::boot_with_repo(PACKAGES);
    let good = config(&key);
    let watched = [
        "/etc/passwd",
        "/etc/group",
        "/etc/shadow",
        SUDOERS_D,
        "/etc/ssh",
        "/home",
        "/etc/sapari-agent",
    ];

    // --- 1. the configuration file: unreadable, truncated, garbage ------------------------
    let mut lap = Instant::now();
    let truncated = &good[..good.find(key.as_str()).unwrap() + key.len() / 2]; // cut inside the key string
    let cases: Vec<(&str, &str, &[&str])> = vec![
        (
            "a directory",
            "rm -f /etc/sapari-agent/agent.toml && mkdir /etc/sapari-agent/agent.toml",
            &["not a regular file"],
        ),
        (
            "not UTF-8",
            "printf '[users]\\nname = \"\\377\\376\"\\n' > /etc/sapari-agent/agent.toml",
            &["UTF-8", "utf-8"],
        ),
        ("truncated mid-value", "", &["agent.toml:"]),
        (
            "truncated to nothing",
            ": > /etc/sapari-agent/agent.toml",
            &["empty"],
        ),
    ];
    for (what, setup, words) in cases {
        b.nsenter_ok("rm -rf /etc/sapari-agent && mkdir -m 755 /etc/sapari-agent");
        if setup.is_empty() {
            b.write(CONFIG, truncated.as_bytes(), 0o600);
        } else {
            b.nsenter_ok(&format!("{setup} && chmod 600 {CONFIG} 2>/dev/null; true"));
        }
        let before = b.snapshot(&watched);
        let o = b.agent(&["converge", "--only", "users"]);
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert_eq!(o.status.code(), Some(78), "{what}: {}", describe(&o));
        eprintln!("config {what}: {}", err.trim());
        assert!(err.contains(CONFIG), "{what}: must name the file: {err}");
        assert!(
            words.iter().any(|w| err.contains(w)),
            "{what}: must say why ({words:?}): {err}"
        );
        assert_same(what, &before, &b.snapshot(&watched));
    }
    // Fixed: the same run goes through.
    b.nsenter_ok("rm -rf /etc/sapari-agent && mkdir -m 755 /etc/sapari-agent");
    b.write(CONFIG, good.as_bytes(), 0o600);
    // (users creates deploy here; the sudoers drop-in is what the next cases are about)
    fake_visudo(&b, "candidate");
    eprintln!("config cases {:.1?}", lap.elapsed());

    // --- 2. visudo rejects the candidate drop-in: it is never installed --------------------
    lap = Instant::now();
    let before = b.snapshot(&[SUDOERS_D]);
    let r = converge(&b, "users", 1);
    let e = error_of(&r, "users");
    assert!(
        e.contains(DROP_IN) && e.contains("rejected") && e.contains("simulated: syntax error"),
        "must name the file and quote visudo: {e}"
    );
    assert_same("candidate rejected", &before, &b.snapshot(&[SUDOERS_D]));
    assert_eq!(leftovers(&b, &[SUDOERS_D]), "", "candidate left behind");
    assert!(
        b.exec("id deploy").status.success(),
        "the other steps of users still ran"
    );

    // --- 3. visudo -c rejects the whole configuration after the install: restored ----------
    fake_visudo(&b, "global");
    let r = converge(&b, "users", 1);
    let e = error_of(&r, "users");
    assert!(
        e.contains("restored") && e.contains(DROP_IN) && e.contains("simulated: syntax error"),
        "{e}"
    );
    assert_same("global check failed", &before, &b.snapshot(&[SUDOERS_D]));
    assert_eq!(leftovers(&b, &[SUDOERS_D]), "");

    // Fault gone: the rerun installs the drop-in, and sudo accepts the result.
    b.nsenter_ok("rm /usr/local/sbin/visudo");
    let r = converge(&b, "users", 0);
    assert_eq!(resource(&r, "users")["status"], "changed", "{r:#}");
    let installed = b.read_string(DROP_IN).expect("drop-in installed");
    b.exec_ok("visudo -c");
    eprintln!("visudo cases {:.1?}", lap.elapsed());

    // --- 4. disk full while rewriting the drop-in ------------------------------------------
    lap = Instant::now();
    // A 64 KiB tmpfs over /etc/sudoers.d holding what was there, the drop-in drifted (still
    // valid sudoers), and filled up; `fill.bin` has a dot, so sudo does not read it.
    b.nsenter_ok(&format!(
        "set -e
         t=$(mktemp -d); cp -a {SUDOERS_D}/. $t/
         mount -t tmpfs -o size=64k,mode=755 sapt-full {SUDOERS_D}
         cp -a $t/. {SUDOERS_D}/; rm -rf $t
         echo '# drift' >> {DROP_IN}
         dd if=/dev/zero of={SUDOERS_D}/fill.bin bs=4k 2>/dev/null || true
         sync"
    ));
    let before = b.snapshot(&[SUDOERS_D]);
    let r = converge(&b, "users", 1);
    let e = error_of(&r, "users");
    assert!(
        e.contains(DROP_IN) && e.contains("No space left on device"),
        "must name the file and ENOSPC: {e}"
    );
    assert_same("disk full", &before, &b.snapshot(&[SUDOERS_D]));
    assert!(
        b.read_string(DROP_IN).unwrap().ends_with("# drift\n"),
        "old content intact"
    );
    assert_eq!(leftovers(&b, &[SUDOERS_D]), "", "temp file left behind");
    b.exec_ok("visudo -c");

    // Space again: the rerun puts the managed content back.
    b.nsenter_ok(&format!("rm {SUDOERS_D}/fill.bin"));
    let r = converge(&b, "users", 0);
    assert_eq!(resource(&r, "users")["status"], "changed", "{r:#}");
    assert_eq!(b.read_string(DROP_IN).unwrap(), installed);
    b.nsenter_ok(&format!("umount {SUDOERS_D}"));
    eprintln!("disk-full case {:.1?}", lap.elapsed());

    // --- 5. sshd -t fails on someone else's drop-in: nothing installed, no reload ----------
    lap = Instant::now();
    b.write(
        "/etc/ssh/sshd_config.d/05-broken.conf",
        b"PermitRootLogn no\n",
        0o644,
    );
    let pid_before = b.exec_ok("systemctl show -p MainPID --value ssh.service");
    let before = b.snapshot(&["/etc/ssh"]);
    let r = converge(&b, "sshd", 1);
    let e = error_of(&r, "sshd");
    assert!(
        e.contains("05-broken.conf") && e.contains("not reloaded"),
        "must name the file: {e}"
    );
    assert_same("sshd -t failing", &before, &b.snapshot(&["/etc/ssh"]));
    assert_eq!(
        b.exec_ok("systemctl show -p MainPID --value ssh.service"),
        pid_before
    );
    assert_eq!(leftovers(&b, &["/etc/ssh", "/etc/ssh/sshd_config.d"]), "");
    b.nsenter_ok("rm /etc/ssh/sshd_config.d/05-broken.conf");
    let r = converge(&b, "sshd", 0);
    assert_eq!(resource(&r, "sshd")["status"], "changed", "{r:#}");
    assert!(
        b.read("/etc/ssh/sshd_config.d/10-sapari-agent.conf")
            .is_some()
    );
    b.exec_ok("sshd -t");
    eprintln!("sshd case {:.1?}", lap.elapsed());

    // --- 6. apt fails in the middle of the install: the package's postinst fails -----------
    lap = Instant::now();
    // python3-systemd's postinst runs py3compile when there is one. apt runs dpkg with
    // PATH=DPkg::Path (/usr/sbin:/usr/bin:/sbin:/bin), so the failing one is bound over
    // /usr/bin/py3compile in the box's mount namespace (or created, if there is none).
    b.write(
        "/run/sapt-py3compile",
        b"#!/bin/sh\necho 'py3compile: simulated failure' >&2\nexit 1\n",
        0o755,
    );
    b.nsenter_ok(
        "if [ -e /usr/bin/py3compile ]; then mount --bind /run/sapt-py3compile /usr/bin/py3compile; else cp /run/sapt-py3compile /usr/bin/py3compile; touch /run/sapt-py3compile.created; fi",
    );
    let apt_before = b.snapshot(&["/etc/apt/apt.conf.d", "/etc/fail2ban"]);
    let r = converge(&b, "packages", 1);
    let e = error_of(&r, "packages");
    assert!(
        e.contains("apt-get")
            && e.contains("error processing package python3-systemd")
            && e.contains("post-installation script")
            && e.contains("py3compile: simulated failure"),
        "must name the package, the script and quote its output: {e}"
    );
    let st = b.exec_ok("dpkg-query -W -f '${db:Status-Abbrev}' python3-systemd");
    assert_ne!(st.trim(), "ii", "not reported as installed");
    assert_same(
        "apt failed",
        &apt_before,
        &b.snapshot(&["/etc/apt/apt.conf.d", "/etc/fail2ban"]),
    );
    // The next run is not fooled by the half-installed package, and finishes it.
    b.nsenter_ok(
        "if [ -e /run/sapt-py3compile.created ]; then rm /usr/bin/py3compile; else umount /usr/bin/py3compile; fi",
    );
    let r = converge(&b, "packages", 0);
    assert_eq!(resource(&r, "packages")["status"], "changed", "{r:#}");
    assert_eq!(
        b.exec_ok("dpkg-query -W -f '${db:Status-Abbrev}' python3-systemd")
            .trim(),
        "ii"
    );
    b.exec_ok("dpkg --audit | grep . && exit 1 || true");
    let r = converge(&b, "users,sshd,packages", 0);
    assert_eq!(r["summary"]["changed"], 0, "{r:#}");
    eprintln!("apt case {:.1?}; test {:.1?}", lap.elapsed(), t0.elapsed());
}

fn restore_wrappers(dir: &PathBuf) {
    std::fs::create_dir_all(dir).unwrap();
    for fam in ["iptables", "ip6tables"] {
        for infix in ["", "-nft", "-legacy"] {
            let p = dir.join(format!("{fam}{infix}-restore"));
            std::fs::write(
                &p,
                format!(
                    "#!/bin/sh\ncat >/dev/null\necho \"{fam}{infix}-restore: line 4 failed: simulated rejection\" >&2\nexit 1\n"
                ),
            )
            .unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
}

fn tables(e: &Edge) -> (String, String) {
    (e.filter_table(V4), e.filter_table(V6))
}

/// Faults around the firewall: iptables-restore rejecting the transaction, dockerd stopped
/// (with its chains left behind, and gone as after a reboot), and the list server back after
/// being down.
#[test]
#[ignore = "system test: needs root; run scripts/test.sh"]
// One edge: each fault starts from the chain and store the previous recovery left.
fn firewall_faults_fail_clearly_keep_the_chain_and_recover() {
    let t0 = Instant::now();
    let e = Edge::up();
    let run = e.fw_apply();
    assert_eq!(run.code, 0, "{run}");
    let good = (e.docker_user(V4), e.docker_user(V6));
    let files = e.state_files();

    // --- iptables-restore rejects its input ----------------------------------------------
    // The chain drifted (flushed) and a new list is served: both the chain and the store are
    // due. A restore program earlier on PATH rejects every transaction.
    e.srv_sh_ok("iptables -F DOCKER-USER && ip6tables -F DOCKER-USER");
    e.serve(
        V4,
        Reply::Text(format!("{}45.64.0.0/24\n", netfw::cf_list(V4))),
    );
    let bin = e.dir().join("fault-bin");
    restore_wrappers(&bin);
    let path = vec![("PATH".to_string(), format!("{}:{PATH}", bin.display()))];
    let cfg = e.config_path().to_string_lossy().into_owned();
    let before = tables(&e);
    let run = e.agent_with(
        &["firewall", "apply", "--config", &cfg, "--json"],
        &path,
        Duration::from_secs(90),
    );
    assert_eq!(run.code, 1, "{run}");
    let fw = run.firewall();
    assert_eq!(fw["status"], "failed", "{run}");
    let err = fw["error"].as_str().unwrap_or_default();
    eprintln!("firewall failed: {err}");
    assert!(
        err.contains("-restore --noflush")
            && err.contains("simulated rejection")
            && err.contains("not stored"),
        "must quote the command and its stderr: {err}"
    );
    assert_eq!(
        tables(&e),
        before,
        "rules changed although the restore failed"
    );
    assert_eq!(e.state_files(), files, "the list was stored");
    let check = e.fw_check();
    assert_eq!(check.code, 1, "still drift, and check says so: {check}");
    // Fault gone: the rerun applies the new list and stores it.
    let run = e.fw_apply();
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(run.firewall()["status"], "changed", "{run}");
    assert!(
        e.docker_user(V4).iter().any(|r| r.contains("45.64.0.0/24")),
        "{:?}",
        e.docker_user(V4)
    );
    assert_ne!(e.state_files(), files, "new list stored");
    assert_eq!(e.fw_check().code, 0);
    e.serve(V4, Reply::Text(netfw::cf_list(V4)));
    let run = e.fw_apply();
    assert_eq!(run.code, 0, "{run}");
    assert_eq!((e.docker_user(V4), e.docker_user(V6)), good);
    let files = e.state_files();

    // --- dockerd stopped ------------------------------------------------------------------
    // Its chains stay behind when it stops: the chain is still ours, nothing to do.
    e.stop_dockerd();
    let before = tables(&e);
    let run = e.fw_apply();
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(run.firewall()["status"], "unchanged", "{run}");
    assert_eq!(tables(&e), before);
    // As after a reboot with Docker not started: no chains at all. Nothing is created (Docker
    // would not jump to it anyway), the report says why, and it is not a failure.
    e.srv_sh_ok("for t in iptables ip6tables; do for tb in filter nat; do $t -t $tb -F; $t -t $tb -X; done; $t -P FORWARD ACCEPT; done");
    let before = tables(&e);
    let run = e.fw_apply();
    assert_eq!(run.code, 0, "{run}");
    let fw = run.firewall();
    assert_eq!(fw["status"], "unchanged", "{run}");
    assert!(
        fw["notes"].to_string().contains("do not exist"),
        "must say Docker's chains are missing: {run}"
    );
    assert_eq!(tables(&e), before, "rules created without Docker");
    assert_eq!(e.state_files(), files);
    let check = e.fw_check();
    eprintln!("check with dockerd stopped: exit {}", check.code);
    // Docker back: the rerun (what the unit runs after docker.service) applies the policy.
    e.start_dockerd();
    e.wait_container();
    let run = e.fw_apply();
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(run.firewall()["status"], "changed", "{run}");
    assert_eq!((e.docker_user(V4), e.docker_user(V6)), good);
    assert_eq!(e.fw_check().code, 0);

    // --- the list server down, then back --------------------------------------------------
    e.stop_lists();
    let run = e.fw_apply();
    assert_eq!(run.code, 0, "{run}");
    assert!(
        run.firewall()["notes"].to_string().contains("last good"),
        "{run}"
    );
    e.start_lists();
    let run = e.fw_apply();
    assert_eq!(run.code, 0, "{run}");
    let fw = run.firewall();
    assert_eq!(fw["status"], "unchanged", "{run}");
    assert!(
        !fw["notes"].to_string().contains("last good"),
        "fetched again: {run}"
    );
    assert_eq!(e.state_files(), files);
    eprintln!("test {:.1?}", t0.elapsed());
}
