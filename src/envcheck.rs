//! The runbook's production security validator for the operator's `.env`, run before every
//! `compose up` and by `sapari-agent env-check`. Every problem is listed at once, by key
//! name only: values are secrets and never appear in a finding.

use std::collections::BTreeMap;

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

/// Parse a dotenv file the way docker compose reads it: `KEY=value`, optional `export `,
/// single or double quotes, `#` comments on their own line or after an unquoted value.
pub fn parse(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let t = t.strip_prefix("export ").unwrap_or(t);
        let Some((k, v)) = t.split_once('=') else {
            continue;
        };
        let v = v.trim();
        let v = if let Some(q) = v
            .strip_prefix('"')
            .and_then(|r| r.rfind('"').map(|i| &r[..i]))
        {
            q.to_string()
        } else if let Some(q) = v
            .strip_prefix('\'')
            .and_then(|r| r.rfind('\'').map(|i| &r[..i]))
        {
            q.to_string()
        } else {
            match v.find(" #") {
                Some(i) => v[..i].trim_end().to_string(),
                None => v.to_string(),
            }
        };
        out.insert(k.trim().to_string(), v);
    }
    out
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

pub fn check(env: &BTreeMap<String, String>) -> Vec<Finding> {
    let mut f = Vec::new();
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
pub(crate) mod tests {
    use super::*;

    /// The runbook's production template with real-looking values.
    pub const GOOD: &str = r#"
ENVIRONMENT=production
DEBUG=false
SECRET_KEY=Zq3v9JxM2pL8sT4wY7aB1cD5eF6gH0iKlMnOpQrStUv
FRONTEND_URL=https://app.sapari.io
LANDING_URL=https://sapari.io
DATABASE_URL=postgresql+asyncpg://sapari:pw-Xy12@ep-cool-1.eu-central-1.aws.neon.tech/sapari?ssl=require
CREATE_TABLES_ON_STARTUP=false
CACHE_BACKEND=redis
CACHE_REDIS_PASSWORD=r3dis-pass
SESSION_BACKEND=redis
SESSION_REDIS_PASSWORD=r3dis-pass
SESSION_SECURE_COOKIES=true
SESSION_TIMEOUT_MINUTES=120
TASKIQ_RABBITMQ_USER=sapari
TASKIQ_RABBITMQ_PASSWORD=0123456789abcdef0123456789abcdef
MEDIA_TOKEN_SECRET="q8N1w5E3r7T9y2U4i6O0p1A3s5D7f9G2h4J6k8L0"
MEDIA_PROXY_BASE_URL=https://app.sapari.io
CORS_ORIGINS=https://app.sapari.io,https://sapari.io
OAUTH_REDIRECT_BASE_URL=https://app.sapari.io
STRIPE_SECRET_KEY=sk_live_abc
STRIPE_PUBLISHABLE_KEY=pk_live_abc
STRIPE_TEST_MODE=false
ADMIN_USERNAME=vitoria
ADMIN_PASSWORD=correct-horse-battery # 12+ chars
ENABLE_DOCS_IN_PRODUCTION=false
"#;

    fn with(line: &str) -> Vec<Finding> {
        let mut env = parse(GOOD);
        let (k, v) = line.split_once('=').unwrap();
        if v == "<unset>" {
            env.remove(k);
        } else {
            env.insert(k.into(), v.into());
        }
        check(&env)
    }

    #[test]
    fn clean_production_env_passes() {
        assert_eq!(check(&parse(GOOD)), vec![]);
    }

    #[test]
    fn each_hard_failure_is_caught_by_key_without_its_value() {
        for (line, key) in [
            ("SECRET_KEY=short-secret", "SECRET_KEY"),
            ("POSTGRES_PASSWORD=postgres", "POSTGRES_PASSWORD"),
            ("CREATE_TABLES_ON_STARTUP=true", "CREATE_TABLES_ON_STARTUP"),
            ("DEBUG=true", "DEBUG"),
            ("STRIPE_SECRET_KEY=sk_test_123", "STRIPE_SECRET_KEY"),
            (
                "STRIPE_PUBLISHABLE_KEY=pk_test_123",
                "STRIPE_PUBLISHABLE_KEY",
            ),
            ("SESSION_SECURE_COOKIES=false", "SESSION_SECURE_COOKIES"),
            ("ADMIN_USERNAME=admin", "ADMIN_USERNAME"),
            ("ADMIN_PASSWORD=short-pw", "ADMIN_PASSWORD"),
            ("TASKIQ_RABBITMQ_USER=guest", "TASKIQ_RABBITMQ_USER"),
            ("TASKIQ_RABBITMQ_PASSWORD=guest", "TASKIQ_RABBITMQ_PASSWORD"),
            (
                "DATABASE_URL=postgresql://u:p@h/db?ssl=require",
                "DATABASE_URL",
            ),
            (
                "DATABASE_URL=postgresql+asyncpg://u:p@h/db?sslmode=require",
                "DATABASE_URL",
            ),
            (
                "DATABASE_URL=postgresql+asyncpg://u:p@h/db?ssl=require&channel_binding=require",
                "DATABASE_URL",
            ),
            (
                "OAUTH_REDIRECT_BASE_URL=https://app.sapari.io/",
                "OAUTH_REDIRECT_BASE_URL",
            ),
            (
                "OAUTH_REDIRECT_BASE_URL=https://app.sapari.io/api/v1",
                "OAUTH_REDIRECT_BASE_URL",
            ),
            (
                "MEDIA_PROXY_BASE_URL=https://app.sapari.io/",
                "MEDIA_PROXY_BASE_URL",
            ),
            (
                "MEDIA_PROXY_BASE_URL=https://api.sapari.io",
                "MEDIA_PROXY_BASE_URL",
            ),
            ("CORS_ORIGINS=https://app.sapari.io", "CORS_ORIGINS"),
            ("MEDIA_TOKEN_SECRET=<unset>", "MEDIA_TOKEN_SECRET"),
            ("MEDIA_TOKEN_SECRET=tooshort", "MEDIA_TOKEN_SECRET"),
        ] {
            let f = with(line);
            let fails: Vec<&Finding> = f.iter().filter(|x| x.severity == Severity::Fail).collect();
            assert_eq!(fails.len(), 1, "{line}: {f:?}");
            assert_eq!(fails[0].key, key, "{line}");
            // Well-known defaults may be named; anything else is a secret and must not be.
            let value = line.split_once('=').unwrap().1;
            let default =
                ["postgres", "guest", "admin", "true", "false", "<unset>"].contains(&value);
            assert!(
                default || !render(&f).contains(value),
                "{line}: value shown"
            );
        }
    }

    #[test]
    fn warnings() {
        for (line, key) in [
            ("CACHE_REDIS_PASSWORD=", "CACHE_REDIS_PASSWORD"),
            ("CORS_ORIGINS=*,https://sapari.io", "CORS_ORIGINS"),
            (
                "ENABLE_DOCS_IN_PRODUCTION=true",
                "ENABLE_DOCS_IN_PRODUCTION",
            ),
            ("SESSION_TIMEOUT_MINUTES=480", "SESSION_TIMEOUT_MINUTES"),
        ] {
            let f = with(line);
            assert_eq!(f.len(), 1, "{line}: {f:?}");
            assert_eq!((f[0].severity, f[0].key.as_str()), (Severity::Warn, key));
        }
    }

    #[test]
    fn all_problems_are_listed_at_once() {
        let f = check(&parse("ENVIRONMENT=production\nDEBUG=true\n"));
        assert!(
            f.iter().filter(|x| x.severity == Severity::Fail).count() >= 7,
            "{f:?}"
        );
    }

    #[test]
    fn dotenv_parsing() {
        let e = parse("export A=1\nB=\"two # not a comment\"\nC='3'\nD=4 # comment\n# E=5\nF=\n");
        assert_eq!(e["A"], "1");
        assert_eq!(e["B"], "two # not a comment");
        assert_eq!(e["C"], "3");
        assert_eq!(e["D"], "4");
        assert!(!e.contains_key("E"));
        assert_eq!(e["F"], "");
    }
}
