#!/bin/sh
# Renders each server's user-data: one hosts/<name>.toml in, one rendered/<name>.yaml out, by
# `sapari-agent cloud-init render` (which refuses anything over Hetzner's 32 KiB user-data limit).
#
#   contrib/hcloud/render.sh URL SHA256 [AGENT]
#
# URL and SHA256 are the release's static binary and its sha256 (from SHA256SUMS); AGENT is the
# sapari-agent to render with (default: the one on PATH). Nothing is written unless every host
# renders.
set -eu
[ $# -ge 2 ] || { echo "usage: $0 URL SHA256 [AGENT]" >&2; exit 64; }
URL=$1 SHA=$2 AGENT=${3:-sapari-agent}
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${SAPARI_RENDER_OUT:-$HERE/rendered}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
n=0
for cfg in "$HERE"/hosts/*.toml; do
  [ -e "$cfg" ] || { echo "$0: no hosts/*.toml" >&2; exit 1; }
  name=$(basename "$cfg" .toml)
  "$AGENT" cloud-init render --config "$cfg" --artifact-url "$URL" --sha256 "$SHA" > "$TMP/$name.yaml"
  echo "$name: $(wc -c < "$TMP/$name.yaml") bytes of user-data" >&2
  n=$((n + 1))
done
mkdir -p "$OUT"
mv "$TMP"/*.yaml "$OUT"/
echo "rendered $n servers into $OUT" >&2
