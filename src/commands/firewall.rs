//! `sapari-agent firewall load|apply|show|check`: the origin lock and DOCKER-USER chain
//! outside a full converge.

use crate::cli::{FirewallAction, FirewallArgs, FirewallOpts, Overrides, Selectors};
use crate::config::{self, Config};
use crate::engine::{Mode, Name, Resource, VERSION};
use crate::exit::{self, CommandError, Exit};
use crate::host::{Access, Host};
use crate::resources::{self, firewall::Firewall};

pub async fn run(a: FirewallArgs) -> Result<Exit, CommandError> {
    let (opts, show) = match a.action {
        FirewallAction::Apply(o) => return apply(o).await,
        FirewallAction::Load(o) => return load(o).await,
        FirewallAction::Show(o) => (o, true),
        FirewallAction::Check(o) => (o, false),
    };
    let sel = Selectors {
        config: opts.config,
        only: vec![],
        skip: vec![],
        json: opts.json,
    };
    if super::euid() != 0 {
        return Err(CommandError::new(
            exit::NOT_ROOT,
            format!(
                "reading the iptables rules needs root (try: sudo sapari-agent firewall {})",
                if show { "show" } else { "check" }
            ),
        ));
    }
    let cfg = super::load_config(&sel, None)?;
    let host = Host::new(Access::ReadOnly);
    let fw = Firewall::offline(&cfg.firewall, &cfg.agent);
    let state = match fw.observe(&host).await {
        Ok(s) => s,
        Err(e) => {
            if sel.json {
                print_error_doc(&e);
            }
            return Err(CommandError::new(exit::FAILED, format!("firewall: {e:#}")));
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
        return Ok(exit::OK);
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
    Ok(if v.matches { exit::OK } else { exit::FAILED })
}

/// The converge code path with only this resource: same lock, report and exit codes.
async fn apply(o: FirewallOpts) -> Result<Exit, CommandError> {
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
    let run = super::converge::Run {
        mode: Mode::Converge,
        sel: &sel,
        ov: &ov,
        detailed: false,
        confirm_window: None,
        ctx: &ctx,
    };
    super::converge::converge_or_plan(run).await
}

fn print_error_doc(e: &anyhow::Error) {
    let doc = serde_json::json!({ "result": "error", "reason": format!("{e:#}") });
    println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
}

/// `sapari-agent firewall load`: the origin lock from stored lists, before anything else.
async fn load(o: FirewallOpts) -> Result<Exit, CommandError> {
    if super::euid() != 0 {
        return Err(CommandError::new(
            exit::NOT_ROOT,
            "loading netfilter rules needs root (try: sudo sapari-agent firewall load)",
        ));
    }
    // At boot Docker waits for this (RequiredBy=): a broken agent.toml must neither keep the
    // site down nor leave it open, so the lock is loaded with the default settings and the
    // error is left to converge and status to report.
    let cfg = match config::load(o.config.as_deref(), super::euid()) {
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
        return Ok(exit::OK);
    }
    let host = Host::new(Access::ReadWrite);
    let fw = Firewall::offline(&cfg.firewall, &cfg.agent);
    let l = match fw.load(&host).await {
        Ok(l) => l,
        Err(e) => {
            if o.json {
                print_error_doc(&e);
            }
            eprintln!("sapari-agent: firewall load: {e:#}");
            log::error!(resource = "firewall"; "origin lock not loaded: {e:#}");
            return Err(CommandError::said(exit::FAILED));
        }
    };
    if o.json {
        let doc = serde_json::json!({ "agent_version": VERSION, "result": "ok", "load": l });
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
    Ok(exit::OK)
}
