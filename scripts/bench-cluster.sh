#!/usr/bin/env bash
# Cross-node against single-node throughput and latency, and the cost of keeping two
# copies of everything, in the same run on the same machine (the "Cluster" and
# "Replication" tables of BENCHMARKS.md).
# Usage: scripts/bench-cluster.sh [RUNS] [MODES]   (default 3 runs; modes "single cross cross-r2")
# Each run measures, on fresh data folders:
#   1. single: one node: max rate, then 5,000 messages/s;
#   2. cross: two nodes, one copy of each partition (replicas = 1), with users spread
#      over both nodes so that every message's sender and recipient are on different
#      nodes (user i on node i mod 2 sends to user i+1);
#   3. cross-r2: the same with two copies (replicas = 2): every send is acknowledged
#      only once both nodes have it.
# "Copies" are a partition's Raft voters: a send is acknowledged once a majority of them
# has it durable (with two, both).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
modes=${2:-single cross cross-r2}
cargo build --release -q -p chat-node -p chat-client
work=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"' EXIT
# shellcheck source=scripts/nodes.sh
source scripts/nodes.sh

# start_node I [SEED_PORT]: node I on clients 1930I, cluster 1940I, admin 1950I,
# keeping $replicas copies.
start_node() {
    local i=$1 seed=()
    [ -n "${2:-}" ] && seed=(--seed "127.0.0.1:$2")
    target/release/chat-node --config cluster-config/bench.toml --name "bench$i" \
        --listen "127.0.0.1:$((19300 + i))" --cluster-listen "127.0.0.1:$((19400 + i))" \
        --admin-listen "127.0.0.1:$((19500 + i))" --cookie bench-cookie "${seed[@]}" \
        --data-dir "$work/data$i" --replicas "$replicas" >"$work/out$i" 2>"$work/log$i" &
    pids+=($!)
}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/ {print $2}') GiB"
for r in $(seq "$runs"); do
    for mode in $modes; do
        replicas=1
        [ "$mode" = cross-r2 ] && replicas=2
        for rate in 0 5000; do
            echo "== run $r: $mode, rate ${rate/#0/max}, 100 connections, 100-byte messages, 10 s"
            start_node 1
            servers=(--server 127.0.0.1:19301)
            if [ "$mode" != single ]; then
                start_node 2 19401
                servers+=(--server 127.0.0.1:19302)
                wait_settled 2 19500 2
            else
                wait_settled 1 19500 1
            fi
            target/release/chat-bench "${servers[@]}" send --connections 100 --duration 10 --rate "$rate"
            stop_nodes
        done
    done
done
