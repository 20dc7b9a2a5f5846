//! The browser-facing routes over plain HTTP and WebSocket, as an attacker's
//! page or a proxy would reach them: the Origin rule for upgrades, the Host
//! rule for `/inspect` and `/board` (DNS rebinding), the pages' security
//! headers, the board's feed and its access rule, and the name check.

mod common;

use std::time::Duration;

use common::{http_get, TestServer, WAIT};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use vivachat::server::Config;

/// The status of an upgrade to `/ws/NAME` with these extra headers (101 when accepted).
async fn upgrade_status(server: &TestServer, name: &str, headers: &[(&str, &str)]) -> u16 {
    let mut request = server
        .url(&format!("/ws/{name}"))
        .into_client_request()
        .unwrap();
    for (k, v) in headers {
        let key: tokio_tungstenite::tungstenite::http::HeaderName = k.parse().unwrap();
        request
            .headers_mut()
            .insert(key, HeaderValue::from_str(v).unwrap());
    }
    match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
        .await
        .expect("upgrade timed out")
    {
        Ok((mut ws, response)) => {
            let _ = ws.close(None).await;
            response.status().as_u16()
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(e) => panic!("upgrade failed without an HTTP status: {e}"),
    }
}

#[tokio::test]
async fn an_upgrade_from_a_foreign_origin_is_refused_with_403_and_changes_nothing() {
    let server = TestServer::start().await;
    let host = server.addr.to_string();
    for origin in [
        "http://evil.example",
        "null",
        "http://localhost:1",
        "https://127.0.0.1",
    ] {
        let status = upgrade_status(&server, "mallory", &[("origin", origin)]).await;
        assert_eq!(status, 403, "Origin {origin}");
    }
    let state = server.inspect().await;
    assert_eq!(state["presence"], json!([]), "{state}");
    assert_eq!(state["server"]["connections_served"], 0);

    // The server's own page, and programs that send no Origin, are let in.
    let own = format!("http://{host}");
    assert_eq!(
        upgrade_status(&server, "alice", &[("origin", &own)]).await,
        101
    );
    assert_eq!(upgrade_status(&server, "bob", &[]).await, 101);
    server.stop().await;
}

#[tokio::test]
async fn allow_origin_and_public_url_let_their_pages_in() {
    let server = TestServer::start_with(Config {
        allow_origins: vec!["https://class.example/".into()],
        public_url: Some("https://abc.trycloudflare.com/".into()),
        ..Config::default()
    })
    .await;
    assert_eq!(
        upgrade_status(&server, "a", &[("origin", "https://class.example")]).await,
        101
    );
    assert_eq!(
        upgrade_status(&server, "b", &[("origin", "https://abc.trycloudflare.com")]).await,
        101
    );
    assert_eq!(
        upgrade_status(&server, "c", &[("origin", "https://other.example")]).await,
        403
    );
    server.stop().await;
}

#[tokio::test]
async fn the_chat_page_works_from_every_host_form() {
    let server = TestServer::start().await;
    let port = server.addr.port();
    // localhost, 127.0.0.1, a LAN address, and a tunnel's name (which adds a
    // forwarding header): the page loads and its own upgrade is accepted.
    let forms = [
        (format!("localhost:{port}"), "http", None),
        (format!("127.0.0.1:{port}"), "http", None),
        (format!("192.168.1.20:{port}"), "http", None),
        (
            "abc.trycloudflare.com".to_string(),
            "https",
            Some("203.0.113.9"),
        ),
    ];
    for (i, (host, scheme, forwarded)) in forms.iter().enumerate() {
        let mut headers = vec![("host", host.as_str())];
        if let Some(ip) = forwarded {
            headers.push(("x-forwarded-for", ip));
        }
        let (status, body) = http_get(server.addr, "/", &headers).await;
        assert_eq!(status, 200, "{host}");
        assert!(
            body.contains(r#"<label for="name">Your name</label>"#),
            "{host}"
        );
        let origin = format!("{scheme}://{host}");
        headers.push(("origin", origin.as_str()));
        let status = upgrade_status(&server, &format!("u{i}"), &headers).await;
        assert_eq!(status, 101, "upgrade from the page at {origin}");
    }
    server.stop().await;
}

#[tokio::test]
async fn inspect_and_the_board_refuse_a_rebound_host() {
    let server = TestServer::start().await;
    let port = server.addr.port();
    for path in ["/inspect", "/board", "/board/feed"] {
        for host in [format!("evil.example:{port}"), "192.168.1.20:8000".into()] {
            let (status, body) = http_get(server.addr, path, &[("host", &host)]).await;
            assert_eq!(status, 403, "{path} with Host {host}: {body}");
            assert!(body.contains("this machine's names"), "{body}");
        }
        for host in [format!("localhost:{port}"), format!("127.0.0.1:{port}")] {
            let status = if path == "/board/feed" {
                feed_status(&server, &host, None).await
            } else {
                http_get(server.addr, path, &[("host", &host)]).await.0
            };
            assert_eq!(status, 200, "{path} with Host {host}");
        }
    }
    // Through a proxy or tunnel (a forwarding header), loopback is not local.
    let (status, _) = http_get(server.addr, "/board", &[("x-forwarded-for", "203.0.113.9")]).await;
    assert_eq!(status, 403);
    server.stop().await;
}

/// Opens the feed and returns its status (reading the head only: it streams).
async fn feed_status(server: &TestServer, host: &str, token: Option<&str>) -> u16 {
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let mut request = format!("GET /board/feed HTTP/1.1\r\nHost: {host}\r\n");
    if let Some(t) = token {
        request += &format!("Authorization: Bearer {t}\r\n");
    }
    request += "\r\n";
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut lines = BufReader::new(stream).lines();
    let status_line = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("no answer")
        .unwrap()
        .unwrap();
    status_line.split(' ').nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn with_an_admin_token_the_board_page_opens_and_its_feed_needs_the_token() {
    let server = TestServer::start_with(Config {
        admin_token: Some("s3cret".into()),
        ..Config::default()
    })
    .await;
    let host = server.addr.to_string();
    // The page holds no data: it loads, then asks for the token.
    let (status, body) = http_get(server.addr, "/board", &[]).await;
    assert_eq!(status, 200);
    assert!(body.contains("Admin token"), "{body}");
    assert_eq!(feed_status(&server, &host, None).await, 403);
    assert_eq!(feed_status(&server, &host, Some("wrong")).await, 403);
    assert_eq!(feed_status(&server, &host, Some("s3cret")).await, 200);
    server.stop().await;
}

#[tokio::test]
async fn every_page_carries_a_same_origin_only_csp_and_the_assets_are_embedded() {
    let server = TestServer::start().await;
    let mut weight = 0;
    for path in [
        "/",
        "/board",
        "/assets/chat.js",
        "/assets/board.js",
        "/assets/common.js",
        "/assets/chat.css",
        "/assets/board.css",
        "/assets/icon.svg",
        "/join.svg",
    ] {
        let raw = raw_get(&server, path).await;
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        let head = head.to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 200"), "{path}: {head}");
        assert!(
            head.contains("content-security-policy: default-src 'none'; script-src 'self';"),
            "{path}: {head}"
        );
        assert!(head.contains("x-content-type-options: nosniff"), "{path}");
        // Nothing from anywhere else: no absolute URL to another host.
        for needle in ["http://", "https://", "//cdn", "@import", "fonts.g"] {
            if path.ends_with(".svg") && needle == "http://" {
                continue; // an SVG's own xmlns, which is a name, never fetched
            }
            assert!(!body.contains(needle), "{path} mentions {needle}");
        }
        weight += body.len();
    }
    assert!(weight < 200_000, "page weight {weight} bytes");
    let (status, _) = server.get("/assets/../Cargo.toml").await;
    assert_eq!(status, 404);
    server.stop().await;
}

async fn raw_get(server: &TestServer, path: &str) -> String {
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        server.addr
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(
        WAIT,
        tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut raw),
    )
    .await
    .unwrap()
    .unwrap();
    String::from_utf8_lossy(&raw).to_string()
}

#[tokio::test]
async fn the_name_check_says_whether_a_name_is_claimed_and_nothing_else() {
    let server = TestServer::start().await;
    let (status, body) = server.get("/names/sam").await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"name": "sam", "claimed": false})
    );
    let _sam = server
        .connect_raw("/ws/sam?token=k3y-of-sam")
        .await
        .unwrap();
    let (_, body) = server.get("/names/sam").await;
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"name": "sam", "claimed": true})
    );
    let (status, body) = server.get("/names/no%20spaces").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("error"));
    server.stop().await;
}

#[tokio::test]
async fn the_feed_pushes_a_frame_per_change_coalesced_and_stops_at_shutdown() {
    let server = TestServer::start().await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let request = format!("GET /board/feed HTTP/1.1\r\nHost: {}\r\n\r\n", server.addr);
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut lines = BufReader::new(stream).lines();
    // A frame is one JSON line inside a chunk; pick out the ones that parse.
    let mut next_frame = async || -> Value {
        loop {
            let line = tokio::time::timeout(WAIT, lines.next_line())
                .await
                .expect("no frame in time")
                .unwrap()
                .expect("feed ended");
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                if v.get("seq").is_some() {
                    return v;
                }
            }
        }
    };
    let first = next_frame().await;
    assert_eq!(first["totals"]["online"], 0);
    assert!(first["join_url"]
        .as_str()
        .unwrap()
        .starts_with("http://127.0.0.1:"));

    // 200 messages to an offline user in a burst: far fewer frames than events.
    let mut alice = server.connect("alice").await;
    for i in 0..200 {
        alice
            .send(json!({"type": "message", "to": "bob", "text": format!("m{i}")}))
            .await;
    }
    for _ in 0..200 {
        assert_eq!(alice.recv().await["status"], "queued");
    }
    let mut frames = 0;
    let last = loop {
        let frame = next_frame().await;
        frames += 1;
        if frame["totals"]["queued"] == 200 {
            break frame;
        }
        assert!(frames < 50, "never saw 200 queued");
    };
    assert!(
        frames <= 25,
        "{frames} frames for 201 events: not coalesced"
    );
    let bob = &last["offline_messages"]["items"][0];
    assert_eq!(bob["len"], 200);
    assert_eq!(
        bob["boxes"].as_array().unwrap().len(),
        8,
        "only the ends are sent"
    );
    assert_eq!(bob["skipped"], 192);
    assert_eq!(last["flow"]["to"], "bob");
    assert_eq!(last["flow"]["status"], "queued");
    assert!(last["events"].as_array().unwrap().len() <= 8);
    assert!(last["events"][0]
        .as_str()
        .unwrap()
        .contains("offline_messages[bob].push_back"));

    let report = tokio::time::timeout(Duration::from_secs(10), server.stop())
        .await
        .expect("an open feed must not hold shutdown up");
    assert!(report.connections_served >= 1);
}
