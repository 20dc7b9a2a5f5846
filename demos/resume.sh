#!/usr/bin/env bash
# Resume (protocol v1.1): the offline deque as a sliding window. Every message
# to a client that resumes is held in offline_messages[bob] until bob's client
# confirms it with `received`; a client killed with -9 comes back from where it
# had confirmed, nothing lost and nothing shown twice; the sender gets the
# second tick (a receipt).
# Usage: demos/resume.sh [--pause]
source "$(dirname "$0")/lib.sh"

step "Start a server on a free port"
start_server

step "alice and bob connect; vivachat client resumes by default (/ws/bob?resume=0)"
connect alice 7
connect bob 8
wait_for "$(out alice-7)" "* bob is online"

step "alice writes to bob: delivered live, AND pushed to the back of bob's deque, held until his client confirms it"
say 7 "@bob are you there?"
wait_for "$(out bob-8)" "alice -> bob: are you there?"
wait_for "$(out alice-7)" 'delivered #1 (to bob: "are you there?")'

step "bob's client confirms within 100 ms ({\"type\":\"received\",\"id\":1}): pop_front releases it, and alice gets the second tick"
wait_for "$(out alice-7)" '✓✓ received #1 (to bob: "are you there?")'
show --only offline_messages
check "bob's window is empty again, released up to #1" "'bob' not in d['offline_messages'] and d['released']['bob'] == 1"
check "one push_back and one pop_front were counted for it" "d['ops']['offline_messages']['push_back'] == 1 and d['ops']['offline_messages']['pop_front'] == 1"

step "bob's laptop crashes (kill -9: no close frame); alice writes twice more: queued, as for any offline user"
bob_pid="${PIDS[-1]}"
kill -9 "$bob_pid"
wait "$bob_pid" 2>/dev/null || true # reaped quietly: no "Killed" line from bash
for _ in $(seq 50); do
  "$VIVACHAT" inspect --url "$HTTP" --json | python3 -c "import json,sys; sys.exit(0 if 'bob' not in json.load(sys.stdin)['presence'] else 1)" && break
  sleep 0.1
done
say 7 "@bob did you crash?"
say 7 "@bob ping me when you are back"
wait_for "$(out alice-7)" 'queued #3 (to bob: "ping me when you are back")'
show --only offline_messages
check "bob's deque holds #2 and #3, above his released position #1" "[m['id'] for m in d['offline_messages']['bob']['messages']] == [2, 3] and d['released']['bob'] == 1"

step "bob starts his client again: it resumes after #1 (saved beside his token), gets exactly #2 and #3, then confirms them"
connect bob 9
wait_for "$(out bob-9)" "2 message(s) you have not seen yet coming (after #1"
wait_for "$(out bob-9)" "alice -> bob: ping me when you are back"
lacks "$(out bob-9)" "are you there?"
echo "    ✔ nothing shown twice: message #1 was confirmed before the crash"
sleep 0.3
show --only offline_messages
check "released up to #3: nothing is held for bob" "'bob' not in d['offline_messages'] and d['released']['bob'] == 3"
echo
bold "resume: every step happened as narrated"
