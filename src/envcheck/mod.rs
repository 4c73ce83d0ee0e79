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

mod dotenv;

pub use dotenv::{parse, parse_files};

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
    let vars = &env.vars;
    let production = vars
        .get("ENVIRONMENT")
        .is_some_and(|e| e.eq_ignore_ascii_case("production"));
    let mut fail = |key: &str, problem: &str| push(&mut f, Severity::Fail, key, problem);
    check_secrets(vars, production, &mut fail);
    check_database_url(vars, &mut fail);
    check_urls(vars, &mut fail);
    let mut warn = |key: &str, problem: &str| push(&mut f, Severity::Warn, key, problem);
    check_warnings(vars, production, &mut warn);
    f.sort_by(|a, b| b.severity.cmp(&a.severity).then(a.key.cmp(&b.key)));
    f
}

fn push(f: &mut Vec<Finding>, severity: Severity, key: &str, problem: &str) {
    f.push(Finding {
        severity,
        key: key.into(),
        problem: problem.into(),
    })
}

/// Secrets, accounts and switches that must not keep their development values.
fn check_secrets(
    env: &BTreeMap<String, String>,
    production: bool,
    fail: &mut impl FnMut(&str, &str),
) {
    let get = |k: &str| env.get(k).map(String::as_str);
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
}

/// `DATABASE_URL` as asyncpg needs it.
fn check_database_url(env: &BTreeMap<String, String>, fail: &mut impl FnMut(&str, &str)) {
    let get = |k: &str| env.get(k).map(String::as_str);
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
}

/// The public URLs and the origins they must agree on, and the media token shared with the
/// Worker.
fn check_urls(env: &BTreeMap<String, String>, fail: &mut impl FnMut(&str, &str)) {
    let get = |k: &str| env.get(k).map(String::as_str);
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
}

/// Settings that are allowed but worth a look.
fn check_warnings(
    env: &BTreeMap<String, String>,
    production: bool,
    warn: &mut impl FnMut(&str, &str),
) {
    let get = |k: &str| env.get(k).map(String::as_str);
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
