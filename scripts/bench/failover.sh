#!/usr/bin/env bash
# Failover: packets lost and the blackout of a paced UDP stream when the
# path it takes is blackholed, for probe intervals of 10, 20 and 100 ms and
# streams of 1 000, 10 000 and 100 000 packets a second (FAILOVER_PPS picks
# them; the stream is tests/src/bin/udp-seq.rs), then with BFD at 10, 50 and
# 300 ms × 3 deciding (tests/tests/failover.rs; FAILOVER_BFD_MS picks them),
# and with BFD on site 1's MPLS uplink against FRR's bfdd as its router, the
# link cut both ways (detection by bfdd read from its log, in the same run).
# Then ten minutes of 1% random loss each way on the path in use, which must
# cause no failover (FAILOVER_SOAK_S=600). Needs root (namespaces, DPDK on
# af_packet). FAILOVER_RUNS=5 by default.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --bin patronus-dataplane
PATRONUS_DATAPLANE_BIN="$PWD/target/release/patronus-dataplane" \
    cargo test --release -p patronus-e2e --test failover -- --ignored --nocapture --test-threads=1
