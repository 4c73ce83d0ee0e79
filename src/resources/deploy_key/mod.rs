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
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use async_trait::async_trait;
use base64ct::{Base64, Base64Unpadded, Encoding};
use sha2::{Digest, Sha256};
use ssh_key::rand_core::OsRng;
use ssh_key::{Algorithm, LineEnding, PrivateKey, PublicKey};

use crate::config::{DeployKeySettings, UsersSettings};
use crate::engine::{Change, Check, Describe, Level, Plan, Resource};
use crate::host::userdir::{self, UserDir};
use crate::host::{FileSpec, Host};
use crate::resources::Name;

const HINT: &str = "sapari-agent converge --only deploy-key";
const GITHUB: &str = "github.com";
pub const BEGIN_MARKER: &str = "# BEGIN sapari-agent deploy-key";
pub const END_MARKER: &str = "# END sapari-agent deploy-key";

const DIR_MODE: u32 = 0o700;
const PRIVATE_MODE: u32 = 0o600;
const PUBLIC_MODE: u32 = 0o644;
const KNOWN_HOSTS_MODE: u32 = 0o644;
const CONFIG_MODE: u32 = 0o600;

/// One of GitHub's SSH host keys with the fingerprint GitHub publishes for it.
#[derive(Debug, Clone, Copy)]
pub struct HostKey {
    pub algorithm: &'static str,
    pub key: &'static str,
    pub fingerprint: &'static str,
}

/// GitHub's SSH host keys, as listed on docs.github.com ("GitHub's SSH key fingerprints")
/// and in `ssh_keys` of https://api.github.com/meta. If GitHub rotates a key, update it
/// here together with its fingerprint; a mismatch fails the run before anything is written.
pub const GITHUB_HOST_KEYS: [HostKey; 3] = [
    HostKey {
        algorithm: "ssh-ed25519",
        key: "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl",
        fingerprint: "SHA256:+DiY3wvvV6TuJJhbpZisF/zLDA0zPMSvHdkr4UvCOqU",
    },
    HostKey {
        algorithm: "ecdsa-sha2-nistp256",
        key: "AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBEmKSENjQEezOmxkZMy7opKgwFB9nkt5YRrYMjNuG5N87uRgg6CLrbo5wAdT/y6v0mKV0U2w0WZ2YB/++Tpockg=",
        fingerprint: "SHA256:p2QAMXNIC1TJYWeIOttrVc98/R1BUFWu3/LiyKgUfQM",
    },
    HostKey {
        algorithm: "ssh-rsa",
        key: "AAAAB3NzaC1yc2EAAAADAQABAAABgQCj7ndNxQowgcQnjshcLrqPEiiphnt+VTTvDP6mHBL9j1aNUkY4Ue1gvwnGLVlOhGeYrnZaMgRK6+PKCUXaDbC7qtbW8gIkhL7aGCsOr/C56SJMy/BCZfxd1nWzAOxSDPgVsmerOBYfNqltV9/hWCqBywINIR+5dIg6JTJ72pcEpEjcYgXkE2YEFXV1JHnsKgbLWNlhScqb2UmyRkQyytRLtL+38TGxkxCflmO+5Z8CSSNY7GidjMIZ7Q4zMjA2n1nGrlTDkzwDCsw+wqFPGQA179cnfGWOWRVruj16z6XyvxvjJwbz0wQZ75XK5tKSb7FNyeIEs4TT4jk+S4dhPeAUC5y+bDYirYgM4GC7uEnztnZyaVWQ7B381AK4Qdrwt51ZqExKbQpTUNn+EjqoTwvqNj4kqx5QUCI0ThS/YkOxJCXmPUWZbhjpCg56i+2aB6CmK2JGhn57K5mj0MNdBXA4/WnwH6XoPWJzK5Nyu2zB3nAZp+S5hpQs+p1vN1/wsjk=",
        fingerprint: "SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s",
    },
];

/// The SHA256 fingerprint of a public key as `ssh-keygen -lf` prints it: SHA256 of the
/// decoded key blob, base64 without padding. The blob must name `algorithm`.
pub fn sha256_fingerprint(algorithm: &str, key_b64: &str) -> Result<String> {
    let blob = Base64::decode_vec(key_b64).map_err(|e| anyhow!("invalid base64 ({e})"))?;
    // SSH wire format: the blob starts with the key type as a length-prefixed string.
    let named = blob
        .get(..4)
        .and_then(|n| <[u8; 4]>::try_from(n).ok())
        .and_then(|n| blob.get(4..4 + u32::from_be_bytes(n) as usize));
    if named != Some(algorithm.as_bytes()) {
        bail!("the key data is not a {algorithm} key");
    }
    Ok(format!(
        "SHA256:{}",
        Base64Unpadded::encode_string(&Sha256::digest(&blob))
    ))
}

/// known_hosts lines for `keys`, each checked against its published fingerprint.
pub fn verified_known_hosts_lines(keys: &[HostKey]) -> Result<Vec<String>> {
    keys.iter()
        .map(|k| {
            let fp = sha256_fingerprint(k.algorithm, k.key)
                .with_context(|| format!("built-in GitHub {} host key is damaged", k.algorithm))?;
            if fp != k.fingerprint {
                bail!(
                    "built-in GitHub {} host key has fingerprint {fp}, but GitHub publishes {}; \
                     refusing to write known_hosts (this sapari-agent build is damaged or out of date)",
                    k.algorithm,
                    k.fingerprint
                );
            }
            Ok(format!("{GITHUB} {} {}", k.algorithm, k.key))
        })
        .collect()
}

/// The lines of `content` without their `\n` (a `\r` stays, so nothing else changes).
fn lines_of(content: &str) -> impl Iterator<Item = &str> {
    content
        .split_inclusive('\n')
        .map(|l| l.strip_suffix('\n').unwrap_or(l))
}

fn join_lines(lines: &[String]) -> String {
    let mut s = lines.join("\n");
    if !s.is_empty() {
        s.push('\n');
    }
    s
}

/// Put `ours` in place of the `github.com` entries of a known_hosts file. Other lines stay
/// as they are; a line for `github.com` and other hosts keeps its other hosts; marked lines
/// (`@revoked`, `@cert-authority`) and hashed entries are left alone.
pub fn merge_known_hosts(content: &str, ours: &[String]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut at = None;
    for line in lines_of(content) {
        let t = line.trim_start();
        let (hosts, rest) = t.split_once([' ', '\t']).unwrap_or((t, ""));
        let is_github = |h: &str| h.eq_ignore_ascii_case(GITHUB);
        if t.starts_with('#') || t.starts_with('@') || !hosts.split(',').any(is_github) {
            out.push(line.to_string());
            continue;
        }
        at.get_or_insert(out.len());
        let others: Vec<&str> = hosts.split(',').filter(|h| !is_github(h)).collect();
        if !others.is_empty() {
            out.push(format!("{} {}", others.join(","), rest.trim_start()));
        }
    }
    let at = at.unwrap_or(out.len());
    out.splice(at..at, ours.iter().cloned());
    join_lines(&out)
}

/// The keyword of an ssh_config line (`Host`, `IdentityFile`, ...), if it is a directive.
fn directive(line: &str) -> Option<&str> {
    let t = line.trim();
    if t.is_empty() || t.starts_with('#') {
        return None;
    }
    t.split(|c: char| c.is_whitespace() || c == '=')
        .next()
        .filter(|k| !k.is_empty())
}

/// A path as an ssh_config argument: `%` starts a token there, spaces need quotes.
fn config_arg(path: &Path) -> String {
    let s = path.display().to_string().replace('%', "%%");
    if s.contains(char::is_whitespace) {
        format!("\"{s}\"")
    } else {
        s
    }
}

/// Our block. With `reset`, it ends with `Match all` so that options which followed it at
/// the top of the file keep applying to every host instead of only to github.com.
pub fn config_block(identity: &Path, reset: bool) -> String {
    let mut b = format!(
        "{BEGIN_MARKER}\n\
         # Managed by sapari-agent: git@github.com uses the deploy key. Edit outside these markers.\n\
         Host github.com\n\
         \x20   HostName github.com\n\
         \x20   User git\n\
         \x20   IdentityFile {}\n\
         \x20   IdentitiesOnly yes\n",
        config_arg(identity)
    );
    if reset {
        b.push_str("Match all\n");
    }
    b.push_str(END_MARKER);
    b.push('\n');
    b
}

/// `~/.ssh/config` with our block at the top and everything else as it was.
pub fn merge_ssh_config(content: &str, identity: &Path) -> Result<String> {
    let mut rest: Vec<String> = Vec::new();
    let mut inside = false;
    let mut after_block = false;
    for line in lines_of(content) {
        let t = line.trim();
        if inside {
            inside = t != END_MARKER;
            after_block = !inside;
            continue;
        }
        if t == BEGIN_MARKER {
            inside = true;
            continue;
        }
        if t == END_MARKER {
            bail!("`{END_MARKER}` without a `{BEGIN_MARKER}` line before it; fix the file by hand");
        }
        // The blank line we put after our block goes with it.
        if after_block && t.is_empty() {
            after_block = false;
            continue;
        }
        after_block = false;
        rest.push(line.to_string());
    }
    if inside {
        bail!("`{BEGIN_MARKER}` without a matching `{END_MARKER}` line; fix the file by hand");
    }
    let reset = rest
        .iter()
        .find_map(|l| directive(l))
        .is_some_and(|k| !k.eq_ignore_ascii_case("host") && !k.eq_ignore_ascii_case("match"));
    let mut out = config_block(identity, reset);
    if !rest.is_empty() {
        out.push('\n');
        out.push_str(&join_lines(&rest));
    }
    Ok(out)
}

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
    fn meta(&self, mode: u32) -> Meta {
        Meta {
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

/// Mode and owner of a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

impl Meta {
    fn spec(self) -> FileSpec {
        FileSpec {
            mode: self.mode,
            uid: self.uid,
            gid: self.gid,
        }
    }
}

impl fmt::Display for Meta {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04o} {}:{}", self.mode, self.uid, self.gid)
    }
}

/// What is at a path: its kind, mode and owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub kind: Kind,
    pub meta: Meta,
}

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

fn entry_of(m: &std::fs::Metadata) -> Entry {
    let t = m.file_type();
    let kind = if t.is_symlink() {
        Kind::Symlink
    } else if t.is_dir() {
        Kind::Dir
    } else if t.is_file() {
        Kind::File
    } else {
        Kind::Other
    };
    Entry {
        kind,
        meta: Meta {
            mode: m.mode() & 0o7777,
            uid: m.uid(),
            gid: m.gid(),
        },
    }
}

fn entry_from(m: &userdir::Meta) -> Entry {
    Entry {
        kind: match m.kind {
            userdir::Kind::File => Kind::File,
            userdir::Kind::Dir => Kind::Dir,
            userdir::Kind::Symlink => Kind::Symlink,
            userdir::Kind::Other => Kind::Other,
        },
        meta: Meta {
            mode: m.mode,
            uid: m.uid,
            gid: m.gid,
        },
    }
}

/// A directory on the way to the files: what it is, for the planner, and when it is a
/// directory the handle every read and write below it goes through.
#[derive(Debug, Default)]
struct Opened {
    entry: Option<Entry>,
    handle: Option<UserDir>,
}

/// Open `dir` as `uid`'s. The home and a directory outside it are paths root chose (the
/// passwd entry, `deploy_key.path`) and are followed like any path root names; below the
/// home every component is the user's to plant a link in, so each is opened without
/// following, from the home's descriptor.
fn open_dir(host: &Host, home: &Path, uid: u32, dir: &Path) -> Result<Opened> {
    let Ok(rel) = dir.strip_prefix(home) else {
        return open_chosen(host, dir, uid);
    };
    let names = rel
        .components()
        .map(|c| match c {
            Component::Normal(n) => n.to_str(),
            _ => None,
        })
        .collect::<Option<Vec<&str>>>()
        .with_context(|| {
            format!(
                "cannot open {}: only plain UTF-8 names are followed below the home {}",
                dir.display(),
                home.display()
            )
        })?;
    let Some((last, between)) = names.split_last() else {
        return open_chosen(host, dir, uid);
    };
    let Some(mut cur) = open_chosen(host, home, uid)?.handle else {
        return Ok(Opened::default());
    };
    for name in between {
        match cur.subdir(name)? {
            Some(d) => cur = d,
            None => return Ok(Opened::default()),
        }
    }
    let Some(m) = cur.lstat(last)? else {
        return Ok(Opened::default());
    };
    if m.kind != userdir::Kind::Dir {
        return Ok(Opened {
            entry: Some(entry_from(&m)),
            handle: None,
        });
    }
    // What was opened is described, not what lstat saw a moment earlier.
    Ok(match cur.subdir(last)? {
        Some(d) => Opened {
            entry: Some(entry_from(&d.meta()?)),
            handle: Some(d),
        },
        None => Opened::default(),
    })
}

fn open_chosen(host: &Host, path: &Path, uid: u32) -> Result<Opened> {
    match host.user_dir(path, uid, true) {
        Ok(Some(d)) => Ok(Opened {
            entry: Some(entry_from(&d.meta()?)),
            handle: Some(d),
        }),
        Ok(None) => Ok(Opened::default()),
        Err(e) => match stat(path) {
            // A file where the directory should be: the planner says what to do about it.
            Ok(Some(entry)) if entry.kind != Kind::Dir => Ok(Opened {
                entry: Some(entry),
                handle: None,
            }),
            _ => Err(e),
        },
    }
}

/// What a path root chose points to (a link there is root's doing).
fn stat(path: &Path) -> Result<Option<Entry>> {
    match std::fs::metadata(path) {
        Ok(m) => Ok(Some(entry_of(&m))),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow!("cannot inspect {}: {e}", path.display())),
    }
}

fn file_name(path: &Path) -> Result<&str> {
    path.file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{} does not end in a file name", path.display()))
}

/// The regular file `name` in `dir`, judged by what is opened: anything else is kept as
/// its kind with no content (the planner refuses it), and a hard link, a file over the
/// size limit or of another owner is an error naming it.
fn read_text_file(dir: Option<&UserDir>, name: &str) -> Result<Option<TextFile>> {
    let Some(f) = read_regular(dir, name)? else {
        return Ok(None);
    };
    Ok(Some(match f {
        Err(entry) => TextFile {
            entry,
            text: String::new(),
        },
        Ok((entry, f)) => TextFile {
            entry,
            text: f.text(),
        },
    }))
}

/// `Err(entry)`: present but not a regular file, so not read.
type Regular = Result<(Entry, crate::host::FileState), Entry>;

fn read_regular(dir: Option<&UserDir>, name: &str) -> Result<Option<Regular>> {
    let Some(dir) = dir else {
        return Ok(None);
    };
    let Some(m) = dir.lstat(name)? else {
        return Ok(None);
    };
    if m.kind != userdir::Kind::File {
        return Ok(Some(Err(entry_from(&m))));
    }
    // Between the lstat and the open a link may have replaced the file: `read` refuses
    // it rather than following it.
    let Some(f) = dir.read(name)? else {
        return Ok(None);
    };
    let entry = Entry {
        kind: Kind::File,
        meta: Meta {
            mode: f.mode,
            uid: f.uid,
            gid: f.gid,
        },
    };
    Ok(Some(Ok((entry, f))))
}

/// Parse the private key file, keeping only its public half.
fn read_private_key(dir: Option<&UserDir>, name: &str) -> Result<Option<PrivateKeyFile>> {
    Ok(read_regular(dir, name)?.map(|f| match f {
        Err(entry) => PrivateKeyFile {
            entry,
            key: Err("not a regular file".into()),
        },
        Ok((entry, mut f)) => {
            let key = parse_private_key(&f.content);
            // ssh-key zeroes its own copies; this buffer is ours to clear.
            f.content.fill(0);
            std::hint::black_box(&f.content);
            PrivateKeyFile { entry, key }
        }
    }))
}

/// Why the key cannot be used, in words that never contain key material.
fn parse_private_key(content: &[u8]) -> Result<KeyInfo, String> {
    let Ok(text) = std::str::from_utf8(content) else {
        return Err("not a text file".to_string());
    };
    match PrivateKey::from_openssh(text) {
        Ok(k) => Ok(KeyInfo::of(&k)),
        Err(ssh_key::Error::AlgorithmUnknown) => Err(
            "unsupported key type (sapari-agent reads ed25519 and RSA keys in OpenSSH format)"
                .to_string(),
        ),
        Err(e) => Err(format!("not an OpenSSH private key ({e})")),
    }
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
        to: Meta,
    },
    SetMeta {
        path: PathBuf,
        from: Meta,
        to: Meta,
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
        to: Meta,
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

/// Refuse what we must not write through or replace.
fn require(path: &Path, entry: &Entry, kind: Kind) -> Result<()> {
    if entry.kind != kind {
        bail!(
            "{} is {}, not {kind}; sapari-agent does not follow or replace it: make it {kind} \
             (or move it away) and run `{HINT}`",
            path.display(),
            entry.kind
        );
    }
    Ok(())
}

/// The step bringing an existing path's mode and owner to `want`, if needed.
fn fix_meta(steps: &mut Vec<Step>, path: &Path, entry: &Entry, want: Meta) {
    if entry.meta != want {
        steps.push(Step::SetMeta {
            path: path.to_path_buf(),
            from: entry.meta,
            to: want,
        });
    }
}

/// Write `new` unless the file already holds it; fix mode and owner otherwise.
fn ensure_file(
    steps: &mut Vec<Step>,
    path: &Path,
    file: Option<&TextFile>,
    new: String,
    want: Meta,
) -> Result<()> {
    match file {
        Some(f) => {
            require(path, &f.entry, Kind::File)?;
            if f.text != new {
                steps.push(Step::Write {
                    path: path.to_path_buf(),
                    old: Some(f.text.clone()),
                    new,
                    to: want,
                });
            } else {
                fix_meta(steps, path, &f.entry, want);
            }
        }
        None => steps.push(Step::Write {
            path: path.to_path_buf(),
            old: None,
            new,
            to: want,
        }),
    }
    Ok(())
}

/// Does the `.pub` file hold the public half of `key` (comments may differ)?
fn public_matches(text: &str, key: &KeyInfo) -> bool {
    PublicKey::from_openssh(text.trim()).is_ok_and(|p| p.key_data() == key.public.key_data())
}

fn public_note(line: &str) -> String {
    format!("public key (add to GitHub -> Settings -> Deploy keys): {line}")
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

    fn depends_on(&self) -> &'static [Name] {
        &[Name::Users]
    }

    async fn observe(&self, host: &Host) -> Result<State> {
        if !self.cfg.enabled {
            return Ok(State::default());
        }
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
        if !self.cfg.enabled {
            plan.notes
                .push("disabled (deploy_key.enabled = false): nothing is managed".into());
            return Ok(plan);
        }
        let Some(user) = &s.user else {
            bail!(
                "user {} does not exist (the users resource creates it)",
                self.user
            );
        };
        // Checked on every run, before any step exists: a damaged table writes nothing.
        let github = verified_known_hosts_lines(&GITHUB_HOST_KEYS)?;
        let p = self.paths(&user.home);
        let steps = &mut plan.steps;

        match &s.home {
            Some(e) => require(&user.home, e, Kind::Dir)?,
            None => bail!(
                "home directory {} of user {} does not exist",
                user.home.display(),
                user.name
            ),
        }
        match &s.ssh_dir {
            Some(e) => {
                require(&p.ssh_dir, e, Kind::Dir)?;
                fix_meta(steps, &p.ssh_dir, e, user.meta(DIR_MODE));
            }
            None => steps.push(Step::CreateDir {
                path: p.ssh_dir.clone(),
                to: user.meta(DIR_MODE),
            }),
        }
        if let Some(dir) = p.key_dir() {
            match &s.key_dir {
                Some(e) => require(dir, e, Kind::Dir)?,
                None => bail!(
                    "directory {} (of deploy_key.path) does not exist; create it or leave \
                     deploy_key.path unset",
                    dir.display()
                ),
            }
        }

        match &s.private {
            None => {
                if let Some(f) = &s.public {
                    require(&p.public, &f.entry, Kind::File)?;
                    plan.notes.push(format!(
                        "{} has no private key next to it: a new pair replaces it, so the \
                         deploy key registered at GitHub must be replaced too",
                        p.public.display()
                    ));
                }
                steps.push(Step::Generate {
                    path: p.key.clone(),
                    public: p.public.clone(),
                    comment: self.comment.clone(),
                    uid: user.uid,
                    gid: user.gid,
                });
                plan.notes.push(format!(
                    "a new ed25519 deploy key will be generated at {}; its public key is \
                     printed after the converge and by `sapari-agent status`",
                    p.key.display()
                ));
            }
            Some(f) => {
                require(&p.key, &f.entry, Kind::File)?;
                let key = f.key.as_ref().map_err(|why| {
                    anyhow!(
                        "cannot use the deploy key {path}: {why}. It is left untouched. To \
                         replace it, move it aside (mv {path} {path}.broken), run `{HINT}` to \
                         generate a new one, then replace the deploy key at GitHub",
                        path = p.key.display()
                    )
                })?;
                fix_meta(steps, &p.key, &f.entry, user.meta(PRIVATE_MODE));
                let line = key.public_line(&self.comment)?;
                match &s.public {
                    Some(pf) if pf.entry.kind == Kind::File && public_matches(&pf.text, key) => {
                        fix_meta(steps, &p.public, &pf.entry, user.meta(PUBLIC_MODE));
                    }
                    other => {
                        if let Some(pf) = other {
                            require(&p.public, &pf.entry, Kind::File)?;
                        }
                        steps.push(Step::Write {
                            path: p.public.clone(),
                            old: other.as_ref().map(|pf| pf.text.clone()),
                            new: format!("{line}\n"),
                            to: user.meta(PUBLIC_MODE),
                        });
                    }
                }
                if key.encrypted {
                    plan.notes.push(format!(
                        "{} is protected by a passphrase: git cannot use it without a person \
                         typing it",
                        p.key.display()
                    ));
                }
                plan.notes.push(public_note(&line));
            }
        }

        let old = s.known_hosts.as_ref().map_or("", |f| f.text.as_str());
        ensure_file(
            steps,
            &p.known_hosts,
            s.known_hosts.as_ref(),
            merge_known_hosts(old, &github),
            user.meta(KNOWN_HOSTS_MODE),
        )?;
        let old = s.config.as_ref().map_or("", |f| f.text.as_str());
        let config =
            merge_ssh_config(old, &p.key).with_context(|| format!("in {}", p.config.display()))?;
        ensure_file(
            steps,
            &p.config,
            s.config.as_ref(),
            config,
            user.meta(CONFIG_MODE),
        )?;
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
                Step::CreateDir { to, .. } => host.ensure_dir_in(&dir, name, to.spec())?,
                Step::SetMeta { path, to, .. } => {
                    let kind = if *path == ssh_dir {
                        userdir::Kind::Dir
                    } else {
                        userdir::Kind::File
                    };
                    still(&dir, name, kind)?;
                    host.set_meta_in(&dir, name, to.spec())?;
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
                    host.write_in(&dir, name, new.as_bytes(), to.spec(), old.is_some())?;
                }
            }
        }
        Ok(())
    }

    fn checks(&self, s: &State) -> Vec<Check> {
        if !self.cfg.enabled {
            return vec![Check::new(
                "deploy key",
                Level::Pass,
                "disabled (deploy_key.enabled = false)",
                "",
            )];
        }
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
mod tests {
    use super::*;
    use crate::host::Access;

    fn owner(home: &Path) -> Owner {
        Owner {
            name: "deploy".into(),
            uid: 1000,
            gid: 1000,
            home: home.to_path_buf(),
        }
    }

    fn res() -> DeployKey {
        DeployKey::new(&DeployKeySettings::default(), &UsersSettings::default())
    }

    fn entry(kind: Kind, mode: u32) -> Entry {
        Entry {
            kind,
            meta: Meta {
                mode,
                uid: 1000,
                gid: 1000,
            },
        }
    }

    fn text(mode: u32, text: &str) -> Option<TextFile> {
        Some(TextFile {
            entry: entry(Kind::File, mode),
            text: text.into(),
        })
    }

    const HOME: &str = "/home/deploy";
    const KEY: &str = "/home/deploy/.ssh/github_deploy_key";

    fn fresh() -> State {
        State {
            user: Some(owner(Path::new(HOME))),
            home: Some(entry(Kind::Dir, 0o750)),
            ..State::default()
        }
    }

    fn github_lines() -> Vec<String> {
        verified_known_hosts_lines(&GITHUB_HOST_KEYS).unwrap()
    }

    /// A converged state around a freshly generated key.
    fn converged() -> (State, String) {
        let key = new_key("sapari-prod deploy key").unwrap();
        let info = KeyInfo::of(&key);
        let line = info.public_line("x").unwrap();
        let s = State {
            ssh_dir: Some(entry(Kind::Dir, 0o700)),
            private: Some(PrivateKeyFile {
                entry: entry(Kind::File, 0o600),
                key: Ok(info),
            }),
            public: text(0o644, &format!("{line}\n")),
            known_hosts: text(0o644, &merge_known_hosts("", &github_lines())),
            config: text(0o600, &merge_ssh_config("", Path::new(KEY)).unwrap()),
            ..fresh()
        };
        (s, line)
    }

    fn no_private_material(plan: &Plan<Step>) {
        let json =
            serde_json::to_string(&plan.steps.iter().map(Describe::change).collect::<Vec<_>>())
                .unwrap();
        for text in [json, plan.notes.join("\n")] {
            assert!(!text.contains("PRIVATE KEY"), "{text}");
            assert!(!text.contains("b3BlbnNzaC1rZXktdjE"), "{text}");
        }
    }

    #[test]
    fn embedded_github_keys_match_published_fingerprints() {
        let published = [
            "SHA256:+DiY3wvvV6TuJJhbpZisF/zLDA0zPMSvHdkr4UvCOqU",
            "SHA256:p2QAMXNIC1TJYWeIOttrVc98/R1BUFWu3/LiyKgUfQM",
            "SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s",
        ];
        for (k, fp) in GITHUB_HOST_KEYS.iter().zip(published) {
            assert_eq!(k.fingerprint, fp);
            assert_eq!(sha256_fingerprint(k.algorithm, k.key).unwrap(), fp);
            // Cross-check with ssh-key where this build can decode the type (its `ecdsa`
            // feature is off, so it cannot parse the ECDSA key).
            if k.algorithm != "ecdsa-sha2-nistp256" {
                let pk = PublicKey::from_openssh(&format!("{} {}", k.algorithm, k.key)).unwrap();
                assert_eq!(
                    pk.fingerprint(ssh_key::HashAlg::Sha256).to_string(),
                    fp,
                    "{}",
                    k.algorithm
                );
            }
        }
        assert_eq!(
            github_lines()[0],
            "github.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
        );
    }

    #[test]
    fn ssh_keygen_agrees_on_github_fingerprints() {
        let keygen = Path::new("/usr/bin/ssh-keygen");
        if !keygen.exists() {
            eprintln!("ssh-keygen not installed; skipped");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("known_hosts");
        std::fs::write(&f, merge_known_hosts("", &github_lines())).unwrap();
        let out = std::process::Command::new(keygen)
            .arg("-lf")
            .arg(&f)
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&out.stdout);
        for k in GITHUB_HOST_KEYS {
            assert!(out.contains(k.fingerprint), "{out}");
        }
    }

    #[test]
    fn tampered_host_key_is_refused() {
        let mut k = GITHUB_HOST_KEYS[0];
        k.key = "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJm";
        let e = verified_known_hosts_lines(&[GITHUB_HOST_KEYS[1], k]).unwrap_err();
        assert!(e.to_string().contains("+DiY3wvvV6TuJJhbpZisF"), "{e}");
        let mut k = GITHUB_HOST_KEYS[0];
        k.algorithm = "ssh-rsa";
        assert!(verified_known_hosts_lines(&[k]).is_err());
        assert!(sha256_fingerprint("ssh-ed25519", "!!").is_err());
        assert!(sha256_fingerprint("ssh-ed25519", "AAAA").is_err());
    }

    #[test]
    fn fresh_user_generates_key_known_hosts_and_config() {
        let p = res().plan(&fresh()).unwrap();
        let paths: Vec<&Path> = p.steps.iter().map(Step::path).collect();
        assert_eq!(
            paths,
            [
                Path::new("/home/deploy/.ssh"),
                Path::new(KEY),
                Path::new("/home/deploy/.ssh/known_hosts"),
                Path::new("/home/deploy/.ssh/config"),
            ]
        );
        assert!(
            matches!(&p.steps[0], Step::CreateDir { to, .. } if to.mode == 0o700 && to.uid == 1000)
        );
        let gen_change = p.steps[1].change();
        assert_eq!(gen_change.what, format!("deploy key {KEY}"));
        assert_eq!(gen_change.from.as_deref(), Some("absent"));
        assert_eq!(gen_change.to.as_deref(), Some("ed25519 (generated)"));
        assert!(matches!(&p.steps[1], Step::Generate { comment, public, .. }
            if comment == "sapari-prod deploy key" && public == Path::new("/home/deploy/.ssh/github_deploy_key.pub")));
        let Step::Write {
            new, old: None, to, ..
        } = &p.steps[2]
        else {
            panic!("{:?}", p.steps[2])
        };
        assert_eq!(new.lines().count(), 3);
        assert_eq!(to.mode, 0o644);
        let Step::Write {
            new, old: None, to, ..
        } = &p.steps[3]
        else {
            panic!("{:?}", p.steps[3])
        };
        assert!(new.starts_with(BEGIN_MARKER));
        assert!(new.contains(&format!("IdentityFile {KEY}\n")));
        assert!(new.contains("IdentitiesOnly yes\n"));
        assert_eq!(to.mode, 0o600);
        // ~/.ssh/config is the user's file: the report gets line counts, not its content.
        assert!(p.steps[3].change().diff.is_none());
        assert!(
            p.notes.iter().any(|n| n.contains("will be generated")),
            "{:?}",
            p.notes
        );
        no_private_material(&p);
    }

    #[test]
    fn converged_state_plans_nothing_and_prints_public_key() {
        let (s, line) = converged();
        let p = res().plan(&s).unwrap();
        assert!(p.steps.is_empty(), "{:?}", p.steps);
        assert!(line.starts_with("ssh-ed25519 AAAA") && line.ends_with(" sapari-prod deploy key"));
        assert!(p.notes.contains(&public_note(&line)), "{:?}", p.notes);
        let c = res().checks(&s);
        assert!(c.iter().all(|c| c.level == Level::Pass), "{c:?}");
        assert!(c[0].detail.contains(&line));
        no_private_material(&p);
    }

    #[test]
    fn missing_pub_is_derived_from_the_private_key() {
        let (mut s, line) = converged();
        s.public = None;
        let p = res().plan(&s).unwrap();
        assert_eq!(
            p.steps,
            [Step::Write {
                path: PathBuf::from(format!("{KEY}.pub")),
                old: None,
                new: format!("{line}\n"),
                to: Meta {
                    mode: 0o644,
                    uid: 1000,
                    gid: 1000
                },
            }]
        );
        // Another key in the .pub: replaced by the private key's public half.
        let (other, _) = converged();
        s.public = other.public;
        let p = res().plan(&s).unwrap();
        assert!(
            matches!(&p.steps[..], [Step::Write { new, old: Some(_), .. }] if *new == format!("{line}\n"))
        );
        // Same key, other comment: left alone.
        let bare: Vec<&str> = line.split(' ').take(2).collect();
        s.public = text(0o644, &format!("{} renamed\n", bare.join(" ")));
        assert!(res().plan(&s).unwrap().steps.is_empty());
    }

    #[test]
    fn unparsable_private_key_fails_and_writes_nothing() {
        let (mut s, _) = converged();
        let why = PrivateKey::from_openssh("-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n")
            .unwrap_err()
            .to_string();
        s.private = Some(PrivateKeyFile {
            entry: entry(Kind::File, 0o600),
            key: Err(why),
        });
        s.public = None;
        let e = res().plan(&s).unwrap_err().to_string();
        assert!(e.contains(KEY), "{e}");
        assert!(e.contains("move it aside"), "{e}");
        assert!(e.contains(HINT), "{e}");
        let c = res().checks(&s);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].level, Level::Fail);
    }

    #[test]
    fn wrong_modes_are_fixed_in_place() {
        let (mut s, _) = converged();
        s.private.as_mut().unwrap().entry.meta.mode = 0o644;
        s.ssh_dir = Some(Entry {
            kind: Kind::Dir,
            meta: Meta {
                mode: 0o755,
                uid: 0,
                gid: 0,
            },
        });
        let p = res().plan(&s).unwrap();
        assert_eq!(p.steps.len(), 2);
        let c = p.steps[0].change();
        assert_eq!(c.what, "/home/deploy/.ssh mode/owner");
        assert_eq!(c.from.as_deref(), Some("0755 0:0"));
        assert_eq!(c.to.as_deref(), Some("0700 1000:1000"));
        assert_eq!(p.steps[1].change().to.as_deref(), Some("0600 1000:1000"));
        let c = res().checks(&s);
        assert_eq!(c[0].level, Level::Warn);
        assert_eq!(c[0].hint, HINT);
        assert!(c[0].detail.contains("ssh-ed25519 AAAA"), "{}", c[0].detail);
        assert_eq!(c[1].level, Level::Pass);
    }

    #[test]
    fn passphrase_protected_key_is_kept_with_a_note() {
        let (mut s, _) = converged();
        let f = s.private.as_mut().unwrap();
        f.key.as_mut().unwrap().encrypted = true;
        let p = res().plan(&s).unwrap();
        assert!(p.steps.is_empty());
        assert!(
            p.notes.iter().any(|n| n.contains("passphrase")),
            "{:?}",
            p.notes
        );
    }

    #[test]
    fn links_are_refused() {
        let (mut s, _) = converged();
        s.ssh_dir = Some(entry(Kind::Symlink, 0o777));
        let e = res().plan(&s).unwrap_err().to_string();
        assert!(e.contains("symbolic link"), "{e}");
        let (mut s, _) = converged();
        s.config.as_mut().unwrap().entry.kind = Kind::Symlink;
        assert!(res().plan(&s).is_err());
    }

    #[test]
    fn known_hosts_keeps_other_lines_and_does_not_duplicate() {
        let before = "# mine\n\
            gitlab.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAfuCHKVTjquxvt6CM6tdG4SLp1Btn/nOeHHE5UOzRdf\n\
            github.com ssh-rsa AAAAB3NzaC1yc2EAAAABIwAAAQEAq2A7hRGmdnm9tUDbO9IDSwBK6TbQa old\n\
            GitHub.com,140.82.121.4 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n\
            @revoked github.com ssh-rsa AAAAB3NzaC1yc2EAAAABIwAAAQEAq2A7hRGmdnm9tUDbO9IDSwBK6TbQa\n\
            [github.com]:443 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";
        let ours = github_lines();
        let after = merge_known_hosts(before, &ours);
        let lines: Vec<&str> = after.lines().collect();
        assert_eq!(lines[0], "# mine");
        assert!(lines[1].starts_with("gitlab.com "));
        assert_eq!(
            &lines[2..5],
            ours.iter().map(String::as_str).collect::<Vec<_>>()
        );
        assert!(lines[5].starts_with("140.82.121.4 ssh-ed25519 AAAAC3"));
        assert!(lines[6].starts_with("@revoked github.com"));
        assert!(lines[7].starts_with("[github.com]:443"));
        assert_eq!(lines.len(), 8);
        assert_eq!(merge_known_hosts(&after, &ours), after, "idempotent");
        assert_eq!(
            merge_known_hosts("", &ours),
            format!("{}\n", ours.join("\n"))
        );

        let (mut s, _) = converged();
        s.known_hosts = text(0o644, before);
        let p = res().plan(&s).unwrap();
        assert!(matches!(&p.steps[..], [Step::Write { new, .. }] if *new == after));
        s.known_hosts = text(0o644, &after);
        assert!(res().plan(&s).unwrap().steps.is_empty());
    }

    #[test]
    fn ssh_config_keeps_existing_blocks_below_ours() {
        let key = Path::new(KEY);
        let before = "Host *\n    ServerAliveInterval 60\n\nHost web\n    User ops\n";
        let after = merge_ssh_config(before, key).unwrap();
        assert!(after.starts_with(BEGIN_MARKER));
        assert!(
            after.ends_with(&format!("{END_MARKER}\n\n{before}")),
            "{after}"
        );
        assert!(!after.contains("Match all"));
        assert_eq!(merge_ssh_config(&after, key).unwrap(), after, "idempotent");

        // Options before the first Host applied to every host; they still must.
        let globals = "# defaults\nServerAliveInterval 60\nHost web\n  User ops";
        let after = merge_ssh_config(globals, key).unwrap();
        assert!(
            after.contains(&format!("Match all\n{END_MARKER}\n\n{globals}\n")),
            "{after}"
        );
        assert_eq!(merge_ssh_config(&after, key).unwrap(), after);

        // Our block further down (edited by hand) moves back to the top, once.
        let moved = format!("Host web\n  User ops\n{}", config_block(key, false));
        let after = merge_ssh_config(&moved, key).unwrap();
        assert_eq!(after.matches(BEGIN_MARKER).count(), 1);
        assert!(after.starts_with(BEGIN_MARKER) && after.ends_with("Host web\n  User ops\n"));

        // A custom path with a `%` is escaped for ssh's token expansion.
        assert!(config_block(Path::new("/srv/k%h"), false).contains("IdentityFile /srv/k%%h\n"));

        for broken in [
            format!("{BEGIN_MARKER}\nHost x\n"),
            format!("{END_MARKER}\n"),
        ] {
            assert!(merge_ssh_config(&broken, key).is_err(), "{broken}");
        }
        let (mut s, _) = converged();
        s.config = text(0o600, &format!("{BEGIN_MARKER}\n"));
        let e = format!("{:#}", res().plan(&s).unwrap_err());
        assert!(e.contains("/home/deploy/.ssh/config"), "{e}");

        s.config = text(0o600, before);
        let p = res().plan(&s).unwrap();
        assert!(matches!(&p.steps[..], [Step::Write { old: Some(o), .. }] if o == before));
    }

    #[test]
    fn custom_path_needs_its_directory() {
        let cfg = DeployKeySettings {
            path: Some("/srv/keys/gh".parse().unwrap()),
            ..DeployKeySettings::default()
        };
        let r = DeployKey::new(&cfg, &UsersSettings::default());
        let e = r.plan(&fresh()).unwrap_err().to_string();
        assert!(
            e.contains("/srv/keys") && e.contains("deploy_key.path"),
            "{e}"
        );
        let s = State {
            key_dir: Some(entry(Kind::Dir, 0o755)),
            ..fresh()
        };
        let p = r.plan(&s).unwrap();
        assert!(matches!(&p.steps[1], Step::Generate { path, public, .. }
            if path == Path::new("/srv/keys/gh") && public == Path::new("/srv/keys/gh.pub")));
        let Step::Write { new, .. } = &p.steps[3] else {
            panic!()
        };
        assert!(new.contains("IdentityFile /srv/keys/gh\n"));
    }

    #[test]
    fn disabled_plans_nothing() {
        let cfg = DeployKeySettings {
            enabled: false,
            ..DeployKeySettings::default()
        };
        let r = DeployKey::new(&cfg, &UsersSettings::default());
        let p = r.plan(&State::default()).unwrap();
        assert!(p.steps.is_empty());
        assert!(p.notes[0].contains("disabled"));
        assert_eq!(r.checks(&State::default())[0].level, Level::Pass);
    }

    #[test]
    fn missing_user_fails_plan_with_reason() {
        let e = res().plan(&State::default()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "user deploy does not exist (the users resource creates it)"
        );
        assert_eq!(res().checks(&State::default())[0].level, Level::Warn);
        assert_eq!(res().depends_on(), &[Name::Users]);
    }

    #[test]
    fn comment_cannot_break_the_pub_line() {
        let cfg = DeployKeySettings {
            comment: "a\nb ".into(),
            ..DeployKeySettings::default()
        };
        assert_eq!(
            DeployKey::new(&cfg, &UsersSettings::default()).comment,
            "a b"
        );
    }

    /// Generate, write, observe and parse back in a tempdir, as the current user.
    #[tokio::test(flavor = "current_thread")]
    async fn generated_key_round_trips_in_a_tempdir() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let me = Owner {
            name: "deploy".into(),
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
            home: d.path().to_path_buf(),
        };
        let r = res();
        let host = Host::new(Access::ReadWrite);
        let s = r.observe_for(&host, Some(me.clone())).unwrap();
        let p = r.plan(&s).unwrap();
        assert_eq!(p.steps.len(), 4, "{:?}", p.steps);
        r.apply(&host, &s, &p.steps).await.unwrap();

        let s = r.observe_for(&host, Some(me.clone())).unwrap();
        let p = r.plan(&s).unwrap();
        assert!(p.steps.is_empty(), "converged: {:?}", p.steps);
        no_private_material(&p);
        assert!(!format!("{s:?}").contains("PRIVATE"));

        let ssh = d.path().join(".ssh");
        let key_path = ssh.join("github_deploy_key");
        let pub_path = ssh.join("github_deploy_key.pub");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&ssh), 0o700);
        assert_eq!(mode(&key_path), 0o600);
        assert_eq!(mode(&pub_path), 0o644);
        assert_eq!(mode(&ssh.join("config")), 0o600);
        assert_eq!(mode(&ssh.join("known_hosts")), 0o644);
        assert_eq!(
            std::fs::read_to_string(ssh.join("known_hosts")).unwrap(),
            merge_known_hosts("", &github_lines())
        );

        let pem = std::fs::read_to_string(&key_path).unwrap();
        assert!(pem.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----\n"));
        let parsed = PrivateKey::from_openssh(&pem).unwrap();
        assert_eq!(parsed.algorithm(), Algorithm::Ed25519);
        assert_eq!(parsed.comment(), "sapari-prod deploy key");
        let pub_text = std::fs::read_to_string(&pub_path).unwrap();
        let public = PublicKey::from_openssh(pub_text.trim()).unwrap();
        assert_eq!(&public, parsed.public_key());
        let line = pub_text.trim_end();
        assert!(p.notes.contains(&public_note(line)), "{:?}", p.notes);

        // Never regenerated: a second converge leaves the key alone; a lost .pub comes back.
        std::fs::remove_file(&pub_path).unwrap();
        let s = r.observe_for(&host, Some(me.clone())).unwrap();
        let p = r.plan(&s).unwrap();
        assert_eq!(p.steps.len(), 1);
        r.apply(&host, &s, &p.steps).await.unwrap();
        assert_eq!(std::fs::read_to_string(&key_path).unwrap(), pem);
        assert_eq!(std::fs::read_to_string(&pub_path).unwrap(), pub_text);

        // A damaged private key is reported, never replaced.
        let broken = d.path().join("broken");
        std::fs::create_dir(&broken).unwrap();
        std::fs::write(broken.join("k"), "not a key\n").unwrap();
        let cfg = DeployKeySettings {
            path: Some(broken.join("k").to_str().unwrap().parse().unwrap()),
            ..DeployKeySettings::default()
        };
        let rb = DeployKey::new(&cfg, &UsersSettings::default());
        let sb = rb.observe_for(&host, Some(me.clone())).unwrap();
        let why = sb.private.as_ref().unwrap().key.as_ref().unwrap_err();
        assert!(why.starts_with("not an OpenSSH private key"), "{why}");
        let e = rb.plan(&sb).unwrap_err().to_string();
        assert!(e.contains(&*broken.join("k").to_string_lossy()), "{e}");
        assert_eq!(
            std::fs::read_to_string(broken.join("k")).unwrap(),
            "not a key\n"
        );

        let keygen = Path::new("/usr/bin/ssh-keygen");
        if !keygen.exists() {
            eprintln!("ssh-keygen not installed; skipped its cross-check");
            return;
        }
        let out = std::process::Command::new(keygen)
            .arg("-y")
            .arg("-f")
            .arg(&key_path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let derived = String::from_utf8(out.stdout).unwrap();
        let fields = |s: &str| s.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
        assert_eq!(fields(&derived), fields(&pub_text));
    }

    /// A home in a tempdir, owned by whoever runs the test, with a root-only "secret" and
    /// room for other directories beside it.
    fn tmp_home() -> (tempfile::TempDir, Owner) {
        let d = tempfile::tempdir().unwrap();
        let home = d.path().join("home");
        std::fs::create_dir(&home).unwrap();
        std::fs::write(d.path().join("secret"), "SECRET root:$y$hash\n").unwrap();
        let me = Owner {
            name: "deploy".into(),
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
            home,
        };
        (d, me)
    }

    fn mkdir(path: &Path, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir(path).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn names_in(dir: &Path) -> Vec<String> {
        let mut n: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        n.sort();
        n
    }

    fn mode_of(path: &Path) -> u32 {
        std::fs::symlink_metadata(path).unwrap().mode() & 0o7777
    }

    fn at(path: &Path) -> String {
        path.to_string_lossy().into_owned()
    }

    fn with_path(path: &Path) -> DeployKey {
        let cfg = DeployKeySettings {
            path: Some(at(path).parse().unwrap()),
            ..DeployKeySettings::default()
        };
        DeployKey::new(&cfg, &UsersSettings::default())
    }

    #[test]
    fn links_to_a_secret_are_reported_never_read() {
        use std::os::unix::fs::symlink;
        let (d, me) = tmp_home();
        let host = Host::new(Access::ReadOnly);
        let ssh = me.home.join(".ssh");
        mkdir(&ssh, 0o700);
        let secret = d.path().join("secret");
        symlink(&secret, ssh.join("known_hosts")).unwrap();
        let s = res().observe_for(&host, Some(me.clone())).unwrap();
        let kh = s.known_hosts.as_ref().unwrap();
        assert_eq!(kh.entry.kind, Kind::Symlink);
        assert!(kh.text.is_empty());
        assert!(!format!("{s:?}").contains("SECRET"), "{s:?}");
        let e = format!("{:#}", res().plan(&s).unwrap_err());
        assert!(e.contains(&at(&ssh.join("known_hosts"))), "{e}");
        assert!(e.contains("symbolic link") && !e.contains("SECRET"), "{e}");

        // The key, its .pub and the config as links too: each is seen as a link, none read.
        for name in ["github_deploy_key", "github_deploy_key.pub", "config"] {
            symlink(&secret, ssh.join(name)).unwrap();
        }
        let s = res().observe_for(&host, Some(me.clone())).unwrap();
        let state = format!("{s:?}");
        assert!(!state.contains("SECRET"), "{state}");
        let f = s.private.as_ref().unwrap();
        assert_eq!(f.entry.kind, Kind::Symlink);
        assert!(f.key.is_err());
        assert_eq!(s.public.as_ref().unwrap().entry.kind, Kind::Symlink);
        assert_eq!(s.config.as_ref().unwrap().entry.kind, Kind::Symlink);
        let e = format!("{:#}", res().plan(&s).unwrap_err());
        assert!(
            e.contains(&at(&ssh.join("github_deploy_key"))) && !e.contains("SECRET"),
            "{e}"
        );
        assert!(
            res()
                .checks(&s)
                .iter()
                .all(|c| !c.detail.contains("SECRET"))
        );

        // A key directory below the home that is a link is the user's doing: not followed.
        let other = d.path().join("other");
        mkdir(&other, 0o700);
        std::fs::copy(&secret, other.join("gh.pub")).unwrap();
        symlink(&other, me.home.join("keys")).unwrap();
        let r = with_path(&me.home.join("keys/gh"));
        let s = r.observe_for(&host, Some(me.clone())).unwrap();
        assert_eq!(s.key_dir.unwrap().kind, Kind::Symlink);
        assert!(s.public.is_none() && s.private.is_none(), "{s:?}");
        assert!(!format!("{s:?}").contains("SECRET"));
        let e = format!("{:#}", r.plan(&s).unwrap_err());
        assert!(
            e.contains(&at(&me.home.join("keys"))) && e.contains("symbolic link"),
            "{e}"
        );
    }

    /// Between observe and apply the user swaps a directory for a link to another one:
    /// apply fails naming it and writes nothing there.
    #[tokio::test(flavor = "current_thread")]
    async fn a_directory_swapped_for_a_link_after_observe_gets_nothing() {
        use std::os::unix::fs::symlink;
        let host = Host::new(Access::ReadWrite);
        for (ssh_exists, custom) in [(true, false), (false, false), (true, true)] {
            let (d, me) = tmp_home();
            let ssh = me.home.join(".ssh");
            if ssh_exists {
                mkdir(&ssh, 0o700);
            }
            let keys = me.home.join("keys");
            let (r, swapped) = if custom {
                mkdir(&keys, 0o700);
                (with_path(&keys.join("gh")), keys.clone())
            } else {
                (res(), ssh.clone())
            };
            let s = r.observe_for(&host, Some(me.clone())).unwrap();
            let p = r.plan(&s).unwrap();
            assert!(
                p.steps.iter().any(|st| matches!(st, Step::Generate { .. })),
                "{:?}",
                p.steps
            );
            let elsewhere = d.path().join("elsewhere");
            mkdir(&elsewhere, 0o755);
            let moved = d.path().join("moved");
            if swapped.exists() {
                std::fs::rename(&swapped, &moved).unwrap();
            }
            symlink(&elsewhere, &swapped).unwrap();
            let e = format!("{:#}", r.apply(&host, &s, &p.steps).await.unwrap_err());
            assert!(
                e.contains(&at(&swapped)) && e.contains("symbolic link"),
                "{ssh_exists} {custom}: {e}"
            );
            assert_eq!(
                names_in(&elsewhere),
                Vec::<String>::new(),
                "written through"
            );
            if moved.exists() {
                assert_eq!(names_in(&moved), Vec::<String>::new());
            }
        }
    }

    #[test]
    fn fifos_do_not_hang_observe() {
        let (_d, me) = tmp_home();
        let ssh = me.home.join(".ssh");
        mkdir(&ssh, 0o700);
        for name in [
            "github_deploy_key",
            "github_deploy_key.pub",
            "known_hosts",
            "config",
        ] {
            nix::unistd::mkfifo(
                &ssh.join(name),
                nix::sys::stat::Mode::from_bits_truncate(0o600),
            )
            .unwrap();
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let who = me.clone();
        // With no writer, a blocking open of a FIFO never returns: a hang fails here.
        std::thread::spawn(move || {
            let _ = tx.send(res().observe_for(&Host::new(Access::ReadOnly), Some(who)));
        });
        let s = rx
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("observe hung on a FIFO")
            .unwrap();
        assert_eq!(s.private.as_ref().unwrap().entry.kind, Kind::Other);
        for f in [&s.public, &s.known_hosts, &s.config] {
            assert_eq!(f.as_ref().unwrap().entry.kind, Kind::Other);
        }
        let e = format!("{:#}", res().plan(&s).unwrap_err());
        assert!(e.contains("special file"), "{e}");
    }

    #[test]
    fn hard_links_and_huge_files_are_errors_naming_the_file() {
        let (d, me) = tmp_home();
        let host = Host::new(Access::ReadOnly);
        let ssh = me.home.join(".ssh");
        mkdir(&ssh, 0o700);
        let secret = d.path().join("secret");
        for name in ["config", "known_hosts", "github_deploy_key"] {
            let f = ssh.join(name);
            std::fs::hard_link(&secret, &f).unwrap();
            let e = format!(
                "{:#}",
                res().observe_for(&host, Some(me.clone())).unwrap_err()
            );
            assert!(e.contains(&at(&f)) && e.contains("hard links"), "{e}");
            assert!(!e.contains("SECRET"), "{e}");
            std::fs::remove_file(&f).unwrap();
        }
        let f = ssh.join("known_hosts");
        std::fs::File::create(&f)
            .unwrap()
            .set_len(userdir::MAX_FILE + 1)
            .unwrap();
        let e = format!(
            "{:#}",
            res().observe_for(&host, Some(me.clone())).unwrap_err()
        );
        assert!(e.contains(&at(&f)) && e.contains("limit"), "{e}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn modes_are_fixed_in_place_but_never_through_a_hard_link() {
        use std::os::unix::fs::PermissionsExt;
        let (d, me) = tmp_home();
        let host = Host::new(Access::ReadWrite);
        let r = res();
        let s = r.observe_for(&host, Some(me.clone())).unwrap();
        r.apply(&host, &s, &r.plan(&s).unwrap().steps)
            .await
            .unwrap();
        let kh = me.home.join(".ssh/known_hosts");
        let loosen =
            |p: &Path| std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600)).unwrap();
        loosen(&kh);
        let s = r.observe_for(&host, Some(me.clone())).unwrap();
        let p = r.plan(&s).unwrap();
        assert!(
            matches!(&p.steps[..], [Step::SetMeta { path, .. }] if *path == kh),
            "{:?}",
            p.steps
        );
        r.apply(&host, &s, &p.steps).await.unwrap();
        assert_eq!(mode_of(&kh), 0o644);

        // Planned as a file of its own; by apply it shares the secret's inode.
        loosen(&kh);
        let s = r.observe_for(&host, Some(me.clone())).unwrap();
        let p = r.plan(&s).unwrap();
        let secret = d.path().join("secret");
        loosen(&secret);
        std::fs::remove_file(&kh).unwrap();
        std::fs::hard_link(&secret, &kh).unwrap();
        let e = format!("{:#}", r.apply(&host, &s, &p.steps).await.unwrap_err());
        assert!(e.contains(&at(&kh)) && e.contains("hard links"), "{e}");
        assert_eq!(mode_of(&secret), 0o600, "changed through the hard link");
    }

    /// A `deploy_key.path` outside the home is root's choice: its directory is used as
    /// named, a link there included.
    #[tokio::test(flavor = "current_thread")]
    async fn a_key_directory_outside_the_home_round_trips() {
        use std::os::unix::fs::symlink;
        let (d, me) = tmp_home();
        let host = Host::new(Access::ReadWrite);
        let keys = d.path().join("keys");
        mkdir(&keys, 0o755);
        let r = with_path(&keys.join("gh"));
        let s = r.observe_for(&host, Some(me.clone())).unwrap();
        assert_eq!(s.key_dir.unwrap().kind, Kind::Dir);
        let p = r.plan(&s).unwrap();
        assert_eq!(p.steps.len(), 4, "{:?}", p.steps);
        r.apply(&host, &s, &p.steps).await.unwrap();
        assert_eq!(names_in(&keys), ["gh", "gh.pub"]);
        assert_eq!(mode_of(&keys.join("gh")), 0o600);
        assert_eq!(mode_of(&keys.join("gh.pub")), 0o644);
        assert_eq!(mode_of(&me.home.join(".ssh")), 0o700);
        assert_eq!(names_in(&me.home.join(".ssh")), ["config", "known_hosts"]);
        let s = r.observe_for(&host, Some(me.clone())).unwrap();
        assert!(r.plan(&s).unwrap().steps.is_empty());

        let linked = d.path().join("keys-link");
        symlink(&keys, &linked).unwrap();
        let s = with_path(&linked.join("gh"))
            .observe_for(&host, Some(me.clone()))
            .unwrap();
        assert!(s.private.unwrap().key.is_ok());
    }
}
