#!/usr/bin/env bash
# The Patronus demo: two sites joined by encrypted tunnels over two WAN
# uplinks each, a road warrior running stock WireGuard, and the control
# plane managing both gateways.
#
#                          ┌──────── MPLS 172.16.0.0/24 (impaired: 5 ms) ────────┐
#   host A          [mpls 172.16.0.1]                                   [mpls 172.16.0.2]          host B
#   10.0.1.2 ─ [lan  gateway "branch"                                      gateway "hq"  lan] ─ 10.0.2.2
#   fd00:1::2       [wan 203.0.113.1] ─ internet (impaired: 15 ms, 1% loss) ─ 203.0.113.254  WAN     fd00:2::2
#                                                                            router ─ 198.51.100.254 ─ [wan 198.51.100.1]
#                                                                              │
#                                                                         192.0.2.254 ─ road warrior 192.0.2.10
#                                                                                       (wireguard-go, 10.99.0.10)
#
# Every host is a network namespace; each gateway is a patronus-dataplane
# on net_af_packet ports; the MPLS link and branch's internet link pass
# through patronus-wan, which delays, loses or cuts their frames on
# command. The sites, their peers (two endpoints each, probed, with BFD at
# 100 ms × 3 on every path) and the policies are applied with patronusctl; each gateway takes its part from
# the control plane. The demo shows the paths and their measured figures,
# then degrades and cuts MPLS while a ping and a VoIP-like stream run, and
# prints the failovers and what the stream lost. The road warrior reaches
# host A through hq, which forwards between its two tunnels. Cleans up on
# exit (also on Ctrl-C). Run as root on Debian 12. `--keep` leaves it
# running until Ctrl-C (it then prints the folder of the WAN links' control
# sockets, for tests that impair them further). PATRONUS_DEMO_PROFILE=debug
# runs the debug build instead of the release one (the test suite's, already
# built).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
source scripts/lib/eal.sh

KEEP=0
[[ ${1:-} == --keep ]] && KEEP=1
PROFILE=${PATRONUS_DEMO_PROFILE:-release}
case $PROFILE in
release) BUILD=(--release) ;;
debug) BUILD=() ;;
*) echo "PATRONUS_DEMO_PROFILE must be release or debug, not $PROFILE" >&2; exit 2 ;;
esac
BIN=target/$PROFILE
NS_A=pdemo-a NS_B=pdemo-b NS_WAN=pdemo-wan NS_RW=pdemo-rw NS_INET=pdemo-inet NS_MPLS=pdemo-mpls
CP=127.0.0.1:50151 CP_METRICS=127.0.0.1:9470
declare -A METRICS=([branch]=127.0.0.1:9469 [hq]=127.0.0.1:9471)
RW_IF=pdemo-wg
WORK=
declare -A GW_PID=() WAN_PID=()
CP_PID= RW_PID=

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
    for pid in "${GW_PID[@]}" "${WAN_PID[@]}" $CP_PID $RW_PID; do
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
    done
    for ns in $NS_A $NS_B $NS_WAN $NS_RW $NS_INET $NS_MPLS; do ip netns del "$ns" 2>/dev/null || true; done
    for link in pdemo-la pdemo-wa pdemo-lb pdemo-wb pdemo-ma pdemo-mb; do ip link del "$link" 2>/dev/null || true; done
    rm -f "/var/run/wireguard/$RW_IF.sock"
    [[ -n $WORK ]] && rm -rf "$WORK"
    rm -rf /var/run/dpdk/pdemo-branch /var/run/dpdk/pdemo-hq
}
trap cleanup EXIT
cleanup # leftovers of an interrupted run
WORK=$(mktemp -d /tmp/patronus-demo.XXXXXX)

mode=$(scripts/setup.sh)
say "building patronus-dataplane, patronus-controlplane, patronusctl, patronus-wan and udp-seq ($PROFILE)"
cargo build "${BUILD[@]}" --bin patronus-dataplane --bin patronus-controlplane --bin patronusctl --bin patronus-wan --bin udp-seq
ctl() { $BIN/patronusctl --server "http://$CP" "$@"; }
scrape() { # scrape SITE: the gateway's /metrics
    local host=${METRICS[$1]%:*} port=${METRICS[$1]#*:}
    exec 3<>"/dev/tcp/$host/$port" && printf 'GET /metrics HTTP/1.0\r\n\r\n' >&3 && cat <&3
    exec 3>&-
}

say "starting the control plane"
$BIN/patronus-controlplane --listen "$CP" --metrics-listen "$CP_METRICS" \
    --db "$WORK/controlplane.redb" 2>"$WORK/controlplane.log" &
CP_PID=$!
wait_for_log "$WORK/controlplane.log" "control plane listening" "$CP_PID"

say "creating host A, host B, the WAN router and the road warrior"
ip netns add "$NS_WAN"
ip netns exec "$NS_WAN" ip link set lo up
ip netns exec "$NS_WAN" sysctl -qw net.ipv4.ip_forward=1
veth() { # veth ROOT_SIDE NS NS_SIDE: a veth with one end in a namespace
    ip link add "$1" type veth peer name "$3" netns "$2"
    sysctl -qw "net.ipv6.conf.$1.disable_ipv6=1"
    # AF_PACKET sockets want finished checksums and frames within the MTU.
    ethtool -K "$1" tx off tso off gso off gro off >/dev/null
    ip link set "$1" up
    ip netns exec "$2" ethtool -K "$3" tx off tso off gso off gro off >/dev/null
    ip netns exec "$2" ip link set "$3" up
}
for side in a b; do
    ns=pdemo-$side net=$([[ $side == a ]] && echo 1 || echo 2)
    ip netns add "$ns"
    ip netns exec "$ns" ip link set lo up
    veth "pdemo-l$side" "$ns" eth0
    ip netns exec "$ns" ip addr add "10.0.$net.2/24" dev eth0
    ip netns exec "$ns" ip -6 addr add "fd00:$net::2/64" dev eth0 nodad
    ip netns exec "$ns" ip route add default via "10.0.$net.1"
    ip netns exec "$ns" ip -6 route add default via "fd00:$net::1"
done
# Branch's internet link passes through patronus-wan in its own namespace.
ip netns add "$NS_INET"
ip netns add "$NS_MPLS"
veth pdemo-wa "$NS_INET" gw
ip link add rt netns "$NS_INET" type veth peer name to-branch netns "$NS_WAN"
quiet_bridge_side() { # quiet_bridge_side NS IF: up, offloads off, no stack of its own
    ip netns exec "$1" sysctl -qw "net.ipv6.conf.$2.disable_ipv6=1"
    ip netns exec "$1" ethtool -K "$2" tx off tso off gso off gro off >/dev/null
    ip netns exec "$1" ip link set "$2" up
}
quiet_bridge_side "$NS_INET" gw
quiet_bridge_side "$NS_INET" rt
ip netns exec "$NS_WAN" ethtool -K to-branch tx off tso off gso off gro off >/dev/null
ip netns exec "$NS_WAN" ip link set to-branch up
# The MPLS link joins the gateways directly, through patronus-wan.
veth pdemo-ma "$NS_MPLS" branch
veth pdemo-mb "$NS_MPLS" hq
quiet_bridge_side "$NS_MPLS" branch
quiet_bridge_side "$NS_MPLS" hq
veth pdemo-wb "$NS_WAN" to-hq
ip netns exec "$NS_WAN" ip addr add 203.0.113.254/24 dev to-branch
ip netns exec "$NS_WAN" ip addr add 198.51.100.254/24 dev to-hq
ip netns add "$NS_RW"
ip netns exec "$NS_RW" ip link set lo up
ip link add to-rw netns "$NS_WAN" type veth peer name eth0 netns "$NS_RW"
ip netns exec "$NS_WAN" ip addr add 192.0.2.254/24 dev to-rw
ip netns exec "$NS_WAN" ip link set to-rw up
ip netns exec "$NS_RW" ip addr add 192.0.2.10/24 dev eth0
ip netns exec "$NS_RW" ip link set eth0 up
ip netns exec "$NS_RW" ip route add default via 192.0.2.254

say "impairing the WAN: MPLS 5 ms each way; internet 15 ms ± 2 ms and 1% loss each way"
ip netns exec "$NS_MPLS" $BIN/patronus-wan --a branch --b hq --seed 1 \
    --control "$WORK/mpls.sock" --both "delay=5ms" 2>"$WORK/wan-mpls.log" &
WAN_PID[mpls]=$!
ip netns exec "$NS_INET" $BIN/patronus-wan --a gw --b rt --seed 2 \
    --control "$WORK/inet.sock" --both "delay=15ms jitter=2ms loss=1%" 2>"$WORK/wan-inet.log" &
WAN_PID[inet]=$!
wan() { # wan LINK COMMAND: a command to that link's patronus-wan
    python3 - "$WORK/$1.sock" "$2" <<'PY'
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall((sys.argv[2] + "\n").encode())
print("  wan:", s.makefile().readline().strip())
PY
}
for link in mpls inet; do
    for _ in $(seq 100); do [[ -S $WORK/$link.sock ]] && break; sleep 0.1; done
done

say "making WireGuard keys"
umask 077
for who in branch hq rw; do wg genkey >"$WORK/$who.key"; done
umask 022
declare -A PUB
for who in branch hq rw; do PUB[$who]=$(wg pubkey <"$WORK/$who.key"); echo "  $who: ${PUB[$who]}"; done

gateway_config() { # gateway_config SITE LAN_IF WAN_IF N WAN_ADDR WAN_ROUTER MPLS_IF
    local site=$1 lan=$2 wan=$3 n=$4 mpls=$7
    cat <<TOML
[dpdk]
eal_args = ["-l", "0-1", "--no-pci", $(eal_memory_args "$mode" "pdemo-$site"), "--log-level", "lib.eal:warning",
            "--vdev", "net_af_packet0,iface=$lan", "--vdev", "net_af_packet1,iface=$wan",
            "--vdev", "net_af_packet2,iface=$mpls"]

[worker]
flow_capacity = 65536
idle_sleep_us = 20     # be gentle on a shared demo machine; 0 busy-polls

[metrics]
listen = "${METRICS[$site]}"

[controlplane]
server = "http://$CP"
site_id = "$site"
dataplane_id = "$site-gw"
telemetry_interval_ms = 1000

[[port]]
name = "lan"
device = "net_af_packet0"
addresses = ["10.0.$n.1/24", "fd00:$n::1/64"]

[[port]]
name = "wan"
device = "net_af_packet1"
addresses = ["$5/24"]

[[port]]
name = "mpls"
device = "net_af_packet2"
addresses = ["172.16.0.$n/24"]

[[route]]
prefix = "0.0.0.0/0"
via = "$6"

# Two uplinks, in order of preference; paths to probed peers are measured
# every 20 ms and a path is down after 5 unanswered probes.
[[uplink]]
name = "mpls"
port = "mpls"
color = "mpls"
cost_per_gb = 2.0
bandwidth_mbps = 20
rate_mbps = 19         # shaped just below the link, so the queue stays here

[[uplink]]
name = "inet"
port = "wan"
next_hop = "$6"
color = "internet"
cost_per_gb = 0.1
bandwidth_mbps = 100

[paths]
probe_interval_ms = 20
hold_ms = 2000

[tunnel]
private_key_file = "$WORK/$site.key"
TOML
}
{
    gateway_config branch pdemo-la pdemo-wa 1 203.0.113.1 203.0.113.254 pdemo-ma
    cat <<TOML
addresses = ["10.99.1.1/32"]   # BFD speaks from it

# Which prefixes each control-plane peer carries.
[tunnel.allowed_ips]
hq = ["10.0.2.0/24", "fd00:2::/64", "10.99.0.0/24"]
TOML
} >"$WORK/branch.toml"
{
    gateway_config hq pdemo-lb pdemo-wb 2 198.51.100.1 198.51.100.254 pdemo-mb
    cat <<TOML
addresses = ["10.99.0.1/24"]

[tunnel.allowed_ips]
branch = ["10.0.1.0/24", "fd00:1::/64", "10.99.1.1/32"]
roadwarrior = ["10.99.0.10/32"]
TOML
} >"$WORK/hq.toml"

for site in branch hq; do
    say "starting gateway $site"
    $BIN/patronus-dataplane --config "$WORK/$site.toml" 2>"$WORK/$site.log" &
    GW_PID[$site]=$!
    wait_for_log "$WORK/$site.log" "data plane running" "${GW_PID[$site]}"
    sed "s/^/  $site| /" "$WORK/$site.log"
done

say "applying the sites, their peers and a policy with patronusctl"
cat >"$WORK/sites.yaml" <<YAML
apiVersion: patronus.io/v1
kind: Site
metadata: {name: branch, labels: {tier: branch}}
spec:
  siteId: branch
  region: eu-west-1
  tunnelEndpoint: {address: 203.0.113.1, port: 51820}
  peers: [{siteId: hq, address: 198.51.100.1}]
---
apiVersion: patronus.io/v1
kind: Site
metadata: {name: hq, labels: {tier: hub}}
spec:
  siteId: hq
  region: us-east-1
  tunnelEndpoint: {address: 198.51.100.1, port: 51820}
  peers: [{siteId: branch, address: 203.0.113.1}]
---
apiVersion: patronus.io/v1
kind: Peer
metadata: {name: hq}
spec:
  siteId: branch
  endpoint: {address: 172.16.0.2, port: 51820}
  endpoints:
    - {name: mpls, address: 172.16.0.2, port: 51820}
    - {name: inet, address: 198.51.100.1, port: 51820}
  slaProbes: true
  wireguard: {publicKey: ${PUB[hq]}}
  compression: true
  bfdEnabled: true
  tunnelAddress: 10.99.0.1
  bfd: {desiredMinTxMs: 100, requiredMinRxMs: 100}
---
apiVersion: patronus.io/v1
kind: Peer
metadata: {name: branch}
spec:
  siteId: hq
  endpoint: {address: 172.16.0.1, port: 51820}
  endpoints:
    - {name: mpls, address: 172.16.0.1, port: 51820}
    - {name: inet, address: 203.0.113.1, port: 51820}
  slaProbes: true
  wireguard: {publicKey: ${PUB[branch]}}
  compression: true
  bfdEnabled: true
  tunnelAddress: 10.99.1.1
  bfd: {desiredMinTxMs: 100, requiredMinRxMs: 100}
---
apiVersion: patronus.io/v1
kind: Peer
metadata: {name: roadwarrior}
spec:
  siteId: hq
  endpoint: {address: 192.0.2.10, port: 51820}
  wireguard: {publicKey: ${PUB[rw]}}
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
---
apiVersion: patronus.io/v1
kind: Policy
metadata: {name: voice}
spec:
  siteSelector: {matchLabels: {tier: branch}}
  rules:
    - action: route
      priority: 200
      conditions: [{type: protocol, value: udp}, {type: destination-port, value: "5004"}]
      pathSelection: {strategy: lowest-latency, thresholds: {maxPacketLossPct: 5}}
YAML
ctl apply -f "$WORK/sites.yaml"
# Converged once every gateway runs the version its site should run.
converged() {
    ctl status -o json | python3 -c 'import json, sys
d = json.load(sys.stdin)
sys.exit(0 if len(d) == 2 and all(x["appliedVersion"] == x["desiredVersion"] > 1 for x in d) else 1)'
}
for _ in $(seq 100); do converged && break; sleep 0.1; done
converged || { ctl status; cat "$WORK"/*.log; exit 1; }
ctl status

say "starting the road warrior: stock wireguard-go, peered with hq"
ip netns exec "$NS_RW" wireguard-go -f "$RW_IF" >"$WORK/wireguard-go.log" 2>&1 &
RW_PID=$!
for _ in $(seq 100); do [[ -S /var/run/wireguard/$RW_IF.sock ]] && break; sleep 0.1; done
ip netns exec "$NS_RW" wg set "$RW_IF" private-key "$WORK/rw.key" listen-port 51820 \
    peer "${PUB[hq]}" endpoint 198.51.100.1:51820 allowed-ips 10.0.0.0/16,10.99.0.0/24
ip netns exec "$NS_RW" ip addr add 10.99.0.10/24 dev "$RW_IF"
ip netns exec "$NS_RW" ip link set "$RW_IF" up
ip netns exec "$NS_RW" ip route add 10.0.0.0/16 dev "$RW_IF"

say "host A -> host B through the branch-hq tunnel (IPv4, IPv6), and back"
ip netns exec "$NS_A" ping -c 3 -i 0.2 10.0.2.2
ip netns exec "$NS_A" ping -c 3 -i 0.2 fd00:2::2
ip netns exec "$NS_B" ping -c 3 -i 0.2 10.0.1.2

say "the road warrior -> host A: wireguard-go to hq, hq to branch"
ip netns exec "$NS_RW" ping -c 3 -i 0.2 10.0.1.2
ip netns exec "$NS_A" ping -c 3 -i 0.2 10.99.0.10

say "TCP host A -> host B through the tunnel (iperf3, 5 s)"
ip netns exec "$NS_B" iperf3 -s -1 -B 10.0.2.2 >/dev/null &
sleep 0.5
ip netns exec "$NS_A" iperf3 -c 10.0.2.2 -t 5 -f m | tail -4

for site in branch hq; do
    say "gateway $site: tunnels (from http://${METRICS[$site]}/metrics)"
    metrics=$(scrape "$site")
    grep -E '^patronus_(tunnel_(status|tx_packets_total|rx_packets_total|handshakes_sent_total|handshakes_received_total)|compression_ratio)' <<<"$metrics" |
        grep -v 'status="down"' || true
    grep -E '^patronus_tunnel_drops_total' <<<"$metrics" | grep -v ' 0$' || echo "(no tunnel drops)"
    grep -E '^patronus_dpi_application_flows_total' <<<"$metrics" || true
done

say "the road warrior's view (wg show)"
ip netns exec "$NS_RW" wg show "$RW_IF" | sed 's/^/  /'

say "the control plane's view: tunnels as the gateways report them"
sleep 1.5 # one telemetry report
ctl topology
echo
ctl events | tail -8

say "the paths, as the gateways measure them (patronusctl paths)"
sleep 2.5 # a window of probes, and a telemetry report
ctl paths
echo "  (the crossed paths, MPLS to the internet endpoint and back, are down: the two"
echo "   networks do not meet, as an MPLS VPN and the internet usually do not)"

say "failover: a ping and a VoIP-like stream (50 packets/s to UDP 5004) from host A to host B while MPLS degrades, fails and comes back"
ip netns exec "$NS_B" $BIN/udp-seq recv 5004 11.5 >"$WORK/voice.out" &
VOICE_RX=$!
for _ in $(seq 50); do grep -q listening "$WORK/voice.out" && break; sleep 0.1; done
ip netns exec "$NS_A" ping -i 0.05 -w 12 -q 10.0.2.2 >"$WORK/ping.out" &
PING=$!
ip netns exec "$NS_A" $BIN/udp-seq send 10.0.2.2 5004 50 12 >/dev/null &
VOICE_TX=$!
sleep 3
echo "t=3 s: MPLS starts losing 20% of its frames (the voice policy allows 5%)"
wan mpls "set both loss=20%"
sleep 3
echo "t=6 s: MPLS goes dark"
wan mpls "set both blackhole=on"
sleep 3
echo "t=9 s: MPLS is back, clean (traffic returns after the 2 s hold time)"
wan mpls "set both clear delay=5ms"
wait "$VOICE_TX"
wait "$VOICE_RX" || true
wait "$PING" || true
echo "VoIP-like stream (600 packets): $(tail -1 "$WORK/voice.out")"
echo "ping every 50 ms: $(grep -E 'packets transmitted' "$WORK/ping.out")"
echo "  (pings follow the site's default order, which has no loss limit: they stay on MPLS"
echo "   through its 20% loss and move only when it goes dark; the voice policy's 5% limit"
echo "   moved the stream at the first window over it)"

say "the moves between paths (patronusctl events)"
sleep 1.5 # one telemetry report
ctl events | grep -i failover || echo "(none reported)"
for site in branch hq; do
    echo "  $site: $(scrape "$site" | grep -E '^patronus_failover_events_total' | grep -v ' 0$' | tr '\n' ' ')"
done
ctl paths

if ((KEEP)); then
    say "running; metrics at http://${METRICS[branch]}/metrics and http://${METRICS[hq]}/metrics — Ctrl-C to stop"
    echo "WAN link control sockets: $WORK/mpls.sock $WORK/inet.sock"
    wait "${GW_PID[branch]}"
fi

status=0
for site in branch hq; do
    say "stopping gateway $site"
    kill -TERM "${GW_PID[$site]}"
    wait "${GW_PID[$site]}" && code=0 || code=$?
    unset "GW_PID[$site]"
    tail -2 "$WORK/$site.log" | sed "s/^/  $site| /"
    echo "gateway $site exited with status $code"
    ((code == 0)) || status=$code
done
exit "$status"
