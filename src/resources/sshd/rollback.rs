//! sshd's side of commit confirmed: sshd_config and every drop-in, put back and reloaded with
//! `sshd -t` first, as `converge` does.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::Result;
use async_trait::async_trait;

use super::{DROP_DIR, SSHD_CONFIG};
use crate::config::Config;
use crate::engine::Name;
use crate::host::Host;
use crate::resources::guarded::{
    FileSnap, Guarded, Installed, Snapshot, contents_differ, file_snap, put_back, refile,
};

/// sshd_config, every drop-in, and ours (possibly absent), drop-ins sorted by name.
pub fn paths(host: &Host, drop_in: &str) -> Result<Vec<PathBuf>> {
    Ok(paths_of(host.list_dir(Path::new(DROP_DIR))?, drop_in))
}

/// `paths` over the names the drop-in directory lists.
pub fn paths_of(listed: Vec<String>, drop_in: &str) -> Vec<PathBuf> {
    let dir = Path::new(DROP_DIR);
    let mut v = vec![PathBuf::from(SSHD_CONFIG)];
    let mut names: Vec<String> = listed
        .into_iter()
        .filter(|n| n.ends_with(".conf"))
        .collect();
    if !names.iter().any(|n| n == drop_in) {
        names.push(drop_in.to_string());
        names.sort();
    }
    v.extend(names.into_iter().map(|n| dir.join(n)));
    v
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Put a saved file back (or remove it).
    Write(FileSnap),
    /// `sshd -t`, then reload the running sshd.
    Reload,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Write(s) => write!(f, "putting back {}", s.path.display()),
            Step::Reload => f.write_str("reloading sshd"),
        }
    }
}

pub struct Sshd;

#[async_trait]
impl Guarded for Sshd {
    const NAME: Name = Name::Sshd;
    type Snapshot = Vec<FileSnap>;
    type Step = Step;

    fn slot(rec: &Snapshot) -> Vec<FileSnap> {
        rec.sshd.clone()
    }

    fn put(rec: &mut Snapshot, s: Vec<FileSnap>) {
        rec.sshd = s;
    }

    async fn capture(host: &Host, cfg: &Config) -> Result<Vec<FileSnap>> {
        paths(host, &cfg.sshd.drop_in.0)?
            .iter()
            .map(|p| file_snap(host, p))
            .collect()
    }

    async fn recapture(host: &Host, saved: &Vec<FileSnap>) -> Result<Vec<FileSnap>> {
        refile(host, saved)
    }

    fn differs(saved: &Vec<FileSnap>, now: &Vec<FileSnap>) -> bool {
        contents_differ(saved, now)
    }

    /// Files that differ go back before the reload; with no sshd to reload they still go back.
    fn restore_plan(
        saved: &Vec<FileSnap>,
        now: &Vec<FileSnap>,
        installed: &dyn Installed,
    ) -> Vec<Step> {
        let mut plan: Vec<Step> = saved
            .iter()
            .zip(now)
            .filter(|(s, n)| s.content != n.content)
            .map(|(s, _)| Step::Write(s.clone()))
            .collect();
        if installed.has("sshd") {
            plan.push(Step::Reload);
        }
        plan
    }

    async fn restore(host: &Host, step: &Step) -> Result<()> {
        match step {
            Step::Write(f) => put_back(host, f),
            Step::Reload => super::validate_and_reload(host).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::guarded::read_as;

    const OURS: &str = "10-sapari-agent.conf";

    /// What `capture` reads over `paths_of(listed)`, each file saying `content(path)`.
    fn captured(listed: &[&str], content: impl Fn(&Path) -> Option<&'static str>) -> Vec<FileSnap> {
        let listed = listed.iter().map(|s| s.to_string()).collect();
        paths_of(listed, OURS)
            .iter()
            .map(|p| read_as(&p.to_string_lossy(), content(p)))
            .collect()
    }

    #[test]
    fn every_drop_in_and_ours_are_kept_sorted() {
        let listed = vec![
            "50-cloud-init.conf".into(),
            "README".into(),
            "00-a.conf".into(),
        ];
        let paths: Vec<String> = paths_of(listed, OURS)
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        assert_eq!(
            paths,
            [
                "/etc/ssh/sshd_config",
                "/etc/ssh/sshd_config.d/00-a.conf",
                "/etc/ssh/sshd_config.d/10-sapari-agent.conf",
                "/etc/ssh/sshd_config.d/50-cloud-init.conf",
            ]
        );
    }

    #[test]
    fn a_changed_or_new_file_differs_and_goes_back_before_the_reload() {
        let saved = captured(&["50-cloud-init.conf"], |_| Some("x\n"));
        let ours = |p: &Path| p.ends_with(OURS);
        assert_eq!(saved[1].content.as_deref(), Some("x\n"));
        assert!(!Sshd::differs(&saved, &saved));
        assert_eq!(Sshd::restore_plan(&saved, &saved, &true), [Step::Reload]);
        // The change wrote our drop-in (it was absent) and left the others.
        let before = captured(&["50-cloud-init.conf"], |p| (!ours(p)).then_some("x\n"));
        let now = captured(&["50-cloud-init.conf"], |p| {
            Some(if ours(p) {
                "PasswordAuthentication no\n"
            } else {
                "x\n"
            })
        });
        assert!(Sshd::differs(&before, &now));
        let plan = Sshd::restore_plan(&before, &now, &true);
        assert_eq!(plan, [Step::Write(before[1].clone()), Step::Reload]);
        assert_eq!(
            plan[0].to_string(),
            "putting back /etc/ssh/sshd_config.d/10-sapari-agent.conf"
        );
        assert_eq!(plan[1].to_string(), "reloading sshd");
        // No sshd to reload: the file still goes back.
        assert_eq!(
            Sshd::restore_plan(&before, &now, &false),
            [Step::Write(before[1].clone())]
        );
    }
}
