#!/usr/bin/env bash
# The seed's scaling chapter, run for real: Redis holds the shared structures,
# two vivachat nodes share it, nginx spreads the class over them. A message
# crosses from one node to the other by Redis pub/sub; a node killed with -9
# in the middle of a burst loses nothing for a resuming reader (it resumes on
# the other node, nothing shown twice); it leaves no ghost (the survivor's
# heartbeat sweep announces its users offline within 6 s); its users
# reconnect through nginx and find their queues intact.
# Needs redis-server and nginx (Debian: apt-get install -y redis-server nginx;
# installed here when missing and run as root). Usage: demos/cluster.sh [--pause]
source "$(dirname "$0")/lib.sh"

if ! command -v redis-server >/dev/null || ! command -v nginx >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing redis-server and nginx from Debian's packages..."
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server nginx) >/dev/null 2>&1 || true
  fi
fi
for tool in redis-server redis-cli nginx curl; do
  if ! command -v "$tool" >/dev/null; then
    echo "demos/cluster.sh: skipped: $tool is not installed and could not be installed here (apt-get install -y redis-server nginx, as root)"
    exit 0
  fi
done
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

step "Start Redis on a free port, without persistence: the shared presence, queues, groups and blocks live here"
REDIS_PORT="$(free_port)"
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no >"$WORK/redis.log" 2>&1 &
PIDS+=("$!")
for _ in $(seq 100); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
redis-cli -p "$REDIS_PORT" ping >/dev/null || fail "redis-server did not start"
REDIS="redis://127.0.0.1:$REDIS_PORT"
echo "redis on $REDIS"

step "Two nodes, a and b, on that Redis: each keeps its own sockets, and both serve the same chat"
NGINX_PORT="$(free_port)"
start_server --redis "$REDIS" --node-id a --public-url "http://127.0.0.1:$NGINX_PORT"
A_URL="$URL" A_HTTP="$HTTP" A_PID="$SERVER_PID" A_LOG="$SERVER_LOG"
start_server --redis "$REDIS" --node-id b --public-url "http://127.0.0.1:$NGINX_PORT"
B_URL="$URL" B_HTTP="$HTTP" B_PID="$SERVER_PID"
# The lesson's log is node a's: the survivor.
SERVER_LOG="$A_LOG"
LOG_SEEN="$(wc -l <"$SERVER_LOG")"

step "nginx in front (deploy/nginx.conf: WebSocket upgrade headers, round robin over a and b): one address for the class"
A_PORT="${A_URL##*:}" B_PORT="${B_URL##*:}"
mkdir -p "$WORK/nginx"
sed -e "s/listen 8000;/listen 127.0.0.1:$NGINX_PORT;/" \
    -e "s/127.0.0.1:8001/127.0.0.1:$A_PORT/" \
    -e "s/127.0.0.1:8002/127.0.0.1:$B_PORT/" \
    -e "s/worker_processes auto;/worker_processes 1;/" \
    "$ROOT/deploy/nginx.conf" >"$WORK/nginx.conf"
nginx -p "$WORK/nginx/" -c "$WORK/nginx.conf" \
  -g "daemon off; pid $WORK/nginx.pid; error_log $WORK/nginx-error.log;" >"$WORK/nginx.out" 2>&1 &
PIDS+=("$!")
NGINX_URL="ws://127.0.0.1:$NGINX_PORT"
for _ in $(seq 100); do curl -fsS "http://127.0.0.1:$NGINX_PORT/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
curl -fsS "http://127.0.0.1:$NGINX_PORT/healthz" >/dev/null || { cat "$WORK/nginx-error.log" "$WORK/nginx.out" >&2; fail "nginx did not start"; }
echo "nginx on http://127.0.0.1:$NGINX_PORT -> nodes a ($A_URL) and b ($B_URL)"

step "alice connects to node a, bob to node b: node a hears 'bob is online' through Redis pub/sub"
URL="$A_URL" connect alice 7
URL="$B_URL" connect bob 8
wait_for "$(out alice-7)" "* bob is online"

step "alice writes to bob: node a reads bob's devices in Redis (HGETALL), sees node b, and PUBLISHes the message to b's channel"
say 7 "@bob hello from node a"
wait_for "$(out bob-8)" "alice -> bob: hello from node a"
wait_for "$(out alice-7)" 'delivered #1 (to bob: "hello from node a")'
HTTP="$B_HTTP" show --only active_connections
HTTP="$B_HTTP" check "node b's /inspect shows the whole cluster: alice's socket on a, bob's on b" \
  "d['presence'] == ['alice', 'bob'] and sorted(c['node'] for c in d['connection_details']) == ['a', 'b']"

step "carol joins through nginx (round robin picks a node for her); alice writes to her"
URL="$NGINX_URL" connect carol 9
say 7 "@carol hi carol"
wait_for "$(out carol-9)" "alice -> carol: hi carol"

step "dave opens the vivachat client through nginx until he lands on node b; his client resumes (?resume=N): what is sent to him is held in Redis until his client confirms it"
# node_of NAME: the node holding NAME's one socket, from a's /inspect.
node_of() {
  "$VIVACHAT" inspect --url "$A_HTTP" --json | python3 -c "
import json, sys
d = json.load(sys.stdin)
ids = d['active_connections'].get('$1', [])
print(next((c['node'] for c in d['connection_details'] if c['id'] in ids), ''))"
}
DAVE_FD=""
for fd in 11 12 13 14; do
  URL="$NGINX_URL" connect dave "$fd"
  if [ "$(node_of dave)" = b ]; then DAVE_FD="$fd"; break; fi
  disconnect "$fd"
  for _ in $(seq 50); do [ -z "$(node_of dave)" ] && break; sleep 0.1; done
done
[ -n "$DAVE_FD" ] || fail "nginx never sent dave to node b"
echo "    ✔ dave is on node b ($(grep -m1 -o 'welcome dave.*' "$(out dave-$DAVE_FD)"))"

step "alice sends dave 40 messages, and node b dies in the middle of them (kill -9: no goodbye, no close frames, its outboxes gone); its heartbeat key in Redis expires"
# Each message is held for dave: one script gives it its id, appends it to
# his deque and publishes it to every node with his devices, in one step.
SWEPT_FROM="$(date +%s)"
for i in $(seq 40); do
  say 7 "@dave burst $i"
  sleep 0.05
  if [ "$i" = 20 ]; then kill -9 "$B_PID"; wait "$B_PID" 2>/dev/null || true; fi
done
wait_for "$(out alice-7)" '(to dave: "burst 40")'

step "dave's client reconnects through nginx, now to node a, resuming from the last id it showed: it gets everything b held for it, and drops by id what it had shown already"
wait_for "$(out dave-$DAVE_FD)" "reconnected"
wait_for "$(out dave-$DAVE_FD)" "alice -> dave: burst 40"
python3 - "$(out dave-$DAVE_FD)" <<'PY' || fail "dave did not see burst 1 to 40 exactly once each, in order"
import re, sys
shown = [int(m) for m in re.findall(r"alice -> dave: burst (\d+)$", open(sys.argv[1]).read(), re.M)]
sys.exit(0 if shown == list(range(1, 41)) else 1)
PY
echo "    ✔ dave saw burst 1 to 40, each once, in order: nothing lost with node b, nothing shown twice"
grep "^welcome dave" "$(out dave-$DAVE_FD)" | tail -1 | sed 's/^/    his client said: /'
say 7 "@bob are you still there?"
wait_for "$(out alice-7)" '(to bob: "are you still there?")'
wait_for "$(out alice-7)" "* bob is offline"
echo "    ✔ node a swept node b's devices and announced bob offline after $(( $(date +%s) - SWEPT_FROM )) s (bound: 6 s)"
HTTP="$A_HTTP" show --only offline_messages
HTTP="$A_HTTP" check "bob is offline and the message sent while b was dying waits in his queue in Redis" \
  "'bob' not in d['presence'] and [m['text'] for m in d['offline_messages']['bob']['messages']] == ['are you still there?']"

step "bob reconnects through nginx: b is down, so nginx sends him to a, where his queue is waiting"
# His name is claimed (in Redis, for every node) with the token his client
# saved under node b's address; a class uses nginx's address from the start,
# so here the token is copied to it.
python3 - "$XDG_CONFIG_HOME/vivachat/tokens.json" "$B_PORT" "$NGINX_PORT" <<'PY'
import json, sys
path, b, nginx = sys.argv[1:]
store = json.load(open(path))
token = next(names["bob"] for server, names in store.items() if server.endswith(":" + b) and "bob" in names)
key = next(server for server in store if server.endswith(":" + b)).rsplit(":", 1)[0] + ":" + nginx
store.setdefault(key, {})["bob"] = token
json.dump(store, open(path, "w"))
PY
URL="$NGINX_URL" connect bob 10
wait_for "$(out bob-10)" "alice -> bob: are you still there?"
sleep 0.5 # bob's client confirms what it showed (at most 100 ms later)
HTTP="$A_HTTP" check "nothing is left queued, and every invariant holds" \
  "not d['offline_messages'] and all(i['holds'] for i in d['invariants'])"
echo
bold "cluster: every step happened as narrated"
