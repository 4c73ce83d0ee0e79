//! `ufw`: default deny in, allow out; 443/tcp and 443/udp from anywhere; SSH only from the
//! operator's addresses and Tailscale; no port 80. State is read from ufw's own files (no
//! `ufw status` on a no-op run); allow rules go in before the default turns to deny and
//! before `ufw enable`, and a rule set that would shut out the SSH client this run came from
//! is refused.

use std::net::IpAddr;
use std::path::Path;

use anyhow::{Result, bail};
use async_trait::async_trait;
use ipnet::IpNet;

use crate::config::{TailscaleSsh, UfwSettings};
use crate::engine::{Change, Check, Describe, Level, Plan, Resource};
use crate::host::{Cmd, Host};
use crate::resources::{Name, RunContext};

pub const UFW_CONF: &str = "/etc/ufw/ufw.conf";
pub const DEFAULTS: &str = "/etc/default/ufw";
pub const USER_RULES: &str = "/etc/ufw/user.rules";
pub const USER6_RULES: &str = "/etc/ufw/user6.rules";
/// Every file the resource's `ufw` commands change: the commit-confirmed rollback restores
/// these.
pub const STATE_FILES: [&str; 4] = [USER_RULES, USER6_RULES, DEFAULTS, UFW_CONF];
const COMMENT: &str = "sapari-agent";

pub struct Ufw {
    cfg: UfwSettings,
    operator_ips: Vec<IpAddr>,
    ctx: RunContext,
}

impl Ufw {
    pub fn new(cfg: &UfwSettings, operator_ips: &[IpAddr], ctx: &RunContext) -> Self {
        Self {
            cfg: cfg.clone(),
            operator_ips: operator_ips.to_vec(),
            ctx: ctx.clone(),
        }
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

#[derive(Debug, Clone)]
pub struct State {
    pub installed: bool,
    pub enabled: bool,
    pub ipv6: bool,
    pub input_policy: String,
    pub output_policy: String,
    pub rules: Vec<Tuple>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    Install,
    Add(Tuple),
    Delete(Tuple),
    DefaultIncoming { from: String },
    DefaultOutgoing { from: String },
    Enable,
}

impl Describe for Step {
    fn change(&self) -> Change {
        match self {
            Step::Install => Change::value(
                "ufw package",
                Some("absent".into()),
                Some("installed".into()),
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

#[async_trait]
impl Resource for Ufw {
    type State = State;
    type Step = Step;

    fn name(&self) -> Name {
        Name::Ufw
    }

    async fn observe(&self, host: &Host) -> Result<State> {
        let installed = host.program_exists("ufw");
        let conf = host.read_text(Path::new(UFW_CONF))?.unwrap_or_default();
        let defaults = host.read_text(Path::new(DEFAULTS))?.unwrap_or_default();
        let mut rules = parse_tuples(
            &host.read_text(Path::new(USER_RULES))?.unwrap_or_default(),
            false,
        );
        rules.extend(parse_tuples(
            &host.read_text(Path::new(USER6_RULES))?.unwrap_or_default(),
            true,
        ));
        Ok(State {
            installed,
            enabled: shell_var(&conf, "ENABLED").is_some_and(|v| v == "yes"),
            ipv6: shell_var(&defaults, "IPV6").is_none_or(|v| v == "yes"),
            input_policy: shell_var(&defaults, "DEFAULT_INPUT_POLICY").unwrap_or_default(),
            output_policy: shell_var(&defaults, "DEFAULT_OUTPUT_POLICY").unwrap_or_default(),
            rules,
        })
    }

    fn plan(&self, s: &State) -> Result<Plan<Step>> {
        let mut plan = Plan::default();
        if !self.cfg.enabled {
            plan.notes
                .push("ufw management disabled (ufw.enabled = false)".into());
            return Ok(plan);
        }
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
        if !s.ipv6 {
            plan.notes.push(format!(
                "IPv6 is off in {DEFAULTS}: only IPv4 rules are managed"
            ));
        }
        if !s.installed {
            plan.steps.push(Step::Install);
        }
        let desired = self.desired(s.ipv6);
        for t in &desired {
            if !s.rules.contains(t) {
                plan.steps.push(Step::Add(t.clone()));
            }
        }
        let foreign: Vec<&Tuple> = s.rules.iter().filter(|t| !desired.contains(t)).collect();
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
        if s.input_policy != "DROP" {
            plan.steps.push(Step::DefaultIncoming {
                from: policy_word(&s.input_policy),
            });
        }
        if s.output_policy != "ACCEPT" {
            plan.steps.push(Step::DefaultOutgoing {
                from: policy_word(&s.output_policy),
            });
        }
        if !s.enabled {
            plan.steps.push(Step::Enable);
        }
        if !plan.steps.is_empty()
            && let Some(client) = self.ctx.ssh_client
            && !self.ctx.force
            && !self.admits(&result, client)
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
        Ok(plan)
    }

    async fn apply(&self, host: &Host, _s: &State, steps: &[Step]) -> Result<()> {
        // Allow rules first, then the deny default, then enable: at no moment is the box
        // closed to the rules it is meant to have.
        let order = |s: &Step| match s {
            Step::Install => 0,
            Step::Add(_) => 1,
            Step::Delete(_) => 2,
            Step::DefaultOutgoing { .. } => 3,
            Step::DefaultIncoming { .. } => 4,
            Step::Enable => 5,
        };
        let mut steps: Vec<&Step> = steps.iter().collect();
        steps.sort_by_key(|s| order(s));
        for step in steps {
            let cmd = match step {
                Step::Install => Cmd::new("apt-get")
                    .args(["-o", "DPkg::Lock::Timeout=300"])
                    .args(crate::resources::packages::APT_DPKG_NO_PTY)
                    .args(["install", "-y", "--no-install-recommends", "ufw"])
                    .env("DEBIAN_FRONTEND", "noninteractive")
                    .timeout(std::time::Duration::from_secs(600)),
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
        Ok(())
    }

    fn checks(&self, s: &State) -> Vec<Check> {
        let fix = "sapari-agent converge --only ufw";
        let missing = self
            .desired(s.ipv6)
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
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REAL: &str = "### tuple ### allow tcp 443 0.0.0.0/0 any 0.0.0.0/0 in comment=7361706172692d6167656e74\n-A ufw-user-input -p tcp --dport 443 -j ACCEPT\n### tuple ### allow tcp 22 0.0.0.0/0 any 192.0.2.50 in comment=7361706172692d6167656e74\n### tuple ### allow tcp 22 0.0.0.0/0 any 0.0.0.0/0 in_tailscale0 comment=7361706172692d6167656e74\n";

    fn op() -> IpAddr {
        "192.0.2.50".parse().unwrap()
    }

    fn res(ctx: RunContext) -> Ufw {
        Ufw::new(&UfwSettings::default(), &[op()], &ctx)
    }

    /// ufw installed, never enabled, no rules: a fresh cloud image.
    fn fresh() -> State {
        State {
            installed: true,
            enabled: false,
            ipv6: true,
            input_policy: "ACCEPT".into(),
            output_policy: "ACCEPT".into(),
            rules: vec![],
        }
    }

    fn converged(r: &Ufw) -> State {
        State {
            installed: true,
            enabled: true,
            ipv6: true,
            input_policy: "DROP".into(),
            output_policy: "ACCEPT".into(),
            rules: r.desired(true),
        }
    }

    #[test]
    fn parses_real_user_rules() {
        let t = parse_tuples(REAL, false);
        assert_eq!(t.len(), 3);
        assert_eq!(t[1].src, "192.0.2.50");
        assert_eq!(t[2].iface(), Some("tailscale0"));
        let r = res(RunContext::default());
        let d = r.desired(false);
        assert!(
            d.contains(&t[0]) && d.contains(&t[1]) && d.contains(&t[2]),
            "{d:?}"
        );
    }

    #[test]
    fn desired_rules_have_no_port_80_and_cover_both_families() {
        let d = res(RunContext::default()).desired(true);
        assert!(d.iter().all(|t| t.dport != "80"));
        assert_eq!(d.iter().filter(|t| t.dport == "443").count(), 4);
        assert_eq!(
            d.iter().filter(|t| t.src == "192.0.2.50").count(),
            1,
            "v4 operator only in v4"
        );
        let cidr = Ufw::new(
            &UfwSettings {
                tailscale: TailscaleSsh::Cidr,
                ..UfwSettings::default()
            },
            &[op()],
            &RunContext::default(),
        );
        let d = cidr.desired(true);
        assert!(d.iter().any(|t| t.src == "100.64.0.0/10" && !t.v6));
        assert!(d.iter().any(|t| t.src == "fd7a:115c:a1e0::/48" && t.v6));
    }

    #[test]
    fn fresh_box_adds_rules_before_deny_and_enable() {
        let r = res(RunContext::default());
        let s = fresh();
        let p = r.plan(&s).unwrap();
        let adds = p.steps.iter().filter(|s| matches!(s, Step::Add(_))).count();
        assert_eq!(adds, r.desired(true).len());
        assert_eq!(
            p.steps[p.steps.len() - 2],
            Step::DefaultIncoming {
                from: "allow".into()
            }
        );
        assert_eq!(p.steps.last(), Some(&Step::Enable));
    }

    #[test]
    fn converged_plans_nothing_and_foreign_rules_are_drift() {
        let r = res(RunContext::default());
        let mut s = converged(&r);
        assert!(r.plan(&s).unwrap().steps.is_empty());
        let http = Tuple::allow_in("tcp", 80, None, None, false);
        s.rules.push(http.clone());
        let p = r.plan(&s).unwrap();
        assert!(p.steps.is_empty());
        assert!(
            p.notes[0].contains("allow 80/tcp from anywhere (v4)"),
            "{:?}",
            p.notes
        );
        let prune = Ufw::new(
            &UfwSettings {
                prune: true,
                ..UfwSettings::default()
            },
            &[op()],
            &RunContext::default(),
        );
        assert_eq!(prune.plan(&s).unwrap().steps, vec![Step::Delete(http)]);
    }

    #[test]
    fn ufw_arguments() {
        let t = Tuple::allow_in(
            "tcp",
            22,
            Some("192.0.2.50/32".parse().unwrap()),
            None,
            false,
        );
        assert_eq!(
            t.ufw_args().join(" "),
            "allow in proto tcp from 192.0.2.50 to 0.0.0.0/0 port 22"
        );
        let t = Tuple::allow_in("tcp", 22, None, Some("tailscale0"), true);
        assert_eq!(
            t.ufw_args().join(" "),
            "allow in on tailscale0 proto tcp from ::/0 to ::/0 port 22"
        );
    }

    #[test]
    fn ssh_guard_refuses_a_rule_set_without_the_client() {
        let ctx = RunContext {
            force: false,
            ssh_client: Some("198.51.100.7".parse().unwrap()),
        };
        let r = res(ctx.clone());
        let s = fresh();
        let e = r.plan(&s).unwrap_err().to_string();
        assert!(e.contains("198.51.100.7") && e.contains("--force"), "{e}");
        // The operator's own address, a tailnet address, or --force: allowed.
        for client in ["192.0.2.50", "100.100.1.2"] {
            let r = res(RunContext {
                force: false,
                ssh_client: Some(client.parse().unwrap()),
            });
            assert!(r.plan(&s).is_ok(), "{client}");
        }
        assert!(res(RunContext { force: true, ..ctx }).plan(&s).is_ok());
    }

    #[test]
    fn no_operator_ip_is_refused_unless_tailscale_only_is_intended() {
        let s = converged(&res(RunContext::default()));
        let r = Ufw::new(&UfwSettings::default(), &[], &RunContext::default());
        assert!(r.plan(&s).unwrap_err().to_string().contains("--my-ip"));
        let r = Ufw::new(
            &UfwSettings {
                ssh_only_via_tailscale: true,
                ..UfwSettings::default()
            },
            &[],
            &RunContext::default(),
        );
        assert!(r.plan(&s).is_ok());
    }

    #[test]
    fn shell_vars() {
        let t = "IPV6=yes\nDEFAULT_INPUT_POLICY=\"DROP\"\n";
        assert_eq!(
            shell_var(t, "DEFAULT_INPUT_POLICY").as_deref(),
            Some("DROP")
        );
        assert_eq!(shell_var(t, "NOPE"), None);
    }
}
