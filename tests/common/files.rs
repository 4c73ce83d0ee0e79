//! Files inside a box seen from the host: path resolution, read/write, snapshots.

use std::collections::{BTreeMap, VecDeque};
use std::ffi::OsString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::process::*;
use super::*;

/// Resolves `path` as if `root` were `/`: absolute symlinks restart at `root`, `..` never leaves it.
/// Going through /proc/PID/root naively would follow absolute links into the *host*.
pub(crate) fn resolve_in_root(root: &Path, path: &str, follow_last: bool) -> PathBuf {
    let mut todo: VecDeque<OsString> = Path::new(path)
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect();
    let mut done: Vec<OsString> = Vec::new();
    let mut links = 0;
    while let Some(c) = todo.pop_front() {
        if c == ".." {
            done.pop();
            continue;
        }
        let mut cand = root.to_path_buf();
        cand.extend(&done);
        cand.push(&c);
        let is_last = todo.is_empty();
        match fs::symlink_metadata(&cand) {
            Ok(m) if m.file_type().is_symlink() && (!is_last || follow_last) => {
                links += 1;
                if links > 40 {
                    return cand; // let the caller's I/O report ELOOP-ish failure
                }
                let target = fs::read_link(&cand).unwrap_or_default();
                if target.is_absolute() {
                    done.clear();
                }
                let mut comps: Vec<OsString> = target
                    .components()
                    .filter_map(|c| match c {
                        Component::Normal(s) => Some(s.to_os_string()),
                        Component::ParentDir => Some(OsString::from("..")),
                        _ => None,
                    })
                    .collect();
                comps.reverse();
                for x in comps {
                    todo.push_front(x);
                }
            }
            _ => done.push(c),
        }
    }
    let mut p = root.to_path_buf();
    p.extend(&done);
    p
}

// ---------------------------------------------------------------------------------------------
// Stale-state cleanup

impl TestBox {
    /// Host path that reaches `path` inside the container, with symlinks resolved inside it.
    pub fn host_path(&self, path: &str) -> PathBuf {
        self.guard();
        resolve_in_root(
            &PathBuf::from(format!("/proc/{}/root", self.pid)),
            path,
            true,
        )
    }

    /// Contents of a file inside the container; None if it does not exist.
    pub fn read(&self, path: &str) -> Option<Vec<u8>> {
        let p = self.host_path(path);
        match fs::read(&p) {
            Ok(b) => Some(b),
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    || e.raw_os_error() == Some(20 /* ENOTDIR */) =>
            {
                None
            }
            Err(e) => panic!("read {path} in {}: {e}", self.name),
        }
    }

    pub fn read_string(&self, path: &str) -> Option<String> {
        self.read(path)
            .map(|b| String::from_utf8(b).unwrap_or_else(|e| panic!("{path} is not UTF-8: {e}")))
    }

    /// Writes a file inside the container (parents created), owned root:root, replaced atomically.
    pub fn write(&self, path: &str, content: &[u8], mode: u32) {
        assert!(
            path.starts_with('/'),
            "write needs an absolute path, got {path:?}"
        );
        let script = r#"set -e; d=$(dirname -- "$1"); mkdir -p -- "$d"; t=$(mktemp "$d/.sapt-write.XXXXXX"); trap 'rm -f -- "$t"' EXIT
cat > "$t"; chown root:root -- "$t"; chmod "$2" -- "$t"; mv -f -- "$t" "$1"; trap - EXIT"#;
        let mode = format!("{:o}", mode);
        let o = self
            .nsenter_bounded(
                &["/bin/sh", "-c", script, "sh", path, &mode],
                Some(content),
                self.opts.exec_timeout,
            )
            .unwrap_or_else(|_| panic!("write {path} timed out"));
        assert!(
            o.status.success(),
            "write {path} in {} failed\n{}",
            self.name,
            describe(&o)
        );
    }

    /// For each path (file or directory, recursively; symlinks recorded, never followed; other
    /// mounts below a directory not descended): container path -> "MODE UID GID CONTENT", MODE the
    /// full st_mode in octal, CONTENT the sha256 of a file, "-> target" of a symlink, "-" otherwise.
    /// A missing path maps to "absent".
    pub fn snapshot(&self, paths: &[&str]) -> BTreeMap<String, String> {
        self.guard();
        let root = PathBuf::from(format!("/proc/{}/root", self.pid));
        let mut map = BTreeMap::new();
        let mut files: Vec<(String, PathBuf)> = Vec::new();
        for p in paths {
            assert!(
                p.starts_with('/'),
                "snapshot needs absolute paths, got {p:?}"
            );
            let key = p.trim_end_matches('/');
            let key = if key.is_empty() { "/" } else { key };
            let hp = resolve_in_root(&root, key, false);
            match fs::symlink_metadata(&hp) {
                Ok(m) => walk(&hp, key, &m, None, &mut map, &mut files),
                Err(_) => {
                    map.insert(key.to_string(), "absent".to_string());
                }
            }
        }
        for (key, hash) in sha256_many(&files) {
            if let Some(v) = map.get_mut(&key) {
                v.push_str(&hash);
            }
        }
        map
    }
}

pub(crate) fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            collect_files(&e.path(), out);
        } else if ft.is_file() {
            out.push(e.path());
        }
    }
}

pub(crate) fn walk(
    hp: &Path,
    key: &str,
    m: &fs::Metadata,
    parent_dev: Option<u64>,
    map: &mut BTreeMap<String, String>,
    files: &mut Vec<(String, PathBuf)>,
) {
    let ft = m.file_type();
    let head = format!("{:o} {} {} ", m.mode(), m.uid(), m.gid());
    if ft.is_symlink() {
        let t = fs::read_link(hp)
            .map(|t| t.to_string_lossy().into_owned())
            .unwrap_or_default();
        map.insert(key.to_string(), format!("{head}-> {t}"));
    } else if ft.is_file() {
        map.insert(key.to_string(), head);
        files.push((key.to_string(), hp.to_path_buf()));
    } else if ft.is_dir() {
        map.insert(key.to_string(), format!("{head}-"));
        if parent_dev.is_some_and(|d| d != m.dev()) {
            return; // another mount (e.g. /proc below /): out of scope
        }
        let Ok(rd) = fs::read_dir(hp) else { return };
        let mut names: Vec<OsString> = rd.flatten().map(|e| e.file_name()).collect();
        names.sort();
        for n in names {
            let child = hp.join(&n);
            let ckey = if key == "/" {
                format!("/{}", n.to_string_lossy())
            } else {
                format!("{key}/{}", n.to_string_lossy())
            };
            if let Ok(cm) = fs::symlink_metadata(&child) {
                walk(&child, &ckey, &cm, Some(m.dev()), map, files);
            }
        }
    } else {
        map.insert(key.to_string(), format!("{head}rdev={:x}", m.rdev()));
    }
}

/// sha256 of many files with one `sha256sum -z` per batch (-z also disables name escaping).
pub(crate) fn sha256_many(files: &[(String, PathBuf)]) -> Vec<(String, String)> {
    let mut res = Vec::new();
    for chunk in files.chunks(500) {
        let mut c = Command::new("sha256sum");
        c.arg("-z").arg("--");
        for (_, p) in chunk {
            c.arg(p);
        }
        let out = run_bounded(&mut c, None, Duration::from_secs(120))
            .unwrap_or_else(|_| panic!("sha256sum timed out"));
        let mut by_path: BTreeMap<Vec<u8>, String> = BTreeMap::new();
        for rec in out.stdout.split(|&b| b == 0) {
            if rec.len() > 66 {
                by_path.insert(
                    rec[66..].to_vec(),
                    String::from_utf8_lossy(&rec[..64]).into_owned(),
                );
            }
        }
        for (k, p) in chunk {
            let h = by_path
                .get(p.as_os_str().as_bytes())
                .cloned()
                .unwrap_or_else(|| "unreadable".into());
            res.push((k.clone(), h));
        }
    }
    res
}

/// Human-readable difference of two snapshots, empty if equal.
pub fn snapshot_diff(
    before: &BTreeMap<String, String>,
    after: &BTreeMap<String, String>,
) -> String {
    let mut s = String::new();
    for (k, v) in before {
        match after.get(k) {
            None => s.push_str(&format!("- {k}: {v}\n")),
            Some(w) if w != v => s.push_str(&format!("~ {k}: {v} => {w}\n")),
            _ => {}
        }
    }
    for (k, w) in after {
        if !before.contains_key(k) {
            s.push_str(&format!("+ {k}: {w}\n"));
        }
    }
    s
}
