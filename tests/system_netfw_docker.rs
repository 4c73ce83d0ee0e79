// Tests drive the machine from outside the agent: clippy.toml's boundary is the agent's.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]
//! Smoke test of the real-traffic fixture's Docker variants (tests/common/netfw.rs): Debian 12's
//! docker.io 20.10 on the host, Debian 13's 26.1 and forky's 28.5 by chroot from cached trees,
//! each with `--ipv6 --ip6tables` and with Docker's default config. No agent: these pin what each
//! daemon does to netfilter and what the fixture's probes and events do, so that the firewall
//! tests built on them mean something. Root only; run through scripts/test.sh.

mod common;

use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use common::netfw::Fam::{V4, V6};
use common::netfw::Proto::Tcp;
use common::netfw::{CONTAINER_V4, Daemon, DockerOptions, Edge, Fam, Host, ProbeStats};

fn save(e: &Edge, fam: Fam, table: &str) -> String {
    let cmd = match fam {
        V4 => "iptables-save",
        V6 => "ip6tables-save",
    };
    e.srv_sh_ok(&format!("{cmd} -t {table}"))
}

fn rules(e: &Edge, fam: Fam, table: &str, chain: &str) -> Vec<String> {
    let pfx = format!("-A {chain} ");
    save(e, fam, table)
        .lines()
        .filter(|l| l.starts_with(&pfx))
        .map(String::from)
        .collect()
}

/// `:FORWARD DROP [0:0]` -> "DROP"
fn policy(e: &Edge, fam: Fam, chain: &str) -> String {
    let pfx = format!(":{chain} ");
    e.filter_table(fam)
        .lines()
        .find_map(|l| l.strip_prefix(&pfx).map(String::from))
        .unwrap_or_default()
}

/// Everything a failure message needs to show.
fn layout(e: &Edge) -> String {
    format!(
        "--- iptables ---\n{}{}--- ip6tables ---\n{}{}--- listening in srv ---\n{}",
        save(e, V4, "filter"),
        save(e, V4, "raw"),
        save(e, V6, "filter"),
        save(e, V6, "raw"),
        e.srv_sh_ok("ss -Hltnup")
    )
}

/// (path, mtime, size) of every file in a tree, hashed: a docker tree must come out of a test
/// exactly as it went in.
fn tree_fingerprint(root: &Path) -> String {
    let o = Command::new("sh")
        .arg("-c")
        .arg("cd \"$1\" && find . -xdev -printf '%p %T@ %s %m\\n' | LC_ALL=C sort | sha256sum")
        .arg("sh")
        .arg(root)
        .output()
        .unwrap();
    assert!(o.status.success(), "fingerprint of {}", root.display());
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// What the host's own Docker paths look like (they must not change).
fn host_docker_paths() -> Vec<String> {
    [
        "/var/lib/docker",
        "/run/docker",
        "/run/docker.sock",
        "/etc/docker",
    ]
    .iter()
    .map(|p| {
        let o = Command::new("sh")
            .arg("-c")
            .arg("ls -la --time-style=full-iso \"$1\" 2>&1")
            .arg("sh")
            .arg(p)
            .output()
            .unwrap();
        format!("{p}: {}", String::from_utf8_lossy(&o.stdout))
    })
    .collect()
}

/// Probes from several clients at once for `d`.
fn probe_for(e: &Edge, who: &[(Host, Fam, u16)], d: Duration) -> Vec<ProbeStats> {
    let ps: Vec<_> = who
        .iter()
        .map(|&(h, f, p)| e.start_probe(h, f, p))
        .collect();
    thread::sleep(d);
    ps.into_iter().map(|p| p.stop()).collect()
}

fn tcp_reach(e: &Edge, from: Host) -> (bool, bool) {
    let r = e.probes(&[(from, Tcp, V4), (from, Tcp, V6)]);
    (r[0].1, r[1].1)
}

fn started_at(e: &Edge) -> String {
    e.docker_ok(&["inspect", "-f", "{{.State.StartedAt}}", "web"])
        .trim()
        .to_string()
}

// One edge through Docker's events: each crash, flush or reboot starts from what the last left.
fn smoke(daemon: Daemon, ipv6: bool) {
    let t0 = Instant::now();
    let tree = daemon.tree();
    let tree_before = tree.as_deref().map(tree_fingerprint);
    let host_before = host_docker_paths();
    let e = Edge::up_docker(DockerOptions::default_docker().ipv6(ipv6).daemon(daemon));
    let up = t0.elapsed();

    // The daemon asked for.
    let version = e.docker_server_version();
    assert_eq!(
        version.split('.').next().and_then(|m| m.parse().ok()),
        Some(daemon.major()),
        "{daemon:?}: server version {version}"
    );
    let lay = layout(&e);
    eprintln!("{daemon:?} ipv6={ipv6}: dockerd {version}\n{lay}");

    // Cloudflare reaches :443 over both families (up_docker waited for TCP and UDP, v4 and v6).
    assert_eq!(tcp_reach(&e, Host::Cf), (true, true), "{lay}");

    // No rules: everyone reaches, also under continuous probes, three at once. The same probe
    // against a closed port connects never: a connected count means something.
    let st = probe_for(
        &e,
        &[
            (Host::Evil, V4, 443),
            (Host::Evil, V6, 443),
            (Host::Cf, V4, 443),
            (Host::Evil, V4, 444),
        ],
        Duration::from_secs(1),
    );
    eprintln!("probes (evil v4, evil v6, cf v4, evil v4 :444) for 1 s: {st:#?}");
    for (i, s) in st[..3].iter().enumerate() {
        assert!(
            s.connected > 0 && s.first_connected_ms.is_some(),
            "probe {i}: {s:?}"
        );
        // every 10 ms: about 100 in a second, and nothing lost on an open path
        assert!(s.attempts >= 50, "probe {i}: {s:?}");
        assert_eq!(s.connected + s.unfinished, s.attempts, "probe {i}: {s:?}");
    }
    assert_eq!(st[3].connected, 0, "{:?}", st[3]);
    assert!(st[3].refused > 0, "{:?}", st[3]);

    // The chain layout of each release (the test rig's FINDINGS.md, "Newer Docker by chroot").
    let is28 = daemon.major() == 28;
    let fwd4 = e.chain_rules(V4, "FORWARD");
    assert_eq!(
        fwd4.first().map(String::as_str),
        Some("-A FORWARD -j DOCKER-USER"),
        "{lay}"
    );
    if is28 {
        // DOCKER-USER is empty (no trailing RETURN), Docker's own rules hang off DOCKER-FORWARD.
        assert_eq!(e.docker_user(V4), Vec::<String>::new(), "{lay}");
        assert_eq!(
            fwd4.get(1).map(String::as_str),
            Some("-A FORWARD -j DOCKER-FORWARD")
        );
        assert_eq!(fwd4.len(), 2, "{lay}");
    } else {
        assert_eq!(e.docker_user(V4), ["-A DOCKER-USER -j RETURN"], "{lay}");
        assert!(!e.chain_exists(V4, "DOCKER-FORWARD"), "{lay}");
        assert_eq!(
            fwd4.get(1).map(String::as_str),
            Some("-A FORWARD -j DOCKER-ISOLATION-STAGE-1")
        );
    }
    // 28 drops packets for the container's address that do not come from the bridge (a peer
    // routing to 172.18.0.2 directly); before 28 the raw table stays empty.
    let raw4 = rules(&e, V4, "raw", "PREROUTING");
    let raw6 = rules(&e, V6, "raw", "PREROUTING");
    if is28 {
        assert_eq!(
            raw4,
            [format!(
                "-A PREROUTING -d {CONTAINER_V4}/32 ! -i docker0 -j DROP"
            )]
        );
        if ipv6 {
            assert_eq!(
                raw6,
                [format!(
                    "-A PREROUTING -d {}/128 ! -i docker0 -j DROP",
                    e.container_v6()
                )]
            );
        } else {
            assert!(raw6.is_empty(), "{raw6:?}");
        }
    } else {
        assert!(raw4.is_empty() && raw6.is_empty(), "{raw4:?} {raw6:?}");
    }
    // ip6tables: 20.10 never makes DOCKER-USER there (not even with --ip6tables); 26 makes it
    // (with a RETURN) only with --ip6tables; 28 always, since ip6tables is on by default from
    // 27 on, also in the default config where the network has no IPv6 at all.
    let user6 = match daemon {
        Daemon::Bookworm => false,
        Daemon::Trixie => ipv6,
        Daemon::Forky => true,
    };
    assert_eq!(e.chain_exists(V6, "DOCKER-USER"), user6, "{lay}");
    if user6 {
        assert_eq!(
            e.chain_rules(V6, "FORWARD").first().map(String::as_str),
            Some("-A FORWARD -j DOCKER-USER"),
            "{lay}"
        );
        let want: &[&str] = if is28 {
            &[]
        } else {
            &["-A DOCKER-USER -j RETURN"]
        };
        assert_eq!(e.docker_user(V6), want, "{lay}");
    }
    // With --ip6tables, 20.10 and 26 set ip6tables FORWARD to DROP. 28 sets a FORWARD policy
    // only when it switches forwarding on itself, and the fixture has it on already.
    let want_pol = if ipv6 && !is28 { "DROP" } else { "ACCEPT" };
    assert_eq!(policy(&e, V6, "FORWARD"), want_pol, "{lay}");
    assert_eq!(policy(&e, V4, "FORWARD"), "ACCEPT", "{lay}");
    // The IPv6 path: NAT to the container's v6 address with ipv6, else docker-proxy on [::]:443
    // (srv's INPUT, never FORWARD). docker-proxy listens on [::]:443 in both configs.
    let nat6 = save(&e, V6, "nat");
    assert_eq!(
        nat6.contains("-j DNAT") && nat6.contains("--dport 443"),
        ipv6,
        "{nat6}"
    );
    let listen = e.srv_sh_ok("ss -Hltnp 'sport = :443'");
    assert!(
        listen.contains("[::]:443") && listen.contains("docker-proxy"),
        "{listen}"
    );
    assert_eq!(e.container_v6().is_empty(), !ipv6);

    // A crash of dockerd: containerd and docker-proxy go with it, the container keeps running
    // under its shim and stays reachable through the NAT rules: v4, and v6 only with ipv6.
    let before = started_at(&e);
    let t = Instant::now();
    e.kill_dockerd();
    for gone in ["dockerd", "containerd", "docker-proxy"] {
        assert_eq!(
            e.srv_processes(gone),
            Vec::<u32>::new(),
            "{gone} after the crash"
        );
    }
    assert_eq!(
        e.srv_processes("containerd-shim").len(),
        1,
        "the shim lives on"
    );
    assert_eq!(tcp_reach(&e, Host::Cf), (true, ipv6), "after the crash");
    e.start_dockerd();
    e.wait_container();
    e.wait_wan();
    let after = started_at(&e);
    assert_ne!(before, after, "the container was not restarted");
    let crash = t.elapsed();

    // A flush under a running dockerd: the published port stays reachable over both families,
    // through docker-proxy on srv's INPUT (nothing left to filter). Then the crash as well: what
    // a reboot leaves until dockerd is back (nothing reaches). dockerd starts from an empty
    // ruleset, puts its chains back and the container comes back (restart always).
    let t = Instant::now();
    e.flush_netfilter();
    assert_eq!(e.srv_sh_ok("nft list ruleset").trim(), "");
    assert!(!e.chain_exists(V4, "DOCKER-USER"));
    let ct = e.srv_sh_ok("cat /proc/sys/net/netfilter/nf_conntrack_count");
    assert!(
        ct.trim().parse::<u64>().is_ok_and(|n| n < 10),
        "conntrack not flushed: {ct}"
    );
    assert_eq!(tcp_reach(&e, Host::Cf), (true, true), "after the flush");
    e.kill_dockerd();
    assert_eq!(
        tcp_reach(&e, Host::Cf),
        (false, false),
        "flushed and crashed"
    );
    e.start_dockerd();
    e.wait_container();
    e.wait_wan();
    assert_ne!(after, started_at(&e), "the container was not restarted");
    assert!(e.chain_exists(V4, "DOCKER-USER"), "{}", layout(&e));
    assert_eq!(e.chain_exists(V6, "DOCKER-USER"), user6, "{}", layout(&e));
    let st = probe_for(&e, &[(Host::Evil, V4, 443)], Duration::from_millis(300));
    assert!(st[0].connected > 0, "{:?}", st[0]);
    let reboot = t.elapsed();

    // A whole reboot: every process gone (the NAT rules lead nowhere then), the tables empty,
    // dockerd from nothing; the container comes back.
    let t = Instant::now();
    let before = started_at(&e);
    e.power_off();
    for gone in ["dockerd", "containerd", "containerd-shim", "docker-proxy"] {
        assert_eq!(
            e.srv_processes(gone),
            Vec::<u32>::new(),
            "{gone} after power_off"
        );
    }
    assert_eq!(tcp_reach(&e, Host::Cf), (false, false), "powered off");
    e.flush_netfilter();
    e.start_dockerd();
    e.wait_container();
    e.wait_wan();
    assert_ne!(before, started_at(&e), "the container was not restarted");
    assert!(e.chain_exists(V4, "DOCKER-USER"), "{}", layout(&e));
    let boot = t.elapsed();

    drop(e);
    if let (Some(tree), Some(before)) = (&tree, &tree_before) {
        assert_eq!(
            &tree_fingerprint(tree),
            before,
            "{} changed",
            tree.display()
        );
    }
    assert_eq!(
        host_docker_paths(),
        host_before,
        "the host's Docker paths changed"
    );
    eprintln!(
        "{daemon:?} ipv6={ipv6}: up {up:.1?}, crash+start {crash:.1?}, flush+crash+start \
         {reboot:.1?}, power_off+flush+start {boot:.1?}, whole case {:.1?}",
        t0.elapsed()
    );
}

#[test]
#[ignore = "system test: needs root; run scripts/test.sh"]
fn bookworm_default_config() {
    smoke(Daemon::Bookworm, false);
}

#[test]
#[ignore = "system test: needs root; run scripts/test.sh"]
fn bookworm_ipv6() {
    smoke(Daemon::Bookworm, true);
}

#[test]
#[ignore = "system test: needs root; run scripts/test.sh"]
fn trixie_default_config() {
    smoke(Daemon::Trixie, false);
}

#[test]
#[ignore = "system test: needs root; run scripts/test.sh"]
fn trixie_ipv6() {
    smoke(Daemon::Trixie, true);
}

#[test]
#[ignore = "system test: needs root; run scripts/test.sh"]
fn forky_default_config() {
    smoke(Daemon::Forky, false);
}

#[test]
#[ignore = "system test: needs root; run scripts/test.sh"]
fn forky_ipv6() {
    smoke(Daemon::Forky, true);
}
