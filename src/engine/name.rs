//! The resources' names and which of them a run covers: the vocabulary the engine and the
//! resources share, so it lives with the engine and the resources import it.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

/// Names are stable CLI identifiers (`--only`, `--skip`, JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Name {
    Hostname,
    Users,
    Sshd,
    DeployKey,
    Ufw,
    Packages,
    Docker,
    Firewall,
    Swap,
    Ntp,
    Tailscale,
    Compose,
}

impl Name {
    /// Every resource, in the fixed order converge walks them (dependencies first).
    pub const ALL: [Name; 12] = [
        Name::Hostname,
        Name::Users,
        Name::Sshd,
        Name::DeployKey,
        Name::Ufw,
        Name::Packages,
        Name::Docker,
        Name::Firewall,
        Name::Swap,
        Name::Ntp,
        Name::Tailscale,
        Name::Compose,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Name::Hostname => "hostname",
            Name::Users => "users",
            Name::Sshd => "sshd",
            Name::DeployKey => "deploy-key",
            Name::Ufw => "ufw",
            Name::Packages => "packages",
            Name::Docker => "docker",
            Name::Firewall => "firewall",
            Name::Swap => "swap",
            Name::Ntp => "ntp",
            Name::Tailscale => "tailscale",
            Name::Compose => "compose",
        }
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Name {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Name::ALL
            .iter()
            .copied()
            .find(|n| n.as_str() == s)
            .ok_or_else(|| {
                let valid: Vec<&str> = Name::ALL.iter().map(|n| n.as_str()).collect();
                format!("unknown resource `{s}`; valid names: {}", valid.join(" "))
            })
    }
}

/// Which resources a run covers: every name in the fixed order, each with the reason it
/// was left out (`None` when it runs). Left-out names stay in the list because the report
/// names them too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    pub entries: Vec<(Name, Option<String>)>,
}

impl Selection {
    /// The names that run, in order.
    pub fn selected(&self) -> Vec<Name> {
        self.entries
            .iter()
            .filter(|(_, why)| why.is_none())
            .map(|(n, _)| *n)
            .collect()
    }
}

/// Which resources a run covers, with the reason for each one left out.
pub fn select(only: &[Name], skip: &[Name]) -> Selection {
    let entries = Name::ALL
        .iter()
        .map(|&n| {
            let why = if !only.is_empty() && !only.contains(&n) {
                Some("not selected by --only".to_string())
            } else if skip.contains(&n) {
                Some("skipped by --skip".to_string())
            } else {
                None
            };
            (n, why)
        })
        .collect();
    Selection { entries }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_lists_valid() {
        for n in Name::ALL {
            assert_eq!(n.as_str().parse::<Name>().unwrap(), n);
            assert_eq!(serde_json::to_value(n).unwrap(), n.as_str());
        }
        let e = "swapp".parse::<Name>().unwrap_err();
        assert!(e.contains(
            "hostname users sshd deploy-key ufw packages docker firewall swap ntp tailscale compose"
        ));
    }

    #[test]
    fn selection() {
        let s = select(&[Name::Swap], &[]);
        assert!(
            s.entries
                .iter()
                .all(|(n, why)| (*n == Name::Swap) == why.is_none())
        );
        assert_eq!(s.selected(), vec![Name::Swap]);
        let s = select(&[], &[Name::Ntp]);
        assert_eq!(s.entries.iter().filter(|(_, w)| w.is_some()).count(), 1);
        assert_eq!(s.selected().len(), Name::ALL.len() - 1);
    }
}
