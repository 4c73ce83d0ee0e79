//! What a rollback does: which guarded resources differ from the saved state, and the steps
//! that bring each back, in converge order. Pure.

use super::*;

pub(super) fn contents_differ(saved: &[FileSnap], now: &[FileSnap]) -> bool {
    saved.len() != now.len()
        || saved
            .iter()
            .zip(now)
            .any(|(s, n)| s.path != n.path || s.content != n.content)
}

/// Which guarded resources differ between the saved state and `now` (read over the same
/// files and chains). An absent chain and an empty one filter the same.
pub fn differing(saved: &Snapshot, now: &Snapshot) -> Vec<Name> {
    let mut out = Vec::new();
    for (s, n) in saved.items.iter().zip(&now.items) {
        let name = s.resource();
        if s.file().content != n.file().content && !out.contains(&name) {
            out.push(name);
        }
    }
    if contents_differ(&saved.sshd, &now.sshd) {
        out.push(Name::Sshd);
    }
    let ufw = if saved.ufw_installed {
        contents_differ(&saved.ufw, &now.ufw)
    } else {
        // Installed by the change: restoring means turning it off, not deleting its files.
        now.ufw_installed && ufw::rollback::enabled(&now.ufw)
    };
    if ufw {
        out.push(Name::Ufw);
    }
    let chains = saved.chains.len() != now.chains.len()
        || saved
            .chains
            .iter()
            .zip(&now.chains)
            .any(|(s, n)| s.lines() != n.lines());
    if chains {
        out.push(Name::Firewall);
    }
    out
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UfwAction {
    Disable,
    Write(FileSnap),
    Reload,
}

/// How to bring ufw back: off first when it was off (so no moment runs the new rules with
/// the old switch), then the files, then a reload that loads them when it was on.
pub fn ufw_restore_plan(saved: &Snapshot, now: &Snapshot) -> Vec<UfwAction> {
    let is_on = now.ufw_installed && ufw::rollback::enabled(&now.ufw);
    if !saved.ufw_installed {
        return if is_on {
            vec![UfwAction::Disable]
        } else {
            vec![]
        };
    }
    let was_on = ufw::rollback::enabled(&saved.ufw);
    let mut plan = Vec::new();
    if !was_on && is_on {
        plan.push(UfwAction::Disable);
    }
    for (s, n) in saved.ufw.iter().zip(&now.ufw) {
        if s.content.is_some() && s.content != n.content {
            plan.push(UfwAction::Write(s.clone()));
        }
    }
    if was_on {
        plan.push(UfwAction::Reload);
    }
    plan
}

/// One thing a rollback does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Put a kept item back its own way.
    Item(Item),
    /// Put a saved sshd file back (or remove it).
    Write(FileSnap),
    /// `sshd -t`, then reload the running sshd.
    ReloadSshd,
    Ufw(UfwAction),
    /// ufw must end up on or off as it was.
    CheckUfw {
        want_on: bool,
    },
    /// Replace one family's DOCKER-USER chain with the saved one.
    Chain(ChainSnap),
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::Item(i) => write!(f, "putting back {}", i.file().path.display()),
            Step::Write(s) | Step::Ufw(UfwAction::Write(s)) => {
                write!(f, "putting back {}", s.path.display())
            }
            Step::ReloadSshd => f.write_str("reloading sshd"),
            Step::Ufw(UfwAction::Disable) => f.write_str("ufw --force disable"),
            Step::Ufw(UfwAction::Reload) => f.write_str("ufw reload"),
            Step::CheckUfw { .. } => f.write_str("checking ufw's state"),
            Step::Chain(c) => write!(f, "restoring the {} {CHAIN} chain", c.family.as_str()),
        }
    }
}

/// What a rollback does, per resource, in converge order. Only what differs is written, but
/// every daemon is reloaded and every chain re-applied even when nothing differs: a run (or
/// an earlier rollback) killed between a write and its reload leaves the files as saved and
/// the daemon running something else. `sshd_present`: there is an sshd to reload.
pub fn rollback_plan(
    saved: &Snapshot,
    now: &Snapshot,
    sshd_present: bool,
) -> Vec<(Name, Vec<Step>)> {
    let mut plan: Vec<(Name, Vec<Step>)> = Vec::new();
    let mut add = |name: Name, step: Step| match plan.iter_mut().find(|(n, _)| *n == name) {
        Some((_, steps)) => steps.push(step),
        None => plan.push((name, vec![step])),
    };
    for (s, n) in saved.items.iter().zip(&now.items) {
        if s.file().content != n.file().content {
            add(s.resource(), Step::Item(s.clone()));
        }
    }
    for (s, n) in saved.sshd.iter().zip(&now.sshd) {
        if s.content != n.content {
            add(Name::Sshd, Step::Write(s.clone()));
        }
    }
    if sshd_present {
        add(Name::Sshd, Step::ReloadSshd);
    }
    for a in ufw_restore_plan(saved, now) {
        add(Name::Ufw, Step::Ufw(a));
    }
    let want_on = saved.ufw_installed && ufw::rollback::enabled(&saved.ufw);
    if now.ufw_installed || want_on {
        add(Name::Ufw, Step::CheckUfw { want_on });
    }
    for c in &saved.chains {
        add(Name::Firewall, Step::Chain(c.clone()));
    }
    plan.sort_by_key(|(n, _)| Name::ALL.iter().position(|a| a == n));
    plan
}
