use super::*;
use crate::config::AuthorizedKey;

const K1: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl op@laptop";
const K2: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIL5XCtKcP+JC48vXbIoe+UVO/zcUdqfXFZ2HI0vvRsPW ci";

fn res(keys: &[&str]) -> Users {
    Users::new(
        &UsersSettings {
            authorized_keys: keys.iter().map(|k| AuthorizedKey(k.to_string())).collect(),
            ..UsersSettings::default()
        },
        &RunContext::default(),
    )
}

/// cloud-init's `disable_root_opts` as it lands in /root/.ssh/authorized_keys.
fn redirected(key: &str) -> String {
    format!(
        "no-port-forwarding,no-agent-forwarding,no-X11-forwarding,command=\"echo 'Please login as the user \\\"debian\\\" rather than the user \\\"root\\\".';echo;sleep 10;exit 142\" {key}"
    )
}

fn fresh() -> State {
    State {
        accounts: Accounts {
            users: accounts::parse_passwd("root:x:0:0:root:/root:/bin/bash\n"),
            groups: accounts::parse_group("root:x:0:\nsudo:x:27:\n"),
        },
        password: None,
        root_keys: Some(format!("{}\n", redirected(K2))),
        home: false,
        ssh_dir: None,
        authorized_keys: None,
        sudoers: None,
        uid_min: 1000,
        session_key: SessionKey::NotApplicable,
    }
}

fn converged(r: &Users) -> State {
    let keys = format!("{K1}\n{K2}\n");
    State {
        accounts: Accounts {
            users: accounts::parse_passwd(
                "root:x:0:0:root:/root:/bin/bash\ndeploy:x:1000:1000::/home/deploy:/bin/bash\n",
            ),
            groups: accounts::parse_group(
                "root:x:0:\nsudo:x:27:deploy\ndocker:x:999:deploy\ndeploy:x:1000:\n",
            ),
        },
        password: Some("!".into()),
        root_keys: Some(format!("{K2}\n")),
        home: true,
        ssh_dir: Some(FileSpec {
            mode: 0o700,
            uid: 1000,
            gid: 1000,
        }),
        authorized_keys: Some(FileState {
            content: keys.into_bytes(),
            mode: 0o600,
            uid: 1000,
            gid: 1000,
        }),
        sudoers: Some(FileState {
            content: r.sudoers_content().into_bytes(),
            mode: 0o440,
            uid: 0,
            gid: 0,
        }),
        uid_min: 1000,
        session_key: SessionKey::NotApplicable,
    }
}

#[test]
fn fresh_box_docker_group_first_then_user_keys_sudo() {
    let r = res(&[K1]);
    let p = r.plan(&fresh()).unwrap();
    assert_eq!(p.steps[0], Step::CreateGroup("docker".into()));
    assert_eq!(p.steps[1], Step::CreateUser);
    assert!(matches!(p.steps[2], Step::SshDir { from: None }));
    match &p.steps[3] {
        // Root's key is imported without cloud-init's "please login as" command option.
        Step::WriteAuthorizedKeys { new, .. } => assert_eq!(new, &format!("{K1}\n{K2}\n")),
        s => panic!("{s:?}"),
    }
    assert!(matches!(p.steps[4], Step::WriteSudoers { .. }));
    assert_eq!(p.steps.len(), 5);
}

/// A run killed while `useradd` ran can leave the user in /etc/passwd without a home;
/// the next run must create it before ~/.ssh, not fail on ~/.ssh forever.
#[test]
fn user_without_home_gets_it_before_ssh_dir() {
    let r = res(&[K1]);
    let mut s = converged(&r);
    s.home = false;
    s.ssh_dir = None;
    s.authorized_keys = None;
    let p = r.plan(&s).unwrap();
    assert_eq!(p.steps[0], Step::CreateHome);
    assert!(matches!(p.steps[1], Step::SshDir { from: None }));
    assert!(matches!(p.steps[2], Step::WriteAuthorizedKeys { .. }));
    assert_eq!(p.steps.len(), 3, "{:?}", p.steps);
}

#[test]
fn converged_plans_nothing() {
    let r = res(&[K1]);
    let p = r.plan(&converged(&r)).unwrap();
    assert!(p.steps.is_empty(), "{:?}", p.steps);
}

#[test]
fn drift_is_corrected_item_by_item() {
    let r = res(&[K1]);
    let mut s = converged(&r);
    s.accounts.groups = accounts::parse_group("sudo:x:27:\ndocker:x:999:deploy\ndeploy:x:1000:\n");
    s.password = Some("$6$hash".into());
    s.accounts.users[1].shell = "/bin/sh".into();
    s.sudoers.as_mut().unwrap().mode = 0o644;
    let p = r.plan(&s).unwrap();
    assert_eq!(
        p.steps[..3],
        [
            Step::SetShell {
                from: "/bin/sh".into()
            },
            Step::AddToGroups(vec!["sudo".into()]),
            Step::LockPassword
        ]
    );
    assert!(matches!(p.steps[3], Step::WriteSudoers { .. }));
}

#[test]
fn keys_added_by_hand_survive_unless_exclusive() {
    let extra =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILzJoF9UTeEliDm31rypflK/KDbvn4WRZjs1rch2+bK3 manual";
    let existing = format!("# mine\n{extra}\nrestrict {K1}\n");
    let merged = merge_keys(Some(&existing), &[K1.to_string(), K2.to_string()], false);
    assert_eq!(merged, format!("# mine\n{extra}\nrestrict {K1}\n{K2}\n"));
    let merged = merge_keys(Some(&existing), &[K1.to_string()], true);
    assert_eq!(merged, format!("# mine\nrestrict {K1}\n"));
    assert_eq!(merge_keys(Some(&merged), &[K1.to_string()], true), merged);
}

#[test]
fn no_key_anywhere_is_a_note() {
    let r = Users::new(
        &UsersSettings {
            import_root_keys: false,
            ..UsersSettings::default()
        },
        &RunContext::default(),
    );
    let p = r.plan(&fresh()).unwrap();
    assert!(p.notes[0].contains("no authorized key"));
    assert!(
        !p.steps
            .iter()
            .any(|s| matches!(s, Step::WriteAuthorizedKeys { .. }))
    );
}

#[test]
fn sudo_off_removes_our_drop_in_only() {
    let r = res(&[K1]);
    let mut s = converged(&r);
    let off = Users::new(
        &UsersSettings {
            passwordless_sudo: false,
            ..r.cfg.clone()
        },
        &RunContext::default(),
    );
    assert_eq!(off.plan(&s).unwrap().steps, vec![Step::RemoveSudoers]);
    s.sudoers = None;
    assert!(off.plan(&s).unwrap().steps.is_empty());
}

#[test]
fn uid_zero_user_is_refused() {
    let r = res(&[K1]);
    let mut s = converged(&r);
    s.accounts.users[1].uid = 0;
    assert!(r.plan(&s).unwrap_err().to_string().contains("uid 0"));
}

#[test]
fn checks() {
    let r = res(&[K1]);
    assert!(
        r.checks(&converged(&r))
            .iter()
            .all(|c| c.level == Level::Pass)
    );
    let c = r.checks(&fresh());
    assert_eq!(c[0].level, Level::Fail);
    assert_eq!(c[1].level, Level::Fail);
}

#[test]
fn restricted_root_keys_keep_their_options() {
    let restricted =
        format!("from=\"10.9.8.7\",command=\"/usr/bin/rrsync -ro /srv\",restrict {K1}");
    let root = format!("{restricted}\n{}\n", redirected(K2));
    // Only cloud-init's exact redirect is dropped; the restricted key stays restricted.
    assert_eq!(
        importable_root_keys(&root),
        vec![restricted.clone(), K2.to_string()]
    );
    // A look-alike with one more option is kept whole.
    let lookalike = format!("{},permitopen=\"*:*\"", redirected(""));
    assert!(!is_cloud_init_redirect(lookalike.trim()));
    let other_victim = redirected(K2).replace("\\\"root\\\"", "\\\"admin\\\"");
    assert_eq!(
        importable_root_keys(&other_victim),
        vec![other_victim.clone()]
    );
}

#[test]
fn options_reach_a_line_that_already_holds_the_key() {
    // A box converged by a version that imported the restricted key bare.
    let restricted = format!("from=\"10.9.8.7\",restrict {K1}");
    let merged = merge_keys(
        Some(&format!("{K1}\n{K2}\n")),
        std::slice::from_ref(&restricted),
        false,
    );
    assert_eq!(merged, format!("{restricted}\n{K2}\n"));
    assert_eq!(
        merge_keys(Some(&merged), std::slice::from_ref(&restricted), false),
        merged
    );
    // A bare wanted key leaves options added by hand alone.
    assert_eq!(merge_keys(Some(&merged), &[K1.to_string()], false), merged);
    let mut r = res(&[]);
    r.cfg.import_root_keys = true;
    let mut s = converged(&r);
    s.root_keys = Some(format!("{restricted}\n"));
    s.authorized_keys.as_mut().unwrap().content = format!("{K1}\n").into_bytes();
    let p = r.plan(&s).unwrap();
    assert!(
            p.steps.iter().any(
                |st| matches!(st, Step::WriteAuthorizedKeys { new, .. } if *new == format!("{restricted}\n"))
            ),
            "{:?}",
            p.steps
        );
}

#[test]
fn a_system_account_is_refused() {
    let r = Users::new(
        &UsersSettings {
            name: crate::config::Username("www-data".into()),
            ..UsersSettings::default()
        },
        &RunContext::default(),
    );
    let mut s = fresh();
    s.accounts.users =
        accounts::parse_passwd("www-data:x:33:33:www-data:/var/www:/usr/sbin/nologin\n");
    let e = r.plan(&s).unwrap_err().to_string();
    assert!(
        e.contains("system account") && e.contains("UID_MIN 1000"),
        "{e}"
    );
    assert_eq!(uid_min("# c\nUID_MIN\t\t 2000\nUID_MAX 60000\n"), 2000);
    assert_eq!(uid_min(""), 1000);
}

fn over_ssh(force: bool, key: SessionKey) -> (Users, State) {
    let ctx = RunContext {
        force,
        ssh_client: Some("192.0.2.50".parse().unwrap()),
        ..RunContext::default()
    };
    let r = Users::new(
        &UsersSettings {
            authorized_keys: vec![AuthorizedKey(K1.into())],
            exclusive_keys: true,
            import_root_keys: false,
            ..UsersSettings::default()
        },
        &ctx,
    );
    let mut s = converged(&r);
    s.session_key = key;
    (r, s)
}

#[test]
fn exclusive_keys_keep_the_key_of_this_session() {
    let k2_fp = fingerprint(K2).unwrap();
    let (r, s) = over_ssh(false, SessionKey::Known(k2_fp.clone()));
    let e = r.plan(&s).unwrap_err().to_string();
    assert!(e.contains(&k2_fp) && e.contains("--force"), "{e}");
    let (r, s) = over_ssh(false, SessionKey::Known(fingerprint(K1).unwrap()));
    assert!(r.plan(&s).is_ok(), "removing another key is fine");
    let (r, s) = over_ssh(false, SessionKey::Unknown("no log".into()));
    assert!(
        r.plan(&s)
            .unwrap_err()
            .to_string()
            .contains("unknown (no log)")
    );
    let (r, s) = over_ssh(true, SessionKey::Known(k2_fp));
    assert!(r.plan(&s).is_ok(), "--force overrides");
    let log = format!(
        "Accepted publickey for deploy from 192.0.2.50 port 51000 ssh2: ED25519 {}\nAccepted publickey for deploy from 192.0.2.50 port 5100 ssh2: ED25519 SHA256:other\n",
        fingerprint(K2).unwrap()
    );
    assert_eq!(
        session_key_in_log(&log, "deploy", "192.0.2.50", 51000),
        fingerprint(K2)
    );
    assert_eq!(session_key_in_log(&log, "deploy", "192.0.2.50", 510), None);
}

#[test]
fn missing_groups_keep_their_order_and_ignore_others() {
    let have = |g: &[&str]| g.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(missing_groups(&have(&[])), ["sudo", "docker"]);
    assert_eq!(missing_groups(&have(&["docker", "adm"])), ["sudo"]);
    assert!(missing_groups(&have(&["sudo", "docker"])).is_empty());
}

#[test]
fn locked_and_disabled_passwords_are_not_usable() {
    assert!(password_usable("$y$j9T$salt$hash"));
    assert!(password_usable(""));
    assert!(!password_usable("!$y$j9T$salt$hash"));
    assert!(!password_usable("!"));
    assert!(!password_usable("*"));
}

#[test]
fn account_steps_run_the_account_tools_and_file_steps_none() {
    let u = res(&[]);
    let cmd = |s: Step| u.account_cmd(&s).map(|c| c.to_string());
    assert_eq!(
        cmd(Step::CreateGroup("docker".into())).as_deref(),
        Some("groupadd --system docker")
    );
    assert_eq!(
        cmd(Step::CreateUser).as_deref(),
        Some("useradd --create-home --user-group --shell /bin/bash --groups sudo,docker deploy")
    );
    assert_eq!(
        cmd(Step::CreateHome).as_deref(),
        Some("mkhomedir_helper deploy 0027")
    );
    assert_eq!(
        cmd(Step::AddToGroups(vec!["sudo".into(), "docker".into()])).as_deref(),
        Some("usermod --append --groups sudo,docker deploy")
    );
    assert_eq!(
        cmd(Step::LockPassword).as_deref(),
        Some("usermod --lock deploy")
    );
    assert_eq!(cmd(Step::RemoveSudoers), None);
    assert_eq!(cmd(Step::FixAuthorizedKeysOwner), None);
}
