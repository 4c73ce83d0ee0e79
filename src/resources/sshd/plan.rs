//! The sub-planners of `Sshd::plan`, in the order the plan runs them: what must hold before
//! anything is planned, the files sshd needs besides its configuration, the configuration
//! text, the lock-out guard and reload, and the notes.

use std::collections::BTreeMap;

use anyhow::{Result, bail};

use super::{
    ETC_SSH, Effective, INCLUDE_LINE, PUBLIC_PROBE, RELOAD_PENDING, SSHD_CONFIG, Sshd, State, Step,
    files_setting, has_include, match_block_settings, neutralize, overrides, read_order,
    strong_moduli,
};
use crate::engine::Plan;

impl Sshd {
    /// The main file, once sshd is installed and the configuration on disk validates:
    /// nothing is planned on top of a broken one.
    pub(super) fn preconditions(s: &State) -> Result<&str> {
        if !s.sshd_installed {
            bail!("sshd is not installed (apt-get install openssh-server)");
        }
        let Some(main) = &s.main else {
            bail!("{SSHD_CONFIG} is missing; reinstall openssh-server");
        };
        if let Effective::Invalid(msg) = &s.effective {
            bail!(
                "the sshd configuration on disk does not validate, so nothing was changed and sshd was not reloaded: {msg}; fix or remove the file it names"
            );
        }
        Ok(main)
    }

    /// The privilege separation directory, the host key and strong moduli.
    pub(super) fn plan_prerequisites(s: &State) -> Vec<Step> {
        let mut steps = Vec::new();
        if !s.privsep_dir {
            steps.push(Step::PrivsepDir);
        }
        if !s.has_ed25519_key {
            steps.push(Step::HostKey);
        }
        if let Some(m) = &s.moduli {
            let (new, removed) = strong_moduli(m);
            if removed > 0 {
                steps.push(Step::Moduli { removed, new });
            }
        }
        steps
    }

    /// The configuration files: the Include line, the overrides commented out, our drop-in.
    pub(super) fn plan_config(&self, s: &State, main: &str) -> Result<Vec<Step>> {
        let mut steps = Vec::new();
        let main_new = if has_include(main) {
            main.to_string()
        } else {
            let new = format!("{INCLUDE_LINE}\n{main}");
            steps.push(Step::AddInclude {
                old: main.to_string(),
                new: new.clone(),
            });
            new
        };
        let want = self.drop_in_content(s.has_rsa_key);
        let current = s
            .drop_ins
            .iter()
            .find(|(n, _)| *n == self.cfg.drop_in.0)
            .map(|(_, t)| t.clone());
        let drop_ins = self.drop_ins_after(s, current.as_deref(), &want);
        steps.extend(self.plan_overrides(&main_new, &drop_ins)?);
        if current.as_deref() != Some(want.as_str()) {
            steps.push(Step::WriteDropIn {
                old: current,
                new: want,
            });
        }
        Ok(steps)
    }

    /// The drop-ins as they will be once ours holds `want`, in the order sshd reads them.
    fn drop_ins_after(
        &self,
        s: &State,
        current: Option<&str>,
        want: &str,
    ) -> Vec<(String, String)> {
        let mut drop_ins = s.drop_ins.clone();
        if current != Some(want) {
            match drop_ins.iter_mut().find(|(n, _)| *n == self.cfg.drop_in.0) {
                Some((_, t)) => *t = want.to_string(),
                None => {
                    drop_ins.push((self.cfg.drop_in.0.clone(), want.to_string()));
                    drop_ins.sort();
                }
            }
        }
        drop_ins
    }

    /// Managed settings an earlier file would win with: refused, or commented out when
    /// `sshd.neutralize_overrides` allows it (one step per file).
    fn plan_overrides(&self, main_new: &str, drop_ins: &[(String, String)]) -> Result<Vec<Step>> {
        let ours = self.drop_in_path().display().to_string();
        let found = overrides(&read_order(main_new, drop_ins), &ours, &self.settings());
        if !found.is_empty() && !self.cfg.neutralize_overrides {
            let list: Vec<String> = found
                .iter()
                .map(|(f, k, v)| format!("{k} {v} in {f}"))
                .collect();
            bail!(
                "settings read before {ours} would override the hardening: {}; remove them, or set sshd.neutralize_overrides = true to let the agent comment them out. Nothing was changed",
                list.join("; ")
            );
        }
        let mut by_file: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (f, k, _) in &found {
            by_file.entry(f.clone()).or_default().push(k.clone());
        }
        let mut steps = Vec::new();
        for (file, keys) in by_file {
            let old = if file == SSHD_CONFIG {
                main_new.to_string()
            } else {
                let name = file.rsplit('/').next().unwrap_or("");
                drop_ins
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, t)| t.clone())
                    .unwrap_or_default()
            };
            let new = neutralize(&old, &keys);
            steps.push(Step::Neutralize {
                file,
                old,
                new,
                settings: keys,
            });
        }
        Ok(steps)
    }

    /// A configuration change is reloaded once the lock-out guard lets it through; without
    /// one, effective values other than ours are an error, and a reload an earlier run left
    /// pending is done now.
    pub(super) fn plan_reload(
        &self,
        s: &State,
        config_changes: bool,
        plan: &mut Plan<Step>,
    ) -> Result<()> {
        if config_changes {
            Self::lockout_guard(s)?;
            plan.steps.push(Step::Reload);
            return Ok(());
        }
        let mismatches = self.effective_mismatches(s);
        if !mismatches.is_empty() {
            let list: Vec<String> = mismatches
                .iter()
                .map(|(k, got, want)| {
                    let files = files_setting(s, k, got);
                    let set_in = if files.is_empty() {
                        String::new()
                    } else {
                        format!(" (set in {})", files.join(", "))
                    };
                    format!("{k} is {got:?}, wanted {want:?}{set_in}")
                })
                .collect();
            bail!(
                "sshd -T reports values other than {} sets: {}; look for Match blocks or Include lines elsewhere in {ETC_SSH}",
                self.drop_in_path().display(),
                list.join("; ")
            );
        }
        if s.reload_pending {
            plan.steps.push(Step::Reload);
            plan.notes.push(format!(
                "a previous run wrote sshd's configuration but was stopped before reloading sshd ({RELOAD_PENDING} is there): reloading now, so the running daemon uses what the files say"
            ));
        }
        Ok(())
    }

    /// The plan-time half of the lock-out guard (the candidate's own `sshd -T` is the
    /// other): no keyed sudo member, no change that turns password and root login off.
    fn lockout_guard(s: &State) -> Result<()> {
        if s.key_users.is_empty() {
            bail!(
                "refusing to turn off password and root login: no non-root member of group sudo has a valid key in ~/.ssh/authorized_keys, so nobody could log in afterwards. Add one (users.authorized_keys, or users.import_root_keys with keys in /root/.ssh/authorized_keys) and converge again; sshd was left untouched"
            );
        }
        Ok(())
    }

    /// Settings inside Match blocks, and the unit that runs sshd.
    pub(super) fn plan_notes(&self, s: &State, main: &str, plan: &mut Plan<Step>) {
        let ours = self.drop_in_path().display().to_string();
        for (file, key) in match_block_settings(main, &s.drop_ins, &self.settings()) {
            plan.notes.push(format!(
                "{file} sets {key} inside a Match block: connections it matches may get another value than {ours} sets (checked for 127.0.0.1 and {PUBLIC_PROBE} only)"
            ));
        }
        if let Some(u) = &s.unit {
            plan.notes.push(format!(
                "sshd runs as {}",
                super::activation::describe(u, s.socket_active)
            ));
        }
        if s.socket_active {
            let paths: Vec<String> = s
                .drop_ins
                .iter()
                .map(|(n, _)| format!("{}/{n}", super::DROP_DIR))
                .collect();
            let files = std::iter::once((SSHD_CONFIG, main)).chain(
                paths
                    .iter()
                    .zip(&s.drop_ins)
                    .map(|(p, (_, t))| (p.as_str(), t.as_str())),
            );
            let found = super::activation::listener_settings(files);
            plan.notes.extend(super::activation::listener_note(&found));
        }
    }
}
