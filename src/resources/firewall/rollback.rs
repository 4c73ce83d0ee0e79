//! The DOCKER-USER chain as commit-confirmed keeps and restores it: the lines exactly as
//! iptables-save printed them (the chain may hold rules this agent did not write, which
//! `rules::Rule` need not round-trip), put back in one `--noflush` transaction.

use std::fmt;

use anyhow::{Context, Result};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::lists::Family;
use super::rules::{Backend, CHAIN};
use crate::config::Config;
use crate::engine::Name;
use crate::host::{Host, iptables};
use crate::resources::guarded::{Guarded, Installed, Snapshot};

/// One family's saved chain. Family and backend serialise as the `v4`/`nft` strings the
/// snapshots of earlier versions hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainSnap {
    pub family: Family,
    pub backend: Backend,
    /// The `-A DOCKER-USER ...` lines as iptables-save printed them; None: no such chain.
    pub lines: Option<Vec<String>>,
}

impl ChainSnap {
    /// An absent chain and an empty one filter the same.
    pub fn lines(&self) -> &[String] {
        self.lines.as_deref().unwrap_or(&[])
    }

    /// The chain of every family whose iptables tables hold Docker's chains.
    pub async fn capture(host: &Host) -> Result<Vec<ChainSnap>> {
        let mut chains = Vec::new();
        for fam in Family::ALL {
            let (docker, _) = super::observe_docker(host, fam)
                .await
                .with_context(|| format!("cannot read the {} DOCKER-USER chain", fam.label()))?;
            if let Some((backend, table)) = docker {
                chains.push(ChainSnap {
                    family: fam,
                    backend,
                    lines: table.has_chain(CHAIN).then(|| table.lines_of(CHAIN)),
                });
            }
        }
        Ok(chains)
    }

    /// The same chain, as it is now.
    pub async fn recapture(&self, host: &Host) -> Result<ChainSnap> {
        let t = super::save(host, self.backend, self.family).await?;
        Ok(ChainSnap {
            lines: t.has_chain(CHAIN).then(|| t.lines_of(CHAIN)),
            ..self.clone()
        })
    }

    /// One `iptables-restore --noflush` transaction that puts the saved chain back (an
    /// absent chain comes back empty, which filters the same), as the firewall resource
    /// replaces it.
    pub fn restore_text(&self) -> String {
        let mut s = format!("*filter\n:{CHAIN} - [0:0]\n");
        for l in self.lines() {
            s.push_str(l);
            s.push('\n');
        }
        s.push_str("COMMIT\n");
        s
    }

    pub async fn restore(&self, host: &Host) -> Result<()> {
        let fam = self.family;
        host.run(&iptables::restore_noflush(
            self.backend,
            fam,
            self.restore_text(),
        ))
        .await
        .map(drop)
        .with_context(|| format!("the {} {CHAIN} chain was not restored", fam.label()))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Replace one family's chain with the saved one.
    Restore(ChainSnap),
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Restore(c) => write!(f, "restoring the {} {CHAIN} chain", c.family.as_str()),
        }
    }
}

pub struct Firewall;

#[async_trait]
impl Guarded for Firewall {
    const NAME: Name = Name::Firewall;
    /// DOCKER-USER only filters traffic forwarded to containers, so it cannot lock anyone out;
    /// refusing `firewall apply` would leave the empty chain Docker recreates at boot, and with
    /// it the published ports open to everyone.
    const LOCKS_OUT: bool = false;
    type Snapshot = Vec<ChainSnap>;
    type Step = Step;

    fn slot(rec: &Snapshot) -> Vec<ChainSnap> {
        rec.chains.clone()
    }

    fn put(rec: &mut Snapshot, s: Vec<ChainSnap>) {
        rec.chains = s;
    }

    /// Nothing while the configuration leaves the chain alone.
    async fn capture(host: &Host, cfg: &Config) -> Result<Vec<ChainSnap>> {
        if cfg.firewall.enabled {
            ChainSnap::capture(host).await
        } else {
            Ok(Vec::new())
        }
    }

    async fn recapture(host: &Host, saved: &Vec<ChainSnap>) -> Result<Vec<ChainSnap>> {
        let mut chains = Vec::new();
        for c in saved {
            chains.push(c.recapture(host).await?);
        }
        Ok(chains)
    }

    /// An absent chain and an empty one filter the same.
    fn differs(saved: &Vec<ChainSnap>, now: &Vec<ChainSnap>) -> bool {
        saved.len() != now.len() || saved.iter().zip(now).any(|(s, n)| s.lines() != n.lines())
    }

    /// Every saved chain is re-applied, changed or not (see `Guarded::restore_plan`).
    fn restore_plan(saved: &Vec<ChainSnap>, _: &Vec<ChainSnap>, _: &dyn Installed) -> Vec<Step> {
        saved.iter().cloned().map(Step::Restore).collect()
    }

    async fn restore(host: &Host, step: &Step) -> Result<()> {
        match step {
            Step::Restore(c) => c.restore(host).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::Access;

    fn chain(family: Family, lines: Option<&[&str]>) -> ChainSnap {
        ChainSnap {
            family,
            backend: Backend::Nft,
            lines: lines.map(|v| v.iter().map(|l| l.to_string()).collect()),
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn nothing_is_captured_while_the_firewall_is_off() {
        let mut cfg = Config::default();
        cfg.firewall.enabled = false;
        let host = Host::new(Access::ReadOnly);
        assert_eq!(Firewall::capture(&host, &cfg).await.unwrap(), []);
    }

    #[test]
    fn changed_lines_differ_and_every_chain_is_reapplied() {
        let saved = vec![
            chain(Family::V4, Some(&["-A DOCKER-USER -j RETURN"])),
            chain(Family::V6, None),
        ];
        assert!(!Firewall::differs(&saved, &saved));
        // An absent chain and an empty one filter the same.
        let emptied = vec![saved[0].clone(), chain(Family::V6, Some(&[]))];
        assert!(!Firewall::differs(&saved, &emptied));
        let now = vec![chain(Family::V4, Some(&[])), chain(Family::V6, None)];
        assert!(Firewall::differs(&saved, &now));
        assert!(Firewall::differs(&saved, &saved[..1].to_vec()));
        let plan = Firewall::restore_plan(&saved, &saved, &true);
        let shown: Vec<String> = plan.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "restoring the v4 DOCKER-USER chain",
                "restoring the v6 DOCKER-USER chain"
            ]
        );
        let mut rec = Snapshot::default();
        Firewall::put(&mut rec, saved.clone());
        assert_eq!(rec.chains, saved);
    }

    #[test]
    fn a_chain_is_restored_in_one_transaction() {
        let c = chain(Family::V4, Some(&["-A DOCKER-USER -j RETURN"]));
        assert_eq!(
            c.restore_text(),
            "*filter\n:DOCKER-USER - [0:0]\n-A DOCKER-USER -j RETURN\nCOMMIT\n"
        );
        let absent = chain(Family::V4, None);
        assert_eq!(
            absent.restore_text(),
            "*filter\n:DOCKER-USER - [0:0]\nCOMMIT\n"
        );
        assert_eq!(
            serde_json::to_value(&c).unwrap()["backend"],
            "nft",
            "names round-trip"
        );
    }
}
