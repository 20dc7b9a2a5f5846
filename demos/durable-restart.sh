#!/usr/bin/env bash
# What a crash costs: in memory (the seed's design), every queued message; with
# `serve --data`, nothing that was acknowledged, even after kill -9.
# Usage: demos/durable-restart.sh [--pause]
source "$(dirname "$0")/lib.sh"

step "In memory first: alice queues a message for bob, then the server is killed"
start_server
"$VIVACHAT" client alice --url "$URL" --color never --send bob "this one will be lost" | tee "$WORK/mem.out"
grep -q "queued #1" "$WORK/mem.out" || fail "the message was not queued"
kill -9 "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true
echo "    (kill -9: no goodbye, no flush)"

step "Restart in memory: bob's queue is gone, although alice was told 'queued'"
start_server
check "bob has nothing waiting" "'bob' not in d['offline_messages']"
kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true

step "Now durable: serve --data $WORK/chat.db writes offline_messages to SQLite before each 'queued' ack"
start_server --data "$WORK/chat.db"
grep -A1 "Durable:" "$SERVER_LOG"
"$VIVACHAT" client alice --url "$URL" --color never --send bob "first, kept on disk" | tee "$WORK/d1.out"
"$VIVACHAT" client alice --url "$URL" --color never --send bob "second, also kept" | tee "$WORK/d2.out"
grep -q "queued" "$WORK/d2.out" || fail "the message was not queued"
kill -9 "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true
echo "    (kill -9 again, right after the acks)"

step "Restart on the same file: the server says what it restored, and bob gets both, in order"
start_server --data "$WORK/chat.db"
grep -A1 "Durable:" "$SERVER_LOG"
# The banner wraps at the terminal's width: read it as one line.
tr -s '\n ' ' ' <"$SERVER_LOG" | grep -q "2 queued message(s) for 1 user(s)" || fail "the restart did not restore both messages"
show --user bob
connect bob 7
wait_for "$(out bob-7)" "alice -> bob: second, also kept"
first=$(grep -n "first, kept on disk" "$(out bob-7)" | cut -d: -f1 || true)
second=$(grep -n "second, also kept" "$(out bob-7)" | cut -d: -f1 || true)
[ -n "$first" ] && [ -n "$second" ] && [ "$first" -lt "$second" ] || fail "not in FIFO order"
echo "    ✔ both delivered, oldest first, after a kill -9"
echo
bold "durability: every acknowledged message survived the crash"
