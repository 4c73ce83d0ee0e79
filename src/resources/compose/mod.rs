//! `compose`: the application stack under `docker compose up -d`, sized for the box (the
//! runbook's CPX62 values, or the compose file's staging defaults), gated by the production
//! security validator, and idempotent: a hash of everything that shapes the stack is kept,
//! and nothing is recreated when it is unchanged and every service runs. A changed
//! Caddyfile forces a recreate of caddy alone (the runbook's F1 gotcha).

pub mod profile;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Result, bail};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::{AgentSettings, ComposeSettings, ProfileChoice};
use crate::engine::Name;
use crate::engine::{Change, Check, Describe, Level, Plan, Resource};
use crate::envcheck::{self, Severity};
use crate::host::{Cmd, FileSpec, Host, http, state_dir};
use profile::{Budget, Profile};

use state_dir::{COMPOSE_ENV as AGENT_ENV, COMPOSE_STATE as STATE_FILE};

pub struct Compose {
    cfg: ComposeSettings,
    state_dir: PathBuf,
}

impl Compose {
    pub fn new(cfg: &ComposeSettings, agent: &AgentSettings) -> Self {
        Self {
            cfg: cfg.clone(),
            state_dir: agent.state_dir.clone(),
        }
    }

    fn dir(&self) -> &Path {
        &self.cfg.project_dir.0
    }

    fn agent_env_path(&self) -> PathBuf {
        self.state_dir.join(AGENT_ENV)
    }
}

pub use crate::host::compose::Flavor;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Saved {
    pub hash: String,
    pub caddyfile_sha256: Option<String>,
}

#[derive(Debug, Clone)]
pub struct State {
    pub project: bool,
    pub compose_text: Option<String>,
    pub env_text: Option<String>,
    pub caddyfile_sha256: Option<String>,
    pub agent_env: Option<String>,
    pub saved: Option<Saved>,
    pub flavor: Option<Flavor>,
    pub services: BTreeSet<String>,
    pub running: BTreeSet<String>,
    pub box_cpus: usize,
    pub box_memory: u64,
    pub health: Vec<(String, Result<u16, String>)>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    WriteEnv { old: Option<String>, new: String },
    Up { why: String },
    RecreateCaddy,
}

impl Describe for Step {
    fn change(&self) -> Change {
        match self {
            Step::WriteEnv { old, new } => {
                Change::file("agent env file (compose.env)", old.as_deref(), new)
            }
            Step::Up { why } => Change::value("stack", Some(why.clone()), Some("up -d".into())),
            Step::RecreateCaddy => Change::value(
                "caddy",
                Some("Caddyfile changed".into()),
                Some("force-recreated".into()),
            ),
        }
    }
}

/// A value as compose-go reads it back literally: bare when nothing in it means anything
/// to the dotenv reader (the profile's `6g`, `4.0`), else single-quoted, where `$`, ` #`
/// and `"` are plain text. [`Compose::check_overrides`] has refused what single quotes
/// cannot hold (a `'`, a trailing backslash, a line break).
fn env_value(v: &str) -> String {
    let plain = v
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"_.,:/@%+=-".contains(&b));
    if plain {
        v.to_string()
    } else {
        format!("'{v}'")
    }
}

impl Compose {
    fn profile(&self, s: &State) -> Profile {
        match self.cfg.profile {
            ProfileChoice::Cpx62 => Profile::Cpx62,
            ProfileChoice::Staging => Profile::Staging,
            ProfileChoice::Auto => Profile::auto(s.box_cpus, s.box_memory),
        }
    }

    /// The agent's env file for this state, and the budget it implies.
    pub fn resolve(&self, s: &State) -> (String, Budget) {
        let (agent, all) = profile::resolve(
            s.compose_text.as_deref().unwrap_or(""),
            self.profile(s),
            &self.cfg.overrides,
        );
        let mut env = format!(
            "# Managed by sapari-agent: profile {} plus [compose.overrides]. Passed to compose after the operator's env file, so these values win.\n",
            self.profile(s).name()
        );
        for (k, v) in &agent {
            env.push_str(&format!("{k}={}\n", env_value(v)));
        }
        (
            env,
            Budget::new(&all, s.box_memory, s.box_cpus, self.cfg.memory_headroom.0),
        )
    }

    /// The config reader checks `[compose.overrides]`; a config built another way must not
    /// put a line break or a stray quote into compose.env either.
    fn check_overrides(&self) -> Result<()> {
        for (k, v) in &self.cfg.overrides {
            crate::config::check_override(k, v)
                .map_err(|e| anyhow::anyhow!("{e}; no container was changed"))?;
        }
        Ok(())
    }

    fn hash(&self, s: &State, agent_env: &str) -> String {
        let mut h = Sha256::new();
        for part in [
            s.compose_text.as_deref().unwrap_or(""),
            s.env_text.as_deref().unwrap_or(""),
            agent_env,
        ] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part.as_bytes());
        }
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The compose invocation for this project, with both env files.
    fn cmd(&self, flavor: Flavor) -> Cmd {
        let dir = self.dir();
        let mut c = match flavor {
            Flavor::V2 => Cmd::new("docker").arg("compose"),
            // --compatibility turns deploy.resources.limits into real limits in v1.
            Flavor::V1 => Cmd::new("docker-compose").arg("--compatibility"),
        };
        if !self.cfg.project_name.is_empty() {
            c = c.args(["-p", &self.cfg.project_name]);
        }
        c = c
            .args(["--project-directory", &dir.to_string_lossy()])
            .args(["-f", &dir.join(&self.cfg.compose_file).to_string_lossy()])
            .args([
                "--env-file",
                &dir.join(&self.cfg.env_file).to_string_lossy(),
            ]);
        if flavor == Flavor::V2 {
            c = c.args(["--env-file", &self.agent_env_path().to_string_lossy()]);
        }
        c.timeout(Duration::from_secs(900))
    }

    /// v1 reads a single env file: the agent's values go in the process environment, which
    /// every compose version ranks above env files.
    fn with_agent_env(&self, mut c: Cmd, flavor: Flavor, agent_env: &str) -> Cmd {
        if flavor == Flavor::V1 {
            for (k, v) in envcheck::parse(agent_env).vars {
                c = c.env(&k, &v);
            }
        }
        c
    }
}

impl Compose {
    /// The operator's env file and the compose command, or `None` with a note when there
    /// is nothing to manage yet; an error when the project is there but incomplete.
    fn inputs<'a>(
        &self,
        s: &'a State,
        notes: &mut Vec<String>,
    ) -> Result<Option<(&'a str, Flavor)>> {
        let dir = self.dir().display();
        if !s.project {
            notes.push(format!(
                "{dir} does not exist yet: clone the application there (runbook Phase 3.1), then converge"
            ));
            return Ok(None);
        }
        if s.compose_text.is_none() {
            bail!(
                "{dir}/{} is missing (compose.compose_file)",
                self.cfg.compose_file
            );
        }
        let Some(env_text) = &s.env_text else {
            bail!(
                "{dir}/{} is missing: copy backend/.env.production.example there and fill in every value (runbook Phase 3.1)",
                self.cfg.env_file
            );
        };
        let Some(flavor) = s.flavor else {
            bail!(
                "no compose command: neither `docker compose` nor `docker-compose` answers (the docker resource installs it)"
            );
        };
        Ok(Some((env_text, flavor)))
    }

    /// Limits Docker would refuse, or that the box cannot hold, stop the plan; CPU
    /// oversubscription is only a note.
    fn check_budget(&self, budget: &Budget, notes: &mut Vec<String>) -> Result<()> {
        if budget.memory_overcommitted() {
            bail!(
                "memory limits add up to {:.2} GiB, more than this box's {:.2} GiB minus {} headroom: lower them in [compose.overrides] or compose.profile; no container was changed",
                budget.memory_total as f64 / (1u64 << 30) as f64,
                budget.box_memory as f64 / (1u64 << 30) as f64,
                self.cfg.memory_headroom
            );
        }
        let too_wide = budget.cpu_limit_above_box();
        if !too_wide.is_empty() {
            let list: Vec<String> = too_wide
                .iter()
                .map(|l| format!("{} {:.2}", l.group, l.cpus.unwrap_or_default()))
                .collect();
            bail!(
                "CPU limits above this box's {} vCPUs, which Docker refuses to create: {}; lower the *_CPUS values in [compose.overrides] or pick another compose.profile; no container was changed",
                budget.box_cpus,
                list.join(", ")
            );
        }
        if budget.cpu_oversubscribed() {
            notes.push(format!(
                "CPU limits add up to {:.2} for {} vCPUs (oversubscribed; the runbook accepts this on shared vCPUs)",
                budget.cpus_total, budget.box_cpus
            ));
        }
        Ok(())
    }

    /// The production security check, over what compose will actually use.
    fn check_env(&self, env_text: &str, agent_env: &str, notes: &mut Vec<String>) -> Result<()> {
        let operator = envcheck::parse(env_text);
        // Only keys whose value the agent actually changes are worth a line.
        let shadowed: Vec<String> = envcheck::parse(agent_env)
            .vars
            .into_iter()
            .filter(|(k, v)| operator.get(k).is_some_and(|o| o != v))
            .map(|(k, _)| k)
            .collect();
        if !shadowed.is_empty() {
            let names: Vec<&str> = shadowed.iter().map(String::as_str).collect();
            notes.push(format!(
                "set in {} but overridden by the agent's values (use [compose.overrides] to change them): {}",
                self.cfg.env_file,
                names.join(", ")
            ));
        }
        // What compose uses: v2 reads `--env-file <env_file> --env-file compose.env` into
        // one map, the later file winning (v1 gets compose.env in its process environment,
        // which also wins), so the check runs over that merge, not the operator's file alone.
        let merged = envcheck::parse_files(&[
            (self.cfg.env_file.as_str(), env_text),
            (AGENT_ENV, agent_env),
        ]);
        let findings = envcheck::check(&merged);
        let fails: Vec<String> = findings
            .iter()
            .filter(|f| f.severity == Severity::Fail)
            .map(|f| format!("{}: {}", f.key, f.problem))
            .collect();
        if !fails.is_empty() {
            bail!(
                "{} with the agent's values ([compose.overrides] and the profile) fails the production security check, so the stack was not started or changed: {}",
                self.cfg.env_file,
                fails.join("; ")
            );
        }
        for f in findings.iter().filter(|f| f.severity == Severity::Warn) {
            notes.push(format!("env warning: {}: {}", f.key, f.problem));
        }
        Ok(())
    }

    /// What to change: the agent's env file, the stack, caddy.
    fn steps(&self, s: &State, agent_env: &str) -> Vec<Step> {
        let mut steps = Vec::new();
        if s.agent_env.as_deref() != Some(agent_env) {
            steps.push(Step::WriteEnv {
                old: s.agent_env.clone(),
                new: agent_env.to_string(),
            });
        }
        let hash = self.hash(s, agent_env);
        let stopped: Vec<&String> = s.services.difference(&s.running).collect();
        let why = if s.saved.as_ref().is_none_or(|v| v.hash != hash) {
            Some("configuration changed".to_string())
        } else if s.services.is_empty() {
            Some("no service found".to_string())
        } else if !stopped.is_empty() {
            Some(format!(
                "not running: {}",
                stopped
                    .iter()
                    .map(|x| x.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        } else {
            None
        };
        if let Some(why) = why {
            steps.push(Step::Up { why });
        }
        if let (Some(saved), Some(now)) = (&s.saved, &s.caddyfile_sha256)
            && saved
                .caddyfile_sha256
                .as_ref()
                .is_some_and(|old| old != now)
            && s.services.contains(&self.cfg.caddy_service)
        {
            steps.push(Step::RecreateCaddy);
        }
        steps
    }
}

fn lines(s: &str) -> BTreeSet<String> {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

async fn health(url: &str) -> Result<u16, String> {
    let client = http::Client::new(&http::Options::probe(Duration::from_secs(3)))
        .map_err(|e| e.to_string())?;
    client
        .status(url)
        .await
        .map_err(|e| http::request_error(&e))
}

#[async_trait]
impl Resource for Compose {
    type State = State;
    type Step = Step;

    fn name(&self) -> Name {
        Name::Compose
    }

    fn disabled(&self) -> Option<&'static str> {
        (!self.cfg.enabled).then_some("compose.enabled")
    }

    fn depends_on(&self) -> &'static [Name] {
        &[Name::Docker]
    }

    async fn observe(&self, host: &Host) -> Result<State> {
        let dir = self.dir();
        let mem = host.memory()?;
        let box_cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut s = State {
            project: crate::host::files::is_dir(dir),
            compose_text: None,
            env_text: None,
            caddyfile_sha256: None,
            agent_env: host.read_state(&self.agent_env_path())?,
            saved: host
                .read_state(&self.state_dir.join(STATE_FILE))?
                .and_then(|t| serde_json::from_str(&t).ok()),
            flavor: None,
            services: BTreeSet::new(),
            running: BTreeSet::new(),
            box_cpus,
            box_memory: mem.total,
            health: Vec::new(),
        };
        // `budget` observes directly, without the engine that skips a disabled compose.
        if !self.cfg.enabled || !s.project {
            return Ok(s);
        }
        s.compose_text = host.read_text(&dir.join(&self.cfg.compose_file))?;
        s.env_text = host.read_text(&dir.join(&self.cfg.env_file))?;
        s.caddyfile_sha256 = host
            .read(&dir.join(&self.cfg.caddyfile))?
            .map(|f| crate::digest::sha256_hex(&f.content));
        s.flavor = crate::host::compose::detect(host).await;
        if let (Some(flavor), Some(_), Some(_)) = (s.flavor, &s.compose_text, &s.env_text) {
            let agent_env = s.agent_env.clone().unwrap_or_default();
            // Without the agent's env file yet, compose still lists the services.
            let base = |args: &[&str]| {
                self.with_agent_env(
                    self.cmd(flavor).args(args.iter().copied()),
                    flavor,
                    &agent_env,
                )
            };
            let services = base(&["config", "--services"]);
            let running = base(&["ps", "--services", "--filter", "status=running"]);
            let (a, b) = tokio::join!(host.query(&services), host.query(&running));
            if let Ok(o) = a
                && o.status == 0
            {
                s.services = lines(&o.stdout);
            }
            if let Ok(o) = b
                && o.status == 0
            {
                s.running = lines(&o.stdout);
            }
            if !s.running.is_empty() {
                for url in &self.cfg.health_urls {
                    s.health.push((url.clone(), health(url).await));
                }
            }
        }
        Ok(s)
    }

    /// Refusals come first, in the order an operator fixes them: missing inputs, an
    /// override compose.env cannot hold, a budget the box cannot give, a failing security
    /// check; only then the steps.
    fn plan(&self, s: &State) -> Result<Plan<Step>> {
        let mut plan = Plan::default();
        let Some((env_text, flavor)) = self.inputs(s, &mut plan.notes)? else {
            return Ok(plan);
        };
        self.check_overrides()?;
        let (agent_env, budget) = self.resolve(s);
        plan.notes.push(format!(
            "profile {}, {}; budget for this box:\n{}",
            self.profile(s).name(),
            if flavor == Flavor::V2 {
                "docker compose (v2)"
            } else {
                "docker-compose (v1)"
            },
            budget.render().trim_end()
        ));
        self.check_budget(&budget, &mut plan.notes)?;
        self.check_env(env_text, &agent_env, &mut plan.notes)?;
        plan.steps = self.steps(s, &agent_env);
        Ok(plan)
    }

    async fn apply(&self, host: &Host, s: &State, steps: &[Step]) -> Result<()> {
        let Some(flavor) = s.flavor else {
            bail!("no compose command")
        };
        let (agent_env, _) = self.resolve(s);
        for step in steps {
            if let Step::WriteEnv { new, .. } = step {
                state_dir::ensure(host, &self.state_dir)?;
                host.write(
                    &self.agent_env_path(),
                    new.as_bytes(),
                    FileSpec::root(state_dir::COMPOSE_ENV_MODE),
                    false,
                )?;
            }
        }
        let run = |args: &[&str]| {
            self.with_agent_env(
                self.cmd(flavor).args(args.iter().copied()),
                flavor,
                &agent_env,
            )
        };
        // The merged configuration must be valid before anything is started.
        host.run(&run(&["config", "-q"])).await?;
        if steps.iter().any(|st| matches!(st, Step::Up { .. })) {
            crate::engine::progress(Name::Compose, "docker compose up -d");
            host.run(&run(&["up", "-d"])).await?;
        }
        if steps.contains(&Step::RecreateCaddy) {
            crate::engine::progress(
                Name::Compose,
                &format!("Caddyfile changed: recreating {}", self.cfg.caddy_service),
            );
            host.run(&run(&[
                "up",
                "-d",
                "--no-deps",
                "--force-recreate",
                &self.cfg.caddy_service,
            ]))
            .await?;
        }
        let saved = Saved {
            hash: self.hash(s, &agent_env),
            caddyfile_sha256: s.caddyfile_sha256.clone(),
        };
        host.write(
            &self.state_dir.join(STATE_FILE),
            serde_json::to_string_pretty(&saved)?.as_bytes(),
            FileSpec::root(state_dir::COMPOSE_STATE_MODE),
            false,
        )?;
        Ok(())
    }

    fn checks(&self, s: &State) -> Vec<Check> {
        if !s.project {
            return vec![];
        }
        let fix = "sapari-agent converge --only compose";
        let stopped: Vec<&str> = s
            .services
            .difference(&s.running)
            .map(String::as_str)
            .collect();
        let mut c = vec![Check::new(
            "compose services",
            if !s.services.is_empty() && stopped.is_empty() {
                Level::Pass
            } else {
                Level::Fail
            },
            if s.services.is_empty() {
                "none found".to_string()
            } else if stopped.is_empty() {
                format!("{} running", s.services.len())
            } else {
                format!("not running: {}", stopped.join(", "))
            },
            fix,
        )];
        for (url, r) in &s.health {
            c.push(Check::new(
                url,
                if matches!(r, Ok(200)) {
                    Level::Pass
                } else {
                    Level::Fail
                },
                match r {
                    Ok(code) => format!("HTTP {code}"),
                    Err(e) => e.clone(),
                },
                "docker compose logs web",
            ));
        }
        c
    }
}

/// Read what `budget` needs from a config without running a converge.
pub async fn budget_for(
    cfg: &ComposeSettings,
    agent: &AgentSettings,
    host: &Host,
) -> Result<(Budget, String)> {
    let c = Compose::new(cfg, agent);
    let s = c.observe(host).await?;
    let (_, b) = c.resolve(&s);
    Ok((b, c.profile(&s).name().to_string()))
}

#[cfg(test)]
mod tests;
