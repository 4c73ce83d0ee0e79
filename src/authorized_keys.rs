//! `authorized_keys` lines: options (quoted strings may hold spaces and commas), key type,
//! base64 key data, comment. The key itself is decoded with ssh-key, so a typo in the
//! base64 or an unknown type is caught before anything is written.

use ssh_key::PublicKey;

/// Split a line into its options prefix (if any) and the `type base64 [comment]` part.
pub fn split_options(line: &str) -> (Option<&str>, &str) {
    let line = line.trim();
    let first = line.split_whitespace().next().unwrap_or("");
    if first.starts_with("ssh-") || first.starts_with("ecdsa-") || first.starts_with("sk-") {
        return (None, line);
    }
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in line.char_indices() {
        match c {
            // sshd reads `\"` inside a quoted option as a quote character (auth-options.c).
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => {
                return (Some(&line[..i]), line[i..].trim_start());
            }
            _ => {}
        }
    }
    (Some(line), "")
}

/// Parse the key of one `authorized_keys` line.
pub fn parse(line: &str) -> Result<PublicKey, String> {
    let (_, key) = split_options(line);
    if key.is_empty() {
        return Err("no key after the options".into());
    }
    PublicKey::from_openssh(key).map_err(|e| e.to_string())
}

/// The key type and base64 data of a line: two lines with the same key but other options
/// or comments are the same key.
pub fn identity(line: &str) -> Option<String> {
    let (_, key) = split_options(line);
    let mut f = key.split_whitespace();
    Some(format!("{} {}", f.next()?, f.next()?))
}

/// The valid keys in an authorized_keys file (comments, blanks and broken lines skipped).
pub fn valid_keys(content: &str) -> Vec<PublicKey> {
    content
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| parse(l).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";

    #[test]
    fn options_with_quotes_and_spaces() {
        let l = format!("from=\"192.0.2.0/24\",command=\"echo a b\" {ED} me");
        let (o, k) = split_options(&l);
        assert_eq!(o, Some("from=\"192.0.2.0/24\",command=\"echo a b\""));
        assert!(k.starts_with("ssh-ed25519 "));
        assert!(parse(&l).is_ok());
        assert!(parse(&format!("no-agent-forwarding {ED}")).is_ok());
        let ecdsa = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBEmKSENjQEezOmxkZMy7opKgwFB9nkt5YRrYMjNuG5N87uRgg6CLrbo5wAdT/y6v0mKV0U2w0WZ2YB/++Tpockg= op";
        assert!(parse(ecdsa).is_ok(), "ECDSA keys are common on laptops");
        assert_eq!(split_options(ED), (None, ED));
    }

    #[test]
    fn broken_keys_are_rejected() {
        assert!(parse("ssh-ed25519 AAAA!!").is_err());
        assert!(parse("ssh-ed25519").is_err());
        assert!(
            parse("ssh-foo AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl")
                .is_err()
        );
        assert!(parse("from=\"x\"").is_err());
        // Truncated base64 of a real key.
        assert!(parse(&ED[..ED.len() - 4]).is_err());
    }

    #[test]
    fn identity_ignores_options_and_comment() {
        assert_eq!(
            identity(&format!("{ED} a")),
            identity(&format!("restrict {ED} b"))
        );
        assert_eq!(
            valid_keys(&format!("# c\n\n{ED}\nssh-ed25519 broken\n")).len(),
            1
        );
    }
}
