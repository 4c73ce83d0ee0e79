//! The planner's parts: directories, the key pair, and the two `~/.ssh` text files.

use super::*;

/// Refuse what we must not write through or replace.
pub(super) fn require(path: &Path, entry: &Entry, kind: Kind) -> Result<()> {
    if entry.kind != kind {
        bail!(
            "{} is {}, not {kind}; sapari-agent does not follow or replace it: make it {kind} \
             (or move it away) and run `{HINT}`",
            path.display(),
            entry.kind
        );
    }
    Ok(())
}

/// The step bringing an existing path's mode and owner to `want`, if needed.
fn fix_meta(steps: &mut Vec<Step>, path: &Path, entry: &Entry, want: FileSpec) {
    if entry.spec != want {
        steps.push(Step::SetMeta {
            path: path.to_path_buf(),
            from: entry.spec,
            to: want,
        });
    }
}

/// Write `new` unless the file already holds it; fix mode and owner otherwise.
fn ensure_file(
    steps: &mut Vec<Step>,
    path: &Path,
    file: Option<&TextFile>,
    new: String,
    want: FileSpec,
) -> Result<()> {
    match file {
        Some(f) => {
            require(path, &f.entry, Kind::File)?;
            if f.text != new {
                steps.push(Step::Write {
                    path: path.to_path_buf(),
                    old: Some(f.text.clone()),
                    new,
                    to: want,
                });
            } else {
                fix_meta(steps, path, &f.entry, want);
            }
        }
        None => steps.push(Step::Write {
            path: path.to_path_buf(),
            old: None,
            new,
            to: want,
        }),
    }
    Ok(())
}

/// Does the `.pub` file hold the public half of `key` (comments may differ)?
fn public_matches(text: &str, key: &KeyInfo) -> bool {
    PublicKey::from_openssh(text.trim()).is_ok_and(|p| p.key_data() == key.public.key_data())
}

pub(super) fn public_note(line: &str) -> String {
    format!("public key (add to GitHub -> Settings -> Deploy keys): {line}")
}

/// The home, `~/.ssh` and a chosen key's directory: they must exist as directories
/// (`~/.ssh` is created), and are never followed when they are something else.
pub(super) fn plan_dirs(s: &State, user: &Owner, p: &Paths, steps: &mut Vec<Step>) -> Result<()> {
    match &s.home {
        Some(e) => require(&user.home, e, Kind::Dir)?,
        None => bail!(
            "home directory {} of user {} does not exist",
            user.home.display(),
            user.name
        ),
    }
    match &s.ssh_dir {
        Some(e) => {
            require(&p.ssh_dir, e, Kind::Dir)?;
            fix_meta(steps, &p.ssh_dir, e, user.meta(DIR_MODE));
        }
        None => steps.push(Step::CreateDir {
            path: p.ssh_dir.clone(),
            to: user.meta(DIR_MODE),
        }),
    }
    if let Some(dir) = p.key_dir() {
        match &s.key_dir {
            Some(e) => require(dir, e, Kind::Dir)?,
            None => bail!(
                "directory {} (of deploy_key.path) does not exist; create it or leave \
                 deploy_key.path unset",
                dir.display()
            ),
        }
    }
    Ok(())
}

/// `known_hosts` with GitHub's keys and `~/.ssh/config` with our block.
pub(super) fn plan_ssh_files(
    s: &State,
    user: &Owner,
    p: &Paths,
    github: &[String],
    steps: &mut Vec<Step>,
) -> Result<()> {
    let old = s.known_hosts.as_ref().map_or("", |f| f.text.as_str());
    ensure_file(
        steps,
        &p.known_hosts,
        s.known_hosts.as_ref(),
        merge_known_hosts(old, github),
        user.meta(KNOWN_HOSTS_MODE),
    )?;
    let old = s.config.as_ref().map_or("", |f| f.text.as_str());
    let config =
        merge_ssh_config(old, &p.key).with_context(|| format!("in {}", p.config.display()))?;
    ensure_file(
        steps,
        &p.config,
        s.config.as_ref(),
        config,
        user.meta(CONFIG_MODE),
    )?;
    Ok(())
}

impl DeployKey {
    /// No private key yet: generate a pair (a lone `.pub` is replaced by it).
    pub(super) fn plan_new_key(
        &self,
        s: &State,
        user: &Owner,
        p: &Paths,
        plan: &mut Plan<Step>,
    ) -> Result<()> {
        let steps = &mut plan.steps;
        if let Some(f) = &s.public {
            require(&p.public, &f.entry, Kind::File)?;
            plan.notes.push(format!(
                "{} has no private key next to it: a new pair replaces it, so the \
                 deploy key registered at GitHub must be replaced too",
                p.public.display()
            ));
        }
        steps.push(Step::Generate {
            path: p.key.clone(),
            public: p.public.clone(),
            comment: self.comment.clone(),
            uid: user.uid,
            gid: user.gid,
        });
        plan.notes.push(format!(
            "a new ed25519 deploy key will be generated at {}; its public key is \
             printed after the converge and by `sapari-agent status`",
            p.key.display()
        ));
        Ok(())
    }

    /// An existing private key is kept; its `.pub` is derived from it again when wrong.
    pub(super) fn plan_existing_key(
        &self,
        s: &State,
        f: &PrivateKeyFile,
        user: &Owner,
        p: &Paths,
        plan: &mut Plan<Step>,
    ) -> Result<()> {
        let steps = &mut plan.steps;
        require(&p.key, &f.entry, Kind::File)?;
        let key = f.key.as_ref().map_err(|why| {
            anyhow!(
                "cannot use the deploy key {path}: {why}. It is left untouched. To \
                 replace it, move it aside (mv {path} {path}.broken), run `{HINT}` to \
                 generate a new one, then replace the deploy key at GitHub",
                path = p.key.display()
            )
        })?;
        fix_meta(steps, &p.key, &f.entry, user.meta(PRIVATE_MODE));
        let line = key.public_line(&self.comment)?;
        match &s.public {
            Some(pf) if pf.entry.kind == Kind::File && public_matches(&pf.text, key) => {
                fix_meta(steps, &p.public, &pf.entry, user.meta(PUBLIC_MODE));
            }
            other => {
                if let Some(pf) = other {
                    require(&p.public, &pf.entry, Kind::File)?;
                }
                steps.push(Step::Write {
                    path: p.public.clone(),
                    old: other.as_ref().map(|pf| pf.text.clone()),
                    new: format!("{line}\n"),
                    to: user.meta(PUBLIC_MODE),
                });
            }
        }
        if key.encrypted {
            plan.notes.push(format!(
                "{} is protected by a passphrase: git cannot use it without a person \
                 typing it",
                p.key.display()
            ));
        }
        plan.notes.push(public_note(&line));
        Ok(())
    }
}
