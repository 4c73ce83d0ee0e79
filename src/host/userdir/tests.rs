use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};

use super::*;

fn me() -> u32 {
    nix::unistd::geteuid().as_raw()
}

fn spec(mode: u32) -> FileSpec {
    FileSpec {
        mode,
        uid: me(),
        gid: nix::unistd::getegid().as_raw(),
    }
}

/// A home with `.ssh` in it, and a "secret" outside it.
fn home() -> (tempfile::TempDir, UserDir) {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir(d.path().join("home")).unwrap();
    std::fs::create_dir(d.path().join("home/.ssh")).unwrap();
    std::fs::write(d.path().join("secret"), b"root:$y$hash:19000::::::\n").unwrap();
    let h = UserDir::open(&d.path().join("home"), me(), false)
        .unwrap()
        .unwrap();
    (d, h)
}

#[test]
fn a_link_to_a_secret_is_refused_not_read() {
    let (d, h) = home();
    let ssh = h.subdir(".ssh").unwrap().unwrap();
    symlink(
        d.path().join("secret"),
        d.path().join("home/.ssh/authorized_keys"),
    )
    .unwrap();
    let e = ssh.read("authorized_keys").unwrap_err().to_string();
    assert!(e.contains("symbolic link"), "{e}");
    assert!(!e.contains("hash"), "the secret leaked into the error: {e}");
    assert_eq!(
        ssh.lstat("authorized_keys").unwrap().unwrap().kind,
        Kind::Symlink
    );
}

#[test]
fn a_linked_ssh_directory_is_refused() {
    let (d, h) = home();
    std::fs::remove_dir(d.path().join("home/.ssh")).unwrap();
    std::fs::create_dir(d.path().join("elsewhere")).unwrap();
    symlink(d.path().join("elsewhere"), d.path().join("home/.ssh")).unwrap();
    let e = h.subdir(".ssh").unwrap_err().to_string();
    assert!(e.contains("symbolic link"), "{e}");
    assert!(UserDir::open(&d.path().join("home/.ssh"), me(), false).is_err());
}

#[test]
fn a_fifo_is_refused_without_blocking() {
    let (d, h) = home();
    let ssh = h.subdir(".ssh").unwrap().unwrap();
    nix::unistd::mkfifo(
        &d.path().join("home/.ssh/authorized_keys"),
        Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    // With no writer, a blocking open would hang here forever.
    let e = ssh.read("authorized_keys").unwrap_err().to_string();
    assert!(e.contains("special file"), "{e}");
}

#[test]
fn a_huge_sparse_file_is_refused_before_reading() {
    let (d, h) = home();
    let ssh = h.subdir(".ssh").unwrap().unwrap();
    let f = std::fs::File::create(d.path().join("home/.ssh/authorized_keys")).unwrap();
    f.set_len(1 << 40).unwrap();
    let e = ssh.read("authorized_keys").unwrap_err().to_string();
    assert!(e.contains("limit"), "{e}");
}

#[test]
fn a_hard_link_is_refused() {
    let (d, h) = home();
    let ssh = h.subdir(".ssh").unwrap().unwrap();
    std::fs::hard_link(d.path().join("secret"), d.path().join("home/.ssh/config")).unwrap();
    let e = ssh.read("config").unwrap_err().to_string();
    assert!(e.contains("hard links"), "{e}");
}

#[test]
fn a_regular_file_is_read_and_absent_is_none() {
    let (d, h) = home();
    let ssh = h.subdir(".ssh").unwrap().unwrap();
    std::fs::write(
        d.path().join("home/.ssh/authorized_keys"),
        b"ssh-ed25519 AAAA\n",
    )
    .unwrap();
    let f = ssh.read("authorized_keys").unwrap().unwrap();
    assert_eq!(f.content, b"ssh-ed25519 AAAA\n");
    assert_eq!(f.uid, me());
    assert!(ssh.read("known_hosts").unwrap().is_none());
    assert!(h.subdir("nope").unwrap().is_none());
}

#[test]
fn a_write_lands_in_the_checked_directory_even_after_a_swap() {
    let (d, h) = home();
    let ssh = h.subdir(".ssh").unwrap().unwrap();
    // Between observe and apply the user moves ~/.ssh away and links it to a root directory.
    let target = d.path().join("root-dir");
    std::fs::create_dir(&target).unwrap();
    std::fs::rename(d.path().join("home/.ssh"), d.path().join("home/ssh.old")).unwrap();
    symlink(&target, d.path().join("home/.ssh")).unwrap();
    ssh.write("authorized_keys", b"key\n", spec(0o600), true)
        .unwrap();
    assert_eq!(
        std::fs::read_dir(&target).unwrap().count(),
        0,
        "root wrote through the link"
    );
    let written = d.path().join("home/ssh.old/authorized_keys");
    assert_eq!(std::fs::read(&written).unwrap(), b"key\n");
    assert_eq!(
        std::fs::metadata(&written).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // And reopening by name now refuses the link.
    assert!(h.subdir(".ssh").is_err());
}

#[test]
fn a_write_replaces_a_planted_link_by_name_and_keeps_a_backup() {
    let (d, h) = home();
    let ssh = h.subdir(".ssh").unwrap().unwrap();
    let secret = d.path().join("secret");
    let before = std::fs::read(&secret).unwrap();
    std::fs::write(d.path().join("home/.ssh/authorized_keys"), b"old\n").unwrap();
    ssh.write("authorized_keys", b"new\n", spec(0o600), true)
        .unwrap();
    assert_eq!(
        std::fs::read(d.path().join("home/.ssh/authorized_keys.sapari-agent.bak")).unwrap(),
        b"old\n"
    );
    std::fs::remove_file(d.path().join("home/.ssh/known_hosts")).ok();
    symlink(&secret, d.path().join("home/.ssh/known_hosts")).unwrap();
    ssh.write("known_hosts", b"x\n", spec(0o644), false)
        .unwrap();
    assert_eq!(
        std::fs::read(&secret).unwrap(),
        before,
        "written through the link"
    );
    let m = std::fs::symlink_metadata(d.path().join("home/.ssh/known_hosts")).unwrap();
    assert!(m.is_file());
    // A backup of a planted link is refused rather than copying the secret.
    std::fs::remove_file(d.path().join("home/.ssh/config")).ok();
    symlink(&secret, d.path().join("home/.ssh/config")).unwrap();
    assert!(ssh.write("config", b"y\n", spec(0o644), true).is_err());
    let names: Vec<String> = std::fs::read_dir(d.path().join("home/.ssh"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        !names
            .iter()
            .any(|n| n.starts_with(TEMP_PREFIX) || n == "config.sapari-agent.bak"),
        "{names:?}"
    );
}

#[test]
fn subdirectories_are_made_and_links_refused() {
    let (d, h) = home();
    h.ensure_subdir("keys", spec(0o700)).unwrap();
    let m = std::fs::metadata(d.path().join("home/keys")).unwrap();
    assert_eq!(m.mode() & 0o777, 0o700);
    symlink(d.path(), d.path().join("home/link")).unwrap();
    assert!(h.ensure_subdir("link", spec(0o700)).is_err());
    assert!(h.set_meta("link", spec(0o777)).is_err());
    assert!(h.read("../secret").is_err(), "a path escaped the directory");
}

#[test]
fn another_users_directory_is_refused() {
    if !nix::unistd::geteuid().is_root() {
        return; // chown to another uid needs root; CI runs the unit tests as root
    }
    let (d, h) = home();
    let ssh = d.path().join("home/.ssh");
    nix::unistd::chown(&ssh, Some(Uid::from_raw(54321)), None).unwrap();
    let e = h.subdir(".ssh").unwrap_err().to_string();
    assert!(e.contains("owned by uid 54321"), "{e}");
    std::fs::write(d.path().join("home/f"), b"x").unwrap();
    nix::unistd::chown(&d.path().join("home/f"), Some(Uid::from_raw(54321)), None).unwrap();
    assert!(
        h.read("f")
            .unwrap_err()
            .to_string()
            .contains("owned by uid")
    );
}
