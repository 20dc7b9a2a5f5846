//! The wire contract (docs/protocol.md), line by line, against a real server
//! on a free loopback port with real WebSocket clients.

mod common;

use common::{http_get, Seen, TestServer};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;
use vivachat::core::CoreConfig;
use vivachat::server::{Config, NetLimits};

#[tokio::test]
async fn welcome_then_presence_to_others_on_first_connection_only() {
    let server = TestServer::start().await;
    let mut carol = server.connect("carol").await;
    assert_eq!(
        carol.welcome,
        json!({"type":"welcome","user":"carol","online":[],"queued":0})
    );
    let mut alice = server.connect("alice").await;
    assert_eq!(alice.welcome["online"], json!(["carol"]));
    assert_eq!(
        carol.recv().await,
        json!({"type":"presence","user":"alice","status":"online"})
    );

    // bob's first device: both others are told; his welcome lists them sorted.
    let mut bob1 = server.connect("bob").await;
    assert_eq!(
        bob1.welcome,
        json!({"type":"welcome","user":"bob","online":["alice","carol"],"queued":0})
    );
    let online = json!({"type":"presence","user":"bob","status":"online"});
    assert_eq!(alice.recv().await, online);
    assert_eq!(carol.recv().await, online);

    // bob's second device: welcome lists others only, and nobody is told again.
    let bob2 = server.connect("bob").await;
    assert_eq!(bob2.welcome["online"], json!(["alice", "carol"]));
    alice.assert_nothing_pending().await;
    bob1.assert_nothing_pending().await;

    // Closing one of two devices: silence. Closing the last: offline.
    bob2.close().await;
    alice.assert_nothing_pending().await;
    bob1.close().await;
    let offline = json!({"type":"presence","user":"bob","status":"offline"});
    assert_eq!(alice.recv().await, offline);
    assert_eq!(carol.recv().await, offline);
    server.stop().await;
}

#[tokio::test]
async fn direct_message_live_with_ack_ids_and_ref_types() {
    let server = TestServer::start().await;
    let mut alice = server.connect("alice").await;
    let mut bob = server.connect("bob").await;
    alice.recv().await; // bob online

    let ack = alice
        .request(json!({"type":"message","to":"bob","text":"hi","ref":"r-1"}))
        .await;
    assert_eq!(ack["type"], "ack");
    assert_eq!(ack["ref"], "r-1");
    assert_eq!(ack["status"], "delivered");
    let id = ack["id"].as_u64().expect("ack carries the id");
    let got = bob.recv().await;
    assert_eq!(got["type"], "message");
    assert_eq!(got["id"], id);
    assert_eq!(
        (
            got["from"].as_str(),
            got["to"].as_str(),
            got["text"].as_str()
        ),
        (Some("alice"), Some("bob"), Some("hi"))
    );
    assert!(
        got.get("offline").is_none(),
        "live messages carry no offline key: {got}"
    );
    let ts = got["ts"].as_u64().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(now.abs_diff(ts) < 60_000, "ts is unix milliseconds: {ts}");
    assert_eq!(
        got.as_object().unwrap().len(),
        6,
        "exactly type,id,from,to,text,ts: {got}"
    );

    // ref keeps its JSON type; absent when not sent.
    let ack = alice
        .request(json!({"type":"message","to":"bob","text":"2","ref":42}))
        .await;
    assert_eq!(ack["ref"], json!(42));
    assert!(ack["id"].as_u64().unwrap() > id, "ids increase");
    let ack = alice
        .request(json!({"type":"message","to":"bob","text":"3"}))
        .await;
    assert!(ack.get("ref").is_none(), "{ack}");
    let ack = alice
        .request(json!({"type":"block","user":"zed","ref":1.5}))
        .await;
    assert_eq!(ack, json!({"type":"ack","ref":1.5,"status":"ok"}));
    server.stop().await;
}

#[tokio::test]
async fn multi_device_fan_out_and_acks_only_to_the_sending_connection() {
    let server = TestServer::start().await;
    let mut bob1 = server.connect("bob").await;
    let mut bob2 = server.connect("bob").await;
    let mut alice1 = server.connect("alice").await;
    let mut alice2 = server.connect("alice").await;
    bob1.recv().await;
    bob2.recv().await; // alice online

    let ack = alice1
        .request(json!({"type":"message","to":"bob","text":"both"}))
        .await;
    assert_eq!(ack["status"], "delivered");
    assert_eq!(bob1.recv().await["text"], "both");
    assert_eq!(bob2.recv().await["text"], "both");
    alice2.assert_nothing_pending().await; // no ack, no copy on the other device
    server.stop().await;
}

#[tokio::test]
async fn offline_messages_flush_in_order_after_welcome_exactly_once() {
    let server = TestServer::start().await;
    let mut alice = server.connect("alice").await;
    let mut ids = vec![];
    for i in 0..5 {
        let ack = alice
            .request(json!({"type":"message","to":"bob","text":format!("m{i}")}))
            .await;
        assert_eq!(ack["status"], "queued");
        ids.push(ack["id"].clone());
    }
    let state = server.inspect().await;
    assert_eq!(state["offline_messages"]["bob"]["len"], 5);

    let mut bob = server.connect("bob").await;
    assert_eq!(bob.welcome["queued"], 5);
    assert_eq!(bob.welcome["online"], json!(["alice"]));
    for (i, id) in ids.iter().enumerate() {
        let m = bob.recv().await;
        assert_eq!(m["type"], "message");
        assert_eq!(m["id"], *id);
        assert_eq!(m["text"], format!("m{i}"));
        assert_eq!(m["offline"], true);
    }
    bob.assert_nothing_pending().await;
    assert!(server.inspect().await["offline_messages"]
        .as_object()
        .unwrap()
        .is_empty());

    // Reconnecting brings nothing twice.
    bob.close().await;
    let again = server.connect("bob").await;
    assert_eq!(again.welcome["queued"], 0);
    server.stop().await;
}

/// The sender's crash is not the message's: once the core answered, what it
/// decided stands, whatever happens to the connection that asked.
#[tokio::test]
async fn a_sender_that_crashes_after_its_acks_changes_nothing_they_promised() {
    let server = TestServer::start().await;
    let mut carol = server.connect("carol").await;
    let mut alice = server.connect("alice").await;
    carol.recv().await; // alice online
    let queued = alice
        .request(json!({"type":"message","to":"bob","text":"for later"}))
        .await;
    assert_eq!(queued["status"], "queued");
    let delivered = alice
        .request(json!({"type":"message","to":"carol","text":"for now"}))
        .await;
    assert_eq!(delivered["status"], "delivered");
    // No close frame, no FIN handshake from the client's side: a crash.
    drop(alice);
    let live = carol.recv_skipping_presence().await;
    assert_eq!(
        (live["id"].clone(), live["text"].clone()),
        (delivered["id"].clone(), json!("for now"))
    );
    let mut bob = server.connect("bob").await;
    assert_eq!(bob.welcome["queued"], 1);
    let later = bob.recv_skipping_presence().await;
    assert_eq!(
        (later["id"].clone(), later["text"].clone()),
        (queued["id"].clone(), json!("for later"))
    );
    server.stop().await;
}

#[tokio::test]
async fn a_name_that_never_connected_can_be_sent_to() {
    let server = TestServer::start().await;
    let mut alice = server.connect("alice").await;
    let ack = alice
        .request(json!({"type":"message","to":"nobody-yet","text":"hello"}))
        .await;
    assert_eq!(ack["status"], "queued");
    server.stop().await;
}

#[tokio::test]
async fn presence_ordering_delivered_after_online_queued_after_offline() {
    let server = TestServer::start().await;
    let mut alice = server.connect("alice").await;
    let bob = server.connect("bob").await;
    assert_eq!(alice.recv().await["status"], "online");
    assert_eq!(
        alice
            .request(json!({"type":"message","to":"bob","text":"x"}))
            .await["status"],
        "delivered"
    );
    bob.close().await;
    assert_eq!(alice.recv().await["status"], "offline");
    assert_eq!(
        alice
            .request(json!({"type":"message","to":"bob","text":"y"}))
            .await["status"],
        "queued"
    );
    server.stop().await;
}

#[tokio::test]
async fn groups_join_leave_fan_out_and_offline_members() {
    let server = TestServer::start().await;
    let mut alice1 = server.connect("alice").await;
    let mut alice2 = server.connect("alice").await;
    let mut bob = server.connect("bob").await;
    let dave = server.connect("dave").await;
    for c in [&mut alice1, &mut alice2] {
        c.recv().await;
        c.recv().await;
    }
    bob.recv().await;

    assert_eq!(
        alice1
            .request(json!({"type":"group_join","group":"g1","ref":"j"}))
            .await,
        json!({"type":"ack","ref":"j","status":"ok"})
    );
    assert_eq!(
        alice1
            .request(json!({"type":"group_join","group":"g1"}))
            .await,
        json!({"type":"ack","status":"ok"}),
        "joining twice is harmless"
    );
    assert_eq!(
        bob.request(json!({"type":"group_join","group":"g1"})).await["status"],
        "ok"
    );
    let mut dave = dave;
    assert_eq!(
        dave.request(json!({"type":"group_join","group":"g1"}))
            .await["status"],
        "ok"
    );
    assert_eq!(
        server.inspect().await["groups"]["g1"],
        json!(["alice", "bob", "dave"])
    );
    dave.close().await;
    for c in [&mut alice1, &mut alice2, &mut bob] {
        assert_eq!(c.recv().await["status"], "offline");
    }

    let ack = alice1
        .request(json!({"type":"group_message","group":"g1","text":"hey","ref":7}))
        .await;
    assert_eq!(ack["status"], "delivered");
    assert_eq!(ack["ref"], 7);
    let id = ack["id"].clone();
    let expected = |v: &Value| {
        assert_eq!(v["type"], "group_message");
        assert_eq!(
            (v["group"].as_str(), v["from"].as_str(), v["text"].as_str()),
            (Some("g1"), Some("alice"), Some("hey"))
        );
        assert_eq!(v["id"], id);
        assert!(v["ts"].is_u64());
    };
    expected(&bob.recv().await);
    expected(&alice2.recv().await); // the sender's other device
    alice1.assert_nothing_pending().await; // not the sending connection

    // dave was offline: it was queued and arrives flagged on connect.
    let mut dave = server.connect("dave").await;
    for c in [&mut alice1, &mut alice2, &mut bob] {
        assert_eq!(c.recv().await["status"], "online");
    }
    assert_eq!(dave.welcome["queued"], 1);
    let flushed = dave.recv().await;
    expected(&flushed);
    assert_eq!(flushed["offline"], true);

    // Leaving: ok, even twice; the last one out removes the group.
    assert_eq!(
        dave.request(json!({"type":"group_leave","group":"g1"}))
            .await["status"],
        "ok"
    );
    assert_eq!(
        dave.request(json!({"type":"group_leave","group":"g1"}))
            .await["status"],
        "ok"
    );
    let err = dave
        .request(json!({"type":"group_message","group":"g1","text":"x","ref":"n"}))
        .await;
    assert_eq!(err["type"], "error");
    assert_eq!(err["code"], "not_member");
    assert_eq!(err["ref"], "n");
    assert!(err["detail"].as_str().unwrap().len() > 5);
    alice1
        .request(json!({"type":"group_leave","group":"g1"}))
        .await;
    bob.request(json!({"type":"group_leave","group":"g1"}))
        .await;
    assert!(
        server.inspect().await["groups"]
            .as_object()
            .unwrap()
            .is_empty(),
        "empty groups are removed"
    );
    let err = bob
        .request(json!({"type":"group_message","group":"g1","text":"x"}))
        .await;
    assert_eq!(err["code"], "not_member", "a group that does not exist");
    server.stop().await;
}

#[tokio::test]
async fn group_ack_statuses() {
    let server = TestServer::start().await;
    let mut alice = server.connect("alice").await;
    alice
        .request(json!({"type":"group_join","group":"g"}))
        .await;
    assert_eq!(
        alice
            .request(json!({"type":"group_message","group":"g","text":"x"}))
            .await["status"],
        "sent"
    );
    let mut bob = server.connect("bob").await;
    alice.recv().await;
    bob.request(json!({"type":"group_join","group":"g"})).await;
    bob.close().await;
    alice.recv().await;
    assert_eq!(
        alice
            .request(json!({"type":"group_message","group":"g","text":"x"}))
            .await["status"],
        "queued"
    );
    let _alice2 = server.connect("alice").await;
    assert_eq!(
        alice
            .request(json!({"type":"group_message","group":"g","text":"x"}))
            .await["status"],
        "delivered"
    );
    server.stop().await;
}

#[tokio::test]
async fn blocking_hides_everything_from_the_blocker_until_unblocked() {
    let server = TestServer::start_with(Config {
        core: CoreConfig {
            max_offline: 1,
            ..CoreConfig::default()
        },
        ..Config::default()
    })
    .await;
    let mut alice = server.connect("alice").await;
    let mut bob = server.connect("bob").await;
    alice.recv().await;
    assert_eq!(
        bob.request(json!({"type":"block","user":"alice","ref":"b"}))
            .await,
        json!({"type":"ack","ref":"b","status":"ok"})
    );
    assert_eq!(server.inspect().await["blocked"]["bob"], json!(["alice"]));

    // v1.1: the sender is told exactly what she would be told unblocked.
    // Live direct: `delivered`, and nothing reaches bob.
    let ack = alice
        .request(json!({"type":"message","to":"bob","text":"1"}))
        .await;
    assert_eq!(ack["status"], "delivered");
    assert!(ack["id"].is_u64());
    bob.assert_nothing_pending().await;

    // Group fan-out: skipped, and still `delivered`.
    for c in [&mut alice, &mut bob] {
        c.request(json!({"type":"group_join","group":"g"})).await;
    }
    assert_eq!(
        alice
            .request(json!({"type":"group_message","group":"g","text":"2"}))
            .await["status"],
        "delivered"
    );
    bob.assert_nothing_pending().await;

    // Offline: `queued` but not stored; a full inbox is `inbox_full`, as for anyone.
    bob.close().await;
    alice.recv().await;
    assert_eq!(
        alice
            .request(json!({"type":"message","to":"bob","text":"2b"}))
            .await["status"],
        "queued"
    );
    assert_eq!(
        server.inspect().await["offline_messages"],
        json!({}),
        "nothing stored"
    );
    let mut carol = server.connect("carol").await;
    assert_eq!(alice.recv().await["user"], "carol");
    assert_eq!(
        carol
            .request(json!({"type":"message","to":"bob","text":"fills the inbox"}))
            .await["status"],
        "queued"
    );
    assert_eq!(
        alice
            .request(json!({"type":"message","to":"bob","text":"3"}))
            .await["code"],
        "inbox_full"
    );
    // The group copy for a full inbox is skipped for everyone: nobody else, `sent`.
    assert_eq!(
        alice
            .request(json!({"type":"group_message","group":"g","text":"4"}))
            .await["status"],
        "sent"
    );
    let mut bob = server.connect("bob").await;
    assert_eq!(bob.welcome["queued"], 1);
    assert_eq!(bob.recv().await["from"], "carol");

    // Presence is not filtered by blocks.
    assert_eq!(
        alice.recv().await,
        json!({"type":"presence","user":"bob","status":"online"})
    );

    assert_eq!(
        bob.request(json!({"type":"unblock","user":"alice"})).await["status"],
        "ok"
    );
    assert_eq!(
        alice
            .request(json!({"type":"message","to":"bob","text":"5"}))
            .await["status"],
        "delivered"
    );
    assert_eq!(bob.recv_skipping_presence().await["text"], "5");
    assert!(server.inspect().await["blocked"]
        .as_object()
        .unwrap()
        .is_empty());
    server.stop().await;
}

#[tokio::test]
async fn who_and_ping() {
    let server = TestServer::start().await;
    let mut zed = server.connect("zed").await;
    let _amy = server.connect("amy").await;
    zed.recv().await;
    assert_eq!(
        zed.request(json!({"type":"who"})).await,
        json!({"type":"who","online":["amy","zed"]})
    );
    assert_eq!(
        zed.request(json!({"type":"ping"})).await,
        json!({"type":"pong"})
    );
    // Exactly the contract's shapes, even when the request carried a ref.
    assert_eq!(
        zed.request(json!({"type":"who","ref":"w1"})).await,
        json!({"type":"who","online":["amy","zed"]})
    );
    assert_eq!(
        zed.request(json!({"type":"ping","ref":7})).await,
        json!({"type":"pong"})
    );
    server.stop().await;
}

#[tokio::test]
async fn every_error_code_that_can_be_provoked_and_the_connection_stays_usable() {
    let server = TestServer::start_with(Config {
        core: CoreConfig {
            max_offline: 1,
            ..CoreConfig::default()
        },
        ..Config::default()
    })
    .await;
    let mut c = server.connect("alice").await;
    let before = server.inspect().await;

    let bad_json = [
        "",
        "not json",
        "[1,2]",
        "42",
        "\"str\"",
        "null",
        "{\"type\":",
        "{\"ref\":1",
    ];
    for text in bad_json {
        c.send_text(text).await;
        let e = c.recv().await;
        assert_eq!(e["type"], "error", "{text:?}");
        assert_eq!(e["code"], "bad_json", "{text:?}");
        assert!(e.get("ref").is_none(), "bad_json carries no ref: {e}");
        assert!(!e["detail"].as_str().unwrap().is_empty());
    }
    c.send_message(Message::binary(b"{\"type\":\"ping\"}".to_vec()))
        .await;
    assert_eq!(
        c.recv().await["code"],
        "bad_json",
        "binary frames are refused"
    );

    let cases: Vec<(Value, &str)> = vec![
        (json!({"ref":1}), "missing_field"),
        (json!({"type":5,"ref":1}), "missing_field"),
        (json!({"type":null,"ref":1}), "missing_field"),
        (json!({"type":"","ref":1}), "unknown_type"),
        (json!({"type":"Ping","ref":1}), "unknown_type"),
        (json!({"type":"dance","ref":1}), "unknown_type"),
        (
            json!({"type":"message","text":"x","ref":1}),
            "missing_field",
        ),
        (
            json!({"type":"message","to":5,"text":"x","ref":1}),
            "missing_field",
        ),
        (
            json!({"type":"message","to":"bob","text":null,"ref":1}),
            "missing_field",
        ),
        (
            json!({"type":"message","to":"bob","text":["x"],"ref":1}),
            "missing_field",
        ),
        (
            json!({"type":"message","to":"b b","ref":1}),
            "missing_field",
        ),
        (
            json!({"type":"message","to":"b b","text":"x","ref":1}),
            "invalid_user",
        ),
        (
            json!({"type":"message","to":"","text":"x","ref":1}),
            "invalid_user",
        ),
        (
            json!({"type":"message","to":"a".repeat(33),"text":"x","ref":1}),
            "invalid_user",
        ),
        (
            json!({"type":"block","user":"no/slash","ref":1}),
            "invalid_user",
        ),
        (json!({"type":"unblock","ref":1}), "missing_field"),
        (
            json!({"type":"group_join","group":"#g","ref":1}),
            "invalid_group",
        ),
        (
            json!({"type":"group_leave","group":"","ref":1}),
            "invalid_group",
        ),
        (
            json!({"type":"group_join","group":7,"ref":1}),
            "missing_field",
        ),
        (
            json!({"type":"group_message","group":"bad name","ref":1}),
            "missing_field",
        ),
        (
            json!({"type":"group_message","group":"bad name","text":"x","ref":1}),
            "invalid_group",
        ),
        (
            json!({"type":"group_message","group":"g","text":"x","ref":1}),
            "not_member",
        ),
    ];
    for (request, code) in cases {
        let e = c.request(request.clone()).await;
        assert_eq!(e["type"], "error", "{request}");
        assert_eq!(e["code"], code, "{request} -> {e}");
        assert_eq!(e["ref"], 1, "{request}");
    }
    // Every malformed frame changed nothing.
    let after = server.inspect().await;
    for key in [
        "active_connections",
        "presence",
        "offline_messages",
        "groups",
        "blocked",
        "next_message_id",
    ] {
        assert_eq!(before[key], after[key], "{key} changed");
    }

    // inbox_full: the message is not stored and the sender is told.
    assert_eq!(
        c.request(json!({"type":"message","to":"bob","text":"1"}))
            .await["status"],
        "queued"
    );
    let e = c
        .request(json!({"type":"message","to":"bob","text":"2","ref":"full"}))
        .await;
    assert_eq!(
        (e["code"].as_str(), e["ref"].as_str()),
        (Some("inbox_full"), Some("full"))
    );
    assert_eq!(server.inspect().await["offline_messages"]["bob"]["len"], 1);

    // Still usable after all of that.
    assert_eq!(
        c.request(json!({"type":"ping"})).await,
        json!({"type":"pong"})
    );
    server.stop().await;
}

#[tokio::test]
async fn size_limit_exactly_accepted_one_more_byte_too_large_then_1009() {
    let limit = 1000;
    let server = TestServer::start_with(Config {
        net: NetLimits {
            max_message_bytes: limit,
            ..NetLimits::default()
        },
        ..Config::default()
    })
    .await;
    let mut c = server.connect("alice").await;
    let frame_of_len = |n: usize| {
        let base = json!({"type":"message","to":"bob","text":""}).to_string();
        let text = "x".repeat(n - base.len());
        let s = json!({"type":"message","to":"bob","text":text}).to_string();
        assert_eq!(s.len(), n);
        s
    };
    c.send_text(&frame_of_len(limit)).await;
    assert_eq!(
        c.recv().await["status"],
        "queued",
        "exactly the limit is accepted"
    );
    c.send_text(&frame_of_len(limit + 1)).await;
    let e = c.recv().await;
    assert_eq!(e["code"], "too_large");
    match c.next_seen().await {
        Seen::Close(Some(f)) => assert_eq!(u16::from(f.code), 1009),
        other => panic!("expected close 1009, got {other:?}"),
    }
    // The oversized message was not stored, and the connection is gone from the state.
    let state = server
        .wait_for_state("alice offline", |s| s["presence"] == json!([]))
        .await;
    assert_eq!(state["offline_messages"]["bob"]["len"], 1);

    // Far over the limit (past tungstenite's own cap): still too_large, then 1009.
    let mut c = server.connect("alice").await;
    // The hard cap is max(2 x limit, limit + 64 KiB); 200 kB is past it.
    c.send_text(&"y".repeat(200_000)).await;
    assert_eq!(c.recv().await["code"], "too_large");
    // tungstenite stops reading at the frame header, so the unread rest of the
    // frame may turn the close into a TCP reset: either ending is within the contract.
    match c.next_seen().await {
        Seen::Close(Some(f)) => assert_eq!(u16::from(f.code), 1009),
        Seen::Ended => {}
        other => panic!("expected the connection to end, got {other:?}"),
    }
    server
        .wait_for_state("alice offline", |s| s["presence"] == json!([]))
        .await;
    server.stop().await;
}

#[tokio::test]
async fn a_ref_comes_back_byte_for_byte_however_big() {
    let server = TestServer::start().await;
    let mut c = server.connect("alice").await;
    for raw in [
        "123456789012345678901234567890123456789",
        "-0.10",
        r#""\u00e9t\u00e9""#,
        r#"{"k": [1, 2.0]}"#,
    ] {
        c.send_text(&format!(
            r#"{{"type":"group_join","group":"g","ref":{raw}}}"#
        ))
        .await;
        let text = c.recv_raw().await;
        assert_eq!(
            text,
            format!(r#"{{"type":"ack","ref":{raw},"status":"ok"}}"#)
        );
        c.send_text(&format!(r#"{{"type":"dance","ref":{raw}}}"#))
            .await;
        let text = c.recv_raw().await;
        assert!(text.ends_with(&format!(r#","ref":{raw}}}"#)), "{text}");
    }
    server.stop().await;
}

/// RFC 6455 §8.1: a text frame that is not UTF-8 fails the connection with
/// 1007. The server says why first (`bad_json`), and nothing else is lost: a
/// message queued for the user before stays queued.
#[tokio::test]
async fn invalid_utf8_in_a_text_frame_is_bad_json_then_close_1007() {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    let server = TestServer::start().await;
    let mut c = server.connect("alice").await;
    let raw = b"{\"type\":\"ping\",\"x\":\"\xff\xfe\"}".to_vec();
    c.send_message(Message::Frame(Frame::message(
        raw,
        OpCode::Data(Data::Text),
        true,
    )))
    .await;
    let e = c.recv().await;
    assert_eq!(e["code"], "bad_json", "{e}");
    assert!(e["detail"].as_str().unwrap().contains("UTF-8"), "{e}");
    match c.next_seen().await {
        Seen::Close(Some(f)) => assert_eq!(u16::from(f.code), 1007),
        other => panic!("expected close 1007, got {other:?}"),
    }
    server
        .wait_for_state("alice offline", |s| s["presence"] == json!([]))
        .await;
    // The server goes on: a new connection works.
    let mut c = server.connect("alice").await;
    assert_eq!(
        c.request(json!({"type":"ping"})).await,
        json!({"type":"pong"})
    );
    server.stop().await;
}

#[tokio::test]
async fn bad_names_are_refused_at_the_upgrade_and_change_nothing() {
    let server = TestServer::start().await;
    for path in [
        "/ws/",
        "/ws",
        "/ws/a%20b",
        "/ws/a%2Fb",
        "/ws/%23g1",
        "/ws/a/b",
        &format!("/ws/{}", "x".repeat(33)),
        "/ws/%C3%A9",
    ] {
        assert_eq!(server.refused_status(path).await, 400, "{path}");
    }
    let state = server.inspect().await;
    assert_eq!(state["presence"], json!([]));
    assert!(state["active_connections"].as_object().unwrap().is_empty());
    assert_eq!(state["ops"]["active_connections"]["insert"], 0);

    // Percent-encoded valid names are decoded first: al%69ce is alice.
    let mut c = server.connect_raw("/ws/al%69ce").await.unwrap();
    assert_eq!(c.recv().await["user"], "alice");
    // The longest valid name.
    let long = "L".repeat(32);
    let c2 = server.connect(&long).await;
    assert_eq!(c2.welcome["user"], long);
    server.stop().await;
}

#[tokio::test]
async fn healthz_inspect_and_unknown_routes() {
    let server = TestServer::start().await;
    assert_eq!(server.get("/healthz").await, (200, "ok".to_string()));
    let _c = server.connect("alice").await;
    let state = server.inspect().await;
    for key in [
        "active_connections",
        "presence",
        "offline_messages",
        "groups",
        "blocked",
        "ops",
        "invariants",
    ] {
        assert!(state.get(key).is_some(), "missing {key}: {state}");
    }
    assert_eq!(
        state["active_connections"]["alice"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(state["presence"], json!(["alice"]));
    assert_eq!(state["ops"]["presence"]["insert"], 1);
    assert!(state["invariants"]
        .as_array()
        .unwrap()
        .iter()
        .all(|i| i["holds"] == true));
    let (status, _) = http_get(server.addr, "/nope", &[]).await;
    assert_eq!(status, 404);
    server.stop().await;
}

#[tokio::test]
async fn ids_are_unique_and_increase_across_direct_and_group_messages() {
    let server = TestServer::start().await;
    let mut a = server.connect("a").await;
    a.request(json!({"type":"group_join","group":"g"})).await;
    let mut last = 0;
    for i in 0..20 {
        let req = if i % 2 == 0 {
            json!({"type":"message","to":"b","text":"x"})
        } else {
            json!({"type":"group_message","group":"g","text":"x"})
        };
        let id = a.request(req).await["id"].as_u64().unwrap();
        assert!(id > last, "{id} after {last}");
        last = id;
    }
    server.stop().await;
}

#[tokio::test]
async fn routing_cost_is_visible_in_the_op_counts() {
    let server = TestServer::start().await;
    let mut alice = server.connect("alice").await;
    let mut bob = server.connect("bob").await;
    alice.recv().await;
    let before = server.inspect().await["ops"].clone();
    for _ in 0..100 {
        alice
            .send(json!({"type":"message","to":"bob","text":"x"}))
            .await;
    }
    for _ in 0..100 {
        assert_eq!(alice.recv().await["status"], "delivered");
        bob.recv().await;
    }
    let after = server.inspect().await["ops"].clone();
    let delta =
        |s: &str, op: &str| after[s][op].as_u64().unwrap() - before[s][op].as_u64().unwrap();
    assert_eq!(delta("active_connections", "get"), 100);
    assert_eq!(delta("blocked_users", "contains"), 100);
    assert_eq!(delta("offline_messages", "push_back"), 0);
    server.stop().await;
}

#[tokio::test]
async fn graceful_shutdown_closes_clients_with_1001_and_reports_counts() {
    let server = TestServer::start().await;
    let mut alice = server.connect("alice").await;
    let mut bob = server.connect("bob").await;
    alice.recv().await;
    alice
        .request(json!({"type":"message","to":"bob","text":"x"}))
        .await;
    bob.recv().await;
    let report = server.stop().await;
    for c in [&mut alice, &mut bob] {
        // A cluster stops node by node: the second node's clients may first
        // hear that the first node's users went offline.
        let mut seen = c.next_seen().await;
        while matches!(&seen, Seen::Frame(f) if f["type"] == "presence") {
            seen = c.next_seen().await;
        }
        match seen {
            Seen::Close(Some(f)) => assert_eq!(u16::from(f.code), 1001),
            other => panic!("expected close 1001, got {other:?}"),
        }
    }
    assert_eq!(report.connections_served, 2);
    // One process's count; a cluster's nodes also look up their own sockets
    // for what they relay to each other (tests/cluster.rs counts those).
    if common::test_redis().is_none() {
        assert_eq!(
            report.ops.get(
                vivachat::core::Structure::ActiveConnections,
                vivachat::core::Op::Get
            ),
            1 + 1 + 1
        );
    }
}

#[tokio::test]
async fn websocket_level_pings_are_answered() {
    use futures_util::{SinkExt, StreamExt};
    let server = TestServer::start().await;
    let mut c = server.connect("alice").await;
    c.ws.send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .unwrap();
    let pong = tokio::time::timeout(common::WAIT, c.ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(pong, Message::Pong(b"are you there".to_vec().into()));
    assert_eq!(
        c.request(json!({"type":"ping"})).await,
        json!({"type":"pong"})
    );
    server.stop().await;
}

#[tokio::test]
async fn rate_limiting_is_off_by_default_and_answers_rate_limited_when_on() {
    // Off by default: 50 requests at once are all accepted.
    let server = TestServer::start().await;
    let mut c = server.connect("alice").await;
    for i in 0..50 {
        c.send(json!({"type":"message","to":"bob","text":"x","ref":i}))
            .await;
    }
    for _ in 0..50 {
        assert_eq!(c.recv().await["status"], "queued");
    }
    server.stop().await;

    // --rate-limit 5: a burst of 5, then `rate_limited` with the ref, nothing stored.
    let server = TestServer::start_with(Config {
        net: NetLimits {
            rate_limit: Some(5.0),
            ..NetLimits::default()
        },
        ..Config::default()
    })
    .await;
    let mut c = server.connect("alice").await;
    for i in 0..12 {
        c.send(json!({"type":"message","to":"bob","text":"x","ref":i}))
            .await;
    }
    let mut queued = 0;
    for i in 0..12 {
        let v = c.recv().await;
        if v["type"] == "ack" {
            queued += 1;
        } else {
            assert_eq!(v["code"], "rate_limited", "{v}");
            assert_eq!(v["ref"], i, "the ref comes back");
        }
    }
    assert!(
        (5..=6).contains(&queued),
        "{queued} accepted in the first burst"
    );
    assert_eq!(
        server.inspect().await["offline_messages"]["bob"]["len"],
        queued
    );
    // The connection stays usable, and the bucket refills.
    tokio::time::sleep(std::time::Duration::from_millis(450)).await;
    assert_eq!(
        c.request(json!({"type":"message","to":"bob","text":"later"}))
            .await["status"],
        "queued"
    );
    server.stop().await;
}

#[tokio::test]
async fn connection_limits_refuse_at_the_upgrade_and_free_slots_on_close() {
    // Slots are per process (per node in a cluster): one server, always.
    let server = TestServer::start_alone(Config {
        net: NetLimits {
            max_connections: 2,
            ..NetLimits::default()
        },
        ..Config::default()
    })
    .await;
    let a = server.connect("a").await;
    let _b = server.connect("b").await;
    assert_eq!(server.refused_status("/ws/c").await, 503);
    assert_eq!(
        server.inspect().await["presence"],
        json!(["a", "b"]),
        "the refusal changed nothing"
    );
    a.close().await;
    // The slot is free again once the connection has gone.
    let deadline = std::time::Instant::now() + common::WAIT;
    loop {
        if server.connect_raw("/ws/c").await.is_ok() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the slot was never freed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    server.stop().await;

    let server = TestServer::start_alone(Config {
        net: NetLimits {
            max_connections_per_ip: 1,
            ..NetLimits::default()
        },
        ..Config::default()
    })
    .await;
    let _a = server.connect("a").await;
    assert_eq!(server.refused_status("/ws/b").await, 429);
    server.stop().await;
}

/// Regression: on Redis the memory budget's total was cached by one check
/// and read by the next, so a group message's second offline member was
/// checked against the total from before the first member's copy. Room for
/// one queued copy in all: the first member gets it, the second does not.
#[tokio::test]
async fn a_group_message_checks_each_members_queue_against_the_budget_after_the_last_copy() {
    let text = "x".repeat(1000);
    let one_copy = vivachat::core::queued_cost(text.len());
    let server = TestServer::start_with(Config {
        core: CoreConfig {
            max_queued_bytes: one_copy + one_copy / 2,
            ..CoreConfig::default()
        },
        ..Config::default()
    })
    .await;
    for member in ["bob", "carol"] {
        let mut c = server.connect(member).await;
        c.request(json!({"type":"group_join","group":"lab"})).await;
        c.close().await;
    }
    server
        .wait_for_state("bob and carol offline", |s| s["presence"] == json!([]))
        .await;
    let mut alice = server.connect("alice").await;
    alice
        .request(json!({"type":"group_join","group":"lab"}))
        .await;
    let ack = alice
        .request(json!({"type":"group_message","group":"lab","text":text}))
        .await;
    assert_eq!(ack["status"], "queued", "{ack}");
    let state = server.inspect().await;
    let lens: Vec<u64> = ["bob", "carol"]
        .iter()
        .map(|u| state["offline_messages"][u]["len"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(
        lens.iter().sum::<u64>(),
        1,
        "one copy fits the budget: {state}"
    );
    assert!(
        state["server"]["memory"]["queued_bytes"].as_u64().unwrap()
            <= (one_copy + one_copy / 2) as u64,
        "{state}"
    );
    server.stop().await;
}

/// A batched client's online set: its welcome, then each diff applied as set operations.
async fn apply_diffs_until(
    client: &mut common::Client,
    view: &mut std::collections::BTreeSet<String>,
    done: impl Fn(&std::collections::BTreeSet<String>) -> bool,
) -> usize {
    let mut frames = 0;
    while !done(view) {
        let diff = client.recv().await;
        assert_eq!(
            diff["type"], "presence_diff",
            "a batched client gets only diffs: {diff}"
        );
        for user in diff["online"].as_array().unwrap() {
            view.insert(user.as_str().unwrap().to_string());
        }
        for user in diff["offline"].as_array().unwrap() {
            view.remove(user.as_str().unwrap());
        }
        frames += 1;
    }
    frames
}

#[tokio::test]
async fn batched_presence_sends_diffs_and_leaves_v1_frames_as_they_were() {
    let server = TestServer::start().await;
    let mut watcher = server.connect("watcher").await;
    let mut batched = server
        .connect_raw("/ws/obs?presence=batched")
        .await
        .unwrap();
    let welcome = batched.recv().await;
    assert_eq!(welcome["presence"], "batched", "{welcome}");
    assert_eq!(welcome["online"], json!(["watcher"]));
    let mut view: std::collections::BTreeSet<String> = ["watcher".to_string()].into();
    // A v1 client's welcome says nothing of v1.2, and it hears of obs as before.
    assert!(
        watcher.welcome.get("presence").is_none(),
        "{}",
        watcher.welcome
    );
    assert_eq!(
        watcher.recv().await,
        json!({"type":"presence","user":"obs","status":"online"})
    );
    let names = ["a1", "a2", "a3", "a4", "a5"];
    let mut class = Vec::new();
    for name in names {
        class.push(server.connect(name).await);
    }
    let everyone = |v: &std::collections::BTreeSet<String>| names.iter().all(|n| v.contains(*n));
    let frames = apply_diffs_until(&mut batched, &mut view, everyone).await;
    assert!(frames <= names.len(), "{frames} diffs for 5 arrivals");
    // v1: one frame per arrival, exactly as before; in order on one server.
    // On a cluster two users' changes are not ordered across nodes
    // (docs/protocol.md, "Order"): a node shows its own arrivals at once.
    let mut heard = Vec::new();
    for _ in names {
        let v = watcher.recv().await;
        assert_eq!(
            (&v["type"], &v["status"]),
            (&json!("presence"), &json!("online")),
            "{v}"
        );
        heard.push(v["user"].as_str().unwrap().to_string());
    }
    if server.second.is_some() {
        heard.sort_unstable();
    }
    assert_eq!(heard, names);
    for client in class.drain(..3) {
        client.close().await;
    }
    apply_diffs_until(&mut batched, &mut view, |v| {
        !v.contains("a1") && !v.contains("a3")
    })
    .await;
    view.remove("obs");
    assert_eq!(view, ["a4", "a5", "watcher"].map(String::from).into());
    // Any other mode is refused before the upgrade, in words.
    match server.connect_raw("/ws/x?presence=fast").await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 400);
            let body = String::from_utf8_lossy(response.body().as_deref().unwrap_or_default());
            assert!(body.contains("presence=batched"), "{body}");
        }
        other => panic!("expected a 400, got {:?}", other.map(|_| "an upgrade")),
    }
    server.stop().await;
}
