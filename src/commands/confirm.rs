//! `sapari-agent confirm` and the hidden `rollback` the rollback timer runs.

use crate::cli::{ConfirmArgs, RollbackArgs};
use crate::confirm;
use crate::exit::{CommandError, Exit};

pub async fn confirm(a: ConfirmArgs) -> Result<Exit, CommandError> {
    Ok(confirm::confirm(&a).await)
}

pub async fn rollback(a: RollbackArgs) -> Result<Exit, CommandError> {
    Ok(confirm::rollback(&a).await)
}
