#!/usr/bin/env bash
# Installs what Patronus needs on Debian 12 and gives DPDK its memory.
# Idempotent: installs only what is missing, reserves hugepages only when
# fewer are reserved. Run as root. Prints the EAL memory mode it settled on,
# and nothing else, on stdout: callers capture it (mode=$(scripts/setup.sh)).
# Usage: scripts/setup.sh [EXTRA_PACKAGE...]   (packages one script alone needs)
set -euo pipefail

PACKAGES=(
    build-essential pkg-config clang libclang-dev
    dpdk libdpdk-dev libpcap-dev libhyperscan-dev
    libndpi-bin protobuf-compiler libprotobuf-dev
    wireguard-go wireguard-tools frr etcd-server
    iproute2 iputils-ping ethtool iperf3 procps dnsmasq-base openssl python3-pyftpdlib sip-tester
    prometheus prometheus-alertmanager
    "$@"
)
HUGEPAGES_WANTED=${PATRONUS_HUGEPAGES:-512}

log() { printf 'setup: %s\n' "$*" >&2; }

if [[ $(id -u) -ne 0 ]]; then
    log "run as root (apt-get, hugepages and network namespaces need it)"
    exit 1
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed"; then
        missing+=("$pkg")
    fi
done
if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=300 update -q >&2
    apt-get -o DPkg::Lock::Timeout=300 install -y -q --no-install-recommends "${missing[@]}" >&2
fi

if ! command -v cargo >/dev/null 2>&1; then
    if [[ -x "$HOME/.cargo/bin/cargo" ]]; then
        log "cargo is in ~/.cargo/bin; add it to PATH"
    else
        log "no Rust toolchain: install one with rustup (https://rustup.rs), then re-run"
    fi
    exit 1
fi

# Hugepages: reserve 2 MiB pages if fewer than wanted, mount hugetlbfs.
mode=hugepages
have=$(cat /proc/sys/vm/nr_hugepages 2>/dev/null || echo 0)
if ((have < HUGEPAGES_WANTED)); then
    echo "$HUGEPAGES_WANTED" >/proc/sys/vm/nr_hugepages 2>/dev/null || true
fi
if ! grep -qs ' /dev/hugepages hugetlbfs ' /proc/mounts; then
    mkdir -p /dev/hugepages
    mount -t hugetlbfs nodev /dev/hugepages 2>/dev/null || true
fi
free_pages=$(awk '/^HugePages_Free:/ {print $2}' /proc/meminfo)
if ! grep -qs ' /dev/hugepages hugetlbfs ' /proc/mounts || ((free_pages < 128)); then
    mode=no-huge
    log "hugepages unavailable (free: ${free_pages:-0}); DPDK will run with --no-huge (see hugepages.md)"
else
    log "hugepages: ${free_pages} x 2 MiB free"
fi
echo "$mode"
