#!/bin/bash
# Build (once) a Debian tree holding a newer Docker than the host's, for the real-traffic firewall
# fixture (tests/common/netfw.rs runs its dockerd with the tree as its root inside the server's network namespace),
# and print its path as the last line of stdout. Progress goes to stderr.
#
#   tests/harness/build-docker-tree.sh trixie   # docker.io 26.1 (Debian 13)
#   tests/harness/build-docker-tree.sh forky    # docker.io 28.5 (Debian testing)
#
# The tree is used read-only: the fixture bind-mounts it read-only in a private mount namespace and
# puts everything dockerd writes (data root, exec root, socket, /etc/docker) on mounts of its own
# (its temp dir at /sfw, tmpfs on /run and /tmp). So one tree serves every test, also in parallel.
#
# The cache key covers the package list, the suite and this script, as in build-rootfs.sh. Old
# keys are left in place: another checkout may still use them.
#
# Env: DEBIAN_MIRROR         mirror URL (default: first one configured for apt on this host)
#      SAPARI_TEST_CACHE     cache dir (default /var/cache/sapari-agent-tests)
set -euo pipefail

# docker.io only recommends docker-cli and tini (docker-init, for `docker run --init`): list them.
PACKAGES="docker.io docker-cli docker-compose tini iptables ca-certificates busybox-static"
SUITE=${1:-}

log() { echo "build-docker-tree: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

case "$SUITE" in
  trixie) SCRIPT="" ;;
  # debootstrap of Debian 12 has no script for forky yet; sid's works for testing suites.
  forky) SCRIPT=/usr/share/debootstrap/scripts/sid ;;
  *) die "usage: $0 trixie|forky" ;;
esac

[ "$(id -u)" = 0 ] || die "must run as root (debootstrap, chroot)"

SELF=$(readlink -f "${BASH_SOURCE[0]}")
CACHE=${SAPARI_TEST_CACHE:-/var/cache/sapari-agent-tests}
KEY=$({ printf '%s\n' "$PACKAGES" "$SUITE"; cat "$SELF"; } | sha256sum | cut -c1-16)
FINAL="$CACHE/docker-$SUITE-$KEY"

# A completed build only ever appears through rename(2), so its existence means it is complete.
if [ -d "$FINAL" ]; then echo "$FINAL"; exit 0; fi

mirror() {
  if [ -n "${DEBIAN_MIRROR:-}" ]; then echo "$DEBIAN_MIRROR"; return; fi
  local m=""
  if [ -r /etc/apt/sources.list.d/debian.sources ]; then
    m=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources)
  fi
  if [ -z "$m" ] && [ -r /etc/apt/sources.list ]; then
    # "deb [opts] URI suite ..." - skip the optional [..] block
    m=$(awk '$1=="deb"{for(i=2;i<=NF;i++){ if($i ~ /^\[/){while($i !~ /\]$/)i++; continue}; print $i; exit}}' /etc/apt/sources.list)
  fi
  [ -n "$m" ] || die "no Debian mirror configured for apt on this host; set DEBIAN_MIRROR"
  echo "$m"
}

for t in debootstrap flock unshare chroot; do
  command -v "$t" >/dev/null || die "$t not found (apt-get install debootstrap util-linux coreutils)"
done
[ -z "$SCRIPT" ] || [ -r "$SCRIPT" ] || die "$SCRIPT not found (debootstrap too old?)"

mkdir -p "$CACHE"
# The same lock as build-rootfs.sh: holding it means no build of any tree is in progress.
exec 9>"$CACHE/.lock"
log "waiting for build lock $CACHE/.lock"
flock 9
if [ -d "$FINAL" ]; then echo "$FINAL"; exit 0; fi   # another caller built it while we waited

# Holding the lock means no build is in progress: any leftover temp dir is from a killed build.
for stale in "$CACHE"/.docker-*.tmp.*; do
  [ -e "$stale" ] || continue
  log "removing stale partial build $stale"
  # a killed debootstrap may have left proc/sys mounted inside; never rm -rf through a mount
  awk -v p="$stale/" 'index($2, p)==1 {print $2}' /proc/self/mounts | sort -r | while read -r mp; do
    umount -l "$mp" || true
  done
  rm -rf --one-file-system "$stale"
done

TMP="$CACHE/.docker-$SUITE-$KEY.tmp.$$"
trap 'rm -rf --one-file-system "$TMP"' EXIT
mkdir -m 0755 "$TMP"

MIRROR=$(mirror)
log "debootstrap $SUITE into $TMP (about a minute the first time)"
t0=$(date +%s)
# private mount ns: the proc/sys mounts debootstrap makes inside the target vanish with it, even if
# killed. debootstrap does not check Valid-Until (a testing suite's Release may be past it).
# shellcheck disable=SC2086
unshare -m --propagation private \
  debootstrap --variant=minbase --include="${PACKAGES// /,}" "$SUITE" "$TMP" "$MIRROR" $SCRIPT >&2 \
  || die "debootstrap failed (see $TMP/debootstrap/debootstrap.log if still present)"

log "checking the tree"
for f in usr/sbin/dockerd usr/bin/docker usr/bin/containerd usr/sbin/runc usr/bin/docker-init; do
  [ -e "$TMP/$f" ] || [ -L "$TMP/$f" ] || die "$f missing in the $SUITE tree"
done
# the userland proxy (its place differs between releases): IPv6 clients of an IPv4-only network
# reach containers through it
PROXY=$(cd "$TMP" && find usr -name 'docker-proxy*' \( -type f -o -type l \) | head -1)
[ -n "$PROXY" ] || die "docker-proxy missing in the $SUITE tree"
log "userland proxy: /$PROXY"
VERSION=$(chroot "$TMP" /usr/sbin/dockerd --version) || die "dockerd --version failed in the tree"
log "$VERSION"
# The fixture's mount points: its temp dir (data root, exec root, socket, daemon.json) is bound on
# /sfw; /etc/docker gets a private directory. Made here because the tree is read-only at run time.
mkdir -p "$TMP/sfw" "$TMP/etc/docker"
rm -f "$TMP"/var/cache/apt/archives/*.deb
rm -rf "$TMP"/var/lib/apt/lists/* "$TMP"/debootstrap
printf '%s\n' "$VERSION" > "$TMP/etc/sapari-test-docker-version"
echo "$KEY" > "$TMP/etc/sapari-test-docker-tree"

mv -T "$TMP" "$FINAL"
trap - EXIT
log "built $FINAL in $(( $(date +%s) - t0 ))s"
echo "$FINAL"
