//! Commit confirmed: `converge --confirm SECONDS` keeps the previous sshd drop-in, UFW rules
//! and DOCKER-USER chain, and a timer restores them unless `sapari-agent confirm` runs in time.
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

use crate::cli::{ConfirmArgs, RollbackArgs};
use crate::config::{self, Config};
use crate::engine::{Check, Level, lock};
use crate::exit;
use crate::host::{Access, Cmd, FileSpec, Host};
use crate::resources::firewall::{
    self,
    lists::Family,
    rules::{Backend, CHAIN},
};
use crate::resources::{Name, sshd, ufw};

pub const UNIT_PREFIX: &str = "sapari-agent-rollback-";
const DIR: &str = "confirm";
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
pub const GUARDED: [Name; 3] = [Name::Sshd, Name::Ufw, Name::Firewall];

// ---- what is kept on disk -------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PendingState {
    /// Armed; the converge is still applying (or died doing so).
    Applying,
    /// Applied; waiting for `confirm`.
    Pending,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    pub id: String,
    pub state: PendingState,
    pub started_at: String,
    pub deadline: String,
    pub deadline_unix: u64,
    pub window_secs: u64,
    /// `SSH_CONNECTION` of the session that ran the converge (None: not over SSH).
    pub ssh_connection: Option<String>,
    /// Guarded resources the change touched (empty while applying).
    pub resources: Vec<String>,
    pub config: Option<PathBuf>,
    pub config_sha256: String,
    pub unit: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolledBack {
    pub at: String,
    pub id: String,
    pub config_sha256: String,
    pub resources: Vec<String>,
    /// What could not be restored; the saved state is then kept in `snapshot`.
    pub errors: Vec<String>,
    pub snapshot: Option<PathBuf>,
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainSnap {
    pub family: String,
    pub backend: String,
    /// The `-A DOCKER-USER ...` lines as iptables-save printed them; None: no such chain.
    pub lines: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub id: String,
    pub taken_at: String,
    /// sshd_config, every drop-in, and ours (possibly absent).
    pub sshd: Vec<FileSnap>,
    pub ufw_installed: bool,
    pub ufw: Vec<FileSnap>,
    /// Only the families whose iptables tables hold Docker's chains.
    pub chains: Vec<ChainSnap>,
}

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

fn ufw_enabled(files: &[FileSnap]) -> bool {
    files
        .iter()
        .find(|f| f.path == Path::new(ufw::UFW_CONF))
        .and_then(|f| f.content.as_deref())
        .and_then(|t| ufw::shell_var(t, "ENABLED"))
        .is_some_and(|v| v == "yes")
}

fn contents_differ(saved: &[FileSnap], now: &[FileSnap]) -> bool {
    saved.len() != now.len()
        || saved
            .iter()
            .zip(now)
            .any(|(s, n)| s.path != n.path || s.content != n.content)
}

fn chain_lines(c: &ChainSnap) -> &[String] {
    c.lines.as_deref().unwrap_or(&[])
}

/// Which guarded resources differ between the saved state and `now` (read over the same
/// files and chains). An absent chain and an empty one filter the same.
pub fn differing(saved: &Snapshot, now: &Snapshot) -> Vec<Name> {
    let mut out = Vec::new();
    if contents_differ(&saved.sshd, &now.sshd) {
        out.push(Name::Sshd);
    }
    let ufw = if saved.ufw_installed {
        contents_differ(&saved.ufw, &now.ufw)
    } else {
        // Installed by the change: restoring means turning it off, not deleting its files.
        now.ufw_installed && ufw_enabled(&now.ufw)
    };
    if ufw {
        out.push(Name::Ufw);
    }
    let chains = saved.chains.len() != now.chains.len()
        || saved
            .chains
            .iter()
            .zip(&now.chains)
            .any(|(s, n)| chain_lines(s) != chain_lines(n));
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
    let is_on = now.ufw_installed && ufw_enabled(&now.ufw);
    if !saved.ufw_installed {
        return if is_on {
            vec![UfwAction::Disable]
        } else {
            vec![]
        };
    }
    let was_on = ufw_enabled(&saved.ufw);
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

/// One `iptables-restore --noflush` transaction that puts the saved chain back (an absent
/// chain comes back empty, which filters the same), as the firewall resource replaces it.
pub fn chain_restore_text(c: &ChainSnap) -> String {
    let mut s = format!("*filter\n:{CHAIN} - [0:0]\n");
    for l in chain_lines(c) {
        s.push_str(l);
        s.push('\n');
    }
    s.push_str("COMMIT\n");
    s
}

fn family_named(s: &str) -> Option<Family> {
    Family::ALL.into_iter().find(|f| f.as_str() == s)
}

fn backend_named(s: &str) -> Option<Backend> {
    [Backend::Nft, Backend::Legacy, Backend::Default]
        .into_iter()
        .find(|b| b.as_str() == s)
}

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
        GUARDED.to_vec()
    } else {
        touched
    };
    // DOCKER-USER only filters traffic forwarded to containers, so it cannot lock anyone out;
    // refusing `firewall apply` would leave the empty chain Docker recreates at boot, and with
    // it the published ports open to everyone.
    if !selected
        .iter()
        .any(|n| *n != Name::Firewall && touched.contains(n))
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

/// `confirm` must come from another SSH session than the converge: only a new login proves
/// that logging in still works. Err: the refusal; Ok: a note, if any.
pub fn session_verdict(
    starter: Option<&str>,
    current: Option<&str>,
) -> Result<Option<String>, String> {
    match (starter, current) {
        (Some(s), Some(c)) if s == c => Err(format!(
            "refusing to confirm from the SSH session that ran the converge ({s}): it stayed open through the change, so it proves nothing. Open a NEW SSH session (with ssh connection sharing, `ssh -S none ...`) and run `sudo sapari-agent confirm` there"
        )),
        (_, Some(_)) => Ok(None),
        (_, None) => Ok(Some(
            "confirmed without SSH (console or timer): this does not show that SSH logins still work"
                .into(),
        )),
    }
}

// ---- reading and writing the state ----------------------------------------------------------

fn confirm_dir(state_dir: &Path) -> PathBuf {
    state_dir.join(DIR)
}

fn read_json<T: for<'de> Deserialize<'de>>(host: &Host, path: &Path) -> Result<Option<T>> {
    match host.read_text(path)? {
        None => Ok(None),
        Some(t) => serde_json::from_str(&t)
            .map(Some)
            .with_context(|| format!("{} is damaged", path.display())),
    }
}

fn write_json<T: Serialize>(host: &Host, path: &Path, v: &T) -> Result<()> {
    let mut body = serde_json::to_vec_pretty(v)?;
    body.push(b'\n');
    host.write(path, &body, FileSpec::root(0o600), false)
}

/// The state directory as the rest of the agent makes it (0755: `status` reads last-run.json
/// without root), and `confirm/` in it private.
fn ensure_dirs(host: &Host, dir: &Path) -> Result<()> {
    let missing: Vec<&Path> = dir.ancestors().take_while(|d| !d.exists()).collect();
    for d in missing.into_iter().rev() {
        let mode = if d == dir { 0o700 } else { 0o755 };
        host.ensure_dir(d, FileSpec::root(mode))?;
    }
    Ok(())
}

/// The config file's bytes identify "the same configuration" for the rolled-back marker;
/// no file (all defaults) hashes as empty.
fn config_file(host: &Host, explicit: Option<&Path>) -> Result<(Option<PathBuf>, Vec<u8>)> {
    let path = explicit.map_or_else(|| PathBuf::from(config::DEFAULT_PATH), Path::to_path_buf);
    Ok(match host.read(&path)? {
        Some(f) => (Some(path), f.content),
        None => (None, Vec::new()),
    })
}

fn sha256(data: &[u8]) -> String {
    firewall::lists::sha256_hex(data)
}

// ---- capture and restore --------------------------------------------------------------------

fn file_snap(host: &Host, path: &Path) -> Result<FileSnap> {
    Ok(match host.read(path)? {
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
            mode: 0o644,
            uid: 0,
            gid: 0,
        },
    })
}

fn sshd_paths(host: &Host, drop_in: &str) -> Result<Vec<PathBuf>> {
    let dir = Path::new(sshd::DROP_DIR);
    let mut v = vec![PathBuf::from(sshd::SSHD_CONFIG)];
    let mut names: Vec<String> = host
        .list_dir(dir)?
        .into_iter()
        .filter(|n| n.ends_with(".conf"))
        .collect();
    if !names.iter().any(|n| n == drop_in) {
        names.push(drop_in.to_string());
        names.sort();
    }
    v.extend(names.into_iter().map(|n| dir.join(n)));
    Ok(v)
}

async fn capture(host: &Host, cfg: &Config, id: &str) -> Result<Snapshot> {
    let sshd = sshd_paths(host, &cfg.sshd.drop_in.0)?
        .iter()
        .map(|p| file_snap(host, p))
        .collect::<Result<Vec<_>>>()?;
    let ufw = ufw::STATE_FILES
        .iter()
        .map(|p| file_snap(host, Path::new(p)))
        .collect::<Result<Vec<_>>>()?;
    let mut chains = Vec::new();
    if cfg.firewall.enabled {
        for fam in Family::ALL {
            let (docker, _) = firewall::observe_docker(host, fam)
                .await
                .with_context(|| format!("cannot read the {} DOCKER-USER chain", fam.label()))?;
            if let Some((backend, table)) = docker {
                chains.push(ChainSnap {
                    family: fam.as_str().into(),
                    backend: backend.as_str().into(),
                    lines: table.has_chain(CHAIN).then(|| table.lines_of(CHAIN)),
                });
            }
        }
    }
    Ok(Snapshot {
        id: id.to_string(),
        taken_at: rfc3339(unix_now()),
        sshd,
        ufw_installed: host.program_exists("ufw"),
        ufw,
        chains,
    })
}

/// The same files and chains as `saved`, as they are now.
async fn recapture(host: &Host, saved: &Snapshot) -> Result<Snapshot> {
    let files = |v: &[FileSnap]| -> Result<Vec<FileSnap>> {
        v.iter().map(|f| file_snap(host, &f.path)).collect()
    };
    let mut chains = Vec::new();
    for c in &saved.chains {
        let (fam, backend) = family_backend(c)?;
        let t = firewall::save(host, backend, fam).await?;
        chains.push(ChainSnap {
            lines: t.has_chain(CHAIN).then(|| t.lines_of(CHAIN)),
            ..c.clone()
        });
    }
    Ok(Snapshot {
        id: saved.id.clone(),
        taken_at: rfc3339(unix_now()),
        sshd: files(&saved.sshd)?,
        ufw_installed: host.program_exists("ufw"),
        ufw: files(&saved.ufw)?,
        chains,
    })
}

fn family_backend(c: &ChainSnap) -> Result<(Family, Backend)> {
    match (family_named(&c.family), backend_named(&c.backend)) {
        (Some(f), Some(b)) => Ok((f, b)),
        _ => bail!(
            "the saved chain names an unknown family/backend {}/{}",
            c.family,
            c.backend
        ),
    }
}

fn put_back(host: &Host, f: &FileSnap) -> Result<()> {
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

async fn restore_sshd(host: &Host, saved: &Snapshot, now: &Snapshot) -> Result<()> {
    for (s, n) in saved.sshd.iter().zip(&now.sshd) {
        if s.content != n.content {
            put_back(host, s)?;
        }
    }
    sshd::validate_and_reload(host).await
}

async fn restore_ufw(host: &Host, saved: &Snapshot, now: &Snapshot) -> Result<()> {
    let plan = ufw_restore_plan(saved, now);
    for a in &plan {
        match a {
            UfwAction::Disable => {
                host.run(&Cmd::new("ufw").args(["--force", "disable"]))
                    .await?;
            }
            UfwAction::Write(f) => put_back(host, f)?,
            UfwAction::Reload => {
                host.run(&Cmd::new("ufw").arg("reload")).await?;
            }
        }
    }
    let want_on = saved.ufw_installed && ufw_enabled(&saved.ufw);
    if now.ufw_installed || want_on {
        let st = host.query(&Cmd::new("ufw").arg("status")).await?;
        let on = st.stdout.contains("Status: active");
        if on != want_on {
            bail!(
                "ufw reports `{}` after the restore, expected {}",
                st.stdout.lines().next().unwrap_or("").trim(),
                if want_on { "active" } else { "inactive" }
            );
        }
    }
    Ok(())
}

async fn restore_chains(host: &Host, saved: &Snapshot, now: &Snapshot) -> Result<()> {
    for (s, n) in saved.chains.iter().zip(&now.chains) {
        if chain_lines(s) == chain_lines(n) {
            continue;
        }
        let (fam, backend) = family_backend(s)?;
        host.run(
            &Cmd::new(&backend.restore(fam))
                .args(["--noflush", "--wait", firewall::XTABLES_WAIT_SECS])
                .stdin(chain_restore_text(s))
                .timeout(Duration::from_secs(60)),
        )
        .await
        .with_context(|| format!("the {} {CHAIN} chain was not restored", fam.label()))?;
    }
    Ok(())
}

#[derive(Debug, Default)]
struct Restored {
    resources: Vec<Name>,
    errors: Vec<String>,
}

/// Put back every guarded resource that differs from `saved`, each on its own (one failing
/// does not keep the others from coming back), then check by reading everything again.
async fn restore_all(host: &Host, saved: &Snapshot) -> Restored {
    let mut r = Restored::default();
    let now = match recapture(host, saved).await {
        Ok(n) => n,
        Err(e) => {
            r.errors
                .push(format!("cannot read the current state: {e:#}"));
            return r;
        }
    };
    for name in differing(saved, &now) {
        let res = match name {
            Name::Sshd => restore_sshd(host, saved, &now).await,
            Name::Ufw => restore_ufw(host, saved, &now).await,
            _ => restore_chains(host, saved, &now).await,
        };
        match res {
            Ok(()) => r.resources.push(name),
            Err(e) => r.errors.push(format!("{name}: {e:#}")),
        }
    }
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
            "the saved state {} is missing; nothing can be restored (remove {} once you have checked sshd, ufw and DOCKER-USER by hand)",
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
    match host
        .run(&Cmd::new("systemctl").args(["stop", &timer]))
        .await
    {
        // Harmless if it still fires: the rollback finds nothing pending under its id.
        Err(e) => log::warn!("cannot stop {timer}: {e:#}"),
        Ok(_) => log::info!("stopped {timer}"),
    }
    // A rollback already started (sleeping towards the deadline, or waiting for the lock)
    // holds nothing yet; stopping a unit that never ran just fails.
    let service = format!("{unit}.service");
    let _ = host
        .query(&Cmd::new("systemctl").args(["stop", &service]))
        .await;
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
        .query(&Cmd::new("systemctl").args(["is-active", &timer, &service]))
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
    let rearmed = match std::env::current_exe() {
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
    let fail = |e: anyhow::Error| {
        eprintln!("sapari-agent: {e:#}");
        exit::FAILED
    };
    let (config_path, config_bytes) = config_file(host, config).map_err(fail)?;
    let config_sha256 = sha256(&config_bytes);
    if let Some(p) = read_json::<Pending>(host, &dir.join(PENDING)).map_err(|e| {
        fail(e.context(format!(
            "cannot tell whether a commit-confirmed change is pending; if none is, remove {}",
            dir.join(PENDING).display()
        )))
    })? {
        let now = unix_now();
        if !lost(&p, now) {
            rearm_if_gone(host, &dir, &p, now).await;
            eprintln!(
                "sapari-agent: a commit-confirmed change ({}; id {}) waits for `sapari-agent confirm` until {} ({} left); it is rolled back then. This run changes nothing until it is confirmed or rolled back",
                list(&p.resources),
                p.id,
                p.deadline,
                humantime::format_duration(Duration::from_secs(
                    p.deadline_unix.saturating_sub(now)
                ))
            );
            return Err(exit::LOCKED);
        }
        eprintln!(
            "sapari-agent: the commit-confirmed change {} was not confirmed by {} and its rollback never ran (a reboot drops the rollback timer): rolling it back now",
            p.id, p.deadline
        );
        let m = roll_back(host, &dir, &p).await.map_err(fail)?;
        if !m.errors.is_empty() {
            eprintln!(
                "sapari-agent: the rollback is incomplete: {}",
                m.errors.join("; ")
            );
            return Err(exit::FAILED);
        }
        eprintln!("sapari-agent: restored {}", list(&m.resources));
    }
    let marker_path = dir.join(ROLLED_BACK);
    if let Some(m) = read_json::<RolledBack>(host, &marker_path).map_err(fail)? {
        let shown = config_path
            .as_deref()
            .unwrap_or(Path::new(config::DEFAULT_PATH))
            .display()
            .to_string();
        let verdict = if window.is_some() {
            MarkerVerdict::Clear
        } else {
            marker_verdict(&m, &config_sha256, selected, &shown)
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
    }
    let Some(window) = window else {
        return Ok(None);
    };
    arm(
        host,
        cfg,
        &dir,
        config_path,
        &config_bytes,
        config_sha256,
        window,
    )
    .await
    .map(Some)
    .map_err(|e| {
        eprintln!("sapari-agent: --confirm: {e:#}; nothing was changed");
        exit::FAILED
    })
}

async fn arm(
    host: &Host,
    cfg: &Config,
    dir: &Path,
    config_path: Option<PathBuf>,
    config_bytes: &[u8],
    config_sha256: String,
    window: u64,
) -> Result<Session> {
    if !host.systemd_booted() {
        bail!(
            "commit confirmed needs systemd to run the rollback (systemd-run), and systemd is not running"
        );
    }
    let exe = std::env::current_exe().context("cannot tell where this program is")?;
    if exe.to_string_lossy().ends_with(" (deleted)") {
        bail!(
            "{} was replaced while running; run the new one",
            exe.display()
        );
    }
    let started = unix_now();
    let id = new_id(started, std::process::id());
    let sdir = dir.join(&id);
    ensure_dirs(host, dir)?;
    host.ensure_dir(&sdir, FileSpec::root(0o700))?;
    let result = async {
        let saved = capture(host, cfg, &id).await?;
        write_json(host, &sdir.join(SNAPSHOT), &saved)?;
        // The rollback reads its own copy: an edit (or a broken file) during the window must
        // not keep it from finding the state directory.
        let copy = match config_path {
            Some(_) => {
                let p = sdir.join(CONFIG_COPY);
                host.write(&p, config_bytes, FileSpec::root(0o600), false)?;
                Some(p)
            }
            None => None,
        };
        let deadline = started + window;
        let pending = Pending {
            id: id.clone(),
            state: PendingState::Applying,
            started_at: rfc3339(started),
            deadline: rfc3339(deadline),
            deadline_unix: deadline,
            window_secs: window,
            ssh_connection: host.ssh_connection(),
            resources: vec![],
            config: config_path,
            config_sha256,
            unit: unit_name(&id),
        };
        write_json(host, &dir.join(PENDING), &pending)?;
        let argv = arm_argv(&id, window, &exe, copy.as_deref());
        host.run(&Cmd::new(&argv[0]).args(&argv[1..]))
            .await
            .context("cannot arm the rollback timer")?;
        Ok::<_, anyhow::Error>((saved, pending))
    }
    .await;
    match result {
        Ok((saved, pending)) => {
            // From here a dropped SSH session must not stop the run half-way: the rollback is
            // armed either way, but a finished run records what it changed.
            // SAFETY: installing SIG_IGN runs no handler code.
            unsafe {
                let _ = nix::sys::signal::signal(
                    nix::sys::signal::Signal::SIGHUP,
                    nix::sys::signal::SigHandler::SigIgn,
                );
            }
            log::info!(
                "commit confirmed: saved sshd, ufw and DOCKER-USER as {id}; rollback armed in {window}s"
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
                names(&GUARDED)
            }
        };
        if changed.is_empty() {
            disarm(host, &pending.unit).await;
            let _ = host.remove_file(&dir.join(PENDING));
            let _ = host.remove_tree(&dir.join(&pending.id));
            return Outcome {
                json: serde_json::json!({ "pending": false, "id": pending.id,
                    "reason": "sshd, ufw and firewall are unchanged: nothing to confirm" }),
                line: "confirm: sshd, ufw and firewall are unchanged: nothing to confirm, no rollback armed"
                    .into(),
                failed: false,
            };
        }
        let now = unix_now();
        pending.state = PendingState::Pending;
        pending.deadline_unix = now + pending.window_secs;
        pending.deadline = rfc3339(pending.deadline_unix);
        pending.resources = changed;
        if let Err(e) = write_json(host, &dir.join(PENDING), &pending) {
            // Without the record nobody could confirm, and the deadline would be wrong: undo now.
            log::error!("cannot record the pending change: {e:#}; rolling back now");
            let r = roll_back(host, &dir, &pending).await;
            disarm(host, &pending.unit).await;
            let detail = match &r {
                Ok(m) if m.errors.is_empty() => format!("rolled back {}", list(&m.resources)),
                Ok(m) => format!("rollback incomplete: {}", m.errors.join("; ")),
                Err(e2) => format!("rollback failed: {e2:#}"),
            };
            return Outcome {
                json: serde_json::json!({ "pending": false, "id": pending.id, "rolled_back": true,
                    "error": format!("cannot record the pending change: {e:#}; {detail}") }),
                line: format!("confirm: cannot record the pending change ({e:#}): {detail}"),
                failed: true,
            };
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

// ---- confirm and rollback -------------------------------------------------------------------

fn euid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

fn load(config: Option<&Path>) -> Result<Config, i32> {
    config::load(config, euid()).map(|(c, _)| c).map_err(|e| {
        eprintln!("sapari-agent: {e}");
        exit::CONFIG
    })
}

fn take_lock(timeout: Duration) -> Result<lock::Lock, i32> {
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

pub async fn confirm(a: &ConfirmArgs) -> i32 {
    if euid() != 0 {
        eprintln!("sapari-agent: confirm must run as root (try: sudo sapari-agent confirm)");
        return exit::NOT_ROOT;
    }
    let cfg = match load(a.config.as_deref()) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let _lock = match take_lock(cfg.agent.lock_timeout.0) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let host = Host::new(Access::ReadWrite);
    let dir = confirm_dir(&cfg.agent.state_dir);
    let refuse = |reason: String| {
        if a.json {
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
    let pending = match read_json::<Pending>(&host, &dir.join(PENDING)) {
        Ok(Some(p)) => p,
        Ok(None) => {
            let why = match read_json::<RolledBack>(&host, &dir.join(ROLLED_BACK)) {
                Ok(Some(m)) => format!(
                    "nothing to confirm: the change {} ({}) was already rolled back at {}",
                    m.id,
                    list(&m.resources),
                    m.at
                ),
                _ => "nothing to confirm: no commit-confirmed change is pending".into(),
            };
            return refuse(why);
        }
        Err(e) => return refuse(format!("{e:#}")),
    };
    let note = match session_verdict(
        pending.ssh_connection.as_deref(),
        host.ssh_connection().as_deref(),
    ) {
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
    let text = format!(
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
        note.as_deref()
            .map(|n| format!("\nnote: {n}"))
            .unwrap_or_default()
    );
    say(
        a.json,
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

pub async fn rollback(a: &RollbackArgs) -> i32 {
    if !valid_id(&a.id) {
        eprintln!("sapari-agent: rollback: `{}` is not a change id", a.id);
        return exit::USAGE;
    }
    if euid() != 0 {
        eprintln!("sapari-agent: rollback must run as root");
        return exit::NOT_ROOT;
    }
    let cfg = match load(a.config.as_deref()) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let host = Host::new(Access::ReadWrite);
    let dir = confirm_dir(&cfg.agent.state_dir);
    let wait = ROLLBACK_LOCK_WAIT.max(cfg.agent.lock_timeout.0);
    loop {
        let lock = match take_lock(wait) {
            Ok(l) => l,
            Err(code) => {
                log::error!(
                    "commit confirmed: cannot roll back change {}: the run lock stayed busy",
                    a.id
                );
                return code;
            }
        };
        let pending = match read_json::<Pending>(&host, &dir.join(PENDING)) {
            Ok(Some(p)) if p.id == a.id => p,
            Ok(_) => {
                log::info!(
                    "commit confirmed: nothing to roll back for {} (confirmed or superseded)",
                    a.id
                );
                return exit::OK;
            }
            Err(e) => {
                log::error!("commit confirmed: cannot roll back {}: {e:#}", a.id);
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
                log::error!("commit confirmed: cannot roll back {}: {e:#}", a.id);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn f(path: &str, content: Option<&str>) -> FileSnap {
        FileSnap {
            path: path.into(),
            content: content.map(str::to_string),
            mode: 0o644,
            uid: 0,
            gid: 0,
        }
    }

    fn ufw_files(enabled: bool, rules: &str) -> Vec<FileSnap> {
        vec![
            f(ufw::USER_RULES, Some(rules)),
            f(ufw::USER6_RULES, Some("v6\n")),
            f(ufw::DEFAULTS, Some("IPV6=yes\n")),
            f(
                ufw::UFW_CONF,
                Some(if enabled {
                    "ENABLED=yes\n"
                } else {
                    "ENABLED=no\n"
                }),
            ),
        ]
    }

    fn snap() -> Snapshot {
        Snapshot {
            id: "1-2".into(),
            taken_at: "t".into(),
            sshd: vec![
                f("/etc/ssh/sshd_config", Some("Include x\n")),
                f("/etc/ssh/sshd_config.d/10-sapari-agent.conf", None),
            ],
            ufw_installed: true,
            ufw: ufw_files(true, "allow 22 from op\n"),
            chains: vec![ChainSnap {
                family: "v4".into(),
                backend: "nft".into(),
                lines: Some(vec!["-A DOCKER-USER -j RETURN".into()]),
            }],
        }
    }

    #[test]
    fn ids_are_digits_and_dashes_only() {
        let id = new_id(1_790_000_000, 4242);
        assert!(valid_id(&id), "{id}");
        for bad in ["", "../x", "1/2", "-1", "a-1", "1 2", &"9".repeat(41)] {
            assert!(!valid_id(bad), "{bad}");
        }
    }

    #[test]
    fn the_rollback_timer_runs_this_program_outside_the_session() {
        let v = arm_argv(
            "1-2",
            20,
            Path::new("/usr/bin/sapari-agent"),
            Some(Path::new("/var/lib/sapari-agent/confirm/1-2/agent.toml")),
        );
        assert_eq!(v[0], "systemd-run");
        assert!(v.contains(&"--unit=sapari-agent-rollback-1-2".to_string()));
        assert!(v.contains(&"--on-active=20s".to_string()));
        assert!(v.contains(&"--timer-property=AccuracySec=1s".to_string()));
        let tail = &v[v.iter().position(|a| a == "--").unwrap() + 1..];
        assert_eq!(
            tail.join(" "),
            "/usr/bin/sapari-agent rollback --id 1-2 --config /var/lib/sapari-agent/confirm/1-2/agent.toml"
        );
        let v = arm_argv("1-2", 20, Path::new("/a"), None);
        assert!(!v.contains(&"--config".to_string()));
    }

    #[test]
    fn differing_names_each_changed_resource() {
        let s = snap();
        assert!(differing(&s, &s).is_empty());
        let mut n = s.clone();
        n.sshd[1].content = Some("PermitRootLogin no\n".into());
        n.ufw = ufw_files(true, "allow 22 from elsewhere\n");
        n.chains[0].lines = Some(vec![]);
        assert_eq!(
            differing(&s, &n),
            vec![Name::Sshd, Name::Ufw, Name::Firewall]
        );
        // An absent chain and an empty one filter the same.
        let mut a = s.clone();
        a.chains[0].lines = None;
        let mut e = s.clone();
        e.chains[0].lines = Some(vec![]);
        assert!(differing(&a, &e).is_empty());
    }

    #[test]
    fn ufw_installed_by_the_change_counts_only_when_active() {
        let mut s = snap();
        s.ufw_installed = false;
        s.ufw = vec![
            f(ufw::USER_RULES, None),
            f(ufw::USER6_RULES, None),
            f(ufw::DEFAULTS, None),
            f(ufw::UFW_CONF, None),
        ];
        let mut n = snap();
        assert_eq!(differing(&s, &n), vec![Name::Ufw]);
        assert_eq!(ufw_restore_plan(&s, &n), vec![UfwAction::Disable]);
        n.ufw = ufw_files(false, "x");
        n.chains = s.chains.clone();
        n.sshd = s.sshd.clone();
        assert!(differing(&s, &n).is_empty());
    }

    #[test]
    fn ufw_restore_order() {
        // It was on: files back, then a reload loads them.
        let s = snap();
        let mut n = s.clone();
        n.ufw = ufw_files(true, "new\n");
        assert_eq!(
            ufw_restore_plan(&s, &n),
            vec![UfwAction::Write(s.ufw[0].clone()), UfwAction::Reload]
        );
        // It was off and the change enabled it: off first, then the files.
        let mut s = snap();
        s.ufw = ufw_files(false, "old\n");
        let mut n = s.clone();
        n.ufw = ufw_files(true, "new\n");
        assert_eq!(
            ufw_restore_plan(&s, &n),
            vec![
                UfwAction::Disable,
                UfwAction::Write(s.ufw[0].clone()),
                UfwAction::Write(s.ufw[3].clone())
            ]
        );
    }

    #[test]
    fn chain_restore_is_one_transaction() {
        let c = &snap().chains[0];
        assert_eq!(
            chain_restore_text(c),
            "*filter\n:DOCKER-USER - [0:0]\n-A DOCKER-USER -j RETURN\nCOMMIT\n"
        );
        let absent = ChainSnap {
            lines: None,
            ..c.clone()
        };
        assert_eq!(
            chain_restore_text(&absent),
            "*filter\n:DOCKER-USER - [0:0]\nCOMMIT\n"
        );
        assert_eq!(
            family_backend(c).unwrap(),
            (Family::V4, Backend::Nft),
            "names round-trip"
        );
    }

    fn marker(resources: &[&str]) -> RolledBack {
        RolledBack {
            at: "2026-01-01T00:00:00Z".into(),
            id: "1-2".into(),
            config_sha256: "aaa".into(),
            resources: resources.iter().map(|s| s.to_string()).collect(),
            errors: vec![],
            snapshot: None,
        }
    }

    #[test]
    fn rolled_back_config_is_not_reapplied() {
        let m = marker(&["ufw"]);
        let all = Name::ALL.to_vec();
        match marker_verdict(&m, "aaa", &all, "/etc/sapari-agent/agent.toml") {
            MarkerVerdict::Refuse(msg) => {
                assert!(msg.contains("rolled back unconfirmed"), "{msg}");
                assert!(msg.contains("--confirm"), "{msg}");
                assert!(msg.contains("/etc/sapari-agent/agent.toml"), "{msg}");
            }
            v => panic!("{v:?}"),
        }
        assert_eq!(
            marker_verdict(&m, "bbb", &all, "x"),
            MarkerVerdict::Clear,
            "a changed config clears it"
        );
        assert_eq!(
            marker_verdict(&m, "aaa", &[Name::Swap], "x"),
            MarkerVerdict::Ignore,
            "a run that cannot touch ufw goes ahead"
        );
        assert!(matches!(
            marker_verdict(&marker(&[]), "aaa", &[Name::Sshd], "x"),
            MarkerVerdict::Refuse(_)
        ));
        assert_eq!(
            marker_verdict(&marker(&["ufw", "firewall"]), "aaa", &[Name::Firewall], "x"),
            MarkerVerdict::Ignore,
            "firewall apply (Docker restarted) refills DOCKER-USER"
        );
    }

    #[test]
    fn only_a_new_session_confirms() {
        let a = "192.0.2.50 50000 203.0.113.10 22";
        let b = "192.0.2.50 50001 203.0.113.10 22";
        let e = session_verdict(Some(a), Some(a)).unwrap_err();
        assert!(e.contains("NEW SSH session"), "{e}");
        assert_eq!(session_verdict(Some(a), Some(b)), Ok(None));
        assert_eq!(session_verdict(None, Some(b)), Ok(None));
        assert!(session_verdict(Some(a), None).unwrap().is_some());
    }

    #[test]
    fn a_lost_rollback_is_noticed_after_a_grace() {
        let p = Pending {
            id: "1-2".into(),
            state: PendingState::Pending,
            started_at: rfc3339(1000),
            deadline: rfc3339(1020),
            deadline_unix: 1020,
            window_secs: 20,
            ssh_connection: None,
            resources: vec!["ufw".into()],
            config: None,
            config_sha256: "x".into(),
            unit: unit_name("1-2"),
        };
        assert!(!lost(&p, 1020));
        assert!(!lost(&p, 1020 + LOST_AFTER));
        assert!(lost(&p, 1021 + LOST_AFTER));
        let text = serde_json::to_string(&p).unwrap();
        assert!(text.contains("\"state\":\"pending\""), "{text}");
        assert_eq!(serde_json::from_str::<Pending>(&text).unwrap(), p);
        assert_eq!(p.deadline, "1970-01-01T00:17:00Z");
    }

    #[test]
    fn ufw_switch_is_read_from_its_conf() {
        assert!(ufw_enabled(&ufw_files(true, "")));
        assert!(!ufw_enabled(&ufw_files(false, "")));
        assert!(!ufw_enabled(&[]));
    }
}
