#!/usr/bin/env bash
# Runs the benchmarks recorded in BENCHMARKS.md against a fresh release node on loopback.
# Usage: scripts/bench.sh [RUNS]   (each figure is measured RUNS times; default 3)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
cargo build --release -q -p chat-node -p chat-client
work=$(mktemp -d)
trap 'kill "$node_pid" 2>/dev/null || true; rm -rf "$work"' EXIT

start_node() {
    rm -rf "$work/data"
    # Let the previous run's writeback finish, so that runs do not measure each other's disk.
    sync
    sleep 3
    target/release/chat-node --config cluster-config/bench.toml --listen 127.0.0.1:0 \
        --data-dir "$work/data" >"$work/out" 2>"$work/log" &
    node_pid=$!
    for _ in $(seq 100); do
        addr=$(sed -n 's/.*listening for clients on //p' "$work/out")
        [ -n "$addr" ] && return 0
        sleep 0.1
    done
    echo "node did not start" >&2
    exit 1
}

stop_node() {
    kill "$node_pid"
    wait "$node_pid" || true
}

bench() { target/release/chat-bench --server "$addr" --node-pid "$node_pid" "$@"; }

mkdir -p bench-results
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/ {print $2}') GiB"
for i in $(seq "$runs"); do
    echo "== run $i: max throughput, 100 connections, 100-byte messages, 10 s"
    start_node; bench send --connections 100 --duration 10; stop_node
    echo "== run $i: 5000 messages/s, 100 connections, 10 s"
    start_node
    target/release/chat-bench --server "$addr" --node-pid "$node_pid" --plot "bench-results/latency-5000-run$i.svg" \
        send --connections 100 --duration 10 --rate 5000
    stop_node
done
echo "== idle: 10000 logged-in connections, 10000 users"
start_node; bench idle --connections 10000 --hold 12; stop_node
echo "== idle: 10000 logged-in connections, 100 users (100 devices each)"
start_node; bench idle --connections 10000 --users 100 --hold 12; stop_node
