use super::*;

fn res() -> Sshd {
    Sshd::new(&SshdSettings::default(), "deploy", &RunContext::default())
}

const DEBIAN_MAIN: &str = "Include /etc/ssh/sshd_config.d/*.conf\n#PermitRootLogin prohibit-password\nKbdInteractiveAuthentication no\nUsePAM yes\nX11Forwarding yes\nSubsystem sftp /usr/lib/openssh/sftp-server\n";

fn effective_ok(r: &Sshd) -> Effective {
    let mut t = String::new();
    for (k, v) in r.settings() {
        t.push_str(&format!("{} {v}\n", k.to_ascii_lowercase()));
    }
    t.push_str("port 22\n");
    Effective::Values(parse_effective(&t))
}

fn converged(r: &Sshd) -> State {
    State {
        main: Some(DEBIAN_MAIN.into()),
        drop_ins: vec![
            ("10-sapari-agent.conf".into(), r.drop_in_content(true)),
            (
                "50-cloud-init.conf".into(),
                "PasswordAuthentication yes\n".into(),
            ),
        ],
        moduli: Some(
            "# Time Type Tests Tries Size Generator Modulus\n20230101 2 6 100 3071 2 FFFF\n".into(),
        ),
        has_ed25519_key: true,
        has_rsa_key: true,
        privsep_dir: true,
        effective: effective_ok(r),
        unit: Some(Unit {
            id: "ssh.service".into(),
            active: true,
            kill_mode: Some("process".into()),
        }),
        socket_active: false,
        key_users: vec![KeyUser {
            name: "deploy".into(),
            groups: vec!["sudo".into()],
            key_algorithms: vec!["ssh-ed25519".into()],
        }],
        sshd_installed: true,
        effective_public: effective_ok(r),
        reload_pending: false,
    }
}

fn fresh(r: &Sshd) -> State {
    let mut s = converged(r);
    s.drop_ins.remove(0);
    s.moduli = Some("20230101 2 6 100 2047 2 AAAA\n20230101 2 6 100 3071 2 FFFF\n".into());
    s.effective = Effective::Values(parse_effective(
        "passwordauthentication yes\npermitrootlogin yes\n",
    ));
    s.effective_public = s.effective.clone();
    s
}

#[test]
fn converged_plans_nothing() {
    let r = res();
    let p = r.plan(&converged(&r)).unwrap();
    assert!(p.steps.is_empty(), "{:?}", p.steps);
    assert!(p.notes[0].contains("ssh.service"));
}

#[test]
fn fresh_box_writes_drop_in_then_reloads() {
    let r = res();
    let p = r.plan(&fresh(&r)).unwrap();
    assert!(matches!(&p.steps[0], Step::Moduli { removed: 1, new } if !new.contains("2047")));
    assert!(matches!(&p.steps[1], Step::WriteDropIn { old: None, .. }));
    assert_eq!(p.steps[2], Step::Reload);
    assert_eq!(p.steps.len(), 3);
}

#[test]
fn drop_in_sorts_before_cloud_init_and_has_every_setting() {
    let r = res();
    let c = r.drop_in_content(false);
    for k in [
        "PermitRootLogin no",
        "PasswordAuthentication no",
        "AuthenticationMethods publickey",
        "MaxStartups 10:30:60",
        "LogLevel VERBOSE",
        "KexAlgorithms sntrup761x25519-sha512@openssh.com\n",
    ] {
        assert!(c.contains(k), "{k}");
    }
    assert!(!c.contains(RSA_KEY));
    let compat = Sshd::new(
        &SshdSettings {
            compat_kex: true,
            ..SshdSettings::default()
        },
        "deploy",
        &RunContext::default(),
    );
    assert!(compat.drop_in_content(true).contains("curve25519-sha256"));
    // 50-cloud-init's PasswordAuthentication yes is read after ours: not an override.
    let s = converged(&r);
    let order = read_order(DEBIAN_MAIN, &s.drop_ins);
    assert!(
        overrides(
            &order,
            "/etc/ssh/sshd_config.d/10-sapari-agent.conf",
            &r.settings()
        )
        .is_empty()
    );
}

#[test]
fn earlier_drop_in_is_reported_by_name_or_neutralized() {
    let r = res();
    let mut s = converged(&r);
    s.drop_ins.insert(
        0,
        (
            "01-legacy.conf".into(),
            "PasswordAuthentication yes\nBanner /etc/issue\n".into(),
        ),
    );
    let e = r.plan(&s).unwrap_err().to_string();
    assert!(
        e.contains("PasswordAuthentication yes in /etc/ssh/sshd_config.d/01-legacy.conf"),
        "{e}"
    );
    assert!(e.contains("neutralize_overrides"), "{e}");
    let n = Sshd::new(
        &SshdSettings {
            neutralize_overrides: true,
            ..SshdSettings::default()
        },
        "deploy",
        &RunContext::default(),
    );
    s.drop_ins[1].1 = n.drop_in_content(true);
    let p = n.plan(&s).unwrap();
    match &p.steps[0] {
        Step::Neutralize { file, new, .. } => {
            assert!(file.ends_with("01-legacy.conf"));
            assert_eq!(
                new,
                "# disabled by sapari-agent (overrides its hardening): PasswordAuthentication yes\nBanner /etc/issue\n"
            );
        }
        s => panic!("{s:?}"),
    }
    assert_eq!(p.steps.last(), Some(&Step::Reload));
}

#[test]
fn main_file_setting_before_include_is_an_override_and_match_blocks_are_not() {
    let r = res();
    let main = format!(
        "PermitRootLogin yes\n{DEBIAN_MAIN}Match User backup\n  PasswordAuthentication yes\n"
    );
    let s = converged(&r);
    let o = overrides(
        &read_order(&main, &s.drop_ins),
        "/etc/ssh/sshd_config.d/10-sapari-agent.conf",
        &r.settings(),
    );
    assert_eq!(
        o,
        vec![(SSHD_CONFIG.into(), "PermitRootLogin".into(), "yes".into())]
    );
}

#[test]
fn missing_include_is_added_at_the_top() {
    let r = res();
    let mut s = converged(&r);
    s.main = Some("PermitRootLogin no\n".into());
    s.drop_ins.clear();
    let p = r.plan(&s).unwrap();
    assert!(matches!(&p.steps[0], Step::AddInclude { new, .. } if new.starts_with(INCLUDE_LINE)));
}

#[test]
fn lockout_guard_refuses_without_a_keyed_sudo_user() {
    let r = res();
    let mut s = fresh(&r);
    s.key_users.clear();
    let e = r.plan(&s).unwrap_err().to_string();
    assert!(
        e.contains("refusing") && e.contains("left untouched"),
        "{e}"
    );
    // Nothing to change: no reason to refuse.
    let mut s = converged(&r);
    s.key_users.clear();
    assert!(r.plan(&s).unwrap().steps.is_empty());
}

#[test]
fn invalid_foreign_config_fails_without_steps() {
    let r = res();
    let mut s = converged(&r);
    s.effective = Effective::Invalid(
        "/etc/ssh/sshd_config.d/05-broken.conf: line 1: Bad configuration option: Foo".into(),
    );
    let e = r.plan(&s).unwrap_err().to_string();
    assert!(e.contains("05-broken.conf"), "{e}");
}

#[test]
fn effective_mismatch_names_the_setting() {
    let r = res();
    let mut s = converged(&r);
    let mut t = String::new();
    for (k, v) in r.settings() {
        let v = if k == "MaxAuthTries" {
            "6".to_string()
        } else {
            v
        };
        t.push_str(&format!("{} {v}\n", k.to_ascii_lowercase()));
    }
    s.effective = Effective::Values(parse_effective(&t));
    s.main = Some(format!(
        "{DEBIAN_MAIN}Match Address 192.0.2.0/24\n  MaxAuthTries 6\n"
    ));
    let e = r.plan(&s).unwrap_err().to_string();
    assert!(e.contains("MaxAuthTries is \"6\""), "{e}");
    assert!(e.contains("(set in /etc/ssh/sshd_config)"), "{e}");
}

#[test]
fn parsing_helpers() {
    assert_eq!(
        split_line("  PasswordAuthentication=no "),
        Some(("passwordauthentication".into(), "no".into()))
    );
    assert_eq!(split_line("# x"), None);
    let (u, sock) = parse_units(
        "Id=ssh.service\nLoadState=loaded\nActiveState=active\n\nId=sshd.service\nLoadState=not-found\nActiveState=inactive\n\nId=ssh.socket\nLoadState=loaded\nActiveState=active\n",
    );
    assert_eq!(
        u,
        Some(Unit {
            id: "ssh.service".into(),
            active: true,
            kill_mode: None,
        })
    );
    assert!(sock);
    let (m, n) = strong_moduli("# c\n1 2 6 100 1023 2 A\n1 2 6 100 4095 5 B");
    assert_eq!((m.as_str(), n), ("# c\n1 2 6 100 4095 5 B", 1));
    let e = parse_effective("allowusers deploy\nallowusers ops\n");
    assert_eq!(e["allowusers"], vec!["deploy", "ops"]);
}

#[test]
fn a_pending_reload_is_retried_when_the_files_already_match() {
    let r = res();
    let mut s = converged(&r);
    s.reload_pending = true;
    let p = r.plan(&s).unwrap();
    assert_eq!(p.steps, vec![Step::Reload]);
    assert!(
        p.notes
            .iter()
            .any(|n| n.contains("stopped before reloading")),
        "{:?}",
        p.notes
    );
}

#[test]
fn a_public_client_is_judged_too_and_match_blocks_are_named() {
    let r = res();
    let mut s = converged(&r);
    s.effective_public = Effective::Values(parse_effective(
        "passwordauthentication yes\npermitrootlogin no\n",
    ));
    let e = r.plan(&s).unwrap_err().to_string();
    assert!(
        e.contains("PasswordAuthentication for a public client"),
        "{e}"
    );
    let main = format!("{DEBIAN_MAIN}Match Address 10.0.0.0/8\n  PasswordAuthentication yes\n");
    let found = match_block_settings(&main, &[], &r.settings());
    assert_eq!(
        found,
        vec![(
            SSHD_CONFIG.to_string(),
            "PasswordAuthentication".to_string()
        )]
    );
    let mut s = converged(&r);
    s.main = Some(main);
    let p = r.plan(&s).unwrap();
    assert!(
        p.notes.iter().any(|n| n.contains("inside a Match block")),
        "{:?}",
        p.notes
    );
}

#[test]
fn a_run_without_ssh_judges_logins_from_the_operators_and_a_public_address() {
    let op: std::net::IpAddr = "192.0.2.50".parse().unwrap();
    let r = res().with_operator_ips(&[op]);
    assert_eq!(r.judge_from(), vec![op, PUBLIC_PROBE.parse().unwrap()]);
    let client: std::net::IpAddr = "198.51.100.7".parse().unwrap();
    let over_ssh = Sshd::new(
        &SshdSettings::default(),
        "deploy",
        &RunContext {
            ssh_client: Some(client),
            ..RunContext::default()
        },
    )
    .with_operator_ips(&[op]);
    assert_eq!(over_ssh.judge_from(), vec![client]);
}

#[test]
fn candidate_tree_holds_the_configuration_as_it_will_be() {
    use crate::host::{Access, CANDIDATE_PREFIX};
    let r = res();
    let s = converged(&r);
    assert!(Host::new(Access::ReadOnly).candidate_tree().is_err());
    let tree = Host::new(Access::ReadWrite).candidate_tree().unwrap();
    let dir = tree.path().to_path_buf();
    let name = dir.file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.starts_with(CANDIDATE_PREFIX), "{name}");
    let files = vec![
        (
            PathBuf::from("/etc/ssh/sshd_config.d/50-cloud-init.conf"),
            "# neutralized\n".to_string(),
        ),
        (
            PathBuf::from("/etc/ssh/sshd_config.d/60-new.conf"),
            "X11Forwarding no\n".to_string(),
        ),
    ];
    let main = validate::assemble(&tree, &s, &files).unwrap();
    assert_eq!(main, dir.join("sshd_config"));
    let text = std::fs::read_to_string(&main).unwrap();
    let include = format!("Include {}/sshd_config.d/*.conf\n", dir.display());
    assert!(text.starts_with(&include), "{text}");
    assert!(text.ends_with("Subsystem sftp /usr/lib/openssh/sftp-server\n"));
    let read = |n: &str| std::fs::read_to_string(dir.join("sshd_config.d").join(n)).unwrap();
    assert_eq!(read("10-sapari-agent.conf"), r.drop_in_content(true));
    assert_eq!(read("50-cloud-init.conf"), "# neutralized\n");
    assert_eq!(read("60-new.conf"), "X11Forwarding no\n");
    drop(tree);
    assert!(!dir.exists(), "candidate tree left behind");
}

#[test]
fn the_unit_query_is_the_same_command_line() {
    assert_eq!(
        validate::units_cmd().to_string(),
        "systemctl show -p Id -p LoadState -p ActiveState -p KillMode ssh.service sshd.service ssh.socket"
    );
}

#[test]
fn config_files_are_the_file_steps_in_order() {
    let r = res();
    let steps = [
        Step::PrivsepDir,
        Step::WriteDropIn {
            old: None,
            new: "drop-in\n".into(),
        },
        Step::Moduli {
            removed: 1,
            new: "moduli\n".into(),
        },
        Step::Neutralize {
            file: "/etc/ssh/sshd_config.d/50-cloud-init.conf".into(),
            old: "PasswordAuthentication yes\n".into(),
            new: "# PasswordAuthentication yes\n".into(),
            settings: vec!["PasswordAuthentication".into()],
        },
        Step::AddInclude {
            old: String::new(),
            new: "main\n".into(),
        },
        Step::Reload,
    ];
    let files: Vec<(String, String)> = r
        .config_files(&steps)
        .into_iter()
        .map(|(p, c)| (p.display().to_string(), c))
        .collect();
    assert_eq!(
        files,
        [
            (
                r.drop_in_path().display().to_string(),
                "drop-in\n".to_string()
            ),
            (
                "/etc/ssh/sshd_config.d/50-cloud-init.conf".into(),
                "# PasswordAuthentication yes\n".into()
            ),
            (SSHD_CONFIG.to_string(), "main\n".into()),
        ]
    );
    assert!(r.config_files(&[Step::HostKey, Step::Reload]).is_empty());
}

#[test]
fn a_socket_activated_sshd_is_named_and_its_listener_settings_noted() {
    let r = res();
    let mut s = converged(&r);
    s.socket_active = true;
    s.drop_ins
        .push(("60-port.conf".into(), "Port 2222\n".into()));
    let p = r.plan(&s).unwrap();
    let notes = p.notes.join("\n");
    assert!(notes.contains("started by ssh.socket"), "{notes}");
    assert!(
        notes.contains("Port in /etc/ssh/sshd_config.d/60-port.conf"),
        "{notes}"
    );
    let checks = r.checks(&s);
    assert!(
        checks
            .iter()
            .any(|c| c.name == "sshd activation" && c.detail.contains("socket activation")),
        "{checks:?}"
    );
}
