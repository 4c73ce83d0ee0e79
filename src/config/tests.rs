use std::path::Path;

use super::*;

#[test]
fn empty_file_gives_runbook_defaults() {
    let c = parse("", None).unwrap();
    assert_eq!(c.hostname.name.0, "sapari-prod");
    assert_eq!(c.swap.path.0, PathBuf::from("/swapfile"));
    assert_eq!(c.swap.size, Size(4 << 30));
    assert!(c.ntp.require_sync);
}

#[test]
fn example_config_parses_and_equals_defaults_plus_ip() {
    let text = include_str!("../../examples/agent.toml");
    let c = parse(text, None).unwrap();
    let mut d = Config::default();
    d.access.operator_ips = c.access.operator_ips.clone();
    assert_eq!(c, d, "the example must document the defaults");
}

#[test]
fn unknown_key_names_file_line_and_field() {
    let text = "[swap]\nsize = \"2G\"\nsizee = \"4G\"\n";
    let e = parse(text, Some(Path::new("/etc/a.toml"))).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("/etc/a.toml:3:1"), "{msg}");
    assert!(msg.contains("sizee"), "{msg}");
    assert!(msg.contains("size"), "lists allowed keys: {msg}");
}

#[test]
fn bad_values_name_the_field_path() {
    each_names_its_field(&[
        ("[swap]\nsize = \"4X\"\n", "swap.size", "4X"),
        ("[hostname]\nname = \"-bad\"\n", "hostname.name", "hyphen"),
        ("[hostname]\nname = \"a_b\"\n", "hostname.name", "letters"),
        (
            "[access]\noperator_ips = [\"1.2.3\"]\n",
            "access.operator_ips",
            "",
        ),
        (
            "[ntp]\nsync_timeout = \"soon\"\n",
            "ntp.sync_timeout",
            "soon",
        ),
        ("[swap]\npath = \"swapfile\"\n", "swap.path", "absolute"),
        ("[users]\nname = \"Deploy\"\n", "users.name", "lowercase"),
        (
            "[users]\nauthorized_keys = [\"ssh-ed25519 AAAA!!\"]\n",
            "users.authorized_keys",
            "ssh-ed25519 AAAA!!",
        ),
        (
            "[users]\nauthorized_keys = [\"ssh-foo AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\"]\n",
            "users.authorized_keys",
            "invalid authorized key",
        ),
        (
            "[sshd]\ndrop_in = \"99-late.conf\"\n",
            "sshd.drop_in",
            "50-cloud-init.conf",
        ),
    ]);
}

/// Each config text fails, naming the field (a prefix), its line, and the needle.
fn each_names_its_field(cases: &[(&str, &str, &str)]) {
    for (text, field, needle) in cases {
        let e = parse(text, Some(Path::new("x.toml"))).unwrap_err();
        assert!(
            e.field.as_deref().unwrap_or("").starts_with(field),
            "{text}: {e}"
        );
        assert!(e.line_col.is_some(), "{text}: {e}");
        assert!(e.to_string().contains(needle), "{text}: {e}");
    }
}

#[test]
// Long only because the table is: one row per refused value and the field it must name.
fn bad_tags_interfaces_and_overrides_name_the_field() {
    each_names_its_field(&[
        (
            "[tailscale]\ntags = [\"tag:server\", \"server\"]\n",
            "tailscale.tags[1]",
            "tag:server",
        ),
        (
            "[tailscale]\ntags = [\"tag:\"]\n",
            "tailscale.tags[0]",
            "letter",
        ),
        (
            "[tailscale]\ntags = [\"tag:1ci\"]\n",
            "tailscale.tags[0]",
            "letter",
        ),
        (
            "[tailscale]\ntags = [\"tag:ci_x\"]\n",
            "tailscale.tags[0]",
            "`-`",
        ),
        (
            "[tailscale]\ntags = [\"tag:ci,tag:x\"]\n",
            "tailscale.tags[0]",
            "`-`",
        ),
        (
            "[ufw]\ntailscale_interface = \"eth0 -j ACCEPT\"\n",
            "ufw.tailscale_interface",
            "only letters",
        ),
        (
            "[ufw]\ntailscale_interface = \"\"\n",
            "ufw.tailscale_interface",
            "1 to 15",
        ),
        (
            "[firewall]\nwan_interface = \"-o\"\n",
            "firewall.wan_interface",
            "start with `-`",
        ),
        (
            "[firewall]\nwan_interface = \"eth0:1\"\n",
            "firewall.wan_interface",
            "only letters",
        ),
        (
            "[firewall]\nwan_interface = \"eth+\"\n",
            "firewall.wan_interface",
            "only letters",
        ),
        (
            "[firewall]\nwan_interface = \"a/b\"\n",
            "firewall.wan_interface",
            "only letters",
        ),
        (
            "[firewall]\nwan_interface = \"..\"\n",
            "firewall.wan_interface",
            "`..`",
        ),
        (
            "[firewall]\nwan_interface = \"a-very-long-ifname\"\n",
            "firewall.wan_interface",
            "1 to 15",
        ),
        (
            "[compose.overrides]\nWEB_MEMORY = \"5g\\nDEBUG=true\"\n",
            "compose.overrides.WEB_MEMORY",
            "line break",
        ),
        (
            "[compose.overrides]\nWEB_MEMORY = \"5g\\r\"\n",
            "compose.overrides.WEB_MEMORY",
            "line break",
        ),
        (
            "[compose.overrides]\nWEB_MEMORY = \"5g\\u0000\"\n",
            "compose.overrides.WEB_MEMORY",
            "NUL",
        ),
        (
            "[compose.overrides]\nX = \"it's\"\n",
            "compose.overrides.X",
            "single quote",
        ),
        (
            "[compose.overrides]\nX = 'a\\'\n",
            "compose.overrides.X",
            "backslash",
        ),
        (
            "[compose.overrides]\n\"1BAD\" = \"x\"\n",
            "compose.overrides",
            "`1BAD`",
        ),
        (
            "[compose.overrides]\n\"WEB MEMORY\" = \"x\"\n",
            "compose.overrides",
            "`WEB MEMORY`",
        ),
        (
            "[compose.overrides]\n\"A=B\" = \"x\"\n",
            "compose.overrides",
            "not an environment variable name",
        ),
    ]);
}

#[test]
fn good_tags_interfaces_and_overrides_are_kept() {
    let c = parse(
        concat!(
            "[tailscale]\ntags = [\"tag:server\", \"tag:ci-Runner2\"]\n",
            "[ufw]\ntailscale_interface = \"ts_0\"\n",
            "[firewall]\nwan_interface = \"enp1s0.100\"\n",
            "[compose.overrides]\nWEB_MEMORY = \"5g\"\n_X1 = \"a$b #c\\\\d\"\n",
        ),
        None,
    )
    .unwrap();
    assert_eq!(c.tailscale.tags, ["tag:server", "tag:ci-Runner2"]);
    assert_eq!(c.ufw.tailscale_interface, "ts_0");
    assert_eq!(c.firewall.wan_interface, "enp1s0.100");
    assert_eq!(c.compose.overrides["WEB_MEMORY"], "5g");
    assert_eq!(c.compose.overrides["_X1"], "a$b #c\\d");
    for ok in ["eth0", "wg@home", "br-1a2b", "a"] {
        assert!(check_interface_name(ok).is_ok(), "{ok}");
    }
    // Empty keeps its meaning: the default route's interface.
    let c = parse(
        "[firewall]\nwan_interface = \"\"\n[tailscale]\ntags = []\n",
        None,
    )
    .unwrap();
    assert!(c.firewall.wan_interface.is_empty() && c.tailscale.tags.is_empty());
}

#[test]
fn toml_syntax_error_has_position() {
    let e = parse("[swap\n", Some(Path::new("x.toml"))).unwrap_err();
    assert_eq!(e.line_col.map(|l| l.0), Some(1));
}

#[test]
fn authorized_keys_accept_options_and_types() {
    for k in [
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl me@laptop",
        "from=\"192.0.2.0/24\",no-agent-forwarding ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl",
    ] {
        assert!(k.parse::<AuthorizedKey>().is_ok(), "{k}");
    }
    assert!("".parse::<AuthorizedKey>().is_err());
    assert!("root".parse::<Username>().is_err());
}

#[test]
fn a_ca_file_others_can_write_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    let ca = d.path().join("ca.pem");
    std::fs::write(&ca, b"x").unwrap();
    std::fs::set_permissions(&ca, std::fs::Permissions::from_mode(0o666)).unwrap();
    let cfg = d.path().join("agent.toml");
    std::fs::write(
        &cfg,
        format!("[firewall]\nca_file = \"{}\"\n", ca.display()),
    )
    .unwrap();
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o600)).unwrap();
    let euid = nix::unistd::geteuid().as_raw();
    let e = load(Some(&cfg), euid).unwrap_err();
    assert_eq!(e.field.as_deref(), Some("firewall.ca_file"), "{e}");
    assert!(e.to_string().contains("chmod go-w"), "{e}");
    std::fs::set_permissions(&ca, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(load(Some(&cfg), euid).is_ok());
}

#[test]
fn an_empty_file_is_refused_as_truncated() {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("agent.toml");
    let euid = nix::unistd::geteuid().as_raw();
    for text in ["", " \n\n"] {
        std::fs::write(&cfg, text).unwrap();
        std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = load(Some(&cfg), euid).unwrap_err();
        assert!(e.to_string().contains("empty (truncated?)"), "{e}");
    }
    // Comments only (an example with every line commented out) is a choice, not damage.
    std::fs::write(&cfg, "# all defaults\n").unwrap();
    assert!(load(Some(&cfg), euid).is_ok());
}

#[test]
fn sizes() {
    assert_eq!("4G".parse::<Size>().unwrap(), Size(4 << 30));
    assert_eq!("512M".parse::<Size>().unwrap(), Size(512 << 20));
    assert_eq!("4GiB".parse::<Size>().unwrap(), Size(4 << 30));
    assert_eq!("1024".parse::<Size>().unwrap(), Size(1024));
    assert!("G".parse::<Size>().is_err());
    assert!("-1G".parse::<Size>().is_err());
    assert!("99999999999T".parse::<Size>().is_err());
    assert_eq!(Size(4 << 30).to_string(), "4G");
    assert_eq!(Size(1500).to_string(), "1500");
}

#[test]
fn hostnames() {
    for ok in ["sapari-prod", "a", "web-01.example.com", "0abc"] {
        assert!(ok.parse::<Hostname>().is_ok(), "{ok}");
    }
    let long = "a".repeat(64);
    for bad in ["", "-a", "a-", "a..b", "a b", "über", long.as_str()] {
        assert!(bad.parse::<Hostname>().is_err(), "{bad}");
    }
}

#[test]
fn overrides_validate_and_deduplicate() {
    let mut c = Config::default();
    apply_overrides(
        &mut c,
        &["192.0.2.50".into(), "192.0.2.50".into()],
        Some("web-1"),
    )
    .unwrap();
    assert_eq!(c.access.operator_ips.len(), 1);
    assert_eq!(c.hostname.name.0, "web-1");
    let e = apply_overrides(&mut c, &["nope".into()], None).unwrap_err();
    assert_eq!(e.field.as_deref(), Some("--my-ip"));
    let e = apply_overrides(&mut c, &[], Some("bad_name")).unwrap_err();
    assert_eq!(e.field.as_deref(), Some("--hostname"));
}

#[test]
fn ownership_rules() {
    let p = Path::new("/etc/sapari-agent/agent.toml");
    assert!(
        check_ownership(
            p,
            Ownership {
                uid: 0,
                mode: 0o100600
            },
            0
        )
        .is_ok()
    );
    assert!(
        check_ownership(
            p,
            Ownership {
                uid: 0,
                mode: 0o100644
            },
            0
        )
        .is_ok()
    );
    let e = check_ownership(
        p,
        Ownership {
            uid: 1000,
            mode: 0o100600,
        },
        0,
    )
    .unwrap_err();
    assert!(e.to_string().contains("chown root:root"));
    let e = check_ownership(
        p,
        Ownership {
            uid: 0,
            mode: 0o100666,
        },
        0,
    )
    .unwrap_err();
    assert!(e.to_string().contains("chmod go-w"));
    assert!(
        check_ownership(
            p,
            Ownership {
                uid: 1000,
                mode: 0o100644
            },
            1000
        )
        .is_ok()
    );
}
