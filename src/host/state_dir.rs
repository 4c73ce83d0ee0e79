//! The agent's state directory: `agent.state_dir`, `/var/lib/sapari-agent` by default. This
//! module names every file the agent keeps there, with its mode, and is the one way the
//! directory is created: through the [`Host`] guard, so a read-only run refuses it and
//! the crash points fire.
//!
//! ```text
//! <state_dir>/                     0755 root  (`status` reads it without root)
//!   last-run.json                  0600       the last converge's report (root's diffs)
//!   compose.env                    0600       the agent's compose values
//!   compose-state.json             0644       hash of what shaped the stack
//!   cloudflare-ips-{v4,v6}.txt     0644       last good Cloudflare list
//!   cloudflare-ips-{v4,v6}.json    0644       where and when it was fetched
//!   confirm/                       0700       commit-confirmed sessions
//!     pending.json, rolled-back.json, snapshot.json   0600
//!     <id>/                        0700       one session
//!       agent.toml                 0600       the config it was armed with
//! ```

use std::path::Path;

use anyhow::Result;

use super::{FileSpec, Host};

/// Where the state lives unless `agent.state_dir` says otherwise.
pub const DEFAULT: &str = "/var/lib/sapari-agent";

/// The state directory and every ancestor the agent creates for it: root's, readable by
/// all, because `status` reads what is in it without root.
pub const DIR_MODE: u32 = 0o755;

pub const LAST_RUN: &str = "last-run.json";
/// Holds the plan's diffs of root's files.
pub const LAST_RUN_MODE: u32 = 0o600;

pub const COMPOSE_ENV: &str = "compose.env";
/// The operator's overrides may hold secrets.
pub const COMPOSE_ENV_MODE: u32 = 0o600;
pub const COMPOSE_STATE: &str = "compose-state.json";
pub const COMPOSE_STATE_MODE: u32 = 0o644;

/// The last good Cloudflare list of a family (`v4`, `v6`), one CIDR a line.
pub fn cloudflare_list(family: &str) -> String {
    format!("cloudflare-ips-{family}.txt")
}

/// Where and when that list was fetched, and its sha256.
pub fn cloudflare_meta(family: &str) -> String {
    format!("cloudflare-ips-{family}.json")
}

/// Both the list and its metadata are public facts.
pub const CLOUDFLARE_MODE: u32 = 0o644;

/// Commit-confirmed's records, private.
pub mod confirm {
    pub const DIR: &str = "confirm";
    pub const DIR_MODE: u32 = 0o700;
    pub const PENDING: &str = "pending.json";
    pub const ROLLED_BACK: &str = "rolled-back.json";
    pub const SNAPSHOT: &str = "snapshot.json";
    /// In a session's own directory (`<id>/`, [`DIR_MODE`] too).
    pub const CONFIG_COPY: &str = "agent.toml";
    pub const FILE_MODE: u32 = 0o600;
}

/// The state directory `dir` (and any missing ancestor), each created root-owned with
/// [`DIR_MODE`]. What exists is left as it is, and then nothing reaches the guard.
pub fn ensure(host: &Host, dir: &Path) -> Result<()> {
    create_missing(host, dir, DIR_MODE)
}

/// `dir/name` with `mode`, after [`ensure`]`(dir)`; an existing `name` is left as it is.
pub fn ensure_sub(host: &Host, dir: &Path, name: &str, mode: u32) -> Result<()> {
    ensure(host, dir)?;
    create_missing(host, &dir.join(name), mode)
}

/// Create the missing directories on the way to `leaf`, outermost first: the ancestors
/// with [`DIR_MODE`], `leaf` with `leaf_mode`.
fn create_missing(host: &Host, leaf: &Path, leaf_mode: u32) -> Result<()> {
    let missing: Vec<&Path> = leaf.ancestors().take_while(|d| !d.exists()).collect();
    for d in missing.into_iter().rev() {
        let mode = if d == leaf { leaf_mode } else { DIR_MODE };
        host.ensure_dir(d, FileSpec::root(mode))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::Access;

    #[test]
    fn a_read_only_run_creates_nothing_and_an_existing_dir_needs_no_guard() {
        let d = tempfile::tempdir().unwrap();
        let ro = Host::new(Access::ReadOnly);
        let dir = d.path().join("a/b");
        assert!(ensure(&ro, &dir).is_err());
        assert!(!d.path().join("a").exists());
        ensure(&ro, d.path()).unwrap();
        assert!(ensure_sub(&ro, d.path(), "confirm", confirm::DIR_MODE).is_err());
    }

    #[test]
    fn names_are_the_ones_on_disk() {
        assert_eq!(cloudflare_list("v4"), "cloudflare-ips-v4.txt");
        assert_eq!(cloudflare_meta("v6"), "cloudflare-ips-v6.json");
    }
}
