#!/usr/bin/env bash
# The seed's message flow: a message to an offline user is queued in
# offline_messages[bob] (a VecDeque), then flushed FIFO when bob connects.
# Usage: demos/offline-delivery.sh [--pause]
source "$(dirname "$0")/lib.sh"

step "Start a server on a free port"
start_server

step "alice connects; bob has never connected"
connect alice 7
show --user bob
check "bob is not online" "'bob' not in d['presence']"

step "alice writes to bob twice: bob is offline, so each message goes to offline_messages[bob].push_back, O(1)"
say 7 "@bob first, sent while you were away"
say 7 "@bob second, also queued"
wait_for "$(out alice-7)" 'queued #2 (to bob: "second, also queued")'
show --user bob
check "bob's deque holds 2 messages, oldest first" "d['offline_messages']['bob']['len'] == 2 and [m['text'] for m in d['offline_messages']['bob']['messages']] == ['first, sent while you were away', 'second, also queued']"

step "bob connects: the welcome says 2 are coming. His client resumes (?resume=0), so his deque is his window: the flush re-sends it from the front, oldest first, and each message is popped from the front (pop_front, O(1)) once his client confirms it"
connect bob 8
wait_for "$(out bob-8)" "2 queued message(s) coming"
wait_for "$(out bob-8)" "alice -> bob: second, also queued"
first=$(grep -n "first, sent while you were away" "$(out bob-8)" | cut -d: -f1 || true)
second=$(grep -n "second, also queued" "$(out bob-8)" | cut -d: -f1 || true)
[ -n "$first" ] && [ -n "$second" ] && [ "$first" -lt "$second" ] || fail "the queue was not flushed in FIFO order"
grep -q "\[offline, sent" "$(out bob-8)" || fail "flushed messages are not marked offline"
echo "    ✔ flushed FIFO, each marked [offline, sent HH:MM:SS]"
eventually "bob's client confirmed both: the emptied deque is removed from the map" "'bob' not in d['offline_messages']"
show --user bob
check "two pop_front operations were counted" "d['ops']['offline_messages']['pop_front'] == 2"

step "Now that bob is online, alice's next message is delivered live (active_connections.get finds his socket)"
say 7 "@bob hello, live this time"
wait_for "$(out alice-7)" 'delivered #3 (to bob: "hello, live this time")'
wait_for "$(out bob-8)" "alice -> bob: hello, live this time"
echo
bold "offline delivery: every step happened as narrated"
