use super::*;

const REAL: &str = "### tuple ### allow tcp 443 0.0.0.0/0 any 0.0.0.0/0 in comment=7361706172692d6167656e74\n-A ufw-user-input -p tcp --dport 443 -j ACCEPT\n### tuple ### allow tcp 22 0.0.0.0/0 any 192.0.2.50 in comment=7361706172692d6167656e74\n### tuple ### allow tcp 22 0.0.0.0/0 any 0.0.0.0/0 in_tailscale0 comment=7361706172692d6167656e74\n";

fn op() -> IpAddr {
    "192.0.2.50".parse().unwrap()
}

fn res(ctx: RunContext) -> Ufw {
    Ufw::new(&UfwSettings::default(), &[op()], &ctx)
}

/// ufw installed, never enabled, no rules: a fresh cloud image.
fn fresh() -> State {
    State {
        installed: true,
        enabled: false,
        ipv6: true,
        ipv6_from: "IPV6=yes".into(),
        kernel_ipv6: true,
        input_policy: "ACCEPT".into(),
        output_policy: "ACCEPT".into(),
        rules: vec![],
        reload_pending: false,
    }
}

fn converged(r: &Ufw) -> State {
    State {
        installed: true,
        enabled: true,
        ipv6: true,
        ipv6_from: "IPV6=yes".into(),
        kernel_ipv6: true,
        input_policy: "DROP".into(),
        output_policy: "ACCEPT".into(),
        rules: r.desired(true),
        reload_pending: false,
    }
}

#[test]
fn parses_real_user_rules() {
    let t = parse_tuples(REAL, false);
    assert_eq!(t.len(), 3);
    assert_eq!(t[1].src, "192.0.2.50");
    assert_eq!(t[2].iface(), Some("tailscale0"));
    let r = res(RunContext::default());
    let d = r.desired(false);
    assert!(
        d.contains(&t[0]) && d.contains(&t[1]) && d.contains(&t[2]),
        "{d:?}"
    );
}

#[test]
fn desired_rules_have_no_port_80_and_cover_both_families() {
    let d = res(RunContext::default()).desired(true);
    assert!(d.iter().all(|t| t.dport != "80"));
    assert_eq!(d.iter().filter(|t| t.dport == "443").count(), 4);
    assert_eq!(
        d.iter().filter(|t| t.src == "192.0.2.50").count(),
        1,
        "v4 operator only in v4"
    );
    let cidr = Ufw::new(
        &UfwSettings {
            tailscale: TailscaleSsh::Cidr,
            ..UfwSettings::default()
        },
        &[op()],
        &RunContext::default(),
    );
    let d = cidr.desired(true);
    assert!(d.iter().any(|t| t.src == "100.64.0.0/10" && !t.v6));
    assert!(d.iter().any(|t| t.src == "fd7a:115c:a1e0::/48" && t.v6));
}

#[test]
fn fresh_box_adds_rules_before_deny_and_enable() {
    let r = res(RunContext::default());
    let s = fresh();
    let p = r.plan(&s).unwrap();
    let adds = p.steps.iter().filter(|s| matches!(s, Step::Add(_))).count();
    assert_eq!(adds, r.desired(true).len());
    assert_eq!(
        p.steps[p.steps.len() - 2],
        Step::DefaultIncoming {
            from: "allow".into()
        }
    );
    assert_eq!(p.steps.last(), Some(&Step::Enable));
}

#[test]
fn converged_plans_nothing_and_foreign_rules_are_drift() {
    let r = res(RunContext::default());
    let mut s = converged(&r);
    assert!(r.plan(&s).unwrap().steps.is_empty());
    let http = Tuple::allow_in("tcp", 80, None, None, false);
    s.rules.push(http.clone());
    let p = r.plan(&s).unwrap();
    assert!(p.steps.is_empty());
    assert!(
        p.notes[0].contains("allow 80/tcp from anywhere (v4)"),
        "{:?}",
        p.notes
    );
    let prune = Ufw::new(
        &UfwSettings {
            prune: true,
            ..UfwSettings::default()
        },
        &[op()],
        &RunContext::default(),
    );
    assert_eq!(prune.plan(&s).unwrap().steps, vec![Step::Delete(http)]);
}

#[test]
fn ufw_arguments() {
    let t = Tuple::allow_in(
        "tcp",
        22,
        Some("192.0.2.50/32".parse().unwrap()),
        None,
        false,
    );
    assert_eq!(
        t.ufw_args().join(" "),
        "allow in proto tcp from 192.0.2.50 to 0.0.0.0/0 port 22"
    );
    let t = Tuple::allow_in("tcp", 22, None, Some("tailscale0"), true);
    assert_eq!(
        t.ufw_args().join(" "),
        "allow in on tailscale0 proto tcp from ::/0 to ::/0 port 22"
    );
}

#[test]
fn ssh_guard_refuses_a_rule_set_without_the_client() {
    let ctx = RunContext {
        force: false,
        ssh_client: Some("198.51.100.7".parse().unwrap()),
        ..RunContext::default()
    };
    let r = res(ctx.clone());
    let s = fresh();
    let e = r.plan(&s).unwrap_err().to_string();
    assert!(e.contains("198.51.100.7") && e.contains("--force"), "{e}");
    // The operator's own address, a tailnet address, or --force: allowed.
    for client in ["192.0.2.50", "100.100.1.2"] {
        let r = res(RunContext {
            force: false,
            ssh_client: Some(client.parse().unwrap()),
            ..RunContext::default()
        });
        assert!(r.plan(&s).is_ok(), "{client}");
    }
    assert!(res(RunContext { force: true, ..ctx }).plan(&s).is_ok());
}

#[test]
fn no_operator_ip_is_refused_unless_tailscale_only_is_intended() {
    let s = converged(&res(RunContext::default()));
    let r = Ufw::new(&UfwSettings::default(), &[], &RunContext::default());
    assert!(r.plan(&s).unwrap_err().to_string().contains("--my-ip"));
    let r = Ufw::new(
        &UfwSettings {
            ssh_only_via_tailscale: true,
            ..UfwSettings::default()
        },
        &[],
        &RunContext::default(),
    );
    assert!(r.plan(&s).is_ok());
}

#[test]
fn shell_vars() {
    let t = "IPV6=yes\nDEFAULT_INPUT_POLICY=\"DROP\"\n";
    assert_eq!(
        shell_var(t, "DEFAULT_INPUT_POLICY").as_deref(),
        Some("DROP")
    );
    assert_eq!(shell_var(t, "NOPE"), None);
}

/// /etc/default/ufw as Debian 12's ufw 0.36.2 ships it, up to the first policy.
const DEBIAN_DEFAULTS: &str = "# /etc/default/ufw\n#\n\n# Set to yes to apply rules to support IPv6 (no means only IPv6 on loopback\n# accepted). You will need to 'disable' and then 'enable' the firewall for\n# the changes to take affect.\nIPV6=yes\n\n# Set the default input policy to ACCEPT, DROP, or REJECT. Please note that if\n# you change this you will most likely want to adjust your rules.\nDEFAULT_INPUT_POLICY=\"DROP\"\n";

#[test]
fn ipv6_setting_is_read_as_ufw_init_sources_it() {
    assert!(ipv6_on(DEBIAN_DEFAULTS));
    assert!(ipv6_on("IPV6=\"yes\"\n"));
    assert!(ipv6_on("IPV6=YES\n"));
    assert!(ipv6_on("  export IPV6=yes # v6 too\n"));
    let off = DEBIAN_DEFAULTS.replace("IPV6=yes", "IPV6=no");
    assert!(!ipv6_on(&off));
    assert!(!ipv6_on(""), "unset: ufw treats IPv6 as off");
    assert!(!ipv6_on("# IPV6=yes\n"), "a comment is not a setting");
    assert!(!ipv6_on("IPV6=Yes\n"), "ufw-init accepts only yes/YES");
    assert!(!ipv6_on("IPV6=yes\nIPV6=no\n"));
    assert!(!ipv6_on("IPV6=no\nIPV6=yes\n"), "conflicting: rewritten");
    assert!(!ipv6_on("IPV6S=yes\n"));
    assert_eq!(
        ipv6_words(Some(&off)),
        "IPV6=no: ufw does not filter IPv6: while active it drops all IPv6 but loopback, in and out"
    );
    assert_eq!(
        ipv6_words(Some("IPV6=no\n  IPV6=yes\n")),
        format!("IPV6=no, IPV6=yes (conflicting): {IPV6_OFF}")
    );
    assert_eq!(ipv6_words(Some("")), format!("IPV6 not set: {IPV6_OFF}"));
    assert_eq!(ipv6_words(None), "no /etc/default/ufw (ufw not installed)");
}

#[test]
fn ipv6_yes_edits_only_that_variable() {
    let off = DEBIAN_DEFAULTS.replace("IPV6=yes", "IPV6=no");
    assert_eq!(with_ipv6_yes(&off), DEBIAN_DEFAULTS);
    assert_eq!(with_ipv6_yes(DEBIAN_DEFAULTS), DEBIAN_DEFAULTS);
    // every assignment, whatever its form; comments and other variables kept
    assert_eq!(
        with_ipv6_yes("# IPV6=no\nIPV6=no\r\nA=1\n  export IPV6=\"no\" # x\nIPV6=no"),
        "# IPV6=no\nIPV6=yes\r\nA=1\nIPV6=yes\nIPV6=yes\n"
    );
    // absent: appended
    assert_eq!(
        with_ipv6_yes("DEFAULT_INPUT_POLICY=\"DROP\""),
        "DEFAULT_INPUT_POLICY=\"DROP\"\nIPV6=yes\n"
    );
    assert_eq!(with_ipv6_yes(""), "IPV6=yes\n");
    for t in ["", "IPV6=no\n", "IPV6=no\nIPV6=yes\n", "IPV6=Yes"] {
        assert!(ipv6_on(&with_ipv6_yes(t)), "{t:?}");
    }
}

#[test]
fn ipv6_off_is_a_change_then_the_v6_rules() {
    let r = res(RunContext::default());
    // active ufw, every v4 rule in place, IPV6=no: v6 had no filtering at all
    let mut s = converged(&r);
    s.ipv6 = false;
    s.ipv6_from = ipv6_words(Some("IPV6=no\n"));
    s.rules.retain(|t| !t.v6);
    let p = r.plan(&s).unwrap();
    assert_eq!(
        p.steps[0],
        Step::Ipv6 {
            from: format!("IPV6=no: {IPV6_OFF}"),
            reload: true
        }
    );
    let v6: Vec<Tuple> = r.desired(true).into_iter().filter(|t| t.v6).collect();
    assert!(!v6.is_empty());
    assert_eq!(
        p.steps[1..].to_vec(),
        v6.into_iter().map(Step::Add).collect::<Vec<_>>()
    );
    let c = p.steps[0].change();
    assert_eq!(c.what, "IPv6 filtering (/etc/default/ufw)");
    assert_eq!(c.from, Some(format!("IPV6=no: {IPV6_OFF}")));
    let to = c.to.unwrap();
    assert!(
        to.starts_with("IPV6=yes, then `ufw reload`") && to.contains("harmless"),
        "{to}"
    );
    assert!(p.notes.is_empty(), "{:?}", p.notes);
    // not active yet: no reload, `ufw enable` loads both families
    let mut f = fresh();
    f.ipv6 = false;
    let p = r.plan(&f).unwrap();
    assert!(matches!(p.steps[0], Step::Ipv6 { reload: false, .. }));
    assert_eq!(p.steps.last(), Some(&Step::Enable));
    assert!(!p.steps[0].change().to.unwrap().contains("reload"));
    // not installed: install, then make sure of IPV6=yes
    f.installed = false;
    let p = r.plan(&f).unwrap();
    assert_eq!(p.steps[0], Step::Install);
    assert!(matches!(p.steps[1], Step::Ipv6 { reload: false, .. }));
    // converged
    assert!(r.plan(&converged(&r)).unwrap().steps.is_empty());
    // the check says so
    let checks = r.checks(&s);
    let c = checks.iter().find(|c| c.name == "ufw IPv6").unwrap();
    assert_eq!(c.level, Level::Fail);
    assert!(c.detail.contains("IPV6=no"), "{}", c.detail);
    let checks = r.checks(&converged(&r));
    let c = checks.iter().find(|c| c.name == "ufw IPv6").unwrap();
    assert_eq!(c.level, Level::Pass);
}

#[test]
fn without_ipv6_in_the_kernel_only_v4_rules_are_managed() {
    let r = res(RunContext::default());
    let mut s = converged(&r);
    s.kernel_ipv6 = false;
    s.ipv6 = false;
    s.rules.retain(|t| !t.v6);
    // a leftover v6 rule: ufw could not delete it, so it is not even "foreign"
    s.rules.push(Tuple::allow_in("tcp", 80, None, None, true));
    let prune = Ufw::new(
        &UfwSettings {
            prune: true,
            ..UfwSettings::default()
        },
        &[op()],
        &RunContext::default(),
    );
    let p = prune.plan(&s).unwrap();
    assert!(
        matches!(p.steps.as_slice(), [Step::Ipv6 { reload: true, .. }]),
        "{:?}",
        p.steps
    );
    assert!(p.notes[0].contains("/proc/sys/net/ipv6"), "{:?}", p.notes);
    s.ipv6 = true;
    assert!(prune.plan(&s).unwrap().steps.is_empty());
}

#[test]
fn a_run_stopped_before_ufw_loaded_its_files_is_reloaded() {
    let r = res(RunContext::default());
    let mut s = converged(&r);
    assert!(r.plan(&s).unwrap().steps.is_empty());
    s.reload_pending = true;
    let p = r.plan(&s).unwrap();
    assert_eq!(p.steps, vec![Step::Reload]);
    assert!(
        p.notes.iter().any(|n| n.contains("stopped before")),
        "{:?}",
        p.notes
    );
}

#[test]
fn an_interactive_run_without_a_known_client_says_so() {
    let r = res(RunContext {
        interactive: true,
        ..RunContext::default()
    });
    let p = r.plan(&fresh()).unwrap();
    assert!(
        p.notes
            .iter()
            .any(|n| n.contains("SSH client could not be found")),
        "{:?}",
        p.notes
    );
}

/// apply performs the steps in the plan's order, so the plan itself must be in the safe
/// order: install, IPV6=yes, allow rules, deletions, the defaults (deny incoming last),
/// enable.
#[test]
fn plan_is_in_apply_order() {
    let r = Ufw::new(
        &UfwSettings {
            prune: true,
            ..UfwSettings::default()
        },
        &[op()],
        &RunContext::default(),
    );
    let mut s = fresh();
    s.installed = false;
    s.ipv6 = false;
    s.ipv6_from = "IPV6=no".into();
    s.input_policy = String::new();
    s.output_policy = "DROP".into();
    s.rules = parse_tuples(
        "### tuple ### allow tcp 8080 0.0.0.0/0 any 0.0.0.0/0 in\n",
        false,
    );
    let p = r.plan(&s).unwrap();
    let kind = |s: &Step| match s {
        Step::Install => "install",
        Step::Ipv6 { .. } => "ipv6",
        Step::Add(_) => "add",
        Step::Delete(_) => "delete",
        Step::DefaultOutgoing { .. } => "outgoing",
        Step::DefaultIncoming { .. } => "incoming",
        Step::Enable => "enable",
        Step::Reload => "reload",
    };
    let mut kinds: Vec<&str> = p.steps.iter().map(kind).collect();
    kinds.dedup();
    assert_eq!(
        kinds,
        [
            "install", "ipv6", "add", "delete", "outgoing", "incoming", "enable"
        ]
    );
}
