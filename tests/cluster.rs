//! `serve --redis`: two nodes on one real Redis are one chat server, across
//! the races that only a cluster has: two devices of one user connecting on
//! two nodes at once, a node killed with -9, Redis stopped mid-run.
//!
//! Each test starts its own `redis-server` (Debian's package) on a free
//! loopback port and stops it at the end. Without `redis-server` on the
//! PATH the tests say so and pass, except under CI, where `.ci/run`
//! installs it and its absence is a failure.

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{cluster_node, fresh_prefix, Client, Proc, Seen, TestServer, WAIT};
use serde_json::{json, Value};
use tokio_tungstenite::WebSocketStream;
use vivachat::server::Config;

/// A `redis-server` of this test's own, killed when dropped.
struct Redis {
    child: Child,
    port: u16,
    dir: std::path::PathBuf,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Redis {
    /// Starts one, or None (with a line saying why) where redis-server is missing.
    fn start(persistent: bool) -> Option<Redis> {
        let port = free_port();
        let dir =
            std::env::temp_dir().join(format!("vivachat-redis-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Redis::start_at(port, dir, persistent)
    }

    fn start_at(port: u16, dir: std::path::PathBuf, persistent: bool) -> Option<Redis> {
        Redis::start_with(port, dir, persistent, &[])
    }

    fn start_with(
        port: u16,
        dir: std::path::PathBuf,
        persistent: bool,
        extra: &[&str],
    ) -> Option<Redis> {
        let aof = if persistent { "yes" } else { "no" };
        let spawned = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", aof, "--appendfsync", "always"])
            .arg("--dir")
            .arg(&dir)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let child = match spawned {
            Ok(child) => child,
            Err(e) => {
                redis_server_missing(&e);
                return None;
            }
        };
        let redis = Redis { child, port, dir };
        let deadline = Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        Some(redis)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Stops it at once (SIGKILL): with `appendfsync always` nothing written is lost.
    fn stop(mut self) -> (u16, std::path::PathBuf) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        (self.port, self.dir.clone())
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// redis-server could not be run: a failure under CI (`.ci/run` installs
/// it), else a line saying the test is skipped.
fn redis_server_missing(e: &std::io::Error) {
    assert!(
        std::env::var_os("CI").is_none(),
        "redis-server is needed under CI (.ci/run installs it): {e}"
    );
    eprintln!("skipped: redis-server is not installed ({e}); apt-get install -y redis-server");
}

async fn connect_to(addr: SocketAddr, user: &str) -> Client {
    connect_to_path(addr, &format!("/ws/{user}")).await
}

/// Every chat message a client receives until `quiet` passes with nothing new.
async fn drain_messages(client: &mut Client, quiet: Duration) -> Vec<Value> {
    use futures_util::StreamExt;
    let mut got = Vec::new();
    while let Ok(Some(Ok(frame))) = tokio::time::timeout(quiet, client.ws.next()).await {
        if let Ok(text) = frame.to_text() {
            let v: Value = serde_json::from_str(text).unwrap_or(Value::Null);
            if v["type"] == "message" {
                got.push(v);
            }
        }
    }
    got
}

fn ids(messages: &[Value]) -> Vec<u64> {
    messages.iter().map(|m| m["id"].as_u64().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_devices_connecting_on_two_nodes_at_once_take_the_queue_exactly_once() {
    let Some(redis) = Redis::start(false) else {
        return;
    };
    let server = TestServer::cluster(&redis.url(), Config::default()).await;
    let second = server.second.as_ref().unwrap().addr;
    let mut alice = connect_to(server.addr, "alice").await;
    for round in 0..10 {
        let mut sent = Vec::new();
        for i in 0..30 {
            let ack = alice
                .request(json!({"type":"message","to":"bob","text":format!("{round}:{i}")}))
                .await;
            assert_eq!(ack["status"], "queued", "{ack}");
            sent.push(ack["id"].as_u64().unwrap());
        }
        // bob's laptop on node 1 and his phone on node 2, at the same moment.
        let (mut laptop, mut phone) =
            tokio::join!(connect_to(server.addr, "bob"), connect_to(second, "bob"));
        let quiet = Duration::from_millis(300);
        let (a, b) = tokio::join!(
            drain_messages(&mut laptop, quiet),
            drain_messages(&mut phone, quiet)
        );
        let (a, b) = (ids(&a), ids(&b));
        // The flush is one atomic script: one device takes the whole queue.
        assert!(
            (a == sent && b.is_empty()) || (b == sent && a.is_empty()),
            "round {round}: laptop got {a:?}, phone got {b:?}; sent {sent:?}"
        );
        let queued: u64 = [&laptop, &phone]
            .iter()
            .map(|c| c.welcome["queued"].as_u64().unwrap())
            .sum();
        assert_eq!(queued, 30, "the welcomes' counts add up to the queue");
        laptop.close().await;
        phone.close().await;
        // alice hears bob go offline once both are gone (he went online once).
        let mut statuses = Vec::new();
        while statuses.last() != Some(&"offline".to_string()) {
            let v = alice.recv().await;
            assert_eq!(v["type"], "presence", "{v}");
            statuses.push(v["status"].as_str().unwrap().to_string());
        }
        assert_eq!(statuses, ["online", "offline"], "round {round}");
    }
    let state = server.inspect().await;
    assert!(state["offline_messages"].as_object().unwrap().is_empty());
    common::assert_invariants_hold(&state);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_shows_the_cluster_and_narrates_each_redis_command() {
    let Some(redis) = Redis::start(false) else {
        return;
    };
    let server = TestServer::cluster(&redis.url(), Config::default()).await;
    let second = server.second.as_ref().unwrap().addr;
    let mut alice = connect_to(server.addr, "alice").await;
    let mut bob = connect_to(second, "bob").await;
    assert_eq!(alice.recv().await["status"], "online");
    let ack = alice
        .request(json!({"type":"message","to":"bob","text":"across"}))
        .await;
    assert_eq!(ack["status"], "delivered");
    assert_eq!(bob.recv().await["text"], "across");
    // Either node's /inspect is the whole cluster, with each socket's node.
    for addr in [server.addr, second] {
        let state = common::inspect_at(addr).await;
        assert_eq!(state["presence"], json!(["alice", "bob"]));
        let nodes: Vec<&str> = state["connection_details"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["node"].as_str().unwrap())
            .collect();
        assert_eq!(nodes.len(), 2);
        assert!(nodes.contains(&"n1") && nodes.contains(&"n2"), "{nodes:?}");
        let cluster = &state["server"]["cluster"];
        assert_eq!(cluster["nodes"], json!(["n1", "n2"]));
        let commands: Vec<&str> = cluster["redis_commands"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["command"].as_str().unwrap())
            .collect();
        assert!(commands.contains(&"EVALSHA connect"), "{commands:?}");
    }
    // A claim made through one node holds on every node (HASH claims).
    let first = format!("ws://{}/ws/zoe?token=zoe-secret-1", server.addr);
    let (zoe, _) = tokio_tungstenite::connect_async(first)
        .await
        .expect("claims zoe");
    drop(zoe);
    for (path, status) in [("/ws/zoe", 401), ("/ws/zoe?token=not-hers", 401)] {
        let url = format!("ws://{second}{path}");
        match tokio_tungstenite::connect_async(url).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
                assert_eq!(r.status().as_u16(), status, "{path}")
            }
            other => panic!("{path}: expected {status}, got {:?}", other.map(|_| ())),
        }
    }
    let zoe = connect_to_path(second, "/ws/zoe?token=zoe-secret-1").await;
    // Resume is offered on every node, with one epoch for the cluster.
    let on_second = connect_to_path(second, "/ws/rex?resume=0").await;
    let on_first = connect_to_path(server.addr, "/ws/rex?resume=0").await;
    assert_eq!(on_second.welcome["resume"], 0, "{}", on_second.welcome);
    let epoch = on_second.welcome["epoch"].as_str().unwrap();
    assert!(!epoch.is_empty());
    assert_eq!(on_first.welcome["epoch"], epoch, "one epoch, every node");
    assert!(zoe.welcome.get("resume").is_none(), "v1 stays v1");
    server.stop().await;
}

/// Connects, and while the node answers 503 (its Redis did not answer within
/// the command timeout, as on a starved machine) tries again until WAIT has
/// passed: the refusal says "try again in a moment". Any other refusal fails
/// the test with its status.
async fn connect_to_path(addr: SocketAddr, path: &str) -> Client {
    use tokio_tungstenite::tungstenite::Error;
    let deadline = Instant::now() + WAIT;
    let ws = loop {
        let attempt = tokio::time::timeout(
            WAIT,
            tokio_tungstenite::connect_async(format!("ws://{addr}{path}")),
        )
        .await
        .expect("connect timed out");
        match attempt {
            Ok((ws, _)) => break ws,
            Err(Error::Http(r)) if r.status() == 503 && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{path} on {addr}: the upgrade failed: {e:?}"),
        }
    };
    let mut client = Client {
        ws,
        welcome: Value::Null,
    };
    client.welcome = client.recv().await;
    assert_eq!(client.welcome["type"], "welcome");
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newcomer_s_presence_arrives_before_their_first_message_on_any_node() {
    let Some(redis) = Redis::start(false) else {
        return;
    };
    let server = TestServer::cluster(&redis.url(), Config::default()).await;
    let nodes = [server.addr, server.second.as_ref().unwrap().addr];
    let mut bob = connect_to(nodes[0], "bob").await;
    for round in 0..20 {
        // On bob's node (its own change, shown at once) and on the other
        // (the presence publish and the message share its channel, in order).
        let name = format!("m{round}");
        let mut newcomer = connect_to(nodes[round % 2], &name).await;
        let ack = newcomer
            .request(json!({"type":"message","to":"bob","text":"first"}))
            .await;
        assert_eq!(ack["status"], "delivered");
        assert_eq!(
            bob.recv().await,
            json!({"type":"presence","user":name,"status":"online"}),
            "round {round}"
        );
        assert_eq!(bob.recv().await["from"], name.as_str());
        newcomer.close().await;
        assert_eq!(bob.recv().await["status"], "offline");
    }
    server.stop().await;
}

/// `vivachat serve --redis URL --node-id NAME` on a free port.
fn node(url: &str, name: &str, prefix: &str) -> (Proc, u16) {
    let all = [
        "serve",
        "--port",
        "0",
        "--redis",
        url,
        "--node-id",
        name,
        "--redis-prefix",
        prefix,
        "--quiet",
    ];
    let mut served = Proc::spawn(&all);
    let line = served.expect("listening on");
    let port = line.rsplit(':').next().unwrap().trim().parse().unwrap();
    (served, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_with_9_leaves_no_ghosts_and_its_users_find_their_queues() {
    let Some(redis) = Redis::start(false) else {
        return;
    };
    let prefix = fresh_prefix("kill");
    let (a, port_a) = node(&redis.url(), "a", &prefix);
    let (b, port_b) = node(&redis.url(), "b", &prefix);
    let addr = |p: u16| -> SocketAddr { format!("127.0.0.1:{p}").parse().unwrap() };
    let mut alice = connect_to(addr(port_a), "alice").await;
    let bob = connect_to(addr(port_b), "bob").await;
    assert_eq!(
        alice.recv().await,
        json!({"type":"presence","user":"bob","status":"online"})
    );
    // carol is offline: her queue lives in Redis, not in either node.
    let ack = alice
        .request(json!({"type":"message","to":"carol","text":"before"}))
        .await;
    assert_eq!(ack["status"], "queued");

    let killed = Instant::now();
    b.kill_9();
    // Meanwhile (b is dead, not yet swept) a message to bob is not lost:
    // no node received its PUBLISH, so it is queued for him.
    let ack = alice
        .request(json!({"type":"message","to":"bob","text":"meanwhile"}))
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    // The survivor announces bob offline within the bound (TTL 5 s + 1 s period).
    let v = tokio::time::timeout(Duration::from_secs(15), alice.recv())
        .await
        .expect("bob was never announced offline");
    assert_eq!(
        v,
        json!({"type":"presence","user":"bob","status":"offline"})
    );
    let took = killed.elapsed();
    assert!(took <= Duration::from_secs(8), "swept after {took:?}");
    drop(bob);

    let state = common::inspect_at(addr(port_a)).await;
    assert_eq!(state["presence"], json!(["alice"]), "no ghost of bob");
    // bob reconnects on the survivor and gets what was sent meanwhile.
    let mut bob = connect_to(addr(port_a), "bob").await;
    let got = drain_messages(&mut bob, Duration::from_millis(300)).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["text"], "meanwhile");
    let mut carol = connect_to(addr(port_a), "carol").await;
    let got = drain_messages(&mut carol, Duration::from_millis(300)).await;
    assert_eq!(got[0]["text"], "before");
    drop(a);
}

/// Sends SIGSTOP or SIGCONT to a node: a VM migration, a swap storm, a closed laptop lid.
fn signal(node: &Proc, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &node.pid().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill {sig}");
}

/// Chat messages until the connection closes (or `bound` passes), and the close code.
async fn messages_until_close(client: &mut Client, bound: Duration) -> (Vec<Value>, Option<u16>) {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let deadline = tokio::time::Instant::now() + bound;
    let mut got = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, client.ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["type"] == "message" {
                    got.push(v);
                }
            }
            Ok(Some(Ok(Message::Close(frame)))) => return (got, frame.map(|f| f.code.into())),
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(_)) | None) | Err(_) => return (got, None),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_paused_past_its_heartbeat_fences_itself_and_loses_nothing_it_acked() {
    let Some(redis) = Redis::start(false) else {
        return;
    };
    let prefix = fresh_prefix("pause");
    let (a, port_a) = node(&redis.url(), "a", &prefix);
    let (b, port_b) = node(&redis.url(), "b", &prefix);
    let addr = |p: u16| -> SocketAddr { format!("127.0.0.1:{p}").parse().unwrap() };
    let mut alice = connect_to(addr(port_a), "alice").await;
    let mut bob = connect_to(addr(port_b), "bob").await;
    assert_eq!(
        alice.recv().await,
        json!({"type":"presence","user":"bob","status":"online"})
    );
    let mut acked = Vec::new();
    signal(&b, "-STOP");
    // Published to b, whose subscription Redis still holds: `delivered`.
    for text in ["during-1", "during-2"] {
        let ack = alice
            .request(json!({"type":"message","to":"bob","text":text}))
            .await;
        assert_eq!(ack["status"], "delivered", "{ack}");
        acked.push(ack["id"].as_u64().unwrap());
    }
    // a counts b dead and sweeps it: bob is offline for the cluster.
    let v = tokio::time::timeout(Duration::from_secs(15), alice.recv())
        .await
        .expect("bob was never announced offline");
    assert_eq!(
        v,
        json!({"type":"presence","user":"bob","status":"offline"})
    );
    for text in ["swept-1", "swept-2", "swept-3"] {
        let ack = alice
            .request(json!({"type":"message","to":"bob","text":text}))
            .await;
        assert_eq!(ack["status"], "queued", "{ack}");
        acked.push(ack["id"].as_u64().unwrap());
    }
    signal(&b, "-CONT");
    // b finds its heartbeat had expired and closes bob's socket: no zombie.
    let (live, code) = messages_until_close(&mut bob, Duration::from_secs(10)).await;
    assert_eq!(code, Some(1012), "bob's socket on b was not fenced");
    let mut bob = connect_to(addr(port_b), "bob").await;
    let flushed = drain_messages(&mut bob, Duration::from_millis(500)).await;
    let mut seen: Vec<u64> = ids(&live).into_iter().chain(ids(&flushed)).collect();
    let shown = seen.len();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(
        seen, acked,
        "every acked message arrives (live {live:?}, flushed {flushed:?})"
    );
    assert!(
        shown <= acked.len() + 2,
        "{shown} shown for {} acked",
        acked.len()
    );
    // The queued ones come in the order they were sent.
    let late: Vec<u64> = ids(&flushed)
        .into_iter()
        .filter(|id| acked[2..].contains(id))
        .collect();
    assert_eq!(late, acked[2..], "the queued ones, in order");
    // bob is online again, for everyone, and b lists him.
    let deadline = Instant::now() + WAIT;
    loop {
        let v = tokio::time::timeout(WAIT, alice.recv())
            .await
            .expect("no presence");
        if v == json!({"type":"presence","user":"bob","status":"online"}) {
            break;
        }
        assert!(Instant::now() < deadline, "bob never came back online");
    }
    let state = common::inspect_at(addr(port_b)).await;
    assert_eq!(state["presence"], json!(["alice", "bob"]), "{state}");
    drop((a, b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_subscription_is_dropped_fences_itself_and_chat_goes_on() {
    let Some(redis) = Redis::start(false) else {
        return;
    };
    let prefix = fresh_prefix("dropped");
    let (a, port_a) = node(&redis.url(), "a", &prefix);
    let (b, port_b) = node(&redis.url(), "b", &prefix);
    let addr: SocketAddr = format!("127.0.0.1:{port_a}").parse().unwrap();
    let mut alice = connect_to(addr, "alice").await;
    // Redis drops every subscriber, as it does one over its output buffer limit.
    let killed = Command::new("redis-cli")
        .args([
            "-p",
            &redis.port.to_string(),
            "CLIENT",
            "KILL",
            "TYPE",
            "pubsub",
        ])
        .output()
        .expect("redis-cli runs");
    assert!(killed.status.success(), "{killed:?}");
    // What was published meanwhile is gone, so the node closes its sockets.
    let (_, code) = messages_until_close(&mut alice, Duration::from_secs(5)).await;
    assert_eq!(code, Some(1012), "alice's socket was not fenced");
    // Subscribed again: chat works, and nothing acked is lost from now on.
    let mut alice = connect_to(addr, "alice").await;
    let mut bob = connect_to(addr, "bob").await;
    assert_eq!(
        alice.recv().await,
        json!({"type":"presence","user":"bob","status":"online"})
    );
    let ack = alice
        .request(json!({"type":"message","to":"bob","text":"after"}))
        .await;
    assert_eq!(ack["status"], "delivered", "{ack}");
    assert_eq!(bob.recv_skipping_presence().await["text"], "after");
    // A newcomer on another node is announced here at once: the fenced node
    // stayed in `nodes` when it swept itself, not only from its next heartbeat.
    let _carol = connect_to(format!("127.0.0.1:{port_b}").parse().unwrap(), "carol").await;
    assert_eq!(
        alice.recv().await,
        json!({"type":"presence","user":"carol","status":"online"})
    );
    drop((a, b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_mid_run_refuses_with_unavailable_then_recovers_losing_nothing() {
    let Some(redis) = Redis::start(true) else {
        return;
    };
    let url = redis.url();
    let prefix = fresh_prefix("outage");
    let config = Config {
        cluster: Some(cluster_node(&url, &prefix, "n1")),
        ..Config::default()
    };
    let server = TestServer::start_alone(config).await;
    let mut alice = server.connect("alice").await;
    let ack = alice
        .request(json!({"type":"message","to":"bob","text":"one"}))
        .await;
    assert_eq!(ack["status"], "queued");

    let (port, dir) = redis.stop();
    // Every request that needs Redis is refused, saying why; none is acked.
    let reply = alice
        .request(json!({"type":"message","to":"bob","text":"lost?","ref":"r"}))
        .await;
    assert_eq!(reply["type"], "error", "{reply}");
    assert_eq!(reply["code"], "unavailable");
    assert_eq!(reply["ref"], "r");
    assert!(
        reply["detail"].as_str().unwrap().contains("Redis"),
        "{reply}"
    );
    // New connections are refused at the upgrade.
    assert_eq!(server.refused_status("/ws/dave").await, 503);

    let _redis = Redis::start_at(port, dir, true).unwrap();
    // Within a few heartbeats the node reconnects and registers alice again.
    let deadline = Instant::now() + Duration::from_secs(15);
    let ack = loop {
        let reply = alice
            .request(json!({"type":"message","to":"bob","text":"two"}))
            .await;
        if reply["type"] == "ack" {
            break reply;
        }
        assert_eq!(reply["code"], "unavailable", "{reply}");
        assert!(Instant::now() < deadline, "never recovered");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(ack["status"], "queued");
    let state = server
        .wait_for_state("alice registered again", |s| {
            s["presence"] == json!(["alice"])
        })
        .await;
    assert_eq!(state["active_connections"].as_object().unwrap().len(), 1);
    let mut bob = server.connect("bob").await;
    let got = drain_messages(&mut bob, Duration::from_millis(300)).await;
    let texts: Vec<&str> = got.iter().map(|m| m["text"].as_str().unwrap()).collect();
    assert_eq!(
        texts,
        ["one", "two"],
        "the acked ones, in order; the refused one never"
    );
    match alice.next_seen().await {
        Seen::Frame(v) => assert_eq!(v["type"], "presence"),
        other => panic!("{other:?}"),
    }
    server.stop().await;
}

/// The HTTP status an upgrade to `path` is refused with, or None if it was admitted.
async fn upgrade_refused(addr: SocketAddr, path: &str) -> Option<u16> {
    let url = format!("ws://{addr}{path}");
    match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url)).await {
        Ok(Err(tokio_tungstenite::tungstenite::Error::Http(resp))) => Some(resp.status().as_u16()),
        Ok(Err(e)) => panic!("{path}: {e}"),
        Ok(Ok(_)) => None,
        Err(_) => panic!("{path}: no answer"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_loses_no_claim_and_repeats_no_id() {
    let Some(redis) = Redis::start(false) else {
        return;
    };
    let prefix = fresh_prefix("empty");
    let (a, port_a) = node(&redis.url(), "a", &prefix);
    let (b, port_b) = node(&redis.url(), "b", &prefix);
    let addr = |p: u16| -> SocketAddr { format!("127.0.0.1:{p}").parse().unwrap() };
    // bob claims his name through a; b has never heard of him, so only a
    // can put the claim back.
    drop(connect_to_path(addr(port_a), "/ws/bob?token=bobs-secret-token").await);
    let mut alice = connect_to(addr(port_a), "alice").await;
    let mut issued = Vec::new();
    for i in 0..3 {
        // bob's `offline` (his connection closing) may still be on its way.
        alice
            .send(json!({"type":"message","to":"carol","text":format!("m{i}")}))
            .await;
        let ack = alice.recv_skipping_presence().await;
        issued.push(ack["id"].as_u64().unwrap());
    }

    // Redis restarts with nothing: no AOF, no RDB.
    let (port, dir) = redis.stop();
    let _redis = Redis::start_at(port, dir, false).unwrap();
    // Until a has put bob's claim back, nobody is admitted as bob on b
    // without his token; then b knows the claim again.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let refused = upgrade_refused(addr(port_b), "/ws/bob").await;
        assert!(
            matches!(refused, Some(401 | 503)),
            "an impostor was admitted as bob on b: {refused:?}"
        );
        if refused == Some(401) {
            break;
        }
        assert!(Instant::now() < deadline, "bob's claim never came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Ids go on past every one issued before the restart.
    let deadline = Instant::now() + Duration::from_secs(20);
    let id = loop {
        alice
            .send(json!({"type":"message","to":"carol","text":"after"}))
            .await;
        let reply = loop {
            match alice.next_seen().await {
                Seen::Frame(v) if v["type"] == "presence" => continue,
                Seen::Frame(v) => break v,
                other => panic!("alice: {other:?}"),
            }
        };
        if reply["type"] == "ack" {
            break reply["id"].as_u64().unwrap();
        }
        assert_eq!(reply["code"], "unavailable", "{reply}");
        assert!(Instant::now() < deadline, "never recovered");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        id > *issued.iter().max().unwrap(),
        "id {id} after {issued:?}"
    );
    // A node asked about a name asks Redis, not only its own memory.
    let (_, body) = common::http_get(addr(port_b), "/names/bob", &[]).await;
    assert!(body.contains(r#""claimed":true"#), "{body}");
    drop((a, b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_of_a_long_queue_reads_its_length_and_its_two_ends_only() {
    let Some(redis) = Redis::start(false) else {
        return;
    };
    let prefix = fresh_prefix("view");
    let (a, port_a) = node(&redis.url(), "a", &prefix);
    let addr: SocketAddr = format!("127.0.0.1:{port_a}").parse().unwrap();
    let mut alice = connect_to(addr, "alice").await;
    for i in 0..300 {
        alice
            .send(json!({"type":"message","to":"carol","text":format!("m{i}")}))
            .await;
    }
    for _ in 0..300 {
        assert_eq!(alice.recv().await["status"], "queued");
    }
    let state = common::inspect_at(addr).await;
    let carol = &state["offline_messages"]["carol"];
    assert_eq!(carol["len"], 300, "{carol}");
    assert_eq!(carol["skipped"], 200, "{carol}");
    let texts: Vec<&str> = carol["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    let ends: Vec<String> = (0..50).chain(250..300).map(|i| format!("m{i}")).collect();
    assert_eq!(texts, ends, "the 50 oldest, then the 50 newest");
    common::assert_invariants_hold(&state);
    drop(a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_cannot_reach_redis_says_so_and_exits() {
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let mut served = Proc::spawn(&["serve", "--port", "0", "--redis", &url]);
    let status = served.exited();
    assert!(!status.success());
    let mut all = String::new();
    use std::io::Read;
    served
        .child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut all)
        .unwrap();
    assert!(
        all.contains("cannot reach Redis") && all.contains(&format!("127.0.0.1:{port}")),
        "{all}"
    );
}

/// A Redis kept across the upgrade: the `presence` SET an older node left
/// becomes the sorted set this version keeps, with its users, so a node
/// starts on it and a welcome lists them in name order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_node_s_presence_set_is_converted_when_a_node_starts() {
    let Some(redis) = Redis::start(false) else {
        return;
    };
    let prefix = fresh_prefix("upgrade");
    let key = format!("{prefix}:presence");
    let cli = |args: &[&str]| {
        let out = Command::new("redis-cli")
            .args(["-p", &redis.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli runs");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    cli(&["SADD", &key, "zoe", "amy"]);
    let (_node, port) = node(&redis.url(), "a", &prefix);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let bob = connect_to(addr, "bob").await;
    assert_eq!(bob.welcome["online"], json!(["amy", "zoe"]));
    assert_eq!(cli(&["TYPE", &key]), "zset");
    assert_eq!(cli(&["ZRANGE", &key, "0", "-1"]), "amy\nbob\nzoe");
}

/// No tokio worker waits for Redis while the core is busy: with Redis
/// paused (`CLIENT PAUSE`), four senders' rules wait for it on the core's
/// owner thread, and the node's own HTTP (`/healthz`, the chat page) still
/// answers at once (within a quarter of the pause). When Redis continues,
/// every sender gets its answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_redis_stalls_the_core_but_never_the_node_s_own_http() {
    let Some(redis) = Redis::start(false) else {
        return;
    };
    let prefix = fresh_prefix("pause");
    let (node_a, port) = node(&redis.url(), "a", &prefix);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut senders = Vec::new();
    for k in 0..4 {
        senders.push(connect_to(addr, &format!("sender{k}")).await);
    }
    let _bob = connect_to(addr, "bob").await;
    // Under the link's 1 s command timeout, so the rules wait rather than fail.
    let paused = Command::new("redis-cli")
        .args([
            "-p",
            &redis.port.to_string(),
            "CLIENT",
            "PAUSE",
            "800",
            "ALL",
        ])
        .output()
        .expect("redis-cli");
    assert!(paused.status.success(), "{paused:?}");
    let pause_began = Instant::now();
    for (k, sender) in senders.iter_mut().enumerate() {
        sender
            .send(json!({"type":"message","to":"bob","text":format!("during the pause {k}")}))
            .await;
    }
    let mut slowest = Duration::ZERO;
    let mut answered = 0;
    while pause_began.elapsed() < Duration::from_millis(600) {
        for path in ["/healthz", "/"] {
            let asked = Instant::now();
            let (status, _) = common::http_get(addr, path, &[]).await;
            slowest = slowest.max(asked.elapsed());
            assert_eq!(status, 200, "{path}");
            answered += 1;
        }
    }
    eprintln!("during the pause: {answered} HTTP requests, the slowest {slowest:?}");
    assert!(answered >= 4, "only {answered} requests in the pause");
    // A request that waited for the core would wait for the rest of the
    // 800 ms pause (main before the owner answered 2 in 600 ms); one that did
    // not takes a few ms, or tens on a loaded machine. A quarter of the pause
    // tells the two apart with room on both sides.
    assert!(
        slowest < Duration::from_millis(200),
        "the node's own HTTP waited {slowest:?} for a stalled Redis"
    );
    // The rules were waiting, not lost: each sender hears back.
    for sender in &mut senders {
        let ack = sender.recv_skipping_presence().await;
        assert!(
            ack["status"] == "delivered" || ack["code"] == "unavailable",
            "{ack}"
        );
    }
    drop(node_a);
}

/// What one resuming reader saw, kept as the terminal client and the page
/// keep it: the highest id shown, and anything at or below it dropped as a
/// repeat. An id that arrives below the highest without having been shown
/// is one such a client drops unseen: it is counted as `behind`.
#[derive(Default)]
struct ReaderLog {
    highest: u64,
    epoch: Option<String>,
    shown: Vec<(String, String)>,
    shown_ids: std::collections::HashSet<u64>,
    repeats: usize,
    behind: Vec<u64>,
    closes: Vec<Option<u16>>,
}

impl ReaderLog {
    fn saw(&mut self, message: &Value) {
        let id = message["id"].as_u64().unwrap();
        if id <= self.highest {
            match self.shown_ids.contains(&id) {
                true => self.repeats += 1,
                false => self.behind.push(id),
            }
            return;
        }
        self.highest = id;
        self.shown_ids.insert(id);
        let from = message["from"].as_str().unwrap().to_string();
        self.shown
            .push((from, message["text"].as_str().unwrap().to_string()));
    }
}

type Shared<T> = std::sync::Arc<std::sync::Mutex<T>>;

/// Readers started by `start_readers`: their logs, the stop signal, their tasks.
type Readers = (
    Vec<(&'static str, Shared<ReaderLog>)>,
    tokio::sync::watch::Sender<bool>,
    Vec<tokio::task::JoinHandle<()>>,
);

/// A WebSocket client on a 4 KiB receive buffer: a phone on a weak network,
/// whose node's outbox fills while it reads.
async fn slow_connect(
    addr: SocketAddr,
    path: &str,
) -> Option<WebSocketStream<tokio::net::TcpStream>> {
    let socket = tokio::net::TcpSocket::new_v4().ok()?;
    socket.set_recv_buffer_size(4096).ok()?;
    let stream = tokio::time::timeout(WAIT, socket.connect(addr))
        .await
        .ok()?
        .ok()?;
    let url = format!("ws://{addr}{path}");
    let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::client_async(url, stream))
        .await
        .ok()?
        .ok()?;
    Some(ws)
}

/// A reader that resumes: it connects to `addrs` in turn (the next one each
/// time it is cut off), asks `?resume=` its highest id with the epoch it was
/// given, reads one frame every `pace`, and confirms every 10 messages it
/// shows. With `hop`, it also leaves after showing that many on one
/// connection, and resumes on the next node. It stops when `stop` says so.
async fn resuming_reader(
    user: String,
    addrs: Vec<SocketAddr>,
    log: Shared<ReaderLog>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    (pace, hop): (Duration, Option<usize>),
) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let mut turn = 0;
    while !*stop.borrow() {
        let addr = addrs[turn % addrs.len()];
        turn += 1;
        let path = {
            let log = log.lock().unwrap();
            match &log.epoch {
                Some(e) => format!("/ws/{user}?resume={}&epoch={e}", log.highest),
                None => format!("/ws/{user}?resume=0"),
            }
        };
        let Some(mut ws) = slow_connect(addr, &path).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let (mut unconfirmed, mut here) = (0, 0);
        let close = loop {
            if hop.is_some_and(|hop| here >= hop) {
                let _ = ws.close(None).await;
                break Some(1000);
            }
            let next = tokio::select! {
                next = ws.next() => next,
                _ = stop.changed() => return,
            };
            let text = match next {
                Some(Ok(Message::Text(t))) => t,
                Some(Ok(Message::Close(frame))) => break frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => break None,
            };
            let v: Value = serde_json::from_str(&text).unwrap();
            let confirm = {
                let mut log = log.lock().unwrap();
                match v["type"].as_str() {
                    Some("welcome") => log.epoch = v["epoch"].as_str().map(String::from),
                    Some("message") => {
                        log.saw(&v);
                        unconfirmed += 1;
                        here += 1;
                    }
                    _ => {}
                }
                (unconfirmed >= 10).then_some(log.highest)
            };
            if let Some(id) = confirm {
                unconfirmed = 0;
                let frame = json!({"type":"received","id":id}).to_string();
                if ws.send(Message::text(frame)).await.is_err() {
                    break None;
                }
            }
            tokio::time::sleep(pace).await;
        };
        log.lock().unwrap().closes.push(close);
    }
}

/// What the senders were told: per recipient, the (sender, text, id) of
/// every message acked `delivered` or `queued`.
type Acked = std::collections::HashMap<String, Vec<(String, String, u64)>>;

/// The ack (or error) for the request just sent, skipping presence frames.
async fn reply_to(client: &mut Client) -> Value {
    loop {
        let v = client.recv().await;
        if v["type"] != "presence" {
            return v;
        }
    }
}

/// `senders` (already connected) write the messages numbered `seqs`, to `readers`
/// in turn; `fault` runs once, when `at` messages have been acked. A refused
/// message (`unavailable` while Redis is down) is not acked, so not counted.
async fn burst(
    senders: &mut [(String, Client)],
    readers: &[&str],
    seqs: std::ops::Range<usize>,
    (at, fault): (usize, &mut dyn FnMut()),
) -> Acked {
    let mut acked = Acked::new();
    let mut count = 0;
    let mut faulted = false;
    for seq in seqs {
        for (name, client) in senders.iter_mut() {
            let to = readers[seq % readers.len()];
            let text = format!("{name}-{seq:04}");
            client
                .send(json!({"type":"message","to":to,"text":text}))
                .await;
            let ack = reply_to(client).await;
            if ack["type"] == "ack" {
                let status = ack["status"].as_str().unwrap();
                assert!(["delivered", "queued"].contains(&status), "{ack}");
                let id = ack["id"].as_u64().unwrap();
                acked
                    .entry(to.to_string())
                    .or_default()
                    .push((name.clone(), text, id));
                count += 1;
            } else {
                // As a person would: wait a moment, then go on.
                assert_eq!(ack["code"], "unavailable", "{ack}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if count >= at && !faulted {
                faulted = true;
                fault();
            }
        }
    }
    assert!(faulted, "only {count} acked: the fault never ran");
    acked
}

/// Waits (bounded) until every reader has shown every message acked for it,
/// then stops them, and checks what a student would check: none lost, none
/// dropped unseen for arriving late, each sender's messages in the order sent.
async fn every_acked_message_arrives(
    acked: &Acked,
    logs: &[(&str, Shared<ReaderLog>)],
    stop: tokio::sync::watch::Sender<bool>,
    bound: Duration,
) -> (usize, usize) {
    // A user's devices share one window: what one confirms is released for
    // all, so a message counts as arrived when any device of its user showed it.
    let missing = |logs: &[(&str, Shared<ReaderLog>)]| -> Vec<(String, u64)> {
        let mut missing = Vec::new();
        for (user, sent) in acked {
            let devices: Vec<_> = logs.iter().filter(|(u, _)| u == user).collect();
            for (_, _, id) in sent {
                if !devices
                    .iter()
                    .any(|(_, l)| l.lock().unwrap().shown_ids.contains(id))
                {
                    missing.push((user.clone(), *id));
                }
            }
        }
        missing
    };
    let deadline = Instant::now() + bound;
    while !missing(logs).is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop.send(true);
    let lost = missing(logs);
    let (mut shown, mut repeats) = (0, 0);
    for (reader, log) in logs {
        let log = log.lock().unwrap();
        assert!(
            log.behind.is_empty(),
            "{reader} was sent {:?} late",
            log.behind
        );
        // Each sender's messages, in the order sent (texts carry the sequence).
        let mut last: std::collections::HashMap<&str, &str> = Default::default();
        for (from, text) in &log.shown {
            if let Some(before) = last.insert(from, text) {
                assert!(before < text.as_str(), "{reader}: {text} after {before}");
            }
        }
        shown += log.shown.len();
        repeats += log.repeats;
    }
    let total: usize = acked.values().map(Vec::len).sum();
    assert!(
        lost.is_empty(),
        "{} of {total} acked never arrived: {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    (shown, repeats)
}

fn reader_logs(names: &[&'static str]) -> Vec<(&'static str, Shared<ReaderLog>)> {
    names.iter().map(|n| (*n, Shared::default())).collect()
}

fn start_readers(
    logs: &[(&'static str, Shared<ReaderLog>)],
    addrs: &[SocketAddr],
    pace: Duration,
) -> (
    tokio::sync::watch::Sender<bool>,
    Vec<tokio::task::JoinHandle<()>>,
) {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let tasks = logs
        .iter()
        .map(|(name, log)| {
            tokio::spawn(resuming_reader(
                name.to_string(),
                addrs.to_vec(),
                log.clone(),
                stopped.clone(),
                (pace, None),
            ))
        })
        .collect();
    (stop, tasks)
}

/// Waits (bounded) until each reader's welcome has come, so the burst starts
/// with every reader registered and resuming.
async fn readers_are_in(logs: &[(&str, Shared<ReaderLog>)]) {
    let deadline = Instant::now() + WAIT;
    while logs.iter().any(|(_, l)| l.lock().unwrap().epoch.is_none()) {
        assert!(Instant::now() < deadline, "a reader never got its welcome");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn join_all(tasks: Vec<tokio::task::JoinHandle<()>>) {
    for task in tasks {
        tokio::time::timeout(WAIT, task)
            .await
            .expect("a reader did not stop")
            .unwrap();
    }
}

/// Two nodes on one Redis (b reaching it at `b_url`), readers rita and ravi
/// resuming on b (on a too, in turn, when `to_a`), one frame every `pace`,
/// and `senders` connected to a.
struct Scene {
    a: Proc,
    b: Proc,
    readers: Readers,
    senders: Vec<(String, Client)>,
}

async fn scene(
    (url, b_url): (&str, &str),
    tag: &str,
    (pace, to_a): (Duration, bool),
    senders: &[&str],
) -> Scene {
    let prefix = fresh_prefix(tag);
    let (a, port_a) = node(url, "a", &prefix);
    let (b, port_b) = node(b_url, "b", &prefix);
    let addr = |p: u16| -> SocketAddr { format!("127.0.0.1:{p}").parse().unwrap() };
    let logs = reader_logs(&["rita", "ravi"]);
    let nodes = match to_a {
        true => vec![addr(port_b), addr(port_a)],
        false => vec![addr(port_b)],
    };
    let (stop, tasks) = start_readers(&logs, &nodes, pace);
    readers_are_in(&logs).await;
    let mut connected = Vec::new();
    for name in senders {
        connected.push((name.to_string(), connect_to(addr(port_a), name).await));
    }
    Scene {
        a,
        b,
        readers: (logs, stop, tasks),
        senders: connected,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_burst_under_slow_resuming_readers_loses_nothing_it_acked() {
    let Some(redis) = Redis::start(false) else {
        return;
    };
    let url = redis.url();
    // The readers are on b, and go to a when b dies.
    let pace = Duration::from_millis(15);
    let Scene {
        a,
        b,
        readers: (logs, stop, tasks),
        mut senders,
    } = scene((&url, &url), "kill-resume", (pace, true), &["sam", "sue"]).await;
    let mut b = Some(b);
    let mut shown_at_kill = 0;
    let mut kill = || {
        shown_at_kill = logs
            .iter()
            .map(|(_, l)| l.lock().unwrap().shown.len())
            .sum();
        b.take().unwrap().kill_9();
    };
    let acked = burst(&mut senders, &["rita", "ravi"], 0..300, (300, &mut kill)).await;
    // Mid-burst, with the readers behind: b died holding what they had not read.
    assert!(
        shown_at_kill < 200,
        "{shown_at_kill} of 300 read: the readers were not slow"
    );
    let (shown, repeats) =
        every_acked_message_arrives(&acked, &logs, stop, Duration::from_secs(30)).await;
    join_all(tasks).await;
    assert_eq!(shown, 600, "each acked message shown once");
    for (name, log) in &logs {
        let closes = &log.lock().unwrap().closes;
        assert!(
            !closes.is_empty(),
            "{name} was never cut off: the kill missed the readers"
        );
    }
    eprintln!("kill -9 mid-burst: 600 acked, 600 shown, {repeats} repeats dropped by id");
    drop(a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_devices_of_one_user_on_two_nodes_resuming_in_turn_see_every_message_in_order() {
    let Some(redis) = Redis::start(false) else {
        return;
    };
    let prefix = fresh_prefix("two-devices");
    let (a, port_a) = node(&redis.url(), "a", &prefix);
    let (b, port_b) = node(&redis.url(), "b", &prefix);
    let addr = |p: u16| -> SocketAddr { format!("127.0.0.1:{p}").parse().unwrap() };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let logs: Vec<(&str, Shared<ReaderLog>)> =
        vec![("bob", Shared::default()), ("bob", Shared::default())];
    // The phone starts on a, the laptop on b; each leaves and resumes on the
    // other node every few dozen messages, at different moments.
    let mut tasks = Vec::new();
    for (i, (hop, nodes)) in [(37, [port_a, port_b]), (53, [port_b, port_a])]
        .into_iter()
        .enumerate()
    {
        tasks.push(tokio::spawn(resuming_reader(
            "bob".into(),
            nodes.iter().map(|p| addr(*p)).collect(),
            logs[i].1.clone(),
            stopped.clone(),
            (Duration::from_millis(1), Some(hop)),
        )));
    }
    readers_are_in(&logs).await;
    // Two senders, one on each node, write at once: their ids race.
    let mut sam = vec![("sam".to_string(), connect_to(addr(port_a), "sam").await)];
    let mut sue = vec![("sue".to_string(), connect_to(addr(port_b), "sue").await)];
    let (mut none_a, mut none_b) = (|| {}, || {});
    let (from_sam, from_sue) = tokio::join!(
        burst(&mut sam, &["bob"], 0..250, (0, &mut none_a)),
        burst(&mut sue, &["bob"], 0..250, (0, &mut none_b)),
    );
    let mut acked = from_sam;
    acked
        .get_mut("bob")
        .unwrap()
        .extend(from_sue["bob"].iter().cloned());
    let (shown, repeats) =
        every_acked_message_arrives(&acked, &logs, stop, Duration::from_secs(30)).await;
    join_all(tasks).await;
    let hops: Vec<usize> = logs
        .iter()
        .map(|(_, l)| l.lock().unwrap().closes.len())
        .collect();
    assert!(
        hops.iter().all(|h| *h >= 2),
        "each device resumed on the other node: {hops:?}"
    );
    eprintln!("two devices: 500 acked, {shown} shown on the two, {repeats} repeats dropped, hops {hops:?}");
    drop((a, b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_mid_burst_with_aof_always_loses_nothing_resuming_readers_were_acked() {
    let Some(redis) = Redis::start(true) else {
        return;
    };
    let url = redis.url();
    let pace = Duration::from_millis(3);
    let Scene {
        a,
        b,
        readers: (logs, stop, tasks),
        mut senders,
    } = scene((&url, &url), "restart-resume", (pace, true), &["sam"]).await;
    let (mut redis, mut restarted) = (Some(redis), None);
    let mut restart = || {
        let (port, dir) = redis.take().unwrap().stop();
        restarted = Redis::start_at(port, dir, true);
    };
    let acked = burst(&mut senders, &["rita", "ravi"], 0..300, (100, &mut restart)).await;
    let total: usize = acked.values().map(Vec::len).sum();
    assert!(
        total > 150,
        "only {total} acked: chat never came back after the restart"
    );
    let (shown, repeats) =
        every_acked_message_arrives(&acked, &logs, stop, Duration::from_secs(30)).await;
    join_all(tasks).await;
    for (name, log) in &logs {
        let closes = log.lock().unwrap().closes.clone();
        assert!(
            closes.contains(&Some(1012)),
            "{name} was not told to resume: {closes:?}"
        );
    }
    eprintln!("Redis restarted: {total} acked, {shown} shown, {repeats} repeats dropped");
    drop((a, b, restarted));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_paused_past_its_heartbeat_under_resuming_readers_loses_nothing_it_acked() {
    let Some(redis) = Redis::start(false) else {
        return;
    };
    let url = redis.url();
    // Back on b after the fence: the node that was paused serves again.
    let pace = Duration::from_millis(3);
    let Scene {
        a,
        b,
        readers,
        mut senders,
    } = scene((&url, &url), "pause-resume", (pace, false), &["sam"]).await;
    let said = out_past_the_heartbeat(&mut senders, readers, &mut || signal(&b, "-STOP"), || {
        signal(&b, "-CONT")
    })
    .await;
    eprintln!("paused 8 s: {said}");
    drop((a, b));
}

/// The readers' node is taken out (`out`) after 50 of 100 messages acked,
/// past its heartbeat, and 50 more are sent once the others counted it dead;
/// then it comes back (`back`). Every acked message arrives at its reader,
/// once, in order, and every reader was fenced (1012) and resumed.
async fn out_past_the_heartbeat(
    senders: &mut [(String, Client)],
    (logs, stop, tasks): Readers,
    out: &mut dyn FnMut(),
    back: impl FnOnce(),
) -> String {
    let mut out_at = None;
    let mut take_out = || {
        out();
        out_at = Some(Instant::now());
    };
    let mut acked = burst(senders, &["rita", "ravi"], 0..100, (50, &mut take_out)).await;
    // Swept after the heartbeat's TTL (5 s, checked every second).
    tokio::time::sleep_until((out_at.unwrap() + Duration::from_secs(8)).into()).await;
    let mut none = || {};
    let after = burst(senders, &["rita", "ravi"], 100..150, (0, &mut none)).await;
    for (user, sent) in after {
        acked.entry(user).or_default().extend(sent);
    }
    back();
    let (shown, repeats) =
        every_acked_message_arrives(&acked, &logs, stop, Duration::from_secs(30)).await;
    join_all(tasks).await;
    // Each reader was cut off and resumed: fenced (1012), or, reading
    // slowly, evicted while the node wrote what it had buffered (no close
    // frame). The messages sent after the sweep reach it only so.
    for (name, log) in &logs {
        let closes = log.lock().unwrap().closes.clone();
        assert!(!closes.is_empty(), "{name} was never cut off");
    }
    let total: usize = acked.values().map(Vec::len).sum();
    format!("{total} acked, {shown} shown, {repeats} repeats dropped")
}

/// A TCP relay between a node and Redis that the test can cut, as a network
/// partition would: while cut, every connection through it is dropped and
/// new ones are refused; the node's own clients are not touched.
struct Partition {
    port: u16,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    links: Shared<Vec<tokio::task::JoinHandle<()>>>,
}

impl Partition {
    async fn to(redis_port: u16) -> Partition {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let links: Shared<Vec<tokio::task::JoinHandle<()>>> = Shared::default();
        let (is_cut, all) = (cut.clone(), links.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if is_cut.load(std::sync::atomic::Ordering::SeqCst) {
                    continue;
                }
                let link = tokio::spawn(async move {
                    let Ok(mut outbound) =
                        tokio::net::TcpStream::connect(("127.0.0.1", redis_port)).await
                    else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                });
                all.lock().unwrap().push(link);
            }
        });
        Partition { port, cut, links }
    }

    fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }

    fn heal(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_redis_under_resuming_readers_loses_nothing_it_acked() {
    let Some(redis) = Redis::start(false) else {
        return;
    };
    let partition = Partition::to(redis.port).await;
    let through = format!("redis://127.0.0.1:{}", partition.port);
    let pace = Duration::from_millis(3);
    let Scene {
        a,
        b,
        readers,
        mut senders,
    } = scene(
        (&redis.url(), &through),
        "partition",
        (pace, true),
        &["sam"],
    )
    .await;
    // b is cut off from Redis; its sockets to the readers stay open.
    let said = out_past_the_heartbeat(&mut senders, readers, &mut || partition.cut(), || {
        partition.heal()
    })
    .await;
    eprintln!("cut off 8 s: {said}");
    drop((a, b));
}

/// A device of the structures-level test below: an id, nothing else.
#[derive(Clone)]
struct Bare(u64);

impl vivachat::core::ConnHandle for Bare {
    fn id(&self) -> vivachat::core::ConnId {
        self.0
    }
}

impl vivachat::cluster::LocalDevice for Bare {
    fn peer(&self) -> (String, u64) {
        ("127.0.0.1:1".to_string(), 0)
    }
    fn registered_at(&self) -> u64 {
        0
    }
    fn set_registered_at(&self, _order: u64) {}
}

/// The batch pipeline (`cluster/prefetch.rs`), driven step by step on a real
/// Redis, as the owner does: one round trip reads what a batch of direct
/// messages will ask, each key once, and reserves their ids; a rule that
/// changes a fact before a message of the same batch reads it (a block, a
/// device leaving) makes that message read Redis afresh.
#[test]
fn a_batch_reads_its_facts_in_one_round_trip_and_a_change_before_a_message_is_seen() {
    use vivachat::cluster::{ClusterConfig, Handle, Link, RedisStructures};
    use vivachat::core::{Structures, Trace};
    use vivachat::names::Name;
    let Some(redis) = Redis::start(false) else {
        return;
    };
    let mut config = ClusterConfig::new(&redis.url(), "n1");
    config.prefix = fresh_prefix("batch");
    let link = Link::connect(config).unwrap();
    let mut s: RedisStructures<Bare> = RedisStructures::new(link.clone(), None);
    let name = |n: &str| Name::parse(n).unwrap();
    let (alice, bob, carol) = (name("alice"), name("bob"), name("carol"));
    let mut t = Trace::new(true);
    s.add_connection(&bob, Handle::Local(Bare(1)), &mut t)
        .unwrap();
    s.add_connection(&carol, Handle::Local(Bare(2)), &mut t)
        .unwrap();

    // Three messages, two to bob: one round trip, bob's devices read once.
    let hgetall_before = count_of(&link, "HGETALL");
    let wants = [
        (alice.clone(), bob.clone()),
        (carol.clone(), bob.clone()),
        (alice.clone(), carol.clone()),
    ];
    s.prefetch(&wants).unwrap();
    let batches = link.batches();
    assert_eq!((batches.round_trips, batches.rules), (1, 3));
    assert_eq!(
        count_of(&link, "HGETALL") - hgetall_before,
        2,
        "bob's and carol's, once each"
    );
    let mut ids = Vec::new();
    for (from, to) in &wants {
        let mut t = Trace::new(true);
        let facts = s.direct_facts(from, to, &mut t).unwrap();
        assert!(!facts.blocked);
        assert_eq!(facts.devices.len(), 1, "{to} is online here");
        ids.push(facts.id.unwrap());
        let said: Vec<String> = t.records().iter().filter_map(|r| r.via.clone()).collect();
        assert!(
            said.iter().any(|v| v.contains("3 rules in one round trip")),
            "the narration says the pipeline was shared: {said:?}"
        );
    }
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "reserved ids are increasing: {ids:?}"
    );
    let pipelines = count_of(&link, "PIPELINE (route)");
    assert_eq!(pipelines, 0, "no message needed a round trip of its own");

    // Bob blocks alice, and carol's device leaves, after the batch was read
    // and before its messages run: each message sees the change.
    s.prefetch(&wants).unwrap();
    s.block(&bob, &alice, &mut t).unwrap();
    s.remove_connection(&carol, 2, &mut t).unwrap();
    let to_bob = s.direct_facts(&alice, &bob, &mut t).unwrap();
    assert!(to_bob.blocked, "the block made before it counts");
    drop(to_bob);
    let from_carol = s.direct_facts(&carol, &bob, &mut t).unwrap();
    assert!(!from_carol.blocked, "bob blocks only alice");
    drop(from_carol);
    let to_carol = s.direct_facts(&alice, &carol, &mut t).unwrap();
    assert!(to_carol.devices.is_empty(), "carol's device left before it");
    drop(to_carol);
    assert_eq!(
        count_of(&link, "PIPELINE (route)"),
        2,
        "the two changed facts were read afresh"
    );

    // Two messages to dave, who is offline: the first keep script answers
    // dave's new length and the budget it made, so the second message reads
    // its facts, and dave's length, from the batch without a round trip.
    let dave = name("dave");
    let wants = [(alice.clone(), dave.clone()), (carol.clone(), dave.clone())];
    s.prefetch(&wants).unwrap();
    let (routes, llens) = (count_of(&link, "PIPELINE (route)"), count_of(&link, "LLEN"));
    let mut cost = 0;
    for (i, (from, to)) in wants.iter().enumerate() {
        let mut t = Trace::new(true);
        let facts = s.direct_facts(from, to, &mut t).unwrap();
        assert!(facts.devices.is_empty(), "dave is offline");
        let queued = facts.queued;
        let id = facts.id.unwrap();
        drop(facts);
        assert_eq!(queued.all, cost, "the total includes the push before it");
        assert_eq!(
            s.queued_len(to, &mut t).unwrap(),
            i,
            "dave's queue as pushed so far"
        );
        let message = vivachat::protocol::Message {
            id,
            from: from.clone(),
            target: vivachat::protocol::Target::User(to.clone()),
            text: "x".repeat(100).into(),
            ts: 0,
            receipt: false,
        };
        let kept = s
            .keep(message, std::slice::from_ref(to), None, &mut t)
            .unwrap();
        assert_eq!(kept.id, id, "nothing overtook it");
        cost = s.queued_bytes().unwrap();
        let said: Vec<String> = t.records().iter().filter_map(|r| r.via.clone()).collect();
        assert!(
            said.iter()
                .any(|v| v.starts_with("LLEN") && v.contains("2 rules in one round trip")),
            "{said:?}"
        );
    }
    assert_eq!(
        count_of(&link, "PIPELINE (route)"),
        routes,
        "no fact was read again"
    );
    assert_eq!(
        count_of(&link, "LLEN"),
        llens,
        "dave's length came with the batch"
    );
    let mut t = Trace::new(true);
    assert_eq!(s.queued_len(&dave, &mut t).unwrap(), 2);
}

/// How many times the node ran `command` (its own counters, as `/inspect` shows them).
fn count_of(link: &vivachat::cluster::Link, command: &str) -> u64 {
    link.counts()
        .iter()
        .find(|c| c.command == command)
        .map_or(0, |c| c.count)
}

/// A Redis Cluster with no master for this cluster's slot (here: one node,
/// no slots assigned) is refused at start, with the reason and what to do,
/// before anything is written: not the CLUSTERDOWN of the first script, and
/// not a node that starts and then fails every request.
#[test]
fn a_redis_cluster_with_no_master_for_the_slot_is_refused_at_start_with_the_reason() {
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("vivachat-rc-{}-{port}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let Some(redis) = Redis::start_with(port, dir, false, &["--cluster-enabled", "yes"]) else {
        return;
    };
    let mut serve = Command::new(env!("CARGO_BIN_EXE_vivachat"))
        .args([
            "serve",
            "--port",
            "0",
            "--quiet",
            "--node-id",
            "c1",
            "--redis",
        ])
        .arg(redis.url())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = serve.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = serve.kill();
            panic!("serve did not stop on an incomplete Redis Cluster");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(serve.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("is a Redis Cluster") && err.contains("no master serves slot"),
        "{err}"
    );
    assert!(
        err.contains("redis-cli --cluster check"),
        "says what to do: {err}"
    );
}

/// A Redis Cluster of this test's own, from `deploy/redis-cluster.sh`:
/// three masters with one replica each, stopped when dropped.
struct RedisCluster {
    dir: std::path::PathBuf,
    /// Client ports, the three masters first.
    ports: Vec<u16>,
}

impl RedisCluster {
    /// Starts one, or None (with a line saying why) where redis-server is missing.
    fn start() -> Option<RedisCluster> {
        if let Err(e) = Command::new("redis-server").arg("--version").output() {
            redis_server_missing(&e);
            return None;
        }
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir =
            std::env::temp_dir().join(format!("vivachat-rcluster-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        // The script bounds each of its waits (about 25 s in all).
        let out = Command::new("bash")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/deploy/redis-cluster.sh"
            ))
            .arg("start")
            .arg(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "deploy/redis-cluster.sh start failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ports: Vec<u16> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        assert_eq!(ports.len(), 6, "{}", String::from_utf8_lossy(&out.stdout));
        Some(RedisCluster { dir, ports })
    }

    fn url(port: u16) -> String {
        format!("redis://127.0.0.1:{port}")
    }

    fn con(port: u16) -> redis::Connection {
        RedisCluster::try_con(port).unwrap()
    }

    fn try_con(port: u16) -> redis::RedisResult<redis::Connection> {
        redis::Client::open(RedisCluster::url(port))?
            .get_connection_with_timeout(Duration::from_secs(2))
    }

    /// A connection to any node still running.
    fn any(&self) -> redis::Connection {
        self.ports
            .iter()
            .find_map(|p| RedisCluster::try_con(*p).ok())
            .expect("no node of the cluster answers")
    }

    /// Kills the node on `port` with -9 (its pid file is in the cluster's dir).
    fn kill_9(&self, port: u16) {
        let pid = std::fs::read_to_string(self.dir.join(format!("{port}.pid"))).unwrap();
        let status = Command::new("kill")
            .args(["-9", pid.trim()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -9 {pid}");
    }

    /// The port of the master serving `key`'s slot now, and its node id.
    fn master_of(&self, key: &str) -> (u16, String) {
        let mut con = self.any();
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query(&mut con)
            .unwrap();
        let nodes: String = redis::cmd("CLUSTER").arg("NODES").query(&mut con).unwrap();
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            if !fields[2].contains("master") {
                continue;
            }
            let serves = fields[8..].iter().any(|range| {
                let (a, b) = range.split_once('-').unwrap_or((range, range));
                match (a.parse::<u16>(), b.parse::<u16>()) {
                    (Ok(a), Ok(b)) => (a..=b).contains(&slot),
                    _ => false,
                }
            });
            if serves {
                let port = fields[1].split(['@', ':']).nth(1).unwrap().parse().unwrap();
                return (port, fields[0].to_string());
            }
        }
        panic!("no master serves slot {slot}:\n{nodes}");
    }

    /// The port of the replica of the master `id`.
    fn replica_of(&self, id: &str) -> u16 {
        let mut con = self.any();
        let nodes: String = redis::cmd("CLUSTER").arg("NODES").query(&mut con).unwrap();
        nodes
            .lines()
            .map(|l| l.split(' ').collect::<Vec<_>>())
            .find(|f| f[2].contains("slave") && f[3] == id)
            .map(|f| f[1].split(['@', ':']).nth(1).unwrap().parse().unwrap())
            .unwrap_or_else(|| panic!("master {id} has no replica:\n{nodes}"))
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/deploy/redis-cluster.sh"
            ))
            .arg("stop")
            .arg(&self.dir)
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// alice connects on `a`, then bob on `b`: alice is told bob is online, and
/// `text` from her reaches him, acked `delivered`.
async fn alice_and_bob_chat(a: SocketAddr, b: SocketAddr, text: &str) -> (Client, Client) {
    let mut alice = connect_to(a, "alice").await;
    let mut bob = connect_to(b, "bob").await;
    assert_eq!(
        alice.recv().await,
        json!({"type":"presence","user":"bob","status":"online"})
    );
    let ack = alice
        .request(json!({"type":"message","to":"bob","text":text}))
        .await;
    assert_eq!(ack["status"], "delivered", "{ack}");
    assert_eq!(bob.recv().await["text"], text);
    (alice, bob)
}

/// How the slot's master is replaced.
#[derive(Clone, Copy, PartialEq)]
enum Failover {
    /// `CLUSTER FAILOVER` on its replica: the replica catches up, then takes over.
    Manual,
    /// The master killed with -9: the others count it failed after the node
    /// timeout (2 s), and its replica is elected in its place.
    Kill9,
}

/// Two nodes, each given a different master of a real 3-master Redis
/// Cluster, are one chat server: each finds the master serving the
/// cluster's slot (`{prefix}`), whichever master it was given, and every
/// key and shard channel is there. Then that master is replaced (`how`):
/// each node follows the slot to the promoted replica, closes its
/// connections with 1012, and the queue kept before (replicated before the
/// failover) is still there.
async fn two_nodes_follow_a_failover(how: Failover) {
    let Some(rc) = RedisCluster::start() else {
        return;
    };
    let prefix = fresh_prefix("rc");
    let tag = format!("{{{prefix}}}");
    let (owner, owner_id) = rc.master_of(&tag);
    // Neither node is given the slot's master: each must look it up.
    let others: Vec<u16> = rc.ports[..3]
        .iter()
        .copied()
        .filter(|p| *p != owner)
        .collect();
    let (a, port_a) = node(&RedisCluster::url(others[0]), "a", &prefix);
    let (b, port_b) = node(&RedisCluster::url(others[1]), "b", &prefix);
    let addr = |p: u16| -> SocketAddr { format!("127.0.0.1:{p}").parse().unwrap() };
    let (mut alice, mut bob) = alice_and_bob_chat(addr(port_a), addr(port_b), "across").await;
    let ack = alice
        .request(json!({"type":"message","to":"carol","text":"kept"}))
        .await;
    assert_eq!(ack["status"], "queued", "{ack}");
    // Every key is on the slot's master; the other masters hold none of this cluster's.
    let queue = format!("{tag}:q:carol");
    let exists = |port: u16| -> bool {
        let mut con = RedisCluster::con(port);
        // A replica answers reads of its master's slots after READONLY.
        let _ = redis::cmd("READONLY").query::<()>(&mut con);
        redis::cmd("EXISTS")
            .arg(&queue)
            .query(&mut con)
            .unwrap_or(false)
    };
    assert!(exists(owner), "carol's queue is on the slot's master");
    // The node says where its keys are, and counts the sharded publishes it made.
    let state = common::inspect_at(addr(port_a)).await;
    let cluster = &state["server"]["cluster"];
    let serving = cluster["redis_cluster"].as_str().unwrap_or_default();
    assert!(
        serving.ends_with(&format!("on master 127.0.0.1:{owner}")),
        "{cluster}"
    );
    let spublished = cluster["redis_commands"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["command"] == "SPUBLISH" && c["count"].as_u64() > Some(0));
    assert!(
        spublished,
        "alice's message to bob's node went by SPUBLISH: {cluster}"
    );
    for other in &others {
        let mut con = RedisCluster::con(*other);
        let (_, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(0)
            .arg("MATCH")
            .arg(format!("{tag}:*"))
            .arg("COUNT")
            .arg(10_000)
            .query(&mut con)
            .unwrap();
        assert!(keys.is_empty(), "{other} holds {keys:?}");
    }
    // Replication is asynchronous: the test waits for the copy, so what it
    // checks is the failover, not that race (docs/protocol.md says what a
    // master that dies before its replica has a write takes with it).
    let replica = rc.replica_of(&owner_id);
    let deadline = Instant::now() + WAIT;
    while !exists(replica) {
        assert!(
            Instant::now() < deadline,
            "the replica never had carol's queue"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    match how {
        Failover::Manual => {
            let mut con = RedisCluster::con(replica);
            let () = redis::cmd("CLUSTER")
                .arg("FAILOVER")
                .query(&mut con)
                .unwrap();
        }
        Failover::Kill9 => rc.kill_9(owner),
    }
    let deadline = Instant::now() + 2 * WAIT;
    while rc.master_of(&tag).0 != replica {
        assert!(Instant::now() < deadline, "the failover did not happen");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Each node notices (a MOVED or a refused connection, then its heartbeat
    // finds the new master) and closes its connections, so no client waits
    // for a frame SPUBLISH queued while nobody was subscribed there.
    for client in [&mut alice, &mut bob] {
        let (_, code) = messages_until_close(client, 2 * WAIT).await;
        assert_eq!(code, Some(1012));
    }
    let _chatting = alice_and_bob_chat(addr(port_a), addr(port_b), "after").await;
    let mut carol = connect_to(addr(port_b), "carol").await;
    let got = drain_messages(&mut carol, Duration::from_millis(300)).await;
    assert_eq!(ids(&got).len(), 1, "{got:?}");
    assert_eq!(got[0]["text"], "kept");
    assert!(
        !exists(replica),
        "carol's queue was taken on the new master"
    );
    drop((a, b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_redis_cluster_two_nodes_are_one_server_and_follow_a_failover() {
    two_nodes_follow_a_failover(Failover::Manual).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_redis_cluster_a_master_killed_with_9_is_replaced_and_the_nodes_follow() {
    two_nodes_follow_a_failover(Failover::Kill9).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_node_records_its_own_inputs_and_a_replay_is_that_node_alone() {
    use std::sync::Arc;
    use vivachat::lecture::record::{Recorded, Recorder, Recording};
    let Some(redis) = Redis::start(false) else {
        return;
    };
    let prefix = fresh_prefix("rec");
    let dir = common::temp_data_file("cluster-record");
    let paths = [
        dir.with_file_name("n1.jsonl"),
        dir.with_file_name("n2.jsonl"),
    ];
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut nodes = Vec::new();
    for (name, path) in ["n1", "n2"].iter().zip(&paths) {
        let config = Config {
            cluster: Some(cluster_node(&redis.url(), &prefix, name)),
            record: Some(Arc::new(Recorder::create(path).unwrap())),
            ..Config::default()
        };
        nodes.push(TestServer::one(any, config).await);
    }
    let mut alice = connect_to(nodes[0].addr, "alice").await;
    let mut bob = connect_to(nodes[1].addr, "bob").await;
    assert_eq!(
        alice.recv().await["status"],
        "online",
        "bob's arrival, through Redis"
    );
    let ack = alice
        .request(json!({"type":"message","to":"bob","text":"across nodes"}))
        .await;
    assert_eq!(ack["status"], "delivered");
    assert_eq!(bob.recv().await["text"], "across nodes");
    for node in nodes {
        node.stop().await;
    }
    let second = Recording::read(&paths[1]).unwrap();
    assert_eq!(second.header.node.as_deref(), Some("n2"));
    // What n1 routed to bob reached n2 through Redis: recorded, not replayable.
    assert!(
        second
            .lines
            .iter()
            .any(|l| matches!(&l.input, Recorded::Relayed { summary } if summary.contains("bob"))),
        "{}",
        second.to_jsonl()
    );
    let mut cursor = vivachat::lecture::replay::Cursor::new(Arc::new(second));
    let mut seen_alice = false;
    for k in 0..=cursor.steps() {
        cursor.seek(k);
        let presence = cursor.snapshot().structures.presence;
        seen_alice |= presence.iter().any(|u| u.as_str() == "alice");
    }
    assert!(
        !seen_alice,
        "n2's replay is one server with n2's inputs: alice was never its"
    );
}
