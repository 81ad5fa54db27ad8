#!/usr/bin/env bash
# The Raft core on one node and on three (the "Raft core" tables of BENCHMARKS.md),
# modes alternating within each run. To compare two builds, run it on each checkout.
# Usage: scripts/bench-consensus.sh [RUNS] [MODES]   (default 3 runs; modes "raft-1 raft-3")
#   raft-1: one node serving through the Raft core (a one-voter group per partition);
#   raft-3: three nodes through the Raft core, three replicas of every partition (a
#           send is acknowledged once two of them have it durable), users spread over
#           the nodes so that user i on node i mod 3 sends to user i+1 on the next one.
# Each mode: the max rate, then 5,000 messages/s, 100 connections, 100-byte
# messages, 10 s, on fresh data folders.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
modes=${2:-raft-1 raft-3}
cargo build --release -q -p chat-node -p chat-client
work=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"' EXIT
# shellcheck source=scripts/nodes.sh
source scripts/nodes.sh

# start_node I N: node I of N on clients 1930I, cluster 1940I, admin 1950I.
start_node() {
    local i=$1 n=$2 config="$work/node$1.toml" seeds=() first
    cp cluster-config/bench.toml "$config"
    first=$(seq -s, 1 "$n" | sed 's/\([0-9]\+\)/"bench\1"/g')
    printf '\n[cluster]\nreplicas = %s\ninitial_members = [%s]\n' "$n" "$first" >>"$config"
    for j in $(seq "$n"); do
        [ "$j" != "$i" ] && seeds+=(--seed "127.0.0.1:$((19400 + j))")
    done
    target/release/chat-node --config "$config" --name "bench$i" \
        --listen "127.0.0.1:$((19300 + i))" --cluster-listen "127.0.0.1:$((19400 + i))" \
        --admin-listen "127.0.0.1:$((19500 + i))" --cookie bench-cookie "${seeds[@]}" \
        --data-dir "$work/data$i" >"$work/out$i" 2>"$work/log$i" &
    pids+=($!)
}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/ {print $2}') GiB"
for r in $(seq "$runs"); do
    for mode in $modes; do
        case "$mode" in
        raft-1) n=1 ;;
        raft-3) n=3 ;;
        *)
            echo "unknown mode $mode" >&2
            exit 1
            ;;
        esac
        for rate in 0 5000; do
            echo "== run $r: $mode, rate ${rate/#0/max}, 100 connections, 100-byte messages, 10 s"
            servers=()
            for i in $(seq "$n"); do
                start_node "$i" "$n"
                servers+=(--server "127.0.0.1:$((19300 + i))")
            done
            wait_settled "$n" 19500
            target/release/chat-bench "${servers[@]}" send --connections 100 --duration 10 --rate "$rate"
            stop_nodes
        done
    done
done
