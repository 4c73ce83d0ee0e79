//! `users`: the `docker` group (created first, so Docker's package later finds it), the
//! non-root `deploy` user in `sudo` and `docker` with a locked password, its
//! authorized_keys, and a NOPASSWD sudoers drop-in that is validated before it is installed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use async_trait::async_trait;

use crate::authorized_keys;
use crate::config::UsersSettings;
use crate::engine::Name;
use crate::engine::{Change, Check, Describe, Level, Plan, Resource};
use crate::host::accounts::{self, Accounts};
use crate::host::userdir::Kind;
use crate::host::{Cmd, FileSpec, FileState, Host, UserDir};
use crate::resources::RunContext;

pub mod rollback;

pub const GROUPS: [&str; 2] = ["sudo", "docker"];

/// The NOPASSWD drop-in of `user` (the `--confirm` snapshot keeps it too).
pub fn sudoers_path(user: &str) -> PathBuf {
    PathBuf::from(format!("/etc/sudoers.d/90-sapari-{user}"))
}
const SHELL: &str = "/bin/bash";
const ROOT_KEYS: &str = "/root/.ssh/authorized_keys";

pub struct Users {
    cfg: UsersSettings,
    ctx: RunContext,
}

impl Users {
    pub fn new(cfg: &UsersSettings, ctx: &RunContext) -> Self {
        Self {
            cfg: cfg.clone(),
            ctx: ctx.clone(),
        }
    }

    fn name(&self) -> &str {
        &self.cfg.name.0
    }

    fn sudoers_path(&self) -> PathBuf {
        sudoers_path(self.name())
    }

    fn sudoers_content(&self) -> String {
        format!(
            "# Managed by sapari-agent: passwordless sudo for {0} (SSH is key-only and tailnet-gated).\n{0} ALL=(ALL:ALL) NOPASSWD: ALL\n",
            self.name()
        )
    }
}

#[derive(Debug, Clone)]
pub struct State {
    pub accounts: Accounts,
    /// The user's /etc/shadow password field (None: no entry, or not readable).
    pub password: Option<String>,
    pub root_keys: Option<String>,
    /// The user's home directory exists (false also when the user does not).
    pub home: bool,
    pub ssh_dir: Option<FileSpec>,
    pub authorized_keys: Option<FileState>,
    pub sudoers: Option<FileState>,
    /// UID_MIN from /etc/login.defs: below it are system accounts.
    pub uid_min: u32,
    /// The key the SSH session of this run logged in with, when it matters (exclusive keys).
    pub session_key: SessionKey,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SessionKey {
    /// Not run over SSH, or not asked.
    #[default]
    NotApplicable,
    /// `SHA256:...` as sshd logged it.
    Known(String),
    /// Over SSH, but the key could not be found (why).
    Unknown(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    CreateGroup(String),
    CreateUser,
    CreateHome,
    SetShell { from: String },
    AddToGroups(Vec<String>),
    LockPassword,
    SshDir { from: Option<FileSpec> },
    WriteAuthorizedKeys { old: Option<String>, new: String },
    FixAuthorizedKeysOwner,
    WriteSudoers { old: Option<String>, new: String },
    RemoveSudoers,
}

impl Describe for Step {
    fn change(&self) -> Change {
        match self {
            Step::CreateGroup(g) => Change::value(
                format!("group {g}"),
                Some("absent".into()),
                Some("present".into()),
            ),
            Step::CreateUser => Change::value(
                "user",
                Some("absent".into()),
                Some(format!("created ({SHELL}, groups {})", GROUPS.join(","))),
            ),
            Step::CreateHome => Change::value(
                "home directory",
                Some("absent".into()),
                Some("created from /etc/skel".into()),
            ),
            Step::SetShell { from } => {
                Change::value("login shell", Some(from.clone()), Some(SHELL.into()))
            }
            Step::AddToGroups(g) => Change::value(
                "supplementary groups",
                None,
                Some(format!("+{}", g.join(",+"))),
            ),
            Step::LockPassword => {
                Change::value("password", Some("usable".into()), Some("locked".into()))
            }
            Step::SshDir { from } => Change::value(
                "~/.ssh",
                Some(from.map_or("absent".into(), |d| {
                    format!("mode {:04o} uid {}", d.mode, d.uid)
                })),
                Some("mode 0700, owned by the user".into()),
            ),
            Step::WriteAuthorizedKeys { old, new } => {
                let count = |t: &str| authorized_keys::valid_keys(t).len();
                Change::value(
                    "authorized_keys",
                    Some(
                        old.as_deref()
                            .map_or("absent".into(), |o| format!("{} key(s)", count(o))),
                    ),
                    Some(format!("{} key(s)", count(new))),
                )
            }
            Step::FixAuthorizedKeysOwner => Change::value(
                "authorized_keys owner/mode",
                None,
                Some("mode 0600, owned by the user".into()),
            ),
            Step::WriteSudoers { old, new } => Change::file("sudoers drop-in", old.as_deref(), new),
            Step::RemoveSudoers => Change::value(
                "sudoers drop-in",
                Some("present".into()),
                Some("absent".into()),
            ),
        }
    }
}

/// The user's authorized_keys after adding `wanted` (by key identity: comments and the
/// options of an existing line are kept, unless the wanted line carries options of its own,
/// which then replace the line: a restriction in agent.toml or on root's key must reach a
/// key the file already holds). With `exclusive`, key lines not in `wanted` are dropped.
pub fn merge_keys(existing: Option<&str>, wanted: &[String], exclusive: bool) -> String {
    let mut want: BTreeMap<String, &String> = BTreeMap::new();
    for k in wanted {
        if let Some(id) = authorized_keys::identity(k) {
            want.entry(id).or_insert(k);
        }
    }
    let mut have = BTreeSet::new();
    let mut out: Vec<String> = Vec::new();
    for line in existing.unwrap_or("").lines() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            out.push(line.to_string());
            continue;
        }
        let id = authorized_keys::identity(t);
        match id.as_ref().and_then(|i| want.get(i)) {
            Some(w) => {
                let (wanted_opts, _) = authorized_keys::split_options(w);
                let (have_opts, _) = authorized_keys::split_options(t);
                if wanted_opts.is_some() && wanted_opts != have_opts {
                    out.push(w.to_string());
                } else {
                    out.push(line.to_string());
                }
            }
            None if exclusive => continue,
            None => out.push(line.to_string()),
        }
        if let Some(id) = id {
            have.insert(id);
        }
    }
    for k in wanted {
        if let Some(id) = authorized_keys::identity(k)
            && have.insert(id)
        {
            out.push(k.clone());
        }
    }
    let mut s = out.join("\n");
    if !s.is_empty() {
        s.push('\n');
    }
    s
}

/// The key lines of `old` that are gone from `new` (by identity).
pub fn removed_keys(old: &str, new: &str) -> Vec<String> {
    let kept: BTreeSet<String> = new.lines().filter_map(authorized_keys::identity).collect();
    old.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter(|l| authorized_keys::identity(l).is_some_and(|i| !kept.contains(&i)))
        .map(str::to_string)
        .collect()
}

/// The options cloud-init puts before root's keys to send people to the default user
/// (`disable_root_opts`). Only this exact prefix is dropped on import: any other option
/// restricts the key (`from=`, `command=`, `restrict`) and must not be widened into a bare
/// key for a user with passwordless sudo.
pub fn is_cloud_init_redirect(options: &str) -> bool {
    let Some(rest) = options.strip_prefix(
        "no-port-forwarding,no-agent-forwarding,no-X11-forwarding,command=\"echo 'Please login as the user \\\"",
    ) else {
        return false;
    };
    let Some((user, tail)) = rest.split_once("\\\"") else {
        return false;
    };
    !user.is_empty()
        && user
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        && tail == " rather than the user \\\"root\\\".';echo;sleep 10;exit 142\""
}

/// Root's keys for the managed user: cloud-init's "Please login as" prefix is dropped,
/// every other option is kept verbatim.
pub fn importable_root_keys(root: &str) -> Vec<String> {
    root.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter(|l| authorized_keys::parse(l).is_ok())
        .map(|l| match authorized_keys::split_options(l) {
            (Some(o), key) if is_cloud_init_redirect(o) => key.to_string(),
            _ => l.to_string(),
        })
        .collect()
}

/// The default when /etc/login.defs does not say (shadow's own default).
const DEFAULT_UID_MIN: u32 = 1000;

pub fn uid_min(login_defs: &str) -> u32 {
    login_defs
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            (f.next() == Some("UID_MIN")).then(|| f.next()?.parse().ok())?
        })
        .next_back()
        .unwrap_or(DEFAULT_UID_MIN)
}

/// `ssh-keygen -l`'s `SHA256:...` of a key line.
fn fingerprint(line: &str) -> Option<String> {
    authorized_keys::parse(line)
        .ok()
        .map(|k| k.fingerprint(ssh_key::HashAlg::Sha256).to_string())
}

/// From sshd's log: the key of the login from `addr` port `port` by `user`.
pub fn session_key_in_log(log: &str, user: &str, addr: &str, port: u16) -> Option<String> {
    let needle = format!("Accepted publickey for {user} from {addr} port {port} ");
    log.lines()
        .rev()
        .find_map(|l| l.split_once(&needle).map(|(_, rest)| rest))
        .and_then(|rest| rest.split_whitespace().find(|w| w.starts_with("SHA256:")))
        .map(str::to_string)
}

fn ssh_dir_of(home: &UserDir) -> Result<UserDir> {
    home.subdir(".ssh")?
        .with_context(|| format!("{}/.ssh is missing", home.path().display()))
}

/// The home, `~/.ssh` and authorized_keys of `uid`, read without following anything the
/// user could have planted (see `host::userdir`).
fn observe_keys(
    host: &Host,
    home: &Path,
    uid: u32,
) -> Result<(bool, Option<FileSpec>, Option<FileState>)> {
    let Some(h) = host.user_dir(home, uid, true)? else {
        return Ok((false, None, None));
    };
    let Some(m) = h.lstat(".ssh")? else {
        return Ok((true, None, None));
    };
    if m.kind != Kind::Dir {
        bail!(
            "{}/.ssh is not a directory (a link or a file); root does not follow links in a user's home. Remove it and converge again",
            home.display()
        );
    }
    let ssh = ssh_dir_of(&h)?;
    let info = FileSpec {
        mode: m.mode,
        uid: m.uid,
        gid: m.gid,
    };
    Ok((true, Some(info), ssh.read("authorized_keys")?))
}

impl Users {
    /// `exclusive_keys` must not cut off the SSH session this run came from: its key is
    /// looked up in sshd's log, and removing it (or removing any key when it cannot be
    /// found) needs `--force`.
    fn guard_session_key(&self, s: &State, old: &str, new: &str) -> Result<()> {
        let removed = removed_keys(old, new);
        if removed.is_empty() || self.ctx.force {
            return Ok(());
        }
        match &s.session_key {
            SessionKey::NotApplicable => Ok(()),
            SessionKey::Known(fp) => {
                if removed
                    .iter()
                    .any(|l| fingerprint(l).as_deref() == Some(fp.as_str()))
                {
                    bail!(
                        "refusing to remove key {fp} from {}'s authorized_keys: this SSH session logged in with it (users.exclusive_keys = true and the key is not in users.authorized_keys). Add it to users.authorized_keys, or pass --force if you have another way in. Nothing was changed",
                        self.name()
                    );
                }
                Ok(())
            }
            SessionKey::Unknown(why) => bail!(
                "refusing to remove {} key(s) from {}'s authorized_keys (users.exclusive_keys = true): this run came over SSH and the key this session used is unknown ({why}). Pass --force if you are sure you keep a way in. Nothing was changed",
                removed.len(),
                self.name()
            ),
        }
    }

    /// Only asked when `exclusive_keys` could remove the key this SSH session came in with.
    async fn session_key(&self, host: &Host) -> SessionKey {
        let (Some(addr), Some(link)) = (self.ctx.ssh_client, &self.ctx.ssh_link) else {
            return SessionKey::NotApplicable;
        };
        if !self.cfg.exclusive_keys {
            return SessionKey::NotApplicable;
        }
        let user = self
            .ctx
            .ssh_user
            .clone()
            .unwrap_or_else(|| self.name().to_string());
        let cmd = Cmd::new("journalctl").args([
            "--no-pager",
            "-o",
            "cat",
            "--since=-7d",
            "_COMM=sshd",
            "_COMM=sshd-session",
        ]);
        match host.query(&cmd).await {
            Ok(o) if o.status == 0 => {
                match session_key_in_log(&o.stdout, &user, &addr.to_string(), link.client_port) {
                    Some(k) => SessionKey::Known(k),
                    None => SessionKey::Unknown(format!(
                        "sshd's journal has no \"Accepted publickey for {user} from {addr} port {}\"",
                        link.client_port
                    )),
                }
            }
            Ok(o) => SessionKey::Unknown(format!("journalctl failed: {}", o.stderr.trim())),
            Err(e) => SessionKey::Unknown(format!("journalctl failed: {e}")),
        }
    }

    fn wanted_keys(&self, s: &State) -> Vec<String> {
        let mut keys: Vec<String> = self
            .cfg
            .authorized_keys
            .iter()
            .map(|k| k.0.clone())
            .collect();
        if self.cfg.import_root_keys
            && let Some(root) = &s.root_keys
        {
            keys.extend(importable_root_keys(root));
        }
        keys
    }
}

/// The groups of [`GROUPS`] missing from `have`, in [`GROUPS`] order.
pub fn missing_groups(have: &[String]) -> Vec<String> {
    GROUPS
        .iter()
        .filter(|g| !have.iter().any(|h| h == *g))
        .map(|g| g.to_string())
        .collect()
}

/// A shadow password field that still lets the user log in with a password (`!` and `*`
/// lock it).
fn password_usable(field: &str) -> bool {
    !field.starts_with('!') && !field.starts_with('*')
}

// ---- plan -----------------------------------------------------------------------------------

impl Users {
    /// An existing user: refused when it is root or a system account, otherwise brought to
    /// the home, shell, groups and locked password the agent gives its own.
    fn plan_account(&self, s: &State, u: &accounts::Account, plan: &mut Plan<Step>) -> Result<()> {
        let name = self.name();
        if u.uid == 0 {
            bail!(
                "user {name} has uid 0; the managed user must be a non-root account (users.name)"
            );
        }
        // The agent creates its user with useradd's defaults, so at or above
        // UID_MIN; below it is a system account (www-data, nobody, a daemon's user)
        // that sudo and a login key must never be handed to.
        if u.uid < s.uid_min {
            bail!(
                "users.name = {name:?} is an existing system account (uid {} is below UID_MIN {}); the agent manages a login user of its own. Choose another name; nothing was changed",
                u.uid,
                s.uid_min
            );
        }
        // A `useradd` killed after writing /etc/passwd leaves the user without a home,
        // and ~/.ssh could never be made.
        if !s.home {
            plan.steps.push(Step::CreateHome);
        }
        if u.shell != SHELL {
            plan.steps.push(Step::SetShell {
                from: u.shell.clone(),
            });
        }
        let missing = missing_groups(&s.accounts.groups_of(name));
        if !missing.is_empty() {
            plan.steps.push(Step::AddToGroups(missing));
        }
        if s.password.as_deref().is_some_and(password_usable) {
            plan.steps.push(Step::LockPassword);
        }
        Ok(())
    }

    /// ~/.ssh and authorized_keys: the keys wanted, owned by the user (`user` is None when
    /// the plan creates it).
    fn plan_keys(
        &self,
        s: &State,
        user: Option<&accounts::Account>,
        plan: &mut Plan<Step>,
    ) -> Result<()> {
        let (uid, gid) = user.map_or((None, None), |u| (Some(u.uid), Some(u.gid)));
        let dir_ok = s
            .ssh_dir
            .is_some_and(|d| d.mode == 0o700 && Some(d.uid) == uid && Some(d.gid) == gid);
        if !dir_ok {
            plan.steps.push(Step::SshDir { from: s.ssh_dir });
        }
        let wanted = self.wanted_keys(s);
        let old = s.authorized_keys.as_ref().map(FileState::text);
        let new = merge_keys(old.as_deref(), &wanted, self.cfg.exclusive_keys);
        if old.as_deref() != Some(new.as_str()) && !(old.is_none() && new.is_empty()) {
            self.guard_session_key(s, old.as_deref().unwrap_or(""), &new)?;
            plan.steps.push(Step::WriteAuthorizedKeys { old, new });
        } else if let Some(f) = &s.authorized_keys
            && (f.mode != 0o600 || Some(f.uid) != uid || Some(f.gid) != gid)
        {
            plan.steps.push(Step::FixAuthorizedKeysOwner);
        }
        if wanted.is_empty()
            && s.authorized_keys
                .as_ref()
                .is_none_or(|f| authorized_keys::valid_keys(&f.text()).is_empty())
        {
            plan.notes.push(format!(
                "{} has no authorized key: set users.authorized_keys, or import_root_keys with keys in {ROOT_KEYS}; sshd hardening will refuse to run until one exists",
                self.name()
            ));
        }
        Ok(())
    }

    fn plan_sudoers(&self, s: &State, plan: &mut Plan<Step>) {
        let sudoers = s.sudoers.as_ref().map(FileState::text);
        if self.cfg.passwordless_sudo {
            let want = self.sudoers_content();
            let perms_ok = s
                .sudoers
                .as_ref()
                .is_some_and(|f| f.mode == 0o440 && f.uid == 0 && f.gid == 0);
            if sudoers.as_deref() != Some(want.as_str()) || !perms_ok {
                plan.steps.push(Step::WriteSudoers {
                    old: sudoers,
                    new: want,
                });
            }
        } else if sudoers.is_some() {
            plan.steps.push(Step::RemoveSudoers);
        }
    }
}

// ---- apply ----------------------------------------------------------------------------------

impl Users {
    /// The command of a step on the account database (group, user, home, shell, groups,
    /// password); None for the steps that write files.
    fn account_cmd(&self, step: &Step) -> Option<Cmd> {
        let name = self.name();
        Some(match step {
            Step::CreateGroup(g) => Cmd::new("groupadd").args(["--system", g.as_str()]),
            Step::CreateUser => Cmd::new("useradd").args([
                "--create-home",
                "--user-group",
                "--shell",
                SHELL,
                "--groups",
                &GROUPS.join(","),
                name,
            ]),
            // What useradd --create-home would have done: the home from /etc/skel,
            // owned by the user; umask 0027 keeps it private (0750).
            Step::CreateHome => Cmd::new("mkhomedir_helper").args([name, "0027"]),
            Step::SetShell { .. } => Cmd::new("usermod").args(["--shell", SHELL, name]),
            Step::AddToGroups(g) => {
                Cmd::new("usermod").args(["--append", "--groups", &g.join(","), name])
            }
            Step::LockPassword => Cmd::new("usermod").args(["--lock", name]),
            Step::SshDir { .. }
            | Step::WriteAuthorizedKeys { .. }
            | Step::FixAuthorizedKeysOwner
            | Step::WriteSudoers { .. }
            | Step::RemoveSudoers => return None,
        })
    }

    /// ~/.ssh or authorized_keys, owned by the user, written inside the home without
    /// following links.
    fn apply_ssh_file(&self, host: &Host, step: &Step) -> Result<()> {
        let name = self.name();
        // The user may have been created by an earlier step: look it up now.
        let accounts = host.accounts()?;
        let u = accounts
            .user(name)
            .with_context(|| format!("user {name} does not exist after creating it"))?;
        let spec = |mode| FileSpec {
            mode,
            uid: u.uid,
            gid: u.gid,
        };
        let home = host
            .user_dir(&u.home, u.uid, true)?
            .with_context(|| format!("home directory {} of {name} is missing", u.home.display()))?;
        if let Step::SshDir { .. } = step {
            return host.ensure_dir_in(&home, ".ssh", spec(0o700));
        }
        let ssh = ssh_dir_of(&home)?;
        match step {
            Step::WriteAuthorizedKeys { new, .. } => {
                host.write_in(&ssh, "authorized_keys", new.as_bytes(), spec(0o600), true)
            }
            _ => host.set_meta_in(&ssh, "authorized_keys", spec(0o600)),
        }
    }

    /// The drop-in, validated alone before it is installed and with the whole sudo
    /// configuration after; put back as it was when the whole is refused.
    async fn install_sudoers(&self, host: &Host, old: Option<&str>, new: &str) -> Result<()> {
        let path = self.sudoers_path();
        host.write_validated(&path, new.as_bytes(), FileSpec::root(0o440), false, |c| {
            Cmd::new("visudo").args(["-c", "-f", &c.to_string_lossy()])
        })
        .await?;
        // The drop-in is fine on its own; make sure sudo as a whole still is.
        if let Err(e) = host.run(&Cmd::new("visudo").arg("-c")).await {
            match old {
                Some(o) => host.write(&path, o.as_bytes(), FileSpec::root(0o440), false)?,
                None => host.remove_file(&path)?,
            }
            bail!(
                "sudo configuration invalid after installing {} (restored): {e}",
                path.display()
            );
        }
        Ok(())
    }
}

#[async_trait]
impl Resource for Users {
    type State = State;
    type Step = Step;

    fn name(&self) -> Name {
        Name::Users
    }

    async fn observe(&self, host: &Host) -> Result<State> {
        let accounts = host.accounts()?;
        let shadow = host.read_text(Path::new("/etc/shadow")).ok().flatten();
        let login_defs = host.read_text(Path::new("/etc/login.defs"))?;
        let (home, ssh_dir, authorized_keys) = match accounts.user(self.name()) {
            None => (false, None, None),
            Some(u) => observe_keys(host, &u.home, u.uid)?,
        };
        let session_key = self.session_key(host).await;
        Ok(State {
            password: shadow
                .as_deref()
                .and_then(|s| accounts::shadow_password(s, self.name()))
                .map(str::to_string),
            root_keys: host.read_text(Path::new(ROOT_KEYS)).ok().flatten(),
            home,
            ssh_dir,
            authorized_keys,
            sudoers: host.read(&self.sudoers_path())?,
            uid_min: uid_min(login_defs.as_deref().unwrap_or("")),
            session_key,
            accounts,
        })
    }

    fn plan(&self, s: &State) -> Result<Plan<Step>> {
        let mut plan = Plan::default();
        for g in GROUPS {
            if s.accounts.group(g).is_none() {
                plan.steps.push(Step::CreateGroup(g.to_string()));
            }
        }
        let user = s.accounts.user(self.name());
        match user {
            None => plan.steps.push(Step::CreateUser),
            Some(u) => self.plan_account(s, u, &mut plan)?,
        }
        self.plan_keys(s, user, &mut plan)?;
        self.plan_sudoers(s, &mut plan);
        Ok(plan)
    }

    async fn apply(&self, host: &Host, _s: &State, steps: &[Step]) -> Result<()> {
        for step in steps {
            match step {
                Step::SshDir { .. }
                | Step::WriteAuthorizedKeys { .. }
                | Step::FixAuthorizedKeysOwner => self.apply_ssh_file(host, step)?,
                Step::WriteSudoers { old, new } => {
                    self.install_sudoers(host, old.as_deref(), new).await?;
                }
                Step::RemoveSudoers => host.remove_file(&self.sudoers_path())?,
                account => {
                    if let Some(cmd) = self.account_cmd(account) {
                        host.run(&cmd).await?;
                    }
                }
            }
        }
        Ok(())
    }

    fn checks(&self, s: &State) -> Vec<Check> {
        let name = self.name();
        let fix = "sapari-agent converge --only users";
        let groups = s.accounts.groups_of(name);
        let missing: Vec<&str> = GROUPS
            .iter()
            .copied()
            .filter(|g| !groups.iter().any(|h| h == g))
            .collect();
        let keys = s
            .authorized_keys
            .as_ref()
            .map_or(0, |f| authorized_keys::valid_keys(&f.text()).len());
        let mut checks = vec![Check::new(
            &format!("user {name}"),
            match (s.accounts.user(name).is_some(), missing.is_empty()) {
                (false, _) => Level::Fail,
                (true, false) => Level::Warn,
                (true, true) => Level::Pass,
            },
            match s.accounts.user(name) {
                None => "absent".to_string(),
                Some(_) if missing.is_empty() => format!("in {}", GROUPS.join(" and ")),
                Some(_) => format!("not in {}", missing.join(", ")),
            },
            fix,
        )];
        checks.push(Check::new(
            &format!("{name} authorized keys"),
            if keys > 0 { Level::Pass } else { Level::Fail },
            format!("{keys} valid key(s)"),
            "set users.authorized_keys (or import_root_keys) and converge --only users",
        ));
        if self.cfg.passwordless_sudo {
            let ok = s
                .sudoers
                .as_ref()
                .is_some_and(|f| f.text() == self.sudoers_content());
            checks.push(Check::new(
                "passwordless sudo",
                if ok { Level::Pass } else { Level::Warn },
                self.sudoers_path().display().to_string(),
                fix,
            ));
        }
        checks
    }
}

#[cfg(test)]
mod tests;
