//! The README's examples are what the program prints: the server's banner
//! and event-log lines under "What you see", and the teaching lines of the
//! `inspect` sample (each structure's heading and the sentence under it),
//! checked against the real binary. When the wording changes, this fails
//! until the README says the same.

mod common;

use common::{Proc, WAIT};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};

/// The lines of the first ```text block after `heading`.
fn block_after(readme: &str, heading: &str) -> Vec<String> {
    let at = readme.find(heading).expect("the README has the heading");
    let rest = &readme[at..];
    let start = rest.find("```text\n").expect("a text block follows") + "```text\n".len();
    let end = rest[start..].find("```").expect("the block ends") + start;
    rest[start..end].lines().map(str::to_string).collect()
}

/// An event-log line without its timestamp (`[    3.204s] `), which no run repeats.
fn untimed(line: &str) -> String {
    match line.strip_prefix('[').and_then(|l| l.split_once("s] ")) {
        Some((time, rest)) if time.trim().parse::<f64>().is_ok() => rest.to_string(),
        _ => line.to_string(),
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(port: u16, user: &str) -> Ws {
    let url = format!("ws://127.0.0.1:{port}/ws/{user}");
    let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
        .await
        .expect("connect in time")
        .expect("connects");
    ws
}

/// Sends a message and waits (bounded) for its ack.
async fn send(ws: &mut Ws, to: &str, text: &str) -> Value {
    let frame = json!({"type":"message","to":to,"text":text}).to_string();
    ws.send(frame.into()).await.unwrap();
    loop {
        let next = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("an ack in time");
        let v: Value = serde_json::from_str(next.unwrap().unwrap().to_text().unwrap()).unwrap();
        if v["type"] == "ack" {
            return v;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_you_see_in_the_readme_is_what_serve_prints() {
    let readme = std::fs::read_to_string("README.md").unwrap();
    let (mut served, port) = Proc::serve(&["--port", "0"]);
    let wanted: Vec<String> = block_after(&readme, "## What you see")
        .iter()
        .map(|l| untimed(&l.replace("8000", &port.to_string())))
        .collect();
    let _alice = {
        let mut alice = connect(port, "alice").await;
        assert_eq!(send(&mut alice, "bob", "hi").await["status"], "queued");
        alice
    };
    // Every line the README shows, in its order, among what the server printed.
    let mut printed: Vec<String> = served.seen.iter().map(|l| untimed(l)).collect();
    let deadline = std::time::Instant::now() + WAIT;
    while !printed.iter().any(|l| l.starts_with("alice -> bob")) {
        assert!(
            std::time::Instant::now() < deadline,
            "printed:\n{}",
            printed.join("\n")
        );
        printed.push(untimed(&served.next_line()));
    }
    let mut at = 0;
    for line in &wanted {
        match printed[at..].iter().position(|p| p == line) {
            Some(i) => at += i + 1,
            None => panic!(
                "the README shows a line serve does not print:\n  {line}\nserve printed:\n{}",
                printed.join("\n")
            ),
        }
    }
    drop(served);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inspect_sample_in_the_readme_teaches_what_inspect_prints() {
    let readme = std::fs::read_to_string("README.md").unwrap();
    let (served, port) = Proc::serve(&["--port", "0", "--quiet"]);
    // The sample's class: alice on two devices, bob on one, carol offline
    // with two messages waiting.
    let mut alice = connect(port, "alice").await;
    let _alice_phone = connect(port, "alice").await;
    let mut bob = connect(port, "bob").await;
    send(&mut alice, "carol", "are you coming to the viva?").await;
    send(&mut bob, "carol", "bring the benchmark numbers").await;
    let out = common::command()
        .args(["inspect", "--url", &format!("http://127.0.0.1:{port}")])
        .env("COLUMNS", "200")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8(out.stdout).unwrap();
    let printed: Vec<&str> = printed.lines().map(str::trim_end).collect();
    let sample = block_after(&readme, "## Inspecting the structures");
    // The header (times, addresses) and the table rows change with every
    // run; the headings and the sentences under them are the lesson.
    let teaching: Vec<&String> = sample
        .iter()
        .skip(3)
        .filter(|l| !l.is_empty() && *l != "..." && !l.starts_with(['┌', '│', '╞', '└', '├']))
        .collect();
    assert!(teaching.len() >= 6, "{teaching:?}");
    for line in teaching {
        assert!(
            printed.contains(&line.trim_end()),
            "the README's inspect sample shows a line inspect does not print:\n  {line}\ninspect printed:\n{}",
            printed.join("\n")
        );
    }
    drop(served);
}
