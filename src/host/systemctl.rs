//! Interface to `systemctl`.
//!
//! `is-enabled` reads the unit symlinks and needs no running manager, so it answers in a
//! container or chroot too; `--now`, `restart` and `reload` need systemd as PID 1, which the
//! callers check with [`super::systemd::booted`].

use std::collections::BTreeMap;

use anyhow::Result;

use super::{Cmd, Host};

/// `systemctl is-enabled` for each of `units`, in one process.
pub fn is_enabled(units: &[&str]) -> Cmd {
    Cmd::new("systemctl")
        .arg("is-enabled")
        .args(units.iter().copied())
}

/// `systemctl is-active` for each of `units`, in one process.
pub fn is_active(units: &[&str]) -> Cmd {
    Cmd::new("systemctl")
        .arg("is-active")
        .args(units.iter().copied())
}

/// Pair the lines of `systemctl is-enabled a b c` (or `is-active`) with the units asked about.
pub fn parse_states(units: &[&str], stdout: &str) -> BTreeMap<String, String> {
    units
        .iter()
        .zip(stdout.lines())
        .map(|(u, s)| (u.to_string(), s.trim().to_string()))
        .collect()
}

/// Enabled and active states of `units`, both asked at once. Both commands exit non-zero
/// when any unit is not enabled (or not active); the lines are what counts.
pub async fn states(
    host: &Host,
    units: &[&str],
) -> Result<(BTreeMap<String, String>, BTreeMap<String, String>)> {
    let (enabled, active) = (is_enabled(units), is_active(units));
    let (e, a) = tokio::join!(host.query(&enabled), host.query(&active));
    Ok((
        parse_states(units, &e?.stdout),
        parse_states(units, &a?.stdout),
    ))
}

/// `systemctl enable`, and `--now` (start it too) when systemd runs.
pub fn enable(unit: &str, now: bool) -> Cmd {
    let mut cmd = Cmd::new("systemctl").arg("enable");
    if now {
        cmd = cmd.arg("--now");
    }
    cmd.arg(unit)
}

pub fn restart(unit: &str) -> Cmd {
    Cmd::new("systemctl").args(["restart", unit])
}

pub fn reload(unit: &str) -> Cmd {
    Cmd::new("systemctl").args(["reload", unit])
}

pub fn stop(unit: &str) -> Cmd {
    Cmd::new("systemctl").args(["stop", unit])
}

/// `systemctl show -p <prop> ... <unit> ...`: the named properties of each unit, in one process.
pub fn show(props: &[&str], units: &[&str]) -> Cmd {
    let mut cmd = Cmd::new("systemctl").arg("show");
    for p in props {
        cmd = cmd.args(["-p", p]);
    }
    cmd.args(units.iter().copied())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_states_with_units() {
        let m = parse_states(&["a.service", "b.service"], "enabled\nmasked\n");
        assert_eq!(m["a.service"], "enabled");
        assert_eq!(m["b.service"], "masked");
    }

    #[test]
    fn enable_starts_only_when_asked() {
        assert_eq!(
            enable("x.service", true).to_string(),
            "systemctl enable --now x.service"
        );
        assert_eq!(
            enable("x.service", false).to_string(),
            "systemctl enable x.service"
        );
    }
}
