//! Several `serve` processes as one chat server: the seed's scaling chapter,
//! run for real (`serve --redis URL`).
//!
//! Each node keeps its own sockets (a socket cannot live in Redis) and puts
//! the shared structures in Redis, with the types that match the seed's:
//!
//! | seed structure       | in Redis (prefix `vivachat`)                         |
//! |----------------------|------------------------------------------------------|
//! | `active_connections` | HASH `devices:{user}`, field `node/conn` per device   |
//! | `presence`           | ZSET `presence`, every score 0: kept in name order    |
//! | `offline_messages`   | LIST `q:{user}` (RPUSH at the back, LPOP the front)  |
//! | `group_members`      | SET `g:{group}` (and SET `groups`, SET `ug:{user}`)   |
//! | `blocked_users`      | SET `b:{user}`                                        |
//! | name claims          | HASH `claims`                                        |
//!
//! A frame for a device on another node is published on that node's channel
//! (`node:{id}`): a channel per node, so each node holds one subscription
//! however many users it serves, and one PUBLISH reaches all of a user's
//! devices there. Liveness: each node renews `alive:{id}` (TTL
//! [`HEARTBEAT_TTL`]); a survivor that finds it expired sweeps the dead
//! node's devices and announces its users `offline` (`server/relay.rs`).
//!
//! On a Redis Cluster the prefix is a hash tag, `{vivachat}`: every key and
//! channel is in one slot, so every script runs there as on one Redis, on
//! the master serving that slot (`slot.rs`), and frames go through sharded
//! pub/sub (SPUBLISH). One chat is on one master; its replica is its failover.
//!
//! - `codec.rs`: how a queue entry and a device's record are written in Redis.
//! - `scripts.rs`: the Lua scripts that make the racy steps atomic.
//! - `prefetch.rs`: what a batch of rules reads in one round trip, and the ids it reserved.
//! - `structures.rs`: [`RedisStructures`], the core's `Structures` on Redis.
//! - `view.rs`: what the board and `/inspect` read of Redis: bounded, pipelined, on a connection of their own.
//! - [`link`]: the one command connection, its failure state and its counters.
//! - `slot.rs`: a key's hash slot, and which master of a Redis Cluster serves it.
//! - `server/relay.rs` (the shell): the subscriber, the heartbeat and the sweep.

mod codec;
mod handle;
mod link;
mod prefetch;
mod scripts;
mod slot;
mod structures;
mod view;

use std::time::Duration;

pub use handle::{Handle, LocalDevice, Remote};
pub use link::{open, Batches, Link, RedisCount};
pub use structures::RedisStructures;
pub use view::read as read_shared;

/// How often a node renews its heartbeat and looks for dead nodes.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// How long a heartbeat lives: a node silent this long is dead. So a killed
/// node's users are announced offline within TTL + one period: 6 s.
pub const HEARTBEAT_TTL: Duration = Duration::from_secs(5);
/// How long one Redis command may take before the node counts Redis as
/// unreachable (and refuses what needs it with `unavailable`).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(1);

/// `serve --redis URL [--node-id NAME]`.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// `redis://HOST:PORT[/DB]`.
    pub url: String,
    /// This node's name, unique in the cluster (default: host and port).
    pub node_id: String,
    /// The first part of every key and channel: one Redis can hold several
    /// clusters (the tests run one per test). `vivachat` unless told.
    pub prefix: String,
}

impl ClusterConfig {
    pub fn new(url: &str, node_id: &str) -> ClusterConfig {
        ClusterConfig {
            url: url.to_string(),
            node_id: node_id.to_string(),
            prefix: "vivachat".to_string(),
        }
    }
}

/// A node name that is safe in keys and fields: letters, digits, `.`, `-`,
/// `_`, 1 to 64 of them (a `/` or `:` would split fields and keys).
pub fn valid_node_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}
