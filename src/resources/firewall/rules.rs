//! The DOCKER-USER rule set: what we want (rendered as `iptables-restore` input), what is in
//! force (parsed from `iptables-save -t filter`), and the comparison of the two by meaning:
//! rule order matters, the order of options inside a rule does not.

use std::fmt::Write as _;

use ipnet::IpNet;
use serde::Serialize;

pub use crate::host::iptables::Backend;

pub const CHAIN: &str = "DOCKER-USER";
/// The comment on every rule the agent owns.
pub const TAG: &str = "sapari-agent";
/// The port the origin serves (HTTPS over TCP and HTTP/3 over UDP).
pub const PORT: u16 = 443;

/// One rule, reduced to the options the agent writes. Anything else lands in `other`,
/// which makes the rule differ from every rule the agent wants.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Rule {
    pub src: Option<IpNet>,
    pub in_iface: Option<String>,
    pub proto: Option<String>,
    /// conntrack states, in the kernel's order.
    pub ctstate: Vec<String>,
    pub ctorigdstport: Option<String>,
    pub ctdir: Option<String>,
    pub comment: Option<String>,
    pub target: String,
    /// Options not modelled, one group per option with its arguments, sorted.
    pub other: Vec<Vec<String>>,
}

const CTSTATE_ORDER: [&str; 7] = [
    "INVALID",
    "NEW",
    "RELATED",
    "ESTABLISHED",
    "UNTRACKED",
    "SNAT",
    "DNAT",
];

fn sort_states(v: &mut [String]) {
    v.sort_by_key(|s| {
        (
            CTSTATE_ORDER
                .iter()
                .position(|o| o == s)
                .unwrap_or(CTSTATE_ORDER.len()),
            s.clone(),
        )
    });
}

fn quote(s: &str) -> String {
    if !s.is_empty()
        && !s
            .chars()
            .any(|c| c.is_whitespace() || c == '"' || c == '\\' || c == '\'')
    {
        s.to_string()
    } else {
        format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

impl Rule {
    /// The rule as an `-A` line, options in the order `iptables-save` prints them.
    pub fn render(&self, chain: &str) -> String {
        let mut s = format!("-A {chain}");
        if let Some(n) = &self.src {
            let _ = write!(s, " -s {n}");
        }
        if let Some(i) = &self.in_iface {
            let _ = write!(s, " -i {i}");
        }
        if let Some(p) = &self.proto {
            let _ = write!(s, " -p {p}");
        }
        for g in &self.other {
            for t in g {
                let _ = write!(s, " {}", quote(t));
            }
        }
        if !self.ctstate.is_empty() || self.ctorigdstport.is_some() || self.ctdir.is_some() {
            s.push_str(" -m conntrack");
            if !self.ctstate.is_empty() {
                let _ = write!(s, " --ctstate {}", self.ctstate.join(","));
            }
            if let Some(p) = &self.ctorigdstport {
                let _ = write!(s, " --ctorigdstport {p}");
            }
            if let Some(d) = &self.ctdir {
                let _ = write!(s, " --ctdir {d}");
            }
        }
        if let Some(c) = &self.comment {
            let _ = write!(s, " -m comment --comment {}", quote(c));
        }
        if !self.target.is_empty() {
            let _ = write!(s, " -j {}", self.target);
        }
        s
    }

    pub fn is_ours(&self) -> bool {
        self.comment.as_deref() == Some(TAG)
    }

    /// A plain `-j DOCKER-USER` (what Docker puts at the top of FORWARD).
    fn is_plain_jump_to(&self, chain: &str) -> bool {
        self.target == chain
            && *self
                == Rule {
                    target: chain.to_string(),
                    ..Rule::default()
                }
    }
}

/// Split a save line into words: whitespace-separated, `"..."` quoted with `\"` and `\\`
/// escapes (how iptables-save prints comments).
pub fn words(line: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\\') => match chars.next() {
                            Some(e) => cur.push(e),
                            None => return Err("unterminated escape".into()),
                        },
                        Some('"') => break,
                        Some(o) => cur.push(o),
                        None => return Err("unterminated quote".into()),
                    }
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    Ok(out)
}

fn is_option(w: &str) -> bool {
    w.starts_with('-') && w.len() > 1 || w == "!"
}

/// Parse the words after `-A CHAIN`.
pub fn parse_rule(w: &[String]) -> Rule {
    let mut r = Rule::default();
    let mut other: Vec<Vec<String>> = Vec::new();
    let mut i = 0;
    while i < w.len() {
        let opt = w[i].as_str();
        let arg = w.get(i + 1).filter(|a| !is_option(a)).cloned();
        let mut took = false;
        match (opt, &arg) {
            ("-s" | "--source", Some(a)) if r.src.is_none() => {
                let net = a
                    .parse::<IpNet>()
                    .ok()
                    .or_else(|| a.parse::<std::net::IpAddr>().ok().map(IpNet::from));
                if let Some(n) = net {
                    r.src = Some(n);
                    took = true;
                }
            }
            ("-i" | "--in-interface", Some(a)) if r.in_iface.is_none() => {
                r.in_iface = Some(a.clone());
                took = true;
            }
            ("-p" | "--protocol", Some(a)) if r.proto.is_none() => {
                r.proto = Some(a.to_ascii_lowercase());
                took = true;
            }
            // Module loads: implied by the options that follow them.
            ("-m" | "--match", Some(_)) => took = true,
            ("--ctstate", Some(a)) if r.ctstate.is_empty() => {
                r.ctstate = a.split(',').map(str::to_string).collect();
                sort_states(&mut r.ctstate);
                took = true;
            }
            ("--ctorigdstport", Some(a)) if r.ctorigdstport.is_none() => {
                r.ctorigdstport = Some(a.clone());
                took = true;
            }
            ("--ctdir", Some(a)) if r.ctdir.is_none() => {
                r.ctdir = Some(a.clone());
                took = true;
            }
            ("--comment", Some(a)) if r.comment.is_none() => {
                r.comment = Some(a.clone());
                took = true;
            }
            ("-j" | "--jump", Some(a)) if r.target.is_empty() => {
                r.target = a.clone();
                took = true;
            }
            _ => {}
        }
        if took {
            i += 2;
            continue;
        }
        // An option we do not model (or a negation, or a repeated option): keep it whole.
        let mut g = vec![w[i].clone()];
        i += 1;
        if opt == "!" && i < w.len() {
            g.push(w[i].clone());
            i += 1;
        }
        while i < w.len() && !is_option(&w[i]) {
            g.push(w[i].clone());
            i += 1;
        }
        other.push(g);
    }
    other.sort();
    r.other = other;
    r
}

/// The filter table as `iptables-save -t filter` printed it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FilterTable {
    pub chains: Vec<String>,
    /// (chain, the line as printed, the rule as understood)
    pub rules: Vec<(String, String, Rule)>,
}

impl FilterTable {
    pub fn has_chain(&self, c: &str) -> bool {
        self.chains.iter().any(|x| x == c)
    }

    pub fn rules_of(&self, chain: &str) -> Vec<Rule> {
        self.rules
            .iter()
            .filter(|(c, _, _)| c == chain)
            .map(|(_, _, r)| r.clone())
            .collect()
    }

    pub fn lines_of(&self, chain: &str) -> Vec<String> {
        self.rules
            .iter()
            .filter(|(c, _, _)| c == chain)
            .map(|(_, l, _)| l.clone())
            .collect()
    }

    /// Docker created its chains here (they stay after dockerd stops, and the rules must
    /// too: containers started later are published the moment dockerd is back).
    pub fn docker_present(&self) -> bool {
        self.chains
            .iter()
            .any(|c| c == "DOCKER" || c.starts_with("DOCKER-"))
    }

    /// Docker's own chain, not just a DOCKER-USER someone created.
    fn docker_own(&self) -> bool {
        self.has_chain("DOCKER")
    }
}

/// Parse the `*filter` section of iptables-save output.
pub fn parse_save(text: &str) -> Result<FilterTable, String> {
    let mut t = FilterTable::default();
    let mut in_filter = false;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_prefix('*') {
            in_filter = name == "filter";
            continue;
        }
        if line == "COMMIT" {
            in_filter = false;
            continue;
        }
        if !in_filter {
            continue;
        }
        if let Some(decl) = line.strip_prefix(':') {
            if let Some(name) = decl.split_whitespace().next() {
                t.chains.push(name.to_string());
            }
            continue;
        }
        let mut w = words(line).map_err(|e| format!("line {}: {e}: {line}", i + 1))?;
        // `iptables-save -c` puts counters first.
        if w.first().is_some_and(|x| x.starts_with('[')) {
            w.remove(0);
        }
        if w.len() < 2 || w[0] != "-A" {
            return Err(format!("line {}: not a rule: {line}", i + 1));
        }
        let chain = w[1].clone();
        let rule = parse_rule(&w[2..]);
        t.rules.push((chain, line.to_string(), rule));
    }
    Ok(t)
}

/// The chain the agent wants for one family: established traffic first, then :443 from each
/// range (TCP and UDP, by the port the client asked for: DOCKER-USER sees packets after
/// Docker's DNAT), then a DROP of all other :443 arriving on the WAN interface, then RETURN
/// so Docker's own chains still decide the rest.
pub fn desired(nets: &[IpNet], wan: &str) -> Vec<Rule> {
    let tag = Some(TAG.to_string());
    let mut out = vec![Rule {
        in_iface: Some(wan.into()),
        ctstate: vec!["RELATED".into(), "ESTABLISHED".into()],
        comment: tag.clone(),
        target: "RETURN".into(),
        ..Rule::default()
    }];
    let port = |proto: &str| Rule {
        in_iface: Some(wan.into()),
        proto: Some(proto.into()),
        ctorigdstport: Some(PORT.to_string()),
        ctdir: Some("ORIGINAL".into()),
        comment: tag.clone(),
        ..Rule::default()
    };
    for n in nets {
        for proto in ["tcp", "udp"] {
            out.push(Rule {
                src: Some(*n),
                target: "RETURN".into(),
                ..port(proto)
            });
        }
    }
    for proto in ["tcp", "udp"] {
        out.push(Rule {
            target: "DROP".into(),
            ..port(proto)
        });
    }
    out.push(Rule {
        comment: tag,
        target: "RETURN".into(),
        ..Rule::default()
    });
    out
}

/// Where FORWARD sends packets to DOCKER-USER.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ForwardJump {
    /// 1-based positions of plain `-j DOCKER-USER` rules in FORWARD.
    pub positions: Vec<usize>,
}

impl ForwardJump {
    pub fn of(t: &FilterTable) -> Self {
        let positions = t
            .rules_of("FORWARD")
            .iter()
            .enumerate()
            .filter(|(_, r)| r.is_plain_jump_to(CHAIN))
            .map(|(i, _)| i + 1)
            .collect();
        Self { positions }
    }

    pub fn first(&self) -> bool {
        self.positions.first() == Some(&1)
    }

    pub fn describe(&self) -> String {
        match self.positions.first() {
            Some(1) => "FORWARD jumps to DOCKER-USER first".into(),
            Some(p) => format!("FORWARD jumps to DOCKER-USER only at rule {p}"),
            None => "FORWARD does not jump to DOCKER-USER".into(),
        }
    }
}

/// One `iptables-restore --noflush` transaction: `:DOCKER-USER - [0:0]` empties (or creates)
/// the chain, the rules refill it, and the FORWARD jump is moved to the top when it is not
/// there, all committed at once or not at all. Other chains are untouched.
pub fn restore_text(want: &[Rule], jump: &ForwardJump) -> String {
    let mut s = format!("*filter\n:{CHAIN} - [0:0]\n");
    if !jump.first() {
        for _ in &jump.positions {
            let _ = writeln!(s, "-D FORWARD -j {CHAIN}");
        }
        let _ = writeln!(s, "-I FORWARD 1 -j {CHAIN}");
    }
    for r in want {
        s.push_str(&r.render(CHAIN));
        s.push('\n');
    }
    s.push_str("COMMIT\n");
    s
}

/// CIDRs admitted by a chain (for "N Cloudflare ranges" in reports).
pub fn ranges_in(rules: &[Rule]) -> usize {
    let mut v: Vec<IpNet> = rules
        .iter()
        .filter(|r| r.target == "RETURN" && r.ctorigdstport.is_some())
        .filter_map(|r| r.src)
        .collect();
    v.sort();
    v.dedup();
    v.len()
}

/// The chain in a few words: `0 rules`, `34 rules (15 ranges)`.
pub fn summary(rules: &[Rule]) -> String {
    let n = rules.len();
    let plural = if n == 1 { "rule" } else { "rules" };
    match ranges_in(rules) {
        0 => format!("{n} {plural}"),
        k => format!("{n} {plural} ({k} Cloudflare ranges)"),
    }
}

/// Why the chain in force is not the one wanted, in one line; None when it is.
pub fn drift(have: Option<&[Rule]>, want: &[Rule]) -> Option<String> {
    let Some(have) = have else {
        return Some(format!("the {CHAIN} chain does not exist"));
    };
    if have == want {
        return None;
    }
    if have.is_empty() {
        return Some(format!("{CHAIN} is empty (as Docker creates it)"));
    }
    let foreign = have.iter().filter(|r| !r.is_ours()).count();
    if foreign > 0 && !have.iter().any(Rule::is_ours) {
        return Some(format!(
            "{CHAIN} has {foreign} rule(s), none of them from sapari-agent"
        ));
    }
    let i = have
        .iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .unwrap_or(have.len().min(want.len()));
    let at = match (have.get(i), want.get(i)) {
        (Some(h), Some(w)) => format!(
            "rule {} is `{}`, expected `{}`",
            i + 1,
            h.render(CHAIN),
            w.render(CHAIN)
        ),
        (Some(h), None) => format!("extra rule {}: `{}`", i + 1, h.render(CHAIN)),
        (None, Some(w)) => format!("rule {} missing: `{}`", i + 1, w.render(CHAIN)),
        (None, None) => String::new(),
    };
    Some(format!(
        "{CHAIN} has {} rules, expected {}; {at}",
        have.len(),
        want.len()
    ))
}

/// Pick the backend whose tables hold Docker's chains. Candidates come in preference order
/// (nft first); one with Docker's own `DOCKER` chain beats one with only a DOCKER-USER.
/// None: no candidate has Docker's chains.
pub fn choose_backend(cands: &[(Backend, &FilterTable)]) -> Option<(Backend, Option<String>)> {
    let own: Vec<Backend> = cands
        .iter()
        .filter(|(_, t)| t.docker_own())
        .map(|(b, _)| *b)
        .collect();
    let any: Vec<Backend> = cands
        .iter()
        .filter(|(_, t)| t.docker_present())
        .map(|(b, _)| *b)
        .collect();
    let pool = if own.is_empty() { any } else { own };
    let first = *pool.first()?;
    let note = (pool.len() > 1).then(|| {
        format!(
            "both the nft and the legacy iptables tables hold Docker chains; managing {}",
            first.as_str()
        )
    });
    Some((first, note))
}

/// The interface of the IPv4 default route with the lowest metric (/proc/net/route).
pub fn default_iface_v4(proc_route: &str) -> Option<String> {
    proc_route
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 8 {
                return None;
            }
            let flags = u32::from_str_radix(f[3], 16).ok()?;
            let up = flags & 0x1 != 0;
            (up && f[1] == "00000000" && f[7] == "00000000")
                .then(|| (f[6].parse::<u32>().unwrap_or(u32::MAX), f[0].to_string()))
        })
        .min()
        .map(|(_, i)| i)
}

/// The interface of the IPv6 default route with the lowest metric (/proc/net/ipv6_route).
pub fn default_iface_v6(proc_route: &str) -> Option<String> {
    proc_route
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 10 {
                return None;
            }
            let flags = u32::from_str_radix(f[8], 16).ok()?;
            let up = flags & 0x1 != 0;
            let reject = flags & 0x200 != 0;
            let default = f[0].bytes().all(|b| b == b'0') && f[1] == "00";
            (up && !reject && default && f[9] != "lo").then(|| {
                (
                    u32::from_str_radix(f[5], 16).unwrap_or(u32::MAX),
                    f[9].to_string(),
                )
            })
        })
        .min()
        .map(|(_, i)| i)
}

/// An interface name iptables accepts (`+` is its wildcard).
pub fn valid_iface(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:@+".contains(&b))
}

#[cfg(test)]
mod tests;
