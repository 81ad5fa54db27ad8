#!/usr/bin/env bash
# Runs a local cluster of N chat nodes on loopback, with logs and data under one folder.
#   scripts/cluster.sh up N     start N nodes (clients on 127.0.0.1:7401.., cluster on 7501.., admin on 7601..)
#   scripts/cluster.sh status   show each node: state, clients, sessions, partitions, settled (read-only)
#   scripts/cluster.sh down     stop them one after another (SIGTERM: orderly shutdown), each waited for
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
        # node1 starts the cluster (no seed); the others join it through its address.
        local seed=()
        [ "$i" != 1 ] && seed=(--seed "127.0.0.1:7501")
        CHAT_COOKIE=$cookie target/release/chat-node --name "node$i" \
            --listen "127.0.0.1:$((7400 + i))" --cluster-listen "127.0.0.1:$((7500 + i))" \
            --admin-listen "127.0.0.1:$((7600 + i))" "${seed[@]}" --data-dir "$dir/data/node$i" \
            >"$dir/node$i.out" 2>"$dir/node$i.log" &
        echo $! >"$dir/node$i.pid"
        echo "node$i: clients 127.0.0.1:$((7400 + i)), cluster 127.0.0.1:$((7500 + i)), pid $!"
    done
}

# Reads each running node's /cluster on its admin port (it writes nothing anywhere).
status() {
    shopt -s nullglob
    printf '%-8s %-8s %-8s %-18s %-9s %-10s %-8s %s\n' \
        NODE STATE PID CLIENTS SESSIONS "LED HERE" SETTLED "RAFT GROUPS (LEADING)"
    for pidfile in "$dir"/node*.pid; do
        local name pid i json
        name=$(basename "$pidfile" .pid)
        pid=$(cat "$pidfile")
        i=${name#node}
        if ! kill -0 "$pid" 2>/dev/null; then
            printf '%-8s %-8s %-8s\n' "$name" stopped "$pid"
            continue
        fi
        json=$(curl -s --max-time 2 "http://127.0.0.1:$((7600 + i))/cluster" || true)
        if [ -z "$json" ]; then
            printf '%-8s %-8s %-8s %s\n' "$name" running "$pid" "(admin port $((7600 + i)) does not answer)"
            continue
        fi
        python3 -c '
import json, sys
name, pid, c = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
me = next((n for n in c.get("nodes", []) if n.get("name") == c.get("node")), {})
raft = c["consensus"]
groups = "%s (%s)" % (raft["groups"], raft["leading"])
print("%-8s %-8s %-8s %-18s %-9s %-10s %-8s %s" % (name, "running", pid, me.get("client_addr", "?"),
      me.get("sessions", "?"), len(raft["led"]), str(c.get("settled")).lower(), groups))
' "$name" "$pid" "$json"
    done
}

# Stops the nodes one after another, each with SIGTERM (an orderly shutdown that
# hands its partitions over), waiting for it to exit before the next.
down() {
    shopt -s nullglob
    for pidfile in "$dir"/node*.pid; do
        local name pid
        name=$(basename "$pidfile" .pid)
        pid=$(cat "$pidfile")
        if kill "$pid" 2>/dev/null; then
            for _ in $(seq 300); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.1
            done
            if kill -0 "$pid" 2>/dev/null; then
                echo "$name (pid $pid) did not stop within 30 s; still running" >&2
                continue
            fi
            echo "$name stopped"
        fi
        rm -f "$pidfile"
    done
}

case "${1:-}" in
    up) up "${2:-3}" ;;
    status) status ;;
    down) down ;;
    *) echo "usage: $0 up N | status | down" >&2; exit 2 ;;
esac
