//! A consistent, serialisable copy of the core: what `GET /inspect` returns.
//!
//! The copy is taken by the core's owner in one pass (O(total size)), then
//! serialised after the owner has moved on, so chat traffic waits only for the copy.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashSet};

use serde::{Deserialize, Serialize};

use crate::core::ops::OpTable;
use crate::names::{GroupId, UserId};
use crate::protocol::Message;

/// Identifies one WebSocket connection (one device) for the server's lifetime.
pub type ConnId = u64;

/// What `/inspect` shows about one connection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnDetail {
    pub id: ConnId,
    /// The peer's address as the server saw it (a tunnel or proxy shows as itself).
    pub remote: Option<String>,
    /// Unix time in milliseconds when the connection was accepted.
    pub connected_at_ms: Option<u64>,
    /// Frames waiting in its outbox, not yet written to the socket.
    pub unsent: Option<usize>,
    /// In a cluster, the node whose socket it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// The five structures, with every collection sorted so two snapshots of the
/// same state are byte-identical.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct StructuresSnapshot {
    /// user -> connection ids of the user's open devices.
    pub active_connections: BTreeMap<UserId, Vec<ConnId>>,
    /// Every connection: where it comes from and since when, sorted by id.
    #[serde(default)]
    pub connection_details: Vec<ConnDetail>,
    /// Sorted online users.
    pub presence: Vec<UserId>,
    /// user -> queued (or, for a resuming user, held) messages, oldest first.
    pub offline_messages: BTreeMap<UserId, QueueSnapshot>,
    /// Resuming user -> the highest message id they confirmed (`received`).
    #[serde(default)]
    pub released: BTreeMap<UserId, u64>,
    /// group -> sorted members.
    pub groups: BTreeMap<GroupId, Vec<UserId>>,
    /// user -> sorted users they block.
    pub blocked: BTreeMap<UserId, Vec<UserId>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSnapshot {
    pub len: usize,
    /// Oldest first. With [`QueueView::Ends`], the front ones and then the back ones.
    pub messages: Vec<Message>,
    /// Messages left out between the front and the back ones (0: none).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub skipped: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// How much of each offline deque a snapshot copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueView {
    /// Every message: `/inspect` shows them all. O(total queued).
    All,
    /// At most this many from the front and as many from the back: the board
    /// draws a deque's two ends, so its copy costs O(1) per user, not O(queued).
    Ends(usize),
}

impl QueueView {
    /// Copies `queue` (oldest first) as this view keeps it.
    pub fn copy(self, queue: &std::collections::VecDeque<Message>) -> QueueSnapshot {
        let len = queue.len();
        match self {
            QueueView::Ends(keep) if len > 2 * keep => QueueSnapshot {
                len,
                messages: queue
                    .iter()
                    .take(keep)
                    .chain(queue.iter().skip(len - keep))
                    .cloned()
                    .collect(),
                skipped: len - 2 * keep,
            },
            _ => QueueSnapshot {
                len,
                messages: queue.iter().cloned().collect(),
                skipped: 0,
            },
        }
    }
}

/// One invariant of the core and whether it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invariant {
    pub name: Cow<'static, str>,
    pub holds: bool,
    /// What is wrong, when it does not hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl StructuresSnapshot {
    /// Checks the invariants routing relies on. Pure: works on any backend's snapshot.
    pub fn invariants(&self) -> Vec<Invariant> {
        let with_connection: BTreeSet<&UserId> = self
            .active_connections
            .iter()
            .filter(|(_, ids)| !ids.is_empty())
            .map(|(user, _)| user)
            .collect();
        let present: BTreeSet<&UserId> = self.presence.iter().collect();
        let presence_detail = (with_connection != present).then(|| {
            let extra: Vec<_> = present.difference(&with_connection).collect();
            let missing: Vec<_> = with_connection.difference(&present).collect();
            format!("online without a connection: {extra:?}; connected but not online: {missing:?}")
        });

        let empties: Vec<String> = self
            .active_connections
            .iter()
            .filter(|(_, v)| v.is_empty())
            .map(|(k, _)| format!("active_connections[{k}]"))
            .chain(
                self.offline_messages
                    .iter()
                    .filter(|(_, q)| q.len == 0)
                    .map(|(k, _)| format!("offline_messages[{k}]")),
            )
            .chain(
                self.groups
                    .iter()
                    .filter(|(_, m)| m.is_empty())
                    .map(|(k, _)| format!("group_members[{k}]")),
            )
            .chain(
                self.blocked
                    .iter()
                    .filter(|(_, b)| b.is_empty())
                    .map(|(k, _)| format!("blocked_users[{k}]")),
            )
            .collect();

        let mut seen = HashSet::new();
        let duplicates: Vec<ConnId> = self
            .active_connections
            .values()
            .flatten()
            .filter(|id| !seen.insert(**id))
            .copied()
            .collect();

        // Releasing pops from the front while id <= M and resuming re-sends by
        // binary search: both rely on each deque being in id order, above its edge.
        let disorder: Vec<String> = self
            .offline_messages
            .iter()
            .filter(|(user, q)| {
                let edge = self.released.get(*user).copied().unwrap_or(0);
                let ids: Vec<u64> = q.messages.iter().map(|m| m.id).collect();
                ids.windows(2).any(|w| w[0] >= w[1]) || ids.first().is_some_and(|&id| id <= edge)
            })
            .map(|(user, _)| format!("offline_messages[{user}]"))
            .collect();

        let check = |name, problem: Option<String>| Invariant {
            name: Cow::Borrowed(name),
            holds: problem.is_none(),
            detail: problem,
        };
        vec![
            check("presence == users with >= 1 connection", presence_detail),
            check(
                "no empty deque, group, block set or device list is kept",
                (!empties.is_empty()).then(|| format!("empty: {}", empties.join(", "))),
            ),
            check(
                "connection ids are unique",
                (!duplicates.is_empty()).then(|| format!("repeated ids: {duplicates:?}")),
            ),
            check(
                "each deque is in id order, above its released position",
                (!disorder.is_empty()).then(|| format!("out of order: {}", disorder.join(", "))),
            ),
        ]
    }
}

/// The core's half of the `GET /inspect` document (the server adds its own
/// facts beside it, in the shell's `inspection` module).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    #[serde(flatten)]
    pub structures: StructuresSnapshot,
    /// structure -> operation -> count (the contract's shape).
    pub ops: BTreeMap<String, BTreeMap<String, u64>>,
    /// The same counts with each operation's cost class and sampled mean time.
    #[serde(default)]
    pub op_table: OpTable,
    pub invariants: Vec<Invariant>,
    /// The id the next accepted message will get.
    pub next_message_id: u64,
}

impl Snapshot {
    pub fn new(structures: StructuresSnapshot, ops: &OpTable, next_message_id: u64) -> Snapshot {
        let mut by_structure: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
        for row in &ops.0 {
            by_structure
                .entry(row.structure.name().to_string())
                .or_default()
                .insert(row.op.name().to_string(), row.count);
        }
        Snapshot {
            invariants: structures.invariants(),
            structures,
            ops: by_structure,
            op_table: ops.clone(),
            next_message_id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::Name;
    use crate::protocol::Target;
    use std::sync::Arc;

    fn n(s: &str) -> Name {
        Name::parse(s).unwrap()
    }

    fn healthy() -> StructuresSnapshot {
        let mut s = StructuresSnapshot::default();
        s.active_connections.insert(n("alice"), vec![1, 2]);
        s.presence = vec![n("alice")];
        s
    }

    fn broken(s: &StructuresSnapshot) -> Vec<(String, String)> {
        s.invariants()
            .into_iter()
            .filter(|i| !i.holds)
            .map(|i| (i.name.to_string(), i.detail.unwrap_or_default()))
            .collect()
    }

    #[test]
    fn the_checker_passes_a_healthy_state() {
        assert!(broken(&healthy()).is_empty());
    }

    #[test]
    fn the_checker_catches_each_kind_of_broken_state() {
        let mut s = healthy();
        s.presence.push(n("ghost"));
        assert_eq!(
            broken(&s)[0].1,
            r#"online without a connection: ["ghost"]; connected but not online: []"#
        );

        let mut s = healthy();
        s.presence.clear();
        assert!(broken(&s)[0]
            .1
            .contains(r#"connected but not online: ["alice"]"#));

        let mut s = healthy();
        s.offline_messages.insert(
            n("bob"),
            QueueSnapshot {
                len: 0,
                messages: vec![],
                skipped: 0,
            },
        );
        s.groups.insert(n("g"), vec![]);
        let b = broken(&s);
        assert_eq!(b.len(), 1);
        assert!(b[0].1.contains("offline_messages[bob]") && b[0].1.contains("group_members[g]"));

        let mut s = healthy();
        s.active_connections.insert(n("bob"), vec![2]);
        s.presence.push(n("bob"));
        assert_eq!(
            broken(&s),
            [(
                "connection ids are unique".to_string(),
                "repeated ids: [2]".to_string()
            )]
        );
    }

    #[test]
    fn the_ends_view_keeps_front_and_back_and_counts_the_gap() {
        let queue: std::collections::VecDeque<Message> = (1..=10)
            .map(|id| Message {
                id,
                from: n("alice"),
                target: Target::User(n("bob")),
                text: Arc::from("x"),
                ts: 0,
                receipt: false,
            })
            .collect();
        let ends = QueueView::Ends(2).copy(&queue);
        let ids: Vec<u64> = ends.messages.iter().map(|m| m.id).collect();
        assert_eq!((ends.len, ends.skipped, ids), (10, 6, vec![1, 2, 9, 10]));
        let short = QueueView::Ends(5).copy(&queue);
        assert_eq!((short.messages.len(), short.skipped), (10, 0));
        assert_eq!(QueueView::All.copy(&queue).messages.len(), 10);
    }

    #[test]
    fn a_snapshot_survives_a_json_round_trip() {
        let mut s = healthy();
        s.connection_details.push(ConnDetail {
            id: 1,
            remote: Some("127.0.0.1:5000".into()),
            connected_at_ms: Some(7),
            unsent: Some(0),
            node: Some("n1".into()),
        });
        let m = |id, target| crate::protocol::Message {
            id,
            from: n("alice"),
            target,
            text: Arc::from("hi \"x\""),
            ts: 5,
            receipt: false,
        };
        s.offline_messages.insert(
            n("bob"),
            QueueSnapshot {
                len: 2,
                messages: vec![m(1, Target::User(n("bob"))), m(2, Target::Group(n("g")))],
                skipped: 0,
            },
        );
        s.groups.insert(n("g"), vec![n("alice"), n("bob")]);
        s.blocked.insert(n("bob"), vec![n("eve")]);
        let ops = crate::core::ops::OpCounts::default();
        ops.measure(
            crate::core::Structure::Presence,
            crate::core::Op::Insert,
            || (),
        );
        let snapshot = Snapshot::new(s, &ops.table(), 3);
        let json = serde_json::to_string(&snapshot).unwrap();
        let back: Snapshot = serde_json::from_str(&json).unwrap();
        assert_eq!(back, snapshot);
        // The contract's keys are there, in the contract's shapes.
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["active_connections"]["alice"], serde_json::json!([1, 2]));
        assert_eq!(v["offline_messages"]["bob"]["len"], 2);
        assert_eq!(
            v["offline_messages"]["bob"]["messages"][1]["type"],
            "group_message"
        );
        assert_eq!(v["ops"]["presence"]["insert"], 1);
    }
}
