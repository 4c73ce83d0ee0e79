#!/bin/bash
# Build the sapari-agent .deb from the static musl binary, the units and the example config.
# dpkg-deb rather than a debhelper tree: the package is one static binary plus text files, and
# the maintainer scripts below are the few lines dh_installsystemd would generate.
#   usage: packaging/build-deb.sh [BINARY]        (default: the musl release build)
#   needs: dpkg-deb, help2man, file
#   env:   SAPARI_DEB_VERSION  package version (default: Cargo.toml's)
#          SAPARI_DEB_OUT      output directory (default: target/debian)
# Prints the path of the .deb as the last line of stdout.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
BIN=${1:-$REPO/target/x86_64-unknown-linux-musl/release/sapari-agent}
VERSION=${SAPARI_DEB_VERSION:-$(sed -n 's/^version = "\(.*\)"/\1/p' "$REPO/Cargo.toml" | head -1)}
OUT=${SAPARI_DEB_OUT:-$REPO/target/debian}
ARCH=amd64

die() { echo "build-deb: $*" >&2; exit 1; }
[ -x "$BIN" ] || die "$BIN missing: build it with cargo build --release --target x86_64-unknown-linux-musl"
file -b "$BIN" | grep -q 'static' || die "$BIN is not statically linked (use the musl target)"
[[ $VERSION =~ ^[0-9][A-Za-z0-9.+~-]*$ ]] || die "version '$VERSION' is not a Debian version"

STAGE=$(mktemp -d); trap 'rm -rf "$STAGE"' EXIT
P=$STAGE/pkg
install -d -m 755 "$P/DEBIAN" "$P/usr/bin" "$P/usr/lib/systemd/system" \
  "$P/etc/sapari-agent" "$P/usr/share/doc/sapari-agent"
install -m 755 "$BIN" "$P/usr/bin/sapari-agent"
for u in sapari-agent.service sapari-agent.timer sapari-docker-firewall.service sapari-firewall-boot.service; do
  install -m 644 "$REPO/units/$u" "$P/usr/lib/systemd/system/$u"
done
# The example, not agent.toml itself: cloud-init writes agent.toml before the package is
# installed, and a conffile of that name would make dpkg stop and ask about it.
install -m 644 "$REPO/examples/agent.toml" "$P/etc/sapari-agent/agent.toml.example"
command -v help2man >/dev/null || die "help2man missing (apt-get install help2man): it writes the man page from --help"
install -d -m 755 "$P/usr/share/man/man8" "$P/usr/share/lintian/overrides"
help2man --no-info --section=8 --version-string="$VERSION" \
  --name="converge and keep converged a Sapari production server" "$BIN" \
  | gzip -9n > "$P/usr/share/man/man8/sapari-agent.8.gz"
chmod 644 "$P/usr/share/man/man8/sapari-agent.8.gz"
install -m 644 "$HERE/debian/lintian-overrides" "$P/usr/share/lintian/overrides/sapari-agent"
install -m 644 "$HERE/debian/copyright" "$P/usr/share/doc/sapari-agent/copyright"
# A reproducible changelog entry: the date is the last commit's, not the build's.
DATE=$(git -C "$REPO" log -1 --format=%cD 2>/dev/null || date -R)
printf 'sapari-agent (%s) stable; urgency=medium\n\n  * Release %s.\n\n -- sapari-agent maintainers <ops@sapari.invalid>  %s\n' \
  "$VERSION" "$VERSION" "$DATE" | gzip -9n > "$P/usr/share/doc/sapari-agent/changelog.gz"
chmod 644 "$P/usr/share/doc/sapari-agent/changelog.gz"

for s in postinst prerm postrm; do install -m 755 "$HERE/debian/$s" "$P/DEBIAN/$s"; done
printf '/etc/sapari-agent/agent.toml.example\n' > "$P/DEBIAN/conffiles"
SIZE=$(du -sk --exclude=DEBIAN "$P" | cut -f1)
sed -e "s/@VERSION@/$VERSION/" -e "s/@ARCH@/$ARCH/" -e "s/@SIZE@/$SIZE/" \
  "$HERE/debian/control.in" > "$P/DEBIAN/control"
(cd "$P" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z | xargs -0 md5sum) \
  > "$P/DEBIAN/md5sums"
chmod 644 "$P/DEBIAN/control" "$P/DEBIAN/conffiles" "$P/DEBIAN/md5sums"

EPOCH=$(date -d "$DATE" +%s)
find "$P" -exec touch -h -d "@$EPOCH" {} +
mkdir -p "$OUT"
DEB=$OUT/sapari-agent_${VERSION}_${ARCH}.deb
SOURCE_DATE_EPOCH=$EPOCH dpkg-deb --root-owner-group -Zxz --build "$P" "$DEB" >&2
echo "$DEB"
