//! Pure verdicts on a pending session: lost, the rolled-back marker, and who may confirm.

use super::*;

/// A pending change past its deadline whose rollback did not happen.
pub fn lost(p: &Pending, now: u64) -> bool {
    now > p.deadline_unix.saturating_add(LOST_AFTER)
}

#[derive(Debug, PartialEq, Eq)]
pub enum MarkerVerdict {
    /// The config changed since the rollback: the marker has done its job.
    Clear,
    /// This run cannot touch what was rolled back.
    Ignore,
    Refuse(String),
}

pub fn marker_verdict(
    m: &RolledBack,
    config_sha256: &str,
    selected: &[Name],
    config_shown: &str,
) -> MarkerVerdict {
    if m.config_sha256 != config_sha256 {
        return MarkerVerdict::Clear;
    }
    let touched: Vec<Name> = m.resources.iter().filter_map(|r| r.parse().ok()).collect();
    // A marker naming nothing (a rollback that found nothing to restore) still blocks the
    // resources a change could have locked out with.
    let touched: Vec<Name> = if touched.is_empty() {
        guarded_names()
    } else {
        touched
    };
    // Only what can lock a login out blocks a run (see `Guarded::LOCKS_OUT`).
    if !selected
        .iter()
        .any(|n| guarded::guard_of(*n).is_none_or(Guard::locks_out) && touched.contains(n))
    {
        return MarkerVerdict::Ignore;
    }
    MarkerVerdict::Refuse(format!(
        "the commit-confirmed change of this configuration ({}; id {}) was rolled back unconfirmed at {}: nobody ran `sapari-agent confirm` in time, so it may lock you out. Converging the same configuration again would re-apply it. Fix {config_shown}, or run `sapari-agent converge --confirm SECONDS` again (that clears this); nothing was changed",
        list(&m.resources),
        m.id,
        m.at
    ))
}

/// Where `confirm` runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// `SSH_CONNECTION`, through sudo.
    pub ssh_connection: Option<String>,
    /// The sshd process of the login `confirm` runs under.
    pub session: Option<sys::SshSession>,
    /// None: unreadable; the change then counts as made in this boot.
    pub boot_id: Option<String>,
    /// CLOCK_BOOTTIME and the wall clock, read together: they turn boot-relative times into
    /// times a person can compare.
    pub boot_ms: u64,
    pub unix_ms: u64,
}

impl Caller {
    fn wall(&self, boot_ms: u64) -> String {
        let unix_ms = self
            .unix_ms
            .saturating_sub(self.boot_ms)
            .saturating_add(boot_ms);
        rfc3339(unix_ms / 1000)
    }
}

/// `confirm` must come from an SSH login that started after the change was applied: only a
/// new login proves that logging in still works. A session that stayed open (the converge's
/// own, one opened earlier, a multiplexed `ssh` riding an old connection, a tmux pane) proves
/// nothing. Err: the refusal; Ok: a note, if any.
pub fn session_verdict(p: &Pending, c: &Caller) -> Result<Option<String>, String> {
    if let (Some(s), Some(now)) = (&p.ssh_connection, &c.ssh_connection)
        && s == now
    {
        return Err(format!(
            "refusing to confirm from the SSH session that ran the converge ({s}): it stayed open through the change, so it proves nothing. Open a NEW SSH session (with ssh connection sharing, `ssh -S none ...`) and run `sudo sapari-agent confirm` there"
        ));
    }
    let Some(session) = &c.session else {
        return match &c.ssh_connection {
            Some(conn) => Err(format!(
                "refusing to confirm: this runs with SSH_CONNECTION={conn} but has no sshd process above it (tmux, screen or a shell left over from an older login keep that variable), so when its login happened cannot be told. Open a NEW SSH connection and run `sudo sapari-agent confirm` directly in it, not in tmux or screen"
            )),
            // As before: a console (or a timer) may confirm; it is said what that proves.
            None => Ok(Some(
                "confirmed without SSH (console or timer): this does not show that SSH logins still work"
                    .into(),
            )),
        };
    };
    let Some(changed) = &p.changed else {
        return Err(format!(
            "refusing to confirm: the record of the change {} does not say when the change was applied (an older sapari-agent wrote it), so this SSH session cannot be shown to be newer. It is rolled back at {}; then re-run `sudo sapari-agent converge --confirm SECONDS` and confirm from a new SSH session",
            p.id, p.deadline
        ));
    };
    if c.boot_id.as_deref().is_some_and(|b| b != changed.boot_id) {
        // Rebooted since the change: every login of this boot came after it.
        return Ok(None);
    }
    if p.state == PendingState::Applying {
        return Err(format!(
            "refusing to confirm: the converge that made the change {} did not finish (it was killed or crashed), so when its last step was applied is unknown and no SSH session can be shown to be newer. It is rolled back at {}; then re-run `sudo sapari-agent converge --confirm SECONDS`",
            p.id, p.deadline
        ));
    }
    if session.started_ms < changed.boottime_ms {
        return Err(format!(
            "this SSH session was opened at {} ({} pid {}), before the change at {}; open a new SSH connection (that proves a fresh login works; with ssh connection sharing, `ssh -S none ...`) and run `sudo sapari-agent confirm` from it",
            c.wall(session.started_ms),
            session.comm,
            session.pid,
            c.wall(changed.boottime_ms)
        ));
    }
    Ok(None)
}
