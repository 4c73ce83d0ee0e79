// Tests drive the machine from outside the agent: clippy.toml's boundary is the agent's.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]
//! UFW, proven with real traffic: peers in their own network namespaces (operator,
//! attacker, a tailnet client on a `tailscale0` link) connect to the container's real
//! services after the agent converged its real ufw. Root only; run through scripts/test.sh.

mod common;

use common::SERVER;

use common::describe;
use common::report::{json, resource};

use common::{Peer, TestBox, sh_quote};
use sapari_agent::config::Config;

/// The box's global IPv6 address, on a link of its own to the attacker (`wan6`).
const SERVER6: &str = "2001:db8:10::1";
const EVIL6: &str = "2001:db8:10::66";
const TS_SERVER: &str = "100.100.0.1";

/// TCP and UDP services inside the container: 443 (tcp+udp) and 80 (tcp), dual-stack.
const SERVICES: &str = r#"
import socket, threading
def tcp(port):
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", port)); s.listen(16)
    while True:
        c, _ = s.accept(); c.sendall(b"hello\n"); c.close()
def udp(port):
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", port))
    while True:
        d, a = s.recvfrom(100); s.sendto(b"pong\n", a)
for p in (443, 80):
    threading.Thread(target=tcp, args=(p,), daemon=True).start()
udp(443)
"#;

/// Client probe run in a peer namespace: prints what the service answered, fails on timeout.
const PROBE: &str = r#"
import socket, sys
proto, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
if proto == "tcp":
    s = socket.create_connection((host, port), timeout=2)
    print(s.recv(64).decode(errors="replace").strip())
else:
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_DGRAM); s.settimeout(2)
    s.sendto(b"ping", (host, port)); print(s.recv(64).decode().strip())
"#;

fn reaches(peer: &Peer, proto: &str, host: &str, port: u16) -> bool {
    let o = peer.exec(&format!(
        "python3 -c {} {proto} {host} {port}",
        sh_quote(PROBE)
    ));
    o.status.success() && !o.stdout.is_empty()
}

struct Net {
    /// The services run as a unit inside the box and end with it.
    _services: std::process::Child,
    b: TestBox,
    op: Peer,
    evil: Peer,
    ts: Peer,
}

/// The box with an operator, an attacker, and a tailnet client that reaches the box both
/// through the internet (wan0) and through a `tailscale0` link, as a tailnet peer does.
fn net() -> Net {
    let b = TestBox::boot();
    let op = b.add_peer("op", &format!("{SERVER}/24"), "192.0.2.50/24");
    let evil = b.add_peer("evil", &format!("{SERVER}/24"), "198.51.100.66/24");
    let ts = b.add_peer("ts", &format!("{SERVER}/24"), "100.64.5.7/24");
    let run = |args: &[&str]| {
        let st = std::process::Command::new("ip")
            .args(args)
            .status()
            .unwrap();
        assert!(st.success(), "ip {args:?}");
    };
    run(&[
        "link",
        "add",
        "tailscale0",
        "netns",
        b.netns(),
        "type",
        "veth",
        "peer",
        "name",
        "tsx",
        "netns",
        &ts.netns,
    ]);
    run(&[
        "-n",
        b.netns(),
        "addr",
        "add",
        &format!("{TS_SERVER}/24"),
        "dev",
        "tailscale0",
    ]);
    run(&["-n", b.netns(), "link", "set", "tailscale0", "up"]);
    run(&[
        "-n",
        &ts.netns,
        "addr",
        "add",
        "100.100.0.2/24",
        "dev",
        "tsx",
    ]);
    run(&["-n", &ts.netns, "link", "set", "tsx", "up"]);
    let services = b.spawn(&format!("exec python3 -c {}", sh_quote(SERVICES)));
    std::thread::sleep(std::time::Duration::from_millis(700));
    b.nsenter_ok("mkdir -p /etc/sapari-agent");
    Net {
        _services: services,
        b,
        op,
        evil,
        ts,
    }
}

fn config(b: &TestBox, edit: impl FnOnce(&mut Config)) {
    b.write_config(&common::config::config(|c| {
        c.access.operator_ips = vec!["192.0.2.50".parse().unwrap()];
        c.ntp.require_sync = false;
        c.swap.enabled = false;
        edit(c);
    }));
}

#[test]
#[ignore = "system test: needs root; run scripts/test.sh"]
fn ufw_opens_443_to_all_and_ssh_only_to_operator_and_tailnet() {
    let Net {
        b, op, evil, ts, ..
    } = net();
    config(&b, |_| {});
    // Controls: before the agent, everything is reachable.
    assert!(
        reaches(&evil, "tcp", SERVER, 22),
        "control: ssh open before"
    );
    assert!(
        reaches(&op, "tcp", SERVER, 80),
        "control: port 80 open before"
    );

    let o = b.agent(&["converge", "--only", "ufw", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    assert_eq!(resource(&json(&o), "ufw")["status"], "changed");

    assert!(reaches(&op, "tcp", SERVER, 22), "operator ssh");
    assert!(
        !reaches(&evil, "tcp", SERVER, 22),
        "attacker ssh must be dropped"
    );
    assert!(reaches(&ts, "tcp", TS_SERVER, 22), "ssh over tailscale0");
    assert!(
        !reaches(&ts, "tcp", SERVER, 22),
        "a tailnet address on the internet side is not the tunnel"
    );
    for peer in [&evil, &op] {
        assert!(reaches(peer, "tcp", SERVER, 443), "443/tcp from anywhere");
        assert!(
            reaches(peer, "udp", SERVER, 443),
            "443/udp (HTTP/3) from anywhere"
        );
        assert!(!reaches(peer, "tcp", SERVER, 80), "no port 80");
    }
    let status = b.exec_ok("ufw status verbose");
    assert!(
        status.contains("Default: deny (incoming), allow (outgoing)"),
        "{status}"
    );

    let o = b.agent(&["converge", "--only", "ufw", "--json"]);
    assert_eq!(json(&o)["summary"]["changed"], 0, "{}", describe(&o));

    // Someone opens 80 by hand: reported and kept, then pruned on request.
    b.exec_ok("ufw allow 80/tcp");
    assert!(reaches(&evil, "tcp", SERVER, 80));
    let r = json(&b.agent(&["converge", "--only", "ufw", "--json"]));
    let notes = resource(&r, "ufw")["notes"].to_string();
    assert!(notes.contains("allow 80/tcp from anywhere"), "{r:#}");
    assert_eq!(r["summary"]["changed"], 0);
    config(&b, |c| c.ufw.prune = true);
    let o = b.agent(&["converge", "--only", "ufw", "--json"]);
    assert_eq!(
        resource(&json(&o), "ufw")["status"],
        "changed",
        "{}",
        describe(&o)
    );
    assert!(!reaches(&evil, "tcp", SERVER, 80), "pruned");
    assert!(reaches(&op, "tcp", SERVER, 22), "operator still in");
}

#[test]
#[ignore = "system test: needs root; run scripts/test.sh"]
fn a_rule_set_that_drops_the_current_ssh_client_is_refused() {
    let Net { b, evil, .. } = net();
    config(&b, |_| {});
    // A real SSH session from the "wrong" address (the operator forgot --my-ip for it).
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k");
    let st = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(st.success());
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    b.nsenter_ok(&format!(
        "install -d -m 700 /root/.ssh && echo {} > /root/.ssh/authorized_keys",
        sh_quote(public.trim())
    ));
    let over_ssh = |args: &str| {
        evil.exec(&format!(
            "ssh -F /dev/null -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o ConnectTimeout=5 -o LogLevel=ERROR -i {} root@{SERVER} {}",
            key.display(),
            sh_quote(args)
        ))
    };
    // Also through sudo, which drops SSH_CONNECTION from the environment it passes on.
    for via in ["", "sudo "] {
        let o = over_ssh(&format!(
            "{via}/usr/local/bin/sapari-agent converge --only ufw --json"
        ));
        assert_eq!(o.status.code(), Some(1), "{via}: {}", describe(&o));
        let e = resource(&json(&o), "ufw")["error"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(
            e.contains("198.51.100.66") && e.contains("--force"),
            "{via}: {e}"
        );
    }
    assert!(
        b.read_string("/etc/ufw/ufw.conf")
            .unwrap()
            .contains("ENABLED=no"),
        "nothing applied"
    );
    assert!(reaches(&evil, "tcp", SERVER, 22), "still reachable");

    // Naming the address admits it: applied, and the session's address keeps SSH.
    let o =
        over_ssh("/usr/local/bin/sapari-agent converge --only ufw --json --my-ip 198.51.100.66");
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    assert!(reaches(&evil, "tcp", SERVER, 22));
}

/// Gives the box a global IPv6 address on `wan6`, a veth into the attacker's namespace (both
/// ends vanish with the namespaces the harness removes).
fn add_v6_link(b: &TestBox, evil: &Peer) {
    let run = |args: &[&str]| {
        let st = std::process::Command::new("ip")
            .args(args)
            .status()
            .unwrap();
        assert!(st.success(), "ip {args:?}");
    };
    run(&[
        "link",
        "add",
        "wan6",
        "netns",
        b.netns(),
        "type",
        "veth",
        "peer",
        "name",
        "evil6",
        "netns",
        &evil.netns,
    ]);
    for (ns, dev, addr) in [
        (b.netns(), "wan6", SERVER6),
        (evil.netns.as_str(), "evil6", EVIL6),
    ] {
        run(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{addr}/64"),
            "dev",
            dev,
            "nodad",
        ]);
        run(&["-n", ns, "link", "set", dev, "up"]);
    }
}

/// `ip6tables -S` inside the box.
fn ip6tables(b: &TestBox) -> String {
    b.nsenter_ok("ip6tables -S")
}

/// IPv6 is filtered by ufw's own chains: default deny in, 443 open, no SSH from anywhere
/// (the operator has only an IPv4 address), no port 80; proven with real IPv6 connections.
fn assert_v6_filtered(b: &TestBox, evil: &Peer, when: &str) {
    let rules = ip6tables(b);
    assert!(rules.contains("-P INPUT DROP"), "{when}: {rules}");
    assert!(rules.contains("-N ufw6-user-input"), "{when}: {rules}");
    for proto in ["tcp", "udp"] {
        assert!(
            rules.lines().any(|l| l.starts_with("-A ufw6-user-input")
                && l.contains(&format!("-p {proto}"))
                && l.contains("--dport 443")
                && l.ends_with("-j ACCEPT")),
            "{when}: no v6 443/{proto} rule: {rules}"
        );
    }
    assert!(reaches(evil, "tcp", SERVER6, 443), "{when}: v6 443/tcp");
    assert!(reaches(evil, "udp", SERVER6, 443), "{when}: v6 443/udp");
    assert!(
        !reaches(evil, "tcp", SERVER6, 22),
        "{when}: v6 ssh must be dropped"
    );
    assert!(!reaches(evil, "tcp", SERVER6, 80), "{when}: no v6 port 80");
    let st = b.exec_ok("ufw status verbose");
    assert!(st.contains("443/tcp (v6)"), "{when}: {st}");
}

#[test]
#[ignore = "system test: needs root; run scripts/test.sh"]
// One box: the second case (ufw active with IPV6=no) starts from the ufw the first one left.
fn ipv6_no_is_turned_into_ipv6_filtering() {
    let Net { b, op, evil, .. } = net();
    config(&b, |_| {});
    add_v6_link(&b, &evil);
    // The box as someone left it: IPV6=no (and an unusual mode, which the edit must keep).
    let shipped = b.read_string("/etc/default/ufw").unwrap();
    assert!(shipped.contains("\nIPV6=yes\n"), "{shipped}");
    let off = shipped.replace("\nIPV6=yes\n", "\nIPV6=no\n");
    b.write("/etc/default/ufw", off.as_bytes(), 0o640);
    // Control: before the agent, IPv6 reaches every service.
    assert!(
        reaches(&evil, "tcp", SERVER6, 22),
        "control: v6 ssh open before"
    );
    assert!(
        reaches(&evil, "tcp", SERVER6, 80),
        "control: v6 port 80 open before"
    );

    // The plan names the setting and the change.
    let o = b.agent(&["plan", "--only", "ufw", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    let r = json(&o);
    let changes = resource(&r, "ufw")["changes"].as_array().unwrap().clone();
    let c = changes
        .iter()
        .find(|c| c["what"] == "IPv6 filtering (/etc/default/ufw)")
        .unwrap_or_else(|| panic!("{r:#}"));
    assert_eq!(
        c["from"],
        "IPV6=no: ufw does not filter IPv6: while active it drops all IPv6 but loopback, in and out",
        "{c}"
    );
    assert!(c["to"].as_str().unwrap().starts_with("IPV6=yes:"), "{c}");

    // 1. ufw not active yet: IPV6=yes, then the rules, then `ufw enable` loads both families.
    let o = b.agent(&["converge", "--only", "ufw", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    assert_eq!(resource(&json(&o), "ufw")["status"], "changed");
    let edited = b.read_string("/etc/default/ufw").unwrap();
    assert_eq!(edited, shipped, "only IPV6 changed, back to yes");
    let mode = b.nsenter_ok("stat -c %a /etc/default/ufw");
    assert_eq!(mode.trim(), "640", "mode kept");
    assert_v6_filtered(&b, &evil, "after enabling");
    assert!(reaches(&op, "tcp", SERVER, 22), "operator ssh over v4");
    let o = b.agent(&["converge", "--only", "ufw", "--json"]);
    assert_eq!(json(&o)["summary"]["changed"], 0, "{}", describe(&o));

    // 2. ufw active with IPV6=no (set by hand and reloaded): the agent reloads after the edit.
    b.write("/etc/default/ufw", off.as_bytes(), 0o644);
    b.exec_ok("ufw reload");
    let before = ip6tables(&b);
    // (ufw 0.36.2: no IPv6 rules, and DROP for everything but loopback, in and out)
    assert!(!before.contains("ufw6-user-input"), "{before}");
    assert!(before.contains("-P OUTPUT DROP"), "{before}");
    assert!(
        !reaches(&evil, "tcp", SERVER6, 443),
        "ufw with IPV6=no: no IPv6 at all"
    );
    let st = json(&b.agent(&["status", "--only", "ufw", "--json"]));
    let check = st["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "ufw IPv6")
        .unwrap_or_else(|| panic!("{st:#}"))
        .clone();
    assert_eq!(check["level"], "FAIL", "{check}");
    let o = b.agent(&["converge", "--only", "ufw", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    let r = json(&o);
    let to = resource(&r, "ufw")["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["what"] == "IPv6 filtering (/etc/default/ufw)")
        .map(|c| c["to"].to_string())
        .unwrap_or_else(|| panic!("{r:#}"));
    assert!(to.contains("ufw reload"), "{to}");
    assert_eq!(b.read_string("/etc/default/ufw").unwrap(), shipped);
    assert_v6_filtered(&b, &evil, "after the reload");
    assert!(reaches(&op, "tcp", SERVER, 22), "operator ssh over v4");
    let o = b.agent(&["converge", "--only", "ufw", "--json"]);
    assert_eq!(json(&o)["summary"]["changed"], 0, "{}", describe(&o));
    let st = json(&b.agent(&["status", "--only", "ufw", "--json"]));
    assert!(
        st["checks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "ufw IPv6" && c["level"] == "PASS"),
        "{st:#}"
    );
}
