use super::*;

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
fn disabled_names_its_key_and_warns_in_status() {
    let cfg = FirewallSettings {
        enabled: false,
        ..settings()
    };
    let fw_off = fw_with(cfg);
    assert_eq!(fw_off.disabled(), Some("firewall.enabled"));
    let c = fw_off.disabled_checks();
    assert_eq!(c[0].level, Level::Warn);
    assert!(c[0].detail.contains("firewall.enabled = false"), "{c:?}");
    // `firewall check` reaches the verdict without the engine.
    assert!(fw_off.verdict(&converged()).matches);
    assert_eq!(fw().disabled(), None);
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
