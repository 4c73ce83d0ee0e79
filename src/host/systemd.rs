//! systemd queries that work whether or not systemd is PID 1 (unit files are looked up
//! on disk; `systemctl is-enabled` reads symlinks and needs no running manager).

use std::collections::BTreeMap;
use std::path::Path;

use super::command::Cmd;

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

/// `systemctl is-enabled` for each installed unit among `units`, in one process.
pub fn enabled_states(units: &[&str]) -> Cmd {
    Cmd::new("systemctl")
        .arg("is-enabled")
        .args(units.iter().copied())
}

/// Pair the lines of `systemctl is-enabled a b c` with the units asked about.
pub fn parse_enabled(units: &[&str], stdout: &str) -> BTreeMap<String, String> {
    units
        .iter()
        .zip(stdout.lines())
        .map(|(u, s)| (u.to_string(), s.trim().to_string()))
        .collect()
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
    fn pairs_states_with_units() {
        let m = parse_enabled(&["a.service", "b.service"], "enabled\nmasked\n");
        assert_eq!(m["a.service"], "enabled");
        assert_eq!(m["b.service"], "masked");
    }

    #[test]
    fn properties() {
        let m = parse_properties("NTP=yes\nNTPSynchronized=no\nTimezone=Etc/UTC\n");
        assert_eq!(m["NTPSynchronized"], "no");
        assert_eq!(m.len(), 3);
    }
}
