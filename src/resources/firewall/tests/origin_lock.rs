//! The origin lock: its place in the plan and what it is built from.

use super::*;

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
