//! v1.1 resume, end to end against a real server: `?resume=N` re-sends what
//! the client has not confirmed, `received` releases it, and nothing is lost
//! to a client crash, an eviction, or a kill -9 of a durable server.

mod common;

use std::time::Duration;

use common::{Proc, TestServer, WAIT};
use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;
use vivachat::server::Config;

/// Connects to `path` (with its query) on any port and reads the welcome.
async fn join(port: u16, path: &str) -> (common::Client, Value) {
    let url = format!("ws://127.0.0.1:{port}/ws/{path}");
    let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
        .await
        .expect("connect timed out")
        .expect("connect");
    let mut client = common::Client {
        ws,
        welcome: Value::Null,
    };
    let welcome = client.recv_skipping_presence().await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    client.welcome = welcome.clone();
    (client, welcome)
}

/// The next `n` chat frames' ids, skipping presence frames.
async fn read_ids(client: &mut common::Client, n: usize) -> Vec<u64> {
    let mut ids = Vec::with_capacity(n);
    while ids.len() < n {
        let frame = client.recv_skipping_presence().await;
        assert!(
            frame["type"] == "message" || frame["type"] == "group_message",
            "expected a chat frame, got {frame}"
        );
        ids.push(frame["id"].as_u64().unwrap());
    }
    ids
}

/// Sends `n` messages to `to` and returns the ids acknowledged as delivered
/// or queued (every one of them must then reach `to`).
async fn send_many(sender: &mut common::Client, to: &str, n: usize, text: &str) -> Vec<u64> {
    for i in 0..n {
        let frame = json!({"type":"message","to":to,"text":format!("{text} {i}"),"ref":i});
        sender
            .ws
            .feed(Message::text(frame.to_string()))
            .await
            .unwrap();
    }
    sender.ws.flush().await.unwrap();
    let mut acked = Vec::new();
    while acked.len() < n {
        let ack = sender.recv_skipping_presence().await;
        assert_eq!(ack["type"], "ack", "{ack}");
        assert!(
            ack["status"] == "delivered" || ack["status"] == "queued",
            "{ack}"
        );
        acked.push(ack["id"].as_u64().unwrap());
    }
    acked
}

/// Drops the TCP connection without a close frame: a crash, as the server sees it.
fn crash(client: common::Client) {
    drop(client);
}

#[tokio::test]
async fn a_client_that_crashes_mid_flush_gets_the_rest_in_order_once() {
    let server = TestServer::start().await;
    let port = server.addr.port();
    let mut alice = server.connect("alice").await;
    let acked = send_many(&mut alice, "bob", 100, "queued").await;

    let (mut bob, welcome) = join(port, "bob?resume=0").await;
    assert_eq!(welcome["queued"], 100);
    assert_eq!(welcome["resume"], 0);
    assert!(welcome["epoch"].is_string(), "{welcome}");
    let first = read_ids(&mut bob, 10).await;
    assert_eq!(first, acked[..10]);
    bob.send(json!({"type":"received","id":first[9]})).await;
    crash(bob);
    server
        .wait_for_state("bob's crash to be noticed", |s| {
            s["presence"] == json!(["alice"])
        })
        .await;

    let (mut bob, welcome) = join(port, &format!("bob?resume={}", first[9])).await;
    assert_eq!(welcome["queued"], 90);
    let rest = read_ids(&mut bob, 90).await;
    assert_eq!(rest, acked[10..], "the other 90, in order, with their ids");
    let last = *rest.last().unwrap();
    bob.send(json!({"type":"received","id":last})).await;
    bob.assert_nothing_pending().await;
    bob.close().await;

    let (third, welcome) = join(port, &format!("bob?resume={last}")).await;
    assert_eq!(welcome["queued"], 0, "{welcome}");
    let state = server.inspect().await;
    assert_eq!(state["released"]["bob"], last);
    third.close().await;
    server.stop().await;
}

#[tokio::test]
async fn live_messages_are_held_until_received() {
    let server = TestServer::start().await;
    let port = server.addr.port();
    let mut alice = server.connect("alice").await;
    let (mut bob, _) = join(port, "bob?resume=0").await;
    let _ = alice.recv().await; // bob's presence
    let acked = send_many(&mut alice, "bob", 5, "live").await;
    let live = read_ids(&mut bob, 5).await;
    assert_eq!(live, acked);
    crash(bob);
    server
        .wait_for_state("bob offline", |s| s["presence"] == json!(["alice"]))
        .await;

    let (mut bob, welcome) = join(port, "bob?resume=0").await;
    assert_eq!(welcome["queued"], 5);
    let again: Vec<Value> = {
        let mut frames = Vec::new();
        for _ in 0..5 {
            frames.push(bob.recv_skipping_presence().await);
        }
        frames
    };
    let ids: Vec<u64> = again.iter().map(|f| f["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, live, "the same 5 ids again");
    assert!(again.iter().all(|f| f["offline"] == true));
    bob.send(json!({"type":"received","id":ids[4]})).await;
    bob.assert_nothing_pending().await;
    bob.close().await;
    let (bob, welcome) = join(port, "bob?resume=0").await;
    assert_eq!(welcome["queued"], 0, "released: gone");
    bob.close().await;

    // A v1 connection of the same user is untouched by all this: nothing held.
    let mut carol = server.connect("carol").await;
    alice
        .request(json!({"type":"message","to":"carol","text":"v1"}))
        .await;
    let _ = carol.recv_skipping_presence().await;
    let state = server.inspect().await;
    assert!(state["offline_messages"].get("carol").is_none(), "{state}");
    assert!(
        carol.welcome.get("resume").is_none(),
        "v1 welcome unchanged"
    );
    server.stop().await;
}

#[tokio::test]
async fn an_evicted_reader_resumes_every_acked_message_in_order() {
    let config = Config {
        net: vivachat::server::NetLimits {
            outbox_frames: 16,
            ..Config::default().net
        },
        ..Config::default()
    };
    let server = TestServer::start_with(config).await;
    let port = server.addr.port();
    let mut alice = server.connect("alice").await;
    // A small receive buffer, so what bob does not read backs up into his
    // outbox quickly instead of into megabytes of loopback socket buffers.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    let tcp = socket.connect(server.addr).await.unwrap();
    let url = format!("ws://127.0.0.1:{port}/ws/bob?resume=0");
    let (ws, _) = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::client_async(url, tokio_tungstenite::MaybeTlsStream::Plain(tcp)),
    )
    .await
    .expect("connect timed out")
    .expect("connect");
    let mut bob = common::Client {
        ws,
        welcome: Value::Null,
    };
    assert_eq!(bob.recv().await["type"], "welcome");
    let _ = alice.recv().await; // bob's presence
    let text = "x".repeat(8 * 1024);
    let mut acked = send_many(&mut alice, "bob", 20, &text).await;
    let read = read_ids(&mut bob, 20).await;
    assert_eq!(read, acked);
    // 280 more that bob never reads: they sit unread in his socket. Then more,
    // until his outbox fills too and he is evicted (loopback buffers hold a
    // few megabytes, so how many that takes varies): nothing may be lost.
    acked.extend(send_many(&mut alice, "bob", 280, &text).await);
    let mut evicted = false;
    for _ in 0..40 {
        let state = server.inspect().await;
        if state["presence"] == json!(["alice"]) {
            evicted = true;
            break;
        }
        acked.extend(send_many(&mut alice, "bob", 50, &text).await);
    }
    assert!(evicted, "bob should have been evicted as too slow");
    crash(bob);
    let (mut bob, welcome) = join(port, &format!("bob?resume={}", read[19])).await;
    let others = acked.len() - 20;
    assert_eq!(welcome["queued"], others);
    let rest = read_ids(&mut bob, others).await;
    assert_eq!(rest, acked[20..], "every other acked id, in order");
    bob.close().await;
    server.stop().await;
}

#[tokio::test]
async fn a_position_from_another_run_is_not_trusted() {
    let server = TestServer::start().await;
    let port = server.addr.port();
    let mut alice = server.connect("alice").await;
    let acked = send_many(&mut alice, "bob", 3, "new run").await;
    // The client's position and epoch are from a server that has since
    // restarted in memory: ids 1..3 now mean other messages.
    let (mut bob, welcome) = join(port, "bob?resume=2&epoch=0ld").await;
    assert_eq!(
        (welcome["resume"].clone(), welcome["queued"].clone()),
        (json!(0), json!(3))
    );
    assert_eq!(read_ids(&mut bob, 3).await, acked);
    // With the epoch the welcome gave, the same position is trusted.
    let epoch = welcome["epoch"].as_str().unwrap().to_string();
    crash(bob);
    server
        .wait_for_state("bob offline", |s| s["presence"] == json!(["alice"]))
        .await;
    let (_bob, welcome) = join(port, &format!("bob?resume={}&epoch={epoch}", acked[1])).await;
    assert_eq!(welcome["queued"], 1);
    // Digits only for resume (not "+3", not empty); 1-32 letters and digits for epoch.
    for bad in [
        "bob?resume=-1",
        "bob?resume=x",
        "bob?resume=1&epoch=a%20b",
        "bob?resume=%2B3",
        "bob?resume=",
        "bob?resume=1&epoch=",
        "bob?resume=1.5",
        "bob?resume=0x10",
        "bob?resume=1&epoch=abcdefghijklmnopqrstuvwxyz0123456",
    ] {
        assert_eq!(
            server.refused_status(&format!("/ws/{bad}")).await,
            400,
            "{bad}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn a_receipt_is_the_second_tick_and_a_block_never_sends_one() {
    let server = TestServer::start().await;
    let port = server.addr.port();
    let mut alice = server.connect("alice").await;
    let (mut bob, _) = join(port, "bob?resume=0").await;
    let (mut eve, _) = join(port, "eve?resume=0").await;
    let ack = alice
        .request(json!({"type":"message","to":"bob","text":"tick?","receipt":true}))
        .await;
    let ack = if ack["type"] == "presence" {
        alice.recv_skipping_presence().await
    } else {
        ack
    };
    assert_eq!(ack["status"], "delivered");
    let id = ack["id"].as_u64().unwrap();
    assert_eq!(read_ids(&mut bob, 1).await, [id]);
    bob.send(json!({"type":"received","id":id})).await;
    let receipt = alice.recv_skipping_presence().await;
    assert_eq!(
        receipt,
        json!({"type":"receipt","id":id,"status":"received"})
    );

    eve.request(json!({"type":"block","user":"alice"})).await;
    let ack = alice
        .request(json!({"type":"message","to":"eve","text":"tick?","receipt":true}))
        .await;
    assert_eq!(
        ack["status"], "delivered",
        "a block changes nothing the sender sees"
    );
    eve.send(json!({"type":"received","id":ack["id"]})).await;
    eve.assert_nothing_pending().await;
    alice.assert_nothing_pending().await;
    server.stop().await;
}

/// With `--data`, the server killed with -9 keeps what was not confirmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_durable_server_keeps_every_unconfirmed_message() {
    let path = common::temp_data_file("resume-kill");
    let data = path.to_str().unwrap();
    let (server, port) = Proc::serve(&["--port", "0", "--quiet", "--data", data]);
    let (mut alice, _) = join(port, "alice").await;
    let (mut bob, _) = join(port, "bob?resume=0").await;
    let acked = send_many(&mut alice, "bob", 50, "durable").await;
    let live = read_ids(&mut bob, 50).await;
    assert_eq!(live, acked);
    bob.send(json!({"type":"received","id":live[4]})).await;
    assert_eq!(
        bob.request(json!({"type":"ping"})).await,
        json!({"type":"pong"})
    );
    server.kill_9();

    let (server, port) = Proc::serve(&["--port", "0", "--quiet", "--data", data]);
    let (mut bob, welcome) = join(port, &format!("bob?resume={}", live[4])).await;
    assert_eq!(welcome["queued"], 45, "{welcome}");
    assert_eq!(read_ids(&mut bob, 45).await, live[5..]);
    bob.close().await;
    drop(server);
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

#[tokio::test]
async fn received_is_refused_only_when_malformed() {
    let server = TestServer::start().await;
    let mut ann = server.connect("ann").await;
    let reply = ann
        .request(json!({"type":"received","id":"seven","ref":1}))
        .await;
    assert_eq!(reply["code"], "missing_field");
    assert_eq!(reply["ref"], 1);
    // A v1 connection may send it too: nothing is held, nothing happens.
    ann.send(json!({"type":"received","id":5})).await;
    ann.assert_nothing_pending().await;
    server.stop().await;
}

/// SIGTERM of a durable server while a resuming reader has stopped reading:
/// everything acknowledged to the sender comes back on resume, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_of_a_durable_server_keeps_what_a_stuck_reader_never_read() {
    let path = common::temp_data_file("resume-term");
    let data = path.to_str().unwrap();
    let (server, port) = Proc::serve(&["--port", "0", "--quiet", "--data", data]);
    let (mut alice, _) = join(port, "alice").await;
    let (bob, _) = join(port, "bob?resume=0").await;
    let text = "y".repeat(20 * 1024);
    let acked = send_many(&mut alice, "bob", 200, &text).await;
    let rest = server.terminate();
    assert!(rest.contains("saved in"), "{rest}");
    drop(bob);

    let (server, port) = Proc::serve(&["--port", "0", "--quiet", "--data", data]);
    let (mut bob, welcome) = join(port, "bob?resume=0").await;
    assert_eq!(welcome["queued"], 200, "{welcome}");
    assert_eq!(read_ids(&mut bob, 200).await, acked);
    bob.close().await;
    drop(server);
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

/// Two devices of one user: a `received` from either releases for the user,
/// and a device that was away gets only what is still held above its position.
#[tokio::test]
async fn received_from_any_device_releases_for_the_user() {
    let server = TestServer::start().await;
    let port = server.addr.port();
    let mut alice = server.connect("alice").await;
    let (mut phone, _) = join(port, "bob?resume=0").await;
    let (mut laptop, _) = join(port, "bob?resume=0").await;
    let _ = alice.recv().await; // bob online
    let acked = send_many(&mut alice, "bob", 6, "both").await;
    assert_eq!(read_ids(&mut phone, 6).await, acked);
    assert_eq!(read_ids(&mut laptop, 6).await, acked);
    // The phone confirms the first four; the laptop closes having confirmed nothing.
    phone.send(json!({"type":"received","id":acked[3]})).await;
    phone.assert_nothing_pending().await;
    laptop.close().await;
    let state = server.inspect().await;
    assert_eq!(state["offline_messages"]["bob"]["len"], 2, "{state}");
    // The laptop comes back from 0: it gets the two nobody confirmed, not the four.
    let (mut laptop, welcome) = join(port, "bob?resume=0").await;
    assert_eq!(welcome["queued"], 2);
    assert_eq!(read_ids(&mut laptop, 2).await, acked[4..]);
    server.stop().await;
}

/// Readers that resume and drop their connections at random points (some
/// confirming, some not; a small outbox, so some are evicted) while two
/// senders write to them: in the end each reader has every message its
/// senders were acked, once after skipping ids already seen, and in each
/// sender's order. The seed is printed, so a failure can be replayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_that_drop_at_random_lose_nothing() {
    let config = Config {
        net: vivachat::server::NetLimits {
            outbox_frames: 32,
            ..Config::default().net
        },
        ..Config::default()
    };
    let server = TestServer::start_with(config).await;
    let port = server.addr.port();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("chaos seed {seed}");
    const READERS: usize = 3;
    const PER_READER: usize = 200;

    let readers: Vec<_> = (0..READERS)
        .map(|r| {
            tokio::spawn(async move {
                let mut rng = seed ^ (r as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                let mut next = move |n: u64| {
                    rng = rng
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1_442_695_040_888_963_407);
                    (rng >> 33) % n
                };
                let (mut shown, mut texts) = (0u64, Vec::new());
                let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
                while texts.len() < 2 * PER_READER {
                    assert!(tokio::time::Instant::now() < deadline, "reader {r} stalled");
                    let (mut c, _) = join(port, &format!("reader{r}?resume={shown}")).await;
                    // Read a random number of frames, confirming now and then.
                    let budget = 1 + next(60);
                    for _ in 0..budget {
                        let frame = tokio::time::timeout(Duration::from_millis(300), c.recv())
                            .await
                            .ok();
                        let Some(frame) = frame else { break };
                        if frame["type"] != "message" {
                            continue;
                        }
                        let id = frame["id"].as_u64().unwrap();
                        if id > shown {
                            shown = id;
                            texts.push(frame["text"].as_str().unwrap().to_string());
                        }
                        if next(10) == 0 {
                            c.send(json!({"type":"received","id":shown})).await;
                        }
                    }
                    // Drop without a close frame, with the rest unread.
                    crash(c);
                    tokio::time::sleep(Duration::from_millis(next(30))).await;
                }
                texts
            })
        })
        .collect();

    let mut senders = Vec::new();
    for s in 0..2 {
        let mut sender = server.connect(&format!("sender{s}")).await;
        senders.push(tokio::spawn(async move {
            for i in 0..PER_READER {
                for r in 0..READERS {
                    let text = format!("s{s} {i}");
                    let ack = sender
                        .request(json!({"type":"message","to":format!("reader{r}"),"text":text}))
                        .await;
                    let ack = if ack["type"] == "presence" {
                        sender.recv_skipping_presence().await
                    } else {
                        ack
                    };
                    assert!(
                        ack["status"] == "delivered" || ack["status"] == "queued",
                        "{ack}"
                    );
                }
            }
        }));
    }
    for s in senders {
        s.await.unwrap();
    }
    for (r, reader) in readers.into_iter().enumerate() {
        let texts = reader.await.unwrap();
        for s in 0..2 {
            let order: Vec<usize> = texts
                .iter()
                .filter_map(|t| t.strip_prefix(&format!("s{s} ")))
                .map(|i| i.parse().unwrap())
                .collect();
            assert_eq!(
                order,
                (0..PER_READER).collect::<Vec<_>>(),
                "reader {r}, sender {s} (seed {seed}): every message once, in order"
            );
        }
    }
    let state = server.inspect().await;
    common::assert_invariants_hold(&state);
    server.stop().await;
}
