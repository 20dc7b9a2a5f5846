//! `vivachat bench load`: an end-to-end load test over real WebSockets.
//!
//! Open loop (`--rate`): every message has an intended send time, and its
//! latency is measured from that time, so a stalled server cannot hide its
//! queueing by slowing the senders down. Closed loop (`--window`): each sender
//! keeps W messages in flight, for peak throughput. Memory (`--conns`): N idle
//! connections and the server's resident memory per connection.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::names::Name;
use crate::protocol::{
    parse_server_frame, AckStatus, FrameKind, FramePeek, Request, ServerFrame,
    Target as ProtoTarget,
};

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// A running server (ws://HOST:PORT); None starts `vivachat serve` as a child.
    pub url: Option<String>,
    pub clients: usize,
    /// Total messages per second (open loop).
    pub rate: Option<f64>,
    /// Messages in flight per sender (closed loop).
    pub window: Option<usize>,
    pub secs: f64,
    /// Group fan-out instead of pairs: clients form groups of K and post to them.
    pub group_size: Option<usize>,
    /// Memory mode: this many idle connections.
    pub conns: Option<usize>,
    /// In memory mode, one user per connection (each arrival is then broadcast).
    pub distinct: bool,
    /// In memory mode, the connections ask for batched presence (v1.2).
    pub batched: bool,
    /// In memory mode, also queue this many messages for 1,000 offline users and
    /// time `GET /inspect` (how long a snapshot holds the core).
    pub queued: usize,
    /// Send to users who never connect: every message is queued, and its ack
    /// (sent after the disk write in durable mode) is what is measured.
    pub offline: bool,
    /// Start the server with `--data PATH` (durable mode).
    pub data: Option<std::path::PathBuf>,
    /// Threads the generator runs on (the caller builds the runtime).
    pub threads: usize,
    /// Recipients resume (v1.1): the server holds each message until they
    /// confirm it, and they confirm every 64 messages or 100 ms.
    pub resume: bool,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct LoadReport {
    pub mode: String,
    pub clients: usize,
    pub seconds: f64,
    pub offered: u64,
    pub sent: u64,
    /// Deliveries that should happen: one per direct message, K-1 per group message.
    pub expected: u64,
    pub delivered: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    /// Deliveries per second (queued acks with `--offline`).
    pub achieved_rate: f64,
    /// Sends per second (with `--group-size`, each reaches K-1 members).
    pub send_rate: f64,
    /// `--group-size`: members per group (a send is delivered to K-1 of them).
    pub fan_out: Option<usize>,
    /// `--offline`: every message is queued; `delivered` counts queued acks.
    pub offline: bool,
    /// Threads the generator ran on.
    pub threads: usize,
    /// `--resume`: clients connected with `?resume=0` and sent `received`.
    pub resume: bool,
    /// `--resume`: the `received` frames they sent.
    pub confirmations: u64,
    /// Microseconds from intended send time to the recipient reading it.
    pub latency_us: Latency,
    /// Microseconds from the actual send to the recipient reading it: the
    /// difference from `latency_us` is the generator's own lateness (its
    /// timers tick every millisecond), not the server's.
    pub service_latency_us: Latency,
    pub server_rss_kib_before: Option<u64>,
    pub server_rss_kib_after: Option<u64>,
    /// CPU the server used during the measured phase, in seconds.
    pub server_cpu_seconds: Option<f64>,
    /// From the server's `/inspect`, over the measured phase: how long the
    /// core was held per input applied (the locked section as the server
    /// runs it: the rule, each frame serialised once, the pushes into
    /// outboxes), and over how many inputs. None when `/inspect` is not
    /// answered (another host, an admin token).
    pub core_held_ns_per_input: Option<f64>,
    pub core_inputs: Option<u64>,
    pub idle_connections: Option<usize>,
    /// Memory mode: resident memory per idle connection, measured once the
    /// presence frames of their arrival have all been read.
    pub kib_per_connection: Option<f64>,
    /// Memory mode: presence frames the idle connections received (n²/2
    /// with `--distinct`: each arrival is announced to everyone before it;
    /// with `--batched`, the `presence_diff` frames).
    pub presence_frames: Option<u64>,
    /// Memory mode: milliseconds from the last connection's welcome to the
    /// last presence frame read: how long presence took to settle.
    pub presence_settled_ms: Option<u64>,
    /// Memory mode: milliseconds from the first connect to the last welcome:
    /// how long the storm of arrivals lasted.
    pub storm_ms: Option<u64>,
    /// Memory mode with `--batched`: the diffs the first connection read. It
    /// was open through the whole storm, so this is the number of ticks that
    /// carried a change, and `presence_frames` over it is the frames per tick.
    pub presence_ticks: Option<u64>,
    /// Memory mode: the server's peak resident memory (while those frames
    /// were in flight: transient, not the cost of an idle connection).
    pub server_peak_rss_kib: Option<u64>,
    /// With `--queued`: how long each of three snapshots held the core, in µs.
    pub snapshot_hold_us: Vec<u64>,
    /// With `--queued`: the size of the snapshot's JSON, in bytes.
    pub snapshot_bytes: Option<usize>,
}

/// The sequence numbers seen from one sender: a bitset, since they count up from 0.
#[derive(Default)]
struct SeqSet {
    bits: Vec<u64>,
    len: u64,
}

impl SeqSet {
    /// Returns false if `seq` was seen before.
    fn insert(&mut self, seq: u64) -> bool {
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if word >= self.bits.len() {
            self.bits.resize(word + 1, 0);
        }
        let fresh = self.bits[word] & (1 << bit) == 0;
        self.bits[word] |= 1 << bit;
        self.len += u64::from(fresh);
        fresh
    }
}

/// The server under test: a child we started, or one given by URL.
struct Target {
    url: String,
    child: Option<Child>,
}

impl Target {
    fn start(url: Option<&str>, data: Option<&std::path::Path>) -> anyhow::Result<Target> {
        if let Some(url) = url {
            if data.is_some() {
                bail!("--data starts a durable server; with --url, start it yourself with `serve --data`");
            }
            return Ok(Target {
                url: crate::client::base_url(url)?,
                child: None,
            });
        }
        let exe = std::env::current_exe().context("cannot find the vivachat binary")?;
        let mut command = Command::new(exe);
        command.args([
            "serve",
            "--quiet",
            "--port",
            "0",
            "--max-offline",
            "10000000",
            "--outbox-frames",
            "100000",
        ]);
        if let Some(path) = data {
            command.arg("--data").arg(path);
        }
        // The banner is read line by line below: it must not be wrapped at a
        // width the user's shell exported.
        let mut child = command
            .env_remove("COLUMNS")
            .stdout(Stdio::piped())
            .spawn()
            .context("cannot start vivachat serve")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let addr = loop {
            let line = lines
                .next()
                .context("the server exited before listening")??;
            if let Some(addr) = line.strip_prefix("vivachat listening on ") {
                break addr.trim().to_string();
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Ok(Target {
            url: format!("ws://{addr}"),
            child: Some(child),
        })
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            // SIGINT: the server's graceful stop (1001 to every client, final counts).
            #[cfg(unix)]
            // SAFETY: kill only sends a signal to the child we started.
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGINT);
            }
            for _ in 0..100 {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Resident memory of a process, in KiB (Linux /proc).
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS:")
}

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    crate::server::limits::proc_bytes(&format!("/proc/{pid}/status"), field).map(|b| b / 1024)
}

/// The most resident memory a process has had (Linux's high-water mark), in KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmHWM:")
}

/// CPU seconds (user + system) a process has used.
pub fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // Linux reports these in USER_HZ, which is 100 on every mainstream architecture.
    Some(ticks / 100.0)
}

async fn connect(url: &str, user: &str, source: u8, query: &str) -> anyhow::Result<Ws> {
    let full = format!("{url}/ws/{user}{query}");
    let host = url
        .split("://")
        .nth(1)
        .unwrap_or("")
        .split('/')
        .next()
        .unwrap_or("");
    let addr: std::net::SocketAddr = match host.parse() {
        Ok(addr) => addr,
        Err(_) => {
            return Ok(
                tokio_tungstenite::connect_async_with_config(full, None, true)
                    .await?
                    .0,
            )
        }
    };
    // Many connections to one loopback port: spread the source addresses over
    // 127.0.0.x so the ephemeral ports of one address do not run out.
    let socket = tokio::net::TcpSocket::new_v4()?;
    if addr.ip().is_loopback() {
        socket.bind(std::net::SocketAddr::from(([127, 0, 0, source.max(1)], 0)))?;
    }
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    let (ws, _) =
        tokio_tungstenite::client_async(full, tokio_tungstenite::MaybeTlsStream::Plain(stream))
            .await?;
    Ok(ws)
}

/// Percentiles from an HDR histogram (3 significant digits: a p99 of
/// 1,234 µs is exact to the microsecond).
fn percentiles(xs: &[u64]) -> Latency {
    // Bounds fixed up front (1 µs to an hour): `saturating_record` on an
    // auto-resizing histogram would clamp every sample to its initial range.
    let Ok(mut h) = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3) else {
        return Latency::default();
    };
    for &x in xs {
        h.saturating_record(x);
    }
    if h.is_empty() {
        return Latency::default();
    }
    // Exact maximum: the histogram's is rounded to its bucket.
    Latency {
        p50: h.value_at_quantile(0.5),
        p90: h.value_at_quantile(0.9),
        p99: h.value_at_quantile(0.99),
        p999: h.value_at_quantile(0.999),
        max: xs.iter().copied().max().unwrap_or(0),
    }
}

/// The clock of one run, shared by every client task.
#[derive(Clone, Copy)]
struct Clock {
    /// Time zero of the latencies written into each message.
    epoch: Instant,
    start: Instant,
    stop_at: Instant,
    /// Messages per second per client (open loop); None: closed loop.
    per_client_rate: Option<f64>,
}

/// (intended, actual) send times in µs, oldest first.
type SendTimes = std::collections::VecDeque<(u64, u64)>;

/// What one client's sender and receiver share: the closed-loop window, and
/// in offline mode the send times of messages whose ack has not come yet.
#[derive(Clone, Default)]
struct Shared {
    window: Option<Arc<Semaphore>>,
    /// Resume: what the receiver has read, for the sender to confirm.
    confirm: Option<Arc<Confirm>>,
    /// Offline mode: acks come back in send order, so a FIFO of send times
    /// gives each ack its latency.
    pending: Option<Arc<std::sync::Mutex<SendTimes>>>,
}

/// The highest id a receiver read and how many it read; its sender (the
/// same connection's write half) sends the `received`.
#[derive(Default)]
struct Confirm {
    id: AtomicU64,
    read: AtomicU64,
    sent: AtomicU64,
}

/// What one receiver saw.
#[derive(Default)]
struct Received {
    delivered: u64,
    duplicates: u64,
    out_of_order: u64,
    latencies: Vec<u64>,
    service: Vec<u64>,
}

/// Runs the load test; `progress` gets the fraction done.
pub async fn run(
    options: &LoadOptions,
    progress: &(dyn Fn(f64) + Sync),
) -> anyhow::Result<LoadReport> {
    let target = Target::start(options.url.as_deref(), options.data.as_deref())?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let pid = target.pid();
    let mut report = LoadReport {
        server_rss_kib_before: pid.and_then(rss_kib),
        ..LoadReport::default()
    };
    if let Some(n) = options.conns {
        let mut report = memory(&target, n, options, report, progress).await?;
        if options.queued > 0 {
            snapshot_cost(&target.url, options.queued, &mut report).await?;
        }
        return Ok(report);
    }
    let clients = options.clients.max(2);
    let epoch = Instant::now();
    let sockets = prepare(&target.url, clients, options.group_size, options.resume).await?;
    let cpu_before = pid.and_then(cpu_secs);
    let owner_before = owner_stats(&target.url).await;
    let start = Instant::now();
    let clock = Clock {
        epoch,
        start,
        stop_at: start + Duration::from_secs_f64(options.secs),
        per_client_rate: options.rate.map(|r| r / clients as f64),
    };
    let sent = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    let mut confirms: Vec<Arc<Confirm>> = Vec::new();
    for (i, ws) in sockets.into_iter().enumerate() {
        let shared = Shared {
            window: options.window.map(|w| Arc::new(Semaphore::new(w.max(1)))),
            pending: options.offline.then(Arc::default),
            confirm: options.resume.then(Arc::default),
        };
        confirms.extend(shared.confirm.clone());
        let (tx, rx) = ws.split();
        let to = recipient(options, i, clients);
        let sender = tokio::spawn(send_loop(tx, i, to, clock, shared.clone(), sent.clone()));
        let receiver = tokio::spawn(receive_loop(rx, i, clock, shared));
        tasks.push((sender, receiver));
    }
    while Instant::now() < clock.stop_at {
        progress(start.elapsed().as_secs_f64() / options.secs);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (mut senders, mut per_sender_sent) = (Vec::new(), Vec::new());
    for (s, _) in &mut tasks {
        let (tx, n) = s.await?;
        senders.push(tx);
        per_sender_sent.push(n);
    }
    let cpu = pid.and_then(cpu_secs).zip(cpu_before).map(|(b, a)| b - a);
    if let (Some(before), Some(after)) = (owner_before, owner_stats(&target.url).await) {
        let inputs = after.inputs.saturating_sub(before.inputs);
        let held = after.held_ns.saturating_sub(before.held_ns);
        report.core_inputs = Some(inputs);
        report.core_held_ns_per_input = Some(held as f64 / inputs.max(1) as f64);
    }
    // Receivers stop once nothing has arrived for a while after the end.
    let mut total = Received::default();
    for (_, r) in tasks {
        let r = r.await?;
        total.delivered += r.delivered;
        total.duplicates += r.duplicates;
        total.out_of_order += r.out_of_order;
        total.latencies.extend(r.latencies);
        total.service.extend(r.service);
    }
    drop(senders);
    report.server_cpu_seconds = cpu;
    report.server_rss_kib_after = pid.and_then(rss_kib);
    summarise(&mut report, options, clients, &per_sender_sent, total);
    report.confirmations = confirms
        .iter()
        .map(|c| c.sent.load(Ordering::Relaxed))
        .sum();
    progress(1.0);
    Ok(report)
}

/// Connects every client, joins the groups (in group mode), and lets every
/// arrival's presence broadcast pass before the clock starts: a pong comes
/// after everything routed to that connection before it.
async fn prepare(
    url: &str,
    clients: usize,
    group_size: Option<usize>,
    resume: bool,
) -> anyhow::Result<Vec<Ws>> {
    let mut sockets = Vec::with_capacity(clients);
    for i in 0..clients {
        let source = 1 + (i / 20_000) as u8;
        let query = if resume { "?resume=0" } else { "" };
        sockets.push(connect(url, &format!("load{i:05}"), source, query).await?);
    }
    for (i, ws) in sockets.iter_mut().enumerate() {
        if let Some(k) = group_size {
            let group = Name::parse(&format!("lg{}", i / k.max(2)))?;
            ws.send(Message::text(Request::GroupJoin { group }.to_json(None)))
                .await?;
        }
        ws.send(Message::text(Request::Ping.to_json(None))).await?;
        loop {
            let next = tokio::time::timeout(Duration::from_secs(60), ws.next()).await;
            match next {
                Ok(Some(Ok(Message::Text(t)))) => {
                    if matches!(parse_server_frame(&t), Ok(ServerFrame::Pong)) {
                        break;
                    }
                }
                Ok(Some(Ok(_))) => {}
                _ => bail!("a client's connection failed before the test began"),
            }
        }
    }
    Ok(sockets)
}

/// Where client `i` sends: its group, a user who never connects (offline
/// mode), or its pair.
fn recipient(options: &LoadOptions, i: usize, clients: usize) -> ProtoTarget {
    let name = |s: String| Name::parse(&s).expect("generated names are valid");
    match options.group_size {
        Some(k) => ProtoTarget::Group(name(format!("lg{}", i / k.max(2)))),
        None if options.offline => ProtoTarget::User(name(format!("away{i:05}"))),
        None => {
            let peer = if i % 2 == 0 { (i + 1) % clients } else { i - 1 };
            ProtoTarget::User(name(format!("load{peer:05}")))
        }
    }
}

/// Frames one sender writes before it flushes: writes are batched, so the
/// generator pays one system call per batch, not one per message.
const BATCH: usize = 64;

/// Sends until the clock stops: on schedule (open loop) or whenever the
/// window has room (closed loop). Each text carries "sender seq intended sent".
/// Everything due is written at once and flushed once; the JSON around the
/// text is serialised once, before the loop.
async fn send_loop(
    mut tx: SplitSink<Ws, Message>,
    i: usize,
    to: ProtoTarget,
    clock: Clock,
    shared: Shared,
    sent: Arc<AtomicU64>,
) -> (SplitSink<Ws, Message>, u64) {
    use std::fmt::Write as _;
    const MARK: &str = "\u{1}";
    let template = Request::chat(&to, MARK).to_json(None);
    let (head, tail) = template
        .split_once("\\u0001")
        .unwrap_or((template.as_str(), ""));
    let mut seq = 0u64;
    // Resume: the last confirmation sent (how many had been read, and when).
    let (mut confirmed_read, mut confirmed_at) = (0u64, Instant::now());
    'run: loop {
        // How many to send now: every free window slot (closed loop), or
        // every message whose intended time has come (open loop).
        let due = match (&shared.window, clock.per_client_rate) {
            (Some(w), _) => {
                match tokio::time::timeout_at(clock.stop_at, w.acquire()).await {
                    Ok(Ok(permit)) => permit.forget(),
                    _ => break,
                }
                let mut n = 1;
                while n < BATCH {
                    match w.try_acquire() {
                        Ok(permit) => permit.forget(),
                        Err(_) => break,
                    }
                    n += 1;
                }
                n
            }
            (None, Some(r)) if r > 0.0 => {
                let intended = clock.start + Duration::from_secs_f64(seq as f64 / r);
                if intended >= clock.stop_at {
                    break;
                }
                tokio::time::sleep_until(intended).await;
                let now = Instant::now().duration_since(clock.start).as_secs_f64();
                ((now * r) as u64)
                    .saturating_sub(seq)
                    .clamp(1, BATCH as u64) as usize
            }
            (None, _) => BATCH,
        };
        for _ in 0..due {
            let intended = match clock.per_client_rate {
                Some(r) if r > 0.0 && shared.window.is_none() => {
                    clock.start + Duration::from_secs_f64(seq as f64 / r)
                }
                _ => Instant::now(),
            };
            if intended >= clock.stop_at {
                break 'run;
            }
            let at = intended.duration_since(clock.epoch).as_micros() as u64;
            let now = clock.epoch.elapsed().as_micros() as u64;
            let mut frame = String::with_capacity(head.len() + tail.len() + 48);
            frame.push_str(head);
            let _ = write!(frame, "{i} {seq} {at} {now}");
            frame.push_str(tail);
            if let Some(p) = &shared.pending {
                p.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push_back((at, now));
            }
            if tx.feed(Message::text(frame)).await.is_err() {
                break 'run;
            }
            sent.fetch_add(1, Ordering::Relaxed);
            seq += 1;
        }
        // As the real client does: one `received` per 64 messages read or per 100 ms.
        if let Some(c) = &shared.confirm {
            let read = c.read.load(Ordering::Relaxed);
            let due = read >= confirmed_read + 64
                || (read > confirmed_read && confirmed_at.elapsed() >= Duration::from_millis(100));
            if due {
                let id = c.id.load(Ordering::Relaxed);
                let received = Request::Received { id }.to_json(None);
                if tx.feed(Message::text(received)).await.is_err() {
                    break 'run;
                }
                c.sent.fetch_add(1, Ordering::Relaxed);
                (confirmed_read, confirmed_at) = (read, Instant::now());
            }
        }
        if tx.flush().await.is_err() {
            break;
        }
    }
    let _ = tx.flush().await;
    (tx, seq)
}

/// Reads until nothing arrives for 5 s after the end: counts each sender's
/// messages (lost, duplicate, out of order) and their latencies.
async fn receive_loop(mut rx: SplitStream<Ws>, i: usize, clock: Clock, shared: Shared) -> Received {
    // Per sender: which sequence numbers arrived, and the highest so far.
    let mut seen: std::collections::HashMap<u64, (SeqSet, u64)> = Default::default();
    let mut r = Received::default();
    loop {
        let next = tokio::time::timeout_at(clock.stop_at + Duration::from_secs(5), rx.next()).await;
        let Ok(Some(Ok(Message::Text(t)))) = next else {
            break;
        };
        let Some(frame) = FramePeek::parse(&t) else {
            continue;
        };
        let now = clock.epoch.elapsed().as_micros() as u64;
        match frame.kind {
            FrameKind::Ack => {
                if let Some(w) = &shared.window {
                    w.add_permits(1);
                }
                let Some(p) = &shared.pending else { continue };
                let times = p.lock().unwrap_or_else(|e| e.into_inner()).pop_front();
                if let Some((at, sent)) = times.filter(|_| frame.status == Some(AckStatus::Queued))
                {
                    r.latencies.push(now.saturating_sub(at));
                    r.service.push(now.saturating_sub(sent));
                    // Offline mode counts its own acks, in order.
                    let (set, highest) = seen.entry(i as u64).or_insert((SeqSet::default(), 0));
                    let n = set.len;
                    set.insert(n);
                    *highest = n;
                }
            }
            FrameKind::Message | FrameKind::GroupMessage => {
                let mut parts = frame
                    .text
                    .as_deref()
                    .unwrap_or("")
                    .split(' ')
                    .map(|p| p.parse::<u64>().unwrap_or(0));
                let mut next = || parts.next().unwrap_or(0);
                let (from, seq, at, sent) = (next(), next(), next(), next());
                if let (Some(c), Some(id)) = (&shared.confirm, frame.id) {
                    c.id.fetch_max(id, Ordering::Relaxed);
                    c.read.fetch_add(1, Ordering::Relaxed);
                }
                r.latencies.push(now.saturating_sub(at));
                r.service.push(now.saturating_sub(sent));
                let (set, highest) = seen.entry(from).or_insert((SeqSet::default(), 0));
                if !set.insert(seq) {
                    r.duplicates += 1;
                } else if set.len > 1 && seq < *highest {
                    r.out_of_order += 1;
                }
                *highest = (*highest).max(seq);
            }
            _ => {}
        }
    }
    r.delivered = seen.values().map(|(set, _)| set.len).sum();
    r
}

/// Fills the report's counts, rates and percentiles.
fn summarise(
    report: &mut LoadReport,
    options: &LoadOptions,
    clients: usize,
    per_sender_sent: &[u64],
    total: Received,
) {
    let sent_total: u64 = per_sender_sent.iter().sum();
    report.clients = clients;
    report.seconds = options.secs;
    report.mode = match (options.window.is_some(), options.offline) {
        (true, false) => "closed loop",
        (false, false) => "open loop",
        (true, true) => "closed loop, offline recipients (latency: until the queued ack)",
        (false, true) => "open loop, offline recipients (latency: until the queued ack)",
    }
    .into();
    if options.data.is_some() {
        report.mode += ", durable (--data)";
    }
    if options.resume {
        report.mode += ", resuming (each message held until received)";
    }
    report.offered = match options.rate {
        Some(r) if options.window.is_none() => (r * options.secs).round() as u64,
        _ => sent_total,
    };
    report.sent = sent_total;
    report.delivered = total.delivered;
    // A group message reaches every other member of its group.
    report.expected = match options.group_size {
        Some(k) => (0..clients)
            .map(|i| {
                let g = i / k.max(2);
                let members = (g * k.max(2)..((g + 1) * k.max(2)).min(clients)).count() as u64;
                per_sender_sent[i] * members.saturating_sub(1)
            })
            .sum(),
        None => sent_total,
    };
    report.lost = report.expected.saturating_sub(total.delivered);
    report.duplicates = total.duplicates;
    report.out_of_order = total.out_of_order;
    report.achieved_rate = total.delivered as f64 / options.secs;
    report.send_rate = sent_total as f64 / options.secs;
    report.fan_out = options.group_size;
    report.offline = options.offline;
    report.threads = options.threads;
    report.resume = options.resume;
    report.latency_us = percentiles(&total.latencies);
    report.service_latency_us = percentiles(&total.service);
}

async fn memory(
    target: &Target,
    n: usize,
    options: &LoadOptions,
    mut report: LoadReport,
    progress: &(dyn Fn(f64) + Sync),
) -> anyhow::Result<LoadReport> {
    let Some(pid) = target.pid() else {
        bail!("memory mode reads the server's memory from /proc: run it without --url");
    };
    let mut held = Vec::with_capacity(n);
    let mut readers = Vec::new();
    // Frames every reader has seen: presence traffic has settled when it stops growing.
    let frames = Arc::new(AtomicU64::new(0));
    // Diffs the first connection read: the ticks that carried a change.
    let first_diffs = Arc::new(AtomicU64::new(0));
    // When the last presence frame was read, in ms since `started`.
    let started = Instant::now();
    let last_frame_ms = Arc::new(AtomicU64::new(0));
    let query = if options.batched {
        "?presence=batched"
    } else {
        ""
    };
    for i in 0..n {
        let user = if options.distinct {
            format!("idle{i:06}")
        } else {
            "idle".to_string()
        };
        let ws = connect(&target.url, &user, 1 + (i / 20_000) as u8, query)
            .await
            .with_context(|| {
                format!("connection {i} of {n} failed (raise the open-file limit: ulimit -n)")
            })?;
        let (tx, mut rx) = ws.split();
        // Read everything (presence frames) so no outbox fills.
        let (frames, last_frame_ms) = (frames.clone(), last_frame_ms.clone());
        let diffs = (i == 0).then(|| first_diffs.clone());
        readers.push(tokio::spawn(async move {
            while let Some(Ok(frame)) = rx.next().await {
                let text = frame.to_text().unwrap_or_default();
                let kind = FramePeek::parse(text).map(|f| f.kind);
                if matches!(kind, Some(FrameKind::Presence | FrameKind::PresenceDiff)) {
                    frames.fetch_add(1, Ordering::Relaxed);
                    last_frame_ms
                        .fetch_max(started.elapsed().as_millis() as u64, Ordering::Relaxed);
                }
                if let (Some(diffs), Some(FrameKind::PresenceDiff)) = (&diffs, kind) {
                    diffs.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
        held.push(tx);
        if i % 500 == 0 {
            progress(i as f64 / n as f64);
        }
    }
    // With one user per connection, each arrival was announced to everyone
    // before it: n²/2 presence frames. Wait (at most a minute) until they
    // have all been read, so what is measured is idle connections.
    let connected_ms = started.elapsed().as_millis() as u64;
    let settle = Instant::now();
    let mut last = u64::MAX;
    while settle.elapsed() < Duration::from_secs(60) {
        let now = frames.load(Ordering::Relaxed);
        if now == last {
            break;
        }
        last = now;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The server hands memory freed by a burst back to the OS every 2 s
    // (`give_back_drained_memory`); give it the time to.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    report.mode = "memory".into();
    report.idle_connections = Some(n);
    report.presence_frames = Some(frames.load(Ordering::Relaxed));
    report.presence_settled_ms = Some(
        last_frame_ms
            .load(Ordering::Relaxed)
            .saturating_sub(connected_ms),
    );
    report.storm_ms = Some(connected_ms);
    report.presence_ticks = options.batched.then(|| first_diffs.load(Ordering::Relaxed));
    report.server_rss_kib_after = rss_kib(pid);
    report.server_peak_rss_kib = peak_rss_kib(pid);
    report.kib_per_connection = report
        .server_rss_kib_after
        .zip(report.server_rss_kib_before)
        .map(|(after, before)| after.saturating_sub(before) as f64 / n.max(1) as f64);
    for r in readers {
        r.abort();
    }
    progress(1.0);
    Ok(report)
}

/// Queues `n` messages for 1,000 offline users, then takes three snapshots.
async fn snapshot_cost(url: &str, n: usize, report: &mut LoadReport) -> anyhow::Result<()> {
    let ws = connect(url, "queuer", 1, "").await?;
    let (mut tx, mut rx) = ws.split();
    let sender = async move {
        for i in 0..n {
            let to = ProtoTarget::User(Name::parse(&format!("away{:04}", i % 1000))?);
            let request = Request::chat(&to, "a queued message of about forty characters");
            tx.feed(Message::text(request.to_json(None))).await?;
        }
        tx.flush().await?;
        anyhow::Ok(tx)
    };
    let acks = async move {
        let mut queued = 0;
        while queued < n {
            let next = tokio::time::timeout(Duration::from_secs(60), rx.next())
                .await
                .context("ack timed out")?;
            let Some(Ok(Message::Text(t))) = next else {
                bail!("the queuer's connection ended")
            };
            match FramePeek::parse(&t) {
                Some(f) if f.status == Some(AckStatus::Queued) => queued += 1,
                Some(f) if f.kind == FrameKind::Error => {
                    bail!("the server refused a message: {t}")
                }
                _ => {}
            }
        }
        anyhow::Ok(())
    };
    let (_tx, ()) = tokio::try_join!(sender, acks)?;
    let endpoint = crate::inspect::fetch::Endpoint::parse(url)?;
    for _ in 0..3 {
        let snapshot = crate::inspect::fetch::fetch(&endpoint, None).await?;
        report
            .snapshot_hold_us
            .push(snapshot.server.as_ref().map_or(0, |s| s.hold_us));
        report.snapshot_bytes = Some(serde_json::to_string(&snapshot)?.len());
    }
    Ok(())
}

/// The server's owner counters, from `/inspect` (None if it is not answered).
async fn owner_stats(url: &str) -> Option<crate::inspection::OwnerInfo> {
    let endpoint = crate::inspect::fetch::Endpoint::parse(url).ok()?;
    let snapshot = crate::inspect::fetch::fetch(&endpoint, None).await.ok()?;
    snapshot.server.map(|s| s.owner)
}

/// The report as a table.
pub fn render(r: &LoadReport) -> String {
    use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(["measure", "value"]);
    let mut row = |k: &str, v: String| {
        t.add_row(vec![k.to_string(), v]);
    };
    row("mode", r.mode.clone());
    match r.idle_connections {
        Some(n) => idle_rows(r, n, &mut row),
        None => traffic_rows(r, &mut row),
    }
    if let (Some(a), Some(b)) = (r.server_rss_kib_before, r.server_rss_kib_after) {
        row("server RSS before / after", format!("{a} / {b} KiB"));
    }
    t.to_string()
}

/// `--conns N`: what idle connections cost.
fn idle_rows(r: &LoadReport, n: usize, row: &mut impl FnMut(&str, String)) {
    row("idle connections", n.to_string());
    if let Some(frames) = r.presence_frames.filter(|f| *f > 0) {
        row(
            "presence frames read while they connected",
            frames.to_string(),
        );
    }
    if let Some(ms) = r.storm_ms {
        row(
            "the storm: first connect to last welcome",
            format!("{:.2} s", ms as f64 / 1000.0),
        );
    }
    if let (Some(frames), Some(ticks)) = (r.presence_frames, r.presence_ticks.filter(|t| *t > 0)) {
        row(
            "ticks that carried a change, and frames per tick",
            format!("{ticks}, {:.0}", frames as f64 / ticks as f64),
        );
    }
    if let Some(ms) = r.presence_settled_ms {
        row(
            "presence settled, after the last welcome",
            format!("{:.2} s", ms as f64 / 1000.0),
        );
    }
    if let Some(k) = r.kib_per_connection {
        row(
            "server memory per idle connection (after presence settled)",
            format!("{k:.1} KiB"),
        );
    }
    if let (Some(peak), Some(before)) = (r.server_peak_rss_kib, r.server_rss_kib_before) {
        row(
            "transient peak while connecting (not idle cost)",
            format!(
                "{peak} KiB RSS, {:.1} KiB per connection",
                peak.saturating_sub(before) as f64 / n.max(1) as f64
            ),
        );
    }
    if !r.snapshot_hold_us.is_empty() {
        let holds: Vec<String> = r
            .snapshot_hold_us
            .iter()
            .map(|h| format!("{:.1}", *h as f64 / 1000.0))
            .collect();
        row(
            "snapshot held the core (3 takes)",
            format!("{} ms", holds.join(", ")),
        );
        if let Some(b) = r.snapshot_bytes {
            row("snapshot size", format!("{:.1} MB", b as f64 / 1e6));
        }
    }
}

/// A closed or open loop: what was sent, what arrived, how fast, how late.
fn traffic_rows(r: &LoadReport, row: &mut impl FnMut(&str, String)) {
    row("clients", r.clients.to_string());
    row("generator threads", r.threads.to_string());
    row("seconds", format!("{:.1}", r.seconds));
    if r.resume {
        row(
            "received frames sent (confirmations)",
            r.confirmations.to_string(),
        );
    }
    // What is counted depends on the mode: say it in each label.
    let (expected, got, rate) = match (r.offline, r.fan_out) {
        (true, _) => (
            "queued acks expected (one per send)",
            "queued acks received",
            "queued acks per second",
        ),
        (false, Some(_)) => (
            "expected deliveries (K-1 per send)",
            "deliveries",
            "deliveries per second (fan-out)",
        ),
        (false, None) => ("expected deliveries", "delivered", "delivered per second"),
    };
    row("offered sends", r.offered.to_string());
    row("sent", r.sent.to_string());
    row(expected, r.expected.to_string());
    row(got, r.delivered.to_string());
    row("lost", r.lost.to_string());
    row("duplicates", r.duplicates.to_string());
    row("out of order", r.out_of_order.to_string());
    if r.fan_out.is_some() {
        row("sends per second", format!("{:.0} msgs/s", r.send_rate));
    }
    row(rate, format!("{:.0} msgs/s", r.achieved_rate));
    let l = &r.latency_us;
    row(
        "latency p50 / p90 / p99",
        format!("{} / {} / {} µs", l.p50, l.p90, l.p99),
    );
    row("latency p99.9 / max", format!("{} / {} µs", l.p999, l.max));
    let l = &r.service_latency_us;
    row(
        "from actual send: p50 / p99 / max",
        format!("{} / {} / {} µs", l.p50, l.p99, l.max),
    );
    if let (Some(held), Some(inputs)) = (r.core_held_ns_per_input, r.core_inputs) {
        row(
            "core held (locked section)",
            format!(
                "{held:.0} ns per input, over {inputs} inputs: the rule, serialising, pushes into outboxes"
            ),
        );
    }
    if let Some(cpu) = r.server_cpu_seconds {
        row(
            "server CPU",
            format!(
                "{cpu:.2} s ({:.2} µs per delivered message)",
                cpu * 1e6 / r.delivered.max(1) as f64
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::percentiles;

    #[test]
    fn percentiles_keep_their_magnitude() {
        let xs: Vec<u64> = (1..=10_000).collect();
        let l = percentiles(&xs);
        assert!((4_990..=5_010).contains(&l.p50), "{}", l.p50);
        assert!((9_890..=9_910).contains(&l.p99), "{}", l.p99);
        assert_eq!(l.max, 10_000);
        assert_eq!(percentiles(&[]).p50, 0);
        // A slow outlier is recorded as itself, not clamped.
        assert!(percentiles(&[5, 2_000_000]).max == 2_000_000);
        assert!(percentiles(&[2_000_000]).p50 >= 1_990_000);
    }
}
