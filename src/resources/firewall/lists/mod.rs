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

use crate::host::{http, state_dir};

/// Redirects followed (https -> https only) before a fetch is given up.
pub const MAX_REDIRECTS: usize = 3;

pub use crate::host::iptables::Family;

/// The config key of a family's list URL, for messages.
pub fn url_key(fam: Family) -> &'static str {
    match fam {
        Family::V4 => "firewall.list_url_v4",
        Family::V6 => "firewall.list_url_v6",
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
        Family::V4 => super::builtin_lists::V4,
        Family::V6 => super::builtin_lists::V6,
    }
}

/// The built-in list (builtin_lists.rs), parsed without `parse_list` (whose cap depends on it).
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

pub use crate::digest::sha256_hex;

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
        .map_err(|e| format!("{} `{url}` is not a URL: {e}", url_key(family)))?;
    if parsed.scheme() != "https" {
        return Err(format!(
            "{} `{url}` is not an https:// URL; lists are only fetched over HTTPS",
            url_key(family)
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
mod tests;
