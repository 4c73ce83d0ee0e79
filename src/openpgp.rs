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
mod tests;
