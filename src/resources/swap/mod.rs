//! `swap`: the runbook's 4G `/swapfile` (0600, mkswap, swapon, a `nofail` fstab line),
//! without disturbing swap the machine already has, and only resized when the swap being
//! replaced is not needed by current memory pressure.
//!
//! A resize never leaves the box without swap. The obvious way (swapon a new file beside the
//! old one, then rename it over the old path) does not exist: the kernel refuses to rename or
//! unlink an active swap file (EPERM, `may_delete()` checks `S_SWAPFILE` since Linux 2.6.28).
//! So a resize goes through a temporary file, `<swap.path>.sapari-agent-new`:
//!
//! 1. create, mkswap and swapon the temporary file at the new size;
//! 2. swapoff and remove `swap.path` (its pages go back to RAM, the temporary swap is there
//!    to take pressure meanwhile);
//! 3. create, mkswap and swapon `swap.path` at the new size;
//! 4. swapoff and remove the temporary file.
//!
//! Some swap is on at every moment, and /etc/fstab only ever names `swap.path`: after a
//! reboot mid-resize nothing mounts the temporary file. The cost is disk: the old file and
//! the temporary one at once, then the temporary one and the new one; a plan that needs more
//! than the filesystem has free is refused before anything changes. A run killed anywhere
//! leaves a state the next plan finishes: an inactive temporary file (killed before its
//! swapon, or a reboot) is removed first; an active one is kept, whatever its size, to carry
//! swap while `swap.path` is rebuilt, and retired once `swap.path` is on at the right size.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use async_trait::async_trait;

use crate::config::{Size, SwapSettings};
use crate::engine::{Change, Check, Describe, Level, Plan, Resource};
use crate::host::sys::{FsKind, Memory};
use crate::host::{Cmd, FileSpec, Host};
use crate::resources::Name;

const FSTAB: &str = "/etc/fstab";
const PROC_SWAPS: &str = "/proc/swaps";
/// Memory that must stay available after moving a swap file's contents back into RAM.
const RESIZE_MARGIN: u64 = 512 << 20;
const PAGE: u64 = 4096;
/// Appended to swap.path to name the file that carries swap during a resize.
pub const HELPER_SUFFIX: &str = ".sapari-agent-new";

pub struct Swap {
    cfg: SwapSettings,
}

impl Swap {
    pub fn new(cfg: &SwapSettings) -> Self {
        Self { cfg: cfg.clone() }
    }

    fn path(&self) -> &Path {
        &self.cfg.path.0
    }

    fn file(&self, which: Which) -> PathBuf {
        match which {
            Which::Main => self.path().to_path_buf(),
            Which::Helper => helper_path(self.path()),
        }
    }
}

/// The temporary swap file beside `path` (same directory, so same filesystem).
pub fn helper_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(HELPER_SUFFIX);
    PathBuf::from(s)
}

/// One line of /proc/swaps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveSwap {
    pub path: PathBuf,
    pub is_file: bool,
    /// Usable bytes (the kernel does not count the header page).
    pub size: u64,
    pub used: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwapFile {
    pub size: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub has_signature: bool,
}

#[derive(Debug, Clone)]
pub struct State {
    pub active: Vec<ActiveSwap>,
    pub fstab: Option<String>,
    pub file: Option<SwapFile>,
    /// Size of the temporary file an interrupted resize left at [`helper_path`].
    pub helper: Option<u64>,
    pub fs: FsKind,
    pub memory: Memory,
    /// Bytes an unprivileged user could still allocate on swap.path's filesystem: the
    /// blocks reserved for root stay for the services that need them on a full disk.
    pub free: u64,
}

/// Which of the two files a step acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    /// swap.path, the file /etc/fstab names.
    Main,
    /// [`helper_path`]: carries swap while swap.path is rebuilt.
    Helper,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    Create { file: Which, size: u64, nocow: bool },
    FixPermissions { mode: u32, uid: u32 },
    Mkswap(Which),
    Swapon(Which),
    Swapoff(Which),
    Remove { file: Which, size: u64 },
    WriteFstab { old: Option<String>, new: String },
}

fn human(bytes: u64) -> String {
    Size(bytes).to_string()
}

/// Free space rarely is a round number: one decimal is enough to compare with the sizes.
fn approx(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{:.1}G", bytes as f64 / (1u64 << 30) as f64)
    } else {
        format!("{}M", bytes >> 20)
    }
}

fn label(which: Which, what: &str) -> String {
    match which {
        Which::Main => format!("swap {what}"),
        Which::Helper => format!("temporary swap {what}"),
    }
}

impl Describe for Step {
    fn change(&self) -> Change {
        match self {
            Step::Create { file, size, .. } => Change::value(
                label(*file, "file"),
                Some("absent".into()),
                Some(human(*size)),
            ),
            Step::Remove { file, size } => Change::value(
                label(*file, "file"),
                Some(human(*size)),
                Some("removed".into()),
            ),
            Step::FixPermissions { mode, uid } => Change::value(
                "swap file owner/mode",
                Some(format!("uid {uid} mode {mode:04o}")),
                Some("uid 0 mode 0600".into()),
            ),
            Step::Mkswap(w) => Change::value(
                label(*w, "signature"),
                Some("none".into()),
                Some("mkswap".into()),
            ),
            Step::Swapon(w) => {
                Change::value(label(*w, "active"), Some("no".into()), Some("yes".into()))
            }
            Step::Swapoff(w) => {
                Change::value(label(*w, "active"), Some("yes".into()), Some("no".into()))
            }
            Step::WriteFstab { old, new } => Change::file(FSTAB, old.as_deref(), new),
        }
    }
}

/// Parse /proc/swaps. Paths there escape spaces as `\040`.
pub fn parse_proc_swaps(text: &str) -> Vec<ActiveSwap> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 4 {
                return None;
            }
            Some(ActiveSwap {
                path: PathBuf::from(f[0].replace("\\040", " ")),
                is_file: f[1] == "file",
                size: f[2].parse::<u64>().ok()? * 1024,
                used: f[3].parse::<u64>().ok()? * 1024,
            })
        })
        .collect()
}

fn fstab_line(path: &Path) -> String {
    format!("{} none swap sw,nofail 0 0", path.display())
}

/// Ensure exactly one swap entry for `path`, in the canonical form, keeping every other
/// byte of the file as it was (a missing final newline must not glue our line onto the
/// last one).
pub fn ensure_fstab_line(content: &str, path: &Path) -> String {
    let wanted = fstab_line(path);
    let wanted_fields: Vec<&str> = wanted.split_whitespace().collect();
    let target = path.to_string_lossy();
    let mut out = String::with_capacity(content.len() + wanted.len() + 1);
    let mut placed = false;
    for line in content.split_inclusive('\n') {
        let body = line.trim_end_matches('\n');
        let fields: Vec<&str> = body.split_whitespace().collect();
        let ours = !body.trim_start().starts_with('#')
            && fields.first() == Some(&target.as_ref())
            && fields.get(2) == Some(&"swap");
        if !ours {
            out.push_str(line);
            continue;
        }
        if placed {
            continue;
        }
        placed = true;
        if fields == wanted_fields {
            out.push_str(line);
        } else {
            out.push_str(&wanted);
            out.push('\n');
        }
    }
    if !placed {
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(&wanted);
        out.push('\n');
    }
    out
}

/// The most disk the steps hold at once beyond what is allocated now, in plan order.
fn peak_allocation(steps: &[Step]) -> u64 {
    let (mut held, mut peak) = (0i128, 0i128);
    for step in steps {
        match step {
            Step::Create { size, .. } => {
                held += i128::from(*size);
                peak = peak.max(held);
            }
            Step::Remove { size, .. } => held -= i128::from(*size),
            _ => {}
        }
    }
    u64::try_from(peak).unwrap_or(u64::MAX)
}

/// Free bytes on the filesystem that holds (or will hold) `path`.
fn free_space(path: &Path) -> Result<u64> {
    let mut dir = path.parent().unwrap_or(Path::new("/"));
    while !dir.exists() {
        dir = dir.parent().unwrap_or(Path::new("/"));
    }
    let st = nix::sys::statvfs::statvfs(dir)
        .with_context(|| format!("cannot read the free space of {}", dir.display()))?;
    #[allow(clippy::useless_conversion)]
    let (blocks, frag) = (
        u64::from(st.blocks_available()),
        u64::from(st.fragment_size()),
    );
    Ok(blocks.saturating_mul(frag))
}

#[async_trait]
impl Resource for Swap {
    type State = State;
    type Step = Step;

    fn name(&self) -> Name {
        Name::Swap
    }

    async fn observe(&self, host: &Host) -> Result<State> {
        let path = self.path();
        let active = parse_proc_swaps(&host.read_text(Path::new(PROC_SWAPS))?.unwrap_or_default());
        let file = match std::fs::symlink_metadata(path) {
            Ok(m) if m.is_file() => {
                let mut sig = [0u8; PAGE as usize];
                let n = std::fs::File::open(path)
                    .and_then(|mut f| f.read(&mut sig))
                    .unwrap_or(0);
                Some(SwapFile {
                    size: m.len(),
                    mode: m.mode() & 0o7777,
                    uid: m.uid(),
                    gid: m.gid(),
                    has_signature: n == PAGE as usize
                        && &sig[PAGE as usize - 10..] == b"SWAPSPACE2",
                })
            }
            Ok(_) => bail!(
                "swap.path {} exists but is not a regular file; remove it or choose another path",
                path.display()
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => bail!("cannot inspect {}: {e}", path.display()),
        };
        let helper_file = helper_path(path);
        let helper = match std::fs::symlink_metadata(&helper_file) {
            Ok(m) if m.is_file() => Some(m.len()),
            // Never truncate or remove what we did not make: a symlink there could point
            // anywhere.
            Ok(_) => bail!(
                "{} exists but is not a regular file; a swap resize builds its temporary file at that path: move it away",
                helper_file.display()
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => bail!("cannot inspect {}: {e}", helper_file.display()),
        };
        Ok(State {
            active,
            fstab: host.read_text(Path::new(FSTAB))?,
            file,
            helper,
            fs: host.fs_type(path.parent().unwrap_or(Path::new("/")))?,
            memory: host.memory()?,
            free: free_space(path)?,
        })
    }

    fn plan(&self, s: &State) -> Result<Plan<Step>> {
        let mut plan = Plan::default();
        if !self.cfg.enabled {
            plan.notes
                .push("swap management disabled (swap.enabled = false)".into());
            return Ok(plan);
        }
        let path = self.path();
        let helper = helper_path(path);
        let want = self.cfg.size.0;
        let ours = s.active.iter().find(|a| a.path == path);
        let helper_on = s.active.iter().find(|a| a.path == helper);
        let others: Vec<&ActiveSwap> = s
            .active
            .iter()
            .filter(|a| a.path != path && a.path != helper)
            .collect();
        let others_total: u64 = others.iter().map(|a| a.size + PAGE).sum();
        // A temporary file means a resize of our file was under way: finish it rather than
        // settle for other swap.
        let mid_resize = s.helper.is_some() || helper_on.is_some();
        if ours.is_none()
            && !mid_resize
            && self.cfg.accept_existing
            && !others.is_empty()
            && others_total >= want
        {
            let names: Vec<String> = others
                .iter()
                .map(|a| format!("{} ({})", a.path.display(), human(a.size + PAGE)))
                .collect();
            plan.notes.push(format!(
                "existing swap accepted: {} (swap.accept_existing)",
                names.join(", ")
            ));
            return Ok(plan);
        }
        if ours.is_none()
            && let FsKind::NoSwap(kind) = s.fs
        {
            bail!(
                "swap.path {} is on {kind}, which cannot hold swap; set swap.path to a file on ext4, xfs or btrfs",
                path.display()
            );
        }
        let nocow = s.fs == FsKind::Btrfs;
        let helper_size = s.helper.or(helper_on.map(|a| a.size + PAGE)).unwrap_or(0);
        if helper_on.is_none()
            && let Some(size) = s.helper
        {
            // Killed before its swapon, or a reboot since: it may be half allocated and is
            // never worth trusting.
            plan.notes.push(format!(
                "{} is left over from an interrupted resize: removed",
                helper.display()
            ));
            plan.steps.push(Step::Remove {
                file: Which::Helper,
                size,
            });
        }
        // The temporary file's size while it is on at this point of the plan.
        let mut carrying = helper_on.map(|_| helper_size);
        let mut fresh = false;
        match &s.file {
            None => {
                plan.steps.push(Step::Create {
                    file: Which::Main,
                    size: want,
                    nocow,
                });
                fresh = true;
            }
            Some(f) if f.size != want => match ours {
                Some(a) if a.used + RESIZE_MARGIN > s.memory.available => {
                    plan.notes.push(format!(
                        "resize {} -> {} deferred: {} of it is in use and only {} of memory is available to take it back",
                        human(f.size),
                        human(want),
                        human(a.used),
                        human(s.memory.available)
                    ));
                }
                Some(_) => {
                    if carrying.is_some() {
                        plan.notes.push(format!(
                            "{} from an interrupted resize carries swap while {} is rebuilt",
                            helper.display(),
                            path.display()
                        ));
                    } else {
                        plan.notes.push(format!(
                            "resize {} -> {} through {}: swap stays on throughout",
                            human(f.size),
                            human(want),
                            helper.display()
                        ));
                        plan.steps.extend([
                            Step::Create {
                                file: Which::Helper,
                                size: want,
                                nocow,
                            },
                            Step::Mkswap(Which::Helper),
                            Step::Swapon(Which::Helper),
                        ]);
                        carrying = Some(want);
                    }
                    plan.steps.extend([
                        Step::Swapoff(Which::Main),
                        Step::Remove {
                            file: Which::Main,
                            size: f.size,
                        },
                        Step::Create {
                            file: Which::Main,
                            size: want,
                            nocow,
                        },
                    ]);
                    fresh = true;
                }
                // Not on: nothing to keep up while it is rebuilt.
                None => {
                    plan.steps.extend([
                        Step::Remove {
                            file: Which::Main,
                            size: f.size,
                        },
                        Step::Create {
                            file: Which::Main,
                            size: want,
                            nocow,
                        },
                    ]);
                    fresh = true;
                }
            },
            Some(_) => {}
        }
        if let Some(f) = &s.file
            && !fresh
            && (f.mode != 0o600 || f.uid != 0 || f.gid != 0)
        {
            plan.steps.push(Step::FixPermissions {
                mode: f.mode,
                uid: f.uid,
            });
        }
        let signed = s.file.as_ref().is_some_and(|f| f.has_signature);
        if fresh || (!signed && ours.is_none()) {
            plan.steps.push(Step::Mkswap(Which::Main));
        }
        if fresh || ours.is_none() {
            plan.steps.push(Step::Swapon(Which::Main));
        }
        // Our file is on by now; only then may the temporary one go.
        if let Some(size) = carrying {
            match helper_on {
                Some(a) if a.used + RESIZE_MARGIN > s.memory.available => {
                    plan.notes.push(format!(
                        "removing {} deferred: {} of it is in use and only {} of memory is available to take it back",
                        helper.display(),
                        human(a.used),
                        human(s.memory.available)
                    ));
                }
                _ => plan.steps.extend([
                    Step::Swapoff(Which::Helper),
                    Step::Remove {
                        file: Which::Helper,
                        size,
                    },
                ]),
            }
        }
        let fstab = ensure_fstab_line(s.fstab.as_deref().unwrap_or(""), path);
        if s.fstab.as_deref() != Some(fstab.as_str()) {
            plan.steps.push(Step::WriteFstab {
                old: s.fstab.clone(),
                new: fstab,
            });
        }
        let need = peak_allocation(&plan.steps);
        if need > s.free {
            let how = if plan.steps.iter().any(|st| {
                matches!(
                    st,
                    Step::Create {
                        file: Which::Helper,
                        ..
                    }
                )
            }) {
                format!(
                    "resizing {} to {} builds the new swap beside the old so the box keeps swap throughout, and needs {} free at once",
                    path.display(),
                    human(want),
                    human(need)
                )
            } else {
                format!(
                    "creating {} ({}) needs {} free",
                    path.display(),
                    human(want),
                    human(need)
                )
            };
            bail!(
                "swap.size: {how}, but its filesystem has only {} available; free disk space or set a smaller swap.size",
                approx(s.free)
            );
        }
        Ok(plan)
    }

    async fn apply(&self, host: &Host, _s: &State, steps: &[Step]) -> Result<()> {
        for step in steps {
            match step {
                Step::Create { file, size, nocow } => {
                    create(host, &self.file(*file), *size, *nocow).await?
                }
                Step::FixPermissions { .. } => {
                    host.chown(self.path(), 0, 0)?;
                    host.chmod(self.path(), 0o600)?;
                }
                Step::Mkswap(w) => {
                    host.run(&Cmd::new("mkswap").arg(self.file(*w).to_string_lossy()))
                        .await?;
                }
                Step::Swapon(w) => host.swapon(&self.file(*w))?,
                Step::Swapoff(w) => {
                    let p = self.file(*w);
                    // Already off (by hand, between plan and apply) is what this step wants.
                    if parse_proc_swaps(&host.read_text(Path::new(PROC_SWAPS))?.unwrap_or_default())
                        .iter()
                        .any(|a| a.path == p)
                    {
                        host.swapoff(&p)?;
                    }
                }
                Step::Remove { file, .. } => host.remove_file(&self.file(*file))?,
                Step::WriteFstab { new, .. } => {
                    host.write(
                        Path::new(FSTAB),
                        new.as_bytes(),
                        FileSpec::root(0o644),
                        true,
                    )?;
                }
            }
        }
        Ok(())
    }

    fn checks(&self, s: &State) -> Vec<Check> {
        let total: u64 = s.active.iter().map(|a| a.size + PAGE).sum();
        let want = self.cfg.size.0;
        let level = if total >= want {
            Level::Pass
        } else if total > 0 {
            Level::Warn
        } else {
            Level::Fail
        };
        let detail = if s.active.is_empty() {
            "no swap active".to_string()
        } else {
            let list: Vec<String> = s
                .active
                .iter()
                .map(|a| format!("{} {}", a.path.display(), human(a.size + PAGE)))
                .collect();
            format!("{} (wanted {})", list.join(", "), human(want))
        };
        let in_fstab = s
            .fstab
            .as_deref()
            .is_some_and(|f| ensure_fstab_line(f, self.path()) == f);
        let mut checks = vec![Check::new(
            "swap active",
            level,
            detail,
            "sapari-agent converge --only swap (a swapless box OOMs when FFmpeg spikes)",
        )];
        if s.active.iter().any(|a| a.path == self.path()) {
            checks.push(Check::new(
                "swap in fstab",
                if in_fstab { Level::Pass } else { Level::Warn },
                if in_fstab {
                    format!("{} persists across reboots", self.path().display())
                } else {
                    format!(
                        "{} is not in {FSTAB}: gone after a reboot",
                        self.path().display()
                    )
                },
                "sapari-agent converge --only swap",
            ));
        }
        checks
    }
}

/// A new swap file: empty, root-only, copy-on-write disabled before any data is written
/// (btrfs only accepts swap files that are NOCOW from the start), then allocated.
async fn create(host: &Host, path: &Path, size: u64, nocow: bool) -> Result<()> {
    host.create_private_file(path)?;
    if nocow {
        host.run(&Cmd::new("chattr").args(["+C", &path.to_string_lossy()]))
            .await?;
    }
    if let Err(e) = host.allocate(path, size) {
        // Leave no half-allocated file behind: a later run would take it for ours.
        let _ = host.remove_file(path);
        return Err(e);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: u64 = 1 << 30;

    fn res() -> Swap {
        Swap::new(&SwapSettings::default())
    }

    fn mem() -> Memory {
        Memory {
            total: 32 * G,
            available: 30 * G,
            swap_total: 0,
            swap_free: 0,
        }
    }

    fn fresh() -> State {
        State {
            active: vec![],
            fstab: Some("UUID=abc / ext4 defaults 0 1\n".into()),
            file: None,
            helper: None,
            fs: FsKind::Ext4,
            memory: mem(),
            free: 100 * G,
        }
    }

    fn ours(size: u64, used: u64) -> ActiveSwap {
        ActiveSwap {
            path: "/swapfile".into(),
            is_file: true,
            size: size - PAGE,
            used,
        }
    }

    fn converged() -> State {
        State {
            active: vec![ours(4 * G, 0)],
            fstab: Some(format!(
                "UUID=abc / ext4 defaults 0 1\n{}\n",
                fstab_line(Path::new("/swapfile"))
            )),
            file: Some(SwapFile {
                size: 4 * G,
                mode: 0o600,
                uid: 0,
                gid: 0,
                has_signature: true,
            }),
            helper: None,
            fs: FsKind::Ext4,
            memory: mem(),
            free: 100 * G,
        }
    }

    #[test]
    fn fresh_box_gets_the_whole_sequence() {
        let p = res().plan(&fresh()).unwrap();
        assert_eq!(p.steps.len(), 4);
        assert_eq!(
            p.steps[0],
            Step::Create {
                file: Which::Main,
                size: 4 * G,
                nocow: false
            }
        );
        assert_eq!(p.steps[1], Step::Mkswap(Which::Main));
        assert_eq!(p.steps[2], Step::Swapon(Which::Main));
        match &p.steps[3] {
            Step::WriteFstab { new, .. } => {
                assert_eq!(
                    new,
                    "UUID=abc / ext4 defaults 0 1\n/swapfile none swap sw,nofail 0 0\n"
                )
            }
            s => panic!("{s:?}"),
        }
    }

    #[test]
    fn converged_plans_nothing() {
        let p = res().plan(&converged()).unwrap();
        assert!(p.steps.is_empty(), "{:?}", p.steps);
    }

    #[test]
    fn btrfs_creates_nocow() {
        let mut s = fresh();
        s.fs = FsKind::Btrfs;
        assert_eq!(
            res().plan(&s).unwrap().steps[0],
            Step::Create {
                file: Which::Main,
                size: 4 * G,
                nocow: true
            }
        );
    }

    #[test]
    fn overlay_or_tmpfs_is_a_clear_error() {
        let mut s = fresh();
        s.fs = FsKind::NoSwap("overlayfs");
        let e = res().plan(&s).unwrap_err().to_string();
        assert!(e.contains("overlayfs") && e.contains("swap.path"), "{e}");
    }

    #[test]
    fn existing_swap_of_sufficient_size_is_respected() {
        let mut s = fresh();
        s.active = vec![ActiveSwap {
            path: "/swap.img".into(),
            is_file: true,
            size: 4 * G - PAGE,
            used: 0,
        }];
        let p = res().plan(&s).unwrap();
        assert!(p.steps.is_empty());
        assert!(p.notes[0].contains("/swap.img"));
        // Too small: our file is still made.
        s.active[0].size = G - PAGE;
        assert!(!res().plan(&s).unwrap().steps.is_empty());
        // Not accepted when the config says so.
        let cfg = SwapSettings {
            accept_existing: false,
            ..SwapSettings::default()
        };
        s.active[0].size = 8 * G;
        assert!(!Swap::new(&cfg).plan(&s).unwrap().steps.is_empty());
    }

    #[test]
    fn resize_only_without_memory_pressure() {
        let mut s = converged();
        s.file.as_mut().unwrap().size = 2 * G;
        s.active = vec![ours(2 * G, G)];
        let p = res().plan(&s).unwrap();
        assert!(
            p.steps.contains(&Step::Swapoff(Which::Main)),
            "{:?}",
            p.steps
        );
        s.memory.available = G;
        let p = res().plan(&s).unwrap();
        assert!(p.steps.is_empty(), "{:?}", p.steps);
        assert!(p.notes[0].contains("deferred"), "{:?}", p.notes);
    }

    const HELPER: &str = "/swapfile.sapari-agent-new";

    /// What the steps do to a box, as the planner sees it afterwards.
    fn simulate(s: &State, steps: &[Step]) -> State {
        let mut s = s.clone();
        let name = |w: Which| match w {
            Which::Main => PathBuf::from("/swapfile"),
            Which::Helper => PathBuf::from(HELPER),
        };
        let size_of = |s: &State, w: Which| match w {
            Which::Main => s.file.as_ref().map(|f| f.size),
            Which::Helper => s.helper,
        };
        for step in steps {
            match step {
                Step::Create { file, size, .. } => {
                    assert!(!s.active.iter().any(|a| a.path == name(*file)), "{step:?}");
                    s.free -= size - size_of(&s, *file).unwrap_or(0);
                    match file {
                        Which::Main => {
                            s.file = Some(SwapFile {
                                size: *size,
                                mode: 0o600,
                                uid: 0,
                                gid: 0,
                                has_signature: false,
                            })
                        }
                        Which::Helper => s.helper = Some(*size),
                    }
                }
                Step::Remove { file, size } => {
                    assert!(
                        !s.active.iter().any(|a| a.path == name(*file)),
                        "EPERM: {step:?}"
                    );
                    assert_eq!(size_of(&s, *file), Some(*size), "{step:?}");
                    s.free += size;
                    match file {
                        Which::Main => s.file = None,
                        Which::Helper => s.helper = None,
                    }
                }
                Step::Mkswap(Which::Main) => s.file.as_mut().unwrap().has_signature = true,
                Step::Mkswap(Which::Helper) => assert!(s.helper.is_some()),
                Step::Swapon(w) => {
                    let size = size_of(&s, *w).expect("swapon of a missing file");
                    s.active.push(ActiveSwap {
                        path: name(*w),
                        is_file: true,
                        size: size - PAGE,
                        used: 0,
                    });
                }
                Step::Swapoff(w) => s.active.retain(|a| a.path != name(*w)),
                Step::FixPermissions { .. } => {
                    let f = s.file.as_mut().unwrap();
                    (f.mode, f.uid, f.gid) = (0o600, 0, 0);
                }
                Step::WriteFstab { new, .. } => s.fstab = Some(new.clone()),
            }
        }
        s
    }

    fn assert_swap_stays_on(s: &State, steps: &[Step]) {
        for n in 0..=steps.len() {
            assert!(
                !simulate(s, &steps[..n]).active.is_empty(),
                "no swap after {:?}",
                &steps[..n]
            );
        }
    }

    fn resizing() -> State {
        let mut s = converged();
        s.file.as_mut().unwrap().size = 2 * G;
        s.active = vec![ours(2 * G, G)];
        s
    }

    #[test]
    fn resize_builds_the_new_file_beside_the_old_one_first() {
        let s = resizing();
        let p = res().plan(&s).unwrap();
        let h = Which::Helper;
        let m = Which::Main;
        assert_eq!(
            p.steps,
            vec![
                Step::Create {
                    file: h,
                    size: 4 * G,
                    nocow: false
                },
                Step::Mkswap(h),
                Step::Swapon(h),
                Step::Swapoff(m),
                Step::Remove {
                    file: m,
                    size: 2 * G
                },
                Step::Create {
                    file: m,
                    size: 4 * G,
                    nocow: false
                },
                Step::Mkswap(m),
                Step::Swapon(m),
                Step::Swapoff(h),
                Step::Remove {
                    file: h,
                    size: 4 * G
                },
            ]
        );
        assert_swap_stays_on(&s, &p.steps);
        let done = simulate(&s, &p.steps);
        assert!(res().plan(&done).unwrap().steps.is_empty());
        assert_eq!(done.helper, None);
        assert_eq!(done.free, s.free - 2 * G);
        // fstab is never pointed at the temporary file.
        assert!(
            !p.steps
                .iter()
                .any(|st| matches!(st, Step::WriteFstab { .. }))
        );
    }

    /// Killed after any step of a resize (or halfway through allocating either file), the
    /// next plan finishes it without a moment without swap, and the one after has nothing
    /// left to do.
    #[test]
    fn a_resize_killed_at_any_point_is_finished_by_the_next_run() {
        let s = resizing();
        let steps = res().plan(&s).unwrap().steps;
        let mut crashed: Vec<State> = (0..=steps.len())
            .map(|n| simulate(&s, &steps[..n]))
            .collect();
        for (n, step) in steps.iter().enumerate() {
            if let Step::Create { file, .. } = step {
                let mut partial = simulate(&s, &steps[..n]);
                match file {
                    Which::Main => {
                        partial.file = Some(SwapFile {
                            size: G,
                            mode: 0o600,
                            uid: 0,
                            gid: 0,
                            has_signature: false,
                        })
                    }
                    Which::Helper => partial.helper = Some(G),
                }
                partial.free -= G;
                crashed.push(partial);
            }
        }
        for c in &crashed {
            let p = res()
                .plan(c)
                .unwrap_or_else(|e| panic!("{e}: {:?} {:?}", c.file, c.active));
            assert_swap_stays_on(c, &p.steps);
            let done = simulate(c, &p.steps);
            assert_eq!(done.file.as_ref().map(|f| f.size), Some(4 * G), "{c:?}");
            assert_eq!(done.helper, None, "temporary file left: {:?}", p.steps);
            assert_eq!(done.active.len(), 1, "{:?}", done.active);
            assert!(
                res().plan(&done).unwrap().steps.is_empty(),
                "after {:?}",
                p.steps
            );
        }
    }

    #[test]
    fn leftover_temporary_file_is_removed_or_reused() {
        // Inactive (killed before its swapon, or rebooted since): removed, nothing else.
        let mut s = converged();
        s.helper = Some(G);
        let p = res().plan(&s).unwrap();
        assert_eq!(
            p.steps,
            vec![Step::Remove {
                file: Which::Helper,
                size: G
            }]
        );
        assert!(p.notes[0].contains(HELPER), "{:?}", p.notes);
        // Active while ours still has the old size: it carries swap, no second one is made.
        let mut s = resizing();
        s.helper = Some(4 * G);
        s.active.push(ActiveSwap {
            path: HELPER.into(),
            is_file: true,
            size: 4 * G - PAGE,
            used: 0,
        });
        let p = res().plan(&s).unwrap();
        assert_eq!(p.steps[0], Step::Swapoff(Which::Main));
        assert!(
            !p.steps.contains(&Step::Swapon(Which::Helper)),
            "{:?}",
            p.steps
        );
        assert_eq!(
            &p.steps[p.steps.len() - 2..],
            [
                Step::Swapoff(Which::Helper),
                Step::Remove {
                    file: Which::Helper,
                    size: 4 * G
                }
            ]
        );
    }

    #[test]
    fn temporary_file_is_not_taken_for_existing_swap() {
        // Killed after our file was removed: the temporary swap alone is enough in size,
        // but accepting it would leave fstab naming a file that does not exist.
        let mut s = converged();
        s.file = None;
        s.helper = Some(4 * G);
        s.active = vec![ActiveSwap {
            path: HELPER.into(),
            is_file: true,
            size: 4 * G - PAGE,
            used: 0,
        }];
        let p = res().plan(&s).unwrap();
        assert_eq!(
            p.steps[0],
            Step::Create {
                file: Which::Main,
                size: 4 * G,
                nocow: false
            }
        );
        assert!(p.steps.contains(&Step::Swapoff(Which::Helper)));
    }

    #[test]
    fn busy_temporary_swap_stays_until_memory_allows() {
        let mut s = converged();
        s.helper = Some(4 * G);
        s.active.push(ActiveSwap {
            path: HELPER.into(),
            is_file: true,
            size: 4 * G - PAGE,
            used: 2 * G,
        });
        s.memory.available = G;
        let p = res().plan(&s).unwrap();
        assert!(p.steps.is_empty(), "{:?}", p.steps);
        assert!(p.notes[0].contains("deferred"), "{:?}", p.notes);
        s.memory.available = 8 * G;
        assert_eq!(
            res().plan(&s).unwrap().steps[0],
            Step::Swapoff(Which::Helper)
        );
    }

    #[test]
    fn not_enough_disk_for_both_files_is_refused_naming_the_sizes() {
        // 2G -> 4G: the old file plus the 4G temporary one, then the temporary one plus
        // the new one: 6G beyond what the old file holds.
        let mut s = resizing();
        s.free = 5 * G + G / 2;
        let e = res().plan(&s).unwrap_err().to_string();
        assert!(
            e.contains("swap.size") && e.contains("6G") && e.contains("5.5G"),
            "{e}"
        );
        assert!(e.contains("/swapfile") && e.contains("beside"), "{e}");
        s.free = 6 * G;
        assert!(res().plan(&s).is_ok());
        // Shrinking needs only the temporary file: the old one is removed first.
        let mut s = converged();
        s.file.as_mut().unwrap().size = 8 * G;
        s.active = vec![ours(8 * G, 0)];
        s.free = 4 * G;
        assert!(res().plan(&s).is_ok());
        s.free = 4 * G - 1;
        assert!(res().plan(&s).is_err());
        // A plain create is checked too.
        let mut s = fresh();
        s.free = G;
        let e = res().plan(&s).unwrap_err().to_string();
        assert!(e.contains("creating /swapfile (4G) needs 4G"), "{e}");
    }

    #[test]
    fn plan_output_names_the_files() {
        let c = Step::Create {
            file: Which::Main,
            size: 64 << 20,
            nocow: false,
        }
        .change();
        assert_eq!(
            (c.what.as_str(), c.from.as_deref(), c.to.as_deref()),
            ("swap file", Some("absent"), Some("64M"))
        );
        let c = Step::Swapoff(Which::Helper).change();
        assert_eq!(c.what, "temporary swap active");
        assert_eq!(
            helper_path(Path::new("/mnt/my swap")),
            PathBuf::from("/mnt/my swap.sapari-agent-new")
        );
    }

    #[test]
    fn loose_permissions_and_missing_signature_are_fixed() {
        let mut s = converged();
        s.file.as_mut().unwrap().mode = 0o644;
        assert_eq!(
            res().plan(&s).unwrap().steps,
            vec![Step::FixPermissions {
                mode: 0o644,
                uid: 0
            }]
        );
        let mut s = converged();
        s.active.clear();
        s.file.as_mut().unwrap().has_signature = false;
        assert_eq!(
            res().plan(&s).unwrap().steps,
            vec![Step::Mkswap(Which::Main), Step::Swapon(Which::Main)]
        );
    }

    #[test]
    fn disabled_does_nothing() {
        let cfg = SwapSettings {
            enabled: false,
            ..SwapSettings::default()
        };
        assert!(Swap::new(&cfg).plan(&fresh()).unwrap().steps.is_empty());
    }

    #[test]
    fn fstab_never_duplicates_and_fixes_old_runbook_line() {
        let p = Path::new("/swapfile");
        let once = ensure_fstab_line("/dev/sda1 / ext4 defaults 0 1\n", p);
        assert_eq!(ensure_fstab_line(&once, p), once);
        // The runbook's manual line lacked nofail: rewritten in place, not appended.
        let old = "/swapfile none swap sw 0 0\n/dev/sda1 / ext4 defaults 0 1\n";
        assert_eq!(
            ensure_fstab_line(old, p),
            "/swapfile none swap sw,nofail 0 0\n/dev/sda1 / ext4 defaults 0 1\n"
        );
        let dup = "/swapfile none swap sw 0 0\n/swapfile none swap sw 0 0\n";
        assert_eq!(
            ensure_fstab_line(dup, p),
            "/swapfile none swap sw,nofail 0 0\n"
        );
    }

    #[test]
    fn fstab_missing_trailing_newline_and_comments() {
        let p = Path::new("/swapfile");
        assert_eq!(
            ensure_fstab_line("/dev/sda1 / ext4 defaults 0 1", p),
            "/dev/sda1 / ext4 defaults 0 1\n/swapfile none swap sw,nofail 0 0\n"
        );
        assert_eq!(
            ensure_fstab_line("", p),
            "/swapfile none swap sw,nofail 0 0\n"
        );
        let commented = "# /swapfile none swap sw 0 0\n";
        assert_eq!(
            ensure_fstab_line(commented, p),
            "# /swapfile none swap sw 0 0\n/swapfile none swap sw,nofail 0 0\n"
        );
        // Extra whitespace in an otherwise identical line is left alone.
        let spaced = "/swapfile\tnone\tswap\tsw,nofail\t0\t0\n";
        assert_eq!(ensure_fstab_line(spaced, p), spaced);
    }

    #[test]
    fn proc_swaps_parsing() {
        let t = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n/swap.img                               file\t\t4194300\t\t1024\t\t-2\n/dev/vda3 partition 1048572 0 -3\n/mnt/my\\040swap file 100 0 -4\n";
        let a = parse_proc_swaps(t);
        assert_eq!(a.len(), 3);
        assert_eq!(a[0].size, 4194300 * 1024);
        assert_eq!(a[0].used, 1024 * 1024);
        assert!(!a[1].is_file);
        assert_eq!(a[2].path, PathBuf::from("/mnt/my swap"));
    }

    #[test]
    fn checks() {
        let c = res().checks(&fresh());
        assert_eq!(c[0].level, Level::Fail);
        let c = res().checks(&converged());
        assert_eq!(c[0].level, Level::Pass);
        assert_eq!(c[1].level, Level::Pass);
    }
}
