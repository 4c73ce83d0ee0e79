//! `sshd`: a hardened drop-in that sorts before cloud images' `50-cloud-init.conf` (sshd
//! keeps the first value it reads), validated as part of the whole configuration before it
//! is installed, a reload (never a restart: open sessions survive) of the unit systemd says
//! runs sshd, and a check of the *effective* values with `sshd -T`. It refuses to turn off
//! password and root login while no non-root sudo user could log in with a key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use async_trait::async_trait;

use crate::authorized_keys;
use crate::config::SshdSettings;
use crate::engine::Name;
use crate::engine::{Change, Check, Describe, Level, Plan, Resource};
use crate::host::{Cmd, FileSpec, Host};
use crate::resources::RunContext;

mod activation;
mod admission;
mod config_text;
mod effective;
mod plan;
pub mod rollback;
mod validate;

pub use config_text::{
    has_include, match_block_settings, neutralize, overrides, read_order, split_line, strong_moduli,
};
use effective::files_setting;
pub use effective::{effective_mismatches, parse_effective};
use validate::{Judge, reload, units_cmd, validate_candidate};
pub use validate::{parse_units, validate_and_reload};

const ETC_SSH: &str = "/etc/ssh";
pub const SSHD_CONFIG: &str = "/etc/ssh/sshd_config";
pub const DROP_DIR: &str = "/etc/ssh/sshd_config.d";
const INCLUDE_LINE: &str = "Include /etc/ssh/sshd_config.d/*.conf";
const MODULI: &str = "/etc/ssh/moduli";
const ED25519_KEY: &str = "/etc/ssh/ssh_host_ed25519_key";
const RSA_KEY: &str = "/etc/ssh/ssh_host_rsa_key";
const PRIVSEP_DIR: &str = "/run/sshd";
/// Smallest Diffie-Hellman group kept in the moduli file (the file's size column is bits - 1).
const MIN_MODULUS_FIELD: u32 = 3071;

const KEX_STRICT: &str = "sntrup761x25519-sha512@openssh.com";
const KEX_COMPAT: &str =
    "sntrup761x25519-sha512@openssh.com,curve25519-sha256,curve25519-sha256@libssh.org";
const CIPHERS: &str =
    "aes256-gcm@openssh.com,aes128-gcm@openssh.com,aes256-ctr,aes192-ctr,aes128-ctr";
const MACS: &str =
    "hmac-sha2-512-etm@openssh.com,hmac-sha2-256-etm@openssh.com,umac-128-etm@openssh.com";
const HOST_KEY_ALGORITHMS: &str = "ssh-ed25519-cert-v01@openssh.com,ssh-ed25519,rsa-sha2-512-cert-v01@openssh.com,rsa-sha2-512,rsa-sha2-256-cert-v01@openssh.com,rsa-sha2-256";

/// Written before the configuration files and removed after sshd reloaded them: a run
/// killed in between leaves it, and the next run reloads even though the files already
/// match. In /run, because a reboot starts sshd from the files anyway.
pub const RELOAD_PENDING: &str = "/run/sapari-agent/sshd.reload-pending";
/// A client address outside every private range: `Match Address` blocks written for the
/// local network or loopback must not hide what the internet gets.
const PUBLIC_PROBE: &str = "203.0.113.1";

pub struct Sshd {
    cfg: SshdSettings,
    /// The managed user: `sshd -T` is evaluated for a connection as this user.
    user: String,
    ctx: RunContext,
    /// Where the lock-out guard judges a login from when this run did not come over SSH.
    operator_ips: Vec<std::net::IpAddr>,
}

impl Sshd {
    pub fn new(cfg: &SshdSettings, user: &str, ctx: &RunContext) -> Self {
        Self {
            cfg: cfg.clone(),
            user: user.to_string(),
            ctx: ctx.clone(),
            operator_ips: Vec::new(),
        }
    }

    pub fn with_operator_ips(mut self, ips: &[std::net::IpAddr]) -> Self {
        self.operator_ips = ips.to_vec();
        self
    }

    /// The client addresses a login is judged from: this session's, else the operators'
    /// and a public one (a timer run must not refuse an AllowUsers deploy@OFFICE that lets
    /// the office in).
    fn judge_from(&self) -> Vec<std::net::IpAddr> {
        match self.ctx.ssh_client {
            Some(a) => vec![a],
            None => {
                let mut v = self.operator_ips.clone();
                v.push(PUBLIC_PROBE.parse().expect("a valid address"));
                v
            }
        }
    }

    fn drop_in_path(&self) -> PathBuf {
        Path::new(DROP_DIR).join(&self.cfg.drop_in.0)
    }

    /// The managed settings, in the order they are written.
    pub fn settings(&self) -> Vec<(&'static str, String)> {
        let mut s: Vec<(&'static str, String)> = [
            ("PermitRootLogin", "no"),
            ("PasswordAuthentication", "no"),
            ("KbdInteractiveAuthentication", "no"),
            ("PubkeyAuthentication", "yes"),
            ("AuthenticationMethods", "publickey"),
            ("UsePAM", "yes"),
            ("PermitEmptyPasswords", "no"),
            ("HostbasedAuthentication", "no"),
            ("IgnoreRhosts", "yes"),
            ("X11Forwarding", "no"),
            ("AllowAgentForwarding", "no"),
            ("AllowTcpForwarding", "no"),
            ("PermitTunnel", "no"),
            ("GatewayPorts", "no"),
            ("PermitUserEnvironment", "no"),
            ("MaxAuthTries", "3"),
            ("LoginGraceTime", "30"),
            ("ClientAliveInterval", "300"),
            ("ClientAliveCountMax", "3"),
            ("MaxStartups", "10:30:60"),
            ("LogLevel", "VERBOSE"),
            ("Ciphers", CIPHERS),
            ("MACs", MACS),
            ("HostKeyAlgorithms", HOST_KEY_ALGORITHMS),
        ]
        .iter()
        .map(|(k, v)| (*k, v.to_string()))
        .collect();
        s.push((
            "KexAlgorithms",
            if self.cfg.compat_kex {
                KEX_COMPAT
            } else {
                KEX_STRICT
            }
            .to_string(),
        ));
        if !self.cfg.allow_users.is_empty() {
            let v: Vec<&str> = self.cfg.allow_users.iter().map(|u| u.0.as_str()).collect();
            s.push(("AllowUsers", v.join(" ")));
        }
        if !self.cfg.allow_groups.is_empty() {
            let v: Vec<&str> = self.cfg.allow_groups.iter().map(|u| u.0.as_str()).collect();
            s.push(("AllowGroups", v.join(" ")));
        }
        s
    }

    pub fn drop_in_content(&self, has_rsa_key: bool) -> String {
        let mut out = String::from(
            "# Managed by sapari-agent: edits here are reverted on the next run.\n# Change /etc/sapari-agent/agent.toml ([sshd]) instead.\n",
        );
        for (k, v) in self.settings() {
            out.push_str(&format!("{k} {v}\n"));
        }
        out.push_str(&format!("HostKey {ED25519_KEY}\n"));
        if has_rsa_key {
            out.push_str(&format!("HostKey {RSA_KEY}\n"));
        }
        out
    }
}

/// What `sshd -T` said, or why it could not say it.
#[derive(Debug, Clone, PartialEq)]
pub enum Effective {
    Values(BTreeMap<String, Vec<String>>),
    /// The configuration on disk does not validate: sshd's own message (it names file and line).
    Invalid(String),
    /// sshd could not be asked (privilege separation directory missing, sshd not installed...).
    Unknown(String),
}

/// The unit that runs sshd, as systemd reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unit {
    pub id: String,
    pub active: bool,
    /// What a restart stops: "process" leaves open sessions (their own processes) alone.
    pub kill_mode: Option<String>,
}

#[derive(Debug, Clone)]
pub struct State {
    pub main: Option<String>,
    /// Drop-ins in the order sshd reads them (name, content).
    pub drop_ins: Vec<(String, String)>,
    pub moduli: Option<String>,
    pub has_ed25519_key: bool,
    pub has_rsa_key: bool,
    pub privsep_dir: bool,
    pub effective: Effective,
    pub unit: Option<Unit>,
    pub socket_active: bool,
    /// Non-root members of group sudo with at least one valid authorized key.
    pub key_users: Vec<KeyUser>,
    pub sshd_installed: bool,
    /// `sshd -T` for a connection from a public address (`Effective::Unknown` when not asked).
    pub effective_public: Effective,
    /// A run wrote the configuration and was stopped before sshd reloaded it.
    pub reload_pending: bool,
}

/// A sudo member who could log in with a key, as the lock-out guard needs to judge them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyUser {
    pub name: String,
    pub groups: Vec<String>,
    pub key_algorithms: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    PrivsepDir,
    HostKey,
    Moduli {
        removed: usize,
        new: String,
    },
    AddInclude {
        old: String,
        new: String,
    },
    Neutralize {
        file: String,
        old: String,
        new: String,
        settings: Vec<String>,
    },
    WriteDropIn {
        old: Option<String>,
        new: String,
    },
    Reload,
}

impl Describe for Step {
    fn change(&self) -> Change {
        match self {
            Step::PrivsepDir => {
                Change::value(PRIVSEP_DIR, Some("absent".into()), Some("created".into()))
            }
            Step::HostKey => Change::value(
                "ed25519 host key",
                Some("absent".into()),
                Some("generated".into()),
            ),
            Step::Moduli { removed, .. } => Change::value(
                MODULI,
                Some(format!("{removed} group(s) under 3072 bits")),
                Some("removed".into()),
            ),
            Step::AddInclude { old, new } => Change::file(SSHD_CONFIG, Some(old), new),
            Step::Neutralize { file, old, new, .. } => Change::file(file, Some(old), new),
            Step::WriteDropIn { old, new } => {
                let path = format!("{DROP_DIR}/(drop-in)");
                let mut c = Change::file(&path, old.as_deref(), new);
                c.what = "sshd drop-in".into();
                c
            }
            Step::Reload => Change::value(
                "sshd",
                Some("running with old settings".into()),
                Some("reloaded".into()),
            ),
        }
    }
}

/// The steps sshd needs before any configuration: its privilege-separation directory, an
/// Ed25519 host key, a moduli file without weak groups.
async fn apply_prerequisites(host: &Host, steps: &[Step]) -> Result<()> {
    for step in steps {
        match step {
            Step::PrivsepDir => host.ensure_dir(Path::new(PRIVSEP_DIR), FileSpec::root(0o755))?,
            Step::HostKey => {
                host.run(&Cmd::new("ssh-keygen").args([
                    "-q",
                    "-t",
                    "ed25519",
                    "-N",
                    "",
                    "-C",
                    "",
                    "-f",
                    ED25519_KEY,
                ]))
                .await?;
            }
            Step::Moduli { new, .. } => host.write(
                Path::new(MODULI),
                new.as_bytes(),
                FileSpec::root(0o644),
                true,
            )?,
            Step::AddInclude { .. }
            | Step::Neutralize { .. }
            | Step::WriteDropIn { .. }
            | Step::Reload => {}
        }
    }
    Ok(())
}

impl Sshd {
    /// The configuration files the steps write, with their new content, in step order:
    /// validated together, then installed together.
    fn config_files(&self, steps: &[Step]) -> Vec<(PathBuf, String)> {
        steps
            .iter()
            .filter_map(|step| match step {
                Step::AddInclude { new, .. } => Some((PathBuf::from(SSHD_CONFIG), new.clone())),
                Step::Neutralize { file, new, .. } => Some((PathBuf::from(file), new.clone())),
                Step::WriteDropIn { new, .. } => Some((self.drop_in_path(), new.clone())),
                Step::PrivsepDir | Step::HostKey | Step::Moduli { .. } | Step::Reload => None,
            })
            .collect()
    }

    /// Write the validated files and have `sshd -t` accept them as installed; when it does
    /// not, every file is put back as it was.
    async fn install_config(&self, host: &Host, files: &[(PathBuf, String)]) -> Result<()> {
        let mut previous: Vec<(PathBuf, Option<String>)> = Vec::new();
        for (path, content) in files {
            previous.push((path.clone(), host.read_text(path)?));
            host.write(
                path,
                content.as_bytes(),
                FileSpec::root(0o644),
                path != &self.drop_in_path(),
            )?;
        }
        if let Err(e) = host.run(&Cmd::new("sshd").arg("-t")).await {
            for (path, old) in previous {
                match old {
                    Some(o) => host.write(&path, o.as_bytes(), FileSpec::root(0o644), false)?,
                    None => host.remove_file(&path)?,
                }
            }
            bail!(
                "sshd -t rejected the installed configuration, so the previous files were restored and sshd was not reloaded: {e}"
            );
        }
        Ok(())
    }
}

#[async_trait]
impl Resource for Sshd {
    type State = State;
    type Step = Step;

    fn name(&self) -> Name {
        Name::Sshd
    }

    fn depends_on(&self) -> &'static [Name] {
        &[Name::Users]
    }

    async fn observe(&self, host: &Host) -> Result<State> {
        let main = host.read_text(Path::new(SSHD_CONFIG))?;
        // Any listing error reads as no drop-ins, as before.
        let names: Vec<String> = host
            .list_dir(Path::new(DROP_DIR))
            .unwrap_or_default()
            .into_iter()
            .filter(|n| n.ends_with(".conf"))
            .collect();
        let mut drop_ins = Vec::new();
        for n in names {
            if let Some(t) = host.read_text(&Path::new(DROP_DIR).join(&n))? {
                drop_ins.push((n, t));
            }
        }
        let sshd_installed = host.program_exists("sshd");
        let privsep_dir = crate::host::files::is_dir(Path::new(PRIVSEP_DIR));
        let local = format!("user={},host=localhost,addr=127.0.0.1", self.user);
        let public = format!("user={},host={PUBLIC_PROBE},addr={PUBLIC_PROBE}", self.user);
        let units_cmd = units_cmd();
        let booted = host.systemd_booted();
        let effective_of = |spec: String| async move {
            if !sshd_installed {
                return Ok(Effective::Unknown("sshd is not installed".into()));
            }
            if !privsep_dir {
                return Ok(Effective::Unknown(format!(
                    "{PRIVSEP_DIR} is missing (ssh.service is not running, as under socket activation before the first login), so `sshd -T` cannot judge the configuration; converge creates it"
                )));
            }
            if !crate::host::files::is_root() {
                // sshd -T must read the host keys; without root it fails for that alone.
                return Ok(Effective::Unknown(
                    "not root: `sshd -T` cannot read the host keys".into(),
                ));
            }
            let out = host
                .query(&Cmd::new("sshd").args(["-T", "-C", &spec]))
                .await?;
            Ok::<_, anyhow::Error>(if out.status == 0 {
                Effective::Values(parse_effective(&out.stdout))
            } else {
                Effective::Invalid(out.stderr.trim().lines().collect::<Vec<_>>().join(" | "))
            })
        };
        let (effective, effective_public, units) =
            tokio::join!(effective_of(local), effective_of(public), async {
                if booted {
                    host.query(&units_cmd).await.map(|o| o.stdout).ok()
                } else {
                    None
                }
            });
        let (unit, socket_active) = units.map_or((None, false), |t| parse_units(&t));
        let key_users = key_users(host, &host.accounts()?);
        Ok(State {
            main,
            drop_ins,
            moduli: host.read_text(Path::new(MODULI))?,
            has_ed25519_key: crate::host::files::exists(Path::new(ED25519_KEY)),
            has_rsa_key: crate::host::files::exists(Path::new(RSA_KEY)),
            privsep_dir,
            effective: effective?,
            unit,
            socket_active,
            key_users,
            sshd_installed,
            effective_public: effective_public?,
            reload_pending: crate::host::files::exists(Path::new(RELOAD_PENDING)),
        })
    }

    fn plan(&self, s: &State) -> Result<Plan<Step>> {
        let main = Self::preconditions(s)?;
        let mut plan = Plan::default();
        plan.steps.extend(Self::plan_prerequisites(s));
        let config = self.plan_config(s, main)?;
        let config_changes = !config.is_empty();
        plan.steps.extend(config);
        self.plan_reload(s, config_changes, &mut plan)?;
        self.plan_notes(s, main, &mut plan);
        Ok(plan)
    }

    async fn apply(&self, host: &Host, s: &State, steps: &[Step]) -> Result<()> {
        if let Effective::Invalid(msg) = &s.effective {
            // A foreign file broke the configuration: never reload into that.
            bail!(
                "the sshd configuration on disk does not validate, so nothing was changed and sshd was not reloaded: {msg}; fix or remove the file it names"
            );
        }
        if !s.privsep_dir {
            // Without /run/sshd nothing judged the files on disk at observe time (socket
            // activation before the first login): judge them now, before any other step.
            host.ensure_dir(Path::new(PRIVSEP_DIR), FileSpec::root(0o755))?;
            let out = host.query(&Cmd::new("sshd").arg("-t")).await?;
            if out.status != 0 {
                bail!(
                    "the sshd configuration on disk does not validate, so nothing was changed and sshd was not reloaded: {}; fix or remove the file it names",
                    out.stderr.trim().lines().collect::<Vec<_>>().join(" | ")
                );
            }
        }
        apply_prerequisites(host, steps).await?;
        let files = self.config_files(steps);
        if files.is_empty() {
            if steps.contains(&Step::Reload) {
                reload(host, s).await?;
                host.remove_file(Path::new(RELOAD_PENDING))?;
            }
            return Ok(());
        }
        let judge = Judge {
            logins: self.logins_to_judge(s),
            from: self.judge_from(),
            link: self.ctx.ssh_link.clone(),
        };
        validate_candidate(host, s, &files, &judge).await?;
        host.write_marker(Path::new(RELOAD_PENDING))?;
        self.install_config(host, &files).await?;
        if steps.contains(&Step::Reload) {
            reload(host, s).await?;
        }
        host.remove_file(Path::new(RELOAD_PENDING))?;
        Ok(())
    }

    fn checks(&self, s: &State) -> Vec<Check> {
        let fix = "sapari-agent converge --only sshd";
        let mut checks = Vec::new();
        match &s.effective {
            Effective::Values(v) => {
                let bad = effective_mismatches(v, &self.settings());
                let auth_off = ["passwordauthentication", "permitrootlogin"]
                    .iter()
                    .all(|k| v.get(*k).is_some_and(|x| x.iter().all(|y| y == "no")));
                checks.push(Check::new(
                    "ssh key-only, no root",
                    if auth_off { Level::Pass } else { Level::Fail },
                    if auth_off {
                        "password and root login off".to_string()
                    } else {
                        "password or root login still allowed".to_string()
                    },
                    fix,
                ));
                checks.push(Check::new(
                    "sshd hardening",
                    if bad.is_empty() {
                        Level::Pass
                    } else {
                        Level::Warn
                    },
                    if bad.is_empty() {
                        "all managed settings effective".to_string()
                    } else {
                        format!(
                            "{} setting(s) differ: {}",
                            bad.len(),
                            bad.iter()
                                .map(|b| b.0.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    },
                    fix,
                ));
            }
            Effective::Invalid(m) => checks.push(Check::new(
                "sshd config",
                Level::Fail,
                m.clone(),
                "fix the file named, then `sshd -t`",
            )),
            Effective::Unknown(m) => {
                checks.push(Check::new("sshd config", Level::Warn, m.clone(), fix))
            }
        }
        if let Some(u) = &s.unit {
            checks.push(Check::new(
                "sshd activation",
                Level::Pass,
                activation::describe(u, s.socket_active),
                fix,
            ));
        }
        checks
    }
}

/// Non-root sudo members with a valid key, read through `host::userdir`: a member's
/// planted link or FIFO counts as no key, never as a read of what it points to.
fn key_users(host: &Host, accounts: &crate::host::accounts::Accounts) -> Vec<KeyUser> {
    let Some(g) = accounts.group("sudo") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for u in accounts
        .users
        .iter()
        .filter(|u| u.uid != 0 && (u.gid == g.gid || g.members.contains(&u.name)))
    {
        let keys = host
            .user_dir(&u.home, u.uid, true)
            .ok()
            .flatten()
            .and_then(|h| h.subdir(".ssh").ok().flatten())
            .and_then(|ssh| ssh.read_text("authorized_keys").ok().flatten())
            .unwrap_or_default();
        let mut algs: Vec<String> = authorized_keys::valid_keys(&keys)
            .iter()
            .map(|k| k.algorithm().as_str().to_string())
            .collect();
        algs.sort();
        algs.dedup();
        if !algs.is_empty() {
            out.push(KeyUser {
                name: u.name.clone(),
                groups: accounts.groups_of(&u.name),
                key_algorithms: algs,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests;
