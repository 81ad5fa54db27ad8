#!/usr/bin/env bash
# Side by side with ejabberd (issue 14): the same load against a fresh chat-node and a fresh
# ejabberd, alternating the two, then a table of medians and ratios.
#
# Usage (as root: it installs Debian's ejabberd and runs it as the ejabberd user):
#   scripts/bench-vs-ejabberd.sh [PAIRS]     # default 3 pairs of runs per figure
#   IDLE_CONNECTIONS=10000 RATE=5000 scripts/bench-vs-ejabberd.sh 3
#   scripts/bench-vs-ejabberd.sh one SERVER MODE ARGS...   # one run, by hand, e.g.
#   scripts/bench-vs-ejabberd.sh one ejabberd offline --connections 10 --messages 20
#   (SERVER is ours or ejabberd; a fresh server, the output in bench-results/vs-ejabberd/one/,
#   ejabberd's logs kept there; LOGLEVEL=info for ejabberd's info-level log)
#
# Load: `chat-bench` against chat-node (cluster-config/bench.toml), `xmpp-bench` (the same
# load in XMPP: SASL PLAIN, resource bind, stream management) against ejabberd on a plain
# loopback client port. Each figure's runs alternate the two servers, the first server
# changing from pair to pair, each run on a fresh server with empty data after `sync`.
#
# What an acknowledgement means, which is not the same on both sides:
#   chat-node: the message is in the fdatasync'ed Raft log of a majority (one node here:
#     its own disk), in the recipient's inbox and the sender's own copy.
#   ejabberd: stream management's <a h=N/> says the server has handled the stanza: an
#     online message was handed to the recipient's session process (in memory, nothing
#     written), an offline one was written to Mnesia (no fsync).
#
# ejabberd configuration: the c2s listener on 127.0.0.1 without TLS, its listen backlog
# 1024 as chat-node's (tokio's default; ejabberd's own default is 5: the kernel then drops
# the SYNs of all but 6 simultaneous connects, clients retry after 1, 3, 7, 15, 31 s, and
# connects that ejabberd never accepted in time are reset by the kernel, which is what
# failed the offline runs: "Connection reset by peer"), no shaper, no limit on
# offline messages per user (infinity: mod_offline then stores without first counting the
# user's stored messages, as it does under any numeric limit), no registration rate limit;
# mod_offline (Mnesia, the default backend) on, mod_mam off (as in Debian's default
# config); passwords stored plain, as the bench node's argon2 cost is lowered, since both
# register users at every run.
#
# Registration: both tools register fresh users at every run, 64 at a time (chat-bench
# with its register request, xmpp-bench by in-band registration, XEP-0077), and on both
# sides it is outside every timed window: send's and offline's clocks start once every
# user is logged in, offline's drain is logins to existing accounts, and the idle figure
# (RSS growth over connections) holds each side's account records. With the backlog above
# ejabberd registers the offline mode's 200 users in under a second and opens the idle
# figure's 10,000 (registration and login) in 20 to 25 s, so accounts are not made in bulk
# beforehand: that would also take ejabberd's accounts out of its idle figure, not ours.
set -euo pipefail
cd "$(dirname "$0")/.."
single=no
if [ "${1:-}" = one ]; then
    single=yes
    shift
    [ $# -ge 2 ] || { echo "usage: $0 one ours|ejabberd MODE ARGS..." >&2; exit 2; }
    one_server=$1 one_mode=$2
    shift 2
    one_args=("$@")
else
    pairs=${1:-3}
fi
loglevel=${LOGLEVEL:-warning}
idle_connections=${IDLE_CONNECTIONS:-10000}
rate=${RATE:-5000}
if [ "$(id -u)" != 0 ]; then
    echo "run as root: this script installs ejabberd and runs it as its own user" >&2
    exit 1
fi
if ! command -v ejabberdctl >/dev/null; then
    apt-get update -q
    # Debian's package would start its own service where an init system runs; this
    # script uses its own node name, port and folders and leaves that one alone.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q ejabberd
fi
if [ "$single" = yes ] && [ "$one_server" = ejabberd ]; then
    cargo build --release -q -p chat-client --bin xmpp-bench
else
    cargo build --release -q -p chat-node -p chat-client
fi

work=$(mktemp -d)
chmod 755 "$work"
out=bench-results/vs-ejabberd
[ "$single" = yes ] && out=$out/one
mkdir -p "$out"
rm -f "$out"/*.json "$out"/runs.tsv "$out"/ejabberd-errors.log "$out"/ejabberd.log
epmd_was_running=$(pgrep -x epmd >/dev/null && echo yes || echo no)
node_pid=
ej_up=no

ejctl() {
    # setpriv instead of ejabberdctl's own `su`: su's PAM session would lower the open
    # files limit to 1024, too few for the idle figure's connections.
    (cd "$work/ej" && HOME=/var/lib/ejabberd setpriv --reuid=ejabberd --regid=ejabberd --init-groups \
        ejabberdctl --ctl-config "$work/ej/ejabberdctl.cfg" --spool "$work/ej/spool" \
        --logs "$work/ej/logs" "$@")
}

cleanup() {
    [ -n "$node_pid" ] && kill "$node_pid" 2>/dev/null || true
    if [ "$ej_up" = yes ]; then
        ejctl stop >/dev/null 2>&1 || true
        ejctl stopped >/dev/null 2>&1 || true
    fi
    # The Erlang VM starts epmd, which outlives it.
    if [ "$epmd_was_running" = no ] && pgrep -x epmd >/dev/null; then epmd -kill >/dev/null 2>&1 || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

settle() {
    # Let the previous run's writeback finish, so that runs do not measure each other's disk.
    sync
    sleep 3
}

start_ours() {
    rm -rf "$work/data"
    settle
    target/release/chat-node --config cluster-config/bench.toml --listen 127.0.0.1:0 \
        --data-dir "$work/data" >"$work/out" 2>"$work/log" &
    node_pid=$!
    for _ in $(seq 100); do
        addr=$(sed -n 's/.*listening for clients on //p' "$work/out")
        [ -n "$addr" ] && { pid=$node_pid; return 0; }
        sleep 0.1
    done
    echo "chat-node did not start" >&2
    exit 1
}

stop_ours() {
    kill "$node_pid"
    wait "$node_pid" || true
    node_pid=
}

start_ejabberd() {
    rm -rf "$work/ej"
    mkdir -p "$work/ej/spool" "$work/ej/logs"
    local port
    port=$(free_port)
    addr=127.0.0.1:$port
    cat >"$work/ej/ejabberdctl.cfg" <<EOF
ERLANG_NODE=ejabberd-bench@localhost
EJABBERD_CONFIG_PATH=$work/ej/ejabberd.yml
EJABBERD_PID_PATH=$work/ej/spool/ejabberd.pid
ERL_OPTIONS="-env ERL_CRASH_DUMP_BYTES 0"
EOF
    cat >"$work/ej/ejabberd.yml" <<EOF
loglevel: $loglevel
hosts:
  - localhost
listen:
  -
    port: $port
    ip: "127.0.0.1"
    module: ejabberd_c2s
    backlog: 1024
    max_stanza_size: 262144
    shaper: none
    access: c2s
auth_method: internal
auth_password_format: plain
registration_timeout: infinity
acl:
  local:
    user_regexp: ""
access_rules:
  local:
    allow: local
  c2s:
    allow: all
  register:
    allow: all
shaper_rules:
  max_user_sessions: 10
  max_user_offline_messages: infinity
  c2s_shaper: none
# Debian's default modules, less those for other listeners or services (HTTP, BOSH, MQTT,
# MUC, pubsub, STUN, push, s2s) and the rate limiters (mod_fail2ban, mod_pres_counter),
# plus mod_register for in-band registration.
modules:
  mod_adhoc: {}
  mod_admin_extra: {}
  mod_blocking: {}
  mod_caps: {}
  mod_carboncopy: {}
  mod_client_state: {}
  mod_disco: {}
  mod_last: {}
  mod_offline:
    access_max_user_messages: max_user_offline_messages
  mod_ping: {}
  mod_privacy: {}
  mod_private: {}
  mod_register:
    access: register
    ip_access: all
    password_strength: 0
  mod_roster:
    versioning: true
  mod_stream_mgmt:
    resend_on_timeout: if_offline
  mod_vcard:
    search: false
  mod_version: {}
EOF
    chown -R ejabberd:ejabberd "$work/ej"
    settle
    ejctl start >/dev/null
    ej_up=yes
    ejctl started >/dev/null
    for _ in $(seq 100); do
        if [ -s "$work/ej/spool/ejabberd.pid" ] && (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            # The pid file holds the Erlang VM's own pid (os:getpid()): beam.smp, whose RSS
            # is all of ejabberd's memory (epmd is a separate, small process).
            pid=$(cat "$work/ej/spool/ejabberd.pid")
            if [ "$(cat "/proc/$pid/comm")" != beam.smp ]; then
                echo "ejabberd's pid file names $pid, not a beam.smp process" >&2
                exit 1
            fi
            return 0
        fi
        sleep 0.1
    done
    echo "ejabberd did not start" >&2
    exit 1
}

stop_ejabberd() {
    cat "$work/ej/logs/error.log" >>"$out/ejabberd-errors.log" 2>/dev/null || true
    if [ "$single" = yes ]; then cp "$work/ej/logs/ejabberd.log" "$out/" 2>/dev/null || true; fi
    ejctl stop >/dev/null
    ejctl stopped >/dev/null
    ej_up=no
}

# run SERVER FIGURE PAIR ARGS...: one run on a fresh server, its JSON and load kept.
run() {
    local server=$1 figure=$2 pair=$3
    shift 3
    "start_$server"
    local load json="$out/$server-$figure-$pair.json"
    load=$(cut -d' ' -f1-3 /proc/loadavg)
    echo "== $server, $figure, pair $pair (load average $load)"
    local bench=chat-bench failed=no
    [ "$server" = ejabberd ] && bench=xmpp-bench
    target/release/$bench --server "$addr" --node-pid "$pid" --json "$json" "$@" || failed=yes
    # Stopped either way, so that a failed run's server log is kept.
    "stop_$server"
    if [ "$failed" = yes ]; then
        echo "$bench failed against $server ($figure, pair $pair); server errors in $out" >&2
        exit 1
    fi
    printf '%s\t%s\t%s\t%s\n' "$server" "$figure" "$pair" "$load" >>"$out/runs.tsv"
}

if [ "$single" = yes ]; then
    run "$one_server" "$one_mode" 1 "$one_mode" "${one_args[@]}"
    exit 0
fi

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/ {print $2}') GiB"
echo "ejabberd: $(dpkg-query -W -f '${Version}' ejabberd), Erlang $(dpkg-query -W -f '${Version}' erlang-base)"
for p in $(seq "$pairs"); do
    if [ $((p % 2)) = 1 ]; then order="ours ejabberd"; else order="ejabberd ours"; fi
    for s in $order; do run "$s" max "$p" send --connections 100 --duration 10; done
    for s in $order; do run "$s" rate "$p" send --connections 100 --duration 10 --rate "$rate"; done
    for s in $order; do run "$s" offline "$p" offline --connections 100 --messages 200; done
done
for s in ours ejabberd; do
    run "$s" idle 1 idle --connections "$idle_connections" --hold 12
done

python3 - "$out" "$rate" <<'EOF' | tee "$out/table.md"
import json, statistics, sys, pathlib
out, rate = pathlib.Path(sys.argv[1]), sys.argv[2]
runs = [line.split("\t") for line in (out / "runs.tsv").read_text().splitlines()]
def figures(server, figure):
    got = []
    for s, f, p, load in runs:
        if s == server and f == figure:
            got.append((json.loads((out / f"{s}-{f}-{p}.json").read_text()), load.strip()))
    return got
rows = [
    ("max rate, msg/s", "max", lambda j: j["messages_per_s"], "higher", "{:,.0f}"),
    (f"at {int(rate):,} msg/s: end-to-end p50, ms", "rate", lambda j: j["end_to_end_ms"]["p50"], "lower", "{:.1f}"),
    (f"at {int(rate):,} msg/s: end-to-end p99, ms", "rate", lambda j: j["end_to_end_ms"]["p99"], "lower", "{:.1f}"),
    ("offline: store, msg/s", "offline", lambda j: j["store_messages_per_s"], "higher", "{:,.0f}"),
    ("offline: drain after login, msg/s", "offline", lambda j: j["drain_messages_per_s"], "higher", "{:,.0f}"),
    ("memory per idle logged-in connection, KB", "idle", lambda j: j["bytes_per_connection"] / 1000, "lower", "{:.1f}"),
]
print("| figure | this project | ejabberd | ours / ejabberd | ahead |")
print("| --- | --- | --- | --- | --- |")
for name, figure, get, better, fmt in rows:
    ours = [get(j) for j, _ in figures("ours", figure)]
    theirs = [get(j) for j, _ in figures("ejabberd", figure)]
    if not ours or not theirs:
        continue
    a, b = statistics.median(ours), statistics.median(theirs)
    ahead = (a > b) if better == "higher" else (a < b)
    print(f"| {name} | {fmt.format(a)} | {fmt.format(b)} | {a / b:.2f} | {'this project' if ahead else 'ejabberd'} |")
print()
print("Every run (load average at its start: 1, 5, 15 minutes):")
print()
print("| server | figure | pair | result | load |")
print("| --- | --- | --- | --- | --- |")
for s, f, p, load in runs:
    j = json.loads((out / f"{s}-{f}-{p}.json").read_text())
    if f in ("max", "rate"):
        e = j["end_to_end_ms"]
        r = f"{j['messages_per_s']:,.0f} msg/s, p50 {e['p50']:.1f} ms, p99 {e['p99']:.1f} ms"
    elif f == "offline":
        r = f"store {j['store_messages_per_s']:,.0f} msg/s, drain {j['drain_messages_per_s']:,.0f} msg/s"
    else:
        r = f"{j['bytes_per_connection'] / 1000:.1f} KB per connection ({j['connections']:,})"
    print(f"| {s} | {f} | {p} | {r} | {load.strip()} |")
EOF
