//! `ufw`: default deny in, allow out; 443/tcp and 443/udp from anywhere; SSH only from the
//! operator's addresses and Tailscale; no port 80. State is read from ufw's own files (no
//! `ufw status` on a no-op run); allow rules go in before the default turns to deny and
//! before `ufw enable`, and a rule set that would shut out the SSH client this run came from
//! is refused. ufw filters IPv6 only with `IPV6=yes` in /etc/default/ufw; the resource
//! always sets it (see `Step::Ipv6`).

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Result, bail};
use async_trait::async_trait;
use ipnet::IpNet;

use crate::config::{TailscaleSsh, UfwSettings};
use crate::engine::Name;
use crate::engine::{Change, Check, Describe, Level, Plan, Resource};
use crate::host::apt;
use crate::host::{Cmd, FileSpec, Host, files};
use crate::resources::RunContext;

pub const UFW_CONF: &str = "/etc/ufw/ufw.conf";
pub const DEFAULTS: &str = "/etc/default/ufw";
pub const USER_RULES: &str = "/etc/ufw/user.rules";
pub const USER6_RULES: &str = "/etc/ufw/user6.rules";
/// Present when the kernel has IPv6 (ufw's own test: without it ufw handles no IPv6 rules).
const PROC_IPV6: &str = "/proc/sys/net/ipv6";
/// Every file the resource's `ufw` commands change: the commit-confirmed rollback restores
/// these.
pub const STATE_FILES: [&str; 4] = [USER_RULES, USER6_RULES, DEFAULTS, UFW_CONF];
const COMMENT: &str = "sapari-agent";

pub struct Ufw {
    cfg: UfwSettings,
    operator_ips: Vec<IpAddr>,
    ctx: RunContext,
    /// How long installing ufw waits for the dpkg lock (packages.lock_timeout).
    lock_timeout: Duration,
}

impl Ufw {
    pub fn new(cfg: &UfwSettings, operator_ips: &[IpAddr], ctx: &RunContext) -> Self {
        Self {
            cfg: cfg.clone(),
            operator_ips: operator_ips.to_vec(),
            ctx: ctx.clone(),
            lock_timeout: apt::LOCK_TIMEOUT,
        }
    }

    pub fn with_lock_timeout(mut self, lock_timeout: Duration) -> Self {
        self.lock_timeout = lock_timeout;
        self
    }
}

/// One ufw rule as ufw stores it in user.rules (`### tuple ### allow tcp 22 0.0.0.0/0 any
/// 192.0.2.50 in_tailscale0 comment=...`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Tuple {
    pub action: String,
    pub proto: String,
    pub dport: String,
    pub dst: String,
    pub sport: String,
    pub src: String,
    /// `in` or `out`, with `_<iface>` when bound to an interface.
    pub direction: String,
    pub v6: bool,
}

impl Tuple {
    fn allow_in(proto: &str, port: u16, src: Option<IpNet>, iface: Option<&str>, v6: bool) -> Self {
        let any = if v6 { "::/0" } else { "0.0.0.0/0" };
        Tuple {
            action: "allow".into(),
            proto: proto.into(),
            dport: port.to_string(),
            dst: any.into(),
            sport: "any".into(),
            src: src.map_or(any.to_string(), |n| {
                // ufw writes single hosts without their prefix length.
                if n.prefix_len() == n.max_prefix_len() {
                    n.addr().to_string()
                } else {
                    n.to_string()
                }
            }),
            direction: iface.map_or("in".to_string(), |i| format!("in_{i}")),
            v6,
        }
    }

    fn iface(&self) -> Option<&str> {
        self.direction.split_once('_').map(|(_, i)| i)
    }

    /// The ufw arguments that add (or, after `delete`, remove) this rule.
    pub fn ufw_args(&self) -> Vec<String> {
        let (dir, iface) = match self.direction.split_once('_') {
            Some((d, i)) => (d.to_string(), Some(i.to_string())),
            None => (self.direction.clone(), None),
        };
        let mut a = vec![self.action.clone(), dir];
        if let Some(i) = iface {
            a.extend(["on".into(), i]);
        }
        if self.proto != "any" {
            a.extend(["proto".into(), self.proto.clone()]);
        }
        a.extend(["from".into(), self.src.clone()]);
        if self.sport != "any" {
            a.extend(["port".into(), self.sport.clone()]);
        }
        a.extend(["to".into(), self.dst.clone()]);
        if self.dport != "any" {
            a.extend(["port".into(), self.dport.clone()]);
        }
        a
    }

    pub fn describe(&self) -> String {
        let from = if self.src == "0.0.0.0/0" || self.src == "::/0" {
            "anywhere".to_string()
        } else {
            self.src.clone()
        };
        let on = self.iface().map(|i| format!(" on {i}")).unwrap_or_default();
        format!(
            "{} {}/{}{on} from {from} ({})",
            self.action,
            self.dport,
            self.proto,
            if self.v6 { "v6" } else { "v4" }
        )
    }
}

pub fn parse_tuples(text: &str, v6: bool) -> Vec<Tuple> {
    text.lines()
        .filter_map(|l| l.strip_prefix("### tuple ### "))
        .filter_map(|t| {
            let f: Vec<&str> = t.split_whitespace().collect();
            // Application-profile rules carry extra fields; their first seven are the same.
            if f.len() < 7 {
                return None;
            }
            Some(Tuple {
                action: f[0].into(),
                proto: f[1].into(),
                dport: f[2].into(),
                dst: f[3].into(),
                sport: f[4].into(),
                src: f[5].into(),
                direction: f[6].into(),
                v6,
            })
        })
        .collect()
}

/// `KEY=value` / `KEY="value"` files (/etc/default/ufw, /etc/ufw/ufw.conf).
pub fn shell_var(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let (k, v) = l.trim().split_once('=')?;
        (k.trim() == key).then(|| v.trim().trim_matches('"').to_string())
    })
}

/// The value `line` assigns to `key`, if it is an assignment of `key` as a shell sources it
/// (ufw-init does): leading blanks and `export` allowed, quotes removed, a trailing comment
/// ignored. `IPV6=no # later` gives `no`.
fn assigned<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let t = line.trim_start();
    let t = t.strip_prefix("export ").map_or(t, str::trim_start);
    let v = t.strip_prefix(key)?.strip_prefix('=')?;
    let v = v.split_whitespace().next().unwrap_or("");
    Some(v.trim_matches(|c| c == '"' || c == '\''))
}

/// Does ufw filter IPv6 with these /etc/default/ufw contents? Only when `IPV6` is set, and
/// every assignment of it says `yes` (ufw-init accepts `yes` and `YES`). Anything else,
/// including conflicting assignments, is rewritten by `with_ipv6_yes`.
pub fn ipv6_on(defaults: &str) -> bool {
    let mut values = defaults
        .lines()
        .filter_map(|l| assigned(l, "IPV6"))
        .peekable();
    values.peek().is_some() && values.all(|v| v == "yes" || v == "YES")
}

/// /etc/default/ufw with every `IPV6` assignment replaced by `IPV6=yes` (appended when there
/// is none), as `ufw` itself edits that file; every other line, comments included, is kept.
pub fn with_ipv6_yes(defaults: &str) -> String {
    let mut out = String::with_capacity(defaults.len() + 10);
    let mut found = false;
    for line in defaults.split_inclusive('\n') {
        let body = line.trim_end_matches(['\n', '\r']);
        let end = &line[body.len()..];
        if assigned(body, "IPV6").is_some() {
            found = true;
            out.push_str("IPV6=yes");
            out.push_str(if end.is_empty() { "\n" } else { end });
        } else {
            out.push_str(line);
        }
    }
    if !found {
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str("IPV6=yes\n");
    }
    out
}

/// What ufw does with IPv6 unless `IPV6=yes` (ufw-init, seen with ufw 0.36.2): no IPv6 rules
/// at all, and while active it sets ip6tables to drop everything but loopback.
const IPV6_OFF: &str =
    "ufw does not filter IPv6: while active it drops all IPv6 but loopback, in and out";

/// What /etc/default/ufw says about IPv6, for the plan: `IPV6=no: ufw does not filter
/// IPv6: ...`.
fn ipv6_words(defaults: Option<&str>) -> String {
    let Some(text) = defaults else {
        return format!("no {DEFAULTS} (ufw not installed)");
    };
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| assigned(l, "IPV6").is_some())
        .map(str::trim)
        .collect();
    match lines.as_slice() {
        [] => format!("IPV6 not set: {IPV6_OFF}"),
        [one] => format!("{one}: {IPV6_OFF}"),
        many => format!("{} (conflicting): {IPV6_OFF}", many.join(", ")),
    }
}

#[derive(Debug, Clone)]
pub struct State {
    pub installed: bool,
    pub enabled: bool,
    /// `IPV6=yes` in /etc/default/ufw (`ipv6_on`).
    pub ipv6: bool,
    /// What the plan shows as the IPv6 setting before the change (`ipv6_words`).
    pub ipv6_from: String,
    /// The kernel has IPv6 (/proc/sys/net/ipv6 exists); without it ufw refuses IPv6 rules.
    pub kernel_ipv6: bool,
    pub input_policy: String,
    pub output_policy: String,
    pub rules: Vec<Tuple>,
    /// A run changed ufw's files and was stopped before ufw loaded them (see `RELOAD_PENDING`).
    pub reload_pending: bool,
}

/// Written before the first change to an active ufw and removed once ufw reports it is
/// active with the result: a run killed in between (a `ufw` command writes its files, then
/// loads them) leaves it, and the next run reloads. In /run: a boot loads the files anyway.
pub const RELOAD_PENDING: &str = "/run/sapari-agent/ufw.reload-pending";

#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    Install,
    /// Set `IPV6=yes` in /etc/default/ufw, then `ufw reload` when ufw is already active (it
    /// reads the setting only when it loads its rules). Wanted on every box: with `IPV6=no`
    /// ufw has no IPv6 rules, and while active it drops every IPv6 packet but loopback ones,
    /// in and out, so a box with a global IPv6 address serves nothing over IPv6 (443
    /// included) and reaches no IPv6 host; where ip6tables does not work it does not touch
    /// IPv6 at all. A box without IPv6 today may get an address later, and `IPV6=yes` costs
    /// nothing without one.
    Ipv6 {
        from: String,
        reload: bool,
    },
    Add(Tuple),
    Delete(Tuple),
    DefaultIncoming {
        from: String,
    },
    DefaultOutgoing {
        from: String,
    },
    Enable,
    /// `ufw reload`: the files are right, the loaded rules may not be.
    Reload,
}

impl Describe for Step {
    fn change(&self) -> Change {
        match self {
            Step::Install => Change::value(
                "ufw package",
                Some("absent".into()),
                Some("installed".into()),
            ),
            Step::Ipv6 { from, reload } => Change::value(
                format!("IPv6 filtering ({DEFAULTS})"),
                Some(from.clone()),
                Some(format!(
                    "IPV6=yes{}: IPv6 gets the same default deny and rules as IPv4; wanted on every box (harmless without an IPv6 address, and a box can get one later)",
                    if *reload {
                        ", then `ufw reload` to load the IPv6 rules"
                    } else {
                        ""
                    }
                )),
            ),
            Step::Add(t) => Change::value("rule", None, Some(t.describe())),
            Step::Delete(t) => Change::value("rule", Some(t.describe()), None),
            Step::DefaultIncoming { from } => {
                Change::value("default incoming", Some(from.clone()), Some("deny".into()))
            }
            Step::DefaultOutgoing { from } => {
                Change::value("default outgoing", Some(from.clone()), Some("allow".into()))
            }
            Step::Enable => Change::value("ufw", Some("inactive".into()), Some("active".into())),
            Step::Reload => Change::value(
                "loaded rules",
                Some("maybe older than the files (a previous run was stopped before ufw loaded them)".into()),
                Some("reloaded from the files".into()),
            ),
        }
    }
}

fn policy_word(p: &str) -> String {
    match p {
        "DROP" => "deny".into(),
        "ACCEPT" => "allow".into(),
        "REJECT" => "reject".into(),
        "" => "unset".into(),
        other => other.to_lowercase(),
    }
}

fn net_of(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
}

impl Ufw {
    /// The rules the agent declares, per family ufw handles.
    pub fn desired(&self, ipv6: bool) -> Vec<Tuple> {
        let fams: &[bool] = if ipv6 { &[false, true] } else { &[false] };
        let mut out = Vec::new();
        for &v6 in fams {
            for proto in ["tcp", "udp"] {
                out.push(Tuple::allow_in(proto, 443, None, None, v6));
            }
            for ip in self.operator_ips.iter().filter(|ip| ip.is_ipv6() == v6) {
                out.push(Tuple::allow_in(
                    "tcp",
                    self.cfg.ssh_port,
                    Some(IpNet::from(*ip)),
                    None,
                    v6,
                ));
            }
            match self.cfg.tailscale {
                TailscaleSsh::Interface => out.push(Tuple::allow_in(
                    "tcp",
                    self.cfg.ssh_port,
                    None,
                    Some(&self.cfg.tailscale_interface),
                    v6,
                )),
                TailscaleSsh::Cidr => {
                    for n in self
                        .cfg
                        .tailscale_cidrs
                        .iter()
                        .filter(|n| matches!(n, IpNet::V6(_)) == v6)
                    {
                        out.push(Tuple::allow_in(
                            "tcp",
                            self.cfg.ssh_port,
                            Some(*n),
                            None,
                            v6,
                        ));
                    }
                }
                TailscaleSsh::Off => {}
            }
        }
        out
    }

    /// Does `rules` let `client` reach the SSH port? Interface rules count only for the
    /// Tailscale interface and an address from the tailnet ranges.
    fn admits(&self, rules: &[Tuple], client: IpAddr) -> bool {
        let port = self.cfg.ssh_port.to_string();
        let in_tailnet = self.cfg.tailscale_cidrs.iter().any(|n| n.contains(&client));
        rules.iter().any(|t| {
            let port_ok = t.dport == port
                || t.dport == "any"
                || t.dport.split(',').any(|p| {
                    p.split_once(':')
                        .and_then(|(a, b)| Some((a.parse::<u16>().ok()?, b.parse::<u16>().ok()?)))
                        .is_some_and(|(a, b)| (a..=b).contains(&self.cfg.ssh_port))
                });
            let src_ok = net_of(&t.src).is_some_and(|n| n.contains(&client));
            let dir_ok = match t.iface() {
                None => t.direction == "in",
                Some(i) => i == self.cfg.tailscale_interface && in_tailnet,
            };
            t.action == "allow"
                && (t.proto == "tcp" || t.proto == "any")
                && port_ok
                && src_ok
                && dir_ok
                && t.v6 == client.is_ipv6()
        })
    }
}

impl Ufw {
    /// Refuses a configuration under which nobody could reach SSH at all.
    fn reachable_at_all(&self) -> Result<()> {
        if self.operator_ips.is_empty() && !self.cfg.ssh_only_via_tailscale {
            bail!(
                "no operator IP: SSH would be reachable only over Tailscale{}. Pass --my-ip <your address> (find it with `curl -s ifconfig.me` on your laptop) or set access.operator_ips; set ufw.ssh_only_via_tailscale = true if that is what you want. Nothing was changed",
                if self.cfg.tailscale == TailscaleSsh::Off {
                    ", which is off: nobody could log in"
                } else {
                    ""
                }
            );
        }
        if self.operator_ips.is_empty() && self.cfg.tailscale == TailscaleSsh::Off {
            bail!(
                "ufw.tailscale = \"off\" and no operator IP: SSH would be unreachable. Nothing was changed"
            );
        }
        Ok(())
    }

    /// The rule additions and deletions (after IPV6=yes, before the policies), and the rule
    /// set in force once they are applied.
    fn plan_rules(&self, s: &State, plan: &mut Plan<Step>) -> Vec<Tuple> {
        let desired = self.desired(s.kernel_ipv6);
        for t in &desired {
            if !s.rules.contains(t) {
                plan.steps.push(Step::Add(t.clone()));
            }
        }
        // Without IPv6 in the kernel ufw can neither add nor delete IPv6 rules.
        let foreign: Vec<&Tuple> = s
            .rules
            .iter()
            .filter(|t| !desired.contains(t) && (s.kernel_ipv6 || !t.v6))
            .collect();
        let mut result: Vec<Tuple> = desired.clone();
        if self.cfg.prune {
            for t in &foreign {
                plan.steps.push(Step::Delete((*t).clone()));
            }
        } else if !foreign.is_empty() {
            let list: Vec<String> = foreign.iter().map(|t| t.describe()).collect();
            plan.notes.push(format!(
                "rules not declared by the agent (kept; set ufw.prune = true to remove them): {}",
                list.join("; ")
            ));
            result.extend(foreign.iter().map(|t| (*t).clone()));
        }
        result
    }

    /// Refuses a plan whose rule set would not admit the SSH client this run came from.
    fn admits_this_client(&self, plan: &Plan<Step>, result: &[Tuple]) -> Result<()> {
        if !plan.steps.is_empty()
            && let Some(client) = self.ctx.ssh_client
            && !self.ctx.force
            && !self.admits(result, client)
        {
            let ssh: Vec<String> = result
                .iter()
                .filter(|t| t.dport == self.cfg.ssh_port.to_string())
                .map(|t| t.describe())
                .collect();
            bail!(
                "refusing to apply: this run came over SSH from {client}, and the firewall would not admit it on port {} (SSH allowed only by: {}). Add --my-ip {client} (or access.operator_ips), or pass --force if you have another way in (Tailscale, the Hetzner console). Nothing was changed",
                self.cfg.ssh_port,
                if ssh.is_empty() {
                    "nothing".to_string()
                } else {
                    ssh.join("; ")
                }
            );
        }
        Ok(())
    }
}

#[async_trait]
impl Resource for Ufw {
    type State = State;
    type Step = Step;

    fn name(&self) -> Name {
        Name::Ufw
    }

    fn disabled(&self) -> Option<&'static str> {
        (!self.cfg.enabled).then_some("ufw.enabled")
    }

    async fn observe(&self, host: &Host) -> Result<State> {
        let installed = host.program_exists("ufw");
        let conf = host.read_text(Path::new(UFW_CONF))?.unwrap_or_default();
        let mut rules = parse_tuples(
            &host.read_text(Path::new(USER_RULES))?.unwrap_or_default(),
            false,
        );
        rules.extend(parse_tuples(
            &host.read_text(Path::new(USER6_RULES))?.unwrap_or_default(),
            true,
        ));
        let defaults_file = host.read_text(Path::new(DEFAULTS))?;
        Ok(State {
            installed,
            enabled: shell_var(&conf, "ENABLED").is_some_and(|v| v == "yes"),
            ipv6: defaults_file.as_deref().is_some_and(ipv6_on),
            ipv6_from: ipv6_words(defaults_file.as_deref()),
            kernel_ipv6: !host.list_dir(Path::new(PROC_IPV6))?.is_empty(),
            input_policy: defaults_file
                .as_deref()
                .and_then(|d| shell_var(d, "DEFAULT_INPUT_POLICY"))
                .unwrap_or_default(),
            output_policy: defaults_file
                .as_deref()
                .and_then(|d| shell_var(d, "DEFAULT_OUTPUT_POLICY"))
                .unwrap_or_default(),
            rules,
            reload_pending: files::exists(Path::new(RELOAD_PENDING)),
        })
    }

    fn plan(&self, s: &State) -> Result<Plan<Step>> {
        let mut plan = Plan::default();
        self.reachable_at_all()?;
        if !s.kernel_ipv6 {
            plan.notes.push(format!(
                "the kernel has no IPv6 ({PROC_IPV6} is missing): only IPv4 rules are managed; ufw filters IPv6 once the kernel has it, with the IPv6 rules the next run adds"
            ));
        }
        // The steps are pushed in the order apply performs them, which is the order the
        // report shows. Allow rules first, then the deny default, then enable: at no moment
        // is the box closed to the rules it is meant to have. IPV6=yes comes before the
        // rules: ufw refuses IPv6 rules without it, and an active ufw has no IPv6 chains to
        // add them to until it is reloaded. The reload only opens IPv6 up: with IPV6=no an
        // active ufw drops all of it, after the reload it gets the rules in user6.rules, and
        // the IPv6 allow rules still missing follow right away.
        if !s.installed {
            plan.steps.push(Step::Install);
        }
        if !s.ipv6 {
            plan.steps.push(Step::Ipv6 {
                from: s.ipv6_from.clone(),
                reload: s.installed && s.enabled,
            });
        }
        let result = self.plan_rules(s, &mut plan);
        if s.output_policy != "ACCEPT" {
            plan.steps.push(Step::DefaultOutgoing {
                from: policy_word(&s.output_policy),
            });
        }
        if s.input_policy != "DROP" {
            plan.steps.push(Step::DefaultIncoming {
                from: policy_word(&s.input_policy),
            });
        }
        if !s.enabled {
            plan.steps.push(Step::Enable);
        } else if s.reload_pending && plan.steps.is_empty() {
            plan.steps.push(Step::Reload);
            plan.notes.push(format!(
                "a previous run changed ufw and was stopped before ufw loaded the result ({RELOAD_PENDING} is there): reloading"
            ));
        }
        if self.ctx.ssh_client.is_none() && self.ctx.interactive && !plan.steps.is_empty() {
            plan.notes.push(
                "this run is interactive but its SSH client could not be found (no SSH_CONNECTION here or in a parent process): the check that the firewall admits you was not made; keep another way in (Tailscale, the Hetzner console)".into(),
            );
        }
        self.admits_this_client(&plan, &result)?;
        Ok(plan)
    }

    async fn apply(&self, host: &Host, s: &State, steps: &[Step]) -> Result<()> {
        // In the plan's order: plan puts the steps in the only safe one.
        if s.enabled {
            host.write_marker(Path::new(RELOAD_PENDING))?;
        }
        for step in steps {
            let cmd = match step {
                Step::Ipv6 { reload, .. } => {
                    set_ipv6_yes(host)?;
                    if *reload {
                        host.run(&Cmd::new("ufw").arg("reload")).await?;
                    }
                    continue;
                }
                Step::Install => {
                    let lock = self.lock_timeout;
                    apt::wait_for_dpkg(host, lock, &|m| crate::engine::progress(Name::Ufw, m))
                        .await?;
                    apt::install(host, &["ufw".to_string()]).await?;
                    continue;
                }
                Step::Add(t) => Cmd::new("ufw")
                    .args(t.ufw_args())
                    .args(["comment", COMMENT]),
                Step::Delete(t) => Cmd::new("ufw").arg("delete").args(t.ufw_args()),
                Step::DefaultIncoming { .. } => {
                    Cmd::new("ufw").args(["default", "deny", "incoming"])
                }
                Step::DefaultOutgoing { .. } => {
                    Cmd::new("ufw").args(["default", "allow", "outgoing"])
                }
                Step::Enable => Cmd::new("ufw").args(["--force", "enable"]),
                Step::Reload => Cmd::new("ufw").arg("reload"),
            };
            host.run(&cmd).await?;
        }
        // Confirm with ufw itself that the rules are loaded, not just written.
        let status = host.query(&Cmd::new("ufw").arg("status")).await?;
        if !status.stdout.contains("Status: active") {
            bail!(
                "ufw reports it is not active after enabling: {}",
                status.stdout.trim()
            );
        }
        host.remove_file(Path::new(RELOAD_PENDING))?;
        Ok(())
    }

    fn checks(&self, s: &State) -> Vec<Check> {
        let fix = "sapari-agent converge --only ufw";
        let missing = self
            .desired(s.kernel_ipv6)
            .iter()
            .filter(|t| !s.rules.contains(t))
            .count();
        vec![
            Check::new(
                "ufw active",
                if s.enabled && s.input_policy == "DROP" {
                    Level::Pass
                } else {
                    Level::Fail
                },
                format!(
                    "{}, default incoming {}",
                    if s.enabled { "enabled" } else { "disabled" },
                    policy_word(&s.input_policy)
                ),
                fix,
            ),
            Check::new(
                "ufw rules",
                if missing == 0 {
                    Level::Pass
                } else {
                    Level::Warn
                },
                if missing == 0 {
                    "443 open, SSH from operator and Tailscale only".to_string()
                } else {
                    format!("{missing} declared rule(s) missing")
                },
                fix,
            ),
            Check::new(
                "ufw IPv6",
                if s.ipv6 { Level::Pass } else { Level::Fail },
                if s.ipv6 {
                    "IPV6=yes: IPv6 is filtered too".to_string()
                } else {
                    s.ipv6_from.clone()
                },
                fix,
            ),
        ]
    }
}

/// The `Step::Ipv6` edit: `IPV6=yes` written into /etc/default/ufw atomically, the rest of
/// the file, its mode and owner kept. Read at apply time (the package may just have
/// installed it); nothing is written when it already says so.
fn set_ipv6_yes(host: &Host) -> Result<()> {
    let path = Path::new(DEFAULTS);
    let Some(f) = host.read(path)? else {
        bail!(
            "{DEFAULTS} is missing although ufw is installed (reinstall it: apt-get install --reinstall ufw); IPV6=yes was not set"
        );
    };
    let Ok(text) = std::str::from_utf8(&f.content) else {
        bail!("{DEFAULTS} is not UTF-8 text; IPV6=yes was not set");
    };
    let new = with_ipv6_yes(text);
    if new != text {
        host.write(
            path,
            new.as_bytes(),
            FileSpec {
                mode: f.mode,
                uid: f.uid,
                gid: f.gid,
            },
            false,
        )?;
    }
    Ok(())
}

pub mod rollback;

#[cfg(test)]
mod tests;
