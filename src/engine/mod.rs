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
mod tests;
