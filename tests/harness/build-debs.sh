#!/bin/bash
# Download (once) the .debs the packages tests install, with every dependency the test rootfs
# lacks, and index them as a flat apt repository the container can use without any archive.
# Prints the repository directory as the last line of stdout.
#   usage: build-debs.sh ROOTFS PACKAGE...
set -euo pipefail
ROOTFS=$1; shift
CACHE=${SAPARI_TEST_CACHE:-/var/cache/sapari-agent-tests}
KEY=$({ echo "$*"; cat "$ROOTFS/var/lib/dpkg/status" "$0"; } | sha256sum | cut -c1-16)
REPO="$CACHE/debs-$KEY"
if [ -f "$REPO/Packages" ]; then echo "$REPO"; exit 0; fi
# Tests run in parallel: one download per list, the others wait and reuse it.
mkdir -p "$CACHE"
exec 9>"$CACHE/.debs.lock"
flock 9
if [ -f "$REPO/Packages" ]; then echo "$REPO"; exit 0; fi
command -v apt-ftparchive >/dev/null || { echo "build-debs: apt-ftparchive missing (apt-get install apt-utils)" >&2; exit 1; }
TMP=$(mktemp -d "$CACHE/.debs-XXXXXX"); trap 'rm -rf "$TMP"' EXIT
mkdir -p "$TMP/partial"
# A rootfs of another release than the host's (trixie on a bookworm host) resolves against its
# own release's package lists, kept in a private apt state next to the cache.
SUITE=$(. "$ROOTFS/etc/os-release"; echo "${VERSION_CODENAME:-}")
HOST_SUITE=$(. /etc/os-release; echo "${VERSION_CODENAME:-}")
APT_OPTS=()
if [ -n "$SUITE" ] && [ "$SUITE" != "$HOST_SUITE" ]; then
  MIRROR=${DEBIAN_MIRROR:-$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)}
  [ -n "$MIRROR" ] || MIRROR=$(awk '$1=="deb"{print $2; exit}' /etc/apt/sources.list)
  STATE="$CACHE/apt-$SUITE"
  mkdir -p "$STATE/lists/partial"
  echo "deb $MIRROR $SUITE main" > "$STATE/sources.list"
  APT_OPTS=(-o Dir::Etc::SourceList="$STATE/sources.list" -o Dir::Etc::SourceParts=/nonexistent
            -o Dir::State::Lists="$STATE/lists" -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache=
            -o APT::Architecture=amd64)
  apt-get -q "${APT_OPTS[@]}" update >&2
fi
# Resolve against the rootfs's dpkg database: only what the container lacks is fetched.
apt-get -q -y "${APT_OPTS[@]}" -o Debug::NoLocking=1 -o Dir::State::status="$ROOTFS/var/lib/dpkg/status" \
  -o Dir::Cache::archives="$TMP" --no-install-recommends --download-only install "$@" >&2
rm -rf "$TMP/partial" "$TMP/lock"
(cd "$TMP" && apt-ftparchive packages . > Packages)
mv "$TMP" "$REPO"; trap - EXIT
chmod 755 "$REPO"
echo "$REPO"
