use super::*;

const COMPOSE: &str = "services:\n  web:\n    mem_limit: ${WEB_MEMORY:-4g}\n  caddy:\n    mem_limit: ${CADDY_MEMORY:-128m}\n";

fn env() -> String {
    crate::envcheck::tests::GOOD.to_string()
}

fn res(profile: ProfileChoice) -> Compose {
    Compose::new(
        &ComposeSettings {
            profile,
            ..ComposeSettings::default()
        },
        &AgentSettings::default(),
    )
}

fn state() -> State {
    State {
        project: true,
        compose_text: Some(COMPOSE.into()),
        env_text: Some(env()),
        caddyfile_sha256: Some("aa".into()),
        agent_env: None,
        saved: None,
        flavor: Some(Flavor::V2),
        services: ["web", "caddy"].iter().map(|s| s.to_string()).collect(),
        running: BTreeSet::new(),
        box_cpus: 16,
        box_memory: 32 << 30,
        health: vec![],
    }
}

fn converged(r: &Compose) -> State {
    let mut s = state();
    let (env, _) = r.resolve(&s);
    s.saved = Some(Saved {
        hash: r.hash(&s, &env),
        caddyfile_sha256: Some("aa".into()),
    });
    s.agent_env = Some(env);
    s.running = s.services.clone();
    s
}

#[test]
fn first_run_writes_env_and_ups() {
    let r = res(ProfileChoice::Cpx62);
    let p = r.plan(&state()).unwrap();
    assert!(matches!(&p.steps[0], Step::WriteEnv { new, .. } if new.contains("WEB_MEMORY=6g\n")));
    assert!(matches!(&p.steps[1], Step::Up { .. }));
    assert!(
        p.notes[0].contains("profile cpx62") && p.notes[0].contains("total"),
        "{:?}",
        p.notes
    );
}

#[test]
fn converged_plans_nothing_and_caddyfile_change_recreates_caddy_only() {
    let r = res(ProfileChoice::Cpx62);
    let mut s = converged(&r);
    assert!(r.plan(&s).unwrap().steps.is_empty());
    s.caddyfile_sha256 = Some("bb".into());
    assert_eq!(r.plan(&s).unwrap().steps, vec![Step::RecreateCaddy]);
}

#[test]
fn stopped_service_or_changed_env_brings_the_stack_up() {
    let r = res(ProfileChoice::Cpx62);
    let mut s = converged(&r);
    s.running.remove("web");
    assert!(matches!(&r.plan(&s).unwrap().steps[..], [Step::Up { why }] if why.contains("web")));
    let mut s = converged(&r);
    s.env_text = Some(format!("{}EXTRA=1\n", s.env_text.unwrap()));
    assert!(
        matches!(&r.plan(&s).unwrap().steps[..], [Step::Up { why }] if why.contains("changed"))
    );
}

#[test]
fn overcommitted_memory_fails_before_anything() {
    let mut cfg = ComposeSettings {
        profile: ProfileChoice::Cpx62,
        ..ComposeSettings::default()
    };
    cfg.overrides.insert("WEB_MEMORY".into(), "64g".into());
    let r = Compose::new(&cfg, &AgentSettings::default());
    let e = r.plan(&state()).unwrap_err().to_string();
    assert!(e.contains("no container was changed"), "{e}");
}

#[test]
fn a_cpu_limit_above_the_box_fails_before_anything() {
    let r = res(ProfileChoice::Cpx62);
    let mut s = state();
    s.box_cpus = 2;
    let e = r.plan(&s).unwrap_err().to_string();
    assert!(
        e.contains("web 4.00") && e.contains("no container was changed"),
        "{e}"
    );
}

#[test]
fn failing_env_blocks_up_and_names_keys_only() {
    let r = res(ProfileChoice::Staging);
    let mut s = state();
    s.env_text = Some(env().replace("ADMIN_USERNAME=vitoria", "ADMIN_USERNAME=admin"));
    let e = r.plan(&s).unwrap_err().to_string();
    assert!(
        e.contains("ADMIN_USERNAME") && e.contains("not started"),
        "{e}"
    );
}

fn with_overrides(pairs: &[(&str, &str)]) -> Compose {
    let mut cfg = ComposeSettings {
        profile: ProfileChoice::Staging,
        ..ComposeSettings::default()
    };
    for (k, v) in pairs {
        cfg.overrides.insert(k.to_string(), v.to_string());
    }
    Compose::new(&cfg, &AgentSettings::default())
}

#[test]
fn overrides_are_written_single_quoted_so_compose_keeps_them_literally() {
    let odd = [
        ("APP_BANNER", "a$HOME #b"),
        ("APP_QUOTED", "\"x\""),
        ("APP_SLASH", "a\\nb"),
        ("APP_EMPTY", ""),
        ("APP_SPACE", " lead"),
    ];
    let r = with_overrides(&[odd.as_slice(), &[("WEB_MEMORY", "5g")]].concat());
    let (text, _) = r.resolve(&state());
    assert!(text.contains("\nAPP_BANNER='a$HOME #b'\n"), "{text}");
    assert!(
        text.contains("\nWEB_MEMORY=5g\n"),
        "plain values stay bare: {text}"
    );
    // The reader that follows compose-go, and fills v1's process environment.
    let read = envcheck::parse(&text);
    for (k, v) in odd {
        assert_eq!(read[k], v, "{k} in {text}");
    }
    assert!(read.findings.is_empty(), "{:?}", read.findings);
}

#[test]
fn an_override_wins_over_the_env_in_the_security_check() {
    let e = with_overrides(&[("DEBUG", "true")])
        .plan(&state())
        .unwrap_err()
        .to_string();
    assert!(e.contains("DEBUG") && e.contains("not started"), "{e}");
    let mut s = state();
    s.env_text = Some(env().replace("ADMIN_USERNAME=vitoria", "ADMIN_USERNAME=admin"));
    let p = with_overrides(&[("ADMIN_USERNAME", "vitoria")])
        .plan(&s)
        .unwrap();
    assert!(matches!(
        &p.steps[..],
        [Step::WriteEnv { .. }, Step::Up { .. }]
    ));
    assert!(
        p.notes.iter().any(|n| n.contains("ADMIN_USERNAME")),
        "the shadowed key is reported: {:?}",
        p.notes
    );
}

#[test]
fn a_dollar_compose_would_expand_blocks_up_without_showing_the_value() {
    let r = res(ProfileChoice::Staging);
    let mut s = state();
    s.env_text = Some(format!("{}ADMIN_PASSWORD=x$Kq9vTT2mmQQ7\n", env()));
    let e = r.plan(&s).unwrap_err().to_string();
    assert!(
        e.contains("ADMIN_PASSWORD") && e.contains(".env line") && e.contains("$$"),
        "{e}"
    );
    assert!(!e.contains("Kq9"), "{e}");
    // Single-quoted, it is what the operator wrote.
    s.env_text = Some(format!("{}ADMIN_PASSWORD='x$Kq9vTT2mmQQ7'\n", env()));
    assert!(r.plan(&s).is_ok());
}

#[test]
fn an_override_compose_env_cannot_hold_is_refused_before_anything() {
    for (k, v, needle) in [
        ("WEB_MEMORY", "5g\nDEBUG=true", "line break"),
        ("WEB_MEMORY", "it's", "single quote"),
        ("1BAD", "x", "`1BAD`"),
    ] {
        let e = with_overrides(&[(k, v)])
            .plan(&state())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("compose.overrides")
                && e.contains(needle)
                && e.contains("no container was changed"),
            "{e}"
        );
    }
}

#[test]
fn no_project_yet_is_a_note() {
    let r = res(ProfileChoice::Auto);
    let mut s = state();
    s.project = false;
    let p = r.plan(&s).unwrap();
    assert!(p.steps.is_empty() && p.notes[0].contains("Phase 3.1"));
}

#[tokio::test(flavor = "current_thread")]
async fn a_failed_health_request_says_why() {
    // A port nothing listens on: bound, then closed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let e = health(&format!("http://127.0.0.1:{port}/health"))
        .await
        .unwrap_err();
    assert!(e.to_lowercase().contains("refused"), "{e}");
}

#[test]
fn v1_gets_agent_values_in_its_environment_v2_a_second_env_file() {
    let r = res(ProfileChoice::Cpx62);
    let v2 = r.cmd(Flavor::V2).to_string();
    assert!(
        v2.contains(
            "--env-file /home/deploy/sapari/.env --env-file /var/lib/sapari-agent/compose.env"
        ),
        "{v2}"
    );
    let v1 = r.cmd(Flavor::V1).to_string();
    assert!(
        v1.starts_with("docker-compose --compatibility") && !v1.contains("compose.env"),
        "{v1}"
    );
}
