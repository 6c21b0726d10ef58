#!/usr/bin/env bash
# BFD detection: how long after the last packet heard each side declares its
# neighbor down, at 10, 50 and 300 ms × 3, for our session core (bfdd
# killed) and for FRR's bfdd (our side falls silent), in the same run
# (tests/tests/bfd.rs). Needs root (a namespace) and Debian's frr.
# BFD_RUNS=10 and BFD_MS="10 50 300" by default.
#
# Then BFD's cost on a worker: a hub with 1 024 paths to 16 spokes, every
# path running BFD at 50 ms × 3, against the same hub without BFD, the
# hub's rounds timed on the machine's clock (memory queues, no DPDK;
# dataplane/core/src/worker/tests.rs). BFD_COST_S=10 simulated seconds.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo test --release -p patronus-e2e --test bfd detection_against_frr_bfdd -- --ignored --nocapture
cargo test --release -p patronus-core --lib bfd_cost_of_1024_sessions -- --ignored --nocapture
