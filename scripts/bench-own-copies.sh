#!/usr/bin/env bash
# The cost of copying private messages to their senders' own inboxes: one node, max
# rate, 100 connections, 10 s, alternating without copies (A: copy_own_messages =
# false) and with them (B: the default), 3 runs (the "Own copies" part of BENCHMARKS.md).
# Usage: scripts/bench-own-copies.sh
set -u
cd "$(dirname "$0")/.."
cargo build --release -q -p chat-node -p chat-client
conf=$(mktemp -d)
sed 's/^max_requests_per_sec = 0$/max_requests_per_sec = 0\ncopy_own_messages = false/' cluster-config/bench.toml >"$conf/A.toml"
cp cluster-config/bench.toml "$conf/B.toml"
for r in 1 2 3; do
  for v in A B; do
    work=$(mktemp -d)
    target/release/chat-node --config "$conf/$v.toml" --name ab --listen 127.0.0.1:19391 \
      --cluster-listen 127.0.0.1:19491 --admin-listen 127.0.0.1:19591 --data-dir "$work/data" >"$work/out" 2>"$work/log" &
    pid=$!
    for _ in $(seq 100); do curl -s 127.0.0.1:19591/health >/dev/null && break; sleep 0.1; done
    echo "== run $r: $v"
    target/release/chat-bench --server 127.0.0.1:19391 send --connections 100 --duration 10 2>&1 | grep -E "msg/s|end-to-end"
    kill $pid; wait $pid 2>/dev/null; rm -rf "$work"; sync; sleep 3
  done
done
