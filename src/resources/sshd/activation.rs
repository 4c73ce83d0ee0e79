//! How the running sshd takes a new configuration, which depends on who holds port 22.
//!
//! A socket-activated sshd (`ssh.socket` with `Accept=no`, Ubuntu 24.04's default and an option
//! on Debian 13) got its listening socket from systemd; on SIGHUP it re-executes itself, no longer
//! sees that socket, fails to bind ("Cannot bind any address") and exits. So there the service is
//! restarted instead: systemd keeps the listener open across the restart (new connections wait in
//! its backlog) and `KillMode=process` leaves open sessions running. `ssh.socket` itself is never
//! restarted: the agent manages no Port or ListenAddress.

use super::Unit;
use super::config_text::split_line;

/// What taking the new configuration means for the unit systemd reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `systemctl reload <unit>`: sshd holds its own listener and re-reads on SIGHUP.
    Reload(String),
    /// `systemctl restart <unit>` under `ssh.socket`: the listener stays with systemd.
    RestartUnderSocket(String),
    /// Neither is safe; the reason, for the error.
    Refuse(String),
    /// The unit is not running: the next start (or connection) reads the files.
    NotRunning,
    /// No systemd unit: SIGHUP the pid in /run/sshd.pid, if any.
    Pid,
}

pub fn action(unit: Option<&Unit>, socket_active: bool) -> Action {
    let Some(u) = unit else {
        return Action::Pid;
    };
    if !u.active {
        return Action::NotRunning;
    }
    if !socket_active {
        return Action::Reload(u.id.clone());
    }
    match u.kill_mode.as_deref() {
        Some("process") => Action::RestartUnderSocket(u.id.clone()),
        other => Action::Refuse(format!(
            "sshd is socket-activated (ssh.socket), where a reload makes it exit, and a restart of {} would end open sessions (KillMode={}, not process); the new files are installed but not yet in use: restart {} yourself when no session depends on it, or set KillMode=process in a drop-in for it",
            u.id,
            other.unwrap_or("unknown"),
            u.id
        )),
    }
}

/// How sshd is started, for the report and `status`.
pub fn describe(unit: &Unit, socket_active: bool) -> String {
    if socket_active {
        format!(
            "{} started by ssh.socket (socket activation): port 22 is systemd's, configuration changes restart {} (open sessions stay)",
            unit.id, unit.id
        )
    } else {
        format!(
            "{} holds its own listener: configuration changes reload it",
            unit.id
        )
    }
}

/// Files that set Port or ListenAddress (file, keyword), from the main file and the drop-ins.
/// Under socket activation the socket decides where sshd listens, so they need attention.
pub fn listener_settings<'a>(
    files: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for (file, text) in files {
        for line in text.lines() {
            if let Some((k, _)) = split_line(line)
                && (k == "port" || k == "listenaddress")
            {
                let key = if k == "port" { "Port" } else { "ListenAddress" };
                if !found.contains(&(file.to_string(), key.to_string())) {
                    found.push((file.to_string(), key.to_string()));
                }
            }
        }
    }
    found
}

/// The note for [`listener_settings`] under socket activation (None when there are none).
pub fn listener_note(found: &[(String, String)]) -> Option<String> {
    if found.is_empty() {
        return None;
    }
    let list: Vec<String> = found.iter().map(|(f, k)| format!("{k} in {f}")).collect();
    Some(format!(
        "sshd is socket-activated, so where it listens is ssh.socket's ListenStream, not {}; the agent never restarts ssh.socket. To move the listener: edit ssh.socket (Debian) or run `systemctl daemon-reload && systemctl restart ssh.socket` (Ubuntu's generator reads sshd_config), from a console, not over this SSH session",
        list.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(active: bool, kill_mode: Option<&str>) -> Unit {
        Unit {
            id: "ssh.service".into(),
            active,
            kill_mode: kill_mode.map(str::to_string),
        }
    }

    #[test]
    fn a_socket_activated_sshd_is_restarted_never_hupped() {
        let u = unit(true, Some("process"));
        assert_eq!(
            action(Some(&u), true),
            Action::RestartUnderSocket("ssh.service".into())
        );
        assert_eq!(
            action(Some(&u), false),
            Action::Reload("ssh.service".into())
        );
        assert_eq!(action(Some(&unit(false, None)), true), Action::NotRunning);
        assert_eq!(action(None, true), Action::Pid);
    }

    #[test]
    fn a_restart_that_would_end_sessions_is_refused() {
        let u = unit(true, Some("control-group"));
        let Action::Refuse(why) = action(Some(&u), true) else {
            panic!("restart allowed with KillMode=control-group");
        };
        assert!(why.contains("KillMode=control-group"), "{why}");
    }

    #[test]
    fn port_and_listen_address_are_found_once_per_file() {
        let found = listener_settings([
            ("/etc/ssh/sshd_config", "#Port 22\nPort 2222\nport 2223\n"),
            ("/etc/ssh/sshd_config.d/x.conf", "ListenAddress 10.0.0.1\n"),
            (
                "/etc/ssh/sshd_config.d/y.conf",
                "PasswordAuthentication no\n",
            ),
        ]);
        assert_eq!(
            found,
            [
                ("/etc/ssh/sshd_config".to_string(), "Port".to_string()),
                (
                    "/etc/ssh/sshd_config.d/x.conf".to_string(),
                    "ListenAddress".to_string()
                )
            ]
        );
        let note = listener_note(&found).unwrap();
        assert!(note.contains("Port in /etc/ssh/sshd_config"), "{note}");
        assert!(note.contains("never restarts ssh.socket"), "{note}");
        assert_eq!(listener_note(&[]), None);
    }
}
