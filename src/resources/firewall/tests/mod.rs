use super::*;
use crate::config::{AgentSettings, FirewallSettings};
use lists::ListMeta;

fn settings() -> FirewallSettings {
    FirewallSettings::default()
}

fn fw_with(cfg: FirewallSettings) -> Firewall {
    let agent = AgentSettings {
        state_dir: PathBuf::from("/var/lib/sapari-agent"),
        ..AgentSettings::default()
    };
    Firewall::new(&cfg, &agent)
}

fn fw() -> Firewall {
    fw_with(settings())
}

fn cf(fam: Family) -> Vec<IpNet> {
    let t = match fam {
        Family::V4 => builtin_lists::V4,
        Family::V6 => builtin_lists::V6,
    };
    lists::parse_list(t, fam, 1000).unwrap()
}

fn with_extra(fam: Family, extra: &str) -> Vec<IpNet> {
    let mut v = cf(fam);
    v.push(extra.parse().unwrap());
    IpNet::aggregate(&v)
}

/// Docker's filter table with this DOCKER-USER content and FORWARD prologue.
fn docker_table(docker_user: &[Rule], forward_first: bool) -> FilterTable {
    let mut s = String::from(
        "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n:DOCKER - [0:0]\n:DOCKER-USER - [0:0]\n",
    );
    if forward_first {
        s.push_str("-A FORWARD -j DOCKER-USER\n-A FORWARD -o docker0 -j DOCKER\n");
    } else {
        s.push_str("-A FORWARD -o docker0 -j DOCKER\n-A FORWARD -j DOCKER-USER\n");
    }
    for r in docker_user {
        s.push_str(&r.render(CHAIN));
        s.push('\n');
    }
    s.push_str("COMMIT\n");
    rules::parse_save(&s).unwrap()
}

fn stored(fam: Family, nets: &[IpNet]) -> LastGood {
    let body = lists::render_list(nets);
    let sha = lists::sha256_hex(body.as_bytes());
    let meta = ListMeta {
        family: fam,
        source: format!("https://www.cloudflare.com/ips-{}", fam.as_str()),
        fetched_at: "2026-11-01T00:00:00Z".into(),
        sha256: sha,
        count: nets.len(),
    };
    lists::read_last_good(
        fam,
        Some(&body),
        Some(&serde_json::to_string(&meta).unwrap()),
        1000,
        Path::new("/x"),
    )
}

fn fetched(fam: Family, r: Result<Vec<IpNet>, String>) -> Option<Fetched> {
    Some(Fetched {
        family: fam,
        url: format!("https://www.cloudflare.com/ips-{}", fam.as_str()),
        at: "2026-11-29T12:00:00Z".into(),
        result: r,
    })
}

fn family(
    fam: Family,
    table: Option<FilterTable>,
    last_good: LastGood,
    fetched: Option<Fetched>,
) -> FamilyState {
    FamilyState {
        family: fam,
        docker: table.map(|t| (Backend::Nft, t)),
        backend_note: None,
        last_good,
        fetched,
        route_iface: Some("eth0".into()),
    }
}

/// Both families, with the origin lock in force for the lists they choose (tests of the
/// DOCKER-USER side see no origin step), no dockerd in this namespace, nothing on :443.
fn state(v4: FamilyState, v6: FamilyState) -> State {
    let mut s = State {
        families: vec![v4, v6],
        now: humantime::parse_rfc3339("2026-11-29T12:00:00Z").unwrap(),
        origin: None,
    };
    let shape = fw().origin_spec(&s).shape();
    s.origin = Some(OriginState {
        table: Ok(Some(shape)),
        docker_nft: false,
        dockerd_here: false,
        listeners: vec![],
    });
    s
}

fn origin_mut(s: &mut State) -> &mut OriginState {
    s.origin.as_mut().unwrap()
}

/// A box where everything is as the agent wants it.
fn converged() -> State {
    let f = |fam| {
        family(
            fam,
            Some(docker_table(&rules::desired(&cf(fam), "eth0"), true)),
            stored(fam, &cf(fam)),
            fetched(fam, Ok(cf(fam))),
        )
    };
    state(f(Family::V4), f(Family::V6))
}

/// The DOCKER-USER chains, the lists in force, `show` and the stored lists.
mod chain;
/// A real HTTPS fetch from a local server with its own CA (`firewall.ca_file`), through the
/// misbehaviours the issue lists. Needs `openssl` for the certificates; skipped without it.
mod https;
mod origin_lock;
