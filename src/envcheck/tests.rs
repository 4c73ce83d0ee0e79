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
        let default = ["postgres", "guest", "admin", "true", "false", "<unset>"].contains(&value);
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

fn fails_for<'a>(f: &'a [Finding], key: &str) -> Vec<&'a Finding> {
    f.iter()
        .filter(|x| x.severity == Severity::Fail && x.key == key)
        .collect()
}

#[test]
fn a_dollar_in_unquoted_or_double_quoted_values_is_flagged_without_the_value() {
    for (line, kind) in [
        ("ADMIN_PASSWORD=x$Kq9vTT2mmQQ7", "unquoted"),
        ("ADMIN_PASSWORD=\"x$Kq9vTT2mmQQ7\"", "double-quoted"),
        ("ADMIN_PASSWORD=x${Kq9vTT2mmQQ7}", "unquoted"),
    ] {
        let env = parse(&format!("{GOOD}{line}\n"));
        // What compose hands the app: the unset variable expands to nothing.
        assert_eq!(env["ADMIN_PASSWORD"], "x", "{line}");
        let f = check(&env);
        let dollar: Vec<&Finding> = fails_for(&f, "ADMIN_PASSWORD")
            .into_iter()
            .filter(|x| x.problem.contains("$$"))
            .collect();
        assert_eq!(dollar.len(), 1, "{line}: {f:?}");
        let p = &dollar[0].problem;
        assert!(
            p.contains(kind) && p.contains("single-quote the value ('...')"),
            "{p}"
        );
        let lines = GOOD.lines().count() + 1;
        assert!(p.starts_with(&format!("line {lines}:")), "{p}");
        assert!(!render(&f).contains("Kq9"), "{line}: value shown");
    }
}

#[test]
fn single_quoted_and_escaped_dollars_are_literal_and_not_flagged() {
    for (line, value) in [
        ("ADMIN_PASSWORD='x$Kq9vTT2mmQQ7'", "x$Kq9vTT2mmQQ7"),
        ("ADMIN_PASSWORD=x$$Kq9vTT2mmQQ7", "x$Kq9vTT2mmQQ7"),
        ("ADMIN_PASSWORD=\"x$$Kq9vTT2mmQQ7\"", "x$Kq9vTT2mmQQ7"),
        ("ADMIN_PASSWORD=\"x\\$Kq9vTT2mmQQ7\"", "x$Kq9vTT2mmQQ7"),
        // `$` before anything but a name or `{` is not a reference.
        ("ADMIN_PASSWORD=x$9$-$ 12345678", "x$9$-$ 12345678"),
        ("ADMIN_PASSWORD=correct-horse$", "correct-horse$"),
    ] {
        let env = parse(&format!("{GOOD}{line}\n"));
        assert_eq!(env["ADMIN_PASSWORD"], value, "{line}");
        assert_eq!(check(&env), vec![], "{line}");
    }
}

#[test]
fn references_compose_resolves_warn_and_ones_it_refuses_fail() {
    let env = parse(&format!(
        "{GOOD}APP_USER=sapari\nGREETING=hello-$APP_USER\nOTHER=${{NOPE:-fallback}}\n"
    ));
    assert_eq!(env["GREETING"], "hello-sapari");
    assert_eq!(env["OTHER"], "fallback");
    let f = check(&env);
    let warned: Vec<&str> = f
        .iter()
        .filter(|x| x.severity == Severity::Warn)
        .map(|x| x.key.as_str())
        .collect();
    assert_eq!(warned, ["GREETING", "OTHER"], "{f:?}");
    assert!(f.iter().all(|x| x.severity == Severity::Warn), "{f:?}");
    for line in [
        "X=a${1abc}",
        "X=a${NOPE",
        "X=${NOPE:?must be set}",
        "X=${NOPE%%}",
    ] {
        let f = check(&parse(&format!("{GOOD}{line}\n")));
        let x = fails_for(&f, "X");
        assert_eq!(x.len(), 1, "{line}: {f:?}");
        assert!(
            x[0].problem.contains("refuses the whole file"),
            "{line}: {x:?}"
        );
    }
}

#[test]
fn a_dollar_only_counts_where_its_line_is_the_one_compose_keeps() {
    let env = parse_files(&[
        (".env", &format!("{GOOD}ADMIN_PASSWORD=x$Kq9vTT2mmQQ7\n")),
        ("compose.env", "ADMIN_PASSWORD='correct-horse-battery'\n"),
    ]);
    assert_eq!(env["ADMIN_PASSWORD"], "correct-horse-battery");
    assert_eq!(check(&env), vec![]);
    // And the other way round: the flagged line is the later file's, and says which.
    let env = parse_files(&[
        (".env", GOOD),
        ("extra.env", "\nADMIN_PASSWORD=\"x$Kq9vTT2mmQQ7\"\n"),
    ]);
    let f = check(&env);
    let x = fails_for(&f, "ADMIN_PASSWORD");
    assert!(
        x.iter().any(|x| x.problem.starts_with("extra.env line 2:")),
        "{f:?}"
    );
}

#[test]
fn the_later_file_wins_and_is_checked() {
    let env = parse_files(&[(".env", GOOD), ("compose.env", "DEBUG='true'\n")]);
    assert_eq!(env["DEBUG"], "true");
    let f = check(&env);
    assert_eq!(fails_for(&f, "DEBUG").len(), 1, "{f:?}");
    let env = parse_files(&[
        (
            ".env",
            &GOOD.replace("ADMIN_USERNAME=vitoria", "ADMIN_USERNAME=admin"),
        ),
        ("compose.env", "ADMIN_USERNAME='vitoria'\n"),
    ]);
    assert_eq!(check(&env), vec![]);
    // A later file may refer to what an earlier one set, as compose's single map allows.
    let env = parse_files(&[("a.env", "U=sapari\n"), ("b.env", "V=${U}-x\n")]);
    assert_eq!(env["V"], "sapari-x");
}

#[test]
fn syntax_compose_refuses_is_a_failure_without_the_text() {
    let f = check(&parse(&format!("{GOOD}sk_live_4f$x!\n")));
    let bad: Vec<&Finding> = f
        .iter()
        .filter(|x| x.problem.contains("variable name"))
        .collect();
    assert_eq!(bad.len(), 1, "{f:?}");
    assert_eq!(bad[0].severity, Severity::Fail);
    assert!(!render(&f).contains("sk_live_4f"), "{f:?}");
    let f = check(&parse(&format!("{GOOD}X=\"open\nY=1\n")));
    assert!(
        fails_for(&f, "X")
            .iter()
            .any(|x| x.problem.contains("never closed")),
        "{f:?}"
    );
    let f = check(&parse(&format!("{GOOD}A B=1\n")));
    assert!(f.iter().any(|x| x.problem.contains("space")), "{f:?}");
}

#[test]
fn values_are_read_as_compose_go_reads_them() {
    let e = parse(concat!(
        "A=\"multi\nline\"\n",
        "B=\"tab\\tq\\\"x\\\\y\\n\"\n",
        "C='it\\'s \\n'\n",
        "D: yaml style\n",
        "E=\"x\" # comment after quotes\n",
        "F=a#b\n",
        "G = spaced   \n",
        "H=\"\\0101\"\n",
    ));
    assert_eq!(e["A"], "multi\nline");
    assert_eq!(e["B"], "tab\tq\"x\\y\n");
    assert_eq!(e["C"], "it's \\n");
    assert_eq!(e["D"], "yaml style");
    assert_eq!(e["E"], "x");
    assert_eq!(e["F"], "a#b");
    assert_eq!(e["G"], "spaced");
    assert_eq!(e["H"], "A");
    assert!(e.findings.is_empty(), "{:?}", e.findings);
    let e = parse("\u{feff}I=1\n");
    assert_eq!(e["I"], "1");
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
