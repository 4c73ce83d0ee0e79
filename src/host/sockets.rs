//! Listening sockets from /proc/net/{tcp,tcp6,udp,udp6} of this network namespace: who would
//! answer a packet that reaches a port, whatever program owns the socket (docker-proxy, a
//! host-network Caddy).

use std::path::Path;

use anyhow::Result;
use serde::Serialize;

use super::files;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Listener {
    /// `tcp` or `udp`.
    pub proto: &'static str,
    /// `v4` or `v6` (a `[::]` socket without IPV6_V6ONLY takes IPv4 too, but is listed once).
    pub family: &'static str,
    /// The local address as the kernel shows it, e.g. `0.0.0.0:443`, `[::]:443`.
    pub local: String,
}

const TABLES: [(&str, &str, &str); 4] = [
    ("/proc/net/tcp", "tcp", "v4"),
    ("/proc/net/tcp6", "tcp", "v6"),
    ("/proc/net/udp", "udp", "v4"),
    ("/proc/net/udp6", "udp", "v6"),
];

/// Sockets bound to `port` that accept new peers: TCP in LISTEN, UDP not connected.
pub fn listeners(port: u16) -> Result<Vec<Listener>> {
    let mut out = Vec::new();
    for (path, proto, family) in TABLES {
        if let Some(text) = files::read_text_opt(Path::new(path))? {
            out.extend(parse(&text, proto, family, port));
        }
    }
    Ok(out)
}

fn addr(hex: &str, family: &str) -> Option<String> {
    let (a, p) = hex.split_once(':')?;
    let port = u16::from_str_radix(p, 16).ok()?;
    // The kernel prints each 32-bit word in host byte order (little endian here).
    let words: Vec<u32> = (0..a.len() / 8)
        .map(|i| u32::from_str_radix(&a[i * 8..i * 8 + 8], 16).map(u32::swap_bytes))
        .collect::<Result<_, _>>()
        .ok()?;
    Some(match family {
        "v4" => format!("{}:{port}", std::net::Ipv4Addr::from(*words.first()?)),
        _ => {
            let mut b = [0u8; 16];
            for (i, w) in words.iter().take(4).enumerate() {
                b[i * 4..i * 4 + 4].copy_from_slice(&w.to_be_bytes());
            }
            format!("[{}]:{port}", std::net::Ipv6Addr::from(b))
        }
    })
}

/// One /proc/net table: `sl local_address rem_address st ...`.
pub fn parse(text: &str, proto: &'static str, family: &'static str, port: u16) -> Vec<Listener> {
    let want = format!(":{port:04X}");
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (local, remote, st) = (*f.get(1)?, *f.get(2)?, *f.get(3)?);
            if !local.ends_with(&want) {
                return None;
            }
            let open = match proto {
                "tcp" => st == "0A",
                _ => st == "07" && remote.ends_with(":0000"),
            };
            open.then(|| Listener {
                proto,
                family,
                local: addr(local, family).unwrap_or_else(|| local.to_string()),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:01BB 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
   1: 0100007F:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1 0 100 0 0 10 0
   2: 0A71CBCB:01BB 3264330A:D431 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0 100 0 0 10 0
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:01BB 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4 1 0 100 0 0 10 0
   1: B80D0120000010000000000010000000:01BB 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5 1 0 100 0 0 10 0
";
    const UDP: &str = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  1: 00000000:01BB 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 6 2 0 0
  2: 0100007F:01BB 0200007F:1234 01 00000000:00000000 00:00000000 00000000     0        0 7 2 0 0
";

    #[test]
    fn listeners_on_443_only() {
        let t = parse(TCP, "tcp", "v4", 443);
        assert_eq!(
            t,
            vec![Listener {
                proto: "tcp",
                family: "v4",
                local: "0.0.0.0:443".into()
            }]
        );
        let t6: Vec<String> = parse(TCP6, "tcp", "v6", 443)
            .into_iter()
            .map(|l| l.local)
            .collect();
        assert_eq!(t6, vec!["[::]:443", "[2001:db8:10::10]:443"]);
        let u: Vec<String> = parse(UDP, "udp", "v4", 443)
            .into_iter()
            .map(|l| l.local)
            .collect();
        assert_eq!(
            u,
            vec!["0.0.0.0:443"],
            "a connected UDP socket takes no new peers"
        );
        assert!(parse(TCP, "tcp", "v4", 22).len() == 1);
    }
}
