//! The origin lock: an nftables table of the agent's own (`table inet sapari_agent`) that keeps
//! :443 (TCP and UDP, IPv4 and IPv6) on the WAN reachable only from Cloudflare, and drops new
//! connections from the WAN to every other port Docker publishes unless it is declared public.
//!
//! Why a table of its own and not only DOCKER-USER: DOCKER-USER sees only what Docker forwards
//! through iptables. With Docker's defaults (no IPv6 on the bridge, userland proxy on) the IPv6
//! side of a published port is `docker-proxy` listening on `[::]:443`, reached through INPUT;
//! Docker 29's nftables backend has no DOCKER-USER at all; and at boot DOCKER-USER exists only
//! once dockerd has already published its `restart: always` containers. A drop in any nftables
//! base chain is final whatever else the kernel holds (iptables-nft, iptables-legacy, Docker's
//! own nftables tables), so this table works under every Docker, and it can be loaded from the
//! last good lists before dockerd starts.
//!
//! The prerouting chain runs at priority `raw` (-300): before conntrack and before Docker's
//! DNAT, so the port is the one the client asked for, on the docker-proxy path, the DNAT path
//! and the direct-routing path alike, and a dropped packet never costs a conntrack entry.
//!
//! This module is pure: it renders the script and reads back what `nft -j` prints, reduced to
//! what the agent wrote (set elements, chain hooks, and the comment of every rule), so that
//! comparing the two does not depend on how a given nft version prints a rule.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use ipnet::IpNet;
use serde::Serialize;
use serde_json::Value;

use super::lists::sha256_hex;
use super::rules::PORT;

pub const FAMILY: &str = "inet";
pub const TABLE: &str = "sapari_agent";
/// The comment of every rule in the table starts with this.
const TAG: &str = "sapari-agent";
/// Interfaces that are never the WAN, used when the WAN is not known (no default route yet at
/// boot, nothing configured): loopback, the tailnet, Docker's bridges.
const INTERNAL: [&str; 4] = ["lo", "tailscale*", "docker*", "br-*"];

/// What the table is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// The WAN interfaces; empty: not known, so every interface but the internal ones.
    pub wan: Vec<String>,
    pub v4: Vec<IpNet>,
    pub v6: Vec<IpNet>,
    /// Ports other than 443 that may be reached from the WAN through Docker (`firewall.public_ports`).
    pub public_ports: Vec<u16>,
}

/// The table as the agent sees it: set elements, chain hooks and rule comments.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Shape {
    pub sets: BTreeMap<String, Vec<String>>,
    pub chains: BTreeMap<String, ChainShape>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ChainShape {
    /// `prerouting -300 accept` for a base chain; None for a regular chain.
    pub hook: Option<String>,
    /// The comment of each rule, in order (`(none)` for a rule without one).
    pub rules: Vec<String>,
}

fn quoted_list(items: &[String]) -> String {
    let q: Vec<String> = items.iter().map(|i| format!("\"{i}\"")).collect();
    format!("{{ {} }}", q.join(", "))
}

fn elements(nets: &[IpNet]) -> Vec<String> {
    let mut v: Vec<IpNet> = nets.iter().map(|n| n.trunc()).collect();
    v.sort();
    v.dedup();
    v.iter().map(|n| n.to_string()).collect()
}

impl Spec {
    fn ports(&self) -> Vec<u16> {
        let mut p = vec![PORT];
        p.extend(&self.public_ports);
        p.sort_unstable();
        p.dedup();
        p
    }

    /// The iifname matches a chain's rules start with, and the rules that skip internal
    /// interfaces when the WAN is not known.
    fn wan_rules(&self, s: &mut String, chain: &str, body: &str) {
        if self.wan.is_empty() {
            for i in INTERNAL {
                let _ = writeln!(
                    s,
                    "\t\tiifname \"{i}\" return comment \"{TAG} {chain}: not the WAN\""
                );
            }
            let _ = writeln!(s, "\t\t{body}");
        } else {
            let _ = writeln!(s, "\t\tiifname {} {body}", quoted_list(&self.wan));
        }
    }

    /// The table body (without the tag), the part the tag is the hash of.
    fn body(&self, tag: &str) -> String {
        let mut s = String::new();
        let set = |s: &mut String, name: &str, ty: &str, flags: bool, elems: &[String]| {
            let _ = writeln!(s, "\tset {name} {{\n\t\ttype {ty}");
            if flags {
                s.push_str("\t\tflags interval\n");
            }
            if !elems.is_empty() {
                let _ = writeln!(s, "\t\telements = {{ {} }}", elems.join(", "));
            }
            s.push_str("\t}\n");
        };
        set(
            &mut s,
            "cloudflare_v4",
            "ipv4_addr",
            true,
            &elements(&self.v4),
        );
        set(
            &mut s,
            "cloudflare_v6",
            "ipv6_addr",
            true,
            &elements(&self.v6),
        );
        let ports: Vec<String> = self.ports().iter().map(u16::to_string).collect();
        set(&mut s, "public_ports", "inet_service", false, &ports);

        s.push_str(
            "\tchain origin {\n\t\ttype filter hook prerouting priority raw; policy accept;\n",
        );
        self.wan_rules(
            &mut s,
            "origin",
            &format!(
                "meta l4proto {{ tcp, udp }} th dport {PORT} jump cloudflare_only comment \"{TAG} origin: :{PORT} from the WAN\""
            ),
        );
        s.push_str("\t}\n");

        let _ = write!(
            s,
            "\tchain cloudflare_only {{\n\
             \t\tip saddr @cloudflare_v4 return comment \"{TAG} cloudflare_only: Cloudflare v4\"\n\
             \t\tip6 saddr @cloudflare_v6 return comment \"{TAG} cloudflare_only: Cloudflare v6\"\n\
             \t\tcounter drop comment \"{TAG} cloudflare_only: drop {tag}\"\n\
             \t}}\n"
        );

        s.push_str(
            "\tchain published {\n\t\ttype filter hook forward priority filter - 10; policy accept;\n",
        );
        self.wan_rules(
            &mut s,
            "published",
            &format!(
                "ct state new ct status dnat meta l4proto {{ tcp, udp }} ct original proto-dst != @public_ports counter drop comment \"{TAG} published: undeclared port\""
            ),
        );
        s.push_str("\t}\n");
        s
    }

    /// A short hash of everything the table is built from: part of a rule comment, so a table
    /// built from other lists or settings is told apart without parsing rules.
    pub fn tag(&self) -> String {
        sha256_hex(self.body("").as_bytes())[..16].to_string()
    }

    /// The `nft -f` script: creating then deleting the table makes the delete succeed when it
    /// does not exist yet, and the whole script is one transaction, so packets see the old
    /// table or the new one, never none.
    pub fn script(&self) -> String {
        format!(
            "table {FAMILY} {TABLE}\ndelete table {FAMILY} {TABLE}\ntable {FAMILY} {TABLE} {{\n{}}}\n",
            self.body(&self.tag())
        )
    }

    /// The shape `nft -j list table` shows once the script is loaded.
    pub fn shape(&self) -> Shape {
        let tag = self.tag();
        let mut sets = BTreeMap::new();
        sets.insert("cloudflare_v4".to_string(), elements(&self.v4));
        sets.insert("cloudflare_v6".to_string(), elements(&self.v6));
        sets.insert(
            "public_ports".to_string(),
            self.ports().iter().map(u16::to_string).collect(),
        );
        let wan_comments = |chain: &str, last: &str| {
            let mut v = Vec::new();
            if self.wan.is_empty() {
                v.extend(
                    INTERNAL
                        .iter()
                        .map(|_| format!("{TAG} {chain}: not the WAN")),
                );
            }
            v.push(format!("{TAG} {chain}: {last}"));
            v
        };
        let mut chains = BTreeMap::new();
        chains.insert(
            "origin".to_string(),
            ChainShape {
                hook: Some("prerouting -300 accept".into()),
                rules: wan_comments("origin", &format!(":{PORT} from the WAN")),
            },
        );
        chains.insert(
            "cloudflare_only".to_string(),
            ChainShape {
                hook: None,
                rules: vec![
                    format!("{TAG} cloudflare_only: Cloudflare v4"),
                    format!("{TAG} cloudflare_only: Cloudflare v6"),
                    format!("{TAG} cloudflare_only: drop {tag}"),
                ],
            },
        );
        chains.insert(
            "published".to_string(),
            ChainShape {
                hook: Some("forward -10 accept".into()),
                rules: wan_comments("published", "undeclared port"),
            },
        );
        Shape { sets, chains }
    }

    /// The table in a few words, for plans and checks.
    pub fn summary(&self) -> String {
        let wan = if self.wan.is_empty() {
            "every interface but lo, tailscale*, docker*, br-* (WAN not known)".to_string()
        } else {
            self.wan.join(", ")
        };
        let public = if self.public_ports.is_empty() {
            "none".to_string()
        } else {
            self.public_ports
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            ":{PORT} tcp+udp on {wan} only from {} v4 + {} v6 Cloudflare ranges; other published ports closed on the WAN (public: {public})",
            self.v4.len(),
            self.v6.len()
        )
    }
}

/// One set element as `nft -j` prints it: `"1.2.3.4"`, `{"prefix": {"addr", "len"}}`, a port
/// number, or `{"range": [a, b]}`. Addresses are normalised to `addr/len`.
fn element(v: &Value) -> String {
    match v {
        Value::String(s) => match s.parse::<std::net::IpAddr>() {
            Ok(a) => IpNet::from(a).to_string(),
            Err(_) => s.clone(),
        },
        Value::Number(n) => n.to_string(),
        Value::Object(o) => {
            if let Some(p) = o.get("prefix") {
                let addr = p["addr"].as_str().unwrap_or_default();
                let len = p["len"].as_u64().unwrap_or_default();
                let s = format!("{addr}/{len}");
                return s
                    .parse::<IpNet>()
                    .map(|n| n.trunc().to_string())
                    .unwrap_or(s);
            }
            if let Some(Value::Array(r)) = o.get("range") {
                let ends: Vec<String> = r.iter().map(element).collect();
                return ends.join("-");
            }
            if let Some(e) = o.get("elem") {
                // {"elem": {"val": ..., "comment": ...}} when elements carry options
                return element(e.get("val").unwrap_or(e));
            }
            v.to_string()
        }
        other => other.to_string(),
    }
}

/// The shape of `nft -j list table inet sapari_agent` output.
pub fn parse(json: &Value) -> Result<Shape, String> {
    let items = json["nftables"]
        .as_array()
        .ok_or("no `nftables` array in the output of nft -j")?;
    let mut shape = Shape::default();
    for it in items {
        if let Some(set) = it.get("set") {
            let name = set["name"].as_str().unwrap_or_default().to_string();
            let mut elems: Vec<String> = match &set["elem"] {
                Value::Array(a) => a.iter().map(element).collect(),
                _ => Vec::new(),
            };
            // Addresses sort as addresses, so the order matches `elements()`.
            elems.sort_by_key(|e| (e.parse::<IpNet>().ok(), e.parse::<u32>().ok(), e.clone()));
            shape.sets.insert(name, elems);
        } else if let Some(ch) = it.get("chain") {
            let name = ch["name"].as_str().unwrap_or_default().to_string();
            let hook = ch.get("hook").and_then(Value::as_str).map(|h| {
                format!(
                    "{h} {} {}",
                    ch["prio"].as_i64().unwrap_or_default(),
                    ch["policy"].as_str().unwrap_or("accept")
                )
            });
            shape.chains.entry(name).or_default().hook = hook;
        } else if let Some(r) = it.get("rule") {
            let chain = r["chain"].as_str().unwrap_or_default().to_string();
            let comment = r["comment"].as_str().unwrap_or("(none)").to_string();
            shape.chains.entry(chain).or_default().rules.push(comment);
        }
    }
    Ok(shape)
}

/// Why the table in force is not the one wanted, in one line; None when it is.
pub fn drift(have: Option<&Shape>, want: &Shape) -> Option<String> {
    let Some(have) = have else {
        return Some(format!("table {FAMILY} {TABLE} does not exist"));
    };
    if have == want {
        return None;
    }
    let mut why = Vec::new();
    for (name, w) in &want.sets {
        match have.sets.get(name) {
            None => why.push(format!("set {name} is missing")),
            Some(h) if h != w => {
                let added = w.iter().filter(|e| !h.contains(e)).count();
                let removed = h.iter().filter(|e| !w.contains(e)).count();
                why.push(format!(
                    "set {name} has {} elements, expected {} ({added} to add, {removed} to remove)",
                    h.len(),
                    w.len()
                ));
            }
            _ => {}
        }
    }
    for (name, w) in &want.chains {
        match have.chains.get(name) {
            None => why.push(format!("chain {name} is missing")),
            Some(h) if h.hook != w.hook => why.push(format!(
                "chain {name} hooks {}, expected {}",
                h.hook.as_deref().unwrap_or("nothing"),
                w.hook.as_deref().unwrap_or("nothing")
            )),
            Some(h) if h.rules != w.rules => {
                let tag_only = h.rules.len() == w.rules.len()
                    && h.rules
                        .iter()
                        .zip(&w.rules)
                        .all(|(a, b)| a == b || a.contains(" drop ") && b.contains(" drop "));
                why.push(if tag_only {
                    format!("chain {name} was built from other lists or settings")
                } else {
                    format!(
                        "chain {name} has {} rules, expected {}",
                        h.rules.len(),
                        w.rules.len()
                    )
                });
            }
            _ => {}
        }
    }
    for name in have.chains.keys().filter(|n| !want.chains.contains_key(*n)) {
        why.push(format!("chain {name} is not the agent's"));
    }
    for name in have.sets.keys().filter(|n| !want.sets.contains_key(*n)) {
        why.push(format!("set {name} is not the agent's"));
    }
    if why.is_empty() {
        why.push("differs from the one wanted".into());
    }
    Some(format!("table {FAMILY} {TABLE}: {}", why.join("; ")))
}

#[cfg(test)]
mod tests;
