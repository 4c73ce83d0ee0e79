//! sshd's side of commit-confirmed: which files a rollback keeps.

use std::path::{Path, PathBuf};

use anyhow::Result;

use super::{DROP_DIR, SSHD_CONFIG};
use crate::host::Host;

/// sshd_config, every drop-in, and ours (possibly absent), drop-ins sorted by name.
pub fn paths(host: &Host, drop_in: &str) -> Result<Vec<PathBuf>> {
    let dir = Path::new(DROP_DIR);
    let mut v = vec![PathBuf::from(SSHD_CONFIG)];
    let mut names: Vec<String> = host
        .list_dir(dir)?
        .into_iter()
        .filter(|n| n.ends_with(".conf"))
        .collect();
    if !names.iter().any(|n| n == drop_in) {
        names.push(drop_in.to_string());
        names.sort();
    }
    v.extend(names.into_iter().map(|n| dir.join(n)));
    Ok(v)
}
