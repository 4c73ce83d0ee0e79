//! The sshd configuration as text: sshd's line syntax, the order it reads the main file and
//! the drop-ins in, and the edits the agent makes to that text (neutralized overrides,
//! strong moduli).

use std::collections::BTreeMap;

use super::{DROP_DIR, MIN_MODULUS_FIELD, SSHD_CONFIG};

/// Split a config line into its keyword (lowercased) and value. sshd accepts both
/// `Keyword value` and `Keyword=value`.
pub fn split_line(line: &str) -> Option<(String, String)> {
    let t = line.trim();
    if t.is_empty() || t.starts_with('#') {
        return None;
    }
    let end = t
        .find(|c: char| c.is_whitespace() || c == '=')
        .unwrap_or(t.len());
    let key = t[..end].to_ascii_lowercase();
    let rest = t[end..].trim_start();
    let rest = rest.strip_prefix('=').unwrap_or(rest).trim();
    Some((key, rest.to_string()))
}

pub(super) fn includes_drop_dir(value: &str) -> bool {
    value
        .split_whitespace()
        .any(|p| p == "/etc/ssh/sshd_config.d/*.conf" || p == "sshd_config.d/*.conf")
}

pub fn has_include(main: &str) -> bool {
    main.lines()
        .filter_map(split_line)
        .any(|(k, v)| k == "include" && includes_drop_dir(&v))
}

/// The files in the order sshd reads them: the main file up to the Include, the drop-ins
/// (sorted), then the rest of the main file. Settings inside `Match` blocks are left out:
/// they only apply to some connections, and `sshd -T` judges them.
pub fn read_order<'a>(main: &'a str, drop_ins: &'a [(String, String)]) -> Vec<(String, &'a str)> {
    let mut out: Vec<(String, &str)> = Vec::new();
    let mut included = false;
    for line in main.lines() {
        if let Some((k, v)) = split_line(line)
            && k == "include"
            && includes_drop_dir(&v)
            && !included
        {
            included = true;
            for (name, text) in drop_ins {
                for l in text.lines() {
                    out.push((format!("{DROP_DIR}/{name}"), l));
                }
            }
            continue;
        }
        out.push((SSHD_CONFIG.to_string(), line));
    }
    let mut in_match = BTreeMap::new();
    let mut current = String::new();
    let mut matching = false;
    out.retain(|(file, line)| {
        if *file != current {
            current = file.clone();
            matching = *in_match.get(file).unwrap_or(&false);
        }
        if let Some((k, _)) = split_line(line)
            && k == "match"
        {
            matching = true;
            in_match.insert(file.clone(), true);
        }
        !matching
    });
    out
}

/// Managed settings that an earlier file sets to another value: (file, keyword as written
/// in our list, their value). sshd keeps the first value, so these would win over ours.
pub fn overrides(
    order: &[(String, &str)],
    ours: &str,
    settings: &[(&str, String)],
) -> Vec<(String, String, String)> {
    let mut seen: BTreeMap<String, ()> = BTreeMap::new();
    let mut found = Vec::new();
    for (file, line) in order {
        let Some((k, v)) = split_line(line) else {
            continue;
        };
        if seen.insert(k.clone(), ()).is_some() {
            continue;
        }
        if file == ours {
            continue;
        }
        if let Some((name, want)) = settings.iter().find(|(n, _)| n.eq_ignore_ascii_case(&k))
            && !v.eq_ignore_ascii_case(want)
        {
            found.push((file.clone(), name.to_string(), v));
        }
    }
    found
}

/// Comment out the lines of `text` that set any of `keys` (lowercase), saying why.
pub fn neutralize(text: &str, keys: &[String]) -> String {
    let mut out = String::new();
    for line in text.split_inclusive('\n') {
        match split_line(line) {
            Some((k, _)) if keys.iter().any(|x| x.eq_ignore_ascii_case(&k)) => {
                out.push_str("# disabled by sapari-agent (overrides its hardening): ");
                out.push_str(line.trim_start());
                if !line.ends_with('\n') {
                    out.push('\n');
                }
            }
            _ => out.push_str(line),
        }
    }
    out
}

/// The moduli file without groups smaller than 3072 bits, and how many were removed.
pub fn strong_moduli(text: &str) -> (String, usize) {
    let mut removed = 0;
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let f: Vec<&str> = line.split_whitespace().collect();
        let weak = !line.trim_start().starts_with('#')
            && f.len() >= 7
            && f[4]
                .parse::<u32>()
                .is_ok_and(|bits| bits < MIN_MODULUS_FIELD);
        if weak {
            removed += 1;
        } else {
            out.push_str(line);
        }
    }
    (out, removed)
}

/// Managed keywords set inside `Match` blocks: (file, keyword). They apply to some
/// connections only, so the checks for loopback and a public client may not see them.
pub fn match_block_settings(
    main: &str,
    drop_ins: &[(String, String)],
    settings: &[(&str, String)],
) -> Vec<(String, String)> {
    let mut files: Vec<(String, &str)> = vec![(SSHD_CONFIG.to_string(), main)];
    files.extend(
        drop_ins
            .iter()
            .map(|(n, t)| (format!("{DROP_DIR}/{n}"), t.as_str())),
    );
    let mut out = Vec::new();
    for (file, text) in files {
        let mut in_match = false;
        for line in text.lines() {
            let Some((k, _)) = split_line(line) else {
                continue;
            };
            if k == "match" {
                in_match = true;
            } else if in_match
                && let Some((name, _)) = settings.iter().find(|(n, _)| n.eq_ignore_ascii_case(&k))
                && !out.iter().any(|(f, n)| *f == file && n == name)
            {
                out.push((file.clone(), name.to_string()));
            }
        }
    }
    out
}
