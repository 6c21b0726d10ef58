#!/usr/bin/env bash
# Per-core forwarding benchmark: one worker lcore, net_pcap replaying a
# capture of many flows (infinite_rx=1) into net_null, at 64 B and 1400 B.
#
# Contenders, measured in the same run on the same virtual devices:
#   patronus   the full forwarding path (parse, flow table, route, neighbour rewrite)
#   patronus-sdwan  the same with the SD-WAN configured: a tunnel with a peer
#              of two endpoints over two uplinks (probed), and ten policy
#              rules: nine deny rules no flow of the capture matches, the
#              tenth routes every UDP flow by lowest latency; the difference
#              to patronus is their cost per packet
#   patronus-qos  the full path with the out port shaped as an uplink at
#              400 Gbit/s, a rate that never binds: every packet goes
#              through the scheduler (class, flow queue, CoDel, buckets) and
#              the difference to patronus is the shaper's cost per packet
#   patronus-qos-bound  the same shaped to QOS_BOUND_MBPS (default 500):
#              the scheduler holds and drops what exceeds the rate, and the
#              rate it lets through, charged as the shaper charges (IP
#              packet + 38 B of Ethernet framing), is compared with the
#              configured one
#   qos_sched  DPDK's own QoS example (rte_sched), built from the dpdk-doc
#              sources here, see below, at a port rate of 400 Gbit/s that
#              never binds
#   qos_sched-bound  the same at QOS_BOUND_MBPS, compared as patronus-qos-bound
#   l3fwd      DPDK's own example (LPM), built from the dpdk-doc sources here
#   l3fwd-em   the same l3fwd in exact-match mode (--lookup=em), see below
#   ovs        Open vSwitch with DPDK (userspace datapath), see below
#   rxtx       a minimal C rx->tx loop: the ceiling of this harness
# plus net_null -> net_null runs for the framework cost alone (rxtx, patronus).
# CONTENDERS="l3fwd-em ovs" (any of the names above) measures a subset; the
# cargo build is skipped when patronus is not among them and the captures
# of an earlier run exist.
#
# l3fwd-em, per packet: --parse-ptype's rx callback reads the Ethernet type,
# IHL and protocol to set the packet type; then, 8 packets at a time, the
# 16 bytes from the IPv4 TTL on are masked down to the 5-tuple (protocol,
# addresses, ports) and looked up with rte_hash_lookup_bulk (CRC32 hash) in
# a table created for 4 Mi entries, whose hit gives the output port; then
# both MAC addresses are rewritten, the TTL decremented and the checksum
# patched (RFC 1812 checks), and packets are sent in bursts per port. The
# table holds one rule per flow of the capture (scripts/bench/pcap_rules.py
# writes them from the pcap itself, l3fwd loads them with --rule_ipv4), each
# to port 1, so every lookup hits and packets leave by net_null like the
# others'. A miss would go back out of port 0: its tx counter is checked
# after every run and should stay 0.
#
# qos_sched: its stock profile's hierarchy (one subport of 4 096 pipes, 13
# traffic classes, the best-effort one of 4 queues, 64 packets per queue,
# 24 B of framing charged per packet as we charge 38 on the IP packet),
# with every rate but the port's (subport, pipe, class) at the contender's,
# so that the subport binds: rte_sched's port rate is the NIC's line rate,
# which it does not enforce itself (its clock runs at the larger of that
# rate and what it sent), and net_null has none. The port is at 400 Gbit/s
# for qos_sched and at the 10 Gbit/s net_null reports for qos_sched-bound,
# where a port 800 times the subport's rate would cost it accuracy
# (rte_sched approximates the ratio of the two as a fraction). Its rx lcore reads the pipe from the IP
# identification (the capture gives each flow its own) and the queue from
# a byte of the UDP checksum, and hands the burst over a ring to a second
# lcore that enqueues into rte_sched, dequeues and transmits: it needs two
# cores where our worker uses one, so both its Mpps and its Mpps per core
# are printed, and its cycles per packet count both cores. Its port rate
# comes from the device's link speed (net_null's 10 Gbit/s, which would
# bind at 1400 B); the build here takes it from QOS_SCHED_PORT_RATE
# instead (bytes/s). Its mempool is 128 Ki mbufs (the stock 2 Mi do not
# fit in 1 GiB of hugepages); bound, the full queues hold its mbufs and
# what exceeds the rate is dropped at rx for want of one.
#
# ovs: a private ovsdb-server and ovs-vswitchd-dpdk (Debian's
# openvswitch-switch-dpdk, installed when missing) under $OUT/ovs, with its
# own DPDK file prefix (--in-memory, 512 MiB of hugepages, mempools per
# port) and one PMD thread on the core the other contenders forward on; the
# daemon's other threads run on the other core. A netdev bridge in
# fail_mode=secure holds two dpdk ports, the same net_pcap and net_null
# vdevs, and one OpenFlow route per destination of the capture, as a router
# would: ip,nw_dst=D/32 -> set both MACs, dec_ttl, output to net_null.
# OVS's defaults otherwise (EMC on, SMC off): the flows settle in its EMC
# and megaflow cache, which the run reports from pmd-stats-show. Unlike
# l3fwd, its PMD also polls net_null's (empty) rx queue.
#
# Rates come from DPDK telemetry (/ethdev/stats) of each process, so that
# they are counted the same way; for OVS, from its own port counters
# (ovs-ofctl dump-ports: the same ethdev counter of net_null). Cycles per
# packet = TSC Hz / rate (the worker lcore spins at 100%). Prints
# min/median/max of RUNS runs and the ratios patronus / l3fwd, / l3fwd-em
# and / ovs at 64 B last. Do not build anything meanwhile.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$HOME/.cargo/bin:$PATH"

RUNS=${RUNS:-3}
DURATION=${DURATION:-5}
WARMUP=${WARMUP:-1}
FLOWS=${FLOWS:-4096}
CONTENDERS=${CONTENDERS:-rxtx l3fwd l3fwd-em ovs patronus patronus-sdwan patronus-qos patronus-qos-bound qos_sched qos_sched-bound}
QOS_BOUND_MBPS=${QOS_BOUND_MBPS:-500}
OUT=target/bench
PCAP_MAC=02:70:63:61:70:00 # what net_pcap reports as its address
NEXT_HOP_MAC=02:00:00:00:00:02

for c in $CONTENDERS; do
    case $c in
    rxtx | l3fwd | l3fwd-em | ovs | patronus | patronus-sdwan | patronus-qos | patronus-qos-bound | qos_sched | qos_sched-bound) ;;
    *)
        echo "forwarding.sh: unknown contender '$c' (CONTENDERS: rxtx l3fwd l3fwd-em ovs patronus patronus-sdwan patronus-qos patronus-qos-bound qos_sched qos_sched-bound)" >&2
        exit 1
        ;;
    esac
done
wants() { [[ " $CONTENDERS " == *" $1 "* ]]; }

# dpdk-doc: l3fwd's and qos_sched's sources come with Debian's DPDK
# documentation.
wants_qos_sched=false
if wants qos_sched || wants qos_sched-bound; then wants_qos_sched=true; fi
packages=()
if wants l3fwd || wants l3fwd-em || $wants_qos_sched; then packages+=(dpdk-doc); fi
if wants ovs; then packages+=(openvswitch-switch-dpdk); fi
mode=$(scripts/setup.sh "${packages[@]}")
if [[ $mode != hugepages ]]; then
    echo "forwarding.sh: hugepages are needed for meaningful figures (see hugepages.md)" >&2
    exit 1
fi
mkdir -p "$OUT"

pcap_of() { echo "$PWD/$OUT/flows-$FLOWS-$1.pcap"; } # pcap_of SIZE (frame bytes without FCS)
have_pcaps=true
for size in 60 1396; do [[ -s $(pcap_of "$size") ]] || have_pcaps=false; done
ours_wanted=false
for c in patronus patronus-sdwan patronus-qos patronus-qos-bound; do wants $c && ours_wanted=true; done
# qos_sched needs the captures' IP identifications, which older ones lack.
if $ours_wanted || $wants_qos_sched || ! $have_pcaps; then
    echo "== building (release)" >&2
    if $ours_wanted; then
        cargo build -q --release --bin patronus-dataplane --example bench_pcap
    else
        cargo build -q --release --example bench_pcap
    fi
    for size in 60 1396; do
        target/release/examples/bench_pcap --flows "$FLOWS" --size "$size" --dst-mac "$PCAP_MAC" --out "$(pcap_of "$size")"
    done
else
    echo "== no cargo build: patronus is not measured; reusing $OUT/flows-$FLOWS-*.pcap" >&2
fi
# shellcheck disable=SC2046
cc -O3 $(pkg-config --cflags libdpdk) scripts/bench/rxtx_anchor.c -o "$OUT/rxtx_anchor" $(pkg-config --libs libdpdk)
if wants l3fwd || wants l3fwd-em; then
    rm -rf "$OUT/l3fwd-src"
    mkdir -p "$OUT/l3fwd-src"
    cp -r /usr/share/dpdk/examples/l3fwd /usr/share/dpdk/examples/common "$OUT/l3fwd-src/"
    # l3fwd asks virtual PMDs for Rx checksum offloads they lack; mask its
    # requests with the device's capabilities so that it starts.
    sed -i 's/^\(\s*\)local_port_conf.rx_adv_conf.rss_conf.rss_hf &=$/\1local_port_conf.rxmode.offloads \&= dev_info.rx_offload_capa;\n&/' "$OUT/l3fwd-src/l3fwd/main.c"
    sed -i 's/rxq_conf.offloads = port_conf.rxmode.offloads;/rxq_conf.offloads = port_conf.rxmode.offloads \& dev_info.rx_offload_capa;/' "$OUT/l3fwd-src/l3fwd/main.c"
    make -s -C "$OUT/l3fwd-src/l3fwd" >/dev/null
fi
L3FWD="$OUT/l3fwd-src/l3fwd/build/l3fwd"
if $wants_qos_sched; then
    rm -rf "$OUT/qos_sched-src"
    mkdir -p "$OUT/qos_sched-src"
    cp -r /usr/share/dpdk/examples/qos_sched "$OUT/qos_sched-src/"
    sed -i 's|^\(\s*\)port_params.rate = (uint64_t) link.link_speed \* 1000 \* 1000 / 8;|\1port_params.rate = getenv("QOS_SCHED_PORT_RATE") ? strtoull(getenv("QOS_SCHED_PORT_RATE"), NULL, 10) : (uint64_t) link.link_speed * 1000 * 1000 / 8;|' \
        "$OUT/qos_sched-src/qos_sched/init.c"
    # It wants its lcore ids below the count of CPUs, which three lcores on
    # two CPUs cannot be (lcores are mapped to CPUs with --lcores instead).
    sed -i 's/^\(\s*\)nb_lcores = app_cpu_core_count();/\1nb_lcores = RTE_MAX_LCORE;/' "$OUT/qos_sched-src/qos_sched/args.c"
    grep -q QOS_SCHED_PORT_RATE "$OUT/qos_sched-src/qos_sched/init.c" && grep -q 'nb_lcores = RTE_MAX_LCORE' "$OUT/qos_sched-src/qos_sched/args.c" || {
        echo "forwarding.sh: qos_sched's sources no longer read as this script patches them" >&2
        exit 1
    }
    make -s -C "$OUT/qos_sched-src/qos_sched" >/dev/null
fi
QOS_SCHED="$OUT/qos_sched-src/qos_sched/build/qos_sched"

tsc_hz=
# shellcheck source=scripts/bench/lib.sh
source scripts/bench/lib.sh
# shellcheck source=scripts/bench/ovs_dpdk.sh
source scripts/bench/ovs_dpdk.sh
if wants ovs; then
    # ovs_dpdk cleans up after itself, also when it fails; this is for a
    # run stopped between its steps.
    trap 'ovs_stop "$PWD/$OUT/ovs"' EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
fi
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
sdwan_config() { # the SD-WAN part of patronus-sdwan's configuration
    local key=$OUT/sdwan.key
    [[ -f $key ]] || { python3 -c 'import base64, os; print(base64.b64encode(os.urandom(32)).decode())' >"$key"; chmod 600 "$key"; }
    cat <<TOML
[tunnel]
private_key_file = "$PWD/$key"
[[uplink]]
name = "mpls"
port = "out"
next_hop = "192.0.2.2"
cost_per_gb = 1.0
[[uplink]]
name = "inet"
port = "out"
next_hop = "192.0.2.2"
cost_per_gb = 0.1
[[peer]]
name = "hq"
endpoints = [
    { name = "mpls", address = "192.0.2.50", port = 51820 },
    { name = "inet", address = "192.0.2.51", port = 51820 },
]
sla_probes = true
wireguard = { public_key = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=" }
allowed_ips = ["10.9.0.0/24"]
TOML
    for i in $(seq 1 9); do
        printf '[[policy]]\nname = "p%s"\n[[policy.rule]]\naction = "deny"\npriority = %s\nconditions = [{ type = "source-prefix", value = "203.0.113.%s/32" }]\n' "$i" "$((100 + i))" "$i"
    done
    printf '[[policy]]\nname = "voice"\n[[policy.rule]]\naction = "route"\npriority = 1\nconditions = [{ type = "protocol", value = "udp" }]\npath_selection = { strategy = "lowest-latency" }\n'
}
ours_sdwan() { # ours_sdwan IN OUT PORT FIELD
    { patronus_config "$1" "$2" pbench-sdwan; sdwan_config; } >"$OUT/patronus-sdwan.toml"
    run patronus-sdwan pbench-sdwan "$3" "$4" target/release/patronus-dataplane --config "$OUT/patronus-sdwan.toml"
}
ours_shaped() { # ours_shaped NAME RATE_MBPS IN OUT PORT FIELD
    { patronus_config "$3" "$4" "pbench-$1"; printf '[[uplink]]\nname = "out"\nport = "out"\nrate_mbps = %s\n' "$2"; } >"$OUT/$1.toml"
    run "$1" "pbench-$1" "$5" "$6" target/release/patronus-dataplane --config "$OUT/$1.toml"
}
anchor() { # anchor IN OUT PORT FIELD
    # shellcheck disable=SC2046
    run rxtx pbench-rxtx "$3" "$4" "$OUT/rxtx_anchor" $(eal pbench-rxtx "$1" "$2")
}
qos_sched_profile() { # qos_sched_profile BYTES_PER_S: the stock hierarchy, every rate at BYTES_PER_S
    local rate=$1 tc
    printf '[port]\nframe overhead = 24\nnumber of subports per port = 1\n\n'
    printf '[subport 0]\nnumber of pipes per subport = 4096\nqueue sizes = %s\npipe 0-4095 = 0\n\n' "$(printf '64 %.0s' $(seq 13))"
    for level in "subport profile 0" "pipe profile 0"; do
        printf '[%s]\ntb rate = %s\ntb size = 1000000\n' "$level" "$rate"
        for tc in $(seq 0 12); do printf 'tc %s rate = %s\n' "$tc" "$rate"; done
        printf 'tc period = 10\n'
        [[ $level == pipe* ]] && printf 'tc 12 oversubscription weight = 1\ntc 12 wrr weights = 1 1 1 1\n'
        printf '\n'
    done
}
qos_sched() { # qos_sched NAME MBPS PORT_MBPS IN OUT
    # lcore 0 (the main one, printing figures once a second) and lcore 1
    # (rx) share CPU 0; lcore 2 (enqueue, dequeue, tx) has CPU 1, the core
    # our worker uses.
    qos_sched_profile "$(($2 * 125000))" >"$OUT/$1.cfg"
    # The background job ignores SIGINT: stop it with SIGTERM.
    STOP_SIGNAL=TERM QOS_SCHED_PORT_RATE=$(($3 * 125000)) run "$1" "pbench-$1" 1 opackets "$QOS_SCHED" \
        --lcores 0@0,1@0,2@1 --no-pci --in-memory --file-prefix "pbench-$1" --log-level lib.eal:warning \
        --vdev "$4" --vdev "$5" -- --mnc 0 --pfc "0,1,1,2" --msz 131071 --cfg "$OUT/$1.cfg"
}
l3fwd() { # l3fwd IN OUT
    # l3fwd forwards on every lcore it is given, the main one included, and
    # wants a tx queue per lcore: one lcore, the same core our worker uses.
    # shellcheck disable=SC2046
    run l3fwd pbench-l3fwd 1 opackets "$L3FWD" $(LCORES=1 eal pbench-l3fwd "$1" "$2") -- \
        -p 0x3 --config="(0,0,1)" --parse-ptype --eth-dest=1,$NEXT_HOP_MAC
}
l3fwd_em() { # l3fwd_em IN OUT RULES
    # As l3fwd, with the exact-match table loaded from RULES. l3fwd reads rule
    # files only in pairs: the IPv6 one is its stock table (parsed, not
    # inserted: the IPv6 table is filled only with --ipv6). Misses would go
    # out of port 0 again.
    # shellcheck disable=SC2046
    MISS_COUNTER="0 opackets" run l3fwd-em pbench-l3fwd-em 1 opackets "$L3FWD" $(LCORES=1 eal pbench-l3fwd-em "$1" "$2") -- \
        -p 0x3 --config="(0,0,1)" --parse-ptype --eth-dest=1,$NEXT_HOP_MAC \
        --lookup=em --rule_ipv4="$3" --rule_ipv6="$OUT/l3fwd-src/l3fwd/em_default_v6.cfg"
}

tsc_hz=$(measure_tsc_hz "$OUT/rxtx_anchor" pbench-hz)

for size in 60 1396; do
    wire=$((size + 4))
    pcap=$(pcap_of "$size")
    in="net_pcap0,rx_pcap=$pcap,infinite_rx=1"
    out="net_null0,no-rx=1"
    echo "== ${wire} B frames, $FLOWS flows" >&2
    if wants rxtx; then measure "rxtx/$wire" anchor "$in" "$out" 1 opackets; fi
    if wants l3fwd; then measure "l3fwd/$wire" l3fwd "$in" "$out"; fi
    if wants l3fwd-em; then
        python3 scripts/bench/pcap_rules.py em "$pcap" 1 >"$OUT/l3fwd-em-$size.rules"
        measure "l3fwd-em/$wire" l3fwd_em "$in" "$out" "$OUT/l3fwd-em-$size.rules"
    fi
    if wants ovs; then measure "ovs/$wire" ovs_dpdk "$in" "$out" "$pcap"; fi
    if wants patronus; then measure "patronus/$wire" ours "$in" "$out" 1 opackets; fi
    if wants patronus-sdwan; then measure "patronus-sdwan/$wire" ours_sdwan "$in" "$out" 1 opackets; fi
    if wants patronus-qos; then measure "patronus-qos/$wire" ours_shaped patronus-qos 400000 "$in" "$out" 1 opackets; fi
    if wants patronus-qos-bound; then measure "patronus-qos-bound/$wire" ours_shaped patronus-qos-bound "$QOS_BOUND_MBPS" "$in" "$out" 1 opackets; fi
    if wants qos_sched; then measure "qos_sched/$wire" qos_sched qos_sched 400000 400000 "$in" "$out"; fi
    if wants qos_sched-bound; then measure "qos_sched-bound/$wire" qos_sched qos_sched-bound "$QOS_BOUND_MBPS" 10000 "$in" "$out"; fi
done
if wants rxtx || wants patronus; then
    echo "== net_null -> net_null (framework cost; patronus parses and drops the all-zero frames)" >&2
fi
if wants rxtx; then measure "rxtx/null" anchor "net_null0" "net_null1,no-rx=1" 1 opackets; fi
if wants patronus; then measure "patronus/null" ours "net_null0" "net_null1,no-rx=1" 0 ipackets; fi

echo
printf 'machine: %s, %s vCPU; DPDK %s; %s; TSC %s Hz; %s runs x %s s, %s flows\n' \
    "$(uname -r)" "$(nproc)" "$(pkg-config --modversion libdpdk)" "$(date -u +%F)" "${tsc_hz:-?}" "$RUNS" "$DURATION" "$FLOWS"
printf '%-20s %14s %14s %14s %10s %12s %6s %14s\n' contender "Mpps min" "Mpps median" "Mpps max" "Gbit/s" "cycles/pkt" cores "Mpps/core"
for key in rxtx/64 l3fwd/64 l3fwd-em/64 ovs/64 patronus/64 patronus-sdwan/64 patronus-qos/64 patronus-qos-bound/64 qos_sched/64 qos_sched-bound/64 \
    rxtx/1400 l3fwd/1400 l3fwd-em/1400 ovs/1400 patronus/1400 patronus-sdwan/1400 patronus-qos/1400 patronus-qos-bound/1400 qos_sched/1400 qos_sched-bound/1400 \
    rxtx/null patronus/null; do
    [[ -n ${results[$key]:-} ]] || continue
    read -r lo med hi <<<"${results[$key]}"
    wire=${key#*/}
    [[ $wire == null ]] && wire=64
    cores=1
    [[ $key == qos_sched* ]] && cores=2
    python3 - "$key" "$lo" "$med" "$hi" "$wire" "${tsc_hz:-0}" "$cores" <<'PY'
import sys
key, lo, med, hi, wire, hz, cores = sys.argv[1], *map(float, sys.argv[2:])
gbps = med * wire * 8 / 1e9
cycles = cores * hz / med if med and hz else float("nan")
print(f"{key:<20} {lo/1e6:14.3f} {med/1e6:14.3f} {hi/1e6:14.3f} {gbps:10.2f} {cycles:12.0f} {cores:6.0f} {med/cores/1e6:14.3f}")
PY
done
for other in l3fwd l3fwd-em ovs; do
    [[ -n ${results[patronus/64]:-} && -n ${results[$other/64]:-} ]] || continue
    read -r _ ours_med _ <<<"${results[patronus/64]}"
    read -r _ their_med _ <<<"${results[$other/64]}"
    python3 -c "print(f'patronus / $other at 64 B (median): {$ours_med / $their_med:.2f}x')"
done
for wire in 64 1400; do
    [[ -n ${results[patronus/$wire]:-} && -n ${results[patronus-sdwan/$wire]:-} && -n ${tsc_hz:-} ]] || continue
    read -r _ plain _ <<<"${results[patronus/$wire]}"
    read -r _ sdwan _ <<<"${results[patronus-sdwan/$wire]}"
    python3 -c "print(f'SD-WAN configured (policy of ten rules, two paths) at $wire B: {$tsc_hz / $sdwan - $tsc_hz / $plain:+.0f} cycles per packet (median against median)')"
done
for wire in 64 1400; do
    [[ -n ${results[patronus/$wire]:-} && -n ${results[patronus-qos/$wire]:-} && -n ${tsc_hz:-} ]] || continue
    read -r _ plain _ <<<"${results[patronus/$wire]}"
    read -r _ shaped _ <<<"${results[patronus-qos/$wire]}"
    python3 -c "print(f'shaper on, rate not binding, at $wire B: {$tsc_hz / $shaped - $tsc_hz / $plain:+.0f} cycles per packet (median against median)')"
done
for name in patronus-qos-bound qos_sched-bound; do
    for wire in 64 1400; do
        [[ -n ${results[$name/$wire]:-} ]] || continue
        read -r lo med hi <<<"${results[$name/$wire]}"
        # Charged per packet by both: the IP packet (the frame less 14 B of
        # Ethernet header and 4 of FCS) and 38 B of framing.
        python3 -c "
charged = ($wire - 18 + 38) * 8
rates = [r * charged / 1e6 for r in ($lo, $med, $hi)]
error = (rates[1] / $QOS_BOUND_MBPS - 1) * 100
print(f'$name, shaped to $QOS_BOUND_MBPS Mbit/s at $wire B: {rates[0]:.2f} / {rates[1]:.2f} / {rates[2]:.2f} Mbit/s charged (min/median/max), median error {error:+.3f}%')"
    done
done
for wire in 64 1400; do
    [[ -n ${results[patronus-qos/$wire]:-} && -n ${results[qos_sched/$wire]:-} ]] || continue
    read -r _ ours_med _ <<<"${results[patronus-qos/$wire]}"
    read -r _ theirs_med _ <<<"${results[qos_sched/$wire]}"
    python3 -c "print(f'patronus-qos (1 core) / qos_sched (2 cores) at $wire B, per core (median): {$ours_med / ($theirs_med / 2):.2f}x; whole process: {$ours_med / $theirs_med:.2f}x')"
done
