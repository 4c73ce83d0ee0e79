use std::os::unix::fs::MetadataExt;

use super::*;
use crate::host::Access;

fn owner(home: &Path) -> Owner {
    Owner {
        name: "deploy".into(),
        uid: 1000,
        gid: 1000,
        home: home.to_path_buf(),
    }
}

fn res() -> DeployKey {
    DeployKey::new(&DeployKeySettings::default(), &UsersSettings::default())
}

fn entry(kind: Kind, mode: u32) -> Entry {
    Entry {
        kind,
        spec: FileSpec {
            mode,
            uid: 1000,
            gid: 1000,
        },
        size: 0,
    }
}

fn text(mode: u32, text: &str) -> Option<TextFile> {
    Some(TextFile {
        entry: entry(Kind::File, mode),
        text: text.into(),
    })
}

const HOME: &str = "/home/deploy";
const KEY: &str = "/home/deploy/.ssh/github_deploy_key";

fn fresh() -> State {
    State {
        user: Some(owner(Path::new(HOME))),
        home: Some(entry(Kind::Dir, 0o750)),
        ..State::default()
    }
}

fn github_lines() -> Vec<String> {
    verified_known_hosts_lines(&GITHUB_HOST_KEYS).unwrap()
}

/// A converged state around a freshly generated key.
fn converged() -> (State, String) {
    let key = new_key("sapari-prod deploy key").unwrap();
    let info = KeyInfo::of(&key);
    let line = info.public_line("x").unwrap();
    let s = State {
        ssh_dir: Some(entry(Kind::Dir, 0o700)),
        private: Some(PrivateKeyFile {
            entry: entry(Kind::File, 0o600),
            key: Ok(info),
        }),
        public: text(0o644, &format!("{line}\n")),
        known_hosts: text(0o644, &merge_known_hosts("", &github_lines())),
        config: text(0o600, &merge_ssh_config("", Path::new(KEY)).unwrap()),
        ..fresh()
    };
    (s, line)
}

fn no_private_material(plan: &Plan<Step>) {
    let json = serde_json::to_string(&plan.steps.iter().map(Describe::change).collect::<Vec<_>>())
        .unwrap();
    for text in [json, plan.notes.join("\n")] {
        assert!(!text.contains("PRIVATE KEY"), "{text}");
        assert!(!text.contains("b3BlbnNzaC1rZXktdjE"), "{text}");
    }
}

#[test]
fn embedded_github_keys_match_published_fingerprints() {
    let published = [
        "SHA256:+DiY3wvvV6TuJJhbpZisF/zLDA0zPMSvHdkr4UvCOqU",
        "SHA256:p2QAMXNIC1TJYWeIOttrVc98/R1BUFWu3/LiyKgUfQM",
        "SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s",
    ];
    for (k, fp) in GITHUB_HOST_KEYS.iter().zip(published) {
        assert_eq!(k.fingerprint, fp);
        assert_eq!(sha256_fingerprint(k.algorithm, k.key).unwrap(), fp);
        // Cross-check with ssh-key where this build can decode the type (its `ecdsa`
        // feature is off, so it cannot parse the ECDSA key).
        if k.algorithm != "ecdsa-sha2-nistp256" {
            let pk = PublicKey::from_openssh(&format!("{} {}", k.algorithm, k.key)).unwrap();
            assert_eq!(
                pk.fingerprint(ssh_key::HashAlg::Sha256).to_string(),
                fp,
                "{}",
                k.algorithm
            );
        }
    }
    assert_eq!(
        github_lines()[0],
        "github.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
    );
}

#[test]
fn ssh_keygen_agrees_on_github_fingerprints() {
    let keygen = Path::new("/usr/bin/ssh-keygen");
    if !keygen.exists() {
        eprintln!("ssh-keygen not installed; skipped");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("known_hosts");
    std::fs::write(&f, merge_known_hosts("", &github_lines())).unwrap();
    let out = std::process::Command::new(keygen)
        .arg("-lf")
        .arg(&f)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&out.stdout);
    for k in GITHUB_HOST_KEYS {
        assert!(out.contains(k.fingerprint), "{out}");
    }
}

#[test]
fn tampered_host_key_is_refused() {
    let mut k = GITHUB_HOST_KEYS[0];
    k.key = "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJm";
    let e = verified_known_hosts_lines(&[GITHUB_HOST_KEYS[1], k]).unwrap_err();
    assert!(e.to_string().contains("+DiY3wvvV6TuJJhbpZisF"), "{e}");
    let mut k = GITHUB_HOST_KEYS[0];
    k.algorithm = "ssh-rsa";
    assert!(verified_known_hosts_lines(&[k]).is_err());
    assert!(sha256_fingerprint("ssh-ed25519", "!!").is_err());
    assert!(sha256_fingerprint("ssh-ed25519", "AAAA").is_err());
}

#[test]
fn fresh_user_generates_key_known_hosts_and_config() {
    let p = res().plan(&fresh()).unwrap();
    let paths: Vec<&Path> = p.steps.iter().map(Step::path).collect();
    assert_eq!(
        paths,
        [
            Path::new("/home/deploy/.ssh"),
            Path::new(KEY),
            Path::new("/home/deploy/.ssh/known_hosts"),
            Path::new("/home/deploy/.ssh/config"),
        ]
    );
    assert!(
        matches!(&p.steps[0], Step::CreateDir { to, .. } if to.mode == 0o700 && to.uid == 1000)
    );
    let gen_change = p.steps[1].change();
    assert_eq!(gen_change.what, format!("deploy key {KEY}"));
    assert_eq!(gen_change.from.as_deref(), Some("absent"));
    assert_eq!(gen_change.to.as_deref(), Some("ed25519 (generated)"));
    assert!(matches!(&p.steps[1], Step::Generate { comment, public, .. }
            if comment == "sapari-prod deploy key" && public == Path::new("/home/deploy/.ssh/github_deploy_key.pub")));
    let Step::Write {
        new, old: None, to, ..
    } = &p.steps[2]
    else {
        panic!("{:?}", p.steps[2])
    };
    assert_eq!(new.lines().count(), 3);
    assert_eq!(to.mode, 0o644);
    let Step::Write {
        new, old: None, to, ..
    } = &p.steps[3]
    else {
        panic!("{:?}", p.steps[3])
    };
    assert!(new.starts_with(BEGIN_MARKER));
    assert!(new.contains(&format!("IdentityFile {KEY}\n")));
    assert!(new.contains("IdentitiesOnly yes\n"));
    assert_eq!(to.mode, 0o600);
    // ~/.ssh/config is the user's file: the report gets line counts, not its content.
    assert!(p.steps[3].change().diff.is_none());
    assert!(
        p.notes.iter().any(|n| n.contains("will be generated")),
        "{:?}",
        p.notes
    );
    no_private_material(&p);
}

#[test]
fn converged_state_plans_nothing_and_prints_public_key() {
    let (s, line) = converged();
    let p = res().plan(&s).unwrap();
    assert!(p.steps.is_empty(), "{:?}", p.steps);
    assert!(line.starts_with("ssh-ed25519 AAAA") && line.ends_with(" sapari-prod deploy key"));
    assert!(p.notes.contains(&public_note(&line)), "{:?}", p.notes);
    let c = res().checks(&s);
    assert!(c.iter().all(|c| c.level == Level::Pass), "{c:?}");
    assert!(c[0].detail.contains(&line));
    no_private_material(&p);
}

#[test]
fn missing_pub_is_derived_from_the_private_key() {
    let (mut s, line) = converged();
    s.public = None;
    let p = res().plan(&s).unwrap();
    assert_eq!(
        p.steps,
        [Step::Write {
            path: PathBuf::from(format!("{KEY}.pub")),
            old: None,
            new: format!("{line}\n"),
            to: FileSpec {
                mode: 0o644,
                uid: 1000,
                gid: 1000
            },
        }]
    );
    // Another key in the .pub: replaced by the private key's public half.
    let (other, _) = converged();
    s.public = other.public;
    let p = res().plan(&s).unwrap();
    assert!(
        matches!(&p.steps[..], [Step::Write { new, old: Some(_), .. }] if *new == format!("{line}\n"))
    );
    // Same key, other comment: left alone.
    let bare: Vec<&str> = line.split(' ').take(2).collect();
    s.public = text(0o644, &format!("{} renamed\n", bare.join(" ")));
    assert!(res().plan(&s).unwrap().steps.is_empty());
}

#[test]
fn unparsable_private_key_fails_and_writes_nothing() {
    let (mut s, _) = converged();
    let why = PrivateKey::from_openssh("-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n")
        .unwrap_err()
        .to_string();
    s.private = Some(PrivateKeyFile {
        entry: entry(Kind::File, 0o600),
        key: Err(why),
    });
    s.public = None;
    let e = res().plan(&s).unwrap_err().to_string();
    assert!(e.contains(KEY), "{e}");
    assert!(e.contains("move it aside"), "{e}");
    assert!(e.contains(HINT), "{e}");
    let c = res().checks(&s);
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].level, Level::Fail);
}

#[test]
fn wrong_modes_are_fixed_in_place() {
    let (mut s, _) = converged();
    s.private.as_mut().unwrap().entry.spec.mode = 0o644;
    s.ssh_dir = Some(Entry {
        kind: Kind::Dir,
        spec: FileSpec {
            mode: 0o755,
            uid: 0,
            gid: 0,
        },
        size: 0,
    });
    let p = res().plan(&s).unwrap();
    assert_eq!(p.steps.len(), 2);
    let c = p.steps[0].change();
    assert_eq!(c.what, "/home/deploy/.ssh mode/owner");
    assert_eq!(c.from.as_deref(), Some("0755 0:0"));
    assert_eq!(c.to.as_deref(), Some("0700 1000:1000"));
    assert_eq!(p.steps[1].change().to.as_deref(), Some("0600 1000:1000"));
    let c = res().checks(&s);
    assert_eq!(c[0].level, Level::Warn);
    assert_eq!(c[0].hint, HINT);
    assert!(c[0].detail.contains("ssh-ed25519 AAAA"), "{}", c[0].detail);
    assert_eq!(c[1].level, Level::Pass);
}

#[test]
fn passphrase_protected_key_is_kept_with_a_note() {
    let (mut s, _) = converged();
    let f = s.private.as_mut().unwrap();
    f.key.as_mut().unwrap().encrypted = true;
    let p = res().plan(&s).unwrap();
    assert!(p.steps.is_empty());
    assert!(
        p.notes.iter().any(|n| n.contains("passphrase")),
        "{:?}",
        p.notes
    );
}

#[test]
fn links_are_refused() {
    let (mut s, _) = converged();
    s.ssh_dir = Some(entry(Kind::Symlink, 0o777));
    let e = res().plan(&s).unwrap_err().to_string();
    assert!(e.contains("symbolic link"), "{e}");
    let (mut s, _) = converged();
    s.config.as_mut().unwrap().entry.kind = Kind::Symlink;
    assert!(res().plan(&s).is_err());
}

#[test]
fn known_hosts_keeps_other_lines_and_does_not_duplicate() {
    let before = "# mine\n\
            gitlab.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAfuCHKVTjquxvt6CM6tdG4SLp1Btn/nOeHHE5UOzRdf\n\
            github.com ssh-rsa AAAAB3NzaC1yc2EAAAABIwAAAQEAq2A7hRGmdnm9tUDbO9IDSwBK6TbQa old\n\
            GitHub.com,140.82.121.4 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n\
            @revoked github.com ssh-rsa AAAAB3NzaC1yc2EAAAABIwAAAQEAq2A7hRGmdnm9tUDbO9IDSwBK6TbQa\n\
            [github.com]:443 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";
    let ours = github_lines();
    let after = merge_known_hosts(before, &ours);
    let lines: Vec<&str> = after.lines().collect();
    assert_eq!(lines[0], "# mine");
    assert!(lines[1].starts_with("gitlab.com "));
    assert_eq!(
        &lines[2..5],
        ours.iter().map(String::as_str).collect::<Vec<_>>()
    );
    assert!(lines[5].starts_with("140.82.121.4 ssh-ed25519 AAAAC3"));
    assert!(lines[6].starts_with("@revoked github.com"));
    assert!(lines[7].starts_with("[github.com]:443"));
    assert_eq!(lines.len(), 8);
    assert_eq!(merge_known_hosts(&after, &ours), after, "idempotent");
    assert_eq!(
        merge_known_hosts("", &ours),
        format!("{}\n", ours.join("\n"))
    );

    let (mut s, _) = converged();
    s.known_hosts = text(0o644, before);
    let p = res().plan(&s).unwrap();
    assert!(matches!(&p.steps[..], [Step::Write { new, .. }] if *new == after));
    s.known_hosts = text(0o644, &after);
    assert!(res().plan(&s).unwrap().steps.is_empty());
}

#[test]
fn ssh_config_keeps_existing_blocks_below_ours() {
    let key = Path::new(KEY);
    let before = "Host *\n    ServerAliveInterval 60\n\nHost web\n    User ops\n";
    let after = merge_ssh_config(before, key).unwrap();
    assert!(after.starts_with(BEGIN_MARKER));
    assert!(
        after.ends_with(&format!("{END_MARKER}\n\n{before}")),
        "{after}"
    );
    assert!(!after.contains("Match all"));
    assert_eq!(merge_ssh_config(&after, key).unwrap(), after, "idempotent");

    // Options before the first Host applied to every host; they still must.
    let globals = "# defaults\nServerAliveInterval 60\nHost web\n  User ops";
    let after = merge_ssh_config(globals, key).unwrap();
    assert!(
        after.contains(&format!("Match all\n{END_MARKER}\n\n{globals}\n")),
        "{after}"
    );
    assert_eq!(merge_ssh_config(&after, key).unwrap(), after);

    // Our block further down (edited by hand) moves back to the top, once.
    let moved = format!("Host web\n  User ops\n{}", config_block(key, false));
    let after = merge_ssh_config(&moved, key).unwrap();
    assert_eq!(after.matches(BEGIN_MARKER).count(), 1);
    assert!(after.starts_with(BEGIN_MARKER) && after.ends_with("Host web\n  User ops\n"));

    // A custom path with a `%` is escaped for ssh's token expansion.
    assert!(config_block(Path::new("/srv/k%h"), false).contains("IdentityFile /srv/k%%h\n"));

    for broken in [
        format!("{BEGIN_MARKER}\nHost x\n"),
        format!("{END_MARKER}\n"),
    ] {
        assert!(merge_ssh_config(&broken, key).is_err(), "{broken}");
    }
    let (mut s, _) = converged();
    s.config = text(0o600, &format!("{BEGIN_MARKER}\n"));
    let e = format!("{:#}", res().plan(&s).unwrap_err());
    assert!(e.contains("/home/deploy/.ssh/config"), "{e}");

    s.config = text(0o600, before);
    let p = res().plan(&s).unwrap();
    assert!(matches!(&p.steps[..], [Step::Write { old: Some(o), .. }] if o == before));
}

#[test]
fn custom_path_needs_its_directory() {
    let cfg = DeployKeySettings {
        path: Some("/srv/keys/gh".parse().unwrap()),
        ..DeployKeySettings::default()
    };
    let r = DeployKey::new(&cfg, &UsersSettings::default());
    let e = r.plan(&fresh()).unwrap_err().to_string();
    assert!(
        e.contains("/srv/keys") && e.contains("deploy_key.path"),
        "{e}"
    );
    let s = State {
        key_dir: Some(entry(Kind::Dir, 0o755)),
        ..fresh()
    };
    let p = r.plan(&s).unwrap();
    assert!(matches!(&p.steps[1], Step::Generate { path, public, .. }
            if path == Path::new("/srv/keys/gh") && public == Path::new("/srv/keys/gh.pub")));
    let Step::Write { new, .. } = &p.steps[3] else {
        panic!()
    };
    assert!(new.contains("IdentityFile /srv/keys/gh\n"));
}

#[test]
fn disabled_names_its_key_and_passes_status() {
    let cfg = DeployKeySettings {
        enabled: false,
        ..DeployKeySettings::default()
    };
    let r = DeployKey::new(&cfg, &UsersSettings::default());
    assert_eq!(r.disabled(), Some("deploy_key.enabled"));
    assert_eq!(r.disabled_checks()[0].level, Level::Pass);
    assert_eq!(res().disabled(), None);
}

#[test]
fn missing_user_fails_plan_with_reason() {
    let e = res().plan(&State::default()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "user deploy does not exist (the users resource creates it)"
    );
    assert_eq!(res().checks(&State::default())[0].level, Level::Warn);
    assert_eq!(res().depends_on(), &[Name::Users]);
}

#[test]
fn comment_cannot_break_the_pub_line() {
    let cfg = DeployKeySettings {
        comment: "a\nb ".into(),
        ..DeployKeySettings::default()
    };
    assert_eq!(
        DeployKey::new(&cfg, &UsersSettings::default()).comment,
        "a b"
    );
}

/// Generate, write, observe and parse back in a tempdir, as the current user.
#[tokio::test(flavor = "current_thread")]
// One tempdir: the rerun and the lost .pub start from the key the first converge wrote.
async fn generated_key_round_trips_in_a_tempdir() {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    let me = Owner {
        name: "deploy".into(),
        uid: nix::unistd::geteuid().as_raw(),
        gid: nix::unistd::getegid().as_raw(),
        home: d.path().to_path_buf(),
    };
    let r = res();
    let host = Host::new(Access::ReadWrite);
    let s = r.observe_for(&host, Some(me.clone())).unwrap();
    let p = r.plan(&s).unwrap();
    assert_eq!(p.steps.len(), 4, "{:?}", p.steps);
    r.apply(&host, &s, &p.steps).await.unwrap();

    let s = r.observe_for(&host, Some(me.clone())).unwrap();
    let p = r.plan(&s).unwrap();
    assert!(p.steps.is_empty(), "converged: {:?}", p.steps);
    no_private_material(&p);
    assert!(!format!("{s:?}").contains("PRIVATE"));

    let ssh = d.path().join(".ssh");
    let key_path = ssh.join("github_deploy_key");
    let pub_path = ssh.join("github_deploy_key.pub");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&ssh), 0o700);
    assert_eq!(mode(&key_path), 0o600);
    assert_eq!(mode(&pub_path), 0o644);
    assert_eq!(mode(&ssh.join("config")), 0o600);
    assert_eq!(mode(&ssh.join("known_hosts")), 0o644);
    assert_eq!(
        std::fs::read_to_string(ssh.join("known_hosts")).unwrap(),
        merge_known_hosts("", &github_lines())
    );

    let pem = std::fs::read_to_string(&key_path).unwrap();
    assert!(pem.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----\n"));
    let parsed = PrivateKey::from_openssh(&pem).unwrap();
    assert_eq!(parsed.algorithm(), Algorithm::Ed25519);
    assert_eq!(parsed.comment(), "sapari-prod deploy key");
    let pub_text = std::fs::read_to_string(&pub_path).unwrap();
    let public = PublicKey::from_openssh(pub_text.trim()).unwrap();
    assert_eq!(&public, parsed.public_key());
    let line = pub_text.trim_end();
    assert!(p.notes.contains(&public_note(line)), "{:?}", p.notes);

    // Never regenerated: a second converge leaves the key alone; a lost .pub comes back.
    std::fs::remove_file(&pub_path).unwrap();
    let s = r.observe_for(&host, Some(me.clone())).unwrap();
    let p = r.plan(&s).unwrap();
    assert_eq!(p.steps.len(), 1);
    r.apply(&host, &s, &p.steps).await.unwrap();
    assert_eq!(std::fs::read_to_string(&key_path).unwrap(), pem);
    assert_eq!(std::fs::read_to_string(&pub_path).unwrap(), pub_text);

    // A damaged private key is reported, never replaced.
    let broken = d.path().join("broken");
    std::fs::create_dir(&broken).unwrap();
    std::fs::write(broken.join("k"), "not a key\n").unwrap();
    let cfg = DeployKeySettings {
        path: Some(broken.join("k").to_str().unwrap().parse().unwrap()),
        ..DeployKeySettings::default()
    };
    let rb = DeployKey::new(&cfg, &UsersSettings::default());
    let sb = rb.observe_for(&host, Some(me.clone())).unwrap();
    let why = sb.private.as_ref().unwrap().key.as_ref().unwrap_err();
    assert!(why.starts_with("not an OpenSSH private key"), "{why}");
    let e = rb.plan(&sb).unwrap_err().to_string();
    assert!(e.contains(&*broken.join("k").to_string_lossy()), "{e}");
    assert_eq!(
        std::fs::read_to_string(broken.join("k")).unwrap(),
        "not a key\n"
    );

    let keygen = Path::new("/usr/bin/ssh-keygen");
    if !keygen.exists() {
        eprintln!("ssh-keygen not installed; skipped its cross-check");
        return;
    }
    let out = std::process::Command::new(keygen)
        .arg("-y")
        .arg("-f")
        .arg(&key_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let derived = String::from_utf8(out.stdout).unwrap();
    let fields = |s: &str| s.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
    assert_eq!(fields(&derived), fields(&pub_text));
}

mod home;
