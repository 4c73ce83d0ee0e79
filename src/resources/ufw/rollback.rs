//! ufw's side of commit confirmed: the files kept, whether they have it switched on, and the
//! commands that put its running state back.

use std::fmt;
use std::path::Path;

use anyhow::{Result, bail};
use async_trait::async_trait;

use super::{STATE_FILES, UFW_CONF, shell_var};
use crate::config::Config;
use crate::engine::Name;
use crate::host::{Cmd, Host};
use crate::resources::guarded::{
    FileSnap, Guarded, Installed, Snapshot, contents_differ, file_snap, put_back, refile,
};

/// ufw.conf's `ENABLED=yes` among the saved files.
pub fn enabled(files: &[FileSnap]) -> bool {
    files
        .iter()
        .find(|f| f.path == Path::new(UFW_CONF))
        .and_then(|f| f.content.as_deref())
        .and_then(|t| shell_var(t, "ENABLED"))
        .is_some_and(|v| v == "yes")
}

/// ufw's rules, defaults and switch, as they are now.
pub fn capture(host: &Host) -> Result<Vec<FileSnap>> {
    STATE_FILES
        .iter()
        .map(|p| file_snap(host, Path::new(p)))
        .collect()
}

/// What is kept of ufw (the snapshot's `ufw_installed` and `ufw`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UfwSnap {
    pub installed: bool,
    pub files: Vec<FileSnap>,
}

impl UfwSnap {
    fn on(&self) -> bool {
        self.installed && enabled(&self.files)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Disable,
    Write(FileSnap),
    Reload,
    /// ufw must end up on or off as it was.
    Check {
        want_on: bool,
    },
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Disable => f.write_str("ufw --force disable"),
            Step::Write(s) => write!(f, "putting back {}", s.path.display()),
            Step::Reload => f.write_str("ufw reload"),
            Step::Check { .. } => f.write_str("checking ufw's state"),
        }
    }
}

/// How to bring ufw back: off first when it was off (so no moment runs the new rules with
/// the old switch), then the files, then a reload that loads them when it was on.
pub fn restore_order(saved: &UfwSnap, now: &UfwSnap) -> Vec<Step> {
    let is_on = now.on();
    if !saved.installed {
        return if is_on { vec![Step::Disable] } else { vec![] };
    }
    let was_on = enabled(&saved.files);
    let mut plan = Vec::new();
    if !was_on && is_on {
        plan.push(Step::Disable);
    }
    for (s, n) in saved.files.iter().zip(&now.files) {
        if s.content.is_some() && s.content != n.content {
            plan.push(Step::Write(s.clone()));
        }
    }
    if was_on {
        plan.push(Step::Reload);
    }
    plan
}

pub struct Ufw;

#[async_trait]
impl Guarded for Ufw {
    const NAME: Name = Name::Ufw;
    type Snapshot = UfwSnap;
    type Step = Step;

    fn slot(rec: &Snapshot) -> UfwSnap {
        UfwSnap {
            installed: rec.ufw_installed,
            files: rec.ufw.clone(),
        }
    }

    fn put(rec: &mut Snapshot, s: UfwSnap) {
        rec.ufw_installed = s.installed;
        rec.ufw = s.files;
    }

    async fn capture(host: &Host, _: &Config) -> Result<UfwSnap> {
        Ok(UfwSnap {
            installed: host.program_exists("ufw"),
            files: capture(host)?,
        })
    }

    async fn recapture(host: &Host, saved: &UfwSnap) -> Result<UfwSnap> {
        Ok(UfwSnap {
            installed: host.program_exists("ufw"),
            files: refile(host, &saved.files)?,
        })
    }

    fn differs(saved: &UfwSnap, now: &UfwSnap) -> bool {
        if saved.installed {
            contents_differ(&saved.files, &now.files)
        } else {
            // Installed by the change: restoring means turning it off, not deleting its files.
            now.on()
        }
    }

    fn restore_plan(saved: &UfwSnap, now: &UfwSnap, _: &dyn Installed) -> Vec<Step> {
        let mut plan = restore_order(saved, now);
        let want_on = saved.on();
        if now.installed || want_on {
            plan.push(Step::Check { want_on });
        }
        plan
    }

    async fn restore(host: &Host, step: &Step) -> Result<()> {
        match step {
            Step::Disable => disable(host).await,
            Step::Write(f) => put_back(host, f),
            Step::Reload => reload(host).await,
            Step::Check { want_on } => check(host, *want_on).await,
        }
    }
}

pub async fn disable(host: &Host) -> Result<()> {
    host.run(&Cmd::new("ufw").args(["--force", "disable"]))
        .await
        .map(drop)
}

pub async fn reload(host: &Host) -> Result<()> {
    host.run(&Cmd::new("ufw").arg("reload")).await.map(drop)
}

/// ufw must end up on or off as it was.
pub async fn check(host: &Host, want_on: bool) -> Result<()> {
    let st = host.query(&Cmd::new("ufw").arg("status")).await?;
    let on = st.stdout.contains("Status: active");
    if on != want_on {
        bail!(
            "ufw reports `{}` after the restore, expected {}",
            st.stdout.lines().next().unwrap_or("").trim(),
            if want_on { "active" } else { "inactive" }
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::guarded::read_as;

    /// ufw's files as `capture` reads them.
    fn captured(installed: bool, rules: Option<&str>, switch: Option<&str>) -> UfwSnap {
        let files = STATE_FILES
            .iter()
            .map(|p| read_as(p, if *p == UFW_CONF { switch } else { rules }))
            .collect();
        UfwSnap { installed, files }
    }

    #[test]
    fn its_slots_are_the_snapshots_ufw_fields() {
        let s = captured(true, Some("r\n"), Some("ENABLED=yes\n"));
        let mut rec = Snapshot::default();
        Ufw::put(&mut rec, s.clone());
        assert!(rec.ufw_installed);
        assert_eq!(rec.ufw, s.files);
        assert_eq!(Ufw::slot(&rec), s);
    }

    #[test]
    fn new_rules_differ_and_are_written_then_reloaded() {
        let saved = captured(true, Some("allow 22\n"), Some("ENABLED=yes\n"));
        assert!(!Ufw::differs(&saved, &saved));
        assert_eq!(
            Ufw::restore_plan(&saved, &saved, &true),
            [Step::Reload, Step::Check { want_on: true }]
        );
        let now = captured(true, Some("allow 443\n"), Some("ENABLED=yes\n"));
        assert!(Ufw::differs(&saved, &now));
        let plan = Ufw::restore_plan(&saved, &now, &true);
        // The three rule and default files, not the unchanged switch.
        assert_eq!(plan.len(), 5, "{plan:?}");
        assert_eq!(plan[0], Step::Write(saved.files[0].clone()));
        assert_eq!(plan[0].to_string(), "putting back /etc/ufw/user.rules");
        assert_eq!(plan[3].to_string(), "ufw reload");
        assert_eq!(plan[4].to_string(), "checking ufw's state");
    }

    #[test]
    fn ufw_installed_by_the_change_differs_only_once_switched_on() {
        let saved = captured(false, None, None);
        let off = captured(true, Some("x\n"), Some("ENABLED=no\n"));
        let on = captured(true, Some("x\n"), Some("ENABLED=yes\n"));
        assert!(!Ufw::differs(&saved, &off));
        assert!(Ufw::differs(&saved, &on));
        assert_eq!(
            Ufw::restore_plan(&saved, &on, &true),
            [Step::Disable, Step::Check { want_on: false }]
        );
        assert_eq!(Step::Disable.to_string(), "ufw --force disable");
        // Neither before nor now: nothing to run.
        assert!(Ufw::restore_plan(&saved, &saved, &true).is_empty());
    }

    #[test]
    fn off_first_then_the_files_then_a_reload_when_it_was_on() {
        // It was on: files back, then a reload loads them.
        let saved = captured(true, Some("old\n"), Some("ENABLED=yes\n"));
        let mut now = saved.clone();
        now.files[0].content = Some("new\n".into());
        assert_eq!(
            restore_order(&saved, &now),
            [Step::Write(saved.files[0].clone()), Step::Reload]
        );
        // It was off and the change enabled it: off first, then the files.
        let saved = captured(true, Some("old\n"), Some("ENABLED=no\n"));
        let mut now = captured(true, Some("old\n"), Some("ENABLED=yes\n"));
        now.files[0].content = Some("new\n".into());
        assert_eq!(
            restore_order(&saved, &now),
            [
                Step::Disable,
                Step::Write(saved.files[0].clone()),
                Step::Write(saved.files[3].clone())
            ]
        );
    }

    #[test]
    fn the_switch_is_read_from_its_conf() {
        assert!(enabled(&captured(true, None, Some("ENABLED=yes\n")).files));
        assert!(!enabled(&captured(true, None, Some("ENABLED=no\n")).files));
        assert!(!enabled(&captured(true, None, None).files));
        assert!(!enabled(&[]));
    }
}
