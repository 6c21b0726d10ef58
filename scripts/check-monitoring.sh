#!/usr/bin/env bash
# Proves the dashboards and alert rules against real parts: the demo
# topology (scripts/demo.sh: two sites with two uplinks each, a road warrior,
# the control plane) scraped every second by a real Prometheus (Debian's),
# which evaluates alerts/patronus.rules.yaml with every `for` shortened 20×
# (promtool's unit tests hold the real durations). tests/tools/
# monitoring_check.py then degrades and cuts the MPLS link, waits for
# HighPacketLoss and PathDown to fire, and sends every dashboard query and
# alert expression to Prometheus (see that file for what each must return).
#
# Run as root, after the debug build (scripts/test.sh builds it first);
# PATRONUS_DEMO_PROFILE=release uses the release build. Cleans up on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

command -v prometheus >/dev/null 2>&1 || { echo "prometheus not found (Debian package prometheus)" >&2; exit 1; }
tmp=$(mktemp -d /tmp/patronus-monitoring.XXXXXX)
PROM_PID= DEMO_PID=
cleanup() {
    for pid in $DEMO_PID $PROM_PID; do
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
    done
    rm -rf "$tmp"
}
trap cleanup EXIT

# The demo's fixed metrics addresses (scripts/demo.sh).
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
python3 tests/tools/monitoring_check.py rules alerts/patronus.rules.yaml 20 >"$tmp/rules.yaml"
cat >"$tmp/prometheus.yml" <<YAML
global:
  scrape_interval: 1s
  scrape_timeout: 900ms
  evaluation_interval: 1s
rule_files: [$tmp/rules.yaml]
scrape_configs:
  - job_name: dataplane
    static_configs:
      - targets: [127.0.0.1:9469]
        labels: {site: branch}
      - targets: [127.0.0.1:9471]
        labels: {site: hq}
  - job_name: controlplane
    static_configs:
      - targets: [127.0.0.1:9470]
YAML
since=$(date +%s)
prometheus --config.file="$tmp/prometheus.yml" --storage.tsdb.path="$tmp/data" \
    --web.listen-address="127.0.0.1:$port" --log.level=warn >"$tmp/prometheus.log" 2>&1 &
PROM_PID=$!

PATRONUS_DEMO_PROFILE=${PATRONUS_DEMO_PROFILE:-debug} scripts/demo.sh --keep >"$tmp/demo.log" 2>&1 &
DEMO_PID=$!
# The demo builds (a no-op after the suite's build), sets up and runs its
# scenario, then keeps running and names the WAN links' control sockets.
for _ in $(seq 1800); do
    grep -q "WAN link control sockets:" "$tmp/demo.log" && break
    kill -0 "$DEMO_PID" 2>/dev/null || break
    sleep 0.5
done
if ! grep -q "WAN link control sockets:" "$tmp/demo.log"; then
    cat "$tmp/demo.log"
    echo "FAIL: the demo did not reach its running state" >&2
    exit 1
fi
echo "ok: the demo topology runs (its scenario: $(grep -m1 'VoIP-like stream (600' "$tmp/demo.log"))"
mpls=$(grep -o '[^ ]*/mpls.sock' "$tmp/demo.log")
if ! python3 tests/tools/monitoring_check.py run --prometheus "http://127.0.0.1:$port" --mpls "$mpls" --since "$since"; then
    echo "--- demo log (tail)" >&2
    tail -40 "$tmp/demo.log" >&2
    echo "--- prometheus log" >&2
    tail -20 "$tmp/prometheus.log" >&2
    exit 1
fi
