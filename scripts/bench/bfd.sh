#!/usr/bin/env bash
# BFD detection: how long after the last packet heard each side declares its
# neighbor down, at 10, 50 and 300 ms × 3, for our session core (bfdd
# killed) and for FRR's bfdd (our side falls silent), in the same run
# (tests/tests/bfd.rs). Needs root (a namespace) and Debian's frr.
# BFD_RUNS=10 and BFD_MS="10 50 300" by default.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo test --release -p patronus-e2e --test bfd detection_against_frr_bfdd -- --ignored --nocapture
