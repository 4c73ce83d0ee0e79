use super::*;
use crate::config;

const SHA: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn artifact(url: &str) -> Artifact {
    parse_artifact(url, SHA).unwrap()
}

/// Reads back `content:` of the write_files entry for `path` the way YAML does for the
/// subset [`write_files_content`] emits (literal block with indicator 2, or b64).
fn decode_content(user_data: &str, path: &str) -> String {
    let lines: Vec<&str> = user_data.lines().collect();
    let start = lines
        .iter()
        .position(|l| *l == format!("  - path: {path}"))
        .unwrap_or_else(|| panic!("no write_files entry for {path}"));
    let mut i = start + 1;
    let mut b64 = false;
    loop {
        let l = lines[i];
        if l == "    encoding: b64" {
            b64 = true;
        }
        if let Some(v) = l.strip_prefix("    content: ") {
            if b64 {
                let bytes = base64ct::Base64::decode_vec(v).unwrap();
                return String::from_utf8(bytes).unwrap();
            }
            if v == "\"\"" {
                return String::new();
            }
            let chomp = v
                .strip_prefix("|2")
                .expect("literal block with indicator 2");
            let mut body: Vec<&str> = Vec::new();
            for l in &lines[i + 1..] {
                if l.is_empty() {
                    body.push("");
                } else if let Some(c) = l.strip_prefix("      ") {
                    body.push(c);
                } else {
                    break;
                }
            }
            let mut s: String = body.iter().map(|l| format!("{l}\n")).collect();
            match chomp {
                "-" => {
                    s.pop();
                }
                "" => {
                    while s.ends_with("\n\n") {
                        s.pop();
                    }
                }
                "+" => {}
                other => panic!("unexpected chomping {other:?}"),
            }
            return s;
        }
        i += 1;
    }
}

fn example() -> &'static str {
    include_str!("../../examples/agent.toml")
}

#[test]
fn binary_user_data_installs_units_pointing_at_local_bin() {
    let a = artifact("https://example.com/releases/0.1.0/sapari-agent-x86_64");
    assert_eq!(a.kind, Kind::Binary);
    let u = render_user_data(example(), &a).unwrap();
    assert!(u.starts_with("#cloud-config\n"), "{u}");
    assert!(u.len() <= USER_DATA_LIMIT);
    let script = decode_content(&u, BOOTSTRAP_PATH);
    assert!(script.starts_with("#!/bin/sh\n"));
    assert!(script.contains("KIND=binary\n"), "{script}");
    assert!(script.contains(&format!("SHA256={SHA}\n")));
    assert!(script.contains("URL='https://example.com/releases/0.1.0/sapari-agent-x86_64'\n"));
    for (name, text) in UNITS {
        assert!(
            script.contains(&format!("\"$units/{name}\"")),
            "{name} not written"
        );
        let local = local_unit(text);
        assert!(script.contains(&local), "{name} not verbatim");
        for l in local.lines().filter(|l| l.starts_with("Exec")) {
            assert!(
                l.contains(LOCAL_BIN) && !l.contains(PACKAGED_BIN),
                "{name}: {l}"
            );
        }
        assert!(
            !local.lines().any(|l| l == UNIT_EOF),
            "{name} contains the heredoc terminator"
        );
    }
    assert!(!u.contains(&format!("@{}", "UNITS@")), "placeholder left");
}

#[test]
fn the_repo_units_run_the_packaged_binary() {
    // If the units stop naming /usr/bin/sapari-agent, the rewrite to /usr/local/bin
    // silently does nothing and the binary install gets units that run nothing.
    for (name, text) in UNITS.iter().filter(|(n, _)| n.ends_with(".service")) {
        assert!(
            text.lines()
                .any(|l| l.starts_with("ExecStart=") && l.contains(PACKAGED_BIN)),
            "{name}"
        );
    }
}

#[test]
fn deb_user_data_installs_the_package_and_writes_no_units() {
    for url in [
        "https://example.com/sapari-agent_0.1.0_amd64.deb",
        "https://example.com/dl/sapari-agent_0.1.0_amd64.DEB?token=abc",
    ] {
        let a = artifact(url);
        assert_eq!(a.kind, Kind::Deb, "{url}");
        let u = render_user_data(example(), &a).unwrap();
        let script = decode_content(&u, BOOTSTRAP_PATH);
        assert!(script.contains("KIND=deb\n"));
        assert!(!script.contains("[Unit]"), "units in a .deb bootstrap");
        assert!(script.contains("apt-get install -y"));
    }
}

#[test]
fn exactly_one_runcmd_entry_runs_the_bootstrap() {
    let u = render_user_data(example(), &artifact("http://10.0.2.100/sapari-agent")).unwrap();
    let after: Vec<&str> = u
        .split_once("\nruncmd:\n")
        .expect("runcmd")
        .1
        .lines()
        .collect();
    assert_eq!(
        after,
        [format!("  - [/bin/sh, {BOOTSTRAP_PATH}]").as_str()],
        "{u}"
    );
    // top-level keys: only these two modules
    let keys: Vec<&str> = u
        .lines()
        .filter(|l| !l.starts_with([' ', '#']) && !l.is_empty())
        .collect();
    assert_eq!(keys, ["write_files:", "runcmd:"]);
}

#[test]
fn the_config_arrives_byte_for_byte() {
    let a = artifact("https://example.com/sapari-agent");
    let tricky = [
        example().to_string(),
        "[swap]\nsize = \"2G\"".to_string(), // no final newline
        "[swap]\nsize = \"2G\"\n\n\n".to_string(), // several
        "  # indented first line\n[swap]\n   \nsize = \"2G\"\n".to_string(),
        "# déjà vu, 日本\n[hostname]\nname = \"a\"\n".to_string(),
        "\n\n[swap]\nsize = \"2G\"\n".to_string(),
        "[swap]\n\tsize = \"2G\"\n".to_string(), // tab: base64
        "[swap]\r\nsize = \"2G\"\r\n".to_string(), // CRLF: base64
        "\n".to_string(),
        String::new(),
        "# @URL@ @SHA256@ @CONFIG@\n".to_string(), // placeholders are not expanded twice
    ];
    for t in tricky {
        let u = render_user_data(&t, &a).unwrap();
        assert_eq!(
            decode_content(&u, "/etc/sapari-agent/agent.toml"),
            t,
            "round trip of {t:?}\n{u}"
        );
    }
    let u = render_user_data("[swap]\n\tsize = \"2G\"\n", &a).unwrap();
    assert!(u.contains("    encoding: b64\n"));
    let u = render_user_data(example(), &a).unwrap();
    assert!(
        u.contains("      lock_timeout = \"2m\"\n"),
        "readable, not base64"
    );
}

#[test]
fn urls_and_hashes_are_checked() {
    for bad in [
        "ftp://example.com/a",
        "file:///tmp/sapari-agent",
        "example.com/sapari-agent",
        "",
        "https://",
    ] {
        let e = parse_artifact(bad, SHA).unwrap_err();
        assert_eq!(e.exit_code(), exit::USAGE, "{bad}: {e}");
        assert!(e.to_string().contains("--artifact-url"), "{e}");
    }
    for bad in [
        &SHA[1..],
        &format!("{SHA}0"),
        &SHA.replace('a', "g"),
        "",
        "sha256:abc",
    ] {
        let e = parse_artifact("https://example.com/a", bad).unwrap_err();
        assert_eq!(e.exit_code(), exit::USAGE, "{bad}");
        assert!(e.to_string().contains("64 hexadecimal digits"), "{e}");
    }
    let e = parse_artifact("https://example.com/a", &format!("{SHA}  sapari-agent")).unwrap_err();
    assert!(
        e.to_string().contains("without sha256sum's file name"),
        "{e}"
    );
    let a = parse_artifact(" https://Example.COM/a ", &SHA.to_uppercase()).unwrap();
    assert_eq!(a.sha256, SHA);
    assert_eq!(a.url, "https://example.com/a");
}

#[test]
fn a_url_with_quotes_stays_one_shell_word() {
    let a = artifact("https://example.com/it's/$(reboot)/a");
    let u = render_user_data("", &a).unwrap();
    let script = decode_content(&u, BOOTSTRAP_PATH);
    assert!(
        script.contains(r"URL='https://example.com/it'\''s/$(reboot)/a'"),
        "{script}"
    );
}

#[test]
fn oversized_user_data_is_refused_with_its_size() {
    let big = format!("# {}\n", "x".repeat(USER_DATA_LIMIT));
    let e = render_user_data(&big, &artifact("https://example.com/a")).unwrap_err();
    assert_eq!(e.exit_code(), exit::CONFIG);
    let m = e.to_string();
    assert!(m.contains("32768"), "{m}");
    assert!(m.contains(&format!("{} bytes of it", big.len())), "{m}");
}

#[test]
fn templates_have_only_known_placeholders() {
    let known = [
        "VERSION",
        "BOOTSTRAP_PATH",
        "URL_SH",
        "URL",
        "SHA256",
        "KIND",
        "UNITS",
        "CONFIG",
        "BOOTSTRAP",
    ];
    for t in [USER_DATA_TEMPLATE, BOOTSTRAP_TEMPLATE] {
        for (i, _) in t.match_indices('@') {
            let rest = &t[i + 1..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || *c == '_' || c.is_ascii_digit())
                .collect();
            if !name.is_empty() && rest[name.len()..].starts_with('@') {
                assert!(
                    known.contains(&name.as_str()),
                    "unknown placeholder @{name}@"
                );
            }
        }
    }
    let u = render_user_data(example(), &artifact("https://example.com/a")).unwrap();
    let script = decode_content(&u, BOOTSTRAP_PATH);
    for k in known {
        let p = format!("@{k}@");
        assert!(!u.contains(&p) && !script.contains(&p), "{p} left");
    }
}

#[test]
fn the_bootstrap_is_valid_sh() {
    for url in ["https://example.com/a", "https://example.com/a.deb"] {
        let u = render_user_data(example(), &artifact(url)).unwrap();
        let script = decode_content(&u, BOOTSTRAP_PATH);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bootstrap");
        std::fs::write(&p, &script).unwrap();
        // -n: parse only. The script is never run here: it installs and converges.
        let o = std::process::Command::new("sh")
            .arg("-n")
            .arg(&p)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{url}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

#[test]
fn output_is_deterministic() {
    let a = artifact("https://example.com/a");
    assert_eq!(
        render_user_data(example(), &a).unwrap(),
        render_user_data(example(), &a).unwrap()
    );
}

#[test]
fn warnings_name_what_will_fail_on_first_boot() {
    let c = config::parse(example(), None).unwrap();
    let w = warnings(&c);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].contains("tailscale"), "{w:?}");
    let mut c = Config::default();
    c.tailscale.enabled = false;
    c.users.import_root_keys = false;
    let w = warnings(&c).join("\n");
    assert!(w.contains("operator_ips"), "{w}");
    assert!(w.contains("import_root_keys"), "{w}");
}

#[test]
fn validate_file_ignores_ownership_but_not_content() {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("agent.toml");
    std::fs::write(&p, "[swap]\nsize = \"2G\"\n").unwrap();
    // group- and world-writable: load() refuses it, render has no business doing so
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o666)).unwrap();
    let (c, text) = config::validate_file(&p).unwrap();
    assert_eq!(c.swap.size, config::Size(2 << 30));
    assert_eq!(text, "[swap]\nsize = \"2G\"\n");
    std::fs::write(&p, "[swap]\nsize = \"2X\"\n").unwrap();
    let e = config::validate_file(&p).unwrap_err();
    assert_eq!(e.field.as_deref(), Some("swap.size"));
    assert!(config::validate_file(&d.path().join("missing.toml")).is_err());
}
