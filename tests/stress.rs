//! Bursts, churn, slow readers and garbage: the server under pressure.
//! Every loop is bounded in count and time.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::{Seen, TestServer, WAIT};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;
use vivachat::server::{Config, NetLimits};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_20_clients_x_50_messages_each_delivered_once_in_sender_order() {
    const CLIENTS: usize = 20;
    const PER_CLIENT: usize = 50;
    let server = TestServer::start().await;
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        clients.push(server.connect(&format!("u{i:02}")).await);
    }
    // Everyone has seen everyone come online before the burst starts.
    for (i, c) in clients.iter_mut().enumerate() {
        for _ in i + 1..CLIENTS {
            assert_eq!(c.recv().await["type"], "presence");
        }
    }
    let recipient = |i: usize, j: usize| (i + 1 + j % (CLIENTS - 1)) % CLIENTS;
    let mut expected_in = [0usize; CLIENTS];
    for i in 0..CLIENTS {
        for j in 0..PER_CLIENT {
            expected_in[recipient(i, j)] += 1;
        }
    }

    let mut tasks = Vec::new();
    for (i, client) in clients.into_iter().enumerate() {
        let expect = expected_in[i];
        tasks.push(tokio::spawn(async move {
            let (mut tx, mut rx) = client.ws.split();
            let sender = async move {
                for j in 0..PER_CLIENT {
                    let to = format!("u{:02}", recipient(i, j));
                    let frame = json!({"type":"message","to":to,"text":format!("{i}:{j}"),"ref":j});
                    tx.send(Message::text(frame.to_string())).await.unwrap();
                }
                tx
            };
            let receiver = async move {
                let (mut acks, mut got) = (Vec::new(), Vec::new());
                while acks.len() < PER_CLIENT || got.len() < expect {
                    let frame = tokio::time::timeout(WAIT, rx.next())
                        .await
                        .expect("burst stalled")
                        .unwrap()
                        .unwrap();
                    let v: Value = serde_json::from_str(frame.to_text().unwrap()).unwrap();
                    match v["type"].as_str() {
                        Some("ack") => acks.push(v),
                        Some("message") => got.push(v),
                        // A client that got everything leaves while others still read.
                        Some("presence") if v["status"] == "offline" => {}
                        other => panic!("unexpected {other:?}: {v}"),
                    }
                }
                (acks, got)
            };
            let (_tx, (acks, got)) = tokio::join!(sender, receiver);
            (i, acks, got)
        }));
    }
    let mut seen: HashSet<(usize, usize)> = HashSet::new();
    let mut ids = HashSet::new();
    for task in tasks {
        let (i, acks, got) = tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .unwrap()
            .unwrap();
        // Acks come back in request order, all delivered, each with a fresh id.
        for (j, ack) in acks.iter().enumerate() {
            assert_eq!(ack["ref"], j, "acks in request order");
            assert_eq!(ack["status"], "delivered");
            assert!(ids.insert(ack["id"].as_u64().unwrap()), "duplicate id");
        }
        // Per sender, messages arrive in the order they were sent.
        let mut last_from: HashMap<usize, usize> = HashMap::new();
        for m in &got {
            assert_eq!(m["to"], format!("u{i:02}"));
            let (s, j) = m["text"].as_str().unwrap().split_once(':').unwrap();
            let (s, j): (usize, usize) = (s.parse().unwrap(), j.parse().unwrap());
            assert_eq!(m["from"], format!("u{s:02}"));
            assert_eq!(recipient(s, j), i, "delivered to the right user");
            if let Some(prev) = last_from.insert(s, j) {
                assert!(j > prev, "sender {s}: {j} after {prev}");
            }
            assert!(seen.insert((s, j)), "({s},{j}) delivered twice");
        }
    }
    assert_eq!(
        seen.len(),
        CLIENTS * PER_CLIENT,
        "every message delivered exactly once"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_connect_close_cycles_leave_presence_consistent() {
    let server = TestServer::start().await;
    let mut observer = server.connect("observer").await;
    // 200 cycles: half close politely, half just drop the socket.
    for i in 0..200 {
        let c = server.connect("cycler").await;
        if i % 2 == 0 {
            c.close().await;
        } else {
            drop(c);
        }
    }
    // Four devices of one user racing: 4 x 25 cycles at once.
    let mut racers = Vec::new();
    for _ in 0..4 {
        let url = server.url("/ws/racer");
        racers.push(tokio::spawn(async move {
            for _ in 0..25 {
                let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
                let _welcome = ws.next().await;
                let _ = ws.close(None).await;
            }
        }));
    }
    for r in racers {
        tokio::time::timeout(Duration::from_secs(60), r)
            .await
            .unwrap()
            .unwrap();
    }
    let state = server
        .wait_for_state("only the observer online", |s| {
            s["presence"] == json!(["observer"])
        })
        .await;
    assert_eq!(state["active_connections"].as_object().unwrap().len(), 1);
    let ops = &state["ops"]["active_connections"];
    assert_eq!(
        ops["insert"].as_u64().unwrap() - ops["remove"].as_u64().unwrap(),
        1,
        "every connection but the observer's was removed exactly once: {ops}"
    );
    common::assert_invariants_hold(&state);

    // The observer saw each user strictly alternate online/offline, ending
    // offline. Read up to two markers, one on each node of a cluster
    // (connections alternate): each one's `online` is published after every
    // change above, so once the observer has both it has had everything
    // before them, however late a node's relay of them runs.
    let _markers = (
        server.connect("marker1").await,
        server.connect("marker2").await,
    );
    let mut last: HashMap<String, String> = HashMap::new();
    let mut cycler_onlines = 0;
    let mut markers = 0;
    while markers < 2 {
        let v = observer.recv().await;
        let (user, status) = (
            v["user"].as_str().unwrap().to_string(),
            v["status"].as_str().unwrap().to_string(),
        );
        if user.starts_with("marker") {
            markers += 1;
            continue;
        }
        if user == "cycler" && status == "online" {
            cycler_onlines += 1;
        }
        if let Some(prev) = last.insert(user.clone(), status.clone()) {
            assert_ne!(prev, status, "{user} went {status} twice in a row");
        }
    }
    // A dropped socket may still be open on the server when the next cycle
    // connects (then that is a second device, and nobody is told), but a polite
    // close is complete before `close()` returns: at least 1 + 100 onlines.
    assert!((101..=200).contains(&cycler_onlines), "{cycler_onlines}");
    assert_eq!(last["cycler"], "offline");
    assert_eq!(last["racer"], "offline");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_never_reads_stalls_nobody_and_loses_nothing_queued() {
    let server = TestServer::start_with(Config {
        net: NetLimits {
            outbox_frames: 32,
            ..NetLimits::default()
        },
        ..Config::default()
    })
    .await;
    let mut observer = server.connect("observer").await;
    let mut slow = server.connect("slow").await;
    assert_eq!(
        slow.request(json!({"type":"group_join","group":"room"}))
            .await["status"],
        "ok"
    );
    let mut fast = Vec::new();
    for name in ["f1", "f2", "f3"] {
        let mut c = server.connect(name).await;
        assert_eq!(
            c.request(json!({"type":"group_join","group":"room"})).await["status"],
            "ok"
        );
        fast.push(c);
    }
    // From here on `slow` never reads. Its socket buffers fill, then its outbox, then it is evicted.
    let padding = "p".repeat(16 * 1024);
    let mut all_ids: Vec<u64> = Vec::new();
    let mut evicted_after = None;
    let mut presence_seen = Vec::new();
    for round in 0..2000usize {
        let sender = round % 3;
        let text = format!("{round} {padding}");
        fast[sender]
            .send(json!({"type":"group_message","group":"room","text":text}))
            .await;
        // Presence frames from the start may come first; nothing else may.
        let ack = fast[sender].recv_skipping_presence().await;
        assert_eq!(ack["type"], "ack", "{ack}");
        assert_eq!(
            ack["status"], "delivered",
            "the other fast clients are online"
        );
        all_ids.push(ack["id"].as_u64().unwrap());
        // Each other fast client gets it promptly: nobody waits for `slow`.
        for (k, c) in fast.iter_mut().enumerate() {
            if k == sender {
                continue;
            }
            let m = c.recv_skipping_presence().await;
            assert_eq!(m["id"], ack["id"]);
        }
        if evicted_after.is_none() {
            // Non-blocking look at the observer: has `slow` gone offline?
            if let Ok(Some(Ok(Message::Text(t)))) =
                tokio::time::timeout(Duration::from_millis(1), observer.ws.next()).await
            {
                let v: Value = serde_json::from_str(&t).unwrap();
                presence_seen.push(v.clone());
                if v == json!({"type":"presence","user":"slow","status":"offline"}) {
                    evicted_after = Some(round);
                }
            }
        }
        if evicted_after.is_some_and(|r| round >= r + 10) {
            break;
        }
    }
    let evicted_after = evicted_after
        .unwrap_or_else(|| panic!("slow was never evicted; observer saw {presence_seen:?}"));
    assert!(evicted_after < 1990);

    // Whatever reached the old socket is a prefix of the room's messages, in order.
    let mut received = Vec::new();
    loop {
        match slow.next_seen().await {
            Seen::Frame(v) if v["type"] == "group_message" => {
                received.push(v["id"].as_u64().unwrap())
            }
            Seen::Frame(_) => {}
            Seen::Close(_) | Seen::Ended => break,
        }
    }
    assert_eq!(
        received[..],
        all_ids[..received.len()],
        "old socket got a prefix, in order"
    );

    // Reconnecting: the unsent rest comes back from the offline deque, in order,
    // with everything after the eviction included and nothing lost: the batch
    // the stuck socket held goes back too, so at most that batch (64) may
    // arrive a second time, with the same ids.
    let mut again = server.connect("slow").await;
    let queued = again.welcome["queued"].as_u64().unwrap() as usize;
    let mut flushed = Vec::new();
    for _ in 0..queued {
        let m = again.recv().await;
        assert_eq!(m["offline"], true);
        flushed.push(m["id"].as_u64().unwrap());
    }
    assert!(
        flushed.len() >= 10,
        "messages after the eviction are queued"
    );
    let start = all_ids.len() - flushed.len();
    assert_eq!(
        flushed[..],
        all_ids[start..],
        "a contiguous, ordered suffix"
    );
    assert!(
        start <= received.len(),
        "nothing lost: ids {}..{} reached neither the socket nor the queue",
        received.len(),
        start
    );
    assert!(
        received.len() - start <= 64,
        "{} frames came twice: more than the one batch a stuck write holds",
        received.len() - start
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_never_panics_or_stalls_the_server() {
    let server = TestServer::start().await;
    let mut alice = server.connect("alice").await;
    let mut bob = server.connect("bob").await;
    alice.recv().await;
    let mut seed: u64 = 12345;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let shapes: Vec<String> = vec![
        format!("{}{}", "[".repeat(5000), "]".repeat(5000)),
        format!(
            "{{\"type\":{}}}",
            "{\"a\":".repeat(3000) + "1" + &"}".repeat(3000)
        ),
        "{\"type\":\"message\",\"to\":\"bob\",\"text\":\"\\ud800\"}".into(),
        "{\"type\":\"message\",\"to\":\"bob\",\"text\":\"ok\",\"to\":\"bob\"}".into(),
        "\u{0}\u{1}\u{2}".into(),
        "{\"type\":\"message\",\"to\":\"bob\",\"text\":1e999}".into(),
        "{\"type\":\"who\",\"ref\":18446744073709551616}".into(),
        "{\"type\":\"group_join\",\"group\":\"g\",\"ref\":-0.0}".into(),
    ];
    for shape in &shapes {
        alice.send_text(shape).await;
        let v = alice.recv().await;
        assert!(
            v["type"] == "error" || v["type"] == "ack" || v["type"] == "who",
            "{shape:.40}: {v}"
        );
    }
    for _ in 0..300 {
        let len = (next() % 200) as usize;
        let bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if next() % 2 == 0 {
            alice.send_message(Message::binary(bytes)).await;
        } else {
            alice.send_text(&String::from_utf8_lossy(&bytes)).await;
        }
        let v = alice.recv().await;
        assert_eq!(v["type"], "error");
    }
    // Unaffected: bob is still reachable, and alice still chats.
    assert_eq!(
        alice
            .request(json!({"type":"message","to":"bob","text":"still here"}))
            .await["status"],
        "delivered"
    );
    let m = bob.recv().await;
    // bob may have received the duplicate-key message above first.
    let m = if m["text"] == "ok" {
        bob.recv().await
    } else {
        m
    };
    assert_eq!(m["text"], "still here");
    let state = server.inspect().await;
    assert!(state["invariants"]
        .as_array()
        .unwrap()
        .iter()
        .all(|i| i["holds"] == true));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_queue_longer_than_the_outbox_flushes_whole_on_connect() {
    let server = TestServer::start_with(Config {
        net: NetLimits {
            outbox_frames: 8,
            ..NetLimits::default()
        },
        ..Config::default()
    })
    .await;
    let mut alice = server.connect("alice").await;
    for i in 0..100 {
        alice
            .send(json!({"type":"message","to":"bob","text":format!("{i}")}))
            .await;
    }
    for _ in 0..100 {
        assert_eq!(alice.recv().await["status"], "queued");
    }
    let mut bob = server.connect("bob").await;
    assert_eq!(bob.welcome["queued"], 100);
    for i in 0..100 {
        let m = bob.recv().await;
        assert_eq!(
            (m["text"].clone(), m["offline"].clone()),
            (json!(format!("{i}")), json!(true))
        );
    }
    // Live traffic after the flush is bounded as usual, and bob is still connected.
    assert_eq!(alice.recv().await["status"], "online");
    assert_eq!(
        alice
            .request(json!({"type":"message","to":"bob","text":"live"}))
            .await["status"],
        "delivered"
    );
    assert_eq!(bob.recv().await["text"], "live");
    server.stop().await;
}
