//! Commit confirmed: `converge --confirm SECONDS` keeps the previous sshd drop-in, UFW rules
//! and DOCKER-USER chain, and a timer restores them unless `sapari-agent confirm` runs in time.

use crate::cli::{ConfirmArgs, RollbackArgs};
use crate::exit;

pub async fn confirm(_a: &ConfirmArgs) -> i32 {
    eprintln!("sapari-agent: confirm is not implemented yet");
    exit::USAGE
}

pub async fn rollback(_a: &RollbackArgs) -> i32 {
    eprintln!("sapari-agent: rollback is not implemented yet");
    exit::USAGE
}
