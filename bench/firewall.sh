#!/usr/bin/env bash
# Benchmark (not a test): how long `sapari-agent firewall apply` takes and how many processes it
# spawns, for Cloudflare's real lists (22 CIDRs) and for 5,000 CIDRs. The design asks for a
# constant number of spawns whatever the list size (one iptables-restore per family and one
# `nft -f` for the origin lock, not one call per rule). Also timed: `firewall load`, what
# sapari-firewall-boot.service runs at boot (every table empty, lists from the last good copy).
#
# Everything runs inside two network namespaces made here and removed on exit:
#   sfwb-<pid>-srv    wan0 203.0.113.10/24, 2001:db8:10::10/64; DOCKER-USER and the FORWARD jump
#                     made by hand (no Docker needed), for IPv4 and IPv6
#   sfwb-<pid>-lists  the list server: python3 HTTPS on 198.18.0.10:443 with a CA made here
# The agent runs in srv in a private mount namespace (tmpfs /run).
#
# usage: sudo bench/firewall.sh            (SAPARI_AGENT_BIN: the agent; default: the musl
#                                           release build, built if missing)
#        REPS=9 sudo bench/firewall.sh     (timed runs per row, default 5; the median is shown)
set -euo pipefail
cd "$(dirname "$0")/.."

[ "$(id -u)" = 0 ] || { echo "bench/firewall.sh: needs root (network namespaces)" >&2; exit 1; }

need=()
for t in strace:strace iptables-restore:iptables ip6tables-restore:iptables nft:nftables python3:python3 \
         openssl:openssl ip:iproute2 unshare:util-linux; do
  command -v "${t%%:*}" >/dev/null || need+=("${t#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

AGENT=${SAPARI_AGENT_BIN:-$PWD/target/x86_64-unknown-linux-musl/release/sapari-agent}
if [ ! -x "$AGENT" ]; then
  cargo build --release --target x86_64-unknown-linux-musl --quiet
fi
AGENT=$(readlink -f "$AGENT")
REPS=${REPS:-5}

P=sfwb-$$
SRV=$P-srv
LISTS=$P-lists
TMP=$(mktemp -d "/var/tmp/$P-XXXXXX")
SERVER_PID=

cleanup() {
  set +e
  if [ -n "$SERVER_PID" ]; then
    kill "$SERVER_PID" 2>/dev/null
    wait "$SERVER_PID" 2>/dev/null
  fi
  ip netns del "$SRV" 2>/dev/null
  ip netns del "$LISTS" 2>/dev/null
  rm -rf --one-file-system "$TMP"
}
trap cleanup EXIT

# ---- namespaces ------------------------------------------------------------------------------
host_net=$(readlink /proc/self/ns/net)
for n in "$SRV" "$LISTS"; do
  ip netns add "$n"
  ip -n "$n" link set lo up
  [ "$(ip netns exec "$n" readlink /proc/self/ns/net)" != "$host_net" ] || { echo "netns $n is the host's?!" >&2; exit 1; }
done
ip -n "$SRV" link add wan0 type veth peer name eth0 netns "$LISTS"
ip -n "$SRV" addr add 203.0.113.10/24 dev wan0
ip -n "$SRV" addr add 2001:db8:10::10/64 dev wan0 nodad
ip -n "$LISTS" addr add 203.0.113.1/24 dev eth0
ip -n "$LISTS" addr add 2001:db8:10::1/64 dev eth0 nodad
ip -n "$LISTS" addr add 198.18.0.10/32 dev eth0
ip -n "$SRV" link set wan0 up
ip -n "$LISTS" link set eth0 up
ip -n "$SRV" route add default via 203.0.113.1
ip -n "$SRV" -6 route add default via 2001:db8:10::1

# What Docker leaves in the filter table, reduced to what the agent manages.
for t in iptables ip6tables; do
  ip netns exec "$SRV" "$t-restore" --noflush <<'EOF'
*filter
:FORWARD DROP [0:0]
:DOCKER-USER - [0:0]
-A FORWARD -j DOCKER-USER
-A DOCKER-USER -j RETURN
COMMIT
EOF
done

# ---- CA, certificate and list server ---------------------------------------------------------
W=$TMP/www
mkdir -p "$W"
(
  cd "$W"
  ec="-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes"
  openssl req -x509 -new $ec -keyout ca.key -out ca.pem -days 2 -subj "/CN=bench CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
  printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:198.18.0.10\n' > server.ext
  openssl req -new $ec -keyout server.key -out server.csr -subj "/CN=198.18.0.10"
  openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
    -extfile server.ext -out server.pem
) >/dev/null 2>"$TMP/openssl.log"

# 22: Cloudflare's lists. 5000: 4,000 IPv4 /24s and 1,000 IPv6 /48s, none adjacent (the agent
# aggregates adjacent ranges, which would shrink the list).
mkdir -p "$W/22" "$W/5000"
printf '%s\n' 173.245.48.0/20 103.21.244.0/22 103.22.200.0/22 103.31.4.0/22 141.101.64.0/18 \
  108.162.192.0/18 190.93.240.0/20 188.114.96.0/20 197.234.240.0/22 198.41.128.0/17 \
  162.158.0.0/15 104.16.0.0/13 104.24.0.0/14 172.64.0.0/13 131.0.72.0/22 > "$W/22/ips-v4"
printf '%s\n' 2400:cb00::/32 2606:4700::/32 2803:f800::/32 2405:b500::/32 2405:8100::/32 \
  2a06:98c0::/29 2c0f:f248::/32 > "$W/22/ips-v6"
awk 'BEGIN { for (i = 0; i < 4000; i++) printf "45.%d.%d.0/24\n", 64 + int(i / 128), 2 * (i % 128) }' > "$W/5000/ips-v4"
awk 'BEGIN { for (i = 0; i < 1000; i++) printf "2a01:4f8:%x::/48\n", 2 * i }' > "$W/5000/ips-v6"

cat > "$W/server.py" <<'EOF'
import http.server, os, socketserver, ssl, sys
os.chdir(sys.argv[1])
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    def server_bind(self):  # no getfqdn(): there is no DNS in here
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]
class H(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *a):
        pass
s = S(("198.18.0.10", 443), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain("server.pem", "server.key")
s.socket = ctx.wrap_socket(s.socket, server_side=True, do_handshake_on_connect=False)
open("ready", "w").close()
s.serve_forever()
EOF
ip netns exec "$LISTS" python3 "$W/server.py" "$W" 2>"$TMP/server.log" &
SERVER_PID=$!
for _ in $(seq 100); do [ -e "$W/ready" ] && break; sleep 0.05; done
[ -e "$W/ready" ] || { echo "list server did not start:" >&2; cat "$TMP/server.log" >&2; exit 1; }

# ---- runs ------------------------------------------------------------------------------------
config() { # N -> path of a config that fetches list set N into its own state dir
  local n=$1 d=$TMP/cfg-$1
  mkdir -p "$d/state"
  chmod 700 "$d"
  cat > "$d/agent.toml" <<EOF
[agent]
state_dir = "$d/state"

[firewall]
wan_interface = "wan0"
list_url_v4 = "https://198.18.0.10/$n/ips-v4"
list_url_v6 = "https://198.18.0.10/$n/ips-v6"
ca_file = "$W/ca.pem"
max_entries = 5000
max_list_bytes = 1048576
fetch_timeout = "10s"
EOF
  chmod 600 "$d/agent.toml"
  echo "$d/agent.toml"
}

# agent ARGS... : the agent in srv, private mount ns with tmpfs /run; $WRAP may prefix it
agent() {
  ip netns exec "$SRV" unshare -m --propagation private sh -c \
    'mount -t tmpfs -o mode=755 tmpfs /run && exec $WRAP "$@"' sh "$AGENT" "$@"
}

flush() {
  ip netns exec "$SRV" sh -c 'iptables -F DOCKER-USER && ip6tables -F DOCKER-USER && { nft delete table inet sapari_agent 2>/dev/null || true; }'
}
# what a reboot leaves of the agent's rules: nothing (Docker's chains are not the agent's)
unlock() { ip netns exec "$SRV" sh -c 'nft delete table inet sapari_agent 2>/dev/null || true'; }

ms() { date +%s%N; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# spawns MODE N -> "count|programs" of the processes one apply started (strace -f, execve = 0)
spawns() {
  local mode=$1 cfg=$2 out=$TMP/strace.$RANDOM cmd=apply
  [ "$mode" = changed ] && flush
  [ "$mode" = load ] && { unlock; cmd=load; }
  WRAP="strace -f -qq -e trace=execve -o $out" agent firewall $cmd --config "$cfg" >/dev/null 2>&1 || true
  # the first execve is the agent itself
  local list
  list=$(grep -E 'execve\(.*= 0$' "$out" | tail -n +2 | sed -E 's/^[0-9]+ +execve\("([^"]*)".*/\1/' |
    xargs -r -n1 basename | sort | uniq -c | awk '{printf "%s%s x%s", sep, $2, $1; sep=", "}')
  echo "$(grep -cE 'execve\(.*= 0$' "$out" | awk '{print $1 - 1}')|$list"
}

export WRAP=
declare -A row progs
for n in 22 5000; do
  cfg=$(config $n)
  # first apply: fetch, store, install (must succeed, and must install every range)
  if ! out=$(agent firewall apply --config "$cfg" --json 2>&1); then
    echo "apply with $n CIDRs failed:" >&2; echo "$out" >&2; exit 1
  fi
  rules=$(( $(ip netns exec "$SRV" iptables -S DOCKER-USER | grep -c -- '-s ') + $(ip netns exec "$SRV" ip6tables -S DOCKER-USER | grep -c -- '-s ') ))
  changed=(); noop=()
  for _ in $(seq "$REPS"); do
    flush
    t=$(ms); agent firewall apply --config "$cfg" >/dev/null 2>&1; changed+=($(( ($(ms) - t) / 1000000 )))
  done
  for _ in $(seq "$REPS"); do
    t=$(ms); agent firewall apply --config "$cfg" >/dev/null 2>&1; noop+=($(( ($(ms) - t) / 1000000 )))
  done
  boot=()
  for _ in $(seq "$REPS"); do
    unlock
    t=$(ms); agent firewall load --config "$cfg" >/dev/null 2>&1; boot+=($(( ($(ms) - t) / 1000000 )))
  done
  sc=$(spawns changed "$cfg"); sn=$(spawns noop "$cfg"); sl=$(spawns load "$cfg")
  row[$n]="$(printf '%s\n' "${changed[@]}" | median)|$(printf '%s\n' "${noop[@]}" | median)|${sc%%|*}|${sn%%|*}|$rules|$(printf '%s\n' "${boot[@]}" | median)|${sl%%|*}"
  progs[$n]="changed: ${sc#*|}; no-op: ${sn#*|}; load: ${sl#*|}"
done

echo
echo "sapari-agent firewall apply, $REPS runs each (median wall time, including the HTTPS fetch)"
echo
printf '| %-6s | %-16s | %-14s | %-16s | %-14s | %-18s | %-12s | %-12s |\n' CIDRs "apply ms (rules" "apply ms" "spawns (rules" "spawns" "rules with -s" "boot load" "boot load"
printf '| %-6s | %-16s | %-14s | %-16s | %-14s | %-18s | %-12s | %-12s |\n' "" "flushed)" "(no-op)" "flushed)" "(no-op)" "(v4+v6, TCP+UDP)" "ms" "spawns"
printf '|%s|%s|%s|%s|%s|%s|%s|%s|\n' -------- ------------------ ---------------- ------------------ ---------------- -------------------- -------------- --------------
for n in 22 5000; do
  IFS='|' read -r c o s1 s2 r bl sl <<<"${row[$n]}"
  printf '| %-6s | %16s | %14s | %16s | %14s | %18s | %12s | %12s |\n' "$n" "$c" "$o" "$s1" "$s2" "$r" "$bl" "$sl"
done
echo
for n in 22 5000; do echo "processes ($n CIDRs): ${progs[$n]}"; done
IFS='|' read -r _ _ a1 a2 _ _ a3 <<<"${row[22]}"
IFS='|' read -r _ _ b1 b2 _ _ b3 <<<"${row[5000]}"
echo
if [ "$a1" = "$b1" ] && [ "$a2" = "$b2" ] && [ "$a3" = "$b3" ]; then
  echo "OK: the number of spawned processes does not grow with the list size"
else
  echo "NOT OK: spawns grow with the list size ($a1 -> $b1 applying, $a2 -> $b2 no-op, $a3 -> $b3 load)"
  exit 1
fi
