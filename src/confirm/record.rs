//! What a confirm session keeps on disk, and reading and writing it.

use super::*;

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
    /// When the change was applied: when it was armed while applying, the end of the run once
    /// pending. Only a login that started later can confirm it. None: written by a version
    /// that did not record it.
    #[serde(default)]
    pub changed: Option<Stamp>,
}

/// A moment on the clock /proc counts process start times on (CLOCK_BOOTTIME), which only
/// means something within the boot it was read in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    pub boot_id: String,
    pub boottime_ms: u64,
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

pub use crate::resources::guarded::Snapshot;

// ---- reading and writing the state ----------------------------------------------------------

pub(super) fn confirm_dir(state_dir: &Path) -> PathBuf {
    state_dir.join(DIR)
}

pub(super) fn read_json<T: for<'de> Deserialize<'de>>(
    host: &Host,
    path: &Path,
) -> Result<Option<T>> {
    match host.read_state(path)? {
        None => Ok(None),
        Some(t) => serde_json::from_str(&t)
            .map(Some)
            .with_context(|| format!("{} is damaged", path.display())),
    }
}

pub(super) fn write_json<T: Serialize>(host: &Host, path: &Path, v: &T) -> Result<()> {
    let mut body = serde_json::to_vec_pretty(v)?;
    body.push(b'\n');
    host.write(path, &body, FileSpec::root(0o600), false)
}

/// The config file's bytes identify "the same configuration" for the rolled-back marker;
/// no file (all defaults) hashes as empty.
pub(super) fn config_file(
    host: &Host,
    explicit: Option<&Path>,
) -> Result<(Option<PathBuf>, Vec<u8>)> {
    let path = explicit.map_or_else(|| PathBuf::from(config::DEFAULT_PATH), Path::to_path_buf);
    Ok(match host.read(&path)? {
        Some(f) => (Some(path), f.content),
        None => (None, Vec::new()),
    })
}

pub(super) fn sha256(data: &[u8]) -> String {
    crate::digest::sha256_hex(data)
}

pub(super) fn boot_id(host: &Host) -> Result<String> {
    host.read_text(Path::new(BOOT_ID))?
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| anyhow!("{BOOT_ID} is missing or empty"))
}

/// Now, as a login's start time compares with it.
pub(super) fn stamp(host: &Host) -> Result<Stamp> {
    Ok(Stamp {
        boot_id: boot_id(host)?,
        boottime_ms: sys::boottime_ms()?,
    })
}
