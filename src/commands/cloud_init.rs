//! `sapari-agent cloud-init render`.

use std::io::Write;

use crate::cli::{CloudInitAction, CloudInitArgs};
use crate::cloudinit::{parse_artifact, render_user_data, warnings};
use crate::config;
use crate::exit::{self, CommandError, Exit};

pub fn run(a: CloudInitArgs) -> Result<Exit, CommandError> {
    let CloudInitAction::Render(a) = a.action;
    let artifact = parse_artifact(&a.artifact_url, &a.sha256)
        .map_err(|e| CommandError::new(e.exit_code(), &e))?;
    let (cfg, text) = config::validate_file(&a.config)
        .map_err(|e| CommandError::new(exit::CONFIG, e).then("no user-data was printed"))?;
    let user_data = render_user_data(&text, &artifact)
        .map_err(|e| CommandError::new(e.exit_code(), format!("{}: {e}", a.config.display())))?;
    for w in warnings(&cfg) {
        eprintln!("sapari-agent: warning: {w}");
    }
    let mut out = std::io::stdout().lock();
    out.write_all(user_data.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| {
            CommandError::new(
                exit::FAILED,
                format!("cannot write the user-data to stdout: {e}"),
            )
        })?;
    Ok(exit::OK)
}
