// Tests drive the machine from outside the agent: clippy.toml's boundary is the agent's.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]
//! The origin lock under the events that used to open it, with real traffic: a probe opens a
//! fresh TCP connection every 10 ms from a non-Cloudflare IPv4 and IPv6 address (and one from a
//! Cloudflare range, which must keep getting through) while dockerd restarts, crashes, the box
//! "reboots" (every table flushed, every process gone, then the units in their systemd order)
//! with a slow or a dead list server, a held lock or a pending commit-confirmed change.
//!
//! Each layout runs on Docker's default daemon config (no IPv6 on the bridge, userland proxy
//! on: docker-proxy serves `[::]:443` through INPUT) and with IPv6 enabled (ip6tables DNAT),
//! on Debian 12's Docker 20.10, Debian 13's 26.1 and Debian forky's 28.5. Zero non-Cloudflare
//! connections in every case. See tests/common/netfw.rs; root only, run through scripts/test.sh.

mod common;

use common::netfw;

use std::time::{Duration, Instant};

use common::netfw::Fam::{V4, V6};
use common::netfw::Proto::Udp;
use common::netfw::{Daemon, DockerOptions, Edge, Host, ProbeStats, Reply};

/// How long the probes keep running after an event, so that the state it left is measured
/// too (and the Cloudflare client is seen getting through again).
const TAIL: Duration = Duration::from_millis(2000);

/// The longest a non-Cloudflare probe may go without a new connection (nominal: 10 ms).
const MAX_PROBE_GAP_MS: u64 = 500;

struct Window {
    what: String,
    evil4: ProbeStats,
    evil6: ProbeStats,
    cf4: ProbeStats,
    cf6: ProbeStats,
    /// The container's state and srv's ruleset when the probes stopped (for a failure message).
    after: String,
    /// Cloudflare measured again (v4, v6) once the test's web server was restarted, when it
    /// was found dead at the end of the window (not answering even on its own address from
    /// srv, where no firewall is on the path): the firewall is judged on a server that runs.
    recheck: Option<(ProbeStats, ProbeStats)>,
}

impl Window {
    fn assert_closed(&self) {
        let fmt = |s: &ProbeStats| {
            format!(
                "{}/{} connected (first at {:?} ms, last at {:?} ms; refused {}, timed out {}, other {}; longest gap {} ms)",
                s.connected,
                s.attempts,
                s.first_connected_ms,
                s.last_connected_ms,
                s.refused,
                s.timed_out,
                s.other,
                s.max_gap_ms
            )
        };
        eprintln!(
            "origin: {}: evil v4 {}, evil v6 {}, cf v4 {}, cf v6 {}",
            self.what,
            fmt(&self.evil4),
            fmt(&self.evil6),
            fmt(&self.cf4),
            fmt(&self.cf6)
        );
        assert_eq!(
            (self.evil4.connected, self.evil6.connected),
            (0, 0),
            "{}: a non-Cloudflare source reached :443: v4 {}, v6 {}",
            self.what,
            fmt(&self.evil4),
            fmt(&self.evil6)
        );
        // The probes really ran: no blind spot long enough to hide a window in which the
        // rules are rebuilt. Judged by the longest gap, not the rate, which a loaded CI box
        // halves without leaving any stretch unprobed.
        for s in [&self.evil4, &self.evil6] {
            assert!(
                s.attempts > 0 && s.max_gap_ms <= MAX_PROBE_GAP_MS,
                "{}: the probe went {} ms without a connection attempt ({} attempts in {} ms): it cannot prove the port stayed closed",
                self.what,
                s.max_gap_ms,
                s.attempts,
                s.elapsed_ms
            );
        }
        // ...and still does once the event is over (within the tail).
        let reaches = |s: &ProbeStats| {
            s.connected > 0 && s.last_connected_ms.unwrap_or(0) + 1000 >= s.elapsed_ms
        };
        if let Some((r4, r6)) = &self.recheck {
            assert!(
                reaches(r4) && reaches(r6),
                "{}: Cloudflare does not get through to a restarted web server: v4 {}, v6 {}\n{}",
                self.what,
                fmt(r4),
                fmt(r6),
                self.after
            );
            return;
        }
        for s in [&self.cf4, &self.cf6] {
            assert!(
                reaches(s),
                "{}: Cloudflare must keep getting through: v4 {}, v6 {}\ntimelines (ms, outcome): v4 {:?}\nv6 {:?}\n{}",
                self.what,
                fmt(&self.cf4),
                fmt(&self.cf6),
                self.cf4.timeline,
                self.cf6.timeline,
                self.after
            );
        }
    }
}

/// Runs `event` while four probes connect to srv's :443, then keeps them running for [`TAIL`].
fn watch(e: &Edge, what: &str, event: impl FnOnce()) -> Window {
    let probes = [
        e.start_probe(Host::Evil, V4, 443),
        e.start_probe(Host::Evil, V6, 443),
        e.start_probe(Host::Cf, V4, 443),
        e.start_probe(Host::Cf, V6, 443),
    ];
    let t0 = Instant::now();
    event();
    std::thread::sleep(TAIL);
    let [a, b, c, d] = probes.map(|p| p.stop());
    eprintln!("origin: {what} took {:.1?}", t0.elapsed());
    // Cloudflare cut off at the end: does it come back by itself, and does the container
    // answer from srv (no firewall on that path)?
    let cut = [&c, &d]
        .iter()
        .any(|s| s.timeline.last().is_some_and(|(_, k)| k != "ok"));
    let mut recheck = None;
    let recovery = if cut {
        let p = e.start_probe(Host::Cf, V4, 443);
        std::thread::sleep(Duration::from_secs(3));
        let direct = e.probe_addr(
            Host::Srv,
            common::netfw::Proto::Tcp,
            common::netfw::CONTAINER_V4,
        );
        let mut line = format!(
            "3 s later: cf v4 {:?}; the container's own address from srv: {direct}\n",
            p.stop().timeline
        );
        if !direct {
            // The harness's socat, not the firewall (which drops, never resets): seen about
            // once in a dozen runs on Docker 26 after a power-off, the container "running"
            // with no process left in it. Its state is kept for the message, then the
            // Cloudflare client is measured again against a server that answers.
            line.push_str(&format!(
                "the web server was gone; its state then: {}\n",
                e.docker_state("web")
            ));
            e.docker_ok(&["restart", "web"]);
            e.wait_container();
            let probes = [
                e.start_probe(Host::Cf, V4, 443),
                e.start_probe(Host::Cf, V6, 443),
            ];
            std::thread::sleep(TAIL);
            let [r4, r6] = probes.map(|p| p.stop());
            eprintln!(
                "origin: {what}: WARNING the test's web server died; Cloudflare measured again after restarting it"
            );
            recheck = Some((r4, r6));
        }
        line
    } else {
        String::new()
    };
    let after = format!(
        "{recovery}container: {}\nsrv's ruleset:\n{}",
        e.docker_state("web"),
        String::from_utf8_lossy(
            &e.srv_sh("nft list ruleset 2>&1; iptables-save 2>&1; ip6tables-save 2>&1")
                .stdout
        )
    );
    let exits = after
        .lines()
        .find_map(|l| l.strip_prefix("responder exits: "))
        .unwrap_or("");
    eprintln!("origin: {what}: {} {exits}", events_line(&after));
    Window {
        what: what.to_string(),
        evil4: a,
        evil6: b,
        cf4: c,
        cf6: d,
        after,
        recheck,
    }
}

/// The container's start/die events of a window on one line (a restart by Docker itself shows).
fn events_line(after: &str) -> String {
    after
        .lines()
        .filter(|l| l.contains(" container start ") || l.contains(" container die "))
        .map(|l| {
            let (ts, rest) = l.split_once(' ').unwrap_or((l, ""));
            format!(
                "{} {}",
                &ts[11.min(ts.len())..23.min(ts.len())],
                rest.split(' ').nth(1).unwrap_or("")
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn agent_ok(e: &Edge, args: &[&str], codes: &[i32]) -> netfw::AgentRun {
    let cfg = e.config_path().to_string_lossy().into_owned();
    let mut a: Vec<&str> = args.to_vec();
    a.extend(["--config", &cfg]);
    let r = e.agent(&a);
    assert!(codes.contains(&r.code), "expected exit {codes:?}:\n{r}");
    r
}

/// A reboot: dockerd and everything it started die at once, the kernel's tables are empty,
/// then the boot order: sapari-firewall-boot.service (`firewall load`, before
/// network-pre.target: no default route yet, so no WAN is known), the network comes up,
/// docker.service (the `restart: always` container comes back), sapari-docker-firewall.service
/// (`firewall load`, then `firewall apply`, which fetches). `apply_codes`: what the apply may
/// exit with.
fn reboot(e: &Edge, apply_codes: &[i32], before_docker: impl FnOnce()) {
    e.power_off();
    e.flush_netfilter();
    e.srv_sh_ok("ip route del default && ip -6 route del default");
    let load = agent_ok(e, &["firewall", "load", "--json"], &[0]);
    assert_eq!(load.json()["load"]["changed"], true, "{load}");
    let summary = load.json()["load"]["summary"].to_string();
    assert!(summary.contains("WAN not known"), "{load}");
    e.srv_sh_ok(
        "ip route add default via 203.0.113.1 && ip -6 route add default via 2001:db8:10::1",
    );
    before_docker();
    // dockerd publishes while the table built without a WAN is the one in force.
    e.start_dockerd();
    e.wait_container();
    agent_ok(e, &["firewall", "load"], &[0]);
    let c = e.config_path().to_string_lossy().into_owned();
    let r = e.agent_with(
        &["firewall", "apply", "--config", &c, "--json"],
        &[],
        Duration::from_secs(120),
    );
    assert!(apply_codes.contains(&r.code), "apply: {r}");
    // Docker 26 was once seen restarting the container a second time right after a crash
    // restart (Cloudflare cut off for the last 1.5 s of the window): measure the tail on a
    // container that answers.
    e.wait_container();
}

fn forward_first(e: &Edge) {
    let fwd = e.chain_rules(V4, "FORWARD");
    assert_eq!(
        fwd.first().map(String::as_str),
        Some("-A FORWARD -j DOCKER-USER"),
        "FORWARD: {fwd:?}"
    );
}

/// The reboots the issue lists, each with the fault that makes it hard; every window closed.
fn reboots(e: &Edge) {
    // A list server that answers nothing within firewall.fetch_timeout (3 s here).
    e.serve(V4, Reply::Hang(Duration::from_secs(8)));
    e.serve(V6, Reply::Hang(Duration::from_secs(8)));
    watch(e, "reboot, slow Cloudflare", || reboot(e, &[0], || {})).assert_closed();

    e.stop_lists();
    // moby#48560: a DOCKER-USER restored before dockerd starts gets no FORWARD jump from
    // Docker; the apply puts it first.
    watch(e, "reboot, Cloudflare down, stale DOCKER-USER", || {
        reboot(e, &[0], || {
            let o = e.restore_noflush(V4, "*filter\n:DOCKER-USER - [0:0]\nCOMMIT\n");
            assert!(o.status.success(), "{}", common::describe(&o));
        })
    })
    .assert_closed();
    forward_first(e);
    e.start_lists();

    // A converge holds the lock for longer than agent.lock_timeout: the apply exits 75, the
    // load before it does not wait.
    watch(e, "reboot, lock held", || {
        let holder = e.hold_lock(Duration::from_secs(40));
        reboot(e, &[75], || {});
        drop(holder);
    })
    .assert_closed();

    // A commit-confirmed change waits for `confirm`: apply exits 75, the load is untouched.
    e.write_pending_confirm();
    watch(e, "reboot, commit-confirmed change pending", || {
        reboot(e, &[75], || {})
    })
    .assert_closed();
    e.remove_pending_confirm();
}

/// Everything the issue lists, on one layout.
fn prove(daemon: Daemon, ipv6: bool) {
    let t0 = Instant::now();
    let e = Edge::up_docker(DockerOptions::default_docker().daemon(daemon).ipv6(ipv6));
    let version = e.docker_server_version();
    assert!(
        version.starts_with(&format!("{}.", daemon.major())),
        "{daemon:?} runs Docker {version}"
    );
    eprintln!("origin: {daemon:?} (Docker {version}), ipv6 {ipv6}");
    // As the example config ships: the WAN is the default route's interface.
    e.write_config("wan_interface = \"\"\n");

    // Without the agent every source reaches :443 over both families (the IPv6 bypass with
    // Docker's defaults is docker-proxy): the probes can see an open port.
    let open = watch(&e, "no policy yet", || {});
    assert!(
        open.evil4.connected > 0 && open.evil6.connected > 0,
        "the probes must see the port open before the agent runs: v4 {:?}, v6 {:?}",
        open.evil4,
        open.evil6
    );

    let r = e.converge_firewall();
    assert_eq!(r.code, 0, "{r}");
    watch(&e, "steady state", || {
        std::thread::sleep(Duration::from_secs(1))
    })
    .assert_closed();
    forward_first(&e);
    // HTTP/3 follows: 443/udp is Cloudflare-only too, over both families.
    let udp = e.probes(&[
        (Host::Evil, Udp, V4),
        (Host::Evil, Udp, V6),
        (Host::Cf, Udp, V4),
        (Host::Cf, Udp, V6),
    ]);
    let got: Vec<bool> = udp.iter().map(|(_, ok)| *ok).collect();
    assert_eq!(got, [false, false, true, true], "443/udp: {udp:?}");

    watch(&e, "systemctl restart docker", || e.restart_dockerd()).assert_closed();

    watch(&e, "dockerd crash and restart", || {
        e.kill_dockerd();
        e.start_dockerd();
        e.wait_container();
    })
    .assert_closed();

    reboots(&e);

    // Back to normal: the next apply converges and a second one changes nothing.
    agent_ok(&e, &["firewall", "apply", "--json"], &[0]);
    let again = agent_ok(&e, &["converge", "--only", "firewall", "--json"], &[0]);
    assert_eq!(again.firewall()["status"], "unchanged", "{again}");
    eprintln!(
        "origin: {daemon:?} ipv6 {ipv6} done in {:.1?}",
        t0.elapsed()
    );
}

macro_rules! layout {
    ($name:ident, $daemon:expr, $ipv6:expr) => {
        #[test]
        #[ignore = "system test: needs root; run scripts/test.sh"]
        fn $name() {
            prove($daemon, $ipv6);
        }
    };
}

layout!(docker20_default_config, Daemon::Bookworm, false);
layout!(docker20_ipv6, Daemon::Bookworm, true);
layout!(docker26_default_config, Daemon::Trixie, false);
layout!(docker26_ipv6, Daemon::Trixie, true);
layout!(docker28_default_config, Daemon::Forky, false);
layout!(docker28_ipv6, Daemon::Forky, true);

/// New connections from the WAN to a published port other than 443 are dropped unless
/// `firewall.public_ports` lists it. With IPv6 on the bridge both families go through DNAT.
#[test]
#[ignore = "system test: needs root; run scripts/test.sh"]
fn only_declared_ports_are_public() {
    let e = Edge::up_docker(DockerOptions::default_docker().ipv6(true));
    e.docker_ok(&[
        "run",
        "-d",
        "--name",
        "admin",
        "--init",
        "--sysctl",
        "net.ipv6.conf.all.accept_dad=0",
        "-p",
        "8080:443/tcp",
        Edge::IMAGE,
        "/bin/sh",
        "-c",
        "socat TCP6-LISTEN:443,fork,reuseaddr,ipv6only=0 EXEC:'echo admin'",
    ]);
    let reach = |fam| {
        let p = e.start_probe(Host::Evil, fam, 8080);
        std::thread::sleep(Duration::from_millis(800));
        p.stop().connected
    };
    let wait_open = |fam| {
        let t0 = Instant::now();
        while reach(fam) == 0 {
            assert!(t0.elapsed() < Duration::from_secs(15), "8080 never opened");
        }
    };
    wait_open(V4);
    wait_open(V6);
    let r = e.converge_firewall();
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(
        (reach(V4), reach(V6)),
        (0, 0),
        "8080 is not declared public"
    );
    // Declared: reachable from everywhere, while 443 stays Cloudflare-only.
    e.write_config("public_ports = [8080]\n");
    let r = e.converge_firewall();
    assert_eq!(r.code, 0, "{r}");
    assert!(reach(V4) > 0 && reach(V6) > 0, "8080 is declared public");
    watch(&e, "8080 public", || {}).assert_closed();
    // A bad entry is refused naming the field, and nothing changes.
    e.write_config("public_ports = [443]\n");
    let r = e.converge_firewall();
    assert_eq!(r.code, 78, "{r}");
    assert!(r.stderr.contains("public_ports"), "{r}");
    assert!(reach(V4) > 0, "the refused config changed nothing");
}

/// `status` FAILs while something answers on :443 and the origin lock is not in force
/// (docker-proxy on `[::]:443` with Docker's defaults), and passes once it is.
#[test]
#[ignore = "system test: needs root; run scripts/test.sh"]
fn status_fails_while_443_listens_without_the_lock() {
    let e = Edge::up_docker(DockerOptions::default_docker());
    let check = |name: &str| {
        let r = agent_ok(&e, &["status", "--only", "firewall", "--json"], &[0, 1]);
        let j = r.json();
        j["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no check {name}: {r}"))
    };
    let l = check("listeners :443");
    assert_eq!(l["level"], "FAIL", "{l}");
    assert!(l["detail"].to_string().contains("[::]:443"), "{l}");
    assert_eq!(check("origin lock")["level"], "FAIL");
    agent_ok(&e, &["firewall", "load"], &[0]);
    assert_eq!(check("listeners :443")["level"], "PASS");
    assert_eq!(check("origin lock")["level"], "PASS");
    // Someone flushes the ruleset (`systemctl restart nftables`): drift, and `firewall check`
    // says so with exit 1.
    e.srv_sh_ok("nft delete table inet sapari_agent");
    let r = agent_ok(&e, &["firewall", "check"], &[1]);
    assert!(
        r.stdout.contains("table inet sapari_agent does not exist")
            || r.stderr.contains("table inet sapari_agent does not exist"),
        "{r}"
    );
}

/// `"live-restore": true`: dockerd goes down and comes back while the container keeps running
/// (as during a Docker package upgrade with live restore); the lock never depended on dockerd.
#[test]
#[ignore = "system test: needs root; run scripts/test.sh"]
fn live_restore_restart_keeps_the_lock() {
    let e = Edge::up_docker(DockerOptions::default_docker().live_restore(true));
    let r = e.converge_firewall();
    assert_eq!(r.code, 0, "{r}");
    let started = |e: &Edge| e.docker_ok(&["inspect", "-f", "{{.State.StartedAt}}", "web"]);
    let before = started(&e);
    watch(&e, "dockerd restart with live-restore", || {
        e.stop_dockerd();
        std::thread::sleep(Duration::from_millis(500));
        e.start_dockerd();
        e.wait_container();
    })
    .assert_closed();
    assert_eq!(
        started(&e),
        before,
        "live-restore kept the container running"
    );
}
