//! Validating newtypes and field deserializers: each check runs inside the TOML reader, so
//! its error keeps the value's span and field path.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

macro_rules! string_newtype {
    ($name:ident) => {
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
    };
}

/// A hostname valid under RFC 1123: dot-separated labels of 1-63 letters, digits or
/// hyphens, not starting or ending with a hyphen, 253 characters at most.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hostname(pub String);
string_newtype!(Hostname);

impl FromStr for Hostname {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            Err(format!(
                "invalid hostname `{s}`: {why} (RFC 1123: labels of letters, digits and hyphens, e.g. sapari-prod)"
            ))
        };
        if s.is_empty() || s.len() > 253 {
            return bad("must be 1 to 253 characters");
        }
        for label in s.split('.') {
            if label.is_empty() || label.len() > 63 {
                return bad("each dot-separated label must be 1 to 63 characters");
            }
            if !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            {
                return bad("only letters, digits and hyphens are allowed");
            }
            if label.starts_with('-') || label.ends_with('-') {
                return bad("a label cannot start or end with a hyphen");
            }
        }
        Ok(Hostname(s.to_string()))
    }
}

impl fmt::Display for Hostname {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A user or group name as useradd accepts it: lowercase letter or underscore first, then
/// lowercase letters, digits, `_` or `-`, at most 32 characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Username(pub String);
string_newtype!(Username);

impl FromStr for Username {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let ok = !s.is_empty()
            && s.len() <= 32
            && s.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !ok {
            return Err(format!(
                "invalid user or group name `{s}`: use lowercase letters, digits, `_` and `-`, starting with a letter (e.g. deploy)"
            ));
        }
        if s == "root" {
            return Err(
                "`root` cannot be the managed user: the point is a non-root sudo user".into(),
            );
        }
        Ok(Username(s.to_string()))
    }
}

impl fmt::Display for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One `authorized_keys` line (options allowed), checked for a known key type and valid
/// base64 key data before anything is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizedKey(pub String);
string_newtype!(AuthorizedKey);

impl FromStr for AuthorizedKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let line = s.trim();
        let short: String = line.chars().take(40).collect();
        if line.contains('\n') {
            return Err(format!(
                "authorized key `{short}...` spans several lines; give one key per list entry"
            ));
        }
        crate::authorized_keys::parse(line)
            .map_err(|e| format!("invalid authorized key `{short}...`: {e} (expected e.g. `ssh-ed25519 AAAAC3... you@laptop`)"))?;
        Ok(AuthorizedKey(line.to_string()))
    }
}

impl fmt::Display for AuthorizedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A drop-in file name for /etc/ssh/sshd_config.d: `*.conf` (sshd's Include glob) and
/// sorting before `50-cloud-init.conf`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DropInName(pub String);
string_newtype!(DropInName);

impl FromStr for DropInName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.contains('/') || !s.ends_with(".conf") || s.len() <= 5 {
            return Err(format!(
                "`{s}` must be a plain file name ending in .conf (e.g. 10-sapari-agent.conf)"
            ));
        }
        if s >= "50-cloud-init.conf" {
            return Err(format!(
                "`{s}` sorts after 50-cloud-init.conf, whose values would win (sshd keeps the first value it reads); use a name like 10-sapari-agent.conf"
            ));
        }
        Ok(DropInName(s.to_string()))
    }
}

impl fmt::Display for DropInName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A Linux interface name as the kernel's `dev_valid_name` takes it (1-15 bytes, no `/`,
/// `:` or whitespace, not `.` or `..`), further kept to `[A-Za-z0-9_.@-]` and no leading
/// `-`: it reaches ufw, nft and iptables command lines, where `+` is a wildcard and a
/// leading `-` an option.
pub fn check_interface_name(s: &str) -> Result<(), String> {
    let bad = |why: &str| {
        Err(format!(
            "invalid interface name `{}`: {why} (e.g. eth0, enp1s0, tailscale0; `ip -br link` lists them)",
            s.escape_debug()
        ))
    };
    if s.is_empty() || s.len() > 15 {
        return bad("must be 1 to 15 characters");
    }
    if s == "." || s == ".." {
        return bad("`.` and `..` are not interface names");
    }
    if s.starts_with('-') {
        return bad("must not start with `-`");
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"_.@-".contains(&b))
    {
        return bad("only letters, digits and `_.@-` are allowed");
    }
    Ok(())
}

pub(super) fn interface_name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    check_interface_name(&s).map_err(serde::de::Error::custom)?;
    Ok(s)
}

/// Empty means "find it" (the default route's interface).
pub(super) fn interface_name_or_empty<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    if !s.is_empty() {
        check_interface_name(&s).map_err(|e| {
            serde::de::Error::custom(format!(
                "{e}; or leave it \"\" to use the default route's interface"
            ))
        })?;
    }
    Ok(s)
}

/// Tailscale's `tailcfg.CheckTag`: `tag:` and a name of ASCII letters, digits and `-`,
/// starting with a letter. tailscale up refuses anything else, after the agent has
/// already changed other things.
pub fn check_tailscale_tag(s: &str) -> Result<(), String> {
    let ok = s.strip_prefix("tag:").is_some_and(|n| {
        n.starts_with(|c: char| c.is_ascii_alphabetic())
            && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid Tailscale tag `{}`: write `tag:` and a name of letters, digits and `-` that starts with a letter (e.g. tag:server)",
            s.escape_debug()
        ))
    }
}

struct TailscaleTag(String);

impl<'de> Deserialize<'de> for TailscaleTag {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        check_tailscale_tag(&s).map_err(serde::de::Error::custom)?;
        Ok(TailscaleTag(s))
    }
}

/// Through a per-element type, so an error names the element (`tailscale.tags[1]`).
pub(super) fn tailscale_tags<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(Vec::<TailscaleTag>::deserialize(d)?
        .into_iter()
        .map(|t| t.0)
        .collect())
}

/// A `[compose.overrides]` key: an environment variable name compose can interpolate.
pub fn check_override_key(key: &str) -> Result<(), String> {
    let ok = key.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`compose.overrides` key `{}` is not an environment variable name: use letters, digits and `_`, not starting with a digit (e.g. WEB_MEMORY)",
            key.escape_debug()
        ))
    }
}

/// A `[compose.overrides]` value, which compose.env holds as `KEY='value'`. The value is
/// never shown: an override may carry a secret.
pub fn check_override_value(value: &str) -> Result<(), String> {
    if value.contains(['\n', '\r', '\0']) {
        return Err(
            "the value contains a line break or NUL, which would end its line in compose.env and start another variable: put the value on one line"
                .into(),
        );
    }
    // compose-go ends a single-quoted value at the first `'` not preceded by a backslash,
    // and a backslash before the closing quote hides it: neither can be written so that
    // compose reads the value back unchanged.
    if value.contains('\'') {
        return Err(
            "the value contains a single quote, which compose.env cannot hold inside its single-quoted values: remove it"
                .into(),
        );
    }
    if value.ends_with('\\') {
        return Err(
            "the value ends with a backslash, which compose would read as escaping the closing quote: remove it"
                .into(),
        );
    }
    Ok(())
}

/// Both checks, for values that did not come through the TOML reader.
pub fn check_override(key: &str, value: &str) -> Result<(), String> {
    check_override_key(key)?;
    check_override_value(value).map_err(|e| format!("compose.overrides.{key}: {e}"))
}

/// Keys and values are checked while each is read, so an error carries that key's or
/// value's position and the field path `compose.overrides.KEY`.
pub(super) fn compose_overrides<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<std::collections::BTreeMap<String, String>, D::Error> {
    use serde::de::{DeserializeSeed, Error, MapAccess, Visitor};
    struct Key;
    impl<'de> DeserializeSeed<'de> for Key {
        type Value = String;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
            let key = String::deserialize(d)?;
            check_override_key(&key).map_err(D::Error::custom)?;
            Ok(key)
        }
    }
    struct Value;
    impl<'de> DeserializeSeed<'de> for Value {
        type Value = String;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
            let value = String::deserialize(d)?;
            check_override_value(&value).map_err(D::Error::custom)?;
            Ok(value)
        }
    }
    struct Table;
    impl<'de> Visitor<'de> for Table {
        type Value = std::collections::BTreeMap<String, String>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a table of environment variable names and string values")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
            let mut out = std::collections::BTreeMap::new();
            while let Some(key) = m.next_key_seed(Key)? {
                let value = m.next_value_seed(Value)?;
                out.insert(key, value);
            }
            Ok(out)
        }
    }
    d.deserialize_map(Table)
}

/// A byte size written like `4G`, `512M`, `1048576` (binary units, as fallocate reads them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Size(pub u64);
string_newtype!(Size);

impl FromStr for Size {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let err = || {
            format!(
                "invalid size `{s}`: expected a whole number with an optional K, M, G or T suffix (e.g. 4G)"
            )
        };
        let t = s.trim();
        let t = t.strip_suffix(['B', 'b']).unwrap_or(t);
        let t = t.strip_suffix('i').unwrap_or(t);
        let (digits, shift) = match t.chars().last() {
            Some('K' | 'k') => (&t[..t.len() - 1], 10),
            Some('M' | 'm') => (&t[..t.len() - 1], 20),
            Some('G' | 'g') => (&t[..t.len() - 1], 30),
            Some('T' | 't') => (&t[..t.len() - 1], 40),
            _ => (t, 0),
        };
        let n: u64 = digits.trim().parse().map_err(|_| err())?;
        n.checked_mul(1u64 << shift).map(Size).ok_or_else(err)
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (shift, unit) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] {
            if self.0 != 0 && self.0.is_multiple_of(1u64 << shift) {
                return write!(f, "{}{unit}", self.0 >> shift);
            }
        }
        write!(f, "{}", self.0)
    }
}

/// A duration written like `60s`, `2m`, `1h 30m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interval(pub Duration);
string_newtype!(Interval);

impl FromStr for Interval {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        humantime::parse_duration(s)
            .map(Interval)
            .map_err(|e| format!("invalid duration `{s}`: {e} (e.g. 30s, 2m)"))
    }
}

impl fmt::Display for Interval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

/// A port Docker may publish to the whole internet (`firewall.public_ports`): 1-65535, and
/// not 443, which is public only through Cloudflare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct PublicPort(pub u16);

impl PublicPort {
    pub fn check(n: i64) -> Result<Self, String> {
        match u16::try_from(n) {
            Ok(443) => Err(
                "443 is the origin port: it is reachable only from Cloudflare and cannot be made public"
                    .into(),
            ),
            Ok(p) if p > 0 => Ok(PublicPort(p)),
            _ => Err(format!("invalid port {n}: use 1-65535")),
        }
    }
}

impl<'de> Deserialize<'de> for PublicPort {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = i64::deserialize(d)?;
        PublicPort::check(n).map_err(serde::de::Error::custom)
    }
}

/// An absolute, normalised path (no `..`), so it can be compared with fstab and /proc/swaps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AbsPath(pub PathBuf);
string_newtype!(AbsPath);

impl FromStr for AbsPath {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let p = Path::new(s);
        if !p.is_absolute() {
            return Err(format!("`{s}` must be an absolute path"));
        }
        if p.components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(format!("`{s}` must not contain `..`"));
        }
        if s.chars().any(char::is_whitespace) {
            return Err(format!(
                "`{s}` must not contain whitespace (fstab cannot hold it)"
            ));
        }
        Ok(AbsPath(p.components().collect()))
    }
}

impl fmt::Display for AbsPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.display())
    }
}
