#!/usr/bin/env bash
# A live lesson in one terminal: tmux with the server's event log, inspect
# --watch, and two clients (alice, bob). Without tmux, prints the commands to
# run in four terminals instead.
# Usage: demos/classroom.sh [--port 8000]
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PORT=8000
[ "${1:-}" = "--port" ] && PORT="$2"
V="$ROOT/target/release/vivachat"
[ -x "$V" ] || (cd "$ROOT" && cargo build --release --quiet)
if ! command -v tmux >/dev/null 2>&1; then
  cat <<TEXT
tmux is not installed (apt-get install tmux). Open four terminals instead:
  1. $V serve --port $PORT
  2. $V inspect --url http://127.0.0.1:$PORT --watch
  3. $V client alice --url ws://127.0.0.1:$PORT
  4. $V client bob --url ws://127.0.0.1:$PORT
TEXT
  exit 0
fi
SESSION="vivachat-$PORT"
tmux new-session -d -s "$SESSION" -x 200 -y 50 "$V serve --port $PORT"
sleep 1
tmux split-window -h -t "$SESSION" "$V inspect --url http://127.0.0.1:$PORT --watch"
tmux split-window -v -t "$SESSION:0.0" "$V client alice --url ws://127.0.0.1:$PORT"
tmux split-window -v -t "$SESSION:0.2" "$V client bob --url ws://127.0.0.1:$PORT"
tmux select-pane -t "$SESSION:0.1"
exec tmux attach -t "$SESSION"
