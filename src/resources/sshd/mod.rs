//! `sshd`: a hardened drop-in that sorts before cloud images' `50-cloud-init.conf` (sshd
//! keeps the first value it reads), validated as part of the whole configuration before it
//! is installed, a reload (never a restart: open sessions survive) of the unit systemd says
//! runs sshd, and a check of the *effective* values with `sshd -T`. It refuses to turn off
//! password and root login while no non-root sudo user could log in with a key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use async_trait::async_trait;

use crate::authorized_keys;
use crate::config::SshdSettings;
use crate::engine::{Change, Check, Describe, Level, Plan, Resource};
use crate::host::{Cmd, FileSpec, Host, systemd};
use crate::resources::{Name, RunContext};

mod admission;
pub mod rollback;

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

/// Split a config line into its keyword (lowercased) and value. sshd accepts both
/// `Keyword value` and `Keyword=value`.
pub fn split_line(line: &str) -> Option<(String, String)> {
    let t = line.trim();
    if t.is_empty() || t.starts_with('#') {
        return None;
    }
    let end = t
        .find(|c: char| c.is_whitespace() || c == '=')
        .unwrap_or(t.len());
    let key = t[..end].to_ascii_lowercase();
    let rest = t[end..].trim_start();
    let rest = rest.strip_prefix('=').unwrap_or(rest).trim();
    Some((key, rest.to_string()))
}

fn includes_drop_dir(value: &str) -> bool {
    value
        .split_whitespace()
        .any(|p| p == "/etc/ssh/sshd_config.d/*.conf" || p == "sshd_config.d/*.conf")
}

pub fn has_include(main: &str) -> bool {
    main.lines()
        .filter_map(split_line)
        .any(|(k, v)| k == "include" && includes_drop_dir(&v))
}

/// The files in the order sshd reads them: the main file up to the Include, the drop-ins
/// (sorted), then the rest of the main file. Settings inside `Match` blocks are left out:
/// they only apply to some connections, and `sshd -T` judges them.
pub fn read_order<'a>(main: &'a str, drop_ins: &'a [(String, String)]) -> Vec<(String, &'a str)> {
    let mut out: Vec<(String, &str)> = Vec::new();
    let mut included = false;
    for line in main.lines() {
        if let Some((k, v)) = split_line(line)
            && k == "include"
            && includes_drop_dir(&v)
            && !included
        {
            included = true;
            for (name, text) in drop_ins {
                for l in text.lines() {
                    out.push((format!("{DROP_DIR}/{name}"), l));
                }
            }
            continue;
        }
        out.push((SSHD_CONFIG.to_string(), line));
    }
    let mut in_match = BTreeMap::new();
    let mut current = String::new();
    let mut matching = false;
    out.retain(|(file, line)| {
        if *file != current {
            current = file.clone();
            matching = *in_match.get(file).unwrap_or(&false);
        }
        if let Some((k, _)) = split_line(line)
            && k == "match"
        {
            matching = true;
            in_match.insert(file.clone(), true);
        }
        !matching
    });
    out
}

/// Managed settings that an earlier file sets to another value: (file, keyword as written
/// in our list, their value). sshd keeps the first value, so these would win over ours.
pub fn overrides(
    order: &[(String, &str)],
    ours: &str,
    settings: &[(&str, String)],
) -> Vec<(String, String, String)> {
    let mut seen: BTreeMap<String, ()> = BTreeMap::new();
    let mut found = Vec::new();
    for (file, line) in order {
        let Some((k, v)) = split_line(line) else {
            continue;
        };
        if seen.insert(k.clone(), ()).is_some() {
            continue;
        }
        if file == ours {
            continue;
        }
        if let Some((name, want)) = settings.iter().find(|(n, _)| n.eq_ignore_ascii_case(&k))
            && !v.eq_ignore_ascii_case(want)
        {
            found.push((file.clone(), name.to_string(), v));
        }
    }
    found
}

/// Comment out the lines of `text` that set any of `keys` (lowercase), saying why.
pub fn neutralize(text: &str, keys: &[String]) -> String {
    let mut out = String::new();
    for line in text.split_inclusive('\n') {
        match split_line(line) {
            Some((k, _)) if keys.iter().any(|x| x.eq_ignore_ascii_case(&k)) => {
                out.push_str("# disabled by sapari-agent (overrides its hardening): ");
                out.push_str(line.trim_start());
                if !line.ends_with('\n') {
                    out.push('\n');
                }
            }
            _ => out.push_str(line),
        }
    }
    out
}

/// The moduli file without groups smaller than 3072 bits, and how many were removed.
pub fn strong_moduli(text: &str) -> (String, usize) {
    let mut removed = 0;
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let f: Vec<&str> = line.split_whitespace().collect();
        let weak = !line.trim_start().starts_with('#')
            && f.len() >= 7
            && f[4]
                .parse::<u32>()
                .is_ok_and(|bits| bits < MIN_MODULUS_FIELD);
        if weak {
            removed += 1;
        } else {
            out.push_str(line);
        }
    }
    (out, removed)
}

/// Parse `sshd -T` output into keyword -> values (multi-valued keywords repeat).
pub fn parse_effective(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines() {
        if let Some((k, v)) = line.split_once(' ') {
            m.entry(k.to_string())
                .or_default()
                .push(v.trim().to_string());
        }
    }
    m
}

/// Managed settings whose effective value differs: (keyword, effective, wanted).
pub fn effective_mismatches(
    eff: &BTreeMap<String, Vec<String>>,
    settings: &[(&str, String)],
) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for (k, want) in settings {
        let got = eff
            .get(&k.to_ascii_lowercase())
            .map(|v| v.join(" "))
            .unwrap_or_default();
        if !got.eq_ignore_ascii_case(want) {
            out.push((k.to_string(), got, want.clone()));
        }
    }
    out
}

/// The files with a line setting `key` to `value` (a Match block's line included): where an
/// unexpected effective value most likely comes from.
fn files_setting(s: &State, key: &str, value: &str) -> Vec<String> {
    let main = s.main.iter().map(|m| (SSHD_CONFIG.to_string(), m.as_str()));
    let drops = s
        .drop_ins
        .iter()
        .map(|(n, t)| (format!("{DROP_DIR}/{n}"), t.as_str()));
    main.chain(drops)
        .filter(|(_, text)| {
            text.lines()
                .filter_map(split_line)
                .any(|(k, v)| k.eq_ignore_ascii_case(key) && v.eq_ignore_ascii_case(value))
        })
        .map(|(f, _)| f)
        .collect()
}

/// Pick the sshd unit from `systemctl show -p Id -p LoadState -p ActiveState ssh.service
/// sshd.service ssh.socket` (blocks separated by blank lines).
pub fn parse_units(text: &str) -> (Option<Unit>, bool) {
    let mut unit = None;
    let mut socket = false;
    for block in text.split("\n\n") {
        let p = systemd::parse_properties(block);
        let (Some(id), Some(load)) = (p.get("Id"), p.get("LoadState")) else {
            continue;
        };
        let active = p
            .get("ActiveState")
            .is_some_and(|s| s == "active" || s == "reloading");
        if load != "loaded" {
            continue;
        }
        if id.ends_with(".socket") {
            socket = active;
        } else if unit.is_none() {
            unit = Some(Unit {
                id: id.clone(),
                active,
            });
        }
    }
    (unit, socket)
}

impl Sshd {
    /// Managed settings `sshd -T` reports otherwise, for a loopback and for a public
    /// client (a `Match Address` block can harden one and not the other).
    fn effective_mismatches(&self, s: &State) -> Vec<(String, String, String)> {
        let mut out = Vec::new();
        for (eff, whom) in [
            (&s.effective, ""),
            (&s.effective_public, " for a public client"),
        ] {
            if let Effective::Values(v) = eff {
                for (k, got, want) in effective_mismatches(v, &self.settings()) {
                    if !out
                        .iter()
                        .any(|(x, _, _): &(String, String, String)| *x == k)
                    {
                        out.push((format!("{k}{whom}"), got, want));
                    }
                }
            }
        }
        out
    }

    /// The logins to judge the candidate for: this SSH session's user first.
    fn logins_to_judge<'a>(&self, s: &'a State) -> Vec<&'a KeyUser> {
        let mut users: Vec<&KeyUser> = s.key_users.iter().collect();
        if let Some(me) = &self.ctx.ssh_user {
            users.sort_by_key(|u| u.name != *me);
        }
        users
    }
}

/// Managed keywords set inside `Match` blocks: (file, keyword). They apply to some
/// connections only, so the checks for loopback and a public client may not see them.
pub fn match_block_settings(
    main: &str,
    drop_ins: &[(String, String)],
    settings: &[(&str, String)],
) -> Vec<(String, String)> {
    let mut files: Vec<(String, &str)> = vec![(SSHD_CONFIG.to_string(), main)];
    files.extend(
        drop_ins
            .iter()
            .map(|(n, t)| (format!("{DROP_DIR}/{n}"), t.as_str())),
    );
    let mut out = Vec::new();
    for (file, text) in files {
        let mut in_match = false;
        for line in text.lines() {
            let Some((k, _)) = split_line(line) else {
                continue;
            };
            if k == "match" {
                in_match = true;
            } else if in_match
                && let Some((name, _)) = settings.iter().find(|(n, _)| n.eq_ignore_ascii_case(&k))
                && !out.iter().any(|(f, n)| *f == file && n == name)
            {
                out.push((file.clone(), name.to_string()));
            }
        }
    }
    out
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
        let mut names: Vec<String> = match std::fs::read_dir(DROP_DIR) {
            Ok(rd) => rd
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".conf"))
                .collect(),
            Err(_) => Vec::new(),
        };
        names.sort();
        let mut drop_ins = Vec::new();
        for n in names {
            if let Some(t) = host.read_text(&Path::new(DROP_DIR).join(&n))? {
                drop_ins.push((n, t));
            }
        }
        let sshd_installed = host.program_exists("sshd");
        let privsep_dir = Path::new(PRIVSEP_DIR).is_dir();
        let local = format!("user={},host=localhost,addr=127.0.0.1", self.user);
        let public = format!("user={},host={PUBLIC_PROBE},addr={PUBLIC_PROBE}", self.user);
        let units_cmd = units_cmd();
        let booted = host.systemd_booted();
        let effective_of = |spec: String| async move {
            if !sshd_installed {
                return Ok(Effective::Unknown("sshd is not installed".into()));
            }
            if !privsep_dir {
                return Ok(Effective::Unknown(format!("{PRIVSEP_DIR} is missing")));
            }
            if !nix::unistd::geteuid().is_root() {
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
            has_ed25519_key: Path::new(ED25519_KEY).exists(),
            has_rsa_key: Path::new(RSA_KEY).exists(),
            privsep_dir,
            effective: effective?,
            unit,
            socket_active,
            key_users,
            sshd_installed,
            effective_public: effective_public?,
            reload_pending: Path::new(RELOAD_PENDING).exists(),
        })
    }

    fn plan(&self, s: &State) -> Result<Plan<Step>> {
        let mut plan = Plan::default();
        if !s.sshd_installed {
            bail!("sshd is not installed (apt-get install openssh-server)");
        }
        let Some(main) = &s.main else {
            bail!("{SSHD_CONFIG} is missing; reinstall openssh-server");
        };
        if let Effective::Invalid(msg) = &s.effective {
            bail!(
                "the sshd configuration on disk does not validate, so nothing was changed and sshd was not reloaded: {msg}; fix or remove the file it names"
            );
        }
        if !s.privsep_dir {
            plan.steps.push(Step::PrivsepDir);
        }
        if !s.has_ed25519_key {
            plan.steps.push(Step::HostKey);
        }
        if let Some(m) = &s.moduli {
            let (new, removed) = strong_moduli(m);
            if removed > 0 {
                plan.steps.push(Step::Moduli { removed, new });
            }
        }
        let mut config_changes = false;
        let main_new = if has_include(main) {
            main.clone()
        } else {
            config_changes = true;
            let new = format!("{INCLUDE_LINE}\n{main}");
            plan.steps.push(Step::AddInclude {
                old: main.clone(),
                new: new.clone(),
            });
            new
        };
        let ours = self.drop_in_path().display().to_string();
        let want = self.drop_in_content(s.has_rsa_key);
        let mut drop_ins = s.drop_ins.clone();
        let current = drop_ins
            .iter()
            .find(|(n, _)| *n == self.cfg.drop_in.0)
            .map(|(_, t)| t.clone());
        if current.as_deref() != Some(want.as_str()) {
            match drop_ins.iter_mut().find(|(n, _)| *n == self.cfg.drop_in.0) {
                Some((_, t)) => *t = want.clone(),
                None => {
                    drop_ins.push((self.cfg.drop_in.0.clone(), want.clone()));
                    drop_ins.sort();
                }
            }
        }
        let settings = self.settings();
        let found = overrides(&read_order(&main_new, &drop_ins), &ours, &settings);
        if !found.is_empty() && !self.cfg.neutralize_overrides {
            let list: Vec<String> = found
                .iter()
                .map(|(f, k, v)| format!("{k} {v} in {f}"))
                .collect();
            bail!(
                "settings read before {ours} would override the hardening: {}; remove them, or set sshd.neutralize_overrides = true to let the agent comment them out. Nothing was changed",
                list.join("; ")
            );
        }
        let mut by_file: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (f, k, _) in &found {
            by_file.entry(f.clone()).or_default().push(k.clone());
        }
        for (file, keys) in by_file {
            let old = if file == SSHD_CONFIG {
                main_new.clone()
            } else {
                let name = file.rsplit('/').next().unwrap_or("");
                drop_ins
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, t)| t.clone())
                    .unwrap_or_default()
            };
            let new = neutralize(&old, &keys);
            config_changes = true;
            plan.steps.push(Step::Neutralize {
                file,
                old,
                new,
                settings: keys,
            });
        }
        if current.as_deref() != Some(want.as_str()) {
            config_changes = true;
            plan.steps.push(Step::WriteDropIn {
                old: current,
                new: want,
            });
        }
        if config_changes {
            if s.key_users.is_empty() {
                bail!(
                    "refusing to turn off password and root login: no non-root member of group sudo has a valid key in ~/.ssh/authorized_keys, so nobody could log in afterwards. Add one (users.authorized_keys, or users.import_root_keys with keys in /root/.ssh/authorized_keys) and converge again; sshd was left untouched"
                );
            }
            plan.steps.push(Step::Reload);
        } else if !self.effective_mismatches(s).is_empty() {
            let mismatches = self.effective_mismatches(s);
            let list: Vec<String> = mismatches
                .iter()
                .map(|(k, got, want)| {
                    let files = files_setting(s, k, got);
                    let set_in = if files.is_empty() {
                        String::new()
                    } else {
                        format!(" (set in {})", files.join(", "))
                    };
                    format!("{k} is {got:?}, wanted {want:?}{set_in}")
                })
                .collect();
            bail!(
                "sshd -T reports values other than {ours} sets: {}; look for Match blocks or Include lines elsewhere in {ETC_SSH}",
                list.join("; ")
            );
        } else if s.reload_pending {
            plan.steps.push(Step::Reload);
            plan.notes.push(format!(
                "a previous run wrote sshd's configuration but was stopped before reloading sshd ({RELOAD_PENDING} is there): reloading now, so the running daemon uses what the files say"
            ));
        }
        for (file, key) in match_block_settings(main, &s.drop_ins, &settings) {
            plan.notes.push(format!(
                "{file} sets {key} inside a Match block: connections it matches may get another value than {ours} sets (checked for 127.0.0.1 and {PUBLIC_PROBE} only)"
            ));
        }
        if let Some(u) = &s.unit {
            plan.notes.push(format!(
                "sshd runs as {}{}",
                u.id,
                if s.socket_active {
                    " (socket-activated)"
                } else {
                    ""
                }
            ));
        }
        Ok(plan)
    }

    async fn apply(&self, host: &Host, s: &State, steps: &[Step]) -> Result<()> {
        if let Effective::Invalid(msg) = &s.effective {
            // A foreign file broke the configuration: never reload into that.
            bail!(
                "the sshd configuration on disk does not validate, so nothing was changed and sshd was not reloaded: {msg}; fix or remove the file it names"
            );
        }
        let mut files: Vec<(PathBuf, String)> = Vec::new();
        for step in steps {
            match step {
                Step::PrivsepDir => {
                    host.ensure_dir(Path::new(PRIVSEP_DIR), FileSpec::root(0o755))?
                }
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
                Step::AddInclude { new, .. } => {
                    files.push((PathBuf::from(SSHD_CONFIG), new.clone()))
                }
                Step::Neutralize { file, new, .. } => {
                    files.push((PathBuf::from(file), new.clone()))
                }
                Step::WriteDropIn { new, .. } => files.push((self.drop_in_path(), new.clone())),
                Step::Reload => {}
            }
        }
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
        let mut previous: Vec<(PathBuf, Option<String>)> = Vec::new();
        for (path, content) in &files {
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

/// Validate the configuration as it will be after the change, before installing any file:
/// the candidate tree (main file, every drop-in, our new files) is assembled in a private
/// directory with the Include pointed at it, and `sshd -t -f` judges it.
async fn validate_candidate(
    host: &Host,
    s: &State,
    files: &[(PathBuf, String)],
    judge: &Judge<'_>,
) -> Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("sapari-agent-sshd.")
        .tempdir()
        .context("cannot create a temporary directory for the sshd candidate")?;
    let drop = dir.path().join("sshd_config.d");
    std::fs::create_dir(&drop)?;
    let replaced = |p: &Path| files.iter().find(|(f, _)| f == p).map(|(_, c)| c.clone());
    for (name, text) in &s.drop_ins {
        let p = Path::new(DROP_DIR).join(name);
        std::fs::write(
            drop.join(name),
            replaced(&p).unwrap_or_else(|| text.clone()),
        )?;
    }
    for (path, content) in files {
        if path.parent() == Some(Path::new(DROP_DIR)) {
            std::fs::write(drop.join(path.file_name().unwrap_or_default()), content)?;
        }
    }
    let main = replaced(Path::new(SSHD_CONFIG))
        .or_else(|| s.main.clone())
        .unwrap_or_default();
    let pattern = format!("{}/*.conf", drop.display());
    let main: String = main
        .lines()
        .map(|l| match split_line(l) {
            Some((k, v)) if k == "include" && includes_drop_dir(&v) => format!("Include {pattern}"),
            _ => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    let main_path = dir.path().join("sshd_config");
    std::fs::write(&main_path, main + "\n")?;
    let main_arg = main_path.to_string_lossy().into_owned();
    let unmask =
        |text: &str| text.replace(&format!("{}/", drop.display()), &format!("{DROP_DIR}/"));
    let out = host
        .query(&Cmd::new("sshd").args(["-t", "-f", &main_arg]))
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "the new sshd configuration does not validate (nothing was installed): {e}"
            )
        })?;
    if out.status != 0 {
        bail!(
            "the new sshd configuration does not validate (nothing was installed): {}",
            unmask(&out.stderr).trim()
        );
    }
    admit_someone(host, &main_arg, judge)
        .await
        .map_err(|e| anyhow::anyhow!("{}", unmask(&e.to_string())))
}

/// Who the lock-out guard asks sshd about, and from where.
struct Judge<'a> {
    /// Keyed sudo members, this session's user first.
    logins: Vec<&'a KeyUser>,
    from: Vec<std::net::IpAddr>,
    link: Option<crate::resources::SshLink>,
}

/// The lock-out guard, judged by sshd itself: `sshd -T` of the candidate for each keyed
/// sudo member from each address to judge; refused unless one of them would be let in
/// with a key.
async fn admit_someone(host: &Host, main: &str, judge: &Judge<'_>) -> Result<()> {
    let (laddr, lport) = judge.link.as_ref().map_or_else(
        || ("0.0.0.0".to_string(), 22),
        |l| (l.server.to_string(), l.server_port),
    );
    let mut refusals = Vec::new();
    for u in &judge.logins {
        for &addr in &judge.from {
            let spec = format!(
                "user={},addr={addr},host={addr},laddr={laddr},lport={lport}",
                u.name
            );
            let out = host
                .query(&Cmd::new("sshd").args(["-T", "-f", main, "-C", &spec]))
                .await?;
            if out.status != 0 {
                refusals.push(format!(
                    "{} from {addr}: sshd -T failed: {}",
                    u.name,
                    out.stderr.trim()
                ));
                continue;
            }
            let login = admission::Login {
                user: &u.name,
                groups: &u.groups,
                addr,
                key_algorithms: &u.key_algorithms,
            };
            match admission::refusal(&parse_effective(&out.stdout), &login) {
                None => return Ok(()),
                Some(why) => refusals.push(format!("{} from {addr}: {why}", u.name)),
            }
        }
    }
    if refusals.is_empty() {
        bail!(
            "refusing to change sshd: no non-root member of group sudo has a valid key, so nobody could log in afterwards. Add one (users.authorized_keys) and converge again; nothing was installed"
        );
    }
    bail!(
        "refusing to change sshd: with the new configuration sshd would let none of the keyed sudo users in ({}). Fix the sshd settings in agent.toml (e.g. sshd.allow_users) or the file named; nothing was installed and sshd was not reloaded",
        refusals.join("; ")
    )
}

fn units_cmd() -> Cmd {
    Cmd::new("systemctl").args([
        "show",
        "-p",
        "Id",
        "-p",
        "LoadState",
        "-p",
        "ActiveState",
        "ssh.service",
        "sshd.service",
        "ssh.socket",
    ])
}

/// Check the files on disk with `sshd -t`, then reload sshd the way `converge` does. For
/// the commit-confirmed rollback, which restores files outside a resource run.
pub async fn validate_and_reload(host: &Host) -> Result<()> {
    host.run(&Cmd::new("sshd").arg("-t"))
        .await
        .context("sshd -t rejects the configuration on disk, so sshd was not reloaded")?;
    let unit = if host.systemd_booted() {
        let out = host.query(&units_cmd()).await?;
        parse_units(&out.stdout).0
    } else {
        None
    };
    reload_unit(host, unit.as_ref()).await
}

async fn reload(host: &Host, s: &State) -> Result<()> {
    reload_unit(host, s.unit.as_ref()).await
}

/// Reload (not restart) sshd so open sessions survive. The unit is the one systemd runs
/// (`ssh.service` on Debian/Ubuntu, `sshd.service` elsewhere); a socket-activated sshd
/// that is not running picks the new files up on the next connection.
async fn reload_unit(host: &Host, unit: Option<&Unit>) -> Result<()> {
    match unit {
        Some(u) if u.active => {
            host.run(&Cmd::new("systemctl").args(["reload", u.id.as_str()]))
                .await?;
        }
        Some(_) => {
            log::info!("sshd unit not running; the new configuration applies when it starts")
        }
        None => {
            let pid = host
                .read_text(Path::new("/run/sshd.pid"))?
                .and_then(|p| p.trim().parse::<i32>().ok());
            match pid {
                Some(pid) => host
                    .run(&Cmd::new("kill").args(["-HUP", &pid.to_string()]))
                    .await
                    .map(|_| ())?,
                None => log::info!(
                    "no running sshd found; the new configuration applies when it starts"
                ),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res() -> Sshd {
        Sshd::new(&SshdSettings::default(), "deploy", &RunContext::default())
    }

    const DEBIAN_MAIN: &str = "Include /etc/ssh/sshd_config.d/*.conf\n#PermitRootLogin prohibit-password\nKbdInteractiveAuthentication no\nUsePAM yes\nX11Forwarding yes\nSubsystem sftp /usr/lib/openssh/sftp-server\n";

    fn effective_ok(r: &Sshd) -> Effective {
        let mut t = String::new();
        for (k, v) in r.settings() {
            t.push_str(&format!("{} {v}\n", k.to_ascii_lowercase()));
        }
        t.push_str("port 22\n");
        Effective::Values(parse_effective(&t))
    }

    fn converged(r: &Sshd) -> State {
        State {
            main: Some(DEBIAN_MAIN.into()),
            drop_ins: vec![
                ("10-sapari-agent.conf".into(), r.drop_in_content(true)),
                (
                    "50-cloud-init.conf".into(),
                    "PasswordAuthentication yes\n".into(),
                ),
            ],
            moduli: Some(
                "# Time Type Tests Tries Size Generator Modulus\n20230101 2 6 100 3071 2 FFFF\n"
                    .into(),
            ),
            has_ed25519_key: true,
            has_rsa_key: true,
            privsep_dir: true,
            effective: effective_ok(r),
            unit: Some(Unit {
                id: "ssh.service".into(),
                active: true,
            }),
            socket_active: false,
            key_users: vec![KeyUser {
                name: "deploy".into(),
                groups: vec!["sudo".into()],
                key_algorithms: vec!["ssh-ed25519".into()],
            }],
            sshd_installed: true,
            effective_public: effective_ok(r),
            reload_pending: false,
        }
    }

    fn fresh(r: &Sshd) -> State {
        let mut s = converged(r);
        s.drop_ins.remove(0);
        s.moduli = Some("20230101 2 6 100 2047 2 AAAA\n20230101 2 6 100 3071 2 FFFF\n".into());
        s.effective = Effective::Values(parse_effective(
            "passwordauthentication yes\npermitrootlogin yes\n",
        ));
        s.effective_public = s.effective.clone();
        s
    }

    #[test]
    fn converged_plans_nothing() {
        let r = res();
        let p = r.plan(&converged(&r)).unwrap();
        assert!(p.steps.is_empty(), "{:?}", p.steps);
        assert!(p.notes[0].contains("ssh.service"));
    }

    #[test]
    fn fresh_box_writes_drop_in_then_reloads() {
        let r = res();
        let p = r.plan(&fresh(&r)).unwrap();
        assert!(matches!(&p.steps[0], Step::Moduli { removed: 1, new } if !new.contains("2047")));
        assert!(matches!(&p.steps[1], Step::WriteDropIn { old: None, .. }));
        assert_eq!(p.steps[2], Step::Reload);
        assert_eq!(p.steps.len(), 3);
    }

    #[test]
    fn drop_in_sorts_before_cloud_init_and_has_every_setting() {
        let r = res();
        let c = r.drop_in_content(false);
        for k in [
            "PermitRootLogin no",
            "PasswordAuthentication no",
            "AuthenticationMethods publickey",
            "MaxStartups 10:30:60",
            "LogLevel VERBOSE",
            "KexAlgorithms sntrup761x25519-sha512@openssh.com\n",
        ] {
            assert!(c.contains(k), "{k}");
        }
        assert!(!c.contains(RSA_KEY));
        let compat = Sshd::new(
            &SshdSettings {
                compat_kex: true,
                ..SshdSettings::default()
            },
            "deploy",
            &RunContext::default(),
        );
        assert!(compat.drop_in_content(true).contains("curve25519-sha256"));
        // 50-cloud-init's PasswordAuthentication yes is read after ours: not an override.
        let s = converged(&r);
        let order = read_order(DEBIAN_MAIN, &s.drop_ins);
        assert!(
            overrides(
                &order,
                "/etc/ssh/sshd_config.d/10-sapari-agent.conf",
                &r.settings()
            )
            .is_empty()
        );
    }

    #[test]
    fn earlier_drop_in_is_reported_by_name_or_neutralized() {
        let r = res();
        let mut s = converged(&r);
        s.drop_ins.insert(
            0,
            (
                "01-legacy.conf".into(),
                "PasswordAuthentication yes\nBanner /etc/issue\n".into(),
            ),
        );
        let e = r.plan(&s).unwrap_err().to_string();
        assert!(
            e.contains("PasswordAuthentication yes in /etc/ssh/sshd_config.d/01-legacy.conf"),
            "{e}"
        );
        assert!(e.contains("neutralize_overrides"), "{e}");
        let n = Sshd::new(
            &SshdSettings {
                neutralize_overrides: true,
                ..SshdSettings::default()
            },
            "deploy",
            &RunContext::default(),
        );
        s.drop_ins[1].1 = n.drop_in_content(true);
        let p = n.plan(&s).unwrap();
        match &p.steps[0] {
            Step::Neutralize { file, new, .. } => {
                assert!(file.ends_with("01-legacy.conf"));
                assert_eq!(
                    new,
                    "# disabled by sapari-agent (overrides its hardening): PasswordAuthentication yes\nBanner /etc/issue\n"
                );
            }
            s => panic!("{s:?}"),
        }
        assert_eq!(p.steps.last(), Some(&Step::Reload));
    }

    #[test]
    fn main_file_setting_before_include_is_an_override_and_match_blocks_are_not() {
        let r = res();
        let main = format!(
            "PermitRootLogin yes\n{DEBIAN_MAIN}Match User backup\n  PasswordAuthentication yes\n"
        );
        let s = converged(&r);
        let o = overrides(
            &read_order(&main, &s.drop_ins),
            "/etc/ssh/sshd_config.d/10-sapari-agent.conf",
            &r.settings(),
        );
        assert_eq!(
            o,
            vec![(SSHD_CONFIG.into(), "PermitRootLogin".into(), "yes".into())]
        );
    }

    #[test]
    fn missing_include_is_added_at_the_top() {
        let r = res();
        let mut s = converged(&r);
        s.main = Some("PermitRootLogin no\n".into());
        s.drop_ins.clear();
        let p = r.plan(&s).unwrap();
        assert!(
            matches!(&p.steps[0], Step::AddInclude { new, .. } if new.starts_with(INCLUDE_LINE))
        );
    }

    #[test]
    fn lockout_guard_refuses_without_a_keyed_sudo_user() {
        let r = res();
        let mut s = fresh(&r);
        s.key_users.clear();
        let e = r.plan(&s).unwrap_err().to_string();
        assert!(
            e.contains("refusing") && e.contains("left untouched"),
            "{e}"
        );
        // Nothing to change: no reason to refuse.
        let mut s = converged(&r);
        s.key_users.clear();
        assert!(r.plan(&s).unwrap().steps.is_empty());
    }

    #[test]
    fn invalid_foreign_config_fails_without_steps() {
        let r = res();
        let mut s = converged(&r);
        s.effective = Effective::Invalid(
            "/etc/ssh/sshd_config.d/05-broken.conf: line 1: Bad configuration option: Foo".into(),
        );
        let e = r.plan(&s).unwrap_err().to_string();
        assert!(e.contains("05-broken.conf"), "{e}");
    }

    #[test]
    fn effective_mismatch_names_the_setting() {
        let r = res();
        let mut s = converged(&r);
        let mut t = String::new();
        for (k, v) in r.settings() {
            let v = if k == "MaxAuthTries" {
                "6".to_string()
            } else {
                v
            };
            t.push_str(&format!("{} {v}\n", k.to_ascii_lowercase()));
        }
        s.effective = Effective::Values(parse_effective(&t));
        s.main = Some(format!(
            "{DEBIAN_MAIN}Match Address 192.0.2.0/24\n  MaxAuthTries 6\n"
        ));
        let e = r.plan(&s).unwrap_err().to_string();
        assert!(e.contains("MaxAuthTries is \"6\""), "{e}");
        assert!(e.contains("(set in /etc/ssh/sshd_config)"), "{e}");
    }

    #[test]
    fn parsing_helpers() {
        assert_eq!(
            split_line("  PasswordAuthentication=no "),
            Some(("passwordauthentication".into(), "no".into()))
        );
        assert_eq!(split_line("# x"), None);
        let (u, sock) = parse_units(
            "Id=ssh.service\nLoadState=loaded\nActiveState=active\n\nId=sshd.service\nLoadState=not-found\nActiveState=inactive\n\nId=ssh.socket\nLoadState=loaded\nActiveState=active\n",
        );
        assert_eq!(
            u,
            Some(Unit {
                id: "ssh.service".into(),
                active: true
            })
        );
        assert!(sock);
        let (m, n) = strong_moduli("# c\n1 2 6 100 1023 2 A\n1 2 6 100 4095 5 B");
        assert_eq!((m.as_str(), n), ("# c\n1 2 6 100 4095 5 B", 1));
        let e = parse_effective("allowusers deploy\nallowusers ops\n");
        assert_eq!(e["allowusers"], vec!["deploy", "ops"]);
    }

    #[test]
    fn a_pending_reload_is_retried_when_the_files_already_match() {
        let r = res();
        let mut s = converged(&r);
        s.reload_pending = true;
        let p = r.plan(&s).unwrap();
        assert_eq!(p.steps, vec![Step::Reload]);
        assert!(
            p.notes
                .iter()
                .any(|n| n.contains("stopped before reloading")),
            "{:?}",
            p.notes
        );
    }

    #[test]
    fn a_public_client_is_judged_too_and_match_blocks_are_named() {
        let r = res();
        let mut s = converged(&r);
        s.effective_public = Effective::Values(parse_effective(
            "passwordauthentication yes\npermitrootlogin no\n",
        ));
        let e = r.plan(&s).unwrap_err().to_string();
        assert!(
            e.contains("PasswordAuthentication for a public client"),
            "{e}"
        );
        let main = format!("{DEBIAN_MAIN}Match Address 10.0.0.0/8\n  PasswordAuthentication yes\n");
        let found = match_block_settings(&main, &[], &r.settings());
        assert_eq!(
            found,
            vec![(
                SSHD_CONFIG.to_string(),
                "PasswordAuthentication".to_string()
            )]
        );
        let mut s = converged(&r);
        s.main = Some(main);
        let p = r.plan(&s).unwrap();
        assert!(
            p.notes.iter().any(|n| n.contains("inside a Match block")),
            "{:?}",
            p.notes
        );
    }

    #[test]
    fn a_run_without_ssh_judges_logins_from_the_operators_and_a_public_address() {
        let op: std::net::IpAddr = "192.0.2.50".parse().unwrap();
        let r = res().with_operator_ips(&[op]);
        assert_eq!(r.judge_from(), vec![op, PUBLIC_PROBE.parse().unwrap()]);
        let client: std::net::IpAddr = "198.51.100.7".parse().unwrap();
        let over_ssh = Sshd::new(
            &SshdSettings::default(),
            "deploy",
            &RunContext {
                ssh_client: Some(client),
                ..RunContext::default()
            },
        )
        .with_operator_ips(&[op]);
        assert_eq!(over_ssh.judge_from(), vec![client]);
    }
}
