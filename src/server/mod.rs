//! The network shell: HTTP routes, WebSocket connections, graceful shutdown.
//!
//! Nothing here decides anything about chat: each connection's reader parses a
//! frame, locks the core, asks it what to do, and carries out the answer
//! ([`carry_out`]) before unlocking, so every connection sees frames in the
//! order the core produced them.

mod admission;
mod connection;
mod dashboard;
pub mod handshake;
pub mod limits;
pub mod outbox;

use std::collections::VecDeque;
use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::ws::Utf8Bytes;
use axum::extract::{ConnectInfo, Path, Query, State, WebSocketUpgrade};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::core::{
    ChatCore, ConnDetail, ConnHandle, ConnId, CoreConfig, Event, MemoryStructures, OpTable,
    Outcome, ServerInfo, Snapshot,
};
use crate::event_log::EventLog;
use crate::names::{Name, UserId};
use crate::protocol::ServerFrame;
use outbox::{Encoded, Outbox, Outgoing, PushError};

/// Everything `serve` can be told.
#[derive(Debug, Clone)]
pub struct Config {
    /// Largest accepted WebSocket message payload; one byte more is `too_large`.
    pub max_message_bytes: usize,
    /// Longest offline deque per user (`inbox_full` beyond it).
    pub max_offline: usize,
    /// Lets non-loopback clients read `/inspect` with `Authorization: Bearer TOKEN`.
    pub admin_token: Option<String>,
    /// Frames one connection may have waiting before it is evicted as too slow.
    pub outbox_frames: usize,
    /// tungstenite's per-connection read buffer: its default (128 KiB) would
    /// cost 1.3 GB for 10,000 idle sockets; chat frames are small.
    pub read_buffer_bytes: usize,
    /// How long shutdown waits for connections to finish their closing handshake.
    pub shutdown_grace: Duration,
    /// Connections the server holds at most (HTTP 503 beyond).
    pub max_connections: usize,
    /// Connections one remote address holds at most (HTTP 429 beyond). A whole
    /// class behind one NAT or tunnel shares one address, so keep it high.
    pub max_connections_per_ip: usize,
    /// Connections one user (all their devices) holds at most (HTTP 429 beyond).
    pub max_connections_per_user: usize,
    /// Requests per second each connection may send (`rate_limited` beyond);
    /// None, the default, means no limit, as the protocol contract says.
    pub rate_limit: Option<f64>,
    /// Longest message text in characters (`limit_reached` beyond); None: only the frame limit.
    pub max_text_chars: Option<usize>,
    /// Groups the server holds, members per group, users one user may block.
    pub max_groups: usize,
    pub max_group_size: usize,
    pub max_blocked: usize,
    /// A connection from which nothing (not even a pong) was heard for this
    /// long is closed (4000); the server pings at a third of it. None: never.
    pub idle_timeout: Option<Duration>,
    /// A TCP connection that has not become a WebSocket this long after it
    /// opened is closed when it next waits to read. None: never.
    pub handshake_timeout: Option<Duration>,
    /// `serve --dashboard`: redraw the tables in this terminal, with the event
    /// log's latest lines (which the caller sends to this ring) below them.
    pub dashboard: Option<Dashboard>,
    /// `serve --data`: the open store and the state it loaded. None: in memory only.
    pub durable: Option<crate::store::Durable>,
}

/// What the dashboard needs from the caller.
#[derive(Debug, Clone)]
pub struct Dashboard {
    pub ring: crate::event_log::LogRing,
    pub color: bool,
    /// The header line: where to connect, so the projector always shows it.
    pub banner: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_message_bytes: 65_536,
            max_offline: 10_000,
            admin_token: None,
            outbox_frames: 1024,
            read_buffer_bytes: 4096,
            shutdown_grace: Duration::from_secs(3),
            rate_limit: None,
            max_connections: 100_000,
            max_connections_per_ip: 50_000,
            max_connections_per_user: 20_000,
            max_text_chars: None,
            max_groups: 10_000,
            max_group_size: 10_000,
            max_blocked: 10_000,
            idle_timeout: Some(Duration::from_secs(60)),
            handshake_timeout: Some(Duration::from_secs(10)),
            dashboard: None,
            durable: None,
        }
    }
}

/// tungstenite's write buffer per connection, filled lazily (idle sockets pay nothing).
const WRITE_BUFFER_BYTES: usize = 8 * 1024;

/// One WebSocket connection, as stored in `active_connections`.
pub struct Connection {
    pub id: ConnId,
    pub user: UserId,
    pub remote: SocketAddr,
    pub connected_at_ms: u64,
    pub outbox: Outbox,
    /// It presented the token of a claimed name (false: the name was open).
    pub authenticated: bool,
}

/// The handle the core stores: cloning it is one atomic increment.
pub type Conn = Arc<Connection>;

impl ConnHandle for Conn {
    fn id(&self) -> ConnId {
        self.id
    }

    fn detail(&self) -> ConnDetail {
        ConnDetail {
            id: self.id,
            remote: Some(self.remote.to_string()),
            connected_at_ms: Some(self.connected_at_ms),
            unsent: Some(self.outbox.len()),
        }
    }
}

pub(crate) type Core = ChatCore<MemoryStructures<Conn>>;

/// State shared by every task of one server.
pub(crate) struct Shared {
    /// One `std` mutex around the whole core: every critical section is a few
    /// microseconds of hash-map work with no `.await` inside, so a blocking
    /// lock is cheaper than an async one and keeps a single global order.
    core: Mutex<Core>,
    config: Config,
    log: Option<EventLog>,
    next_conn_id: AtomicU64,
    shutting_down: AtomicBool,
    /// Connection tasks still running, and a wake-up for when it reaches zero.
    live_tasks: AtomicUsize,
    all_done: Notify,
    started: Instant,
    slots: Arc<limits::Slots>,
    /// Name claims and the hasher that checks their tokens.
    gate: admission::Gate,
    /// Durable mode's store; None in memory.
    store: Option<Arc<crate::store::Store>>,
}

impl Shared {
    fn core(&self) -> MutexGuard<'_, Core> {
        // The core is only mutated through methods that leave it consistent, so
        // a panic on another thread (a bug) must not take the whole server down.
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Unix time in milliseconds: the `ts` of accepted messages.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Carries out an outcome: pushes every frame into its connection's outbox,
/// in order, and logs the event. Must be called with the core locked.
///
/// Slow-client policy: a push into a full outbox evicts that connection at
/// once. Its unsent chat messages (and the one that did not fit) go back to
/// the core, which re-queues them in the offline deque if it was the user's
/// last device. The eviction's own outcome (presence `offline`) is carried
/// out in the same loop, so routing never waits for any socket.
///
/// Durable mode: the outcome's changes go to the store first, and its frames
/// carry the batch number, so the writer holds them until that batch is on
/// disk. An ack of `queued` therefore always follows the write.
pub(crate) fn carry_out(core: &mut Core, outcome: Outcome<Conn>, shared: &Shared) {
    let log = shared.log.as_ref();
    let mut work = VecDeque::from([outcome]);
    while let Some(mut outcome) = work.pop_front() {
        let seq = match &shared.store {
            Some(store) => store
                .submit(std::mem::take(&mut outcome.changes), core.next_message_id())
                .unwrap_or(0),
            None => 0,
        };
        // Each frame is serialised once, however many connections it fans out to.
        let encoded: Vec<Outgoing> = outcome
            .frames
            .iter()
            .map(|frame| {
                Arc::new(Encoded {
                    text: Utf8Bytes::from(frame.to_json()),
                    message: frame.chat_message().cloned(),
                    seq,
                    flushed: matches!(frame, ServerFrame::Chat { offline: true, .. }),
                })
            })
            .collect();
        let mut evicted: Vec<(Conn, Vec<Outgoing>)> = Vec::new();
        for delivery in &outcome.deliveries {
            let outgoing = encoded[delivery.frame].clone();
            let refused = match delivery.conn.outbox.push(outgoing) {
                Ok(()) => continue,
                Err(PushError::Full(o)) => o,
                // Closed: the connection is evicted in this loop, or the server is
                // shutting down; any other closing connection has already left the core.
                Err(PushError::Closed(o)) => o,
            };
            let index = match evicted.iter().position(|(c, _)| c.id == delivery.conn.id) {
                Some(i) => i,
                None if delivery.conn.outbox.is_open() => {
                    evicted.push((delivery.conn.clone(), Vec::new()));
                    evicted.len() - 1
                }
                None => continue,
            };
            evicted[index].1.push(refused);
        }
        if let Some(log) = log {
            log.event(outcome.event, outcome.trace);
        }
        for (conn, refused) in evicted {
            let unsent = outbox::unsent_messages(conn.outbox.abort().iter().chain(&refused));
            if let Some(log) = log {
                log.line(format!(
                    "! evicted {} (conn {}): its outbox held {} frames unread (client too slow or stuck)",
                    conn.user,
                    conn.id,
                    conn.outbox.capacity()
                ));
            }
            work.push_back(core.disconnect(&conn.user, conn.id, unsent));
        }
    }
}

/// What `run` reports when it returns.
#[derive(Debug, Clone)]
pub struct Report {
    pub ops: OpTable,
    pub uptime: Duration,
    pub connections_served: u64,
}

/// Serves until `shutdown` resolves, then closes every WebSocket with 1001,
/// waits (bounded by `config.shutdown_grace`) for them to finish, and returns
/// the final operation counts. The listener is bound by the caller, so tests
/// can use port 0.
pub async fn run(
    listener: TcpListener,
    config: Config,
    log: Option<EventLog>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<Report> {
    let started = Instant::now();
    let durable = config.durable.clone();
    let structures = match durable {
        Some(_) => MemoryStructures::journaled(),
        None => MemoryStructures::default(),
    };
    let mut core = ChatCore::new(
        structures,
        CoreConfig {
            max_offline: config.max_offline,
            trace: log.is_some(),
            max_text_chars: config.max_text_chars,
            max_groups: config.max_groups,
            max_group_size: config.max_group_size,
            max_blocked: config.max_blocked,
        },
    );
    if let Some(d) = &durable {
        core.restore(&d.loaded.state);
    }
    let store = durable.as_ref().map(|d| d.store.clone());
    let gate = admission::Gate::new(
        store.clone(),
        durable.map(|d| d.loaded.claims).unwrap_or_default(),
    );
    let shared = Arc::new(Shared {
        core: Mutex::new(core),
        config,
        log,
        next_conn_id: AtomicU64::new(1),
        shutting_down: AtomicBool::new(false),
        live_tasks: AtomicUsize::new(0),
        all_done: Notify::new(),
        started,
        slots: Arc::default(),
        gate,
        store,
    });

    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/inspect", get(inspect))
        .route("/ws/{user}", get(ws_upgrade))
        .fallback(fallback)
        .with_state(shared.clone());

    let stop = Arc::new(Notify::new());
    let stop_http = stop.clone();
    let listener = handshake::GuardedListener::new(listener, shared.config.handshake_timeout);
    let http = tokio::spawn(
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<handshake::Peer>(),
        )
        .with_graceful_shutdown(async move { stop_http.notified().await })
        .into_future(),
    );

    let dashboard_stop = Arc::new(Notify::new());
    let dashboard = shared
        .config
        .dashboard
        .clone()
        .map(|d| tokio::spawn(dashboard::run(shared.clone(), d, dashboard_stop.clone())));

    shutdown.await;
    // The dashboard gives the terminal back first, so the shutdown lines are readable.
    if let Some(dashboard) = dashboard {
        dashboard_stop.notify_one();
        let _ = tokio::time::timeout(Duration::from_secs(2), dashboard).await;
    }
    shared.shutting_down.store(true, Ordering::SeqCst);
    stop.notify_one();
    close_all(&shared);

    // Wait for every connection task to finish its closing handshake, but not forever.
    let grace = shared.config.shutdown_grace;
    let _ = tokio::time::timeout(grace, async {
        loop {
            let done = shared.all_done.notified();
            if shared.live_tasks.load(Ordering::SeqCst) == 0 {
                break;
            }
            done.await;
        }
    })
    .await;
    let _ = tokio::time::timeout(grace, http).await;

    let ops = shared.core().op_table();
    // Everything acknowledged is already on disk; this writes what is left
    // (flushed-message deletions, the last requeues) and closes the file cleanly.
    if let Some(store) = shared.store.clone() {
        let _ = tokio::task::spawn_blocking(move || store.close(grace)).await;
    }
    if let Some(log) = &shared.log {
        log.flush(Duration::from_secs(2));
    }
    Ok(Report {
        ops,
        uptime: started.elapsed(),
        connections_served: shared.next_conn_id.load(Ordering::SeqCst) - 1,
    })
}

/// Copies the core under its lock (timed: that is how long chat traffic
/// waits), then adds the server's own facts after releasing it.
pub(crate) fn take_snapshot(shared: &Shared) -> Snapshot {
    let core = shared.core();
    let start = Instant::now();
    let mut snapshot = core.snapshot();
    let hold = start.elapsed();
    drop(core);
    let config = &shared.config;
    snapshot.server = Some(ServerInfo {
        version: env!("CARGO_PKG_VERSION").to_string(),
        uptime_ms: shared.started.elapsed().as_millis() as u64,
        taken_at_ms: now_ms(),
        hold_us: hold.as_micros() as u64,
        durable: shared.store.is_some(),
        data_path: shared
            .store
            .as_ref()
            .map(|s| s.path().display().to_string()),
        disk: shared.store.as_ref().map(|s| s.stats()),
        max_message_bytes: config.max_message_bytes,
        max_offline: config.max_offline,
        outbox_frames: config.outbox_frames,
        connections_served: shared.next_conn_id.load(Ordering::SeqCst) - 1,
        claimed_names: shared.gate.claimed_names(),
    });
    snapshot
}

/// Tells every connection the server is going away (close code 1001).
fn close_all(shared: &Shared) {
    let core = shared.core();
    let connections = core.all_connections();
    if let Some(log) = &shared.log {
        log.event(
            Event::Shutdown {
                connections: connections.len(),
            },
            crate::core::Trace::new(false),
        );
    }
    for conn in connections {
        conn.outbox.close_after_pending(connection::close_frame(
            connection::CLOSE_GOING_AWAY,
            "server shutting down",
        ));
    }
}

fn bad_name(raw: &str, why: impl std::fmt::Display) -> Response {
    (
        StatusCode::BAD_REQUEST,
        format!(
            "invalid user name {raw:?}: {why}. Connect to /ws/NAME with NAME of 1-32 characters from [A-Za-z0-9_.-]\n"
        ),
    )
        .into_response()
}

/// The query of `/ws/NAME?token=SECRET`; other parameters are ignored.
#[derive(serde::Deserialize)]
struct ConnectQuery {
    token: Option<String>,
}

async fn ws_upgrade(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<handshake::Peer>,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
    query: Result<Query<ConnectQuery>, axum::extract::rejection::QueryRejection>,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let remote = peer.addr;
    // The name is checked before the upgrade, so a bad one changes nothing.
    let user = match path {
        Ok(Path(raw)) => match Name::parse(&raw) {
            Ok(user) => user,
            Err(e) => return bad_name(&raw, e),
        },
        Err(e) => return bad_name("?", e.body_text()),
    };
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(rejection) => return rejection.into_response(),
    };
    if shared.shutting_down.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "server shutting down\n").into_response();
    }
    let config = &shared.config;
    let ip = remote.ip().to_canonical();
    let limits = limits::SlotLimits {
        total: config.max_connections,
        per_ip: config.max_connections_per_ip,
        per_user: config.max_connections_per_user,
    };
    let slot = match shared.slots.reserve(ip, &user, limits) {
        Ok(slot) => slot,
        Err(full) => {
            let (status, why) = match full {
                limits::Full::Server(n) => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("the server holds its maximum of {n} connections (--max-connections); try again later"),
                ),
                limits::Full::Address(n) => (
                    StatusCode::TOO_MANY_REQUESTS,
                    format!("{ip} already holds {n} connections (--max-connections-per-ip); close some first"),
                ),
                limits::Full::User(n) => (
                    StatusCode::TOO_MANY_REQUESTS,
                    format!("{user} already has {n} connections open (--max-connections-per-user); close a device first"),
                ),
            };
            if let Some(log) = &shared.log {
                log.line(format!("! refused {user} from {remote}: {why}"));
            }
            return (status, format!("{why}\n")).into_response();
        }
    };
    // The claim is checked last: it is the one check that costs real CPU.
    let token = match &query {
        Ok(Query(q)) => q.token.as_deref(),
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{}\n", e.body_text())).into_response(),
    };
    let admitted = match shared.gate.admit(&user, token).await {
        Ok(admitted) => admitted,
        Err(refused) => {
            if let Some(log) = &shared.log {
                log.line(format!(
                    "! refused {user} from {remote}: {}",
                    refused.reason
                ));
            }
            return (refused.status, format!("{}\n", refused.reason)).into_response();
        }
    };
    if admitted.claimed_now {
        if let Some(log) = &shared.log {
            log.line(format!(
                "+ {user} claimed with a token (only its Argon2id hash is kept); \
                 from now on connections as {user} need it"
            ));
        }
    }
    // tungstenite refuses anything past this on its own; between our limit and
    // this one, the reader answers `too_large` itself (see connection.rs).
    let hard_limit = config
        .max_message_bytes
        .saturating_mul(2)
        .max(config.max_message_bytes + 65_536);
    peer.upgraded();
    upgrade
        .read_buffer_size(config.read_buffer_bytes)
        // The writer feeds a batch of frames and flushes once: up to 8 KiB of
        // them go out in one write system call (0 would mean one call per frame).
        .write_buffer_size(WRITE_BUFFER_BYTES)
        .max_write_buffer_size(WRITE_BUFFER_BYTES + hard_limit)
        .max_message_size(hard_limit)
        .max_frame_size(hard_limit)
        .on_upgrade(move |socket| async move {
            // Held for the connection's lifetime; dropped (freed) with the
            // closure if the upgrade never completes.
            let _slot = slot;
            connection::serve(shared, socket, user, remote, admitted).await
        })
}

/// `/ws` and `/ws/` (empty name) and `/ws/a/b` are bad names, not missing pages.
async fn fallback(uri: Uri) -> Response {
    let path = uri.path();
    if path == "/ws" || path.starts_with("/ws/") {
        let raw = path.trim_start_matches("/ws").trim_start_matches('/');
        return bad_name(raw, "not a single non-empty path segment");
    }
    (
        StatusCode::NOT_FOUND,
        "not found: the routes are /ws/NAME (WebSocket), /inspect and /healthz\n",
    )
        .into_response()
}

/// Compares without an early exit, so response time does not reveal how many
/// leading bytes of a guessed token were right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Headers a reverse proxy or tunnel adds: a request carrying one came from
/// somewhere else, even though it reaches us from the proxy on loopback.
const FORWARDED_HEADERS: [&str; 5] = [
    "forwarded",
    "x-forwarded-for",
    "x-real-ip",
    "cf-connecting-ip",
    "true-client-ip",
];

/// Without `--admin-token`: this machine only, and not through a proxy or
/// tunnel (whose agent connects from loopback on behalf of the whole internet).
/// With it: the Bearer token from everyone, loopback included, since other
/// users of a shared machine, and tunnels that add no header, are loopback too.
fn may_inspect(config: &Config, remote: &SocketAddr, headers: &HeaderMap) -> bool {
    match &config.admin_token {
        None => {
            remote.ip().to_canonical().is_loopback()
                && !FORWARDED_HEADERS.iter().any(|h| headers.contains_key(*h))
        }
        Some(token) => headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|given| constant_time_eq(given.trim().as_bytes(), token.as_bytes())),
    }
}

async fn inspect(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<handshake::Peer>,
    headers: HeaderMap,
) -> Response {
    if !may_inspect(&shared.config, &peer.addr, &headers) {
        return (
            StatusCode::FORBIDDEN,
            "/inspect shows every queued message: without --admin-token it answers only \
             this machine (not through a proxy or tunnel); with --admin-token TOKEN it needs \
             'Authorization: Bearer TOKEN' (vivachat inspect --admin-token TOKEN)\n",
        )
            .into_response();
    }
    let snapshot = take_snapshot(&shared);
    match serde_json::to_string(&snapshot) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// Raises this process's open-file limit to its hard maximum, so thousands of
/// connections do not fail at a default of 1,024. Returns (before, after).
#[cfg(unix)]
// `rlim_t` is u64 on Linux but not on every Unix, so the casts stay.
#[allow(clippy::unnecessary_cast)]
pub fn raise_fd_limit() -> Option<(u64, u64)> {
    // SAFETY: getrlimit and setrlimit only read and write the struct we pass.
    unsafe {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return None;
        }
        let before = limit.rlim_cur as u64;
        if limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Some((before, before));
            }
        }
        Some((before, limit.rlim_cur as u64))
    }
}

#[cfg(not(unix))]
pub fn raise_fd_limit() -> Option<(u64, u64)> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(auth: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(a) = auth {
            h.insert(header::AUTHORIZATION, a.parse().unwrap());
        }
        h
    }

    #[test]
    fn inspect_is_loopback_only_or_needs_the_token_from_everyone() {
        let open = Config::default();
        let with_token = Config {
            admin_token: Some("s3cret".into()),
            ..Config::default()
        };
        let lan: SocketAddr = "192.168.1.20:5000".parse().unwrap();
        let v4_loop: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let v6_loop: SocketAddr = "[::1]:5000".parse().unwrap();
        let mapped_loop: SocketAddr = "[::ffff:127.0.0.1]:5000".parse().unwrap();
        for addr in [v4_loop, v6_loop, mapped_loop] {
            assert!(may_inspect(&open, &addr, &headers(None)), "{addr}");
            // With a token set, loopback needs it too.
            assert!(!may_inspect(&with_token, &addr, &headers(None)), "{addr}");
            assert!(may_inspect(
                &with_token,
                &addr,
                &headers(Some("Bearer s3cret"))
            ));
        }
        assert!(!may_inspect(&open, &lan, &headers(Some("Bearer s3cret"))));
        assert!(!may_inspect(&with_token, &lan, &headers(None)));
        assert!(!may_inspect(
            &with_token,
            &lan,
            &headers(Some("Bearer wrong"))
        ));
        assert!(!may_inspect(&with_token, &lan, &headers(Some("s3cret"))));
        assert!(!may_inspect(
            &with_token,
            &lan,
            &headers(Some("Bearer s3cre"))
        ));
        assert!(may_inspect(
            &with_token,
            &lan,
            &headers(Some("Bearer s3cret"))
        ));
    }

    #[test]
    fn a_request_through_a_proxy_or_tunnel_is_not_local() {
        let open = Config::default();
        let v4_loop: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        for name in FORWARDED_HEADERS {
            let mut h = HeaderMap::new();
            h.insert(name, "203.0.113.9".parse().unwrap());
            assert!(!may_inspect(&open, &v4_loop, &h), "{name}");
        }
    }

    #[cfg(unix)]
    #[test]
    #[allow(clippy::unnecessary_cast)]
    fn the_open_file_limit_is_raised_to_the_hard_maximum() {
        let (_, after) = raise_fd_limit().expect("getrlimit works");
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes only into `limit`.
        assert_eq!(
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
            0
        );
        assert_eq!(limit.rlim_cur as u64, after);
        assert_eq!(limit.rlim_cur, limit.rlim_max);
    }

    #[test]
    fn constant_time_eq_is_plain_equality() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(constant_time_eq(b"", b""));
    }
}
