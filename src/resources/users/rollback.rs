//! The users resource's side of commit-confirmed: the managed user's sudoers drop-in and
//! authorized_keys, kept as the users resource reads and writes them.

use std::fmt;
use std::path::PathBuf;

use anyhow::{Result, anyhow};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::engine::Name;
use crate::host::{Cmd, FileSpec, Host};
use crate::resources::guarded::{FileSnap, Guarded, Installed, Snapshot, file_snap, snap_of};

/// A kept file of the users resource. One more of its files is one more variant here, with
/// its arms in `capture`, `Item::recapture` and `Item::restore`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Item {
    /// The managed user's sudoers drop-in: losing it can leave the user without sudo, and so
    /// without `sudo sapari-agent confirm`. Sudo reads it on every call: nothing to reload.
    Sudoers(FileSnap),
    /// The managed user's `~/.ssh/authorized_keys` (`users.exclusive_keys` can remove the
    /// key a login needs). Read and written through `host::userdir`, as the users resource
    /// does; sshd reads it at every login: nothing to reload.
    AuthorizedKeys { user: String, file: FileSnap },
}

impl Item {
    pub fn file(&self) -> &FileSnap {
        match self {
            Item::Sudoers(f) | Item::AuthorizedKeys { file: f, .. } => f,
        }
    }

    /// The same item as it is now.
    pub fn recapture(&self, host: &Host) -> Result<Item> {
        Ok(match self {
            Item::Sudoers(f) => Item::Sudoers(file_snap(host, &f.path)?),
            Item::AuthorizedKeys { user, .. } => Item::AuthorizedKeys {
                user: user.clone(),
                file: keys_snap(host, user)?,
            },
        })
    }

    pub async fn restore(&self, host: &Host) -> Result<()> {
        match self {
            // As the users resource installs it: checked by visudo before it is in place, and
            // 0440 root:root whatever it had, since sudo ignores a drop-in that is not.
            Item::Sudoers(FileSnap {
                path,
                content: Some(c),
                ..
            }) => {
                host.write_validated(path, c.as_bytes(), FileSpec::root(0o440), false, |c| {
                    Cmd::new("visudo").args(["-c", "-f", &c.to_string_lossy()])
                })
                .await
            }
            Item::Sudoers(FileSnap {
                path,
                content: None,
                ..
            }) => host.remove_file(path),
            Item::AuthorizedKeys { user, file } => restore_keys(host, user, file).await,
        }
    }
}

/// Captured whatever the configuration enables: a change may be the one that removes them.
pub fn capture(host: &Host, user: &str) -> Result<Vec<Item>> {
    Ok(vec![
        Item::Sudoers(file_snap(host, &super::sudoers_path(user))?),
        Item::AuthorizedKeys {
            user: user.to_string(),
            file: keys_snap(host, user)?,
        },
    ])
}

/// The user's authorized_keys as it is now (absent also when the user or ~/.ssh is).
fn keys_snap(host: &Host, user: &str) -> Result<FileSnap> {
    let accounts = host.accounts()?;
    let Some(u) = accounts.user(user) else {
        let path = PathBuf::from(format!("/home/{user}/.ssh/authorized_keys"));
        return snap_of(&path, None, (0o600, 0, 0));
    };
    let path = u.home.join(".ssh/authorized_keys");
    let found = match host.user_dir(&u.home, u.uid, true)? {
        Some(home) => match home.subdir(".ssh")? {
            Some(ssh) => ssh.read("authorized_keys")?,
            None => None,
        },
        None => None,
    };
    snap_of(&path, found, (0o600, u.uid, u.gid))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Put a kept item back its own way.
    PutBack(Item),
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::PutBack(i) => write!(f, "putting back {}", i.file().path.display()),
        }
    }
}

pub struct Users;

#[async_trait]
impl Guarded for Users {
    const NAME: Name = Name::Users;
    type Snapshot = Vec<Item>;
    type Step = Step;

    fn slot(rec: &Snapshot) -> Vec<Item> {
        rec.items.clone()
    }

    fn put(rec: &mut Snapshot, s: Vec<Item>) {
        rec.items = s;
    }

    async fn capture(host: &Host, cfg: &Config) -> Result<Vec<Item>> {
        capture(host, &cfg.users.name.0)
    }

    async fn recapture(host: &Host, saved: &Vec<Item>) -> Result<Vec<Item>> {
        saved.iter().map(|i| i.recapture(host)).collect()
    }

    fn differs(saved: &Vec<Item>, now: &Vec<Item>) -> bool {
        saved
            .iter()
            .zip(now)
            .any(|(s, n)| s.file().content != n.file().content)
    }

    /// Sudo and sshd read these files at every use: nothing to reload.
    fn restore_plan(saved: &Vec<Item>, now: &Vec<Item>, _: &dyn Installed) -> Vec<Step> {
        saved
            .iter()
            .zip(now)
            .filter(|(s, n)| s.file().content != n.file().content)
            .map(|(s, _)| Step::PutBack(s.clone()))
            .collect()
    }

    async fn restore(host: &Host, step: &Step) -> Result<()> {
        match step {
            Step::PutBack(i) => i.restore(host).await,
        }
    }
}

async fn restore_keys(host: &Host, user: &str, f: &FileSnap) -> Result<()> {
    let accounts = host.accounts()?;
    let Some(u) = accounts.user(user) else {
        return Ok(()); // no user, no keys: as it was
    };
    let Some(home) = host.user_dir(&u.home, u.uid, true)? else {
        return Ok(());
    };
    let spec = |mode| FileSpec {
        mode,
        uid: u.uid,
        gid: u.gid,
    };
    match &f.content {
        Some(c) => {
            host.ensure_dir_in(&home, ".ssh", spec(0o700))?;
            let ssh = home
                .subdir(".ssh")?
                .ok_or_else(|| anyhow!("{}/.ssh is missing", u.home.display()))?;
            host.write_in(&ssh, "authorized_keys", c.as_bytes(), spec(0o600), false)
        }
        None => match home.subdir(".ssh")? {
            Some(ssh) => host.remove_in(&ssh, "authorized_keys"),
            None => Ok(()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::guarded::read_as;

    /// What `capture` keeps for `deploy`, its files saying these.
    fn captured(sudoers: Option<&str>, keys: Option<&str>) -> Vec<Item> {
        vec![
            Item::Sudoers(read_as("/etc/sudoers.d/90-sapari-deploy", sudoers)),
            Item::AuthorizedKeys {
                user: "deploy".into(),
                file: read_as("/home/deploy/.ssh/authorized_keys", keys),
            },
        ]
    }

    #[test]
    fn only_the_changed_files_go_back() {
        let saved = captured(Some("deploy ALL=(ALL) ALL\n"), Some("ssh-ed25519 A op\n"));
        assert!(!Users::differs(&saved, &saved));
        assert!(Users::restore_plan(&saved, &saved, &true).is_empty());
        let now = captured(Some("deploy ALL=(ALL) ALL\n"), None);
        assert!(Users::differs(&saved, &now));
        let plan = Users::restore_plan(&saved, &now, &true);
        assert_eq!(plan, [Step::PutBack(saved[1].clone())]);
        assert_eq!(
            plan[0].to_string(),
            "putting back /home/deploy/.ssh/authorized_keys"
        );
        let mut rec = Snapshot::default();
        Users::put(&mut rec, now.clone());
        assert_eq!(Users::slot(&rec), now);
    }
}
