//! The `GET /inspect` document: the core's [`Snapshot`] and, beside it, the
//! facts only the running server knows (uptime, the data file, claimed names).
//! The server serialises it; `vivachat inspect`, the dashboard and `bench
//! load` read it back as this same type, never as loose JSON.

use serde::{Deserialize, Serialize};

use crate::core::Snapshot;
use crate::names::UserId;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Inspection {
    #[serde(flatten)]
    pub snapshot: Snapshot,
    /// Facts about the server process, filled in by the network shell.
    #[serde(default)]
    pub server: Option<ServerInfo>,
}

/// Facts about the running server that are not part of the core.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ServerInfo {
    pub version: String,
    pub uptime_ms: u64,
    /// Unix time in milliseconds when this snapshot was taken.
    pub taken_at_ms: u64,
    /// How long the core's owner spent copying the structures, in
    /// microseconds: chat traffic waits this long while a snapshot is taken.
    pub hold_us: u64,
    /// Whether queued messages, groups, blocks and claims survive a restart (`serve --data`).
    pub durable: bool,
    /// The database file, in durable mode.
    #[serde(default)]
    pub data_path: Option<String>,
    /// Durable mode's group commit at work: changes written, in how many commits.
    #[serde(default)]
    pub disk: Option<DiskStats>,
    pub max_message_bytes: usize,
    pub max_offline: usize,
    pub outbox_frames: usize,
    pub connections_served: u64,
    /// Names claimed with a token (never the tokens or their hashes).
    #[serde(default)]
    pub claimed_names: Vec<UserId>,
    /// Argon2 hashes and checks run since start: a verified token is checked
    /// from its digest afterwards, so this grows with new claims and restarts,
    /// not with logins.
    #[serde(default)]
    pub slow_token_checks: u64,
    /// `--max-memory` at work: the budget and what is counted against it.
    #[serde(default)]
    pub memory: MemoryStats,
    /// The board's feed: what drawing the structures for `/board` costs the server.
    #[serde(default)]
    pub board: BoardStats,
    /// The core's owner: inputs applied, in how many wake-ups (batches).
    #[serde(default)]
    pub owner: OwnerInfo,
    /// Cluster mode (`serve --redis`): the nodes and what this one asked of Redis.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterInfo>,
    /// `serve --record`: inputs recorded when this snapshot was taken, so
    /// it is the state of step N of `vivachat replay`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recorded_inputs: Option<u64>,
    /// `vivachat replay`: the step this document is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lecture: Option<LectureInfo>,
}

/// `vivachat replay`: which step of which recording this document is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct LectureInfo {
    pub step: u64,
    pub steps: u64,
    /// The recording or scenario file.
    pub source: String,
}

/// How the core's owner took its inputs: `inputs / batches` per wake-up
/// on average; under load many, at rest one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct OwnerInfo {
    pub inputs: u64,
    pub batches: u64,
    pub largest_batch: u64,
    /// Nanoseconds the core was held applying inputs, in all: the locked
    /// section (rules, serialising, pushes into outboxes; on a cluster, the
    /// Redis round trips too).
    #[serde(default)]
    pub held_ns: u64,
}

/// One node's view of its cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ClusterInfo {
    /// The node that answered.
    pub node: String,
    /// Every node with a live heartbeat, sorted.
    pub nodes: Vec<String>,
    /// Where Redis is (`HOST:PORT/DB`, never a password) and the key prefix.
    pub redis: String,
    pub prefix: String,
    /// On a Redis Cluster: the slot every key is in and the master serving
    /// it now, e.g. `slot 5652 of a Redis Cluster, on master 10.0.0.7:7001`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis_cluster: Option<String>,
    /// Each Redis command this node ran, with its documented cost: what the
    /// in-memory operations cost once the structures are shared.
    pub redis_commands: Vec<crate::cluster::RedisCount>,
    /// How many direct messages shared each batch's round trip to Redis.
    #[serde(default)]
    pub batches: crate::cluster::Batches,
}

/// The memory budget and what is counted against it, in bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct MemoryStats {
    /// `--max-memory` (None: no budget).
    pub budget_bytes: Option<u64>,
    /// Held by offline deques, and their share of the budget.
    pub queued_bytes: u64,
    pub max_queued_bytes: u64,
    /// Held by outboxes (frames routed, not yet written), and their share.
    pub outbox_bytes: u64,
    pub max_outbox_bytes: u64,
    /// The process's resident memory, as the OS counts it (Linux).
    pub rss_bytes: Option<u64>,
}

/// The `/board` feed's cost, paid once per frame however many boards watch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct BoardStats {
    /// Boards watching now.
    pub viewers: usize,
    /// Frames built since the server started (at most 10 a second).
    pub frames: u64,
    /// Mean time to build and encode one frame, in microseconds.
    pub mean_build_us: u64,
}

/// What the store's writer thread has done since the server started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct DiskStats {
    /// Changes written (queued messages, joins, leaves, blocks, unblocks,
    /// claims, deletions of flushed messages).
    pub changes: u64,
    /// Transactions committed: one fsync each.
    pub commits: u64,
    /// The most changes one commit carried.
    pub largest_commit: u64,
    /// Why the data file cannot be written right now (None while writes work):
    /// until it clears, anything that needs the disk is refused with `unavailable`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failing: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{ChatCore, CoreConfig, MemoryStructures};
    use crate::names::Name;

    #[test]
    fn the_document_keeps_the_contract_shape_and_round_trips() {
        let mut core: ChatCore<MemoryStructures<u64>> =
            ChatCore::new(MemoryStructures::default(), CoreConfig::default());
        core.connect(&Name::parse("alice").unwrap(), 1).unwrap();
        let doc = Inspection {
            snapshot: core.snapshot().unwrap(),
            server: Some(ServerInfo {
                version: "0.1.0".into(),
                hold_us: 12,
                disk: Some(DiskStats {
                    failing: Some("database or disk is full".into()),
                    ..DiskStats::default()
                }),
                ..ServerInfo::default()
            }),
        };
        let json = serde_json::to_string(&doc).unwrap();
        let back: Inspection = serde_json::from_str(&json).unwrap();
        assert_eq!(back, doc);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        // The core's fields sit at the top level, as the contract shows them.
        assert_eq!(v["active_connections"]["alice"], serde_json::json!([1]));
        assert_eq!(v["ops"]["presence"]["insert"], 1);
        assert_eq!(v["server"]["hold_us"], 12);
    }
}
