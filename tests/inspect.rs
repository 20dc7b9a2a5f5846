//! `vivachat inspect` and `serve --dashboard`, the real binary against a real
//! server whose state is built through real WebSocket clients.

mod common;

use std::io::{Read, Write};
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use common::{Proc, TestServer, BIN};
use serde_json::json;
use vivachat::inspection::Inspection;

const WAIT: Duration = Duration::from_secs(15);

/// Runs `vivachat inspect ARGS` to completion; returns (exit code, stdout, stderr).
async fn inspect(args: &[&str]) -> (i32, String, String) {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let out = Command::new(BIN)
            .arg("inspect")
            .args(&args)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    })
    .await
    .unwrap()
}

fn line_with<'a>(text: &'a str, needle: &str) -> &'a str {
    text.lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?} in\n{text}"))
}

/// alice on 2 devices and bob online; carol offline with 2 queued; #g1 = alice, bob;
/// bob blocks mallory.
async fn classroom(server: &TestServer) -> Vec<common::Client> {
    let mut alice1 = server.connect("alice").await;
    let alice2 = server.connect("alice").await;
    let mut bob = server.connect("bob").await;
    assert_eq!(alice1.recv().await["user"], "bob");
    for (c, text) in [(&mut alice1, "from alice"), (&mut bob, "from bob")] {
        let ack = c
            .request(json!({"type":"message","to":"carol","text":text}))
            .await;
        assert_eq!(ack["status"], "queued");
    }
    alice1
        .request(json!({"type":"group_join","group":"g1"}))
        .await;
    bob.request(json!({"type":"group_join","group":"g1"})).await;
    bob.request(json!({"type":"block","user":"mallory"})).await;
    vec![alice1, alice2, bob]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_show_the_state_built_by_real_clients() {
    let server = TestServer::start().await;
    let _clients = classroom(&server).await;
    let url = format!("http://{}", server.addr);
    let (code, text, err) = inspect(&["--url", &url]).await;
    assert_eq!(code, 0, "{err}");
    let alice = line_with(&text, "│ alice");
    assert!(alice.contains("┆       2 ┆"), "two devices: {alice}");
    assert!(alice.contains("127.0.0.1:"), "remote addresses: {alice}");
    assert!(
        line_with(&text, "│      2 ┆ alice, bob").contains("alice, bob"),
        "presence"
    );
    let carol = line_with(&text, "│ carol");
    assert!(
        carol.contains("┆      2 ┆") && carol.contains("from alice") && carol.contains("from bob"),
        "{carol}"
    );
    assert!(line_with(&text, "│ #g1").contains("alice, bob"));
    assert!(line_with(&text, "│ bob  ┆").contains("mallory"));
    let pushes = line_with(&text, "offline_messages   ┆ push_back");
    assert!(pushes.contains("┆     2 ┆"), "{pushes}");
    assert!(text.contains("✔ presence == users with >= 1 connection"));
    assert!(text.contains("core held"), "hold time in the header");
    // A cluster node says how many direct messages shared each round trip.
    if text.contains("Redis commands this node ran") {
        let line = line_with(&text, "batched: ");
        let numbers: Vec<u64> = line
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|n| n.parse().ok())
            .collect();
        let (rules, trips) = (numbers[0], numbers[1]);
        assert!(rules >= trips && trips >= 1, "{line}");
        assert!(line.contains("rules in one round trip"), "{line}");
    }

    // Filters.
    let (_, only_carol, _) = inspect(&["--url", &url, "--user", "carol"]).await;
    assert!(
        only_carol.contains("│ carol") && !only_carol.contains("│ alice"),
        "{only_carol}"
    );
    let (_, rows1, _) = inspect(&["--url", &url, "--rows", "1"]).await;
    assert!(rows1.contains("... and 1 more user (use --rows"), "{rows1}");
    let (_, queue, _) = inspect(&["--url", &url, "--only", "offline_messages"]).await;
    assert!(queue.contains("showing only offline_messages"), "{queue}");
    assert!(queue.contains("│ carol"), "carol's deque: {queue}");
    assert!(
        !queue.contains("│ alice") && !queue.contains("group_members  "),
        "only the deques: {queue}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_is_the_servers_snapshot_and_reads_back_typed() {
    let server = TestServer::start().await;
    let _clients = classroom(&server).await;
    let url = format!("http://{}", server.addr);
    let (code, text, err) = inspect(&["--url", &url, "--json"]).await;
    assert_eq!(code, 0, "{err}");
    let printed: Inspection = serde_json::from_str(&text).expect("--json is an Inspection");
    let direct: Inspection = serde_json::from_value(server.inspect().await).unwrap();
    assert_eq!(printed.snapshot.structures, direct.snapshot.structures);
    let structures = &printed.snapshot.structures;
    assert_eq!(structures.offline_messages["carol"].len, 2);
    assert_eq!(structures.connection_details.len(), 3);
    let info = printed.server.expect("server facts");
    // In memory unless the suite runs in durable mode (VIVACHAT_TEST_DURABLE).
    let durable = std::env::var_os("VIVACHAT_TEST_DURABLE").is_some();
    assert_eq!(info.durable, durable);
    assert_eq!(info.data_path.is_some(), durable);
    assert_eq!(info.max_offline, 10_000);
    server.stop().await;
}

#[tokio::test]
async fn an_unreachable_server_is_one_clear_line() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (code, out, err) = inspect(&["--url", &format!("http://127.0.0.1:{port}")]).await;
    assert_eq!(code, 1);
    assert!(out.is_empty());
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("cannot reach") && err.contains("Is `vivachat serve` running"),
        "{err}"
    );
    let (code, _, err) = inspect(&["--url", "https://example.ngrok.app"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("plain HTTP"), "{err}");
}

#[tokio::test]
async fn a_403_says_what_to_do_and_the_token_is_sent() {
    // A stand-in server that records the request and refuses it, as a real one
    // does for a non-loopback client without the right token.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(1) {
            let mut stream = stream.unwrap();
            let mut buf = [0u8; 4096];
            let n = stream.read(&mut buf).unwrap();
            tx.send(String::from_utf8_lossy(&buf[..n]).to_string())
                .unwrap();
            let body = "forbidden";
            let _ = write!(
                stream,
                "HTTP/1.1 403 Forbidden\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
        }
    });
    let (code, _, err) = inspect(&[
        "--url",
        &format!("http://{addr}"),
        "--admin-token",
        "s3cret",
    ])
    .await;
    let request = rx.recv_timeout(WAIT).unwrap();
    assert!(
        request.starts_with("GET /inspect HTTP/1.1\r\n"),
        "{request}"
    );
    // Header names are case-insensitive (RFC 9110); the value is exact.
    assert!(
        request.lines().any(|l| l
            .split_once(": ")
            .is_some_and(|(k, v)| k.eq_ignore_ascii_case("authorization") && v == "Bearer s3cret")),
        "{request}"
    );
    assert_eq!(code, 1);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("403") && err.contains("--admin-token"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_redraws_and_marks_what_changed() {
    let server = TestServer::start().await;
    let mut clients = classroom(&server).await;
    let url = format!("http://{}", server.addr);
    let mut watch = Proc::spawn(&["inspect", "--url", &url, "--watch", "--interval", "100ms"]);
    watch.expect("│ carol");
    // carol's deque grows; the next frame says so.
    let ack = clients[0]
        .request(json!({"type":"message","to":"carol","text":"third"}))
        .await;
    assert_eq!(ack["status"], "queued");
    watch.expect("3 (+1)");
    // The server goes away: watch keeps going and says so.
    server.stop().await;
    watch.expect("server unreachable since");
    watch.interrupt();
}

#[test]
fn serve_dashboard_redraws_the_tables_as_the_class_chats() {
    // A projector's 120 columns, whatever the terminal running the tests says.
    let mut command = common::command();
    command.env("COLUMNS", "120");
    let mut served = Proc::spawn_with(command, &["serve", "--port", "0", "--dashboard"]);
    let line = served.expect("listening on");
    let port: u16 = line.rsplit(':').next().unwrap().trim().parse().unwrap();
    // Where to join: the page, the board and the clients' address.
    let banner = served.expect(&format!("ws://127.0.0.1:{port}/ws/NAME"));
    assert!(
        banner.contains(&format!(
            "page http://127.0.0.1:{port}/ · board http://127.0.0.1:{port}/board"
        )),
        "{banner}"
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let _ws = runtime.block_on(async {
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/ws/zoe"))
            .await
            .unwrap();
        use futures_util::StreamExt;
        ws.next().await;
        ws
    });
    let row = served.expect("│ zoe (new)");
    // The compact layout: the groups' table beside the connections'.
    assert!(row.chars().count() <= 120, "{row}");
    served.expect("+ zoe connected");
    let rest = served.interrupt();
    assert!(rest.contains("Final operation counts"), "{rest}");
}

/// What a 120x40 terminal must show whole, whatever the view: every
/// structure's type (a student copies it into the viva), and no line wider
/// than the terminal (tmux's wrapped lines are joined again, so a line too
/// wide shows as wider than 120).
fn assert_nothing_cut(screen: &str) {
    for line in screen.lines() {
        assert!(
            line.chars().count() <= 120,
            "wider than the terminal: {line}\n{screen}"
        );
    }
    for facts in vivachat::core::FACTS {
        assert!(
            screen.contains(facts.rust_type),
            "{} is cut:\n{screen}",
            facts.rust_type
        );
    }
}

/// A class on the server at `addr`: four claimed names, and a long message
/// queued for someone offline.
async fn a_class(addr: std::net::SocketAddr) -> Vec<common::Client> {
    let mut class = Vec::new();
    // eve, last: no presence arrives after her welcome, so her next frame is her ack.
    for name in ["alice", "bob", "carol", "dave", "eve"] {
        let token = if name == "eve" {
            ""
        } else {
            "?token=the-token-0123456789"
        };
        let url = format!("ws://{addr}/ws/{name}{token}");
        let (ws, _) = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_tungstenite::connect_async(url),
        )
        .await
        .unwrap()
        .unwrap();
        let mut c = common::Client {
            ws,
            welcome: serde_json::Value::Null,
        };
        c.welcome = c.recv().await;
        class.push(c);
    }
    let ack = class[4]
        .request(json!({"type":"message","to":"nobody-here","text":"are you there? this is a longer message than a cell"}))
        .await;
    assert_eq!(ack["status"], "queued");
    class
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_watch_in_a_120_by_40_terminal_cuts_nothing() {
    let server = TestServer::start().await;
    let _class = a_class(server.addr).await;
    let shell = format!("{BIN} inspect --url http://{} --watch", server.addr);
    let screen = tokio::task::spawn_blocking(move || {
        common::tmux_run(&shell, 120, 40, "invariants hold", Duration::from_secs(20))
    })
    .await
    .unwrap();
    let Some(screen) = screen else {
        return;
    };
    assert_nothing_cut(&screen);
    // Where the state lives, whole: in memory, or the data file's path.
    let state = server.inspect().await;
    let cluster = &state["server"]["cluster"];
    let mode = match (cluster.is_object(), state["server"]["data_path"].as_str()) {
        (true, _) => {
            let nodes: Vec<&str> = cluster["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n.as_str().unwrap())
                .collect();
            format!(
                "cluster node {} of {} on Redis {}",
                cluster["node"].as_str().unwrap(),
                nodes.join(", "),
                cluster["redis"].as_str().unwrap()
            )
        }
        (false, Some(path)) => format!("durable: {path}"),
        (false, None) => "in memory: lost on restart".to_string(),
    };
    assert!(screen.contains(&mode), "{mode}:\n{screen}");
    // On a Redis Cluster, the slot and its master too, whole.
    if let Some(slot) = cluster["redis_cluster"].as_str() {
        assert!(screen.contains(slot), "{slot}:\n{screen}");
    }
    assert!(
        screen.contains("4 claimed: alice, bob, carol, dave") || screen.contains("more"),
        "{screen}"
    );
    server.stop().await;
}

#[test]
fn the_dashboard_in_a_120_by_40_terminal_cuts_nothing_and_says_where_to_join() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let shell = format!("{BIN} serve --port {port} --dashboard");
    // The class joins once the server answers; then the dashboard redraws.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let joined = std::thread::spawn(move || {
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "the server never answered"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        runtime.block_on(async move {
            let class = a_class(addr).await;
            // Held open until the screen was read.
            tokio::time::sleep(Duration::from_secs(4)).await;
            drop(class);
        });
    });
    let screen = common::tmux_run(&shell, 120, 40, "nobody-here", Duration::from_secs(20));
    joined.join().unwrap();
    let Some(screen) = screen else {
        return;
    };
    assert_nothing_cut(&screen);
    for address in [
        format!("page http://127.0.0.1:{port}/"),
        format!("board http://127.0.0.1:{port}/board"),
        format!("ws://127.0.0.1:{port}/ws/NAME"),
    ] {
        assert!(screen.contains(&address), "{address}:\n{screen}");
    }
    let log = screen.find("event log").expect("an event log");
    let tables = screen.find("active_connections").expect("the tables");
    assert!(log < tables, "the event log is above the tables:\n{screen}");
}
