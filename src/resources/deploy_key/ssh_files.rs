//! Merging our entries into the user's `~/.ssh/known_hosts` and `~/.ssh/config` text,
//! leaving everything else in those files as it was.

use std::path::Path;

use anyhow::{Result, bail};

use super::{BEGIN_MARKER, END_MARKER, GITHUB};

/// The lines of `content` without their `\n` (a `\r` stays, so nothing else changes).
fn lines_of(content: &str) -> impl Iterator<Item = &str> {
    content
        .split_inclusive('\n')
        .map(|l| l.strip_suffix('\n').unwrap_or(l))
}

fn join_lines(lines: &[String]) -> String {
    let mut s = lines.join("\n");
    if !s.is_empty() {
        s.push('\n');
    }
    s
}

/// Put `ours` in place of the `github.com` entries of a known_hosts file. Other lines stay
/// as they are; a line for `github.com` and other hosts keeps its other hosts; marked lines
/// (`@revoked`, `@cert-authority`) and hashed entries are left alone.
pub fn merge_known_hosts(content: &str, ours: &[String]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut at = None;
    for line in lines_of(content) {
        let t = line.trim_start();
        let (hosts, rest) = t.split_once([' ', '\t']).unwrap_or((t, ""));
        let is_github = |h: &str| h.eq_ignore_ascii_case(GITHUB);
        if t.starts_with('#') || t.starts_with('@') || !hosts.split(',').any(is_github) {
            out.push(line.to_string());
            continue;
        }
        at.get_or_insert(out.len());
        let others: Vec<&str> = hosts.split(',').filter(|h| !is_github(h)).collect();
        if !others.is_empty() {
            out.push(format!("{} {}", others.join(","), rest.trim_start()));
        }
    }
    let at = at.unwrap_or(out.len());
    out.splice(at..at, ours.iter().cloned());
    join_lines(&out)
}

/// The keyword of an ssh_config line (`Host`, `IdentityFile`, ...), if it is a directive.
fn directive(line: &str) -> Option<&str> {
    let t = line.trim();
    if t.is_empty() || t.starts_with('#') {
        return None;
    }
    t.split(|c: char| c.is_whitespace() || c == '=')
        .next()
        .filter(|k| !k.is_empty())
}

/// A path as an ssh_config argument: `%` starts a token there, spaces need quotes.
fn config_arg(path: &Path) -> String {
    let s = path.display().to_string().replace('%', "%%");
    if s.contains(char::is_whitespace) {
        format!("\"{s}\"")
    } else {
        s
    }
}

/// Our block. With `reset`, it ends with `Match all` so that options which followed it at
/// the top of the file keep applying to every host instead of only to github.com.
pub fn config_block(identity: &Path, reset: bool) -> String {
    let mut b = format!(
        "{BEGIN_MARKER}\n\
         # Managed by sapari-agent: git@github.com uses the deploy key. Edit outside these markers.\n\
         Host github.com\n\
         \x20   HostName github.com\n\
         \x20   User git\n\
         \x20   IdentityFile {}\n\
         \x20   IdentitiesOnly yes\n",
        config_arg(identity)
    );
    if reset {
        b.push_str("Match all\n");
    }
    b.push_str(END_MARKER);
    b.push('\n');
    b
}

/// `~/.ssh/config` with our block at the top and everything else as it was.
pub fn merge_ssh_config(content: &str, identity: &Path) -> Result<String> {
    let mut rest: Vec<String> = Vec::new();
    let mut inside = false;
    let mut after_block = false;
    for line in lines_of(content) {
        let t = line.trim();
        if inside {
            inside = t != END_MARKER;
            after_block = !inside;
            continue;
        }
        if t == BEGIN_MARKER {
            inside = true;
            continue;
        }
        if t == END_MARKER {
            bail!("`{END_MARKER}` without a `{BEGIN_MARKER}` line before it; fix the file by hand");
        }
        // The blank line we put after our block goes with it.
        if after_block && t.is_empty() {
            after_block = false;
            continue;
        }
        after_block = false;
        rest.push(line.to_string());
    }
    if inside {
        bail!("`{BEGIN_MARKER}` without a matching `{END_MARKER}` line; fix the file by hand");
    }
    let reset = rest
        .iter()
        .find_map(|l| directive(l))
        .is_some_and(|k| !k.eq_ignore_ascii_case("host") && !k.eq_ignore_ascii_case("match"));
    let mut out = config_block(identity, reset);
    if !rest.is_empty() {
        out.push('\n');
        out.push_str(&join_lines(&rest));
    }
    Ok(out)
}
