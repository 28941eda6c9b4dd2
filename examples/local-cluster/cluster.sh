#!/usr/bin/env bash
# A three-node nodedb-cluster on this machine, as separate processes.
#
#   ./cluster.sh up       make the certificates (first time), start the three nodes, wait
#                         until every node answers /ready
#   ./cluster.sh status   each node: its process, /health and /ready
#   ./cluster.sh down     stop the nodes (SIGTERM: each hands its leaderships away first)
#   ./cluster.sh purge    down, then remove run/ (certificates, data, logs)
#
# Everything the cluster writes goes to run/ next to this script. The binary is
# target/release/nodedb-cluster of this repository (`cargo build --release`), or $NODEDB.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
bin=${NODEDB:-$here/../../target/release/nodedb-cluster}
run=$here/run
nodes=(1 2 3)

fail() {
    echo "error: $*" >&2
    exit 1
}

# The status line of GET $2 on 127.0.0.1:$1 (empty when nothing answers).
http_status() {
    local answer
    answer=$( (exec 3<>"/dev/tcp/127.0.0.1/$1" &&
        printf 'GET %s HTTP/1.1\r\n\r\n' "$2" >&3 && head -n 1 <&3) 2>/dev/null || true)
    echo "${answer%$'\r'}"
}

metrics_port() { echo "930$1"; }
pid_of() { cat "$run/node-$1.pid" 2>/dev/null || true; }
# Whether node $1's process runs: alive, not a zombie (an orphan's parent may never reap
# it), and still our node (a pid may be reused).
running() {
    local pid
    pid=$(pid_of "$1")
    [ -n "$pid" ] && [ -r "/proc/$pid/stat" ] || return 1
    [ "$(cut -d' ' -f3 "/proc/$pid/stat" 2>/dev/null)" != Z ] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "node-$1.toml"
}

up() {
    [ -x "$bin" ] || fail "no binary at $bin: run \`cargo build --release\` first (or set NODEDB)"
    mkdir -p "$run"
    if [ ! -f "$run/certs/ca.pem" ]; then
        echo "making certificates in $run/certs"
        "$bin" certs init --dir "$run/certs" --cluster quickstart >/dev/null
        for n in "${nodes[@]}"; do
            "$bin" certs node --dir "$run/certs" --id "$n" --san 127.0.0.1 >/dev/null
        done
        "$bin" certs client --dir "$run/certs" --name quickstart >/dev/null
        "$bin" certs admin --dir "$run/certs" --name quickstart >/dev/null
    fi
    for n in "${nodes[@]}"; do
        if running "$n"; then
            echo "node $n already running (pid $(pid_of "$n"))"
            continue
        fi
        nohup "$bin" start --config "$here/node-$n.toml" >>"$run/node-$n.log" 2>&1 &
        echo $! >"$run/node-$n.pid"
        echo "node $n started (pid $!, log $run/node-$n.log)"
    done
    local deadline=$((SECONDS + 60))
    for n in "${nodes[@]}"; do
        until [ "$(http_status "$(metrics_port "$n")" /ready)" = "HTTP/1.1 200 OK" ]; do
            running "$n" || fail "node $n stopped; see $run/node-$n.log"
            [ $SECONDS -lt $deadline ] || fail "node $n not ready after 60 s; see $run/node-$n.log"
            sleep 0.2
        done
    done
    echo "cluster ready. Try:"
    echo "  $bin kv --config $here/client.toml put hello world"
    echo "  $bin kv --config $here/client.toml get hello"
    echo "  $bin kv --config $here/admin.toml status"
}

status() {
    for n in "${nodes[@]}"; do
        local process=stopped health="-" ready="-"
        if running "$n"; then
            process="running (pid $(pid_of "$n"))"
            health=$(http_status "$(metrics_port "$n")" /health)
            ready=$(http_status "$(metrics_port "$n")" /ready)
        fi
        echo "node $n: $process; /health: ${health:-no answer}; /ready: ${ready:-no answer}"
    done
}

down() {
    for n in "${nodes[@]}"; do
        if running "$n"; then
            kill -TERM "$(pid_of "$n")"
        fi
    done
    local deadline=$((SECONDS + 20))
    for n in "${nodes[@]}"; do
        while running "$n"; do
            if [ $SECONDS -ge $deadline ]; then
                echo "node $n did not stop in 20 s: killing it" >&2
                kill -KILL "$(pid_of "$n")" 2>/dev/null || true
                break
            fi
            sleep 0.1
        done
        rm -f "$run/node-$n.pid"
    done
    echo "cluster stopped (data kept in $run; \`$0 purge\` removes it)"
}

case "${1:-}" in
up) up ;;
status) status ;;
down) down ;;
purge)
    down
    rm -rf "$run"
    echo "removed $run"
    ;;
*)
    echo "usage: $0 up|status|down|purge" >&2
    exit 2
    ;;
esac
