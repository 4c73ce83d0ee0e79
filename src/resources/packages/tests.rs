use super::*;

fn res() -> Packages {
    Packages::new(&PackagesSettings::default(), &UfwSettings::default())
}

fn converged(r: &Packages) -> State {
    State {
        installed: [
            "unattended-upgrades",
            "fail2ban",
            "python3-systemd",
            "nftables",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        lists_age: Some(Duration::from_secs(60)),
        unknown: vec![],
        auto_upgrades: Some(AUTO_UPGRADES_CONTENT.into()),
        jail: Some(r.jail()),
        enabled: SERVICES
            .iter()
            .map(|u| (u.to_string(), "enabled".into()))
            .collect(),
        active: SERVICES
            .iter()
            .map(|u| (u.to_string(), "active".into()))
            .collect(),
        systemd_booted: true,
    }
}

#[test]
fn converged_plans_nothing() {
    let r = res();
    assert!(r.plan(&converged(&r)).unwrap().steps.is_empty());
}

#[test]
fn missing_packages_one_transaction_update_only_when_needed() {
    let r = res();
    let mut s = converged(&r);
    s.installed.remove("fail2ban");
    s.installed.remove("python3-systemd");
    let p = r.plan(&s).unwrap();
    assert_eq!(
        p.steps[0],
        Step::Install(vec!["fail2ban".into(), "python3-systemd".into()])
    );
    assert!(p.steps.contains(&Step::Enable("fail2ban.service".into())));
    s.lists_age = Some(Duration::from_secs(3 * 86400));
    assert!(matches!(&r.plan(&s).unwrap().steps[0], Step::Update { why } if why.contains("3days")));
    s.lists_age = Some(Duration::from_secs(60));
    s.unknown = vec!["fail2ban".into()];
    assert!(
        matches!(&r.plan(&s).unwrap().steps[0], Step::Update { why } if why.contains("unknown"))
    );
}

#[test]
fn jail_uses_the_systemd_backend_and_restarts_fail2ban() {
    let r = res();
    assert!(r.jail().contains("backend = systemd") && r.jail().contains("port = 22"));
    let mut s = converged(&r);
    s.jail = Some("[sshd]\nenabled = true\n".into());
    let p = r.plan(&s).unwrap();
    assert!(matches!(p.steps[0], Step::Jail { .. }));
    assert_eq!(p.steps[1], Step::Enable("fail2ban.service".into()));
}

#[test]
fn jail_never_bans_loopback_the_tailnet_or_the_operators() {
    let ops: [IpAddr; 3] = [
        "192.0.2.50".parse().unwrap(),
        "2001:db8::7".parse().unwrap(),
        "192.0.2.50".parse().unwrap(),
    ];
    let r = res().with_operator_ips(&ops);
    let jail = r.jail();
    let line = jail
        .lines()
        .find_map(|l| l.strip_prefix("ignoreip = "))
        .unwrap_or_else(|| panic!("no ignoreip in\n{jail}"));
    assert_eq!(
        line,
        "127.0.0.1/8 ::1 100.64.0.0/10 fd7a:115c:a1e0::/48 192.0.2.50 2001:db8::7"
    );
    // Inside [sshd], the only section: a line under another would not apply to it.
    assert_eq!(jail.matches('[').count(), 1, "{jail}");
    // Without operators the tailnet and loopback are still there.
    assert!(
        res()
            .jail()
            .contains("ignoreip = 127.0.0.1/8 ::1 100.64.0.0/10 fd7a:115c:a1e0::/48\n")
    );
    // ufw's configured tailnet ranges are the ones fail2ban ignores.
    let ufw = UfwSettings {
        tailscale_cidrs: vec!["100.100.0.0/16".parse().unwrap()],
        ..UfwSettings::default()
    };
    let r = Packages::new(&PackagesSettings::default(), &ufw);
    assert!(
        r.jail()
            .contains("ignoreip = 127.0.0.1/8 ::1 100.100.0.0/16\n")
    );
}

#[test]
fn jail_without_ignoreip_is_rewritten_and_fail2ban_restarted() {
    let ops: [IpAddr; 1] = ["198.51.100.9".parse().unwrap()];
    let r = res().with_operator_ips(&ops);
    let mut s = converged(&r);
    assert!(r.plan(&s).unwrap().steps.is_empty());
    // The jail an earlier version wrote: the same but for ignoreip.
    let old: String = r
        .jail()
        .lines()
        .filter(|l| !l.starts_with("ignoreip"))
        .map(|l| format!("{l}\n"))
        .collect();
    s.jail = Some(old.clone());
    let p = r.plan(&s).unwrap();
    assert_eq!(
        p.steps,
        vec![
            Step::Jail {
                old: Some(old),
                new: r.jail()
            },
            Step::Enable("fail2ban.service".into())
        ]
    );
    // A new operator address is a change too.
    s.jail = Some(r.jail());
    let more: [IpAddr; 2] = [ops[0], "203.0.113.4".parse().unwrap()];
    let r2 = res().with_operator_ips(&more);
    assert!(
        matches!(&r2.plan(&s).unwrap().steps[0], Step::Jail { new, .. } if new.contains("198.51.100.9 203.0.113.4"))
    );
}

#[test]
fn only_what_the_list_names_is_configured() {
    let r = Packages::new(
        &PackagesSettings {
            install: vec!["python3-systemd".into()],
            ..PackagesSettings::default()
        },
        &UfwSettings::default(),
    );
    let mut s = converged(&res());
    s.jail = None;
    s.auto_upgrades = None;
    s.active[0].1 = "inactive".into();
    assert!(r.plan(&s).unwrap().steps.is_empty());
}

#[test]
fn stopped_service_is_started() {
    let r = res();
    let mut s = converged(&r);
    s.active[1].1 = "inactive".into();
    assert_eq!(
        r.plan(&s).unwrap().steps,
        vec![Step::Enable("unattended-upgrades.service".into())]
    );
}
