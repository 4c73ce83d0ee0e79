//! Observation below the user's home: every file is read through a [`UserDir`] handle, so a
//! link, FIFO or hard link the user planted is reported or refused, never followed.

use super::*;

pub(super) fn entry_from(m: &userdir::Meta) -> Entry {
    Entry {
        kind: match m.kind {
            userdir::Kind::File => Kind::File,
            userdir::Kind::Dir => Kind::Dir,
            userdir::Kind::Symlink => Kind::Symlink,
            userdir::Kind::Other => Kind::Other,
        },
        spec: FileSpec {
            mode: m.mode,
            uid: m.uid,
            gid: m.gid,
        },
        size: m.size,
    }
}

/// A directory on the way to the files: what it is, for the planner, and when it is a
/// directory the handle every read and write below it goes through.
#[derive(Debug, Default)]
pub(super) struct Opened {
    pub(super) entry: Option<Entry>,
    pub(super) handle: Option<UserDir>,
}

/// Open `dir` as `uid`'s. The home and a directory outside it are paths root chose (the
/// passwd entry, `deploy_key.path`) and are followed like any path root names; below the
/// home every component is the user's to plant a link in, so each is opened without
/// following, from the home's descriptor.
pub(super) fn open_dir(host: &Host, home: &Path, uid: u32, dir: &Path) -> Result<Opened> {
    let Ok(rel) = dir.strip_prefix(home) else {
        return open_chosen(host, dir, uid);
    };
    let names = rel
        .components()
        .map(|c| match c {
            Component::Normal(n) => n.to_str(),
            _ => None,
        })
        .collect::<Option<Vec<&str>>>()
        .with_context(|| {
            format!(
                "cannot open {}: only plain UTF-8 names are followed below the home {}",
                dir.display(),
                home.display()
            )
        })?;
    let Some((last, between)) = names.split_last() else {
        return open_chosen(host, dir, uid);
    };
    let Some(mut cur) = open_chosen(host, home, uid)?.handle else {
        return Ok(Opened::default());
    };
    for name in between {
        match cur.subdir(name)? {
            Some(d) => cur = d,
            None => return Ok(Opened::default()),
        }
    }
    let Some(m) = cur.lstat(last)? else {
        return Ok(Opened::default());
    };
    if m.kind != userdir::Kind::Dir {
        return Ok(Opened {
            entry: Some(entry_from(&m)),
            handle: None,
        });
    }
    // What was opened is described, not what lstat saw a moment earlier.
    Ok(match cur.subdir(last)? {
        Some(d) => Opened {
            entry: Some(entry_from(&d.meta()?)),
            handle: Some(d),
        },
        None => Opened::default(),
    })
}

fn open_chosen(host: &Host, path: &Path, uid: u32) -> Result<Opened> {
    match host.user_dir(path, uid, true) {
        Ok(Some(d)) => Ok(Opened {
            entry: Some(entry_from(&d.meta()?)),
            handle: Some(d),
        }),
        Ok(None) => Ok(Opened::default()),
        Err(e) => match files::inspect_target(path) {
            // A file where the directory should be: the planner says what to do about it.
            Ok(Some(entry)) if entry.kind != Kind::Dir => Ok(Opened {
                entry: Some(entry),
                handle: None,
            }),
            _ => Err(e),
        },
    }
}

pub(super) fn file_name(path: &Path) -> Result<&str> {
    path.file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{} does not end in a file name", path.display()))
}

/// The regular file `name` in `dir`, judged by what is opened: anything else is kept as
/// its kind with no content (the planner refuses it), and a hard link, a file over the
/// size limit or of another owner is an error naming it.
pub(super) fn read_text_file(dir: Option<&UserDir>, name: &str) -> Result<Option<TextFile>> {
    let Some(f) = read_regular(dir, name)? else {
        return Ok(None);
    };
    Ok(Some(match f {
        Err(entry) => TextFile {
            entry,
            text: String::new(),
        },
        Ok((entry, f)) => TextFile {
            entry,
            text: f.text(),
        },
    }))
}

/// `Err(entry)`: present but not a regular file, so not read.
type Regular = Result<(Entry, crate::host::FileState), Entry>;

fn read_regular(dir: Option<&UserDir>, name: &str) -> Result<Option<Regular>> {
    let Some(dir) = dir else {
        return Ok(None);
    };
    let Some(m) = dir.lstat(name)? else {
        return Ok(None);
    };
    if m.kind != userdir::Kind::File {
        return Ok(Some(Err(entry_from(&m))));
    }
    // Between the lstat and the open a link may have replaced the file: `read` refuses
    // it rather than following it.
    let Some(f) = dir.read(name)? else {
        return Ok(None);
    };
    let entry = Entry {
        kind: Kind::File,
        spec: FileSpec {
            mode: f.mode,
            uid: f.uid,
            gid: f.gid,
        },
        size: f.content.len() as u64,
    };
    Ok(Some(Ok((entry, f))))
}

/// Parse the private key file, keeping only its public half.
pub(super) fn read_private_key(
    dir: Option<&UserDir>,
    name: &str,
) -> Result<Option<PrivateKeyFile>> {
    Ok(read_regular(dir, name)?.map(|f| match f {
        Err(entry) => PrivateKeyFile {
            entry,
            key: Err("not a regular file".into()),
        },
        Ok((entry, mut f)) => {
            let key = parse_private_key(&f.content);
            // ssh-key zeroes its own copies; this buffer is ours to clear.
            f.content.fill(0);
            std::hint::black_box(&f.content);
            PrivateKeyFile { entry, key }
        }
    }))
}

/// Why the key cannot be used, in words that never contain key material.
fn parse_private_key(content: &[u8]) -> Result<KeyInfo, String> {
    let Ok(text) = std::str::from_utf8(content) else {
        return Err("not a text file".to_string());
    };
    match PrivateKey::from_openssh(text) {
        Ok(k) => Ok(KeyInfo::of(&k)),
        Err(ssh_key::Error::AlgorithmUnknown) => Err(
            "unsupported key type (sapari-agent reads ed25519 and RSA keys in OpenSSH format)"
                .to_string(),
        ),
        Err(e) => Err(format!("not an OpenSSH private key ({e})")),
    }
}
