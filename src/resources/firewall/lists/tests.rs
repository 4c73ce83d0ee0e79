use super::*;

fn v4(text: &str) -> Result<Vec<IpNet>, String> {
    parse_list(text, Family::V4, 1000)
}

fn v6(text: &str) -> Result<Vec<IpNet>, String> {
    parse_list(text, Family::V6, 1000)
}

fn nets(s: &[&str]) -> Vec<IpNet> {
    s.iter().map(|n| n.parse().unwrap()).collect()
}

#[test]
fn cloudflare_lists_pass() {
    let l = v4(super::super::builtin_lists::V4).unwrap();
    assert_eq!(l.len(), 15);
    let l = v6(super::super::builtin_lists::V6).unwrap();
    assert_eq!(l.len(), 7);
}

#[test]
fn aggregates_dedupes_and_tolerates_blank_lines_and_crlf() {
    let l = v4("173.245.48.0/21\r\n\n173.245.56.0/21\n173.245.48.0/20\n# mirror\n  103.21.244.0/22  \n103.21.244.0/22\n").unwrap();
    assert_eq!(l, nets(&["103.21.244.0/22", "173.245.48.0/20"]));
    let l = v6("2400:cb00::/33\n2400:cb00:8000::/33\n2606:4700::/32\n").unwrap();
    assert_eq!(l, nets(&["2400:cb00::/32", "2606:4700::/32"]));
}

fn err(r: Result<Vec<IpNet>, String>) -> String {
    r.expect_err("must be rejected")
}

#[test]
fn junk_is_rejected_with_the_line() {
    let e = err(v4("<!DOCTYPE html>\n<html><body>hi</body></html>\n"));
    assert!(
        e.starts_with("line 1: \"<!DOCTYPE html>\" is not a CIDR"),
        "{e}"
    );
    let e = err(v4("173.245.48.0/20\n104.16.0.0/13 extra\n"));
    assert!(e.starts_with("line 2:"), "{e}");
    let e = err(v4("173.245.48.0/33\n"));
    assert!(e.contains("not a CIDR"), "{e}");
    let e = err(v4("173.245.48.1\n"));
    assert!(e.contains("is an address, not a CIDR"), "{e}");
    let e = err(v4(&"x".repeat(500)));
    assert!(e.len() < 120 && e.contains('…'), "{e}");
}

#[test]
fn wrong_family_and_host_bits() {
    let e = err(v4("173.245.48.0/20\n2400:cb00::/32\n"));
    assert_eq!(e, "line 2: 2400:cb00::/32 is not an IPv4 range");
    let e = err(v6("173.245.48.0/20\n"));
    assert_eq!(e, "line 1: 173.245.48.0/20 is not an IPv6 range");
    let e = err(v4("173.245.48.1/20\n"));
    assert!(
        e.contains("host bits") && e.contains("173.245.48.0/20"),
        "{e}"
    );
}

#[test]
fn empty_is_rejected() {
    assert_eq!(err(v4("")), "the list is empty");
    assert_eq!(err(v4("\n\n# nothing\n")), "the list is empty");
}

#[test]
fn default_routes_and_special_ranges_are_rejected() {
    let e = err(v4("173.245.48.0/20\n0.0.0.0/0\n"));
    assert!(e.contains("line 2: 0.0.0.0/0 is a default route"), "{e}");
    let e = err(v6("::/0\n"));
    assert!(e.contains("::/0 is a default route"), "{e}");
    for (bad, word) in [
        ("10.1.0.0/16", "private"),
        ("172.16.0.0/12", "private"),
        ("192.168.1.0/24", "private"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local"),
        ("100.64.0.0/10", "carrier-grade NAT"),
        ("100.100.0.0/16", "carrier-grade NAT"),
        ("224.0.0.0/4", "multicast"),
        ("0.0.0.0/32", "unspecified"),
        ("192.0.2.0/24", "documentation"),
        ("198.51.100.0/24", "documentation"),
        ("203.0.113.0/24", "documentation"),
        ("255.255.255.255/32", "broadcast"),
        // wide enough to swallow a private range
        ("96.0.0.0/3", "carrier-grade NAT"),
        ("64.0.0.0/4", "wider than /8"),
    ] {
        let e = err(v4(&format!("173.245.48.0/20\n{bad}\n")));
        assert!(
            e.starts_with(&format!("line 2: {bad} ")) && e.contains(word),
            "{bad}: {e}"
        );
    }
    for (bad, word) in [
        ("::1/128", "loopback"),
        ("::/128", "unspecified"),
        ("fe80::/10", "link-local"),
        ("fd00::/8", "unique local"),
        ("ff02::/16", "multicast"),
        ("2001:db8::/32", "documentation"),
        ("::ffff:0:0/96", "IPv4-mapped"),
        ("4000::/8", "global unicast"),
        ("2a00::/12", "wider than /16"),
    ] {
        let e = err(v6(&format!("2400:cb00::/32\n{bad}\n")));
        // (the address is echoed as Rust prints it: ::ffff:0.0.0.0/96)
        assert!(e.starts_with("line 2: ") && e.contains(word), "{bad}: {e}");
    }
}

#[test]
fn absurd_counts_are_rejected() {
    let text: String = (0..20).map(|i| format!("104.{i}.0.0/16\n")).collect();
    let e = parse_list(&text, Family::V4, 10).unwrap_err();
    assert!(
        e.contains("more than 10 entries") && e.contains("line 11"),
        "{e}"
    );
    assert!(parse_list(&text, Family::V4, 20).is_ok());
}

#[test]
fn last_good_round_trip_and_damage() {
    let p = Path::new("/state/cloudflare-ips-v4.txt");
    let body = render_list(&nets(&["103.21.244.0/22", "173.245.48.0/20"]));
    let sha = sha256_hex(body.as_bytes());
    let meta = ListMeta {
        family: Family::V4,
        source: "https://example.test/ips-v4".into(),
        fetched_at: "2026-01-02T03:04:05Z".into(),
        sha256: sha.clone(),
        count: 2,
    };
    let m = serde_json::to_string(&meta).unwrap();
    match read_last_good(Family::V4, Some(&body), Some(&m), 100, p) {
        LastGood::Valid(s) => {
            assert_eq!(s.nets.len(), 2);
            assert_eq!(s.meta, Some(meta.clone()));
            assert!(s.meta_problem.is_none());
        }
        o => panic!("{o:?}"),
    }
    assert_eq!(
        read_last_good(Family::V4, None, Some(&m), 100, p),
        LastGood::Absent
    );
    // content changed behind the metadata's back: list kept, metadata distrusted
    let other = render_list(&nets(&["173.245.48.0/20"]));
    match read_last_good(Family::V4, Some(&other), Some(&m), 100, p) {
        LastGood::Valid(s) => {
            assert!(s.meta.is_none());
            assert!(s.meta_problem.unwrap().contains("other content"));
        }
        o => panic!("{o:?}"),
    }
    match read_last_good(Family::V4, Some("<html>\n"), Some(&m), 100, p) {
        LastGood::Invalid(why) => {
            assert!(why.contains("/state/cloudflare-ips-v4.txt") && why.contains("line 1"))
        }
        o => panic!("{o:?}"),
    }
}

#[test]
fn sha_matches_sha256sum() {
    // printf 'abc' | sha256sum
    assert_eq!(
        sha256_hex(b"abc"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}

#[test]
fn address_space_is_exact_and_the_built_in_lists_are_under_the_cap() {
    assert_eq!(builtin_space(Family::V4), 1_524_736);
    assert_eq!(builtin_space(Family::V6), 14 << 96);
    assert_eq!(max_addresses(Family::V4), 4 * 1_524_736);
    assert_eq!(max_addresses(Family::V6), 56 << 96);
    // overlaps and duplicates count once
    assert_eq!(
        address_space(&nets(&["10.0.0.0/8", "10.1.0.0/16", "10.0.0.0/8"])),
        1 << 24
    );
    assert_eq!(address_space(&nets(&["::/0"])), u128::MAX);
    assert_eq!(
        builtin_list(Family::V4),
        v4(super::super::builtin_lists::V4).unwrap()
    );
    assert_eq!(
        builtin_list(Family::V6),
        v6(super::super::builtin_lists::V6).unwrap()
    );
}

#[test]
fn lists_wider_than_four_times_the_built_in_are_rejected() {
    // v4: the built-in list + 3 x its space is exactly the cap and passes; one more
    // address does not. 4,574,208 = 2^22 + 2^18 + 2^16 + 2^15 + 2^14 + 2^11 + 2^10
    let cap = max_addresses(Family::V4);
    let mut text = String::from(super::super::builtin_lists::V4);
    text.push_str("45.0.0.0/10\n45.64.0.0/14\n45.68.0.0/16\n45.69.0.0/17\n");
    text.push_str("45.69.128.0/18\n45.69.192.0/21\n45.69.200.0/22\n");
    let l = v4(&text).unwrap();
    assert_eq!(address_space(&l), cap);
    text.push_str("45.80.0.1/32\n");
    let e = err(v4(&text));
    assert!(
        e.starts_with(
            "the IPv4 list covers 2^22.54 addresses (6098945), more than 4 times the built-in list's 2^20.54 addresses (1524736): the cap is 2^22.54 addresses (6098944)"
        ),
        "{e}"
    );
    // a single /9 (2^23) alone is too much
    let e = err(v4("45.0.0.0/9\n"));
    assert!(e.contains("covers 2^23 addresses (8388608)"), "{e}");
    // v6: a /26 is 2^102, more than 4 x 14 x 2^96 = 2^101.81
    let e = err(v6("2a00::/26\n"));
    assert!(
        e.starts_with(
            "the IPv6 list covers 2^102 addresses, more than 4 times the built-in list's 2^99.81 addresses: the cap is 2^101.81 addresses"
        ),
        "{e}"
    );
    let ok = v6("2a00::/27\n");
    assert!(ok.is_ok(), "2^101 is under the cap: {ok:?}");
    // the last good copy is judged the same way
    match read_last_good(Family::V4, Some("45.0.0.0/9\n"), None, 100, Path::new("/x")) {
        LastGood::Invalid(why) => assert!(why.contains("more than 4 times"), "{why}"),
        o => panic!("{o:?}"),
    }
}

#[test]
fn transition_ranges_are_rejected() {
    for (bad, word) in [
        ("192.88.99.0/24", "is in 192.88.99.0/24, 6to4 relay anycast"),
        (
            "192.88.99.128/25",
            "is in 192.88.99.0/24, 6to4 relay anycast",
        ),
        (
            "192.88.0.0/16",
            "overlaps 192.88.99.0/24, 6to4 relay anycast",
        ),
    ] {
        let e = err(v4(&format!("173.245.48.0/20\n{bad}\n")));
        assert!(
            e.starts_with(&format!("line 2: {bad} ")) && e.contains(word),
            "{bad}: {e}"
        );
    }
    for (bad, word) in [
        ("2002::/16", "is in 2002::/16, 6to4"),
        ("2002:c000:204::/48", "is in 2002::/16, 6to4"),
        ("2002::/15", "overlaps 2002::/16, 6to4"),
        ("2001::/32", "is in 2001::/32, Teredo"),
        ("2001:0:4136::/48", "is in 2001::/32, Teredo"),
        ("2001::/30", "is in 2001::/23, IETF protocol assignments"),
        ("2001::/23", "is in 2001::/23, IETF protocol assignments"),
        (
            "2001:100::/24",
            "is in 2001::/23, IETF protocol assignments",
        ),
        ("2001::/22", "overlaps 2001::/23, IETF protocol assignments"),
    ] {
        let e = err(v6(&format!("2400:cb00::/32\n{bad}\n")));
        assert!(
            e.starts_with(&format!("line 2: {bad} ")) && e.contains(word),
            "{bad}: {e}"
        );
    }
    // the neighbours are fine
    let ok = v6("2001:200::/32\n2003::/32\n");
    assert!(ok.is_ok(), "{ok:?}");
    let ok = v4("192.88.98.0/24\n192.88.100.0/24\n");
    assert!(ok.is_ok(), "{ok:?}");
}

#[test]
fn the_system_test_fixtures_still_validate() {
    // tests/system_firewall.rs and system_faults.rs serve the built-in lists plus these
    let base4 = super::super::builtin_lists::V4;
    let base6 = super::super::builtin_lists::V6;
    assert!(v4(&format!("{base4}1.1.1.0/24\n")).is_ok());
    assert!(v4(&format!("{base4}45.64.0.0/24\n")).is_ok());
    assert!(v6(&format!("{base6}2a09:bac0::/29\n")).is_ok());
}

#[test]
fn changed_share_measures_addresses_in_exactly_one_list() {
    let cf4 = builtin_list(Family::V4);
    let cf6 = builtin_list(Family::V6);
    assert_eq!(changed_share(&cf4, &cf4), 0.0);
    assert_eq!(changed_share(&cf6, &cf6), 0.0);
    assert_eq!(changed_share(&[], &[]), 0.0);
    // the order and the splitting of ranges do not matter
    let mut split = cf4.clone();
    split.retain(|n| n.to_string() != "104.16.0.0/13");
    split.extend(nets(&["104.16.0.0/14", "104.20.0.0/14"]));
    split.reverse();
    assert_eq!(changed_share(&cf4, &split), 0.0);
    // disjoint lists
    assert_eq!(changed_share(&cf4, &nets(&["45.0.0.0/16"])), 1.0);
    assert_eq!(changed_share(&nets(&["45.0.0.0/16"]), &cf4), 1.0);
    assert_eq!(changed_share(&cf6, &nets(&["2a09:bac0::/29"])), 1.0);
    assert_eq!(changed_share(&[], &cf4), 1.0);
    // one /22 added to 1,524,736 addresses: 1024 / 1,525,760
    let mut more = cf4.clone();
    more.push("45.64.0.0/22".parse().unwrap());
    let s = changed_share(&cf4, &more);
    assert!((s - 1024.0 / 1_525_760.0).abs() < 1e-12, "{s}");
    // one /29 added to the v6 list (14 x 2^96): 8 / 22
    let mut more6 = cf6.clone();
    more6.push("2a09:bac0::/29".parse().unwrap());
    assert!((changed_share(&cf6, &more6) - 8.0 / 22.0).abs() < 1e-12);
    // a range narrowed: 10.0.0.0/8 -> 10.0.0.0/9 changes half of it
    assert_eq!(
        changed_share(&nets(&["10.0.0.0/8"]), &nets(&["10.0.0.0/9"])),
        0.5
    );
    // half of the ranges swapped, equal sizes: 2 of 3 in the union changed
    let a = nets(&["1.0.0.0/24", "2.0.0.0/24"]);
    let b = nets(&["1.0.0.0/24", "3.0.0.0/24"]);
    assert!((changed_share(&a, &b) - 2.0 / 3.0).abs() < 1e-12);
}

#[test]
fn a_big_change_is_warned_about_only_above_the_threshold() {
    let cf4 = builtin_list(Family::V4);
    let cf6 = builtin_list(Family::V6);
    let mut more = cf4.clone();
    more.push("45.64.0.0/22".parse().unwrap());
    assert_eq!(big_change_warning(Family::V4, &cf4, &cf4), None);
    assert_eq!(big_change_warning(Family::V4, &cf4, &more), None);
    // exactly half is not above it
    let (a, b) = (nets(&["10.0.0.0/8"]), nets(&["10.0.0.0/9"]));
    assert_eq!(big_change_warning(Family::V4, &a, &b), None);
    // every range swapped (a list of a similar size, from someone else)
    let evil = nets(&["45.0.0.0/11", "46.0.0.0/13", "47.0.0.0/16"]);
    let w = big_change_warning(Family::V4, &cf4, &evil).expect("warning");
    assert!(
        w.starts_with(
            "the new Cloudflare IPv4 list changes 100.0% of the address space of the previous one (3 ranges added, 15 removed; this warning starts above 50%). It was applied anyway because it passed validation"
        ),
        "{w}"
    );
    assert!(
        w.contains("differs from the list built into this agent by 100.0%")
            && w.contains("https://www.cloudflare.com/ips-v4"),
        "{w}"
    );
    // half of the ranges swapped: 2/3 of the union changed
    let a = nets(&["2a09:1::/32", "2a09:2::/32"]);
    let b = nets(&["2a09:1::/32", "2a09:3::/32"]);
    let w = big_change_warning(Family::V6, &a, &b).unwrap();
    assert!(
        w.contains("IPv6 list changes 66.7%") && w.contains("(1 range added, 1 removed"),
        "{w}"
    );
    let mut more6 = cf6.clone();
    more6.push("2a09:bac0::/29".parse().unwrap());
    assert_eq!(big_change_warning(Family::V6, &cf6, &more6), None);
    let w = big_change_warning(Family::V6, &cf6, &nets(&["2a09:bac0::/29"])).unwrap();
    assert!(
        w.contains("ips-v6") && w.contains("(1 range added, 7 removed"),
        "{w}"
    );
}

#[test]
fn diff_words() {
    let a = nets(&["1.0.0.0/24", "2.0.0.0/24"]);
    let b = nets(&["2.0.0.0/24", "3.0.0.0/24"]);
    assert_eq!(list_diff(&a, &b), "+3.0.0.0/24 -1.0.0.0/24");
}

#[test]
fn common_space_sweep_agrees_with_every_pair() {
    // Nested, disjoint and adjacent ranges of mixed sizes, both families.
    let a: Vec<IpNet> = (0..300u32)
        .map(|k| format!("45.{}.{}.0/{}", 64 + k / 64, (k % 64) * 4, 22 + k % 3))
        .chain((0..40u32).map(|k| format!("2a01:4f8:{:x}::/{}", k * 3, 40 + k % 9)))
        .map(|n| n.parse::<IpNet>().unwrap().trunc())
        .collect();
    let b: Vec<IpNet> = (0..300u32)
        .map(|k| format!("45.{}.{}.0/{}", 64 + k / 50, (k % 50) * 5, 20 + k % 6))
        .chain((0..40u32).map(|k| format!("2a01:4f8:{:x}::/{}", k * 2, 36 + k % 11)))
        .map(|n| n.parse::<IpNet>().unwrap().trunc())
        .collect();
    let (a, b) = (IpNet::aggregate(&a), IpNet::aggregate(&b));
    let mut pairs = 0u128;
    for x in &a {
        for y in &b {
            if x.contains(y) {
                pairs += net_size(y);
            } else if y.contains(x) {
                pairs += net_size(x);
            }
        }
    }
    assert!(pairs > 0);
    assert_eq!(common_space(&a, &b), pairs);
    assert_eq!(common_space(&b, &a), pairs);
}
