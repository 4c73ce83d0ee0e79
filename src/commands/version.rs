//! `sapari-agent version`.

use crate::engine::VERSION;
use crate::exit::{self, CommandError, Exit};

pub fn run() -> Result<Exit, CommandError> {
    println!("sapari-agent {VERSION}");
    Ok(exit::OK)
}
