//! What `sshd -T` reports as effective, compared with the managed settings.

use std::collections::BTreeMap;

use super::config_text::split_line;
use super::{DROP_DIR, Effective, SSHD_CONFIG, Sshd, State};

/// Parse `sshd -T` output into keyword -> values (multi-valued keywords repeat).
pub fn parse_effective(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines() {
        if let Some((k, v)) = line.split_once(' ') {
            m.entry(k.to_string())
                .or_default()
                .push(v.trim().to_string());
        }
    }
    m
}

/// Managed settings whose effective value differs: (keyword, effective, wanted).
pub fn effective_mismatches(
    eff: &BTreeMap<String, Vec<String>>,
    settings: &[(&str, String)],
) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for (k, want) in settings {
        let got = eff
            .get(&k.to_ascii_lowercase())
            .map(|v| v.join(" "))
            .unwrap_or_default();
        if !got.eq_ignore_ascii_case(want) {
            out.push((k.to_string(), got, want.clone()));
        }
    }
    out
}

/// The files with a line setting `key` to `value` (a Match block's line included): where an
/// unexpected effective value most likely comes from.
pub(super) fn files_setting(s: &State, key: &str, value: &str) -> Vec<String> {
    let main = s.main.iter().map(|m| (SSHD_CONFIG.to_string(), m.as_str()));
    let drops = s
        .drop_ins
        .iter()
        .map(|(n, t)| (format!("{DROP_DIR}/{n}"), t.as_str()));
    main.chain(drops)
        .filter(|(_, text)| {
            text.lines()
                .filter_map(split_line)
                .any(|(k, v)| k.eq_ignore_ascii_case(key) && v.eq_ignore_ascii_case(value))
        })
        .map(|(f, _)| f)
        .collect()
}

impl Sshd {
    /// Managed settings `sshd -T` reports otherwise, for a loopback and for a public
    /// client (a `Match Address` block can harden one and not the other).
    pub(super) fn effective_mismatches(&self, s: &State) -> Vec<(String, String, String)> {
        let mut out = Vec::new();
        for (eff, whom) in [
            (&s.effective, ""),
            (&s.effective_public, " for a public client"),
        ] {
            if let Effective::Values(v) = eff {
                for (k, got, want) in effective_mismatches(v, &self.settings()) {
                    if !out
                        .iter()
                        .any(|(x, _, _): &(String, String, String)| *x == k)
                    {
                        out.push((format!("{k}{whom}"), got, want));
                    }
                }
            }
        }
        out
    }
}
