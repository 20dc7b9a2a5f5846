#!/usr/bin/env bash
# A Redis Cluster on this machine, to run vivachat on: three masters, each
# with one replica, on free loopback ports, without persistence.
#
#   deploy/redis-cluster.sh start DIR   # prints the six ports, masters first
#   deploy/redis-cluster.sh stop DIR
#
# Then: vivachat serve --redis redis://127.0.0.1:PORT (any of the masters).
# DIR holds each server's config, log and pid. Every wait is bounded.
set -euo pipefail
cmd="${1:?usage: redis-cluster.sh start|stop DIR}"
dir="${2:?usage: redis-cluster.sh start|stop DIR}"

stop() {
  for pidfile in "$dir"/*.pid; do
    [ -e "$pidfile" ] || continue
    kill "$(cat "$pidfile")" 2>/dev/null || true
    rm -f "$pidfile"
  done
}

if [ "$cmd" = stop ]; then
  stop
  exit 0
fi
[ "$cmd" = start ] || { echo "usage: redis-cluster.sh start|stop DIR" >&2; exit 2; }

mkdir -p "$dir"
# Twelve free ports: six for clients, six for the cluster bus.
mapfile -t ports < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(12)]
for s in socks: s.bind(("127.0.0.1", 0))
for s in socks: print(s.getsockname()[1])
')
trap 'stop' ERR
for i in 0 1 2 3 4 5; do
  port="${ports[$i]}"
  bus="${ports[$((i + 6))]}"
  redis-server --port "$port" --cluster-port "$bus" --bind 127.0.0.1 \
    --cluster-enabled yes --cluster-config-file "$dir/nodes-$port.conf" \
    --cluster-node-timeout 2000 --save '' --appendonly no --dir "$dir" \
    --logfile "$dir/redis-$port.log" --pidfile "$dir/$port.pid" --daemonize yes
done
# Waits (at most 20 s) until `redis-cli -p PORT COMMAND` answers with a
# line matching each PATTERN; fails otherwise.
ready() {
  local port="$1" command="$2" reply all pattern
  shift 2
  for _ in $(seq 200); do
    reply="$(redis-cli -p "$port" $command 2>/dev/null || true)"
    all=1
    for pattern in "$@"; do grep -q "$pattern" <<<"$reply" || all=""; done
    [ -n "$all" ] && return 0
    sleep 0.1
  done
  echo "redis-cli -p $port $command never showed $* (see $dir)" >&2
  return 1
}
for i in 0 1 2 3 4 5; do ready "${ports[$i]}" ping PONG; done
redis-cli --cluster create $(for i in 0 1 2 3 4 5; do printf '127.0.0.1:%s ' "${ports[$i]}"; done) \
  --cluster-replicas 1 --cluster-yes >"$dir/create.log" 2>&1
# Ready when every node says cluster_state:ok and sees all six, and each
# replica has its master's data (the first sync is done).
for i in 0 1 2 3 4 5; do
  ready "${ports[$i]}" "cluster info" '^cluster_state:ok' '^cluster_known_nodes:6'
done
for i in 3 4 5; do ready "${ports[$i]}" "info replication" '^master_link_status:up'; done
trap - ERR
# `--cluster create` makes the first three the masters.
printf '%s\n' "${ports[@]:0:6}"
