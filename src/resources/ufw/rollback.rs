//! ufw's side of commit-confirmed: the files kept, whether they have it switched on, and the
//! commands that put its running state back.

use std::path::Path;

use anyhow::{Result, bail};

use super::{STATE_FILES, UFW_CONF, shell_var};
use crate::host::{Cmd, Host};
use crate::resources::guarded::{FileSnap, file_snap};

/// ufw.conf's `ENABLED=yes` among the saved files.
pub fn enabled(files: &[FileSnap]) -> bool {
    files
        .iter()
        .find(|f| f.path == Path::new(UFW_CONF))
        .and_then(|f| f.content.as_deref())
        .and_then(|t| shell_var(t, "ENABLED"))
        .is_some_and(|v| v == "yes")
}

/// ufw's rules, defaults and switch, as they are now.
pub fn capture(host: &Host) -> Result<Vec<FileSnap>> {
    STATE_FILES
        .iter()
        .map(|p| file_snap(host, Path::new(p)))
        .collect()
}

pub async fn disable(host: &Host) -> Result<()> {
    host.run(&Cmd::new("ufw").args(["--force", "disable"]))
        .await
        .map(drop)
}

pub async fn reload(host: &Host) -> Result<()> {
    host.run(&Cmd::new("ufw").arg("reload")).await.map(drop)
}

/// ufw must end up on or off as it was.
pub async fn check(host: &Host, want_on: bool) -> Result<()> {
    let st = host.query(&Cmd::new("ufw").arg("status")).await?;
    let on = st.stdout.contains("Status: active");
    if on != want_on {
        bail!(
            "ufw reports `{}` after the restore, expected {}",
            st.stdout.lines().next().unwrap_or("").trim(),
            if want_on { "active" } else { "inactive" }
        );
    }
    Ok(())
}
