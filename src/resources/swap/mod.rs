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

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use async_trait::async_trait;

use crate::config::{Size, SwapSettings};
use crate::engine::Name;
use crate::engine::{Change, Check, Describe, Level, Plan, Resource};
use crate::host::files::{self, Kind};
use crate::host::sys::{self, FsKind, Memory};
use crate::host::{Cmd, FileSpec, Host};

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
    pub spec: FileSpec,
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

/// One plan being built, in the order its steps run: what is on now, and what the steps so
/// far leave behind.
struct Planning<'a> {
    s: &'a State,
    path: &'a Path,
    helper: PathBuf,
    want: u64,
    accept: bool,
    /// swap.path, when it is on.
    ours: Option<&'a ActiveSwap>,
    /// The temporary file, when it is on.
    helper_on: Option<&'a ActiveSwap>,
    /// Swap the machine has besides our two files.
    others: Vec<&'a ActiveSwap>,
    nocow: bool,
    /// The temporary file's size while it is on at this point of the plan.
    carrying: Option<u64>,
    /// swap.path is (re)created by this plan.
    fresh: bool,
    plan: Plan<Step>,
}

impl<'a> Planning<'a> {
    fn new(swap: &'a Swap, s: &'a State, plan: Plan<Step>) -> Self {
        let path = swap.path();
        let helper = helper_path(path);
        let ours = s.active.iter().find(|a| a.path == path);
        let helper_on = s.active.iter().find(|a| a.path == helper);
        let others = s
            .active
            .iter()
            .filter(|a| a.path != path && a.path != helper)
            .collect();
        let helper_size = s.helper.or(helper_on.map(|a| a.size + PAGE)).unwrap_or(0);
        Self {
            s,
            path,
            helper,
            want: swap.cfg.size.0,
            accept: swap.cfg.accept_existing,
            ours,
            helper_on,
            others,
            nocow: s.fs == FsKind::Btrfs,
            carrying: helper_on.map(|_| helper_size),
            fresh: false,
            plan,
        }
    }

    /// Settle for the machine's other swap when swap.accept_existing allows and it is
    /// enough; true when the plan ends there.
    fn accept_existing(&mut self) -> bool {
        let others_total: u64 = self.others.iter().map(|a| a.size + PAGE).sum();
        // A temporary file means a resize of our file was under way: finish it rather than
        // settle for other swap.
        let mid_resize = self.s.helper.is_some() || self.helper_on.is_some();
        let accepted = self.ours.is_none()
            && !mid_resize
            && self.accept
            && !self.others.is_empty()
            && others_total >= self.want;
        if accepted {
            let names: Vec<String> = self
                .others
                .iter()
                .map(|a| format!("{} ({})", a.path.display(), human(a.size + PAGE)))
                .collect();
            self.plan.notes.push(format!(
                "existing swap accepted: {} (swap.accept_existing)",
                names.join(", ")
            ));
        }
        accepted
    }

    fn check_filesystem(&self) -> Result<()> {
        if self.ours.is_none()
            && let FsKind::NoSwap(kind) = &self.s.fs
        {
            bail!(
                "swap.path {} is on {kind}, which cannot hold swap; set swap.path to a file on ext4, xfs or btrfs",
                self.path.display()
            );
        }
        Ok(())
    }

    fn drop_stale_helper(&mut self) {
        if self.helper_on.is_none()
            && let Some(size) = self.s.helper
        {
            // Killed before its swapon, or a reboot since: it may be half allocated and is
            // never worth trusting.
            self.plan.notes.push(format!(
                "{} is left over from an interrupted resize: removed",
                self.helper.display()
            ));
            self.plan.steps.push(Step::Remove {
                file: Which::Helper,
                size,
            });
        }
    }

    /// swap.path created, resized or kept; its mode and owner put right when kept.
    fn main_file(&mut self) {
        let s = self.s;
        match &s.file {
            None => self.create_main(),
            Some(f) if f.size != self.want => self.resize_main(f),
            Some(_) => {}
        }
        if let Some(f) = &s.file
            && !self.fresh
            && f.spec != FileSpec::root(0o600)
        {
            self.plan.steps.push(Step::FixPermissions {
                mode: f.spec.mode,
                uid: f.spec.uid,
            });
        }
    }

    fn create_main(&mut self) {
        self.plan.steps.push(Step::Create {
            file: Which::Main,
            size: self.want,
            nocow: self.nocow,
        });
        self.fresh = true;
    }

    fn resize_main(&mut self, f: &SwapFile) {
        match self.ours {
            Some(a) if a.used + RESIZE_MARGIN > self.s.memory.available => {
                self.plan.notes.push(format!(
                    "resize {} -> {} deferred: {} of it is in use and only {} of memory is available to take it back",
                    human(f.size),
                    human(self.want),
                    human(a.used),
                    human(self.s.memory.available)
                ));
            }
            Some(_) => {
                self.carry_swap(f);
                self.plan.steps.push(Step::Swapoff(Which::Main));
                self.rebuild_main(f.size);
            }
            // Not on: nothing to keep up while it is rebuilt.
            None => self.rebuild_main(f.size),
        }
    }

    /// Have the temporary file on, at the new size, before swap.path goes off.
    fn carry_swap(&mut self, f: &SwapFile) {
        if self.carrying.is_some() {
            self.plan.notes.push(format!(
                "{} from an interrupted resize carries swap while {} is rebuilt",
                self.helper.display(),
                self.path.display()
            ));
            return;
        }
        self.plan.notes.push(format!(
            "resize {} -> {} through {}: swap stays on throughout",
            human(f.size),
            human(self.want),
            self.helper.display()
        ));
        self.plan.steps.extend([
            Step::Create {
                file: Which::Helper,
                size: self.want,
                nocow: self.nocow,
            },
            Step::Mkswap(Which::Helper),
            Step::Swapon(Which::Helper),
        ]);
        self.carrying = Some(self.want);
    }

    fn rebuild_main(&mut self, old_size: u64) {
        self.plan.steps.push(Step::Remove {
            file: Which::Main,
            size: old_size,
        });
        self.create_main();
    }

    fn activate_main(&mut self) {
        let signed = self.s.file.as_ref().is_some_and(|f| f.has_signature);
        if self.fresh || (!signed && self.ours.is_none()) {
            self.plan.steps.push(Step::Mkswap(Which::Main));
        }
        if self.fresh || self.ours.is_none() {
            self.plan.steps.push(Step::Swapon(Which::Main));
        }
    }

    /// Our file is on by now; only then may the temporary one go.
    fn retire_helper(&mut self) {
        let Some(size) = self.carrying else {
            return;
        };
        match self.helper_on {
            Some(a) if a.used + RESIZE_MARGIN > self.s.memory.available => {
                self.plan.notes.push(format!(
                    "removing {} deferred: {} of it is in use and only {} of memory is available to take it back",
                    self.helper.display(),
                    human(a.used),
                    human(self.s.memory.available)
                ));
            }
            _ => self.plan.steps.extend([
                Step::Swapoff(Which::Helper),
                Step::Remove {
                    file: Which::Helper,
                    size,
                },
            ]),
        }
    }

    fn fstab(&mut self) {
        let fstab = ensure_fstab_line(self.s.fstab.as_deref().unwrap_or(""), self.path);
        if self.s.fstab.as_deref() != Some(fstab.as_str()) {
            self.plan.steps.push(Step::WriteFstab {
                old: self.s.fstab.clone(),
                new: fstab,
            });
        }
    }

    /// Refuse, before anything changes, a plan that needs more disk than is free.
    fn check_disk(&self) -> Result<()> {
        let need = peak_allocation(&self.plan.steps);
        if need <= self.s.free {
            return Ok(());
        }
        let through_helper = self.plan.steps.iter().any(|st| {
            matches!(
                st,
                Step::Create {
                    file: Which::Helper,
                    ..
                }
            )
        });
        let how = if through_helper {
            format!(
                "resizing {} to {} builds the new swap beside the old so the box keeps swap throughout, and needs {} free at once",
                self.path.display(),
                human(self.want),
                human(need)
            )
        } else {
            format!(
                "creating {} ({}) needs {} free",
                self.path.display(),
                human(self.want),
                human(need)
            )
        };
        bail!(
            "swap.size: {how}, but its filesystem has only {} available; free disk space or set a smaller swap.size",
            approx(self.s.free)
        );
    }
}

#[async_trait]
impl Resource for Swap {
    type State = State;
    type Step = Step;

    fn name(&self) -> Name {
        Name::Swap
    }

    fn disabled(&self) -> Option<&'static str> {
        (!self.cfg.enabled).then_some("swap.enabled")
    }

    async fn observe(&self, host: &Host) -> Result<State> {
        let path = self.path();
        let active = parse_proc_swaps(&host.read_text(Path::new(PROC_SWAPS))?.unwrap_or_default());
        let file = match files::inspect(path)? {
            Some(e) if e.kind == Kind::File => {
                let mut sig = [0u8; PAGE as usize];
                let n = files::read_head(path, &mut sig);
                Some(SwapFile {
                    size: e.size,
                    spec: e.spec,
                    has_signature: n == PAGE as usize
                        && &sig[PAGE as usize - 10..] == b"SWAPSPACE2",
                })
            }
            Some(_) => bail!(
                "swap.path {} exists but is not a regular file; remove it or choose another path",
                path.display()
            ),
            None => None,
        };
        let helper_file = helper_path(path);
        let helper = match files::inspect(&helper_file)? {
            Some(e) if e.kind == Kind::File => Some(e.size),
            // Never truncate or remove what we did not make: a symlink there could point
            // anywhere.
            Some(_) => bail!(
                "{} exists but is not a regular file; a swap resize builds its temporary file at that path: move it away",
                helper_file.display()
            ),
            None => None,
        };
        Ok(State {
            active,
            fstab: host.read_text(Path::new(FSTAB))?,
            file,
            helper,
            fs: host.fs_type(path.parent().unwrap_or(Path::new("/")))?,
            memory: host.memory()?,
            free: sys::free_bytes(path)?,
        })
    }

    fn plan(&self, s: &State) -> Result<Plan<Step>> {
        let mut p = Planning::new(self, s, Plan::default());
        if p.accept_existing() {
            return Ok(p.plan);
        }
        p.check_filesystem()?;
        p.drop_stale_helper();
        p.main_file();
        p.activate_main();
        p.retire_helper();
        p.fstab();
        p.check_disk()?;
        Ok(p.plan)
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
mod tests;
