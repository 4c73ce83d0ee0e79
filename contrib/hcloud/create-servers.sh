#!/bin/sh
# Creates one Hetzner server per rendered/<name>.yaml with Hetzner's own CLI (hcloud, with
# HCLOUD_TOKEN or an active context). Run render.sh first. The user-data converges the server on
# its first boot; check it with `ssh deploy@<ip> sudo sapari-agent status` afterwards.
#
#   contrib/hcloud/create-servers.sh SSH_KEY_NAME [TYPE] [LOCATION] [IMAGE]
set -eu
[ $# -ge 1 ] || { echo "usage: $0 SSH_KEY_NAME [TYPE] [LOCATION] [IMAGE]" >&2; exit 64; }
KEY=$1 TYPE=${2:-cpx62} LOCATION=${3:-fsn1} IMAGE=${4:-ubuntu-24.04}
HERE=$(cd "$(dirname "$0")" && pwd)
for ud in "$HERE"/rendered/*.yaml; do
  [ -e "$ud" ] || { echo "$0: nothing in rendered/: run render.sh first" >&2; exit 1; }
  name=$(basename "$ud" .yaml)
  hcloud server create --name "$name" --type "$TYPE" --location "$LOCATION" --image "$IMAGE" \
    --ssh-key "$KEY" --user-data-from-file "$ud"
done
