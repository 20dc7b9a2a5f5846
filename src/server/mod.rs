//! The network shell: it carries out what the core decides, and decides nothing
//! about chat itself.
//!
//! # Layout
//! - [`config`]: every setting, each default written once.
//! - `owner.rs`: the core's one owner, a thread that applies every [`input`]
//!   in arrival order and delivers each outcome before the next.
//! - `input.rs`: what reaches the core (requests, connects, closes, relayed
//!   frames, the views' looks).
//! - `hub.rs`: the shared state, and [`Hub::send`](hub::Hub::send), the one
//!   way into the core.
//! - `conn.rs`: one connection as the rest of the server sees it (a leaf).
//! - `deliver.rs`: an outcome's frames into each connection's outbox (or, in
//!   a cluster, published to the node that has the socket), and the eviction
//!   of a connection that stopped reading.
//! - `backend.rs`: the structures in memory or in Redis, and [`Handle`]: a
//!   socket here or a stand-in for devices on another node.
//! - `publish.rs`: the wire between the nodes of a cluster, both directions.
//! - `relay.rs`: cluster mode's threads: what other nodes publish here, the
//!   heartbeat, and the sweep of dead nodes.
//! - `http.rs`: routes, the WebSocket upgrade (origin, name, slots, claim), `/inspect`.
//! - `pages.rs`: the chat page `/` and the board `/board`, embedded, with their CSP.
//! - `board.rs`, `board_feed.rs`: the board's live feed, coalesced to at most
//!   10 frames a second, and what routing leaves for it.
//! - [`site`]: the join URL, the Origin check, and the access rule of
//!   `/inspect` and `/board`.
//! - `connection.rs`: one reader and one writer task per WebSocket.
//! - [`outbox`]: the bounded queue between routing and a socket's writer.
//! - `admission.rs`: name claims, with Argon2 off the chat path.
//! - [`limits`]: connection slots, the rate limit, the open-file limit.
//! - [`handshake`]: closes TCP connections that never become WebSockets.
//! - `shutdown.rs`: one cancellation token and one task tracker.
//! - `dashboard.rs`: `serve --dashboard`.
//!
//! The life of one message: `connection.rs` reads a frame and parses it and
//! `hub.send` hands it to the owner (`owner.rs`), which routes it
//! (`core.handle`) and `deliver`s the frames into outboxes (after the store
//! took its changes, in durable mode); each connection's writer sends them.

mod admission;
mod backend;
mod board;
mod board_feed;
pub mod config;
mod conn;
mod connection;
pub(crate) mod dashboard;
mod deliver;
pub mod handshake;
mod http;
mod hub;
mod input;
pub mod limits;
pub mod outbox;
mod owner;
pub(crate) mod pages;
mod publish;
mod recorded;
mod relay;
mod shutdown;
pub mod site;
mod socket;
mod upgrade;

use std::future::{Future, IntoFuture};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

pub use backend::{Handle, Remote};
pub use config::{Config, Dashboard, NetLimits};
pub use conn::{Conn, Connection};

use crate::cluster::Link;
use crate::core::OpTable;
use crate::event_log::EventLog;
use hub::Hub;

/// Every few seconds: when the queues and outboxes hold much less than they
/// did, hand the freed memory back to the OS (see `limits::give_back_memory`),
/// so RSS follows the class's traffic down as well as up.
async fn give_back_drained_memory(hub: Arc<Hub>) {
    const EVERY: Duration = Duration::from_secs(2);
    const WORTH_IT: usize = 16 * 1024 * 1024;
    let mut peak = 0usize;
    let stop = hub.shutdown.begun();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = tokio::time::sleep(EVERY) => {}
            () = &mut stop => return,
        }
        let queued = match hub.look(|core| core.queued_bytes()).await {
            Some(Ok(queued)) => queued,
            Some(Err(_)) => continue,
            None => return,
        };
        let held = queued + hub.outbox_bytes.load(std::sync::atomic::Ordering::Relaxed);
        peak = peak.max(held);
        if peak - held >= WORTH_IT {
            tokio::task::spawn_blocking(limits::give_back_memory);
            peak = held;
        }
    }
}

/// Connects to the cluster's Redis: the link, the cluster's epoch (the first
/// node draws it), and this node's range of connection ids.
fn join_cluster(config: crate::cluster::ClusterConfig) -> Result<hub::Joined, String> {
    let link = Link::connect(config)?;
    let epoch = link.run("SET NX + GET", "O(1)", |c| {
        redis::cmd("SET")
            .arg(link.key("epoch"))
            .arg(hub::random_epoch())
            .arg("NX")
            .query::<()>(c)?;
        redis::cmd("GET").arg(link.key("epoch")).query::<String>(c)
    })?;
    let seq = link.run("INCR", "O(1)", |c| {
        redis::cmd("INCR").arg(link.key("node_seq")).query::<u64>(c)
    })?;
    // A billion ids per node run, readable in tables: node run 3 counts from 3000000001.
    Ok(hub::Joined {
        link,
        epoch,
        first_conn_id: (seq % 1_000_000_000) * 1_000_000_000 + 1,
    })
}

/// What `run` reports when it returns.
#[derive(Debug, Clone)]
pub struct Report {
    pub ops: OpTable,
    pub uptime: Duration,
    pub connections_served: u64,
}

/// v1.2's clock: one tick input per `--presence-tick`, until shutdown. A
/// quiet tick costs the owner one check (`presence_tick_due`).
async fn presence_ticks(hub: Arc<Hub>) {
    let mut every = tokio::time::interval(hub.config.presence_tick);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stop = hub.shutdown.begun();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = every.tick() => hub.send(input::Input::PresenceTick).await,
            () = &mut stop => return,
        }
    }
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
    let bound = listener.local_addr()?;
    limits::tune_allocator();
    let cluster = match &config.cluster {
        Some(c) => Some(join_cluster(c.clone()).map_err(std::io::Error::other)?),
        None => None,
    };
    let (hub, unowned) = Hub::new(config, log, bound, cluster, owner::RULES);
    let hub = Arc::new(hub);
    let mut relays = Vec::new();
    let mut owner = None;
    if let (Some(link), Some(mut unowned)) = (hub.cluster.clone(), unowned) {
        if let (Some(serving), Some(log)) = (link.serving(), &hub.log) {
            log.line(format!(
                "Redis: every key of this chat carries the hash tag {}, so is in {serving}",
                link.prefix()
            ));
        }
        relays.push(relay::subscribe(hub.clone(), link.clone()).map_err(std::io::Error::other)?);
        // A node restarted under the same name forgets its previous run's
        // devices; sweeping itself also beats and keeps it in `nodes`.
        let epoch = unowned.core.epoch().to_string();
        if let backend::Backend::Redis(redis) = unowned.core.structures_mut() {
            redis.resync(0, &epoch).map_err(std::io::Error::other)?;
        }
        owner = Some(owner::start(hub.clone(), unowned.core, unowned.inputs)?);
        relays.push(relay::start_heartbeat(hub.clone(), link).map_err(std::io::Error::other)?);
    }
    let listener = handshake::GuardedListener::new(listener, hub.config.net.handshake_timeout);
    let app = http::routes(hub.clone());
    let http = tokio::spawn(
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<handshake::Peer>(),
        )
        .with_graceful_shutdown(hub.shutdown.begun())
        .into_future(),
    );
    let dashboard = hub.config.dashboard.clone().map(|d| {
        let (hub, stop) = (hub.clone(), tokio_util::sync::CancellationToken::new());
        let task = tokio::spawn(dashboard::run(hub, d, stop.clone()));
        (task, stop)
    });

    let board = tokio::spawn(board::publish(hub.clone(), hub.shutdown.begun()));
    tokio::spawn(presence_ticks(hub.clone()));
    tokio::spawn(give_back_drained_memory(hub.clone()));

    shutdown.await;
    // The dashboard gives the terminal back first, so the shutdown lines are readable.
    if let Some((task, stop)) = dashboard {
        stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
    }
    let grace = hub.config.shutdown_grace;
    // Every socket is closed with 1001, in the owner's order; then the
    // connections' tasks get `grace` to finish their closing handshakes.
    let (closed, all_closed) = tokio::sync::oneshot::channel();
    hub.send(input::Input::CloseAll(closed)).await;
    let _ = all_closed.await;
    hub.shutdown.wait(grace).await;
    let _ = tokio::time::timeout(grace, http).await;
    let _ = board.await;

    if let Some(link) = &hub.cluster {
        relay::leave(link);
    }
    for thread in relays {
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }
    // Nothing is left to feed the core: a cluster's owner thread hands it back.
    let ops = match owner {
        Some(thread) => {
            hub.send(input::Input::Stop).await;
            tokio::task::spawn_blocking(move || thread.join())
                .await
                .map_err(std::io::Error::other)?
                .map_err(|_| std::io::Error::other("the core's owner thread panicked"))?
                .op_table()
        }
        None => hub.op_table().await,
    };
    // Everything acknowledged is already on disk; this writes what is left
    // (flushed-message deletions, the last requeues) and closes the file cleanly.
    if let Some(store) = hub.store.clone() {
        let _ = tokio::task::spawn_blocking(move || store.close(grace)).await;
    }
    // The owner has stopped: the recording holds every input it applied.
    if let Some(recorder) = hub.config.record.clone() {
        let finished = tokio::task::spawn_blocking(move || recorder.finish()).await;
        if let Ok(Err(why)) = finished {
            eprintln!("! --record: the recording's last lines could not be written: {why}");
        }
    }
    if let Some(log) = &hub.log {
        log.flush(Duration::from_secs(2));
    }
    Ok(Report {
        ops,
        uptime: hub.uptime(),
        connections_served: hub.connections_served(),
    })
}
