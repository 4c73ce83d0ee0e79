//! Interface to `iptables-save` / `iptables-restore` and the kernel's legacy table list
//! (`/proc/net/ip{,6}_tables_names`): which program of which backend and family, how it is
//! invoked, how the kernel is asked. What the tables hold (parsing, the rules wanted) stays
//! with the firewall.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::{Cmd, Host};

/// How long iptables-restore waits for the xtables lock (legacy backend; Docker takes it too).
pub const XTABLES_WAIT_SECS: &str = "10";

/// An address family, as iptables splits them (`iptables` / `ip6tables`). Serialises as
/// `v4`/`v6`, the strings snapshots and list metadata hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];

    /// `v4`/`v6`: file names, report labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Family::V4 => "v4",
            Family::V6 => "v6",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    pub fn holds(self, net: &IpNet) -> bool {
        matches!(
            (self, net),
            (Family::V4, IpNet::V4(_)) | (Family::V6, IpNet::V6(_))
        )
    }
}

/// Which iptables programs hold Docker's chains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// `iptables-nft-save` / `iptables-nft-restore`
    Nft,
    /// `iptables-legacy-save` / `iptables-legacy-restore`
    Legacy,
    /// `iptables-save` / `iptables-restore`, whatever they are on this machine
    Default,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Nft => "nft",
            Backend::Legacy => "legacy",
            Backend::Default => "default",
        }
    }

    fn prefix(fam: Family) -> &'static str {
        match fam {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }

    fn infix(self) -> &'static str {
        match self {
            Backend::Nft => "-nft",
            Backend::Legacy => "-legacy",
            Backend::Default => "",
        }
    }

    pub fn save(self, fam: Family) -> String {
        format!("{}{}-save", Self::prefix(fam), self.infix())
    }

    pub fn restore(self, fam: Family) -> String {
        format!("{}{}-restore", Self::prefix(fam), self.infix())
    }
}

/// `<restore> --noflush`: one transaction that replaces only the chains `input` names (all
/// committed or none), waiting a bounded time for the xtables lock.
pub fn restore_noflush(backend: Backend, fam: Family, input: impl Into<Vec<u8>>) -> Cmd {
    Cmd::new(&backend.restore(fam))
        .args(["--noflush", "--wait", XTABLES_WAIT_SECS])
        .stdin(input)
        .timeout(Duration::from_secs(60))
}

/// `<program> -t filter`: the filter table only, so reading never touches nat/mangle.
pub fn save_filter(program: &str) -> Cmd {
    Cmd::new(program)
        .args(["-t", "filter"])
        .timeout(Duration::from_secs(30))
}

/// Whether the legacy (x_tables) filter table is loaded for IPv4 or IPv6. Read from /proc so
/// that asking does not load the legacy modules on an nft machine.
pub fn legacy_filter_loaded(host: &Host, fam: Family) -> Result<bool> {
    let names = match fam {
        Family::V4 => "/proc/net/ip_tables_names",
        Family::V6 => "/proc/net/ip6_tables_names",
    };
    Ok(host
        .read_text(Path::new(names))?
        .is_some_and(|t| t.lines().any(|l| l.trim() == "filter")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_names() {
        assert_eq!(Backend::Nft.save(Family::V6), "ip6tables-nft-save");
        assert_eq!(
            Backend::Legacy.restore(Family::V4),
            "iptables-legacy-restore"
        );
        assert_eq!(Backend::Default.restore(Family::V6), "ip6tables-restore");
    }

    #[test]
    fn restore_is_one_noflush_transaction() {
        let cmd = restore_noflush(Backend::Legacy, Family::V6, "*filter\nCOMMIT\n");
        assert_eq!(
            cmd.to_string(),
            "ip6tables-legacy-restore --noflush --wait 10"
        );
    }

    #[test]
    fn serialised_names_are_the_snapshot_strings() {
        assert_eq!(serde_json::to_string(&Family::V4).unwrap(), "\"v4\"");
        assert_eq!(serde_json::to_string(&Backend::Nft).unwrap(), "\"nft\"");
        assert_eq!(
            serde_json::from_str::<Backend>("\"legacy\"").unwrap(),
            Backend::Legacy
        );
    }
}
