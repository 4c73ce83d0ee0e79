//! Just enough OpenPGP to pin a repository signing key: packet framing (RFC 4880 / RFC 9580
//! section 4.2), the v4 fingerprint of a primary key (section 12.2), ASCII armor, and a
//! keyring check that keeps exactly one transferable public key with a pinned fingerprint.
//!
//! Signatures are not verified here: apt's verifier ignores a subkey or user ID whose binding
//! signature the primary key did not make, and only the holder of the pinned key can make
//! one. What must not reach apt is a second primary key, which it would trust on its own.

use anyhow::{Context, Result, bail};
use base64ct::{Base64, Encoding};
use sha1::{Digest, Sha1};

const SIGNATURE: u8 = 2;
const PUBLIC_KEY: u8 = 6;
const TRUST: u8 = 12;
const USER_ID: u8 = 13;
const PUBLIC_SUBKEY: u8 = 14;
const USER_ATTRIBUTE: u8 = 17;

/// One packet of a binary OpenPGP stream; `offset` is where its header starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet<'a> {
    pub tag: u8,
    pub offset: usize,
    pub body: &'a [u8],
}

fn tag_name(tag: u8) -> &'static str {
    match tag {
        1 => "public-key encrypted session key",
        2 => "signature",
        3 => "symmetric-key encrypted session key",
        4 => "one-pass signature",
        5 => "secret key",
        6 => "public key",
        7 => "secret subkey",
        8 => "compressed data",
        9 => "symmetrically encrypted data",
        10 => "marker",
        11 => "literal data",
        12 => "trust",
        13 => "user ID",
        14 => "public subkey",
        17 => "user attribute",
        18 => "encrypted and integrity protected data",
        19 => "modification detection code",
        20 => "AEAD encrypted data",
        21 => "padding",
        60..=63 => "private or experimental",
        _ => "unknown",
    }
}

/// The packet whose header starts at `at`, and where the next one starts.
fn read_packet(bytes: &[u8], at: usize) -> Result<(Packet<'_>, usize)> {
    let octet = |i: usize| {
        bytes.get(at + i).copied().with_context(|| {
            format!("truncated: the packet header at offset {at} ends with the data")
        })
    };
    let first = octet(0)?;
    if first & 0x80 == 0 {
        let shown = if first.is_ascii_graphic() {
            format!(" ({:?})", first as char)
        } else {
            String::new()
        };
        bail!(
            "octet {first:#04x}{shown} at offset {at} is not an OpenPGP packet header{}",
            if at == 0 {
                " (text or an HTML page instead of a binary key?)"
            } else {
                " (bytes after the last packet?)"
            }
        );
    }
    let (tag, header, len) = if first & 0x40 != 0 {
        let tag = first & 0x3F;
        match octet(1)? {
            l @ 0..=191 => (tag, 2, l as usize),
            l @ 192..=223 => (tag, 3, ((l as usize - 192) << 8) + octet(2)? as usize + 192),
            255 => (
                tag,
                6,
                u32::from_be_bytes([octet(2)?, octet(3)?, octet(4)?, octet(5)?]) as usize,
            ),
            _ => bail!(
                "the {} packet (tag {tag}) at offset {at} uses a partial body length, which \
                 OpenPGP allows only for data packets, never for key material",
                tag_name(tag)
            ),
        }
    } else {
        let tag = (first >> 2) & 0x0F;
        match first & 0x03 {
            0 => (tag, 2, octet(1)? as usize),
            1 => (tag, 3, u16::from_be_bytes([octet(1)?, octet(2)?]) as usize),
            2 => (
                tag,
                5,
                u32::from_be_bytes([octet(1)?, octet(2)?, octet(3)?, octet(4)?]) as usize,
            ),
            _ => bail!(
                "the {} packet (tag {tag}) at offset {at} has an indeterminate length, which is \
                 not accepted for key material",
                tag_name(tag)
            ),
        }
    };
    if tag == 0 {
        bail!("the packet at offset {at} has the reserved tag 0");
    }
    let start = at + header;
    let body = start
        .checked_add(len)
        .and_then(|end| bytes.get(start..end))
        .with_context(|| {
            format!(
                "truncated: the {} packet (tag {tag}) at offset {at} says {len} bytes, only {} follow",
                tag_name(tag),
                bytes.len().saturating_sub(start)
            )
        })?;
    Ok((
        Packet {
            tag,
            offset: at,
            body,
        },
        start + len,
    ))
}

/// Every packet of a binary stream, which must end exactly after its last packet.
pub fn packets(bytes: &[u8]) -> Result<Vec<Packet<'_>>> {
    if bytes.is_empty() {
        bail!("empty: no OpenPGP packet");
    }
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let (p, next) = read_packet(bytes, at)?;
        out.push(p);
        at = next;
    }
    Ok(out)
}

/// Append a packet with a new-format header and the shortest length encoding, so the output
/// has one reading only, whatever the input's headers were.
pub fn push_packet(out: &mut Vec<u8>, tag: u8, body: &[u8]) {
    debug_assert!((1..64).contains(&tag));
    out.push(0xC0 | tag);
    match body.len() {
        n @ 0..=191 => out.push(n as u8),
        n @ 192..=8383 => {
            let m = n - 192;
            out.extend_from_slice(&[(m >> 8) as u8 + 192, m as u8]);
        }
        n => {
            out.push(0xFF);
            out.extend_from_slice(&(n as u32).to_be_bytes());
        }
    }
    out.extend_from_slice(body);
}

/// The v4 fingerprint (40 upper-case hex digits) of a public key or subkey packet body.
pub fn v4_fingerprint(body: &[u8]) -> Result<String> {
    match body.first() {
        Some(4) => {}
        Some(v @ (2 | 3)) => bail!("a version {v} key, obsolete; only v4 keys are accepted"),
        Some(5) => bail!(
            "a version 5 (LibrePGP) key, whose fingerprint is not a v4 one; only v4 keys are accepted"
        ),
        Some(6) => bail!(
            "a version 6 (RFC 9580) key, whose fingerprint is not a v4 one; only v4 keys are accepted"
        ),
        Some(v) => bail!("a key of unknown version {v}; only v4 keys are accepted"),
        None => bail!("an empty key packet"),
    }
    // version, creation time, algorithm, then at least some key material
    if body.len() < 7 {
        bail!("a truncated key packet ({} bytes)", body.len());
    }
    let len = u16::try_from(body.len())
        .map_err(|_| anyhow::anyhow!("a key packet of {} bytes, too long for v4", body.len()))?;
    let mut h = Sha1::new();
    h.update([0x99]);
    h.update(len.to_be_bytes());
    h.update(body);
    Ok(h.finalize().iter().map(|b| format!("{b:02X}")).collect())
}

/// Fingerprint of the first packet, which must be a public key.
pub fn primary_fingerprint(bytes: &[u8]) -> Result<String> {
    if bytes.is_empty() {
        bail!("empty key");
    }
    let (p, _) = read_packet(bytes, 0)?;
    if p.tag != PUBLIC_KEY {
        bail!(
            "the first packet is a {} packet (tag {}), not a public key",
            tag_name(p.tag),
            p.tag
        );
    }
    v4_fingerprint(p.body).map_err(|e| anyhow::anyhow!("the primary key is {e}"))
}

/// The binary packets inside the one ASCII-armored public key block of `armored`. Armor
/// headers are skipped; the CRC line is not checked, as the fingerprint pin is what
/// vouches for the content.
pub fn dearmor(armored: &str) -> Result<Vec<u8>> {
    let begins: Vec<&str> = armored
        .lines()
        .map(str::trim_end)
        .filter(|l| l.starts_with("-----BEGIN PGP "))
        .collect();
    match begins.as_slice() {
        [] => bail!("no -----BEGIN PGP PUBLIC KEY BLOCK----- line"),
        ["-----BEGIN PGP PUBLIC KEY BLOCK-----"] => {}
        [other] => bail!("the armored block is `{other}`, not a public key block"),
        more => bail!(
            "{} armored blocks; exactly one public key block is accepted",
            more.len()
        ),
    }
    let mut lines = armored
        .lines()
        .map(str::trim)
        .skip_while(|l| !l.starts_with("-----BEGIN PGP PUBLIC KEY BLOCK"))
        .skip(1)
        .peekable();
    // Base64 never holds a colon, so header lines are told apart even without the blank line.
    while lines.next_if(|l| l.contains(':')).is_some() {}
    let mut b64 = String::new();
    let mut ended = false;
    for l in lines {
        if l.starts_with("-----END PGP PUBLIC KEY BLOCK") {
            ended = true;
            break;
        }
        if !l.starts_with('=') {
            b64.push_str(l);
        }
    }
    if !ended {
        bail!("the armored block has no -----END PGP PUBLIC KEY BLOCK----- line");
    }
    Base64::decode_vec(&b64).map_err(|e| anyhow::anyhow!("key is not valid base64: {e}"))
}

fn armored_text(key: &[u8]) -> Option<&str> {
    std::str::from_utf8(key)
        .ok()
        .filter(|t| t.contains("-----BEGIN PGP "))
}

/// Fingerprint of an armored or binary export.
pub fn fingerprint(key: &[u8]) -> Result<String> {
    match armored_text(key) {
        Some(text) => primary_fingerprint(&dearmor(text)?),
        None => primary_fingerprint(key),
    }
}

/// The keyring to hand to apt, rebuilt from a downloaded (binary or armored) keyring that
/// must hold exactly one transferable public key whose primary v4 fingerprint is `pin`:
/// the primary key, its user IDs and user attributes, its subkeys, and their signatures.
/// Trust packets (local to the exporter's GnuPG) are dropped; anything else, a second
/// primary key or bytes after the last packet make the whole download refused. `owner`
/// names the key's owner in errors.
pub fn pinned_keyring(download: &[u8], owner: &str, pin: &str) -> Result<Vec<u8>> {
    let pin = normal_pin(pin)?;
    let binary;
    let bytes = match armored_text(download) {
        Some(text) => {
            binary = dearmor(text)?;
            &binary[..]
        }
        None => download,
    };
    let all = packets(bytes)?;
    only_keyring_packets(&all, owner, &pin)?;
    let kept: Vec<&Packet> = all.iter().filter(|p| p.tag != TRUST).collect();
    one_primary(&kept, owner, &pin)?;
    let fp = pinned_primary(&kept, owner, &pin)?;
    signed_v4_subkeys(&kept, &fp)?;
    let mut out = Vec::with_capacity(bytes.len());
    for p in kept {
        push_packet(&mut out, p.tag, p.body);
    }
    Ok(out)
}

/// The pin as fingerprints are compared: upper case, without the spaces it is often
/// written with.
fn normal_pin(pin: &str) -> Result<String> {
    let pin: String = pin.split_whitespace().collect::<String>().to_uppercase();
    if pin.len() != 40 || !pin.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("the pinned fingerprint `{pin}` is not 40 hex digits");
    }
    Ok(pin)
}

fn only_keyring_packets(all: &[Packet], owner: &str, pin: &str) -> Result<()> {
    if let Some(p) = all.iter().find(|p| {
        !matches!(
            p.tag,
            SIGNATURE | PUBLIC_KEY | TRUST | USER_ID | PUBLIC_SUBKEY | USER_ATTRIBUTE
        )
    }) {
        bail!(
            "the download holds a {} packet (tag {}) at offset {}, which has no place in a \
             public keyring; only {owner}'s public key {pin} is accepted",
            tag_name(p.tag),
            p.tag,
            p.offset
        );
    }
    Ok(())
}

fn one_primary(kept: &[&Packet], owner: &str, pin: &str) -> Result<()> {
    let primaries: Vec<&Packet> = kept
        .iter()
        .copied()
        .filter(|p| p.tag == PUBLIC_KEY)
        .collect();
    match primaries.as_slice() {
        [] => bail!("the download holds no primary public key; {owner}'s {pin} was expected"),
        [_] => Ok(()),
        more => {
            let list: Vec<String> = more
                .iter()
                .map(|p| {
                    let fp = v4_fingerprint(p.body).unwrap_or_else(|e| e.to_string());
                    format!("{fp} at offset {}", p.offset)
                })
                .collect();
            bail!(
                "the download holds {} primary keys ({}); only {owner}'s {pin} is accepted",
                more.len(),
                list.join(", ")
            );
        }
    }
}

/// The fingerprint of the one primary key (`one_primary`), which must come first, be the
/// pinned v4 key and have a user ID.
fn pinned_primary(kept: &[&Packet], owner: &str, pin: &str) -> Result<String> {
    let primary = kept[0];
    if primary.tag != PUBLIC_KEY {
        bail!(
            "the download starts with a {} packet (tag {}), not the primary key",
            tag_name(primary.tag),
            primary.tag
        );
    }
    let fp = v4_fingerprint(primary.body).map_err(|e| {
        anyhow::anyhow!("the primary key is {e}; {owner}'s v4 key {pin} was expected")
    })?;
    if fp != pin {
        bail!("the primary key is {fp}, not {owner}'s {pin}");
    }
    if !kept.iter().any(|p| p.tag == USER_ID) {
        bail!("the primary key {fp} has no user ID, which a v4 key must have");
    }
    Ok(fp)
}

/// Every subkey of primary `fp` is v4 and followed by its binding signature.
fn signed_v4_subkeys(kept: &[&Packet], fp: &str) -> Result<()> {
    for (i, p) in kept.iter().enumerate() {
        if p.tag != PUBLIC_SUBKEY {
            continue;
        }
        v4_fingerprint(p.body).map_err(|e| {
            anyhow::anyhow!(
                "the subkey at offset {} is {e}, under v4 key {fp}",
                p.offset
            )
        })?;
        if kept.get(i + 1).is_none_or(|n| n.tag != SIGNATURE) {
            bail!(
                "the subkey at offset {} of {fp} has no binding signature after it",
                p.offset
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOCKER: &str = include_str!("resources/docker/docker.asc");
    const DOCKER_FP: &str = "9DC858229FC7DD38854AE2D88D81803C0EBFCD88";
    const REPO: &[u8] = include_bytes!("testdata/openpgp/repo.gpg");
    const REPO_ASC: &[u8] = include_bytes!("testdata/openpgp/repo.asc");
    const REPO_FP: &str = "AA07D3C91E7CF053EB2618D4AD2543E5EBBB8742";
    const ATTACKER: &[u8] = include_bytes!("testdata/openpgp/attacker.gpg");
    const ATTACKER_FP: &str = "263297F690A406B7E21E099B302F00C2132C86BA";

    fn pinned(download: &[u8]) -> Result<Vec<u8>> {
        pinned_keyring(download, "Test", REPO_FP)
    }

    fn refused(download: &[u8]) -> String {
        format!("{:#}", pinned(download).unwrap_err())
    }

    fn cat(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    fn tags_and_bodies(bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
        packets(bytes)
            .unwrap()
            .into_iter()
            .map(|p| (p.tag, p.body.to_vec()))
            .collect()
    }

    /// `REPO` with its primary key packet (the first) sent with another tag.
    fn repo_with_primary_as(tag: u8) -> Vec<u8> {
        let all = packets(REPO).unwrap();
        let mut out = Vec::new();
        push_packet(&mut out, tag, all[0].body);
        out.extend_from_slice(&REPO[all[1].offset..]);
        out
    }

    #[test]
    fn pins_are_compared_upper_case_without_spaces() {
        let spaced = "aa07 d3c9 1e7c f053 eb26  18d4 ad25 43e5 ebbb 8742";
        assert_eq!(normal_pin(spaced).unwrap(), REPO_FP);
        assert_eq!(normal_pin(REPO_FP).unwrap(), REPO_FP);
        for bad in [
            "",
            "AA07",
            &format!("{REPO_FP}00"),
            &REPO_FP.replace('A', "G"),
        ] {
            let e = normal_pin(bad).unwrap_err().to_string();
            assert!(e.contains("is not 40 hex digits"), "{bad}: {e}");
        }
    }

    #[test]
    fn armored_and_binary_exports_give_the_published_fingerprint() {
        assert_eq!(fingerprint(DOCKER.as_bytes()).unwrap(), DOCKER_FP);
        let binary = dearmor(DOCKER).unwrap();
        assert_eq!(fingerprint(&binary).unwrap(), DOCKER_FP);
        assert_eq!(fingerprint(REPO).unwrap(), REPO_FP);
        assert_eq!(fingerprint(REPO_ASC).unwrap(), REPO_FP);
    }

    #[test]
    fn junk_is_an_error() {
        assert!(fingerprint(b"<html>").is_err());
        assert!(fingerprint(b"").is_err());
        assert!(fingerprint(&[0x99, 0x01]).is_err());
        let e = pinned(b"<html>").unwrap_err().to_string();
        assert!(e.contains("'<'") && e.contains("HTML page"), "{e}");
        assert!(pinned(b"").is_err());
    }

    #[test]
    fn a_key_with_subkeys_passes_and_is_rebuilt_packet_for_packet() {
        let out = pinned(REPO).unwrap();
        let tags: Vec<u8> = tags_and_bodies(REPO).iter().map(|(t, _)| *t).collect();
        assert_eq!(
            tags,
            [6, 13, 2, 14, 2, 14, 2],
            "the fixture has two subkeys"
        );
        assert_eq!(tags_and_bodies(&out), tags_and_bodies(REPO));
        // GnuPG wrote old-format headers; the rebuild has new-format ones only.
        assert_eq!(REPO[0], 0x99);
        assert!(
            packets(&out)
                .unwrap()
                .iter()
                .all(|p| out[p.offset] & 0xC0 == 0xC0)
        );
        assert_eq!(fingerprint(&out).unwrap(), REPO_FP);
        // Rebuilding is a fixed point: the written keyring passes the same check unchanged.
        assert_eq!(pinned(&out).unwrap(), out);
        // A real-world key with RSA-4096 packets (two-octet lengths) passes too.
        let docker = pinned_keyring(DOCKER.as_bytes(), "Docker", DOCKER_FP).unwrap();
        assert_eq!(
            tags_and_bodies(&docker),
            tags_and_bodies(&dearmor(DOCKER).unwrap())
        );
    }

    #[test]
    fn armored_download_gives_the_same_binary_keyring() {
        assert_eq!(pinned(REPO_ASC).unwrap(), pinned(REPO).unwrap());
        let two = [REPO_ASC, b"\n", REPO_ASC].concat();
        let e = refused(&two);
        assert!(e.contains("2 armored blocks"), "{e}");
        let secret = String::from_utf8(REPO_ASC.to_vec())
            .unwrap()
            .replace("PUBLIC KEY BLOCK", "PRIVATE KEY BLOCK");
        let e = refused(secret.as_bytes());
        assert!(e.contains("not a public key block"), "{e}");
        let unterminated = String::from_utf8(REPO_ASC.to_vec())
            .unwrap()
            .replace("-----END PGP PUBLIC KEY BLOCK-----", "");
        let e = refused(unterminated.as_bytes());
        assert!(
            e.contains("no -----END PGP PUBLIC KEY BLOCK----- line"),
            "{e}"
        );
    }

    #[test]
    fn an_appended_second_primary_key_is_refused() {
        let e = refused(&cat(&[REPO, ATTACKER]));
        assert!(
            e.contains(&format!(
                "the download holds 2 primary keys ({REPO_FP} at offset 0, {ATTACKER_FP} at offset {}); \
                 only Test's {REPO_FP} is accepted",
                REPO.len()
            )),
            "{e}"
        );
        let e = refused(&cat(&[ATTACKER, REPO]));
        assert!(e.contains("holds 2 primary keys"), "{e}");
        // The same key twice is still two primary keys: one transferable key is the contract.
        let e = refused(&cat(&[REPO, REPO]));
        assert!(e.contains("holds 2 primary keys"), "{e}");
    }

    #[test]
    fn trailing_bytes_are_refused_and_trust_packets_dropped() {
        for tail in [
            &b"\n"[..],
            b"garbage",
            &[0x00],
            // a user ID header that promises more bytes than follow
            &[0xB4, 0x10, b'a'],
            // a lone new-format header
            &[0xCD],
        ] {
            let e = refused(&cat(&[REPO, tail]));
            assert!(
                e.contains(&format!("offset {}", REPO.len())),
                "{tail:?}: {e}"
            );
        }
        // Trust packets are GnuPG's local bookkeeping: legal in a keyring, never passed on.
        let trust = [0xB0, 0x02, 0x00, 0x00];
        let out = pinned(&cat(&[REPO, &trust])).unwrap();
        assert_eq!(out, pinned(REPO).unwrap());
    }

    #[test]
    fn secret_keys_and_data_packets_are_refused() {
        let e = refused(&repo_with_primary_as(5));
        assert!(
            e.contains(
                "a secret key packet (tag 5) at offset 0, which has no place in a public keyring"
            ),
            "{e}"
        );
        for (tag, name) in [
            (7, "secret subkey"),
            (11, "literal data"),
            (8, "compressed data"),
            (10, "marker"),
            (21, "padding"),
            (60, "private or experimental"),
        ] {
            let mut extra = Vec::new();
            push_packet(&mut extra, tag, b"PGP");
            let e = refused(&cat(&[REPO, &extra]));
            assert!(
                e.contains(&format!(
                    "a {name} packet (tag {tag}) at offset {}",
                    REPO.len()
                )),
                "{e}"
            );
        }
    }

    #[test]
    fn a_wrong_fingerprint_is_refused() {
        let e = refused(ATTACKER);
        assert!(
            e.contains(&format!(
                "the primary key is {ATTACKER_FP}, not Test's {REPO_FP}"
            )),
            "{e}"
        );
        // One changed bit of key material is another key.
        let mut flipped = REPO.to_vec();
        flipped[20] ^= 1;
        assert!(refused(&flipped).contains("not Test's"));
        // The pin may be written in groups, in either case.
        let spaced = "aa07 d3c9 1e7c f053 eb26  18d4 ad25 43e5 ebbb 8742";
        assert!(pinned_keyring(REPO, "Test", spaced).is_ok());
        assert!(pinned_keyring(REPO, "Test", "AA07").is_err());
    }

    #[test]
    fn only_v4_keys_are_accepted() {
        for (v, what) in [
            (6, "version 6 (RFC 9580)"),
            (5, "version 5"),
            (3, "version 3"),
        ] {
            let mut body = packets(REPO).unwrap()[0].body.to_vec();
            body[0] = v;
            let mut key = Vec::new();
            push_packet(&mut key, 6, &body);
            let e = refused(&cat(&[&key, &REPO[packets(REPO).unwrap()[1].offset..]]));
            assert!(e.contains(what) && e.contains("only v4 keys"), "{e}");
        }
        // a v6 subkey under the v4 primary
        let sub = packets(REPO).unwrap()[3].clone();
        let mut body = sub.body.to_vec();
        body[0] = 6;
        let mut forged = REPO[..sub.offset].to_vec();
        push_packet(&mut forged, 14, &body);
        forged.extend_from_slice(&REPO[packets(REPO).unwrap()[4].offset..]);
        let e = refused(&forged);
        assert!(
            e.contains(&format!("the subkey at offset {}", sub.offset)),
            "{e}"
        );
    }

    #[test]
    fn a_key_must_have_a_user_id_and_signed_subkeys() {
        let all = packets(REPO).unwrap();
        let mut no_uid = Vec::new();
        push_packet(&mut no_uid, 6, all[0].body);
        for p in &all[3..] {
            push_packet(&mut no_uid, p.tag, p.body);
        }
        assert!(refused(&no_uid).contains("no user ID"));
        let mut unsigned = REPO.to_vec();
        push_packet(&mut unsigned, 14, all[5].body);
        let e = refused(&unsigned);
        assert!(e.contains("has no binding signature"), "{e}");
    }

    #[test]
    fn every_length_encoding_is_read_and_partial_or_indeterminate_refused() {
        let body: Vec<u8> = (0..9000u32).map(|i| i as u8).collect();
        let cases: [(Vec<u8>, usize); 6] = [
            ([&[0xB4, 3][..], &body[..3]].concat(), 3),
            ([&[0xB5, 0x01, 0x00][..], &body[..256]].concat(), 256),
            ([&[0xB6, 0, 0, 0x23, 0x28][..], &body[..]].concat(), 9000),
            ([&[0xCD, 191][..], &body[..191]].concat(), 191),
            ([&[0xCD, 0xDF, 0xFF][..], &body[..8383]].concat(), 8383),
            (
                [&[0xCD, 0xFF, 0, 0, 0x23, 0x28][..], &body[..]].concat(),
                9000,
            ),
        ];
        for (bytes, len) in &cases {
            let p = packets(bytes).unwrap();
            assert_eq!(p.len(), 1);
            assert_eq!((p[0].tag, p[0].body), (13, &body[..*len]));
            // re-encoded with the shortest new-format header, and read back the same
            let mut out = Vec::new();
            push_packet(&mut out, 13, p[0].body);
            let header = match len {
                0..=191 => 2,
                192..=8383 => 3,
                _ => 6,
            };
            assert_eq!(out.len(), header + len);
            assert_eq!(packets(&out).unwrap()[0].body, p[0].body);
        }
        // A 9000-byte user ID with an old-format four-octet length after the key, and a user
        // attribute (new format only: its tag is above 15): re-encoded with new-format headers.
        let mut attribute = Vec::new();
        push_packet(&mut attribute, 17, &body[..200]);
        let big = cat(&[REPO, &cases[2].0, &attribute]);
        let out = pinned(&big).unwrap();
        assert_eq!(tags_and_bodies(&out), tags_and_bodies(&big));
        let uid = out.len() - attribute.len() - 9006;
        assert_eq!(out[uid..uid + 6], [0xCD, 0xFF, 0, 0, 0x23, 0x28]);

        let e = packets(&[0xC6, 0xE1, 1, 2]).unwrap_err().to_string();
        assert!(e.contains("partial body length"), "{e}");
        let e = packets(&[0x9B, 1, 2, 3]).unwrap_err().to_string();
        assert!(e.contains("indeterminate length"), "{e}");
        let e = packets(&[0xC6, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF])
            .unwrap_err()
            .to_string();
        assert!(e.contains("says 4294967295 bytes, only 0 follow"), "{e}");
        let e = packets(&[0xC0, 0]).unwrap_err().to_string();
        assert!(e.contains("reserved tag 0"), "{e}");
    }

    /// What apt will do with the keyring: gpgv (apt's verifier) accepts the rebuilt keyring
    /// for the key's own signatures. The raw concatenation, which the agent used to write,
    /// lets gpgv accept the attacker's signature. Skipped without gpgv.
    #[test]
    fn gpgv_verifies_with_the_rebuilt_keyring_and_not_the_attacker() {
        if std::process::Command::new("gpgv")
            .arg("--version")
            .output()
            .is_err()
        {
            eprintln!("skipped: gpgv is not installed");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let file = |name: &str, bytes: &[u8]| {
            let p = d.path().join(name);
            std::fs::write(&p, bytes).unwrap();
            p
        };
        let msg = file(
            "message.txt",
            include_bytes!("testdata/openpgp/message.txt"),
        );
        let good = file(
            "message.sig",
            include_bytes!("testdata/openpgp/message.sig"),
        );
        let evil = file(
            "attacker.sig",
            include_bytes!("testdata/openpgp/attacker.sig"),
        );
        let rebuilt = file("rebuilt.gpg", &pinned(REPO).unwrap());
        let raw = file("raw.gpg", &cat(&[REPO, ATTACKER]));
        let gpgv = |keyring: &std::path::Path, sig: &std::path::Path| {
            std::process::Command::new("gpgv")
                .arg("--homedir")
                .arg(d.path())
                .arg("--keyring")
                .arg(keyring)
                .arg(sig)
                .arg(&msg)
                .output()
                .unwrap()
                .status
                .success()
        };
        assert!(gpgv(&rebuilt, &good), "gpgv refused the rebuilt keyring");
        assert!(!gpgv(&rebuilt, &evil));
        assert!(gpgv(&raw, &evil), "the raw download trusts the attacker");
        assert!(pinned(&cat(&[REPO, ATTACKER])).is_err());
    }
}
