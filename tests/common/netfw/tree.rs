//! A docker tree (tests/harness/build-docker-tree.sh) as the server's root: the mounts that
//! let a process rooted in the read-only tree work, and see this edge's directory at the
//! path it has on the host.
//!
//! The tree becomes the mount namespace's root by pivot_root, not by chroot: runc's own
//! pivot_root inside a chroot leaves the namespace's root where it was (the host's /), so every
//! process that joins a container's mount namespace (`docker exec`) found itself in the
//! host's root instead of the container's. With the tree as the root, `docker exec` works as
//! on a server.
//!
//! The same path matters because the compose CLI hands dockerd host paths: a bind mount's
//! source (`./caddy/Caddyfile`) is resolved by the tree's dockerd, and the agent's config
//! names its state dir and project by their host paths.

use super::TREE_MNT;

/// Shell functions, for a script run in a private mount namespace:
/// - `tree_root R`: R bound on itself (pivot_root's new root must be a mount point) and made read-only, with proc, this netns's sysfs, the
///   host's cgroup hierarchies and /dev, and a tmpfs /tmp.
/// - `enter_tree R`: R becomes the root of this mount namespace (pivot_root onto the tree's
///   empty /mnt, the host's root then detached); the commands after it are the tree's.
/// - `same_path R P`: the host directory P bound at P inside R. The tree cannot grow a mount
///   point, so the nearest ancestor the tree has (e.g. /var/tmp) gets a tmpfs first, which
///   hides only what the tree keeps there (nothing a daemon reads).
pub(crate) const TREE_SH: &str = r#"
tree_root() {
  mount --bind "$1" "$1"
  mount -o remount,bind,ro "$1"
  mount -t proc proc "$1/proc"
  mount -t sysfs sysfs "$1/sys"
  mount --rbind /sys/fs/cgroup "$1/sys/fs/cgroup"
  mount --rbind /dev "$1/dev"
  mount -t tmpfs -o mode=1777 tmpfs "$1/tmp"
}
enter_tree() {
  cd "$1"
  pivot_root . mnt
  cd /
  umount -l /mnt
}
same_path() {
  a=$2
  while [ ! -d "$1$a" ]; do a=$(dirname "$a"); done
  if [ "$a" = / ]; then
    echo "no directory on the way to $2 exists in the tree $1 (set SAPARI_TEST_TMP under /var/tmp or /tmp)" >&2
    exit 1
  fi
  if [ "$a" != "$2" ]; then
    mount -t tmpfs -o mode=755 tmpfs "$1$a"
    mkdir -p "$1$2"
  fi
  mount --bind "$2" "$1$2"
}
"#;

/// The script that starts a tree's dockerd: `sh -c <this> sh D R E dockerd-args...` with D our
/// docker dir (on /sfw, with /etc/docker and /run of its own) and E the edge's directory.
pub(crate) fn dockerd_script() -> String {
    format!(
        r#"set -e
{TREE_SH}
D=$1; R=$2; E=$3; shift 3
tree_root "$R"
mount --bind "$D/run" "$R/run"
mount --bind "$D" "$R{TREE_MNT}"
mount --bind "$D/etc" "$R/etc/docker"
same_path "$R" "$E"
enter_tree "$R"
exec /usr/sbin/dockerd "$@""#
    )
}

/// The script that runs a program inside the tree, as the server's own: `sh -c <this> sh R E
/// RUN BIN args...`, with RUN bound on /run, starting in the tree's /. BIN is a static binary
/// of the host (the agent), bound at /usr/local/sbin/<its name>, or `-`: args name a program of
/// the tree.
pub(crate) fn exec_script() -> String {
    format!(
        r#"set -e
{TREE_SH}
R=$1; E=$2; RUN=$3; BIN=$4; shift 4
tree_root "$R"
mount --bind "$RUN" "$R/run"
same_path "$R" "$E"
if [ "$BIN" != - ]; then
  name=$(basename "$BIN")
  mount -t tmpfs -o mode=755 tmpfs "$R/usr/local/sbin"
  touch "$R/usr/local/sbin/$name"
  mount --bind "$BIN" "$R/usr/local/sbin/$name"
  set -- "/usr/local/sbin/$name" "$@"
fi
enter_tree "$R"
exec "$@""#
    )
}
