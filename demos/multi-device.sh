#!/usr/bin/env bash
# One user, two devices: active_connections[bob] is a Vec of two handles;
# every message to bob goes to both; presence changes only on the first and last.
# Usage: demos/multi-device.sh [--pause]
source "$(dirname "$0")/lib.sh"

step "Start a server; alice connects"
start_server
connect alice 7

step "bob connects from his laptop, then from his phone: active_connections[bob] holds 2 devices"
connect bob 8
wait_for "$(out alice-7)" "* bob is online"
connect bob 9
show --user bob
check "bob has two devices" "len(d['active_connections']['bob']) == 2"

step "alice writes once: the frame goes to every device of bob"
say 7 "@bob on both screens?"
wait_for "$(out bob-8)" "alice -> bob: on both screens?"
wait_for "$(out bob-9)" "alice -> bob: on both screens?"
echo "    ✔ both devices got it"

step "bob closes his laptop: one device left, so nobody is told he went offline"
disconnect 8
for _ in $(seq 50); do
  "$VIVACHAT" inspect --url "$HTTP" --json | python3 -c "import json,sys; sys.exit(0 if len(json.load(sys.stdin)['active_connections'].get('bob', [])) == 1 else 1)" && break
  sleep 0.1
done
check "bob still online with one device" "len(d['active_connections']['bob']) == 1 and 'bob' in d['presence']"
lacks "$(out alice-7)" "* bob is offline"

step "bob closes his phone: the last device, so presence.remove(bob) and everyone is told"
disconnect 9
wait_for "$(out alice-7)" "* bob is offline"
show --user bob
check "bob is offline" "'bob' not in d['presence'] and 'bob' not in d['active_connections']"
echo
bold "multi-device: every step happened as narrated"
