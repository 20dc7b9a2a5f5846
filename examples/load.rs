//! An end-to-end load test of a running `vivachat serve`: idle-connection
//! memory, message throughput and delivery latency, with every message checked.
//!
//! ```sh
//! cargo build --release
//! cargo run --release --example load -- --spawn target/release/vivachat
//! ```
//! `--spawn` starts the server as a child process (quiet, on a free loopback
//! port) so its memory can be read from /proc; `--url ws://127.0.0.1:8000`
//! targets a server that is already running instead.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser)]
struct Args {
    /// Server binary to start on a free port (e.g. target/release/vivachat).
    #[arg(long, conflicts_with = "url")]
    spawn: Option<String>,
    /// A server that is already running.
    #[arg(long)]
    url: Option<String>,
    /// Idle connections to hold open (distinct users, so each one's arrival is broadcast).
    #[arg(long, default_value_t = 1000)]
    idle: usize,
    /// Make every idle connection a device of one user: no presence storm,
    /// so the memory figure is the bare cost of a connection.
    #[arg(long)]
    same_user: bool,
    /// Sender/receiver pairs for the throughput phase.
    #[arg(long, default_value_t = 50)]
    pairs: usize,
    /// Messages each sender sends.
    #[arg(long, default_value_t = 1000)]
    messages: usize,
    /// Requests a sender may have unacknowledged at once.
    #[arg(long, default_value_t = 32)]
    window: usize,
    /// Before the throughput phase, queue this many messages for 1,000 offline
    /// users, then time a GET /inspect (how long the snapshot holds the core).
    #[arg(long, default_value_t = 0)]
    queued: usize,
}

const LIMIT: Duration = Duration::from_secs(120);

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// CPU seconds (user + system) the process has used so far.
fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    let hz: f64 = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
        .unwrap_or(100.0);
    Some(ticks / hz)
}

fn spawn_server(path: &str) -> Result<(Child, String)> {
    let mut child = Command::new(path)
        .args([
            "serve",
            "--quiet",
            "--port",
            "0",
            "--max-offline",
            "1000000",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {path}; run `cargo build --release` first"))?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let port = loop {
        let line = lines.next().context("server exited before listening")??;
        if let Some(addr) = line.strip_prefix("vivachat listening on ") {
            break addr
                .rsplit(':')
                .next()
                .unwrap_or_default()
                .trim()
                .to_string();
        }
    };
    // Keep draining stdout so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Ok((child, format!("ws://127.0.0.1:{port}")))
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(url: &str, user: &str) -> Result<(Ws, Value)> {
    let (mut ws, _) = tokio::time::timeout(
        LIMIT,
        tokio_tungstenite::connect_async(format!("{url}/ws/{user}")),
    )
    .await
    .context("connect timed out")??;
    let welcome = next_json(&mut ws).await?;
    if welcome["type"] != "welcome" {
        bail!("expected welcome, got {welcome}");
    }
    Ok((ws, welcome))
}

async fn next_json(ws: &mut Ws) -> Result<Value> {
    loop {
        match tokio::time::timeout(LIMIT, ws.next())
            .await
            .context("read timed out")?
        {
            Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(&t)?),
            Some(Ok(Message::Close(f))) => bail!("closed by server: {f:?}"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
            None => bail!("connection ended"),
        }
    }
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Queues `n` messages for 1,000 offline users, then fetches /inspect three
/// times and reports how long the core was held and how large the answer was.
async fn snapshot_cost(url: &str, n: usize) -> Result<()> {
    let (ws, _) = connect(url, "queuer").await?;
    let (mut tx, mut rx) = ws.split();
    let text = "a queued message of about forty characters";
    let sender = async move {
        for i in 0..n {
            let frame = json!({"type":"message","to":format!("away{:04}", i % 1000),"text":text});
            tx.feed(Message::text(frame.to_string())).await?;
        }
        tx.flush().await?;
        anyhow::Ok(tx)
    };
    let acks = async move {
        let mut queued = 0;
        while queued < n {
            let msg = tokio::time::timeout(LIMIT, rx.next())
                .await
                .context("ack timed out")?;
            let Some(Ok(Message::Text(t))) = msg else {
                bail!("queuer connection ended")
            };
            let v: Value = serde_json::from_str(&t)?;
            if v["type"] == "ack" && v["status"] == "queued" {
                queued += 1;
            } else if v["type"] == "error" {
                bail!("server refused a message: {v}");
            }
        }
        anyhow::Ok(())
    };
    let (_tx, ()) = tokio::try_join!(sender, acks)?;
    let endpoint = vivachat::inspect::fetch::Endpoint::parse(url)?;
    for _ in 0..3 {
        let start = Instant::now();
        let snapshot = vivachat::inspect::fetch::fetch(&endpoint, None).await?;
        let fetched = start.elapsed();
        let info = snapshot.server.clone().context("no server info")?;
        let size = serde_json::to_string(&snapshot)?.len();
        let queued: usize = snapshot
            .structures
            .offline_messages
            .values()
            .map(|q| q.len)
            .sum();
        println!(
            "snapshot with {} connections, {queued} queued: core held {:.1} ms; GET /inspect took {:.0} ms for {:.1} MB",
            snapshot.structures.connection_details.len(),
            info.hold_us as f64 / 1000.0,
            fetched.as_secs_f64() * 1000.0,
            size as f64 / 1e6
        );
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let (mut child, url) = match (&args.spawn, &args.url) {
        (Some(path), _) => {
            let (child, url) = spawn_server(path)?;
            (Some(child), url)
        }
        (None, Some(url)) => (None, url.trim_end_matches('/').to_string()),
        (None, None) => bail!("give --spawn target/release/vivachat or --url ws://127.0.0.1:8000"),
    };
    let pid = child.as_ref().map(Child::id);
    let result = run(&args, &url, pid).await;
    if let Some(child) = child.as_mut() {
        // Ctrl-C first, so the server shuts down as it would for a person.
        let _ = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while child.try_wait()?.is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    result
}

async fn run(args: &Args, url: &str, pid: Option<u32>) -> Result<()> {
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss_start = pid.and_then(rss_kib);

    // Phase 1: idle connections. Each reads (and counts) what it is sent:
    // the presence storm of everyone arriving after it.
    let started = Instant::now();
    let frames_seen = Arc::new(AtomicU64::new(0));
    let gate = Arc::new(Semaphore::new(200));
    let mut idle = Vec::with_capacity(args.idle);
    for i in 0..args.idle {
        let permit = gate.clone().acquire_owned().await?;
        let (url, seen) = (url.to_string(), frames_seen.clone());
        let user = if args.same_user {
            "idle".to_string()
        } else {
            format!("idle{i:05}")
        };
        idle.push(tokio::spawn(async move {
            let (mut ws, _) = connect(&url, &user).await?;
            drop(permit);
            while let Some(Ok(_)) = ws.next().await {
                seen.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    // All connected once every permit is back.
    let _all = gate.acquire_many(200).await?;
    let connect_time = started.elapsed();
    // Everyone has heard of everyone after them: n(n-1)/2 presence frames.
    let expected = if args.same_user {
        0
    } else {
        (args.idle * args.idle.saturating_sub(1) / 2) as u64
    };
    let deadline = Instant::now() + LIMIT;
    while frames_seen.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let storm_time = started.elapsed();
    let rss_idle = pid.and_then(rss_kib);
    println!("idle connections: {}", args.idle);
    println!(
        "  connected in {:.2}s; presence frames received {} of {} in {:.2}s",
        connect_time.as_secs_f64(),
        frames_seen.load(Ordering::Relaxed),
        expected,
        storm_time.as_secs_f64()
    );
    if let (Some(a), Some(b)) = (rss_start, rss_idle) {
        println!(
            "  server RSS {a} KiB -> {b} KiB: {:.1} KiB per idle connection",
            (b.saturating_sub(a)) as f64 / args.idle.max(1) as f64
        );
    }

    if args.queued > 0 {
        snapshot_cost(url, args.queued).await?;
    }

    // Phase 2: throughput and latency. Sender i sends to receiver i, at most
    // `window` unacknowledged; each text carries its send time.
    let epoch = Instant::now();
    let mut receivers = Vec::new();
    let mut senders = Vec::new();
    for p in 0..args.pairs {
        let (mut rx_ws, _) = connect(url, &format!("recv{p:04}")).await?;
        let n = args.messages;
        receivers.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(n);
            let mut next = 0usize;
            while next < n {
                let v = next_json(&mut rx_ws).await?;
                if v["type"] != "message" {
                    continue;
                }
                let text = v["text"].as_str().unwrap_or_default();
                let (seq, sent_us) = text.split_once(' ').context("bad text")?;
                if seq.parse::<usize>()? != next {
                    bail!("out of order or lost: expected {next}, got {seq}");
                }
                let sent_us: u64 = sent_us.parse()?;
                latencies.push(epoch.elapsed().as_micros() as u64 - sent_us);
                next += 1;
            }
            anyhow::Ok(latencies)
        }));
    }
    // Connect every sender before the clock starts: each arrival is a presence
    // broadcast to every idle connection, which is not what this phase measures.
    let mut sockets = Vec::new();
    for p in 0..args.pairs {
        sockets.push(connect(url, &format!("send{p:04}")).await?.0);
    }
    // ... and let the idle connections finish reading those arrivals.
    let expected = expected
        + if args.same_user {
            0
        } else {
            (2 * args.pairs * args.idle) as u64
        };
    let deadline = Instant::now() + LIMIT;
    while frames_seen.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cpu0 = pid.and_then(cpu_secs);
    let t0 = Instant::now();
    for (p, ws) in sockets.into_iter().enumerate() {
        let (n, window) = (args.messages, args.window.max(1));
        senders.push(tokio::spawn(async move {
            let (mut tx, mut rx) = ws.split();
            let mut acked = 0usize;
            let mut sent = 0usize;
            let mut statuses: HashMap<String, usize> = HashMap::new();
            while acked < n {
                while sent < n && sent - acked < window {
                    let text = format!("{sent} {}", epoch.elapsed().as_micros());
                    let frame = json!({"type":"message","to":format!("recv{p:04}"),"text":text});
                    tx.feed(Message::text(frame.to_string())).await?;
                    sent += 1;
                }
                tx.flush().await?;
                let msg = tokio::time::timeout(LIMIT, rx.next())
                    .await
                    .context("ack timed out")?;
                let Some(Ok(Message::Text(t))) = msg else {
                    bail!("sender connection ended")
                };
                let v: Value = serde_json::from_str(&t)?;
                if v["type"] == "ack" {
                    *statuses
                        .entry(v["status"].as_str().unwrap_or("?").to_string())
                        .or_default() += 1;
                    acked += 1;
                }
            }
            anyhow::Ok(statuses)
        }));
    }
    let mut statuses: HashMap<String, usize> = HashMap::new();
    for s in senders {
        for (k, v) in s.await?? {
            *statuses.entry(k).or_default() += v;
        }
    }
    let mut latencies = Vec::new();
    for r in receivers {
        latencies.extend(r.await??);
    }
    let elapsed = t0.elapsed();
    let cpu = pid.and_then(cpu_secs).zip(cpu0).map(|(b, a)| b - a);
    latencies.sort_unstable();
    let total = args.pairs * args.messages;
    println!(
        "throughput: {} pairs x {} messages, window {}",
        args.pairs, args.messages, args.window
    );
    println!(
        "  {total} messages in {:.2}s = {:.0} messages/s; acks {:?}",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64(),
        statuses
    );
    println!(
        "  delivery latency (send -> recipient read): p50 {} us, p99 {} us, max {} us",
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or(0)
    );
    println!("  every message arrived exactly once, in order per sender");
    if let Some(cpu) = cpu {
        println!(
            "  server CPU: {cpu:.2}s over {:.2}s ({:.0}% of one core), {:.2} us per message",
            elapsed.as_secs_f64(),
            100.0 * cpu / elapsed.as_secs_f64(),
            1e6 * cpu / total as f64
        );
    }
    if let Some(rss) = pid.and_then(rss_kib) {
        println!("  server RSS after the run: {rss} KiB");
    }
    for task in idle {
        task.abort();
    }
    Ok(())
}
