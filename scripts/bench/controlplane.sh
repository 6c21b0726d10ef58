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
# The anchor: the same write load, in the same runs, against the server as it
# was at commit ANCHOR (built once into target/bench/), so that a slow day on
# this shared machine shows as a slow anchor, not as a regression.
# Do not build anything meanwhile.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$HOME/.cargo/bin:$PATH"

RUNS=${RUNS:-3}
WRITES=${WRITES:-20000}
UPDATES=${UPDATES:-300}
# The last control-plane commit of 2026-11-26, whose 13 395 writes/s BENCHMARKS.md records.
ANCHOR=${ANCHOR:-a33b3a78040ed2f1d82d2df47d255e42af3912a5}
OUT=target/bench/controlplane
mkdir -p "$OUT"
echo "== building (release)" >&2
cargo build -q --release -p patronus-controlplane --bin patronus-controlplane --example api_load --example propagation
anchor_bin=target/bench/controlplane-anchor/bin/patronus-controlplane-${ANCHOR:0:12}
if [[ ! -x $anchor_bin ]]; then
    echo "== building the anchor, patronus-controlplane at ${ANCHOR:0:12} (once)" >&2
    src=target/bench/controlplane-anchor/src
    rm -rf "$src" && mkdir -p "$src" "$(dirname "$anchor_bin")"
    git archive "$ANCHOR" | tar -x -C "$src"
    cargo build -q --release --locked --manifest-path "$src/Cargo.toml" -p patronus-controlplane \
        --bin patronus-controlplane --target-dir target/bench/controlplane-anchor/target
    cp target/bench/controlplane-anchor/target/release/patronus-controlplane "$anchor_bin"
    rm -rf "$src"
fi

# start_server BINARY DB: starts a server on a fresh database, sets addr and server.
start_server() {
    rm -f "$2"
    "$1" --listen 127.0.0.1:0 --metrics-listen "" --db "$2" 2>"$OUT/server.log" &
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
stop_server() {
    kill $server 2>/dev/null || true
    wait $server 2>/dev/null || true
}

# Each run measures the build under test and the anchor back to back, each
# against a fresh database, so that both see the same minute of this machine.
declare -A rates
for clients in 1 64; do
    writes=$WRITES
    ((clients == 1)) && writes=$((WRITES / 10))
    : >"$OUT/c$clients.txt"
    : >"$OUT/anchor-c$clients.txt"
    for run in $(seq "$RUNS"); do
        for who in patronus anchor; do
            bin=target/release/patronus-controlplane log=$OUT/c$clients.txt
            [[ $who == anchor ]] && bin=$anchor_bin log=$OUT/anchor-c$clients.txt
            start_server "$bin" "$OUT/$who.redb"
            printf '%-9s' "$who" >&2
            target/release/examples/api_load --addr "$addr" --writes "$writes" --clients "$clients" \
                --prefix "c$clients-r$run" | tee -a "$log" >&2
            stop_server
        done
    done
    for who in "" anchor-; do
        rates[$who$clients]=$(sed -n 's/.*: \([0-9]*\) writes\/s.*/\1/p' "$OUT/${who}c$clients.txt" | sort -n |
            awk '{a[NR]=$1} END {print a[1], a[int((NR+1)/2)], a[NR]}')
    done
done

declare -A propagation
for sites in 1000 10000; do
    start_server target/release/patronus-controlplane "$OUT/prop-$sites.redb"
    line=$(target/release/examples/propagation --addr "$addr" --sites "$sites" --subscribers 100 --updates "$UPDATES")
    echo "$line" >&2
    propagation[$sites]=$(sed -n 's/.*p50 \([0-9.]*\) ms, p99 \([0-9.]*\) ms/\1 \2/p' <<<"$line")
    stop_server
done

echo
printf 'machine: %s, %s vCPU; %s; %s runs; database on %s\n' "$(uname -r)" "$(nproc)" "$(date -u +%F)" "$RUNS" \
    "$(df --output=fstype "$OUT" | tail -1)"
printf '%-10s %-8s %12s %12s %12s\n' server clients "writes/s min" "median" "max"
for clients in 1 64; do
    for who in "" anchor-; do
        read -r lo med hi <<<"${rates[$who$clients]}"
        name=${who%-}
        printf '%-10s %-8s %12s %12s %12s\n' "${name:-patronus}" "$clients" "$lo" "$med" "$hi"
    done
done
echo "anchor: patronus-controlplane at ${ANCHOR:0:12}"
printf '%-12s %12s %12s\n' sites "p50 ms" "p99 ms"
for sites in 1000 10000; do
    read -r p50 p99 <<<"${propagation[$sites]}"
    printf '%-12s %12s %12s\n' "$sites" "$p50" "$p99"
done
read -r _ med _ <<<"${rates[64]}"
read -r _ anchor_med _ <<<"${rates[anchor-64]}"
read -r _ p99 <<<"${propagation[10000]}"
echo "propagation p99 at 10000 sites, 100 data planes: $p99 ms (goal <= 100)"
echo "public API writes/s with 64 clients (median): $med (goal >= 10000)"
awk -v a="$med" -v b="$anchor_med" 'BEGIN {printf "writes/s with 64 clients, patronus / anchor (medians): %.2f\n", a / b}'
