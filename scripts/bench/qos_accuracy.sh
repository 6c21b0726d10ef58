#!/usr/bin/env bash
# Shaping accuracy on the veth topology of the end-to-end tests: host A —
# gateway — host B, the gateway's WAN side shaped to 20 and 100 Mbit/s, a
# UDP flood of 1.3 times the rate from A in 1400 B and 72 B datagrams, the
# rate B receives over 5 s, charged as IP packet + 38 B of framing. Each
# case runs through our gateway (net_af_packet, uplink `rate_mbps`) and
# then through Linux HTB (a router namespace forwarding with the kernel,
# one HTB class with `overhead 24` on its WAN side), on a fresh topology
# each (tests/tests/qos.rs, shaping_accuracy_against_linux_htb). Needs
# root. Do not build anything meanwhile.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$HOME/.cargo/bin:$PATH"
mode=$(scripts/setup.sh)
cargo build --release --bin patronus-dataplane
PATRONUS_EAL_MEMORY=$mode PATRONUS_DATAPLANE_BIN="$PWD/target/release/patronus-dataplane" \
    cargo test --release -p patronus-e2e --test qos -- --ignored --nocapture --test-threads=1 \
    shaping_accuracy_against_linux_htb
printf 'machine: %s, %s vCPU; %s\n' "$(uname -r)" "$(nproc)" "$(date -u +%F)"
