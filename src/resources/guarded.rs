//! What the commit-confirmed guard keeps of a guarded resource's state, shared by the
//! resources' own `rollback` modules: a file's content and owner, as saved and put back.

use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow};
use serde::{Deserialize, Serialize};

use crate::host::{FileSpec, Host};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSnap {
    pub path: PathBuf,
    /// None: the file did not exist.
    pub content: Option<String>,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

pub fn file_snap(host: &Host, path: &Path) -> Result<FileSnap> {
    snap_of(path, host.read(path)?, (0o644, 0, 0))
}

/// What a rollback keeps of a file; `absent` is the (mode, uid, gid) recorded when it does
/// not exist.
pub fn snap_of(
    path: &Path,
    found: Option<crate::host::FileState>,
    absent: (u32, u32, u32),
) -> Result<FileSnap> {
    Ok(match found {
        Some(f) => FileSnap {
            path: path.to_path_buf(),
            content: Some(String::from_utf8(f.content).map_err(|_| {
                anyhow!(
                    "{} is not UTF-8 text and cannot be kept for a rollback",
                    path.display()
                )
            })?),
            mode: f.mode,
            uid: f.uid,
            gid: f.gid,
        },
        None => FileSnap {
            path: path.to_path_buf(),
            content: None,
            mode: absent.0,
            uid: absent.1,
            gid: absent.2,
        },
    })
}

pub fn put_back(host: &Host, f: &FileSnap) -> Result<()> {
    match &f.content {
        Some(c) => host.write(
            &f.path,
            c.as_bytes(),
            FileSpec {
                mode: f.mode,
                uid: f.uid,
                gid: f.gid,
            },
            false,
        ),
        None => host.remove_file(&f.path),
    }
}
