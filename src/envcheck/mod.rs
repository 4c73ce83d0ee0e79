//! The runbook's production security validator for the operator's `.env`, run before every
//! `compose up` and by `sapari-agent env-check`. Every problem is listed at once, by key
//! name only: values are secrets and never appear in a finding.
//!
//! Values are checked as docker compose v2 delivers them, not as they are written: its
//! env-file reader (compose-go's `dotenv`) expands `$NAME` and `${NAME}` in unquoted and
//! double-quoted values, so a generated `ADMIN_PASSWORD=x$Kq9...` reaches the app as `x`.
//! The Python docker-compose 1.x reads `.env` files with other rules; the agent targets v2,
//! and so does this reader.

use std::collections::BTreeMap;
use std::ops::{Deref, DerefMut};

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warn,
    Fail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub severity: Severity,
    pub key: String,
    pub problem: String,
}

/// The variables compose ends up with, and what reading the file(s) found wrong: the
/// latter can only be seen in the text (a `$` that was expanded is gone from the value).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Env {
    pub vars: BTreeMap<String, String>,
    pub findings: Vec<Finding>,
}

impl Deref for Env {
    type Target = BTreeMap<String, String>;
    fn deref(&self) -> &Self::Target {
        &self.vars
    }
}

impl DerefMut for Env {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.vars
    }
}

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

#[derive(Clone, Copy, PartialEq)]
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
        // The start of the next statement: blank lines and `#` comment lines are skipped.
        let Some(off) = text[pos..].find(|c: char| !c.is_whitespace()) else {
            return;
        };
        pos += off;
        if text[pos..].starts_with('#') {
            match text[pos..].find('\n') {
                Some(i) => {
                    pos += i;
                    continue;
                }
                None => return,
            }
        }
        let here = at(pos);
        let mut s = &text[pos..];
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
                    fail(
                        env,
                        &here,
                        format!(
                            "{here}: a character docker compose does not allow in a variable name (letters, digits, `_.-[]`); compose refuses the whole file: write KEY=value"
                        ),
                    );
                    return;
                }
            }
        }
        let Some((i, sep)) = end else {
            // A last line without `=` or newline: nothing compose would assign.
            return;
        };
        let key = s[..i].trim_end_matches(char::is_whitespace);
        if key.contains(' ') {
            fail(
                env,
                &here,
                format!(
                    "{here}: a variable name with a space in it; compose refuses the whole file: write KEY=value"
                ),
            );
            return;
        }
        let rest = &s[i + 1..];
        pos = text.len() - rest.len();
        if sep == '\n' {
            // Inherited from compose's own environment, which is not the app's to set here.
            continue;
        }
        let rest_trimmed = rest.trim_start_matches(blank);
        pos = text.len() - rest_trimmed.len();
        let (raw, quoting, next) = match rest_trimmed.chars().next() {
            Some(q @ ('"' | '\'')) => match quoted(&rest_trimmed[1..], q) {
                Some((v, used)) => (
                    v,
                    if q == '"' {
                        Quoting::Double
                    } else {
                        Quoting::Single
                    },
                    pos + 1 + used,
                ),
                None => {
                    fail(
                        env,
                        key,
                        format!(
                            "{here}: the {} quote that opens the value is never closed; compose refuses the whole file: add the closing quote",
                            if q == '"' { "double" } else { "single" }
                        ),
                    );
                    return;
                }
            },
            _ => {
                let line = rest_trimmed.split('\n').next().unwrap_or("");
                let next = pos + line.len();
                let v = line.split(" #").next().unwrap_or("").trim_end();
                (v.to_string(), Quoting::None, next)
            }
        };
        pos = next;
        let value = match quoting {
            Quoting::Single => raw,
            Quoting::None | Quoting::Double => {
                let raw = if quoting == Quoting::Double {
                    unescape(&raw)
                } else {
                    raw
                };
                let kind = if quoting == Quoting::Double {
                    "a double-quoted"
                } else {
                    "an unquoted"
                };
                let mut refs = Refs::default();
                match expand(&raw, &env.vars, &mut refs) {
                    Ok(v) => {
                        if refs.unset {
                            reading.expanded.push((
                                key.to_string(),
                                reading.count,
                                Finding {
                                    severity: Severity::Fail,
                                    key: key.to_string(),
                                    problem: format!(
                                        "{here}: `$` in {kind} value: docker compose v2 replaces `$NAME` there by a variable no earlier line or env file sets (so by nothing, or by whatever compose's own environment holds) and the app gets a different value; single-quote the value ('...') or write $$ for each literal $"
                                    ),
                                },
                            ));
                        } else if refs.resolved {
                            reading.expanded.push((
                                key.to_string(),
                                reading.count,
                                Finding {
                                    severity: Severity::Warn,
                                    key: key.to_string(),
                                    problem: format!(
                                        "{here}: `$` in {kind} value: docker compose v2 substitutes variables there; if the $ is meant literally, single-quote the value ('...') or write $$"
                                    ),
                                },
                            ));
                        }
                        v
                    }
                    Err(r) => {
                        fail(
                            env,
                            key,
                            match r {
                                Refusal::Invalid => format!(
                                    "{here}: `${{` in {kind} value that is not a ${{NAME}} reference; docker compose v2 refuses the whole file: single-quote the value ('...') or write $$ for each literal $"
                                ),
                                Refusal::Required => format!(
                                    "{here}: a required ${{NAME?...}} reference to a variable that is not set; docker compose v2 refuses the whole file: set the variable earlier, or single-quote the value ('...')"
                                ),
                            },
                        );
                        return;
                    }
                }
            }
        };
        reading.last.insert(key.to_string(), reading.count);
        reading.count += 1;
        env.vars.insert(key.to_string(), value);
    }
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

fn truthy(v: &str) -> bool {
    matches!(
        v.trim().to_ascii_lowercase().as_str(),
        "1" | "true" | "yes" | "on"
    )
}

/// `scheme://host[:port]` of a URL, lowercased, or None if it is not an absolute URL.
fn origin(url: &str) -> Option<String> {
    let (scheme, rest) = url.trim().split_once("://")?;
    let host = rest.split(['/', '?', '#']).next()?;
    (!host.is_empty()).then(|| {
        format!(
            "{}://{}",
            scheme.to_ascii_lowercase(),
            host.to_ascii_lowercase()
        )
    })
}

/// Everything after the origin (path, query), or "" for a bare origin.
fn after_origin(url: &str) -> &str {
    let rest = url.trim().split_once("://").map_or("", |(_, r)| r);
    rest.find(['/', '?', '#']).map_or("", |i| &rest[i..])
}

pub fn check(env: &Env) -> Vec<Finding> {
    let mut f = env.findings.clone();
    let env = &env.vars;
    let get = |k: &str| env.get(k).map(String::as_str);
    let mut fail = |key: &str, problem: &str| {
        f.push(Finding {
            severity: Severity::Fail,
            key: key.into(),
            problem: problem.into(),
        })
    };
    let production = get("ENVIRONMENT").is_some_and(|e| e.eq_ignore_ascii_case("production"));

    if get("SECRET_KEY").is_none_or(|v| v.chars().count() < 32) {
        fail(
            "SECRET_KEY",
            "missing or shorter than 32 characters (python -c \"import secrets; print(secrets.token_urlsafe(64))\")",
        );
    }
    if get("POSTGRES_PASSWORD") == Some("postgres") {
        fail("POSTGRES_PASSWORD", "is the default `postgres`");
    }
    if get("CREATE_TABLES_ON_STARTUP").is_none_or(|v| !v.eq_ignore_ascii_case("false")) {
        fail(
            "CREATE_TABLES_ON_STARTUP",
            "must be false in production (migrations own the schema)",
        );
    }
    if production && get("DEBUG").is_some_and(truthy) {
        fail("DEBUG", "is true with ENVIRONMENT=production");
    }
    if get("STRIPE_TEST_MODE").is_some_and(|v| v.eq_ignore_ascii_case("false")) {
        for (k, v) in env {
            if k.starts_with("STRIPE_") && (v.starts_with("sk_test_") || v.starts_with("pk_test_"))
            {
                fail(
                    k,
                    "holds a test-mode key while STRIPE_TEST_MODE=false (use the live sk_live_/pk_live_ keys)",
                );
            }
        }
    }
    if get("SESSION_SECURE_COOKIES").is_none_or(|v| !truthy(v)) {
        fail(
            "SESSION_SECURE_COOKIES",
            "must be true (cookies only over HTTPS)",
        );
    }
    if get("ADMIN_USERNAME").is_some_and(|v| v.eq_ignore_ascii_case("admin")) {
        fail("ADMIN_USERNAME", "must not be `admin`");
    }
    if get("ADMIN_PASSWORD").is_none_or(|v| v.chars().count() < 12) {
        fail("ADMIN_PASSWORD", "missing or shorter than 12 characters");
    }
    for k in [
        "TASKIQ_RABBITMQ_USER",
        "TASKIQ_RABBITMQ_PASSWORD",
        "RABBITMQ_DEFAULT_USER",
        "RABBITMQ_DEFAULT_PASS",
    ] {
        if get(k).is_some_and(|v| v == "guest") {
            fail(
                k,
                "is RabbitMQ's default `guest` (generate one with openssl rand -hex 32)",
            );
        }
    }
    match get("DATABASE_URL") {
        None => fail("DATABASE_URL", "missing"),
        Some(url) => {
            if !url.starts_with("postgresql+asyncpg://") {
                fail(
                    "DATABASE_URL",
                    "must start with postgresql+asyncpg:// (the app uses asyncpg)",
                );
            }
            if url.contains("sslmode=") {
                fail(
                    "DATABASE_URL",
                    "uses sslmode= (psycopg2 syntax); asyncpg needs ?ssl=require",
                );
            } else if !url.contains("ssl=require") {
                fail("DATABASE_URL", "lacks ?ssl=require");
            }
            if url.contains("channel_binding") {
                fail(
                    "DATABASE_URL",
                    "carries channel_binding (copied from Neon's UI); drop it, asyncpg negotiates SCRAM itself",
                );
            }
        }
    }
    if let Some(u) = get("OAUTH_REDIRECT_BASE_URL") {
        if origin(u).is_none() {
            fail("OAUTH_REDIRECT_BASE_URL", "is not an absolute URL");
        } else if !after_origin(u).is_empty() {
            fail(
                "OAUTH_REDIRECT_BASE_URL",
                "must be the bare origin: no path and no trailing slash (the app appends /api/v1/auth/oauth/callback/<provider>)",
            );
        }
    }
    if let Some(u) = get("MEDIA_PROXY_BASE_URL") {
        if u.ends_with('/') {
            fail("MEDIA_PROXY_BASE_URL", "has a trailing slash");
        }
        let front = get("FRONTEND_URL").and_then(origin);
        if front.is_none() || origin(u) != front {
            fail(
                "MEDIA_PROXY_BASE_URL",
                "must be the frontend origin (FRONTEND_URL), where the Worker route lives, not the API domain",
            );
        }
    }
    if let Some(landing) = get("LANDING_URL").and_then(origin) {
        let listed = get("CORS_ORIGINS")
            .is_some_and(|c| c.split(',').filter_map(origin).any(|o| o == landing));
        if !listed {
            fail(
                "CORS_ORIGINS",
                "does not include the landing origin (LANDING_URL): the newsletter signup POST would be CORS-blocked",
            );
        }
    }
    if get("MEDIA_TOKEN_SECRET").is_none_or(|v| v.chars().count() < 32) {
        fail(
            "MEDIA_TOKEN_SECRET",
            "missing or shorter than 32 characters (openssl rand -base64 32; must match the Worker's secret byte for byte)",
        );
    }

    let mut warn = |key: &str, problem: &str| {
        f.push(Finding {
            severity: Severity::Warn,
            key: key.into(),
            problem: problem.into(),
        })
    };
    for k in [
        "CACHE_REDIS_PASSWORD",
        "RATE_LIMITER_REDIS_PASSWORD",
        "SESSION_REDIS_PASSWORD",
    ] {
        let backend = k.trim_end_matches("_REDIS_PASSWORD");
        let uses_redis =
            get(&format!("{backend}_BACKEND")).is_some_and(|b| b.eq_ignore_ascii_case("redis"));
        if uses_redis && get(k).is_none_or(str::is_empty) {
            warn(k, "Redis without a password");
        }
    }
    if get("CORS_ORIGINS").is_some_and(|c| c.split(',').any(|o| o.trim() == "*")) {
        warn("CORS_ORIGINS", "allows any origin (*)");
    }
    if production && get("ENABLE_DOCS_IN_PRODUCTION").is_some_and(truthy) {
        warn(
            "ENABLE_DOCS_IN_PRODUCTION",
            "API docs are served in production",
        );
    }
    if get("SESSION_TIMEOUT_MINUTES")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .is_some_and(|m| m > 120)
    {
        warn(
            "SESSION_TIMEOUT_MINUTES",
            "sessions last more than 120 minutes",
        );
    }
    f.sort_by(|a, b| b.severity.cmp(&a.severity).then(a.key.cmp(&b.key)));
    f
}

/// Human lines: `FAIL KEY: problem`.
pub fn render(findings: &[Finding]) -> String {
    findings
        .iter()
        .map(|f| {
            format!(
                "{} {}: {}\n",
                if f.severity == Severity::Fail {
                    "FAIL"
                } else {
                    "WARN"
                },
                f.key,
                f.problem
            )
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests;
