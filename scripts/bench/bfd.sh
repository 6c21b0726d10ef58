#!/usr/bin/env bash
# BFD detection: how long after the last packet heard each side declares its
# neighbor down, at 10, 50 and 300 ms × 3, for our session core (bfdd
# killed) and for FRR's bfdd (our side falls silent), in the same run
# (tests/tests/bfd.rs). Needs root (a namespace) and Debian's frr.
# BFD_RUNS=10 and BFD_MS="10 50 300" by default.
#
# Then BFD's cost on a worker: a hub with 1 024 paths to 16 spokes, every
# path running BFD at 50 ms × 3, against the same hub without BFD
# (memory queues, no DPDK; dataplane/core/src/worker/tests.rs):
#   - time: the hub's rounds timed on the machine's clock, the two
#     topologies' simulated seconds taken in turn, median against median
#     (BFD_COST_S=15 seconds);
#   - instructions: callgrind counts the hub's rounds (`first_site_round`)
#     over SHORT and LONG simulated seconds of each topology; the
#     difference between the two lengths drops the bring-up, and unlike
#     times on a shared machine the counts repeat.
# BFD_BENCH=cost runs the last two only, BFD_BENCH=time the timed one only.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$HOME/.cargo/bin:$PATH"
bench=${BFD_BENCH:-all}
if [ "$bench" = all ]; then
    cargo test --release -p patronus-e2e --test bfd detection_against_frr_bfdd -- --ignored --nocapture
fi
cargo test --release -p patronus-core --lib bfd_cost_of_1024_sessions -- --ignored --nocapture
if [ "$bench" = time ]; then exit 0; fi

scripts/setup.sh valgrind >/dev/null
SHORT=${SHORT:-1}
LONG=${LONG:-4}
# shellcheck source=scripts/bench/callgrind.sh
source scripts/bench/callgrind.sh
bin=$(executable patronus_core test --release -p patronus-core --lib)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# instructions TOPOLOGY SECONDS: the hub's instructions over that run.
instructions() {
    BFD_COST_ONLY=$1 BFD_COST_S=$2 counted "$out/$1-$2" '*first_site_round*' \
        "$bin" bfd_cost_of_1024_sessions --ignored
}

declare -A per_second
for topology in plain bfd; do
    short=$(instructions "$topology" "$SHORT")
    long=$(instructions "$topology" "$LONG")
    per_second[$topology]=$(((long - short) / (LONG - SHORT)))
    printf '%-5s %s instructions per simulated second at the hub\n' "$topology" "${per_second[$topology]}"
done
printf 'machine: %s, %s vCPU; %s; %s\n' "$(uname -r)" "$(nproc)" "$(date -u +%F)" "$(git rev-parse --short HEAD)"
# 1 024 sessions each send and take 20 Control packets a second.
python3 -c "print('BFD adds', round((${per_second[bfd]} - ${per_second[plain]}) / (1024 * 20 * 2)), 'instructions per Control packet sent or taken')"
