#!/usr/bin/env bash
# What the shaper adds to the worker loop, in instructions per packet:
# callgrind counts the instructions of a round (`Loop::turn`: the worker's
# round and the frames' refill, everything they call included) over SHORT
# and LONG rounds of 32 packets of the `shaper` bench
# (dataplane/core/benches/shaper.rs: 4 096 UDP flows LAN -> WAN on memory
# queues), with the WAN port unshaped and shaped at a rate that never
# binds; the difference between the two lengths drops the warm-up. Unlike
# times on a shared machine, these counts repeat to the instruction.
# Usage: scripts/bench/shaper_instructions.sh   (SHORT=2000 LONG=12000)
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$HOME/.cargo/bin:$PATH"
scripts/setup.sh valgrind >/dev/null
SHORT=${SHORT:-2000}
LONG=${LONG:-12000}
# shellcheck source=scripts/bench/callgrind.sh
source scripts/bench/callgrind.sh
bin=$(executable shaper bench -p patronus-core --bench shaper)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# instructions CASE ROUNDS: Ir inside Worker::round for that run.
instructions() {
    SHAPER_CASE=$1 SHAPER_ROUNDS=$2 counted "$out/$1-$2" '*Loop*turn*' "$bin"
}

declare -A per_packet
for case in unshaped shaped; do
    short=$(instructions "$case" "$SHORT")
    long=$(instructions "$case" "$LONG")
    per_packet[$case]=$(python3 -c "print(round(($long - $short) / (($LONG - $SHORT) * 32), 1))")
    printf '%-9s %s instructions per packet (%s over %s rounds, %s over %s)\n' \
        "$case" "${per_packet[$case]}" "$long" "$LONG" "$short" "$SHORT"
done
printf 'machine: %s, %s vCPU; %s; %s\n' "$(uname -r)" "$(nproc)" "$(date -u +%F)" "$(git rev-parse --short HEAD)"
python3 -c "print('shaper adds', round(${per_packet[shaped]} - ${per_packet[unshaped]}, 1), 'instructions per packet')"
