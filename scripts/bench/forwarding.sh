#!/usr/bin/env bash
# Per-core forwarding benchmark: one worker lcore, net_pcap replaying a
# capture of many flows (infinite_rx=1) into net_null, at 64 B and 1400 B.
#
# Contenders, measured in the same run on the same virtual devices:
#   patronus   the full forwarding path (parse, flow table, route, neighbour rewrite)
#   l3fwd      DPDK's own example (LPM), built from the dpdk-doc sources here
#   rxtx       a minimal C rx->tx loop: the ceiling of this harness
# plus net_null -> net_null runs for the framework cost alone.
#
# Rates come from DPDK telemetry (/ethdev/stats) of each process, so all
# three are counted the same way. Cycles per packet = TSC Hz / rate (the
# worker lcore spins at 100%). Prints min/median/max of RUNS runs and the
# ratio patronus / l3fwd at 64 B last. Do not build anything meanwhile.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$HOME/.cargo/bin:$PATH"

RUNS=${RUNS:-3}
DURATION=${DURATION:-5}
WARMUP=${WARMUP:-1}
FLOWS=${FLOWS:-4096}
OUT=target/bench
PCAP_MAC=02:70:63:61:70:00 # what net_pcap reports as its address
NEXT_HOP_MAC=02:00:00:00:00:02

# dpdk-doc: l3fwd's sources come with Debian's DPDK documentation.
mode=$(scripts/setup.sh dpdk-doc)
if [[ $mode != hugepages ]]; then
    echo "forwarding.sh: hugepages are needed for meaningful figures (see hugepages.md)" >&2
    exit 1
fi
mkdir -p "$OUT"

echo "== building (release)" >&2
cargo build -q --release --bin patronus-dataplane --example bench_pcap
cc -O3 $(pkg-config --cflags libdpdk) scripts/bench/rxtx_anchor.c -o "$OUT/rxtx_anchor" $(pkg-config --libs libdpdk)
rm -rf "$OUT/l3fwd-src"
mkdir -p "$OUT/l3fwd-src"
cp -r /usr/share/dpdk/examples/l3fwd /usr/share/dpdk/examples/common "$OUT/l3fwd-src/"
# l3fwd asks virtual PMDs for Rx checksum offloads they lack; mask its
# requests with the device's capabilities so that it starts.
sed -i 's/^\(\s*\)local_port_conf.rx_adv_conf.rss_conf.rss_hf &=$/\1local_port_conf.rxmode.offloads \&= dev_info.rx_offload_capa;\n&/' "$OUT/l3fwd-src/l3fwd/main.c"
sed -i 's/rxq_conf.offloads = port_conf.rxmode.offloads;/rxq_conf.offloads = port_conf.rxmode.offloads \& dev_info.rx_offload_capa;/' "$OUT/l3fwd-src/l3fwd/main.c"
make -s -C "$OUT/l3fwd-src/l3fwd" >/dev/null
L3FWD="$OUT/l3fwd-src/l3fwd/build/l3fwd"

for size in 60 1396; do
    target/release/examples/bench_pcap --flows "$FLOWS" --size "$size" --dst-mac "$PCAP_MAC" --out "$OUT/flows-$size.pcap"
done

tsc_hz=
# shellcheck source=scripts/bench/lib.sh
source scripts/bench/lib.sh
patronus_config() { # patronus_config IN_VDEV OUT_VDEV PREFIX
    cat <<TOML
[dpdk]
eal_args = [$(eal "$3" "$1" "$2" | python3 -c 'import sys; print(", ".join("\"%s\"" % a for a in sys.stdin.read().split()))')]
mempool_size = 16383
[worker]
flow_capacity = 65536
[metrics]
listen = ""
[[port]]
name = "in"
device = "${1%%,*}"
addresses = ["10.255.0.1/16"]
[[port]]
name = "out"
device = "${2%%,*}"
addresses = ["192.0.2.1/24"]
[[route]]
prefix = "198.18.0.0/15"
via = "192.0.2.2"
[[neighbor]]
ip = "192.0.2.2"
mac = "$NEXT_HOP_MAC"
port = "out"
TOML
}

ours() { # ours IN OUT PORT FIELD
    patronus_config "$1" "$2" pbench-ours >"$OUT/patronus.toml"
    run patronus pbench-ours "$3" "$4" target/release/patronus-dataplane --config "$OUT/patronus.toml"
}
anchor() { # anchor IN OUT PORT FIELD
    # shellcheck disable=SC2046
    run rxtx pbench-rxtx "$3" "$4" "$OUT/rxtx_anchor" $(eal pbench-rxtx "$1" "$2")
}
l3fwd() { # l3fwd IN OUT
    # l3fwd forwards on every lcore it is given, the main one included, and
    # wants a tx queue per lcore: one lcore, the same core our worker uses.
    # shellcheck disable=SC2046
    run l3fwd pbench-l3fwd 1 opackets "$L3FWD" $(LCORES=1 eal pbench-l3fwd "$1" "$2") -- \
        -p 0x3 --config="(0,0,1)" --parse-ptype --eth-dest=1,$NEXT_HOP_MAC
}

tsc_hz=$(measure_tsc_hz "$OUT/rxtx_anchor" pbench-hz)

for size in 60 1396; do
    wire=$((size + 4))
    in="net_pcap0,rx_pcap=$OUT/flows-$size.pcap,infinite_rx=1"
    out="net_null0,no-rx=1"
    echo "== ${wire} B frames, $FLOWS flows" >&2
    measure "rxtx/$wire" anchor "$in" "$out" 1 opackets
    measure "l3fwd/$wire" l3fwd "$in" "$out"
    measure "patronus/$wire" ours "$in" "$out" 1 opackets
done
echo "== net_null -> net_null (framework cost; patronus parses and drops the all-zero frames)" >&2
measure "rxtx/null" anchor "net_null0" "net_null1,no-rx=1" 1 opackets
measure "patronus/null" ours "net_null0" "net_null1,no-rx=1" 0 ipackets

echo
printf 'machine: %s, %s vCPU; DPDK %s; %s; TSC %s Hz; %s runs x %s s, %s flows\n' \
    "$(uname -r)" "$(nproc)" "$(pkg-config --modversion libdpdk)" "$(date -u +%F)" "${tsc_hz:-?}" "$RUNS" "$DURATION" "$FLOWS"
printf '%-16s %14s %14s %14s %10s %12s\n' contender "Mpps min" "Mpps median" "Mpps max" "Gbit/s" "cycles/pkt"
for key in rxtx/64 l3fwd/64 patronus/64 rxtx/1400 l3fwd/1400 patronus/1400 rxtx/null patronus/null; do
    read -r lo med hi <<<"${results[$key]}"
    wire=${key#*/}
    [[ $wire == null ]] && wire=64
    python3 - "$key" "$lo" "$med" "$hi" "$wire" "${tsc_hz:-0}" <<'PY'
import sys
key, lo, med, hi, wire, hz = sys.argv[1], *map(float, sys.argv[2:])
gbps = med * wire * 8 / 1e9
cycles = hz / med if med and hz else float("nan")
print(f"{key:<16} {lo/1e6:14.3f} {med/1e6:14.3f} {hi/1e6:14.3f} {gbps:10.2f} {cycles:12.0f}")
PY
done
read -r _ ours_med _ <<<"${results[patronus/64]}"
read -r _ l3_med _ <<<"${results[l3fwd/64]}"
python3 -c "print(f'patronus / l3fwd at 64 B (median): {$ours_med / $l3_med:.2f}x')"
