//! Attacks on a real server: impersonation, admin access, floods, limits,
//! junk upgrade attempts, and clients that never read.
//! (Oversize and deeply nested frames: tests/protocol.rs and tests/stress.rs.)

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{http_get, Seen, TestServer, WAIT};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use vivachat::core::CoreConfig;
use vivachat::server::{Config, NetLimits};

fn has(list: &Value, name: &str) -> bool {
    list.as_array()
        .is_some_and(|a| a.iter().any(|v| v.as_str() == Some(name)))
}

trait Ask {
    /// Sends a request and returns its reply, skipping presence frames.
    async fn ask(&mut self, frame: Value) -> Value;
}

impl Ask for common::Client {
    async fn ask(&mut self, frame: Value) -> Value {
        self.send(frame).await;
        self.recv_skipping_presence().await
    }
}

/// The close code a client gets next, skipping any frames still in flight.
async fn close_code(client: &mut common::Client) -> Option<u16> {
    loop {
        match client.next_seen().await {
            Seen::Frame(_) => continue,
            Seen::Close(frame) => return frame.map(|f| u16::from(f.code)),
            Seen::Ended => return None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claimed_name_refuses_impostors_and_they_never_see_its_messages() {
    let server = TestServer::start().await;
    let token = "0123456789abcdef0123456789abcdef";
    let bob = server.connect(&format!("bob?token={token}")).await;
    assert_eq!(
        bob.welcome["user"], "bob",
        "the query is not part of the name"
    );
    bob.close().await;
    // In a cluster bob's node deregisters him in Redis just after the close
    // handshake; alice may be on the other node.
    server
        .wait_for_state("bob offline", |s| !has(&s["presence"], "bob"))
        .await;
    let mut alice = server.connect("alice").await;
    let ack = alice
        .request(json!({"type":"message","to":"bob","text":"for bob only","ref":1}))
        .await;
    assert_eq!(ack["status"], "queued");

    // Without the token, with a wrong one, with one differing in one character.
    for path in [
        "/ws/bob".to_string(),
        "/ws/bob?token=".to_string(),
        "/ws/bob?token=guess".to_string(),
        format!("/ws/bob?token={}", &token[..31]),
        format!("/ws/bob?token={token}0"),
    ] {
        match server.connect_raw(&path).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status().as_u16(), 401, "{path}");
                let body =
                    String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default()).to_string();
                assert!(body.contains("claimed"), "{path}: {body}");
            }
            Err(e) => panic!("{path}: expected 401, got {e}"),
            Ok(_) => panic!("{path}: an impostor was let in"),
        }
    }

    // Nothing changed: bob is offline, his message still waits, and /inspect
    // shows that bob is claimed but neither the token nor its hash.
    let (_, raw) = server.get("/inspect").await;
    assert!(!raw.contains(token) && !raw.contains("argon2"), "{raw}");
    let state: Value = serde_json::from_str(&raw).unwrap();
    assert!(!has(&state["presence"], "bob"));
    assert_eq!(state["offline_messages"]["bob"]["len"], 1);
    assert!(has(&state["server"]["claimed_names"], "bob"));
    assert!(!has(&state["server"]["claimed_names"], "alice"));

    // The owner gets it; names never claimed stay open to plain clients.
    let mut bob = server.connect(&format!("bob?token={token}")).await;
    assert_eq!(bob.welcome["queued"], 1);
    assert_eq!(bob.recv().await["text"], "for bob only");
    let dave = server.connect("dave").await;
    dave.close().await;
    alice.close().await;
    bob.close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claiming_a_name_closes_its_connections_that_have_no_token() {
    let server = TestServer::start().await;
    let mut impostor = server.connect("eve").await;
    let mut alice = server.connect("alice").await;
    // alice sees eve's presence from the impostor; skip it.
    let mut owner = server.connect("eve?token=the-real-eve").await;
    assert_eq!(
        close_code(&mut impostor).await,
        Some(4001),
        "the token-less connection is closed when the name is claimed"
    );
    let ack = alice
        .request(json!({"type":"message","to":"eve","text":"hi eve","ref":1}))
        .await;
    let ack = if ack["type"] == "presence" {
        alice.recv_skipping_presence().await
    } else {
        ack
    };
    assert_eq!(ack["status"], "delivered");
    assert_eq!(owner.recv_skipping_presence().await["text"], "hi eve");
    let state = server.inspect().await;
    assert_eq!(
        state["active_connections"]["eve"].as_array().map(Vec::len),
        Some(1),
        "{state}"
    );
    // The impostor cannot come back.
    assert_eq!(server.refused_status("/ws/eve").await, 401);
    alice.close().await;
    owner.close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_admin_token_inspect_needs_it_from_everyone() {
    let server = TestServer::start_with(Config {
        admin_token: Some("s3cret".into()),
        ..Config::default()
    })
    .await;
    for headers in [
        vec![],
        vec![("Authorization", "Bearer wrong")],
        vec![("Authorization", "Bearer s3cre")],
        vec![("Authorization", "s3cret")],
        vec![("Authorization", "Basic s3cret")],
    ] {
        let (status, body) = http_get(server.addr, "/inspect", &headers).await;
        assert_eq!(status, 403, "{headers:?}");
        assert!(body.contains("--admin-token"), "{body}");
        assert!(!body.contains("presence"), "no data leaks: {body}");
    }
    let (status, body) = http_get(
        server.addr,
        "/inspect",
        &[("Authorization", "Bearer s3cret")],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    server.stop().await;

    // Without a token: a request relayed by a proxy or tunnel is not local.
    let server = TestServer::start().await;
    assert_eq!(server.get("/inspect").await.0, 200);
    let (status, _) = http_get(
        server.addr,
        "/inspect",
        &[("X-Forwarded-For", "203.0.113.9")],
    )
    .await;
    assert_eq!(status, 403);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_is_rate_limited_and_a_normal_client_keeps_chatting() {
    let rate = 100.0;
    let server = TestServer::start_with(Config {
        net: NetLimits {
            rate_limit: Some(rate),
            ..NetLimits::default()
        },
        ..Config::default()
    })
    .await;
    let mut alice = server.connect("alice").await;
    let mut bob = server.connect("bob").await;
    let _ = alice.recv().await; // bob's presence
    let flooder = server.connect("mallory").await;
    let _ = alice.recv().await;
    let _ = bob.recv().await;

    // mallory sends as fast as the socket takes it, and reads every reply.
    let started = Instant::now();
    let (mut tx, mut rx) = flooder.ws.split();
    let flood = tokio::spawn(async move {
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut sent = 0u64;
        while Instant::now() < deadline {
            let frame = json!({"type":"message","to":"nobody","text":"spam"}).to_string();
            for _ in 0..100 {
                if tx.feed(Message::text(frame.clone())).await.is_err() {
                    return sent;
                }
                sent += 1;
            }
            if tx.flush().await.is_err() {
                return sent;
            }
        }
        sent
    });
    let replies = tokio::spawn(async move {
        let (mut accepted, mut limited) = (0u64, 0u64);
        while let Ok(Some(Ok(Message::Text(t)))) =
            tokio::time::timeout(Duration::from_secs(2), rx.next()).await
        {
            let v: Value = serde_json::from_str(&t).unwrap();
            match (v["type"].as_str(), v["code"].as_str()) {
                (Some("ack"), _) => accepted += 1,
                (_, Some("rate_limited")) => limited += 1,
                _ => panic!("unexpected reply to the flood: {v}"),
            }
        }
        (accepted, limited)
    });

    // Meanwhile alice and bob chat; every message arrives, in order, promptly.
    let mut latencies = Vec::new();
    for i in 0..100 {
        let sent = Instant::now();
        alice
            .send(json!({"type":"message","to":"bob","text":format!("m{i}"),"ref":i}))
            .await;
        let got = bob.recv().await;
        latencies.push(sent.elapsed());
        assert_eq!(
            got["text"],
            format!("m{i}"),
            "nothing lost, nothing reordered"
        );
        assert_eq!(alice.recv().await["status"], "delivered");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let sent = flood.await.unwrap();
    let (accepted, limited) = replies.await.unwrap();
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    let median = latencies[latencies.len() / 2];
    let worst = *latencies.last().unwrap();
    eprintln!(
        "flood: {sent} sent, {accepted} accepted, {limited} rate_limited in {elapsed:.1} s; \
         alice->bob median {median:?}, worst {worst:?}"
    );
    assert!(limited > 0, "the flood was limited");
    // One second of burst, then the rate: never more than that was accepted.
    assert!(
        accepted as f64 <= rate * (elapsed + 1.0) + 1.0,
        "{accepted} accepted in {elapsed:.1} s at {rate}/s"
    );
    // Generous bounds (a debug build on a busy 2-core machine): a starved
    // client would take seconds, not milliseconds.
    assert!(median < Duration::from_millis(100), "median {median:?}");
    assert!(worst < Duration::from_secs(2), "worst {worst:?}");
    alice.close().await;
    bob.close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_upgrades_with_invalid_names_change_nothing() {
    let server = TestServer::start().await;
    let bad = [
        "bad%20name",
        "%00",
        "a/b",
        "",
        "%C3%A9t%C3%A9",
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        "bob!",
        "..%2F..",
        "%FF",
        "a%2Fb",
    ];
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let addr = server.addr;
            tokio::spawn(async move {
                let mut statuses = std::collections::BTreeMap::<String, u32>::new();
                for i in 0..1250 {
                    let name = bad[(t + i) % bad.len()];
                    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
                    let request = format!(
                        "GET /ws/{name} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\n\
                         Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
                         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
                    );
                    tcp.write_all(request.as_bytes()).await.unwrap();
                    let mut head = [0u8; 12];
                    tokio::time::timeout(WAIT, tcp.read_exact(&mut head))
                        .await
                        .expect("every attempt is answered")
                        .unwrap();
                    *statuses
                        .entry(String::from_utf8_lossy(&head[9..12]).to_string())
                        .or_default() += 1;
                }
                statuses
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        let statuses = t.await.unwrap();
        assert_eq!(
            statuses.keys().collect::<Vec<_>>(),
            vec!["400"],
            "{statuses:?}"
        );
        total += statuses["400"];
    }
    assert_eq!(total, 10_000);

    // The server is untouched and still serves.
    let state = server.inspect().await;
    assert_eq!(
        state["server"]["connections_served"], 0,
        "{}",
        state["server"]
    );
    assert_eq!(state["presence"], json!([]));
    let mut alice = server.connect("alice").await;
    assert_eq!(alice.request(json!({"type":"ping"})).await["type"], "pong");
    alice.close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_never_read_are_closed_and_their_presence_updated() {
    let server = TestServer::start_with(Config {
        net: NetLimits {
            idle_timeout: Some(Duration::from_millis(900)),
            outbox_frames: 64,
            ..NetLimits::default()
        },
        ..Config::default()
    })
    .await;
    let mut talker = server.connect("talker").await;
    assert_eq!(
        talker
            .request(json!({"type":"group_join","group":"g","ref":0}))
            .await["status"],
        "ok"
    );
    // Ten connections that read their welcome and join a group, then never read again.
    let mut silent = Vec::new();
    for i in 0..10 {
        let mut c = server.connect(&format!("silent{i}")).await;
        c.send(json!({"type":"group_join","group":"g"})).await;
        silent.push(c);
    }
    // And one that reads (so it answers pings) but never sends anything.
    let mut reader = server.connect("reader").await;
    let reading = tokio::spawn(async move {
        let mut frames = 0;
        let end = Instant::now() + Duration::from_secs(4);
        while let Ok(Some(Ok(_))) = tokio::time::timeout_at(end.into(), reader.ws.next()).await {
            frames += 1;
        }
        (reader, frames)
    });
    // The talker posts large group messages nobody silent reads, and reads its acks.
    let (mut talk, mut acks) = talker.ws.split();
    let acking = tokio::spawn(async move {
        let end = Instant::now() + Duration::from_secs(4);
        while let Ok(Some(Ok(_))) = tokio::time::timeout_at(end.into(), acks.next()).await {}
        acks
    });
    let text = "x".repeat(4096);
    for i in 0..200 {
        let frame = json!({"type":"group_message","group":"g","text":text,"ref":i});
        talk.send(Message::text(frame.to_string())).await.unwrap();
    }
    let state = server
        .wait_for_state("only the talker and the reader left", |s| {
            s["presence"] == json!(["reader", "talker"])
        })
        .await;
    assert_eq!(state["invariants"].as_array().unwrap().len(), 4);
    assert!(state["invariants"]
        .as_array()
        .unwrap()
        .iter()
        .all(|i| i["holds"] == true));
    // Each silent one was closed, as too slow (1008) or as idle (4000).
    for mut c in silent {
        let code = close_code(&mut c).await;
        assert!(matches!(code, Some(1008 | 4000) | None), "{code:?}");
    }
    // The reader, idle but answering pings, outlived several timeouts.
    let (reader, _) = reading.await.unwrap();
    let state = server.inspect().await;
    assert!(has(&state["presence"], "reader"), "{state}");
    let _ = acking.await.unwrap();
    reader.close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn count_and_length_limits_answer_limit_reached_and_change_nothing() {
    let server = TestServer::start_with(Config {
        core: CoreConfig {
            max_text_chars: Some(5),
            max_groups: 2,
            max_group_size: 2,
            max_blocked: 1,
            ..CoreConfig::default()
        },
        net: NetLimits {
            max_connections_per_user: 2,
            ..NetLimits::default()
        },
        ..Config::default()
    })
    .await;
    let mut a = server.connect("ann").await;
    let refused = |v: &Value, r: i64| {
        assert_eq!(v["type"], "error", "{v}");
        assert_eq!(v["code"], "limit_reached", "{v}");
        assert_eq!(v["ref"], r, "{v}");
    };
    // Text: 5 characters (not bytes) pass, 6 do not.
    let ok = a
        .ask(json!({"type":"message","to":"zed","text":"ééééé","ref":1}))
        .await;
    assert_eq!(ok["status"], "queued");
    let v = a
        .ask(json!({"type":"message","to":"zed","text":"123456","ref":2}))
        .await;
    refused(&v, 2);
    assert!(v["detail"].as_str().unwrap().contains("--max-text-chars"));
    // Groups: two exist, a third is refused; a full group refuses a newcomer
    // but a member may join again.
    for (i, g) in ["g1", "g2"].iter().enumerate() {
        let v = a
            .ask(json!({"type":"group_join","group":g,"ref":10 + i}))
            .await;
        assert_eq!(v["status"], "ok");
    }
    refused(
        &a.ask(json!({"type":"group_join","group":"g3","ref":12}))
            .await,
        12,
    );
    let mut b = server.connect("ben").await;
    assert_eq!(
        b.ask(json!({"type":"group_join","group":"g1","ref":1}))
            .await["status"],
        "ok"
    );
    let mut c = server.connect("cat").await;
    refused(
        &c.ask(json!({"type":"group_join","group":"g1","ref":1}))
            .await,
        1,
    );
    assert_eq!(
        b.ask(json!({"type":"group_join","group":"g1","ref":2}))
            .await["status"],
        "ok"
    );
    // Blocks: one allowed, the same one again fine, a second refused.
    for r in [20, 21] {
        assert_eq!(
            a.ask(json!({"type":"block","user":"zed","ref":r})).await["status"],
            "ok"
        );
    }
    refused(
        &a.ask(json!({"type":"block","user":"yan","ref":22})).await,
        22,
    );
    let state = server.inspect().await;
    assert_eq!(state["offline_messages"]["zed"]["len"], 1);
    assert_eq!(state["groups"]["g1"], json!(["ann", "ben"]));
    assert!(state["groups"].get("g3").is_none());
    assert_eq!(state["blocked"]["ann"], json!(["zed"]));
    // Connections per user: a third device is refused at the upgrade.
    let second = server.connect("ann").await;
    assert_eq!(server.refused_status("/ws/ann").await, 429);
    second.close().await;
    for client in [a, b, c] {
        client.close().await;
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_connections_that_never_finish_the_handshake_are_closed() {
    let server = TestServer::start_with(Config {
        net: NetLimits {
            handshake_timeout: Some(Duration::from_millis(500)),
            ..NetLimits::default()
        },
        ..Config::default()
    })
    .await;
    // A real client first: once upgraded, the deadline no longer applies to it.
    let mut alice = server.connect("alice").await;
    let opened = Instant::now();
    let mut idle = Vec::new();
    for i in 0..60 {
        let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        if i % 2 == 1 {
            // Half a request: the classic slowloris.
            tcp.write_all(b"GET /ws/bob HTTP/1.1\r\nHost: x\r\n")
                .await
                .unwrap();
        }
        idle.push(tcp);
    }
    for mut tcp in idle {
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(WAIT, tcp.read(&mut buf))
            .await
            .expect("the server closes it well before the test's own timeout");
        // Closed: end of file, or a reset.
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
    let waited = opened.elapsed();
    assert!(
        waited >= Duration::from_millis(450),
        "not before the deadline: {waited:?}"
    );
    // alice is past the deadline and still chats; plain HTTP still works.
    assert_eq!(alice.request(json!({"type":"ping"})).await["type"], "pong");
    assert_eq!(server.get("/healthz").await.0, 200);
    alice.close().await;
    server.stop().await;
}

/// A message built to hijack a terminal (retitle it, clear it, forge a red
/// line, reverse the text, a C1 CSI) reaches `vivachat client` as inert text:
/// every control and direction mark is shown as a visible escape.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_shows_terminal_escapes_inertly() {
    let server = TestServer::start().await;
    let url = format!("ws://{}", server.addr);
    let mut bob = common::Proc::spawn(&["client", "bob", "--url", &url, "--color", "never"]);
    bob.expect("welcome");
    let mut mallory = server.connect("mallory").await;
    let attack =
        "\u{1b}]0;PWNED\u{7}\u{1b}[2J\u{1b}[31mFAKE\u{202e}gnp.exe\u{9b}1m\nalice -> bob: forged";
    let ack = mallory
        .request(json!({"type":"message","to":"bob","text":attack}))
        .await;
    assert_eq!(ack["status"], "delivered");
    let line = bob.expect("FAKE");
    assert!(
        !line.chars().any(|c| c.is_control() || c == '\u{202e}'),
        "raw control characters reached the terminal: {line:?}"
    );
    assert!(
        line.contains(
            r"\x1b]0;PWNED\x07\x1b[2J\x1b[31mFAKE\u{202e}gnp.exe\x9b1m\nalice -> bob: forged"
        ),
        "{line}"
    );
    // The forged second line stayed on the first: nothing else arrived.
    bob.say("/ping");
    assert!(bob.next_line().starts_with("pong"));
    server.stop().await;
}

/// The upgrade's status for `path` on `port` (101 when admitted), and how long it took.
async fn upgrade(port: u16, path: String) -> (u16, Duration) {
    let started = Instant::now();
    let url = format!("ws://127.0.0.1:{port}{path}");
    let status = match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url)).await {
        Ok(Ok((mut ws, response))) => {
            let _ = ws.close(None).await;
            response.status().as_u16()
        }
        Ok(Err(tokio_tungstenite::tungstenite::Error::Http(r))) => r.status().as_u16(),
        Ok(Err(e)) => panic!("{path}: {e}"),
        Err(_) => panic!("{path}: no answer in {WAIT:?}"),
    };
    (status, started.elapsed())
}

/// 150 upgrades with wrong tokens for one claimed name, all at once: every
/// correct-token login for another claimed name is still admitted within 2 s
/// (no 503 for anyone who has the right token), and memory stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_token_floods_for_one_name_never_lock_out_another_owner() {
    let (server, port) = common::Proc::serve(&["--port", "0", "--quiet"]);
    for (name, key) in [("owner", "owner-key"), ("other", "other-key")] {
        assert_eq!(
            upgrade(port, format!("/ws/{name}?token={key}")).await.0,
            101
        );
    }
    let rss_before = server.rss_kib();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let slow_token_checks = || async move {
        let (_, body) = http_get(addr, "/inspect", &[]).await;
        serde_json::from_str::<Value>(&body).unwrap()["server"]["slow_token_checks"]
            .as_u64()
            .unwrap()
    };
    let runs_before = slow_token_checks().await;
    let guesses: Vec<_> = (0..150)
        .map(|i| tokio::spawn(upgrade(port, format!("/ws/owner?token=guess{i}"))))
        .collect();
    let logins: Vec<_> = (0..8)
        .map(|_| tokio::spawn(upgrade(port, "/ws/other?token=other-key".to_string())))
        .collect();
    for login in logins {
        let (status, took) = login.await.unwrap();
        assert_eq!(status, 101, "the owner of `other` was refused");
        assert!(took < Duration::from_secs(2), "admitted after {took:?}");
    }
    for guess in guesses {
        let (status, _) = guess.await.unwrap();
        assert!(status == 401 || status == 429, "a guess got {status}");
    }
    // And the owner of the flooded name gets in too; not one Argon2 run for any of it.
    assert_eq!(
        upgrade(port, "/ws/owner?token=owner-key".into()).await.0,
        101
    );
    assert_eq!(slow_token_checks().await, runs_before);
    let rss_after = server.rss_kib();
    assert!(
        rss_after < rss_before + 32 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
}

/// After a restart nothing is remembered, so checks need Argon2: a flood of
/// wrong tokens for one name is still slowed per name (429), and the other
/// owners' logins go through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_a_flood_is_slowed_per_name_and_owners_still_get_in() {
    let path = common::temp_data_file("jam");
    let data = path.to_str().unwrap();
    let (server, port) = common::Proc::serve(&["--port", "0", "--quiet", "--data", data]);
    for (name, key) in [("owner", "owner-key"), ("other", "other-key")] {
        assert_eq!(
            upgrade(port, format!("/ws/{name}?token={key}")).await.0,
            101
        );
    }
    server.terminate();
    let (server, port) = common::Proc::serve(&["--port", "0", "--quiet", "--data", data]);
    let rss_before = server.rss_kib();
    let guesses: Vec<_> = (0..150)
        .map(|i| tokio::spawn(upgrade(port, format!("/ws/owner?token=guess{i}"))))
        .collect();
    let logins: Vec<_> = (0..8)
        .map(|_| tokio::spawn(upgrade(port, "/ws/other?token=other-key".to_string())))
        .collect();
    for login in logins {
        let (status, took) = login.await.unwrap();
        assert_eq!(status, 101);
        assert!(took < Duration::from_secs(2), "admitted after {took:?}");
    }
    let mut slowed = 0;
    for guess in guesses {
        let (status, _) = guess.await.unwrap();
        assert!(status == 401 || status == 429, "a guess got {status}");
        slowed += usize::from(status == 429);
    }
    assert!(slowed >= 100, "only {slowed} of 150 guesses were slowed");
    let rss_after = server.rss_kib();
    eprintln!("cold flood: RSS {rss_before} -> {rss_after} KiB");
    assert!(
        rss_after < rss_before + 32 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    server.terminate();
}

/// Samples a process's RSS every 50 ms until `stop`; returns the peak in KiB.
fn rss_sampler(pid: u32, stop: Arc<std::sync::atomic::AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut peak = 0;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            if let Some(kib) = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            {
                peak = peak.max(kib);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        peak
    })
}

/// Sends `frame(i)` for i = 0.. until `until`, keeping up to 16 unanswered;
/// returns the replies' statuses and error codes, counted.
async fn flood(
    port: u16,
    name: String,
    until: Instant,
    frame: impl Fn(usize) -> String,
) -> BTreeMap<String, usize> {
    let url = format!("ws://127.0.0.1:{port}/ws/{name}");
    let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let (mut tx, mut rx) = ws.split();
    let _ = rx.next().await; // welcome
    let mut counts = BTreeMap::new();
    let (mut sent, mut answered) = (0usize, 0usize);
    while Instant::now() < until {
        while sent - answered < 16 {
            if tx.send(Message::text(frame(sent))).await.is_err() {
                return counts;
            }
            sent += 1;
        }
        match tokio::time::timeout(WAIT, rx.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                let key = v["status"].as_str().or(v["code"].as_str()).unwrap_or("?");
                *counts.entry(key.to_string()).or_default() += 1;
                if v["type"] == "ack" || v["type"] == "error" {
                    answered += 1;
                }
            }
            Ok(Some(Ok(_))) => {}
            _ => break,
        }
    }
    counts
}

/// Every 300 ms alice sends bob a message; returns the slowest arrival.
async fn canary(port: u16, until: Instant) -> Duration {
    let (mut alice, mut bob) = (
        ws_client(port, "canary_a").await,
        ws_client(port, "canary_b").await,
    );
    let _ = alice.recv().await; // bob online
    let mut slowest = Duration::ZERO;
    let mut i = 0;
    while Instant::now() < until {
        let sent = Instant::now();
        alice
            .send(json!({"type":"message","to":"canary_b","text":format!("canary {i}")}))
            .await;
        let m = bob.recv_skipping_presence().await;
        assert_eq!(m["text"], format!("canary {i}"), "{m}");
        slowest = slowest.max(sent.elapsed());
        let ack = alice.recv_skipping_presence().await;
        assert_eq!(ack["status"], "delivered", "the canary was refused: {ack}");
        i += 1;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    slowest
}

async fn ws_client(port: u16, name: &str) -> common::Client {
    let url = format!("ws://127.0.0.1:{port}/ws/{name}");
    let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
        .await
        .unwrap()
        .unwrap();
    let mut c = common::Client {
        ws,
        welcome: Value::Null,
    };
    c.welcome = c.recv().await;
    c
}

/// What a server went through under an attack: its peak RSS, the replies the
/// attackers got, and the slowest canary message between two bystanders.
struct Siege {
    peak_mib: u64,
    replies: BTreeMap<String, usize>,
    slowest_canary: Duration,
}

impl Siege {
    /// What every memory attack must leave true: peak RSS under 384 MiB, the
    /// attackers got each of `replies` at least once, the canary within 2 s.
    fn held(&self, attack: &str, replies: &[&str]) {
        let (peak, got, slowest) = (self.peak_mib, &self.replies, self.slowest_canary);
        eprintln!("{attack}: peak RSS {peak} MiB, replies {got:?}, slowest canary {slowest:?}");
        assert!(peak < 384, "{attack}: peak RSS {peak} MiB");
        for reply in replies {
            assert!(
                got.get(*reply).copied().unwrap_or(0) > 0,
                "{attack}: never `{reply}`: {got:?}"
            );
        }
        assert!(
            slowest < Duration::from_secs(2),
            "{attack}: the canary took {slowest:?}"
        );
    }
}

/// Runs the attackers `start` spawns (given the moment to stop) for `secs`,
/// with the RSS sampler and the canary alongside.
async fn siege(
    server: &common::Proc,
    port: u16,
    secs: u64,
    start: impl FnOnce(Instant) -> Vec<tokio::task::JoinHandle<BTreeMap<String, usize>>>,
) -> Siege {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = rss_sampler(server.pid(), stop.clone());
    let until = Instant::now() + Duration::from_secs(secs);
    let attackers = start(until);
    let slowest_canary = canary(port, until).await;
    let mut replies: BTreeMap<String, usize> = BTreeMap::new();
    for a in attackers {
        for (k, n) in a.await.unwrap() {
            *replies.entry(k).or_default() += n;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    Siege {
        peak_mib: sampler.join().unwrap() / 1024,
        replies,
        slowest_canary,
    }
}

/// Ten attackers sending 60 KB direct messages until `until`: the k-th is
/// named `sender(k)`, and its i-th message goes to `recipient(k, i)`.
fn ten_senders_of_60_kb(
    port: u16,
    until: Instant,
    sender: fn(usize) -> String,
    recipient: fn(usize, usize) -> String,
) -> Vec<tokio::task::JoinHandle<BTreeMap<String, usize>>> {
    let text: Arc<str> = Arc::from("m".repeat(60_000));
    (0..10)
        .map(|k| {
            let text = text.clone();
            tokio::spawn(flood(port, sender(k), until, move |i| {
                json!({"type":"message","to":recipient(k, i),"text":&*text}).to_string()
            }))
        })
        .collect()
}

/// `--max-memory 256MiB`: ten connections send 60 KB direct messages to
/// thousands of names that never connect, for 15 s. Peak RSS stays under 384
/// MiB, the flooders are told `inbox_full` (with the reason), and a message
/// between two other users still arrives within 2 s all along.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_messages_to_new_names_stay_within_the_memory_budget() {
    let (server, port) = common::Proc::serve(&["--port", "0", "--quiet", "--max-memory", "256MiB"]);
    let got = siege(&server, port, 15, |until| {
        ten_senders_of_60_kb(
            port,
            until,
            |k| format!("flood{k}"),
            |k, i| format!("ghost{k}_{i}"),
        )
    })
    .await;
    got.held("64 KB flood", &["queued", "inbox_full"]);
    server.terminate();
}

/// 1,000 names join a group and leave for good; then a member posts tiny
/// messages to it as fast as it can: each is queued for 1,000 ghosts, until
/// the budget has no room, and memory stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ghost_members_of_a_group_cannot_take_the_memory() {
    let (server, port) = common::Proc::serve(&["--port", "0", "--quiet", "--max-memory", "256MiB"]);
    for g in 0..1000 {
        let mut ghost = ws_client(port, &format!("ghost{g}")).await;
        ghost
            .request(json!({"type":"group_join","group":"haunted"}))
            .await;
        drop(ghost);
    }
    let mut poster = ws_client(port, "poster").await;
    poster
        .send(json!({"type":"group_join","group":"haunted"}))
        .await;
    assert_eq!(poster.recv_skipping_presence().await["status"], "ok");
    drop(poster);
    let got = siege(&server, port, 8, |until| {
        vec![tokio::spawn(flood(port, "poster".into(), until, |i| {
            json!({"type":"group_message","group":"haunted","text":format!("boo {i}")}).to_string()
        }))]
    })
    .await;
    got.held("ghost group", &["inbox_full"]);
    server.terminate();
}

/// Ten connections that never read, each sent 60 KB messages by its own
/// sender in rounds of 8 s until the queues fill: each outbox is capped in bytes (evicted beyond it, its
/// messages put back in the queue), the senders are then stopped by their
/// share, and memory stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_that_never_read_cannot_take_the_memory() {
    let (server, port) = common::Proc::serve(&["--port", "0", "--quiet", "--max-memory", "256MiB"]);
    let mut victims = Vec::new();
    for v in 0..10 {
        victims.push(ws_client(port, &format!("stuck{v}")).await);
    }
    // The readers' sockets and outboxes absorb tens of megabytes before the
    // queues fill, so on a busy machine `inbox_full` may take more than one
    // 8 s round: the attack goes on (the readers stay stuck) for at most four
    // rounds, and every round must hold the memory and the canary.
    let mut replies: BTreeMap<String, usize> = BTreeMap::new();
    for _round in 0..4 {
        let got = siege(&server, port, 8, |until| {
            ten_senders_of_60_kb(
                port,
                until,
                |k| format!("pusher{k}"),
                |k, _| format!("stuck{k}"),
            )
        })
        .await;
        got.held("never-reading readers", &[]);
        for (k, n) in got.replies {
            *replies.entry(k).or_default() += n;
        }
        if replies.contains_key("inbox_full") {
            break;
        }
    }
    for reply in ["delivered", "inbox_full"] {
        assert!(
            replies.contains_key(reply),
            "never-reading readers: never `{reply}`: {replies:?}"
        );
    }
    drop(victims);
    server.terminate();
}

/// docs/performance.md's fill/drain figures: three rounds of queueing about
/// 100 MB for users who are offline, then letting them read it all. The
/// memory comes back after each drain (glibc trimmed; large buffers mapped).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_goes_back_after_the_queues_drain() {
    let (server, port) = common::Proc::serve(&["--port", "0", "--quiet", "--max-memory", "512MiB"]);
    let text = "d".repeat(50_000);
    let mut after_drain = Vec::new();
    let mut peaks = Vec::new();
    for round in 0..3 {
        // 16 senders (each has a 16 MiB share), 2 recipients each, 120 messages.
        let fills: Vec<_> = (0..16)
            .map(|s| {
                let text = text.clone();
                tokio::spawn(async move {
                    let mut c = ws_client(port, &format!("filler{s}")).await;
                    for i in 0..120 {
                        let to = format!("reader{s}_{}", i % 2);
                        c.send(json!({"type":"message","to":to,"text":text})).await;
                        let ack = c.recv_skipping_presence().await;
                        assert_eq!(ack["status"], "queued", "round {round}: {ack}");
                    }
                })
            })
            .collect();
        for f in fills {
            f.await.unwrap();
        }
        peaks.push(server.rss_kib() / 1024);
        for s in 0..16 {
            for r in 0..2 {
                let mut reader = ws_client(port, &format!("reader{s}_{r}")).await;
                for _ in 0..reader.welcome["queued"].as_u64().unwrap() {
                    reader.recv_skipping_presence().await;
                }
            }
        }
        // The server gives memory back within a few seconds of the drain.
        let peak = *peaks.last().unwrap();
        let deadline = Instant::now() + Duration::from_secs(8);
        while server.rss_kib() / 1024 * 2 >= peak && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        after_drain.push(server.rss_kib() / 1024);
    }
    eprintln!("fill/drain: RSS after filling {peaks:?} MiB, after draining {after_drain:?} MiB");
    let worst = *after_drain.iter().max().unwrap();
    let peak = *peaks.iter().max().unwrap();
    assert!(peak > 80, "the fill must take memory ({peak} MiB)");
    assert!(
        worst * 2 < peak,
        "RSS stays at {worst} MiB after draining (peak {peak} MiB)"
    );
    server.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn received_on_a_v1_connection_releases_nothing() {
    let server = TestServer::start().await;
    let mut alice = server.connect("alice").await;
    let mut bob = server.connect("bob").await;
    alice
        .send(json!({"type":"message","to":"carol","text":"for later"}))
        .await;
    let ack = alice.recv_skipping_presence().await;
    let id = ack["id"].as_u64().unwrap();
    // bob never resumed: a `received` from him, even naming carol's id or
    // one far ahead, changes nothing anywhere, and is not answered.
    for upto in [id, id + 1000] {
        bob.send(json!({"type":"received","id":upto})).await;
    }
    bob.assert_nothing_pending().await;
    let state = server.inspect().await;
    assert_eq!(state["released"], json!({}), "{state}");
    assert_eq!(state["offline_messages"]["carol"]["len"], 1, "{state}");
    server.stop().await;
}

/// What eve is told for `n` messages to `to`, in order.
async fn acks_for(eve: &mut common::Client, to: &str, n: usize) -> Vec<String> {
    let mut seen = Vec::new();
    for _ in 0..n {
        eve.send(json!({"type":"message","to":to,"text":"flood"}))
            .await;
        let reply = eve.recv_skipping_presence().await;
        let word = reply["status"].as_str().or(reply["code"].as_str());
        seen.push(word.unwrap().to_string());
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_inbox_does_not_reveal_a_block() {
    let server = TestServer::start_with(Config {
        core: CoreConfig {
            max_offline: 20,
            ..CoreConfig::default()
        },
        ..Config::default()
    })
    .await;
    // bob blocks eve; carol does not. Both are offline.
    let mut bob = server.connect("bob").await;
    let ack = bob.request(json!({"type":"block","user":"eve"})).await;
    assert_eq!(ack["status"], "ok");
    bob.close().await;
    let mut eve = server.connect("eve").await;
    let blocked = acks_for(&mut eve, "bob", 25).await;
    let open = acks_for(&mut eve, "carol", 25).await;
    assert_eq!(blocked, open, "eve can tell bob blocks her");
    assert_eq!(open[19], "queued");
    assert_eq!(open[20], "inbox_full");
    // Nothing of eve's was stored for bob.
    let state = server.inspect().await;
    assert!(state["offline_messages"].get("bob").is_none(), "{state}");
    server.stop().await;
}

/// Reads until `who` is announced online; the presence of users who
/// left just before (their close is applied after) may come first.
async fn sees_online(client: &mut common::Client, who: &str) {
    for _ in 0..100 {
        let frame = client.recv().await;
        if frame["type"] == "presence" && frame["user"] == who && frame["status"] == "online" {
            return;
        }
        assert_eq!(
            frame["type"], "presence",
            "only presence before it: {frame}"
        );
    }
    panic!("{who} was never announced online");
}

/// Issue "Hardening, round 2", attack 1: strangers fill every offline queue
/// to the budget (sixteen sender names, 60 KB messages to names that never
/// connect; twenty names, as each may keep only its share). Two online users who resume, as the page and the client do,
/// still chat: a copy held for an online reader takes the quarter of the
/// deques' budget that offline queueing cannot, and so does a v1 pair's
/// live message, which is never kept at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_filling_the_offline_queues_do_not_stop_live_chat() {
    let server = TestServer::start_with(Config::default().with_memory_budget(16 << 20)).await;
    let big = "m".repeat(60_000);
    let mut refused = 0;
    for k in 0..20 {
        let mut stranger = server.connect(&format!("stranger{k}")).await;
        for i in 0..12 {
            let to = format!("nobody{k}x{i}");
            let reply = stranger
                .ask(json!({"type":"message","to":to,"text":big}))
                .await;
            if reply["code"] == "inbox_full" {
                refused += 1;
                break;
            }
            assert_eq!(reply["status"], "queued", "{reply}");
        }
    }
    assert!(refused > 0, "the strangers never filled the queues");
    // Then tiny messages top up what the big ones left, until none fits.
    let mut topped = 0;
    'top: for k in 0..5 {
        let mut topper = server.connect(&format!("topper{k}")).await;
        for i in 0..5000 {
            let to = format!("nobody{k}y{}", i % 50);
            let reply = topper
                .ask(json!({"type":"message","to":to,"text":"."}))
                .await;
            if reply["code"] == "inbox_full" {
                if i == 0 {
                    break 'top;
                }
                break;
            }
            topped += 1;
        }
    }
    assert!(topped > 0, "the big messages left no gap to top up");
    let mut late = server.connect("latecomer").await;
    let reply = late
        .ask(json!({"type":"message","to":"nobody_else","text":"."}))
        .await;
    assert_eq!(
        reply["code"], "inbox_full",
        "the offline share is full: {reply}"
    );
    assert!(
        reply["detail"]
            .as_str()
            .unwrap()
            .contains("offline messages is full"),
        "{reply}"
    );

    // A resuming pair: every message is held until bob's client confirms it.
    let mut bob = server.connect("bob?resume=0").await;
    let mut alice = server.connect("alice?resume=0").await;
    sees_online(&mut bob, "alice").await;
    let mut last = 0;
    for i in 0..20 {
        let text = format!("live {i} {}", "x".repeat(1000));
        let ack = alice
            .ask(json!({"type":"message","to":"bob","text":text}))
            .await;
        assert_eq!(ack["status"], "delivered", "message {i}: {ack}");
        let got = bob.recv_skipping_presence().await;
        assert_eq!(got["text"], text);
        last = got["id"].as_u64().unwrap();
        if i % 5 == 4 {
            bob.send(json!({"type":"received","id":last})).await;
        }
    }
    bob.send(json!({"type":"received","id":last})).await;
    // And a v1 pair, whose live messages are never kept.
    let mut carol = server.connect("carol").await;
    let mut dave = server.connect("dave").await;
    sees_online(&mut carol, "dave").await;
    for i in 0..5 {
        let ack = carol
            .ask(json!({"type":"message","to":"dave","text":format!("v1 {i}")}))
            .await;
        assert_eq!(ack["status"], "delivered", "{ack}");
        assert_eq!(
            dave.recv_skipping_presence().await["text"],
            format!("v1 {i}")
        );
    }
    server.stop().await;
}

/// Issue "Hardening, round 2", attack 2's keep-alive: a resuming client that
/// never reads, and repeats `{"type":"received","id":0}`, is closed as idle
/// like any client that is not heard: a `received` that confirms
/// nothing new is not a sign of life. Beside it, a client that never reads
/// either but sends a new request each time stays open: only the repeat is
/// discounted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_received_does_not_keep_a_silent_client_alive() {
    let server = TestServer::start_with(Config {
        net: NetLimits {
            idle_timeout: Some(Duration::from_millis(900)),
            ..NetLimits::default()
        },
        ..Config::default()
    })
    .await;
    let repeater = server.connect("repeater?resume=0").await;
    let asker = server.connect("asker").await;
    // Neither ever reads again. Every 200 ms the repeater repeats its receipt
    // and the asker asks `who` (a request, heard as life), until told to stop.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let keep_sending = |mut client: common::Client, frame: Value| {
        let stop = stop.clone();
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = client.ws.send(Message::text(frame.to_string())).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            client
        })
    };
    let repeating = keep_sending(repeater, json!({"type":"received","id":0}));
    let asking = keep_sending(asker, json!({"type":"who"}));
    let state = server
        .wait_for_state("the repeater closed as idle", |s| {
            !has(&s["presence"], "repeater")
        })
        .await;
    assert!(has(&state["presence"], "asker"), "{state}");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    drop(repeating.await.unwrap());
    drop(asking.await.unwrap());
    server.stop().await;
}

/// Sends `per_sender` 60 KB messages to `to` from each of `senders` names
/// (each may keep only its share of the budget); returns how many were
/// acknowledged with `status`.
async fn fill_for(
    server: &TestServer,
    to: &str,
    senders: usize,
    per_sender: usize,
    status: &str,
) -> usize {
    let big = "q".repeat(60_000);
    let mut kept = 0;
    for k in 0..senders {
        let mut sender = server.connect(&format!("filler{to}{k}")).await;
        for _ in 0..per_sender {
            let ack = sender
                .ask(json!({"type":"message","to":to,"text":big}))
                .await;
            assert_eq!(ack["status"], status, "sender {k}: {ack}");
            kept += 1;
        }
        sender.close().await;
    }
    kept
}

/// Reads a connect-time flush of `expected` messages and returns their ids,
/// checking that each is the next one in id order.
async fn read_flush(client: &mut common::Client, expected: usize) -> Vec<u64> {
    let mut ids = Vec::with_capacity(expected);
    while ids.len() < expected {
        let frame = client.recv_skipping_presence().await;
        assert_eq!(
            frame["type"],
            "message",
            "frame {} of the flush: {frame}",
            ids.len()
        );
        assert_eq!(frame["offline"], true, "{frame}");
        let id = frame["id"].as_u64().unwrap();
        assert!(
            ids.last().is_none_or(|&last| id > last),
            "out of order: {id} after {ids:?}"
        );
        ids.push(id);
    }
    ids
}

/// Issue "Hardening, round 2", attack 3: a queue larger than every outbox
/// together locks its owner out no more. `--max-memory 16MiB` gives one
/// outbox 256 KiB and all of them 6 MiB. Carol, resuming, is held 8 MB
/// (32 times one outbox, more than all of them), and bob, v1, is queued
/// 5.9 MB (23 times one outbox). Each connects and is sent every message,
/// in order, at the pace of their socket, and a live message sent during
/// the flush comes after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_larger_than_every_outbox_reaches_its_owner() {
    let server = TestServer::start_with(Config::default().with_memory_budget(16 << 20)).await;
    // Carol reads everything live but never confirms: all of it stays held.
    let mut carol = server.connect("carol?resume=0").await;
    let reading = tokio::spawn(async move {
        let mut last = 0;
        loop {
            match tokio::time::timeout(Duration::from_secs(3), carol.next_seen()).await {
                Ok(Seen::Frame(f)) if f["type"] == "message" => last = f["id"].as_u64().unwrap(),
                Ok(Seen::Frame(_)) => {}
                _ => return (carol, last),
            }
        }
    });
    let held = fill_for(&server, "carol", 17, 8, "delivered").await;
    let (carol, _) = reading.await.unwrap();
    carol.close().await;
    let mut carol = server.connect("carol?resume=0").await;
    assert_eq!(carol.welcome["queued"], held, "{}", carol.welcome);
    let mut alice = server.connect("alice").await;
    let ack = alice
        .ask(json!({"type":"message","to":"carol","text":"after the flush"}))
        .await;
    assert_eq!(ack["status"], "delivered", "{ack}");
    let ids = read_flush(&mut carol, held).await;
    let live = carol.recv_skipping_presence().await;
    assert_eq!(live["text"], "after the flush", "{live}");
    carol.send(json!({"type":"received","id":live["id"]})).await;
    // The ping's answer comes after the `received` is applied: carol's
    // window is released before bob's senders start.
    carol.assert_nothing_pending().await;
    assert!(*ids.last().unwrap() < live["id"].as_u64().unwrap());

    // Bob is offline (v1): his messages are queued, then taken at connect.
    let queued = fill_for(&server, "bob", 14, 7, "queued").await;
    let mut bob = server.connect("bob").await;
    assert_eq!(bob.welcome["queued"], queued, "{}", bob.welcome);
    let ack = alice
        .ask(json!({"type":"message","to":"bob","text":"after the flush"}))
        .await;
    assert_eq!(ack["status"], "delivered", "{ack}");
    read_flush(&mut bob, queued).await;
    assert_eq!(
        bob.recv_skipping_presence().await["text"],
        "after the flush"
    );
    let state = server.inspect().await;
    assert!(
        state["offline_messages"].get("bob").is_none(),
        "bob's queue is empty: {state}"
    );
    server.stop().await;
}

/// A WebSocket to `path` whose socket has a 4 KB receive buffer, upgraded
/// and then never read: the server's writes to it stall almost at once.
async fn never_reading(
    port: u16,
    path: &str,
) -> tokio_tungstenite::WebSocketStream<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = tokio::time::timeout(WAIT, socket.connect(([127, 0, 0, 1], port).into()))
        .await
        .unwrap()
        .unwrap();
    let url = format!("ws://127.0.0.1:{port}{path}");
    let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::client_async(url, stream))
        .await
        .unwrap()
        .unwrap();
    ws
}

/// Issue "Hardening, round 2", attack 2: one name's unconfirmed window of
/// 64 x 60 KB (3.8 MB), then 150 connections that resume from 0 and never
/// read, each with a 4 KB receive buffer. Each flush is sent a batch at a
/// time, and what a stalled socket holds counts in the budget, so the
/// server grows by less than its whole `--max-memory` (64 MiB), where a
/// copy of the window for each would be 570 MB. Bystanders chat on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_flushes_to_readers_that_never_read_stay_within_the_budget() {
    let (server, port) = common::Proc::serve(&["--port", "0", "--quiet", "--max-memory", "64MiB"]);
    let big = "w".repeat(60_000);
    let mut mallory = ws_client(port, "mallory?resume=0").await;
    let mut sender = ws_client(port, "sender").await;
    let mut last = 0;
    for i in 0..64 {
        if i == 32 {
            // A sender's share is 2 MiB: a second name sends the rest.
            sender = ws_client(port, "sender2").await;
        }
        sender
            .send(json!({"type":"message","to":"mallory","text":big}))
            .await;
        let ack = sender.recv_skipping_presence().await;
        assert_eq!(ack["status"], "delivered", "message {i}: {ack}");
        last = mallory.recv_skipping_presence().await["id"]
            .as_u64()
            .unwrap();
    }
    assert!(last > 0);
    mallory.close().await;
    let before = server.rss_kib();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = rss_sampler(server.pid(), stop.clone());
    let mut stalled = Vec::new();
    for _ in 0..150 {
        stalled.push(never_reading(port, "/ws/mallory?resume=0").await);
    }
    // Every flush has begun and stalled by the time a bystander's message
    // and its ack have gone round after the last upgrade.
    let until = Instant::now() + Duration::from_secs(3);
    let slowest = canary(port, until).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let peak = sampler.join().unwrap();
    let grew_mib = peak.saturating_sub(before) / 1024;
    eprintln!("150 stalled resume flushes: RSS {before} KiB -> peak {peak} KiB; slowest canary {slowest:?}");
    assert!(
        grew_mib < 64,
        "the server grew by {grew_mib} MiB, over its --max-memory"
    );
    assert!(
        slowest < Duration::from_secs(2),
        "the canary took {slowest:?}"
    );
    drop(stalled);
    server.terminate();
}
