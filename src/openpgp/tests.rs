use super::*;

const DOCKER: &str = include_str!("../resources/docker/docker.asc");
const DOCKER_FP: &str = "9DC858229FC7DD38854AE2D88D81803C0EBFCD88";
const REPO: &[u8] = include_bytes!("../testdata/openpgp/repo.gpg");
const REPO_ASC: &[u8] = include_bytes!("../testdata/openpgp/repo.asc");
const REPO_FP: &str = "AA07D3C91E7CF053EB2618D4AD2543E5EBBB8742";
const ATTACKER: &[u8] = include_bytes!("../testdata/openpgp/attacker.gpg");
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
        include_bytes!("../testdata/openpgp/message.txt"),
    );
    let good = file(
        "message.sig",
        include_bytes!("../testdata/openpgp/message.sig"),
    );
    let evil = file(
        "attacker.sig",
        include_bytes!("../testdata/openpgp/attacker.sig"),
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
