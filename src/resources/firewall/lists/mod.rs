//! Cloudflare's published address lists: fetched over HTTPS only (bounded in time, size and
//! redirects), validated line by line, aggregated, and kept as the "last good" copy in the
//! state directory. A list is accepted whole or rejected whole; every rejection names the
//! line, the range or the URL that caused it.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::{IpNet, Ipv6Net};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::host::{http, state_dir};

/// Redirects followed (https -> https only) before a fetch is given up.
pub const MAX_REDIRECTS: usize = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];

    /// `v4`/`v6`: file names, report labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Family::V4 => "v4",
            Family::V6 => "v6",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    pub fn holds(self, net: &IpNet) -> bool {
        matches!(
            (self, net),
            (Family::V4, IpNet::V4(_)) | (Family::V6, IpNet::V6(_))
        )
    }

    /// The config key of this family's list URL, for messages.
    pub fn url_key(self) -> &'static str {
        match self {
            Family::V4 => "firewall.list_url_v4",
            Family::V6 => "firewall.list_url_v6",
        }
    }
}

/// Ranges that never belong in a list of public proxy addresses, with the words a
/// rejection uses for them.
const V4_FORBIDDEN: &[(&str, &str)] = &[
    (
        "0.0.0.0/8",
        "\"this network\" (includes the unspecified address)",
    ),
    ("10.0.0.0/8", "private (RFC 1918)"),
    ("100.64.0.0/10", "carrier-grade NAT (RFC 6598)"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("172.16.0.0/12", "private (RFC 1918)"),
    ("192.0.0.0/24", "IETF protocol assignments"),
    ("192.0.2.0/24", "documentation (TEST-NET-1)"),
    (
        "192.88.99.0/24",
        "6to4 relay anycast (RFC 3068, deprecated): a relay forwards other networks' tunnelled traffic, it is not a proxy",
    ),
    ("192.168.0.0/16", "private (RFC 1918)"),
    ("198.18.0.0/15", "benchmarking (RFC 2544)"),
    ("198.51.100.0/24", "documentation (TEST-NET-2)"),
    ("203.0.113.0/24", "documentation (TEST-NET-3)"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved (includes broadcast)"),
];

const V6_FORBIDDEN: &[(&str, &str)] = &[
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("::ffff:0:0/96", "IPv4-mapped"),
    ("fc00::/7", "unique local (private)"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local (deprecated)"),
    ("ff00::/8", "multicast"),
    ("2001:db8::/32", "documentation"),
    ("3fff::/20", "documentation"),
    // Transition ranges: their addresses stand for hosts elsewhere (any IPv4 host behind a
    // 6to4 or Teredo relay), so admitting them admits whoever tunnels through a relay.
    (
        "2002::/16",
        "6to4 (RFC 3056): a transition range embedding arbitrary IPv4 hosts, not a proxy's",
    ),
    (
        "2001::/23",
        "IETF protocol assignments (RFC 2928; includes Teredo), not a proxy's",
    ),
    (
        "2001::/32",
        "Teredo (RFC 4380): a transition range tunnelling arbitrary IPv4 hosts, not a proxy's",
    ),
];

/// Shortest prefixes accepted: anything wider is not a proxy range but a large slice of the
/// internet (Cloudflare's widest today: /13 and /29).
const V4_MIN_PREFIX: u8 = 8;
const V6_MIN_PREFIX: u8 = 16;

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Why `net` cannot be in a proxy list, if it cannot.
fn forbidden(net: &IpNet) -> Option<String> {
    if net.prefix_len() == 0 {
        return Some("is a default route (it would admit every address)".into());
    }
    let (table, min) = match net {
        IpNet::V4(_) => (V4_FORBIDDEN, V4_MIN_PREFIX),
        IpNet::V6(_) => (V6_FORBIDDEN, V6_MIN_PREFIX),
    };
    let table: Vec<(IpNet, &str)> = table
        .iter()
        .map(|(range, what)| (range.parse().expect("literal range"), *what))
        .collect();
    // Inside a range: name the most specific one (2001:0:1::/48 is Teredo, not just
    // "IETF protocol assignments"); else the first one it overlaps.
    if let Some((r, what)) = table
        .iter()
        .filter(|(r, _)| r.contains(net))
        .max_by_key(|(r, _)| r.prefix_len())
    {
        return Some(format!("is in {r}, {what}"));
    }
    if let Some((r, what)) = table.iter().find(|(r, _)| overlaps(net, r)) {
        return Some(format!("overlaps {r}, {what}"));
    }
    if let IpNet::V6(n) = net {
        let global: Ipv6Net = "2000::/3".parse().expect("literal");
        if !global.contains(n) {
            return Some("is outside global unicast 2000::/3".into());
        }
    }
    if net.prefix_len() < min {
        return Some(format!(
            "is wider than /{min} ({} addresses would be admitted)",
            match net {
                IpNet::V4(n) => format!("2^{}", 32 - n.prefix_len()),
                IpNet::V6(n) => format!("2^{}", 128 - n.prefix_len()),
            }
        ));
    }
    None
}

/// A line as it may be quoted in a message: bounded and escaped.
fn shown(line: &str) -> String {
    let mut s: String = line.chars().take(60).collect();
    if line.chars().count() > 60 {
        s.push('…');
    }
    format!("{s:?}")
}

/// Parse and validate one family's list. Blank lines and `#` comments are allowed; every
/// other line must be a CIDR of `family`, in canonical form, outside the special-purpose
/// ranges. The result is aggregated (overlaps and duplicates merged) and sorted.
pub fn parse_list(text: &str, family: Family, max_entries: usize) -> Result<Vec<IpNet>, String> {
    let mut nets = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if nets.len() >= max_entries {
            return Err(format!(
                "more than {max_entries} entries (firewall.max_entries); line {n} is one too many"
            ));
        }
        let net = match (line.contains('/'), line.parse::<IpNet>()) {
            (true, Ok(net)) => net,
            (false, _) if line.parse::<IpAddr>().is_ok() => {
                return Err(format!(
                    "line {n}: {} is an address, not a CIDR (write it with its prefix length)",
                    shown(line)
                ));
            }
            _ => return Err(format!("line {n}: {} is not a CIDR", shown(line))),
        };
        if !family.holds(&net) {
            return Err(format!(
                "line {n}: {net} is not an {} range",
                family.label()
            ));
        }
        if net.trunc() != net {
            return Err(format!(
                "line {n}: {net} has host bits set (the network would be {})",
                net.trunc()
            ));
        }
        if let Some(why) = forbidden(&net) {
            return Err(format!("line {n}: {net} {why}"));
        }
        nets.push(net);
    }
    if nets.is_empty() {
        return Err("the list is empty".into());
    }
    let nets = IpNet::aggregate(&nets);
    let total = address_space(&nets);
    let cap = max_addresses(family);
    if total > cap {
        return Err(format!(
            "the {} list covers {}, more than {MAX_SPACE_FACTOR} times the built-in list's {}: the cap is {}. Cloudflare's ranges do not grow like that at once; a list this wide admits far more than Cloudflare",
            family.label(),
            count_words(family, total),
            count_words(family, builtin_space(family)),
            count_words(family, cap),
        ));
    }
    Ok(nets)
}

// ---- address space ------------------------------------------------------------------------

/// How many times the built-in list's address space a list of the same family may cover.
pub const MAX_SPACE_FACTOR: u128 = 4;

/// Addresses in one net: 2^(bits - prefix), saturating at `u128::MAX` for `::/0` (2^128).
fn net_size(net: &IpNet) -> u128 {
    let host_bits = u32::from(net.max_prefix_len() - net.prefix_len());
    1u128.checked_shl(host_bits).unwrap_or(u128::MAX)
}

/// Addresses covered by `nets`, exactly: the nets are aggregated first, so overlaps and
/// duplicates count once. Saturates at `u128::MAX` (only `::/0` reaches it).
pub fn address_space(nets: &[IpNet]) -> u128 {
    IpNet::aggregate(&nets.to_vec())
        .iter()
        .map(net_size)
        .fold(0u128, u128::saturating_add)
}

fn builtin_text(family: Family) -> &'static str {
    match family {
        Family::V4 => super::snapshot::V4,
        Family::V6 => super::snapshot::V6,
    }
}

/// The built-in list (snapshot.rs), parsed without `parse_list` (whose cap depends on it).
pub fn builtin_list(family: Family) -> Vec<IpNet> {
    let nets: Vec<IpNet> = builtin_text(family)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.trim().parse().expect("the built-in lists are CIDRs"))
        .collect();
    IpNet::aggregate(&nets)
}

/// Addresses the built-in list of `family` covers (IPv4: 1,524,736; IPv6: 14 x 2^96).
pub fn builtin_space(family: Family) -> u128 {
    address_space(&builtin_list(family))
}

/// The most addresses a list of `family` may cover: `MAX_SPACE_FACTOR` times the built-in
/// list's. A wider list is rejected by `parse_list` (and so by `fetch` and `read_last_good`).
pub fn max_addresses(family: Family) -> u128 {
    MAX_SPACE_FACTOR * builtin_space(family)
}

/// `2^20.54 addresses (1524736)` for IPv4, `2^99.81 addresses` for IPv6 (exact powers of
/// two as `2^n`).
fn count_words(family: Family, n: u128) -> String {
    let pow = if n.is_power_of_two() {
        format!("2^{}", n.trailing_zeros())
    } else {
        format!("2^{:.2}", (n as f64).log2())
    };
    match family {
        Family::V4 => format!("{pow} addresses ({n})"),
        Family::V6 => format!("{pow} addresses"),
    }
}

/// Addresses in both lists (`a` and `b` each aggregated, so their nets are disjoint; two
/// CIDRs are either nested or disjoint, so each pair's overlap is the smaller net).
fn common_space(a: &[IpNet], b: &[IpNet]) -> u128 {
    // Both aggregated: sorted, no overlaps within a list. Two prefixes either nest or are
    // disjoint, so one sweep finds every common range (a converge computes this for lists of
    // thousands of ranges, several times: it must not be quadratic).
    let (mut i, mut j, mut n) = (0, 0, 0u128);
    while i < a.len() && j < b.len() {
        let (x, y) = (&a[i], &b[j]);
        if x.contains(y) {
            n = n.saturating_add(net_size(y));
            j += 1;
        } else if y.contains(x) {
            n = n.saturating_add(net_size(x));
            i += 1;
        } else if x < y {
            i += 1;
        } else {
            j += 1;
        }
    }
    n
}

/// Warn when a new list's `changed_share` against the last good one is above this.
pub const CHANGE_WARN_SHARE: f64 = 0.5;

/// How much of the address space changed between two lists: the addresses in exactly one of
/// them divided by the addresses in either (|old Δ new| / |old ∪ new|), both lists taken as
/// sets of addresses (overlaps and duplicates count once; the order does not matter).
/// 0.0: the same addresses (also for two empty lists); 1.0: nothing in common, e.g. a list
/// whose every range was swapped for another. Adding one /22 to the 1.5M-address IPv4 list
/// scores about 0.0007; replacing half of a list's space with new space scores about 0.67.
/// Meant for lists of one family (with both, the address counts of the two are added).
pub fn changed_share(old: &[IpNet], new: &[IpNet]) -> f64 {
    let old = IpNet::aggregate(&old.to_vec());
    let new = IpNet::aggregate(&new.to_vec());
    let (a, b) = (address_space(&old), address_space(&new));
    let both = common_space(&old, &new);
    let union = a.saturating_add(b).saturating_sub(both);
    if union == 0 {
        return 0.0;
    }
    let only_one = union - both;
    only_one as f64 / union as f64
}

/// The warning for a list (`new`, valid and about to be applied) that changes more than
/// `CHANGE_WARN_SHARE` of the address space of `old` (the last good list, or the built-in
/// one when there is none), or None. It names the family, the share, the ranges added and
/// removed, and how to check the list.
pub fn big_change_warning(family: Family, old: &[IpNet], new: &[IpNet]) -> Option<String> {
    let share = changed_share(old, new);
    if share <= CHANGE_WARN_SHARE {
        return None;
    }
    let old = IpNet::aggregate(&old.to_vec());
    let new = IpNet::aggregate(&new.to_vec());
    let added = new.iter().filter(|n| !old.contains(n)).count();
    let removed = old.iter().filter(|n| !new.contains(n)).count();
    let builtin = changed_share(&builtin_list(family), &new);
    let url = match family {
        Family::V4 => "https://www.cloudflare.com/ips-v4",
        Family::V6 => "https://www.cloudflare.com/ips-v6",
    };
    Some(format!(
        "the new Cloudflare {label} list changes {pct:.1}% of the address space of the previous one ({added} range{s_a} added, {removed} removed; this warning starts above {lim:.0}%). It was applied anyway because it passed validation, but a list source that was tampered with looks like this. Check it: it differs from the list built into this agent by {b:.1}%, and it should match Cloudflare's published list ({url}, fetched from another network) range for range",
        label = family.label(),
        pct = share * 100.0,
        s_a = if added == 1 { "" } else { "s" },
        lim = CHANGE_WARN_SHARE * 100.0,
        b = builtin * 100.0,
    ))
}

/// The list as stored in the state directory: one CIDR a line.
pub fn render_list(nets: &[IpNet]) -> String {
    let mut s = String::new();
    for n in nets {
        let _ = writeln!(s, "{n}");
    }
    s
}

pub fn sha256_hex(data: &[u8]) -> String {
    let d = Sha256::digest(data);
    let mut s = String::with_capacity(64);
    for b in d {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// What the `.json` next to a stored list records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListMeta {
    pub family: Family,
    /// The URL the list was fetched from.
    pub source: String,
    /// RFC 3339, when this content was first fetched and stored.
    pub fetched_at: String,
    /// sha256 of the `.txt` file's bytes (`sha256sum` gives the same).
    pub sha256: String,
    /// CIDRs in the file (after aggregation).
    pub count: usize,
}

pub fn list_path(dir: &Path, family: Family) -> PathBuf {
    dir.join(state_dir::cloudflare_list(family.as_str()))
}

pub fn meta_path(dir: &Path, family: Family) -> PathBuf {
    dir.join(state_dir::cloudflare_meta(family.as_str()))
}

/// The last good list read back from the state directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LastGood {
    Absent,
    Valid(Stored),
    /// Present but unusable: the reason (the agent then falls back as if absent).
    Invalid(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub nets: Vec<IpNet>,
    /// sha256 of the file as read.
    pub sha256: String,
    pub meta: Option<ListMeta>,
    /// Why the metadata is missing or not trusted (the list itself is still valid).
    pub meta_problem: Option<String>,
}

/// Judge the stored files. The list must pass the same validation as a fetched one; the
/// metadata only describes it (a crash between the two writes leaves a stale `.json`,
/// which is reported but does not discard a valid list).
pub fn read_last_good(
    family: Family,
    txt: Option<&str>,
    meta: Option<&str>,
    max_entries: usize,
    path: &Path,
) -> LastGood {
    let Some(txt) = txt else {
        return LastGood::Absent;
    };
    let nets = match parse_list(txt, family, max_entries) {
        Ok(n) => n,
        Err(e) => {
            return LastGood::Invalid(format!("{} is not a valid list: {e}", path.display()));
        }
    };
    let sha256 = sha256_hex(txt.as_bytes());
    let (meta, meta_problem) = match meta.map(serde_json::from_str::<ListMeta>) {
        None => (None, Some("its metadata file is missing".to_string())),
        Some(Err(e)) => (None, Some(format!("its metadata file is unreadable: {e}"))),
        Some(Ok(m)) if m.sha256 != sha256 || m.family != family => (
            None,
            Some(format!(
                "its metadata describes other content (sha256 {}, file has {})",
                short(&m.sha256),
                short(&sha256)
            )),
        ),
        Some(Ok(m)) => (Some(m), None),
    };
    LastGood::Valid(Stored {
        nets,
        sha256,
        meta,
        meta_problem,
    })
}

pub fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

/// The difference between two lists as `+added -removed` words.
pub fn list_diff(old: &[IpNet], new: &[IpNet]) -> String {
    let mut words: Vec<String> = new
        .iter()
        .filter(|n| !old.contains(n))
        .map(|n| format!("+{n}"))
        .collect();
    words.extend(
        old.iter()
            .filter(|n| !new.contains(n))
            .map(|n| format!("-{n}")),
    );
    words.join(" ")
}

/// A reqwest error without its own top line ("error sending request for url (...)", which
/// repeats the URL): the useful part (connection refused, unknown issuer, our redirect
/// refusal) is in the sources.
fn request_error(e: &http::Error) -> String {
    let detail = http::request_error(e);
    if e.is_timeout() {
        format!("timed out (firewall.fetch_timeout): {detail}")
    } else {
        detail
    }
}

// ---- fetching -------------------------------------------------------------------------------

/// An HTTPS client for the lists: https only (a redirect to http is an error), at most
/// `MAX_REDIRECTS` redirects, a total time limit, the system roots plus `ca_pem`.
pub fn client(timeout: Duration, ca_pem: Option<(&Path, &[u8])>) -> Result<http::Client, String> {
    let mut opts = http::Options::download(timeout, timeout, MAX_REDIRECTS);
    if let Some((path, pem)) = ca_pem {
        opts = opts.with_roots_pem(pem).map_err(|e| match e {
            http::CaError::Unreadable(e) => format!(
                "firewall.ca_file {}: {}",
                path.display(),
                http::error_chain(&e)
            ),
            http::CaError::Empty => format!(
                "firewall.ca_file {}: no PEM certificate in it",
                path.display()
            ),
        })?;
    }
    http::Client::new(&opts)
        .map_err(|e| format!("cannot set up the HTTPS client: {}", http::error_chain(&e)))
}

/// Fetch and validate one list. The error says what went wrong and where, ready to be
/// followed by what the agent does instead.
pub async fn fetch(
    client: &http::Client,
    url: &str,
    family: Family,
    max_bytes: u64,
    max_entries: usize,
) -> Result<Vec<IpNet>, String> {
    let parsed = http::Url::parse(url)
        .map_err(|e| format!("{} `{url}` is not a URL: {e}", family.url_key()))?;
    if parsed.scheme() != "https" {
        return Err(format!(
            "{} `{url}` is not an https:// URL; lists are only fetched over HTTPS",
            family.url_key()
        ));
    }
    let body = client
        .get_capped(url, max_bytes)
        .await
        .map_err(|e| fetch_error(url, max_bytes, e))?;
    let from = body.from;
    let text = std::str::from_utf8(&body.bytes)
        .map_err(|e| format!("{from} rejected: not UTF-8 text ({e})"))?;
    parse_list(text, family, max_entries).map_err(|e| format!("{from} rejected: {e}"))
}

fn fetch_error(url: &str, max_bytes: u64, e: http::FetchError) -> String {
    use http::FetchError as F;
    match e {
        F::Send(e) => format!("cannot fetch {url}: {}", request_error(&e)),
        F::Status { from, status } => format!("{from} answered HTTP {status}"),
        F::Announced { from, len } => {
            format!("{from} announced {len} bytes, more than firewall.max_list_bytes ({max_bytes})")
        }
        F::TooLong { from } => {
            format!("{from} sent more than firewall.max_list_bytes ({max_bytes} bytes)")
        }
        F::Read { from, error } => format!("cannot read {from}: {}", request_error(&error)),
    }
}

#[cfg(test)]
mod tests {
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
        let l = v4(super::super::snapshot::V4).unwrap();
        assert_eq!(l.len(), 15);
        let l = v6(super::super::snapshot::V6).unwrap();
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
            v4(super::super::snapshot::V4).unwrap()
        );
        assert_eq!(
            builtin_list(Family::V6),
            v6(super::super::snapshot::V6).unwrap()
        );
    }

    #[test]
    fn lists_wider_than_four_times_the_built_in_are_rejected() {
        // v4: the built-in list + 3 x its space is exactly the cap and passes; one more
        // address does not. 4,574,208 = 2^22 + 2^18 + 2^16 + 2^15 + 2^14 + 2^11 + 2^10
        let cap = max_addresses(Family::V4);
        let mut text = String::from(super::super::snapshot::V4);
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
        let base4 = super::super::snapshot::V4;
        let base6 = super::super::snapshot::V6;
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
}
