#!/usr/bin/env bash
# group_members[g1] is a HashSet; blocked_users[bob] is a HashSet checked for
# every message to bob, direct or group.
# Usage: demos/groups-and-blocking.sh [--pause]
source "$(dirname "$0")/lib.sh"

step "Start a server; alice, bob and carol connect and join group g1"
start_server
connect alice 7
connect bob 8
connect carol 9
for fd in 7 8 9; do say "$fd" "/join g1"; done
wait_for "$(out carol-9)" "ok (join #g1)"
show --group g1
check "g1 has three members" "d['groups']['g1'] == ['alice', 'bob', 'carol']"

step "carol posts to g1: one group_members[g1] iteration, the frame goes to alice and bob"
say 9 "#g1 hello group"
wait_for "$(out alice-7)" "#g1 carol: hello group"
wait_for "$(out bob-8)" "#g1 carol: hello group"

step "bob blocks carol: blocked_users[bob].insert(carol)"
say 8 "/block carol"
wait_for "$(out bob-8)" "ok (block carol)"
show --user bob
check "bob blocks carol" "d['blocked']['bob'] == ['carol']"

step "carol posts again and writes to bob directly: the fan-out skips bob, and carol is told 'delivered' as if he had not blocked her"
say 9 "#g1 can bob see this?"
say 9 "@bob and this?"
wait_for "$(out alice-7)" "#g1 carol: can bob see this?"
wait_for "$(out carol-9)" '✓ delivered'
say 8 "/ping"
wait_for "$(out bob-8)" "pong: round trip"
lacks "$(out bob-8)" "can bob see this?"
lacks "$(out bob-8)" "and this?"
echo "    ✔ nothing from carol reached bob"

step "bob unblocks carol: her messages reach him again"
say 8 "/unblock carol"
wait_for "$(out bob-8)" "ok (unblock carol)"
say 9 "@bob back again"
wait_for "$(out bob-8)" "carol -> bob: back again"
check "no block set is left" "d['blocked'] == {}"
echo
bold "groups and blocking: every step happened as narrated"
