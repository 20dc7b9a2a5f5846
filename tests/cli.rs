//! The real `vivachat` binary, driven through pipes.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const BIN: &str = env!("CARGO_BIN_EXE_vivachat");
const WAIT: Duration = Duration::from_secs(15);

/// A running `vivachat serve`, its stdout lines arriving on a channel.
struct Served {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Served {
    fn start(args: &[&str]) -> Served {
        let mut child = Command::new(BIN)
            .arg("serve")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("vivachat binary runs");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Served {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a stdout line containing `needle`; returns it.
    fn wait_line(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!("no line with {needle:?}; saw:\n{}", self.seen.join("\n")),
            }
        }
    }

    fn port(&mut self) -> u16 {
        let line = self.wait_line("listening on");
        line.rsplit(':')
            .next()
            .unwrap()
            .trim()
            .parse()
            .expect("port in the banner")
    }

    /// Sends SIGINT (Ctrl-C) and waits for a clean exit; returns the rest of stdout.
    fn interrupt(mut self) -> String {
        let status = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + WAIT;
        let exit = loop {
            if let Some(exit) = self.child.try_wait().unwrap() {
                break exit;
            }
            assert!(
                Instant::now() < deadline,
                "server did not exit after Ctrl-C"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(exit.success(), "exit status {exit:?}");
        let rest: Vec<String> = self.lines.iter().collect();
        rest.join("\n")
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_narrates_chats_and_shuts_down_on_ctrl_c_with_final_counts() {
    let mut served = Served::start(&["--port", "0"]);
    let port = served.port();
    served.wait_line("Event log below");
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

    let line = served.wait_line("alice -> bob");
    assert!(
        line.contains("blocked_users[bob].contains(alice) O(1)")
            && line.contains("active_connections.get(bob) O(1), 1 devices"),
        "{line}"
    );
    let line = served.wait_line("alice -> carol");
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
}

#[test]
fn quiet_turns_the_event_log_off_and_0_0_0_0_prints_addresses() {
    let mut served = Served::start(&["--port", "0", "--quiet", "--host", "0.0.0.0"]);
    let port = served.port();
    let line = served.wait_line(&format!("ws://127.0.0.1:{port}/ws/YOUR_NAME"));
    assert!(line.contains("this machine only"));
    served.wait_line("--admin-token");
    served.wait_line("Event log off");
    let rest = served.interrupt();
    assert!(!rest.contains(" connected (conn"), "{rest}");
    assert!(rest.contains("Final operation counts"));
}
