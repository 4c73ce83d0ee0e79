//! Running the agent in srv's namespaces: config, state, lock, pending confirm.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::*;

impl Edge {
    // ---- agent ------------------------------------------------------------------------------

    pub fn config_path(&self) -> PathBuf {
        self.dir().join("etc/agent.toml")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir().join("state")
    }

    /// The test config: state in our dir, lists from the local server, WAN `wan0`.
    /// `firewall_extra` is appended to the `[firewall]` table (e.g. `max_entries = 100`); a
    /// `wan_interface`/`list_url_*` line there replaces the default.
    pub fn config_text(&self, firewall_extra: &str) -> String {
        let mut fw = String::new();
        let keys = ["wan_interface", "list_url_v4", "list_url_v6", "ca_file"];
        let defaults = [
            format!("wan_interface = \"{WAN}\""),
            format!("list_url_v4 = \"{}\"", Self::list_url(Fam::V4)),
            format!("list_url_v6 = \"{}\"", Self::list_url(Fam::V6)),
            format!("ca_file = \"{}\"", self.ca_file().display()),
        ];
        for (k, d) in keys.iter().zip(defaults) {
            let overridden = firewall_extra.lines().any(|l| {
                l.trim_start().starts_with(&format!("{k} "))
                    || l.trim_start().starts_with(&format!("{k}="))
            });
            if !overridden {
                fw.push_str(&d);
                fw.push('\n');
            }
        }
        if !firewall_extra
            .lines()
            .any(|l| l.trim_start().starts_with("fetch_timeout"))
        {
            fw.push_str("fetch_timeout = \"3s\"\n");
        }
        fw.push_str(firewall_extra);
        format!(
            "# written by tests/common/netfw.rs\n[agent]\nstate_dir = \"{}\"\nlock_timeout = \"20s\"\n\n[firewall]\n{fw}\n",
            self.state_dir().display()
        )
    }

    /// Writes the agent config (0600 root, in a 0700 dir).
    pub fn write_config(&self, firewall_extra: &str) {
        let p = self.config_path();
        let d = p.parent().unwrap();
        fs::create_dir_all(d).unwrap();
        fs::set_permissions(d, fs::Permissions::from_mode(0o700)).unwrap();
        let tmp = d.join(".agent.toml.tmp");
        fs::write(&tmp, self.config_text(firewall_extra)).unwrap();
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600)).unwrap();
        fs::rename(&tmp, &p).unwrap();
    }

    /// Runs the agent in srv's network namespace, in a private mount namespace whose /run is
    /// this edge's own directory (shared by the edge's runs, as a box's /run is: its lock;
    /// no journald), without SSH_* in the environment.
    pub fn agent(&self, args: &[&str]) -> AgentRun {
        self.agent_with(args, &[], Duration::from_secs(90))
    }

    /// Like [`agent`](Self::agent) with extra environment (e.g. [`docker_env`](Self::docker_env))
    /// and its own deadline.
    pub fn agent_with(
        &self,
        args: &[&str],
        env: &[(String, String)],
        timeout: Duration,
    ) -> AgentRun {
        let mut c = self.srv_command(Some(&self.agent), args);
        c.envs(env.iter().map(|(k, v)| (k, v)));
        let t0 = Instant::now();
        let o = run(&mut c, None, timeout);
        AgentRun {
            args: args.iter().map(|s| s.to_string()).collect(),
            code: code(&o),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
            elapsed: t0.elapsed(),
        }
    }

    /// `bin args` (`bin` None: `args` name a program of the server) as the edge's server runs
    /// it: in srv's network namespace, in a private mount namespace whose /run is
    /// [`agent_run_dir`](Self::agent_run_dir), with only PATH and LANG in the environment; on
    /// the host's root, or with the docker tree as its root when the agent runs there.
    pub(crate) fn srv_command(&self, bin: Option<&Path>, args: &[&str]) -> Command {
        let run_dir = self.agent_run_dir();
        fs::create_dir_all(&run_dir).unwrap();
        let mut c = Command::new("ip");
        c.env_clear()
            .env("LANG", "C.UTF-8")
            .args(["netns", "exec", &self.ns(Host::Srv)])
            .args(["unshare", "-m", "--propagation", "private"]);
        match (&self.tree, self.agent_in_tree) {
            (Some(tree), true) => {
                c.args(["sh", "-c", &super::tree::exec_script(), "sh"])
                    .arg(tree)
                    .arg(self.dir())
                    .arg(&run_dir)
                    .arg(bin.map_or("-".into(), |b| b.as_os_str().to_owned()))
                    .env("PATH", "/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin");
            }
            _ => {
                c.args(["sh", "-c", "mount --bind \"$0\" /run && exec \"$@\""])
                    .arg(&run_dir);
                if let Some(b) = bin {
                    c.arg(b);
                }
                c.env("PATH", PATH);
            }
        }
        c.args(args);
        c
    }

    pub(crate) fn cfg(&self) -> String {
        self.config_path().to_string_lossy().into_owned()
    }

    /// What the agent's runs see as /run.
    pub(crate) fn agent_run_dir(&self) -> PathBuf {
        self.dir().join("agent-run")
    }

    /// Holds the agent's run lock (/run/sapari-agent.lock of the edge's runs) for `d`, as a
    /// long converge would, until the guard is dropped. Returns once the lock is held.
    pub fn hold_lock(&self, d: Duration) -> LockHolder {
        let run_dir = self.agent_run_dir();
        fs::create_dir_all(&run_dir).unwrap();
        let lock = run_dir.join("sapari-agent.lock");
        let child = Command::new("flock")
            .arg("-x")
            .arg(&lock)
            .args(["sleep", &d.as_secs().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("spawn flock");
        let t0 = Instant::now();
        loop {
            let free = Command::new("flock")
                .args(["-n", "-x"])
                .arg(&lock)
                .arg("true")
                .status()
                .is_ok_and(|s| s.success());
            if !free {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "flock never took {lock:?}"
            );
            thread::sleep(Duration::from_millis(20));
        }
        LockHolder(Some(child))
    }

    /// A commit-confirmed change waiting for `sapari-agent confirm` (the record a
    /// `converge --confirm` leaves), with its deadline 10 minutes ahead.
    pub fn write_pending_confirm(&self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let p = sapari_agent::confirm::Pending {
            id: format!("{now}-1"),
            state: sapari_agent::confirm::PendingState::Pending,
            started_at: "2026-12-01T00:00:00Z".into(),
            deadline: "in 10 minutes".into(),
            deadline_unix: now + 600,
            window_secs: 600,
            ssh_connection: None,
            resources: vec!["firewall".into()],
            config: Some(self.config_path()),
            config_sha256: String::new(),
            unit: format!("sapari-agent-rollback-{now}-1"),
            changed: None,
        };
        let d = self.state_dir().join("confirm");
        fs::create_dir_all(&d).unwrap();
        fs::write(
            d.join("pending.json"),
            serde_json::to_vec_pretty(&p).unwrap(),
        )
        .unwrap();
    }

    pub fn remove_pending_confirm(&self) {
        let _ = fs::remove_file(self.state_dir().join("confirm/pending.json"));
    }

    /// `sapari-agent firewall apply --config <ours> --json`
    pub fn fw_apply(&self) -> AgentRun {
        let c = self.cfg();
        self.agent(&["firewall", "apply", "--config", &c, "--json"])
    }

    /// `sapari-agent firewall check --config <ours>`
    pub fn fw_check(&self) -> AgentRun {
        let c = self.cfg();
        self.agent(&["firewall", "check", "--config", &c])
    }

    /// `sapari-agent firewall show --config <ours>`
    pub fn fw_show(&self) -> AgentRun {
        let c = self.cfg();
        self.agent(&["firewall", "show", "--config", &c])
    }

    /// `sapari-agent converge --only firewall --config <ours> --json`
    pub fn converge_firewall(&self) -> AgentRun {
        let c = self.cfg();
        self.agent(&["converge", "--only", "firewall", "--config", &c, "--json"])
    }

    /// Last-good list files and their metadata, name -> content.
    pub fn state_files(&self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        if let Ok(rd) = fs::read_dir(self.state_dir()) {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.starts_with("cloudflare-ips") {
                    m.insert(n, fs::read_to_string(e.path()).unwrap_or_default());
                }
            }
        }
        m
    }

    pub fn last_good(&self, fam: Fam) -> Option<String> {
        fs::read_to_string(
            self.state_dir()
                .join(format!("cloudflare-ips-{}.txt", fam.suffix())),
        )
        .ok()
    }
}
