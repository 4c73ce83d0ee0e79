//! The DOCKER-USER rule set: what we want (rendered as `iptables-restore` input), what is in
//! force (parsed from `iptables-save -t filter`), and the comparison of the two by meaning:
//! rule order matters, the order of options inside a rule does not.

use std::fmt::Write as _;

use ipnet::IpNet;
use serde::Serialize;

use super::lists::Family;

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

/// Which iptables programs hold Docker's chains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// `iptables-nft-save` / `iptables-nft-restore`
    Nft,
    /// `iptables-legacy-save` / `iptables-legacy-restore`
    Legacy,
    /// `iptables-save` / `iptables-restore`, whatever they are on this machine
    Default,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Nft => "nft",
            Backend::Legacy => "legacy",
            Backend::Default => "default",
        }
    }

    fn prefix(fam: Family) -> &'static str {
        match fam {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }

    fn infix(self) -> &'static str {
        match self {
            Backend::Nft => "-nft",
            Backend::Legacy => "-legacy",
            Backend::Default => "",
        }
    }

    pub fn save(self, fam: Family) -> String {
        format!("{}{}-save", Self::prefix(fam), self.infix())
    }

    pub fn restore(self, fam: Family) -> String {
        format!("{}{}-restore", Self::prefix(fam), self.infix())
    }
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
mod tests {
    use super::*;

    fn nets(s: &[&str]) -> Vec<IpNet> {
        s.iter().map(|n| n.parse().unwrap()).collect()
    }

    const GOLDEN_V4: &str = "*filter
:DOCKER-USER - [0:0]
-A DOCKER-USER -i eth0 -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment sapari-agent -j RETURN
-A DOCKER-USER -s 103.21.244.0/22 -i eth0 -p tcp -m conntrack --ctorigdstport 443 --ctdir ORIGINAL -m comment --comment sapari-agent -j RETURN
-A DOCKER-USER -s 103.21.244.0/22 -i eth0 -p udp -m conntrack --ctorigdstport 443 --ctdir ORIGINAL -m comment --comment sapari-agent -j RETURN
-A DOCKER-USER -s 173.245.48.0/20 -i eth0 -p tcp -m conntrack --ctorigdstport 443 --ctdir ORIGINAL -m comment --comment sapari-agent -j RETURN
-A DOCKER-USER -s 173.245.48.0/20 -i eth0 -p udp -m conntrack --ctorigdstport 443 --ctdir ORIGINAL -m comment --comment sapari-agent -j RETURN
-A DOCKER-USER -i eth0 -p tcp -m conntrack --ctorigdstport 443 --ctdir ORIGINAL -m comment --comment sapari-agent -j DROP
-A DOCKER-USER -i eth0 -p udp -m conntrack --ctorigdstport 443 --ctdir ORIGINAL -m comment --comment sapari-agent -j DROP
-A DOCKER-USER -m comment --comment sapari-agent -j RETURN
COMMIT
";

    fn two() -> Vec<Rule> {
        desired(&nets(&["103.21.244.0/22", "173.245.48.0/20"]), "eth0")
    }

    fn first_jump() -> ForwardJump {
        ForwardJump { positions: vec![1] }
    }

    #[test]
    fn golden_restore_text_for_two_ranges() {
        assert_eq!(restore_text(&two(), &first_jump()), GOLDEN_V4);
        assert_eq!(two().len(), 2 * 2 + 4);
        assert_eq!(summary(&two()), "8 rules (2 Cloudflare ranges)");
    }

    #[test]
    fn restore_repairs_the_forward_jump_in_the_same_transaction() {
        let t = restore_text(&two(), &ForwardJump { positions: vec![3] });
        assert!(
            t.starts_with(
                "*filter\n:DOCKER-USER - [0:0]\n-D FORWARD -j DOCKER-USER\n-I FORWARD 1 -j DOCKER-USER\n-A DOCKER-USER"
            ),
            "{t}"
        );
        let t = restore_text(&two(), &ForwardJump { positions: vec![] });
        assert!(!t.contains("-D FORWARD"));
        assert!(t.contains("\n-I FORWARD 1 -j DOCKER-USER\n"));
        assert!(t.ends_with("COMMIT\n"));
    }

    /// What iptables-nft-save 1.8.9 printed after restoring GOLDEN_V4 in a namespace.
    fn saved(docker_user: &str, forward: &str) -> String {
        format!(
            "# Generated by iptables-nft-save v1.8.9 (nf_tables) on Sun Nov 29 21:21:14 2026
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER - [0:0]
:DOCKER-ISOLATION-STAGE-1 - [0:0]
:DOCKER-USER - [0:0]
{forward}-A FORWARD -o docker0 -j DOCKER
-A DOCKER -d 172.18.0.2/32 ! -i docker0 -o docker0 -p tcp -m tcp --dport 443 -j ACCEPT
{docker_user}COMMIT
# Completed on Sun Nov 29 21:21:14 2026
"
        )
    }

    fn golden_rules_as_saved() -> String {
        GOLDEN_V4
            .lines()
            .filter(|l| l.starts_with("-A"))
            .map(|l| format!("{l}\n"))
            .collect()
    }

    #[test]
    fn saved_chain_parses_back_to_what_was_meant() {
        let t = parse_save(&saved(
            &golden_rules_as_saved(),
            "-A FORWARD -j DOCKER-USER\n",
        ))
        .unwrap();
        assert!(t.has_chain("DOCKER-USER") && t.docker_present());
        assert_eq!(t.rules_of(CHAIN), two());
        assert_eq!(drift(Some(&t.rules_of(CHAIN)), &two()), None);
        assert!(ForwardJump::of(&t).first());
        // Docker's rule with a negation and modules is understood well enough to compare.
        let d = t.rules_of("DOCKER");
        assert_eq!(d[0].target, "ACCEPT");
        assert!(
            d[0].other
                .contains(&vec!["!".into(), "-i".into(), "docker0".into()])
        );
    }

    #[test]
    fn option_order_and_quoting_do_not_matter_rule_order_does() {
        let line = "-A DOCKER-USER -p udp -m comment --comment \"sapari-agent\" -i eth0 -m conntrack --ctdir ORIGINAL --ctorigdstport 443 -s 103.21.244.0/22 -j RETURN";
        let w = words(line).unwrap();
        assert_eq!(parse_rule(&w[2..]), two()[2]);
        let st = parse_rule(&words("-m conntrack --ctstate ESTABLISHED,RELATED -i eth0 -m comment --comment sapari-agent -j RETURN").unwrap());
        assert_eq!(st, two()[0]);
        let mut swapped = two();
        swapped.swap(1, 3);
        let why = drift(Some(&swapped), &two()).unwrap();
        assert!(why.contains("rule 2 is"), "{why}");
    }

    #[test]
    fn a_chain_docker_created_empty_is_drift() {
        let t = parse_save(&saved("", "-A FORWARD -j DOCKER-USER\n")).unwrap();
        let have = t.rules_of(CHAIN);
        assert!(have.is_empty());
        assert_eq!(
            drift(Some(&have), &two()).unwrap(),
            "DOCKER-USER is empty (as Docker creates it)"
        );
        // Older Docker puts a lone RETURN in it.
        let t = parse_save(&saved(
            "-A DOCKER-USER -j RETURN\n",
            "-A FORWARD -j DOCKER-USER\n",
        ))
        .unwrap();
        let why = drift(Some(&t.rules_of(CHAIN)), &two()).unwrap();
        assert!(why.contains("none of them from sapari-agent"), "{why}");
        assert_eq!(
            drift(None, &two()).unwrap(),
            "the DOCKER-USER chain does not exist"
        );
    }

    #[test]
    fn an_edited_chain_is_drift() {
        let mut rules = golden_rules_as_saved();
        // a range removed by hand
        rules = rules.replacen(
            "-A DOCKER-USER -s 173.245.48.0/20 -i eth0 -p tcp -m conntrack --ctorigdstport 443 --ctdir ORIGINAL -m comment --comment sapari-agent -j RETURN\n",
            "",
            1,
        );
        let t = parse_save(&saved(&rules, "-A FORWARD -j DOCKER-USER\n")).unwrap();
        let why = drift(Some(&t.rules_of(CHAIN)), &two()).unwrap();
        assert!(
            why.contains("7 rules, expected 8") && why.contains("rule 4"),
            "{why}"
        );
        // an ACCEPT inserted at the top by hand
        let rules = format!("-A DOCKER-USER -j ACCEPT\n{}", golden_rules_as_saved());
        let t = parse_save(&saved(&rules, "-A FORWARD -j DOCKER-USER\n")).unwrap();
        let why = drift(Some(&t.rules_of(CHAIN)), &two()).unwrap();
        assert!(
            why.contains("rule 1 is `-A DOCKER-USER -j ACCEPT`"),
            "{why}"
        );
        // same rule with an extra match is not the same rule
        let rules =
            golden_rules_as_saved().replacen("-j DROP", "-m limit --limit 5/sec -j DROP", 1);
        let t = parse_save(&saved(&rules, "-A FORWARD -j DOCKER-USER\n")).unwrap();
        assert!(drift(Some(&t.rules_of(CHAIN)), &two()).is_some());
        // a different interface
        let rules = golden_rules_as_saved().replace("-i eth0", "-i eth1");
        let t = parse_save(&saved(&rules, "-A FORWARD -j DOCKER-USER\n")).unwrap();
        assert!(drift(Some(&t.rules_of(CHAIN)), &two()).is_some());
    }

    #[test]
    fn forward_jump_missing_or_not_first() {
        let t = parse_save(&saved("", "")).unwrap();
        let j = ForwardJump::of(&t);
        assert!(!j.first() && j.positions.is_empty());
        assert_eq!(j.describe(), "FORWARD does not jump to DOCKER-USER");
        let t = parse_save(&saved(
            "",
            "-A FORWARD -j DOCKER-ISOLATION-STAGE-1\n-A FORWARD -j DOCKER-USER\n",
        ))
        .unwrap();
        let j = ForwardJump::of(&t);
        assert_eq!(j.positions, vec![2]);
        assert!(!j.first());
        assert_eq!(j.describe(), "FORWARD jumps to DOCKER-USER only at rule 2");
        // a jump with conditions is not Docker's jump
        let t = parse_save(&saved("", "-A FORWARD -i eth0 -j DOCKER-USER\n")).unwrap();
        assert!(ForwardJump::of(&t).positions.is_empty());
    }

    #[test]
    fn save_parsing_edge_cases() {
        assert_eq!(parse_save("").unwrap(), FilterTable::default());
        assert!(!parse_save("").unwrap().docker_present());
        // counters, other tables ignored
        let t = parse_save("*nat\n:DOCKER - [0:0]\n-A DOCKER -j RETURN\nCOMMIT\n*filter\n:FORWARD ACCEPT [0:0]\n[5:300] -A FORWARD -j ACCEPT\nCOMMIT\n").unwrap();
        assert_eq!(t.chains, vec!["FORWARD"]);
        assert_eq!(t.rules.len(), 1);
        assert!(!t.docker_present());
        assert!(parse_save("*filter\n-A X -m comment --comment \"open\nCOMMIT\n").is_err());
        assert!(parse_save("*filter\ngarbage\nCOMMIT\n").is_err());
        let w = words(r#"-A X -m comment --comment "a \"b\" c" -j RETURN"#).unwrap();
        assert_eq!(w[5], "a \"b\" c");
        let r = parse_rule(&w[2..]);
        assert_eq!(
            r.render("X"),
            r#"-A X -m comment --comment "a \"b\" c" -j RETURN"#
        );
    }

    #[test]
    fn backend_choice() {
        let docker = parse_save(&saved("", "-A FORWARD -j DOCKER-USER\n")).unwrap();
        let only_user =
            parse_save("*filter\n:FORWARD ACCEPT [0:0]\n:DOCKER-USER - [0:0]\nCOMMIT\n").unwrap();
        let empty = FilterTable::default();
        assert_eq!(
            choose_backend(&[(Backend::Nft, &empty), (Backend::Legacy, &docker)]),
            Some((Backend::Legacy, None))
        );
        assert_eq!(
            choose_backend(&[(Backend::Nft, &docker), (Backend::Legacy, &empty)]),
            Some((Backend::Nft, None))
        );
        assert_eq!(
            choose_backend(&[(Backend::Nft, &only_user), (Backend::Legacy, &docker)]),
            Some((Backend::Legacy, None))
        );
        let (b, note) =
            choose_backend(&[(Backend::Nft, &docker), (Backend::Legacy, &docker)]).unwrap();
        assert_eq!(b, Backend::Nft);
        assert!(note.unwrap().contains("both"));
        assert_eq!(
            choose_backend(&[(Backend::Nft, &empty), (Backend::Legacy, &empty)]),
            None
        );
        assert_eq!(
            choose_backend(&[(Backend::Default, &docker)]),
            Some((Backend::Default, None))
        );
        assert_eq!(Backend::Nft.save(Family::V6), "ip6tables-nft-save");
        assert_eq!(
            Backend::Legacy.restore(Family::V4),
            "iptables-legacy-restore"
        );
        assert_eq!(Backend::Default.restore(Family::V6), "ip6tables-restore");
    }

    #[test]
    fn default_route_interfaces() {
        let r4 =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
docker0\t000012AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0
wlan0\t00000000\t0100A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0
eth0\t00000000\t01020304\t0003\t0\t0\t100\t00000000\t0\t0\t0
";
        assert_eq!(default_iface_v4(r4).as_deref(), Some("eth0"));
        assert_eq!(default_iface_v4("Iface\tDestination\n"), None);
        let r6 = "\
fe800000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003     eth0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo
";
        assert_eq!(default_iface_v6(r6).as_deref(), Some("eth0"));
        assert_eq!(default_iface_v6(""), None);
        assert!(valid_iface("eth0") && valid_iface("enp1s0") && valid_iface("eth+"));
        assert!(!valid_iface("") && !valid_iface("eth 0") && !valid_iface("a-very-long-interface"));
    }
}
