#!/usr/bin/env bash
# Benchmarks (not tests): prints one table of figures for the README's "Benchmarks" section.
#
#  1. no-op converge of a converged box: wall time and peak RSS, sapari-agent against an
#     equivalent Ansible playbook (bench/ansible/playbook.yml), same box, alternating runs
#  2. first converge of a fresh box: wall time, split into the agent's own work and the time
#     external commands (useradd, ufw, sshd, ...) were running
#  3. firewall apply at 22 and 5,000 CIDRs: time and spawned processes (bench/firewall.sh)
#  4. size of the release binary
#
# Everything that changes a system runs inside throwaway systemd-nspawn containers, each in a
# network namespace of its own with only `lo` (no route anywhere), a volatile overlay root and a
# cgroup of its own, as tests/common/mod.rs boots them. Swap lives only on a host ext4
# directory bound into the box, and is swapoff'ed from the host on exit. The exit trap removes
# containers, namespaces, cgroups and directories.
#
# usage: sudo bench/run.sh
#   REPS=10              timed no-op runs of each tool (default 10), after one converging run each
#   FW_REPS=5            runs per row of bench/firewall.sh
#   SAPARI_AGENT_BIN     agent binary (default: the musl release build, built here)
#   SAPARI_TEST_ROOTFS   prebuilt rootfs (default: tests/harness/build-rootfs.sh, cached)
#   SAPARI_TEST_CACHE    cache dir for the rootfs and the Ansible tree (/var/cache/sapari-agent-tests)
#   SAPARI_TEST_TMP      per-box state, on ext4/xfs (/var/tmp/sapari-agent-tests)
#   SKIP_FIREWALL=1      leave out bench/firewall.sh
# Needs root and: systemd-container, iproute2, util-linux, python3 (3.11, as the box's), pip,
# cargo with the x86_64-unknown-linux-musl target (see README "Build").
# Warm (rootfs and Ansible cached, agent built) it takes 3-5 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
BENCH=$REPO/bench

[ "$(id -u)" = 0 ] || { echo "bench/run.sh: needs root (containers, namespaces)" >&2; exit 1; }
for t in systemd-nspawn nsenter unshare ip python3 findmnt flock; do
  command -v "$t" >/dev/null || { echo "bench/run.sh: $t not found" >&2; exit 1; }
done

REPS=${REPS:-10}
FW_REPS=${FW_REPS:-5}
CACHE=${SAPARI_TEST_CACHE:-/var/cache/sapari-agent-tests}
TMPROOT=${SAPARI_TEST_TMP:-/var/tmp/sapari-agent-tests}
ANSIBLE_VERSION=12.3.0            # the `ansible` package (ansible-core 2.19 + collections)
log() { echo "bench: $*" >&2; }
load() { cut -d' ' -f1-3 /proc/loadavg; }

# ---- the values both tools converge to --------------------------------------------------------
HOSTNAME_WANT=sapari-prod
OPERATOR_IP=192.0.2.50
OPERATOR_KEY="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIL5XCtKcP+JC48vXbIoe+UVO/zcUdqfXFZ2HI0vvRsPW operator"
SWAP_PATH=/mnt/swap/swapfile
SWAP_MB=64
# disabled in the agent's config (outside the playbook's scope); the no-op is also timed with
# them named in --skip, which keeps the agent from observing them at all
DISABLED=packages,docker,firewall,tailscale,compose

# ---- agent binary -----------------------------------------------------------------------------
if [ -n "${SAPARI_AGENT_BIN:-}" ]; then
  AGENT=$(readlink -f "$SAPARI_AGENT_BIN")
else
  log "cargo build --release --target x86_64-unknown-linux-musl"
  cargo build --release --target x86_64-unknown-linux-musl --quiet
  AGENT=$REPO/target/x86_64-unknown-linux-musl/release/sapari-agent
fi
[ -x "$AGENT" ] || { echo "bench/run.sh: no agent binary at $AGENT" >&2; exit 1; }
BIN_BYTES=$(stat -c %s "$AGENT")
BIN_KIND=$(file -b "$AGENT" 2>/dev/null | cut -d, -f1-2 || echo "?")

# ---- rootfs -----------------------------------------------------------------------------------
if [ -n "${SAPARI_TEST_ROOTFS:-}" ]; then
  ROOTFS=$SAPARI_TEST_ROOTFS
else
  ROOTFS=$(bash tests/harness/build-rootfs.sh | tail -n 1)
fi
[ -x "$ROOTFS/usr/lib/systemd/systemd" ] || { echo "bench/run.sh: $ROOTFS is no rootfs" >&2; exit 1; }

# ---- Ansible ----------------------------------------------------------------------------------
# Installed from PyPI with `pip install --target` (a tree, not a venv: a venv points at the host
# interpreter, which the box does not have) and byte-compiled, then bound read-only into the
# box and run by the box's own python3. The wheels are cp311/abi3: host and box must both be
# Python 3.11.
PYVER=$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
[ -x "$ROOTFS/usr/bin/python$PYVER" ] || {
  echo "bench/run.sh: host python is $PYVER but the box has no python$PYVER (Ansible is installed with the host's pip)" >&2; exit 1; }
ANSIBLE_TREE=$CACHE/ansible-$ANSIBLE_VERSION-py$PYVER
if [ ! -d "$ANSIBLE_TREE" ]; then
  mkdir -p "$CACHE"
  exec 8>"$CACHE/.ansible.lock"
  flock 8
  if [ ! -d "$ANSIBLE_TREE" ]; then
    log "pip install ansible==$ANSIBLE_VERSION into $ANSIBLE_TREE (once, about 2 minutes)"
    t=$(mktemp -d "$CACHE/.ansible-$ANSIBLE_VERSION-XXXXXX")
    python3 -m pip install --quiet --disable-pip-version-check --no-compile \
      --target "$t/lib" "ansible==$ANSIBLE_VERSION" >&2
    # Bytecode now: the tree is read-only in the box, which would otherwise recompile
    # ansible-core on every run and make Ansible look slower than it is.
    python3 -m compileall -q -j 0 "$t/lib" >/dev/null 2>&1 || true
    chmod 755 "$t"
    mv -T "$t" "$ANSIBLE_TREE"
  fi
  exec 8>&-
fi

# ---- boxes ------------------------------------------------------------------------------------
mkdir -p "$TMPROOT"
WORK=$(mktemp -d "$TMPROOT/sapb-$$-XXXXXX")
case $(findmnt -n -o FSTYPE --target "$WORK") in ext4|xfs) ;; *)
  echo "bench/run.sh: $WORK is not on ext4/xfs (swap files); set SAPARI_TEST_TMP" >&2; rm -rf "$WORK"; exit 1;; esac
CGROUPS=$(awk '$3=="cgroup2" || ($3=="cgroup" && $4 ~ /(^|,)name=systemd(,|$)/) {print $2}' /proc/self/mounts)
HOST_NET=$(readlink /proc/self/ns/net)
declare -A BOX_PID=() BOX_NSPAWN=() BOX_DIR=()
BOXES=()
CNPROC_PID=

swapoff_box() { # host-side swapoff of every swap file of a box; prints what is still active
  local d=${BOX_DIR[$1]}/swap f
  [ -d "$d" ] || return 0
  for f in "$d"/*; do
    [ -f "$f" ] || continue
    swapoff "$f" 2>/dev/null || true
    # the kernel refuses to truncate an active swap file (ETXTBSY)
    if ! truncate -s "$(stat -c %s "$f")" "$f" 2>/dev/null; then echo "$f"; fi
  done
}

kill_inits() { # NAME: SIGKILL the pid-namespace inits in the box's cgroups; false if none is left
  local n=$1 h p any=1 nspid
  for h in $CGROUPS; do
    [ -d "$h/$n" ] || continue
    for p in $(find "$h/$n" -name cgroup.procs -exec cat {} + 2>/dev/null); do
      any=0
      nspid=$(awk '/^NSpid:/ {print (NF > 2) ? $NF : ""}' "/proc/$p/status" 2>/dev/null)
      [ "$nspid" = 1 ] && kill -KILL "$p" 2>/dev/null
    done
  done
  return $any
}

teardown_box() {
  local n=$1 pid=${BOX_PID[$1]:-} np=${BOX_NSPAWN[$1]:-} still
  swapoff_box "$n" >/dev/null
  if [ -n "$np" ] && kill -0 "$np" 2>/dev/null; then
    if [ -n "$pid" ] && [ "$(readlink "/proc/$pid/ns/net" 2>/dev/null)" = "$(netns_id "$n")" ]; then
      timeout 10 nsenter -t "$pid" -a -- systemctl poweroff --no-block >/dev/null 2>&1 || true
    fi
    for _ in $(seq 200); do kill -0 "$np" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$np" 2>/dev/null; then
      kill_inits "$n"
      sleep 0.5
      kill -KILL -- "-$np" 2>/dev/null || true
    fi
    wait "$np" 2>/dev/null || true
  fi
  # whatever is left in the box's cgroup (a boot that failed before its pid was known): killing
  # a pid-namespace init ends the whole container
  for _ in $(seq 50); do kill_inits "$n" || break; sleep 0.2; done
  for h in $CGROUPS; do
    [ -d "$h/$n" ] && find "$h/$n" -depth -type d -exec rmdir {} \; 2>/dev/null
  done
  ip netns del "$n" 2>/dev/null || true
  still=$(swapoff_box "$n")
  if [ -n "$still" ]; then
    echo "bench/run.sh: WARNING swap still active, keeping ${BOX_DIR[$n]}: $still" >&2
  else
    rm -rf --one-file-system "${BOX_DIR[$n]}"
  fi
}

cleanup() {
  set +e
  [ -n "$CNPROC_PID" ] && kill "$CNPROC_PID" 2>/dev/null && wait "$CNPROC_PID" 2>/dev/null
  for n in "${BOXES[@]}"; do teardown_box "$n"; done
  BOXES=()
  rmdir "$WORK" 2>/dev/null || rm -rf --one-file-system "$WORK"
  if grep -q "$TMPROOT/sapb-$$-" /proc/swaps 2>/dev/null; then
    echo "bench/run.sh: WARNING swap of this run still active:" >&2; grep "sapb-$$-" /proc/swaps >&2
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

netns_id() { echo "net:[$(stat -L -c %i "/run/netns/$1")]"; }

# boot_box NAME: boots the rootfs (volatile overlay) in netns NAME, as tests/common/mod.rs does
boot_box() {
  local n=$1 d=$WORK/$1
  mkdir -p "$d/swap" "$d/out"
  BOX_DIR[$n]=$d
  BOXES+=("$n")
  ip netns add "$n"
  ip -n "$n" link set lo up
  [ "$(ip netns exec "$n" readlink /proc/self/ns/net)" != "$HOST_NET" ] || { echo "netns $n is the host's?!" >&2; exit 1; }
  : > "$d/netns"
  local cg="" h
  for h in $CGROUPS; do cg+="mkdir '$h/$n' && echo \$\$ > '$h/$n/cgroup.procs' && "; done
  # /run must be a tmpfs for nspawn, which hides /run/netns: bind the netns handle to a file
  # first. nspawn itself runs in the box netns too, so the /sys it mounts shows that netns.
  setsid unshare -m --propagation private sh -c "$cg mount --bind /run/netns/$n $d/netns && \
    mount -t tmpfs -o mode=755 tmpfs /run && exec nsenter --net=$d/netns -- \
    systemd-nspawn --directory=$ROOTFS --boot --volatile=overlay --register=no --keep-unit \
      --link-journal=no --console=passive --machine=$n --hostname=fresh-server \
      --network-namespace-path=$d/netns --capability=CAP_NET_ADMIN \
      '--system-call-filter=@swap adjtimex clock_adjtime' \
      --bind-ro=$AGENT:/usr/local/bin/sapari-agent --bind=$d/swap:/mnt/swap \
      --bind-ro=$ANSIBLE_TREE:/opt/ansible --bind-ro=$BENCH:/opt/bench --bind=$d/out:/opt/out" \
    </dev/null >"$d/nspawn.log" 2>&1 &
  BOX_NSPAWN[$n]=$!
  local np=$! pid="" i
  for i in $(seq 750); do
    pid=$( { ps -o pid=,comm= --ppid "$np" 2>/dev/null || true; } | awk '$2=="systemd"{print $1; exit}')
    [ -n "$pid" ] && break
    kill -0 "$np" 2>/dev/null || { cat "$d/nspawn.log" >&2; echo "nspawn exited" >&2; exit 1; }
    sleep 0.02
  done
  [ -n "$pid" ] || { echo "container init of $n did not appear" >&2; exit 1; }
  # a wrong pid here would make every later nsenter act on the host
  [ "$(readlink "/proc/$pid/ns/net")" = "$(netns_id "$n")" ] || { echo "pid $pid not in $n" >&2; exit 1; }
  [ "$(readlink "/proc/$pid/ns/mnt")" != "$(readlink /proc/self/ns/mnt)" ] || { echo "shares host mnt ns" >&2; exit 1; }
  BOX_PID[$n]=$pid
  local st=""
  for i in $(seq 300); do
    st=$(timeout 10 nsenter -t "$pid" -a -- systemctl is-system-running 2>/dev/null || true)
    case $st in running|degraded) break;; esac
    sleep 0.2
  done
  case $st in running|degraded) ;; *) echo "box $n not booted ($st)" >&2; cat "$d/nspawn.log" >&2; exit 1;; esac
}

# bx NAME SCRIPT: `sh -c SCRIPT` inside the box as a transient systemd service (the container's
# capabilities and seccomp filter, as the agent has under its timer), output piped back
bx() {
  local n=$1 s=$2
  [ "$(readlink "/proc/${BOX_PID[$n]}/ns/net" 2>/dev/null)" = "$(netns_id "$n")" ] || { echo "box $n is gone" >&2; exit 1; }
  env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
    nsenter -t "${BOX_PID[$n]}" -a -- systemd-run --wait --pipe --quiet --collect --service-type=exec \
      --setenv=HOME=/root --setenv=LANG=C.UTF-8 -- /bin/sh -c "${s//\$/\$\$}"
}

setup_box() { # agent config and the playbook's variables, from the same shell values
  local n=$1 d=${BOX_DIR[$1]}
  cat > "$d/out/agent.toml" <<EOF
[access]
operator_ips = ["$OPERATOR_IP"]

[hostname]
name = "$HOSTNAME_WANT"

[users]
authorized_keys = ["$OPERATOR_KEY"]

[swap]
path = "$SWAP_PATH"
size = "${SWAP_MB}M"

[packages]
enabled = false

[docker]
enabled = false

[firewall]
enabled = false

[tailscale]
enabled = false

[compose]
enabled = false

[ntp]
require_sync = false
sync_timeout = "2s"
EOF
  python3 - "$d/out/vars.json" <<EOF
import json, sys, re
# GitHub's pinned host keys, as the agent has them (the playbook must install the same ones)
keys = re.findall(r'algorithm: "([^"]+)",\s*key: "([^"]+)"', open("$REPO/src/resources/deploy_key/github.rs").read())
if not keys:
    sys.exit("bench: no GitHub host keys found in src/resources/deploy_key/github.rs")
json.dump({"hostname": "$HOSTNAME_WANT", "user": "deploy", "operator_ip": "$OPERATOR_IP",
           "operator_key": "$OPERATOR_KEY", "swap_path": "$SWAP_PATH", "swap_mb": $SWAP_MB,
           "github_host_keys": [f"{a} {k}" for a, k in keys]}, open(sys.argv[1], "w"))
EOF
  bx "$n" 'mkdir -p /etc/sapari-agent && chmod 755 /etc/sapari-agent && install -m 600 /opt/out/agent.toml /etc/sapari-agent/agent.toml'
}

# The two measured commands. Each prints measure.py's line:
#   wall_s exit maxrss_kb self_user self_sys children_user children_sys
# then the tool's "changed" count (the agent's summary, Ansible's recap).
run_agent() { # BOX [EXTRA ARGS]
  local out
  out=$(bx "$1" "python3 /opt/bench/measure.py /opt/out/agent.json /opt/out/agent.err /usr/local/bin/sapari-agent converge --json --detailed-exitcodes ${2:-}")
  local changed
  changed=$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(r["summary"]["changed"], r["summary"]["failed"])' "${BOX_DIR[$1]}/out/agent.json" 2>/dev/null || echo "? ?")
  echo "$out $changed"
}
ANSIBLE_ENV='export PYTHONPATH=/opt/ansible/lib ANSIBLE_PYTHON_INTERPRETER=/usr/bin/python3 ANSIBLE_PIPELINING=1 ANSIBLE_NOCOLOR=1 ANSIBLE_LOCALHOST_WARNING=0 ANSIBLE_INVENTORY_UNPARSED_WARNING=0 ANSIBLE_RETRY_FILES_ENABLED=0 ANSIBLE_COLLECTIONS_SCAN_SYS_PATH=1 PYTHONDONTWRITEBYTECODE=1;'
run_ansible() {
  local out
  out=$(bx "$1" "$ANSIBLE_ENV python3 /opt/bench/measure.py /opt/out/ansible.out /opt/out/ansible.err python3 /opt/ansible/lib/bin/ansible-playbook -i localhost, -e @/opt/out/vars.json /opt/bench/ansible/playbook.yml")
  local recap
  recap=$(grep -E '^localhost +:' "${BOX_DIR[$1]}/out/ansible.out" | sed -E 's/.*changed=([0-9]+).*failed=([0-9]+).*/\1 \2/' || true)
  echo "$out ${recap:-? ?}"
}
check() { # LINE WHAT EXPECT_CHANGED(0|any): exit 0 or 2, no failure, and nothing changed if asked
  local line=$1 what=$2 want=$3 n=$4
  read -r _ code _ _ _ _ _ changed failed <<<"$line"
  if [ "$failed" != 0 ] || { [ "$code" != 0 ] && [ "$code" != 2 ]; } || { [ "$want" = 0 ] && [ "$changed" != 0 ]; }; then
    echo "bench/run.sh: $what failed or changed something: $line" >&2
    local d=${BOX_DIR[$n]}/out
    case $what in
      agent*) cat "$d/agent.json" "$d/agent.err" >&2;;
      *) tail -n 60 "$d/ansible.out" >&2; cat "$d/ansible.err" >&2;;
    esac
    exit 1
  fi
}
median() { sort -g | awk '{a[NR]=$1} END {if (NR % 2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }

LOAD_START=$(load)
log "load at start: $LOAD_START"

# ---- 2. first converge of a fresh box (measured first, on box A) -----------------------------
A=sapb-$$-a
log "booting box $A"
boot_box "$A"
setup_box "$A"
netns=$(stat -L -c %i "/run/netns/$A")
python3 "$BENCH/cnproc.py" "$WORK/cnproc.ready" "$WORK/cnproc.json" "$netns" &
CNPROC_PID=$!
for _ in $(seq 100); do [ -e "$WORK/cnproc.ready" ] && break; sleep 0.05; done
FIRST_LOAD=$(load)
log "first converge of a fresh box (agent)"
FIRST=$(run_agent "$A")
kill "$CNPROC_PID"; wait "$CNPROC_PID" || true; CNPROC_PID=
check "$FIRST" "agent first converge" any "$A"
read -r FIRST_WALL _ FIRST_RSS FIRST_SU FIRST_SS FIRST_CU FIRST_CS FIRST_CHANGED _ <<<"$FIRST"
SPLIT=$(python3 - "$WORK/cnproc.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
if not r.get("found") or r.get("lost_batches"):
    print("? ? ? ? -"); sys.exit()
prog = {}
for c in r["by_command"]:
    k = c["cmd"] if c["cmd"].startswith("(") else (c["cmd"].split() or ["?"])[0]
    n, t = prog.get(k, (0, 0.0))
    prog[k] = (n + c["n"], t + c["s"])
top = ", ".join(f"{k} x{n} {t*1000:.0f} ms" for k, (n, t) in sorted(prog.items(), key=lambda x: -x[1][1]))
print(f"{r['agent_s']:.3f} {r['own_s']:.3f} {r['external_s']:.3f} {r['commands']} {top}")
EOF
)
read -r SPLIT_AGENT SPLIT_OWN SPLIT_EXT SPLIT_N SPLIT_TOP <<<"$SPLIT"
cp "$WORK/cnproc.json" "$WORK/first-converge-commands.json" 2>/dev/null || true

# ---- 1. no-op converge: agent vs Ansible, same box -------------------------------------------
log "agent no-op check, then one converging Ansible run and one check run"
check "$(run_agent "$A")" "agent second run" 0 "$A"
ANS_FIRST_ON_CONVERGED=$(run_ansible "$A")
check "$ANS_FIRST_ON_CONVERGED" "ansible run after the agent" any "$A"
check "$(run_ansible "$A")" "ansible second run" 0 "$A"
check "$(run_agent "$A")" "agent after ansible" 0 "$A"
NOOP_LOAD_START=$(load)
AG_W=(); AG_R=(); AN_W=(); AN_R=(); SK_W=(); SK_R=()
for i in $(seq "$REPS"); do
  l=$(run_agent "$A"); check "$l" "agent no-op run $i" 0 "$A"
  read -r w _ r _ <<<"$l"; AG_W+=("$w"); AG_R+=("$r")
  l=$(run_agent "$A" "--skip $DISABLED"); check "$l" "agent --skip no-op run $i" 0 "$A"
  read -r w _ r _ <<<"$l"; SK_W+=("$w"); SK_R+=("$r")
  l=$(run_ansible "$A"); check "$l" "ansible no-op run $i" 0 "$A"
  read -r w _ r _ <<<"$l"; AN_W+=("$w"); AN_R+=("$r")
  log "no-op run $i/$REPS: agent ${AG_W[-1]}s ${AG_R[-1]}KB, agent --skip ${SK_W[-1]}s ${SK_R[-1]}KB, ansible ${AN_W[-1]}s ${AN_R[-1]}KB (load $(load))"
done
NOOP_LOAD_END=$(load)
AG_WM=$(printf '%s\n' "${AG_W[@]}" | median); AN_WM=$(printf '%s\n' "${AN_W[@]}" | median)
AG_RM=$(printf '%s\n' "${AG_R[@]}" | median); AN_RM=$(printf '%s\n' "${AN_R[@]}" | median)
AG_RMAX=$(printf '%s\n' "${AG_R[@]}" | sort -n | tail -1)
SK_WM=$(printf '%s\n' "${SK_W[@]}" | median); SK_RM=$(printf '%s\n' "${SK_R[@]}" | median)
SK_RMAX=$(printf '%s\n' "${SK_R[@]}" | sort -n | tail -1)
ANS_TASKS=$(grep -c '^TASK \[' "${BOX_DIR[$A]}/out/ansible.out" || true)
read -r ANS_FIRST_WALL _ _ _ _ _ _ ANS_FIRST_CHANGED _ <<<"$ANS_FIRST_ON_CONVERGED"
teardown_box "$A"; BOXES=()

# Ansible's own first converge of a fresh box, for comparison (box B)
B=sapb-$$-b
log "booting box $B: Ansible first converge"
boot_box "$B"
setup_box "$B"
ANS_FRESH=$(run_ansible "$B")
check "$ANS_FRESH" "ansible first converge" any "$B"
read -r ANS_FRESH_WALL _ ANS_FRESH_RSS _ _ _ _ ANS_FRESH_CHANGED _ <<<"$ANS_FRESH"
# and the agent on what Ansible converged: must find nothing to do
check "$(run_agent "$B")" "agent after ansible's first converge" 0 "$B"
teardown_box "$B"; BOXES=()

# ---- 3. firewall apply ------------------------------------------------------------------------
FW_OUT=""
fw_row() { echo "$FW_OUT" | awk -F'|' -v n="$1" '$2 ~ "^ *"n" *$" {gsub(/ /,""); print $3, $4, $5, $6, $7, $8, $9}'; }
if [ "${SKIP_FIREWALL:-}" != 1 ]; then
  log "bench/firewall.sh (REPS=$FW_REPS)"
  FW_LOAD=$(load)
  # Its exit status only says whether the spawn counts matched at both sizes: the table shows
  # the figures and its verdict either way. No table at all is a failure.
  FW_OUT=$(SAPARI_AGENT_BIN=$AGENT REPS=$FW_REPS bash "$BENCH/firewall.sh" 2>&1) || true
  if [ -z "$(fw_row 22)" ]; then echo "$FW_OUT" >&2; echo "bench/run.sh: bench/firewall.sh failed" >&2; exit 1; fi
fi

# ---- table ------------------------------------------------------------------------------------
LOAD_END=$(load)
ms() { awk -v s="$1" 'BEGIN {printf "%.0f", s * 1000}'; }
mb() { awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }
RATIO=$(awk -v a="$AG_WM" -v b="$AN_WM" 'BEGIN {printf "%.0f", b / a}')
mem=$(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)
cpu=$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)
verdict() { if awk -v a="$1" -v op="$2" -v b="$3" 'BEGIN {exit !(op == ">=" ? a >= b : a < b)}'; then echo met; else echo "NOT met"; fi; }

echo
echo "sapari-agent benchmarks, $(date -u '+%Y-%m-%d %H:%M UTC'), agent $("$AGENT" version 2>/dev/null | head -1)"
echo "machine: $(nproc) cores ($cpu), $mem RAM, Linux $(uname -r); load average (1/5/15 min) at start $LOAD_START, at end $LOAD_END"
echo "box: Debian 12 rootfs in systemd-nspawn (volatile overlay, own netns); Ansible $ANSIBLE_VERSION (ansible-core $(sed -n 's/^Version: //p' "$ANSIBLE_TREE"/lib/ansible_core-*.dist-info/METADATA)), local connection, run by the box's python3"
echo
echo "| figure | sapari-agent | Ansible | target |"
echo "|---|---|---|---|"
echo "| no-op converge of a converged box, wall time (median of $REPS, alternating) | $(ms "$AG_WM") ms | $(awk -v s="$AN_WM" 'BEGIN {printf "%.2f", s}') s ($ANS_TASKS tasks) | agent >= 50x faster: ${RATIO}x, $(verdict "$RATIO" ">=" 50) |"
echo "| no-op converge, peak RSS (median; largest single process) | $(mb "$AG_RM") MB (max $(mb "$AG_RMAX")) | $(mb "$AN_RM") MB | < 16 MB: $(verdict "$(mb "$AG_RMAX")" "<" 16) |"
echo "| - the same, agent with \`--skip $DISABLED\` (median of $REPS) | $(ms "$SK_WM") ms, $(mb "$SK_RM") MB (max $(mb "$SK_RMAX")) | | ratio $(awk -v a="$SK_WM" -v b="$AN_WM" 'BEGIN {printf "%.0f", b / a}')x; RSS $(verdict "$(mb "$SK_RMAX")" "<" 16) |"
echo "| first converge of a fresh box, wall time | $(awk -v s="$FIRST_WALL" 'BEGIN {printf "%.2f", s}') s ($FIRST_CHANGED resources changed; peak RSS $(mb "$FIRST_RSS") MB) | $(awk -v s="$ANS_FRESH_WALL" 'BEGIN {printf "%.2f", s}') s ($ANS_FRESH_CHANGED tasks changed; $(mb "$ANS_FRESH_RSS") MB) | |"
echo "| - of which external commands were running | $(ms "$SPLIT_EXT") ms ($SPLIT_N commands) | | |"
echo "| - of which the agent alone | $(ms "$SPLIT_OWN") ms | | |"
echo "| first converge, CPU (user+sys): agent / its commands | $(awk -v a="$FIRST_SU" -v b="$FIRST_SS" 'BEGIN {printf "%.2f", a + b}') s / $(awk -v a="$FIRST_CU" -v b="$FIRST_CS" 'BEGIN {printf "%.2f", a + b}') s | | |"
if [ -n "$FW_OUT" ]; then
  if echo "$FW_OUT" | grep -q '^OK:'; then FW_VERDICT=met; else FW_VERDICT="NOT met (below)"; fi
  for n in 22 5000; do
    read -r c o s1 s2 rules bl sl <<<"$(fw_row $n)"
    echo "| firewall apply, $n CIDRs ($rules rules): rules flushed / no-op (median of $FW_REPS) | $c ms / $o ms, $s1 / $s2 processes spawned | | same spawns at any list size: $FW_VERDICT |"
    echo "| firewall load at boot (origin lock from the last good lists), $n CIDRs | $bl ms, $sl processes spawned | | |"
  done
fi
echo "| release binary (x86_64-unknown-linux-musl, $BIN_KIND) | $(awk -v b="$BIN_BYTES" 'BEGIN {printf "%.2f", b / 1048576}') MiB ($BIN_BYTES bytes) | | < 6 MB: $(verdict "$BIN_BYTES" "<" 6000000) |"
echo
echo "load average: first converge at $FIRST_LOAD; no-op runs from $NOOP_LOAD_START to $NOOP_LOAD_END${FW_LOAD:+; firewall at $FW_LOAD}"
echo "agent no-op runs (s): ${AG_W[*]}"
echo "agent --skip no-op runs (s): ${SK_W[*]}"
echo "Ansible no-op runs (s): ${AN_W[*]}"
echo "Ansible's first run on the agent-converged box: $(awk -v s="$ANS_FIRST_WALL" 'BEGIN {printf "%.2f", s}') s, $ANS_FIRST_CHANGED tasks changed"
echo "first converge, external commands by time (wall, summed per program): ${SPLIT_TOP:-?}"
if [ -n "$FW_OUT" ]; then echo "$FW_OUT" | grep -E '^(processes|OK|NOT OK)'; fi
