#!/usr/bin/env bash
# Classification benchmark: Patronus's classifier against Debian's ndpiReader
# on the labelled corpus (tests/corpus/dpi), in the same run.
#
#   offline   `patronus-dataplane classify` with all captures in one process,
#             against `ndpiReader -i PLAYLIST` (all captures in one process):
#             packets/s and Gbit/s of captured frames over the processing time
#             each tool reports (setup and pattern compilation excluded), plus
#             whole-process wall time; min/median/max of RUNS runs
#   accuracy  both tools' per-flow categories scored by scripts/dpi/score.py, and
#             the flows each takes for another named category (wrongly named),
#             and accuracy on the captures of scripts/dpi/written-blind.txt apart;
#             the same check on unusual ports is tests/tests/dpi.rs's
#             services_moved_to_unusual_ports_are_not_taken_for_others
#             (ndpiReader's names mapped through the corpus's mapping.csv)
#   worker    one worker lcore forwarding a net_pcap replay of the corpus
#             (infinite_rx=1) into net_null, classification on and off: the
#             cost of DPI on the forwarding path (after the first loop every
#             flow is known, so this is the steady state: a verdict lookup
#             and per-application byte counting per packet)
#
# Prints our rate / ndpiReader's rate (medians) last. Do not build anything meanwhile.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$HOME/.cargo/bin:$PATH"

RUNS=${RUNS:-5}
DURATION=${DURATION:-5}
WARMUP=${WARMUP:-2}
PCAP_MAC=02:70:63:61:70:00 # what net_pcap reports as its address
NEXT_HOP_MAC=02:00:00:00:00:02
CORPUS=tests/corpus/dpi
OUT=target/bench/dpi
scripts/setup.sh >/dev/null
mkdir -p "$OUT"

echo "== building (release)" >&2
cargo build -q --release --bin patronus-dataplane --example dpi_replay_pcap
BIN=target/release/patronus-dataplane
ls "$CORPUS"/pcaps/* >"$OUT/playlist.txt"
mapfile -t PCAPS <"$OUT/playlist.txt"

median3() { sort -g | awk '{a[NR]=$1} END {print a[1], a[int((NR+1)/2)], a[NR]}'; }

echo "== offline throughput, $RUNS runs each" >&2
: >"$OUT/ours.rates"; : >"$OUT/ndpi.rates"; : >"$OUT/ours.wall"; : >"$OUT/ndpi.wall"
for _ in $(seq "$RUNS"); do
    start=$(date +%s.%N)
    "$BIN" classify --pcap "${PCAPS[@]}" --csv "$OUT/ours.csv" 2>"$OUT/ours.log"
    end=$(date +%s.%N)
    echo "$end - $start" | bc >>"$OUT/ours.wall"
    # "... in 0.016 s: 3417579 packets/s, 9.527 Gbit/s"
    sed -n 's/.* s: \([0-9]*\) packets\/s, \([0-9.]*\) Gbit\/s/\1 \2/p' "$OUT/ours.log" >>"$OUT/ours.rates"

    start=$(date +%s.%N)
    ndpiReader -i "$OUT/playlist.txt" >"$OUT/ndpi.log" 2>&1
    end=$(date +%s.%N)
    echo "$end - $start" | bc >>"$OUT/ndpi.wall"
    # "nDPI throughput:       773.90 K pps / 2.16 Gb/sec"
    python3 - "$OUT/ndpi.log" >>"$OUT/ndpi.rates" <<'PY'
import re, sys
text = open(sys.argv[1], errors="replace").read()
m = re.search(r"nDPI throughput:\s+([\d.]+) ([KM]?) pps / ([\d.]+) ([GM]?)b/sec", text)
scale = {"": 1, "K": 1e3, "M": 1e6}
print(int(float(m.group(1)) * scale[m.group(2)]), float(m.group(3)) * (1 if m.group(4) == "G" else 1e-3))
PY
done

echo "== accuracy" >&2
python3 scripts/dpi/score.py "$CORPUS/labels.csv" "$OUT/ours.csv" >"$OUT/ours.score" || true
echo "pcap,proto,addr_a,port_a,addr_b,port_b,category,application" >"$OUT/ndpi.csv"
for pcap in "${PCAPS[@]}"; do
    ndpiReader -q -i "$pcap" -C "$OUT/ndpi-one.csv" >/dev/null 2>&1 || true
    python3 scripts/dpi/ndpi_csv.py "$CORPUS/mapping.csv" "$(basename "$pcap")" "$OUT/ndpi-one.csv" >>"$OUT/ndpi.csv"
done
python3 scripts/dpi/score.py "$CORPUS/labels.csv" "$OUT/ndpi.csv" >"$OUT/ndpi.score" || true

echo "== worker: corpus replay through one worker lcore, classification on and off" >&2
mode=$(scripts/setup.sh)
# shellcheck source=scripts/bench/lib.sh
source scripts/bench/lib.sh
read -r replay_frames _ replay_bytes _ <<<"$(target/release/examples/dpi_replay_pcap \
    --dst-mac "$PCAP_MAC" --out "$OUT/replay.pcap" --pcap "${PCAPS[@]}")"
worker_config() { # worker_config DPI_ENABLED PREFIX
    local args
    args=$(eal "$2" "net_pcap0,rx_pcap=$OUT/replay.pcap,infinite_rx=1" "net_null0,no-rx=1" |
        python3 -c 'import sys; print(", ".join("\"%s\"" % a for a in sys.stdin.read().split()))')
    cat <<TOML
[dpdk]
eal_args = [$args]
mempool_size = 65535  # net_pcap holds the whole replay in mbufs
[worker]
flow_capacity = 65536
[metrics]
listen = ""
[dpi]
enabled = $1
[[port]]
name = "in"
device = "net_pcap0"
addresses = ["100.127.255.1/30"]
[[port]]
name = "out"
device = "net_null0"
addresses = ["192.0.2.1/24", "2001:db8:ffff::1/64"]
[[route]]
prefix = "0.0.0.0/0"
via = "192.0.2.2"
[[route]]
prefix = "::/0"
via = "2001:db8:ffff::2"
[[neighbor]]
ip = "192.0.2.2"
mac = "$NEXT_HOP_MAC"
port = "out"
[[neighbor]]
ip = "2001:db8:ffff::2"
mac = "$NEXT_HOP_MAC"
port = "out"
TOML
}
worker() { # worker DPI_ENABLED
    worker_config "$1" pbench-dpi >"$OUT/worker-$1.toml"
    run "worker-$1" pbench-dpi 1 opackets target/release/patronus-dataplane --config "$OUT/worker-$1.toml"
}
if [[ $mode == hugepages ]]; then
    measure dpi-on worker true
    measure dpi-off worker false
else
    echo "  skipped: hugepages are needed for meaningful figures (see hugepages.md)" >&2
fi

frames=$(sed -n 's/.*(\([0-9]*\) frames.*/\1/p' "$OUT/ours.log")
echo
printf 'machine: %s, %s vCPU; %s; ndpiReader %s; %s runs; %s captures, %s frames\n' \
    "$(uname -r)" "$(nproc)" "$(date -u +%F)" "$(ndpiReader -h 2>&1 | sed -n 's/.*nDPI \([0-9.]*\).*/\1/p' | head -1)" \
    "$RUNS" "${#PCAPS[@]}" "$frames"
printf '%-12s %14s %14s %14s %10s %14s %10s\n' tool "Mpps min" "Mpps median" "Mpps max" "Gbit/s" "wall s median" "accuracy"
for tool in ours ndpi; do
    read -r lo med hi <<<"$(cut -d' ' -f1 "$OUT/$tool.rates" | median3)"
    read -r _ gbps _ <<<"$(cut -d' ' -f2 "$OUT/$tool.rates" | median3)"
    read -r _ wall _ <<<"$(median3 <"$OUT/$tool.wall")"
    acc=$(tail -1 "$OUT/$tool.score" | sed -n 's/^accuracy \([0-9.]*%\).*/\1/p')
    name=$([[ $tool == ours ]] && echo patronus || echo ndpiReader)
    printf '%-12s %14.3f %14.3f %14.3f %10.2f %14.3f %10s\n' "$name" \
        "$(bc -l <<<"$lo/1000000")" "$(bc -l <<<"$med/1000000")" "$(bc -l <<<"$hi/1000000")" "$gbps" "$wall" "$acc"
done
if [[ -n ${results[dpi-on]:-} ]]; then
    echo
    printf 'worker (one lcore, %s replayed frames, %s B average):\n' "$replay_frames" "$((replay_bytes / replay_frames))"
    printf '%-22s %14s %14s %14s %10s\n' path "Mpps min" "Mpps median" "Mpps max" "Gbit/s"
    for key in dpi-off dpi-on; do
        read -r lo med hi <<<"${results[$key]}"
        printf '%-22s %14.3f %14.3f %14.3f %10.2f\n' "forwarding, $key" \
            "$(bc -l <<<"$lo/1000000")" "$(bc -l <<<"$med/1000000")" "$(bc -l <<<"$hi/1000000")" \
            "$(bc -l <<<"$med * $replay_bytes / $replay_frames * 8 / 1000000000")"
    done
    read -r _ on _ <<<"${results[dpi-on]}"
    read -r _ off _ <<<"${results[dpi-off]}"
    python3 -c "print(f'worker rate with DPI / without (median): {$on / $off:.2f}x')"
fi
echo
echo "patronus per category:"
head -12 "$OUT/ours.score"
# Flows whose verdict is a named category (not Web, not Unknown) other than
# their label's: what a rule that fires on others' traffic adds to.
printf 'wrongly named: patronus %s, ndpiReader %s (of %s labelled flows)\n' \
    "$(sed -n 's/^wrongly named //p' "$OUT/ours.score")" \
    "$(sed -n 's/^wrongly named //p' "$OUT/ndpi.score")" \
    "$(($(wc -l <"$CORPUS/labels.csv") - 1))"
# The captures whose entries were written before anyone looked at them
# (scripts/dpi/written-blind.txt): accuracy where tuning to the capture was impossible.
blind=scripts/dpi/written-blind.txt
blind_accuracy() {
    python3 scripts/dpi/score.py "$CORPUS/labels.csv" "$1" --captures "$blind" |
        sed -n 's/^accuracy \([0-9.]*% ([0-9]*\/[0-9]*)\).*/\1/p'
}
printf 'written blind (%s captures): patronus %s, ndpiReader %s\n' \
    "$(grep -c '^[^#[:space:]]' "$blind")" "$(blind_accuracy "$OUT/ours.csv")" "$(blind_accuracy "$OUT/ndpi.csv")"
read -r _ ours_med _ <<<"$(cut -d' ' -f1 "$OUT/ours.rates" | median3)"
read -r _ ndpi_med _ <<<"$(cut -d' ' -f1 "$OUT/ndpi.rates" | median3)"
python3 -c "print(f'patronus / ndpiReader classification rate (median): {$ours_med / $ndpi_med:.2f}x')"
