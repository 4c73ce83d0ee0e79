//! One module per subcommand, each with `run(args) -> Result<Exit, CommandError>`: the
//! command's wiring from its CLI arguments to the domain modules, and what it prints.

pub mod budget;
pub mod cloud_init;
pub mod confirm;
pub mod converge;
pub mod env_check;
pub mod firewall;
pub mod status;
pub mod version;

use crate::cli::{Overrides, Selectors};
use crate::config::{self, Config, ConfigError};
use crate::exit::{self, CommandError};

fn euid() -> u32 {
    crate::host::sys::euid()
}

/// agent.toml, with the command line's overrides applied.
fn load_config(sel: &Selectors, ov: Option<&Overrides>) -> Result<Config, CommandError> {
    let (mut cfg, _) = config::load(sel.config.as_deref(), euid())
        .map_err(|e| CommandError::new(exit::CONFIG, e).then("nothing was changed"))?;
    if let Some(ov) = ov {
        config::apply_overrides(&mut cfg, &ov.my_ip, ov.hostname.as_deref())
            .map_err(|e: ConfigError| CommandError::new(exit::USAGE, e))?;
    }
    Ok(cfg)
}
