#!/usr/bin/env bash
# Files: upload and download MB/s on one node and across three nodes (replicas 3:
# an upload is answered once two of the file's three replicas have it on disk), and
# each node's peak memory growth while the files stream (the "Files" table of
# BENCHMARKS.md).
# Usage: scripts/bench-files.sh [RUNS] [SIZE_MIB] [COUNT]   (default 3 runs of 3 files of 50 MiB)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
size=${2:-50}
count=${3:-3}
cargo build --release -q -p chat-node -p chat-client
work=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"' EXIT
# shellcheck source=scripts/nodes.sh
source scripts/nodes.sh
{
    cat cluster-config/bench.toml
    printf '\n[files]\nmax_file_bytes = %d\nquota_bytes = 0\n' $(((size + 1) << 20))
} >"$work/node.toml"

# start_node I N: node I of N (clients 1960I, cluster 1970I, admin 1980I); node 1
# starts the cluster, the others join it.
start_node() {
    local i=$1 n=$2 seed=()
    [ "$i" != 1 ] && seed=(--seed "127.0.0.1:19701")
    target/release/chat-node --config "$work/node.toml" --name "files$i" \
        --listen "127.0.0.1:$((19600 + i))" --cluster-listen "127.0.0.1:$((19700 + i))" \
        --admin-listen "127.0.0.1:$((19800 + i))" --cookie bench-cookie "${seed[@]}" \
        --data-dir "$work/data$i" --replicas "$n" >"$work/out$i" 2>"$work/log$i" &
    pids+=($!)
}

for run in $(seq "$runs"); do
    for n in 1 3; do
        for i in $(seq "$n"); do start_node "$i" "$n"; done
        wait_settled "$n" 19800 "$n"
        echo "== run $run: $n node(s), load $(cut -d' ' -f1-3 /proc/loadavg)"
        servers=(--server "127.0.0.1:19601")
        [ "$n" = 3 ] && servers+=(--server "127.0.0.1:19603")
        target/release/chat-bench "${servers[@]}" --node-pid "${pids[0]}" \
            --json "$work/files-$n-$run.json" files --size-mib "$size" --count "$count"
        stop_nodes
    done
done
