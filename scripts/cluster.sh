#!/usr/bin/env bash
# Runs a local cluster of N chat nodes on loopback, with logs and data under one folder.
#   scripts/cluster.sh up N     start N nodes (clients on 127.0.0.1:7401.., cluster on 7501.., admin on 7601..)
#   scripts/cluster.sh status   show the running nodes and the cluster view
#   scripts/cluster.sh down     stop them (SIGTERM: orderly shutdown)
# CLUSTER_DIR (default ./cluster-run) holds node<i>.log, node<i>.pid and data/node<i>.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${CLUSTER_DIR:-cluster-run}
cookie=${CHAT_COOKIE:-local-cluster-cookie}

up() {
    local n=${1:?usage: cluster.sh up N}
    cargo build --release -q -p chat-node -p chat-client
    mkdir -p "$dir/data"
    for i in $(seq "$n"); do
        if [ -f "$dir/node$i.pid" ] && kill -0 "$(cat "$dir/node$i.pid")" 2>/dev/null; then
            echo "node$i already running"
            continue
        fi
        local seed=$((7500 + (i == 1 ? 2 : 1)))
        CHAT_COOKIE=$cookie target/release/chat-node --name "node$i" \
            --listen "127.0.0.1:$((7400 + i))" --cluster-listen "127.0.0.1:$((7500 + i))" \
            --admin-listen "127.0.0.1:$((7600 + i))" --seed "127.0.0.1:$seed" --data-dir "$dir/data/node$i" \
            >"$dir/node$i.out" 2>"$dir/node$i.log" &
        echo $! >"$dir/node$i.pid"
        echo "node$i: clients 127.0.0.1:$((7400 + i)), cluster 127.0.0.1:$((7500 + i)), pid $!"
    done
}

status() {
    shopt -s nullglob
    for pidfile in "$dir"/node*.pid; do
        local name pid
        name=$(basename "$pidfile" .pid)
        pid=$(cat "$pidfile")
        if kill -0 "$pid" 2>/dev/null; then echo "$name running (pid $pid)"; else echo "$name stopped"; fi
    done
    local first
    first=$(sed -n 's/.*listening for clients on //p' "$dir"/node*.out 2>/dev/null | head -1)
    if [ -n "$first" ]; then
        target/release/chat --server "$first" register cluster-status --password status >/dev/null 2>&1 || true
        target/release/chat --server "$first" --user cluster-status --password status nodes || true
    fi
}

down() {
    shopt -s nullglob
    for pidfile in "$dir"/node*.pid; do
        kill "$(cat "$pidfile")" 2>/dev/null || true
        rm -f "$pidfile"
    done
    echo "stopped"
}

case "${1:-}" in
    up) up "${2:-3}" ;;
    status) status ;;
    down) down ;;
    *) echo "usage: $0 up N | status | down" >&2; exit 2 ;;
esac
