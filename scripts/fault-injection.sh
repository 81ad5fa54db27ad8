#!/usr/bin/env bash
# Runs the fault-injection test (tests/tests/fault_injection.rs) by hand: five chat-node
# processes in their own network namespaces, partitions, pauses and kills, then a check of
# every inbox against what was acknowledged. Needs root, iproute2 and nftables
# (scripts/ci-setup.sh installs them).
#
#   scripts/fault-injection.sh [SEED...]        # default seed: 1
#
# CHAT_FI_FAULTS=N sets the faults per seed (default 8); CHAT_TEST_LOGS=DIR keeps every
# node's log; CHAT_TEST_BIN_DIR=DIR runs another build of chat-node (for example today's
# main, to compare).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
    echo "fault-injection: needs root (network namespaces and nftables)" >&2
    exit 1
fi
for tool in ip nft; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "fault-injection: '$tool' is missing: run scripts/ci-setup.sh (iproute2, nftables)" >&2
        exit 1
    fi
done
seeds="${*:-1}"
export CHAT_FI_SEEDS="${seeds// /,}"
cargo build -p chat-node
cargo test -p chat-tests --test fault_injection -- --nocapture nothing_acknowledged
