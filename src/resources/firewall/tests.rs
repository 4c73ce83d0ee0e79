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

#[test]
fn converged_plans_nothing() {
    let p = fw().plan(&converged()).unwrap();
    assert!(p.steps.is_empty(), "{:?}", p.steps);
    assert!(p.notes.is_empty(), "{:?}", p.notes);
    let v = fw().verdict(&converged());
    assert!(v.matches, "{}", v.reason);
    assert_eq!(
        v.reason,
        "the rules match the lists in force: origin lock 15 v4 + 7 v6 ranges, v4 15 ranges on eth0, v6 7 ranges on eth0"
    );
    assert!(
        fw().checks(&converged())
            .iter()
            .all(|c| c.level == Level::Pass)
    );
}

#[test]
fn fresh_docker_gets_both_chains_and_lists_stored() {
    let f = |fam| {
        family(
            fam,
            Some(docker_table(&[], true)),
            LastGood::Absent,
            fetched(fam, Ok(cf(fam))),
        )
    };
    let p = fw().plan(&state(f(Family::V4), f(Family::V6))).unwrap();
    let changes: Vec<Change> = p.steps.iter().map(Describe::change).collect();
    assert_eq!(changes.len(), 4, "{changes:?}");
    assert_eq!(changes[0].what, "DOCKER-USER v4");
    assert_eq!(changes[0].from.as_deref(), Some("0 rules"));
    assert_eq!(
        changes[0].to.as_deref(),
        Some("34 rules (15 Cloudflare ranges)")
    );
    assert!(
        changes[0].diff.is_none(),
        "from an empty chain the summary is enough"
    );
    assert_eq!(changes[1].what, "Cloudflare IPv4 list");
    assert_eq!(changes[1].from.as_deref(), Some("none stored"));
    assert_eq!(
        changes[1].to.as_deref(),
        Some("15 ranges from https://www.cloudflare.com/ips-v4")
    );
    assert_eq!(
        changes[2].to.as_deref(),
        Some("18 rules (7 Cloudflare ranges)")
    );
    match &p.steps[0] {
        Step::Chain { restore, .. } => {
            assert!(restore.starts_with("*filter\n:DOCKER-USER - [0:0]\n-A DOCKER-USER -i eth0 -m conntrack --ctstate RELATED,ESTABLISHED"));
            assert!(!restore.contains("FORWARD"), "the jump is already first");
            assert_eq!(restore.lines().filter(|l| l.starts_with("-A")).count(), 34);
        }
        s => panic!("{s:?}"),
    }
}

#[test]
fn flushed_or_edited_chain_is_repaired_without_restoring_the_list() {
    let mut s = converged();
    s.families[0].docker = Some((Backend::Legacy, docker_table(&[], true)));
    let p = fw().plan(&s).unwrap();
    assert_eq!(p.steps.len(), 1);
    match &p.steps[0] {
        Step::Chain {
            family, backend, ..
        } => {
            assert_eq!(*family, Family::V4);
            assert_eq!(*backend, Backend::Legacy);
        }
        st => panic!("{st:?}"),
    }
    let v = fw().verdict(&s);
    assert!(!v.matches);
    assert_eq!(
        v.reason,
        "drift: v4: DOCKER-USER is empty (as Docker creates it)"
    );

    // an ACCEPT added by hand in front of ours
    let mut edited = vec![Rule {
        target: "ACCEPT".into(),
        ..Rule::default()
    }];
    edited.extend(rules::desired(&cf(Family::V6), "eth0"));
    let mut s = converged();
    s.families[1].docker = Some((Backend::Nft, docker_table(&edited, true)));
    let p = fw().plan(&s).unwrap();
    assert_eq!(p.steps.len(), 1);
    assert_eq!(
        p.steps[0].change().from.as_deref(),
        Some("19 rules (7 Cloudflare ranges), 1 not from sapari-agent")
    );
    let c = fw().checks(&s);
    let bad: Vec<&Check> = c.iter().filter(|c| c.level != Level::Pass).collect();
    assert_eq!(bad.len(), 1, "{c:?}");
    assert_eq!(bad[0].name, "docker-user v6");
    assert!(
        bad[0]
            .detail
            .contains("rule 1 is `-A DOCKER-USER -j ACCEPT`"),
        "{}",
        bad[0].detail
    );
}

#[test]
fn forward_jump_not_first_is_repaired_in_the_same_transaction() {
    let mut s = converged();
    s.families[0].docker = Some((
        Backend::Nft,
        docker_table(&rules::desired(&cf(Family::V4), "eth0"), false),
    ));
    let p = fw().plan(&s).unwrap();
    assert_eq!(p.steps.len(), 1);
    let c = p.steps[0].change();
    assert!(c.diff.is_none(), "the chain itself is right");
    assert_eq!(
        c.from.as_deref(),
        Some("34 rules (15 Cloudflare ranges); FORWARD jumps to DOCKER-USER only at rule 2")
    );
    match &p.steps[0] {
        Step::Chain { restore, .. } => assert!(
            restore.starts_with("*filter\n:DOCKER-USER - [0:0]\n-D FORWARD -j DOCKER-USER\n-I FORWARD 1 -j DOCKER-USER\n"),
            "{restore}"
        ),
        st => panic!("{st:?}"),
    }
    let v = fw().verdict(&s);
    assert_eq!(
        v.reason,
        "drift: v4: FORWARD jumps to DOCKER-USER only at rule 2"
    );
    let checks = fw().checks(&s);
    let fj = checks.iter().find(|c| c.name == "forward jump v4").unwrap();
    assert_eq!(fj.level, Level::Fail);
}

#[test]
fn no_docker_means_only_the_origin_lock_and_a_note() {
    let f = |fam| family(fam, None, LastGood::Absent, None);
    let p = fw().plan(&state(f(Family::V4), f(Family::V6))).unwrap();
    assert!(
        p.steps.is_empty(),
        "the origin lock is in force: {:?}",
        p.steps
    );
    // two notes say the built-in lists are in force, one that Docker has no chains
    assert_eq!(p.notes.len(), 3, "{:?}", p.notes);
    assert!(
        p.notes[2].contains("the origin lock alone keeps :443 Cloudflare-only"),
        "{:?}",
        p.notes
    );
    let mut s = state(f(Family::V4), f(Family::V6));
    origin_mut(&mut s).table = Ok(None);
    let p = fw().plan(&s).unwrap();
    assert!(
        matches!(p.steps[..], [Step::Origin { have: None, .. }]),
        "{:?}",
        p.steps
    );
    let v = fw().verdict(&state(f(Family::V4), f(Family::V6)));
    assert!(
        v.matches && v.reason.contains("Docker's chains do not exist"),
        "{v:?}"
    );
}

#[test]
fn ipv6_skipped_when_docker_has_no_ip6tables_chains() {
    let mut s = converged();
    s.families[1].docker = None;
    s.families[1].fetched = None;
    let p = fw().plan(&s).unwrap();
    assert!(p.steps.is_empty());
    assert_eq!(p.notes.len(), 1);
    assert!(p.notes[0].starts_with("IPv6 skipped: Docker has no ip6tables chains"));
    // Docker's default: docker-proxy serves v6 through INPUT, where the origin lock filters.
    let c = fw().checks(&s);
    let v6 = c.iter().find(|c| c.name == "docker-user v6").unwrap();
    assert_eq!(v6.level, Level::Pass, "{v6:?}");
    assert!(v6.detail.contains("docker-proxy"), "{v6:?}");
    // without the origin lock that path is open: a failure, not a warning
    origin_mut(&mut s).table = Ok(None);
    let c = fw().checks(&s);
    let v6 = c.iter().find(|c| c.name == "docker-user v6").unwrap();
    assert_eq!(v6.level, Level::Fail, "{v6:?}");
}

#[test]
fn rejected_list_keeps_the_last_good_one_in_force() {
    let mut s = converged();
    let why =
        "https://www.cloudflare.com/ips-v4 rejected: line 1: \"<html>\" is not a CIDR".to_string();
    s.families[0].fetched = fetched(Family::V4, Err(why.clone()));
    let p = fw().plan(&s).unwrap();
    assert!(p.steps.is_empty(), "{:?}", p.steps);
    assert_eq!(p.notes.len(), 1);
    assert!(
        p.notes[0].starts_with(&format!(
            "{why}; keeping the last good IPv4 list (15 ranges, fetched 2026-11-01T00:00:00Z"
        )),
        "{}",
        p.notes[0]
    );
    let c = fw().checks(&s);
    let l = c.iter().find(|c| c.name == "cloudflare list v4").unwrap();
    assert_eq!(l.level, Level::Warn);
    assert!(
        l.detail.contains("28 days ago") && l.detail.contains("<html>"),
        "{}",
        l.detail
    );
}

#[test]
fn no_network_and_no_last_good_uses_the_built_in_list() {
    let f = |fam| {
        family(
            fam,
            Some(docker_table(&[], true)),
            LastGood::Absent,
            fetched(
                fam,
                Err(format!(
                    "cannot fetch https://www.cloudflare.com/ips-{}: dns error",
                    fam.as_str()
                )),
            ),
        )
    };
    let s = state(f(Family::V4), f(Family::V6));
    let p = fw().plan(&s).unwrap();
    // chains from the built-in lists, nothing stored: the snapshot is not a fetched list
    assert_eq!(p.steps.len(), 2);
    assert!(p.steps.iter().all(|s| matches!(s, Step::Chain { .. })));
    assert!(p.notes[0].contains("dns error; no last good IPv4 list in /var/lib/sapari-agent: using the list built into sapari-agent"), "{:?}", p.notes);
    let c = fw().checks(&s);
    let l = c.iter().find(|c| c.name == "cloudflare list v4").unwrap();
    assert_eq!(l.level, Level::Warn);
    assert!(l.detail.contains("built into"));
    // damaged last good file: said so, then the same fallback
    let mut s = s;
    s.families[0].last_good = LastGood::Invalid("/x is not a valid list: line 1: ...".into());
    let p = fw().plan(&s).unwrap();
    assert!(
        p.notes[0].starts_with("last good IPv4 list ignored: /x is not a valid list"),
        "{:?}",
        p.notes
    );
}

#[test]
fn new_ranges_change_the_chain_and_the_stored_list() {
    let mut s = converged();
    let newer = with_extra(Family::V4, "104.30.0.0/15");
    s.families[0].fetched = fetched(Family::V4, Ok(newer.clone()));
    let p = fw().plan(&s).unwrap();
    assert_eq!(p.steps.len(), 3, "origin, chain, store: {:?}", p.steps);
    let c = p.steps[0].change();
    assert_eq!(c.what, "nftables table inet sapari_agent");
    assert!(
        c.from
            .as_deref()
            .unwrap()
            .contains("set cloudflare_v4 has 15 elements, expected 16"),
        "{c:?}"
    );
    assert!(c.to.as_deref().unwrap().contains("16 v4 + 7 v6"), "{c:?}");
    let c0 = p.steps[1].change();
    assert_eq!(c0.to.as_deref(), Some("36 rules (16 Cloudflare ranges)"));
    let d = c0.diff.unwrap();
    assert!(
        d.contains("+-A DOCKER-USER -s 104.30.0.0/15 -i eth0 -p tcp"),
        "{d}"
    );
    let c1 = p.steps[2].change();
    assert_eq!(c1.from.as_deref(), Some("15 ranges"));
    assert_eq!(
        c1.to.as_deref(),
        Some("16 ranges from https://www.cloudflare.com/ips-v4: +104.30.0.0/15")
    );
    // offline (firewall check) the stored list is the reference: no drift yet
    let mut off = s.clone();
    off.families[0].fetched = None;
    off.families[1].fetched = None;
    assert!(fw().verdict(&off).matches);
}

#[test]
fn list_equal_but_metadata_missing_is_stored_again() {
    let mut s = converged();
    let body = lists::render_list(&cf(Family::V4));
    s.families[0].last_good =
        lists::read_last_good(Family::V4, Some(&body), None, 1000, Path::new("/x"));
    let p = fw().plan(&s).unwrap();
    assert_eq!(p.steps.len(), 1);
    assert!(matches!(p.steps[0], Step::StoreList { .. }));
    assert!(
        p.notes[0].contains("metadata file is missing"),
        "{:?}",
        p.notes
    );
}

#[test]
fn wan_interface_from_config_or_routes() {
    let mut s = converged();
    assert_eq!(fw().wan(&s, Family::V6).unwrap(), "eth0");
    s.families[1].route_iface = None;
    assert_eq!(
        fw().wan(&s, Family::V6).unwrap(),
        "eth0",
        "falls back to the IPv4 route"
    );
    s.families[0].route_iface = None;
    let e = fw().plan(&s).unwrap_err().to_string();
    assert!(e.contains("set firewall.wan_interface"), "{e}");
    let cfg = FirewallSettings {
        wan_interface: "wan0".into(),
        ..settings()
    };
    let p = fw_with(cfg).plan(&s).unwrap();
    // the configured name differs from the converged chains' and the origin lock's eth0
    assert_eq!(p.steps.len(), 3);
    let bad = FirewallSettings {
        wan_interface: "eth0 -j ACCEPT".into(),
        ..settings()
    };
    let e = fw_with(bad).plan(&s).unwrap_err().to_string();
    assert!(e.contains("firewall.wan_interface"), "{e}");
}

#[test]
fn disabled_does_nothing() {
    let cfg = FirewallSettings {
        enabled: false,
        ..settings()
    };
    let p = fw_with(cfg.clone()).plan(&converged()).unwrap();
    assert!(p.steps.is_empty());
    assert!(p.notes[0].contains("disabled"));
    assert!(fw_with(cfg).verdict(&converged()).matches);
}

#[test]
fn show_reports_rules_and_list_in_force() {
    let mut s = converged();
    s.families[0].fetched = None;
    s.families[1].docker = None;
    s.families[1].last_good = LastGood::Absent;
    s.families[1].fetched = None;
    let shown = fw().show(&s);
    assert_eq!(shown[0].rules.len(), 34);
    assert!(shown[0].drift.is_none());
    assert_eq!(shown[0].list.source, "last-good");
    assert_eq!(
        shown[0].list.fetched_at.as_deref(),
        Some("2026-11-01T00:00:00Z")
    );
    assert_eq!(shown[1].list.source, "built-in");
    assert!(!shown[1].managed);
    let origin = fw().show_origin(&s).unwrap();
    assert!(origin.in_force && origin.drift.is_none(), "{origin:?}");
    let text = render_show(Some(&origin), &shown);
    assert!(
        text.starts_with("== origin lock (nftables table inet sapari_agent)\nwanted:   :443 tcp+udp on eth0 only from 15 v4 + 7 v6 Cloudflare ranges"),
        "{text}"
    );
    assert!(text.contains("table:    matches\n"), "{text}");
    assert!(text.contains("  chain origin (hook prerouting -300 accept)\n    sapari-agent origin: :443 from the WAN\n"), "{text}");
    assert!(text.contains("== DOCKER-USER v4\nbackend:  nft\nwan:      eth0\nforward:  FORWARD jumps to DOCKER-USER first\nchain:    matches the list in force\n"), "{text}");
    assert!(text.contains("note:     IPv6 skipped"), "{text}");
    let j = serde_json::to_value(&shown).unwrap();
    assert_eq!(j[0]["list"]["count"], 15);
    assert_eq!(j[0]["backend"], "nft");
}

#[tokio::test(flavor = "current_thread")]
async fn plan_runs_read_only_and_never_stores() {
    // The read-only host refuses writes: an apply through it fails before any file appears.
    let d = tempfile::tempdir().unwrap();
    let agent = AgentSettings {
        state_dir: d.path().join("state"),
        ..AgentSettings::default()
    };
    let fw = Firewall::new(&settings(), &agent);
    let host = Host::new(crate::host::Access::ReadOnly);
    let step = Step::StoreList {
        family: Family::V4,
        url: "https://x/ips-v4".into(),
        at: "2026-11-29T12:00:00Z".into(),
        old: None,
        nets: cf(Family::V4),
    };
    assert!(fw.apply(&host, &converged(), &[step]).await.is_err());
    assert!(!d.path().join("state").exists());
}

#[tokio::test(flavor = "current_thread")]
async fn store_writes_the_list_and_its_metadata() {
    if !nix::unistd::geteuid().is_root() {
        // host.write chowns to root
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let agent = AgentSettings {
        state_dir: d.path().join("var/state"),
        ..AgentSettings::default()
    };
    let fw = Firewall::new(&settings(), &agent);
    let host = Host::new(crate::host::Access::ReadWrite);
    fw.store(
        &host,
        Family::V4,
        "https://x/ips-v4",
        "2026-11-29T12:00:00Z",
        &cf(Family::V4),
    )
    .unwrap();
    let txt = std::fs::read_to_string(d.path().join("var/state/cloudflare-ips-v4.txt")).unwrap();
    let meta: ListMeta = serde_json::from_str(
        &std::fs::read_to_string(d.path().join("var/state/cloudflare-ips-v4.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(meta.sha256, lists::sha256_hex(txt.as_bytes()));
    assert_eq!(meta.count, 15);
    assert!(matches!(
        lists::read_last_good(
            Family::V4,
            Some(&txt),
            Some(&serde_json::to_string(&meta).unwrap()),
            1000,
            Path::new("/x")
        ),
        LastGood::Valid(Stored { meta: Some(_), .. })
    ));
}

/// A real HTTPS fetch from a local server with its own CA (`firewall.ca_file`), through the
/// misbehaviours the issue lists. Needs `openssl` for the certificates; skipped without it.
mod https {
    use super::*;
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

    fn pki(dir: &Path) -> bool {
        let script = r#"
set -e
ec="-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes"
openssl req -x509 -new $ec -keyout ca.key -out ca.pem -days 2 -subj "/CN=test CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1\n' > server.ext
openssl req -new $ec -keyout server.key -out server.csr -subj "/CN=127.0.0.1"
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile server.ext -out server.pem
"#;
        std::process::Command::new("sh")
            .args(["-c", script])
            .current_dir(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    fn reply(path: &str, port: u16) -> Vec<u8> {
        let ok = |body: &str| {
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
        };
        let redirect = |to: String| {
            format!(
                "HTTP/1.1 302 Found\r\nLocation: {to}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
        };
        match path {
            "/ips-v4" => ok(builtin_lists::V4),
            "/html" => ok("<!DOCTYPE html>\n<html>Just a moment...</html>\n"),
            "/private" => ok("173.245.48.0/20\n10.0.0.0/8\n"),
            "/to-http" => redirect(format!("http://127.0.0.1:{port}/ips-v4")),
            "/to-https" => redirect(format!("https://127.0.0.1:{port}/ips-v4")),
            "/loop" => redirect(format!("https://127.0.0.1:{port}/loop")),
            "/big" => {
                // no Content-Length: the limit must hold while streaming
                let mut s = String::from(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n",
                );
                for i in 0..5000 {
                    s.push_str(&format!("104.{}.{}.0/24\n", i / 256 % 256, i % 256));
                }
                s
            }
            _ => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into(),
        }
        .into_bytes()
    }

    async fn serve(dir: &Path) -> u16 {
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(dir.join("server.pem"))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
        let key = PrivateKeyDer::from_pem_file(dir.join("server.key")).unwrap();
        let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut buf = vec![0u8; 4096];
                    let mut got = Vec::new();
                    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    }
                    let req = String::from_utf8_lossy(&got);
                    let path = req.split_whitespace().nth(1).unwrap_or("/").to_string();
                    let _ = tls.write_all(&reply(&path, port)).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        port
    }

    #[tokio::test(flavor = "current_thread")]
    async fn fetch_over_https_with_a_private_ca() {
        let d = tempfile::tempdir().unwrap();
        if !pki(d.path()) {
            eprintln!("skipped: openssl could not make test certificates");
            return;
        }
        let port = serve(d.path()).await;
        let ca = std::fs::read(d.path().join("ca.pem")).unwrap();
        let ca_path = d.path().join("ca.pem");
        let c = lists::client(Duration::from_secs(5), Some((&ca_path, &ca))).unwrap();
        let url = |p: &str| format!("https://127.0.0.1:{port}{p}");
        let get = |p: &str, max_bytes: u64| {
            let c = c.clone();
            let u = url(p);
            async move { lists::fetch(&c, &u, Family::V4, max_bytes, 1000).await }
        };

        assert_eq!(get("/ips-v4", 65536).await.unwrap(), cf(Family::V4));
        assert_eq!(get("/to-https", 65536).await.unwrap(), cf(Family::V4));

        let e = get("/to-http", 65536).await.unwrap_err();
        assert!(
            e.contains("refusing redirect to non-HTTPS http://127.0.0.1"),
            "{e}"
        );
        let e = get("/loop", 65536).await.unwrap_err();
        assert!(e.contains("more than 3 redirects"), "{e}");
        let e = get("/missing", 65536).await.unwrap_err();
        assert!(e.contains("answered HTTP 404 Not Found"), "{e}");
        let e = get("/html", 65536).await.unwrap_err();
        assert!(
            e.contains("rejected: line 1: \"<!DOCTYPE html>\" is not a CIDR"),
            "{e}"
        );
        let e = get("/private", 65536).await.unwrap_err();
        assert!(
            e.contains("line 2: 10.0.0.0/8 is in 10.0.0.0/8, private"),
            "{e}"
        );
        let e = get("/big", 65536).await.unwrap_err();
        assert!(
            e.contains("sent more than firewall.max_list_bytes (65536 bytes)"),
            "{e}"
        );
        let e = get("/ips-v4", 100).await.unwrap_err();
        assert!(
            e.contains("announced") && e.contains("max_list_bytes"),
            "{e}"
        );
        let e = lists::fetch(
            &c,
            &format!("http://127.0.0.1:{port}/ips-v4"),
            Family::V4,
            65536,
            1000,
        )
        .await
        .unwrap_err();
        assert!(e.contains("not an https:// URL"), "{e}");

        // Without the CA the server is not trusted.
        let plain = lists::client(Duration::from_secs(5), None).unwrap();
        let e = lists::fetch(&plain, &url("/ips-v4"), Family::V4, 65536, 1000)
            .await
            .unwrap_err();
        assert!(
            e.starts_with("cannot fetch") && e.to_lowercase().contains("certificate"),
            "{e}"
        );

        // Nothing listening: a clear connect error well within the timeout.
        let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dead_port = dead.local_addr().unwrap().port();
        drop(dead);
        let e = lists::fetch(
            &c,
            &format!("https://127.0.0.1:{dead_port}/ips-v4"),
            Family::V4,
            65536,
            1000,
        )
        .await
        .unwrap_err();
        assert!(
            e.starts_with(&format!(
                "cannot fetch https://127.0.0.1:{dead_port}/ips-v4"
            )),
            "{e}"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_silent_server_hits_the_timeout() {
        let d = tempfile::tempdir().unwrap();
        if !pki(d.path()) {
            return;
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        let ca = std::fs::read(d.path().join("ca.pem")).unwrap();
        let ca_path = d.path().join("ca.pem");
        let c = lists::client(Duration::from_millis(500), Some((&ca_path, &ca))).unwrap();
        let t0 = std::time::Instant::now();
        let e = lists::fetch(
            &c,
            &format!("https://127.0.0.1:{port}/ips-v4"),
            Family::V4,
            65536,
            1000,
        )
        .await
        .unwrap_err();
        assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
        assert!(e.contains("timed out") || e.contains("timeout"), "{e}");
    }

    #[test]
    fn a_bad_ca_file_is_named() {
        let e = lists::client(
            Duration::from_secs(1),
            Some((Path::new("/etc/x.pem"), b"junk")),
        )
        .unwrap_err();
        assert!(e.starts_with("firewall.ca_file /etc/x.pem"), "{e}");
    }
}

// ---- the origin lock ------------------------------------------------------------------------

#[test]
fn origin_lock_comes_first_and_follows_the_lists_in_force() {
    let mut s = converged();
    origin_mut(&mut s).table = Ok(None);
    s.families[0].docker = Some((Backend::Nft, docker_table(&[], true)));
    let p = fw().plan(&s).unwrap();
    assert!(matches!(p.steps[0], Step::Origin { .. }), "{:?}", p.steps);
    assert!(matches!(p.steps[1], Step::Chain { .. }), "{:?}", p.steps);
    let Step::Origin { spec, script, .. } = &p.steps[0] else {
        unreachable!()
    };
    assert_eq!(spec.wan, vec!["eth0".to_string()]);
    assert_eq!((spec.v4.len(), spec.v6.len()), (15, 7));
    assert!(script.contains("iifname { \"eth0\" } meta l4proto { tcp, udp } th dport 443"));
    let c = fw().checks(&s);
    let lock = c.iter().find(|c| c.name == "origin lock").unwrap();
    assert_eq!(lock.level, Level::Fail);
    assert_eq!(lock.detail, "table inet sapari_agent does not exist");
}

#[test]
fn origin_lock_without_nft_fails_the_plan_naming_the_package() {
    let mut s = converged();
    origin_mut(&mut s).table = Err("`nft` is not installed (Debian package nftables)".into());
    let e = fw().plan(&s).unwrap_err().to_string();
    assert!(e.contains("the origin lock cannot be enforced"), "{e}");
    assert!(e.contains("apt-get install nftables"), "{e}");
}

#[test]
fn origin_lock_without_a_wan_covers_every_outside_interface() {
    let mut s = converged();
    s.families[0].route_iface = None;
    s.families[1].route_iface = None;
    s.families[0].docker = None;
    s.families[1].docker = None;
    origin_mut(&mut s).table = Ok(None);
    let p = fw().plan(&s).unwrap();
    let Step::Origin { spec, .. } = &p.steps[0] else {
        panic!("{:?}", p.steps)
    };
    assert!(spec.wan.is_empty());
    assert!(
        p.notes
            .iter()
            .any(|n| n.starts_with("no WAN interface known")),
        "{:?}",
        p.notes
    );
}

#[test]
fn public_ports_reach_the_table() {
    let cfg = FirewallSettings {
        public_ports: vec![crate::config::PublicPort(8080)],
        ..settings()
    };
    let p = fw_with(cfg).plan(&converged()).unwrap();
    let Step::Origin { spec, script, .. } = &p.steps[0] else {
        panic!("{:?}", p.steps)
    };
    assert_eq!(spec.public_ports, vec![8080]);
    assert!(script.contains("elements = { 443, 8080 }"));
}

#[test]
fn listeners_on_443_fail_status_without_the_origin_lock() {
    let mut s = converged();
    origin_mut(&mut s).listeners = vec![crate::host::sockets::Listener {
        proto: "tcp",
        family: "v6",
        local: "[::]:443".into(),
    }];
    let c = fw().checks(&s);
    let l = c.iter().find(|c| c.name == "listeners :443").unwrap();
    assert_eq!(l.level, Level::Pass, "{l:?}");
    origin_mut(&mut s).table = Ok(None);
    let c = fw().checks(&s);
    let l = c.iter().find(|c| c.name == "listeners :443").unwrap();
    assert_eq!(l.level, Level::Fail, "{l:?}");
    assert!(l.detail.contains("tcp/v6 [::]:443"), "{l:?}");
}

#[test]
fn docker_without_chains_is_judged_by_what_runs() {
    let mut s = converged();
    s.families[0].docker = None;
    s.families[1].docker = None;
    // Docker 29 on its nftables backend: no DOCKER-USER, the origin lock enforces
    origin_mut(&mut s).docker_nft = true;
    let c = fw().checks(&s);
    let d = c.iter().find(|c| c.name == "docker-user v4").unwrap();
    assert_eq!(d.level, Level::Pass, "{d:?}");
    assert!(d.detail.contains("nftables firewall backend"));
    // a dockerd here without any rules of its own: a failure, never a note
    origin_mut(&mut s).docker_nft = false;
    origin_mut(&mut s).dockerd_here = true;
    let c = fw().checks(&s);
    for fam in ["v4", "v6"] {
        let d = c
            .iter()
            .find(|c| c.name == format!("docker-user {fam}"))
            .unwrap();
        assert_eq!(d.level, Level::Fail, "{d:?}");
    }
    // no dockerd: only a warning that Docker is not running
    origin_mut(&mut s).dockerd_here = false;
    let c = fw().checks(&s);
    let d = c.iter().find(|c| c.name == "docker-user v4").unwrap();
    assert_eq!(d.level, Level::Warn, "{d:?}");
}

#[test]
fn a_list_that_swaps_most_ranges_is_applied_with_a_loud_warning() {
    let mut s = converged();
    let swapped: Vec<IpNet> = ["45.64.0.0/13", "2.56.0.0/14"]
        .iter()
        .map(|n| n.parse().unwrap())
        .collect();
    s.families[0].fetched = fetched(Family::V4, Ok(swapped));
    let p = fw().plan(&s).unwrap();
    let w: Vec<&String> = p
        .notes
        .iter()
        .filter(|n| n.starts_with("WARNING: "))
        .collect();
    assert_eq!(w.len(), 1, "{:?}", p.notes);
    assert!(w[0].contains("IPv4"), "{w:?}");
    // and applied: it passed validation
    assert!(p.steps.iter().any(|s| matches!(s, Step::StoreList { .. })));
    // a list that grows by one range says nothing
    let mut s = converged();
    s.families[0].fetched = fetched(Family::V4, Ok(with_extra(Family::V4, "104.30.0.0/15")));
    let p = fw().plan(&s).unwrap();
    assert!(
        !p.notes.iter().any(|n| n.starts_with("WARNING: ")),
        "{:?}",
        p.notes
    );
}
