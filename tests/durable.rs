//! Durable mode (`serve --data`): restarts, crashes (kill -9 at random points),
//! and data files that must be refused untouched.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{open_store, temp_data_file, Proc, Seen, TestServer, WAIT};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;
use vivachat::server::Config;

fn durable(path: &std::path::Path) -> Config {
    Config {
        durable: Some(open_store(path)),
        ..Config::default()
    }
}

/// Connects as `path` (e.g. "bob" or "bob?token=t") and returns the welcome and
/// the `queued` messages flushed after it.
async fn flush(server: &TestServer, path: &str) -> (common::Client, Vec<Value>) {
    let mut client = server.connect(path).await;
    let queued = client.welcome["queued"].as_u64().unwrap();
    let mut messages = Vec::new();
    for _ in 0..queued {
        let m = client.recv().await;
        assert_eq!(m["offline"], true, "{m}");
        messages.push(m);
    }
    (client, messages)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_every_queue_group_block_and_claim() {
    let path = temp_data_file("restart");
    let server = TestServer::start_with(durable(&path)).await;
    // alice claims her name; bob joins a group, blocks eve, and leaves.
    let mut alice = server.connect("alice?token=alices-secret").await;
    let mut bob = server.connect("bob").await;
    let _ = alice.recv().await; // bob online
    for (i, request) in [
        json!({"type":"group_join","group":"g1","ref":1}),
        json!({"type":"block","user":"eve","ref":2}),
    ]
    .into_iter()
    .enumerate()
    {
        let ack = bob.request(request).await;
        assert_eq!(ack["ref"], i + 1, "{ack}");
        assert_eq!(ack["status"], "ok", "{ack}");
    }
    bob.close().await;
    assert_eq!(alice.recv().await["status"], "offline");
    let mut expected = Vec::new();
    for i in 0..50 {
        let ack = alice
            .request(json!({"type":"message","to":"bob","text":format!("m{i}"),"ref":i}))
            .await;
        assert_eq!(ack["status"], "queued", "{ack}");
        expected.push(ack["id"].as_u64().unwrap());
    }
    let ack = alice
        .request(json!({"type":"group_join","group":"g1","ref":"j"}))
        .await;
    assert_eq!(ack["status"], "ok");
    let ack = alice
        .request(json!({"type":"group_message","group":"g1","text":"to the group","ref":"g"}))
        .await;
    assert_eq!(ack["status"], "queued");
    expected.push(ack["id"].as_u64().unwrap());
    let mut eve = server.connect("eve").await;
    let ack = eve
        .request(json!({"type":"message","to":"bob","text":"let me in","ref":1}))
        .await;
    // v1.1: told `queued`, as if bob did not block eve; nothing is stored.
    assert_eq!(ack["status"], "queued", "blocked: told queued, not queued");
    let last_id = ack["id"].as_u64().unwrap();
    let state = server.inspect().await;
    assert_eq!(state["server"]["durable"], true);
    assert_eq!(state["server"]["data_path"], path.display().to_string());
    // Group commit, visible: every change counted, never more commits than changes.
    let disk = &state["server"]["disk"];
    let (changes, commits) = (
        disk["changes"].as_u64().unwrap(),
        disk["commits"].as_u64().unwrap(),
    );
    assert!(
        changes >= 54,
        "51 queued, 2 joins, 1 block, 1 claim: {disk}"
    );
    assert!(commits >= 1 && commits <= changes, "{disk}");
    alice.close().await;
    eve.close().await;
    server.stop().await;

    // Restart on the same file.
    let server = TestServer::start_with(durable(&path)).await;
    let state = server.inspect().await;
    assert_eq!(state["offline_messages"]["bob"]["len"], 51);
    assert_eq!(state["groups"]["g1"], json!(["alice", "bob"]));
    assert_eq!(state["blocked"]["bob"], json!(["eve"]));
    assert_eq!(state["server"]["claimed_names"], json!(["alice"]));
    assert!(
        state["next_message_id"].as_u64().unwrap() > last_id,
        "ids are never reused"
    );
    assert_eq!(
        server.refused_status("/ws/alice").await,
        401,
        "the claim survived"
    );
    let (mut bob, messages) = flush(&server, "bob").await;
    let ids: Vec<u64> = messages.iter().map(|m| m["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, expected, "every message, in order, exactly once");
    assert_eq!(messages[0]["text"], "m0");
    assert_eq!(messages[50]["group"], "g1");
    bob.assert_nothing_pending().await;
    // The group and the block still work after the restart.
    let mut alice = server.connect("alice?token=alices-secret").await;
    let _ = bob.recv().await; // alice online
    let ack = alice
        .request(json!({"type":"group_message","group":"g1","text":"live","ref":1}))
        .await;
    assert_eq!(ack["status"], "delivered");
    assert!(ack["id"].as_u64().unwrap() > last_id);
    assert_eq!(bob.recv().await["text"], "live");
    let mut eve = server.connect("eve").await;
    let _ = bob.recv().await; // eve online
    assert_eq!(
        eve.request(json!({"type":"message","to":"bob","text":"still blocked","ref":1}))
            .await["status"],
        "delivered",
        "told delivered, as if not blocked"
    );
    bob.assert_nothing_pending().await;
    for c in [alice, bob, eve] {
        c.close().await;
    }
    server.stop().await;

    // What bob received was deleted from disk once written to his socket.
    let server = TestServer::start_with(durable(&path)).await;
    let state = server.inspect().await;
    assert_eq!(state["offline_messages"], json!({}), "{state}");
    assert_eq!(state["groups"]["g1"], json!(["alice", "bob"]));
    server.stop().await;
}

/// A tiny deterministic generator: the seed is printed, so a failure can be replayed.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

async fn ws(port: u16, path: &str) -> common::Client {
    let url = format!("ws://127.0.0.1:{port}/ws/{path}");
    let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
        .await
        .expect("connect timed out")
        .expect("connect");
    common::Client {
        ws,
        welcome: Value::Null,
    }
}

/// The real server, killed with SIGKILL right after it acknowledged a random
/// number of `queued` messages: after a restart, every acknowledged message is
/// there, in order, once. `VIVACHAT_CRASH_ROUNDS=50` runs a longer search.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_after_queued_acks_loses_none_of_them() {
    let rounds: u64 = std::env::var("VIVACHAT_CRASH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(6);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("crash test seed {seed}");
    let mut rng = Lcg(seed);
    let path = temp_data_file("crash");
    let data = path.to_str().unwrap();
    const BURST: u64 = 300;
    for round in 0..rounds {
        let (server, port) = Proc::serve(&["--port", "0", "--quiet", "--data", data]);
        // A burst of messages to an offline user, sent without waiting.
        let recipient = format!("bob{round}");
        let mut sender = ws(port, "alice").await;
        let _ = sender.recv().await; // welcome
        for i in 0..BURST {
            let frame =
                json!({"type":"message","to":recipient,"text":format!("r{round} m{i}"),"ref":i});
            sender
                .ws
                .feed(Message::text(frame.to_string()))
                .await
                .unwrap();
        }
        sender.ws.flush().await.unwrap();
        // Read acks until a random point, then kill the server without warning.
        let kill_after = 1 + rng.below(BURST);
        let mut acked = BTreeSet::new();
        while (acked.len() as u64) < kill_after {
            let ack = sender.recv().await;
            assert_eq!(ack["status"], "queued", "{ack}");
            acked.insert(ack["id"].as_u64().unwrap());
        }
        server.kill_9();

        let (server, port) = Proc::serve(&["--port", "0", "--quiet", "--data", data]);
        let mut bob = ws(port, &recipient).await;
        let welcome = bob.recv().await;
        let queued = welcome["queued"].as_u64().unwrap();
        let mut got = Vec::new();
        for _ in 0..queued {
            let m = bob.recv().await;
            assert_eq!(m["to"], recipient.as_str());
            got.push(m["id"].as_u64().unwrap());
        }
        assert!(
            got.windows(2).all(|w| w[0] < w[1]),
            "round {round}: in order, no duplicates: {got:?}"
        );
        eprintln!(
            "round {round}: killed after {kill_after} acks; {} queued after the restart",
            got.len()
        );
        let got: BTreeSet<u64> = got.into_iter().collect();
        let missing: Vec<_> = acked.difference(&got).collect();
        assert!(
            missing.is_empty(),
            "round {round} (seed {seed}): killed after {kill_after} acks; acknowledged but lost: {missing:?}"
        );
        bob.close().await;
        // A clean stop this time, so the flushed messages leave the disk.
        let rest = server.interrupt();
        assert!(rest.contains("saved in"), "{rest}");
    }
}

#[test]
fn a_damaged_or_newer_data_file_is_a_clear_error_and_left_untouched() {
    let damaged = temp_data_file("damaged");
    std::fs::write(&damaged, "definitely not SQLite\n".repeat(100)).unwrap();
    let newer = temp_data_file("newer");
    drop(open_store(&newer));
    let conn = rusqlite::Connection::open(&newer).unwrap();
    conn.execute_batch("PRAGMA user_version = 7").unwrap();
    drop(conn);
    for (path, says) in [(&damaged, "damaged"), (&newer, "newer vivachat")] {
        let before = std::fs::read(path).unwrap();
        let out = common::command()
            .args(["serve", "--port", "0", "--data", path.to_str().unwrap()])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(says) && err.contains("left untouched"),
            "{err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "one clear line: {err}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(!stdout.contains("listening"), "it never listened: {stdout}");
        assert_eq!(std::fs::read(path).unwrap(), before, "untouched");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_data_nothing_survives_a_restart() {
    let server = TestServer::start_with(Config::default()).await;
    if server.inspect().await["server"]["durable"] == true {
        return; // the whole suite runs durable (VIVACHAT_TEST_DURABLE)
    }
    let mut alice = server.connect("alice").await;
    assert_eq!(
        alice
            .request(json!({"type":"message","to":"bob","text":"lost","ref":1}))
            .await["status"],
        "queued"
    );
    alice.close().await;
    let addr = server.addr;
    server.stop().await;
    let server = TestServer::start_at(addr, Config::default()).await;
    let bob = server.connect("bob").await;
    assert_eq!(bob.welcome["queued"], 0, "in memory: the seed's behaviour");
    bob.close().await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    server.stop().await;
}

/// The store cannot ack a write it never made (issue 12). The data file is
/// capped (`--max-data-size`) so a real SQLite write fails ("database or disk
/// is full"). Every `queued` ack that arrived is on disk after a restart;
/// the message whose write failed is never acknowledged; meanwhile what needs
/// the disk is refused with `unavailable`, and live chat keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_queued_ack_follows_a_failed_write() {
    let path = temp_data_file("full");
    let (store, loaded) = vivachat::store::Store::open_limited(&path, Some(48 * 1024)).unwrap();
    let server = TestServer::start_with(Config {
        durable: Some(vivachat::store::Durable { store, loaded }),
        ..Config::default()
    })
    .await;
    let mut alice = server.connect("alice").await;
    let mut dave = server.connect("dave").await;
    let mut bob = server.connect("bob").await;
    let _ = alice.recv().await; // dave online
    let _ = alice.recv().await; // bob online
    let _ = dave.recv().await; // bob online
                               // alice fills carol's queue, one message at a time, until an ack stops coming.
    let text = "x".repeat(3_000);
    let mut acked = Vec::new();
    let mut stuck = false;
    for i in 0..200 {
        alice
            .send(json!({"type":"message","to":"carol","text":text,"ref":i}))
            .await;
        match tokio::time::timeout(Duration::from_secs(2), alice.ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                let ack: Value = serde_json::from_str(&t).unwrap();
                assert_eq!(ack["status"], "queued", "{ack}");
                acked.push(ack["id"].as_u64().unwrap());
            }
            Err(_) => {
                stuck = true;
                break;
            }
            Ok(other) => panic!("unexpected {other:?}"),
        }
    }
    assert!(stuck, "48 KiB cannot hold 200 messages of 3 KB");
    assert!(!acked.is_empty(), "the first messages fit");
    // The store now says it is failing; requests that need the disk are refused.
    let state = server
        .wait_for_state("the store to report its failure", |s| {
            !s["server"]["disk"]["failing"].is_null()
        })
        .await;
    assert!(
        state["server"]["disk"]["failing"]
            .as_str()
            .unwrap()
            .contains("full"),
        "{state}"
    );
    for request in [
        json!({"type":"message","to":"carol","text":"later","ref":"q"}),
        json!({"type":"group_join","group":"g1","ref":"j"}),
        json!({"type":"block","user":"eve","ref":"b"}),
    ] {
        let reply = dave.request(request).await;
        assert_eq!(reply["type"], "error", "{reply}");
        assert_eq!(reply["code"], "unavailable", "{reply}");
        assert!(
            reply["detail"].as_str().unwrap().contains("full"),
            "{reply}"
        );
    }
    // Live chat needs no disk: it still works.
    let ack = dave
        .request(json!({"type":"message","to":"bob","text":"still here?","ref":"live"}))
        .await;
    assert_eq!(ack["status"], "delivered", "{ack}");
    assert_eq!(bob.recv().await["text"], "still here?");
    drop(alice);
    server.stop().await;

    // After a restart (no cap), carol gets exactly the acknowledged messages.
    let server = TestServer::start_with(durable(&path)).await;
    let (_carol, messages) = flush(&server, "carol").await;
    let ids: Vec<u64> = messages.iter().map(|m| m["id"].as_u64().unwrap()).collect();
    assert_eq!(
        ids, acked,
        "every acked message, and nothing that was not acked"
    );
    server.stop().await;
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

/// Runs `vivachat serve --data PATH` as a user who may not write `PATH` (or its
/// folder) and returns (exit code, stderr). As root (CI), the server runs as
/// `nobody` through setpriv, since root may write any file; otherwise the
/// file or folder is made read-only.
fn serve_without_write_access(data: &std::path::Path, folder_too: bool) -> Option<(i32, String)> {
    use std::os::unix::fs::PermissionsExt;
    let dir = data.parent().unwrap();
    let set = |p: &std::path::Path, mode| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let mut command = if root {
        if std::process::Command::new("setpriv")
            .arg("--help")
            .output()
            .is_err()
        {
            eprintln!("skipped: running as root without setpriv to drop privileges");
            return None;
        }
        // nobody must reach the binary: a copy in the (world-readable) data folder.
        let bin = dir.join("vivachat");
        std::fs::copy(common::BIN, &bin).unwrap();
        set(&bin, 0o755);
        set(dir, 0o755);
        set(data, if folder_too { 0o666 } else { 0o644 });
        let mut c = std::process::Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(bin);
        c
    } else {
        if folder_too {
            set(dir, 0o555);
        } else {
            set(data, 0o444);
        }
        common::command()
    };
    let mut child = command
        .args(["serve", "--port", "0", "--quiet", "--data"])
        .arg(data)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the server started on a file it cannot write");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    set(dir, 0o755);
    Some((status.code().unwrap_or(-1), err))
}

#[test]
fn a_data_file_this_user_cannot_write_is_refused_at_start_not_hung_on() {
    for folder_too in [false, true] {
        let path = temp_data_file("readonly");
        // A real data file with a queued message in it.
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let server = TestServer::start_with(durable(&path)).await;
            let mut alice = server.connect("alice").await;
            let ack = alice
                .request(json!({"type":"message","to":"bob","text":"keep me"}))
                .await;
            assert_eq!(ack["status"], "queued");
            server.stop().await;
        });
        let before = std::fs::read(&path).unwrap();
        let Some((code, err)) = serve_without_write_access(&path, folder_too) else {
            return;
        };
        assert_eq!(code, 1, "{err}");
        assert!(
            err.contains("cannot write") && err.contains(&*path.to_string_lossy()),
            "{err}"
        );
        assert!(err.contains("writable"), "says what to do: {err}");
        assert_eq!(
            std::fs::read(&path).unwrap(),
            before,
            "the file is untouched"
        );
    }
}

/// A connected user who never reads, 400 messages of 20 KB acknowledged
/// `delivered` to them, then SIGTERM: after a restart every one of them is
/// either in what reached the old socket or in the user's queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_puts_back_everything_a_stuck_reader_was_not_sent() {
    let path = temp_data_file("sigterm");
    let data = path.to_str().unwrap();
    let (server, port) = Proc::serve(&["--port", "0", "--quiet", "--data", data]);
    let mut stuck = ws(port, "bob").await;
    let _ = stuck.recv().await; // welcome; from now on bob reads nothing
    let mut alice = ws(port, "alice").await;
    let _ = alice.recv().await;
    let text = "z".repeat(20_000);
    let mut acked = BTreeSet::new();
    for i in 0..400 {
        let ack = alice
            .request(json!({"type":"message","to":"bob","text":text,"ref":i}))
            .await;
        assert_eq!(ack["status"], "delivered", "{ack}");
        acked.insert(ack["id"].as_u64().unwrap());
    }
    server.terminate();

    // What reached bob's old socket before the 1001 close.
    let mut in_socket = BTreeSet::new();
    loop {
        match stuck.next_seen().await {
            Seen::Frame(v) if v["type"] == "message" => {
                in_socket.insert(v["id"].as_u64().unwrap());
            }
            Seen::Frame(_) => {}
            Seen::Close(_) | Seen::Ended => break,
        }
    }
    assert!(
        in_socket.len() < acked.len(),
        "the test must leave frames unsent"
    );

    let (server, port) = Proc::serve(&["--port", "0", "--quiet", "--data", data]);
    let mut bob = ws(port, "bob").await;
    let welcome = bob.recv().await;
    let queued = welcome["queued"].as_u64().unwrap();
    let mut in_queue = BTreeSet::new();
    for _ in 0..queued {
        let m = bob.recv().await;
        assert_eq!(m["offline"], true);
        in_queue.insert(m["id"].as_u64().unwrap());
    }
    let lost: Vec<&u64> = acked
        .iter()
        .filter(|id| !in_socket.contains(id) && !in_queue.contains(id))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged messages lost ({} reached the socket, {} were queued)",
        lost.len(),
        acked.len(),
        in_socket.len(),
        in_queue.len()
    );
    server.terminate();
}
