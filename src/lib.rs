//! sapari-agent: converges a single production server to the state the launch runbook
//! describes. All logic lives in this library; `main.rs` only maps the outcome to an
//! exit code.

// Unit tests build fixtures in tempdirs with std::fs: clippy.toml's boundary holds for the
// shipped code, which the non-test lint run checks.
#![cfg_attr(test, allow(clippy::disallowed_methods, clippy::disallowed_types))]

pub mod authorized_keys;
pub mod cli;
pub mod cloudinit;
pub mod commands;
pub mod config;
pub mod confirm;
pub mod digest;
pub mod engine;
pub mod envcheck;
pub mod exit;
pub mod host;
pub mod logging;
pub mod openpgp;
pub mod resources;

use cli::{Cli, Command};
use commands::{budget, cloud_init, converge, env_check, firewall, status, version};

pub use engine::VERSION;

pub async fn run(cli: Cli) -> i32 {
    logging::init(cli.verbose);
    let outcome = match cli.command {
        Command::Version => version::run(),
        Command::EnvCheck(a) => env_check::run(a),
        Command::Budget(a) => budget::run(a).await,
        Command::Converge(a) => converge::converge(a).await,
        Command::Plan(a) => converge::plan(a).await,
        Command::Status(a) => status::run(a).await,
        Command::Firewall(a) => firewall::run(a).await,
        Command::Confirm(a) => commands::confirm::confirm(a).await,
        Command::Rollback(a) => commands::confirm::rollback(a).await,
        Command::CloudInit(a) => cloud_init::run(a),
    };
    exit::code(outcome)
}
