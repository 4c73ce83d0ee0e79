//! systemd queries that work whether or not systemd is PID 1 (unit files are looked up
//! on disk). Commands to `systemctl` itself are in [`super::systemctl`].

use std::collections::BTreeMap;
use std::path::Path;

const UNIT_DIRS: &[&str] = &[
    "/etc/systemd/system",
    "/run/systemd/system",
    "/usr/lib/systemd/system",
    "/lib/systemd/system",
];

/// systemd is the running init (not merely installed).
pub fn booted() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

pub fn unit_installed(unit: &str) -> bool {
    UNIT_DIRS.iter().any(|d| Path::new(d).join(unit).exists())
}

/// Parse `key=value` lines as printed by `systemctl show` and `timedatectl show`.
pub fn parse_properties(stdout: &str) -> BTreeMap<String, String> {
    stdout
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties() {
        let m = parse_properties("NTP=yes\nNTPSynchronized=no\nTimezone=Etc/UTC\n");
        assert_eq!(m["NTPSynchronized"], "no");
        assert_eq!(m.len(), 3);
    }
}
