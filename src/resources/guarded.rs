//! Commit confirmed as a contract. Each guarded resource says, in its own `rollback` module,
//! what it keeps of its state, how it tells that state changed and how it puts it back
//! (`Guarded`); `confirm` only runs the session and loops over `guarded()`.
//!
//! Also shared by those modules: a file's content and owner, as saved and put back.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::engine::Name;
use crate::host::{FileSpec, Host};
use crate::resources::firewall::rollback::{self as firewall, ChainSnap};
use crate::resources::sshd::rollback as sshd;
use crate::resources::ufw::rollback as ufw;
use crate::resources::users::rollback::{self as users, Item};

/// What a commit-confirmed session saved (`<id>/snapshot.json`), and the same state read
/// again. The slots keep the names and shape the first version wrote: a session armed by an
/// older binary is rolled back by the upgraded one. Each slot belongs to one `Guarded`
/// implementation, which alone reads and writes it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub id: String,
    pub taken_at: String,
    /// sshd_config, every drop-in, and ours (possibly absent).
    pub sshd: Vec<FileSnap>,
    pub ufw_installed: bool,
    pub ufw: Vec<FileSnap>,
    /// Only the families whose iptables tables hold Docker's chains.
    pub chains: Vec<ChainSnap>,
    /// The users resource's files. Empty in a snapshot of a version that kept none.
    #[serde(default)]
    pub items: Vec<Item>,
}

/// A resource whose previous state commit confirmed keeps, and restores unless the change is
/// confirmed.
///
/// Why this shape: `confirm` must loop over the guarded resources without knowing them, while
/// each keeps a state of its own type and `snapshot.json` keeps its first version's fields.
/// So each implementation has an associated `Snapshot` type, and `slot`/`put` move it out of
/// and into its fields of the shared record (ufw's spans two of them); the record, not the
/// associated type, is what serialises, so the on-disk names stay put. A trait object cannot
/// have those associated types, so `Guard` (one variant per implementation) dispatches to them
/// with a `match`: the only list of the guarded resources. A rollback stays data: the steps
/// are planned purely from the two snapshots, then run one by one, so a failing step neither
/// stops the others nor goes unreported.
#[async_trait]
pub trait Guarded {
    /// What a change of this state is reported as.
    const NAME: Name;
    /// Whether a change of this state can lock a login out (a rolled-back one then blocks a
    /// converge of the same configuration).
    const LOCKS_OUT: bool = true;
    type Snapshot: Clone + Send + Sync;
    /// One thing its rollback does, as its errors name it.
    type Step: fmt::Display + fmt::Debug + Clone + PartialEq + Send + Sync;

    fn slot(rec: &Snapshot) -> Self::Snapshot;
    fn put(rec: &mut Snapshot, s: Self::Snapshot);

    /// The state before a change.
    async fn capture(host: &Host, cfg: &Config) -> Result<Self::Snapshot>;
    /// The same state as `saved` holds (the same files, chains), as it is now.
    async fn recapture(host: &Host, saved: &Self::Snapshot) -> Result<Self::Snapshot>;
    /// Whether `now` is a change of `saved`, as a rollback would undo it.
    fn differs(saved: &Self::Snapshot, now: &Self::Snapshot) -> bool;
    /// What brings `saved` back over `now`. Only what differs is written, but daemons are
    /// reloaded even when nothing differs: a run (or an earlier rollback) killed between a
    /// write and its reload leaves the files as saved and the daemon running something else.
    fn restore_plan(
        saved: &Self::Snapshot,
        now: &Self::Snapshot,
        installed: &dyn Installed,
    ) -> Vec<Self::Step>;
    async fn restore(host: &Host, step: &Self::Step) -> Result<()>;
}

/// Which programs are on the machine, as a rollback plan asks (a daemon that is not there is
/// not reloaded). A bool answers the same for every program, for plans made in tests.
pub trait Installed {
    fn has(&self, program: &str) -> bool;
}

impl Installed for Host {
    fn has(&self, program: &str) -> bool {
        self.program_exists(program)
    }
}

impl Installed for bool {
    fn has(&self, _: &str) -> bool {
        *self
    }
}

impl<T: Installed + ?Sized> Installed for &T {
    fn has(&self, program: &str) -> bool {
        (**self).has(program)
    }
}

/// One guarded resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guard {
    Users,
    Sshd,
    Ufw,
    Firewall,
}

/// The guarded resources, in the order their changes are reported. All of them, whatever
/// runs: a resource the configuration does not enable is captured as it is (the users
/// resource's files may be the ones a change removes), or as nothing (no Docker chains).
pub fn guarded() -> [Guard; 4] {
    [Guard::Users, Guard::Sshd, Guard::Ufw, Guard::Firewall]
}

/// `$body` with `$g` the `Guarded` implementation of `$guard` and `$wrap` its `Step` variant.
macro_rules! dispatch {
    ($guard:expr, $g:ident, $wrap:ident => $body:expr) => {
        match $guard {
            Guard::Users => {
                type $g = users::Users;
                let $wrap = Step::Users;
                $body
            }
            Guard::Sshd => {
                type $g = sshd::Sshd;
                let $wrap = Step::Sshd;
                $body
            }
            Guard::Ufw => {
                type $g = ufw::Ufw;
                let $wrap = Step::Ufw;
                $body
            }
            Guard::Firewall => {
                type $g = firewall::Firewall;
                let $wrap = Step::Firewall;
                $body
            }
        }
    };
}

impl Guard {
    pub fn name(self) -> Name {
        dispatch!(self, G, _w => G::NAME)
    }

    pub fn locks_out(self) -> bool {
        dispatch!(self, G, _w => G::LOCKS_OUT)
    }

    /// Fill this resource's slot of `into` with its state now.
    pub async fn capture(self, host: &Host, cfg: &Config, into: &mut Snapshot) -> Result<()> {
        dispatch!(self, G, _w => {
            G::put(into, G::capture(host, cfg).await?);
            Ok(())
        })
    }

    /// Fill this resource's slot of `into` with what `saved`'s slot holds, as it is now.
    pub async fn recapture(self, host: &Host, saved: &Snapshot, into: &mut Snapshot) -> Result<()> {
        dispatch!(self, G, _w => {
            G::put(into, G::recapture(host, &G::slot(saved)).await?);
            Ok(())
        })
    }

    pub fn differs(self, saved: &Snapshot, now: &Snapshot) -> bool {
        dispatch!(self, G, _w => G::differs(&G::slot(saved), &G::slot(now)))
    }

    pub fn restore_plan(
        self,
        saved: &Snapshot,
        now: &Snapshot,
        installed: &dyn Installed,
    ) -> Vec<Step> {
        dispatch!(self, G, wrap => {
            G::restore_plan(&G::slot(saved), &G::slot(now), installed)
                .into_iter()
                .map(wrap)
                .collect()
        })
    }
}

/// The guarded resource `name` is, if it is one.
pub fn guard_of(name: Name) -> Option<Guard> {
    guarded().into_iter().find(|g| g.name() == name)
}

/// One thing a rollback does, of one guarded resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Users(users::Step),
    Sshd(sshd::Step),
    Ufw(ufw::Step),
    Firewall(firewall::Step),
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Users(s) => s.fmt(f),
            Step::Sshd(s) => s.fmt(f),
            Step::Ufw(s) => s.fmt(f),
            Step::Firewall(s) => s.fmt(f),
        }
    }
}

pub async fn run(host: &Host, step: &Step) -> Result<()> {
    match step {
        Step::Users(s) => users::Users::restore(host, s).await,
        Step::Sshd(s) => sshd::Sshd::restore(host, s).await,
        Step::Ufw(s) => ufw::Ufw::restore(host, s).await,
        Step::Firewall(s) => firewall::Firewall::restore(host, s).await,
    }
}

// ---- files, as the rollback modules keep them ------------------------------------------------

/// Whether two captures of the same files differ in what the files say.
pub fn contents_differ(saved: &[FileSnap], now: &[FileSnap]) -> bool {
    saved.len() != now.len()
        || saved
            .iter()
            .zip(now)
            .any(|(s, n)| s.path != n.path || s.content != n.content)
}

/// The same files as `saved`, as they are now.
pub fn refile(host: &Host, saved: &[FileSnap]) -> Result<Vec<FileSnap>> {
    saved.iter().map(|f| file_snap(host, &f.path)).collect()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSnap {
    pub path: PathBuf,
    /// None: the file did not exist.
    pub content: Option<String>,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

pub fn file_snap(host: &Host, path: &Path) -> Result<FileSnap> {
    snap_of(path, host.read(path)?, (0o644, 0, 0))
}

/// What a rollback keeps of a file; `absent` is the (mode, uid, gid) recorded when it does
/// not exist.
pub fn snap_of(
    path: &Path,
    found: Option<crate::host::FileState>,
    absent: (u32, u32, u32),
) -> Result<FileSnap> {
    Ok(match found {
        Some(f) => FileSnap {
            path: path.to_path_buf(),
            content: Some(String::from_utf8(f.content).map_err(|_| {
                anyhow!(
                    "{} is not UTF-8 text and cannot be kept for a rollback",
                    path.display()
                )
            })?),
            mode: f.mode,
            uid: f.uid,
            gid: f.gid,
        },
        None => FileSnap {
            path: path.to_path_buf(),
            content: None,
            mode: absent.0,
            uid: absent.1,
            gid: absent.2,
        },
    })
}

pub fn put_back(host: &Host, f: &FileSnap) -> Result<()> {
    match &f.content {
        Some(c) => host.write(
            &f.path,
            c.as_bytes(),
            FileSpec {
                mode: f.mode,
                uid: f.uid,
                gid: f.gid,
            },
            false,
        ),
        None => host.remove_file(&f.path),
    }
}

/// A file as a capture reads it (None: absent), for the rollback modules' tests.
#[cfg(test)]
pub fn read_as(path: &str, content: Option<&str>) -> FileSnap {
    let found = content.map(|c| crate::host::FileState {
        content: c.as_bytes().to_vec(),
        mode: 0o644,
        uid: 0,
        gid: 0,
    });
    snap_of(Path::new(path), found, (0o644, 0, 0)).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guarded_resources_are_listed_once_in_converge_order() {
        let names: Vec<Name> = guarded().into_iter().map(Guard::name).collect();
        assert_eq!(names, [Name::Users, Name::Sshd, Name::Ufw, Name::Firewall]);
        let mut sorted = names.clone();
        sorted.sort_by_key(|n| Name::ALL.iter().position(|a| a == n));
        assert_eq!(names, sorted);
        for g in guarded() {
            assert_eq!(guard_of(g.name()), Some(g));
        }
        assert_eq!(guard_of(Name::Swap), None);
        // Only DOCKER-USER cannot lock a login out.
        let safe: Vec<Guard> = guarded().into_iter().filter(|g| !g.locks_out()).collect();
        assert_eq!(safe, [Guard::Firewall]);
    }

    #[test]
    fn each_resource_reads_and_writes_only_its_own_slots() {
        let mut s = Snapshot {
            sshd: vec![read_as("/etc/ssh/sshd_config", Some("a\n"))],
            ufw_installed: true,
            ufw: vec![read_as("/etc/ufw/ufw.conf", Some("ENABLED=yes\n"))],
            items: vec![Item::Sudoers(read_as("/etc/sudoers.d/x", None))],
            ..Snapshot::default()
        };
        let before = s.clone();
        for g in guarded() {
            let mut changed = s.clone();
            changed.sshd[0].content = Some("b\n".into());
            changed.ufw[0].content = Some("ENABLED=no\n".into());
            changed.items[0] = Item::Sudoers(read_as("/etc/sudoers.d/x", Some("y\n")));
            changed.chains = vec![];
            // What a recapture of one resource leaves in the record: only its slots move.
            dispatch!(g, G, _w => G::put(&mut s, G::slot(&changed)));
            for h in guarded() {
                let moved = h == g && g != Guard::Firewall;
                assert_eq!(h.differs(&before, &s), moved, "{h:?} after {g:?}");
            }
            s = before.clone();
        }
    }
}
