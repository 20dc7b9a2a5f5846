//! Lecture mode against a real server: `--record` while real WebSocket
//! clients chat, then the recording replayed into a fresh core. The state
//! at step K must be exactly what the live server's `/inspect` showed after
//! its K-th input: the same structures and the same operation counts.

mod common;

use std::sync::Arc;

use common::*;
use serde_json::{json, Value};
use vivachat::lecture::page::inspection;
use vivachat::lecture::record::{Recorder, Recording};
use vivachat::lecture::replay::Cursor;
use vivachat::server::Config;

/// What must be equal: the five structures (not where a socket came from,
/// which a recording does not keep), the counts and the next id.
fn comparable(doc: &Value) -> Value {
    let keys = [
        "active_connections",
        "presence",
        "offline_messages",
        "released",
        "groups",
        "blocked",
        "ops",
        "next_message_id",
        "invariants",
    ];
    Value::Object(
        keys.iter()
            .map(|k| {
                assert!(!doc[*k].is_null(), "/inspect has no {k:?}: {doc}");
                (k.to_string(), doc[*k].clone())
            })
            .collect(),
    )
}

fn recording_path(tag: &str) -> std::path::PathBuf {
    temp_data_file(tag).with_file_name("class.jsonl")
}

/// A live `/inspect`, with the step of the replay it is.
async fn live(server: &TestServer) -> (usize, Value) {
    let state = server.inspect().await;
    let k = state["server"]["recorded_inputs"]
        .as_u64()
        .expect("a recording server says how many inputs it recorded");
    (k as usize, state)
}

fn replayed(cursor: &mut Cursor, k: usize) -> Value {
    cursor.seek(k);
    assert_eq!(
        cursor.step(),
        k,
        "the recording has {} steps",
        cursor.steps()
    );
    serde_json::to_value(inspection(cursor, "test")).unwrap()
}

/// Real clients: an offline message and its flush, groups, a block, a
/// resume with its confirmation, a refused frame and closes.
async fn a_class(server: &TestServer, states: &mut Vec<(usize, Value)>) {
    let mut alice = server.connect("alice").await;
    let ack = alice
        .request(json!({"type":"message","to":"bob","text":"first","ref":1}))
        .await;
    assert_eq!(ack["status"], "queued", "{ack}");
    alice
        .request(json!({"type":"message","to":"bob","text":"second","ref":2}))
        .await;
    states.push(live(server).await);

    let mut bob = server.connect("bob").await;
    assert_eq!(bob.welcome["queued"], 2);
    assert_eq!(bob.recv().await["text"], "first");
    assert_eq!(bob.recv().await["text"], "second");
    assert_eq!(alice.recv().await["type"], "presence");
    states.push(live(server).await);

    for (who, client) in [("alice", &mut alice), ("bob", &mut bob)] {
        let joined = client
            .request(json!({"type":"group_join","group":"g1"}))
            .await;
        assert_eq!(joined["type"], "ack", "{who}: {joined}");
    }
    alice
        .request(json!({"type":"group_message","group":"g1","text":"lab at 3"}))
        .await;
    assert_eq!(bob.recv().await["text"], "lab at 3");
    bob.request(json!({"type":"block","user":"alice"})).await;
    let ack = alice
        .request(json!({"type":"message","to":"bob","text":"blocked","receipt":true}))
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    alice
        .request(json!({"type":"message","to":"carol","text":"held for carol","receipt":true}))
        .await;
    states.push(live(server).await);

    let mut carol = server.connect_raw("/ws/carol?resume=0").await.unwrap();
    let welcome = carol.recv().await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    let held = carol.recv().await;
    assert_eq!(held["text"], "held for carol", "{held}");
    states.push(live(server).await);
    carol.send(json!({"type":"received","id":held["id"]})).await;
    // Its receipt reaches alice: the confirmation has been applied.
    let receipt = alice.recv_skipping_presence().await;
    assert_eq!(receipt["type"], "receipt", "{receipt}");
    states.push(live(server).await);

    alice.send_text("this is not JSON").await;
    assert_eq!(alice.recv().await["code"], "bad_json");
    bob.close().await;
    server
        .wait_for_state("bob offline", |s| {
            !s["presence"].as_array().unwrap().contains(&json!("bob"))
        })
        .await;
    states.push(live(server).await);
    alice.request(json!({"type":"who"})).await;
    states.push(live(server).await);
}

/// `a_class` on a server started with `--record`, stopped, and its
/// recording read back, with the live `/inspect`s taken along the way.
async fn a_recorded_class(tag: &str) -> (Arc<Recording>, Vec<(usize, Value)>) {
    let path = recording_path(tag);
    let recorder = Arc::new(Recorder::create(&path).unwrap());
    let server = TestServer::start_alone(Config {
        record: Some(recorder),
        ..Config::default()
    })
    .await;
    let mut states = Vec::new();
    a_class(&server, &mut states).await;
    server.stop().await;
    (Arc::new(Recording::read(&path).unwrap()), states)
}

#[tokio::test]
async fn a_replay_goes_through_exactly_the_states_the_live_server_had() {
    let (recording, states) = a_recorded_class("live").await;
    let mut cursor = Cursor::new(recording.clone());
    assert!(
        states.windows(2).all(|w| w[0].0 < w[1].0),
        "the steps go forward"
    );
    for (k, state) in &states {
        assert_eq!(
            comparable(&replayed(&mut cursor, *k)),
            comparable(state),
            "step {k} of {}",
            recording.lines.len()
        );
    }
    // The shutdown closed every connection: the last step has nobody online.
    let end = replayed(&mut cursor, recording.lines.len());
    assert_eq!(end["presence"], json!([]));
    assert_eq!(end["active_connections"], json!({}));
}

#[tokio::test]
async fn stepping_back_then_forward_again_gives_identical_snapshots() {
    let (recording, _) = a_recorded_class("back").await;
    let n = recording.lines.len();
    let mut cursor = Cursor::new(recording);
    let mut forward = Vec::new();
    for k in 0..=n {
        forward.push(replayed(&mut cursor, k));
    }
    for k in (0..=n).rev() {
        assert_eq!(replayed(&mut cursor, k), forward[k], "back to step {k}");
    }
    for (k, expected) in forward.iter().enumerate() {
        assert_eq!(
            &replayed(&mut cursor, k),
            expected,
            "forward again to step {k}"
        );
    }
}

#[tokio::test]
async fn with_data_a_replay_starts_from_what_the_server_loaded() {
    let data = temp_data_file("record-durable");
    let first = TestServer::start_alone(Config {
        durable: Some(open_store(&data)),
        ..Config::default()
    })
    .await;
    let mut alice = first.connect("alice").await;
    alice
        .request(json!({"type":"message","to":"bob","text":"kept on disk","ref":1}))
        .await;
    alice
        .request(json!({"type":"group_join","group":"g1"}))
        .await;
    alice.close().await;
    first.stop().await;

    let path = recording_path("durable");
    let second = TestServer::start_alone(Config {
        durable: Some(open_store(&data)),
        record: Some(Arc::new(Recorder::create(&path).unwrap())),
        ..Config::default()
    })
    .await;
    let mut bob = second.connect("bob").await;
    assert_eq!(bob.recv().await["text"], "kept on disk");
    let state = live(&second).await;
    second.stop().await;

    let recording = Arc::new(Recording::read(&path).unwrap());
    let mut cursor = Cursor::new(recording);
    let start = replayed(&mut cursor, 0);
    assert_eq!(start["offline_messages"]["bob"]["len"], 1, "{start}");
    assert_eq!(start["groups"]["g1"], json!(["alice"]));
    assert_eq!(
        comparable(&replayed(&mut cursor, state.0)),
        comparable(&state.1)
    );
}

#[test]
fn a_recording_is_never_written_over() {
    let path = recording_path("exists");
    std::fs::write(&path, "precious\n").unwrap();
    let error = Recorder::create(&path).unwrap_err().to_string();
    assert!(error.contains("already exists"), "{error}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "precious\n");
}

#[test]
fn a_damaged_recording_is_refused_with_its_line_number() {
    let path = recording_path("damaged");
    let good = vivachat::lecture::scenario::play("alice> @bob hi\n").unwrap();
    let mut text = good.to_jsonl();
    text.push_str("{\"t\":1,\"input\":\"teleport\"}\n");
    std::fs::write(&path, &text).unwrap();
    let error = Recording::read(&path).unwrap_err().to_string();
    let line = text.lines().count();
    assert!(error.contains(&format!("line {line}")), "{error}");
    assert!(error.contains("not a recorded input"), "{error}");
}

/// The shipped scenarios, each played through the real core to its end.
fn end_of(scenario: &str) -> Value {
    let path = format!("demos/scenarios/{scenario}");
    let text = std::fs::read_to_string(&path).unwrap();
    let recording =
        vivachat::lecture::scenario::play(&text).unwrap_or_else(|e| panic!("{path}, {e}"));
    let mut cursor = Cursor::new(Arc::new(recording));
    cursor.seek(usize::MAX);
    assert!(cursor.steps() > 5, "{path} has {} steps", cursor.steps());
    let state = serde_json::to_value(inspection(&cursor, &path)).unwrap();
    assert_invariants_hold(&state);
    state
}

#[test]
fn every_shipped_scenario_plays_to_its_end_with_the_state_it_teaches() {
    let shipped: std::collections::BTreeSet<String> = std::fs::read_dir("demos/scenarios")
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let checked = [
        "message-flow.txt",
        "groups-and-blocking.txt",
        "multi-device.txt",
        "crash-and-resume.txt",
    ];
    assert_eq!(
        shipped,
        checked.iter().map(|s| s.to_string()).collect(),
        "every shipped scenario is checked here"
    );

    // The seed's flow: both queued messages were flushed; bob left, alice stays.
    let flow = end_of("message-flow.txt");
    assert_eq!(flow["presence"], json!(["alice"]));
    assert_eq!(flow["offline_messages"], json!({}));
    assert_eq!(flow["ops"]["offline_messages"]["push_back"], 2);
    assert_eq!(flow["ops"]["offline_messages"]["pop_front"], 2);

    // Groups and blocks: bob left g1; carol unblocked alice again.
    let groups = end_of("groups-and-blocking.txt");
    assert_eq!(groups["groups"]["g1"], json!(["alice", "carol"]));
    assert_eq!(groups["blocked"], json!({}));
    assert_eq!(groups["ops"]["blocked_users"]["insert"], 1);
    assert_eq!(groups["ops"]["blocked_users"]["remove"], 1);

    // Two devices, then none: the last message waits in bob's deque.
    let devices = end_of("multi-device.txt");
    assert_eq!(devices["presence"], json!(["alice"]));
    assert_eq!(devices["offline_messages"]["bob"]["len"], 1);
    assert_eq!(devices["ops"]["active_connections"]["insert"], 3);

    // Nothing lost to either crash: bob confirmed 3; carol read hers.
    let crash = end_of("crash-and-resume.txt");
    assert_eq!(crash["released"]["bob"], 3);
    assert_eq!(crash["offline_messages"], json!({}));
    assert_eq!(crash["presence"], json!(["alice", "carol"]));
}

#[test]
fn the_terminal_replay_steps_forwards_and_back_in_a_120x40_terminal() {
    let shell = format!(
        "{} replay --scenario demos/scenarios/message-flow.txt --terminal",
        BIN
    );
    let Some(pane) = Tmux::start(&shell, 120, 40) else {
        return;
    };
    let first = pane.wait_for("Step 0 of 7");
    assert!(first.contains("Before the first input"), "{first}");
    pane.keys(&["Enter", "Enter"]);
    let queued = pane.wait_for("Step 2 of 7");
    assert!(
        queued.contains("This step: alice sends bob: \"hello\""),
        "{queued}"
    );
    assert!(
        queued.contains("offline_messages[bob].push_back O(1)*"),
        "{queued}"
    );
    // The tables below: bob's deque, new in this step.
    assert!(queued.contains("bob (new)"), "{queued}");
    pane.keys(&["Enter", "Enter"]);
    let flushed = pane.wait_for("Step 4 of 7");
    assert!(
        flushed.contains("offline_messages.pop_front 2 times"),
        "{flushed}"
    );
    pane.keys(&["b"]);
    let back = pane.wait_for("Step 3 of 7");
    assert!(back.contains("are you there?"), "{back}");
    // Everything fits: no line is cut, nothing scrolled away.
    for line in back.lines() {
        assert!(line.chars().count() <= 120, "too wide: {line}");
    }
    assert!(!back.contains("more lines: enlarge"), "{back}");
    pane.keys(&["q"]);
    pane.wait_for("[exited]");
}

#[test]
fn export_writes_every_step_as_markdown() {
    let out = recording_path("export").with_file_name("steps.md");
    let status = std::process::Command::new(BIN)
        .args([
            "replay",
            "--scenario",
            "demos/scenarios/groups-and-blocking.txt",
            "--export",
        ])
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    let text = std::fs::read_to_string(&out).unwrap();
    let steps = text.matches("\n## Step ").count();
    assert_eq!(steps, 15, "step 0 and the scenario's 14 inputs");
    assert!(
        text.contains("## Step 8 of 14\n\n**carol blocks alice**"),
        "{text}"
    );
    assert!(
        text.contains("- `blocked_users[carol].insert(alice) O(1)*"),
        "{text}"
    );
    // Chat text never becomes Markdown.
    assert!(text.contains("room changed to 2.14"), "{text}");
}

#[test]
fn a_bad_scenario_line_is_an_error_naming_the_line() {
    let path = recording_path("bad-scenario").with_file_name("bad.txt");
    std::fs::write(&path, "alice> (connects)\nbob says hi\n").unwrap();
    let out = std::process::Command::new(BIN)
        .args(["replay", "--scenario"])
        .arg(&path)
        .arg("--export")
        .arg(path.with_extension("md"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let error = String::from_utf8_lossy(&out.stderr);
    assert!(error.contains("line 2: no `>` after the user"), "{error}");
    assert!(error.contains("expected: USER> ACTION"), "{error}");
}
