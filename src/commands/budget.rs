//! `sapari-agent budget`: the compose services' resource budget for this machine.

use crate::cli::BudgetArgs;
use crate::config;
use crate::exit::{self, CommandError, Exit};
use crate::host::{Access, Host};
use crate::resources;

pub async fn run(a: BudgetArgs) -> Result<Exit, CommandError> {
    let json = a.json;
    let (cfg, _) = config::load(a.config.as_deref(), super::euid())
        .map_err(|e| CommandError::new(exit::CONFIG, e))?;
    let host = Host::new(Access::ReadOnly);
    let (b, profile) = resources::compose::budget_for(&cfg.compose, &cfg.agent, &host)
        .await
        .map_err(|e| CommandError::new(exit::FAILED, format!("{e:#}")))?;
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
    Ok(if b.memory_overcommitted() {
        exit::FAILED
    } else {
        exit::OK
    })
}
