//! The `.env` reader: compose-go's `dotenv` rules (quoting, escapes, `$` expansion), with
//! what it finds wrong in the text recorded as findings.

use std::collections::BTreeMap;

use super::{Env, Finding, Severity};

/// Parse one dotenv file the way docker compose v2 reads it.
pub fn parse(text: &str) -> Env {
    parse_files(&[("", text)])
}

/// Parse env files in the order compose reads them (`--env-file a --env-file b`): one
/// variable map, so a later file wins and may refer to what an earlier one set. `name`
/// (empty for a lone file) prefixes line numbers in findings.
pub fn parse_files(files: &[(&str, &str)]) -> Env {
    let mut env = Env::default();
    let mut r = Reading::default();
    for (name, text) in files {
        read_file(name, text, &mut env, &mut r);
    }
    // A `$` in a value that a later line or file replaces never reaches the app.
    for (key, n, finding) in r.expanded {
        if r.last.get(&key) == Some(&n) {
            env.findings.push(finding);
        }
    }
    env
}

/// compose-go's `isSpace`: blanks that do not end a line.
fn blank(c: char) -> bool {
    matches!(
        c,
        '\t' | '\u{b}' | '\u{c}' | '\r' | ' ' | '\u{85}' | '\u{a0}'
    )
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Quoting {
    None,
    Single,
    Double,
}

/// Assignments counted across files, so a finding about a `$` is kept only for the
/// assignment compose keeps.
#[derive(Default)]
struct Reading {
    count: usize,
    last: BTreeMap<String, usize>,
    expanded: Vec<(String, usize, Finding)>,
}

/// What one value's `$` references did, for the finding about them.
#[derive(Default)]
struct Refs {
    /// A bare `$NAME` or `${NAME}` whose variable is not set: the text is lost.
    unset: bool,
    /// References compose resolves (a set variable, or a `${NAME:-default}` form).
    resolved: bool,
}

/// Why compose refuses a whole file.
enum Refusal {
    /// `${` not followed by `NAME}` or `NAME<op>...}`.
    Invalid,
    /// `${NAME?...}` / `${NAME:?...}` with NAME unset (or empty).
    Required,
}

/// Read one file into `env`. Compose refuses a whole file for some faults: then a finding
/// says so and the rest of the file is not read.
fn read_file(name: &str, text: &str, env: &mut Env, reading: &mut Reading) {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let at = |pos: usize| {
        let line = text[..pos].matches('\n').count() + 1;
        if name.is_empty() {
            format!("line {line}")
        } else {
            format!("{name} line {line}")
        }
    };
    let fail = |env: &mut Env, key: &str, problem: String| {
        env.findings.push(Finding {
            severity: Severity::Fail,
            key: key.to_string(),
            problem,
        })
    };
    let mut pos = 0;
    loop {
        let Some(start) = next_statement(text, pos) else {
            return;
        };
        let here = at(start);
        let (key, rest) = match read_key(&text[start..], &here) {
            Ok(Statement::Assign(key, rest)) => (key, rest),
            Ok(Statement::Inherit(rest)) => {
                pos = text.len() - rest.len();
                continue;
            }
            Ok(Statement::End) => return,
            Err(problem) => {
                fail(env, &here, problem);
                return;
            }
        };
        let rest = rest.trim_start_matches(blank);
        let (raw, quoting, used) = match read_value(rest, &here) {
            Ok(v) => v,
            Err(problem) => {
                fail(env, key, problem);
                return;
            }
        };
        pos = text.len() - rest.len() + used;
        let value = match resolve(raw, quoting, key, &here, &env.vars, reading) {
            Ok(v) => v,
            Err(problem) => {
                fail(env, key, problem);
                return;
            }
        };
        reading.last.insert(key.to_string(), reading.count);
        reading.count += 1;
        env.vars.insert(key.to_string(), value);
    }
}

/// The start of the next statement from `pos`: blank lines and `#` comment lines are
/// skipped. None: the file ends first.
fn next_statement(text: &str, mut pos: usize) -> Option<usize> {
    loop {
        pos += text[pos..].find(|c: char| !c.is_whitespace())?;
        if !text[pos..].starts_with('#') {
            return Some(pos);
        }
        pos += text[pos..].find('\n')?;
    }
}

/// A statement up to the end of its variable name.
#[derive(Debug, PartialEq)]
enum Statement<'a> {
    /// `KEY=` or `KEY:` and the text after the separator.
    Assign(&'a str, &'a str),
    /// A lone `KEY` line, and the text after it: compose copies the variable from the
    /// environment it runs in.
    Inherit(&'a str),
    /// A last line without `=` or newline: nothing compose would assign.
    End,
}

/// The variable name at the start of `s` (an `export ` prefix allowed). Err: why compose
/// refuses the whole file, located by `here` only (the text may be a pasted secret).
fn read_key<'a>(s: &'a str, here: &str) -> Result<Statement<'a>, String> {
    let mut s = s;
    if let Some(r) = s.strip_prefix("export")
        && r.starts_with([' ', '\t'])
    {
        s = r.trim_start_matches(blank);
    }
    let mut end = None;
    for (i, c) in s.char_indices() {
        if blank(c) {
            continue;
        }
        match c {
            // compose also takes `KEY: value`; a lone `KEY` is copied from the
            // environment compose runs in.
            '=' | ':' | '\n' => {
                end = Some((i, c));
                break;
            }
            '_' | '.' | '-' | '[' | ']' => {}
            c if c.is_alphanumeric() => {}
            _ => {
                // Compose stops at this line; the text may be a pasted secret, so only
                // the line number is shown.
                return Err(format!(
                    "{here}: a character docker compose does not allow in a variable name (letters, digits, `_.-[]`); compose refuses the whole file: write KEY=value"
                ));
            }
        }
    }
    let Some((i, sep)) = end else {
        return Ok(Statement::End);
    };
    let key = s[..i].trim_end_matches(char::is_whitespace);
    if key.contains(' ') {
        return Err(format!(
            "{here}: a variable name with a space in it; compose refuses the whole file: write KEY=value"
        ));
    }
    let rest = &s[i + 1..];
    Ok(if sep == '\n' {
        // Inherited from compose's own environment, which is not the app's to set here.
        Statement::Inherit(rest)
    } else {
        Statement::Assign(key, rest)
    })
}

/// The value at the start of `rest` as written (quotes removed, nothing expanded yet), how
/// it is quoted, and the bytes of `rest` it takes. Err: an unclosed quote.
fn read_value(rest: &str, here: &str) -> Result<(String, Quoting, usize), String> {
    match rest.chars().next() {
        Some(q @ ('"' | '\'')) => match quoted(&rest[1..], q) {
            Some((v, used)) => Ok((
                v,
                if q == '"' {
                    Quoting::Double
                } else {
                    Quoting::Single
                },
                1 + used,
            )),
            None => Err(format!(
                "{here}: the {} quote that opens the value is never closed; compose refuses the whole file: add the closing quote",
                if q == '"' { "double" } else { "single" }
            )),
        },
        _ => {
            let line = rest.split('\n').next().unwrap_or("");
            let v = line.split(" #").next().unwrap_or("").trim_end();
            Ok((v.to_string(), Quoting::None, line.len()))
        }
    }
}

/// The value compose assigns: escapes and `$` references resolved as its quoting says, with
/// a finding (kept in `reading` until it is known which assignment compose keeps) when a
/// `$` changes it. Err: why compose refuses the whole file.
fn resolve(
    raw: String,
    quoting: Quoting,
    key: &str,
    here: &str,
    vars: &BTreeMap<String, String>,
    reading: &mut Reading,
) -> Result<String, String> {
    let (raw, kind) = match quoting {
        Quoting::Single => return Ok(raw),
        Quoting::Double => (unescape(&raw), "a double-quoted"),
        Quoting::None => (raw, "an unquoted"),
    };
    let mut refs = Refs::default();
    let v = expand(&raw, vars, &mut refs).map_err(|r| match r {
        Refusal::Invalid => format!(
            "{here}: `${{` in {kind} value that is not a ${{NAME}} reference; docker compose v2 refuses the whole file: single-quote the value ('...') or write $$ for each literal $"
        ),
        Refusal::Required => format!(
            "{here}: a required ${{NAME?...}} reference to a variable that is not set; docker compose v2 refuses the whole file: set the variable earlier, or single-quote the value ('...')"
        ),
    })?;
    let finding = |severity, problem| Finding {
        severity,
        key: key.to_string(),
        problem,
    };
    if refs.unset {
        reading.expanded.push((
            key.to_string(),
            reading.count,
            finding(
                Severity::Fail,
                format!(
                    "{here}: `$` in {kind} value: docker compose v2 replaces `$NAME` there by a variable no earlier line or env file sets (so by nothing, or by whatever compose's own environment holds) and the app gets a different value; single-quote the value ('...') or write $$ for each literal $"
                ),
            ),
        ));
    } else if refs.resolved {
        reading.expanded.push((
            key.to_string(),
            reading.count,
            finding(
                Severity::Warn,
                format!(
                    "{here}: `$` in {kind} value: docker compose v2 substitutes variables there; if the $ is meant literally, single-quote the value ('...') or write $$"
                ),
            ),
        ));
    }
    Ok(v)
}

/// The body of a quoted value up to its closing quote `q`, and the bytes used including
/// that quote; None when it is never closed. As in compose-go, a backslash keeps the next
/// character and hides it from the quote test; only `\<q>` loses its backslash here.
fn quoted(s: &str, q: char) -> Option<(String, usize)> {
    let mut out = String::new();
    let mut escape = false;
    for (i, c) in s.char_indices() {
        if c == q {
            if escape {
                escape = false;
                out.push(c);
                continue;
            }
            return Some((out, i + 1));
        }
        if !escape && c == '\\' {
            escape = true;
            continue;
        }
        if escape {
            escape = false;
            out.push('\\');
        }
        out.push(c);
    }
    None
}

/// compose-go's `expandEscapes` for double-quoted values: `\n`, `\t` and friends, `\\`,
/// `\"`, `\0ooo` octal, and `\$`, which becomes `$$` so the expansion keeps a literal `$`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = String::new();
    let mut i = 0;
    let mut lit = 0;
    while i < b.len() {
        if b[i] != b'\\' || i + 1 >= b.len() {
            i += 1;
            continue;
        }
        let rep: Option<(String, usize)> = match b[i + 1] {
            b'a' => Some(("\u{7}".into(), 2)),
            b'b' => Some(("\u{8}".into(), 2)),
            b'f' => Some(("\u{c}".into(), 2)),
            b'n' => Some(("\n".into(), 2)),
            b'r' => Some(("\r".into(), 2)),
            b't' => Some(("\t".into(), 2)),
            b'v' => Some(("\u{b}".into(), 2)),
            b'"' => Some(("\"".into(), 2)),
            b'\\' => Some(("\\".into(), 2)),
            b'$' => Some(("$$".into(), 2)),
            b'0' => {
                let digits = b[i + 2..]
                    .iter()
                    .take(3)
                    .take_while(|d| d.is_ascii_digit())
                    .count();
                let oct = &s[i + 2..i + 2 + digits];
                // Go unquotes `\ooo` only with exactly three octal digits up to 377;
                // anything else stays as written.
                let value = (digits == 3)
                    .then(|| u32::from_str_radix(oct, 8).ok())
                    .flatten()
                    .filter(|v| *v <= 0o377)
                    .and_then(char::from_u32);
                Some((
                    value.map_or_else(|| s[i..i + 2 + digits].to_string(), String::from),
                    2 + digits,
                ))
            }
            _ => None,
        };
        match rep {
            Some((r, len)) => {
                out.push_str(&s[lit..i]);
                out.push_str(&r);
                i += len;
                lit = i;
            }
            None => i += 1,
        }
    }
    out.push_str(&s[lit..]);
    out
}

fn name_len(s: &str) -> usize {
    let b = s.as_bytes();
    if b.first()
        .is_some_and(|c| c.is_ascii_alphabetic() || *c == b'_')
    {
        b.iter()
            .take_while(|c| c.is_ascii_alphanumeric() || **c == b'_')
            .count()
    } else {
        0
    }
}

/// compose-go's `template.Substitute` over what is set so far: `$$` is a literal `$`,
/// `$NAME` and `${NAME}` expand (to "" when unset), `${NAME:-x}` `${NAME-x}` `${NAME:+x}`
/// `${NAME+x}` `${NAME:?x}` `${NAME?x}` as in the shell, and a `$` before anything else
/// stays. Variables from compose's own process environment are not known here; the app's
/// are not expected there.
fn expand(s: &str, vars: &BTreeMap<String, String>, refs: &mut Refs) -> Result<String, Refusal> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(r) = after.strip_prefix('$') {
            out.push('$');
            rest = r;
            continue;
        }
        let n = name_len(after);
        if n > 0 {
            match vars.get(&after[..n]) {
                Some(v) => {
                    refs.resolved = true;
                    out.push_str(v);
                }
                None => refs.unset = true,
            }
            rest = &after[n..];
            continue;
        }
        let Some(inner) = after.strip_prefix('{') else {
            out.push('$');
            rest = after;
            continue;
        };
        let close = closing_brace(inner).ok_or(Refusal::Invalid)?;
        let body = &inner[..close];
        rest = &inner[close + 1..];
        let n = name_len(body);
        if n == 0 {
            return Err(Refusal::Invalid);
        }
        let (name, op) = body.split_at(n);
        let value = vars.get(name);
        let set_nonempty = |colon: bool| value.is_some_and(|v| !colon || !v.is_empty());
        if op.is_empty() {
            match value {
                Some(v) => {
                    refs.resolved = true;
                    out.push_str(v);
                }
                None => refs.unset = true,
            }
            continue;
        }
        let colon = op.starts_with(':');
        let op = op.strip_prefix(':').unwrap_or(op);
        let (kind, arg) = match op.chars().next() {
            Some(k @ ('-' | '+' | '?')) => (k, &op[1..]),
            _ => return Err(Refusal::Invalid),
        };
        refs.resolved = true;
        match kind {
            '-' if set_nonempty(colon) => out.push_str(value.map_or("", String::as_str)),
            '-' => out.push_str(&expand(arg, vars, refs)?),
            '+' if set_nonempty(colon) => out.push_str(&expand(arg, vars, refs)?),
            '+' => out.push_str(value.map_or("", String::as_str)),
            _ if set_nonempty(colon) => out.push_str(value.map_or("", String::as_str)),
            _ => return Err(Refusal::Required),
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// The `}` that closes a `${`, counting nested `${...}` in a default.
fn closing_brace(s: &str) -> Option<usize> {
    let mut depth = 1;
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_start_after_blank_and_comment_lines() {
        assert_eq!(next_statement("\n  # c\n\tA=1", 0), Some(8));
        assert_eq!(next_statement("# only a comment", 0), None);
        assert_eq!(next_statement("A=1\n\n", 3), None);
    }

    #[test]
    fn keys_end_at_their_separator() {
        let key = |s| read_key(s, "line 1");
        assert_eq!(key("A=1"), Ok(Statement::Assign("A", "1")));
        assert_eq!(key("export  B.x : 2"), Ok(Statement::Assign("B.x", " 2")));
        assert_eq!(key("C\nD=1"), Ok(Statement::Inherit("D=1")));
        assert_eq!(key("E"), Ok(Statement::End));
        let e = key("F G=1").unwrap_err();
        assert!(e.starts_with("line 1: a variable name with a space"), "{e}");
        let e = key("s3cr€t$=1").unwrap_err();
        assert!(e.starts_with("line 1: a character"), "{e}");
        assert!(!e.contains("s3cr"), "{e}");
    }

    #[test]
    fn values_as_written_and_the_bytes_they_take() {
        let value = |s| read_value(s, "line 1").map(|(v, _, used)| (v, used));
        assert_eq!(value("plain # note\nB=2"), Ok(("plain".into(), 12)));
        assert_eq!(value("'a b'\n"), Ok(("a b".into(), 5)));
        assert_eq!(value("\"x\\\"y\" tail"), Ok(("x\"y".into(), 6)));
        assert!(
            read_value("'open", "line 1")
                .unwrap_err()
                .contains("single quote")
        );
    }
}
