// Tests drive the machine from outside the agent: clippy.toml's boundary is the agent's.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]
//! `sapari-agent cloud-init render` as an operator runs it: stdout carries the user-data and
//! nothing else, every input is checked before anything is printed, and the exit codes are
//! the documented ones. No root needed: render only reads its config.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

const SHA: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const CONFIG: &str = "[access]\noperator_ips = [\"192.0.2.50\"]\n\n[tailscale]\nenabled = false\n";

fn render(config: &Path, url: &str, sha: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sapari-agent"))
        .args(["cloud-init", "render", "--config"])
        .arg(config)
        .args(["--artifact-url", url, "--sha256", sha])
        .output()
        .expect("run sapari-agent")
}

fn config_file(dir: &Path, text: &str) -> std::path::PathBuf {
    let p = dir.join("agent.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn prints_only_the_user_data() {
    let d = tempfile::tempdir().unwrap();
    let cfg = config_file(d.path(), CONFIG);
    // Written for another machine: its mode on the operator's laptop is not the agent's business.
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o666)).unwrap();
    let o = render(&cfg, "https://example.com/sapari-agent", SHA);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = String::from_utf8(o.stdout.clone()).unwrap();
    assert!(out.starts_with("#cloud-config\n"), "{out}");
    assert!(
        out.contains("      operator_ips = [\"192.0.2.50\"]\n"),
        "{out}"
    );
    assert!(out.ends_with("  - [/bin/sh, /usr/local/sbin/sapari-agent-bootstrap]\n"));
    assert!(
        stderr(&o).is_empty(),
        "no warnings expected: {}",
        stderr(&o)
    );
}

#[test]
fn warnings_go_to_stderr() {
    let d = tempfile::tempdir().unwrap();
    let cfg = config_file(d.path(), "[tailscale]\nenabled = false\n");
    let o = render(&cfg, "https://example.com/sapari-agent", SHA);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("warning: access.operator_ips is empty"));
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("#cloud-config\n"));
}

#[test]
fn a_bad_config_exits_78_naming_file_line_and_field() {
    let d = tempfile::tempdir().unwrap();
    let cfg = config_file(d.path(), "[swap]\nsize = \"4X\"\n");
    let o = render(&cfg, "https://example.com/sapari-agent", SHA);
    assert_eq!(o.status.code(), Some(78), "{}", stderr(&o));
    assert!(o.stdout.is_empty());
    let e = stderr(&o);
    assert!(
        e.contains(&format!("{}:2:8", cfg.display())) && e.contains("swap.size"),
        "{e}"
    );

    let o = render(
        &d.path().join("missing.toml"),
        "https://example.com/sapari-agent",
        SHA,
    );
    assert_eq!(o.status.code(), Some(78), "{}", stderr(&o));
    assert!(o.stdout.is_empty());
}

#[test]
fn bad_url_or_hash_exits_64() {
    let d = tempfile::tempdir().unwrap();
    let cfg = config_file(d.path(), CONFIG);
    for (url, sha, needle) in [
        ("ftp://example.com/a", SHA, "http:// or https://"),
        ("https://example.com/a", &SHA[..63], "64 hexadecimal digits"),
        (
            "https://example.com/a",
            "not-a-hash",
            "64 hexadecimal digits",
        ),
    ] {
        let o = render(&cfg, url, sha);
        assert_eq!(o.status.code(), Some(64), "{url} {sha}: {}", stderr(&o));
        assert!(o.stdout.is_empty());
        assert!(stderr(&o).contains(needle), "{}", stderr(&o));
    }
    let o = Command::new(env!("CARGO_BIN_EXE_sapari-agent"))
        .args(["cloud-init", "render", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(64),
        "missing arguments are usage errors"
    );
}

#[test]
fn user_data_over_32_kib_exits_78_with_its_size() {
    let d = tempfile::tempdir().unwrap();
    let cfg = config_file(
        d.path(),
        &format!("{CONFIG}{}", "# a long comment line\n".repeat(1600)),
    );
    let o = render(&cfg, "https://example.com/sapari-agent", SHA);
    assert_eq!(o.status.code(), Some(78), "{}", stderr(&o));
    assert!(o.stdout.is_empty());
    let e = stderr(&o);
    assert!(e.contains("32768") && e.contains("bytes"), "{e}");
}

/// contrib/hcloud/render.sh as the provisioning example runs it: one user-data per server
/// config in contrib/hcloud/hosts, each a `#cloud-config` carrying that server's own name and
/// under Hetzner's 32 KiB limit (the part that can run here: hcloud and Terraform cannot).
#[test]
fn the_fleet_example_renders_every_server_under_32_kib() {
    let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/hcloud");
    let out = tempfile::tempdir().unwrap();
    let o = Command::new("sh")
        .arg(here.join("render.sh"))
        .args(["https://downloads.example.com/sapari-agent-0.1.0", SHA])
        .arg(env!("CARGO_BIN_EXE_sapari-agent"))
        .env("SAPARI_RENDER_OUT", out.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let mut hosts: Vec<String> = std::fs::read_dir(here.join("hosts"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter_map(|n| n.strip_suffix(".toml").map(String::from))
        .collect();
    hosts.sort();
    assert!(hosts.len() >= 2, "the example is a fleet: {hosts:?}");
    for h in &hosts {
        let ud = std::fs::read_to_string(out.path().join(format!("{h}.yaml"))).unwrap();
        assert!(ud.starts_with("#cloud-config\n"), "{h}");
        assert!(
            ud.contains(&format!("name = \"{h}\"")),
            "{h}: its own hostname in its agent.toml"
        );
        assert!(
            ud.len() < 32 * 1024,
            "{h}: {} bytes of user-data, over Hetzner's 32 KiB",
            ud.len()
        );
        eprintln!("{h}: {} bytes", ud.len());
    }
    let rendered = std::fs::read_dir(out.path()).unwrap().count();
    assert_eq!(rendered, hosts.len(), "one user-data per server");
}
