#!/usr/bin/env bash
# BFD detection: how long after the last packet heard each side declares its
# neighbor down, at 50 ms × 3, for our session core (bfdd killed) and for
# FRR's bfdd (our side falls silent), in the same run (tests/tests/bfd.rs).
# Needs root (a namespace) and Debian's frr. BFD_RUNS=10 by default.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo test --release -p patronus-e2e --test bfd detection_against_bfdd -- --ignored --nocapture
