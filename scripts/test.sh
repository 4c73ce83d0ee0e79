#!/usr/bin/env bash
# The whole test suite: lint, unit tests, then the root-only system tests that boot a
# Debian container (systemd-nspawn in its own network namespace) and run the static
# agent inside it. Installs what it needs first; safe on a machine reached over the
# network because nothing system-level runs outside the namespaces the tests create.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  echo "scripts/test.sh: the system tests boot containers and need root (try: sudo ./scripts/test.sh)" >&2
  exit 1
fi

step() { printf '\n== %s\n' "$*"; }

# What this script started or created, undone on every exit: policy-rc.d if we made it, the
# background cache build if it still runs (our own PID).
MADE_POLICY=""
CACHE_PID=""
cleanup() {
  if [ -n "$CACHE_PID" ] && kill -0 "$CACHE_PID" 2>/dev/null; then kill "$CACHE_PID" 2>/dev/null || true; fi
  if [ -n "$MADE_POLICY" ]; then rm -f /usr/sbin/policy-rc.d; fi
}
trap cleanup EXIT

step "installing test dependencies"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# docker.io and openssh-server must not start their daemons on this machine: the tests run
# their own, inside namespaces. policy-rc.d tells the packages' scripts not to start services.
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod 755 /usr/sbin/policy-rc.d
  MADE_POLICY=1
fi
apt-get install -y -qq --no-install-recommends \
  musl-tools debootstrap systemd-container iproute2 util-linux e2fsprogs \
  python3 ca-certificates file openssh-client sshpass \
  iptables nftables docker.io docker-compose socat openssl busybox-static apt-utils \
  help2man lintian >/dev/null
# The boot tests run a TCG VM. Debian 12's qemu-system-x86 needs its own qemu-utils, and a
# machine may carry a newer qemu-utils from backports: take the matching one.
if ! command -v qemu-system-x86_64 >/dev/null || ! command -v genisoimage >/dev/null; then
  apt-get install -y -qq --no-install-recommends --allow-downgrades \
    qemu-system-x86 qemu-utils/bookworm genisoimage >/dev/null
fi
if command -v rustup >/dev/null && ! rustup target list --installed | grep -qx x86_64-unknown-linux-musl; then
  rustup target add x86_64-unknown-linux-musl
fi

# ssh-audit judges the hardened sshd from the client side (from the Python package index).
SSH_AUDIT_VERSION=3.9.0
SSH_AUDIT_VENV=/var/cache/sapari-agent-tests/venv-ssh-audit
if ! "$SSH_AUDIT_VENV/bin/ssh-audit" --help 2>/dev/null | grep -q -- --skip-rate-test ||
   ! "$SSH_AUDIT_VENV/bin/pip" show ssh-audit 2>/dev/null | grep -qx "Version: $SSH_AUDIT_VERSION"; then
  rm -rf "$SSH_AUDIT_VENV"
  python3 -m venv "$SSH_AUDIT_VENV"
  "$SSH_AUDIT_VENV/bin/pip" install -q "ssh-audit==$SSH_AUDIT_VERSION"
fi
export SSH_AUDIT="$SSH_AUDIT_VENV/bin/ssh-audit"

# ansible-core drives the fleet test (contrib/ansible against three boxes), also from the index.
ANSIBLE_CORE_VERSION=2.19.4
ANSIBLE_VENV=/var/cache/sapari-agent-tests/venv-ansible
if ! "$ANSIBLE_VENV/bin/pip" show ansible-core 2>/dev/null | grep -qx "Version: $ANSIBLE_CORE_VERSION"; then
  rm -rf "$ANSIBLE_VENV"
  python3 -m venv "$ANSIBLE_VENV"
  "$ANSIBLE_VENV/bin/pip" install -q "ansible-core==$ANSIBLE_CORE_VERSION"
fi
export SAPARI_TEST_ANSIBLE_PLAYBOOK="$ANSIBLE_VENV/bin/ansible-playbook"

# The cached trees (debootstrap: mostly download and unpack) build in the background while the
# code compiles (CPU): from a cold cache that overlap saves about 10 minutes. Their progress is
# printed when they are done.
step "test rootfs, Docker trees and VM image (cached under /var/cache/sapari-agent-tests), in the background"
CACHE_LOG=$(mktemp /tmp/sapari-test-caches.XXXXXX)
(
  set -e
  tests/harness/build-rootfs.sh
  tests/harness/build-rootfs.sh trixie
  # Docker 26 (Debian 13) and 28 (forky) for the firewall and compose fixtures, run from their trees
  tests/harness/build-docker-tree.sh trixie >/dev/null
  tests/harness/build-docker-tree.sh forky >/dev/null
  tests/harness/build-vm.sh >/dev/null
  tests/harness/build-vm.sh trixie >/dev/null
) >"$CACHE_LOG" 2>&1 &
CACHE_PID=$!

step "format and lint"
cargo fmt --all -- --check
cargo clippy --all-targets --quiet -- -D warnings

step "static release build"
cargo build --release --target x86_64-unknown-linux-musl --quiet
export SAPARI_AGENT_BIN="$PWD/target/x86_64-unknown-linux-musl/release/sapari-agent"
file "$SAPARI_AGENT_BIN" | grep -Eq 'static(-pie)? linked' || { echo "agent binary is not static" >&2; exit 1; }
if grep -q SAPARI_AGENT_TEST_CRASH "$SAPARI_AGENT_BIN"; then
  echo "the release binary carries the crash hooks (cargo feature crash-points)" >&2; exit 1
fi

# The crash-consistency tests kill the agent at chosen points: a second build with the hooks
# compiled in, in its own target dir so the release binary above stays the one without them.
step "crash-points build (for the crash tests only)"
cargo clippy --all-targets --features crash-points --quiet -- -D warnings
cargo test --lib --features crash-points --quiet host::crash
cargo build --release --target x86_64-unknown-linux-musl --features crash-points \
  --target-dir target/crash --quiet
export SAPARI_AGENT_CRASH_BIN="$PWD/target/crash/x86_64-unknown-linux-musl/release/sapari-agent"
file "$SAPARI_AGENT_CRASH_BIN" | grep -Eq 'static(-pie)? linked' || { echo "crash agent binary is not static" >&2; exit 1; }

step "test binaries"
cargo test --no-run --quiet

step "waiting for the cached trees"
cache_rc=0
wait "$CACHE_PID" || cache_rc=$?
CACHE_PID=""
cat "$CACHE_LOG"
rm -f "$CACHE_LOG"
if [ "$cache_rc" != 0 ]; then
  echo "building the test trees failed (exit $cache_rc): see above" >&2
  exit 1
fi

# The nspawn tests that know their platform run again on Debian 13 (OpenSSH 10, systemd 257,
# docker.io 26, compose v2), and the SSH, commit-confirm, crash, drift and fail2ban ones once
# more with ssh.socket owning port 22, the model Ubuntu 24.04 ships. The crash points (one at
# a time, about 10 minutes a pass) run on Debian 13 in that socket pass only. A failure in
# one pass does not skip the next.
TRIXIE_TESTS='binary(system_foundation) | binary(system_ufw) | binary(system_security) | binary(system_ssh) | binary(system_tailscale) | binary(system_faults) | binary(system_packages) | binary(system_docker) | binary(system_confirm) | binary(system_delivery)'
SOCKET_TESTS='binary(system_ssh) | binary(system_confirm) | binary(system_crash) | (binary(system_delivery) & test(drift)) | (binary(system_packages) & test(bans_))'
rc=0
if cargo nextest --version >/dev/null 2>&1; then
  step "unit and system tests (Debian 12)"
  cargo nextest run --run-ignored all --no-fail-fast "$@" || rc=1
  step "system tests on Debian 13"
  SAPARI_TEST_SUITE=trixie cargo nextest run --run-ignored all --no-fail-fast -E "$TRIXIE_TESTS" || rc=1
  step "SSH, commit-confirm, crash, drift and fail2ban tests on Debian 13 with ssh.socket (Ubuntu 24.04's activation)"
  SAPARI_TEST_SUITE=trixie SAPARI_TEST_SSH_ACTIVATION=socket \
    cargo nextest run --run-ignored all --no-fail-fast -E "$SOCKET_TESTS" || rc=1
else
  step "unit and system tests (Debian 12 only: the Debian 13 passes select tests with cargo-nextest)"
  cargo test --no-fail-fast -- --include-ignored --test-threads=2 "$@" || rc=1
fi
exit $rc
