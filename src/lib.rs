//! sapari-agent: converges a single production server to the state the launch runbook
//! describes. All logic lives in this library; `main.rs` only maps the outcome to an
//! exit code.

// Unit tests build fixtures in tempdirs with std::fs: clippy.toml's boundary holds for the
// shipped code, which the non-test lint run checks.
#![cfg_attr(test, allow(clippy::disallowed_methods, clippy::disallowed_types))]

pub mod authorized_keys;
pub mod cli;
pub mod cloudinit;
pub mod config;
pub mod confirm;
pub mod engine;
pub mod envcheck;
pub mod host;
pub mod logging;
pub mod openpgp;
pub mod resources;

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use cli::{Cli, Command, Overrides, Selectors};
use config::{Config, ConfigError};
use engine::Name;
use engine::{Check, Engine, Level, Mode, Report, ResourceReport, Status};
use host::{Access, FileSpec, Host};
use logging::REPORT_TARGET;

pub use engine::VERSION;

/// Documented exit codes (README, `--help`).
pub mod exit {
    pub const OK: i32 = 0;
    pub const FAILED: i32 = 1;
    pub const CHANGES: i32 = 2;
    pub const USAGE: i32 = 64;
    pub const LOCKED: i32 = 75;
    pub const NOT_ROOT: i32 = 77;
    pub const CONFIG: i32 = 78;
}

fn euid() -> u32 {
    host::sys::euid()
}

fn load_config(sel: &Selectors, ov: Option<&Overrides>) -> Result<Config, i32> {
    let (mut cfg, _) = config::load(sel.config.as_deref(), euid()).map_err(|e| {
        eprintln!("sapari-agent: {e}");
        eprintln!("sapari-agent: nothing was changed");
        exit::CONFIG
    })?;
    if let Some(ov) = ov {
        config::apply_overrides(&mut cfg, &ov.my_ip, ov.hostname.as_deref()).map_err(
            |e: ConfigError| {
                eprintln!("sapari-agent: {e}");
                exit::USAGE
            },
        )?;
    }
    Ok(cfg)
}

pub async fn run(cli: Cli) -> i32 {
    logging::init(cli.verbose);
    match cli.command {
        Command::Version => {
            println!("sapari-agent {VERSION}");
            exit::OK
        }
        Command::EnvCheck(a) => env_check(&a.path, &a.with, a.json),
        Command::Budget(a) => budget(a.config.as_deref(), a.json).await,
        Command::Converge(a) => {
            let ctx = resources::RunContext::from_env(a.force);
            let (detailed, window) = (a.detailed_exitcodes, a.confirm);
            converge_or_plan(Mode::Converge, &a.sel, &a.ov, detailed, window, &ctx).await
        }
        Command::Plan(a) => {
            let ctx = resources::RunContext::from_env(false);
            converge_or_plan(Mode::Plan, &a.sel, &a.ov, a.detailed_exitcodes, None, &ctx).await
        }
        Command::Status(a) => status(&a.sel).await,
        Command::Firewall(a) => firewall(a.action).await,
        Command::Confirm(a) => confirm::confirm(&a).await,
        Command::Rollback(a) => confirm::rollback(&a).await,
        Command::CloudInit(a) => match a.action {
            cli::CloudInitAction::Render(r) => cloudinit::render(&r),
        },
    }
}

/// `confirm_window`: `converge --confirm SECONDS`.
async fn converge_or_plan(
    mode: Mode,
    sel: &Selectors,
    ov: &Overrides,
    detailed: bool,
    confirm_window: Option<u64>,
    ctx: &resources::RunContext,
) -> i32 {
    let cfg = match load_config(sel, Some(ov)) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let _lock = if mode == Mode::Converge {
        if euid() != 0 {
            eprintln!(
                "sapari-agent: converge changes the system and must run as root (try: sudo sapari-agent converge); `sapari-agent plan` works without root"
            );
            return exit::NOT_ROOT;
        }
        let lock = engine::lock::acquire(
            Path::new(engine::lock::DEFAULT_PATH),
            cfg.agent.lock_timeout.0,
            |holder| {
                eprintln!(
                    "sapari-agent: waiting up to {} for another run{holder} to finish",
                    cfg.agent.lock_timeout
                )
            },
        );
        match lock {
            Ok(l) => Some(l),
            Err(e) => {
                eprintln!("sapari-agent: {e}");
                return match e {
                    engine::lock::LockError::Busy { .. } => exit::LOCKED,
                    engine::lock::LockError::Open { .. } => exit::NOT_ROOT,
                };
            }
        }
    } else {
        None
    };

    let host = Host::new(if mode == Mode::Converge {
        Access::ReadWrite
    } else {
        Access::ReadOnly
    });
    let mode_name = if mode == Mode::Converge {
        "converge"
    } else {
        "plan"
    };
    let started_at = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    let t0 = Instant::now();
    let engine = Engine {
        registry: resources::registry(&cfg, ctx),
        root: euid() == 0,
    };
    let selection = engine::select(&sel.only, &sel.skip);
    let confirm_session = if mode == Mode::Converge {
        let selected = selection.selected();
        match confirm::before_converge(
            &host,
            &cfg,
            sel.config.as_deref(),
            confirm_window,
            &selected,
        )
        .await
        {
            Ok(s) => s,
            Err(code) => return code,
        }
    } else {
        None
    };
    let json = sel.json;
    let mut stdout = std::io::stdout();
    if !json {
        let _ = writeln!(stdout, "sapari-agent {VERSION} {mode_name}");
    }
    let results = engine
        .run(&host, mode, &selection, |r| {
            log_resource(r);
            if !json && !quiet_skip(r) {
                let _ = writeln!(stdout, "{}", engine::report::render_resource(r));
                let _ = stdout.flush();
            }
        })
        .await;
    // Before anything else is printed: a session that dropped must not keep the pending
    // record from being written.
    let confirmed = match confirm_session {
        Some(s) => Some(s.finish(&host).await),
        None => None,
    };
    let report = Report {
        agent_version: VERSION,
        mode: mode_name,
        started_at,
        duration_ms: t0.elapsed().as_millis() as u64,
        summary: Report::summarize(&results),
        resources: results,
    };
    let mut doc = serde_json::to_value(&report).unwrap_or_default();
    if let Some(c) = &confirmed {
        doc["confirm"] = c.json.clone();
    }
    if mode == Mode::Converge {
        save_last_run(&host, &cfg.agent.state_dir, &doc);
    }
    if json {
        let _ = writeln!(
            stdout,
            "{}",
            serde_json::to_string_pretty(&doc).unwrap_or_default()
        );
    } else {
        print_quiet_skips(&report.resources);
        let _ = writeln!(stdout, "{}", report.summary_line());
        if let Some(c) = &confirmed {
            let _ = writeln!(stdout, "{}", c.line);
        }
    }
    let pending = report.summary.changed + report.summary.would_change;
    if report.summary.failed > 0 || confirmed.as_ref().is_some_and(|c| c.failed) {
        exit::FAILED
    } else if detailed && pending > 0 {
        exit::CHANGES
    } else {
        exit::OK
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

async fn status(sel: &Selectors) -> i32 {
    let cfg = match load_config(sel, None) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let host = Host::new(Access::ReadOnly);
    let engine = Engine {
        registry: resources::registry(&cfg, &resources::RunContext::from_env(false)),
        root: euid() == 0,
    };
    let selected = engine::select(&sel.only, &sel.skip).selected();
    let mut checks = engine.checks(&host, &selected).await;
    checks.push(last_run_check(&cfg.agent.state_dir.join("last-run.json")));
    checks.extend(confirm::checks(&host, &cfg.agent.state_dir));
    let worst = checks.iter().map(|c| c.level).max().unwrap_or(Level::Pass);
    if sel.json {
        let doc = serde_json::json!({
            "agent_version": VERSION,
            "checks": checks,
            "result": worst,
        });
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
    } else {
        print!(
            "{}",
            render_checks(&checks, std::io::stdout().is_terminal())
        );
    }
    if worst == Level::Fail {
        exit::FAILED
    } else {
        exit::OK
    }
}

/// `sapari-agent firewall load`: the origin lock from stored lists, before anything else.
async fn firewall_load(o: cli::FirewallOpts) -> i32 {
    let sel = Selectors {
        config: o.config,
        only: vec![],
        skip: vec![],
        json: o.json,
    };
    if euid() != 0 {
        eprintln!(
            "sapari-agent: loading netfilter rules needs root (try: sudo sapari-agent firewall load)"
        );
        return exit::NOT_ROOT;
    }
    // At boot Docker waits for this (RequiredBy=): a broken agent.toml must neither keep the
    // site down nor leave it open, so the lock is loaded with the default settings and the
    // error is left to converge and status to report.
    let cfg = match config::load(sel.config.as_deref(), euid()) {
        Ok((c, _)) => c,
        Err(e) => {
            eprintln!("sapari-agent: {e}");
            eprintln!(
                "sapari-agent: loading the origin lock with the default firewall settings instead"
            );
            Config::default()
        }
    };
    if !cfg.firewall.enabled {
        println!("firewall management disabled (firewall.enabled = false): nothing loaded");
        return exit::OK;
    }
    let host = Host::new(Access::ReadWrite);
    let fw = resources::firewall::Firewall::offline(&cfg.firewall, &cfg.agent);
    match fw.load(&host).await {
        Ok(l) => {
            if sel.json {
                let doc =
                    serde_json::json!({ "agent_version": VERSION, "result": "ok", "load": l });
                println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
            } else {
                let sources: Vec<String> = l
                    .sources
                    .iter()
                    .map(|(f, src)| format!("{} {src}", f.as_str()))
                    .collect();
                match &l.was {
                    Some(was) => println!(
                        "origin lock loaded ({}; was: {was}): {}",
                        sources.join(", "),
                        l.summary
                    ),
                    None => println!("origin lock already in force: {}", l.summary),
                }
                for n in &l.notes {
                    println!("note: {n}");
                }
            }
            log::info!(resource = "firewall"; "origin lock: changed={} {}", l.changed, l.summary);
            exit::OK
        }
        Err(e) => {
            if sel.json {
                let doc = serde_json::json!({ "result": "error", "reason": format!("{e:#}") });
                println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
            }
            eprintln!("sapari-agent: firewall load: {e:#}");
            log::error!(resource = "firewall"; "origin lock not loaded: {e:#}");
            exit::FAILED
        }
    }
}

/// `sapari-agent firewall apply|show|check`.
async fn firewall(action: cli::FirewallAction) -> i32 {
    use cli::FirewallAction;
    use engine::Resource;
    let (opts, show) = match action {
        FirewallAction::Apply(o) => {
            // The converge code path with only this resource: same lock, report and exit codes.
            let sel = Selectors {
                config: o.config,
                only: vec![Name::Firewall],
                skip: vec![],
                json: o.json,
            };
            let ov = Overrides {
                my_ip: vec![],
                hostname: None,
            };
            let ctx = resources::RunContext::from_env(false);
            return converge_or_plan(Mode::Converge, &sel, &ov, false, None, &ctx).await;
        }
        FirewallAction::Load(o) => return firewall_load(o).await,
        FirewallAction::Show(o) => (o, true),
        FirewallAction::Check(o) => (o, false),
    };
    let sel = Selectors {
        config: opts.config,
        only: vec![],
        skip: vec![],
        json: opts.json,
    };
    if euid() != 0 {
        eprintln!(
            "sapari-agent: reading the iptables rules needs root (try: sudo sapari-agent firewall {})",
            if show { "show" } else { "check" }
        );
        return exit::NOT_ROOT;
    }
    let cfg = match load_config(&sel, None) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let host = Host::new(Access::ReadOnly);
    let fw = resources::firewall::Firewall::offline(&cfg.firewall, &cfg.agent);
    let state = match fw.observe(&host).await {
        Ok(s) => s,
        Err(e) => {
            if sel.json {
                let doc = serde_json::json!({ "result": "error", "reason": format!("{e:#}") });
                println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
            }
            eprintln!("sapari-agent: firewall: {e:#}");
            return exit::FAILED;
        }
    };
    if show {
        let shown = fw.show(&state);
        let origin = fw.show_origin(&state);
        if sel.json {
            let doc = serde_json::json!({
                "agent_version": VERSION,
                "enabled": cfg.firewall.enabled,
                "origin": origin,
                "families": shown,
            });
            println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
        } else if !cfg.firewall.enabled {
            println!("firewall management disabled (firewall.enabled = false)");
        } else {
            print!(
                "{}",
                resources::firewall::render_show(origin.as_ref(), &shown)
            );
        }
        return exit::OK;
    }
    let v = fw.verdict(&state);
    if sel.json {
        let doc = serde_json::json!({
            "result": if v.matches { "match" } else { "drift" },
            "reason": v.reason,
        });
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
    } else {
        println!("{}", v.reason);
    }
    if v.matches { exit::OK } else { exit::FAILED }
}

fn last_run_check(path: &Path) -> Check {
    let hint = "run `sapari-agent converge` (see the journal: journalctl -t sapari-agent)";
    let Ok(text) = host::files::read_to_string(path) else {
        return Check::new(
            "last converge",
            Level::Warn,
            "never run on this machine",
            hint,
        );
    };
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    let at = v["started_at"].as_str().unwrap_or("?");
    let failed = v["summary"]["failed"].as_u64().unwrap_or(0);
    if failed > 0 {
        Check::new(
            "last converge",
            Level::Fail,
            format!("{at}: {failed} resource(s) failed"),
            hint,
        )
    } else {
        Check::new("last converge", Level::Pass, format!("{at}: ok"), hint)
    }
}

pub fn render_checks(checks: &[Check], color: bool) -> String {
    let width = checks
        .iter()
        .map(|c| c.name.len())
        .max()
        .unwrap_or(5)
        .max(5);
    let mut out = format!("{:<width$}  RESULT  DETAIL\n", "CHECK");
    for c in checks {
        let (word, code) = match c.level {
            Level::Pass => ("PASS", "32"),
            Level::Warn => ("WARN", "33"),
            Level::Fail => ("FAIL", "31"),
        };
        let shown = if color {
            format!("\x1b[{code}m{word}\x1b[0m")
        } else {
            word.to_string()
        };
        out.push_str(&format!("{:<width$}  {shown}    {}\n", c.name, c.detail));
        if !c.hint.is_empty() {
            out.push_str(&format!("{:<width$}          fix: {}\n", "", c.hint));
        }
    }
    out
}

fn env_check(path: &Path, with: &[PathBuf], json: bool) -> i32 {
    let mut files: Vec<(String, String)> = Vec::new();
    for p in std::iter::once(path).chain(with.iter().map(PathBuf::as_path)) {
        match host::files::read_to_string(p) {
            Ok(t) => files.push((p.display().to_string(), t)),
            Err(e) => {
                eprintln!("sapari-agent: cannot read {}: {e}", p.display());
                return exit::FAILED;
            }
        }
    }
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(n, t)| (n.as_str(), t.as_str()))
        .collect();
    // In the order compose applies them: the later file wins, and is what gets checked.
    let findings = envcheck::check(&envcheck::parse_files(&refs));
    let fails = findings
        .iter()
        .filter(|f| f.severity == envcheck::Severity::Fail)
        .count();
    let warns = findings.len() - fails;
    if json {
        let doc = serde_json::json!({
            "file": path.display().to_string(),
            "findings": findings,
            "failures": fails,
            "warnings": warns,
        });
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
    } else {
        print!("{}", envcheck::render(&findings));
        println!(
            "{}: {fails} failure(s), {warns} warning(s){}",
            path.display(),
            if fails > 0 {
                " - fix them before deploying"
            } else {
                ""
            }
        );
    }
    if fails > 0 { exit::FAILED } else { exit::OK }
}

async fn budget(config: Option<&Path>, json: bool) -> i32 {
    let (cfg, _) = match config::load(config, euid()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sapari-agent: {e}");
            return exit::CONFIG;
        }
    };
    let host = Host::new(Access::ReadOnly);
    let (b, profile) = match resources::compose::budget_for(&cfg.compose, &cfg.agent, &host).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("sapari-agent: {e:#}");
            return exit::FAILED;
        }
    };
    if json {
        let doc = serde_json::json!({ "profile": profile, "budget": b,
            "memory_overcommitted": b.memory_overcommitted(), "cpu_oversubscribed": b.cpu_oversubscribed() });
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
    } else {
        println!("profile {profile}");
        print!("{}", b.render());
        if b.memory_overcommitted() {
            println!(
                "FAIL: memory limits exceed physical memory minus {} headroom",
                cfg.compose.memory_headroom
            );
        }
        if b.cpu_oversubscribed() {
            println!("WARN: CPU limits exceed the vCPU count (accepted on shared vCPUs)");
        }
    }
    if b.memory_overcommitted() {
        exit::FAILED
    } else {
        exit::OK
    }
}
