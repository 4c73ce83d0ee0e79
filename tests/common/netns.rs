//! Wiring between network namespaces, shared by the box peers (peer.rs) and the firewall edge
//! (netfw/topology.rs): a router namespace, veth links with their addresses, default routes.

use super::process::host;

/// One end of a veth link: the namespace, the device's name there and its addresses
/// ("a.b.c.d/len" or IPv6 "x::y/len"; IPv6 ones skip duplicate address detection, which would
/// keep them unusable for the first seconds).
pub struct End<'a> {
    pub ns: &'a str,
    pub dev: &'a str,
    pub addrs: &'a [&'a str],
}

/// Turns on forwarding in `ns` (IPv4, and IPv6 with `v6`): per-namespace sysctls, so only the
/// namespaces that route forward.
pub fn forwarding(ns: &str, v6: bool) {
    let mut script = "echo 1 > /proc/sys/net/ipv4/ip_forward".to_string();
    if v6 {
        script.push_str(" && echo 1 > /proc/sys/net/ipv6/conf/all/forwarding");
    }
    host(&["ip", "netns", "exec", ns, "sh", "-c", &script]);
}

/// A veth pair created in `a.ns` with its peer moved into `b.ns`, addressed and up.
pub fn veth(a: &End, b: &End) {
    host(&[
        "ip", "-n", a.ns, "link", "add", a.dev, "type", "veth", "peer", "name", b.dev, "netns",
        b.ns,
    ]);
    for end in [a, b] {
        for addr in end.addrs {
            let mut args = vec!["ip", "-n", end.ns, "addr", "add", addr, "dev", end.dev];
            if addr.contains(':') {
                args.push("nodad");
            }
            host(&args);
        }
        host(&["ip", "-n", end.ns, "link", "set", end.dev, "up"]);
    }
}

/// The default route of `ns` via `gw` (an IPv4 or IPv6 address), replacing any there is.
pub fn default_route(ns: &str, gw: &str) {
    let fam = if gw.contains(':') { "-6" } else { "-4" };
    host(&[
        "ip", "-n", ns, fam, "route", "replace", "default", "via", gw,
    ]);
}
