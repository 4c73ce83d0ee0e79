//! Just enough OpenPGP to pin a repository signing key: the v4 fingerprint of the primary
//! key, from a binary (`.gpg`) or ASCII-armored (`.asc`) export (RFC 4880 sections 4.2, 12.2).

use anyhow::{Context, Result, bail};
use base64ct::{Base64, Encoding};
use sha1::{Digest, Sha1};

/// Fingerprint (40 upper-case hex digits) of the first packet, which must be a public key.
pub fn primary_fingerprint(bytes: &[u8]) -> Result<String> {
    let tag = *bytes.first().context("empty key")?;
    let at = |i: usize| bytes.get(i).copied().context("truncated key");
    let (body_start, len) = match tag {
        // Old format, tag 6, two-octet length.
        0x99 => (3, u16::from_be_bytes([at(1)?, at(2)?]) as usize),
        // Old format, tag 6, one-octet length.
        0x98 => (2, at(1)? as usize),
        // New format, tag 6.
        0xC6 => match at(1)? {
            l @ 0..=191 => (2, l as usize),
            l @ 192..=223 => (3, ((l as usize - 192) << 8) + at(2)? as usize + 192),
            _ => bail!("unsupported packet length"),
        },
        t => bail!("first packet is not a public key (tag byte {t:#x})"),
    };
    let body = bytes
        .get(body_start..body_start + len)
        .context("truncated key")?;
    if body.first() != Some(&4) {
        bail!("not a version 4 key");
    }
    let mut h = Sha1::new();
    h.update([0x99]);
    h.update((len as u16).to_be_bytes());
    h.update(body);
    Ok(h.finalize().iter().map(|b| format!("{b:02X}")).collect())
}

/// The binary packets inside an ASCII-armored public key block.
pub fn dearmor(armored: &str) -> Result<Vec<u8>> {
    let b64: String = armored
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN PGP PUBLIC KEY BLOCK"))
        .skip(1)
        .skip_while(|l| !l.trim().is_empty())
        .skip(1)
        .take_while(|l| !l.starts_with('=') && !l.starts_with("-----END"))
        .collect();
    Base64::decode_vec(&b64).map_err(|e| anyhow::anyhow!("key is not valid base64: {e}"))
}

/// Fingerprint of an armored or binary export.
pub fn fingerprint(key: &[u8]) -> Result<String> {
    match std::str::from_utf8(key) {
        Ok(text) if text.contains("-----BEGIN PGP PUBLIC KEY BLOCK") => {
            primary_fingerprint(&dearmor(text)?)
        }
        _ => primary_fingerprint(key),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOCKER: &str = include_str!("resources/docker/docker.asc");

    #[test]
    fn armored_and_binary_exports_give_the_published_fingerprint() {
        assert_eq!(
            fingerprint(DOCKER.as_bytes()).unwrap(),
            "9DC858229FC7DD38854AE2D88D81803C0EBFCD88"
        );
        let binary = dearmor(DOCKER).unwrap();
        assert_eq!(
            fingerprint(&binary).unwrap(),
            "9DC858229FC7DD38854AE2D88D81803C0EBFCD88"
        );
    }

    #[test]
    fn junk_is_an_error() {
        assert!(fingerprint(b"<html>").is_err());
        assert!(fingerprint(b"").is_err());
        assert!(fingerprint(&[0x99, 0x01]).is_err());
    }
}
