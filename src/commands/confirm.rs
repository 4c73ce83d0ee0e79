//! `sapari-agent confirm` and the hidden `rollback` the rollback timer runs: root, the
//! configuration and (for confirm) the run lock, then `crate::confirm` does the work.

use crate::cli::{ConfirmArgs, RollbackArgs};
use crate::config::{self, Config};
use crate::confirm;
use crate::exit::{self, CommandError, Exit};
use std::path::Path;

fn load(config: Option<&Path>) -> Result<Config, CommandError> {
    config::load(config, super::euid())
        .map(|(c, _)| c)
        .map_err(|e| CommandError::new(exit::CONFIG, e))
}

pub async fn confirm(a: ConfirmArgs) -> Result<Exit, CommandError> {
    if super::euid() != 0 {
        return Err(CommandError::new(
            exit::NOT_ROOT,
            "confirm must run as root (try: sudo sapari-agent confirm)",
        ));
    }
    let cfg = load(a.config.as_deref())?;
    let _lock = confirm::take_lock(cfg.agent.lock_timeout.0).map_err(CommandError::said)?;
    Ok(confirm::confirm(&cfg, a.json).await)
}

pub async fn rollback(a: RollbackArgs) -> Result<Exit, CommandError> {
    if !confirm::valid_id(&a.id) {
        return Err(CommandError::new(
            exit::USAGE,
            format!("rollback: `{}` is not a change id", a.id),
        ));
    }
    if super::euid() != 0 {
        return Err(CommandError::new(
            exit::NOT_ROOT,
            "rollback must run as root",
        ));
    }
    let cfg = load(a.config.as_deref())?;
    Ok(confirm::rollback(&cfg, &a.id).await)
}
