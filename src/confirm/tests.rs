use super::*;
use crate::resources::firewall::rollback::{ChainSnap, Step as ChainStep};
use crate::resources::firewall::{lists::Family, rules::Backend};
use crate::resources::guarded::FileSnap;
use crate::resources::sshd::rollback::Step as SshdStep;
use crate::resources::ufw::rollback::Step as UfwStep;
use crate::resources::users::rollback::{Item, Step as UsersStep};
use crate::resources::{ufw, users};

fn f(path: &str, content: Option<&str>) -> FileSnap {
    FileSnap {
        path: path.into(),
        content: content.map(str::to_string),
        mode: 0o644,
        uid: 0,
        gid: 0,
    }
}

fn ufw_files(enabled: bool, rules: &str) -> Vec<FileSnap> {
    vec![
        f(ufw::USER_RULES, Some(rules)),
        f(ufw::USER6_RULES, Some("v6\n")),
        f(ufw::DEFAULTS, Some("IPV6=yes\n")),
        f(
            ufw::UFW_CONF,
            Some(if enabled {
                "ENABLED=yes\n"
            } else {
                "ENABLED=no\n"
            }),
        ),
    ]
}

fn snap() -> Snapshot {
    Snapshot {
        id: "1-2".into(),
        taken_at: "t".into(),
        sshd: vec![
            f("/etc/ssh/sshd_config", Some("Include x\n")),
            f("/etc/ssh/sshd_config.d/10-sapari-agent.conf", None),
        ],
        ufw_installed: true,
        ufw: ufw_files(true, "allow 22 from op\n"),
        chains: vec![ChainSnap {
            family: Family::V4,
            backend: Backend::Nft,
            lines: Some(vec!["-A DOCKER-USER -j RETURN".into()]),
        }],
        items: vec![Item::Sudoers(f(
            "/etc/sudoers.d/90-sapari-deploy",
            Some("deploy ALL=(ALL:ALL) NOPASSWD: ALL\n"),
        ))],
    }
}

#[test]
fn ids_are_digits_and_dashes_only() {
    let id = new_id(1_790_000_000, 4242);
    assert!(valid_id(&id), "{id}");
    for bad in ["", "../x", "1/2", "-1", "a-1", "1 2", &"9".repeat(41)] {
        assert!(!valid_id(bad), "{bad}");
    }
}

#[test]
fn the_rollback_timer_runs_this_program_outside_the_session() {
    let v = arm_argv(
        "1-2",
        20,
        Path::new("/usr/bin/sapari-agent"),
        Some(Path::new("/var/lib/sapari-agent/confirm/1-2/agent.toml")),
    );
    assert_eq!(v[0], "systemd-run");
    assert!(v.contains(&"--unit=sapari-agent-rollback-1-2".to_string()));
    assert!(v.contains(&"--on-active=20s".to_string()));
    assert!(v.contains(&"--timer-property=AccuracySec=1s".to_string()));
    let tail = &v[v.iter().position(|a| a == "--").unwrap() + 1..];
    assert_eq!(
        tail.join(" "),
        "/usr/bin/sapari-agent rollback --id 1-2 --config /var/lib/sapari-agent/confirm/1-2/agent.toml"
    );
    let v = arm_argv("1-2", 20, Path::new("/a"), None);
    assert!(!v.contains(&"--config".to_string()));
}

#[test]
fn differing_names_each_changed_resource() {
    let s = snap();
    assert!(differing(&s, &s).is_empty());
    let mut n = s.clone();
    n.sshd[1].content = Some("PermitRootLogin no\n".into());
    n.ufw = ufw_files(true, "allow 22 from elsewhere\n");
    n.chains[0].lines = Some(vec![]);
    assert_eq!(
        differing(&s, &n),
        vec![Name::Sshd, Name::Ufw, Name::Firewall]
    );
    // An absent chain and an empty one filter the same.
    let mut a = s.clone();
    a.chains[0].lines = None;
    let mut e = s.clone();
    e.chains[0].lines = Some(vec![]);
    assert!(differing(&a, &e).is_empty());
}

#[test]
fn ufw_installed_by_the_change_counts_only_when_active() {
    let mut s = snap();
    s.ufw_installed = false;
    s.ufw = vec![
        f(ufw::USER_RULES, None),
        f(ufw::USER6_RULES, None),
        f(ufw::DEFAULTS, None),
        f(ufw::UFW_CONF, None),
    ];
    let mut n = snap();
    assert_eq!(differing(&s, &n), vec![Name::Ufw]);
    assert!(rollback_plan(&s, &n, true).contains(&(
        Name::Ufw,
        vec![
            Step::Ufw(UfwStep::Disable),
            Step::Ufw(UfwStep::Check { want_on: false })
        ]
    )));
    n.ufw = ufw_files(false, "x");
    n.chains = s.chains.clone();
    n.sshd = s.sshd.clone();
    assert!(differing(&s, &n).is_empty());
}

fn marker(resources: &[&str]) -> RolledBack {
    RolledBack {
        at: "2026-01-01T00:00:00Z".into(),
        id: "1-2".into(),
        config_sha256: "aaa".into(),
        resources: resources.iter().map(|s| s.to_string()).collect(),
        errors: vec![],
        snapshot: None,
    }
}

#[test]
fn rolled_back_config_is_not_reapplied() {
    let m = marker(&["ufw"]);
    let all = Name::ALL.to_vec();
    match marker_verdict(&m, "aaa", &all, "/etc/sapari-agent/agent.toml") {
        MarkerVerdict::Refuse(msg) => {
            assert!(msg.contains("rolled back unconfirmed"), "{msg}");
            assert!(msg.contains("--confirm"), "{msg}");
            assert!(msg.contains("/etc/sapari-agent/agent.toml"), "{msg}");
        }
        v => panic!("{v:?}"),
    }
    assert_eq!(
        marker_verdict(&m, "bbb", &all, "x"),
        MarkerVerdict::Clear,
        "a changed config clears it"
    );
    assert_eq!(
        marker_verdict(&m, "aaa", &[Name::Swap], "x"),
        MarkerVerdict::Ignore,
        "a run that cannot touch ufw goes ahead"
    );
    assert!(matches!(
        marker_verdict(&marker(&[]), "aaa", &[Name::Sshd], "x"),
        MarkerVerdict::Refuse(_)
    ));
    assert_eq!(
        marker_verdict(&marker(&["ufw", "firewall"]), "aaa", &[Name::Firewall], "x"),
        MarkerVerdict::Ignore,
        "firewall apply (Docker restarted) refills DOCKER-USER"
    );
}

const BOOT: &str = "0b3f7c1e-0000-4000-8000-000000000001";

fn pending(state: PendingState, changed_ms: Option<u64>) -> Pending {
    Pending {
        id: "1-2".into(),
        state,
        started_at: rfc3339(1000),
        deadline: rfc3339(1020),
        deadline_unix: 1020,
        window_secs: 20,
        ssh_connection: Some("192.0.2.50 50000 203.0.113.10 22".into()),
        resources: vec!["ufw".into()],
        config: None,
        config_sha256: "x".into(),
        unit: unit_name("1-2"),
        changed: changed_ms.map(|ms| Stamp {
            boot_id: BOOT.into(),
            boottime_ms: ms,
        }),
    }
}

/// A caller whose boot-relative clock reads 600 s at 2026-01-01T00:10:00Z.
fn caller(conn: Option<&str>, session_started_ms: Option<u64>) -> Caller {
    Caller {
        ssh_connection: conn.map(str::to_string),
        session: session_started_ms.map(|ms| sys::SshSession {
            pid: 4242,
            comm: "sshd-session".into(),
            started_ms: ms,
        }),
        boot_id: Some(BOOT.into()),
        boot_ms: 600_000,
        unix_ms: 1_767_226_200_000,
    }
}

const OLD: &str = "192.0.2.50 50000 203.0.113.10 22";
const NEW: &str = "192.0.2.50 50001 203.0.113.10 22";

#[test]
fn the_converges_own_session_cannot_confirm() {
    let p = pending(PendingState::Pending, Some(100_000));
    let e = session_verdict(&p, &caller(Some(OLD), Some(200_000))).unwrap_err();
    assert!(e.contains("NEW SSH session"), "{e}");
}

#[test]
fn only_a_login_opened_after_the_change_confirms() {
    // Applied at boot+300 s (00:05:00); a session from boot+120 s (00:02:00) is older,
    // though its SSH_CONNECTION differs (another terminal, a multiplexed ssh).
    let p = pending(PendingState::Pending, Some(300_000));
    let e = session_verdict(&p, &caller(Some(NEW), Some(120_000))).unwrap_err();
    assert!(
        e.starts_with(
            "this SSH session was opened at 2026-01-01T00:02:00Z (sshd-session pid 4242), before the change at 2026-01-01T00:05:00Z; open a new SSH connection"
        ),
        "{e}"
    );
    assert!(e.contains("sudo sapari-agent confirm"), "{e}");
    assert_eq!(
        session_verdict(&p, &caller(Some(NEW), Some(300_010))),
        Ok(None)
    );
    // The same tick: /proc rounds start times down, so the login began at or after it.
    assert_eq!(
        session_verdict(&p, &caller(Some(NEW), Some(300_000))),
        Ok(None)
    );
    assert!(session_verdict(&p, &caller(Some(NEW), Some(299_990))).is_err());
    // The sshd process counts, not the variable: sudo may have dropped it.
    assert_eq!(session_verdict(&p, &caller(None, Some(400_000))), Ok(None));
}

#[test]
fn ssh_without_an_sshd_above_is_refused_and_a_console_is_noted() {
    let p = pending(PendingState::Pending, Some(300_000));
    let e = session_verdict(&p, &caller(Some(NEW), None)).unwrap_err();
    assert!(
        e.contains("tmux") && e.contains("NEW SSH connection"),
        "{e}"
    );
    let note = session_verdict(&p, &caller(None, None)).unwrap();
    assert!(note.is_some_and(|n| n.contains("without SSH")));
}

#[test]
fn a_record_without_the_change_time_is_refused_with_the_fix() {
    let p = pending(PendingState::Pending, None);
    let e = session_verdict(&p, &caller(Some(NEW), Some(900_000))).unwrap_err();
    assert!(
        e.contains("older sapari-agent")
            && e.contains("converge --confirm")
            && e.contains(&p.deadline),
        "{e}"
    );
    // What the previous version wrote has no `changed`.
    let mut v = serde_json::to_value(pending(PendingState::Pending, Some(1))).unwrap();
    v.as_object_mut().unwrap().remove("changed");
    let old: Pending = serde_json::from_value(v).unwrap();
    assert_eq!(old.changed, None);
}

#[test]
fn a_reboot_since_the_change_makes_every_login_newer() {
    let p = pending(PendingState::Pending, Some(300_000));
    let mut c = caller(Some(NEW), Some(20_000));
    c.boot_id = Some("another-boot".into());
    assert_eq!(session_verdict(&p, &c), Ok(None));
    // A converge killed mid-run: unknown when its last step landed, unless a reboot
    // since then ended it.
    let a = pending(PendingState::Applying, Some(300_000));
    let e = session_verdict(&a, &caller(Some(NEW), Some(900_000))).unwrap_err();
    assert!(e.contains("did not finish"), "{e}");
    assert_eq!(session_verdict(&a, &c), Ok(None));
    // An unreadable boot id counts as this boot: the times are compared.
    let mut c = caller(Some(NEW), Some(20_000));
    c.boot_id = None;
    assert!(session_verdict(&p, &c).is_err());
}

#[test]
fn the_sudoers_drop_in_is_kept_and_named_as_users() {
    let s = snap();
    let mut n = s.clone();
    n.items = vec![Item::Sudoers(f("/etc/sudoers.d/90-sapari-deploy", None))];
    assert_eq!(differing(&s, &n), vec![Name::Users]);
    let plan = rollback_plan(&s, &n, true);
    assert_eq!(
        plan[0],
        (
            Name::Users,
            vec![Step::Users(UsersStep::PutBack(s.items[0].clone()))]
        )
    );
    assert_eq!(
        users::sudoers_path("deploy"),
        Path::new("/etc/sudoers.d/90-sapari-deploy")
    );
    // Stored tagged, and a snapshot of the previous version (no items) still reads.
    let text = serde_json::to_string(&s).unwrap();
    assert!(
        text.contains(r#"{"kind":"sudoers","path":"/etc/sudoers.d/90-sapari-deploy""#),
        "{text}"
    );
    assert_eq!(serde_json::from_str::<Snapshot>(&text).unwrap(), s);
    let mut v = serde_json::to_value(&s).unwrap();
    v.as_object_mut().unwrap().remove("items");
    assert!(
        serde_json::from_value::<Snapshot>(v)
            .unwrap()
            .items
            .is_empty()
    );
}

#[test]
fn a_rollback_reloads_everything_even_when_the_files_are_as_saved() {
    // A rollback killed after its writes: the retry finds the files as saved, but sshd,
    // ufw and the chain may still run the change.
    let s = snap();
    assert!(differing(&s, &s).is_empty());
    assert_eq!(
        rollback_plan(&s, &s, true),
        vec![
            (Name::Sshd, vec![Step::Sshd(SshdStep::Reload)]),
            (
                Name::Ufw,
                vec![
                    Step::Ufw(UfwStep::Reload),
                    Step::Ufw(UfwStep::Check { want_on: true })
                ]
            ),
            (
                Name::Firewall,
                vec![Step::Firewall(ChainStep::Restore(s.chains[0].clone()))]
            ),
        ]
    );
    // Files that differ go back before the reload.
    let mut n = s.clone();
    n.sshd[1].content = Some("AllowUsers nobody\n".into());
    assert_eq!(
        rollback_plan(&s, &n, true)[0],
        (
            Name::Sshd,
            vec![
                Step::Sshd(SshdStep::Write(s.sshd[1].clone())),
                Step::Sshd(SshdStep::Reload)
            ]
        )
    );
    // No sshd to reload: its files still go back.
    assert_eq!(
        rollback_plan(&s, &n, false)[0],
        (
            Name::Sshd,
            vec![Step::Sshd(SshdStep::Write(s.sshd[1].clone()))]
        )
    );
    // ufw neither before nor now: nothing to run for it.
    let mut none = s.clone();
    none.ufw_installed = false;
    assert!(
        !rollback_plan(&none, &none, true)
            .iter()
            .any(|(name, _)| *name == Name::Ufw)
    );
}

#[tokio::test(flavor = "current_thread")]
async fn one_failing_reload_does_not_stop_the_others() {
    let s = snap();
    let mut n = s.clone();
    n.sshd[1].content = Some("AllowUsers nobody\n".into());
    n.ufw = ufw_files(true, "allow 22 from elsewhere\n");
    let plan = rollback_plan(&s, &n, true);
    let changed = differing(&s, &n);
    let ran = std::cell::RefCell::new(Vec::new());
    let r = execute(plan, &changed, |step| {
        ran.borrow_mut().push(step.clone());
        let fail = matches!(step, Step::Sshd(SshdStep::Reload) | Step::Firewall(_));
        async move { if fail { bail!("boom") } else { Ok(()) } }
    })
    .await;
    let ran = ran.into_inner();
    assert!(ran.contains(&Step::Ufw(UfwStep::Reload)), "{ran:?}");
    assert!(
        ran.contains(&Step::Ufw(UfwStep::Check { want_on: true })),
        "{ran:?}"
    );
    assert_eq!(r.resources, vec![Name::Ufw], "sshd's reload failed");
    assert_eq!(
        r.errors,
        vec![
            "sshd: reloading sshd: boom".to_string(),
            "firewall: restoring the v4 DOCKER-USER chain: boom".to_string()
        ]
    );
}

#[test]
fn a_lost_rollback_is_noticed_after_a_grace() {
    let p = Pending {
        id: "1-2".into(),
        state: PendingState::Pending,
        started_at: rfc3339(1000),
        deadline: rfc3339(1020),
        deadline_unix: 1020,
        window_secs: 20,
        ssh_connection: None,
        resources: vec!["ufw".into()],
        config: None,
        config_sha256: "x".into(),
        unit: unit_name("1-2"),
        changed: Some(Stamp {
            boot_id: "b".into(),
            boottime_ms: 5,
        }),
    };
    assert!(!lost(&p, 1020));
    assert!(!lost(&p, 1020 + LOST_AFTER));
    assert!(lost(&p, 1021 + LOST_AFTER));
    let text = serde_json::to_string(&p).unwrap();
    assert!(text.contains("\"state\":\"pending\""), "{text}");
    assert_eq!(serde_json::from_str::<Pending>(&text).unwrap(), p);
    assert_eq!(p.deadline, "1970-01-01T00:17:00Z");
}

/// A snapshot exactly as the binary of before the `Guarded` split wrote it. A pending session
/// armed by an older binary is rolled back by the upgraded one: it must still read and plan.
const SNAPSHOT_V1: &str = include_str!("testdata/snapshot-v1.json");

#[test]
fn a_snapshot_of_the_previous_format_still_reads_and_plans() {
    let saved: Snapshot = serde_json::from_str(SNAPSHOT_V1).unwrap();
    let mut body = serde_json::to_string_pretty(&saved).unwrap();
    body.push('\n');
    assert_eq!(body, SNAPSHOT_V1, "the on-disk shape changed");

    let mut now = saved.clone();
    now.sshd[1].content = Some("PasswordAuthentication no\n".into());
    now.ufw[0].content = Some("allow 443\n".into());
    now.chains[0].lines = Some(vec![]);
    now.items = vec![
        Item::Sudoers(f("/etc/sudoers.d/90-sapari-deploy", None)),
        Item::AuthorizedKeys {
            user: "deploy".into(),
            file: f("/home/deploy/.ssh/authorized_keys", Some("other\n")),
        },
    ];
    assert_eq!(
        differing(&saved, &now),
        vec![Name::Users, Name::Sshd, Name::Ufw, Name::Firewall]
    );
    let fb: Vec<(Family, Backend)> = saved.chains.iter().map(|c| (c.family, c.backend)).collect();
    assert_eq!(
        fb,
        [(Family::V4, Backend::Nft), (Family::V6, Backend::Legacy)]
    );
    let plan: Vec<(Name, Vec<String>)> = rollback_plan(&saved, &now, true)
        .into_iter()
        .map(|(n, steps)| (n, steps.iter().map(ToString::to_string).collect()))
        .collect();
    let want = |n: Name, v: &[&str]| (n, v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    assert_eq!(
        plan,
        vec![
            want(
                Name::Users,
                &[
                    "putting back /etc/sudoers.d/90-sapari-deploy",
                    "putting back /home/deploy/.ssh/authorized_keys",
                ]
            ),
            want(
                Name::Sshd,
                &[
                    "putting back /etc/ssh/sshd_config.d/10-sapari-agent.conf",
                    "reloading sshd",
                ]
            ),
            want(
                Name::Ufw,
                &[
                    "putting back /etc/ufw/user.rules",
                    "ufw reload",
                    "checking ufw's state",
                ]
            ),
            want(
                Name::Firewall,
                &[
                    "restoring the v4 DOCKER-USER chain",
                    "restoring the v6 DOCKER-USER chain",
                ]
            ),
        ]
    );
}
