#!/usr/bin/env bash
# Tunnel benchmark: WireGuard encryption and decryption per core.
#
#   decrypt  gateway A: net_pcap replays LAN frames (inner packets of 64,
#            512 and 1420 B, 4096 flows) into the tunnel, out of a net_memif
#            to gateway B, which decrypts and forwards into net_null. The
#            handshake between them is a real one. A's worker has CPU 1, B's
#            CPU 0. The pair runs at the slower of the two, so B's capacity
#            is its rate over its busy share.
#   encrypt  then A's configuration is reloaded (SIGHUP) with B's endpoint
#            routed out of a net_null port: A keeps its session and encrypts
#            into net_null, the harness of the forwarding benchmark.
#   fed      the same, with A's LAN a net_ring port that ring_feed.c (a DPDK
#            secondary process on CPU 0) fills from the capture: A's worker
#            receives buffers by reference, as from a NIC's DMA, and spends
#            no cycles copying frames in (net_pcap's copy is on the worker).
#   harness  the same frames net_pcap -> net_null by a plain rx->tx loop
#            (scripts/bench/rxtx_anchor.c): what the virtual devices cost.
#   ceiling  ring's ChaCha20-Poly1305 sealing the same sizes in place on one
#            core, and the engine's own per-packet cost without DPDK
#            (`cargo bench --bench tunnel`).
#   anchors  wireguard-go (Debian) and boringtun (`cargo install
#            boringtun-cli`, built here, not a project dependency) carrying
#            iperf3 between two namespaces; per-core throughput is iperf3's
#            goodput over the CPU share the sending implementation used.
#
# Rates come from DPDK telemetry, cycles from the TSC: cycles/packet = busy
# share x TSC Hz / rate. Prints min/median/max over RUNS runs; the ratios
# to the goals come last. Do not build anything meanwhile.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$HOME/.cargo/bin:$PATH"

RUNS=${RUNS:-3}
DURATION=${DURATION:-5}
WARMUP=${WARMUP:-2}
FLOWS=${FLOWS:-4096}
IPERF_SECONDS=${IPERF_SECONDS:-10}
OUT=target/bench/tunnel
PCAP_MAC=02:70:63:61:70:00
SIZES=(64 512 1420)

# shellcheck source=scripts/bench/lib.sh
source scripts/bench/lib.sh
mode=$(scripts/setup.sh)
if [[ $mode != hugepages ]]; then
    echo "tunnel.sh: hugepages are needed for meaningful figures (see hugepages.md)" >&2
    exit 1
fi
rm -rf "$OUT"
mkdir -p "$OUT"

echo "== building (release)" >&2
cargo build -q --release --bin patronus-dataplane --example bench_pcap
cc -O3 $(pkg-config --cflags libdpdk) scripts/bench/rxtx_anchor.c -o "$OUT/rxtx_anchor" $(pkg-config --libs libdpdk)
cc -O3 $(pkg-config --cflags libdpdk) scripts/bench/ring_feed.c -o "$OUT/ring_feed" $(pkg-config --libs libdpdk)
BORINGTUN=target/bench/boringtun/bin/boringtun-cli
if [[ ! -x $BORINGTUN ]]; then
    echo "== cargo install boringtun-cli (the anchor, built once into target/bench)" >&2
    cargo install --locked --quiet boringtun-cli --root target/bench/boringtun
fi
for inner in "${SIZES[@]}"; do
    target/release/examples/bench_pcap --flows "$FLOWS" --size $((inner + 14)) --dst-mac "$PCAP_MAC" --out "$OUT/lan-$inner.pcap"
done

umask 077
for side in a b; do wg genkey >"$OUT/$side.key"; done
A_PUB=$(wg pubkey <"$OUT/a.key")
B_PUB=$(wg pubkey <"$OUT/b.key")
SOCK=$OUT/memif.sock

# Gateway A: LAN from the capture (or, with FEED=ring, from ring_feed through
# a net_ring port, which needs shared memory: no --in-memory); B over the
# memif ("hs"), or over net_null ("wan") once `reroute` is given.
config_a() { # config_a INNER [reroute]
    local lan="net_pcap0" lan_vdev="net_pcap0,rx_pcap=$OUT/lan-$1.pcap,infinite_rx=1" memory='"--in-memory", '
    if [[ ${FEED:-pcap} == ring ]]; then
        lan="net_ring0" lan_vdev="net_ring0" memory=""
    fi
    cat <<TOML
[dpdk]
eal_args = ["-l", "0-1", "--no-pci", $memory"--file-prefix", "ptun-a", "--log-level", "lib.eal:warning",
            "--vdev", "$lan_vdev",
            "--vdev", "net_null0,no-rx=1",
            "--vdev", "net_memif0,role=server,socket=$SOCK,id=0,rsize=13"]
mempool_size = 16383
[worker]
flow_capacity = 65536
[metrics]
listen = "127.0.0.1:19470"
[[port]]
name = "lan"
device = "$lan"
addresses = ["10.255.0.1/16"]
[[port]]
name = "wan"
device = "net_null0"
addresses = ["203.0.113.1/24"]
[[port]]
name = "hs"
device = "net_memif0"
addresses = ["192.0.2.1/24"]
[tunnel]
private_key_file = "$OUT/a.key"
[[peer]]
name = "b"
endpoint = { address = "192.0.2.2", port = 51820 }
wireguard = { public_key = "$B_PUB" }
allowed_ips = ["198.18.0.0/15"]
TOML
    if [[ ${2:-} == reroute ]]; then
        cat <<TOML
[[route]]
prefix = "192.0.2.2/32"
via = "203.0.113.2"
[[neighbor]]
ip = "203.0.113.2"
mac = "02:00:00:00:00:02"
port = "wan"
TOML
    fi
}
config_b() {
    cat <<TOML
[dpdk]
eal_args = ["--lcores", "0@0,1@0", "--no-pci", "--in-memory", "--file-prefix", "ptun-b", "--log-level", "lib.eal:warning",
            "--vdev", "net_memif0,role=client,socket=$SOCK,id=0,rsize=13", "--vdev", "net_null0,no-rx=1"]
mempool_size = 16383
[worker]
flow_capacity = 65536
[metrics]
listen = "127.0.0.1:19471"
[[port]]
name = "wan"
device = "net_memif0"
addresses = ["192.0.2.2/24"]
[[port]]
name = "lan"
device = "net_null0"
addresses = ["198.19.255.1/24"]
[[route]]
prefix = "198.18.0.0/16"
via = "198.19.255.2"
[[neighbor]]
ip = "198.19.255.2"
mac = "02:00:00:00:00:02"
port = "lan"
[tunnel]
private_key_file = "$OUT/b.key"
[[peer]]
name = "a"
endpoint = { address = "192.0.2.1", port = 51820 }
wireguard = { public_key = "$A_PUB" }
allowed_ips = ["10.0.0.0/8"]
TOML
}

declare -A pids
start() { # start NAME PREFIX CMD...
    local name=$1 prefix=$2
    shift 2
    rm -rf "/var/run/dpdk/$prefix"
    "$@" >"$OUT/$name.log" 2>&1 &
    pids[$name]=$!
    for _ in $(seq 300); do
        [[ -S /var/run/dpdk/$prefix/dpdk_telemetry.v2 ]] && grep -qE "running|entering main loop" "$OUT/$name.log" && return 0
        kill -0 "${pids[$name]}" 2>/dev/null || { cat "$OUT/$name.log" >&2; return 1; }
        sleep 0.1
    done
    echo "$name did not start" >&2
    return 1
}
stop() { # stop NAME
    kill -INT "${pids[$1]}" 2>/dev/null || true
    wait "${pids[$1]}" 2>/dev/null || true
}
metric() { # metric PORT NAME [LABEL_FILTER]: sum of the samples
    curl -s "http://127.0.0.1:$1/metrics" | awk -v n="$2" -v f="${3:-}" \
        '$1 ~ "^"n"({|$)" && index($1, f) { s += $2 } END { print s + 0 }'
}
counter() { python3 scripts/bench/telemetry.py "$@"; }
sample() { # sample PREFIX PORT FIELD METRICS_PORT: "rate busy" over DURATION
    local c1 t1 c2 t2
    c1=$(counter "$1" "$2" "$3"); t1=$(date +%s.%N)
    sleep "$DURATION"
    c2=$(counter "$1" "$2" "$3"); t2=$(date +%s.%N)
    local busy
    busy=$(metric "$4" patronus_worker_busy_ratio)
    python3 -c "print(int(($c2 - $c1) / ($t2 - $t1)), $busy)"
}

keep() { # keep KEY "rate busy"...: min/median/max rate and the median busy share
    local key=$1
    shift
    results[$key]=$(printf '%s\n' "$@" | sort -n | awk '{r[NR]=$1; b[NR]=$2} END {m=int((NR+1)/2); print r[1], r[m], r[NR], b[m]}')
    echo "  $key: ${results[$key]} (packets/s min median max, busy share)" >&2
}

# Stops B, reroutes B's endpoint into A's net_null port (a reload: the
# session stays, the peer's key being unchanged) and measures A encrypting
# into the void. FEED in the environment picks A's LAN as for the start.
measure_encrypt() { # measure_encrypt KEY INNER
    stop b
    config_a "$2" reroute >"$OUT/a.toml"
    local generation
    generation=$(metric 19470 patronus_config_generation)
    kill -HUP "${pids[a]}"
    for _ in $(seq 50); do
        [[ $(metric 19470 patronus_config_generation) != "$generation" ]] && break
        sleep 0.1
    done
    [[ $(metric 19470 patronus_config_generation) != "$generation" ]] || { echo "A did not reload ($1)" >&2; exit 1; }
    sleep "$WARMUP"
    local runs=()
    for _ in $(seq "$RUNS"); do runs+=("$(sample ptun-a 1 opackets 19470)"); done
    keep "$1/$2" "${runs[@]}"
    [[ $(metric 19470 patronus_tunnel_status 'status="up"') == 1 ]] || { echo "A lost its session ($1)" >&2; exit 1; }
}

tsc_hz=$(measure_tsc_hz "$OUT/rxtx_anchor" ptun-hz)

for inner in "${SIZES[@]}"; do
    echo "== inner packets of $inner B" >&2
    config_a "$inner" >"$OUT/a.toml"
    config_b >"$OUT/b.toml"
    rm -f "$SOCK"
    start a ptun-a target/release/patronus-dataplane --config "$OUT/a.toml"
    start b ptun-b target/release/patronus-dataplane --config "$OUT/b.toml"
    for _ in $(seq 150); do
        [[ $(metric 19470 patronus_tunnel_status 'status="up"') == 1 ]] && break
        sleep 0.2
    done
    [[ $(metric 19470 patronus_tunnel_status 'status="up"') == 1 ]] || { echo "no session between A and B" >&2; exit 1; }
    sleep "$WARMUP"
    runs=()
    # B's LAN port (net_null) is its DPDK port 1.
    for _ in $(seq "$RUNS"); do runs+=("$(sample ptun-b 1 opackets 19471)"); done
    keep "decrypt/$inner" "${runs[@]}"
    drops=$(metric 19471 patronus_tunnel_drops_total)
    [[ $drops == 0 ]] || echo "  B dropped $drops tunnel packets" >&2
    measure_encrypt encrypt "$inner"
    stop a
    # The harness alone: the same frames net_pcap -> net_null by a plain
    # rx->tx loop on A's CPU, no parsing, no crypto.
    start bare ptun-bare "$OUT/rxtx_anchor" -l 0-1 --no-pci --in-memory --file-prefix ptun-bare \
        --log-level lib.eal:warning --vdev "net_pcap0,rx_pcap=$OUT/lan-$inner.pcap,infinite_rx=1" \
        --vdev net_null0,no-rx=1
    sleep "$WARMUP"
    runs=()
    for _ in $(seq "$RUNS"); do
        c1=$(counter ptun-bare 1 opackets); t1=$(date +%s.%N)
        sleep "$DURATION"
        c2=$(counter ptun-bare 1 opackets); t2=$(date +%s.%N)
        runs+=("$(python3 -c "print(int(($c2 - $c1) / ($t2 - $t1)), 1.0)")")
    done
    keep "harness/$inner" "${runs[@]}"
    stop bare

    # Encryption fed like a NIC: the handshake over the memif again, with
    # ring_feed (lcore 7 on CPU 0, beside A's main lcore) filling A's LAN.
    FEED=ring config_a "$inner" >"$OUT/a.toml"
    rm -f "$SOCK"
    start a ptun-a target/release/patronus-dataplane --config "$OUT/a.toml"
    start b ptun-b target/release/patronus-dataplane --config "$OUT/b.toml"
    "$OUT/ring_feed" --proc-type=secondary --file-prefix ptun-a --lcores 7@0 --no-pci \
        --log-level lib.eal:warning -- patronus_mbufs net_ring0 "$OUT/lan-$inner.pcap" >"$OUT/feed.log" 2>&1 &
    pids[feed]=$!
    for _ in $(seq 150); do
        [[ $(metric 19470 patronus_tunnel_status 'status="up"') == 1 ]] && break
        kill -0 "${pids[feed]}" 2>/dev/null || { cat "$OUT/feed.log" >&2; exit 1; }
        sleep 0.2
    done
    [[ $(metric 19470 patronus_tunnel_status 'status="up"') == 1 ]] || { echo "no session between A and B (fed)" >&2; exit 1; }
    FEED=ring measure_encrypt fed "$inner"
    stop feed
    stop a
    # Without --in-memory EAL leaves its hugepage files behind.
    rm -f /dev/hugepages/ptun-a*map_*
done

echo "== ring ChaCha20-Poly1305 and the engine without DPDK (cargo bench --bench tunnel)" >&2
cargo bench -q -p patronus-core --bench tunnel -- --warm-up-time 1 --measurement-time 3 >"$OUT/criterion.log" 2>&1
estimate() { # estimate GROUP/ID/SIZE -> median ns per packet
    local group=${1%%/*} id=${1#*/}
    python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['median']['point_estimate'])" \
        "target/criterion/$group/${id//\//_}/new/estimates.json"
}

# Userspace WireGuard implementations through a namespace pair, with iperf3.
ns_id=$$
userspace() { # userspace NAME CMD... : prints "goodput_bps sender_cpu_share"
    local name=$1
    shift
    local n1=ptb1-$ns_id n2=ptb2-$ns_id
    ip netns add "$n1"
    ip netns add "$n2"
    trap 'ip netns del '"$n1"' 2>/dev/null; ip netns del '"$n2"' 2>/dev/null' RETURN
    ip link add ptbv1-$ns_id type veth peer name ptbv2-$ns_id
    ip link set ptbv1-$ns_id netns "$n1"
    ip link set ptbv2-$ns_id netns "$n2"
    local keys=()
    for i in 1 2; do
        wg genkey >"$OUT/$name-$i.key"
        keys+=("$(wg pubkey <"$OUT/$name-$i.key")")
    done
    local wpids=()
    for i in 1 2; do
        local ns=ptb$i-$ns_id other=$((3 - i))
        ip -n "$ns" link set lo up
        ip -n "$ns" addr add "10.30.0.$i/24" dev "ptbv$i-$ns_id"
        ip -n "$ns" link set "ptbv$i-$ns_id" up
        ip netns exec "$ns" "$@" "ptw$i-$ns_id" >"$OUT/$name-$i.log" 2>&1 &
        wpids+=($!)
        for _ in $(seq 100); do [[ -S /var/run/wireguard/ptw$i-$ns_id.sock ]] && break; sleep 0.1; done
        ip netns exec "$ns" wg set "ptw$i-$ns_id" private-key "$OUT/$name-$i.key" listen-port 51820 \
            peer "${keys[$((other - 1))]}" endpoint "10.30.0.$other:51820" allowed-ips "10.31.0.$other/32"
        ip -n "$ns" addr add "10.31.0.$i/24" dev "ptw$i-$ns_id"
        ip -n "$ns" link set "ptw$i-$ns_id" up
    done
    ip netns exec "$n2" iperf3 -s -1 -D
    sleep 0.5
    ip netns exec "$n1" ping -c 1 -W 5 10.31.0.2 >/dev/null
    local ticks before after t0 t1
    ticks=$(getconf CLK_TCK)
    before=$(awk '{print $14 + $15}' "/proc/${wpids[0]}/stat")
    t0=$(date +%s.%N)
    ip netns exec "$n1" iperf3 -c 10.31.0.2 -t "$IPERF_SECONDS" -J >"$OUT/$name-iperf.json"
    t1=$(date +%s.%N)
    after=$(awk '{print $14 + $15}' "/proc/${wpids[0]}/stat")
    kill "${wpids[@]}" 2>/dev/null || true
    wait "${wpids[@]}" 2>/dev/null || true
    rm -f /var/run/wireguard/ptw1-$ns_id.sock /var/run/wireguard/ptw2-$ns_id.sock
    python3 - "$OUT/$name-iperf.json" "$before" "$after" "$ticks" "$t0" "$t1" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
goodput = report["end"]["sum_received"]["bits_per_second"]
before, after, ticks, t0, t1 = map(float, sys.argv[2:])
print(int(goodput), (after - before) / ticks / (t1 - t0))
PY
}
echo "== wireguard-go and boringtun with iperf3 ($IPERF_SECONDS s each)" >&2
read -r wggo_bps wggo_cpu <<<"$(userspace wireguard-go wireguard-go -f)"
read -r bt_bps bt_cpu <<<"$(WG_SUDO=1 userspace boringtun "$BORINGTUN" -f --disable-drop-privileges)"

echo
printf 'machine: %s, %s vCPU; DPDK %s; %s; TSC %s Hz; %s runs x %s s, %s flows\n' \
    "$(uname -r)" "$(nproc)" "$(pkg-config --modversion libdpdk)" "$(date -u +%F)" "${tsc_hz:-?}" "$RUNS" "$DURATION" "$FLOWS"
printf '%-16s %10s %10s %10s %12s %10s %12s\n' path "Mpps min" "median" "max" "inner Gb/s" busy "cycles/pkt"
for key in harness/64 harness/512 harness/1420 encrypt/64 encrypt/512 encrypt/1420 fed/64 fed/512 fed/1420 decrypt/64 decrypt/512 decrypt/1420; do
    read -r lo med hi busy <<<"${results[$key]}"
    python3 - "$key" "$lo" "$med" "$hi" "$busy" "${tsc_hz:-0}" <<'PY'
import sys
key, lo, med, hi, busy, hz = sys.argv[1], *map(float, sys.argv[2:])
size = int(key.split("/")[1])
capacity = med / busy if busy else float("nan")
cycles = busy * hz / med if med else float("nan")
print(f"{key:<16} {lo/1e6:10.3f} {med/1e6:10.3f} {hi/1e6:10.3f} {capacity*size*8/1e9:12.2f} {busy:10.2f} {cycles:12.0f}")
PY
done
echo "(inner Gb/s and cycles are per busy core: the rate over the worker's busy share;"
echo " harness: net_pcap -> net_null with a plain rx->tx loop, the cost no forwarding path avoids)"
printf '%-22s %12s %12s\n' "without DPDK" "ns/packet" "Mpps"
for id in seal/raw/64 seal/engine/64 open/engine/64 seal/raw/512 seal/engine/512 open/engine/512 seal/raw/1420 seal/engine/1420 open/engine/1420; do
    ns=$(estimate "$id")
    python3 -c "print(f'{\"$id\":<22} {$ns:12.1f} {1e3/$ns:12.3f}')"
done
python3 - "$wggo_bps" "$wggo_cpu" "$bt_bps" "$bt_cpu" <<'PY'
import sys
wg, wgc, bt, btc = map(float, sys.argv[1:])
print(f"{'wireguard-go':<22} goodput {wg/1e9:6.2f} Gb/s, sender {wgc:4.2f} cores: {wg/1e9/wgc:6.2f} Gb/s per core")
print(f"{'boringtun':<22} goodput {bt/1e9:6.2f} Gb/s, sender {btc:4.2f} cores: {bt/1e9/btc:6.2f} Gb/s per core")
PY
read -r _ enc_med _ enc_busy <<<"${results[encrypt/1420]}"
read -r _ fed_med _ fed_busy <<<"${results[fed/1420]}"
read -r _ harness_med _ harness_busy <<<"${results[harness/1420]}"
raw_ns=$(estimate seal/raw/1420)
python3 - "$enc_med" "$enc_busy" "$fed_med" "$fed_busy" "$raw_ns" "$harness_med" "$harness_busy" \
    "$wggo_bps" "$wggo_cpu" "$bt_bps" "$bt_cpu" <<'PY'
import sys
enc, busy, fed, fed_busy, raw_ns, harness, harness_busy, wg, wgc, bt, btc = map(float, sys.argv[1:])
per_core_pps = enc / busy
ours_gbps = per_core_pps * 1420 * 8 / 1e9
# What no worker avoids, per packet: sealing it, and the virtual devices'
# own cost (net_pcap's copy in, net_null out), both measured in this run.
floor_s = raw_ns / 1e9 + harness_busy / harness
print(f"encrypt-and-forward (net_pcap, its copy on the worker) / raw seal at 1420 B: {per_core_pps * raw_ns / 1e9:.2f}")
print(f"encrypt-and-forward fed like a NIC / raw ChaCha20-Poly1305 seal at 1420 B: {fed / fed_busy * raw_ns / 1e9:.2f}")
print(f"patronus per core / wireguard-go per core at 1420 B: {ours_gbps / (wg / 1e9 / wgc):.2f}x (goal >= 5x)")
print(f"patronus per core / boringtun per core at 1420 B: {ours_gbps / (bt / 1e9 / btc):.2f}x")
print(f"encrypt-and-forward / (raw seal + harness) at 1420 B: {per_core_pps * floor_s:.2f} (goal >= 0.85)")
PY
