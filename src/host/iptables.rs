//! Interface to `iptables-save` / `iptables-restore` and the kernel's legacy table list
//! (`/proc/net/ip{,6}_tables_names`). Program names and parsing stay with the firewall; this
//! module owns how the programs are invoked and how the kernel is asked.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;

use super::{Cmd, Host};

/// `<program> -t filter`: the filter table only, so reading never touches nat/mangle.
pub fn save_filter(program: &str) -> Cmd {
    Cmd::new(program)
        .args(["-t", "filter"])
        .timeout(Duration::from_secs(30))
}

/// Whether the legacy (x_tables) filter table is loaded for IPv4 or IPv6. Read from /proc so
/// that asking does not load the legacy modules on an nft machine.
pub fn legacy_filter_loaded(host: &Host, v6: bool) -> Result<bool> {
    let names = if v6 {
        "/proc/net/ip6_tables_names"
    } else {
        "/proc/net/ip_tables_names"
    };
    Ok(host
        .read_text(Path::new(names))?
        .is_some_and(|t| t.lines().any(|l| l.trim() == "filter")))
}
