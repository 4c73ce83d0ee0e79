//! `sapari-agent converge` and `plan`: one code path, the mode decides whether steps are
//! applied. `firewall apply` runs it too, with only the firewall selected.

use std::io::Write;
use std::path::Path;
use std::time::{Instant, SystemTime};

use crate::cli::{ConvergeArgs, Overrides, PlanArgs, Selectors};
use crate::config::Config;
use crate::confirm;
use crate::engine::{self, Engine, Mode, Report, ResourceReport, Status, VERSION};
use crate::exit::{self, CommandError, Exit};
use crate::host::{self, Access, FileSpec, Host};
use crate::logging::REPORT_TARGET;
use crate::resources;

pub async fn converge(a: ConvergeArgs) -> Result<Exit, CommandError> {
    let ctx = resources::RunContext::from_env(a.force);
    converge_or_plan(Run {
        mode: Mode::Converge,
        sel: &a.sel,
        ov: &a.ov,
        detailed: a.detailed_exitcodes,
        confirm_window: a.confirm,
        ctx: &ctx,
    })
    .await
}

pub async fn plan(a: PlanArgs) -> Result<Exit, CommandError> {
    let ctx = resources::RunContext::from_env(false);
    converge_or_plan(Run {
        mode: Mode::Plan,
        sel: &a.sel,
        ov: &a.ov,
        detailed: a.detailed_exitcodes,
        confirm_window: None,
        ctx: &ctx,
    })
    .await
}

/// What one converge or plan was asked to do.
pub struct Run<'a> {
    pub mode: Mode,
    pub sel: &'a Selectors,
    pub ov: &'a Overrides,
    /// `--detailed-exitcodes`.
    pub detailed: bool,
    /// `converge --confirm SECONDS`.
    pub confirm_window: Option<u64>,
    pub ctx: &'a resources::RunContext,
}

impl Run<'_> {
    fn mode_name(&self) -> &'static str {
        match self.mode {
            Mode::Converge => "converge",
            Mode::Plan => "plan",
        }
    }
}

pub async fn converge_or_plan(run: Run<'_>) -> Result<Exit, CommandError> {
    let cfg = super::load_config(run.sel, Some(run.ov))?;
    let _lock = match run.mode {
        Mode::Converge => Some(take_lock(&cfg)?),
        Mode::Plan => None,
    };
    let host = Host::new(match run.mode {
        Mode::Converge => Access::ReadWrite,
        Mode::Plan => Access::ReadOnly,
    });
    let started_at = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    let t0 = Instant::now();
    let engine = Engine {
        registry: resources::registry(&cfg, run.ctx),
        root: super::euid() == 0,
    };
    let selection = engine::select(&run.sel.only, &run.sel.skip);
    let confirm_session = match run.mode {
        Mode::Converge => {
            let selected = selection.selected();
            let config = run.sel.config.as_deref();
            confirm::before_converge(&host, &cfg, config, run.confirm_window, &selected)
                .await
                .map_err(CommandError::said)?
        }
        Mode::Plan => None,
    };
    let results = run_engine(&run, &engine, &host, &selection).await;
    // Before anything else is printed: a session that dropped must not keep the pending
    // record from being written.
    let confirmed = match confirm_session {
        Some(s) => Some(s.finish(&host).await),
        None => None,
    };
    let report = Report {
        agent_version: VERSION,
        mode: run.mode_name(),
        started_at,
        duration_ms: t0.elapsed().as_millis() as u64,
        summary: Report::summarize(&results),
        resources: results,
    };
    let mut doc = serde_json::to_value(&report).unwrap_or_default();
    if let Some(c) = &confirmed {
        doc["confirm"] = c.json.clone();
    }
    if run.mode == Mode::Converge {
        save_last_run(&host, &cfg.agent.state_dir, &doc);
    }
    print_outcome(run.sel.json, &report, &doc, confirmed.as_ref());
    let pending = report.summary.changed + report.summary.would_change;
    Ok(
        if report.summary.failed > 0 || confirmed.as_ref().is_some_and(|c| c.failed) {
            exit::FAILED
        } else if run.detailed && pending > 0 {
            exit::CHANGES
        } else {
            exit::OK
        },
    )
}

/// converge changes the system: root, and the run lock held for the whole run.
fn take_lock(cfg: &Config) -> Result<engine::lock::Lock, CommandError> {
    if super::euid() != 0 {
        return Err(CommandError::new(
            exit::NOT_ROOT,
            "converge changes the system and must run as root (try: sudo sapari-agent converge); `sapari-agent plan` works without root",
        ));
    }
    engine::lock::acquire(
        Path::new(engine::lock::DEFAULT_PATH),
        cfg.agent.lock_timeout.0,
        |holder| {
            eprintln!(
                "sapari-agent: waiting up to {} for another run{holder} to finish",
                cfg.agent.lock_timeout
            )
        },
    )
    .map_err(|e| {
        let code = match e {
            engine::lock::LockError::Busy { .. } => exit::LOCKED,
            engine::lock::LockError::Open { .. } => exit::NOT_ROOT,
        };
        CommandError::new(code, e)
    })
}

/// The engine's run, each resource's line printed as soon as it is done.
async fn run_engine(
    run: &Run<'_>,
    engine: &Engine,
    host: &Host,
    selection: &engine::Selection,
) -> Vec<ResourceReport> {
    let json = run.sel.json;
    let mut stdout = std::io::stdout();
    if !json {
        let _ = writeln!(stdout, "sapari-agent {VERSION} {}", run.mode_name());
    }
    engine
        .run(host, run.mode, selection, |r| {
            log_resource(r);
            if !json && !quiet_skip(r) {
                let _ = writeln!(stdout, "{}", engine::report::render_resource(r));
                let _ = stdout.flush();
            }
        })
        .await
}

/// An SSH session that dropped closed stdout: println! would abort the run.
fn print_outcome(
    json: bool,
    report: &Report,
    doc: &serde_json::Value,
    confirmed: Option<&confirm::Outcome>,
) {
    let mut stdout = std::io::stdout();
    if json {
        let _ = writeln!(
            stdout,
            "{}",
            serde_json::to_string_pretty(doc).unwrap_or_default()
        );
    } else {
        print_quiet_skips(&report.resources);
        let _ = writeln!(stdout, "{}", report.summary_line());
        if let Some(c) = confirmed {
            let _ = writeln!(stdout, "{}", c.line);
        }
    }
}

/// Resources left out on purpose (--only, --skip, disabled in agent.toml) are summed up on one line
/// instead of one line each.
fn quiet_skip(r: &ResourceReport) -> bool {
    r.status == Status::Skipped && r.error.is_none()
}

fn print_quiet_skips(results: &[ResourceReport]) {
    let mut groups: Vec<(String, Vec<&str>)> = Vec::new();
    for r in results.iter().filter(|r| quiet_skip(r)) {
        let why = r.notes.join("; ");
        match groups.iter_mut().find(|(w, _)| *w == why) {
            Some((_, names)) => names.push(r.name.as_str()),
            None => groups.push((why, vec![r.name.as_str()])),
        }
    }
    // An SSH session that dropped closed stdout: println! would abort the run.
    for (why, names) in groups {
        let _ = writeln!(std::io::stdout(), "skipped: {} ({why})", names.join(", "));
    }
}

fn log_resource(r: &ResourceReport) {
    let status = r.status.as_str();
    let name = r.name.as_str();
    match &r.error {
        Some(e) => {
            log::error!(target: REPORT_TARGET, resource = name, status = status; "{name}: {e}")
        }
        None if r.status == Status::Changed => log::info!(
            target: REPORT_TARGET, resource = name, status = status;
            "{name}: {} change(s): {}",
            r.changes.len(),
            r.changes.iter().map(|c| c.what.as_str()).collect::<Vec<_>>().join(", ")
        ),
        None => {
            log::info!(target: REPORT_TARGET, resource = name, status = status; "{name}: {status}")
        }
    }
}

fn save_last_run(host: &Host, dir: &Path, report: &serde_json::Value) {
    let path = dir.join(host::state_dir::LAST_RUN);
    let result = host::state_dir::ensure(host, dir).and_then(|_| {
        let mut body = serde_json::to_vec_pretty(report)?;
        body.push(b'\n');
        // 0600: the report holds the plan's diffs of root's files.
        host.write(
            &path,
            &body,
            FileSpec::root(host::state_dir::LAST_RUN_MODE),
            false,
        )
    });
    if let Err(e) = result {
        log::warn!("cannot save the run report to {}: {e:#}", path.display());
    }
}
