//! `users`: the `docker` group (created first, so Docker's package later finds it), the
//! non-root `deploy` user in `sudo` and `docker` with a locked password, its
//! authorized_keys, and a NOPASSWD sudoers drop-in that is validated before it is installed.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use async_trait::async_trait;

use crate::authorized_keys;
use crate::config::UsersSettings;
use crate::engine::{Change, Check, Describe, Level, Plan, Resource};
use crate::host::accounts::{self, Accounts};
use crate::host::{Cmd, FileSpec, FileState, Host};
use crate::resources::Name;

pub const GROUPS: [&str; 2] = ["sudo", "docker"];
const SHELL: &str = "/bin/bash";
const ROOT_KEYS: &str = "/root/.ssh/authorized_keys";

pub struct Users {
    cfg: UsersSettings,
}

impl Users {
    pub fn new(cfg: &UsersSettings) -> Self {
        Self { cfg: cfg.clone() }
    }

    fn name(&self) -> &str {
        &self.cfg.name.0
    }

    fn sudoers_path(&self) -> PathBuf {
        PathBuf::from(format!("/etc/sudoers.d/90-sapari-{}", self.name()))
    }

    fn sudoers_content(&self) -> String {
        format!(
            "# Managed by sapari-agent: passwordless sudo for {0} (SSH is key-only and tailnet-gated).\n{0} ALL=(ALL:ALL) NOPASSWD: ALL\n",
            self.name()
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirInfo {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

#[derive(Debug, Clone)]
pub struct State {
    pub accounts: Accounts,
    /// The user's /etc/shadow password field (None: no entry, or not readable).
    pub password: Option<String>,
    pub root_keys: Option<String>,
    /// The user's home directory exists (false also when the user does not).
    pub home: bool,
    pub ssh_dir: Option<DirInfo>,
    pub authorized_keys: Option<FileState>,
    pub sudoers: Option<FileState>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    CreateGroup(String),
    CreateUser,
    CreateHome,
    SetShell { from: String },
    AddToGroups(Vec<String>),
    LockPassword,
    SshDir { from: Option<DirInfo> },
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

/// The user's authorized_keys after adding `wanted` (by key identity: options and comments of
/// an existing line are kept). With `exclusive`, key lines not in `wanted` are dropped.
pub fn merge_keys(existing: Option<&str>, wanted: &[String], exclusive: bool) -> String {
    let wanted_ids: BTreeSet<String> = wanted
        .iter()
        .filter_map(|k| authorized_keys::identity(k))
        .collect();
    let mut have = BTreeSet::new();
    let mut out: Vec<String> = Vec::new();
    for line in existing.unwrap_or("").lines() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            out.push(line.to_string());
            continue;
        }
        let id = authorized_keys::identity(t);
        if exclusive && !id.as_ref().is_some_and(|i| wanted_ids.contains(i)) {
            continue;
        }
        if let Some(id) = id {
            have.insert(id);
        }
        out.push(line.to_string());
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

/// Root's keys as plain `type key comment`: cloud images often prefix them with
/// `command="echo Please login as ..."` options that would make them useless for our user.
pub fn importable_root_keys(root: &str) -> Vec<String> {
    root.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter(|l| authorized_keys::parse(l).is_ok())
        .map(|l| authorized_keys::split_options(l).1.to_string())
        .collect()
}

fn dir_info(path: &Path) -> Option<DirInfo> {
    std::fs::metadata(path)
        .ok()
        .filter(|m| m.is_dir())
        .map(|m| DirInfo {
            mode: m.mode() & 0o7777,
            uid: m.uid(),
            gid: m.gid(),
        })
}

impl Users {
    fn home(&self, a: &Accounts) -> PathBuf {
        a.user(self.name()).map_or_else(
            || PathBuf::from(format!("/home/{}", self.name())),
            |u| u.home.clone(),
        )
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

#[async_trait]
impl Resource for Users {
    type State = State;
    type Step = Step;

    fn name(&self) -> Name {
        Name::Users
    }

    async fn observe(&self, host: &Host) -> Result<State> {
        let accounts = host.accounts()?;
        let home = self.home(&accounts);
        let shadow = host.read_text(Path::new("/etc/shadow")).ok().flatten();
        Ok(State {
            password: shadow
                .as_deref()
                .and_then(|s| accounts::shadow_password(s, self.name()))
                .map(str::to_string),
            root_keys: host.read_text(Path::new(ROOT_KEYS)).ok().flatten(),
            home: dir_info(&home).is_some(),
            ssh_dir: dir_info(&home.join(".ssh")),
            authorized_keys: host.read(&home.join(".ssh/authorized_keys"))?,
            sudoers: host.read(&self.sudoers_path())?,
            accounts,
        })
    }

    fn plan(&self, s: &State) -> Result<Plan<Step>> {
        let mut plan = Plan::default();
        let name = self.name();
        for g in GROUPS {
            if s.accounts.group(g).is_none() {
                plan.steps.push(Step::CreateGroup(g.to_string()));
            }
        }
        let user = s.accounts.user(name);
        match user {
            None => plan.steps.push(Step::CreateUser),
            Some(u) => {
                if u.uid == 0 {
                    bail!(
                        "user {name} has uid 0; the managed user must be a non-root account (users.name)"
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
                let have = s.accounts.groups_of(name);
                let missing: Vec<String> = GROUPS
                    .iter()
                    .filter(|g| !have.iter().any(|h| h == *g))
                    .map(|g| g.to_string())
                    .collect();
                if !missing.is_empty() {
                    plan.steps.push(Step::AddToGroups(missing));
                }
                if s.password
                    .as_deref()
                    .is_some_and(|p| !p.starts_with('!') && !p.starts_with('*'))
                {
                    plan.steps.push(Step::LockPassword);
                }
            }
        }
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
                "{name} has no authorized key: set users.authorized_keys, or import_root_keys with keys in {ROOT_KEYS}; sshd hardening will refuse to run until one exists"
            ));
        }
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
        Ok(plan)
    }

    async fn apply(&self, host: &Host, _s: &State, steps: &[Step]) -> Result<()> {
        let name = self.name();
        for step in steps {
            match step {
                Step::CreateGroup(g) => {
                    host.run(&Cmd::new("groupadd").args(["--system", g.as_str()]))
                        .await?;
                }
                Step::CreateUser => {
                    host.run(&Cmd::new("useradd").args([
                        "--create-home",
                        "--user-group",
                        "--shell",
                        SHELL,
                        "--groups",
                        &GROUPS.join(","),
                        name,
                    ]))
                    .await?;
                }
                Step::CreateHome => {
                    // What useradd --create-home would have done: the home from /etc/skel,
                    // owned by the user; umask 0027 keeps it private (0750).
                    host.run(&Cmd::new("mkhomedir_helper").args([name, "0027"]))
                        .await?;
                }
                Step::SetShell { .. } => {
                    host.run(&Cmd::new("usermod").args(["--shell", SHELL, name]))
                        .await?;
                }
                Step::AddToGroups(g) => {
                    host.run(&Cmd::new("usermod").args([
                        "--append",
                        "--groups",
                        &g.join(","),
                        name,
                    ]))
                    .await?;
                }
                Step::LockPassword => {
                    host.run(&Cmd::new("usermod").args(["--lock", name]))
                        .await?;
                }
                Step::SshDir { .. }
                | Step::WriteAuthorizedKeys { .. }
                | Step::FixAuthorizedKeysOwner => {
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
                    let dir = u.home.join(".ssh");
                    match step {
                        Step::SshDir { .. } => host.ensure_dir(&dir, spec(0o700))?,
                        Step::WriteAuthorizedKeys { new, .. } => host.write(
                            &dir.join("authorized_keys"),
                            new.as_bytes(),
                            spec(0o600),
                            true,
                        )?,
                        _ => {
                            let p = dir.join("authorized_keys");
                            host.chown(&p, u.uid, u.gid)?;
                            host.chmod(&p, 0o600)?;
                        }
                    }
                }
                Step::WriteSudoers { old, new } => {
                    let path = self.sudoers_path();
                    host.write_validated(
                        &path,
                        new.as_bytes(),
                        FileSpec::root(0o440),
                        false,
                        |c| Cmd::new("visudo").args(["-c", "-f", &c.to_string_lossy()]),
                    )
                    .await?;
                    // The drop-in is fine on its own; make sure sudo as a whole still is.
                    if let Err(e) = host.run(&Cmd::new("visudo").arg("-c")).await {
                        match old {
                            Some(o) => {
                                host.write(&path, o.as_bytes(), FileSpec::root(0o440), false)?
                            }
                            None => host.remove_file(&path)?,
                        }
                        bail!(
                            "sudo configuration invalid after installing {} (restored): {e}",
                            path.display()
                        );
                    }
                }
                Step::RemoveSudoers => host.remove_file(&self.sudoers_path())?,
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
mod tests {
    use super::*;
    use crate::config::AuthorizedKey;

    const K1: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl op@laptop";
    const K2: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIL5XCtKcP+JC48vXbIoe+UVO/zcUdqfXFZ2HI0vvRsPW ci";

    fn res(keys: &[&str]) -> Users {
        Users::new(&UsersSettings {
            authorized_keys: keys.iter().map(|k| AuthorizedKey(k.to_string())).collect(),
            ..UsersSettings::default()
        })
    }

    fn fresh() -> State {
        State {
            accounts: Accounts {
                users: accounts::parse_passwd("root:x:0:0:root:/root:/bin/bash\n"),
                groups: accounts::parse_group("root:x:0:\nsudo:x:27:\n"),
            },
            password: None,
            root_keys: Some(format!(
                "no-port-forwarding,command=\"echo 'Please login as \\\"ubuntu\\\"';sleep 10\" {K2}\n"
            )),
            home: false,
            ssh_dir: None,
            authorized_keys: None,
            sudoers: None,
        }
    }

    fn converged(r: &Users) -> State {
        let keys = format!("{K1}\n{K2}\n");
        State {
            accounts: Accounts {
                users: accounts::parse_passwd(
                    "root:x:0:0:root:/root:/bin/bash\ndeploy:x:1000:1000::/home/deploy:/bin/bash\n",
                ),
                groups: accounts::parse_group(
                    "root:x:0:\nsudo:x:27:deploy\ndocker:x:999:deploy\ndeploy:x:1000:\n",
                ),
            },
            password: Some("!".into()),
            root_keys: Some(format!("{K2}\n")),
            home: true,
            ssh_dir: Some(DirInfo {
                mode: 0o700,
                uid: 1000,
                gid: 1000,
            }),
            authorized_keys: Some(FileState {
                content: keys.into_bytes(),
                mode: 0o600,
                uid: 1000,
                gid: 1000,
            }),
            sudoers: Some(FileState {
                content: r.sudoers_content().into_bytes(),
                mode: 0o440,
                uid: 0,
                gid: 0,
            }),
        }
    }

    #[test]
    fn fresh_box_docker_group_first_then_user_keys_sudo() {
        let r = res(&[K1]);
        let p = r.plan(&fresh()).unwrap();
        assert_eq!(p.steps[0], Step::CreateGroup("docker".into()));
        assert_eq!(p.steps[1], Step::CreateUser);
        assert!(matches!(p.steps[2], Step::SshDir { from: None }));
        match &p.steps[3] {
            // Root's key is imported without cloud-init's "please login as" command option.
            Step::WriteAuthorizedKeys { new, .. } => assert_eq!(new, &format!("{K1}\n{K2}\n")),
            s => panic!("{s:?}"),
        }
        assert!(matches!(p.steps[4], Step::WriteSudoers { .. }));
        assert_eq!(p.steps.len(), 5);
    }

    /// A run killed while `useradd` ran can leave the user in /etc/passwd without a home;
    /// the next run must create it before ~/.ssh, not fail on ~/.ssh forever.
    #[test]
    fn user_without_home_gets_it_before_ssh_dir() {
        let r = res(&[K1]);
        let mut s = converged(&r);
        s.home = false;
        s.ssh_dir = None;
        s.authorized_keys = None;
        let p = r.plan(&s).unwrap();
        assert_eq!(p.steps[0], Step::CreateHome);
        assert!(matches!(p.steps[1], Step::SshDir { from: None }));
        assert!(matches!(p.steps[2], Step::WriteAuthorizedKeys { .. }));
        assert_eq!(p.steps.len(), 3, "{:?}", p.steps);
    }

    #[test]
    fn converged_plans_nothing() {
        let r = res(&[K1]);
        let p = r.plan(&converged(&r)).unwrap();
        assert!(p.steps.is_empty(), "{:?}", p.steps);
    }

    #[test]
    fn drift_is_corrected_item_by_item() {
        let r = res(&[K1]);
        let mut s = converged(&r);
        s.accounts.groups =
            accounts::parse_group("sudo:x:27:\ndocker:x:999:deploy\ndeploy:x:1000:\n");
        s.password = Some("$6$hash".into());
        s.accounts.users[1].shell = "/bin/sh".into();
        s.sudoers.as_mut().unwrap().mode = 0o644;
        let p = r.plan(&s).unwrap();
        assert_eq!(
            p.steps[..3],
            [
                Step::SetShell {
                    from: "/bin/sh".into()
                },
                Step::AddToGroups(vec!["sudo".into()]),
                Step::LockPassword
            ]
        );
        assert!(matches!(p.steps[3], Step::WriteSudoers { .. }));
    }

    #[test]
    fn keys_added_by_hand_survive_unless_exclusive() {
        let extra = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILzJoF9UTeEliDm31rypflK/KDbvn4WRZjs1rch2+bK3 manual";
        let existing = format!("# mine\n{extra}\nrestrict {K1}\n");
        let merged = merge_keys(Some(&existing), &[K1.to_string(), K2.to_string()], false);
        assert_eq!(merged, format!("# mine\n{extra}\nrestrict {K1}\n{K2}\n"));
        let merged = merge_keys(Some(&existing), &[K1.to_string()], true);
        assert_eq!(merged, format!("# mine\nrestrict {K1}\n"));
        assert_eq!(merge_keys(Some(&merged), &[K1.to_string()], true), merged);
    }

    #[test]
    fn no_key_anywhere_is_a_note() {
        let r = Users::new(&UsersSettings {
            import_root_keys: false,
            ..UsersSettings::default()
        });
        let p = r.plan(&fresh()).unwrap();
        assert!(p.notes[0].contains("no authorized key"));
        assert!(
            !p.steps
                .iter()
                .any(|s| matches!(s, Step::WriteAuthorizedKeys { .. }))
        );
    }

    #[test]
    fn sudo_off_removes_our_drop_in_only() {
        let r = res(&[K1]);
        let mut s = converged(&r);
        let off = Users::new(&UsersSettings {
            passwordless_sudo: false,
            ..r.cfg.clone()
        });
        assert_eq!(off.plan(&s).unwrap().steps, vec![Step::RemoveSudoers]);
        s.sudoers = None;
        assert!(off.plan(&s).unwrap().steps.is_empty());
    }

    #[test]
    fn uid_zero_user_is_refused() {
        let r = res(&[K1]);
        let mut s = converged(&r);
        s.accounts.users[1].uid = 0;
        assert!(r.plan(&s).unwrap_err().to_string().contains("uid 0"));
    }

    #[test]
    fn checks() {
        let r = res(&[K1]);
        assert!(
            r.checks(&converged(&r))
                .iter()
                .all(|c| c.level == Level::Pass)
        );
        let c = r.checks(&fresh());
        assert_eq!(c[0].level, Level::Fail);
        assert_eq!(c[1].level, Level::Fail);
    }
}
