//! The state every task of one server shares, and the one way into the core:
//! [`Hub::apply`] locks it, lets a rule decide, and delivers the decision
//! before unlocking, so every connection sees frames in the order the core
//! produced them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Instant;

use super::admission::Gate;
use super::backend::{Backend, Handle};
use super::board::BoardFeed;
use super::config::Config;
use super::deliver::deliver;
use super::limits::Slots;
use super::outbox::Outbox;
use super::shutdown::Shutdown;
use super::site::Site;
use crate::cluster::{Link, RedisStructures};
use crate::core::{ChatCore, ConnDetail, ConnHandle, ConnId, MemoryStructures, Outcome};
use crate::event_log::EventLog;
use crate::inspection::{Inspection, MemoryStats, ServerInfo};
use crate::names::UserId;
use crate::output::now_ms;
use crate::store::Store;

/// One WebSocket connection, as stored in `active_connections`.
pub struct Connection {
    pub id: ConnId,
    pub user: UserId,
    pub remote: SocketAddr,
    pub connected_at_ms: u64,
    pub outbox: Outbox,
    /// It presented the token of a claimed name (false: the name was open).
    pub authenticated: bool,
    /// v1.1: it connected with `?resume=N`, so what is routed to it is held.
    pub resume: Option<Resume>,
    /// Cluster mode: where its registration falls in the cluster-wide order
    /// of presence changes (set by the Redis backend; 0 otherwise).
    pub presence_order: AtomicU64,
}

/// `?resume=N&epoch=E`: the highest id the client has, and the run it is from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    pub from: u64,
    pub epoch: Option<String>,
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
            node: None,
        }
    }

    fn resume(&self) -> Option<u64> {
        self.resume.as_ref().map(|r| r.from)
    }

    fn resume_epoch(&self) -> Option<&str> {
        self.resume.as_ref()?.epoch.as_deref()
    }
}

pub(crate) type Core = ChatCore<Backend>;

/// What a node gets from joining its cluster (`server::join_cluster`).
pub(crate) struct Joined {
    pub link: Arc<Link>,
    /// The cluster's epoch: the first node drew it, the others read it.
    pub epoch: String,
    /// This node's first connection id: each node run has its own range.
    pub first_conn_id: u64,
}

/// 64 random bits, in hex, from the standard library's per-process hash keys.
pub(crate) fn random_epoch() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    format!("{:x}", h.finish())
}

/// The cluster as this node sees it: the nodes with a live heartbeat, and
/// every Redis command this node ran.
fn cluster_info(link: &Link) -> crate::inspection::ClusterInfo {
    let nodes = link.run("SMEMBERS (inspect)", "O(N)", |c| {
        redis::cmd("SMEMBERS")
            .arg(link.key("nodes"))
            .query::<Vec<String>>(c)
    });
    let mut nodes = nodes.unwrap_or_default();
    nodes.sort_unstable();
    crate::inspection::ClusterInfo {
        node: link.node().to_string(),
        nodes,
        redis: link.shown_url.clone(),
        prefix: link.config.prefix.clone(),
        redis_commands: link.counts(),
    }
}

/// Nanoseconds since the first call: the monotonic clock the core's op
/// counters are given to time their samples (the core reads no clock itself).
fn monotonic_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

pub(crate) struct Hub {
    /// One `std` mutex around the whole core: every critical section is a few
    /// microseconds of hash-map work with no `.await` inside, so a blocking
    /// lock is cheaper than an async one and keeps a single global order.
    core: Mutex<Core>,
    pub config: Config,
    pub log: Option<EventLog>,
    next_conn_id: AtomicU64,
    started: Instant,
    pub slots: Arc<Slots>,
    /// Name claims and the hasher that checks their tokens.
    pub gate: Gate,
    /// Durable mode's store; None in memory.
    pub store: Option<Arc<Store>>,
    pub shutdown: Shutdown,
    /// The join URL and the Origin and Host rules.
    pub site: Site,
    /// What the board's feed needs from routing.
    pub board: BoardFeed,
    /// Bytes in every outbox together (each outbox adds and subtracts its own).
    pub outbox_bytes: Arc<AtomicUsize>,
    /// Cluster mode (`serve --redis`): the node's connection to Redis.
    pub cluster: Option<Arc<Link>>,
    /// The first connection id of this process (a cluster gives each node
    /// its own range, so ids are unique across nodes).
    first_conn_id: u64,
}

impl Hub {
    /// The hub of one server; `cluster` is its link to Redis in cluster mode,
    /// with the cluster's epoch and this node's first connection id.
    pub fn new(
        mut config: Config,
        log: Option<EventLog>,
        bound: SocketAddr,
        cluster: Option<Joined>,
    ) -> Hub {
        config.core.trace = log.is_some();
        let durable = config.durable.clone();
        let structures = match (&cluster, &durable) {
            (Some(joined), _) => Backend::Redis(Box::new(RedisStructures::new(
                joined.link.clone(),
                Some(monotonic_ns),
            ))),
            (None, Some(_)) => {
                Backend::Memory(MemoryStructures::journaled().with_clock(monotonic_ns))
            }
            (None, None) => Backend::Memory(MemoryStructures::default().with_clock(monotonic_ns)),
        };
        let mut core = ChatCore::new(structures, config.core.clone());
        if let Some(d) = &durable {
            core.restore(&d.loaded.state);
        }
        // A data file keeps its epoch (its ids continue); a cluster shares one
        // (its ids come from one counter); in memory, every run is a new one,
        // since its ids start again at 1.
        let epoch = durable
            .as_ref()
            .and_then(|d| d.loaded.state.epoch.clone())
            .or_else(|| cluster.as_ref().map(|j| j.epoch.clone()));
        core.set_epoch(epoch.unwrap_or_else(random_epoch));
        let first_conn_id = cluster.as_ref().map_or(1, |j| j.first_conn_id);
        let store = durable.as_ref().map(|d| d.store.clone());
        let site = Site::new(bound, config.public_url.as_deref(), &config.allow_origins);
        let gate = Gate::new(
            store.clone(),
            durable.map(|d| d.loaded.claims).unwrap_or_default(),
        )
        .in_cluster(cluster.as_ref().map(|j| j.link.clone()));
        Hub {
            core: Mutex::new(core),
            config,
            log,
            next_conn_id: AtomicU64::new(first_conn_id),
            started: Instant::now(),
            slots: Arc::default(),
            gate,
            store,
            shutdown: Shutdown::default(),
            site,
            board: BoardFeed::default(),
            outbox_bytes: Arc::default(),
            cluster: cluster.map(|j| j.link),
            first_conn_id,
        }
    }

    /// The locked core. Prefer [`Hub::apply`]; this is for the few places
    /// that carry out several rules under one lock.
    pub fn core(&self) -> MutexGuard<'_, Core> {
        // The core is only mutated through methods that leave it consistent, so
        // a panic on another thread (a bug) must not take the whole server down.
        let mut core = self.core.lock().unwrap_or_else(|e| e.into_inner());
        // The rules refuse what needs the disk while it cannot be written.
        if let Some(store) = &self.store {
            core.set_disk(store.disk());
        }
        // The trace costs an allocation per event: only while someone reads it.
        core.set_tracing(self.log.is_some() || self.board.watched());
        // Cluster mode: a failure left by an event nobody answers (a close, a
        // relayed frame) is said here, and not blamed on the next request.
        if let Some(why) = core.take_failure() {
            if let Some(log) = &self.log {
                log.line(format!(
                    "! Redis failed under the last event ({why}); its shared state is repaired when Redis is back (this node registers its sockets again)"
                ));
            }
        }
        core
    }

    /// Lets one rule of the core decide, then delivers its outcome, all under
    /// the lock.
    pub fn apply(&self, rule: impl FnOnce(&mut Core) -> Outcome<Handle>) {
        let mut core = self.core();
        let outcome = rule(&mut core);
        deliver(&mut core, outcome, self);
    }

    /// A request's rule: as [`Hub::apply`], but when Redis failed under it
    /// (cluster mode) its outcome is not trusted, and the requester is told
    /// `unavailable` instead: an error, never a silent loss.
    pub fn apply_request(
        &self,
        conn: &Conn,
        reference: crate::protocol::Ref,
        rule: impl FnOnce(&mut Core) -> Outcome<Handle>,
    ) {
        let mut core = self.core();
        let outcome = rule(&mut core);
        let outcome = match core.take_failure() {
            None => outcome,
            Some(why) => {
                let error = crate::protocol::RequestError::new(
                    crate::protocol::ErrorCode::Unavailable,
                    format!("{why}. This may not have been done: send it again in a moment"),
                    reference,
                );
                core.refuse(&conn.user, &Handle::Local(conn.clone()), error)
            }
        };
        deliver(&mut core, outcome, self);
    }

    pub fn new_connection(
        &self,
        user: UserId,
        remote: SocketAddr,
        authenticated: bool,
        resume: Option<Resume>,
    ) -> Conn {
        Arc::new(Connection {
            id: self.next_conn_id.fetch_add(1, Ordering::SeqCst),
            user,
            remote,
            connected_at_ms: now_ms(),
            outbox: Outbox::with_bytes(
                self.config.net.outbox_frames,
                self.config.net.max_outbox_bytes,
                self.outbox_bytes.clone(),
            ),
            authenticated,
            resume,
            presence_order: AtomicU64::new(0),
        })
    }

    pub fn connections_served(&self) -> u64 {
        self.next_conn_id.load(Ordering::SeqCst) - self.first_conn_id
    }

    pub fn uptime(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    /// The `/inspect` document. The core is copied under its lock (timed: that
    /// is how long chat traffic waits); the server's facts are added after.
    pub fn inspection(&self) -> Inspection {
        let core = self.core();
        let start = Instant::now();
        let snapshot = core.snapshot();
        let queued_bytes = core.queued_bytes();
        let hold = start.elapsed();
        drop(core);
        let store = self.store.as_deref();
        let server = ServerInfo {
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_ms: self.started.elapsed().as_millis() as u64,
            taken_at_ms: now_ms(),
            hold_us: hold.as_micros() as u64,
            durable: store.is_some(),
            data_path: store.map(|s| s.path().display().to_string()),
            disk: store.map(Store::stats),
            max_message_bytes: self.config.net.max_message_bytes,
            max_offline: self.config.core.max_offline,
            outbox_frames: self.config.net.outbox_frames,
            connections_served: self.connections_served(),
            claimed_names: self.gate.claimed_names(),
            slow_token_checks: self.gate.slow_token_checks(),
            memory: MemoryStats {
                budget_bytes: self.config.max_memory,
                queued_bytes: queued_bytes as u64,
                max_queued_bytes: self.config.core.max_queued_bytes as u64,
                outbox_bytes: self.outbox_bytes.load(Ordering::Relaxed) as u64,
                max_outbox_bytes: self.config.net.max_outbox_total as u64,
                rss_bytes: crate::server::limits::rss_bytes(),
            },
            board: self.board.stats(),
            cluster: self.cluster.as_ref().map(|link| cluster_info(link)),
        };
        Inspection {
            snapshot,
            server: Some(server),
        }
    }
}
