#!/usr/bin/env bash
# Shared helpers for the classroom demos. Each demo starts its own server on a
# free port, drives scripted clients, narrates each step, shows the real
# `inspect` tables, and exits non-zero if anything did not happen as narrated.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# The binary: $VIVACHAT, else the newest build in cargo's target directory
# (CARGO_TARGET_DIR when set), else a fresh debug build.
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
if [ -z "${VIVACHAT:-}" ]; then
  release="$TARGET/release/vivachat" debug="$TARGET/debug/vivachat"
  # The newer of the two: a release build left from last week must not hide today's debug one.
  if [ -x "$release" ] && { [ ! -x "$debug" ] || [ "$release" -nt "$debug" ]; }; then VIVACHAT="$release"
  elif [ -x "$debug" ]; then VIVACHAT="$debug"
  else
    (cd "$ROOT" && cargo build --quiet) || { echo "demo: cargo build failed; fix the build first" >&2; exit 1; }
    VIVACHAT="$TARGET/debug/vivachat"
  fi
fi
[ -x "$VIVACHAT" ] || { echo "demo: no vivachat binary at $VIVACHAT (set VIVACHAT=/path/to/vivachat)" >&2; exit 1; }
PAUSE=0
for arg in "$@"; do [ "$arg" = "--pause" ] && PAUSE=1; done
WORK="$(mktemp -d)"
# Client tokens go to this demo's own directory, not the user's real config.
export XDG_CONFIG_HOME="$WORK/config"
PIDS=()
FDS=()
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"' EXIT

bold() { if [ -t 1 ]; then printf '\033[1m%s\033[0m\n' "$*"; else printf '%s\n' "$*"; fi; }

# The server's event log is shown after each step, as the class would see it
# on the server's screen: wrapped at this terminal's width, under an indent.
COLS="$(tput cols 2>/dev/null || echo 100)"
[ "$COLS" -ge 60 ] 2>/dev/null || COLS=100
LOG_SEEN=0
# log_news: prints the event-log lines the server wrote since the last call.
log_news() {
  [ -n "${SERVER_LOG:-}" ] && [ -f "$SERVER_LOG" ] || return 0
  sleep 0.2 # the log is written by its own thread, just after the event
  local total
  total="$(wc -l <"$SERVER_LOG")"
  if [ "$total" -gt "$LOG_SEEN" ]; then
    echo "  server's event log:"
    sed -n "$((LOG_SEEN + 1)),${total}p" "$SERVER_LOG" | sed 's/^/  │ /'
  fi
  LOG_SEEN="$total"
}

# step "what happens now": the event log of the last step, the narration,
# then (with --pause) wait for Enter.
step() {
  log_news
  echo
  bold "==> $*"
  if [ "$PAUSE" = 1 ]; then read -r -p "    (Enter to go on) " _ </dev/tty; fi
}

fail() { echo "DEMO FAILED: $*" >&2; exit 1; }

# start_server [SERVE FLAGS]: starts `vivachat serve` on a free port; sets URL
# (ws), HTTP, SERVER_PID and SERVER_LOG (each server writes its own log, so a
# stopping server cannot scribble over the next one's).
SERVERS=0
start_server() {
  SERVERS=$((SERVERS + 1))
  SERVER_LOG="$WORK/server-$SERVERS.log"
  COLUMNS=$((COLS - 4)) "$VIVACHAT" serve --port 0 "$@" >"$SERVER_LOG" 2>&1 &
  SERVER_PID="$!"
  PIDS+=("$SERVER_PID")
  for _ in $(seq 100); do
    if grep -q "listening on" "$SERVER_LOG"; then break; fi
    sleep 0.1
  done
  local port
  # `|| true`: with pipefail a failed grep would end the demo before the message below.
  port="$(grep -m1 "listening on" "$SERVER_LOG" | sed 's/.*://' || true)"
  [ -n "$port" ] || { cat "$SERVER_LOG" >&2; fail "the server did not start"; }
  URL="ws://127.0.0.1:$port"
  HTTP="http://127.0.0.1:$port"
  echo "server on $URL"
  # The start-up banner is not part of the lesson; the events after it are.
  # Nobody has connected yet, so every line so far is the banner.
  sleep 0.2
  LOG_SEEN="$(wc -l <"$SERVER_LOG")"
}

# connect NAME [FD]: a scripted client whose stdin stays open (fd FD) and whose
# output goes to $WORK/NAME.out (or NAME-FD.out for a second device).
connect() {
  local name="$1" fd="$2" out="$WORK/$1-$2.out"
  mkfifo "$WORK/$name-$fd.in"
  # The new client must not inherit the other clients' input fds, or closing
  # one of them later would not give that client its end of input.
  local close=""
  for f in "${FDS[@]}"; do close+=" $f>&-"; done
  eval "\"\$VIVACHAT\" client \"\$name\" --url \"\$URL\" --color never <\"\$WORK/\$name-\$fd.in\" >\"\$out\" 2>&1 $close &"
  PIDS+=("$!")
  eval "exec $fd>\"$WORK/$name-$fd.in\""
  FDS+=("$fd")
  wait_for "$out" "welcome $name"
}

# say FD LINE: types LINE into the client holding fd FD.
say() { echo "$2" >&"$1"; }

# disconnect FD: closes that client's input; it waits for its acks and leaves.
disconnect() { eval "exec $1>&-"; }

# wait_for FILE TEXT: waits (at most 15 s) until FILE has a line containing TEXT.
wait_for() {
  for _ in $(seq 150); do
    if grep -qF -- "$2" "$1" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "--- $1:" >&2; cat "$1" >&2 || true
  fail "expected \"$2\" in $(basename "$1")"
}

# lacks FILE TEXT: FILE must not contain TEXT.
lacks() { if grep -qF -- "$2" "$1"; then fail "$(basename "$1") should not contain \"$2\""; fi; }

out() { echo "$WORK/$1.out"; }

# show [ARGS]: the real inspect tables right now.
show() { log_news; "$VIVACHAT" inspect --url "$HTTP" "$@"; }

# eventually "what" PYTHON_EXPR: like check, for something a client does by
# itself (a confirmation goes out within 100 ms): asked again until it holds,
# for at most 5 s.
eventually() {
  local what="$1" expr="$2"
  for _ in $(seq 50); do
    if "$VIVACHAT" inspect --url "$HTTP" --json | python3 -c "import json,sys; d=json.load(sys.stdin); sys.exit(0 if ($expr) else 1)"; then
      echo "    ✔ $what"
      return 0
    fi
    sleep 0.1
  done
  fail "$what"
}

# check "what" PYTHON_EXPR: an assertion on the /inspect snapshot `d`.
check() {
  local what="$1" expr="$2"
  if "$VIVACHAT" inspect --url "$HTTP" --json | python3 -c "import json,sys; d=json.load(sys.stdin); sys.exit(0 if ($expr) else 1)"; then
    echo "    ✔ $what"
  else
    fail "$what"
  fi
}
