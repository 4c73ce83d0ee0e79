//! The one hex SHA-256 of the agent: the Cloudflare lists' metadata, the origin table's
//! comment, commit-confirmed's config fingerprint and compose's file hashes all compare
//! against each other's output, so they share one spelling (lowercase, 64 digits).

use sha2::{Digest, Sha256};

pub fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn lowercase_hex_of_the_digest() {
        assert_eq!(
            super::sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
