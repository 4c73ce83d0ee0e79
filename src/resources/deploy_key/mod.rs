//! `deploy-key`: the runbook's "GitHub deploy key" row. For the managed user:
//!
//! - an ed25519 key pair (`~/.ssh/github_deploy_key` and `.pub`, or `deploy_key.path`),
//!   generated once and never replaced: the key registered at GitHub must stay valid. A
//!   missing or wrong `.pub` is derived again from the private key, never the other way;
//! - GitHub's host keys in `~/.ssh/known_hosts`, built into the agent and checked against
//!   GitHub's published SHA256 fingerprints before anything is written;
//! - a `Host github.com` block at the top of `~/.ssh/config` (ssh keeps the first value it
//!   reads), between marker comments, so `git clone git@github.com:...` uses the key.
//!
//! No private key material ever reaches the state, a change, a note, a log line or an
//! error: observation keeps only the public half of the key.
//!
//! `~/.ssh` is the user's, and root runs this: every read and write below the home goes
//! through [`UserDir`] handles, so a link, FIFO or hard link the user planted is reported
//! or refused instead of read (a root-only file never reaches the diff), and a `~/.ssh`
//! swapped for a link after observe cannot redirect a write.

use std::fmt;
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use async_trait::async_trait;
use ssh_key::rand_core::OsRng;
use ssh_key::{Algorithm, LineEnding, PrivateKey, PublicKey};

use crate::config::{DeployKeySettings, UsersSettings};
use crate::engine::Name;
use crate::engine::{Change, Check, Describe, Level, Plan, Resource};
use crate::host::userdir::{self, UserDir};
use crate::host::{FileSpec, Host, files};

const HINT: &str = "sapari-agent converge --only deploy-key";
const GITHUB: &str = "github.com";
pub const BEGIN_MARKER: &str = "# BEGIN sapari-agent deploy-key";
pub const END_MARKER: &str = "# END sapari-agent deploy-key";

const DIR_MODE: u32 = 0o700;
const PRIVATE_MODE: u32 = 0o600;
const PUBLIC_MODE: u32 = 0o644;
const KNOWN_HOSTS_MODE: u32 = 0o644;
const CONFIG_MODE: u32 = 0o600;

mod github;
mod plan;
mod read;
mod ssh_files;

pub use github::{GITHUB_HOST_KEYS, HostKey, sha256_fingerprint, verified_known_hosts_lines};
use plan::{plan_dirs, plan_ssh_files, public_note, require};
use read::{Opened, entry_from, file_name, open_dir, read_private_key, read_text_file};
pub use ssh_files::{config_block, merge_known_hosts, merge_ssh_config};

pub struct DeployKey {
    cfg: DeployKeySettings,
    user: String,
    comment: String,
}

impl DeployKey {
    pub fn new(cfg: &DeployKeySettings, users: &UsersSettings) -> Self {
        // A line break would split the .pub line.
        let comment: String = cfg
            .comment
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        Self {
            cfg: cfg.clone(),
            user: users.name.0.clone(),
            comment: comment.trim().to_string(),
        }
    }

    fn paths(&self, home: &Path) -> Paths {
        let ssh_dir = home.join(".ssh");
        let key = self
            .cfg
            .path
            .as_ref()
            .map_or_else(|| ssh_dir.join("github_deploy_key"), |p| p.0.clone());
        let mut public = key.clone().into_os_string();
        public.push(".pub");
        Paths {
            known_hosts: ssh_dir.join("known_hosts"),
            config: ssh_dir.join("config"),
            public: PathBuf::from(public),
            key,
            ssh_dir,
        }
    }

    /// Everything `plan` needs, for a user that exists (`None`: it does not).
    pub fn observe_for(&self, host: &Host, user: Option<Owner>) -> Result<State> {
        let Some(user) = user else {
            return Ok(State::default());
        };
        let p = self.paths(&user.home);
        let open = |dir: &Path| open_dir(host, &user.home, user.uid, dir);
        let home = open(&user.home)?;
        let ssh = open(&p.ssh_dir)?;
        let key_dir = p.key_dir().map(open).transpose()?;
        let kd = key_dir.as_ref().unwrap_or(&ssh).handle.as_ref();
        let sd = ssh.handle.as_ref();
        let private = read_private_key(kd, file_name(&p.key)?)?;
        let public = read_text_file(kd, file_name(&p.public)?)?;
        let known_hosts = read_text_file(sd, file_name(&p.known_hosts)?)?;
        let config = read_text_file(sd, file_name(&p.config)?)?;
        Ok(State {
            home: home.entry,
            ssh_dir: ssh.entry,
            key_dir: key_dir.and_then(|d| d.entry),
            private,
            public,
            known_hosts,
            config,
            user: Some(user),
        })
    }
}

struct Paths {
    ssh_dir: PathBuf,
    key: PathBuf,
    public: PathBuf,
    known_hosts: PathBuf,
    config: PathBuf,
}

impl Paths {
    /// The directory of `deploy_key.path` when it is not `~/.ssh`.
    fn key_dir(&self) -> Option<&Path> {
        self.key.parent().filter(|d| *d != self.ssh_dir)
    }
}

/// The managed user, from /etc/passwd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

impl Owner {
    fn meta(&self, mode: u32) -> FileSpec {
        FileSpec {
            mode,
            uid: self.uid,
            gid: self.gid,
        }
    }
}

/// What an entry is, as `host::userdir` reads it (links never followed).
pub use crate::host::userdir::Kind;

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::File => "a file",
            Kind::Dir => "a directory",
            Kind::Symlink => "a symbolic link",
            Kind::Other => "a special file",
        })
    }
}

/// What is at a path: its kind, mode and owner.
pub use crate::host::files::Entry;

#[derive(Debug, Clone)]
pub struct TextFile {
    pub entry: Entry,
    /// Empty unless the entry is a regular file.
    pub text: String,
}

/// The public half of the private key, the only part observation keeps.
#[derive(Debug, Clone)]
pub struct KeyInfo {
    pub public: PublicKey,
    pub encrypted: bool,
}

impl KeyInfo {
    pub fn of(key: &PrivateKey) -> Self {
        Self {
            public: key.public_key().clone(),
            encrypted: key.is_encrypted(),
        }
    }

    /// The `.pub` content: `type base64 comment`.
    fn public_line(&self, fallback_comment: &str) -> Result<String> {
        let mut public = self.public.clone();
        if public.comment().is_empty() {
            public.set_comment(fallback_comment);
        }
        Ok(public
            .to_openssh()
            .context("cannot encode the public key")?
            .trim_end()
            .to_string())
    }
}

#[derive(Debug, Clone)]
pub struct PrivateKeyFile {
    pub entry: Entry,
    /// Why it cannot be used, when it cannot (never containing key material).
    pub key: Result<KeyInfo, String>,
}

#[derive(Debug, Clone, Default)]
pub struct State {
    /// `None`: the user does not exist (yet); nothing else is observed then.
    pub user: Option<Owner>,
    pub home: Option<Entry>,
    pub ssh_dir: Option<Entry>,
    /// The directory of `deploy_key.path` when it is not `~/.ssh`.
    pub key_dir: Option<Entry>,
    pub private: Option<PrivateKeyFile>,
    pub public: Option<TextFile>,
    pub known_hosts: Option<TextFile>,
    pub config: Option<TextFile>,
}

/// A fresh ed25519 key with `comment`.
pub fn new_key(comment: &str) -> Result<PrivateKey> {
    let mut key = PrivateKey::random(&mut OsRng, Algorithm::Ed25519)
        .context("cannot generate an ed25519 key")?;
    key.set_comment(comment);
    Ok(key)
}

#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    CreateDir {
        path: PathBuf,
        to: FileSpec,
    },
    SetMeta {
        path: PathBuf,
        from: FileSpec,
        to: FileSpec,
    },
    /// Generate the key pair: private key at `path`, public key at `public`.
    Generate {
        path: PathBuf,
        public: PathBuf,
        comment: String,
        uid: u32,
        gid: u32,
    },
    /// Write a file whose content is public (the .pub, known_hosts, ssh config).
    Write {
        path: PathBuf,
        old: Option<String>,
        new: String,
        to: FileSpec,
    },
}

impl Step {
    fn path(&self) -> &Path {
        match self {
            Step::CreateDir { path, .. }
            | Step::SetMeta { path, .. }
            | Step::Generate { path, .. }
            | Step::Write { path, .. } => path,
        }
    }
}

impl Describe for Step {
    fn change(&self) -> Change {
        match self {
            Step::CreateDir { path, to } => Change::value(
                path.display().to_string(),
                Some("absent".into()),
                Some(format!("directory {to}")),
            ),
            Step::SetMeta { path, from, to } => Change::value(
                format!("{} mode/owner", path.display()),
                Some(from.to_string()),
                Some(to.to_string()),
            ),
            Step::Generate { path, .. } => Change::value(
                format!("deploy key {}", path.display()),
                Some("absent".into()),
                Some("ed25519 (generated)".into()),
            ),
            Step::Write { path, old, new, .. } => {
                Change::user_file(&path.display().to_string(), old.as_deref(), new)
            }
        }
    }
}

/// The directory holding `path`, opened again for this step (a step before may have
/// created it), and `path`'s name in it. Whatever the path points to by now, the write
/// lands in the directory just checked, or fails.
fn containing<'a>(host: &Host, user: &Owner, path: &'a Path) -> Result<(UserDir, &'a str)> {
    let name = file_name(path)?;
    let parent = path
        .parent()
        .with_context(|| format!("{} has no parent directory", path.display()))?;
    let Opened { entry, handle } = open_dir(host, &user.home, user.uid, parent)?;
    if let Some(e) = &entry {
        require(parent, e, Kind::Dir)?;
    }
    let dir = handle.with_context(|| {
        format!(
            "{} disappeared during the run; run `{HINT}` again",
            parent.display()
        )
    })?;
    Ok((dir, name))
}

/// Refuse a `SetMeta` on something other than what was planned: a chown through a hard
/// link would hand the user whatever file it shares with.
fn still(dir: &UserDir, name: &str, kind: userdir::Kind) -> Result<()> {
    let path = dir.path().join(name);
    match dir.lstat(name)? {
        None => bail!(
            "{} disappeared during the run; run `{HINT}` again",
            path.display()
        ),
        Some(m) if m.kind != kind => bail!(
            "{} changed kind during the run; not touching it. Check it and run `{HINT}`",
            path.display()
        ),
        Some(m) if kind == userdir::Kind::File && m.nlink != 1 => bail!(
            "{} has {} hard links; sapari-agent does not change a file that shares its \
             contents. Replace it with a copy and run `{HINT}`",
            path.display(),
            m.nlink
        ),
        Some(_) => Ok(()),
    }
}

#[async_trait]
impl Resource for DeployKey {
    type State = State;
    type Step = Step;

    fn name(&self) -> Name {
        Name::DeployKey
    }

    fn disabled(&self) -> Option<&'static str> {
        (!self.cfg.enabled).then_some("deploy_key.enabled")
    }
    fn disabled_checks(&self) -> Vec<Check> {
        vec![Check::new(
            "deploy key",
            Level::Pass,
            "disabled (deploy_key.enabled = false)",
            "",
        )]
    }

    fn depends_on(&self) -> &'static [Name] {
        &[Name::Users]
    }

    async fn observe(&self, host: &Host) -> Result<State> {
        let accounts = host.accounts()?;
        let user = accounts.user(&self.user).map(|a| Owner {
            name: a.name.clone(),
            uid: a.uid,
            gid: a.gid,
            home: a.home.clone(),
        });
        self.observe_for(host, user)
    }

    fn plan(&self, s: &State) -> Result<Plan<Step>> {
        let mut plan = Plan::default();
        let Some(user) = &s.user else {
            bail!(
                "user {} does not exist (the users resource creates it)",
                self.user
            );
        };
        // Checked on every run, before any step exists: a damaged table writes nothing.
        let github = verified_known_hosts_lines(&GITHUB_HOST_KEYS)?;
        let p = self.paths(&user.home);
        plan_dirs(s, user, &p, &mut plan.steps)?;
        match &s.private {
            None => self.plan_new_key(s, user, &p, &mut plan)?,
            Some(f) => self.plan_existing_key(s, f, user, &p, &mut plan)?,
        }
        plan_ssh_files(s, user, &p, &github, &mut plan.steps)?;
        Ok(plan)
    }

    async fn apply(&self, host: &Host, s: &State, steps: &[Step]) -> Result<()> {
        let Some(user) = &s.user else {
            if steps.is_empty() {
                return Ok(());
            }
            bail!("internal error: deploy-key steps for a user that was not observed");
        };
        let ssh_dir = self.paths(&user.home).ssh_dir;
        for step in steps {
            let (dir, name) = containing(host, user, step.path())?;
            match step {
                Step::CreateDir { to, .. } => host.ensure_dir_in(&dir, name, *to)?,
                Step::SetMeta { path, to, .. } => {
                    let kind = if *path == ssh_dir {
                        userdir::Kind::Dir
                    } else {
                        userdir::Kind::File
                    };
                    still(&dir, name, kind)?;
                    host.set_meta_in(&dir, name, *to)?;
                }
                Step::Generate {
                    path,
                    public,
                    comment,
                    uid,
                    gid,
                } => {
                    // Never replace a key: it may be registered at GitHub.
                    if dir.lstat(name)?.is_some() {
                        bail!(
                            "{} appeared during the run; not replacing it",
                            path.display()
                        );
                    }
                    // Checked before the key is written, so a refused .pub leaves no key
                    // without its public half.
                    let public_name = file_name(public)?;
                    if let Some(m) = dir.lstat(public_name)?
                        && m.kind != userdir::Kind::File
                    {
                        require(public, &entry_from(&m), Kind::File)?;
                    }
                    let key = new_key(comment)?;
                    let pem = key
                        .to_openssh(LineEnding::LF)
                        .context("cannot encode the new key")?;
                    let spec = |mode| FileSpec {
                        mode,
                        uid: *uid,
                        gid: *gid,
                    };
                    host.write_in(&dir, name, pem.as_bytes(), spec(PRIVATE_MODE), false)?;
                    let line = KeyInfo::of(&key).public_line(comment)?;
                    host.write_in(
                        &dir,
                        public_name,
                        format!("{line}\n").as_bytes(),
                        spec(PUBLIC_MODE),
                        true,
                    )?;
                }
                Step::Write { old, new, to, .. } => {
                    host.write_in(&dir, name, new.as_bytes(), *to, old.is_some())?;
                }
            }
        }
        Ok(())
    }

    fn checks(&self, s: &State) -> Vec<Check> {
        let Some(user) = &s.user else {
            return vec![Check::new(
                "deploy key",
                Level::Warn,
                format!("user {} does not exist", self.user),
                "sapari-agent converge (the users resource creates the user)",
            )];
        };
        let plan = match self.plan(s) {
            Ok(p) => p,
            Err(e) => {
                return vec![Check::new(
                    "deploy key",
                    Level::Fail,
                    format!("{e:#}"),
                    HINT,
                )];
            }
        };
        let p = self.paths(&user.home);
        let pending = |paths: &[&Path]| -> Vec<String> {
            plan.steps
                .iter()
                .filter(|st| paths.contains(&st.path()))
                .map(|st| {
                    let c = st.change();
                    format!(
                        "{}: {} -> {}",
                        c.what,
                        c.from.unwrap_or_default(),
                        c.to.unwrap_or_default()
                    )
                })
                .collect()
        };
        let check = |name: &str, todo: Vec<String>, ok: String| {
            if todo.is_empty() {
                Check::new(name, Level::Pass, ok, "")
            } else {
                Check::new(name, Level::Warn, todo.join("; "), HINT)
            }
        };
        let mut key = check(
            "deploy key",
            pending(&[&p.ssh_dir, &p.key, &p.public]),
            format!("{} (0600, .pub 0644)", p.key.display()),
        );
        if let Some(line) = s
            .private
            .as_ref()
            .and_then(|f| f.key.as_ref().ok())
            .and_then(|k| k.public_line(&self.comment).ok())
        {
            key.detail = format!("{}; {}", key.detail, public_note(&line));
        }
        vec![
            key,
            check(
                "deploy key known_hosts",
                pending(&[&p.known_hosts]),
                format!("{} has GitHub's host keys", p.known_hosts.display()),
            ),
            check(
                "deploy key ssh config",
                pending(&[&p.config]),
                format!("{} uses the key for github.com", p.config.display()),
            ),
        ]
    }
}

#[cfg(test)]
mod tests;
