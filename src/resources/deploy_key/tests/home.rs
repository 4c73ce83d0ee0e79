//! Observation and apply against a real home directory in a tempdir: links, FIFOs, hard
//! links and races a user could plant.

use super::*;

/// A home in a tempdir, owned by whoever runs the test, with a root-only "secret" and
/// room for other directories beside it.
fn tmp_home() -> (tempfile::TempDir, Owner) {
    let d = tempfile::tempdir().unwrap();
    let home = d.path().join("home");
    std::fs::create_dir(&home).unwrap();
    std::fs::write(d.path().join("secret"), "SECRET root:$y$hash\n").unwrap();
    let me = Owner {
        name: "deploy".into(),
        uid: nix::unistd::geteuid().as_raw(),
        gid: nix::unistd::getegid().as_raw(),
        home,
    };
    (d, me)
}

fn mkdir(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir(path).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut n: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    n.sort();
    n
}

fn mode_of(path: &Path) -> u32 {
    std::fs::symlink_metadata(path).unwrap().mode() & 0o7777
}

fn at(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

fn with_path(path: &Path) -> DeployKey {
    let cfg = DeployKeySettings {
        path: Some(at(path).parse().unwrap()),
        ..DeployKeySettings::default()
    };
    DeployKey::new(&cfg, &UsersSettings::default())
}

#[test]
fn links_to_a_secret_are_reported_never_read() {
    use std::os::unix::fs::symlink;
    let (d, me) = tmp_home();
    let host = Host::new(Access::ReadOnly);
    let ssh = me.home.join(".ssh");
    mkdir(&ssh, 0o700);
    let secret = d.path().join("secret");
    symlink(&secret, ssh.join("known_hosts")).unwrap();
    let s = res().observe_for(&host, Some(me.clone())).unwrap();
    let kh = s.known_hosts.as_ref().unwrap();
    assert_eq!(kh.entry.kind, Kind::Symlink);
    assert!(kh.text.is_empty());
    assert!(!format!("{s:?}").contains("SECRET"), "{s:?}");
    let e = format!("{:#}", res().plan(&s).unwrap_err());
    assert!(e.contains(&at(&ssh.join("known_hosts"))), "{e}");
    assert!(e.contains("symbolic link") && !e.contains("SECRET"), "{e}");

    // The key, its .pub and the config as links too: each is seen as a link, none read.
    for name in ["github_deploy_key", "github_deploy_key.pub", "config"] {
        symlink(&secret, ssh.join(name)).unwrap();
    }
    let s = res().observe_for(&host, Some(me.clone())).unwrap();
    let state = format!("{s:?}");
    assert!(!state.contains("SECRET"), "{state}");
    let f = s.private.as_ref().unwrap();
    assert_eq!(f.entry.kind, Kind::Symlink);
    assert!(f.key.is_err());
    assert_eq!(s.public.as_ref().unwrap().entry.kind, Kind::Symlink);
    assert_eq!(s.config.as_ref().unwrap().entry.kind, Kind::Symlink);
    let e = format!("{:#}", res().plan(&s).unwrap_err());
    assert!(
        e.contains(&at(&ssh.join("github_deploy_key"))) && !e.contains("SECRET"),
        "{e}"
    );
    assert!(
        res()
            .checks(&s)
            .iter()
            .all(|c| !c.detail.contains("SECRET"))
    );

    // A key directory below the home that is a link is the user's doing: not followed.
    let other = d.path().join("other");
    mkdir(&other, 0o700);
    std::fs::copy(&secret, other.join("gh.pub")).unwrap();
    symlink(&other, me.home.join("keys")).unwrap();
    let r = with_path(&me.home.join("keys/gh"));
    let s = r.observe_for(&host, Some(me.clone())).unwrap();
    assert_eq!(s.key_dir.unwrap().kind, Kind::Symlink);
    assert!(s.public.is_none() && s.private.is_none(), "{s:?}");
    assert!(!format!("{s:?}").contains("SECRET"));
    let e = format!("{:#}", r.plan(&s).unwrap_err());
    assert!(
        e.contains(&at(&me.home.join("keys"))) && e.contains("symbolic link"),
        "{e}"
    );
}

/// Between observe and apply the user swaps a directory for a link to another one:
/// apply fails naming it and writes nothing there.
#[tokio::test(flavor = "current_thread")]
async fn a_directory_swapped_for_a_link_after_observe_gets_nothing() {
    use std::os::unix::fs::symlink;
    let host = Host::new(Access::ReadWrite);
    for (ssh_exists, custom) in [(true, false), (false, false), (true, true)] {
        let (d, me) = tmp_home();
        let ssh = me.home.join(".ssh");
        if ssh_exists {
            mkdir(&ssh, 0o700);
        }
        let keys = me.home.join("keys");
        let (r, swapped) = if custom {
            mkdir(&keys, 0o700);
            (with_path(&keys.join("gh")), keys.clone())
        } else {
            (res(), ssh.clone())
        };
        let s = r.observe_for(&host, Some(me.clone())).unwrap();
        let p = r.plan(&s).unwrap();
        assert!(
            p.steps.iter().any(|st| matches!(st, Step::Generate { .. })),
            "{:?}",
            p.steps
        );
        let elsewhere = d.path().join("elsewhere");
        mkdir(&elsewhere, 0o755);
        let moved = d.path().join("moved");
        if swapped.exists() {
            std::fs::rename(&swapped, &moved).unwrap();
        }
        symlink(&elsewhere, &swapped).unwrap();
        let e = format!("{:#}", r.apply(&host, &s, &p.steps).await.unwrap_err());
        assert!(
            e.contains(&at(&swapped)) && e.contains("symbolic link"),
            "{ssh_exists} {custom}: {e}"
        );
        assert_eq!(
            names_in(&elsewhere),
            Vec::<String>::new(),
            "written through"
        );
        if moved.exists() {
            assert_eq!(names_in(&moved), Vec::<String>::new());
        }
    }
}

#[test]
fn fifos_do_not_hang_observe() {
    let (_d, me) = tmp_home();
    let ssh = me.home.join(".ssh");
    mkdir(&ssh, 0o700);
    for name in [
        "github_deploy_key",
        "github_deploy_key.pub",
        "known_hosts",
        "config",
    ] {
        nix::unistd::mkfifo(
            &ssh.join(name),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let who = me.clone();
    // With no writer, a blocking open of a FIFO never returns: a hang fails here.
    std::thread::spawn(move || {
        let _ = tx.send(res().observe_for(&Host::new(Access::ReadOnly), Some(who)));
    });
    let s = rx
        .recv_timeout(std::time::Duration::from_secs(20))
        .expect("observe hung on a FIFO")
        .unwrap();
    assert_eq!(s.private.as_ref().unwrap().entry.kind, Kind::Other);
    for f in [&s.public, &s.known_hosts, &s.config] {
        assert_eq!(f.as_ref().unwrap().entry.kind, Kind::Other);
    }
    let e = format!("{:#}", res().plan(&s).unwrap_err());
    assert!(e.contains("special file"), "{e}");
}

#[test]
fn hard_links_and_huge_files_are_errors_naming_the_file() {
    let (d, me) = tmp_home();
    let host = Host::new(Access::ReadOnly);
    let ssh = me.home.join(".ssh");
    mkdir(&ssh, 0o700);
    let secret = d.path().join("secret");
    for name in ["config", "known_hosts", "github_deploy_key"] {
        let f = ssh.join(name);
        std::fs::hard_link(&secret, &f).unwrap();
        let e = format!(
            "{:#}",
            res().observe_for(&host, Some(me.clone())).unwrap_err()
        );
        assert!(e.contains(&at(&f)) && e.contains("hard links"), "{e}");
        assert!(!e.contains("SECRET"), "{e}");
        std::fs::remove_file(&f).unwrap();
    }
    let f = ssh.join("known_hosts");
    std::fs::File::create(&f)
        .unwrap()
        .set_len(userdir::MAX_FILE + 1)
        .unwrap();
    let e = format!(
        "{:#}",
        res().observe_for(&host, Some(me.clone())).unwrap_err()
    );
    assert!(e.contains(&at(&f)) && e.contains("limit"), "{e}");
}

#[tokio::test(flavor = "current_thread")]
async fn modes_are_fixed_in_place_but_never_through_a_hard_link() {
    use std::os::unix::fs::PermissionsExt;
    let (d, me) = tmp_home();
    let host = Host::new(Access::ReadWrite);
    let r = res();
    let s = r.observe_for(&host, Some(me.clone())).unwrap();
    r.apply(&host, &s, &r.plan(&s).unwrap().steps)
        .await
        .unwrap();
    let kh = me.home.join(".ssh/known_hosts");
    let loosen =
        |p: &Path| std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600)).unwrap();
    loosen(&kh);
    let s = r.observe_for(&host, Some(me.clone())).unwrap();
    let p = r.plan(&s).unwrap();
    assert!(
        matches!(&p.steps[..], [Step::SetMeta { path, .. }] if *path == kh),
        "{:?}",
        p.steps
    );
    r.apply(&host, &s, &p.steps).await.unwrap();
    assert_eq!(mode_of(&kh), 0o644);

    // Planned as a file of its own; by apply it shares the secret's inode.
    loosen(&kh);
    let s = r.observe_for(&host, Some(me.clone())).unwrap();
    let p = r.plan(&s).unwrap();
    let secret = d.path().join("secret");
    loosen(&secret);
    std::fs::remove_file(&kh).unwrap();
    std::fs::hard_link(&secret, &kh).unwrap();
    let e = format!("{:#}", r.apply(&host, &s, &p.steps).await.unwrap_err());
    assert!(e.contains(&at(&kh)) && e.contains("hard links"), "{e}");
    assert_eq!(mode_of(&secret), 0o600, "changed through the hard link");
}

/// A `deploy_key.path` outside the home is root's choice: its directory is used as
/// named, a link there included.
#[tokio::test(flavor = "current_thread")]
async fn a_key_directory_outside_the_home_round_trips() {
    use std::os::unix::fs::symlink;
    let (d, me) = tmp_home();
    let host = Host::new(Access::ReadWrite);
    let keys = d.path().join("keys");
    mkdir(&keys, 0o755);
    let r = with_path(&keys.join("gh"));
    let s = r.observe_for(&host, Some(me.clone())).unwrap();
    assert_eq!(s.key_dir.unwrap().kind, Kind::Dir);
    let p = r.plan(&s).unwrap();
    assert_eq!(p.steps.len(), 4, "{:?}", p.steps);
    r.apply(&host, &s, &p.steps).await.unwrap();
    assert_eq!(names_in(&keys), ["gh", "gh.pub"]);
    assert_eq!(mode_of(&keys.join("gh")), 0o600);
    assert_eq!(mode_of(&keys.join("gh.pub")), 0o644);
    assert_eq!(mode_of(&me.home.join(".ssh")), 0o700);
    assert_eq!(names_in(&me.home.join(".ssh")), ["config", "known_hosts"]);
    let s = r.observe_for(&host, Some(me.clone())).unwrap();
    assert!(r.plan(&s).unwrap().steps.is_empty());

    let linked = d.path().join("keys-link");
    symlink(&keys, &linked).unwrap();
    let s = with_path(&linked.join("gh"))
        .observe_for(&host, Some(me.clone()))
        .unwrap();
    assert!(s.private.unwrap().key.is_ok());
}
