//! The real `vivachat` binary, driven through pipes.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Proc, BIN};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(15);

fn serve(args: &[&str]) -> (Proc, u16) {
    Proc::serve(args)
}

async fn recv_json(
    ws: &mut (impl StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin),
) -> Value {
    let msg = tokio::time::timeout(WAIT, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    serde_json::from_str(msg.to_text().unwrap()).unwrap()
}

#[test]
fn help_lists_only_what_exists() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for present in ["serve", "inspect", "client", "bench"] {
        assert!(help.contains(&format!("  {present}")), "{present}:\n{help}");
    }
    let out = Command::new(BIN)
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--host",
        "--port",
        "--max-message-bytes",
        "--max-offline",
        "--admin-token",
        "--quiet",
    ] {
        assert!(help.contains(flag), "missing {flag}:\n{help}");
    }
    assert!(help.contains("[default: 127.0.0.1]") && help.contains("[default: 8000]"));
    assert!(help.contains("[default: 65536]") && help.contains("[default: 10000]"));
}

#[test]
fn bad_flags_and_a_busy_port_are_clear_errors() {
    let out = Command::new(BIN)
        .args(["serve", "--max-offline", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--max-offline"));

    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port().to_string();
    let out = Command::new(BIN)
        .args(["serve", "--quiet", "--port", &port])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("already in use") && err.contains("--port"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");

    // The view flags belong to the dashboard (and inspect); a wrong structure names the right ones.
    let out = Command::new(BIN)
        .args(["serve", "--quiet", "--port", "0", "--only", "queue"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("add --dashboard"), "{err}");
    let out = Command::new(BIN)
        .args(["inspect", "--only", "stack"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("offline_messages"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_narrates_chats_and_shuts_down_on_ctrl_c_with_final_counts() {
    let (mut served, port) = serve(&["--port", "0"]);
    served.expect("Event log below");
    let url = |u: &str| format!("ws://127.0.0.1:{port}/ws/{u}");
    let (mut bob, _) = tokio_tungstenite::connect_async(url("bob")).await.unwrap();
    recv_json(&mut bob).await;
    let (mut alice, _) = tokio_tungstenite::connect_async(url("alice"))
        .await
        .unwrap();
    recv_json(&mut alice).await;
    recv_json(&mut bob).await; // alice online
    alice
        .send(Message::text(
            json!({"type":"message","to":"bob","text":"hi"}).to_string(),
        ))
        .await
        .unwrap();
    assert_eq!(recv_json(&mut alice).await["status"], "delivered");
    assert_eq!(recv_json(&mut bob).await["text"], "hi");
    alice
        .send(Message::text(
            json!({"type":"message","to":"carol","text":"later"}).to_string(),
        ))
        .await
        .unwrap();
    assert_eq!(recv_json(&mut alice).await["status"], "queued");

    let line = served.expect("alice -> bob");
    assert!(
        line.contains("blocked_users[bob].contains(alice) O(1)")
            && line.contains("active_connections.get(bob) O(1), 1 devices"),
        "{line}"
    );
    let line = served.expect("alice -> carol");
    assert!(
        line.contains("offline_messages[carol].push_back O(1)*, len 1"),
        "{line}"
    );

    let rest = served.interrupt();
    for ws in [&mut alice, &mut bob] {
        let close = tokio::time::timeout(WAIT, ws.next()).await.unwrap();
        match close {
            Some(Ok(Message::Close(Some(f)))) => assert_eq!(u16::from(f.code), 1001),
            other => panic!("expected close 1001, got {other:?}"),
        }
    }
    assert!(rest.contains("Final operation counts"), "{rest}");
    assert!(
        rest.contains("push_back") && rest.contains("active_connections"),
        "{rest}"
    );
    // A short run still has a mean time for every operation it used: the
    // first call of each is timed.
    let push_back = rest.lines().find(|l| l.contains("push_back")).unwrap();
    assert!(
        push_back.contains(" ns") || push_back.contains(" µs"),
        "{push_back}"
    );
    assert!(rest.contains("the first call of each operation"), "{rest}");
}

#[test]
fn quiet_turns_the_event_log_off_and_0_0_0_0_prints_addresses() {
    let (mut served, port) = serve(&["--port", "0", "--quiet", "--host", "0.0.0.0"]);
    // The page's address (the LAN one, not loopback) and a QR code of it.
    let students = served.expect("Students: open http://");
    let has_lan = if_addrs::get_if_addrs()
        .unwrap_or_default()
        .iter()
        .any(|i| i.ip().is_ipv4() && !i.is_loopback());
    assert_eq!(!students.contains("127.0.0.1"), has_lan, "{students}");
    assert!(
        students.contains(&format!(":{port}/ on a phone")),
        "{students}"
    );
    let qr = served.expect("█");
    assert!(
        qr.chars().count() >= 21,
        "a QR code is at least 21 modules wide: {qr}"
    );
    served.expect(&format!("Projector: http://127.0.0.1:{port}/board"));
    let line = served.expect(&format!("ws://127.0.0.1:{port}/ws/YOUR_NAME"));
    assert!(line.contains("this machine only"));
    served.expect("--admin-token");
    served.expect("Event log off");
    let rest = served.interrupt();
    assert!(!rest.contains(" connected (conn"), "{rest}");
    assert!(rest.contains("Final operation counts"));
}

/// `vivachat bench --quick | head -c 10`: the reader leaves early; we exit 0, silently.
#[test]
fn a_closed_pipe_is_a_quiet_successful_exit() {
    use std::io::Read;
    for args in [
        &["bench", "--quick"][..],
        &["bench", "--quick", "--json"][..],
    ] {
        let mut child = common::command()
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = [0u8; 10];
        child
            .stdout
            .as_mut()
            .unwrap()
            .read_exact(&mut first)
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{args:?}: {:?}", out.status);
        assert_eq!(String::from_utf8_lossy(&out.stderr), "", "{args:?}");
    }
}

/// demos/classroom.sh when the port is taken (a teacher who already ran
/// `serve`): it says so and which `--port` to try, exits 1, and leaves no
/// tmux session behind.
#[test]
fn classroom_on_a_taken_port_says_so_and_starts_nothing() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let mut child = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/demos/classroom.sh"))
        .args(["--port", &port.to_string()])
        .env("VIVACHAT", BIN)
        .env("CLASSROOM_NO_ATTACH", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    while child.try_wait().unwrap().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "classroom.sh did not exit"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("port {port} is already in use")),
        "{err}"
    );
    assert!(err.contains(&format!("--port {}", port + 1)), "{err}");
    let session = Command::new("tmux")
        .args(["has-session", "-t", &format!("vivachat-{port}")])
        .output();
    // No tmux at all is fine too: then there is no session either.
    if let Ok(session) = session {
        assert!(!session.status.success(), "a tmux session was left behind");
    }
    drop(taken);
}
