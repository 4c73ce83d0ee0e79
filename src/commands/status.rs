//! `sapari-agent status`: the runbook's pre-flight checks as a PASS/WARN/FAIL table.

use std::io::IsTerminal;
use std::path::Path;

use crate::cli::StatusArgs;
use crate::confirm;
use crate::engine::{self, Check, Engine, Level, VERSION};
use crate::exit::{self, CommandError, Exit};
use crate::host::{self, Access, Host};
use crate::resources;

pub async fn run(a: StatusArgs) -> Result<Exit, CommandError> {
    let sel = &a.sel;
    let cfg = super::load_config(sel, None)?;
    let host = Host::new(Access::ReadOnly);
    let engine = Engine {
        registry: resources::registry(&cfg, &resources::RunContext::from_env(false)),
        root: super::euid() == 0,
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
    Ok(if worst == Level::Fail {
        exit::FAILED
    } else {
        exit::OK
    })
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
