//! The convergence engine: observe every selected resource concurrently, then apply in
//! the fixed dependency order, verify each apply by observing again, and report.

pub mod lock;
pub mod report;

use std::any::Any;
use std::time::Instant;

use anyhow::{Result, anyhow};
use async_trait::async_trait;
use serde::Serialize;

use crate::host::Host;
use crate::resources::Name;
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

    /// The pre-flight checks `status` shows for this resource.
    fn checks(&self, state: &Self::State) -> Vec<Check>;
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

/// Runs the selected resources. `registry` is in dependency order; names the user selected
/// that have no implementation yet are reported as skipped.
pub struct Engine {
    pub registry: Vec<Box<dyn Managed>>,
}

fn error_chain(e: &anyhow::Error) -> String {
    format!("{e:#}")
}

impl Engine {
    fn find(&self, name: Name) -> Option<&dyn Managed> {
        self.registry
            .iter()
            .find(|r| r.name() == name)
            .map(|b| b.as_ref())
    }

    /// Observe and plan all selected resources at once: a no-op run costs about as much
    /// as its slowest observation, not the sum.
    async fn observe_all(&self, host: &Host, selected: &[Name]) -> Vec<(Result<Observed>, u64)> {
        let futs = selected.iter().map(|n| async move {
            let t = Instant::now();
            let r = match self.find(*n) {
                Some(m) => m.observe_plan(host).await,
                None => Err(anyhow!("not implemented")),
            };
            (r, t.elapsed().as_millis() as u64)
        });
        futures_util::future::join_all(futs).await
    }

    pub async fn run(
        &self,
        host: &Host,
        mode: Mode,
        selection: &[(Name, Option<String>)],
        mut progress: impl FnMut(&ResourceReport),
    ) -> Vec<ResourceReport> {
        let selected: Vec<Name> = selection
            .iter()
            .filter(|(_, why)| why.is_none())
            .map(|(n, _)| *n)
            .collect();
        let mut observed = self.observe_all(host, &selected).await.into_iter();
        let mut out: Vec<ResourceReport> = Vec::new();
        for (name, deselected) in selection.iter().cloned() {
            let t = Instant::now();
            let mut rep = ResourceReport {
                name,
                status: Status::Unchanged,
                changes: vec![],
                notes: vec![],
                error: None,
                duration_ms: 0,
            };
            if let Some(why) = deselected {
                rep.status = Status::Skipped;
                rep.notes.push(why);
                progress(&rep);
                out.push(rep);
                continue;
            }
            let (obs, obs_ms) = observed
                .next()
                .unwrap_or_else(|| (Err(anyhow!("internal error: missing observation")), 0));
            let Some(res) = self.find(name) else {
                rep.status = Status::Skipped;
                rep.notes.push(format!(
                    "not implemented in sapari-agent {}",
                    crate::VERSION
                ));
                progress(&rep);
                out.push(rep);
                continue;
            };
            let deps: Vec<&ResourceReport> = out
                .iter()
                .filter(|r| res.depends_on().contains(&r.name))
                .collect();
            if let Some(bad) = deps
                .iter()
                .find(|r| matches!(r.status, Status::Failed | Status::Skipped) && r.error.is_some())
            {
                rep.status = Status::Skipped;
                rep.error = Some(format!("depends on {}, which failed", bad.name.as_str()));
                progress(&rep);
                out.push(rep);
                continue;
            }
            let dep_changed = deps.iter().any(|r| r.status == Status::Changed);
            let obs = if dep_changed && mode == Mode::Converge {
                res.observe_plan(host).await
            } else {
                obs
            };
            self.finish(host, mode, res, obs, &mut rep).await;
            rep.duration_ms = obs_ms + t.elapsed().as_millis() as u64;
            progress(&rep);
            out.push(rep);
        }
        out
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

    /// Observations for `status`: every check of every selected, implemented resource.
    pub async fn checks(&self, host: &Host, selected: &[Name]) -> Vec<Check> {
        let implemented: Vec<Name> = selected
            .iter()
            .copied()
            .filter(|n| self.find(*n).is_some())
            .collect();
        let observed = self.observe_all(host, &implemented).await;
        let mut out = Vec::new();
        for (name, (obs, _)) in implemented.iter().zip(observed) {
            match obs {
                Ok(o) => out.extend(o.checks),
                Err(e) => out.push(Check::new(
                    name.as_str(),
                    Level::Fail,
                    format!("cannot observe: {}", error_chain(&e)),
                    "run `sapari-agent plan` for details",
                )),
            }
        }
        out
    }
}
