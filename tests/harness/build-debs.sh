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
# Resolve against the rootfs's dpkg database: only what the container lacks is fetched.
apt-get -q -y -o Debug::NoLocking=1 -o Dir::State::status="$ROOTFS/var/lib/dpkg/status" \
  -o Dir::Cache::archives="$TMP" --no-install-recommends --download-only install "$@" >&2
rm -rf "$TMP/partial" "$TMP/lock"
(cd "$TMP" && apt-ftparchive packages . > Packages)
mv "$TMP" "$REPO"; trap - EXIT
chmod 755 "$REPO"
echo "$REPO"
