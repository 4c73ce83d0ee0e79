//! `firewall`: Docker publishes ports past UFW, so Docker's DOCKER-USER chain is the one place
//! that can keep the origin's :443 reachable only through Cloudflare. Per address family the
//! agent owns that chain entirely and replaces it in one `iptables-restore --noflush`
//! transaction (nothing half-applied), with Cloudflare's published lists fetched over HTTPS,
//! validated, and kept as a last good copy for the days the fetch fails.
//!
//! Observe reads the tables of the iptables backend that holds Docker's chains, the default
//! routes, the stored lists, and (unless offline) fetches the lists; plan is pure; apply runs
//! one restore per family, verifies it from `iptables-save`, and only then stores the list.

pub mod lists;
mod lock;
pub use lock::{Loaded, ShownOrigin, observe_origin};
pub mod builtin_lists;
mod choice;
pub mod origin;
pub mod rollback;
pub mod rules;
mod show;
// The old name, for lists.rs until it says `builtin_lists` itself.
pub use show::{Shown, ShownList, Verdict, render_show};

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, anyhow, bail};
use async_trait::async_trait;
use ipnet::IpNet;

use crate::config::{AgentSettings, FirewallSettings};
use crate::engine::Name;
use crate::engine::{Change, Check, Describe, Level, Plan, Resource};
use crate::host::sockets::Listener;
use crate::host::{FileSpec, Host, iptables, state_dir};
use lists::{Family, LastGood, Stored};
use origin::Shape;
use rules::{Backend, CHAIN, FilterTable, ForwardJump, Rule};

const PROC_ROUTE_V4: &str = "/proc/net/route";
const PROC_ROUTE_V6: &str = "/proc/net/ipv6_route";
const UNIT: &str = "sapari-docker-firewall.service";

pub struct Firewall {
    cfg: FirewallSettings,
    state_dir: PathBuf,
    /// Fetch the lists (converge, plan, status), or use only what is stored (`firewall check`,
    /// `firewall show`).
    online: bool,
    /// Lists fetched in this run: the observation that verifies an apply must see the same
    /// lists, and must not cost a second round of downloads.
    fetched: tokio::sync::Mutex<Vec<Fetched>>,
}

impl Firewall {
    pub fn new(cfg: &FirewallSettings, agent: &AgentSettings) -> Self {
        Self {
            cfg: cfg.clone(),
            state_dir: agent.state_dir.clone(),
            online: true,
            fetched: tokio::sync::Mutex::new(Vec::new()),
        }
    }

    /// Never fetches: judges the chain against the last good (or built-in) lists.
    pub fn offline(cfg: &FirewallSettings, agent: &AgentSettings) -> Self {
        Self {
            online: false,
            ..Self::new(cfg, agent)
        }
    }

    fn url(&self, fam: Family) -> &str {
        match fam {
            Family::V4 => &self.cfg.list_url_v4,
            Family::V6 => &self.cfg.list_url_v6,
        }
    }
}

/// The outcome of fetching one list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    pub family: Family,
    pub url: String,
    /// RFC 3339 time of the fetch.
    pub at: String,
    /// The validated, aggregated list, or why there is none (names the URL, line or range).
    pub result: Result<Vec<IpNet>, String>,
}

#[derive(Debug, Clone)]
pub struct FamilyState {
    pub family: Family,
    /// The backend whose tables hold Docker's chains, and its filter table. None: Docker's
    /// chains do not exist for this family.
    pub docker: Option<(Backend, FilterTable)>,
    /// Something worth saying about the backend choice (both had Docker chains, no iptables).
    pub backend_note: Option<String>,
    pub last_good: LastGood,
    /// None when not fetched (offline, or nothing to manage).
    pub fetched: Option<Fetched>,
    /// The interface of this family's default route.
    pub route_iface: Option<String>,
}

#[derive(Debug, Clone)]
pub struct State {
    /// Empty when `firewall.enabled = false`.
    pub families: Vec<FamilyState>,
    pub now: SystemTime,
    /// None when `firewall.enabled = false`.
    pub origin: Option<OriginState>,
}

/// The origin lock's table and what decides whether it covers every path to :443.
#[derive(Debug, Clone)]
pub struct OriginState {
    /// The table as `nft -j` shows it; None: absent; Err: `nft` missing or failing.
    pub table: Result<Option<Shape>, String>,
    /// Docker's nftables backend (Docker 29) holds its rules in `docker-bridges` tables,
    /// and has no DOCKER-USER chain.
    pub docker_nft: bool,
    /// A dockerd runs in this network namespace.
    pub dockerd_here: bool,
    /// Sockets that would answer on :443.
    pub listeners: Vec<Listener>,
}

/// Where the list in force comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Fetched in this run; `since` is when the same content was first stored.
    Fetched {
        url: String,
        at: String,
        since: Option<String>,
    },
    LastGood(Stored),
    BuiltIn,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ListChoice {
    pub nets: Vec<IpNet>,
    pub source: Source,
    pub sha256: String,
    /// Why this list and not a fresher one (fetch failures, damaged state files).
    pub notes: Vec<String>,
    /// The fetched list differs from the stored one: store it (after the chain is applied).
    pub store: Option<Step>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Replace the origin lock's nftables table in one `nft -f` transaction.
    Origin {
        have: Option<Shape>,
        spec: origin::Spec,
        script: String,
    },
    /// Replace the family's DOCKER-USER chain (and move FORWARD's jump to the top) in one
    /// restore transaction.
    Chain {
        family: Family,
        backend: Backend,
        have: Option<Vec<Rule>>,
        want: Vec<Rule>,
        jump: ForwardJump,
        restore: String,
    },
    /// Keep a freshly fetched list as the last good one.
    StoreList {
        family: Family,
        url: String,
        at: String,
        old: Option<Vec<IpNet>>,
        nets: Vec<IpNet>,
    },
}

fn rendered(rules: &[Rule]) -> String {
    rules.iter().map(|r| r.render(CHAIN) + "\n").collect()
}

impl Describe for Step {
    fn change(&self) -> Change {
        match self {
            Step::Origin { have, spec, .. } => Change::value(
                format!("nftables table {} {}", origin::FAMILY, origin::TABLE),
                Some(lock::was(have.as_ref(), spec)),
                Some(spec.summary()),
            ),
            Step::Chain {
                family,
                have,
                want,
                jump,
                ..
            } => {
                let mut from = match have {
                    Some(h) => rules::summary(h),
                    None => "absent".into(),
                };
                let foreign = have.iter().flatten().filter(|r| !r.is_ours()).count();
                if foreign > 0 {
                    from.push_str(&format!(", {foreign} not from sapari-agent"));
                }
                let mut to = rules::summary(want);
                if !jump.first() {
                    from.push_str(&format!("; {}", jump.describe()));
                    to.push_str("; FORWARD jumps to DOCKER-USER first");
                }
                let label = format!("{CHAIN} {}", family.as_str());
                let old = rendered(have.as_deref().unwrap_or(&[]));
                let new = rendered(want);
                // From an empty chain the summary says it all; a diff shows what drifted.
                let diff = (old != new && !old.is_empty()).then(|| {
                    similar::TextDiff::from_lines(&old, &new)
                        .unified_diff()
                        .context_radius(1)
                        .header(&format!("{label} (in force)"), &format!("{label} (wanted)"))
                        .to_string()
                });
                Change {
                    what: label,
                    from: Some(from),
                    to: Some(to),
                    diff,
                }
            }
            Step::StoreList {
                family,
                url,
                old,
                nets,
                ..
            } => {
                let from = match old {
                    Some(o) => format!("{} ranges", o.len()),
                    None => "none stored".into(),
                };
                let to = match old {
                    Some(o) if o != nets => format!(
                        "{} ranges from {url}: {}",
                        nets.len(),
                        lists::list_diff(o, nets)
                    ),
                    _ => format!("{} ranges from {url}", nets.len()),
                };
                Change::value(
                    format!("Cloudflare {} list", family.label()),
                    Some(from),
                    Some(to),
                )
            }
        }
    }
}

fn age(now: SystemTime, at: &str) -> Option<String> {
    let t = humantime::parse_rfc3339(at).ok()?;
    let d = now.duration_since(t).unwrap_or(Duration::ZERO).as_secs();
    Some(match d {
        0..120 => "just now".into(),
        120..7200 => format!("{} minutes ago", d / 60),
        7200..172_800 => format!("{} hours ago", d / 3600),
        _ => format!("{} days ago", d / 86_400),
    })
}

// ---- observation ----------------------------------------------------------------------------

pub async fn save(host: &Host, backend: Backend, fam: Family) -> Result<FilterTable> {
    let cmd = iptables::save_filter(&backend.save(fam));
    let out = host.query(&cmd).await?.success_of(&cmd)?;
    rules::parse_save(&out.stdout).map_err(|e| anyhow!("cannot parse the output of `{cmd}`: {e}"))
}

/// The filter table of the backend holding Docker's chains, or why there is none. When both
/// the nft and the legacy programs exist, both are read (the legacy one only when its filter
/// table exists, so that reading does not load legacy modules on an nft machine).
pub async fn observe_docker(
    host: &Host,
    fam: Family,
) -> Result<(Option<(Backend, FilterTable)>, Option<String>)> {
    let nft = host.program_exists(&Backend::Nft.save(fam));
    let legacy = host.program_exists(&Backend::Legacy.save(fam));
    let candidates: Vec<Backend> = if nft && legacy {
        if iptables::legacy_filter_loaded(host, fam)? {
            vec![Backend::Nft, Backend::Legacy]
        } else {
            vec![Backend::Nft]
        }
    } else if host.program_exists(&Backend::Default.save(fam)) {
        vec![Backend::Default]
    } else {
        return Ok((
            None,
            Some(format!("{} is not installed", Backend::Default.save(fam))),
        ));
    };
    let mut tables = Vec::new();
    for b in candidates {
        tables.push((b, save(host, b, fam).await?));
    }
    let refs: Vec<(Backend, &FilterTable)> = tables.iter().map(|(b, t)| (*b, t)).collect();
    let Some((chosen, note)) = rules::choose_backend(&refs) else {
        return Ok((None, None));
    };
    let table = tables
        .into_iter()
        .find(|(b, _)| *b == chosen)
        .map(|(_, t)| t)
        .expect("chosen among the candidates");
    Ok((Some((chosen, table)), note))
}

impl Firewall {
    async fn fetch_lists(&self, host: &Host, fams: &[Family]) -> Vec<Fetched> {
        let mut cache = self.fetched.lock().await;
        let missing: Vec<Family> = fams
            .iter()
            .copied()
            .filter(|f| !cache.iter().any(|c| c.family == *f))
            .collect();
        if !missing.is_empty() {
            let at = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
            let client = match &self.cfg.ca_file {
                Some(p) => match host.read(&p.0) {
                    Ok(Some(f)) => {
                        lists::client(self.cfg.fetch_timeout.0, Some((&p.0, &f.content)))
                    }
                    Ok(None) => Err(format!("firewall.ca_file {} does not exist", p.0.display())),
                    Err(e) => Err(format!("firewall.ca_file: {e:#}")),
                },
                None => lists::client(self.cfg.fetch_timeout.0, None),
            };
            let results = match &client {
                Ok(c) => {
                    futures_util::future::join_all(missing.iter().map(|f| {
                        lists::fetch(
                            c,
                            self.url(*f),
                            *f,
                            self.cfg.max_list_bytes,
                            self.cfg.max_entries,
                        )
                    }))
                    .await
                }
                Err(e) => missing.iter().map(|_| Err(e.clone())).collect(),
            };
            for (f, result) in missing.iter().zip(results) {
                cache.push(Fetched {
                    family: *f,
                    url: self.url(*f).to_string(),
                    at: at.clone(),
                    result,
                });
            }
        }
        cache
            .iter()
            .filter(|c| fams.contains(&c.family))
            .cloned()
            .collect()
    }
}

// ---- apply ----------------------------------------------------------------------------------

impl Firewall {
    async fn apply_chain(
        &self,
        host: &Host,
        fam: Family,
        backend: Backend,
        want: &[Rule],
        restore: &str,
    ) -> Result<()> {
        let cmd = iptables::restore_noflush(backend, fam, restore);
        host.run(&cmd).await.with_context(|| {
            format!(
                "the {} {CHAIN} chain was not replaced and is as it was",
                fam.label()
            )
        })?;
        // Read it back: the transaction only counts if the kernel holds what was meant.
        let t = save(host, backend, fam).await?;
        let have = t.has_chain(CHAIN).then(|| t.rules_of(CHAIN));
        if let Some(d) = rules::drift(have.as_deref(), want) {
            bail!("after `{cmd}`, {d}");
        }
        let jump = ForwardJump::of(&t);
        if !jump.first() {
            bail!("after `{cmd}`, {}", jump.describe());
        }
        Ok(())
    }

    fn store(&self, host: &Host, fam: Family, url: &str, at: &str, nets: &[IpNet]) -> Result<()> {
        let dir = &self.state_dir;
        state_dir::ensure(host, dir)?;
        let body = lists::render_list(nets);
        let meta = lists::ListMeta {
            family: fam,
            source: url.to_string(),
            fetched_at: at.to_string(),
            sha256: lists::sha256_hex(body.as_bytes()),
            count: nets.len(),
        };
        let mut json = serde_json::to_vec_pretty(&meta)?;
        json.push(b'\n');
        host.write(
            &lists::list_path(dir, fam),
            body.as_bytes(),
            FileSpec::root(state_dir::CLOUDFLARE_MODE),
            false,
        )?;
        host.write(
            &lists::meta_path(dir, fam),
            &json,
            FileSpec::root(state_dir::CLOUDFLARE_MODE),
            false,
        )
    }
}

impl Firewall {
    /// Both families with their stored lists and default routes; no Docker, nothing fetched.
    fn observe_stored(&self, host: &Host) -> Result<Vec<FamilyState>> {
        let r4 = host
            .read_text(Path::new(PROC_ROUTE_V4))?
            .unwrap_or_default();
        let r6 = host
            .read_text(Path::new(PROC_ROUTE_V6))?
            .unwrap_or_default();
        let mut families = Vec::new();
        for fam in Family::ALL {
            let path = lists::list_path(&self.state_dir, fam);
            let txt = host.read_state(&path)?;
            let meta = host.read_state(&lists::meta_path(&self.state_dir, fam))?;
            let last_good = lists::read_last_good(
                fam,
                txt.as_deref(),
                meta.as_deref(),
                self.cfg.max_entries,
                &path,
            );
            families.push(FamilyState {
                family: fam,
                docker: None,
                backend_note: None,
                last_good,
                fetched: None,
                route_iface: match fam {
                    Family::V4 => rules::default_iface_v4(&r4),
                    Family::V6 => rules::default_iface_v6(&r6),
                },
            });
        }
        Ok(families)
    }
}

#[async_trait]
impl Resource for Firewall {
    type State = State;
    type Step = Step;

    fn name(&self) -> Name {
        Name::Firewall
    }

    fn disabled(&self) -> Option<&'static str> {
        (!self.cfg.enabled).then_some("firewall.enabled")
    }
    fn disabled_checks(&self) -> Vec<Check> {
        vec![Check::new(
            "docker-user",
            Level::Warn,
            "not managed (firewall.enabled = false): Docker-published :443 is open to every address",
            "set firewall.enabled = true in /etc/sapari-agent/agent.toml",
        )]
    }

    fn depends_on(&self) -> &'static [Name] {
        &[Name::Docker]
    }

    async fn observe(&self, host: &Host) -> Result<State> {
        let now = SystemTime::now();
        // `firewall show` and `firewall check` observe directly, without the engine.
        if !self.cfg.enabled {
            return Ok(State {
                families: vec![],
                now,
                origin: None,
            });
        }
        let (d4, d6) = futures_util::future::join(
            observe_docker(host, Family::V4),
            observe_docker(host, Family::V6),
        )
        .await;
        let mut families = self.observe_stored(host)?;
        for (f, d) in families.iter_mut().zip([d4?, d6?]) {
            (f.docker, f.backend_note) = d;
        }
        if self.online {
            let all: Vec<Family> = Family::ALL.to_vec();
            for fetched in self.fetch_lists(host, &all).await {
                if let Some(f) = families.iter_mut().find(|f| f.family == fetched.family) {
                    f.fetched = Some(fetched);
                }
            }
        }
        let chains = families.iter().any(|f| f.docker.is_some());
        let origin = Some(observe_origin(host, !chains).await?);
        Ok(State {
            families,
            now,
            origin,
        })
    }

    fn plan(&self, s: &State) -> Result<Plan<Step>> {
        let mut plan = Plan::default();
        let choices: Vec<ListChoice> = s.families.iter().map(|f| self.choose_list(f)).collect();
        for c in &choices {
            plan.notes.extend(c.notes.iter().cloned());
        }
        if let Some(st) = self.origin_step(s)? {
            plan.steps.push(st);
        }
        let spec = self.origin_spec(s);
        if spec.wan.is_empty() {
            plan.notes.push(format!(
                "no WAN interface known (no default route, firewall.wan_interface empty): {}",
                spec.summary()
            ));
        }
        if s.families.iter().all(|f| f.docker.is_none()) {
            plan.notes.push(format!(
                "Docker's iptables chains do not exist (dockerd not running, not installed, or on its nftables backend): the origin lock alone keeps :443 Cloudflare-only; {UNIT} fills DOCKER-USER when Docker starts"
            ));
        }
        for (f, choice) in s.families.iter().zip(choices) {
            if let Some((backend, table)) = &f.docker {
                let (_choice, _wan, want) = self.want(s, f)?;
                plan.notes.extend(f.backend_note.iter().cloned());
                let have = table.has_chain(CHAIN).then(|| table.rules_of(CHAIN));
                let jump = ForwardJump::of(table);
                if rules::drift(have.as_deref(), &want).is_some() || !jump.first() {
                    plan.steps.push(Step::Chain {
                        family: f.family,
                        backend: *backend,
                        restore: rules::restore_text(&want, &jump),
                        have,
                        want,
                        jump,
                    });
                }
            } else if s.families.iter().any(|x| x.docker.is_some()) {
                plan.notes.push(Self::unmanaged_note(f));
            }
            if let Some(st) = choice.store {
                plan.steps.push(st);
            }
        }
        Ok(plan)
    }

    async fn apply(&self, host: &Host, _s: &State, steps: &[Step]) -> Result<()> {
        let mut failed = Vec::new();
        // The origin lock first: it is what keeps :443 closed whatever Docker does.
        for step in steps {
            let r = match step {
                Step::Origin { spec, script, .. } => self
                    .apply_origin(host, spec, script)
                    .await
                    .map_err(|e| format!("origin lock: {e:#}")),
                Step::Chain {
                    family,
                    backend,
                    want,
                    restore,
                    ..
                } => self
                    .apply_chain(host, *family, *backend, want, restore)
                    .await
                    .map_err(|e| format!("{}: {e:#}", family.label())),
                Step::StoreList { .. } => Ok(()),
            };
            if let Err(e) = r {
                failed.push(e);
            }
        }
        if !failed.is_empty() {
            bail!(
                "{}{}",
                failed.join("; "),
                if steps.iter().any(|s| matches!(s, Step::StoreList { .. })) {
                    " (the fetched lists were not stored)"
                } else {
                    ""
                }
            );
        }
        for step in steps {
            if let Step::StoreList {
                family,
                url,
                at,
                nets,
                ..
            } = step
            {
                self.store(host, *family, url, at, nets)?;
            }
        }
        Ok(())
    }

    fn checks(&self, s: &State) -> Vec<Check> {
        let fix = "sapari-agent firewall apply";
        let mut out = self.origin_checks(s);
        let origin_ok = out.first().is_some_and(|c| c.level == Level::Pass);
        for f in &s.families {
            let fam = f.family.as_str();
            let name = format!("docker-user {fam}");
            let choice = self.choose_list(f);
            out.push(self.list_check(s, f, &choice));
            let Some((_, table)) = &f.docker else {
                out.push(Self::no_chains_check(s, f.family, origin_ok));
                continue;
            };
            let (_, wan, want) = match self.want(s, f) {
                Ok(x) => x,
                Err(e) => {
                    out.push(Check::new(&name, Level::Fail, format!("{e:#}"), fix));
                    continue;
                }
            };
            let have = table.has_chain(CHAIN).then(|| table.rules_of(CHAIN));
            out.push(match rules::drift(have.as_deref(), &want) {
                None => Check::new(
                    &name,
                    Level::Pass,
                    format!(
                        "{} on {wan}: only Cloudflare reaches :443",
                        rules::summary(&want)
                    ),
                    fix,
                ),
                Some(d) => Check::new(&name, Level::Fail, d, fix),
            });
            let jump = ForwardJump::of(table);
            out.push(Check::new(
                &format!("forward jump {fam}"),
                if jump.first() {
                    Level::Pass
                } else {
                    Level::Fail
                },
                jump.describe(),
                fix,
            ));
        }
        out
    }
}

impl Firewall {
    /// Where the list in force for a family comes from, and whether that is a worry.
    fn list_check(&self, s: &State, f: &FamilyState, choice: &ListChoice) -> Check {
        let (level, detail) = match &choice.source {
            Source::Fetched { url, since, .. } => (
                Level::Pass,
                format!(
                    "{} ranges fetched from {url}{}, sha256 {}",
                    choice.nets.len(),
                    since
                        .as_ref()
                        .map(|t| format!(" (unchanged since {t})"))
                        .unwrap_or_default(),
                    lists::short(&choice.sha256)
                ),
            ),
            Source::LastGood(st) => {
                let when = st
                    .meta
                    .as_ref()
                    .map(|m| {
                        format!(
                            "fetched {} ({}) from {}",
                            m.fetched_at,
                            age(s.now, &m.fetched_at).unwrap_or_else(|| "?".into()),
                            m.source
                        )
                    })
                    .unwrap_or_else(|| "source unknown".into());
                let failed = f.fetched.as_ref().and_then(|x| x.result.clone().err());
                match failed {
                    Some(e) => (
                        Level::Warn,
                        format!(
                            "last good list ({} ranges, {when}) in use: {e}",
                            st.nets.len()
                        ),
                    ),
                    None => (
                        Level::Pass,
                        format!("last good list: {} ranges, {when}", st.nets.len()),
                    ),
                }
            }
            Source::BuiltIn => (
                Level::Warn,
                format!(
                    "the list built into sapari-agent {} is in force ({} ranges){}",
                    crate::engine::VERSION,
                    choice.nets.len(),
                    f.fetched
                        .as_ref()
                        .and_then(|x| x.result.clone().err())
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default()
                ),
            ),
        };
        Check::new(
            &format!("cloudflare list {}", f.family.as_str()),
            level,
            detail,
            &format!("check that this machine reaches {}", self.url(f.family)),
        )
    }
}

#[cfg(test)]
mod tests;
