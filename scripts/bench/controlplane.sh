#!/usr/bin/env bash
# Public API write rate of patronus-controlplane on this machine: the real
# server (durable redb database on local disk, group commit) driven by the
# Rust load generator controlplane/examples/api_load.rs over loopback gRPC.
# One client (every write waits for its own commit) against 64 concurrent
# clients (writes share commits); min/median/max of RUNS runs, the 64-client
# median last. Then config propagation (controlplane/examples/propagation.rs):
# with 1,000 and with 10,000 sites in a fresh database and 100 simulated data
# planes subscribed, the time from an API write to the affected data plane's
# acknowledgement of the version carrying it, p50/p99 over UPDATES writes.
# Do not build anything meanwhile.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$HOME/.cargo/bin:$PATH"

RUNS=${RUNS:-3}
WRITES=${WRITES:-20000}
OUT=target/bench/controlplane
mkdir -p "$OUT"
echo "== building (release)" >&2
cargo build -q --release -p patronus-controlplane --bin patronus-controlplane --example api_load --example propagation
UPDATES=${UPDATES:-300}

# start_server DB: starts a fresh server, sets addr and server.
start_server() {
    rm -f "$1"
    target/release/patronus-controlplane --listen 127.0.0.1:0 --metrics-listen "" --db "$1" 2>"$OUT/server.log" &
    server=$!
    addr=
    for _ in $(seq 100); do
        addr=$(sed -n 's/.*control plane listening addr=\([0-9.:]*\).*/\1/p' "$OUT/server.log" | head -1)
        [[ -n $addr ]] && break
        sleep 0.1
    done
}
server=
trap 'kill $server 2>/dev/null || true' EXIT
start_server "$OUT/cp.redb"

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

kill $server 2>/dev/null || true
wait $server 2>/dev/null || true

declare -A propagation
for sites in 1000 10000; do
    start_server "$OUT/prop-$sites.redb"
    line=$(target/release/examples/propagation --addr "$addr" --sites "$sites" --subscribers 100 --updates "$UPDATES")
    echo "$line" >&2
    propagation[$sites]=$(sed -n 's/.*p50 \([0-9.]*\) ms, p99 \([0-9.]*\) ms/\1 \2/p' <<<"$line")
    kill $server
    wait $server 2>/dev/null || true
done

echo
printf 'machine: %s, %s vCPU; %s; %s runs; database on %s\n' "$(uname -r)" "$(nproc)" "$(date -u +%F)" "$RUNS" \
    "$(df --output=fstype "$OUT" | tail -1)"
printf '%-12s %12s %12s %12s\n' clients "writes/s min" "median" "max"
for clients in 1 64; do
    read -r lo med hi <<<"${rates[$clients]}"
    printf '%-12s %12s %12s %12s\n' "$clients" "$lo" "$med" "$hi"
done
printf '%-12s %12s %12s\n' sites "p50 ms" "p99 ms"
for sites in 1000 10000; do
    read -r p50 p99 <<<"${propagation[$sites]}"
    printf '%-12s %12s %12s\n' "$sites" "$p50" "$p99"
done
read -r _ med _ <<<"${rates[64]}"
read -r _ p99 <<<"${propagation[10000]}"
echo "propagation p99 at 10000 sites, 100 data planes: $p99 ms (goal <= 100)"
echo "public API writes/s with 64 clients (median): $med (goal >= 10000)"
