//! The convergence engine: observe every selected resource concurrently, then apply in
//! the fixed dependency order, verify each apply by observing again, and report.

/// The run lock is a host facility (flock on a file); the engine's runs hold it.
pub use crate::host::lock;
pub mod name;
pub mod progress;
pub mod report;

use std::any::Any;
use std::collections::HashMap;
use std::time::Instant;

use anyhow::{Result, anyhow};
use async_trait::async_trait;
use serde::Serialize;

use crate::host::Host;
pub use name::{Name, Selection, select};
pub use progress::{VERSION, error_chain, progress};
pub use report::{Change, Report, ResourceReport, Status};

/// The result of a pure planning step.
#[derive(Debug)]
pub struct Plan<S> {
    pub steps: Vec<S>,
    pub notes: Vec<String>,
}

impl<S> Default for Plan<S> {
    fn default() -> Self {
        Self {
            steps: Vec::new(),
            notes: Vec::new(),
        }
    }
}

/// A planned step can say what it changes, in the report's words.
pub trait Describe {
    fn change(&self) -> Change;
}

/// One line of `sapari-agent status`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Check {
    pub name: String,
    pub level: Level,
    pub detail: String,
    /// One line telling the operator how to fix it (empty when it passes).
    pub hint: String,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "UPPERCASE")]
pub enum Level {
    Pass,
    Warn,
    Fail,
}

impl Check {
    pub fn new(name: &str, level: Level, detail: impl Into<String>, hint: &str) -> Self {
        Self {
            name: name.into(),
            level,
            detail: detail.into(),
            hint: if level == Level::Pass {
                String::new()
            } else {
                hint.into()
            },
        }
    }
}

/// What each managed resource implements. `observe` only reads; `plan` is a pure function
/// of the observed state (unit tests reach it without root); `apply` performs the steps.
#[async_trait]
pub trait Resource: Send + Sync {
    type State: Send + Sync + 'static;
    type Step: Describe + Send + Sync + 'static;

    fn name(&self) -> Name;

    /// Resources that must converge before this one.
    fn depends_on(&self) -> &'static [Name] {
        &[]
    }

    async fn observe(&self, host: &Host) -> Result<Self::State>;

    fn plan(&self, state: &Self::State) -> Result<Plan<Self::Step>>;

    async fn apply(&self, host: &Host, state: &Self::State, steps: &[Self::Step]) -> Result<()>;

    /// The pre-flight checks `status` shows for this resource, from the same observation
    /// `plan` gets. They answer "is the machine healthy?", not "what would converge change?":
    /// a drift that `plan` turns into a step is usually also a FAIL or WARN here (so status
    /// shows what a converge would fix), while facts the agent does not change (a service
    /// that crashed, a clock not yet synced) appear only here. Never an error: what cannot
    /// be judged is a WARN.
    fn checks(&self, state: &Self::State) -> Vec<Check>;

    /// The config key that turned this resource off (`Some("compose.enabled")` when
    /// `compose.enabled = false`). The engine then neither observes, plans nor applies
    /// it, so the resource's own code never sees itself disabled.
    fn disabled(&self) -> Option<&'static str> {
        None
    }

    /// What `status` shows for this resource while it is disabled, instead of observing:
    /// for most nothing, but an unmanaged firewall leaves the site open and says so.
    fn disabled_checks(&self) -> Vec<Check> {
        Vec::new()
    }
}

/// A resource's observation and plan, with the concrete types erased so the engine can
/// hold different resources in one list.
pub struct Observed {
    pub changes: Vec<Change>,
    pub notes: Vec<String>,
    pub checks: Vec<Check>,
    inner: Box<dyn Any + Send + Sync>,
}

#[async_trait]
pub trait Managed: Send + Sync {
    fn name(&self) -> Name;
    fn depends_on(&self) -> &'static [Name];
    fn disabled(&self) -> Option<&'static str>;
    fn disabled_checks(&self) -> Vec<Check>;
    async fn observe_plan(&self, host: &Host) -> Result<Observed>;
    async fn apply_observed(&self, host: &Host, obs: Observed) -> Result<()>;
}

#[async_trait]
impl<R: Resource> Managed for R {
    fn name(&self) -> Name {
        Resource::name(self)
    }

    fn depends_on(&self) -> &'static [Name] {
        Resource::depends_on(self)
    }

    fn disabled(&self) -> Option<&'static str> {
        Resource::disabled(self)
    }

    fn disabled_checks(&self) -> Vec<Check> {
        Resource::disabled_checks(self)
    }

    async fn observe_plan(&self, host: &Host) -> Result<Observed> {
        let state = self.observe(host).await?;
        let checks = self.checks(&state);
        let plan = self.plan(&state)?;
        Ok(Observed {
            changes: plan.steps.iter().map(Describe::change).collect(),
            notes: plan.notes,
            checks,
            inner: Box::new((state, plan.steps)),
        })
    }

    async fn apply_observed(&self, host: &Host, obs: Observed) -> Result<()> {
        let (state, steps) = *obs
            .inner
            .downcast::<(R::State, Vec<R::Step>)>()
            .map_err(|_| anyhow!("internal error: observation of another resource"))?;
        self.apply(host, &state, &steps).await
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Converge,
    Plan,
}

/// Each observed resource's observation and plan, and how long it took (ms).
type Observations = HashMap<Name, (Result<Observed>, u64)>;

/// Runs the selected resources. `registry` is in dependency order and holds a resource
/// for every Name.
pub struct Engine {
    pub registry: Vec<Box<dyn Managed>>,
    /// Running as root (euid 0). Without it `plan` and `status` still run, and what they
    /// cannot read is reported as unknown instead of failed.
    pub root: bool,
}

/// The note for an observation that failed only because this run is not root (an
/// `io::Error` of kind PermissionDenied anywhere in the chain): `plan` and `status` work
/// as a normal user, and a permission error then says nothing about the machine. As root
/// the same error is a real failure.
pub fn unknown_without_root(root: bool, e: &anyhow::Error) -> Option<String> {
    if root {
        return None;
    }
    let denied = e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::PermissionDenied)
    });
    denied.then(|| format!("unknown without root: {}", error_chain(e)))
}

/// A report before anything is known about the resource.
fn blank(name: Name) -> ResourceReport {
    ResourceReport {
        name,
        status: Status::Unchanged,
        changes: vec![],
        notes: vec![],
        error: None,
        duration_ms: 0,
    }
}

impl Engine {
    /// Every Name has a resource: the resources' registry is total (a test there says so), so a
    /// miss is a bug in the agent, not something a run could report.
    fn find(&self, name: Name) -> &dyn Managed {
        match self.registry.iter().find(|r| r.name() == name) {
            Some(m) => m.as_ref(),
            None => panic!("internal error: {name} is not in the engine's registry"),
        }
    }

    /// Observe and plan all selected resources at once: a no-op run costs about as much
    /// as its slowest observation, not the sum.
    ///
    /// Disabled resources are left out: their observation could only fail or mislead.
    async fn observe_all(&self, host: &Host, selected: &[Name]) -> Observations {
        let enabled: Vec<(Name, &dyn Managed)> = selected
            .iter()
            .map(|n| (*n, self.find(*n)))
            .filter(|(_, m)| m.disabled().is_none())
            .collect();
        let futs = enabled.iter().map(|(n, m)| async move {
            let t = Instant::now();
            let r = m.observe_plan(host).await;
            (*n, (r, t.elapsed().as_millis() as u64))
        });
        futures_util::future::join_all(futs)
            .await
            .into_iter()
            .collect()
    }

    pub async fn run(
        &self,
        host: &Host,
        mode: Mode,
        selection: &Selection,
        mut progress: impl FnMut(&ResourceReport),
    ) -> Vec<ResourceReport> {
        let selected = selection.selected();
        let mut observed = self.observe_all(host, &selected).await;
        let mut out: Vec<ResourceReport> = Vec::new();
        for (name, deselected) in selection.entries.iter().cloned() {
            let t = Instant::now();
            let rep = match self.not_run(name, deselected, &out) {
                Some(rep) => rep,
                None => {
                    let (obs, obs_ms) = observed.remove(&name).unwrap_or_else(|| {
                        (Err(anyhow!("internal error: missing observation")), 0)
                    });
                    let mut rep = blank(name);
                    self.judge(host, mode, name, obs, &out, &mut rep).await;
                    rep.duration_ms = obs_ms + t.elapsed().as_millis() as u64;
                    rep
                }
            };
            progress(&rep);
            out.push(rep);
        }
        out
    }

    /// The report of a resource that does not run at all: left out by the selection, turned
    /// off in agent.toml (never observed), or behind a dependency that failed.
    fn not_run(
        &self,
        name: Name,
        deselected: Option<String>,
        done: &[ResourceReport],
    ) -> Option<ResourceReport> {
        let mut rep = blank(name);
        rep.status = Status::Skipped;
        if let Some(why) = deselected {
            rep.notes.push(why);
            return Some(rep);
        }
        let res = self.find(name);
        if let Some(key) = res.disabled() {
            rep.notes.push(format!("{key} = false"));
            return Some(rep);
        }
        let bad = done.iter().find(|r| {
            res.depends_on().contains(&r.name)
                && matches!(r.status, Status::Failed | Status::Skipped)
                && r.error.is_some()
        })?;
        rep.error = Some(format!("depends on {}, which failed", bad.name.as_str()));
        Some(rep)
    }

    /// A resource that runs: its observation (taken again in a converge when a dependency
    /// changed the machine since), judged, and in a converge applied and verified.
    async fn judge(
        &self,
        host: &Host,
        mode: Mode,
        name: Name,
        obs: Result<Observed>,
        done: &[ResourceReport],
        rep: &mut ResourceReport,
    ) {
        let res = self.find(name);
        let deps: Vec<&ResourceReport> = done
            .iter()
            .filter(|r| res.depends_on().contains(&r.name))
            .collect();
        let dep_changed = deps.iter().any(|r| r.status == Status::Changed);
        let obs = if dep_changed && mode == Mode::Converge {
            res.observe_plan(host).await
        } else {
            obs
        };
        // A plan is computed against today's machine. When a dependency would change it
        // first (sshd's lockout guard needs the keys `users` is about to install), the
        // dependent cannot be judged yet: say so rather than report a failure that a
        // converge would not have.
        let pending: Vec<&str> = deps
            .iter()
            .filter(|r| r.status == Status::WouldChange)
            .map(|r| r.name.as_str())
            .collect();
        let unknown = obs
            .as_ref()
            .err()
            .and_then(|e| unknown_without_root(self.root, e));
        match obs {
            Err(_) if unknown.is_some() => {
                rep.status = Status::Unchanged;
                rep.notes.extend(unknown);
            }
            Err(e) if mode == Mode::Plan && !pending.is_empty() => {
                rep.status = Status::WouldChange;
                rep.notes.push(format!(
                    "cannot be planned exactly before {} is applied; today it would fail with: {}",
                    pending.join(", "),
                    error_chain(&e)
                ));
            }
            obs => self.finish(host, mode, res, obs, rep).await,
        }
    }

    async fn finish(
        &self,
        host: &Host,
        mode: Mode,
        res: &dyn Managed,
        obs: Result<Observed>,
        rep: &mut ResourceReport,
    ) {
        let obs = match obs {
            Ok(o) => o,
            Err(e) => {
                rep.status = Status::Failed;
                rep.error = Some(error_chain(&e));
                return;
            }
        };
        rep.notes = obs.notes.clone();
        if obs.changes.is_empty() {
            rep.status = Status::Unchanged;
            return;
        }
        rep.changes = obs.changes.clone();
        if mode == Mode::Plan {
            rep.status = Status::WouldChange;
            return;
        }
        if let Err(e) = res.apply_observed(host, obs).await {
            rep.status = Status::Failed;
            rep.error = Some(error_chain(&e));
            return;
        }
        // Trust nothing: the apply only counts if a fresh observation agrees.
        match res.observe_plan(host).await {
            Ok(after) if after.changes.is_empty() => {
                rep.status = Status::Changed;
                rep.notes = after.notes;
            }
            Ok(after) => {
                rep.status = Status::Failed;
                let left: Vec<String> = after
                    .changes
                    .iter()
                    .map(|c| {
                        format!(
                            "{} ({} -> {})",
                            c.what,
                            c.from.as_deref().unwrap_or("none"),
                            c.to.as_deref().unwrap_or("none")
                        )
                    })
                    .collect();
                rep.error = Some(format!("still different after apply: {}", left.join("; ")));
            }
            Err(e) => {
                rep.status = Status::Failed;
                rep.error = Some(format!("verification failed: {}", error_chain(&e)));
            }
        }
    }

    /// Observations for `status`: every check of every selected resource; a
    /// disabled one shows its `disabled_checks` without being observed.
    pub async fn checks(&self, host: &Host, selected: &[Name]) -> Vec<Check> {
        let mut observed = self.observe_all(host, selected).await;
        let mut out = Vec::new();
        for name in selected {
            let res = self.find(*name);
            if res.disabled().is_some() {
                out.extend(res.disabled_checks());
                continue;
            }
            match observed.remove(name).map(|(o, _)| o) {
                Some(Ok(o)) => out.extend(o.checks),
                Some(Err(e)) if unknown_without_root(self.root, &e).is_some() => {
                    out.push(Check::new(
                        name.as_str(),
                        Level::Warn,
                        format!("cannot read without root: {}", error_chain(&e)),
                        "run `sudo sapari-agent status`",
                    ))
                }
                Some(Err(e)) => out.push(Check::new(
                    name.as_str(),
                    Level::Fail,
                    format!("cannot observe: {}", error_chain(&e)),
                    "run `sapari-agent plan` for details",
                )),
                None => {}
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::Access;
    use std::sync::{Arc, Mutex};

    /// A resource whose "machine" is an integer.
    struct Fake {
        name: Name,
        deps: &'static [Name],
        value: Arc<Mutex<i32>>,
        want: i32,
        /// Apply succeeds but changes nothing (a lying apply).
        inert: bool,
        fail_observe: bool,
        /// The config key that turned it off.
        off: Option<&'static str>,
        /// Observe fails the way reading a root-only file does.
        denied: bool,
        barrier: Option<Arc<tokio::sync::Barrier>>,
    }

    struct Set(i32);
    impl Describe for Set {
        fn change(&self) -> Change {
            Change::value("value", None, Some(self.0.to_string()))
        }
    }

    fn fake(name: Name, want: i32) -> Fake {
        Fake {
            name,
            deps: &[],
            value: Arc::new(Mutex::new(0)),
            want,
            inert: false,
            fail_observe: false,
            off: None,
            denied: false,
            barrier: None,
        }
    }

    #[async_trait]
    impl Resource for Fake {
        type State = i32;
        type Step = Set;
        fn name(&self) -> Name {
            self.name
        }
        fn depends_on(&self) -> &'static [Name] {
            self.deps
        }
        async fn observe(&self, _h: &Host) -> Result<i32> {
            if let Some(b) = &self.barrier {
                tokio::time::timeout(std::time::Duration::from_secs(5), b.wait())
                    .await
                    .map_err(|_| anyhow!("observations did not run concurrently"))?;
            }
            if self.fail_observe {
                anyhow::bail!("cannot observe");
            }
            if self.denied {
                return Err(anyhow::Error::new(std::io::Error::from(
                    std::io::ErrorKind::PermissionDenied,
                ))
                .context("cannot open /proc/net/ip_tables_names"));
            }
            Ok(*self.value.lock().unwrap())
        }
        fn plan(&self, s: &i32) -> Result<Plan<Set>> {
            let mut p = Plan::default();
            if *s != self.want {
                p.steps.push(Set(self.want));
            }
            Ok(p)
        }
        async fn apply(&self, _h: &Host, _s: &i32, steps: &[Set]) -> Result<()> {
            if !self.inert {
                for s in steps {
                    *self.value.lock().unwrap() = s.0;
                }
            }
            Ok(())
        }
        fn checks(&self, _s: &i32) -> Vec<Check> {
            vec![Check::new(self.name.as_str(), Level::Pass, "observed", "")]
        }
        fn disabled(&self) -> Option<&'static str> {
            self.off
        }
        fn disabled_checks(&self) -> Vec<Check> {
            vec![Check::new(
                self.name.as_str(),
                Level::Warn,
                "not managed",
                "",
            )]
        }
    }

    fn run(engine: &Engine, mode: Mode, sel: &Selection) -> Vec<ResourceReport> {
        let host = Host::new(Access::ReadWrite);
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(engine.run(&host, mode, sel, |_| {}))
    }

    fn checks(engine: &Engine, names: &[Name]) -> Vec<Check> {
        let host = Host::new(Access::ReadOnly);
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(engine.checks(&host, names))
    }

    fn all(names: &[Name]) -> Selection {
        Selection {
            entries: names.iter().map(|n| (*n, None)).collect(),
        }
    }

    #[test]
    fn converge_applies_and_second_run_is_unchanged() {
        let e = Engine {
            registry: vec![Box::new(fake(Name::Hostname, 5))],
            root: true,
        };
        let r = run(&e, Mode::Converge, &all(&[Name::Hostname]));
        assert_eq!(r[0].status, Status::Changed);
        let r = run(&e, Mode::Converge, &all(&[Name::Hostname]));
        assert_eq!(r[0].status, Status::Unchanged);
    }

    #[test]
    fn plan_changes_nothing() {
        let f = fake(Name::Hostname, 5);
        let v = f.value.clone();
        let e = Engine {
            registry: vec![Box::new(f)],
            root: true,
        };
        let r = run(&e, Mode::Plan, &all(&[Name::Hostname]));
        assert_eq!(r[0].status, Status::WouldChange);
        assert_eq!(*v.lock().unwrap(), 0);
    }

    #[test]
    fn an_apply_that_changes_nothing_fails_verification() {
        let mut f = fake(Name::Hostname, 5);
        f.inert = true;
        let e = Engine {
            registry: vec![Box::new(f)],
            root: true,
        };
        let r = run(&e, Mode::Converge, &all(&[Name::Hostname]));
        assert_eq!(r[0].status, Status::Failed);
        assert!(
            r[0].error
                .as_ref()
                .unwrap()
                .contains("still different after apply")
        );
    }

    #[test]
    fn failure_skips_dependents_but_not_independents() {
        let mut users = fake(Name::Users, 1);
        users.fail_observe = true;
        let mut sshd = fake(Name::Sshd, 1);
        sshd.deps = &[Name::Users];
        let e = Engine {
            registry: vec![
                Box::new(users),
                Box::new(sshd),
                Box::new(fake(Name::Swap, 1)),
            ],
            root: true,
        };
        let r = run(
            &e,
            Mode::Converge,
            &all(&[Name::Users, Name::Sshd, Name::Swap]),
        );
        assert_eq!(r[0].status, Status::Failed);
        assert_eq!(r[1].status, Status::Skipped);
        assert!(r[1].error.as_ref().unwrap().contains("depends on users"));
        assert_eq!(r[2].status, Status::Changed);
    }

    #[test]
    fn plan_of_a_dependent_waits_for_its_dependency() {
        let users = fake(Name::Users, 1);
        let mut sshd = fake(Name::Sshd, 1);
        sshd.deps = &[Name::Users];
        sshd.fail_observe = true;
        let e = Engine {
            registry: vec![Box::new(users), Box::new(sshd)],
            root: true,
        };
        let r = run(&e, Mode::Plan, &all(&[Name::Users, Name::Sshd]));
        assert_eq!(r[1].status, Status::WouldChange);
        assert!(r[1].notes[0].contains("before users is applied"));
        // In a converge the same failure is a failure.
        let r = run(&e, Mode::Converge, &all(&[Name::Users, Name::Sshd]));
        assert_eq!(r[1].status, Status::Failed);
    }

    #[test]
    fn observations_run_concurrently_and_deselected_are_reported() {
        let b = Arc::new(tokio::sync::Barrier::new(2));
        let mut a = fake(Name::Hostname, 0);
        a.barrier = Some(b.clone());
        let mut c = fake(Name::Swap, 0);
        c.barrier = Some(b);
        let e = Engine {
            registry: vec![Box::new(a), Box::new(c), Box::new(fake(Name::Ntp, 1))],
            root: true,
        };
        let sel = Selection {
            entries: vec![
                (Name::Hostname, None),
                (Name::Swap, None),
                (Name::Ntp, Some("skipped by --skip".to_string())),
            ],
        };
        let r = run(&e, Mode::Converge, &sel);
        assert_eq!(r[0].status, Status::Unchanged, "{:?}", r[0].error);
        assert_eq!(r[1].status, Status::Unchanged, "{:?}", r[1].error);
        assert_eq!(r[2].status, Status::Skipped);
        assert_eq!(r[2].notes, vec!["skipped by --skip"]);
    }

    #[test]
    fn a_disabled_resource_is_skipped_without_being_observed() {
        let mut off = fake(Name::Compose, 5);
        off.fail_observe = true;
        off.off = Some("compose.enabled");
        let v = off.value.clone();
        let e = Engine {
            registry: vec![Box::new(fake(Name::Swap, 0)), Box::new(off)],
            root: true,
        };
        for mode in [Mode::Plan, Mode::Converge] {
            let r = run(&e, mode, &all(&[Name::Swap, Name::Compose]));
            assert_eq!(r[1].status, Status::Skipped, "{:?}", r[1].error);
            assert_eq!(r[1].notes, vec!["compose.enabled = false"]);
            assert_eq!(r[1].error, None);
        }
        assert_eq!(*v.lock().unwrap(), 0, "a disabled resource was applied");
        let c = checks(&e, &[Name::Swap, Name::Compose]);
        assert_eq!(
            c.iter()
                .map(|c| (c.name.as_str(), c.level))
                .collect::<Vec<_>>(),
            vec![("swap", Level::Pass), ("compose", Level::Warn)]
        );
    }

    #[test]
    fn a_disabled_dependency_does_not_skip_its_dependents() {
        let mut docker = fake(Name::Docker, 1);
        docker.off = Some("docker.enabled");
        let mut compose = fake(Name::Compose, 1);
        compose.deps = &[Name::Docker];
        let e = Engine {
            registry: vec![Box::new(docker), Box::new(compose)],
            root: true,
        };
        let r = run(&e, Mode::Converge, &all(&[Name::Docker, Name::Compose]));
        assert_eq!(r[0].status, Status::Skipped);
        assert_eq!(r[1].status, Status::Changed);
    }

    #[test]
    fn permission_denied_without_root_is_unknown_not_failed() {
        let denied = anyhow::Error::new(std::io::Error::from(std::io::ErrorKind::PermissionDenied))
            .context("cannot open /x");
        let note = unknown_without_root(false, &denied).unwrap();
        assert!(
            note.starts_with("unknown without root: cannot open /x"),
            "{note}"
        );
        // As root a permission error is a real failure; other errors always are.
        assert_eq!(unknown_without_root(true, &denied), None);
        let other = anyhow::Error::new(std::io::Error::from(std::io::ErrorKind::NotFound));
        assert_eq!(unknown_without_root(false, &other), None);
        assert_eq!(
            unknown_without_root(false, &anyhow!("permission denied")),
            None
        );

        let mut fw = fake(Name::Firewall, 1);
        fw.denied = true;
        let mut e = Engine {
            registry: vec![Box::new(fw), Box::new(fake(Name::Swap, 1))],
            root: false,
        };
        let r = run(&e, Mode::Plan, &all(&[Name::Firewall, Name::Swap]));
        assert_eq!(r[0].status, Status::Unchanged, "{:?}", r[0].error);
        assert_eq!(r[0].error, None);
        assert!(
            r[0].notes[0]
                .starts_with("unknown without root: cannot open /proc/net/ip_tables_names")
        );
        assert_eq!(r[1].status, Status::WouldChange);
        let c = checks(&e, &[Name::Firewall]);
        assert_eq!(c[0].level, Level::Warn);
        assert!(
            c[0].detail.starts_with("cannot read without root: "),
            "{c:?}"
        );

        e.root = true;
        let r = run(&e, Mode::Plan, &all(&[Name::Firewall]));
        assert_eq!(r[0].status, Status::Failed);
        assert_eq!(checks(&e, &[Name::Firewall])[0].level, Level::Fail);
    }
}
