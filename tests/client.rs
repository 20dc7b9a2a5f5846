//! `vivachat client`, the real binary driven through pipes, against a real server.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::{Proc, TestServer};
use vivachat::server::Config;

/// A scripted client: commands go to its stdin, its stdout lines come back.
fn client(server: &TestServer, name: &str, extra: &[&str]) -> Proc {
    let url = format!("ws://{}", server.addr);
    let mut args = vec!["client", name, "--url", &url, "--color", "never"];
    args.extend_from_slice(extra);
    let mut c = Proc::spawn(&args);
    // "welcome alice: ..." or, with --json, {"type":"welcome",...}.
    c.expect("welcome");
    c
}

/// Proves nothing else arrived: a ping's pong comes back with no other line first.
fn expect_quiet(c: &mut Proc) {
    c.say("/ping");
    let line = c.next_line();
    assert!(
        line.starts_with("pong: round trip "),
        "expected only a pong, got {line:?}"
    );
}

fn send_once(server: &TestServer, from: &str, to: &str, text: &str) -> (i32, String, String) {
    let out = common::command()
        .args([
            "client",
            from,
            "--url",
            &format!("ws://{}", server.addr),
            "--color",
            "never",
            "--send",
            to,
            text,
        ])
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_exchange_direct_and_group_messages() {
    let server = TestServer::start().await;
    let mut alice = client(&server, "alice", &[]);
    let mut bob = client(&server, "bob", &[]);
    assert_eq!(alice.expect("* bob"), "* bob is online");

    alice.say("/to bob");
    alice.expect("! talking to bob");
    alice.say("hi bob");
    assert!(alice
        .expect("✓ delivered")
        .ends_with(r#"(to bob: "hi bob")"#));
    assert_eq!(bob.expect("hi bob"), "alice -> bob: hi bob");
    // bob's client confirms what it showed: alice gets the second tick.
    let tick = alice.expect("✓✓ received");
    assert!(tick.ends_with(r#"(to bob: "hi bob")"#), "{tick}");

    bob.say("@alice hi alice");
    assert_eq!(alice.expect("hi alice"), "bob -> alice: hi alice");
    bob.expect("✓ delivered");

    for c in [&mut alice, &mut bob] {
        c.say("/join g1");
        assert_eq!(c.expect("✓ ok"), "✓ ok (join #g1)");
    }
    bob.say("#g1 hello group");
    assert_eq!(alice.expect("hello group"), "#g1 bob: hello group");
    assert!(bob
        .expect("✓ delivered")
        .ends_with(r#"(to #g1: "hello group")"#));
    alice.say("/g g1 second");
    assert_eq!(bob.expect("second"), "#g1 alice: second");
    alice.say("/to #g1");
    alice.say("plain to the group");
    assert_eq!(bob.expect("plain to"), "#g1 alice: plain to the group");
    bob.say("/msg alice direct again");
    assert_eq!(alice.expect("direct again"), "bob -> alice: direct again");

    let (code, _) = alice.finish();
    assert_eq!(code, 0);
    bob.expect("* alice is offline");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_user_gets_the_queue_in_order_on_connect() {
    let server = TestServer::start().await;
    for text in ["first", "second"] {
        let (code, out, err) = send_once(&server, "alice", "carol", text);
        assert_eq!(code, 0, "{err}");
        assert!(
            out.trim().starts_with("✓ queued #") && out.contains(&format!("(to carol: {text:?})")),
            "{out}"
        );
    }
    // alice's `--send` connections must have closed, or carol could see
    // alice online in her welcome and then hear her go offline.
    server
        .wait_for_state("alice's sends to close", |s| {
            s["presence"] == serde_json::json!([])
        })
        .await;
    let mut carol = client(&server, "carol", &[]);
    assert!(
        carol.seen[0].contains("2 queued message(s) coming"),
        "{:?}",
        carol.seen
    );
    let first = carol.expect("first");
    assert!(
        first.starts_with("[offline, sent ") && first.ends_with("alice -> carol: first"),
        "{first}"
    );
    let second = carol.expect("alice -> carol");
    assert!(second.ends_with("alice -> carol: second"), "{second}");
    expect_quiet(&mut carol);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_and_unblock() {
    let server = TestServer::start().await;
    let mut alice = client(&server, "alice", &[]);
    let mut bob = client(&server, "bob", &[]);
    alice.expect("* bob is online");
    bob.say("/block alice");
    assert_eq!(bob.expect("✓ ok"), "✓ ok (block alice)");
    alice.say("@bob can you hear me");
    assert!(
        alice
            .expect("✓ delivered")
            .ends_with(r#"(to bob: "can you hear me")"#),
        "a blocked sender sees what she would see unblocked (v1.1)"
    );
    expect_quiet(&mut bob);
    bob.say("/unblock alice");
    assert_eq!(bob.expect("✓ ok"), "✓ ok (unblock alice)");
    alice.say("@bob and now");
    alice.expect("✓ delivered");
    assert_eq!(bob.expect("and now"), "alice -> bob: and now");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_slash_command_and_malformed_ones() {
    let server = TestServer::start().await;
    let mut zed = client(&server, "zed", &[]);
    let _amy = client(&server, "amy", &[]);
    zed.expect("* amy is online");

    zed.say("/help");
    for usage in [
        "/to bob | /to #g1",
        "/msg bob TEXT",
        "/g g1 TEXT",
        "/join g1",
        "/leave g1",
        "/block bob",
        "/unblock bob",
        "/who",
        "/ping",
        "/quit",
    ] {
        zed.expect(usage);
    }
    zed.say("/who");
    assert_eq!(zed.expect("online:"), "online: amy, zed");
    zed.say("/ping");
    zed.expect("pong: round trip ");
    zed.say("/join g2");
    zed.expect("✓ ok (join #g2)");
    zed.say("/leave g2");
    zed.expect("✓ ok (leave #g2)");
    zed.say("/g g2 anyone?");
    assert!(zed
        .expect("✗ not_member")
        .ends_with(r#"(to #g2: "anyone?")"#));

    // Malformed lines: a one-line hint each, and the client keeps working.
    zed.say("/bogus");
    assert_eq!(
        zed.expect("unknown command"),
        "! unknown command /bogus; /help lists them"
    );
    zed.say("/msg amy");
    assert_eq!(zed.expect("usage"), "! usage: /msg bob TEXT");
    zed.say("no conversation yet");
    zed.expect("! no conversation yet: /to bob");
    zed.say("@no/such x");
    zed.expect("not a valid user name");
    zed.say("/to");
    zed.expect("! usage: /to bob");
    zed.say("\u{0}\u{1b}[2J@@@///");
    zed.expect("!");
    zed.say("/msg amy still alive");
    zed.expect("✓ delivered");

    // /quit leaves at once, even with stdin still open.
    zed.say("/quit");
    assert!(
        zed.exited().success(),
        "/quit exits at once, with stdin still open"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_reconnects_after_a_server_restart() {
    let server = TestServer::start().await;
    let addr = server.addr;
    let mut alice = client(&server, "alice", &[]);
    alice.say("/join g1");
    alice.expect("✓ ok (join #g1)");
    server.stop().await;
    let lost = alice.expect("! connection lost");
    assert!(lost.contains("reconnecting in 1 s"), "{lost}");
    alice.say("@bob while down");
    alice.expect("! not connected");

    let server = TestServer::start_at(addr, Config::default()).await;
    alice.expect("! reconnected");
    alice.expect("welcome alice:");
    alice.say("@bob after restart");
    assert!(alice
        .expect("✓ queued")
        .ends_with(r#"(to bob: "after restart")"#));
    // The restarted server is new and in memory: the group is gone, and the client says so plainly.
    alice.say("#g1 still there?");
    alice.expect("✗ not_member");
    let (code, _) = alice.finish();
    assert_eq!(code, 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_exit_codes_and_json() {
    let server = TestServer::start().await;
    let (code, out, err) = send_once(&server, "alice", "#nowhere", "hi");
    assert_eq!(code, 1);
    assert!(out.trim().is_empty(), "{out}");
    assert!(
        err.contains("✗ not_member") && err.contains(r#"(to #nowhere: "hi")"#),
        "{err}"
    );
    let (code, _, err) = send_once(&server, "alice", "no/such", "hi");
    assert_eq!(code, 1);
    assert!(err.contains("not a valid user name"), "{err}");

    let mut bob = client(&server, "bob", &["--json"]);
    let (code, out, _) = send_once(&server, "alice", "bob", "raw please");
    assert_eq!(code, 0);
    assert!(out.contains("✓ delivered"));
    let raw = bob.expect("raw please");
    let frame: serde_json::Value =
        serde_json::from_str(&raw).expect("--json prints frames as JSON");
    assert_eq!(frame["type"], "message");
    assert_eq!(frame["from"], "alice");

    // EOF with nothing pending: exits 0 at once; --linger keeps it listening.
    let (code, _) = bob.finish();
    assert_eq!(code, 0);
    let carol = client(&server, "carol", &["--linger", "1"]);
    let started = Instant::now();
    let (code, _) = carol.finish();
    assert_eq!(code, 0);
    assert!(started.elapsed() >= Duration::from_millis(900), "lingered");
    server.stop().await;
}

/// `vivachat client alice --url URL --send bob x`, run to completion.
fn send_via(url: &str) -> std::process::Output {
    common::command()
        .args(["client", "alice", "--url", url, "--send", "bob", "x"])
        .output()
        .unwrap()
}

#[test]
fn connection_problems_are_clear_errors() {
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = free.local_addr().unwrap().port();
    drop(free);
    let out = send_via(&format!("ws://127.0.0.1:{port}"));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot connect to ws://127.0.0.1:"), "{err}");
    assert!(err.contains("Is `vivachat serve` running there?"), "{err}");

    // wss:// goes through TLS: against a plain TCP socket the handshake fails as TLS.
    let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = plain.local_addr().unwrap().port();
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = plain.accept() {
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\n\r\nnot tls");
        }
    });
    let out = send_via(&format!("https://127.0.0.1:{port}"));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("wss://127.0.0.1:") && !err.contains("scheme"),
        "{err}"
    );

    let out = common::command()
        .args(["client", "bad name"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("may only use letters"));
}

/// `vivachat client NAME --send bob TEXT` from "another device": its own config directory.
fn send_from_device(
    addr: std::net::SocketAddr,
    config: &std::path::Path,
    extra: &[&str],
) -> std::process::Output {
    let url = format!("ws://{addr}");
    let mut args = vec![
        "client", "ada", "--url", &url, "--color", "never", "--send", "bob", "hi",
    ];
    args.extend_from_slice(extra);
    let mut command = std::process::Command::new(common::BIN);
    command.env("XDG_CONFIG_HOME", config).args(args);
    command.output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_claims_its_name_and_another_device_needs_the_token() {
    let server = TestServer::start().await;
    let laptop = std::env::temp_dir().join(format!("vivachat-laptop-{}", std::process::id()));
    let phone = std::env::temp_dir().join(format!("vivachat-phone-{}", std::process::id()));
    for dir in [&laptop, &phone] {
        let _ = std::fs::remove_dir_all(dir);
    }
    // First use: a token is created, saved privately, and claims the name.
    let out = send_from_device(server.addr, &laptop, &[]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let note = String::from_utf8_lossy(&out.stderr);
    assert!(
        note.contains("--token") && note.contains("tokens.json"),
        "{note}"
    );
    let file = laptop.join("vivachat").join("tokens.json");
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let token = saved[format!("ws://{}", server.addr)]["ada"]
        .as_str()
        .unwrap()
        .to_string();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    // The same device again: the saved token, no new note.
    let out = send_from_device(server.addr, &laptop, &[]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Another device without the token is refused, clearly, and never shown the token.
    let out = send_from_device(server.addr, &phone, &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("401") && err.contains("claimed") && err.contains("--token"),
        "{err}"
    );
    assert!(!err.contains(&token));
    // The refused device announced nothing and kept no useless token.
    assert!(!err.contains("Your token"), "{err}");
    let phone_file = phone.join("vivachat").join("tokens.json");
    let kept = std::fs::read_to_string(&phone_file).unwrap_or_default();
    assert!(
        !kept.contains("\"ada\""),
        "a refused token was kept: {kept}"
    );
    // The laptop prints its token for the phone, without connecting; the
    // phone, which has none, is told how to get one and creates nothing.
    let show = |config: &std::path::Path| {
        let url = format!("ws://{}", server.addr);
        std::process::Command::new(common::BIN)
            .env("XDG_CONFIG_HOME", config)
            .args(["client", "ada", "--url", &url, "--show-token"])
            .output()
            .unwrap()
    };
    let out = show(&laptop);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), token);
    let out = show(&phone);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no token is saved for ada"), "{err}");
    assert!(!std::fs::read_to_string(&phone_file)
        .unwrap_or_default()
        .contains("\"ada\""));
    // With --token it is ada, and the phone remembers the token from then on.
    let out = send_from_device(server.addr, &phone, &["--token", &token]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let out = send_from_device(server.addr, &phone, &[]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");

    let state = server.inspect().await;
    assert_eq!(state["server"]["claimed_names"], serde_json::json!(["ada"]));
    assert!(!state.to_string().contains(&token));
    let addr = server.addr;
    server.stop().await;

    // A server that cannot be reached: no announcement, no token kept.
    let tablet = std::env::temp_dir().join(format!("vivachat-tablet-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tablet);
    let out = send_from_device(addr, &tablet, &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("Your token"), "{err}");
    let kept =
        std::fs::read_to_string(tablet.join("vivachat").join("tokens.json")).unwrap_or_default();
    assert!(
        !kept.contains("\"ada\""),
        "a token nobody accepted was kept: {kept}"
    );
    for dir in [&laptop, &phone, &tablet] {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Resume is the default: a client killed with -9 comes back from the last
/// message it showed, so it shows each message once; the server holds what
/// it has not confirmed, and `--no-resume` is plain v1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_resumes_and_never_shows_a_message_twice() {
    let server = TestServer::start().await;
    let mut dana = client(&server, "dana", &[]);
    assert!(
        dana.seen[0].contains("0 queued message(s) coming"),
        "{:?}",
        dana.seen
    );
    for text in ["one", "two", "three"] {
        let (code, out, err) = send_once(&server, "alice", "dana", text);
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("✓ delivered"), "{out}");
        dana.expect(&format!("alice -> dana: {text}"));
    }
    // Confirmed in one batch, within 100 ms: nothing is held any more.
    let state = server
        .wait_for_state("dana's confirmation", |s| s["released"]["dana"] == 3)
        .await;
    assert!(state["offline_messages"].get("dana").is_none(), "{state}");
    dana.kill_9();

    for text in ["four", "five"] {
        send_once(&server, "alice", "dana", text);
    }
    // As above: nobody online, so dana's only lines are her two messages.
    server
        .wait_for_state("dana's crash and alice's sends to close", |s| {
            s["presence"] == serde_json::json!([])
        })
        .await;
    let mut dana = client(&server, "dana", &[]);
    assert!(
        dana.seen[0].contains("2 message(s) you have not seen yet coming (after #3,"),
        "{:?}",
        dana.seen
    );
    dana.expect("alice -> dana: four");
    dana.expect("alice -> dana: five");
    expect_quiet(&mut dana);
    let (code, _) = dana.finish();
    assert_eq!(code, 0);
    // It confirmed what it showed before leaving.
    server
        .wait_for_state("dana's last confirmation", |s| s["released"]["dana"] == 5)
        .await;

    // --no-resume: v1, nothing held for the user.
    let mut erin = client(&server, "erin", &["--no-resume"]);
    send_once(&server, "alice", "erin", "v1");
    erin.expect("alice -> erin: v1");
    let state = server.inspect().await;
    assert!(state["offline_messages"].get("erin").is_none(), "{state}");
    assert!(state["released"].get("erin").is_none(), "{state}");
    server.stop().await;
}

/// The client killed with -9 in the middle of an 8,000-message flush:
/// started again, it resumes where it had confirmed, so nothing is lost and
/// at most the last unconfirmed batch shows a second time (at least once,
/// never lost; within one run, never twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_killed_mid_flush_resumes_without_losing_any() {
    let server = TestServer::start().await;
    let mut alice = server.connect("alice").await;
    const N: usize = 8000;
    for i in 0..N {
        alice
            .send(serde_json::json!({"type":"message","to":"gina","text":format!("m{i}")}))
            .await;
    }
    for _ in 0..N {
        assert_eq!(alice.recv_skipping_presence().await["status"], "queued");
    }
    let index = |line: &str| -> Option<usize> { line.rsplit(": m").next()?.parse().ok() };
    let mut gina = client(&server, "gina", &[]);
    // Read a little, then kill it while the flush is still coming (its
    // stdout pipe holds a few thousand lines, so it cannot be far ahead).
    let mut first = Vec::new();
    while first.len() < 300 {
        first.extend(index(&gina.next_line()));
    }
    first.extend(gina.kill_9_and_drain().iter().filter_map(|l| index(l)));
    let printed = first.len();
    assert!(printed < N, "killed mid-flush: it had printed {printed}");
    assert_eq!(first, (0..printed).collect::<Vec<_>>(), "in order");
    server
        .wait_for_state("gina's crash to be noticed", |s| {
            s["presence"] == serde_json::json!(["alice"])
        })
        .await;

    let mut gina = client(&server, "gina", &[]);
    let mut second = Vec::new();
    while second.last() != Some(&(N - 1)) {
        second.extend(index(&gina.next_line()));
    }
    let resumed_at = second[0];
    assert_eq!(second, (resumed_at..N).collect::<Vec<_>>(), "in order");
    assert!(
        resumed_at <= printed,
        "none lost: resumed at {resumed_at} after {printed} printed"
    );
    let shown_twice = printed - resumed_at;
    assert!(
        shown_twice <= 128,
        "only the last unconfirmed batch again: {shown_twice} (resumed at {resumed_at})"
    );
    server.stop().await;
}
