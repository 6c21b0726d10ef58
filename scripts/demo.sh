#!/usr/bin/env bash
# The Patronus demo topology: two hosts in network namespaces with the
# gateway between them on net_af_packet ports.
#
#   host A (pdemo-a)              patronus-dataplane              host B (pdemo-b)
#   10.0.1.2 fd00:1::2 --veth-- [lan 10.0.1.1] [wan 10.0.2.1] --veth-- 10.0.2.2 fd00:2::2
#
# The gateway is managed by patronus-controlplane: its site, peer and policy
# are applied with patronusctl and reach it as a snapshot it acknowledges.
# Pings both ways over IPv4 and IPv6, moves TCP traffic with iperf3, shows
# the gateway's counters and the control plane's view, and cleans everything
# up on exit (also on Ctrl-C).
# Run as root on Debian 12. `--keep` leaves it running until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
source scripts/lib/eal.sh

KEEP=0
[[ ${1:-} == --keep ]] && KEEP=1
NS_A=pdemo-a NS_B=pdemo-b
GW_A=pdemo-ga HOST_A=pdemo-ha GW_B=pdemo-gb HOST_B=pdemo-hb
METRICS=127.0.0.1:9469
CP=127.0.0.1:50151 CP_METRICS=127.0.0.1:9470
WORK=$(mktemp -d /tmp/patronus-demo.XXXXXX)
GW_PID= CP_PID=

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

# wait_for_log FILE TEXT PID: waits up to 10 s for TEXT in FILE while PID lives.
wait_for_log() {
    for _ in $(seq 100); do
        grep -q "$2" "$1" && return 0
        kill -0 "$3" 2>/dev/null || break
        sleep 0.1
    done
    grep -q "$2" "$1" || { cat "$1"; exit 1; }
}

cleanup() {
    for pid in $GW_PID $CP_PID; do
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
    done
    ip netns del "$NS_A" 2>/dev/null || true
    ip netns del "$NS_B" 2>/dev/null || true
    ip link del "$GW_A" 2>/dev/null || true
    ip link del "$GW_B" 2>/dev/null || true
    rm -rf "$WORK" /var/run/dpdk/pdemo
}
trap cleanup EXIT
cleanup # leftovers of an interrupted run
WORK=$(mktemp -d /tmp/patronus-demo.XXXXXX)

mode=$(scripts/setup.sh)
say "building patronus-dataplane, patronus-controlplane and patronusctl (release)"
cargo build --release --bin patronus-dataplane --bin patronus-controlplane --bin patronusctl
ctl() { target/release/patronusctl --server "http://$CP" "$@"; }

say "starting the control plane"
target/release/patronus-controlplane --listen "$CP" --metrics-listen "$CP_METRICS" \
    --db "$WORK/controlplane.redb" 2>"$WORK/controlplane.log" &
CP_PID=$!
wait_for_log "$WORK/controlplane.log" "control plane listening" "$CP_PID"

say "creating hosts A and B"
for side in a b; do
    ns=pdemo-$side gw=pdemo-g$side host=pdemo-h$side
    net=$([[ $side == a ]] && echo 1 || echo 2)
    ip netns add "$ns"
    ip link add "$gw" type veth peer name "$host"
    ip link set "$host" netns "$ns"
    sysctl -qw "net.ipv6.conf.$gw.disable_ipv6=1"
    ethtool -K "$gw" tx off tso off gso off gro off >/dev/null
    ip link set "$gw" up
    ip netns exec "$ns" ethtool -K "$host" tx off tso off gso off gro off >/dev/null
    ip netns exec "$ns" ip link set lo up
    ip netns exec "$ns" ip link set "$host" up
    ip netns exec "$ns" ip addr add "10.0.$net.2/24" dev "$host"
    ip netns exec "$ns" ip -6 addr add "fd00:$net::2/64" dev "$host" nodad
    ip netns exec "$ns" ip route add default via "10.0.$net.1"
    ip netns exec "$ns" ip -6 route add default via "fd00:$net::1"
done

cat >"$WORK/gateway.toml" <<TOML
[dpdk]
eal_args = ["-l", "0-1", "--no-pci", $(eal_memory_args "$mode" pdemo), "--log-level", "lib.eal:warning",
            "--vdev", "net_af_packet0,iface=$GW_A", "--vdev", "net_af_packet1,iface=$GW_B"]

[worker]
flow_capacity = 65536
idle_sleep_us = 20     # be gentle on a shared demo machine; 0 busy-polls

[metrics]
listen = "$METRICS"

[controlplane]
server = "http://$CP"
site_id = "demo-branch"
dataplane_id = "demo-gw"
telemetry_interval_ms = 1000

[[port]]
name = "lan"
device = "net_af_packet0"
addresses = ["10.0.1.1/24", "fd00:1::1/64"]

[[port]]
name = "wan"
device = "net_af_packet1"
addresses = ["10.0.2.1/24", "fd00:2::1/64"]
TOML

say "starting the gateway"
target/release/patronus-dataplane --config "$WORK/gateway.toml" 2>"$WORK/gateway.log" &
GW_PID=$!
wait_for_log "$WORK/gateway.log" "data plane running" "$GW_PID"
sed 's/^/  gateway| /' "$WORK/gateway.log"

say "applying the site, a peer and a policy with patronusctl"
cat >"$WORK/site.yaml" <<YAML
apiVersion: patronus.io/v1
kind: Site
metadata: {name: demo-branch, labels: {tier: branch}}
spec:
  siteId: demo-branch
  region: eu-west-1
  tunnelEndpoint: {address: 10.0.2.1, port: 51820}
---
apiVersion: patronus.io/v1
kind: Peer
metadata: {name: demo-hq}
spec:
  siteId: demo-branch
  endpoint: {address: 10.0.2.2, port: 51820}
  wireguard: {publicKey: xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=}
  bfdEnabled: true
---
apiVersion: patronus.io/v1
kind: Policy
metadata: {name: video-low-latency}
spec:
  siteSelector: {matchLabels: {tier: branch}}
  rules:
    - action: route
      priority: 100
      conditions: [{type: category, value: Video}]
      pathSelection: {strategy: lowest-latency, thresholds: {maxLatencyMs: 80}}
YAML
ctl apply -f "$WORK/site.yaml"
# Converged once the gateway runs the version its site should run.
converged() {
    ctl status -o json | python3 -c 'import json, sys
d = json.load(sys.stdin)
sys.exit(0 if d and all(x["appliedVersion"] == x["desiredVersion"] > 1 for x in d) else 1)'
}
for _ in $(seq 100); do converged && break; sleep 0.1; done
converged || { ctl status; cat "$WORK/gateway.log"; exit 1; }
ctl status

say "ping A -> B and B -> A (IPv4, IPv6)"
ip netns exec "$NS_A" ping -c 3 -i 0.2 10.0.2.2
ip netns exec "$NS_B" ping -c 3 -i 0.2 10.0.1.2
ip netns exec "$NS_A" ping -c 3 -i 0.2 fd00:2::2
ip netns exec "$NS_B" ping -c 3 -i 0.2 fd00:1::2

say "TCP A -> B through the gateway (iperf3, 5 s)"
ip netns exec "$NS_B" iperf3 -s -1 -B 10.0.2.2 >/dev/null &
sleep 0.5
ip netns exec "$NS_A" iperf3 -c 10.0.2.2 -t 5 -f m | tail -4

say "gateway counters (from http://$METRICS/metrics)"
metrics=$(exec 3<>/dev/tcp/127.0.0.1/9469 && printf 'GET /metrics HTTP/1.0\r\n\r\n' >&3 && cat <&3)
grep -E '^patronus_(port_(rx|tx)_packets_total|worker_forwarded_packets_total|flows_active|flows_created_total|neighbors|worker_echo_replies_total|mempool_in_use)' <<<"$metrics" || true
grep -E '^patronus_(parse|forward)_drops_total' <<<"$metrics" | grep -v ' 0$' || echo "(no drops)"
grep -E '^patronus_dpi_application_flows_total' <<<"$metrics" || echo "(no classified flows)"

say "the control plane's view (tunnels are not carried yet: the peer shows down)"
sleep 1.5 # one telemetry report
ctl topology
echo
ctl events | tail -8

if ((KEEP)); then
    say "running; metrics at http://$METRICS/metrics — Ctrl-C to stop"
    ip netns exec "$NS_A" true
    wait "$GW_PID"
fi

say "stopping the gateway"
kill -TERM "$GW_PID"
wait "$GW_PID" && status=0 || status=$?
GW_PID=
tail -3 "$WORK/gateway.log" | sed 's/^/  gateway| /'
echo "gateway exited with status $status"
exit "$status"
