//! Real `ssh` logins from a peer namespace: with a key, or with a password through sshpass.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use std::process::Output;
use tempfile::TempDir;

use super::{Peer, sh_quote};

/// No config, no known hosts, short connect: each test asks about one login.
pub const SSH_OPTS: &str = "-F /dev/null -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o ConnectTimeout=5 -o LogLevel=ERROR";

pub fn with_key(peer: &Peer, server: &str, key: &Path, user: &str, cmd: &str) -> Output {
    peer.exec(&format!(
        "ssh {SSH_OPTS} -o BatchMode=yes -o IdentitiesOnly=yes -i {} {user}@{server} {}",
        key.display(),
        sh_quote(cmd)
    ))
}

/// A password login that runs `echo LOGIN-OK` (see [`logged_in`]).
pub fn with_password(peer: &Peer, server: &str, user: &str, pw: &str) -> Output {
    peer.exec(&format!(
        "sshpass -p {} ssh {SSH_OPTS} -o PubkeyAuthentication=no -o PreferredAuthentications=password,keyboard-interactive -o NumberOfPasswordPrompts=1 {user}@{server} echo LOGIN-OK",
        sh_quote(pw)
    ))
}

pub fn logged_in(o: &Output) -> bool {
    String::from_utf8_lossy(&o.stdout).contains("LOGIN-OK")
}

/// An operator's ed25519 key pair in a temporary directory (removed on drop).
pub struct OperatorKey {
    _dir: TempDir,
    /// The private key file, for `ssh -i`.
    pub private: PathBuf,
    /// The public key line, for authorized_keys and the agent's config.
    pub public: String,
}

pub fn operator_key() -> OperatorKey {
    let dir = tempfile::tempdir().unwrap();
    let private = dir.path().join("op");
    let st = Command::new("ssh-keygen")
        .args([
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "operator@laptop",
            "-f",
        ])
        .arg(&private)
        .status()
        .unwrap();
    assert!(st.success(), "ssh-keygen");
    let public = fs::read_to_string(private.with_extension("pub"))
        .unwrap()
        .trim()
        .to_string();
    OperatorKey {
        _dir: dir,
        private,
        public,
    }
}

// ---------------------------------------------------------------------------------------------
// TestBox
