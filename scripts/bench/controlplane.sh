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
# Then the etcd backend (STORES=redb skips it), on a three-member etcd cluster
# (Debian's etcd-server) started here on loopback: the same write loads through
# one replica, against an anchor of etcd's own put rate at the same
# concurrency in the same runs (controlplane/examples/etcd_put.rs: plain puts
# of a site's size); propagation to 100 and 1 000 subscribers spread over three
# replicas; and the failover of 100 data-plane streams when their replica is
# killed (controlplane/examples/stream_failover.rs). Ratios last.
# Do not build anything meanwhile.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$HOME/.cargo/bin:$PATH"

RUNS=${RUNS:-3}
STORES=${STORES:-redb,etcd}
WRITES=${WRITES:-20000}
UPDATES=${UPDATES:-300}
# The last control-plane commit of 2026-11-26, whose 13 395 writes/s BENCHMARKS.md records.
ANCHOR=${ANCHOR:-a33b3a78040ed2f1d82d2df47d255e42af3912a5}
OUT=target/bench/controlplane
mkdir -p "$OUT"
echo "== building (release)" >&2
cargo build -q --release -p patronus-controlplane --bin patronus-controlplane --example api_load \
    --example propagation --example etcd_put --example stream_failover
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


# The etcd backend.
etcd_pids=()
replicas=()
replica_pids=()
trap 'kill $server "${etcd_pids[@]}" "${replica_pids[@]}" 2>/dev/null || true' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# start_etcd: three members on loopback with fresh data; sets endpoints.
start_etcd() {
    local cluster= urls=() i
    local client_ports=() peer_ports=()
    for i in 0 1 2; do
        client_ports+=("$(free_port)")
        peer_ports+=("$(free_port)")
        cluster+="${cluster:+,}m$i=http://127.0.0.1:${peer_ports[i]}"
    done
    rm -rf "$OUT/etcd"
    for i in 0 1 2; do
        /usr/bin/etcd --name "m$i" --data-dir "$OUT/etcd/m$i" \
            --listen-client-urls "http://127.0.0.1:${client_ports[i]}" \
            --advertise-client-urls "http://127.0.0.1:${client_ports[i]}" \
            --listen-peer-urls "http://127.0.0.1:${peer_ports[i]}" \
            --initial-advertise-peer-urls "http://127.0.0.1:${peer_ports[i]}" \
            --initial-cluster "$cluster" --initial-cluster-state new \
            --initial-cluster-token "bench-$$" 2>"$OUT/etcd-m$i.log" &
        etcd_pids+=($!)
        urls+=("http://127.0.0.1:${client_ports[i]}")
    done
    endpoints=$(IFS=,; echo "${urls[*]}")
    for _ in $(seq 100); do
        target/release/examples/etcd_put --endpoints "$endpoints" --puts 1 --clients 1 \
            --prefix /bench/ready/ >/dev/null 2>&1 && return
        sleep 0.2
    done
    echo "etcd did not start; see $OUT/etcd-m*.log" >&2
    exit 1
}
stop_etcd() {
    kill "${etcd_pids[@]}" 2>/dev/null || true
    wait "${etcd_pids[@]}" 2>/dev/null || true
    etcd_pids=()
}
# start_replica PREFIX: one more replica on the cluster; appends to replicas and replica_pids.
start_replica() {
    local log=$OUT/replica-${#replica_pids[@]}.log a=
    target/release/patronus-controlplane --listen 127.0.0.1:0 --metrics-listen "" \
        --store "etcd:$endpoints" --etcd-prefix "$1" 2>"$log" &
    replica_pids+=($!)
    for _ in $(seq 100); do
        a=$(sed -n 's/.*control plane listening addr=\([0-9.:]*\).*/\1/p' "$log" | head -1)
        [[ -n $a ]] && break
        sleep 0.1
    done
    replicas+=("$a")
}
stop_replicas() {
    kill "${replica_pids[@]}" 2>/dev/null || true
    wait "${replica_pids[@]}" 2>/dev/null || true
    replica_pids=() replicas=()
}

if [[ ,$STORES, == *,etcd,* ]]; then
    [[ -x /usr/bin/etcd ]] || { echo "etcd is not installed: scripts/setup.sh installs etcd-server" >&2; exit 1; }
    start_etcd
    for clients in 1 64; do
        writes=$WRITES
        ((clients == 1)) && writes=$((WRITES / 10))
        : >"$OUT/etcd-c$clients.txt"
        : >"$OUT/etcdput-c$clients.txt"
        for run in $(seq "$RUNS"); do
            printf '%-9s' "etcd put" >&2
            target/release/examples/etcd_put --endpoints "$endpoints" --puts "$writes" --clients "$clients" \
                --prefix "/bench/put-c$clients-r$run/" | tee -a "$OUT/etcdput-c$clients.txt" >&2
            start_replica "/bench/api-c$clients-r$run/"
            printf '%-9s' "on etcd" >&2
            target/release/examples/api_load --addr "${replicas[0]}" --writes "$writes" --clients "$clients" \
                --prefix "c$clients-r$run" | tee -a "$OUT/etcd-c$clients.txt" >&2
            stop_replicas
        done
        rates[etcd-$clients]=$(sed -n 's/.*: \([0-9]*\) writes\/s.*/\1/p' "$OUT/etcd-c$clients.txt" | sort -n |
            awk '{a[NR]=$1} END {print a[1], a[int((NR+1)/2)], a[NR]}')
        rates[etcdput-$clients]=$(sed -n 's/.*: \([0-9]*\) puts\/s.*/\1/p' "$OUT/etcdput-c$clients.txt" | sort -n |
            awk '{a[NR]=$1} END {print a[1], a[int((NR+1)/2)], a[NR]}')
    done
    for subscribers in 100 1000; do
        for _ in 1 2 3; do start_replica "/bench/prop-$subscribers/"; done
        line=$(target/release/examples/propagation --addr "$(IFS=,; echo "${replicas[*]}")" \
            --sites 1000 --subscribers "$subscribers" --updates "$UPDATES" --prefix "prop$subscribers")
        echo "$line" >&2
        propagation[etcd-$subscribers]=$(sed -n 's/.*p50 \([0-9.]*\) ms, p99 \([0-9.]*\) ms/\1 \2/p' <<<"$line")
        stop_replicas
    done
    start_replica /bench/failover/
    start_replica /bench/failover/
    failover=$(target/release/examples/stream_failover --addr "${replicas[0]},${replicas[1]}" \
        --kill-pid "${replica_pids[0]}" --subscribers 100)
    echo "$failover" >&2
    stop_replicas
    stop_etcd
fi

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
if [[ ,$STORES, == *,etcd,* ]]; then
    echo "etcd: three members on this machine; patronus through one replica"
    printf '%-10s %-8s %12s %12s %12s\n' writer clients "writes/s min" "median" "max"
    for clients in 1 64; do
        for who in etcd etcdput; do
            read -r lo med hi <<<"${rates[$who-$clients]}"
            name=patronus
            [[ $who == etcdput ]] && name="etcd put"
            printf '%-10s %-8s %12s %12s %12s\n' "$name" "$clients" "$lo" "$med" "$hi"
        done
    done
    printf '%-30s %12s %12s\n' "1000 sites, three replicas" "p50 ms" "p99 ms"
    for subscribers in 100 1000; do
        read -r p50 p99 <<<"${propagation[etcd-$subscribers]}"
        printf '%-30s %12s %12s\n' "$subscribers subscribers" "$p50" "$p99"
    done
    echo "$failover"
fi
read -r _ med _ <<<"${rates[64]}"
read -r _ anchor_med _ <<<"${rates[anchor-64]}"
read -r _ p99 <<<"${propagation[10000]}"
echo "propagation p99 at 10000 sites, 100 data planes: $p99 ms (goal <= 100)"
echo "public API writes/s with 64 clients (median): $med (goal >= 10000)"
if [[ ,$STORES, == *,etcd,* ]]; then
    read -r _ p99 <<<"${propagation[etcd-1000]}"
    echo "etcd, propagation p99 to 1000 subscribers over three replicas: $p99 ms (goal <= 1000)"
    echo "etcd, stream failover p99: $(sed -n 's/.*p99 \([0-9]*\) ms.*/\1/p' <<<"$failover") ms (goal <= 1000)"
    for clients in 1 64; do
        read -r _ a _ <<<"${rates[etcd-$clients]}"
        read -r _ b _ <<<"${rates[etcdput-$clients]}"
        awk -v a="$a" -v b="$b" -v c="$clients" \
            'BEGIN {printf "etcd writes/s with %d client(s), patronus / etcd put (medians): %.2f (goal >= 0.50)\n", c, a / b}'
    done
fi
awk -v a="$med" -v b="$anchor_med" 'BEGIN {printf "writes/s with 64 clients, patronus / anchor (medians): %.2f\n", a / b}'
