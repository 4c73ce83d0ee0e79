#!/bin/bash
# Build (once) the Debian VM image that tests/system_boot.rs boots with qemu, and print its
# directory as the last line of stdout. Progress goes to stderr.
#
# Usage: build-vm.sh [SUITE]   (bookworm by default; trixie brings cloud-init 25)
#
# The directory holds:
#   base.qcow2           root filesystem (ext4, label saparivm, no partition table); tests boot
#                        a throwaway qcow2 overlay on it, never the base itself
#   vmlinuz, initrd.img  for qemu -kernel/-initrd (no bootloader in the image)
#   rootfs/              the same tree as a directory: `cloud-init schema` runs in it via chroot,
#                        so cloud-init never has to be installed on the test host
#   root-password        root's password in the image (Hetzner-like: the box starts out with
#                        root and password logins allowed, which the agent must switch off)
#
# Everything the agent's default config would install is already in the image, so the guest
# needs no package archive (it has no network except a forwarded port to the test's server).
# The cache key covers the suite, the package list and this script, like build-rootfs.sh.
#
# Env: DEBIAN_MIRROR, SAPARI_TEST_CACHE (see build-rootfs.sh)
set -euo pipefail

# The agent's default packages.install (unattended-upgrades fail2ban python3-systemd) and what its
# resources call (ufw, iptables, sudo/visudo, ssh-keygen, hostnamectl, chattr, mkswap) are here.
# debootstrap does not resolve virtual packages: python3-cffi-backend provides the
# python3-cffi-backend-api-* that cloud-init's python3-cryptography needs.
PACKAGES="systemd systemd-sysv systemd-timesyncd udev dbus kmod iproute2 iputils-ping netbase procps
openssh-server openssh-client sudo ca-certificates curl linux-image-amd64 initramfs-tools zstd
cloud-init ufw iptables nftables e2fsprogs util-linux mount less python3 adduser passwd
fail2ban python3-systemd unattended-upgrades python3-cffi-backend"
PACKAGES=$(echo $PACKAGES)
SUITE=${1:-bookworm}
case $SUITE in bookworm|trixie) ;; *) echo "build-vm: unsupported suite $SUITE (bookworm, trixie)" >&2; exit 2;; esac
# cloud-init's Hetzner datasource takes a DHCP lease of its own in the local stage, before
# networkd runs; cloud-init 25 does it with dhcpcd (what Ubuntu 24.04 ships for this), 22.4 only
# with dhclient. The Hetzner boot test runs on the trixie image.
if [ "$SUITE" = trixie ]; then PACKAGES="$PACKAGES dhcpcd-base"; fi
# Big enough for the packages, the agent's default 4G swap file and headroom; sparse on the host.
DISK_SIZE=8G
LABEL=saparivm

log() { echo "build-vm: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (debootstrap, chroot)"

SELF=$(readlink -f "${BASH_SOURCE[0]}")
CACHE=${SAPARI_TEST_CACHE:-/var/cache/sapari-agent-tests}
KEY=$({ printf '%s\n' "$PACKAGES" "$SUITE" "$DISK_SIZE"; cat "$SELF"; } | sha256sum | cut -c1-16)
FINAL="$CACHE/vm-$SUITE-$KEY"

# A completed build only ever appears through rename(2), so its existence means it is complete.
if [ -d "$FINAL" ]; then echo "$FINAL"; exit 0; fi

mirror() {
  if [ -n "${DEBIAN_MIRROR:-}" ]; then echo "$DEBIAN_MIRROR"; return; fi
  local m=""
  if [ -r /etc/apt/sources.list.d/debian.sources ]; then
    m=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources)
  fi
  if [ -z "$m" ] && [ -r /etc/apt/sources.list ]; then
    m=$(awk '$1=="deb"{for(i=2;i<=NF;i++){ if($i ~ /^\[/){while($i !~ /\]$/)i++; continue}; print $i; exit}}' /etc/apt/sources.list)
  fi
  [ -n "$m" ] || die "no Debian mirror configured for apt on this host; set DEBIAN_MIRROR"
  echo "$m"
}

for t in debootstrap mkfs.ext4 qemu-img unshare flock openssl; do
  command -v "$t" >/dev/null || die "$t not found (apt-get install debootstrap e2fsprogs qemu-utils util-linux openssl)"
done

mkdir -p "$CACHE"
exec 9>"$CACHE/.lock-vm"
log "waiting for build lock $CACHE/.lock-vm"
flock 9
if [ -d "$FINAL" ]; then echo "$FINAL"; exit 0; fi   # another caller built it while we waited

# Holding the lock means no build is in progress: any leftover temp dir is from a killed build.
for stale in "$CACHE"/.vm-*.tmp.*; do
  [ -e "$stale" ] || continue
  log "removing stale partial build $stale"
  # a killed debootstrap may have left proc/sys mounted inside; never rm -rf through a mount
  awk -v p="$stale/" 'index($2, p)==1 {print $2}' /proc/self/mounts | sort -r | while read -r mp; do
    umount -l "$mp" || true
  done
  rm -rf --one-file-system "$stale"
done

TMP="$CACHE/.vm-$SUITE-$KEY.tmp.$$"
trap 'rm -rf --one-file-system "$TMP"' EXIT
mkdir -m 0755 "$TMP"
ROOT="$TMP/rootfs"
mkdir -m 0755 "$ROOT"

MIRROR=$(mirror)
t0=$(date +%s)
log "debootstrap $SUITE with a kernel and cloud-init into $ROOT (several minutes the first time)"
# private mount ns: the proc/sys mounts debootstrap makes inside the target vanish with it, even if killed
if ! unshare -m --propagation private \
  debootstrap --variant=minbase --include="${PACKAGES// /,}" "$SUITE" "$ROOT" "$MIRROR" >&2; then
  cp "$ROOT/debootstrap/debootstrap.log" "$CACHE/build-vm-debootstrap.log" 2>/dev/null || true
  die "debootstrap failed; its log: $CACHE/build-vm-debootstrap.log"
fi
t_boot=$(( $(date +%s) - t0 ))

log "configuring the guest"
echo fresh-server > "$ROOT/etc/hostname"
cat > "$ROOT/etc/hosts" <<'EOF'
127.0.0.1	localhost
::1		localhost ip6-localhost ip6-loopback
ff02::1		ip6-allnodes
ff02::2		ip6-allrouters
EOF
# debootstrap copied the host's resolver; the guest has no DNS (qemu's restrict=on drops it), and
# an empty file makes lookups fail at once instead of timing out.
: > "$ROOT/etc/resolv.conf"
echo "LABEL=$LABEL / ext4 defaults,errors=remount-ro 0 1" > "$ROOT/etc/fstab"
mkdir -p "$ROOT/etc/systemd/network"
printf '[Match]\nName=en* eth*\n[Network]\nDHCP=ipv4\n' > "$ROOT/etc/systemd/network/10-wired.network"
chroot "$ROOT" systemctl enable systemd-networkd.service >&2

mkdir -p "$ROOT/etc/cloud/cloud.cfg.d"
# What a Hetzner cloud image does: keys from the metadata go to root (no default user), the SSH
# password login stays on, and growing the disk is not what these tests are about. Hetzner is
# listed so that a boot with Hetzner's SMBIOS vendor goes through its real datasource; ds-identify
# keeps only the sources whose markers it finds (the cidata seed, or the vendor string).
cat > "$ROOT/etc/cloud/cloud.cfg.d/90-sapari-test.cfg" <<'EOF'
datasource_list: [ NoCloud, Hetzner, None ]
network: {config: disabled}
disable_root: false
ssh_pwauth: true
users: []
resize_rootfs: false
growpart: {mode: "off"}
locale: C.UTF-8
EOF
# Hetzner's images let root log in with the emailed password; Debian's default would refuse it
# anyway, which would make the "root login refused" check prove nothing.
sed -i 's/^#\?PermitRootLogin .*/PermitRootLogin yes/' "$ROOT/etc/ssh/sshd_config"
grep -q '^PermitRootLogin yes' "$ROOT/etc/ssh/sshd_config" || die "could not set PermitRootLogin in the image"
PW=$(openssl rand -hex 12)
echo "root:$PW" | chroot "$ROOT" chpasswd
printf '%s\n' "$PW" > "$TMP/root-password"
chmod 600 "$TMP/root-password"

# First-boot semantics: a new machine-id, and host keys made by cloud-init for this instance.
: > "$ROOT/etc/machine-id"
rm -f "$ROOT/var/lib/dbus/machine-id" "$ROOT"/etc/ssh/ssh_host_*
# Should cloud-init not make host keys, sshd must still start.
mkdir -p "$ROOT/etc/systemd/system/ssh.service.d"
printf '[Service]\nExecStartPre=/usr/bin/ssh-keygen -A\n' > "$ROOT/etc/systemd/system/ssh.service.d/keygen.conf"
chroot "$ROOT" apt-get clean
rm -rf "$ROOT"/var/lib/cloud/* "$ROOT"/var/log/cloud-init*
echo "$KEY" > "$ROOT/etc/sapari-test-vm"

# Newer kernels' packages may not keep the /vmlinuz symlinks: fall back to /boot's files.
kernel() { if [ -e "$ROOT/$1" ]; then echo "$ROOT/$1"; else ls "$ROOT"/boot/"$1"-* 2>/dev/null | sort -V | tail -n1; fi; }
cp -L "$(kernel vmlinuz)" "$TMP/vmlinuz" || die "no kernel in the rootfs (linux-image-amd64 missing?)"
cp -L "$(kernel initrd.img)" "$TMP/initrd.img" || die "no initrd in the rootfs"

log "making the $DISK_SIZE ext4 disk"
truncate -s "$DISK_SIZE" "$TMP/base.raw"
# mkfs -d fills the filesystem from the directory: no loop device or mount needed.
mkfs.ext4 -q -F -L "$LABEL" -d "$ROOT" "$TMP/base.raw"
# Uncompressed qcow2: TCG is CPU-bound, and decompressing clusters at every read would cost more.
qemu-img convert -O qcow2 "$TMP/base.raw" "$TMP/base.qcow2"
rm -f "$TMP/base.raw"

mv -T "$TMP" "$FINAL"
trap - EXIT
total=$(( $(date +%s) - t0 ))
echo "$total" > "$FINAL/build-seconds"
log "built $FINAL in ${total}s (debootstrap ${t_boot}s)"
echo "$FINAL"
