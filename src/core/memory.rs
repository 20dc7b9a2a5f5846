//! The seed's five structures, in memory: the default backend.
//!
//! Each method does one operation on one structure and counts it. Field names
//! are the seed's, so the code reads like the design table.

use std::borrow::Cow;
use std::collections::{hash_map::Entry, BTreeSet, HashMap, HashSet, VecDeque};

use crate::core::journal::{Change, DurableState};
use crate::core::ops::{Op, OpCounts, OpTable, Structure, Trace};
use crate::core::snapshot::{QueueView, StructuresSnapshot};
use crate::core::{queued_cost, ConnHandle, ConnId, QueuedBytes, Step, Structures};
use crate::names::{GroupId, UserId};
use crate::protocol::Message;

use Structure::*;

pub struct MemoryStructures<C> {
    /// A `Vec` per user, not a set: a user has one to three devices, and a
    /// linear scan of three handles beats hashing them.
    active_connections: HashMap<UserId, Vec<C>>,
    /// A second copy of the keys of `active_connections` that have devices;
    /// the core keeps the two equal (checked by `StructuresSnapshot::invariants`).
    /// Ordered, where the seed has a hash set: every welcome lists who is
    /// online in name order, which a `BTreeSet` walks in O(n) and a
    /// `HashSet` must sort, O(n log n) per connect. A join or leave costs
    /// O(log n) instead of O(1) (`cargo bench --bench structures -- presence`).
    presence: BTreeSet<UserId>,
    /// `VecDeque` because flushing pops the front: O(1), where `Vec::remove(0)` is O(n).
    /// For a user who resumes (v1.1) it is a sliding window, like TCP's send
    /// buffer: every message routed to them is pushed at the back, and popped
    /// from the front only when a `received` confirms it. Always in id order.
    offline_messages: HashMap<UserId, VecDeque<Message>>,
    /// The window's left edge per resuming user: the highest id they confirmed
    /// (TCP's SND.UNA). One integer per user who ever confirmed something.
    released: HashMap<UserId, u64>,
    /// `HashSet` so joining twice is harmless and the member check is O(1).
    group_members: HashMap<GroupId, HashSet<UserId>>,
    /// Keyed by the blocker: "does bob block alice" is asked for every message to bob.
    blocked_users: HashMap<UserId, HashSet<UserId>>,
    ops: OpCounts,
    /// Durable mode only: the changes to write to disk, taken after each rule.
    journal: Option<Vec<Change>>,
    /// Bookkeeping for the memory budget, kept beside the structures so each
    /// answer is O(1): bytes queued in all, per sender, and groups per user.
    queued_bytes: usize,
    queued_by_sender: HashMap<UserId, usize>,
    groups_of: HashMap<UserId, usize>,
}

impl<C> Default for MemoryStructures<C> {
    fn default() -> Self {
        MemoryStructures {
            active_connections: HashMap::new(),
            presence: BTreeSet::new(),
            offline_messages: HashMap::new(),
            released: HashMap::new(),
            group_members: HashMap::new(),
            blocked_users: HashMap::new(),
            ops: OpCounts::default(),
            journal: None,
            queued_bytes: 0,
            queued_by_sender: HashMap::new(),
            groups_of: HashMap::new(),
        }
    }
}

impl<C> MemoryStructures<C> {
    /// Structures that journal every durable change (for `serve --data`).
    pub fn journaled() -> Self {
        MemoryStructures {
            journal: Some(Vec::new()),
            ..MemoryStructures::default()
        }
    }

    /// The same structures, timing one operation in 16 with `clock` (the
    /// server's monotonic clock; see [`OpCounts::timed`]).
    pub fn with_clock(self, clock: crate::core::ops::Clock) -> Self {
        MemoryStructures {
            ops: OpCounts::timed(clock),
            ..self
        }
    }

    fn journal(&mut self, change: impl FnOnce() -> Change) {
        if let Some(journal) = &mut self.journal {
            journal.push(change());
        }
    }

    /// `message` entered (`grew`) or left an offline deque.
    fn account(&mut self, message: &Message, grew: bool) {
        let cost = queued_cost(message.text.len());
        let sender = self
            .queued_by_sender
            .entry(message.from.clone())
            .or_default();
        if grew {
            self.queued_bytes += cost;
            *sender += cost;
        } else {
            self.queued_bytes = self.queued_bytes.saturating_sub(cost);
            *sender = sender.saturating_sub(cost);
            if *sender == 0 {
                self.queued_by_sender.remove(&message.from);
            }
        }
    }

    /// Puts `message` in `user`'s deque at `at` (None: the back): journaled,
    /// accounted for the memory budget, and counted as one `push_back`.
    fn enqueue(
        &mut self,
        user: &UserId,
        message: Message,
        at: Option<usize>,
        trace: &mut Trace,
    ) -> usize {
        self.journal(|| Change::Queued {
            user: user.clone(),
            message: message.clone(),
        });
        self.account(&message, true);
        let len = self.ops.measure(OfflineMessages, Op::PushBack, || {
            let queue = self.offline_messages.entry(user.clone()).or_default();
            match at {
                Some(i) => queue.insert(i, message),
                None => queue.push_back(message),
            }
            queue.len()
        });
        trace.record(OfflineMessages, Op::PushBack, Some(user), None, Some(len));
        len
    }

    /// `user` joined (`+1`) or left (`-1`) a group.
    fn count_group(&mut self, user: &UserId, joined: bool) {
        let n = self.groups_of.entry(user.clone()).or_default();
        if joined {
            *n += 1;
        } else {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.groups_of.remove(user);
            }
        }
    }
}

/// Restoring: adds each saved list under its key, never creating an empty
/// entry (the invariant says none is kept).
fn extend_each<K, V, C>(map: &mut HashMap<K, C>, saved: &[(K, Vec<V>)])
where
    K: Clone + Eq + std::hash::Hash,
    V: Clone,
    C: Default + Extend<V>,
{
    for (key, values) in saved.iter().filter(|(_, v)| !v.is_empty()) {
        map.entry(key.clone())
            .or_default()
            .extend(values.iter().cloned());
    }
}

fn sorted<'a>(names: impl Iterator<Item = &'a UserId>) -> Vec<UserId> {
    let mut v: Vec<UserId> = names.cloned().collect();
    v.sort_unstable();
    v
}

// Each method runs its one operation inside `self.ops.measure` (counted, and
// timed one call in 16), then records it in the trace for the event log.
impl<C: ConnHandle> Structures for MemoryStructures<C> {
    type Conn = C;

    fn connections(&self, user: &UserId, trace: &mut Trace) -> Step<Cow<'_, [C]>> {
        let conns = self.ops.measure(ActiveConnections, Op::Get, || {
            self.active_connections
                .get(user)
                .map_or(&[][..], Vec::as_slice)
        });
        trace.record(
            ActiveConnections,
            Op::Get,
            Some(user),
            None,
            Some(conns.len()),
        );
        Ok(Cow::Borrowed(conns))
    }

    fn add_connection(&mut self, user: &UserId, conn: C, trace: &mut Trace) -> Step<usize> {
        let devices = self.ops.measure(ActiveConnections, Op::Insert, || {
            let devices = self.active_connections.entry(user.clone()).or_default();
            devices.push(conn);
            devices.len()
        });
        trace.record(
            ActiveConnections,
            Op::Insert,
            Some(user),
            None,
            Some(devices),
        );
        Ok(devices)
    }

    fn remove_connection(
        &mut self,
        user: &UserId,
        id: ConnId,
        trace: &mut Trace,
    ) -> Step<Option<(usize, C)>> {
        let removed = self.ops.measure(ActiveConnections, Op::Remove, || {
            let Entry::Occupied(mut devices) = self.active_connections.entry(user.clone()) else {
                return None;
            };
            let at = devices.get().iter().position(|c| c.id() == id)?;
            let conn = devices.get_mut().remove(at);
            let after = devices.get().len();
            if after == 0 {
                devices.remove();
            }
            Some((after, conn))
        });
        trace.record(
            ActiveConnections,
            Op::Remove,
            Some(user),
            None,
            removed.as_ref().map(|(after, _)| *after),
        );
        Ok(removed)
    }

    fn all_connections(&self, trace: &mut Trace) -> Vec<C> {
        let all: Vec<C> = self.ops.measure(ActiveConnections, Op::Iterate, || {
            self.active_connections
                .values()
                .flatten()
                .cloned()
                .collect()
        });
        trace.record(ActiveConnections, Op::Iterate, None, None, Some(all.len()));
        all
    }

    fn set_online(&mut self, user: &UserId, trace: &mut Trace) -> Step<bool> {
        let added = self
            .ops
            .measure(Presence, Op::Insert, || self.presence.insert(user.clone()));
        trace.record(Presence, Op::Insert, Some(user), None, None);
        Ok(added)
    }

    fn set_offline(&mut self, user: &UserId, trace: &mut Trace) -> Step<bool> {
        let removed = self
            .ops
            .measure(Presence, Op::Remove, || self.presence.remove(user));
        trace.record(Presence, Op::Remove, Some(user), None, None);
        Ok(removed)
    }

    fn online_users(&mut self, trace: &mut Trace) -> Step<Vec<UserId>> {
        let users: Vec<UserId> = self.ops.measure(Presence, Op::Iterate, || {
            self.presence.iter().cloned().collect()
        });
        trace.record(Presence, Op::Iterate, None, None, Some(users.len()));
        Ok(users)
    }

    fn queued_len(&self, user: &UserId, trace: &mut Trace) -> Step<usize> {
        let len = self.ops.measure(OfflineMessages, Op::Len, || {
            self.offline_messages.get(user).map_or(0, VecDeque::len)
        });
        trace.record(OfflineMessages, Op::Len, Some(user), None, Some(len));
        Ok(len)
    }

    fn queue_push_back(
        &mut self,
        user: &UserId,
        message: Message,
        trace: &mut Trace,
    ) -> Step<usize> {
        Ok(self.enqueue(user, message, None, trace))
    }

    fn queue_pop_front(&mut self, user: &UserId, trace: &mut Trace) -> Step<Option<Message>> {
        let (message, len) = self.ops.measure(OfflineMessages, Op::PopFront, || {
            let Entry::Occupied(mut queue) = self.offline_messages.entry(user.clone()) else {
                return (None, 0);
            };
            let message = queue.get_mut().pop_front();
            let len = queue.get().len();
            if len == 0 {
                // An empty deque would be memory kept for a user who may never return.
                queue.remove();
            }
            (message, len)
        });
        trace.record(OfflineMessages, Op::PopFront, Some(user), None, Some(len));
        if let Some(m) = &message {
            self.account(m, false);
        }
        Ok(message)
    }

    fn queue_held_after(&self, user: &UserId, after: u64, trace: &mut Trace) -> Step<Vec<Message>> {
        let held: Vec<Message> = self.ops.measure(OfflineMessages, Op::Iterate, || {
            let Some(queue) = self.offline_messages.get(user) else {
                return Vec::new();
            };
            // In id order, so the first one after `after` is found by binary search.
            let start = queue.partition_point(|m| m.id <= after);
            queue.range(start..).cloned().collect()
        });
        trace.record(
            OfflineMessages,
            Op::Iterate,
            Some(user),
            None,
            Some(held.len()),
        );
        Ok(held)
    }

    fn queue_release(&mut self, user: &UserId, upto: u64, trace: &mut Trace) -> Step<Vec<Message>> {
        let mut released = Vec::new();
        while self
            .offline_messages
            .get(user)
            .and_then(VecDeque::front)
            .is_some_and(|m| m.id <= upto)
        {
            match self.queue_pop_front(user, trace)? {
                Some(message) => released.push(message),
                None => break,
            }
        }
        if upto > self.released.get(user).copied().unwrap_or(0) {
            self.released.insert(user.clone(), upto);
            self.journal(|| Change::Released {
                user: user.clone(),
                upto,
            });
        }
        Ok(released)
    }

    fn queue_put_back(&mut self, user: &UserId, message: Message, trace: &mut Trace) -> Step<bool> {
        if self
            .released
            .get(user)
            .is_some_and(|&edge| message.id <= edge)
        {
            return Ok(false);
        }
        let queue = self.offline_messages.get(user);
        let at = queue.map_or(0, |q| q.partition_point(|m| m.id < message.id));
        let len = queue.map_or(0, VecDeque::len);
        if queue
            .and_then(|q| q.get(at))
            .is_some_and(|m| m.id == message.id)
        {
            return Ok(false); // still held in the window
        }
        // Usually at the back; in id order when a device without resume had it
        // in its outbox while a resuming one's newer messages were held (O(n), rare).
        self.enqueue(user, message, (at < len).then_some(at), trace);
        Ok(true)
    }

    fn join_group(&mut self, group: &GroupId, user: &UserId, trace: &mut Trace) -> Step<usize> {
        let (added, size) = self.ops.measure(GroupMembers, Op::Insert, || {
            let members = self.group_members.entry(group.clone()).or_default();
            (members.insert(user.clone()), members.len())
        });
        if added {
            self.count_group(user, true);
            self.journal(|| Change::Joined {
                group: group.clone(),
                user: user.clone(),
            });
        }
        trace.record(
            GroupMembers,
            Op::Insert,
            Some(group),
            Some(user),
            Some(size),
        );
        Ok(size)
    }

    fn leave_group(&mut self, group: &GroupId, user: &UserId, trace: &mut Trace) -> Step<bool> {
        let (was_member, size) = self.ops.measure(GroupMembers, Op::Remove, || {
            let Entry::Occupied(mut members) = self.group_members.entry(group.clone()) else {
                return (false, 0);
            };
            let removed = members.get_mut().remove(user);
            let size = members.get().len();
            if size == 0 {
                members.remove();
            }
            (removed, size)
        });
        if was_member {
            self.count_group(user, false);
            self.journal(|| Change::Left {
                group: group.clone(),
                user: user.clone(),
            });
        }
        trace.record(
            GroupMembers,
            Op::Remove,
            Some(group),
            Some(user),
            Some(size),
        );
        Ok(was_member)
    }

    fn is_member(&self, group: &GroupId, user: &UserId, trace: &mut Trace) -> Step<bool> {
        let member = self.ops.measure(GroupMembers, Op::Contains, || {
            self.group_members
                .get(group)
                .is_some_and(|members| members.contains(user))
        });
        trace.record(GroupMembers, Op::Contains, Some(group), Some(user), None);
        Ok(member)
    }

    fn group_members(&self, group: &GroupId, trace: &mut Trace) -> Step<Vec<UserId>> {
        let members: Vec<UserId> = self.ops.measure(GroupMembers, Op::Iterate, || {
            self.group_members
                .get(group)
                .map(|m| m.iter().cloned().collect())
                .unwrap_or_default()
        });
        trace.record(
            GroupMembers,
            Op::Iterate,
            Some(group),
            None,
            Some(members.len()),
        );
        Ok(members)
    }

    fn group_len(&self, group: &GroupId, trace: &mut Trace) -> Step<usize> {
        let len = self.ops.measure(GroupMembers, Op::Len, || {
            self.group_members.get(group).map_or(0, HashSet::len)
        });
        trace.record(GroupMembers, Op::Len, Some(group), None, Some(len));
        Ok(len)
    }

    fn group_count(&self, trace: &mut Trace) -> Step<usize> {
        let len = self
            .ops
            .measure(GroupMembers, Op::Len, || self.group_members.len());
        trace.record(GroupMembers, Op::Len, None, None, Some(len));
        Ok(len)
    }

    fn block(&mut self, by: &UserId, whom: &UserId, trace: &mut Trace) -> Step<bool> {
        let added = self.ops.measure(BlockedUsers, Op::Insert, || {
            self.blocked_users
                .entry(by.clone())
                .or_default()
                .insert(whom.clone())
        });
        if added {
            self.journal(|| Change::Blocked {
                by: by.clone(),
                whom: whom.clone(),
            });
        }
        trace.record(BlockedUsers, Op::Insert, Some(by), Some(whom), None);
        Ok(added)
    }

    fn unblock(&mut self, by: &UserId, whom: &UserId, trace: &mut Trace) -> Step<bool> {
        let removed = self.ops.measure(BlockedUsers, Op::Remove, || {
            let Entry::Occupied(mut set) = self.blocked_users.entry(by.clone()) else {
                return false;
            };
            let removed = set.get_mut().remove(whom);
            if set.get().is_empty() {
                set.remove();
            }
            removed
        });
        if removed {
            self.journal(|| Change::Unblocked {
                by: by.clone(),
                whom: whom.clone(),
            });
        }
        trace.record(BlockedUsers, Op::Remove, Some(by), Some(whom), None);
        Ok(removed)
    }

    fn is_blocked(&self, by: &UserId, whom: &UserId, trace: &mut Trace) -> Step<bool> {
        let blocked = self.ops.measure(BlockedUsers, Op::Contains, || {
            self.blocked_users
                .get(by)
                .is_some_and(|set| set.contains(whom))
        });
        trace.record(BlockedUsers, Op::Contains, Some(by), Some(whom), None);
        Ok(blocked)
    }

    fn blocked_len(&self, by: &UserId, trace: &mut Trace) -> Step<usize> {
        let len = self.ops.measure(BlockedUsers, Op::Len, || {
            self.blocked_users.get(by).map_or(0, HashSet::len)
        });
        trace.record(BlockedUsers, Op::Len, Some(by), None, Some(len));
        Ok(len)
    }

    fn take_changes(&mut self) -> Vec<Change> {
        match &mut self.journal {
            Some(journal) => std::mem::take(journal),
            None => Vec::new(),
        }
    }

    fn restore(&mut self, state: &DurableState) {
        extend_each(&mut self.offline_messages, &state.queues);
        extend_each(&mut self.group_members, &state.groups);
        extend_each(&mut self.blocked_users, &state.blocks);
        self.released.extend(state.released.iter().cloned());
        for (_, queue) in &state.queues {
            for message in queue {
                self.account(message, true);
            }
        }
        for (_, members) in &state.groups {
            for member in members {
                self.count_group(member, true);
            }
        }
    }

    fn queued_bytes(&self) -> Step<usize> {
        Ok(self.queued_bytes)
    }

    fn queued_bytes_of(&self, sender: &UserId) -> Step<QueuedBytes> {
        Ok(QueuedBytes {
            all: self.queued_bytes,
            sender: self.queued_by_sender.get(sender).copied().unwrap_or(0),
        })
    }

    fn groups_of(&self, user: &UserId) -> Step<usize> {
        Ok(self.groups_of.get(user).copied().unwrap_or(0))
    }

    fn op_table(&self) -> OpTable {
        self.ops.table()
    }

    fn snapshot(&self, view: QueueView) -> Step<StructuresSnapshot> {
        Ok(StructuresSnapshot {
            active_connections: self
                .active_connections
                .iter()
                .map(|(user, conns)| {
                    let mut ids: Vec<ConnId> = conns.iter().map(ConnHandle::id).collect();
                    ids.sort_unstable();
                    (user.clone(), ids)
                })
                .collect(),
            connection_details: {
                let mut details: Vec<_> = self
                    .active_connections
                    .values()
                    .flatten()
                    .map(ConnHandle::detail)
                    .collect();
                details.sort_unstable_by_key(|d| d.id);
                details
            },
            presence: self.presence.iter().cloned().collect(),
            offline_messages: self
                .offline_messages
                .iter()
                .map(|(user, queue)| (user.clone(), view.copy(queue)))
                .collect(),
            released: self
                .released
                .iter()
                .map(|(user, edge)| (user.clone(), *edge))
                .collect(),
            groups: self
                .group_members
                .iter()
                .map(|(group, members)| (group.clone(), sorted(members.iter())))
                .collect(),
            blocked: self
                .blocked_users
                .iter()
                .map(|(user, set)| (user.clone(), sorted(set.iter())))
                .collect(),
        })
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

    fn msg(id: u64) -> Message {
        Message {
            id,
            from: n("a"),
            target: Target::User(n("b")),
            text: Arc::from("x"),
            ts: 0,
            receipt: false,
        }
    }

    #[test]
    fn each_operation_does_one_thing_and_counts_once() {
        let mut s: MemoryStructures<ConnId> = MemoryStructures::default();
        let t = &mut Trace::new(false);
        let (a, g) = (n("a"), n("g"));

        assert_eq!(s.add_connection(&a, 1, t).unwrap(), 1);
        assert_eq!(s.add_connection(&a, 2, t).unwrap(), 2);
        assert_eq!(*s.connections(&a, t).unwrap(), [1, 2]);
        assert_eq!(s.remove_connection(&a, 9, t).unwrap(), None, "unknown id");
        assert_eq!(s.remove_connection(&a, 1, t).unwrap(), Some((1, 1)));
        assert_eq!(s.remove_connection(&a, 2, t).unwrap(), Some((0, 2)));
        assert!(s.connections(&a, t).unwrap().is_empty());
        assert_eq!(s.remove_connection(&a, 2, t).unwrap(), None, "unknown user");

        assert!(s.set_online(&a, t).unwrap());
        assert!(!s.set_online(&a, t).unwrap(), "a set keeps one copy");
        assert_eq!(s.online_users(t).unwrap(), std::slice::from_ref(&a));
        assert!(s.set_offline(&a, t).unwrap());
        assert!(!s.set_offline(&a, t).unwrap());

        assert_eq!(s.queue_pop_front(&a, t).unwrap(), None);
        assert_eq!(s.queue_push_back(&a, msg(1), t).unwrap(), 1);
        assert_eq!(s.queue_push_back(&a, msg(2), t).unwrap(), 2);
        assert_eq!(s.queued_len(&a, t).unwrap(), 2);
        assert_eq!(
            s.queue_pop_front(&a, t).unwrap().map(|m| m.id),
            Some(1),
            "FIFO"
        );
        assert_eq!(s.queue_pop_front(&a, t).unwrap().map(|m| m.id), Some(2));
        assert_eq!(s.queued_len(&a, t).unwrap(), 0);

        assert!(!s.is_member(&g, &a, t).unwrap(), "no such group");
        assert_eq!(s.join_group(&g, &a, t).unwrap(), 1);
        assert_eq!(
            s.join_group(&g, &a, t).unwrap(),
            1,
            "joining twice is harmless"
        );
        assert!(s.is_member(&g, &a, t).unwrap());
        assert_eq!(s.group_members(&g, t).unwrap(), std::slice::from_ref(&a));
        assert!(s.leave_group(&g, &a, t).unwrap());
        assert!(!s.leave_group(&g, &a, t).unwrap());
        assert!(s.group_members(&g, t).unwrap().is_empty());

        assert!(!s.is_blocked(&a, &g, t).unwrap());
        assert!(s.block(&a, &g, t).unwrap());
        assert!(!s.block(&a, &g, t).unwrap());
        assert!(s.is_blocked(&a, &g, t).unwrap());
        assert!(!s.is_blocked(&g, &a, t).unwrap(), "blocking is one-way");
        assert!(s.unblock(&a, &g, t).unwrap());
        assert!(!s.unblock(&a, &g, t).unwrap());

        // Nothing empty is left behind.
        let snap = s.snapshot(QueueView::All).unwrap();
        assert!(snap.active_connections.is_empty() && snap.offline_messages.is_empty());
        assert!(snap.groups.is_empty() && snap.blocked.is_empty() && snap.presence.is_empty());

        // 8 + 5 + 7 + 8 + 7 calls above: each counted exactly once.
        let ops = s.op_table();
        assert_eq!(ops.total(), 35);
        assert_eq!(ops.get(Structure::OfflineMessages, Op::PopFront), 3);
        assert_eq!(ops.get(Structure::BlockedUsers, Op::Contains), 3);
    }
}
