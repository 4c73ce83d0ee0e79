//! `sapari-agent firewall show` and `firewall check`: the chains and lists in force, as data
//! (JSON) and as text for people.

use serde::Serialize;

use super::lists::Family;
use super::origin;
use super::rules::{self, Backend, CHAIN, ForwardJump};
use super::{Firewall, ShownOrigin, Source, State, UNIT};

/// `sapari-agent firewall check`: does the chain in force match the stored lists?
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    #[serde(rename = "match")]
    pub matches: bool,
    pub reason: String,
}

/// `sapari-agent firewall show`, per family.
#[derive(Debug, Clone, Serialize)]
pub struct Shown {
    pub family: Family,
    pub managed: bool,
    pub backend: Option<Backend>,
    pub wan_interface: Option<String>,
    pub forward_jump_first: bool,
    pub forward_jump: String,
    /// DOCKER-USER as `iptables-save` prints it.
    pub rules: Vec<String>,
    /// Why the chain differs from the list in force (None: it matches).
    pub drift: Option<String>,
    pub list: ShownList,
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ShownList {
    /// `fetched`, `last-good` or `built-in`.
    pub source: &'static str,
    pub url: Option<String>,
    pub fetched_at: Option<String>,
    pub sha256: String,
    pub count: usize,
    pub cidrs: Vec<String>,
}

impl Firewall {
    pub fn verdict(&self, s: &State) -> Verdict {
        if !self.cfg.enabled {
            return Verdict {
                matches: true,
                reason: "firewall management is disabled (firewall.enabled = false)".into(),
            };
        }
        let mut ok = Vec::new();
        let mut bad = Vec::new();
        if let Some(o) = &s.origin {
            let spec = self.origin_spec(s);
            match &o.table {
                Err(e) => bad.push(format!("origin lock: {e}")),
                Ok(have) => match origin::drift(have.as_ref(), &spec.shape()) {
                    Some(d) => bad.push(d),
                    None => ok.push(format!(
                        "origin lock {} v4 + {} v6 ranges",
                        spec.v4.len(),
                        spec.v6.len()
                    )),
                },
            }
        }
        let mut chains = 0;
        for f in &s.families {
            let Some((_, table)) = &f.docker else {
                continue;
            };
            chains += 1;
            let (choice, wan, want) = match self.want(s, f) {
                Ok(x) => x,
                Err(e) => {
                    bad.push(format!("{}: {e:#}", f.family.as_str()));
                    continue;
                }
            };
            let have = table.has_chain(CHAIN).then(|| table.rules_of(CHAIN));
            let jump = ForwardJump::of(table);
            let mut why = Vec::new();
            if let Some(d) = rules::drift(have.as_deref(), &want) {
                why.push(d);
            }
            if !jump.first() {
                why.push(jump.describe());
            }
            if why.is_empty() {
                ok.push(format!(
                    "{} {} ranges on {wan}",
                    f.family.as_str(),
                    choice.nets.len()
                ));
            } else {
                bad.push(format!("{}: {}", f.family.as_str(), why.join("; ")));
            }
        }
        if !bad.is_empty() {
            return Verdict {
                matches: false,
                reason: format!("drift: {}", bad.join("; ")),
            };
        }
        let tail = if chains == 0 {
            format!("; Docker's chains do not exist ({UNIT} fills {CHAIN} when Docker starts)")
        } else {
            String::new()
        };
        Verdict {
            matches: true,
            reason: format!(
                "the rules match the lists in force: {}{tail}",
                ok.join(", ")
            ),
        }
    }

    pub fn show(&self, s: &State) -> Vec<Shown> {
        s.families
            .iter()
            .map(|f| {
                let choice = self.choose_list(f);
                let (source, url, fetched_at) = match &choice.source {
                    Source::Fetched { url, at, since } => (
                        "fetched",
                        Some(url.clone()),
                        Some(since.clone().unwrap_or(at.clone())),
                    ),
                    Source::LastGood(st) => (
                        "last-good",
                        st.meta.as_ref().map(|m| m.source.clone()),
                        st.meta.as_ref().map(|m| m.fetched_at.clone()),
                    ),
                    Source::BuiltIn => ("built-in", None, None),
                };
                let list = ShownList {
                    source,
                    url,
                    fetched_at,
                    sha256: choice.sha256.clone(),
                    count: choice.nets.len(),
                    cidrs: choice.nets.iter().map(|n| n.to_string()).collect(),
                };
                let mut notes = choice.notes.clone();
                let Some((backend, table)) = &f.docker else {
                    notes.push(Self::unmanaged_note(f));
                    return Shown {
                        family: f.family,
                        managed: false,
                        backend: None,
                        wan_interface: None,
                        forward_jump_first: false,
                        forward_jump: String::new(),
                        rules: vec![],
                        drift: None,
                        list,
                        notes,
                    };
                };
                notes.extend(f.backend_note.clone());
                let jump = ForwardJump::of(table);
                let (wan, drift) = match self.want(s, f) {
                    Ok((_, wan, want)) => {
                        let have = table.has_chain(CHAIN).then(|| table.rules_of(CHAIN));
                        (Some(wan), rules::drift(have.as_deref(), &want))
                    }
                    Err(e) => (None, Some(format!("{e:#}"))),
                };
                Shown {
                    family: f.family,
                    managed: true,
                    backend: Some(*backend),
                    wan_interface: wan,
                    forward_jump_first: jump.first(),
                    forward_jump: jump.describe(),
                    rules: table.lines_of(CHAIN),
                    drift,
                    list,
                    notes,
                }
            })
            .collect()
    }
}

/// `firewall show` for people.
pub fn render_show(origin: Option<&ShownOrigin>, shown: &[Shown]) -> String {
    let mut out = String::new();
    if let Some(o) = origin {
        render_origin(o, &mut out);
    }
    for s in shown {
        render_family(s, &mut out);
    }
    out
}

/// The origin lock: its table, the nftables shape in force, who listens on :443.
fn render_origin(o: &ShownOrigin, out: &mut String) {
    out.push_str(&format!(
        "== origin lock (nftables table {})
wanted:   {}
table:    {}
",
        o.table,
        o.wanted,
        match (&o.drift, o.in_force) {
            (None, _) => "matches".to_string(),
            (Some(d), _) => format!("DRIFT: {d}"),
        }
    ));
    if let Some(sh) = &o.shape {
        for (name, elems) in &sh.sets {
            out.push_str(&format!("  set {name}: {}\n", elems.join(" ")));
        }
        for (name, c) in &sh.chains {
            out.push_str(&format!(
                "  chain {name}{}\n",
                c.hook
                    .as_ref()
                    .map(|h| format!(" (hook {h})"))
                    .unwrap_or_default()
            ));
            for r in &c.rules {
                out.push_str(&format!("    {r}\n"));
            }
        }
    }
    let socks: Vec<String> = o
        .listeners
        .iter()
        .map(|l| format!("{}/{} {}", l.proto, l.family, l.local))
        .collect();
    out.push_str(&format!(
        "listen:   {}\n",
        if socks.is_empty() {
            "nothing on :443".to_string()
        } else {
            socks.join(", ")
        }
    ));
    if o.docker_nftables_backend {
        out.push_str("docker:   nftables firewall backend (no DOCKER-USER)\n");
    }
}

/// One family's DOCKER-USER chain (when managed) and the list in force.
fn render_family(s: &Shown, out: &mut String) {
    out.push_str(&format!("== {} {}\n", CHAIN, s.family.as_str()));
    if s.managed {
        out.push_str(&format!(
            "backend:  {}\nwan:      {}\nforward:  {}\nchain:    {}\n",
            s.backend.map(Backend::as_str).unwrap_or("?"),
            s.wan_interface.as_deref().unwrap_or("?"),
            s.forward_jump,
            match &s.drift {
                None => "matches the list in force".to_string(),
                Some(d) => format!("DRIFT: {d}"),
            }
        ));
        if s.rules.is_empty() {
            out.push_str("  (no rules)\n");
        }
        for r in &s.rules {
            out.push_str(&format!("  {r}\n"));
        }
    }
    let l = &s.list;
    out.push_str(&format!(
        "list:     {} ({} ranges, sha256 {}{}{})\n",
        l.source,
        l.count,
        l.sha256,
        l.url
            .as_ref()
            .map(|u| format!(", from {u}"))
            .unwrap_or_default(),
        l.fetched_at
            .as_ref()
            .map(|t| format!(", fetched {t}"))
            .unwrap_or_default()
    ));
    out.push_str(&format!("  {}\n", l.cidrs.join(" ")));
    for n in &s.notes {
        out.push_str(&format!("note:     {n}\n"));
    }
}
