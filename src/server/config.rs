//! Everything `serve` can be told, with each default written once: clap's
//! `default_value_t`, [`Config::default`] and [`CoreConfig::default`] all
//! read the constants below.

use std::time::Duration;

use crate::cluster::ClusterConfig;
use crate::core::CoreConfig;
use crate::event_log::LogRing;
use crate::store::Durable;

/// Largest accepted WebSocket message (bytes): a long chat text fits many times over.
pub const MAX_MESSAGE_BYTES: u64 = 65_536;
/// Frames one connection may leave unread before it is evicted as too slow.
pub const OUTBOX_FRAMES: u64 = 1024;
/// Connections in all (HTTP 503 beyond).
pub const MAX_CONNECTIONS: u64 = 100_000;
/// Connections per remote address (HTTP 429 beyond). A class behind one NAT
/// or tunnel shares one address, so it is high.
pub const MAX_CONNECTIONS_PER_IP: u64 = 50_000;
/// Connections per user, all devices together (HTTP 429 beyond).
pub const MAX_CONNECTIONS_PER_USER: u64 = 20_000;
/// Seconds without a pong before a connection is closed (4000).
pub const IDLE_TIMEOUT_SECS: f64 = 60.0;
/// Seconds a TCP connection may take to become a WebSocket.
pub const HANDSHAKE_TIMEOUT_SECS: f64 = 10.0;
/// tungstenite's per-connection read buffer: its default (128 KiB) would cost
/// 1.3 GB for 10,000 idle sockets; chat frames are small.
pub const READ_BUFFER_BYTES: usize = 4096;
/// Bytes one connection's outbox may hold, the batch being written included,
/// unless `--max-memory` asks for less. The connect-time flush is written a
/// batch at a time (`Outbox::stream`), so it needs no more than this.
pub const OUTBOX_BYTES: usize = 8 * 1024 * 1024;

/// How long shutdown waits for connections to finish their closing handshake.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// Batched presence (v1.2) sends what changed at most this often: ten
/// diffs a second read as live, and a storm costs each connection ten frames
/// a second however many arrive.
pub const PRESENCE_TICK: Duration = Duration::from_millis(100);

/// How the server is configured: the core's limits, the network's, and the rest.
#[derive(Debug, Clone)]
pub struct Config {
    /// The rules' limits (`--max-offline`, `--max-groups`, ...); `trace` is set
    /// by `run` from whether there is an event log.
    pub core: CoreConfig,
    pub net: NetLimits,
    /// `/inspect` then needs `Authorization: Bearer TOKEN` from everyone.
    pub admin_token: Option<String>,
    pub shutdown_grace: Duration,
    /// `serve --dashboard`: redraw the tables in this terminal.
    pub dashboard: Option<Dashboard>,
    /// `serve --data`: the open store and the state it loaded. None: in memory only.
    pub durable: Option<Durable>,
    /// `serve --public-url`: the address students open when it is not this
    /// machine's (a tunnel's); it is shown and encoded in the QR code.
    pub public_url: Option<String>,
    /// `serve --allow-origin`: other sites whose pages may open chat connections.
    pub allow_origins: Vec<String>,
    /// `serve --max-memory`, in bytes (None: no budget; see [`Config::with_memory_budget`]).
    pub max_memory: Option<u64>,
    /// `serve --redis`: this server is one node of a cluster. None: one process, in memory.
    pub cluster: Option<ClusterConfig>,
    /// `serve --presence-tick`: how often batched presence (v1.2) sends what changed.
    pub presence_tick: Duration,
    /// `serve --record FILE`: every input the core receives, written as it is applied.
    pub record: Option<std::sync::Arc<crate::lecture::record::Recorder>>,
}

impl Config {
    /// Splits a memory budget between what grows with use: half for the
    /// deques (a sixteenth of that for any one sender; offline queueing may
    /// fill three quarters of it, `CoreConfig::max_offline_queued_bytes`), three eighths for
    /// outboxes (a 64th of the budget, 256 KiB to 8 MiB, for any one), the rest
    /// for connections, names, groups and the allocator's own overhead.
    pub fn with_memory_budget(mut self, bytes: u64) -> Config {
        let total = usize::try_from(bytes).unwrap_or(usize::MAX);
        self.max_memory = Some(bytes);
        self.core.max_queued_bytes = total / 2;
        self.core.max_queued_bytes_per_sender = total / 32;
        self.net.max_outbox_total = total / 8 * 3;
        self.net.max_outbox_bytes = (total / 64).clamp(256 * 1024, OUTBOX_BYTES);
        self
    }
}

/// Limits the network shell enforces before (or around) the core.
#[derive(Debug, Clone)]
pub struct NetLimits {
    /// Largest accepted WebSocket message payload; one byte more is `too_large`.
    pub max_message_bytes: usize,
    /// Frames one connection may have waiting before it is evicted as too slow.
    pub outbox_frames: usize,
    pub read_buffer_bytes: usize,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub max_connections_per_user: usize,
    /// Requests per second each connection may send (`rate_limited` beyond);
    /// None, the default, means no limit, as the protocol contract says.
    pub rate_limit: Option<f64>,
    /// A connection from which nothing (not even a pong) was heard for this
    /// long is closed (4000); the server pings at a third of it. None: never.
    pub idle_timeout: Option<Duration>,
    /// A TCP connection that has not become a WebSocket this long after it
    /// opened is closed when it next waits to read. None: never.
    pub handshake_timeout: Option<Duration>,
    /// Bytes one connection's outbox may hold; a push beyond it evicts (1008).
    pub max_outbox_bytes: usize,
    /// Bytes every outbox together may hold; beyond it the fullest is evicted.
    pub max_outbox_total: usize,
}

/// What the dashboard needs from the caller.
#[derive(Debug, Clone)]
pub struct Dashboard {
    /// The event log's latest lines, which the caller's log writes into.
    pub ring: LogRing,
    pub color: bool,
    /// The header line: where to connect, so the projector always shows it.
    pub banner: String,
    /// `--only`, `--user`, `--group`: what the tables show.
    pub view: crate::inspect::render::View,
}

/// Seconds as a timeout, where 0 means "never".
pub fn timeout(secs: f64) -> Option<Duration> {
    (secs > 0.0).then(|| Duration::from_secs_f64(secs))
}

impl Default for NetLimits {
    fn default() -> Self {
        NetLimits {
            max_message_bytes: MAX_MESSAGE_BYTES as usize,
            outbox_frames: OUTBOX_FRAMES as usize,
            read_buffer_bytes: READ_BUFFER_BYTES,
            max_connections: MAX_CONNECTIONS as usize,
            max_connections_per_ip: MAX_CONNECTIONS_PER_IP as usize,
            max_connections_per_user: MAX_CONNECTIONS_PER_USER as usize,
            rate_limit: None,
            idle_timeout: timeout(IDLE_TIMEOUT_SECS),
            handshake_timeout: timeout(HANDSHAKE_TIMEOUT_SECS),
            max_outbox_bytes: OUTBOX_BYTES,
            max_outbox_total: usize::MAX,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            core: CoreConfig::default(),
            net: NetLimits::default(),
            admin_token: None,
            shutdown_grace: SHUTDOWN_GRACE,
            dashboard: None,
            durable: None,
            public_url: None,
            allow_origins: Vec::new(),
            max_memory: None,
            cluster: None,
            presence_tick: PRESENCE_TICK,
            record: None,
        }
    }
}
