//! The origin lock's part of the `firewall` resource: observing the table and what decides
//! whether it covers every path to :443 (Docker's nftables backend, a dockerd here, sockets on
//! :443), the table wanted from the lists in force, applying and verifying it, `firewall load`,
//! and its checks. The table itself (render, parse, drift) is in `origin.rs`.

use std::time::SystemTime;

use anyhow::{Context, Result, anyhow, bail};
use serde::Serialize;

use super::lists::Family;
use super::origin::{self, Shape};
use super::{Firewall, ListChoice, OriginState, Source, State, Step, UNIT, rules};
use crate::engine::{Check, Level};
use crate::host::sockets::Listener;
use crate::host::{Host, nft};

/// `firewall show`: the origin lock.
#[derive(Debug, Clone, Serialize)]
pub struct ShownOrigin {
    pub table: String,
    pub in_force: bool,
    /// Why the table differs from the one wanted (None: it matches).
    pub drift: Option<String>,
    /// The table wanted, in words.
    pub wanted: String,
    /// The table in force: set sizes and each chain's hook and rules (by their comments).
    pub shape: Option<Shape>,
    pub listeners: Vec<Listener>,
    pub docker_nftables_backend: bool,
}

/// The origin lock's table and the sockets on :443. `ask_docker`: also find out whether Docker
/// runs on its nftables backend, or here without any rules; worth it only when Docker's
/// iptables chains are missing (one `nft` and a /proc walk a no-op converge does not pay for).
pub async fn observe_origin(host: &Host, ask_docker: bool) -> Result<OriginState> {
    let (table, docker_nft) = if !host.program_exists(nft::PROGRAM) {
        (
            Err("`nft` is not installed (Debian package nftables)".to_string()),
            false,
        )
    } else {
        let table = match nft::list_table(host, origin::FAMILY, origin::TABLE).await {
            Ok(Some(j)) => origin::parse(&j).map(Some),
            Ok(None) => Ok(None),
            Err(e) => Err(format!("{e:#}")),
        };
        let docker_nft = ask_docker
            && nft::list_tables(host)
                .await
                .map(|t| t.iter().any(|(_, n)| n == "docker-bridges"))
                .unwrap_or(false);
        (table, docker_nft)
    };
    Ok(OriginState {
        table,
        docker_nft,
        dockerd_here: ask_docker && host.process_in_own_netns("dockerd"),
        listeners: host.listeners(rules::PORT)?,
    })
}

/// The table in force, in words, for a plan or a load: `absent`, or why it differs.
pub(super) fn was(have: Option<&Shape>, spec: &origin::Spec) -> String {
    match have {
        None => "absent".into(),
        Some(h) => origin::drift(Some(h), &spec.shape()).unwrap_or_default(),
    }
}

/// What `firewall load` did.
#[derive(Debug, Clone, Serialize)]
pub struct Loaded {
    pub changed: bool,
    /// The table before, in words (`absent`, or why it differed).
    pub was: Option<String>,
    pub summary: String,
    /// Where each family's list came from: `last-good` or `built-in`.
    pub sources: Vec<(Family, &'static str)>,
    pub notes: Vec<String>,
}

impl Firewall {
    /// The WAN interfaces of the origin lock: configured, else those of the default routes of
    /// both families; empty when none is known (then every interface but the internal ones).
    pub(super) fn origin_wan(&self, s: &State) -> Vec<String> {
        if !self.cfg.wan_interface.is_empty() && rules::valid_iface(&self.cfg.wan_interface) {
            return vec![self.cfg.wan_interface.clone()];
        }
        let mut v: Vec<String> = s
            .families
            .iter()
            .filter_map(|f| f.route_iface.clone())
            .filter(|i| rules::valid_iface(i))
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// The table wanted for the lists in force (`choose_list` of each family).
    pub fn origin_spec(&self, s: &State) -> origin::Spec {
        let nets = |fam: Family| {
            s.families
                .iter()
                .find(|f| f.family == fam)
                .map(|f| self.choose_list(f).nets)
                .unwrap_or_default()
        };
        origin::Spec {
            wan: self.origin_wan(s),
            v4: nets(Family::V4),
            v6: nets(Family::V6),
            public_ports: self.cfg.public_ports.iter().map(|p| p.0).collect(),
        }
    }

    pub(super) fn origin_step(&self, s: &State) -> Result<Option<Step>> {
        let o = s
            .origin
            .as_ref()
            .ok_or_else(|| anyhow!("internal error: the origin lock was not observed"))?;
        let have = match &o.table {
            Ok(t) => t.clone(),
            Err(e) => bail!(
                "the origin lock cannot be enforced: {e}; install it (apt-get install nftables; `packages.install` lists it) and converge again"
            ),
        };
        let spec = self.origin_spec(s);
        Ok(
            origin::drift(have.as_ref(), &spec.shape()).map(|_| Step::Origin {
                script: spec.script(),
                have,
                spec,
            }),
        )
    }

    pub(super) async fn apply_origin(
        &self,
        host: &Host,
        spec: &origin::Spec,
        script: &str,
    ) -> Result<()> {
        nft::load(host, script).await.with_context(|| {
            format!(
                "table {} {} was not replaced and is as it was",
                origin::FAMILY,
                origin::TABLE
            )
        })?;
        // Read it back: the transaction only counts if the kernel holds what was meant.
        let have = nft::list_table(host, origin::FAMILY, origin::TABLE)
            .await?
            .map(|j| origin::parse(&j))
            .transpose()
            .map_err(|e| anyhow!(e))?;
        if let Some(d) = origin::drift(have.as_ref(), &spec.shape()) {
            bail!("after `nft -f -`, {d}");
        }
        Ok(())
    }

    /// `sapari-agent firewall load`: the origin lock from the last good (else built-in) lists,
    /// with no network and no run lock, so it can run at boot before Docker and while another
    /// run holds the lock. Replacing the table is one transaction, so racing a converge that
    /// loads a newer list is harmless: either table keeps :443 Cloudflare-only.
    pub async fn load(&self, host: &Host) -> Result<Loaded> {
        let families = self.observe_stored(host)?;
        let origin = observe_origin(host, false).await?;
        let s = State {
            families,
            now: SystemTime::now(),
            origin: Some(origin),
        };
        let choices: Vec<ListChoice> = s.families.iter().map(|f| self.choose_list(f)).collect();
        let spec = self.origin_spec(&s);
        let sources = s
            .families
            .iter()
            .zip(&choices)
            .map(|(f, c)| {
                (
                    f.family,
                    match c.source {
                        Source::BuiltIn => "built-in",
                        _ => "last-good",
                    },
                )
            })
            .collect();
        let notes = choices.iter().flat_map(|c| c.notes.clone()).collect();
        let step = self.origin_step(&s)?;
        let was = match &step {
            Some(Step::Origin { have, spec, .. }) => Some(was(have.as_ref(), spec)),
            _ => None,
        };
        if let Some(Step::Origin { spec, script, .. }) = &step {
            self.apply_origin(host, spec, script).await?;
        }
        Ok(Loaded {
            changed: step.is_some(),
            was,
            summary: spec.summary(),
            sources,
            notes,
        })
    }
}

impl Firewall {
    pub fn show_origin(&self, s: &State) -> Option<ShownOrigin> {
        let o = s.origin.as_ref()?;
        let spec = self.origin_spec(s);
        let (shape, drift) = match &o.table {
            Ok(have) => (have.clone(), origin::drift(have.as_ref(), &spec.shape())),
            Err(e) => (None, Some(e.clone())),
        };
        Some(ShownOrigin {
            table: format!("{} {}", origin::FAMILY, origin::TABLE),
            in_force: shape.is_some(),
            drift,
            wanted: spec.summary(),
            shape,
            listeners: o.listeners.clone(),
            docker_nftables_backend: o.docker_nft,
        })
    }

    /// `origin lock` and `listeners :443`: the table is in force, and covers every socket
    /// that would answer on :443.
    pub(super) fn origin_checks(&self, s: &State) -> Vec<Check> {
        let fix = "sapari-agent firewall load";
        let Some(o) = &s.origin else {
            return vec![];
        };
        let spec = self.origin_spec(s);
        let lock = match &o.table {
            Err(e) => Check::new(
                "origin lock",
                Level::Fail,
                format!("cannot be checked: {e}"),
                "apt-get install nftables, then sapari-agent firewall load",
            ),
            Ok(have) => match origin::drift(have.as_ref(), &spec.shape()) {
                None => Check::new(
                    "origin lock",
                    Level::Pass,
                    format!(
                        "table {} {}: {}",
                        origin::FAMILY,
                        origin::TABLE,
                        spec.summary()
                    ),
                    fix,
                ),
                Some(d) => Check::new("origin lock", Level::Fail, d, fix),
            },
        };
        let covered = lock.level == Level::Pass;
        let socks: Vec<String> = o
            .listeners
            .iter()
            .map(|l| format!("{}/{} {}", l.proto, l.family, l.local))
            .collect();
        let listeners = if socks.is_empty() {
            Check::new(
                "listeners :443",
                Level::Pass,
                "nothing listens on :443 here (published ports may still reach containers through DNAT)",
                "",
            )
        } else if covered {
            Check::new(
                "listeners :443",
                Level::Pass,
                format!("{}: v4 and v6 covered by the origin lock", socks.join(", ")),
                "",
            )
        } else {
            Check::new(
                "listeners :443",
                Level::Fail,
                format!(
                    "{} answer on :443 and the origin lock is not in force: every address reaches them",
                    socks.join(", ")
                ),
                fix,
            )
        };
        vec![lock, listeners]
    }

    /// A family without Docker's chains: fine on Docker's nftables backend or docker-proxy's
    /// IPv6 path when the origin lock is in force, a failure when a dockerd here has no rules.
    pub(super) fn no_chains_check(s: &State, fam: Family, origin_ok: bool) -> Check {
        let name = &format!("docker-user {}", fam.as_str());
        let any_chains = s.families.iter().any(|f| f.docker.is_some());
        let docker_nft = s.origin.as_ref().is_some_and(|o| o.docker_nft);
        let dockerd_here = s.origin.as_ref().is_some_and(|o| o.dockerd_here);
        let fix = format!("start Docker; {UNIT} then applies the rules");
        if docker_nft {
            return Check::new(
                name,
                if origin_ok { Level::Pass } else { Level::Fail },
                "Docker runs its nftables firewall backend (no DOCKER-USER chain): the origin lock is what keeps :443 Cloudflare-only",
                "sapari-agent firewall load",
            );
        }
        if dockerd_here && !any_chains {
            return Check::new(
                name,
                Level::Fail,
                "dockerd runs here but neither its iptables chains nor its nftables tables exist (\"iptables\": false?): the agent cannot tell how Docker publishes ports",
                "remove \"iptables\": false from /etc/docker/daemon.json and restart Docker",
            );
        }
        match fam {
            Family::V6 if any_chains => Check::new(
                name,
                if origin_ok { Level::Pass } else { Level::Fail },
                "Docker has no ip6tables chains (its default): docker-proxy serves published ports over IPv6 through INPUT, where the origin lock filters :443",
                "sapari-agent firewall load",
            ),
            _ => Check::new(
                name,
                Level::Warn,
                "Docker's iptables chains do not exist (dockerd not running?)",
                &fix,
            ),
        }
    }
}
