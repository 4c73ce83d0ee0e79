//! Peer network namespaces behind a router namespace, for clients of a box.

use std::net::Ipv4Addr;
use std::process::{Command, Output};

use super::netns::{self, End};
use super::process::*;
use super::*;

/// A peer network namespace reachable from the box through the router namespace.
#[derive(Clone, Debug)]
pub struct Peer {
    pub netns: String,
    /// Peer address with prefix, e.g. "192.0.2.50/24".
    pub ip: String,
}

impl Peer {
    /// Runs `sh -c script` in the peer's network namespace. Only the network is namespaced: the
    /// command sees the host filesystem, so use it for clients (ssh, nc, curl), not for setup.
    pub fn exec(&self, script: &str) -> Output {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.netns, "sh", "-c", script]);
        run_bounded(&mut c, None, DEFAULT_EXEC_TIMEOUT).unwrap_or_else(|t| {
            panic!(
                "peer {} exec timed out after {:?}: {script}\n{}",
                self.netns,
                t.after,
                String::from_utf8_lossy(&t.stderr)
            )
        })
    }

    pub fn addr(&self) -> &str {
        self.ip.split('/').next().unwrap()
    }
}
impl TestBox {
    /// Connects a peer netns to the box through a router netns (created on first use). The box
    /// gets `wan0` with `server_ip` (e.g. "203.0.113.10/24") and a default route via the router;
    /// the peer gets `eth0` with `peer_ip` (e.g. "192.0.2.50/24"). Each peer needs its own subnet.
    pub fn add_peer(&self, name: &str, server_ip: &str, peer_ip: &str) -> Peer {
        assert!(
            !name.is_empty()
                && name.len() <= 12
                && name
                    .bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()),
            "peer name must be 1-12 chars [a-z0-9], got {name:?}"
        );
        let rt = format!("{}-rt", self.name);
        let pn = format!("{}-{name}", self.name);
        assert!(name != "rt", "peer name 'rt' is reserved for the router");
        let mut made = self.extra_netns.lock().unwrap();
        if !made.contains(&rt) {
            host(&["ip", "netns", "add", &rt]);
            made.push(rt.clone());
            host(&["ip", "-n", &rt, "link", "set", "lo", "up"]);
            netns::forwarding(&rt, false);
        }
        let (sgw, slen) = gateway(server_ip);
        let has_wan = host_quiet(&["ip", "-n", &self.name, "link", "show", "wan0"]);
        if !has_wan {
            let sgw_cidr = format!("{sgw}/{slen}");
            netns::veth(
                &End {
                    ns: &rt,
                    dev: "srv",
                    addrs: &[&sgw_cidr],
                },
                &End {
                    ns: &self.name,
                    dev: "wan0",
                    addrs: &[server_ip],
                },
            );
            netns::default_route(&self.name, &sgw.to_string());
        }
        let (pgw, plen) = gateway(peer_ip);
        host(&["ip", "netns", "add", &pn]);
        made.push(pn.clone());
        host(&["ip", "-n", &pn, "link", "set", "lo", "up"]);
        let (rdev, pgw_cidr) = (format!("p-{name}"), format!("{pgw}/{plen}"));
        netns::veth(
            &End {
                ns: &rt,
                dev: &rdev,
                addrs: &[&pgw_cidr],
            },
            &End {
                ns: &pn,
                dev: "eth0",
                addrs: &[peer_ip],
            },
        );
        netns::default_route(&pn, &pgw.to_string());
        Peer {
            netns: pn,
            ip: peer_ip.to_string(),
        }
    }
}

/// First usable address of the subnet of `cidr` ("a.b.c.d/len"), avoiding the host's own address.
pub(crate) fn gateway(cidr: &str) -> (Ipv4Addr, u8) {
    let (ip, len) = cidr
        .split_once('/')
        .unwrap_or_else(|| panic!("expected a.b.c.d/len, got {cidr:?}"));
    let ip: Ipv4Addr = ip.parse().unwrap_or_else(|e| panic!("{cidr}: {e}"));
    let len: u8 = len.parse().unwrap_or_else(|e| panic!("{cidr}: {e}"));
    assert!(
        (1..=30).contains(&len),
        "{cidr}: prefix length must be 1..=30"
    );
    let mask = u32::MAX << (32 - len);
    let net = u32::from(ip) & mask;
    let mut gw = net + 1;
    if gw == u32::from(ip) {
        gw = (net | !mask) - 1;
    }
    (Ipv4Addr::from(gw), len)
}
