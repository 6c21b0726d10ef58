# shellcheck shell=bash
# Shared by the benchmarks that run DPDK processes on virtual devices and
# read their rates from DPDK telemetry. Source it from the repository root
# with OUT, RUNS, DURATION and WARMUP set.

# run NAME PREFIX COUNTER_PORT COUNTER CMD... : one measurement, prints packets/s;
# CMD is stopped with SIGINT, or with STOP_SIGNAL when set.
# With MISS_COUNTER="PORT FIELD" set, that counter too is read once the
# window is over and shown on stderr: packets that went the wrong way since
# the start (e.g. lookups that missed), which should be none.
run() {
    local name=$1 prefix=$2 port=$3 field=$4
    shift 4
    rm -rf "/var/run/dpdk/$prefix"
    "$@" >"$OUT/$name.log" 2>&1 &
    local pid=$!
    for _ in $(seq 200); do
        [[ -S /var/run/dpdk/$prefix/dpdk_telemetry.v2 ]] && grep -qE "running|entering main loop" "$OUT/$name.log" && break
        kill -0 "$pid" 2>/dev/null || { cat "$OUT/$name.log" >&2; return 1; }
        sleep 0.1
    done
    sleep "$WARMUP"
    local c1 t1 c2 t2
    c1=$(python3 scripts/bench/telemetry.py "$prefix" "$port" "$field"); t1=$(date +%s.%N)
    sleep "$DURATION"
    c2=$(python3 scripts/bench/telemetry.py "$prefix" "$port" "$field"); t2=$(date +%s.%N)
    if [[ -n ${MISS_COUNTER:-} ]]; then
        local missed
        # shellcheck disable=SC2086 # "PORT FIELD": two arguments
        missed=$(python3 scripts/bench/telemetry.py "$prefix" $MISS_COUNTER)
        if [[ $missed == 0 ]]; then
            echo "    $name: port/counter $MISS_COUNTER = 0 (no misses)" >&2
        else
            echo "    $name: port/counter $MISS_COUNTER = $missed: packets went the wrong way" >&2
        fi
    fi
    kill -"${STOP_SIGNAL:-INT}" "$pid"
    wait "$pid" || true
    rm -rf "/var/run/dpdk/$prefix"
    python3 -c "print(int(($c2 - $c1) / ($t2 - $t1)))"
}

eal() { # eal PREFIX VDEV...   (LCORES overrides -l 0-1)
    local prefix=$1
    shift
    printf -- '-l %s --no-pci --in-memory --file-prefix %s --log-level lib.eal:warning' "${LCORES:-0-1}" "$prefix"
    for v in "$@"; do printf -- ' --vdev %s' "$v"; done
}

declare -A results
measure() { # measure KEY CMD...: RUNS runs, keeps "min median max"
    local key=$1
    shift
    local rates=()
    for _ in $(seq "$RUNS"); do rates+=("$("$@")"); done
    results[$key]=$(printf '%s\n' "${rates[@]}" | sort -n | awk '{a[NR]=$1} END {print a[1], a[int((NR+1)/2)], a[NR]}')
    echo "  $key: ${results[$key]} packets/s" >&2
}

measure_tsc_hz() { # measure_tsc_hz ANCHOR PREFIX: the TSC rate DPDK reports, from rxtx_anchor
    local out pid hz
    out=$(mktemp)
    # shellcheck disable=SC2046
    "$1" $(eal "$2" net_null0,no-rx=1 net_null1,no-rx=1) >"$out" 2>/dev/null &
    pid=$!
    # Stopped only once it has started: killed during a slow EAL start (a
    # busy machine), it died before printing anything.
    for _ in $(seq 300); do
        grep -qs '^running' "$out" && break
        kill -0 $pid 2>/dev/null || break
        sleep 0.1
    done
    # SIGTERM, not SIGINT: a background job starts with SIGINT ignored.
    kill -TERM $pid 2>/dev/null || true
    wait $pid 2>/dev/null || true
    rm -rf "/var/run/dpdk/$2"
    hz=$(sed -n 's/^tsc_hz=\([0-9]*\)$/\1/p' "$out")
    rm -f "$out"
    [[ -n $hz ]] || echo "measure_tsc_hz: $1 did not report the TSC rate; cycles per packet are left out" >&2
    echo "$hz"
}
