//! The candidate configuration validated before anything is installed (`sshd -t -f` of the
//! tree as it will be, and the lock-out guard's `sshd -T` per keyed sudo user), and the
//! reload of the unit systemd says runs sshd.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::config_text::{includes_drop_dir, split_line};
use super::effective::parse_effective;
use super::{DROP_DIR, KeyUser, SSHD_CONFIG, Sshd, State, Unit, activation, admission};
use crate::host::{CandidateTree, Cmd, Host, systemctl, systemd};

/// Pick the sshd unit from `systemctl show -p Id -p LoadState -p ActiveState -p KillMode
/// ssh.service sshd.service ssh.socket` (blocks separated by blank lines).
pub fn parse_units(text: &str) -> (Option<Unit>, bool) {
    let mut unit = None;
    let mut socket = false;
    for block in text.split("\n\n") {
        let p = systemd::parse_properties(block);
        let (Some(id), Some(load)) = (p.get("Id"), p.get("LoadState")) else {
            continue;
        };
        let active = p
            .get("ActiveState")
            .is_some_and(|s| s == "active" || s == "reloading");
        if load != "loaded" {
            continue;
        }
        if id.ends_with(".socket") {
            socket = active;
        } else if unit.is_none() {
            unit = Some(Unit {
                id: id.clone(),
                active,
                kill_mode: p.get("KillMode").filter(|k| !k.is_empty()).cloned(),
            });
        }
    }
    (unit, socket)
}

impl Sshd {
    /// The logins to judge the candidate for: this SSH session's user first.
    pub(super) fn logins_to_judge<'a>(&self, s: &'a State) -> Vec<&'a KeyUser> {
        let mut users: Vec<&KeyUser> = s.key_users.iter().collect();
        if let Some(me) = &self.ctx.ssh_user {
            users.sort_by_key(|u| u.name != *me);
        }
        users
    }
}

/// Validate the configuration as it will be after the change, before installing any file:
/// the candidate tree (main file, every drop-in, our new files) is assembled in a private
/// directory ([`Host::candidate_tree`]) with the Include pointed at it, and `sshd -t -f`
/// judges it.
pub(super) async fn validate_candidate(
    host: &Host,
    s: &State,
    files: &[(PathBuf, String)],
    judge: &Judge<'_>,
) -> Result<()> {
    let tree = host
        .candidate_tree()
        .context("cannot create a temporary directory for the sshd candidate")?;
    let main_path = assemble(&tree, s, files)?;
    let drop = tree.path().join("sshd_config.d");
    let main_arg = main_path.to_string_lossy().into_owned();
    let unmask =
        |text: &str| text.replace(&format!("{}/", drop.display()), &format!("{DROP_DIR}/"));
    let out = host
        .query(&Cmd::new("sshd").args(["-t", "-f", &main_arg]))
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "the new sshd configuration does not validate (nothing was installed): {e}"
            )
        })?;
    if out.status != 0 {
        bail!(
            "the new sshd configuration does not validate (nothing was installed): {}",
            unmask(&out.stderr).trim()
        );
    }
    admit_someone(host, &main_arg, judge)
        .await
        .map_err(|e| anyhow::anyhow!("{}", unmask(&e.to_string())))
}

/// Write the candidate into `tree`: `sshd_config.d/` with every drop-in as it will be, and
/// `sshd_config` with its Include pointed there. Returns the main file's path.
pub(super) fn assemble(
    tree: &CandidateTree,
    s: &State,
    files: &[(PathBuf, String)],
) -> Result<PathBuf> {
    let drop_rel = Path::new("sshd_config.d");
    tree.create_dir(drop_rel)?;
    let replaced = |p: &Path| files.iter().find(|(f, _)| f == p).map(|(_, c)| c.clone());
    for (name, text) in &s.drop_ins {
        let p = Path::new(DROP_DIR).join(name);
        tree.write(
            &drop_rel.join(name),
            replaced(&p).unwrap_or_else(|| text.clone()).as_bytes(),
        )?;
    }
    for (path, content) in files {
        if path.parent() == Some(Path::new(DROP_DIR)) {
            tree.write(
                &drop_rel.join(path.file_name().unwrap_or_default()),
                content.as_bytes(),
            )?;
        }
    }
    let main = replaced(Path::new(SSHD_CONFIG))
        .or_else(|| s.main.clone())
        .unwrap_or_default();
    let pattern = format!("{}/*.conf", tree.path().join(drop_rel).display());
    let main: String = main
        .lines()
        .map(|l| match split_line(l) {
            Some((k, v)) if k == "include" && includes_drop_dir(&v) => format!("Include {pattern}"),
            _ => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    let main_rel = Path::new("sshd_config");
    tree.write(main_rel, (main + "\n").as_bytes())?;
    Ok(tree.path().join(main_rel))
}

/// Who the lock-out guard asks sshd about, and from where.
pub(super) struct Judge<'a> {
    /// Keyed sudo members, this session's user first.
    pub(super) logins: Vec<&'a KeyUser>,
    pub(super) from: Vec<std::net::IpAddr>,
    pub(super) link: Option<crate::resources::SshLink>,
}

/// The lock-out guard, judged by sshd itself: `sshd -T` of the candidate for each keyed
/// sudo member from each address to judge; refused unless one of them would be let in
/// with a key.
async fn admit_someone(host: &Host, main: &str, judge: &Judge<'_>) -> Result<()> {
    let (laddr, lport) = judge.link.as_ref().map_or_else(
        || ("0.0.0.0".to_string(), 22),
        |l| (l.server.to_string(), l.server_port),
    );
    let mut refusals = Vec::new();
    for u in &judge.logins {
        for &addr in &judge.from {
            let spec = format!(
                "user={},addr={addr},host={addr},laddr={laddr},lport={lport}",
                u.name
            );
            let out = host
                .query(&Cmd::new("sshd").args(["-T", "-f", main, "-C", &spec]))
                .await?;
            if out.status != 0 {
                refusals.push(format!(
                    "{} from {addr}: sshd -T failed: {}",
                    u.name,
                    out.stderr.trim()
                ));
                continue;
            }
            let login = admission::Login {
                user: &u.name,
                groups: &u.groups,
                addr,
                key_algorithms: &u.key_algorithms,
            };
            match admission::refusal(&parse_effective(&out.stdout), &login) {
                None => return Ok(()),
                Some(why) => refusals.push(format!("{} from {addr}: {why}", u.name)),
            }
        }
    }
    if refusals.is_empty() {
        bail!(
            "refusing to change sshd: no non-root member of group sudo has a valid key, so nobody could log in afterwards. Add one (users.authorized_keys) and converge again; nothing was installed"
        );
    }
    bail!(
        "refusing to change sshd: with the new configuration sshd would let none of the keyed sudo users in ({}). Fix the sshd settings in agent.toml (e.g. sshd.allow_users) or the file named; nothing was installed and sshd was not reloaded",
        refusals.join("; ")
    )
}

pub(super) fn units_cmd() -> Cmd {
    systemctl::show(
        &["Id", "LoadState", "ActiveState", "KillMode"],
        &["ssh.service", "sshd.service", "ssh.socket"],
    )
}

/// Check the files on disk with `sshd -t`, then reload sshd the way `converge` does. For
/// the commit-confirmed rollback, which restores files outside a resource run.
pub async fn validate_and_reload(host: &Host) -> Result<()> {
    // A socket-activated sshd that is not running has no /run/sshd (the unit's
    // RuntimeDirectory), and `sshd -t` refuses to judge without it.
    host.ensure_dir(
        Path::new(super::PRIVSEP_DIR),
        crate::host::FileSpec::root(0o755),
    )?;
    host.run(&Cmd::new("sshd").arg("-t"))
        .await
        .context("sshd -t rejects the configuration on disk, so sshd was not reloaded")?;
    let (unit, socket) = if host.systemd_booted() {
        let out = host.query(&units_cmd()).await?;
        parse_units(&out.stdout)
    } else {
        (None, false)
    };
    reload_unit(host, unit.as_ref(), socket).await
}

pub(super) async fn reload(host: &Host, s: &State) -> Result<()> {
    reload_unit(host, s.unit.as_ref(), s.socket_active).await
}

/// Have the running sshd take the new files without ending open sessions: a reload of the
/// unit systemd runs (`ssh.service` on Debian/Ubuntu, `sshd.service` elsewhere), a restart
/// under socket activation (see [`activation`]); an sshd that is not running picks the
/// files up when it starts.
async fn reload_unit(host: &Host, unit: Option<&Unit>, socket_active: bool) -> Result<()> {
    match activation::action(unit, socket_active) {
        activation::Action::Reload(id) => {
            host.run(&systemctl::reload(&id)).await?;
        }
        activation::Action::RestartUnderSocket(id) => {
            log::info!("sshd is socket-activated: restarting {id} (ssh.socket keeps port 22)");
            host.run(&systemctl::restart(&id)).await?;
        }
        activation::Action::Refuse(why) => bail!("{why}"),
        activation::Action::NotRunning => {
            log::info!("sshd unit not running; the new configuration applies when it starts")
        }
        activation::Action::Pid => {
            let pid = host
                .read_text(Path::new("/run/sshd.pid"))?
                .and_then(|p| p.trim().parse::<i32>().ok());
            match pid {
                Some(pid) => host
                    .run(&Cmd::new("kill").args(["-HUP", &pid.to_string()]))
                    .await
                    .map(|_| ())?,
                None => log::info!(
                    "no running sshd found; the new configuration applies when it starts"
                ),
            }
        }
    }
    Ok(())
}
