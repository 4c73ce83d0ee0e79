//! Commit confirmed: `converge --confirm SECONDS` keeps the previous sshd drop-in, UFW rules,
//! DOCKER-USER chain and the managed user's sudoers drop-in, and a timer restores them unless
//! `sapari-agent confirm` runs in time, from an SSH login opened after the change.
//!
//! The rollback is armed *before* anything is applied: a converge that dies half-way (its SSH
//! session dropped, a kill, a crash) still gets rolled back. It is a transient systemd timer,
//! so it belongs to no session. Everything lives under `<agent.state_dir>/confirm/`:
//! `pending.json` while a change waits, `<id>/` with the saved state (and a copy of the config
//! for the rollback), and `rolled-back.json` once a change was restored unconfirmed, which
//! stops a plain converge of the same config from applying it again.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};

use crate::config::{self, Config};
use crate::engine::Name;
use crate::engine::{Check, Level, lock};
use crate::exit;
use crate::host::{Access, Cmd, FileSpec, Host, state_dir, sys, systemctl};
use crate::resources::guarded::{self, Guard, Installed, Step, guarded};

mod handlers;
mod plan;
mod record;
mod verdict;

pub use handlers::{checks, confirm, rollback, take_lock};
pub use plan::*;
pub use record::*;
pub use verdict::*;

pub const UNIT_PREFIX: &str = "sapari-agent-rollback-";
const DIR: &str = state_dir::confirm::DIR;
const PENDING: &str = "pending.json";
const ROLLED_BACK: &str = "rolled-back.json";
const SNAPSHOT: &str = "snapshot.json";
const CONFIG_COPY: &str = "agent.toml";
/// Past its deadline by this much, a pending change whose rollback never ran (transient
/// timers do not survive a reboot) is rolled back by the next converge instead.
const LOST_AFTER: u64 = 120;
/// The rollback waits this long for the run lock: the converge that armed it may still be
/// applying (a window shorter than the run).
const ROLLBACK_LOCK_WAIT: Duration = Duration::from_secs(3600);

/// The resources whose previous state is kept and restored.
fn guarded_names() -> Vec<Name> {
    guarded().into_iter().map(Guard::name).collect()
}
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

// ---- pure parts -----------------------------------------------------------------------------

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn rfc3339(unix: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(unix)).to_string()
}

pub fn new_id(unix: u64, pid: u32) -> String {
    format!("{unix}-{pid}")
}

/// Ids name a directory and a systemd unit: digits and dashes only, so `--id` cannot point
/// anywhere else.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 40
        && id.bytes().all(|b| b.is_ascii_digit() || b == b'-')
        && !id.starts_with('-')
}

pub fn unit_name(id: &str) -> String {
    format!("{UNIT_PREFIX}{id}")
}

/// The transient timer that runs the rollback, outside any SSH session.
pub fn arm_argv(id: &str, window: u64, exe: &Path, config: Option<&Path>) -> Vec<String> {
    let mut v = vec![
        "systemd-run".to_string(),
        format!("--unit={}", unit_name(id)),
        format!("--description=sapari-agent: roll back the unconfirmed change {id}"),
        format!("--on-active={window}s"),
        "--timer-property=AccuracySec=1s".to_string(),
        "--quiet".to_string(),
        "--".to_string(),
        exe.display().to_string(),
        "rollback".to_string(),
        "--id".to_string(),
        id.to_string(),
    ];
    if let Some(c) = config {
        v.push("--config".into());
        v.push(c.display().to_string());
    }
    v
}

fn names(v: &[Name]) -> Vec<String> {
    v.iter().map(|n| n.as_str().to_string()).collect()
}

fn list(v: &[String]) -> String {
    if v.is_empty() {
        "nothing".into()
    } else {
        v.join(", ")
    }
}

// ---- capture and restore --------------------------------------------------------------------

async fn capture(host: &Host, cfg: &Config, id: &str) -> Result<Snapshot> {
    let mut s = Snapshot {
        id: id.to_string(),
        taken_at: rfc3339(unix_now()),
        ..Snapshot::default()
    };
    for g in guarded() {
        g.capture(host, cfg, &mut s).await?;
    }
    Ok(s)
}

/// The same files and chains as `saved`, as they are now.
async fn recapture(host: &Host, saved: &Snapshot) -> Result<Snapshot> {
    let mut s = Snapshot {
        id: saved.id.clone(),
        taken_at: rfc3339(unix_now()),
        ..Snapshot::default()
    };
    for g in guarded() {
        g.recapture(host, saved, &mut s).await?;
    }
    Ok(s)
}

#[derive(Debug, Default)]
struct Restored {
    /// What differed and is back.
    resources: Vec<Name>,
    errors: Vec<String>,
}

/// Run every step of `plan`, even after one failed: one resource failing must not keep the
/// others from coming back and being reloaded, and within sshd a partial restore that
/// `sshd -t` accepts is closer to the saved state than the change. `changed`: what differed,
/// which counts as restored once all its steps worked.
async fn execute<F, Fut>(plan: Vec<(Name, Vec<Step>)>, changed: &[Name], mut run: F) -> Restored
where
    F: FnMut(Step) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let mut r = Restored::default();
    for (name, steps) in plan {
        let mut ok = true;
        for step in steps {
            let shown = step.to_string();
            if let Err(e) = run(step).await {
                ok = false;
                r.errors.push(format!("{name}: {shown}: {e:#}"));
            }
        }
        if ok && changed.contains(&name) {
            r.resources.push(name);
        } else if ok {
            log::info!("commit confirmed: {name} was as saved; reloaded it all the same");
        }
    }
    r
}

/// Put back what differs from `saved` and reload everything, then check by reading it all
/// again.
async fn restore_all(host: &Host, saved: &Snapshot) -> Restored {
    let now = match recapture(host, saved).await {
        Ok(n) => n,
        Err(e) => {
            return Restored {
                resources: vec![],
                errors: vec![format!("cannot read the current state: {e:#}")],
            };
        }
    };
    let plan = rollback_plan(saved, &now, host);
    let mut r = execute(plan, &differing(saved, &now), |step| async move {
        guarded::run(host, &step).await
    })
    .await;
    match recapture(host, saved).await {
        Ok(after) => {
            for name in differing(saved, &after) {
                r.errors.push(format!(
                    "{name}: still differs from the saved state after the restore"
                ));
            }
        }
        Err(e) => r.errors.push(format!("cannot verify the restore: {e:#}")),
    }
    r
}

/// Restore a pending change now and leave the marker. The caller holds the run lock.
async fn roll_back(host: &Host, dir: &Path, p: &Pending) -> Result<RolledBack> {
    let sdir = dir.join(&p.id);
    let saved: Snapshot = read_json(host, &sdir.join(SNAPSHOT))?.ok_or_else(|| {
        anyhow!(
            "the saved state {} is missing; nothing can be restored (remove {} once you have checked sshd, ufw, DOCKER-USER and the sudoers drop-in by hand)",
            sdir.join(SNAPSHOT).display(),
            dir.join(PENDING).display()
        )
    })?;
    let r = restore_all(host, &saved).await;
    let mut resources = p.resources.clone();
    for n in names(&r.resources) {
        if !resources.contains(&n) {
            resources.push(n);
        }
    }
    let marker = RolledBack {
        at: rfc3339(unix_now()),
        id: p.id.clone(),
        config_sha256: p.config_sha256.clone(),
        resources,
        snapshot: (!r.errors.is_empty()).then(|| sdir.clone()),
        errors: r.errors,
    };
    write_json(host, &dir.join(ROLLED_BACK), &marker)?;
    host.remove_file(&dir.join(PENDING))?;
    if marker.errors.is_empty() {
        host.remove_tree(&sdir)?;
        log::error!(
            "commit confirmed: change {} was not confirmed by {}: rolled back {}",
            p.id,
            p.deadline,
            list(&names(&r.resources))
        );
    } else {
        log::error!(
            "commit confirmed: change {} was not confirmed by {}: rollback incomplete: {}; the saved state is kept in {}",
            p.id,
            p.deadline,
            marker.errors.join("; "),
            sdir.display()
        );
    }
    Ok(marker)
}

async fn disarm(host: &Host, unit: &str) {
    let timer = format!("{unit}.timer");
    match host.run(&systemctl::stop(&timer)).await {
        // Harmless if it still fires: the rollback finds nothing pending under its id.
        Err(e) => log::warn!("cannot stop {timer}: {e:#}"),
        Ok(_) => log::info!("stopped {timer}"),
    }
    // A rollback already started (sleeping towards the deadline, or waiting for the lock)
    // holds nothing yet; stopping a unit that never ran just fails.
    let service = format!("{unit}.service");
    let _ = host.query(&systemctl::stop(&service)).await;
}

/// Transient units do not survive a reboot: a pending change whose timer and rollback are
/// both gone gets its timer back, for the same deadline.
async fn rearm_if_gone(host: &Host, dir: &Path, p: &Pending, now: u64) {
    if !host.systemd_booted() {
        return;
    }
    let timer = format!("{}.timer", p.unit);
    let service = format!("{}.service", p.unit);
    let states = host
        .query(&systemctl::is_active(&[&timer, &service]))
        .await
        .map(|o| o.stdout)
        .unwrap_or_default();
    if states
        .lines()
        .any(|l| matches!(l.trim(), "active" | "activating" | "reloading"))
    {
        return;
    }
    let copy = dir.join(&p.id).join(CONFIG_COPY);
    let copy = matches!(host.read(&copy), Ok(Some(_))).then_some(copy);
    let rearmed = match sys::current_exe() {
        Ok(exe) => {
            let argv = arm_argv(
                &p.id,
                p.deadline_unix.saturating_sub(now).max(1),
                &exe,
                copy.as_deref(),
            );
            host.run(&Cmd::new(&argv[0]).args(&argv[1..]))
                .await
                .map(|_| ())
        }
        Err(e) => Err(e.into()),
    };
    match rearmed {
        Ok(()) => {
            log::warn!(
                "commit confirmed: the rollback timer of {} was gone (a reboot?): re-armed for {}",
                p.id,
                p.deadline
            );
            eprintln!(
                "sapari-agent: the rollback timer of {} was gone (a reboot?): re-armed for {}",
                p.id, p.deadline
            );
        }
        Err(e) => log::error!(
            "commit confirmed: cannot re-arm the rollback of {}: {e:#}; the first converge after {} rolls it back",
            p.id,
            p.deadline
        ),
    }
}

// ---- converge -------------------------------------------------------------------------------

/// A `converge --confirm` in progress: armed, state saved.
pub struct Session {
    dir: PathBuf,
    pending: Pending,
    saved: Snapshot,
}

/// What the converge report says about commit confirmed.
pub struct Outcome {
    pub json: serde_json::Value,
    pub line: String,
    pub failed: bool,
}

/// The configuration file of the run: the rollback's copy, and its hash for the marker.
struct ConfigFile {
    path: Option<PathBuf>,
    bytes: Vec<u8>,
    sha256: String,
}

/// What arming decided before anything was written.
struct Arming {
    id: String,
    started: u64,
    window: u64,
    exe: PathBuf,
    armed_at: Stamp,
}

fn fail(e: anyhow::Error) -> i32 {
    eprintln!("sapari-agent: {e:#}");
    exit::FAILED
}

/// Before a converge changes anything: refuse while a change waits for confirmation (or
/// roll it back if its timer was lost), refuse to re-apply a configuration that was rolled
/// back unconfirmed, and with `--confirm` save the state and arm the rollback.
/// Err: the exit code, the reason already printed.
pub async fn before_converge(
    host: &Host,
    cfg: &Config,
    config: Option<&Path>,
    window: Option<u64>,
    selected: &[Name],
) -> Result<Option<Session>, i32> {
    let dir = confirm_dir(&cfg.agent.state_dir);
    let (path, bytes) = config_file(host, config).map_err(fail)?;
    let file = ConfigFile {
        path,
        sha256: sha256(&bytes),
        bytes,
    };
    settle_pending(host, &dir).await?;
    check_marker(host, &dir, &file, window.is_some(), selected)?;
    let Some(window) = window else {
        return Ok(None);
    };
    arm(host, cfg, &dir, file, window)
        .await
        .map(Some)
        .map_err(|e| {
            eprintln!("sapari-agent: --confirm: {e:#}; nothing was changed");
            exit::FAILED
        })
}

/// A change still waiting for confirmation stops the run; one whose rollback never ran is
/// rolled back now, and the run goes on only if that restored everything.
async fn settle_pending(host: &Host, dir: &Path) -> Result<(), i32> {
    let Some(p) = read_json::<Pending>(host, &dir.join(PENDING)).map_err(|e| {
        fail(e.context(format!(
            "cannot tell whether a commit-confirmed change is pending; if none is, remove {}",
            dir.join(PENDING).display()
        )))
    })?
    else {
        return Ok(());
    };
    let now = unix_now();
    if !lost(&p, now) {
        rearm_if_gone(host, dir, &p, now).await;
        eprintln!(
            "sapari-agent: a commit-confirmed change ({}; id {}) waits for `sapari-agent confirm` until {} ({} left); it is rolled back then. This run changes nothing until it is confirmed or rolled back",
            list(&p.resources),
            p.id,
            p.deadline,
            humantime::format_duration(Duration::from_secs(p.deadline_unix.saturating_sub(now)))
        );
        return Err(exit::LOCKED);
    }
    eprintln!(
        "sapari-agent: the commit-confirmed change {} was not confirmed by {} and its rollback never ran (a reboot drops the rollback timer): rolling it back now",
        p.id, p.deadline
    );
    let m = roll_back(host, dir, &p).await.map_err(fail)?;
    if !m.errors.is_empty() {
        eprintln!(
            "sapari-agent: the rollback is incomplete: {}",
            m.errors.join("; ")
        );
        return Err(exit::FAILED);
    }
    eprintln!("sapari-agent: restored {}", list(&m.resources));
    Ok(())
}

/// The rolled-back marker: refuse to re-apply its configuration, or clear it once it has
/// done its job (the configuration changed, or `confirming` guards the new attempt).
fn check_marker(
    host: &Host,
    dir: &Path,
    file: &ConfigFile,
    confirming: bool,
    selected: &[Name],
) -> Result<(), i32> {
    let marker_path = dir.join(ROLLED_BACK);
    let Some(m) = read_json::<RolledBack>(host, &marker_path).map_err(fail)? else {
        return Ok(());
    };
    let shown = file
        .path
        .as_deref()
        .unwrap_or(Path::new(config::DEFAULT_PATH))
        .display()
        .to_string();
    let verdict = if confirming {
        MarkerVerdict::Clear
    } else {
        marker_verdict(&m, &file.sha256, selected, &shown)
    };
    match verdict {
        MarkerVerdict::Refuse(msg) => {
            eprintln!("sapari-agent: {msg}");
            return Err(exit::FAILED);
        }
        MarkerVerdict::Clear => {
            host.remove_file(&marker_path).map_err(fail)?;
            log::info!("cleared the rolled-back marker of change {}", m.id);
        }
        MarkerVerdict::Ignore => {}
    }
    Ok(())
}

/// This program, as the rollback timer runs it.
fn this_program() -> Result<PathBuf> {
    let exe = sys::current_exe().context("cannot tell where this program is")?;
    if exe.to_string_lossy().ends_with(" (deleted)") {
        bail!(
            "{} was replaced while running; run the new one",
            exe.display()
        );
    }
    Ok(exe)
}

async fn arm(
    host: &Host,
    cfg: &Config,
    dir: &Path,
    file: ConfigFile,
    window: u64,
) -> Result<Session> {
    if !host.systemd_booted() {
        bail!(
            "commit confirmed needs systemd to run the rollback (systemd-run), and systemd is not running"
        );
    }
    let exe = this_program()?;
    // Read before anything is created: without it no login could ever confirm the change.
    let armed_at = stamp(host).context(
        "cannot read the boot id and CLOCK_BOOTTIME, needed to tell a login opened after the change from an older one",
    )?;
    let started = unix_now();
    let a = Arming {
        id: new_id(started, std::process::id()),
        started,
        window,
        exe,
        armed_at,
    };
    let sdir = dir.join(&a.id);
    // The state directory as the rest of the agent makes it (0755: `status` reads
    // last-run.json without root), and `confirm/` in it private.
    let (state, name) = (dir.parent().unwrap_or(dir), state_dir::confirm::DIR);
    state_dir::ensure_sub(host, state, name, state_dir::confirm::DIR_MODE)?;
    host.ensure_dir(&sdir, FileSpec::root(0o700))?;
    match save_and_arm(host, cfg, dir, &a, file).await {
        Ok((saved, pending)) => {
            // From here a dropped SSH session must not stop the run half-way: the rollback is
            // armed either way, but a finished run records what it changed.
            sys::ignore_sighup();
            log::info!(
                "commit confirmed: saved sshd, ufw, DOCKER-USER and the sudoers drop-in as {}; rollback armed in {window}s",
                a.id
            );
            Ok(Session {
                dir: dir.to_path_buf(),
                pending,
                saved,
            })
        }
        Err(e) => {
            let _ = host.remove_file(&dir.join(PENDING));
            let _ = host.remove_tree(&sdir);
            Err(e)
        }
    }
}

/// Save the state and the config copy, record the change as applying, and start the timer.
/// On error the caller removes what this wrote.
async fn save_and_arm(
    host: &Host,
    cfg: &Config,
    dir: &Path,
    a: &Arming,
    file: ConfigFile,
) -> Result<(Snapshot, Pending)> {
    let sdir = dir.join(&a.id);
    let saved = capture(host, cfg, &a.id).await?;
    write_json(host, &sdir.join(SNAPSHOT), &saved)?;
    // The rollback reads its own copy: an edit (or a broken file) during the window must
    // not keep it from finding the state directory.
    let copy = match file.path {
        Some(_) => {
            let p = sdir.join(CONFIG_COPY);
            host.write(&p, &file.bytes, FileSpec::root(0o600), false)?;
            Some(p)
        }
        None => None,
    };
    let deadline = a.started + a.window;
    let pending = Pending {
        id: a.id.clone(),
        state: PendingState::Applying,
        started_at: rfc3339(a.started),
        deadline: rfc3339(deadline),
        deadline_unix: deadline,
        window_secs: a.window,
        ssh_connection: host.ssh_connection(),
        resources: vec![],
        config: file.path,
        config_sha256: file.sha256,
        unit: unit_name(&a.id),
        changed: Some(a.armed_at.clone()),
    };
    write_json(host, &dir.join(PENDING), &pending)?;
    let argv = arm_argv(&a.id, a.window, &a.exe, copy.as_deref());
    host.run(&Cmd::new(&argv[0]).args(&argv[1..]))
        .await
        .context("cannot arm the rollback timer")?;
    Ok((saved, pending))
}

impl Session {
    /// After the engine ran: what changed among the guarded resources decides whether a
    /// confirmation is pending; the window starts now, not when the run started.
    pub async fn finish(self, host: &Host) -> Outcome {
        let Session {
            dir,
            mut pending,
            saved,
        } = self;
        let changed = match recapture(host, &saved).await {
            Ok(now) => names(&differing(&saved, &now)),
            // Unknown: treat everything as changed, so the rollback still comes.
            Err(e) => {
                log::warn!("cannot tell what changed: {e:#}");
                names(&guarded_names())
            }
        };
        if changed.is_empty() {
            return nothing_changed(host, &dir, &pending).await;
        }
        // The run is over: everything it changed is in place, so a login from now on is new.
        // Should the clock fail now (it worked when armed), record nothing: `confirm` over SSH
        // then refuses rather than accept a login opened during the run.
        pending.changed = match sys::boottime_ms() {
            Ok(ms) => pending.changed.map(|s| Stamp {
                boottime_ms: ms,
                ..s
            }),
            Err(e) => {
                log::error!("{e:#}: no SSH login can confirm this change");
                None
            }
        };
        let now = unix_now();
        pending.state = PendingState::Pending;
        pending.deadline_unix = now + pending.window_secs;
        pending.deadline = rfc3339(pending.deadline_unix);
        pending.resources = changed;
        if let Err(e) = write_json(host, &dir.join(PENDING), &pending) {
            return unrecorded(host, &dir, &pending, e).await;
        }
        let unit = format!("{}.timer", pending.unit);
        Outcome {
            json: serde_json::json!({
                "pending": true,
                "id": pending.id,
                "resources": pending.resources,
                "deadline": pending.deadline,
                "window_secs": pending.window_secs,
                "rollback_unit": unit,
                "confirm_with": "sapari-agent confirm",
            }),
            line: format!(
                "confirm: {} changed and will be ROLLED BACK at {} (in {}s) unless you run `sudo sapari-agent confirm` from a NEW SSH session (rollback: {unit})",
                list(&pending.resources),
                pending.deadline,
                pending.window_secs
            ),
            failed: false,
        }
    }
}

/// Nothing guarded changed: nothing to confirm, so the rollback and its records go.
async fn nothing_changed(host: &Host, dir: &Path, pending: &Pending) -> Outcome {
    disarm(host, &pending.unit).await;
    let _ = host.remove_file(&dir.join(PENDING));
    let _ = host.remove_tree(&dir.join(&pending.id));
    Outcome {
        json: serde_json::json!({ "pending": false, "id": pending.id,
            "reason": "users (sudoers), sshd, ufw and firewall are unchanged: nothing to confirm" }),
        line: "confirm: users (sudoers), sshd, ufw and firewall are unchanged: nothing to confirm, no rollback armed"
            .into(),
        failed: false,
    }
}

/// Without the pending record nobody could confirm, and the deadline would be wrong: the
/// change is undone now.
async fn unrecorded(host: &Host, dir: &Path, pending: &Pending, e: anyhow::Error) -> Outcome {
    log::error!("cannot record the pending change: {e:#}; rolling back now");
    let r = roll_back(host, dir, pending).await;
    disarm(host, &pending.unit).await;
    let detail = match &r {
        Ok(m) if m.errors.is_empty() => format!("rolled back {}", list(&m.resources)),
        Ok(m) => format!("rollback incomplete: {}", m.errors.join("; ")),
        Err(e2) => format!("rollback failed: {e2:#}"),
    };
    Outcome {
        json: serde_json::json!({ "pending": false, "id": pending.id, "rolled_back": true,
            "error": format!("cannot record the pending change: {e:#}; {detail}") }),
        line: format!("confirm: cannot record the pending change ({e:#}): {detail}"),
        failed: true,
    }
}

#[cfg(test)]
mod tests;
