#!/usr/bin/env bash
# Public API write rate of patronus-controlplane on this machine: the real
# server (durable redb database on local disk, group commit) driven by the
# Rust load generator controlplane/examples/api_load.rs over loopback gRPC.
# One client (every write waits for its own commit) against 64 concurrent
# clients (writes share commits); min/median/max of RUNS runs, the 64-client
# median last. Do not build anything meanwhile.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$HOME/.cargo/bin:$PATH"

RUNS=${RUNS:-3}
WRITES=${WRITES:-20000}
OUT=target/bench/controlplane
mkdir -p "$OUT"
echo "== building (release)" >&2
cargo build -q --release -p patronus-controlplane --bin patronus-controlplane --example api_load

rm -f "$OUT/cp.redb"
target/release/patronus-controlplane --listen 127.0.0.1:0 --db "$OUT/cp.redb" 2>"$OUT/server.log" &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 100); do
    addr=$(sed -n 's/.*addr=\([0-9.:]*\).*/\1/p' "$OUT/server.log" | head -1)
    [[ -n $addr ]] && break
    sleep 0.1
done

declare -A rates
for clients in 1 64; do
    writes=$WRITES
    ((clients == 1)) && writes=$((WRITES / 10))
    : >"$OUT/c$clients.txt"
    for run in $(seq "$RUNS"); do
        target/release/examples/api_load --addr "$addr" --writes "$writes" --clients "$clients" \
            --prefix "c$clients-r$run" | tee -a "$OUT/c$clients.txt" >&2
    done
    rates[$clients]=$(sed -n 's/.*: \([0-9]*\) writes\/s.*/\1/p' "$OUT/c$clients.txt" | sort -n |
        awk '{a[NR]=$1} END {print a[1], a[int((NR+1)/2)], a[NR]}')
done

echo
printf 'machine: %s, %s vCPU; %s; %s runs; database on %s\n' "$(uname -r)" "$(nproc)" "$(date -u +%F)" "$RUNS" \
    "$(df --output=fstype "$OUT" | tail -1)"
printf '%-12s %12s %12s %12s\n' clients "writes/s min" "median" "max"
for clients in 1 64; do
    read -r lo med hi <<<"${rates[$clients]}"
    printf '%-12s %12s %12s %12s\n' "$clients" "$lo" "$med" "$hi"
done
read -r _ med _ <<<"${rates[64]}"
echo "public API writes/s with 64 clients (median): $med (goal >= 10000)"
