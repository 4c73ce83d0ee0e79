//! What `confirm` and `rollback` do once `commands::confirm` has checked root and read
//! the configuration, and the `status` checks of a pending session.

use super::*;

// ---- confirm and rollback -------------------------------------------------------------------

/// The run lock, as `confirm` and each round of `rollback` take it.
pub fn take_lock(timeout: Duration) -> Result<lock::Lock, i32> {
    lock::acquire(Path::new(lock::DEFAULT_PATH), timeout, |holder| {
        eprintln!("sapari-agent: waiting for another run{holder} to finish")
    })
    .map_err(|e| {
        eprintln!("sapari-agent: {e}");
        match e {
            lock::LockError::Busy { .. } => exit::LOCKED,
            lock::LockError::Open { .. } => exit::NOT_ROOT,
        }
    })
}

fn say(json: bool, doc: serde_json::Value, text: &str) {
    if json {
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
    } else {
        println!("{text}");
    }
}

/// Make the pending change permanent, if this caller may (a new SSH session, in time).
/// The caller holds the run lock. `json`: one JSON document instead of text.
pub async fn confirm(cfg: &Config, json: bool) -> i32 {
    let host = Host::new(Access::ReadWrite);
    let dir = confirm_dir(&cfg.agent.state_dir);
    let refuse = |reason: String| {
        if json {
            say(
                true,
                serde_json::json!({ "result": "refused", "reason": reason }),
                "",
            );
        } else {
            eprintln!("sapari-agent: {reason}");
        }
        exit::FAILED
    };
    let pending = match pending_to_confirm(&host, &dir) {
        Ok(p) => p,
        Err(why) => return refuse(why),
    };
    let note = match session_verdict(&pending, &caller(&host)) {
        Ok(n) => n,
        Err(why) => return refuse(why),
    };
    disarm(&host, &pending.unit).await;
    let removed = host
        .remove_file(&dir.join(PENDING))
        .and_then(|_| host.remove_tree(&dir.join(&pending.id)));
    if let Err(e) = removed {
        return refuse(format!("{e:#}"));
    }
    let late = unix_now() > pending.deadline_unix;
    log::info!(
        "commit confirmed: change {} ({}) confirmed; it is permanent",
        pending.id,
        list(&pending.resources)
    );
    let text = confirmed_text(&pending, late, note.as_deref());
    say(
        json,
        serde_json::json!({
            "result": "confirmed",
            "id": pending.id,
            "resources": pending.resources,
            "deadline": pending.deadline,
            "note": note,
        }),
        &text,
    );
    exit::OK
}

/// The pending change, or why there is nothing to confirm.
fn pending_to_confirm(host: &Host, dir: &Path) -> Result<Pending, String> {
    match read_json::<Pending>(host, &dir.join(PENDING)) {
        Ok(Some(p)) => Ok(p),
        Ok(None) => Err(
            match read_json::<RolledBack>(host, &dir.join(ROLLED_BACK)) {
                Ok(Some(m)) => format!(
                    "nothing to confirm: the change {} ({}) was already rolled back at {}",
                    m.id,
                    list(&m.resources),
                    m.at
                ),
                _ => "nothing to confirm: no commit-confirmed change is pending".into(),
            },
        ),
        Err(e) => Err(format!("{e:#}")),
    }
}

/// Who runs `confirm`: its SSH connection and session, and when (boot and wall clock).
fn caller(host: &Host) -> Caller {
    Caller {
        ssh_connection: host.ssh_connection(),
        session: sys::ssh_session(),
        boot_id: boot_id(host).ok(),
        boot_ms: sys::boottime_ms().unwrap_or(0),
        unix_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
    }
}

fn confirmed_text(pending: &Pending, late: bool, note: Option<&str>) -> String {
    format!(
        "confirmed: the change {} ({}) is permanent; the rollback is cancelled{}{}",
        pending.id,
        if pending.state == PendingState::Applying {
            "its converge did not finish".to_string()
        } else {
            list(&pending.resources)
        },
        if late {
            " (after its deadline: the rollback had not run yet)"
        } else {
            ""
        },
        note.map(|n| format!("\nnote: {n}")).unwrap_or_default()
    )
}

/// Restore change `id` once its deadline has passed, unless it was confirmed or superseded
/// meanwhile. Takes the run lock itself, for each round of waiting.
pub async fn rollback(cfg: &Config, id: &str) -> i32 {
    let host = Host::new(Access::ReadWrite);
    let dir = confirm_dir(&cfg.agent.state_dir);
    let wait = ROLLBACK_LOCK_WAIT.max(cfg.agent.lock_timeout.0);
    loop {
        let lock = match take_lock(wait) {
            Ok(l) => l,
            Err(code) => {
                log::error!(
                    "commit confirmed: cannot roll back change {}: the run lock stayed busy",
                    id
                );
                return code;
            }
        };
        let pending = match read_json::<Pending>(&host, &dir.join(PENDING)) {
            Ok(Some(p)) if p.id == id => p,
            Ok(_) => {
                log::info!(
                    "commit confirmed: nothing to roll back for {} (confirmed or superseded)",
                    id
                );
                return exit::OK;
            }
            Err(e) => {
                log::error!("commit confirmed: cannot roll back {}: {e:#}", id);
                return exit::FAILED;
            }
        };
        let now = unix_now();
        if now < pending.deadline_unix {
            // The timer counts from the start of the converge, the window from its end.
            drop(lock);
            tokio::time::sleep(Duration::from_secs(pending.deadline_unix - now)).await;
            continue;
        }
        return match roll_back(&host, &dir, &pending).await {
            Ok(m) if m.errors.is_empty() => exit::OK,
            Ok(_) => exit::FAILED,
            Err(e) => {
                log::error!("commit confirmed: cannot roll back {}: {e:#}", id);
                exit::FAILED
            }
        };
    }
}

/// `status` lines: a change waiting for confirmation, or one rolled back unconfirmed.
pub fn checks(host: &Host, state_dir: &Path) -> Vec<Check> {
    let dir = confirm_dir(state_dir);
    let mut out = Vec::new();
    if let Ok(Some(p)) = read_json::<Pending>(host, &dir.join(PENDING)) {
        out.push(Check::new(
            "commit confirmed",
            Level::Warn,
            format!(
                "{} pending until {} (id {})",
                list(&p.resources),
                p.deadline,
                p.id
            ),
            "run `sudo sapari-agent confirm` from a new SSH session to keep it; otherwise it is rolled back",
        ));
    }
    if let Ok(Some(m)) = read_json::<RolledBack>(host, &dir.join(ROLLED_BACK)) {
        out.push(Check::new(
            "commit confirmed",
            Level::Fail,
            format!(
                "{} rolled back unconfirmed at {} (id {}){}",
                list(&m.resources),
                m.at,
                m.id,
                if m.errors.is_empty() {
                    String::new()
                } else {
                    format!("; incomplete: {}", m.errors.join("; "))
                }
            ),
            "fix the config, or `sudo sapari-agent converge --confirm SECONDS` again",
        ));
    }
    out
}
