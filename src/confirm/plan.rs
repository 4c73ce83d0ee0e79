//! What a rollback does: which guarded resources differ from the saved state, and the steps
//! that bring each back, in converge order. Pure; each guarded resource answers for itself.

use super::*;

/// Which guarded resources differ between the saved state and `now` (read over the same
/// files and chains).
pub fn differing(saved: &Snapshot, now: &Snapshot) -> Vec<Name> {
    guarded()
        .into_iter()
        .filter(|g| g.differs(saved, now))
        .map(Guard::name)
        .collect()
}

/// What a rollback does, per resource, in converge order (see `Guarded::restore_plan`).
/// `installed`: which daemons there are to reload.
pub fn rollback_plan(
    saved: &Snapshot,
    now: &Snapshot,
    installed: impl Installed,
) -> Vec<(Name, Vec<Step>)> {
    let mut plan: Vec<(Name, Vec<Step>)> = guarded()
        .into_iter()
        .map(|g| (g.name(), g.restore_plan(saved, now, &installed)))
        .filter(|(_, steps)| !steps.is_empty())
        .collect();
    plan.sort_by_key(|(n, _)| Name::ALL.iter().position(|a| a == n));
    plan
}
