#!/bin/bash
# Build (once) the Debian rootfs that the system tests boot with systemd-nspawn, and print its path
# as the last line of stdout. Progress goes to stderr.
#
#   tests/harness/build-rootfs.sh            # bookworm (Debian 12: OpenSSH 9.2, systemd 252)
#   tests/harness/build-rootfs.sh trixie     # Debian 13: OpenSSH 10.0 (sshd-session), systemd 257,
#                                            # ssh.socket shipped (the model Ubuntu 24.04 enables)
#
# The cache key covers the package list and this script, so editing either yields a fresh rootfs
# instead of silently reusing an old one. Old keys are left in place: another checkout may still use them.
#
# Env: DEBIAN_MIRROR         mirror URL (default: first one configured for apt on this host)
#      SAPARI_TEST_CACHE     cache dir (default /var/cache/sapari-agent-tests)
set -euo pipefail

PACKAGES="systemd systemd-sysv systemd-timesyncd dbus iproute2 iputils-ping procps openssh-server openssh-client sudo ca-certificates ufw iptables nftables e2fsprogs util-linux mount kmod less python3 adduser passwd"
SUITE=${1:-bookworm}

log() { echo "build-rootfs: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

case "$SUITE" in
  bookworm|trixie) ;;
  *) die "usage: $0 [bookworm|trixie] (got '$SUITE')" ;;
esac
[ "$(id -u)" = 0 ] || die "must run as root (debootstrap)"

SELF=$(readlink -f "${BASH_SOURCE[0]}")
CACHE=${SAPARI_TEST_CACHE:-/var/cache/sapari-agent-tests}
KEY=$({ printf '%s\n' "$PACKAGES" "$SUITE"; cat "$SELF"; } | sha256sum | cut -c1-16)
# bookworm keeps its old directory name so that other checkouts' caches stay valid
if [ "$SUITE" = bookworm ]; then FINAL="$CACHE/rootfs-$KEY"; else FINAL="$CACHE/rootfs-$SUITE-$KEY"; fi

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

for t in debootstrap ssh-keygen flock unshare; do
  command -v "$t" >/dev/null || die "$t not found (apt-get install debootstrap openssh-client util-linux)"
done

mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
log "waiting for build lock $CACHE/.lock"
flock 9
if [ -d "$FINAL" ]; then echo "$FINAL"; exit 0; fi   # another caller built it while we waited

# Holding the lock means no build is in progress: any leftover temp dir is from a killed build.
for stale in "$CACHE"/.rootfs-*.tmp.*; do
  [ -e "$stale" ] || continue
  log "removing stale partial build $stale"
  # a killed debootstrap may have left proc/sys mounted inside; never rm -rf through a mount
  awk -v p="$stale/" 'index($2, p)==1 {print $2}' /proc/self/mounts | sort -r | while read -r mp; do
    umount -l "$mp" || true
  done
  rm -rf --one-file-system "$stale"
done

TMP="$CACHE/.rootfs-$SUITE-$KEY.tmp.$$"
trap 'rm -rf --one-file-system "$TMP"' EXIT
mkdir -m 0755 "$TMP"

MIRROR=$(mirror)
log "debootstrap $SUITE into $TMP (takes a few minutes the first time)"
t0=$(date +%s)
# private mount ns: the proc/sys mounts debootstrap makes inside the target vanish with it, even if killed
unshare -m --propagation private \
  debootstrap --variant=minbase --include="${PACKAGES// /,}" "$SUITE" "$TMP" "$MIRROR" >&2 \
  || die "debootstrap failed (see $TMP/debootstrap/debootstrap.log if still present)"

log "configuring rootfs"
# The tests configure networking from the host side; networkd would fight that and wait-online
# keeps the container in "starting" for minutes once CAP_NET_ADMIN is granted.
for u in systemd-networkd-wait-online.service systemd-networkd.service systemd-networkd.socket; do
  ln -sfn /dev/null "$TMP/etc/systemd/system/$u"
done
# no cloud-init here, so nothing else would create host keys and ssh.service would fail its sshd -t
ssh-keygen -A -f "$TMP" >&2
echo fresh-server > "$TMP/etc/hostname"
cat > "$TMP/etc/hosts" <<'EOF'
127.0.0.1	localhost
::1		localhost ip6-localhost ip6-loopback
ff02::1		ip6-allnodes
ff02::2		ip6-allrouters
EOF
rm -f "$TMP"/var/cache/apt/archives/*.deb
echo "$KEY" > "$TMP/etc/sapari-test-rootfs"
echo "$SUITE" > "$TMP/etc/sapari-test-suite"

mv -T "$TMP" "$FINAL"
trap - EXIT
log "built $FINAL in $(( $(date +%s) - t0 ))s"
echo "$FINAL"
