#!/usr/bin/env bash
# A live lesson in one terminal: tmux with the server's event log, two clients
# (alice, bob), and two inspect panes: the offline deques alone (the point of
# the lesson, always visible) and every structure with its operations.
# Without tmux, prints the commands to run in separate terminals instead.
# Usage: demos/classroom.sh [--port 8000]
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PORT=8000
[ "${1:-}" = "--port" ] && PORT="$2"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
V="${VIVACHAT:-$TARGET/release/vivachat}"
if [ ! -x "$V" ]; then
  echo "Building vivachat (release; the first build takes a few minutes)..."
  (cd "$ROOT" && cargo build --release --quiet) || { echo "classroom: cargo build failed; fix the build first" >&2; exit 1; }
fi
[ -x "$V" ] || { echo "classroom: no vivachat binary at $V (set VIVACHAT=/path/to/vivachat)" >&2; exit 1; }
HTTP="http://127.0.0.1:$PORT"
answers() { (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; }
# A teacher who already ran `serve` on this port: say so, and change nothing
# (the panes would otherwise show that other server, or close at once).
if answers; then
  cat >&2 <<TEXT
classroom: port $PORT is already in use, probably by a vivachat serve you started earlier.
  Stop it (Ctrl-C in its terminal), or open the lesson on another port:
    demos/classroom.sh --port $((PORT + 1))
TEXT
  exit 1
fi
if ! command -v tmux >/dev/null 2>&1; then
  cat <<TEXT
tmux is not installed (apt-get install tmux). Open five terminals instead:
  1. $V serve --port $PORT
  2. $V inspect --url $HTTP --watch --only offline_messages
  3. $V inspect --url $HTTP --watch
  4. $V client alice --url ws://127.0.0.1:$PORT
  5. $V client bob --url ws://127.0.0.1:$PORT
TEXT
  exit 0
fi
SESSION="vivachat-$PORT"
if tmux has-session -t "$SESSION" 2>/dev/null; then
  echo "classroom: a lesson on port $PORT is already open: tmux attach -t $SESSION (or tmux kill-session -t $SESSION)" >&2
  exit 1
fi
# Left half: the event log on top, the two clients below it.
# Right half: the deques (top, a third) and all five structures (below).
# remain-on-exit keeps the server's pane (and its error) if it stops at once;
# it is set before the server starts (a placeholder, then respawn), so even an
# immediate exit leaves the pane to read.
tmux new-session -d -s "$SESSION" -x 220 -y 56 "sleep 60"
tmux set-option -t "$SESSION" remain-on-exit on >/dev/null
tmux respawn-pane -k -t "$SESSION:0.0" "$V serve --port $PORT"
for _ in $(seq 100); do
  answers && break
  sleep 0.1
done
if ! answers; then
  echo "classroom: the server did not start on port $PORT; it said:" >&2
  tmux capture-pane -p -S - -t "$SESSION:0.0" 2>/dev/null | sed '/^$/d' | sed 's/^/  /' >&2 || true
  tmux kill-session -t "$SESSION" 2>/dev/null || true
  exit 1
fi
tmux set-option -t "$SESSION" remain-on-exit off >/dev/null
tmux split-window -h -t "$SESSION:0.0" "$V inspect --url $HTTP --watch --only offline_messages --rows 6"
tmux split-window -v -p 55 -t "$SESSION:0.1" "$V inspect --url $HTTP --watch --rows 4"
# The clients start once the layout is final, so they wrap at their pane's width.
tmux split-window -v -p 40 -t "$SESSION:0.0" "sleep 0.5; exec $V client alice --url ws://127.0.0.1:$PORT"
tmux split-window -h -t "$SESSION:0.1" "sleep 0.5; exec $V client bob --url ws://127.0.0.1:$PORT"
tmux select-pane -t "$SESSION:0.1"
if [ -n "${CLASSROOM_NO_ATTACH:-}" ]; then
  echo "tmux session $SESSION started (attach with: tmux attach -t $SESSION)"
else
  exec tmux attach -t "$SESSION"
fi
