//! Real `ssh` logins from a peer namespace: with a key, or with a password through sshpass.
#![allow(dead_code)]

use std::path::Path;
use std::process::Output;

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
