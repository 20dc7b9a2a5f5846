//! A real server on a free loopback port, and real WebSocket clients for it.
//! Every wait is bounded: a hung test fails instead of hanging CI.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use vivachat::server::{self, Config, Report};

/// How long any single expected frame may take to arrive.
pub const WAIT: Duration = Duration::from_secs(10);

pub struct TestServer {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    handle: JoinHandle<std::io::Result<Report>>,
    /// Cluster mode: the second node, on its own port, sharing one Redis.
    pub second: Option<Box<TestServer>>,
    /// Which node the next connection goes to (clients alternate).
    turn: std::sync::atomic::AtomicUsize,
}

/// `VIVACHAT_TEST_REDIS=redis://127.0.0.1:PORT` runs every test server as a
/// cluster of two nodes on that Redis, each test under a key prefix of its
/// own, with clients placed alternately on each node (CI runs the protocol
/// and stress suites this way too).
pub fn test_redis() -> Option<String> {
    std::env::var("VIVACHAT_TEST_REDIS")
        .ok()
        .filter(|u| !u.is_empty())
}

/// A cluster config for one node of a test's own cluster (`prefix`).
pub fn cluster_node(url: &str, prefix: &str, node: &str) -> vivachat::cluster::ClusterConfig {
    let mut c = vivachat::cluster::ClusterConfig::new(url, node);
    c.prefix = prefix.to_string();
    c
}

/// A key prefix no other test (or earlier run) uses.
pub fn fresh_prefix(tag: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("t{tag}{}x{n}x{nanos}", std::process::id())
}

impl TestServer {
    pub async fn start() -> TestServer {
        TestServer::start_with(Config::default()).await
    }

    pub async fn start_with(config: Config) -> TestServer {
        TestServer::start_at("127.0.0.1:0".parse().unwrap(), config).await
    }

    /// A server on a given address (to restart one on the port it had).
    /// `VIVACHAT_TEST_DURABLE=1` runs every test server in durable mode, each
    /// on a fresh data file (CI runs the protocol and stress suites both ways).
    pub async fn start_at(addr: SocketAddr, mut config: Config) -> TestServer {
        if config.durable.is_none() && config.cluster.is_none() {
            if let Some(url) = test_redis() {
                return TestServer::cluster(&url, config).await;
            }
        }
        if config.durable.is_none()
            && config.cluster.is_none()
            && std::env::var_os("VIVACHAT_TEST_DURABLE").is_some()
        {
            config.durable = Some(open_store(&temp_data_file("suite")));
        }
        TestServer::one(addr, config).await
    }

    /// Two nodes of one cluster, each with `config`, on a fresh key prefix.
    pub async fn cluster(url: &str, config: Config) -> TestServer {
        let prefix = fresh_prefix("c");
        let mut first = config.clone();
        first.cluster = Some(cluster_node(url, &prefix, "n1"));
        let mut second = config;
        second.cluster = Some(cluster_node(url, &prefix, "n2"));
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let mut server = TestServer::one(any, first).await;
        server.second = Some(Box::new(TestServer::one(any, second).await));
        server
    }

    /// One server process (or one node), as configured.
    pub async fn one(addr: SocketAddr, config: Config) -> TestServer {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        // VIVACHAT_TEST_LOG=1 prints the server's event log while debugging a test.
        let log = std::env::var_os("VIVACHAT_TEST_LOG").map(|_| {
            vivachat::event_log::EventLog::spawn(Box::new(std::io::stderr()), false, || None)
        });
        let handle = tokio::spawn(server::run(listener, config, log, async move {
            let _ = stopped.await;
        }));
        // A node that cannot join its cluster ends at once: say why here.
        tokio::task::yield_now().await;
        if handle.is_finished() {
            panic!("the server did not start: {:?}", handle.await);
        }
        TestServer {
            addr,
            stop: Some(stop),
            handle,
            second: None,
            turn: Default::default(),
        }
    }

    /// The address of the node the next connection goes to: in a cluster,
    /// each node in turn; else the one server.
    pub fn next_addr(&self) -> SocketAddr {
        match &self.second {
            Some(second) => {
                let turn = self.turn.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if turn % 2 == 0 {
                    self.addr
                } else {
                    second.addr
                }
            }
            None => self.addr,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{}", self.next_addr(), path)
    }

    /// Connects as `user` and consumes the welcome frame.
    pub async fn connect(&self, user: &str) -> Client {
        let mut client = self.connect_raw(&format!("/ws/{user}")).await.unwrap();
        let welcome = client.recv().await;
        assert_eq!(
            welcome["type"], "welcome",
            "first frame must be welcome: {welcome}"
        );
        client.welcome = welcome;
        client
    }

    /// Connects to any path; the error is the refused upgrade.
    pub async fn connect_raw(
        &self,
        path: &str,
    ) -> Result<Client, tokio_tungstenite::tungstenite::Error> {
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(self.url(path)))
            .await
            .expect("connect timed out")?;
        Ok(Client {
            ws,
            welcome: Value::Null,
        })
    }

    /// The HTTP status of an upgrade to `path` that must be refused.
    pub async fn refused_status(&self, path: &str) -> u16 {
        match self.connect_raw(path).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
            Err(e) => panic!("{path}: expected an HTTP refusal, got {e}"),
            Ok(_) => panic!("{path}: expected a refusal, the upgrade succeeded"),
        }
    }

    /// A plain HTTP GET; returns (status, body).
    pub async fn get(&self, path: &str) -> (u16, String) {
        http_get(self.addr, path, &[]).await
    }

    pub async fn inspect(&self) -> Value {
        inspect_at(self.addr).await
    }

    /// Waits until `/inspect` satisfies `check` (state changes after a close are asynchronous).
    pub async fn wait_for_state(&self, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let state = self.inspect().await;
            if check(&state) {
                return state;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}: {state}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the server; a cluster stops both nodes and reports what they did together.
    pub async fn stop(mut self) -> Report {
        let Some(second) = self.second.take() else {
            return self.stop_node().await;
        };
        let (a, b) = (self.stop_node().await, second.stop_node().await);
        let mut ops = a.ops.clone();
        for row in &mut ops.0 {
            row.count += b.ops.get(row.structure, row.op);
        }
        Report {
            ops,
            uptime: a.uptime.max(b.uptime),
            connections_served: a.connections_served + b.connections_served,
        }
    }

    /// One server even under `VIVACHAT_TEST_REDIS`: for what is per process
    /// (connection slots per node, a restart on the same port).
    pub async fn start_alone(config: Config) -> TestServer {
        TestServer::one("127.0.0.1:0".parse().unwrap(), config).await
    }

    async fn stop_node(mut self) -> Report {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(WAIT, self.handle)
            .await
            .expect("server did not stop in time")
            .unwrap()
            .unwrap()
    }
}

/// Every invariant in an `/inspect` document holds.
pub fn assert_invariants_hold(state: &Value) {
    let all = state["invariants"].as_array().expect("invariants");
    assert!(all.iter().all(|i| i["holds"] == true), "{state}");
}

/// `GET /inspect` from the server at `addr`, as JSON; anything but 200 fails the test.
pub async fn inspect_at(addr: SocketAddr) -> Value {
    let (status, body) = http_get(addr, "/inspect", &[]).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("/inspect answers JSON")
}

pub async fn http_get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let mut request = format!("GET {path} HTTP/1.1\r\nConnection: close\r\n");
        // A test may send its own Host (the page checks it); else the address.
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
            request += &format!("Host: {addr}\r\n");
        }
        for (k, v) in headers {
            request += &format!("{k}: {v}\r\n");
        }
        request += "\r\n";
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.unwrap();
        raw
    };
    let raw = tokio::time::timeout(WAIT, exchange)
        .await
        .expect("HTTP GET timed out");
    let text = String::from_utf8_lossy(&raw).to_string();
    let status: u16 = text.split(' ').nth(1).unwrap().parse().unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, body)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out += &rest[..n];
        body = &rest[n + 2..];
    }
    out
}

pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub welcome: Value,
}

/// What a client sees next.
#[derive(Debug)]
pub enum Seen {
    Frame(Value),
    Close(Option<CloseFrame>),
    /// The socket ended without a close frame, or errored.
    Ended,
}

impl Client {
    pub async fn send(&mut self, frame: Value) {
        self.send_text(&frame.to_string()).await;
    }

    pub async fn send_text(&mut self, text: &str) {
        tokio::time::timeout(WAIT, self.ws.send(Message::text(text)))
            .await
            .expect("send timed out")
            .expect("send failed");
    }

    pub async fn send_message(&mut self, message: Message) {
        tokio::time::timeout(WAIT, self.ws.send(message))
            .await
            .expect("send timed out")
            .expect("send failed");
    }

    /// The next thing that happens on this connection (pings are skipped).
    pub async fn next_seen(&mut self) -> Seen {
        loop {
            let next = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("timed out waiting for a frame");
            return match next {
                Some(Ok(Message::Text(t))) => {
                    Seen::Frame(serde_json::from_str(&t).expect("server sent invalid JSON"))
                }
                Some(Ok(Message::Close(f))) => Seen::Close(f),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(other)) => panic!("unexpected frame {other:?}"),
                Some(Err(_)) | None => Seen::Ended,
            };
        }
    }

    /// The next text frame exactly as sent (for byte-for-byte checks).
    pub async fn recv_raw(&mut self) -> String {
        loop {
            let next = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("timed out waiting for a frame");
            match next {
                Some(Ok(Message::Text(t))) => return t.to_string(),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// The next JSON frame; fails the test on a close or timeout.
    pub async fn recv(&mut self) -> Value {
        match self.next_seen().await {
            Seen::Frame(v) => v,
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    /// The next frame of the given type, skipping presence frames only.
    pub async fn recv_skipping_presence(&mut self) -> Value {
        loop {
            let v = self.recv().await;
            if v["type"] != "presence" && v["type"] != "presence_diff" {
                return v;
            }
        }
    }

    /// Sends a request and returns the next frame (its reply, on a quiet connection).
    pub async fn request(&mut self, frame: Value) -> Value {
        self.send(frame).await;
        self.recv().await
    }

    /// Asserts nothing arrives for `quiet`: proves a frame was NOT sent.
    /// A ping round-trip first makes sure everything already routed has arrived.
    pub async fn assert_nothing_pending(&mut self) {
        self.send(serde_json::json!({"type":"ping","ref":"sync"}))
            .await;
        let v = self.recv().await;
        assert_eq!(v, serde_json::json!({"type":"pong"}), "unexpected frame");
    }

    pub async fn close(mut self) {
        let _ = tokio::time::timeout(WAIT, self.ws.close(None)).await;
        // Drain until the server's close reply so the server has processed our close.
        let _ = tokio::time::timeout(WAIT, async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }
}

/// A child process (the real `vivachat` binary) whose stdout lines arrive on a
/// channel, so every wait for a line can time out.
pub struct Proc {
    pub child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    lines: std::sync::mpsc::Receiver<String>,
    /// Every line read so far, for failure messages.
    pub seen: Vec<String>,
}

pub const BIN: &str = env!("CARGO_BIN_EXE_vivachat");

/// A fresh path for a data file, in a directory of its own.
pub fn temp_data_file(tag: &str) -> std::path::PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("vivachat-data-{tag}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("chat.db")
}

/// Opens a data file for a test server (`Config { durable: Some(..) }`).
pub fn open_store(path: &std::path::Path) -> vivachat::store::Durable {
    let (store, loaded) = vivachat::store::Store::open(path).expect("the data file opens");
    vivachat::store::Durable { store, loaded }
}

/// A config directory of this test process's own, so client tokens never land
/// in the real home directory (one test process is like one user's machine).
pub fn config_home() -> std::path::PathBuf {
    static DIR: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("vivachat-test-config-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    })
    .clone()
}

/// `vivachat` as a command, with this process's own config directory.
pub fn command() -> std::process::Command {
    let mut command = std::process::Command::new(BIN);
    command.env("XDG_CONFIG_HOME", config_home());
    command
}

impl Proc {
    /// Runs `vivachat ARGS` with stdin and stdout piped.
    pub fn spawn(args: &[&str]) -> Proc {
        Proc::spawn_with(command(), args)
    }

    /// Runs `command ARGS` with stdin and stdout piped (another device: another config dir).
    pub fn spawn_with(mut command: std::process::Command, args: &[&str]) -> Proc {
        use std::io::BufRead;
        let mut child = command
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("the vivachat binary runs");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take();
        Proc {
            child,
            stdin,
            lines,
            seen: Vec::new(),
        }
    }

    /// Writes one line to its stdin.
    pub fn say(&mut self, line: &str) {
        use std::io::Write;
        let stdin = self.stdin.as_mut().expect("stdin still open");
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    /// Waits (at most WAIT) for a stdout line containing `needle`; returns it.
    pub fn expect(&mut self, needle: &str) -> String {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
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

    /// Kills the process with SIGKILL and returns every line it had printed
    /// that was not read yet (the pipe is read to its end).
    pub fn kill_9_and_drain(&mut self) -> Vec<String> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mut rest = Vec::new();
        while let Ok(line) = self.lines.recv_timeout(WAIT) {
            rest.push(line);
        }
        rest
    }

    /// The next stdout line, whatever it is.
    pub fn next_line(&mut self) -> String {
        let line = self
            .lines
            .recv_timeout(WAIT)
            .expect("a line within the wait");
        self.seen.push(line.clone());
        line
    }

    fn wait_exit(&mut self, what: &str) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "did not exit after {what}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGINT (Ctrl-C), expects a clean exit, and returns the rest of stdout.
    pub fn interrupt(self) -> String {
        self.signal("-INT")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory in KiB, from /proc (Linux).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    /// SIGTERM, as a service manager stops a server; returns the rest of stdout.
    pub fn terminate(self) -> String {
        self.signal("-TERM")
    }

    fn signal(mut self, which: &str) -> String {
        let ok = std::process::Command::new("kill")
            .args([which, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        let status = self.wait_exit("Ctrl-C");
        assert!(status.success(), "exit status {status:?}");
        let rest: Vec<String> = self.lines.iter().collect();
        rest.join("\n")
    }

    /// Closes stdin and returns the exit code and the remaining stdout lines.
    pub fn finish(mut self) -> (i32, Vec<String>) {
        drop(self.stdin.take());
        let status = self.wait_exit("end of input");
        let rest: Vec<String> = self.lines.try_iter().collect();
        (status.code().unwrap_or(-1), rest)
    }

    /// Waits for the process to exit on its own (e.g. after /quit).
    pub fn exited(&mut self) -> std::process::ExitStatus {
        self.wait_exit("its own exit")
    }

    /// Starts `vivachat serve ARGS` and returns it with the port from its banner.
    pub fn serve(args: &[&str]) -> (Proc, u16) {
        let mut all = vec!["serve"];
        all.extend_from_slice(args);
        let mut served = Proc::spawn(&all);
        let line = served.expect("listening on");
        let port = line
            .rsplit(':')
            .next()
            .unwrap()
            .trim()
            .parse()
            .expect("port in the banner");
        (served, port)
    }

    /// SIGKILL: the process gets no chance to flush or clean up (a crash).
    pub fn kill_9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `shell` (a command line) in a detached tmux pane of `width` x
/// `height`, as a teacher's terminal would show it, until `done` appears in
/// the pane (at most `bound`), and returns the pane's whole history with the
/// lines tmux wrapped joined again, so a line too wide for the pane shows as
/// wider than it. None where tmux is missing (outside CI, which installs it).
pub fn tmux_run(
    shell: &str,
    width: u16,
    height: u16,
    done: &str,
    bound: Duration,
) -> Option<String> {
    let pane = Tmux::start(shell, width, height)?;
    let deadline = std::time::Instant::now() + bound;
    let screen = loop {
        let screen = pane.history();
        if screen.contains(done) || std::time::Instant::now() > deadline {
            break screen;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(screen.contains(done), "never showed {done:?}:\n{screen}");
    Some(screen)
}

/// A tmux pane that a test types into: the real binary in a real terminal
/// of `width` x `height`. Killed when dropped. None where tmux is missing
/// (outside CI, which installs it).
pub struct Tmux {
    session: String,
}

impl Tmux {
    pub fn start(shell: &str, width: u16, height: u16) -> Option<Tmux> {
        use std::process::Command;
        if Command::new("tmux").arg("-V").output().is_err() {
            assert!(std::env::var_os("CI").is_none(), "tmux is needed under CI");
            eprintln!("skipped: tmux is not installed");
            return None;
        }
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let session = format!("vivachat-keys-{}-{n}", std::process::id());
        let started = Command::new("tmux")
            .args(["new-session", "-d", "-s", &session])
            .args(["-x", &width.to_string(), "-y", &height.to_string()])
            .arg(format!("{shell}; echo '[exited]'; sleep 600"))
            .env("XDG_CONFIG_HOME", config_home())
            .status()
            .expect("tmux runs");
        assert!(started.success());
        Some(Tmux { session })
    }

    fn capture(&self, whole: &[&str]) -> String {
        let out = std::process::Command::new("tmux")
            .args(["capture-pane", "-p"])
            .args(whole)
            .args(["-t", &self.session])
            .output()
            .expect("tmux capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// What the pane shows now (its visible screen).
    pub fn screen(&self) -> String {
        self.capture(&[])
    }

    /// The pane's whole history, with the lines tmux wrapped joined again,
    /// so a line too wide for the pane shows as wider than it.
    pub fn history(&self) -> String {
        self.capture(&["-J", "-S", "-"])
    }

    /// Waits (at most [`WAIT`]) until the screen shows `needle`, and returns it.
    pub fn wait_for(&self, needle: &str) -> String {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let screen = self.screen();
            if screen.contains(needle) {
                return screen;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the pane never showed {needle:?}:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Presses keys, in tmux's names (`Enter`, `b`, `Left`, `q`).
    pub fn keys(&self, keys: &[&str]) {
        let status = std::process::Command::new("tmux")
            .args(["send-keys", "-t", &self.session])
            .args(keys)
            .status()
            .expect("tmux send-keys");
        assert!(status.success());
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = std::process::Command::new("tmux")
            .args(["kill-session", "-t", &self.session])
            .status();
    }
}
