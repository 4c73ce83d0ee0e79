//! `swap`: the runbook's 4G `/swapfile` (0600, mkswap, swapon, a `nofail` fstab line),
//! without disturbing swap the machine already has, and only resized when the swap being
//! replaced is not needed by current memory pressure.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
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
    pub fs: FsKind,
    pub memory: Memory,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    Create { size: u64, nocow: bool },
    Resize { from: u64, to: u64, nocow: bool },
    FixPermissions { mode: u32, uid: u32 },
    Mkswap,
    Swapon,
    WriteFstab { old: Option<String>, new: String },
}

fn human(bytes: u64) -> String {
    Size(bytes).to_string()
}

impl Describe for Step {
    fn change(&self) -> Change {
        match self {
            Step::Create { size, .. } => {
                Change::value("swap file", Some("absent".into()), Some(human(*size)))
            }
            Step::Resize { from, to, .. } => {
                Change::value("swap file size", Some(human(*from)), Some(human(*to)))
            }
            Step::FixPermissions { mode, uid } => Change::value(
                "swap file owner/mode",
                Some(format!("uid {uid} mode {mode:04o}")),
                Some("uid 0 mode 0600".into()),
            ),
            Step::Mkswap => {
                Change::value("swap signature", Some("none".into()), Some("mkswap".into()))
            }
            Step::Swapon => Change::value("swap active", Some("no".into()), Some("yes".into())),
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
        Ok(State {
            active,
            fstab: host.read_text(Path::new(FSTAB))?,
            file,
            fs: host.fs_type(path.parent().unwrap_or(Path::new("/")))?,
            memory: host.memory()?,
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
        let want = self.cfg.size.0;
        let ours = s.active.iter().find(|a| a.path == path);
        let others: Vec<&ActiveSwap> = s.active.iter().filter(|a| a.path != path).collect();
        let others_total: u64 = others.iter().map(|a| a.size + PAGE).sum();
        if ours.is_none() && self.cfg.accept_existing && !others.is_empty() && others_total >= want
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
        let mut fresh = false;
        match &s.file {
            None => {
                plan.steps.push(Step::Create { size: want, nocow });
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
                _ => {
                    plan.steps.push(Step::Resize {
                        from: f.size,
                        to: want,
                        nocow,
                    });
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
            plan.steps.push(Step::Mkswap);
        }
        if fresh || ours.is_none() {
            plan.steps.push(Step::Swapon);
        }
        let fstab = ensure_fstab_line(s.fstab.as_deref().unwrap_or(""), path);
        if s.fstab.as_deref() != Some(fstab.as_str()) {
            plan.steps.push(Step::WriteFstab {
                old: s.fstab.clone(),
                new: fstab,
            });
        }
        Ok(plan)
    }

    async fn apply(&self, host: &Host, _s: &State, steps: &[Step]) -> Result<()> {
        let path = self.path();
        for step in steps {
            match step {
                Step::Resize { to, nocow, .. } => {
                    if parse_proc_swaps(&host.read_text(Path::new(PROC_SWAPS))?.unwrap_or_default())
                        .iter()
                        .any(|a| a.path == path)
                    {
                        host.swapoff(path)?;
                    }
                    create(host, path, *to, *nocow).await?;
                }
                Step::Create { size, nocow } => create(host, path, *size, *nocow).await?,
                Step::FixPermissions { .. } => {
                    host.chown(path, 0, 0)?;
                    host.chmod(path, 0o600)?;
                }
                Step::Mkswap => {
                    host.run(&Cmd::new("mkswap").arg(path.to_string_lossy()))
                        .await?;
                }
                Step::Swapon => host.swapon(path)?,
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
            fs: FsKind::Ext4,
            memory: mem(),
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
            fs: FsKind::Ext4,
            memory: mem(),
        }
    }

    #[test]
    fn fresh_box_gets_the_whole_sequence() {
        let p = res().plan(&fresh()).unwrap();
        assert_eq!(p.steps.len(), 4);
        assert_eq!(
            p.steps[0],
            Step::Create {
                size: 4 * G,
                nocow: false
            }
        );
        assert_eq!(p.steps[1], Step::Mkswap);
        assert_eq!(p.steps[2], Step::Swapon);
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
            matches!(p.steps[0], Step::Resize { from, to, .. } if from == 2 * G && to == 4 * G)
        );
        s.memory.available = G;
        let p = res().plan(&s).unwrap();
        assert!(p.steps.is_empty(), "{:?}", p.steps);
        assert!(p.notes[0].contains("deferred"), "{:?}", p.notes);
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
            vec![Step::Mkswap, Step::Swapon]
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
