# Shared by the benchmark scripts that start local chat-node clusters (sourced, not run):
# `work` is the run's scratch folder and `pids` the nodes started; each script has its own
# start_node (ports, configuration), and these wait for and stop them.

# wait_settled N ADMIN_BASE [MEMBERS]: until nodes 1..N (admin ports ADMIN_BASE+i) say
# `settled` on /cluster, and, given MEMBERS, see that many members.
wait_settled() {
    local n=$1 admin=$2 members=${3:-}
    for _ in $(seq 600); do
        local all=1
        for i in $(seq "$n"); do
            local s
            s=$(curl -s "http://127.0.0.1:$((admin + i))/cluster" || true)
            grep -q '"settled":true' <<<"$s" || all=0
            [ -z "$members" ] || grep -q "\"members\":$members[,}]" <<<"$s" || all=0
        done
        [ "$all" = 1 ] && return 0
        sleep 0.2
    done
    echo "the cluster did not settle" >&2
    exit 1
}

# Stops the nodes, removes their data folders and lets the run's writeback finish, so
# that runs do not measure each other's disk.
stop_nodes() {
    kill "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
    pids=()
    rm -rf "$work"/data*
    sync
    sleep 3
}
