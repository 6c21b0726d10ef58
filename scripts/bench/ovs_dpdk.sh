# shellcheck shell=bash
# Open vSwitch with DPDK as a contender of forwarding.sh. Source it from the
# repository root after lib.sh, with OUT, DURATION, WARMUP and NEXT_HOP_MAC set.
#
# Each measurement runs a private OVS: its own ovsdb-server and database
# under $OUT/ovs, ovs-vswitchd-dpdk (Debian's openvswitch-switch-dpdk) with
# OVS_RUNDIR there too, and its own DPDK file prefix with --in-memory. Nothing
# of the system's OVS (/var/run/openvswitch, /etc/openvswitch) is touched.

OVS_VSWITCHD=/usr/lib/openvswitch-switch-dpdk/ovs-vswitchd-dpdk
OVS_SCHEMA=/usr/share/openvswitch/vswitch.ovsschema
OVS_BRIDGE=pbench-ovs # also the name of the bridge's tap device
OVS_PREFIX=pbench-ovs # DPDK --file-prefix
OVS_MAIN_CPU=0        # ovs-vswitchd's main, handler and revalidator threads
OVS_PMD_CPU=1         # the one PMD thread: the core the other contenders forward on

# ovs_alive PIDFILE DIR: the daemon of PIDFILE runs (not a zombie) and is ours
ovs_alive() {
    local pid
    pid=$(cat "$1" 2>/dev/null) || return 1
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    local stat
    stat=$(ps -o stat= -p "$pid" 2>/dev/null | tr -d ' ') || return 1
    [[ -n $stat && $stat != Z* ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$2"
}

# ovs_stop DIR: stops the OVS of DIR, if any, and removes what it leaves behind
ovs_stop() {
    local dir=$1 name pid
    # The bridge first: deleting it removes the tap devices the netdev
    # datapath created (the bridge's and ovs-netdev); they outlive the daemon.
    if ovs_alive "$dir/ovs-vswitchd.pid" "$dir"; then
        ovs-vsctl --db="unix:$dir/db.sock" --timeout=10 --if-exists del-br "$OVS_BRIDGE" >/dev/null 2>&1 || true
    fi
    for name in ovs-vswitchd ovsdb-server; do
        ovs_alive "$dir/$name.pid" "$dir" || continue
        pid=$(cat "$dir/$name.pid")
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 100); do
            ovs_alive "$dir/$name.pid" "$dir" || break
            sleep 0.1
        done
        if ovs_alive "$dir/$name.pid" "$dir"; then
            echo "ovs: $name ($pid) ignored SIGTERM; killing it" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true # reaps it when it is our child
    done
    rm -rf "/var/run/dpdk/$OVS_PREFIX"
    # A daemon killed before the bridge could be deleted (e.g. a signal to
    # the whole process group) leaves the taps: ours by name, and the
    # datapath's when no ovs-vswitchd runs any more to use it.
    if ip link show "$OVS_BRIDGE" >/dev/null 2>&1; then
        ip link delete "$OVS_BRIDGE" 2>/dev/null || true
    fi
    if ip link show ovs-netdev >/dev/null 2>&1 && ! pgrep -x ovs-vswitchd >/dev/null &&
        ! pgrep -x ovs-vswitchd-dp >/dev/null; then # (the -dpdk binary's name, cut)
        ip link delete ovs-netdev 2>/dev/null || true
    fi
}

# ovs_tx MGMT OFPORT: packets sent by an OpenFlow port, from OVS's port counters
ovs_tx() {
    ovs-ofctl dump-ports "$1" "$2" | sed -n 's/^ *tx pkts=\([0-9]*\),.*/\1/p'
}

# ovs_dpdk IN_VDEV OUT_VDEV PCAP: one measurement, prints packets/s.
# PCAP is the capture IN_VDEV replays: the OpenFlow routes come from it.
ovs_dpdk() (
    set -e
    dir=$PWD/$OUT/ovs
    ovs_stop "$dir" # what an interrupted run may have left
    trap 'ovs_stop "$dir"' EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    rm -rf "$dir"
    mkdir -p "$dir"
    export OVS_RUNDIR=$dir OVS_LOGDIR=$dir OVS_DBDIR=$dir
    vsctl=(ovs-vsctl --db="unix:$dir/db.sock" --timeout=60)
    mgmt=unix:$dir/$OVS_BRIDGE.mgmt
    appctl=(ovs-appctl -t "$dir/ovs-vswitchd.ctl")
    log=$dir/commands.log
    fail() {
        echo "ovs: $1; the end of $dir/ovs-vswitchd.log:" >&2
        tail -n 20 "$dir/ovs-vswitchd.log" >&2 || true
        exit 1
    }

    ovsdb-tool create "$dir/conf.db" "$OVS_SCHEMA"
    ovsdb-server "$dir/conf.db" --remote="punix:$dir/db.sock" --unixctl="$dir/ovsdb-server.ctl" \
        --pidfile="$dir/ovsdb-server.pid" --log-file="$dir/ovsdb-server.log" -vconsole:off \
        >"$dir/ovsdb-server.out" 2>&1 &
    for _ in $(seq 100); do
        [[ -S $dir/db.sock ]] && break
        sleep 0.1
    done
    "${vsctl[@]}" --no-wait init
    # One PMD thread on OVS_PMD_CPU; every other thread of the daemon stays
    # on OVS_MAIN_CPU (taskset below: the PMD thread pins itself to its core,
    # the others inherit the daemon's affinity, and OVS gives DPDK the lowest
    # core of that affinity as its main lcore).
    # Memory: 512 MiB of hugepages reserved at start, and a mempool per
    # port sized from its queues (per-port-memory) instead of one shared pool.
    "${vsctl[@]}" --no-wait set Open_vSwitch . \
        other_config:dpdk-init=true \
        "other_config:dpdk-extra=--no-pci --in-memory --file-prefix=$OVS_PREFIX" \
        other_config:dpdk-socket-mem=512 \
        other_config:per-port-memory=true \
        "other_config:pmd-cpu-mask=$(printf '0x%x' $((1 << OVS_PMD_CPU)))"
    taskset -c "$OVS_MAIN_CPU" "$OVS_VSWITCHD" "unix:$dir/db.sock" \
        --pidfile="$dir/ovs-vswitchd.pid" --unixctl="$dir/ovs-vswitchd.ctl" \
        --log-file="$dir/ovs-vswitchd.log" -vconsole:off >"$dir/ovs-vswitchd.out" 2>&1 &

    # A userspace bridge that only does what its flows say (fail_mode=secure:
    # no NORMAL switching), the output port first so that the routes can
    # name its address, then the routes, then the input port: the first
    # packet already finds them.
    "${vsctl[@]}" add-br "$OVS_BRIDGE" -- set Bridge "$OVS_BRIDGE" datapath_type=netdev fail_mode=secure \
        -- add-port "$OVS_BRIDGE" out -- set Interface out type=dpdk "options:dpdk-devargs=$2" ofport_request=2 ||
        fail "ovs-vswitchd did not set up the bridge"
    mac=$("${vsctl[@]}" get Interface out mac_in_use | tr -d '"')
    python3 scripts/bench/pcap_rules.py ovs "$3" 2 "$mac" "$NEXT_HOP_MAC" >"$dir/flows.txt" 2>>"$log"
    ovs-ofctl add-flows "$mgmt" "$dir/flows.txt"
    "${vsctl[@]}" add-port "$OVS_BRIDGE" in -- set Interface in type=dpdk "options:dpdk-devargs=$1" ofport_request=1 ||
        fail "ovs-vswitchd did not add the input port"
    for port in in out; do
        if [[ $("${vsctl[@]}" get Interface "$port" ofport) == -1 ]]; then
            fail "port $port did not come up: $("${vsctl[@]}" get Interface "$port" error)"
        fi
    done
    ovs-ofctl dump-flows "$mgmt" >"$dir/openflow-flows.txt"
    "${appctl[@]}" dpif-netdev/pmd-rxq-show >>"$log"

    for _ in $(seq 200); do
        tx=$(ovs_tx "$mgmt" 2)
        ((${tx:-0} > 0)) && break
        sleep 0.1
    done
    ((${tx:-0} > 0)) || fail "nothing came out of port out within 20 s"
    sleep "$WARMUP"
    "${appctl[@]}" dpif-netdev/pmd-stats-clear >/dev/null
    c1=$(ovs_tx "$mgmt" 2)
    t1=$(date +%s.%N)
    sleep "$DURATION"
    c2=$(ovs_tx "$mgmt" 2)
    t2=$(date +%s.%N)
    "${appctl[@]}" dpif-netdev/pmd-stats-show >"$dir/pmd-stats.txt"
    ovs-ofctl dump-ports "$mgmt" >>"$log"
    "${appctl[@]}" dpctl/dump-flows >"$dir/datapath-flows.txt"
    # Where the PMD found its flows during the window (OVS's own accounting).
    python3 - "$dir/pmd-stats.txt" <<'PY' >&2
import re, sys
text = open(sys.argv[1]).read().split("main thread:")[0]
def get(label):
    m = re.search(r"^\s*" + re.escape(label) + r":\s*([0-9.]+)", text, re.M)
    return float(m.group(1)) if m else 0.0
rx = get("packets received") or float("nan")
parts = ", ".join(f"{k} {get(k + ' hits') / rx:.1%}" for k in ("emc", "smc", "megaflow"))
upcalls = get("miss with success upcall") + get("miss with failed upcall")
print(f"    ovs pmd: {parts}, upcalls {upcalls:.0f}, "
      f"{get('avg processing cycles per packet'):.0f} processing cycles/packet (OVS's count)")
PY
    python3 -c "print(int(($c2 - $c1) / ($t2 - $t1)))"
)
