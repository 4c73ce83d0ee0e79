//! ufw's side of commit-confirmed: whether a saved set of its files has it switched on.

use std::path::Path;

use super::{UFW_CONF, shell_var};
use crate::resources::guarded::FileSnap;

/// ufw.conf's `ENABLED=yes` among the saved files.
pub fn enabled(files: &[FileSnap]) -> bool {
    files
        .iter()
        .find(|f| f.path == Path::new(UFW_CONF))
        .and_then(|f| f.content.as_deref())
        .and_then(|t| shell_var(t, "ENABLED"))
        .is_some_and(|v| v == "yes")
}
