//! GitHub's SSH host keys, built in, and the fingerprint check that guards them.

use anyhow::{Context, Result, anyhow, bail};
use base64ct::{Base64, Base64Unpadded, Encoding};
use sha2::{Digest, Sha256};

use super::GITHUB;

/// One of GitHub's SSH host keys with the fingerprint GitHub publishes for it.
#[derive(Debug, Clone, Copy)]
pub struct HostKey {
    pub algorithm: &'static str,
    pub key: &'static str,
    pub fingerprint: &'static str,
}

/// GitHub's SSH host keys, as listed on docs.github.com ("GitHub's SSH key fingerprints")
/// and in `ssh_keys` of https://api.github.com/meta. If GitHub rotates a key, update it
/// here together with its fingerprint; a mismatch fails the run before anything is written.
pub const GITHUB_HOST_KEYS: [HostKey; 3] = [
    HostKey {
        algorithm: "ssh-ed25519",
        key: "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl",
        fingerprint: "SHA256:+DiY3wvvV6TuJJhbpZisF/zLDA0zPMSvHdkr4UvCOqU",
    },
    HostKey {
        algorithm: "ecdsa-sha2-nistp256",
        key: "AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBEmKSENjQEezOmxkZMy7opKgwFB9nkt5YRrYMjNuG5N87uRgg6CLrbo5wAdT/y6v0mKV0U2w0WZ2YB/++Tpockg=",
        fingerprint: "SHA256:p2QAMXNIC1TJYWeIOttrVc98/R1BUFWu3/LiyKgUfQM",
    },
    HostKey {
        algorithm: "ssh-rsa",
        key: "AAAAB3NzaC1yc2EAAAADAQABAAABgQCj7ndNxQowgcQnjshcLrqPEiiphnt+VTTvDP6mHBL9j1aNUkY4Ue1gvwnGLVlOhGeYrnZaMgRK6+PKCUXaDbC7qtbW8gIkhL7aGCsOr/C56SJMy/BCZfxd1nWzAOxSDPgVsmerOBYfNqltV9/hWCqBywINIR+5dIg6JTJ72pcEpEjcYgXkE2YEFXV1JHnsKgbLWNlhScqb2UmyRkQyytRLtL+38TGxkxCflmO+5Z8CSSNY7GidjMIZ7Q4zMjA2n1nGrlTDkzwDCsw+wqFPGQA179cnfGWOWRVruj16z6XyvxvjJwbz0wQZ75XK5tKSb7FNyeIEs4TT4jk+S4dhPeAUC5y+bDYirYgM4GC7uEnztnZyaVWQ7B381AK4Qdrwt51ZqExKbQpTUNn+EjqoTwvqNj4kqx5QUCI0ThS/YkOxJCXmPUWZbhjpCg56i+2aB6CmK2JGhn57K5mj0MNdBXA4/WnwH6XoPWJzK5Nyu2zB3nAZp+S5hpQs+p1vN1/wsjk=",
        fingerprint: "SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s",
    },
];

/// The SHA256 fingerprint of a public key as `ssh-keygen -lf` prints it: SHA256 of the
/// decoded key blob, base64 without padding. The blob must name `algorithm`.
pub fn sha256_fingerprint(algorithm: &str, key_b64: &str) -> Result<String> {
    let blob = Base64::decode_vec(key_b64).map_err(|e| anyhow!("invalid base64 ({e})"))?;
    // SSH wire format: the blob starts with the key type as a length-prefixed string.
    let named = blob
        .get(..4)
        .and_then(|n| <[u8; 4]>::try_from(n).ok())
        .and_then(|n| blob.get(4..4 + u32::from_be_bytes(n) as usize));
    if named != Some(algorithm.as_bytes()) {
        bail!("the key data is not a {algorithm} key");
    }
    Ok(format!(
        "SHA256:{}",
        Base64Unpadded::encode_string(&Sha256::digest(&blob))
    ))
}

/// known_hosts lines for `keys`, each checked against its published fingerprint.
pub fn verified_known_hosts_lines(keys: &[HostKey]) -> Result<Vec<String>> {
    keys.iter()
        .map(|k| {
            let fp = sha256_fingerprint(k.algorithm, k.key)
                .with_context(|| format!("built-in GitHub {} host key is damaged", k.algorithm))?;
            if fp != k.fingerprint {
                bail!(
                    "built-in GitHub {} host key has fingerprint {fp}, but GitHub publishes {}; \
                     refusing to write known_hosts (this sapari-agent build is damaged or out of date)",
                    k.algorithm,
                    k.fingerprint
                );
            }
            Ok(format!("{GITHUB} {} {}", k.algorithm, k.key))
        })
        .collect()
}
