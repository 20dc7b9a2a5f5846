//! A consistent, serialisable copy of the core: what `GET /inspect` returns.
//!
//! The copy is taken under the core's lock in one pass (O(total size)), then
//! serialised after the lock is released, so chat traffic waits only for the copy.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use serde::Serialize;

use crate::core::ops::OpTable;
use crate::core::structures::ConnId;
use crate::names::{GroupId, UserId};
use crate::protocol::Message;

/// The five structures, with every collection sorted so two snapshots of the
/// same state are byte-identical.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct StructuresSnapshot {
    /// user -> connection ids of the user's open devices.
    pub active_connections: BTreeMap<UserId, Vec<ConnId>>,
    /// Sorted online users.
    pub presence: Vec<UserId>,
    /// user -> queued messages, oldest first.
    pub offline_messages: BTreeMap<UserId, QueueSnapshot>,
    /// group -> sorted members.
    pub groups: BTreeMap<GroupId, Vec<UserId>>,
    /// user -> sorted users they block.
    pub blocked: BTreeMap<UserId, Vec<UserId>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueueSnapshot {
    pub len: usize,
    pub messages: Vec<Message>,
}

/// One invariant of the core and whether it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Invariant {
    pub name: &'static str,
    pub holds: bool,
    /// What is wrong, when it does not hold.
    #[serde(skip_serializing_if = "Option::is_none")]
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

        let check = |name, problem: Option<String>| Invariant {
            name,
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
        ]
    }
}

/// The whole `GET /inspect` document.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    #[serde(flatten)]
    pub structures: StructuresSnapshot,
    /// structure -> operation -> count.
    pub ops: BTreeMap<&'static str, BTreeMap<&'static str, u64>>,
    pub invariants: Vec<Invariant>,
    /// The id the next accepted message will get.
    pub next_message_id: u64,
}

impl Snapshot {
    pub fn new(structures: StructuresSnapshot, ops: &OpTable, next_message_id: u64) -> Snapshot {
        let mut by_structure: BTreeMap<&'static str, BTreeMap<&'static str, u64>> = BTreeMap::new();
        for row in &ops.0 {
            by_structure
                .entry(row.structure.name())
                .or_default()
                .insert(row.op.name(), row.count);
        }
        Snapshot {
            invariants: structures.invariants(),
            structures,
            ops: by_structure,
            next_message_id,
        }
    }
}
