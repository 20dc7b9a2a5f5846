//! The state every task of one server shares, and the one way into the
//! core: [`Hub::send`] hands an [`Input`] to the core's owner (`owner.rs`),
//! which applies inputs one at a time, in the order they arrived.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use super::admission::Gate;
use super::backend::{Backend, Core};
use super::board_feed::BoardFeed;
use super::config::Config;
use super::conn::{Asked, Conn, Connection};
use super::input::{Input, CHANNEL_BOUND};
use super::limits::Slots;
use super::outbox::Outbox;
use super::shutdown::Shutdown;
use super::site::Site;
use crate::cluster::{Link, RedisStructures};
use crate::core::{
    ChatCore, MemoryStructures, OpTable, QueueView, Step, StructuresSnapshot, Unavailable,
};
use crate::event_log::EventLog;
use crate::inspection::{Inspection, MemoryStats, ServerInfo};
use crate::names::UserId;
use crate::output::now_ms;
use crate::store::Store;

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
        prefix: link.prefix().to_string(),
        redis_cluster: link.serving(),
        redis_commands: link.counts(),
        batches: link.batches(),
    }
}

/// Nanoseconds since the first call: the monotonic clock the core's op
/// counters are given to time their samples (the core reads no clock itself).
fn monotonic_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// How the owner's batches ran: inputs applied and wake-ups, for `/inspect`.
#[derive(Default)]
pub(crate) struct OwnerStats {
    inputs: AtomicU64,
    batches: AtomicU64,
    largest: AtomicUsize,
    held_ns: AtomicU64,
}

impl OwnerStats {
    pub fn record(&self, batch: usize) {
        self.inputs.fetch_add(batch as u64, Ordering::Relaxed);
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.largest.fetch_max(batch, Ordering::Relaxed);
    }

    /// The core was held for `since.elapsed()` applying a batch: its rules,
    /// each frame serialised once, and the pushes into outboxes.
    pub fn held(&self, since: Instant) {
        let ns = since.elapsed().as_nanos() as u64;
        self.held_ns.fetch_add(ns, Ordering::Relaxed);
    }

    fn info(&self) -> crate::inspection::OwnerInfo {
        crate::inspection::OwnerInfo {
            inputs: self.inputs.load(Ordering::Relaxed),
            batches: self.batches.load(Ordering::Relaxed),
            largest_batch: self.largest.load(Ordering::Relaxed) as u64,
            held_ns: self.held_ns.load(Ordering::Relaxed),
        }
    }
}

/// A lock nobody can poison: the inputs queue only grows and shrinks whole.
fn lock(waiting: &Mutex<VecDeque<Input>>) -> std::sync::MutexGuard<'_, VecDeque<Input>> {
    waiting.lock().unwrap_or_else(|e| e.into_inner())
}

/// Cluster mode: the core before its thread takes it, and the channel that
/// thread reads.
pub(crate) struct Unowned {
    pub core: Core,
    pub inputs: mpsc::Receiver<Input>,
}

/// The owner's rules, given by `owner.rs`: once per batch, and once per input.
pub(crate) struct Rules {
    pub prepare: fn(&Hub, &mut Core),
    pub apply: fn(&Hub, &mut Core, Input),
}

/// The one way into the core, in one of two shapes (`owner.rs` says why).
// One per server, never moved after start: the core stays inline.
#[allow(clippy::large_enum_variant)]
enum Entry {
    /// Cluster mode: a thread owns the core, because its rules wait for
    /// Redis; inputs wait on its bounded channel.
    Thread(mpsc::Sender<Input>),
    /// In memory: whoever finds the core free holds it, and applies every
    /// input waiting, its own and the others', before letting go.
    Combining(Combining),
}

struct Combining {
    waiting: Mutex<VecDeque<Input>>,
    core: Mutex<Core>,
    rules: Rules,
}

pub(crate) struct Hub {
    /// The one way into the core (see `owner.rs`).
    entry: Entry,
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
    /// Cluster mode: Redis answers again after an outage, so the owner
    /// registers this node's sockets again before its next rule.
    pub resync_wanted: AtomicBool,
    pub owner_stats: OwnerStats,
    /// The first connection id of this process (a cluster gives each node
    /// its own range, so ids are unique across nodes).
    first_conn_id: u64,
}

impl Hub {
    /// The hub of one server; `cluster` is its link to Redis in cluster mode,
    /// with the cluster's epoch and this node's first connection id. In
    /// memory the hub holds the core; in cluster mode it is returned, for the
    /// owner's thread, with the channel that thread reads.
    pub fn new(
        mut config: Config,
        log: Option<EventLog>,
        bound: SocketAddr,
        cluster: Option<Joined>,
        rules: Rules,
    ) -> (Hub, Option<Unowned>) {
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
        if let Some(recorder) = &config.record {
            recorder.begin(&crate::lecture::record::Header {
                vivachat_record: crate::lecture::record::FORMAT,
                version: env!("CARGO_PKG_VERSION").to_string(),
                epoch: core.epoch().to_string(),
                limits: config.core.clone(),
                restored: durable.as_ref().map(|d| (&d.loaded.state).into()),
                node: cluster.as_ref().map(|j| j.link.node().to_string()),
            });
        }
        let first_conn_id = cluster.as_ref().map_or(1, |j| j.first_conn_id);
        let store = durable.as_ref().map(|d| d.store.clone());
        let site = Site::new(
            bound,
            config.public_url.as_deref(),
            &config.allow_origins,
            config.admin_token.clone(),
        );
        let gate = Gate::new(
            store.clone(),
            durable.map(|d| d.loaded.claims).unwrap_or_default(),
        )
        .in_cluster(cluster.as_ref().map(|j| j.link.clone()));
        let (entry, unowned) = if cluster.is_some() {
            let (sender, inputs) = mpsc::channel(CHANNEL_BOUND);
            (Entry::Thread(sender), Some(Unowned { core, inputs }))
        } else {
            let combining = Combining {
                waiting: Mutex::default(),
                core: Mutex::new(core),
                rules,
            };
            (Entry::Combining(combining), None)
        };
        let hub = Hub {
            entry,
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
            resync_wanted: AtomicBool::new(false),
            owner_stats: OwnerStats::default(),
            first_conn_id,
        };
        (hub, unowned)
    }

    /// Hands an input to the core's owner. In memory it is applied before
    /// this returns, by this task or by the one holding the core; in cluster
    /// mode it waits on the thread's channel (only while that is full).
    /// After the owner stopped (the server is gone) there is nobody to tell.
    pub async fn send(&self, input: Input) {
        match &self.entry {
            Entry::Thread(inputs) => {
                let _ = inputs.send(input).await;
            }
            Entry::Combining(combining) => self.combine(combining, input),
        }
    }

    /// [`Hub::send`] from a thread of our own (the cluster's subscriber and
    /// heartbeat), never from a tokio worker.
    pub fn send_blocking(&self, input: Input) {
        match &self.entry {
            Entry::Thread(inputs) => {
                let _ = inputs.blocking_send(input);
            }
            Entry::Combining(combining) => self.combine(combining, input),
        }
    }

    /// Flat combining: the input joins the queue; whoever holds the core
    /// applies it. If nobody does, this task takes the core and applies
    /// every waiting input in arrival order until none is left. The queue
    /// is checked again after letting go, so an input added while the holder
    /// was finishing is never left behind. Rules in memory do no I/O, so the
    /// core is held for CPU work only.
    fn combine(&self, combining: &Combining, input: Input) {
        lock(&combining.waiting).push_back(input);
        let mut batch = VecDeque::new();
        loop {
            let mut core = match combining.core.try_lock() {
                Ok(core) => core,
                Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
                // The holder will apply it.
                Err(std::sync::TryLockError::WouldBlock) => return,
            };
            loop {
                std::mem::swap(&mut *lock(&combining.waiting), &mut batch);
                if batch.is_empty() {
                    break;
                }
                self.owner_stats.record(batch.len());
                let held = Instant::now();
                (combining.rules.prepare)(self, &mut core);
                for input in batch.drain(..) {
                    (combining.rules.apply)(self, &mut core, input);
                }
                self.owner_stats.held(held);
            }
            drop(core);
            if lock(&combining.waiting).is_empty() {
                return;
            }
        }
    }

    /// Runs `look` by the core's holder, between two inputs, and returns
    /// what it copied; None once the owner has stopped.
    pub async fn look<T: Send + 'static>(
        &self,
        look: impl FnOnce(&Core) -> T + Send + 'static,
    ) -> Option<T> {
        let (reply, answer) = oneshot::channel();
        self.send(Input::Look(Box::new(move |core| {
            let _ = reply.send(look(core));
        })))
        .await;
        answer.await.ok()
    }

    pub fn new_connection(
        &self,
        user: UserId,
        remote: SocketAddr,
        authenticated: bool,
        asked: Asked,
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
            resume: asked.resume,
            presence_batched: asked.presence_batched,
            presence_order: AtomicU64::new(0),
        })
    }

    pub fn connections_served(&self) -> u64 {
        self.next_conn_id.load(Ordering::SeqCst) - self.first_conn_id
    }

    pub fn uptime(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    /// Every operation counter, copied by the owner.
    pub async fn op_table(&self) -> OpTable {
        self.look(|core| core.op_table()).await.unwrap_or_default()
    }

    /// A cluster's shared structures, read for a view on tokio's blocking
    /// pool with a connection of their own (None in memory).
    pub(crate) async fn read_shared(&self, view: QueueView) -> Option<Step<StructuresSnapshot>> {
        let link = self.cluster.clone()?;
        let read = tokio::task::spawn_blocking(move || crate::cluster::read_shared(&link, view));
        Some(match read.await {
            Ok(read) => read.map_err(Unavailable),
            Err(e) => Err(Unavailable(e.to_string())),
        })
    }

    /// The `/inspect` document. The core is copied by its owner (timed: that
    /// is how long chat traffic waits); a cluster's node list is read there
    /// too, off the tokio workers; the server's facts are added after.
    /// None once the owner has stopped (the server is shutting down); an
    /// error when a cluster's Redis did not answer.
    pub async fn inspection(&self) -> Option<Step<Inspection>> {
        let link = self.cluster.clone();
        let recorder = self.config.record.clone();
        // A cluster's shared structures are read off the owner, on a
        // connection of their own: routing never waits for a view.
        let shared = match self.read_shared(QueueView::All).await {
            Some(Err(why)) => return Some(Err(why)),
            shared => shared.and_then(Result::ok),
        };
        let copied = self
            .look(move |core| {
                let start = Instant::now();
                let snapshot = match shared {
                    Some(mut structures) => {
                        core.structures().add_unsent(&mut structures);
                        core.snapshot_of(structures)
                    }
                    None => core.snapshot(),
                };
                let queued_bytes = core.queued_bytes();
                let hold = start.elapsed();
                // Read by the owner with the snapshot: the replay step it is.
                let recorded = recorder.map(|r| r.recorded());
                let cluster = link.map(|l| cluster_info(&l));
                (snapshot, queued_bytes, hold, cluster, recorded)
            })
            .await;
        let (snapshot, queued_bytes, hold, cluster, recorded_inputs) = copied?;
        let (snapshot, queued_bytes) = match (snapshot, queued_bytes) {
            (Ok(snapshot), Ok(queued)) => (snapshot, queued),
            (Err(why), _) | (_, Err(why)) => return Some(Err(why)),
        };
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
            owner: self.owner_stats.info(),
            cluster,
            recorded_inputs,
            lecture: None,
        };
        Some(Ok(Inspection {
            snapshot,
            server: Some(server),
        }))
    }
}
