//! The namespaces of the edge and their wiring, and the host tools they need.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::*;
use crate::common::netns::{self, End};

impl Edge {
    pub(crate) fn topology(&mut self) {
        let rt = format!("{}-rt", self.name);
        self.add_ns(&rt);
        for h in Host::ALL {
            self.add_ns(&self.ns(h));
        }
        netns::forwarding(&rt, true);
        let wan: [WanLink; 5] = [
            (
                Host::Srv,
                WAN,
                "203.0.113.1/24",
                "203.0.113.10/24",
                Some(("2001:db8:10::1/64", "2001:db8:10::10/64")),
            ),
            (
                Host::Cf,
                "eth0",
                "173.245.48.1/24",
                "173.245.48.10/24",
                Some(("2606:4700:10::1/64", "2606:4700:10::10/64")),
            ),
            (
                Host::Evil,
                "eth0",
                "198.51.100.1/24",
                "198.51.100.66/24",
                Some(("2001:db8:bad::1/64", "2001:db8:bad::66/64")),
            ),
            (Host::Op, "eth0", "192.0.2.1/24", "192.0.2.50/24", None),
            (Host::Lists, "eth0", "198.18.0.1/24", "198.18.0.10/24", None),
        ];
        for (h, dev, r4, p4, v6) in wan {
            let n = self.ns(h);
            let rdev = format!("i-{}", h.role());
            let (mut r, mut p) = (vec![r4], vec![p4]);
            if let Some((r6, p6)) = v6 {
                r.push(r6);
                p.push(p6);
            }
            netns::veth(
                &End {
                    ns: &rt,
                    dev: &rdev,
                    addrs: &r,
                },
                &End {
                    ns: &n,
                    dev,
                    addrs: &p,
                },
            );
            for gw in [Some(r4), v6.map(|(r6, _)| r6)].into_iter().flatten() {
                netns::default_route(&n, gw.split('/').next().unwrap());
            }
        }
        // The tailnet client hangs directly off the server's tailscale0.
        let srv = self.ns(Host::Srv);
        let ts = self.ns(Host::Ts);
        netns::veth(
            &End {
                ns: &srv,
                dev: "tailscale0",
                addrs: &["100.64.5.1/24", "fd7a:115c:a1e0::1/64"],
            },
            &End {
                ns: &ts,
                dev: "eth0",
                addrs: &["100.64.5.7/24", "fd7a:115c:a1e0::7/64"],
            },
        );
        netns::default_route(&ts, "100.64.5.1");
        netns::default_route(&ts, "fd7a:115c:a1e0::1");
        netns::forwarding(&srv, true);
    }
}

pub(crate) fn netns_inode(name: &str) -> Option<u64> {
    fs::metadata(format!("/run/netns/{name}"))
        .ok()
        .map(|m| m.ino())
}

pub(crate) fn self_netns_inode() -> u64 {
    fs::metadata("/proc/self/ns/net")
        .expect("stat /proc/self/ns/net")
        .ino()
}

/// pids whose network namespace is `/run/netns/<name>`.
pub(crate) fn pids_in_netns(name: &str) -> Vec<u32> {
    let Some(ino) = netns_inode(name) else {
        return Vec::new();
    };
    let want = format!("net:[{ino}]");
    let mut v = Vec::new();
    if let Ok(rd) = fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if fs::read_link(format!("/proc/{pid}/ns/net"))
                .is_ok_and(|l| l.to_string_lossy() == want)
            {
                v.push(pid);
            }
        }
    }
    v
}
pub(crate) fn which(names: &[&str]) -> Option<PathBuf> {
    for n in names {
        let p = Path::new(n);
        if p.is_absolute() {
            if p.is_file() {
                return Some(p.to_path_buf());
            }
            continue;
        }
        for d in PATH.split(':') {
            let c = Path::new(d).join(n);
            if c.is_file() {
                return Some(c);
            }
        }
    }
    None
}

pub(crate) fn require_tools() {
    let need = [
        ("ip", "iproute2"),
        ("iptables-restore", "iptables"),
        ("ip6tables-restore", "iptables"),
        ("socat", "socat"),
        ("openssl", "openssl"),
        ("python3", "python3"),
        ("unshare", "util-linux"),
        ("nsenter", "util-linux"),
        ("nft", "nftables"),
    ];
    let missing: Vec<String> = need
        .iter()
        .filter(|(t, _)| which(&[t]).is_none())
        .map(|(t, p)| format!("{t} (apt: {p})"))
        .collect();
    assert!(
        missing.is_empty(),
        "firewall system tests need: {}; scripts/test.sh installs them",
        missing.join(", ")
    );
}
