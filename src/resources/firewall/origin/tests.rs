use super::*;

fn spec(wan: &[&str], public: &[u16]) -> Spec {
    Spec {
        wan: wan.iter().map(|s| s.to_string()).collect(),
        v4: vec![
            "173.245.48.0/20".parse().unwrap(),
            "103.21.244.0/22".parse().unwrap(),
        ],
        v6: vec!["2606:4700::/32".parse().unwrap()],
        public_ports: public.to_vec(),
    }
}

fn fixture(name: &str) -> Value {
    let text = match name {
        "wan0" => include_str!("../testdata/origin-wan0-nft-1.0.6.json"),
        _ => include_str!("../testdata/origin-no-wan-nft-1.0.6.json"),
    };
    serde_json::from_str(text).unwrap()
}

// The fixtures are what nft 1.0.6 (Debian 12) printed after loading `script()` of these
// specs into a network namespace.
#[test]
fn what_nft_prints_is_the_shape_wanted() {
    let s = spec(&["wan0"], &[8443]);
    assert_eq!(parse(&fixture("wan0")).unwrap(), s.shape());
    assert_eq!(drift(Some(&s.shape()), &s.shape()), None);
    let n = spec(&[], &[]);
    assert_eq!(parse(&fixture("no-wan")).unwrap(), n.shape());
}

#[test]
fn script_is_one_replace_of_the_table() {
    let t = spec(&["eth0", "eth1"], &[]).script();
    assert!(t.starts_with(
        "table inet sapari_agent\ndelete table inet sapari_agent\ntable inet sapari_agent {\n"
    ));
    assert!(t.contains(
        "iifname { \"eth0\", \"eth1\" } meta l4proto { tcp, udp } th dport 443 jump cloudflare_only"
    ));
    assert!(t.contains("type filter hook prerouting priority raw; policy accept;"));
    assert!(t.contains("elements = { 443 }"));
    assert!(t.contains(&format!("drop {}", spec(&["eth0", "eth1"], &[]).tag())));
}

#[test]
fn elements_are_sorted_deduplicated_and_truncated() {
    let mut s = spec(&["wan0"], &[]);
    s.v4.push("173.245.48.0/20".parse().unwrap());
    s.v4.push("10.1.2.3/8".parse().unwrap());
    assert_eq!(
        s.shape().sets["cloudflare_v4"],
        vec!["10.0.0.0/8", "103.21.244.0/22", "173.245.48.0/20"]
    );
}

#[test]
fn the_tag_follows_lists_wan_and_ports() {
    let a = spec(&["wan0"], &[]);
    let mut b = a.clone();
    b.v6.push("2400:cb00::/32".parse().unwrap());
    let mut c = a.clone();
    c.wan = vec!["eth0".into()];
    let mut d = a.clone();
    d.public_ports = vec![8080];
    let tags = [a.tag(), b.tag(), c.tag(), d.tag()];
    for (i, x) in tags.iter().enumerate() {
        for y in &tags[i + 1..] {
            assert_ne!(x, y);
        }
    }
    assert_eq!(a.tag(), spec(&["wan0"], &[]).tag(), "stable");
}

#[test]
fn drift_names_what_differs() {
    let s = spec(&["wan0"], &[8443]);
    let want = s.shape();
    assert_eq!(
        drift(None, &want).unwrap(),
        "table inet sapari_agent does not exist"
    );
    let mut flushed = parse(&fixture("wan0")).unwrap();
    for c in flushed.chains.values_mut() {
        c.rules.clear();
    }
    let d = drift(Some(&flushed), &want).unwrap();
    assert!(d.contains("chain origin has 0 rules, expected 1"), "{d}");
    assert!(
        d.contains("chain cloudflare_only has 0 rules, expected 3"),
        "{d}"
    );

    let mut other = s.clone();
    other.v4.pop();
    let d = drift(Some(&want), &other.shape()).unwrap();
    assert!(
        d.contains("set cloudflare_v4 has 2 elements, expected 1 (0 to add, 1 to remove)"),
        "{d}"
    );
    assert!(
        d.contains("chain cloudflare_only was built from other lists or settings"),
        "{d}"
    );

    let mut unhooked = want.clone();
    unhooked.chains.get_mut("origin").unwrap().hook = None;
    let d = drift(Some(&unhooked), &want).unwrap();
    assert!(
        d.contains("chain origin hooks nothing, expected prerouting -300 accept"),
        "{d}"
    );

    let mut extra = want.clone();
    extra.chains.insert("mine".into(), ChainShape::default());
    assert!(
        drift(Some(&extra), &want)
            .unwrap()
            .contains("chain mine is not the agent's")
    );
}

#[test]
fn odd_elements_are_read() {
    assert_eq!(element(&serde_json::json!("1.2.3.4")), "1.2.3.4/32");
    assert_eq!(
        element(&serde_json::json!("2001:db8::1")),
        "2001:db8::1/128"
    );
    assert_eq!(element(&serde_json::json!(443)), "443");
    assert_eq!(
        element(&serde_json::json!({"range": ["1.2.3.4", "1.2.3.9"]})),
        "1.2.3.4/32-1.2.3.9/32"
    );
    assert_eq!(
        element(&serde_json::json!({"prefix": {"addr": "10.0.0.0", "len": 8}})),
        "10.0.0.0/8"
    );
    assert!(parse(&serde_json::json!({})).is_err());
}

#[test]
fn summary_words() {
    assert_eq!(
        spec(&["eth0"], &[]).summary(),
        ":443 tcp+udp on eth0 only from 2 v4 + 1 v6 Cloudflare ranges; other published ports closed on the WAN (public: none)"
    );
    assert!(spec(&[], &[8080]).summary().contains("WAN not known"));
    assert!(spec(&[], &[8080]).summary().contains("(public: 8080)"));
}
