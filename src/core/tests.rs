//! Unit tests of the core: every rule of the protocol, driven without sockets.

use serde_json::{json, Value};

use super::*;
use crate::names::Name;
use crate::protocol::{parse_request, Message};

type TestCore = ChatCore<MemoryStructures<ConnId>>;

fn core_with(max_offline: usize) -> TestCore {
    ChatCore::new(
        MemoryStructures::default(),
        CoreConfig {
            max_offline,
            trace: true,
            ..CoreConfig::default()
        },
    )
}

fn core() -> TestCore {
    core_with(100)
}

fn n(s: &str) -> Name {
    Name::parse(s).unwrap()
}

/// Sends a JSON request from `user` on connection `conn`.
fn send(core: &mut TestCore, user: &str, conn: ConnId, request: Value) -> Outcome<ConnId> {
    let envelope = parse_request(&request.to_string()).expect("test requests are valid");
    core.handle(&n(user), &conn, envelope, 1_000).unwrap()
}

/// The frames one connection receives, as JSON.
fn frames(outcome: &Outcome<ConnId>, conn: ConnId) -> Vec<Value> {
    outcome
        .frames_for(conn)
        .into_iter()
        .map(|f| serde_json::from_str(&f.to_json()).unwrap())
        .collect()
}

fn assert_invariants(core: &TestCore) {
    for inv in core.snapshot().unwrap().invariants {
        assert!(
            inv.holds,
            "invariant broken: {} ({:?})",
            inv.name, inv.detail
        );
    }
}

fn receivers(outcome: &Outcome<ConnId>) -> Vec<ConnId> {
    let mut ids: Vec<ConnId> = outcome.deliveries.iter().map(|d| d.conn).collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

#[test]
fn welcome_lists_others_sorted_and_presence_goes_to_others_only() {
    let mut c = core();
    let o = c.connect(&n("carol"), 1).unwrap();
    assert_eq!(
        frames(&o, 1),
        [json!({"type":"welcome","user":"carol","online":[],"queued":0})]
    );
    c.connect(&n("alice"), 2).unwrap();
    let o = c.connect(&n("bob"), 3).unwrap();
    assert_eq!(
        frames(&o, 3),
        [json!({"type":"welcome","user":"bob","online":["alice","carol"],"queued":0})]
    );
    let online = json!({"type":"presence","user":"bob","status":"online"});
    assert_eq!(frames(&o, 1), std::slice::from_ref(&online));
    assert_eq!(frames(&o, 2), [online]);

    // A second device: welcome still lists only the others, and nobody is told.
    let o = c.connect(&n("bob"), 4).unwrap();
    assert_eq!(frames(&o, 4)[0]["online"], json!(["alice", "carol"]));
    assert_eq!(receivers(&o), [4]);
    assert_invariants(&c);
}

#[test]
fn offline_presence_only_when_the_last_device_closes() {
    let mut c = core();
    c.connect(&n("alice"), 1).unwrap();
    c.connect(&n("bob"), 2).unwrap();
    c.connect(&n("bob"), 3).unwrap();
    let o = c.disconnect(&n("bob"), 2, vec![]).unwrap();
    assert!(o.deliveries.is_empty(), "bob still has a device");
    assert_eq!(
        c.snapshot().unwrap().structures.presence,
        [n("alice"), n("bob")]
    );
    let o = c.disconnect(&n("bob"), 3, vec![]).unwrap();
    assert_eq!(
        frames(&o, 1),
        [json!({"type":"presence","user":"bob","status":"offline"})]
    );
    assert_eq!(c.snapshot().unwrap().structures.presence, [n("alice")]);
    // Closing an unknown connection changes nothing.
    let o = c.disconnect(&n("bob"), 3, vec![]).unwrap();
    assert!(matches!(o.event, Event::AlreadyGone { .. }));
    assert_invariants(&c);
}

#[test]
fn direct_message_to_online_user_reaches_every_device_and_acks_the_sender_only() {
    let mut c = core();
    c.connect(&n("alice"), 1).unwrap();
    c.connect(&n("alice"), 2).unwrap();
    c.connect(&n("bob"), 3).unwrap();
    c.connect(&n("bob"), 4).unwrap();
    let o = send(
        &mut c,
        "alice",
        1,
        json!({"type":"message","to":"bob","text":"hi","ref":"r1"}),
    );
    let msg = json!({"type":"message","id":1,"from":"alice","to":"bob","text":"hi","ts":1000});
    assert_eq!(frames(&o, 3), std::slice::from_ref(&msg));
    assert_eq!(frames(&o, 4), [msg]);
    assert_eq!(
        frames(&o, 1),
        [json!({"type":"ack","ref":"r1","id":1,"status":"delivered"})]
    );
    assert!(
        frames(&o, 2).is_empty(),
        "no copy to the sender's other devices"
    );
}

#[test]
fn offline_messages_queue_and_flush_fifo_exactly_once() {
    let mut c = core();
    c.connect(&n("alice"), 1).unwrap();
    for i in 0..3 {
        let o = send(
            &mut c,
            "alice",
            1,
            json!({"type":"message","to":"bob","text":format!("m{i}")}),
        );
        assert_eq!(frames(&o, 1)[0]["status"], "queued");
    }
    assert_eq!(
        c.snapshot().unwrap().structures.offline_messages[&n("bob")].len,
        3
    );
    let o = c.connect(&n("bob"), 2).unwrap();
    let got = frames(&o, 2);
    assert_eq!(got[0]["queued"], 3);
    let texts: Vec<&str> = got[1..]
        .iter()
        .map(|f| f["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["m0", "m1", "m2"]);
    assert!(got[1..].iter().all(|f| f["offline"] == json!(true)));
    assert!(
        c.snapshot().unwrap().structures.offline_messages.is_empty(),
        "empty deques are removed"
    );
    // The welcome, and presence to the others, are frames to send now; the
    // queue is a flush the shell writes after bob's welcome, as his socket
    // takes it, charged to the budget until then (v1 took it from the deque).
    let kinds: Vec<&str> = o
        .deliveries
        .iter()
        .map(|d| match &o.frames[d.frame] {
            crate::protocol::ServerFrame::Welcome { .. } => "welcome",
            crate::protocol::ServerFrame::Presence { .. } => "presence",
            _ => "other",
        })
        .collect();
    assert_eq!(kinds, ["welcome", "presence"]);
    let flush = o.flush.as_ref().expect("bob's queue is flushed");
    assert_eq!((flush.conn, flush.frames.len()), (2, 3));
    assert_eq!(flush.charged, 3 * queued_cost(2));
    // A second device gets nothing twice.
    let o = c.connect(&n("bob"), 3).unwrap();
    assert_eq!(
        frames(&o, 3),
        [json!({"type":"welcome","user":"bob","online":["alice"],"queued":0})]
    );
    assert_invariants(&c);
}

#[test]
fn inbox_full_refuses_without_storing_or_using_an_id() {
    let mut c = core_with(2);
    c.connect(&n("alice"), 1).unwrap();
    send(
        &mut c,
        "alice",
        1,
        json!({"type":"message","to":"bob","text":"1"}),
    );
    send(
        &mut c,
        "alice",
        1,
        json!({"type":"message","to":"bob","text":"2"}),
    );
    let o = send(
        &mut c,
        "alice",
        1,
        json!({"type":"message","to":"bob","text":"3","ref":9}),
    );
    let err = &frames(&o, 1)[0];
    assert_eq!(err["type"], "error");
    assert_eq!(err["code"], "inbox_full");
    assert_eq!(err["ref"], 9);
    assert_eq!(
        c.snapshot().unwrap().structures.offline_messages[&n("bob")].len,
        2
    );
    c.connect(&n("carol"), 2).unwrap();
    let o = send(
        &mut c,
        "alice",
        1,
        json!({"type":"message","to":"carol","text":"x"}),
    );
    assert_eq!(frames(&o, 1)[0]["id"], 3, "the refused message took no id");
}

/// Protocol v1.1: a blocked sender is told exactly what they would be told
/// if there were no block (`delivered`, `queued`, `inbox_full`), and the
/// recipient gets nothing, live, queued or through a group.
#[test]
fn a_block_changes_what_happens_never_what_the_sender_is_told() {
    let mut c = core_with(2);
    c.connect(&n("alice"), 1).unwrap();
    c.connect(&n("bob"), 2).unwrap();
    send(&mut c, "bob", 2, json!({"type":"block","user":"alice"}));

    // Live: `delivered`, as to anyone online; nothing reaches bob.
    let o = send(
        &mut c,
        "alice",
        1,
        json!({"type":"message","to":"bob","text":"x"}),
    );
    assert_eq!(frames(&o, 1)[0]["status"], "delivered");
    assert!(frames(&o, 2).is_empty());
    assert!(matches!(o.event, Event::Message { blocked: true, .. }));

    // Offline: `queued`, and nothing is queued.
    c.disconnect(&n("bob"), 2, vec![]).unwrap();
    let o = send(
        &mut c,
        "alice",
        1,
        json!({"type":"message","to":"bob","text":"x"}),
    );
    assert_eq!(frames(&o, 1)[0]["status"], "queued");
    assert!(c.snapshot().unwrap().structures.offline_messages.is_empty());

    // Full inbox: `inbox_full`, as for anyone else.
    c.connect(&n("carol"), 9).unwrap();
    for _ in 0..2 {
        send(
            &mut c,
            "carol",
            9,
            json!({"type":"message","to":"bob","text":"fill"}),
        );
    }
    let o = send(
        &mut c,
        "alice",
        1,
        json!({"type":"message","to":"bob","text":"x","ref":4}),
    );
    assert_eq!(frames(&o, 1)[0]["code"], "inbox_full");
    assert_eq!(
        c.snapshot().unwrap().structures.offline_messages[&n("bob")].len,
        2
    );

    // A group: bob online in it, alice told `delivered`, bob gets nothing.
    let o = c.connect(&n("bob"), 3).unwrap();
    assert_eq!(frames(&o, 3).len(), 3, "welcome and carol's two only");
    send(&mut c, "alice", 1, json!({"type":"group_join","group":"g"}));
    send(&mut c, "bob", 3, json!({"type":"group_join","group":"g"}));
    let o = send(
        &mut c,
        "alice",
        1,
        json!({"type":"group_message","group":"g","text":"x"}),
    );
    assert!(frames(&o, 3).is_empty());
    assert_eq!(frames(&o, 1)[0]["status"], "delivered");
    assert!(matches!(
        o.event,
        Event::GroupMessage {
            connections: 0,
            blocked: 1,
            ..
        }
    ));
    // ... and offline: `queued`, nothing queued.
    c.disconnect(&n("bob"), 3, vec![]).unwrap();
    let o = send(
        &mut c,
        "alice",
        1,
        json!({"type":"group_message","group":"g","text":"x"}),
    );
    assert_eq!(frames(&o, 1)[0]["status"], "queued");
    assert!(c.snapshot().unwrap().structures.offline_messages.is_empty());

    // Unblocked: delivered for real again.
    let o = c.connect(&n("bob"), 4).unwrap();
    assert_eq!(frames(&o, 4).len(), 1, "only the welcome: nothing was kept");
    send(&mut c, "bob", 4, json!({"type":"unblock","user":"alice"}));
    let o = send(
        &mut c,
        "alice",
        1,
        json!({"type":"message","to":"bob","text":"y"}),
    );
    assert_eq!(frames(&o, 1)[0]["status"], "delivered");
    assert_eq!(frames(&o, 4)[0]["text"], "y");
    assert!(
        c.snapshot().unwrap().structures.blocked.is_empty(),
        "empty block sets are removed"
    );
}

#[test]
fn a_sender_is_never_checked_against_her_own_block_set() {
    let mut c = core();
    c.connect(&n("alice"), 1).unwrap();
    c.connect(&n("bob"), 2).unwrap();
    for (u, conn) in [("alice", 1), ("bob", 2)] {
        send(&mut c, u, conn, json!({"type":"group_join","group":"g"}));
    }
    let o = send(
        &mut c,
        "alice",
        1,
        json!({"type":"group_message","group":"g","text":"x"}),
    );
    let checks: Vec<String> = o
        .trace
        .records()
        .iter()
        .filter(|r| r.structure == Structure::BlockedUsers)
        .map(|r| r.to_string())
        .collect();
    assert_eq!(checks, ["blocked_users[bob].contains(alice) O(1)"]);
}

#[test]
fn group_fan_out_skips_the_sending_connection_and_queues_for_offline_members() {
    let mut c = core();
    c.connect(&n("alice"), 1).unwrap();
    c.connect(&n("alice"), 2).unwrap();
    c.connect(&n("bob"), 3).unwrap();
    for (u, conn) in [("alice", 1), ("bob", 3)] {
        let o = send(
            &mut c,
            u,
            conn,
            json!({"type":"group_join","group":"g1","ref":"j"}),
        );
        assert_eq!(
            frames(&o, conn),
            [json!({"type":"ack","ref":"j","status":"ok"})]
        );
    }
    // dave joins, then goes offline: his copy is queued.
    c.connect(&n("dave"), 4).unwrap();
    send(&mut c, "dave", 4, json!({"type":"group_join","group":"g1"}));
    c.disconnect(&n("dave"), 4, vec![]).unwrap();

    let o = send(
        &mut c,
        "alice",
        1,
        json!({"type":"group_message","group":"g1","text":"hey"}),
    );
    let live =
        json!({"type":"group_message","id":1,"group":"g1","from":"alice","text":"hey","ts":1000});
    assert_eq!(
        frames(&o, 2),
        std::slice::from_ref(&live),
        "the sender's other device gets it"
    );
    assert_eq!(frames(&o, 3), [live]);
    assert_eq!(
        frames(&o, 1),
        [json!({"type":"ack","id":1,"status":"delivered"})]
    );
    let o = c.connect(&n("dave"), 5).unwrap();
    assert_eq!(frames(&o, 5)[1]["type"], "group_message");
    assert_eq!(frames(&o, 5)[1]["offline"], true);
}

#[test]
fn group_ack_is_delivered_then_queued_then_sent() {
    let mut c = core();
    c.connect(&n("alice"), 1).unwrap();
    send(&mut c, "alice", 1, json!({"type":"group_join","group":"g"}));
    // Alone in the group: nobody to reach.
    let o = send(
        &mut c,
        "alice",
        1,
        json!({"type":"group_message","group":"g","text":"x"}),
    );
    assert_eq!(frames(&o, 1)[0]["status"], "sent");
    c.connect(&n("bob"), 2).unwrap();
    send(&mut c, "bob", 2, json!({"type":"group_join","group":"g"}));
    c.disconnect(&n("bob"), 2, vec![]).unwrap();
    let o = send(
        &mut c,
        "alice",
        1,
        json!({"type":"group_message","group":"g","text":"x"}),
    );
    assert_eq!(frames(&o, 1)[0]["status"], "queued");
    c.connect(&n("alice"), 3).unwrap();
    let o = send(
        &mut c,
        "alice",
        1,
        json!({"type":"group_message","group":"g","text":"x"}),
    );
    assert_eq!(
        frames(&o, 1)[0]["status"],
        "delivered",
        "own other device counts"
    );
}

#[test]
fn group_membership_rules() {
    let mut c = core();
    c.connect(&n("alice"), 1).unwrap();
    let o = send(
        &mut c,
        "alice",
        1,
        json!({"type":"group_message","group":"nope","text":"x","ref":1}),
    );
    assert_eq!(frames(&o, 1)[0]["code"], "not_member");
    assert_eq!(frames(&o, 1)[0]["ref"], 1);
    c.connect(&n("bob"), 2).unwrap();
    send(&mut c, "bob", 2, json!({"type":"group_join","group":"g"}));
    let o = send(
        &mut c,
        "alice",
        1,
        json!({"type":"group_message","group":"g","text":"x"}),
    );
    assert_eq!(frames(&o, 1)[0]["code"], "not_member");
    assert!(frames(&o, 2).is_empty());
    // Joining twice is harmless; leaving a group one is not in is ok.
    send(&mut c, "alice", 1, json!({"type":"group_join","group":"g"}));
    send(&mut c, "alice", 1, json!({"type":"group_join","group":"g"}));
    assert_eq!(
        c.snapshot().unwrap().structures.groups[&n("g")],
        [n("alice"), n("bob")]
    );
    let o = send(
        &mut c,
        "carol",
        3,
        json!({"type":"group_leave","group":"g"}),
    );
    assert_eq!(frames(&o, 3)[0]["status"], "ok");
    send(
        &mut c,
        "alice",
        1,
        json!({"type":"group_leave","group":"g"}),
    );
    send(&mut c, "bob", 2, json!({"type":"group_leave","group":"g"}));
    assert!(
        c.snapshot().unwrap().structures.groups.is_empty(),
        "empty groups are removed"
    );
}

#[test]
fn who_includes_the_asker_and_ping_pongs() {
    let mut c = core();
    c.connect(&n("zed"), 1).unwrap();
    c.connect(&n("amy"), 2).unwrap();
    let o = send(&mut c, "zed", 1, json!({"type":"who"}));
    assert_eq!(
        frames(&o, 1),
        [json!({"type":"who","online":["amy","zed"]})]
    );
    let o = send(&mut c, "zed", 1, json!({"type":"ping"}));
    assert_eq!(frames(&o, 1), [json!({"type":"pong"})]);
}

#[test]
fn ids_are_global_and_increase_across_direct_and_group() {
    let mut c = core();
    c.connect(&n("a"), 1).unwrap();
    send(&mut c, "a", 1, json!({"type":"group_join","group":"g"}));
    let mut ids = vec![];
    for i in 0..6 {
        let req = if i % 2 == 0 {
            json!({"type":"message","to":"b","text":"x"})
        } else {
            json!({"type":"group_message","group":"g","text":"x"})
        };
        ids.push(
            frames(&send(&mut c, "a", 1, req), 1)[0]["id"]
                .as_u64()
                .unwrap(),
        );
    }
    assert_eq!(ids, [1, 2, 3, 4, 5, 6]);
}

#[test]
fn unsent_messages_of_a_last_device_go_back_to_the_deque() {
    let mut c = core();
    c.connect(&n("bob"), 1).unwrap();
    c.connect(&n("alice"), 2).unwrap();
    let msgs: Vec<Message> = (1..=3)
        .map(|i| {
            let o = send(
                &mut c,
                "alice",
                2,
                json!({"type":"message","to":"bob","text":format!("{i}")}),
            );
            o.frames_for(1)[0].chat_message().unwrap().clone()
        })
        .collect();
    // Bob has a second device: what the first did not write is not re-queued.
    c.connect(&n("bob"), 3).unwrap();
    let o = c.disconnect(&n("bob"), 1, msgs.clone()).unwrap();
    assert!(matches!(o.event, Event::Disconnected { requeued: 0, .. }));
    // His last device goes with unsent messages: they are kept, in order.
    let o = c.disconnect(&n("bob"), 3, msgs).unwrap();
    assert!(matches!(o.event, Event::Disconnected { requeued: 3, .. }));
    let o = c.connect(&n("bob"), 4).unwrap();
    let texts: Vec<Value> = frames(&o, 4)[1..]
        .iter()
        .map(|f| f["text"].clone())
        .collect();
    assert_eq!(texts, [json!("1"), json!("2"), json!("3")]);
    assert_invariants(&c);
}

#[test]
fn routing_n_messages_costs_n_gets_and_n_block_checks() {
    let mut c = core();
    c.connect(&n("alice"), 1).unwrap();
    c.connect(&n("bob"), 2).unwrap();
    let before = c.op_table();
    for _ in 0..1000 {
        send(
            &mut c,
            "alice",
            1,
            json!({"type":"message","to":"bob","text":"x"}),
        );
    }
    let cost = c.op_table().since(&before);
    assert_eq!(cost.get(Structure::ActiveConnections, Op::Get), 1000);
    assert_eq!(cost.get(Structure::BlockedUsers, Op::Contains), 1000);
    assert_eq!(cost.total(), 2000, "and nothing else");
}

#[test]
fn op_counts_for_a_scripted_sequence() {
    let mut c = core();
    c.connect(&n("alice"), 1).unwrap(); // insert, presence insert, presence iterate, len
    send(
        &mut c,
        "alice",
        1,
        json!({"type":"message","to":"bob","text":"x"}),
    ); // contains, get, len, push_back
    send(&mut c, "alice", 1, json!({"type":"group_join","group":"g"})); // len(g), len (a new group), insert
    c.connect(&n("bob"), 2).unwrap(); // insert, presence insert, iterate, len, pop_front, get(alice)
    send(&mut c, "bob", 2, json!({"type":"block","user":"alice"})); // blocked len, insert
    send(
        &mut c,
        "alice",
        1,
        json!({"type":"group_message","group":"g","text":"x"}),
    ); // contains, iterate, get (alice, the only member, is not checked against her own blocks)
    c.disconnect(&n("bob"), 2, vec![]).unwrap(); // remove, presence remove, iterate, get(alice)
    use Op::*;
    use Structure::*;
    let t = c.op_table();
    let expect = [
        (ActiveConnections, Get, 4),
        (ActiveConnections, Insert, 2),
        (ActiveConnections, Remove, 1),
        (Presence, Insert, 2),
        (Presence, Remove, 1),
        (Presence, Iterate, 3),
        (OfflineMessages, Len, 3),
        (OfflineMessages, PushBack, 1),
        (OfflineMessages, PopFront, 1),
        (GroupMembers, Insert, 1),
        (GroupMembers, Contains, 1),
        (GroupMembers, Iterate, 1),
        (GroupMembers, Len, 2),
        (BlockedUsers, Insert, 1),
        (BlockedUsers, Contains, 1),
        (BlockedUsers, Len, 1),
    ];
    for (s, op, count) in expect {
        assert_eq!(t.get(s, op), count, "{}.{}", s.name(), op.name());
    }
    assert_eq!(
        t.total(),
        expect.iter().map(|e| e.2).sum::<u64>(),
        "no other operation"
    );
}

#[test]
fn the_trace_narrates_the_seed_message_flow() {
    let mut c = core();
    c.connect(&n("alice"), 1).unwrap();
    let o = send(
        &mut c,
        "alice",
        1,
        json!({"type":"message","to":"bob","text":"x"}),
    );
    let lines: Vec<String> = o.trace.records().iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        [
            "blocked_users[bob].contains(alice) O(1)",
            "active_connections.get(bob) O(1), 0 devices",
            "offline_messages.len(bob) O(1), len 0",
            "offline_messages[bob].push_back O(1)*, len 1",
        ]
    );
}

/// A hash insert is amortised, and the ordered presence costs O(log n) per
/// insert and O(n) per walk, with no sort after it: the narration says so.
#[test]
fn the_trace_narrates_a_connect_with_its_amortised_insert_and_the_ordered_presence() {
    let mut c = core();
    c.connect(&n("alice"), 1).unwrap();
    let o = c.connect(&n("bob"), 2).unwrap();
    let lines: Vec<String> = o.trace.records().iter().map(ToString::to_string).collect();
    assert_eq!(
        lines[..3],
        [
            "active_connections.insert(bob) O(1)*, 1 devices",
            "presence.insert(bob) O(log n)",
            "presence.iterate O(n), len 2",
        ]
    );
}

#[test]
fn presence_invariant_holds_through_a_random_walk() {
    // A deterministic pseudo-random sequence of connects and disconnects.
    let mut c = core();
    let users = ["a", "b", "c", "d"];
    let mut open: Vec<(usize, ConnId)> = vec![];
    let mut seed: u64 = 0x9e3779b97f4a7c15;
    for step in 0..2000u64 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        if open.is_empty() || seed % 3 != 0 {
            let u = (seed as usize / 3) % users.len();
            c.connect(&n(users[u]), step + 1).unwrap();
            open.push((u, step + 1));
        } else {
            let (u, id) = open.swap_remove((seed as usize / 3) % open.len());
            c.disconnect(&n(users[u]), id, vec![]).unwrap();
        }
        assert_invariants(&c);
    }
}

#[test]
fn group_fan_out_skips_a_member_whose_queue_is_full() {
    let mut c = core_with(1);
    for (u, conn) in [("alice", 1), ("bob", 2)] {
        c.connect(&n(u), conn).unwrap();
        send(&mut c, u, conn, json!({"type":"group_join","group":"g"}));
    }
    c.disconnect(&n("bob"), 2, vec![]).unwrap();
    let o = send(
        &mut c,
        "alice",
        1,
        json!({"type":"group_message","group":"g","text":"1"}),
    );
    assert_eq!(frames(&o, 1)[0]["status"], "queued");
    // bob's deque is at --max-offline: skipped, no error for a group.
    let o = send(
        &mut c,
        "alice",
        1,
        json!({"type":"group_message","group":"g","text":"2"}),
    );
    assert_eq!(
        frames(&o, 1),
        [json!({"type":"ack","id":2,"status":"sent"})]
    );
    assert_eq!(
        c.snapshot().unwrap().structures.offline_messages[&n("bob")].len,
        1
    );
}

#[test]
fn limits_refuse_with_limit_reached_and_change_nothing() {
    let mut core = ChatCore::new(
        MemoryStructures::default(),
        CoreConfig {
            max_text_chars: Some(3),
            max_groups: 1,
            max_group_size: 1,
            max_blocked: 1,
            ..CoreConfig::default()
        },
    );
    core.connect(&n("ann"), 1).unwrap();
    core.connect(&n("ben"), 2).unwrap();
    let code = |outcome: &Outcome<ConnId>, conn| frames(outcome, conn)[0]["code"].clone();
    let long = send(
        &mut core,
        "ann",
        1,
        json!({"type":"message","to":"ben","text":"abcd"}),
    );
    assert_eq!(code(&long, 1), "limit_reached");
    assert!(long.frames_for(2).is_empty(), "nothing reached ben");
    // Three characters of two bytes each are three characters.
    let ok = send(
        &mut core,
        "ann",
        1,
        json!({"type":"message","to":"ben","text":"ééé"}),
    );
    assert_eq!(frames(&ok, 2)[0]["text"], "ééé");
    let joined = send(
        &mut core,
        "ann",
        1,
        json!({"type":"group_join","group":"g"}),
    );
    assert_eq!(frames(&joined, 1)[0]["status"], "ok");
    let again = send(
        &mut core,
        "ann",
        1,
        json!({"type":"group_join","group":"g"}),
    );
    assert_eq!(
        frames(&again, 1)[0]["status"],
        "ok",
        "a member may join again"
    );
    let full = send(
        &mut core,
        "ben",
        2,
        json!({"type":"group_join","group":"g"}),
    );
    assert_eq!(code(&full, 2), "limit_reached");
    let second = send(
        &mut core,
        "ben",
        2,
        json!({"type":"group_join","group":"h"}),
    );
    assert_eq!(code(&second, 2), "limit_reached");
    send(&mut core, "ann", 1, json!({"type":"block","user":"cy"}));
    let more = send(&mut core, "ann", 1, json!({"type":"block","user":"dee"}));
    assert_eq!(code(&more, 1), "limit_reached");
    let s = core.snapshot().unwrap().structures;
    assert_eq!(s.groups.len(), 1);
    assert_eq!(s.groups[&n("g")].len(), 1);
    assert_eq!(s.blocked[&n("ann")].len(), 1);
}

fn core_with_budget(total: usize, per_sender: usize) -> TestCore {
    ChatCore::new(
        MemoryStructures::default(),
        CoreConfig {
            max_queued_bytes: total,
            max_queued_bytes_per_sender: per_sender,
            max_groups_per_user: 2,
            trace: true,
            ..CoreConfig::default()
        },
    )
}

/// `--max-memory`: one sender cannot queue more than its share for names that
/// never connect, all senders together not more than three quarters of the
/// budget (the rest is for held copies); live chat and the rest of the class
/// go on.
#[test]
fn the_memory_budget_bounds_offline_queues_per_sender_and_in_all() {
    let text = "x".repeat(1000);
    let cost = queued_cost(1000);
    // Offline queueing may fill 9 of the 12 copies' worth.
    let mut c = core_with_budget(12 * cost, 4 * cost);
    for (u, conn) in [("mallory", 1), ("alice", 2), ("bob", 3)] {
        c.connect(&n(u), conn).unwrap();
    }
    let dm = |to: &str| json!({"type":"message","to":to,"text":text});
    let mut acks = Vec::new();
    for i in 0..6 {
        let o = send(&mut c, "mallory", 1, dm(&format!("ghost{i}")));
        acks.push(frames(&o, 1)[0].clone());
    }
    assert!(
        acks[..4].iter().all(|a| a["status"] == "queued"),
        "{acks:?}"
    );
    for refused in &acks[4..] {
        assert_eq!(refused["code"], "inbox_full");
        assert!(
            refused["detail"].as_str().unwrap().contains("one sender"),
            "{refused}"
        );
    }
    // Others still queue, up to the offline share of the budget.
    for i in 0..5 {
        let (who, conn) = if i % 2 == 0 { ("alice", 2) } else { ("bob", 3) };
        let o = send(&mut c, who, conn, dm("carol"));
        assert_eq!(frames(&o, conn)[0]["status"], "queued", "copy {i}");
    }
    let o = send(&mut c, "alice", 2, dm("carol"));
    let refused = &frames(&o, 2)[0];
    assert_eq!(refused["code"], "inbox_full");
    let detail = refused["detail"].as_str().unwrap();
    assert!(
        detail.contains("offline messages is full") && detail.contains("--max-memory"),
        "{refused}"
    );
    // Mallory, at her share, may send nothing more, not even live ...
    let o = send(&mut c, "mallory", 1, dm("alice"));
    let refused = &frames(&o, 1)[0];
    assert_eq!(refused["code"], "inbox_full");
    assert!(
        refused["detail"].as_str().unwrap().contains("not reading"),
        "{refused}"
    );
    // ... while the others chat on live.
    let o = send(&mut c, "alice", 2, dm("bob"));
    assert_eq!(frames(&o, 2)[0]["status"], "delivered");
    // Carol connects and takes her queue, but until her socket has taken
    // the flush, those bytes are still the budget's: nothing more is queued.
    c.connect(&n("carol"), 4).unwrap();
    let o = send(&mut c, "alice", 2, dm("dave"));
    assert_eq!(frames(&o, 2)[0]["code"], "inbox_full");
    // Reading frees the budget.
    c.flushed(4);
    let o = send(&mut c, "alice", 2, dm("dave"));
    assert_eq!(frames(&o, 2)[0]["status"], "queued");
}

/// A v1 flush stays charged while it is on its way, and a connection that
/// closes before taking it gives the charge back with its messages, which
/// go back to the deque: never counted twice, never lost from the count.
#[test]
fn a_flush_on_its_way_counts_in_the_budget_until_taken_or_closed() {
    let mut c = core();
    c.connect(&n("alice"), 1).unwrap();
    for _ in 0..4 {
        send(
            &mut c,
            "alice",
            1,
            json!({"type":"message","to":"bob","text":"hello"}),
        );
    }
    let queued = c.queued_bytes().unwrap();
    assert_eq!(queued, 4 * queued_cost(5));
    let o = c.connect(&n("bob"), 2).unwrap();
    let flush = o.flush.unwrap();
    assert_eq!(flush.charged, queued, "the whole queue is charged");
    assert_eq!(c.queued_bytes().unwrap(), 0, "the deque is empty");
    // Bob's socket closes having been written two of the four.
    let unsent: Vec<Message> = flush.frames[2..]
        .iter()
        .filter_map(|f| f.chat_message().cloned())
        .collect();
    c.disconnect(&n("bob"), 2, unsent).unwrap();
    assert_eq!(c.queued_bytes().unwrap(), 2 * queued_cost(5));
    let o = c.connect(&n("bob"), 3).unwrap();
    assert_eq!(o.flush.unwrap().charged, 2 * queued_cost(5));
}

/// The quarter of the deques' budget that offline queueing cannot take is
/// there for copies held for online readers who resume: once strangers'
/// queues are full, a resuming pair still chats, until the held copies fill
/// that quarter too. Then, with every deque full, a sender holding an eighth
/// of a share is refused even live, and one with nothing kept chats on.
#[test]
fn a_held_copy_may_take_the_quarter_that_offline_queueing_cannot() {
    let text = "x".repeat(1000);
    let cost = queued_cost(1000);
    let mut c = ChatCore::new(
        MemoryStructures::default(),
        CoreConfig {
            max_queued_bytes: 8 * cost,
            // An eighth of a share is 5 copies: mallory's 6 are over it,
            // alice's 2 are not.
            max_queued_bytes_per_sender: 40 * cost,
            trace: true,
            ..CoreConfig::default()
        },
    );
    c.set_epoch("e1".into());
    let dm = |to: &str| json!({"type":"message","to":to,"text":text});
    c.connect(&n("mallory"), v1(1)).unwrap();
    let statuses = |o: &Outcome<Device>, conn| json_for(o, conn)[0].clone();
    for i in 0..7 {
        let o = say(&mut c, "mallory", v1(1), dm(&format!("ghost{i}")));
        let ack = statuses(&o, 1);
        match i < 6 {
            true => assert_eq!(ack["status"], "queued", "copy {i}: {ack}"),
            false => assert_eq!(
                ack["code"], "inbox_full",
                "6 of 8 is the offline share: {ack}"
            ),
        }
    }
    c.connect(&n("bob"), resuming(2, 0)).unwrap();
    c.connect(&n("alice"), v1(3)).unwrap();
    for i in 0..2 {
        let o = say(&mut c, "alice", v1(3), dm("bob"));
        assert_eq!(statuses(&o, 3)["status"], "delivered", "held copy {i}");
        assert_eq!(chat_ids(&json_for(&o, 2)).len(), 1, "sent to bob at once");
    }
    // The held quarter is full too: bob's window refuses the next one.
    let o = say(&mut c, "alice", v1(3), dm("bob"));
    let refused = statuses(&o, 3);
    assert_eq!(refused["code"], "inbox_full", "{refused}");
    assert!(
        refused["detail"]
            .as_str()
            .unwrap()
            .contains("held messages is full"),
        "{refused}"
    );
    // Every deque is full: mallory (who holds 6 copies) may send nothing,
    // not even live; eve, with nothing kept, chats on.
    c.connect(&n("eve"), v1(4)).unwrap();
    let o = say(&mut c, "mallory", v1(1), dm("eve"));
    assert_eq!(statuses(&o, 1)["code"], "inbox_full");
    let o = say(&mut c, "eve", v1(4), dm("alice"));
    assert_eq!(statuses(&o, 4)["status"], "delivered");
}

#[test]
fn a_group_fan_out_skips_members_the_budget_has_no_room_for() {
    let cost = queued_cost(1);
    // Offline queueing may fill 3 of the 4 copies' worth.
    let mut c = core_with_budget(4 * cost, 100 * cost);
    c.connect(&n("alice"), 1).unwrap();
    send(&mut c, "alice", 1, json!({"type":"group_join","group":"g"}));
    for i in 0..5 {
        let ghost = format!("ghost{i}");
        c.connect(&n(&ghost), 10 + i).unwrap();
        send(
            &mut c,
            &ghost,
            10 + i,
            json!({"type":"group_join","group":"g"}),
        );
        c.disconnect(&n(&ghost), 10 + i, vec![]).unwrap();
    }
    let o = send(
        &mut c,
        "alice",
        1,
        json!({"type":"group_message","group":"g","text":"x"}),
    );
    assert_eq!(frames(&o, 1)[0]["status"], "queued");
    assert!(matches!(o.event, Event::GroupMessage { queued: 3, .. }));
}

#[test]
fn one_user_may_join_only_so_many_groups() {
    let mut c = core_with_budget(usize::MAX, usize::MAX);
    c.connect(&n("alice"), 1).unwrap();
    for g in ["a", "b"] {
        let o = send(&mut c, "alice", 1, json!({"type":"group_join","group":g}));
        assert_eq!(frames(&o, 1)[0]["status"], "ok");
    }
    let o = send(&mut c, "alice", 1, json!({"type":"group_join","group":"c"}));
    let e = &frames(&o, 1)[0];
    assert_eq!(e["code"], "limit_reached");
    assert!(
        e["detail"]
            .as_str()
            .unwrap()
            .contains("--max-groups-per-user"),
        "{e}"
    );
    // Joining one she is in is fine; leaving makes room.
    let o = send(&mut c, "alice", 1, json!({"type":"group_join","group":"a"}));
    assert_eq!(frames(&o, 1)[0]["status"], "ok");
    send(
        &mut c,
        "alice",
        1,
        json!({"type":"group_leave","group":"a"}),
    );
    let o = send(&mut c, "alice", 1, json!({"type":"group_join","group":"c"}));
    assert_eq!(frames(&o, 1)[0]["status"], "ok");
}

// ---- v1.1 resume: the deque as a sliding window ----

type WindowCore = ChatCore<MemoryStructures<Device>>;

fn window_core(max_offline: usize) -> WindowCore {
    let mut core = ChatCore::new(
        MemoryStructures::journaled(),
        CoreConfig {
            max_offline,
            trace: true,
            ..CoreConfig::default()
        },
    );
    core.set_epoch("e1".into());
    core
}

fn v1(id: ConnId) -> Device {
    Device { id, resume: None }
}

fn resuming(id: ConnId, from: u64) -> Device {
    Device {
        id,
        resume: Some(from),
    }
}

fn say(core: &mut WindowCore, user: &str, conn: Device, request: Value) -> Outcome<Device> {
    let envelope = parse_request(&request.to_string()).expect("test requests are valid");
    core.handle(&n(user), &conn, envelope, 1_000).unwrap()
}

fn json_for(outcome: &Outcome<Device>, conn: ConnId) -> Vec<Value> {
    outcome
        .frames_for(conn)
        .into_iter()
        .map(|f| serde_json::from_str(&f.to_json()).unwrap())
        .collect()
}

/// A held copy relayed late through Redis (the node's relay ran behind)
/// reaches a device that resumed here since only if its id is above what
/// that device was already sent: its window, then earlier relayed copies.
#[test]
fn a_held_copy_relayed_late_keeps_a_resumed_device_s_id_order() {
    let mut c = window_core(100);
    c.connect(&n("bob"), resuming(9, 0)).unwrap();
    c.connect(&n("alice"), v1(2)).unwrap();
    for text in ["one", "two", "three"] {
        say(
            &mut c,
            "alice",
            v1(2),
            json!({"type":"message","to":"bob","text":text}),
        );
    }
    c.disconnect(&n("bob"), 9, Vec::new()).unwrap();
    assert_eq!(held_ids(&c, "bob"), [1, 2, 3]);
    // bob resumes from 0: his window is 1..3.
    let o = c.connect(&n("bob"), resuming(1, 0)).unwrap();
    assert_eq!(o.flush.as_ref().map(|f| f.frames.len()), Some(3));
    let relay = |c: &mut WindowCore, id: u64| -> Vec<ConnId> {
        let o = c
            .relayed(Relayed::ToUser {
                user: n("bob"),
                frame: chat(id, "alice", "bob"),
                held: true,
                except: None,
            })
            .unwrap();
        o.deliveries.iter().map(|d| d.conn.id).collect()
    };
    assert!(relay(&mut c, 2).is_empty(), "2 is below his window's top");
    assert_eq!(relay(&mut c, 4), [1]);
    assert!(relay(&mut c, 4).is_empty(), "a repeat is not sent again");
    // A v1 device of bob's gets every relayed copy, as before.
    c.connect(&n("bob"), v1(3)).unwrap();
    assert_eq!(relay(&mut c, 2), [3]);
}

fn held_ids(core: &WindowCore, user: &str) -> Vec<u64> {
    core.snapshot()
        .unwrap()
        .structures
        .offline_messages
        .get(&n(user))
        .map(|q| q.messages.iter().map(|m| m.id).collect())
        .unwrap_or_default()
}

fn chat_ids(frames: &[Value]) -> Vec<u64> {
    frames
        .iter()
        .filter(|f| f["type"] == "message" || f["type"] == "group_message")
        .map(|f| f["id"].as_u64().unwrap())
        .collect()
}

#[test]
fn live_messages_to_a_resuming_user_are_held_until_received() {
    let mut c = window_core(100);
    let alice = v1(1);
    c.connect(&n("alice"), alice).unwrap();
    let o = c.connect(&n("bob"), resuming(2, 0)).unwrap();
    assert_eq!(
        json_for(&o, 2)[0],
        json!({"type":"welcome","user":"bob","online":["alice"],"queued":0,"resume":0,"epoch":"e1"})
    );
    for i in 0..5 {
        let o = say(
            &mut c,
            "alice",
            alice,
            json!({"type":"message","to":"bob","text":format!("m{i}")}),
        );
        assert_eq!(json_for(&o, 1)[0]["status"], "delivered");
        assert_eq!(json_for(&o, 2)[0]["offline"], Value::Null, "it went live");
    }
    assert_eq!(held_ids(&c, "bob"), [1, 2, 3, 4, 5]);
    // The device dies without confirming: nothing is put back twice.
    let o = c.disconnect(&n("bob"), 2, vec![]).unwrap();
    assert!(matches!(o.event, Event::Disconnected { requeued: 0, .. }));
    let o = c.connect(&n("bob"), resuming(3, 0)).unwrap();
    let got = json_for(&o, 3);
    assert_eq!(got[0]["queued"], 5);
    assert_eq!(
        chat_ids(&got),
        [1, 2, 3, 4, 5],
        "the same ids again, in order"
    );
    assert!(got[1..].iter().all(|f| f["offline"] == true));
    // received gets no answer and releases cumulatively.
    let o = say(
        &mut c,
        "bob",
        resuming(3, 0),
        json!({"type":"received","id":3}),
    );
    assert!(o.deliveries.is_empty());
    assert_eq!(held_ids(&c, "bob"), [4, 5]);
    assert_eq!(
        c.snapshot().unwrap().structures.released.get(&n("bob")),
        Some(&3)
    );
    say(
        &mut c,
        "bob",
        resuming(3, 0),
        json!({"type":"received","id":5}),
    );
    assert!(held_ids(&c, "bob").is_empty());
    let o = c.connect(&n("bob"), resuming(4, 0)).unwrap();
    assert_eq!(json_for(&o, 4)[0]["queued"], 0);
    assert_invariants_of(&c);
}

fn assert_invariants_of(core: &WindowCore) {
    for inv in core.snapshot().unwrap().invariants {
        assert!(inv.holds, "{}: {:?}", inv.name, inv.detail);
    }
}

#[test]
fn a_resume_position_releases_what_it_confirms_and_resends_the_rest() {
    let mut c = window_core(1_000);
    let alice = v1(1);
    c.connect(&n("alice"), alice).unwrap();
    for i in 0..100 {
        say(
            &mut c,
            "alice",
            alice,
            json!({"type":"message","to":"bob","text":format!("q{i}")}),
        );
    }
    // Crash mid-flush: the first connection read 10 and confirmed the 10th.
    let o = c.connect(&n("bob"), resuming(2, 0)).unwrap();
    assert_eq!(chat_ids(&json_for(&o, 2)).len(), 100);
    say(
        &mut c,
        "bob",
        resuming(2, 0),
        json!({"type":"received","id":10}),
    );
    c.disconnect(&n("bob"), 2, vec![]).unwrap();
    let o = c.connect(&n("bob"), resuming(3, 10)).unwrap();
    let got = json_for(&o, 3);
    assert_eq!(got[0]["queued"], 90);
    assert_eq!(chat_ids(&got), (11..=100).collect::<Vec<u64>>());
    // A position alone confirms too: a client that crashed before its
    // `received` went out says where it is when it comes back.
    c.disconnect(&n("bob"), 3, vec![]).unwrap();
    let o = c.connect(&n("bob"), resuming(4, 50)).unwrap();
    assert!(matches!(
        o.event,
        Event::Connected {
            released: 40,
            flushed: 50,
            resume: Some(50),
            ..
        }
    ));
    assert_eq!(held_ids(&c, "bob").first(), Some(&51));
    // The v1 rule is unchanged: a device without resume takes the queue.
    c.disconnect(&n("bob"), 4, vec![]).unwrap();
    let o = c.connect(&n("bob"), v1(5)).unwrap();
    assert_eq!(chat_ids(&json_for(&o, 5)), (51..=100).collect::<Vec<u64>>());
    assert!(held_ids(&c, "bob").is_empty());
    assert_invariants_of(&c);
}

#[test]
fn a_position_from_another_run_or_never_issued_starts_from_zero() {
    let mut c = window_core(100);
    let alice = v1(1);
    c.connect(&n("alice"), alice).unwrap();
    for _ in 0..3 {
        say(
            &mut c,
            "alice",
            alice,
            json!({"type":"message","to":"bob","text":"x"}),
        );
    }
    // Id 500 was never issued here (the server restarted in memory).
    let o = c.connect(&n("bob"), resuming(2, 500)).unwrap();
    let got = json_for(&o, 2);
    assert_eq!(
        (got[0]["resume"].clone(), chat_ids(&got)),
        (json!(0), vec![1, 2, 3])
    );
    c.disconnect(&n("bob"), 2, vec![]).unwrap();
    let o = c.connect(&n("bob"), resuming(3, 2)).unwrap();
    assert_eq!(
        chat_ids(&json_for(&o, 3)),
        [3],
        "a position this run issued is trusted"
    );
}

#[test]
fn receipts_go_to_the_sender_when_the_recipient_confirms_and_never_from_a_block() {
    let mut c = window_core(100);
    let alice = v1(1);
    c.connect(&n("alice"), alice).unwrap();
    c.connect(&n("bob"), resuming(2, 0)).unwrap();
    c.connect(&n("eve"), resuming(3, 0)).unwrap();
    say(
        &mut c,
        "alice",
        alice,
        json!({"type":"message","to":"bob","text":"tick?","receipt":true}),
    );
    say(
        &mut c,
        "alice",
        alice,
        json!({"type":"message","to":"bob","text":"no tick"}),
    );
    let o = say(
        &mut c,
        "bob",
        resuming(2, 0),
        json!({"type":"received","id":2}),
    );
    assert_eq!(
        json_for(&o, 1),
        [json!({"type":"receipt","id":1,"status":"received"})],
        "one receipt, for the message that asked"
    );
    // eve blocks alice: alice is told `delivered` as always, but nothing is
    // held for eve, so eve's client can never confirm it: no receipt, ever.
    say(
        &mut c,
        "eve",
        resuming(3, 0),
        json!({"type":"block","user":"alice"}),
    );
    let o = say(
        &mut c,
        "alice",
        alice,
        json!({"type":"message","to":"eve","text":"hi","receipt":true}),
    );
    assert_eq!(json_for(&o, 1)[0]["status"], "delivered");
    assert!(o.frames_for(3).is_empty() && held_ids(&c, "eve").is_empty());
    let o = say(
        &mut c,
        "eve",
        resuming(3, 0),
        json!({"type":"received","id":3}),
    );
    assert!(o.deliveries.is_empty());
    // Groups: one receipt per member who confirms, naming them.
    say(
        &mut c,
        "alice",
        alice,
        json!({"type":"group_join","group":"g"}),
    );
    say(
        &mut c,
        "bob",
        resuming(2, 0),
        json!({"type":"group_join","group":"g"}),
    );
    let o = say(
        &mut c,
        "alice",
        alice,
        json!({"type":"group_message","group":"g","text":"all","receipt":true}),
    );
    let id = json_for(&o, 2)[0]["id"].as_u64().unwrap();
    let o = say(
        &mut c,
        "bob",
        resuming(2, 0),
        json!({"type":"received","id":id}),
    );
    assert_eq!(
        json_for(&o, 1),
        [json!({"type":"receipt","id":id,"status":"received","user":"bob"})]
    );
    assert_invariants_of(&c);
}

#[test]
fn a_full_window_refuses_like_a_full_queue() {
    let mut c = window_core(2);
    let alice = v1(1);
    c.connect(&n("alice"), alice).unwrap();
    c.connect(&n("bob"), resuming(2, 0)).unwrap();
    for _ in 0..2 {
        say(
            &mut c,
            "alice",
            alice,
            json!({"type":"message","to":"bob","text":"x"}),
        );
    }
    let o = say(
        &mut c,
        "alice",
        alice,
        json!({"type":"message","to":"bob","text":"x"}),
    );
    let refusal = &json_for(&o, 1)[0];
    assert_eq!(refusal["code"], "inbox_full");
    assert!(refusal["detail"]
        .as_str()
        .unwrap()
        .contains("not confirmed"));
    assert!(o.frames_for(2).is_empty(), "not sent either");
    say(
        &mut c,
        "bob",
        resuming(2, 0),
        json!({"type":"received","id":2}),
    );
    let o = say(
        &mut c,
        "alice",
        alice,
        json!({"type":"message","to":"bob","text":"x"}),
    );
    assert_eq!(json_for(&o, 1)[0]["status"], "delivered");
}

#[test]
fn a_v1_device_closing_last_puts_back_only_what_is_neither_held_nor_released() {
    let mut c = window_core(100);
    let alice = v1(1);
    c.connect(&n("alice"), alice).unwrap();
    c.connect(&n("bob"), v1(2)).unwrap();
    // Message 1 reaches the v1 device only: not held.
    let o = say(
        &mut c,
        "alice",
        alice,
        json!({"type":"message","to":"bob","text":"one"}),
    );
    let one = o.frames[o.deliveries[0].frame]
        .chat_message()
        .unwrap()
        .clone();
    c.connect(&n("bob"), resuming(3, 0)).unwrap();
    // Messages 2 and 3 reach both devices and are held.
    let mut unsent = vec![one];
    for text in ["two", "three"] {
        let o = say(
            &mut c,
            "alice",
            alice,
            json!({"type":"message","to":"bob","text":text}),
        );
        unsent.push(
            o.frames[o.deliveries[0].frame]
                .chat_message()
                .unwrap()
                .clone(),
        );
    }
    c.disconnect(&n("bob"), 3, vec![]).unwrap();
    // The v1 device closes last with all three unsent: 1 goes back in front
    // of the held 2 and 3, which are not put back twice.
    let o = c.disconnect(&n("bob"), 2, unsent.clone()).unwrap();
    assert!(matches!(o.event, Event::Disconnected { requeued: 1, .. }));
    assert_eq!(held_ids(&c, "bob"), [1, 2, 3]);
    assert_invariants_of(&c);
    // `received` is cumulative for the user: once 2 is confirmed, neither it
    // nor anything older comes back, whichever device had it.
    c.connect(&n("bob"), v1(4)).unwrap();
    c.connect(&n("bob"), resuming(5, 0)).unwrap();
    say(
        &mut c,
        "bob",
        resuming(5, 0),
        json!({"type":"received","id":2}),
    );
    c.disconnect(&n("bob"), 5, vec![]).unwrap();
    let o = c.disconnect(&n("bob"), 4, unsent).unwrap();
    assert!(matches!(o.event, Event::Disconnected { requeued: 1, .. }));
    assert_eq!(held_ids(&c, "bob"), [3]);
    assert_invariants_of(&c);
}

#[test]
fn releasing_is_journaled_so_the_disk_forgets_what_was_confirmed() {
    let mut c = window_core(100);
    let alice = v1(1);
    c.connect(&n("alice"), alice).unwrap();
    c.connect(&n("bob"), resuming(2, 0)).unwrap();
    let o = say(
        &mut c,
        "alice",
        alice,
        json!({"type":"message","to":"bob","text":"x"}),
    );
    assert!(
        matches!(&o.changes[..], [Change::Queued { .. }]),
        "held on disk too"
    );
    let o = say(
        &mut c,
        "bob",
        resuming(2, 0),
        json!({"type":"received","id":1}),
    );
    assert_eq!(
        o.changes,
        [Change::Released {
            user: n("bob"),
            upto: 1
        }]
    );
    // An id from the future confirms only what exists.
    let o = say(
        &mut c,
        "bob",
        resuming(2, 0),
        json!({"type":"received","id":99}),
    );
    assert!(matches!(
        o.event,
        Event::Received {
            upto: Some(1),
            released: 0,
            ..
        }
    ));
}

#[test]
fn received_on_a_v1_connection_does_nothing_so_its_unsent_messages_go_back() {
    let mut c = window_core(100);
    c.connect(&n("alice"), v1(1)).unwrap();
    c.connect(&n("bob"), v1(2)).unwrap();
    let mut sent = Vec::new();
    for text in ["one", "two", "three"] {
        let o = say(
            &mut c,
            "alice",
            v1(1),
            json!({"type":"message","to":"bob","text":text}),
        );
        assert_eq!(json_for(&o, 1)[0]["status"], "delivered");
        sent.push(o.frames[o.deliveries.iter().find(|d| d.conn.id == 2).unwrap().frame].clone());
    }
    let o = say(&mut c, "bob", v1(2), json!({"type":"received","id":3}));
    assert!(matches!(
        o.event,
        Event::Received {
            upto: None,
            released: 0,
            ..
        }
    ));
    assert!(o.deliveries.is_empty(), "no receipt, no answer");
    // bob's connection ends before writing them: all three go back.
    let unsent: Vec<Message> = sent
        .iter()
        .map(|f| f.chat_message().unwrap().clone())
        .collect();
    let o = c.disconnect(&n("bob"), 2, unsent).unwrap();
    assert!(matches!(o.event, Event::Disconnected { requeued: 3, .. }));
    let snapshot = c.snapshot().unwrap();
    assert!(!snapshot.structures.released.contains_key(&n("bob")));
}

// ---- cluster mode: what another node relays here (carried out on this node's sockets)

fn chat(id: u64, from: &str, to: &str) -> ServerFrame {
    ServerFrame::Chat {
        message: Message {
            id,
            from: n(from),
            target: crate::protocol::Target::User(n(to)),
            text: "hi".into(),
            ts: 1,
            receipt: false,
        },
        offline: false,
    }
}

#[test]
fn a_relayed_message_reaches_every_local_device_of_its_user_only() {
    let mut core = core();
    core.connect(&n("bob"), 1).unwrap();
    core.connect(&n("bob"), 2).unwrap();
    core.connect(&n("carol"), 3).unwrap();
    let o = core
        .relayed(Relayed::ToUser {
            user: n("bob"),
            frame: chat(7, "alice", "bob"),
            held: false,
            except: None,
        })
        .unwrap();
    assert_eq!(receivers(&o), [1, 2]);
    assert_eq!(frames(&o, 1)[0]["id"], 7);
    assert!(matches!(
        o.event,
        Event::Relayed {
            connections: 2,
            requeued: 0,
            ..
        }
    ));
    // A held group copy published back to its sender's node skips the
    // sending device, and a device it skips is not a reason to queue it.
    let o = core
        .relayed(Relayed::ToUser {
            user: n("bob"),
            frame: chat(8, "bob", "bob"),
            held: true,
            except: Some(2),
        })
        .unwrap();
    assert_eq!(receivers(&o), [1]);
    let o = core
        .relayed(Relayed::ToUser {
            user: n("carol"),
            frame: chat(9, "carol", "carol"),
            held: true,
            except: Some(3),
        })
        .unwrap();
    assert!(o.deliveries.is_empty());
    assert!(matches!(o.event, Event::Relayed { requeued: 0, .. }));
}

#[test]
fn a_relayed_message_that_finds_no_device_is_queued_unless_held() {
    let mut core = core();
    let o = core
        .relayed(Relayed::ToUser {
            user: n("bob"),
            frame: chat(7, "alice", "bob"),
            held: false,
            except: None,
        })
        .unwrap();
    assert!(o.deliveries.is_empty());
    assert!(matches!(o.event, Event::Relayed { requeued: 1, .. }));
    assert_eq!(
        core.snapshot().unwrap().structures.offline_messages[&n("bob")].len,
        1
    );
    // Held: the routing node kept it in the deque already; a second copy
    // must not be queued (and the same id is never queued twice).
    let o = core
        .relayed(Relayed::ToUser {
            user: n("bob"),
            frame: chat(8, "alice", "bob"),
            held: true,
            except: None,
        })
        .unwrap();
    assert!(matches!(o.event, Event::Relayed { requeued: 0, .. }));
    let o = core
        .relayed(Relayed::Undeliverable {
            user: n("bob"),
            message: chat(7, "alice", "bob").chat_message().unwrap().clone(),
        })
        .unwrap();
    assert!(matches!(o.event, Event::Relayed { requeued: 0, .. }));
    assert_eq!(
        core.snapshot().unwrap().structures.offline_messages[&n("bob")].len,
        1
    );
    assert_invariants(&core);
}

#[test]
fn a_relayed_presence_skips_its_user_and_devices_registered_after_the_change() {
    let mut core: ChatCore<MemoryStructures<Ordered>> =
        ChatCore::new(MemoryStructures::default(), CoreConfig::default());
    core.connect(&n("alice"), Ordered(1, 10)).unwrap();
    core.connect(&n("bob"), Ordered(2, 11)).unwrap();
    core.connect(&n("carol"), Ordered(3, 30)).unwrap();
    let o = core
        .relayed(Relayed::ToEveryone {
            about: n("bob"),
            frame: ServerFrame::Presence {
                user: n("bob"),
                status: crate::protocol::PresenceStatus::Online,
            },
            order: 20,
        })
        .unwrap();
    // alice registered before the change (10 < 20): told. bob: it is about
    // him. carol registered after it (30): her welcome already said so.
    let told: Vec<ConnId> = o.deliveries.iter().map(|d| d.conn.0).collect();
    assert_eq!(told, [1]);
}

#[test]
fn a_take_queue_flushes_to_the_local_devices_and_a_lost_node_is_a_no_op_in_memory() {
    let mut core = core();
    send(
        &mut core,
        "alice",
        9,
        json!({"type":"message","to":"bob","text":"q"}),
    );
    core.connect(&n("bob"), 1).unwrap();
    send(
        &mut core,
        "alice",
        9,
        json!({"type":"message","to":"bob","text":"late"}),
    );
    // The queue is empty (the flush took it, the second went live): nothing to do.
    let o = core.relayed(Relayed::TakeQueue { user: n("bob") }).unwrap();
    assert!(o.deliveries.is_empty());
    // A message queued while bob was online (its router looked before he
    // connected) is taken by his device here, as an offline message.
    let late = chat(50, "alice", "bob").chat_message().unwrap().clone();
    core.relayed(Relayed::Undeliverable {
        user: n("bob"),
        message: late,
    })
    .unwrap();
    let o = core.relayed(Relayed::TakeQueue { user: n("bob") }).unwrap();
    let got = frames(&o, 1);
    assert_eq!(got.len(), 1);
    assert_eq!(
        (got[0]["id"].clone(), got[0]["offline"].clone()),
        (json!(50), json!(true))
    );
    assert!(core
        .snapshot()
        .unwrap()
        .structures
        .offline_messages
        .is_empty());
    // One server has no other node to lose.
    let o = core.node_lost("b").unwrap();
    assert!(o.deliveries.is_empty());
    assert!(matches!(o.event, Event::NodeLost { ref offline, .. } if offline.is_empty()));
}

/// A device with a place in the cluster's order of presence changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ordered(ConnId, u64);

impl ConnHandle for Ordered {
    fn id(&self) -> ConnId {
        self.0
    }

    fn presence_order(&self) -> u64 {
        self.1
    }
}

#[test]
fn a_resuming_device_gets_only_held_relayed_messages_which_keep_their_order() {
    let mut core = window_core(100);
    core.connect(&n("bob"), v1(1)).unwrap();
    core.connect(&n("bob"), resuming(2, 0)).unwrap();
    // Routed before bob's second device resumed: not in his held order.
    let o = core
        .relayed(Relayed::ToUser {
            user: n("bob"),
            frame: chat(9, "alice", "bob"),
            held: false,
            except: None,
        })
        .unwrap();
    assert_eq!(
        o.deliveries.iter().map(|d| d.conn.id).collect::<Vec<_>>(),
        [1]
    );
    let o = core
        .relayed(Relayed::ToUser {
            user: n("bob"),
            frame: chat(10, "alice", "bob"),
            held: true,
            except: None,
        })
        .unwrap();
    assert_eq!(
        o.deliveries.iter().map(|d| d.conn.id).collect::<Vec<_>>(),
        [1, 2]
    );
}

/// What a sender is told for each of `n` direct messages to `to`.
fn acks_to(c: &mut WindowCore, from: &str, conn: Device, to: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| {
            let o = say(c, from, conn, json!({"type":"message","to":to,"text":"x"}));
            let reply = &json_for(&o, conn.id)[0];
            reply["status"]
                .as_str()
                .or(reply["code"].as_str())
                .unwrap()
                .to_string()
        })
        .collect()
}

#[test]
fn a_blocked_sender_meets_a_full_inbox_exactly_when_an_unblocked_one_would() {
    // Two worlds, the same but for bob's block of eve.
    let mut sequences = Vec::new();
    for block in [false, true] {
        let mut c = window_core(3);
        c.connect(&n("eve"), v1(1)).unwrap();
        if block {
            c.connect(&n("bob"), v1(2)).unwrap();
            say(&mut c, "bob", v1(2), json!({"type":"block","user":"eve"}));
            c.disconnect(&n("bob"), 2, Vec::new()).unwrap();
        }
        // Offline bob: queued up to --max-offline, then inbox_full.
        let mut seen = acks_to(&mut c, "eve", v1(1), "bob", 5);
        // bob's v1 connect flushes his deque; then he is offline again.
        c.connect(&n("bob"), v1(3)).unwrap();
        c.disconnect(&n("bob"), 3, Vec::new()).unwrap();
        seen.extend(acks_to(&mut c, "eve", v1(1), "bob", 4));
        // A resuming bob who never confirms: delivered while his window has
        // room, then inbox_full; confirming everything empties it.
        c.connect(&n("bob"), resuming(4, 0)).unwrap();
        let o = say(
            &mut c,
            "bob",
            resuming(4, 0),
            json!({"type":"received","id":1000}),
        );
        assert!(matches!(o.event, Event::Received { .. }));
        seen.extend(acks_to(&mut c, "eve", v1(1), "bob", 4));
        say(
            &mut c,
            "bob",
            resuming(4, 0),
            json!({"type":"received","id":1000}),
        );
        seen.extend(acks_to(&mut c, "eve", v1(1), "bob", 1));
        // A group with bob alone besides eve, bob offline: his copy is
        // queued until his deque is full, then the message is only `sent`.
        c.disconnect(&n("bob"), 4, Vec::new()).unwrap();
        for (user, conn) in [("eve", v1(1)), ("bob", v1(5))] {
            c.connect(&n(user), conn).unwrap();
            say(&mut c, user, conn, json!({"type":"group_join","group":"g"}));
        }
        c.disconnect(&n("bob"), 5, Vec::new()).unwrap();
        for _ in 0..5 {
            let o = say(
                &mut c,
                "eve",
                v1(1),
                json!({"type":"group_message","group":"g","text":"y"}),
            );
            seen.push(json_for(&o, 1)[0]["status"].as_str().unwrap().to_string());
        }
        sequences.push(seen);
    }
    assert_eq!(sequences[0], sequences[1], "the block shows at the limits");
    // And the sequence is the one the limits make (so both are not merely equal).
    let expected: Vec<&str> = [
        vec!["queued"; 3],
        vec!["inbox_full"; 2],
        vec!["queued"; 3],
        vec!["inbox_full"; 1],
        vec!["delivered"; 3],
        vec!["inbox_full"; 1],
        vec!["delivered"; 1],
        vec!["queued"; 3],
        vec!["sent"; 2],
    ]
    .concat();
    assert_eq!(sequences[0], expected);
}

#[test]
fn a_blocked_sender_meets_the_memory_budget_exactly_when_an_unblocked_one_would() {
    let text = "x".repeat(1000);
    let cost = queued_cost(1000);
    let mut sequences = Vec::new();
    for block in [false, true] {
        let mut c = core_with_budget(100 * cost, 4 * cost);
        c.connect(&n("eve"), 1).unwrap();
        c.connect(&n("bob"), 2).unwrap();
        if block {
            send(&mut c, "bob", 2, json!({"type":"block","user":"eve"}));
        }
        c.disconnect(&n("bob"), 2, Vec::new()).unwrap();
        let seen: Vec<String> = (0..6)
            .map(|_| {
                let o = send(
                    &mut c,
                    "eve",
                    1,
                    json!({"type":"message","to":"bob","text":text}),
                );
                let f = &frames(&o, 1)[0];
                f["status"]
                    .as_str()
                    .or(f["code"].as_str())
                    .unwrap()
                    .to_string()
            })
            .collect();
        sequences.push(seen);
    }
    assert_eq!(sequences[0], sequences[1], "the block shows at the budget");
    assert_eq!(sequences[0][..4], ["queued"; 4]);
    assert!(
        sequences[0][4..].iter().all(|s| s == "inbox_full"),
        "{:?}",
        sequences[0]
    );
}

/// A device for the batched-presence tests: an id, and whether it asked for
/// `?presence=batched`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Watcher {
    id: ConnId,
    batched: bool,
}

impl ConnHandle for Watcher {
    fn id(&self) -> ConnId {
        self.id
    }
    fn presence_batched(&self) -> bool {
        self.batched
    }
}

type WatchCore = ChatCore<MemoryStructures<Watcher>>;

#[test]
fn an_arrival_and_departure_within_one_tick_reach_nobody_batched() {
    let mut core: WatchCore = ChatCore::new(MemoryStructures::default(), CoreConfig::default());
    let bob = Watcher {
        id: 1,
        batched: true,
    };
    core.connect(&n("bob"), bob).unwrap();
    assert!(core.presence_tick().is_some(), "bob's own arrival");
    let alice = Watcher {
        id: 2,
        batched: true,
    };
    let arrived = core.connect(&n("alice"), alice).unwrap();
    assert_eq!(
        arrived.frames_for(1).len(),
        0,
        "no frame per change for bob"
    );
    core.disconnect(&n("alice"), 2, vec![]).unwrap();
    assert!(core.presence_tick().is_none(), "nobody hears of alice");
    // A v1 connection still gets v1's frame per change, and no diff.
    let carol = Watcher {
        id: 3,
        batched: false,
    };
    core.connect(&n("carol"), carol).unwrap();
    let dave = core
        .connect(
            &n("dave"),
            Watcher {
                id: 4,
                batched: true,
            },
        )
        .unwrap();
    let carols = dave.frames_for(3);
    assert_eq!(carols.len(), 1);
    assert!(matches!(carols[0], ServerFrame::Presence { .. }));
    let tick = core.presence_tick().expect("carol and dave arrived");
    assert_eq!(tick.frames_for(3).len(), 0, "carol is v1");
    assert_eq!(
        tick.frames_for(1)[0].to_json(),
        r#"{"type":"presence_diff","online":["carol","dave"],"offline":[]}"#
    );
    assert_eq!(
        tick.frames_for(4).len(),
        1,
        "one frame for every batched connection"
    );
    assert_eq!(tick.frames.len(), 1, "built once");
}

mod batched_model {
    use std::collections::{BTreeMap, BTreeSet};

    use proptest::prelude::*;

    use super::*;
    use crate::protocol::PresenceStatus;

    #[derive(Debug, Clone)]
    enum Step {
        Connect { user: u8, batched: bool },
        Close(usize),
        Tick,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            3 => (0u8..5, any::<bool>()).prop_map(|(user, batched)| Step::Connect { user, batched }),
            2 => (0usize..16).prop_map(Step::Close),
            1 => Just(Step::Tick),
        ]
    }

    struct Client {
        user: UserId,
        batched: bool,
        view: BTreeSet<UserId>,
    }

    fn apply(clients: &mut BTreeMap<ConnId, Client>, outcome: &Outcome<Watcher>) {
        for (conn, frame) in outcome.sends() {
            let Some(client) = clients.get_mut(&conn.id) else {
                continue;
            };
            match frame {
                ServerFrame::Welcome {
                    online, batched, ..
                } => {
                    assert_eq!(*batched, client.batched, "the welcome says which");
                    client.view = online.iter().cloned().collect();
                }
                ServerFrame::Presence { user, status } => {
                    assert!(!client.batched, "a batched client got a v1 presence frame");
                    match status {
                        PresenceStatus::Online => client.view.insert(user.clone()),
                        PresenceStatus::Offline => client.view.remove(user),
                    };
                }
                ServerFrame::PresenceDiff { online, offline } => {
                    assert!(client.batched, "a v1 client got a presence_diff");
                    client.view.extend(online.iter().cloned());
                    for user in offline {
                        client.view.remove(user);
                    }
                }
                _ => {}
            }
        }
    }

    /// What `client` should see: everyone online but itself.
    fn truth(core: &WatchCore, client: &Client) -> BTreeSet<UserId> {
        let online = core.snapshot().unwrap().structures.presence;
        online.into_iter().filter(|u| *u != client.user).collect()
    }

    fn seen(client: &Client) -> BTreeSet<UserId> {
        client
            .view
            .iter()
            .filter(|u| **u != client.user)
            .cloned()
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// For any interleaving of connects and closes within ticks: a v1
        /// client's view is exact after every input, and a batched client's
        /// (its welcome, then its diffs) is exact at every tick.
        #[test]
        fn batched_clients_see_the_true_online_set_at_every_tick(steps in prop::collection::vec(step(), 1..60)) {
            let mut core: WatchCore = ChatCore::new(MemoryStructures::default(), CoreConfig::default());
            let mut clients: BTreeMap<ConnId, Client> = BTreeMap::new();
            let mut next = 1;
            for step in steps {
                match step {
                    Step::Connect { user, batched } => {
                        let user = n(&format!("u{user}"));
                        let id = next;
                        next += 1;
                        clients.insert(id, Client { user: user.clone(), batched, view: BTreeSet::new() });
                        let outcome = core.connect(&user, Watcher { id, batched }).unwrap();
                        apply(&mut clients, &outcome);
                    }
                    Step::Close(pick) => {
                        let Some(&id) = clients.keys().nth(pick % clients.len().max(1)) else { continue };
                        let client = clients.remove(&id).unwrap();
                        let outcome = core.disconnect(&client.user, id, vec![]).unwrap();
                        apply(&mut clients, &outcome);
                    }
                    Step::Tick => {
                        if let Some(outcome) = core.presence_tick() {
                            apply(&mut clients, &outcome);
                        }
                        for client in clients.values().filter(|c| c.batched) {
                            prop_assert_eq!(seen(client), truth(&core, client), "batched {} at a tick", client.user);
                        }
                    }
                }
                for client in clients.values().filter(|c| !c.batched) {
                    prop_assert_eq!(seen(client), truth(&core, client), "v1 {}", client.user);
                }
            }
        }
    }
}
