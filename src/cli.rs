//! Command-line definitions only; behaviour lives in `commands/` and below.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::engine::Name;

#[derive(Debug, Parser)]
#[command(
    name = "sapari-agent",
    version,
    about = "Bootstraps and keeps converged the production server: hostname, deploy user, SSH hardening, GitHub deploy key, UFW, packages, Docker, the Cloudflare-only DOCKER-USER firewall, swap, NTP, Tailscale and the compose application.",
    after_help = "Exit codes: 0 success, 1 a resource failed (converge: or this configuration was rolled back unconfirmed), \
2 changes applied/pending (with --detailed-exitcodes), 64 usage error, 75 another run holds the lock or a \
commit-confirmed change waits for `sapari-agent confirm`, 77 not root, 78 configuration error (nothing changed)."
)]
pub struct Cli {
    /// Without journald, also log informational messages to stderr (warnings always go
    /// there). Under journald every message goes to the journal and this changes nothing.
    #[arg(short, long, global = true)]
    pub verbose: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply the desired state: observe, change only what differs, verify.
    Converge(ConvergeArgs),
    /// Show what converge would change, per resource, without changing anything.
    Plan(PlanArgs),
    /// The runbook's pre-flight checks as a PASS/WARN/FAIL table with a fix hint each.
    Status(StatusArgs),
    /// Cloudflare-only :443 in Docker's DOCKER-USER chain: apply, show or check it.
    Firewall(FirewallArgs),
    /// Check an .env file against the production security validator (key names only).
    EnvCheck(EnvCheckArgs),
    /// The resource budget of the compose services for this machine and profile.
    Budget(BudgetArgs),
    /// Make the change of a `converge --confirm` permanent (run it from a new SSH session).
    Confirm(ConfirmArgs),
    /// Restore the state saved by `converge --confirm` (run by the rollback timer).
    #[command(hide = true)]
    Rollback(RollbackArgs),
    /// Cloud-init user-data that installs the agent on a new server and converges it.
    #[command(name = "cloud-init")]
    CloudInit(CloudInitArgs),
    /// Print the agent version.
    Version,
}

#[derive(Debug, Args)]
pub struct Selectors {
    /// Configuration file.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Only these resources (comma-separated or repeated).
    #[arg(long, value_name = "NAMES", value_delimiter = ',', value_parser = parse_name)]
    pub only: Vec<Name>,

    /// Leave these resources out (comma-separated or repeated).
    #[arg(long, value_name = "NAMES", value_delimiter = ',', value_parser = parse_name)]
    pub skip: Vec<Name>,

    /// Print one JSON document instead of the human report.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct Overrides {
    /// Operator IP allowed to reach SSH (repeatable; added to access.operator_ips).
    #[arg(long = "my-ip", value_name = "IP")]
    pub my_ip: Vec<String>,

    /// Hostname to set (overrides hostname.name).
    #[arg(long, value_name = "NAME")]
    pub hostname: Option<String>,
}

#[derive(Debug, Args)]
pub struct ConvergeArgs {
    #[command(flatten)]
    pub sel: Selectors,
    #[command(flatten)]
    pub ov: Overrides,
    /// Exit 2 when changes were applied (Puppet's convention); 0 stays "nothing to do".
    #[arg(long)]
    pub detailed_exitcodes: bool,
    /// Apply even a firewall rule set that would not admit the SSH client this run came from,
    /// or (users.exclusive_keys) remove the key this SSH session logged in with.
    #[arg(long)]
    pub force: bool,
    /// Commit confirmed: keep the previous sshd files, UFW rules, DOCKER-USER chain, sudoers
    /// drop-in and the user's authorized_keys, and
    /// restore them unless `sapari-agent confirm` runs from a new SSH session within SECONDS
    /// (10-3600) after the run. Until then other converges exit 75; a configuration rolled back
    /// unconfirmed makes later converges of it exit 1 until it changes or runs with --confirm.
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(10..=3600))]
    pub confirm: Option<u64>,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub sel: Selectors,
    #[command(flatten)]
    pub ov: Overrides,
    /// Exit 2 when changes are pending.
    #[arg(long)]
    pub detailed_exitcodes: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub sel: Selectors,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Exit codes: 0 success (check: the rules match), 1 failed (check: drift; the reason is printed; \
load: the table could not be loaded), 64 usage error, 75 another run holds the lock (apply), 77 not root, \
78 configuration error (nothing changed)."
)]
pub struct FirewallArgs {
    #[command(subcommand)]
    pub action: FirewallAction,
}

#[derive(Debug, Subcommand)]
pub enum FirewallAction {
    /// Fetch the Cloudflare lists and converge the `firewall` resource alone (what
    /// sapari-docker-firewall.service runs when Docker starts); same lock and report as converge.
    Apply(FirewallOpts),
    /// Load the origin lock (nftables table inet sapari_agent) from the last good, else the
    /// built-in, lists: no network, no run lock, one transaction. What
    /// sapari-firewall-boot.service runs at boot before Docker starts.
    Load(FirewallOpts),
    /// Print the DOCKER-USER rules in force per family and the list in force; changes nothing.
    Show(FirewallOpts),
    /// Compare the origin lock and the chains with the last good (or built-in) lists without
    /// fetching: exit 0 when they match, 1 on drift, with a one-line reason.
    Check(FirewallOpts),
}

#[derive(Debug, Args)]
pub struct FirewallOpts {
    /// Configuration file.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Print one JSON document instead of the human report.
    #[arg(long)]
    pub json: bool,
}

fn parse_name(s: &str) -> Result<Name, String> {
    s.parse()
}

#[derive(Debug, Args)]
pub struct EnvCheckArgs {
    /// The .env file to check (values are never printed).
    #[arg(value_name = "PATH")]
    pub path: PathBuf,
    /// Env files compose reads after PATH (later files win), checked merged with it, e.g. the
    /// agent's /var/lib/sapari-agent/compose.env.
    #[arg(long = "with", value_name = "PATH")]
    pub with: Vec<PathBuf>,
    /// Print one JSON document.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct BudgetArgs {
    /// Configuration file.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Print one JSON document.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Run it from a NEW SSH session (not the one that ran `converge --confirm`): only a new login \
proves that logging in still works; a session opened before the change (an older login, a tmux or screen \
pane, an ssh multiplexed over an older connection) is refused. Exit codes: 0 confirmed (the change is \
permanent), 1 nothing pending, already rolled back, or refused (that session), 75 another run holds the lock, 77 not root, 78 configuration error."
)]
pub struct ConfirmArgs {
    /// Configuration file (for agent.state_dir).
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Print one JSON document.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Run by the transient timer sapari-agent-rollback-ID. Exit codes: 0 restored, or nothing to do \
(confirmed or superseded), 1 the restore is incomplete (see the journal), 64 bad id, 75 the lock stayed busy, 77 not root."
)]
pub struct RollbackArgs {
    /// Configuration file (for agent.state_dir).
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// The pending change to roll back (its id is in the pending file).
    #[arg(long, value_name = "ID")]
    pub id: String,
}

#[derive(Debug, Args)]
pub struct CloudInitArgs {
    #[command(subcommand)]
    pub action: CloudInitAction,
}

#[derive(Debug, Subcommand)]
pub enum CloudInitAction {
    /// Print #cloud-config user-data for a new server: writes the config, downloads the agent,
    /// verifies its sha256, installs it, runs one converge and enables the timer.
    Render(RenderArgs),
}

#[derive(Debug, Args)]
pub struct RenderArgs {
    /// The agent.toml the server gets (validated before anything is printed).
    #[arg(long, value_name = "PATH")]
    pub config: PathBuf,
    /// Where the server downloads the agent: a .deb or the static binary.
    #[arg(long, value_name = "URL")]
    pub artifact_url: String,
    /// The artifact's sha256 (64 hex digits); the server refuses anything else.
    #[arg(long, value_name = "HEX")]
    pub sha256: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
