#!/usr/bin/env bash
# Runs the whole Patronus test suite: formatting, lints, unit tests, and the
# end-to-end tests that start the real binaries against hosts in network
# namespaces. Installs what it needs first (scripts/setup.sh). Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

mode=$(scripts/setup.sh)
export PATRONUS_EAL_MEMORY=$mode
# The independent gRPC client of the control-plane tests (Python, from PyPI).
python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
    grpcio grpcio-tools grpcio-health-checking grpcio-reflection grpcio-status
export CARGO_TERM_COLOR=never
# Every run here starts from a clean tree: incremental caches only cost disk.
export CARGO_INCREMENTAL=0

step() { printf '\n== %s\n' "$*"; }

# Every cargo test run is logged too, so that the totals can be printed last.
results=$(mktemp)
trap 'rm -f "$results"' EXIT
cargo_test() {
    cargo test "$@" 2>&1 | tee -a "$results"
    return "${PIPESTATUS[0]}"
}

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "a build without DPDK stops with one message naming the setup command"
# pkg-config is pointed at an empty directory, in a target dir of its own so
# that the real build's cache is untouched.
nodpdk=$(mktemp -d)
if PKG_CONFIG_LIBDIR=$nodpdk PKG_CONFIG_PATH= CARGO_TARGET_DIR=target/no-dpdk \
    cargo build -q -p dpdk-sys >"$nodpdk/log" 2>&1; then
    echo "dpdk-sys built although pkg-config could not find DPDK"
    exit 1
fi
grep -q "were not found through \`pkg-config libdpdk\`" "$nodpdk/log" && grep -q "scripts/setup.sh" "$nodpdk/log" || {
    cat "$nodpdk/log"
    echo "the missing-DPDK message is gone"
    exit 1
}
echo "ok: $(grep -m1 'were not found' "$nodpdk/log" | sed 's/^ *//')"
rm -rf "$nodpdk"

step "the sans-IO cores and the fuzz targets depend on no DPDK, async runtime or gRPC"
for manifest in dataplane/core/Cargo.toml fuzz/Cargo.toml; do
    if cargo tree -q --manifest-path "$manifest" -e normal,build --prefix none |
        grep -E '^(dpdk-sys|tokio|tonic|prost) '; then
        echo "$manifest depends on the crates above"
        exit 1
    fi
done
echo "ok: patronus-core and patronus-fuzz"

step "Helm chart, alert rules and dashboards"
scripts/check-chart.sh

step "unit tests"
# The operator's reconcile tests drive a real control plane.
cargo build --bin patronus-controlplane
cargo_test --workspace --exclude patronus-e2e

step "the control plane's integration tests again, on etcd instead of the redb file"
# The same tests on the other backend: each test process starts one etcd
# member and keeps each test's state under a key prefix of its own.
PATRONUS_TEST_STORE=etcd cargo_test -p patronus-controlplane --tests

step "end-to-end tests (real DPDK, real hosts in network namespaces)"
cargo build --bin patronus-dataplane --bin patronus-controlplane --bin patronusctl
# One at a time: each test starts a polling data plane on a 2-core machine.
cargo_test -p patronus-e2e -- --test-threads=1

step "monitoring: every dashboard query and alert against a real Prometheus scraping the demo"
cargo build --bin patronus-wan
scripts/check-monitoring.sh

# Fuzzing needs a nightly toolchain; CI images that have one run a short
# smoke of every target (seeded corpus, fresh each time).
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    step "fuzz smoke (20 s per target)"
    command -v cargo-fuzz >/dev/null 2>&1 || cargo install --locked --quiet cargo-fuzz
    for target in parse_frame parse_fast_path gateway_frame tls_hello quic_initial dns_question announcements dpi_flow wg_message wg_handshake bfd_control bfd_session; do
        corpus=$(mktemp -d)
        log=$(mktemp)
        seeds=seeds/$target
        [ -d "fuzz/$seeds" ] || seeds=seeds/parse_frame
        if (cd fuzz && cargo +nightly fuzz run "$target" "$corpus" "$seeds" -- \
            -max_total_time=20 -rss_limit_mb=4096) >"$log" 2>&1; then
            echo "$target: $(grep -o 'Done [0-9]* runs in [0-9]* second(s)' "$log" | tail -1), no crash"
        else
            tail -40 "$log"
            echo "fuzz target $target failed; the input is in fuzz/artifacts/$target/"
            exit 1
        fi
        rm -rf "$corpus" "$log"
    done
else
    step "fuzz smoke skipped: no nightly toolchain (rustup toolchain install nightly)"
fi

awk '/^test result:/ { p += $4; f += $6; i += $8 }
     END { printf "\n%d passed, %d failed, %d skipped\n", p, f, i }' "$results"
