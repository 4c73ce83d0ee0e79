// Tests drive the machine from outside the agent: clippy.toml's boundary is the agent's.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]
//! The Ansible role of `contrib/ansible` driving a fleet: real `ansible-playbook` (ansible-core
//! from the Python package index, in the test venv scripts/test.sh makes) runs `site.yml`
//! against three nspawn boxes over real SSH from the operator's address, each box behind its
//! own peer namespace (the SSH connection is made by a ProxyCommand inside it, so every login
//! comes from 192.0.2.50 as the agent's guards and UFW see it). The role installs the agent
//! from the controller with its sha256 checked, installs agent.toml, converges with
//! `--confirm` one box at a time and confirms each box from a fresh login.
//!
//! Phases on the same three boxes: a binary whose sha256 is not the release's is refused
//! before anything is installed (and that failed batch stops the rollout); a first run
//! converges all three (as root, confirmed as
//! deploy); a second run reports zero changes everywhere; a run in which one box gets a
//! configuration that shuts the operator out (forced past the agent's guard) leaves that box
//! unconfirmed, and it rolls itself back while the other two are confirmed; check mode with a
//! new configuration shows the agent's diff and changes nothing anywhere. Root only; run
//! through scripts/test.sh.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{Peer, SERVER, TestBox, describe, sh_quote};
use sapari_agent::config::Config;
use serde_json::Value;
use tempfile::TempDir;

const OP: &str = "192.0.2.50";
const HOSTS: [&str; 3] = ["web1", "web2", "web3"];
/// Where the role installs the agent (the harness binds its own, read-only, at
/// /usr/local/bin/sapari-agent).
const INSTALLED: &str = "/usr/local/sbin/sapari-agent";
const ONLY: &str = "[hostname, users, sshd, ufw]";
const STATE: &str = "/var/lib/sapari-agent/confirm";
const RULES: &str = "/etc/ufw/user.rules";
const DROP_IN: &str = "/etc/ssh/sshd_config.d/10-sapari-agent.conf";

fn ansible_playbook() -> PathBuf {
    let p = std::env::var_os("SAPARI_TEST_ANSIBLE_PLAYBOOK")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from("/var/cache/sapari-agent-tests/venv-ansible/bin/ansible-playbook")
        });
    assert!(
        p.is_file(),
        "{} not found: scripts/test.sh installs ansible-core there (or set SAPARI_TEST_ANSIBLE_PLAYBOOK)",
        p.display()
    );
    p
}

fn contrib() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/ansible")
}

/// One server of the fleet: its box and the operator's namespace in front of it.
struct Server {
    name: &'static str,
    b: TestBox,
    op: Peer,
}

/// The controller's side: the key, the configs, inventories and reports, Ansible's own state.
struct Fleet {
    servers: Vec<Server>,
    key: common::OperatorKey,
    dir: TempDir,
    agent: PathBuf,
    sha256: String,
    runs: usize,
}

/// The resources under test with everything else quiet (no clock wait, no swap), each box with
/// its own hostname; `edit` changes it further.
fn config(name: &str, edit: impl FnOnce(&mut Config)) -> String {
    common::config::to_toml(&common::config::config(|c| {
        c.ntp.require_sync = false;
        c.swap.enabled = false;
        c.hostname.name = name.parse().unwrap();
        c.access.operator_ips = vec![OP.parse().unwrap()];
        edit(c);
    }))
}

/// One ansible-playbook run: its output, exit code and the fleet report it wrote.
struct Run {
    out: Output,
    fleet: Value,
    dir: PathBuf,
}

impl Run {
    fn code(&self) -> i32 {
        common::code(&self.out)
    }

    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.stdout).into_owned()
    }

    /// PLAY RECAP: host -> (changed, unreachable, failed).
    fn recap(&self) -> BTreeMap<String, (u32, u32, u32)> {
        let mut m = BTreeMap::new();
        let text = self.stdout();
        let recap = text.rsplit_once("PLAY RECAP").map_or("", |(_, r)| r);
        for l in recap.lines() {
            let Some((host, rest)) = l.split_once(" : ") else {
                continue;
            };
            let n = |k: &str| -> u32 {
                rest.split_whitespace()
                    .find_map(|w| w.strip_prefix(&format!("{k}=")))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(u32::MAX)
            };
            m.insert(
                host.trim().to_string(),
                (n("changed"), n("unreachable"), n("failed")),
            );
        }
        m
    }

    fn list(&self, key: &str) -> Vec<String> {
        self.fleet[key]
            .as_array()
            .unwrap_or_else(|| panic!("fleet.json has no {key}\n{self}"))
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect()
    }

    fn host_report(&self, host: &str) -> Value {
        serde_json::from_str(&fs::read_to_string(self.dir.join(format!("{host}.json"))).unwrap())
            .unwrap()
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}\nfleet.json: {:#}", describe(&self.out), self.fleet)
    }
}

impl Fleet {
    fn up() -> Fleet {
        let key = common::operator_key();
        let mut servers = Vec::new();
        for name in HOSTS {
            let b = TestBox::boot();
            let op = b.add_peer("op", &format!("{SERVER}/24"), &format!("{OP}/24"));
            // Hetzner's project key on root, as a new server has it.
            b.nsenter_ok(&format!(
                "install -d -m 700 /root/.ssh && echo {} > /root/.ssh/authorized_keys",
                sh_quote(&key.public)
            ));
            servers.push(Server { name, b, op });
        }
        let dir = tempfile::Builder::new()
            .prefix("sapari-fleet-")
            .tempdir_in(common::harness_tmp_root())
            .unwrap();
        let agent = fs::canonicalize(common::agent_binary()).unwrap();
        let sum = common::process::host(&["sha256sum", &agent.to_string_lossy()]);
        let sha256 = sum.split_whitespace().next().unwrap().to_string();
        let f = Fleet {
            servers,
            key,
            dir,
            agent,
            sha256,
            runs: 0,
        };
        f.write_ansible_cfg();
        f
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Ansible's state stays in our directory: its home, temp files, SSH control sockets.
    /// ControlPersist is Ansible's own default behaviour (kept, so the role has to drop the
    /// connection the change went through), only shorter, so no master outlives the test long.
    fn write_ansible_cfg(&self) {
        fs::create_dir_all(self.path("cp")).unwrap();
        let cfg = format!(
            "[defaults]\nhost_key_checking = False\ninterpreter_python = /usr/bin/python3\n\
             retry_files_enabled = False\nnocolor = True\nlocal_tmp = {tmp}\nforks = 3\n\
             [ssh_connection]\ncontrol_path_dir = {cp}\npipelining = True\n\
             ssh_args = -F /dev/null -o ControlMaster=auto -o ControlPersist=10s -o UserKnownHostsFile=/dev/null -o StrictHostKeyChecking=no -o ConnectTimeout=5 -o IdentitiesOnly=yes -o LogLevel=ERROR\n",
            tmp = self.path("tmp").display(),
            cp = self.path("cp").display(),
        );
        fs::write(self.path("ansible.cfg"), cfg).unwrap();
    }

    /// The inventory for one run: each host reached through its own operator namespace, its
    /// agent.toml (from `configs`), and `extra` host variables.
    fn write_inventory(&self, user: &str, configs: &[String], extra: &[(&str, &str)]) -> PathBuf {
        let mut hosts = String::new();
        for (s, text) in self.servers.iter().zip(configs) {
            let cfg = self.path(&format!("{}-agent.toml", s.name));
            fs::write(&cfg, text).unwrap();
            hosts.push_str(&format!(
                "    {name}:\n      ansible_host: {name}.fleet.test\n      \
                 ansible_ssh_common_args: '-o ProxyCommand=\"ip netns exec {ns} socat STDIO TCP:{SERVER}:22\"'\n      \
                 sapari_agent_config_src: {cfg}\n",
                name = s.name,
                ns = s.op.netns,
                cfg = cfg.display()
            ));
            for (h, kv) in extra {
                if *h == s.name {
                    hosts.push_str(&format!("      {kv}\n"));
                }
            }
        }
        let inv = format!(
            "sapari:\n  hosts:\n{hosts}  vars:\n    ansible_user: {user}\n    \
             ansible_ssh_private_key_file: {key}\n    sapari_agent_src: {agent}\n    \
             sapari_agent_sha256: {sha}\n    sapari_agent_path: {INSTALLED}\n    \
             sapari_agent_confirm: 30\n    sapari_agent_only: {ONLY}\n",
            key = self.key.private.display(),
            agent = self.agent.display(),
            sha = self.sha256,
        );
        let p = self.path("inventory.yml");
        fs::write(&p, inv).unwrap();
        p
    }

    /// `ansible-playbook site.yml` with `args`, reports in a new directory.
    fn playbook(&mut self, inventory: &Path, args: &[&str]) -> Run {
        self.runs += 1;
        let reports = self.path(&format!("reports-{}", self.runs));
        let t0 = Instant::now();
        let mut c = Command::new(ansible_playbook());
        c.arg("-i")
            .arg(inventory)
            .arg(contrib().join("site.yml"))
            .arg("-e")
            .arg(format!("sapari_agent_report_dir={}", reports.display()))
            .args(args)
            .env_clear()
            .env("PATH", common::PATH)
            .env("LANG", "C.UTF-8")
            .env("HOME", self.dir.path())
            .env("ANSIBLE_HOME", self.path("home"))
            .env("ANSIBLE_CONFIG", self.path("ansible.cfg"))
            .env("ANSIBLE_FORCE_COLOR", "0")
            .current_dir(self.dir.path());
        let out = common::process::run(&mut c, None, Duration::from_secs(600));
        let fleet = fs::read_to_string(reports.join("fleet.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(Value::Null);
        let r = Run {
            out,
            fleet,
            dir: reports,
        };
        eprintln!(
            "ansible-playbook {args:?}: exit {} in {:.1?}; recap {:?}",
            r.code(),
            t0.elapsed(),
            r.recap()
        );
        r
    }

    fn can_log_in(&self, s: &Server, user: &str) -> bool {
        common::ssh::logged_in(&common::ssh::with_key(
            &s.op,
            SERVER,
            &self.key.private,
            user,
            "echo LOGIN-OK",
        ))
    }

    /// What the agent manages on a box, byte for byte, and whether a change is pending.
    fn state(&self, s: &Server) -> Vec<Option<String>> {
        [
            RULES,
            DROP_IN,
            "/etc/hostname",
            &format!("{STATE}/pending.json"),
        ]
        .iter()
        .map(|p| s.b.read_string(p))
        .collect()
    }
}

impl Drop for Fleet {
    /// SSH control masters of ours (ControlPersist) that are still waiting: ended by PID.
    fn drop(&mut self) {
        let cp = self.path("cp");
        let cp = cp.to_string_lossy();
        for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let cmd = fs::read(e.path().join("cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmd).contains(cp.as_ref()) && pid != std::process::id() {
                common::process::signal(pid, "TERM");
            }
        }
    }
}

fn sorted(v: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

#[test]
#[ignore = "system test: needs root; run scripts/test.sh"]
// One fleet: each run starts from what the one before left on the three boxes.
fn ansible_converges_confirms_rolls_back_and_checks_a_fleet() {
    let t0 = Instant::now();
    let mut f = Fleet::up();
    let syntax = Command::new(ansible_playbook())
        .args(["--syntax-check", "-i", "localhost,"])
        .arg(contrib().join("site.yml"))
        .env("ANSIBLE_HOME", f.path("home"))
        .output()
        .unwrap();
    assert!(syntax.status.success(), "{}", describe(&syntax));
    let configs: Vec<String> = HOSTS.iter().map(|n| config(n, |_| {})).collect();
    for s in &f.servers {
        assert!(f.can_log_in(s, "root"), "control: root logs in before");
        assert!(!f.can_log_in(s, "deploy"), "control: no deploy yet");
    }

    // ---- 0. a binary that is not the release: refused before anything is installed, and
    // the failed batch (web1 alone) stops the rollout ----
    let wrong = format!("sapari_agent_sha256: \"{}\"", "0".repeat(64));
    let inv = f.write_inventory("root", &configs, &[("web1", &wrong)]);
    let r = f.playbook(&inv, &[]);
    assert_ne!(r.code(), 0, "{r}");
    assert!(r.stdout().contains("nothing was installed"), "{r}");
    assert_eq!(
        r.recap().keys().collect::<Vec<_>>(),
        ["web1"],
        "the rollout went on past a failed batch: {r}"
    );
    assert_eq!(r.list("failed"), ["web1"], "{r}");
    assert_eq!(r.list("no_report"), sorted(&["web2", "web3"]), "{r}");
    let msg = r.host_report("web1")["msg"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(
        msg.contains("not the release"),
        "web1's report says why: {msg}"
    );
    for s in &f.servers {
        assert!(!s.b.host_path(INSTALLED).exists(), "{}: installed", s.name);
        assert!(s.b.read_string(common::CONFIG_PATH).is_none(), "{}", s.name);
    }

    // ---- 1. the first run: installed, converged as root, confirmed as deploy ----
    let inv = f.write_inventory("root", &configs, &[]);
    let r = f.playbook(&inv, &[]);
    assert_eq!(r.code(), 0, "{r}");
    assert_eq!(r.list("changed"), sorted(&HOSTS), "{r}");
    assert_eq!(r.list("confirmed"), sorted(&HOSTS), "{r}");
    assert!(r.list("failed").is_empty() && r.list("unconfirmed").is_empty());
    for res in ["hostname", "users", "sshd", "ufw"] {
        assert_eq!(
            r.fleet["resources_changed"][res],
            serde_json::json!(sorted(&HOSTS)),
            "{res}: {r}"
        );
    }
    assert!(r.stdout().contains("3 hosts: 3 changed"), "the table: {r}");
    for s in &f.servers {
        let installed = s.b.host_path(INSTALLED);
        assert_eq!(fs::read(&installed).unwrap(), fs::read(&f.agent).unwrap());
        assert!(f.can_log_in(s, "deploy"), "{}: deploy logs in", s.name);
        assert!(!f.can_log_in(s, "root"), "{}: root is refused", s.name);
        assert_eq!(s.b.read_string("/etc/hostname").unwrap().trim(), s.name);
        assert!(s.b.read_string(&format!("{STATE}/pending.json")).is_none());
        let meta = fs::metadata(s.b.host_path(common::CONFIG_PATH)).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!((meta.mode() & 0o777, meta.uid()), (0o600, 0), "agent.toml");
        assert_eq!(r.host_report(s.name)["confirm"], "confirmed");
    }

    // ---- 2. again, as deploy: nothing changes anywhere ----
    let inv = f.write_inventory("deploy", &configs, &[]);
    let r = f.playbook(&inv, &[]);
    assert_eq!(r.code(), 0, "{r}");
    assert_eq!(r.list("unchanged"), sorted(&HOSTS), "{r}");
    assert!(r.list("changed").is_empty(), "{r}");
    for h in HOSTS {
        assert_eq!(r.recap().get(h), Some(&(0, 0, 0)), "{h}: changed=0\n{r}");
        assert_eq!(r.host_report(h)["report"]["summary"]["changed"], 0);
    }

    // ---- 3. web3 would shut the operator out; web1 and web2 get a harmless change ----
    let before3 = f.state(&f.servers[2]);
    let mut next: Vec<String> = HOSTS[..2]
        .iter()
        .map(|n| {
            config(n, |c| {
                c.access.operator_ips.push("192.0.2.51".parse().unwrap())
            })
        })
        .collect();
    next.push(config("web3", |c| {
        c.access.operator_ips = vec!["198.51.100.99".parse().unwrap()];
        c.ufw.prune = true;
    }));
    let inv = f.write_inventory("deploy", &next, &[("web3", "sapari_agent_force: true")]);
    let r = f.playbook(&inv, &[]);
    assert_ne!(r.code(), 0, "web3 failed, so the run must: {r}");
    assert_eq!(r.list("confirmed"), sorted(&["web1", "web2"]), "{r}");
    assert_eq!(r.list("unconfirmed"), sorted(&["web3"]), "{r}");
    assert_eq!(r.list("failed"), sorted(&["web3"]), "{r}");
    assert_eq!(
        r.fleet["resources_changed"]["ufw"],
        serde_json::json!(sorted(&HOSTS))
    );
    assert!(
        r.stdout().contains("it is not confirmed"),
        "the failure says why: {r}"
    );
    let deadline = r.host_report("web3")["report"]["confirm"]["deadline"]
        .as_str()
        .unwrap_or_else(|| panic!("no deadline: {r}"))
        .to_string();
    let web3 = &f.servers[2];
    assert!(
        !f.can_log_in(web3, "deploy"),
        "control: web3 really shuts the operator out"
    );
    let t_roll = Instant::now();
    while web3
        .b
        .read_string(&format!("{STATE}/rolled-back.json"))
        .is_none()
    {
        assert!(
            t_roll.elapsed() < Duration::from_secs(90),
            "web3 not rolled back by itself (deadline {deadline})"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(f.can_log_in(web3, "deploy"), "web3 is open again");
    assert_eq!(f.state(web3), before3, "web3 is as it was before the run");
    // The confirmed two keep their change past their own deadlines.
    std::thread::sleep(Duration::from_secs(5));
    for s in &f.servers[..2] {
        let rules = s.b.read_string(RULES).unwrap();
        assert!(rules.contains("192.0.2.51"), "{}: {rules}", s.name);
        assert!(
            s.b.read_string(&format!("{STATE}/rolled-back.json"))
                .is_none()
        );
        assert!(f.can_log_in(s, "deploy"));
    }

    // ---- 4. check mode with a new configuration: the diff, and nothing changed anywhere ----
    let before: Vec<_> = f
        .servers
        .iter()
        .map(|s| (f.state(s), s.b.read_string(common::CONFIG_PATH)))
        .collect();
    let mut check = next.clone();
    check[0] = config("web1-new", |c| {
        c.access.operator_ips.push("192.0.2.51".parse().unwrap());
        c.access.operator_ips.push("192.0.2.52".parse().unwrap());
    });
    check[2] = configs[2].clone();
    let inv = f.write_inventory("deploy", &check, &[]);
    let r = f.playbook(&inv, &["--check", "--diff"]);
    assert_eq!(r.code(), 0, "{r}");
    assert_eq!(r.list("changed"), sorted(&["web1"]), "would change: {r}");
    for res in ["hostname", "ufw"] {
        assert_eq!(
            r.fleet["resources_changed"][res],
            serde_json::json!(["web1"]),
            "{res}: {r}"
        );
    }
    // --diff: the agent's unified diff of /etc/hosts and its value changes.
    let out = r.stdout();
    for want in [
        "--- /etc/hosts",
        "+127.0.1.1\tweb1-new",
        "~ rule: absent -> allow 22/tcp from 192.0.2.52",
    ] {
        assert!(out.contains(want), "--diff shows {want:?}: {r}");
    }
    for (s, b) in f.servers.iter().zip(&before) {
        let now = (f.state(s), s.b.read_string(common::CONFIG_PATH));
        assert_eq!(&now, b, "{}: check mode changed something", s.name);
    }
    eprintln!("whole test {:.1?}", t0.elapsed());
}
