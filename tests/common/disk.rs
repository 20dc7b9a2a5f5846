//! What durable mode's disk would hold, for the model-based tests: the core's
//! journal applied in order, a v1 flush deleting what it wrote (here, as soon
//! as it is sent), and a release deleting what it covers.

use std::collections::{BTreeMap, BTreeSet};

use vivachat::core::{Change, ConnHandle, DurableState, Outcome, StructuresSnapshot};
use vivachat::names::Name;
use vivachat::protocol::{Message, ServerFrame};

#[derive(Default)]
pub struct Disk {
    queues: BTreeMap<Name, BTreeMap<u64, Message>>,
    groups: BTreeMap<Name, BTreeSet<Name>>,
    blocks: BTreeMap<Name, BTreeSet<Name>>,
    released: BTreeMap<Name, u64>,
}

impl Disk {
    pub fn apply<C: ConnHandle>(&mut self, outcome: &Outcome<C>) {
        for change in &outcome.changes {
            match change.clone() {
                Change::Queued { user, message } => {
                    self.queues
                        .entry(user)
                        .or_default()
                        .insert(message.id, message);
                }
                Change::Joined { group, user } => {
                    self.groups.entry(group).or_default().insert(user);
                }
                Change::Left { group, user } => {
                    self.groups.entry(group).or_default().remove(&user);
                }
                Change::Blocked { by, whom } => {
                    self.blocks.entry(by).or_default().insert(whom);
                }
                Change::Unblocked { by, whom } => {
                    self.blocks.entry(by).or_default().remove(&whom);
                }
                Change::Released { user, upto } => {
                    if let Some(queue) = self.queues.get_mut(&user) {
                        queue.retain(|id, _| *id > upto);
                    }
                    let edge = self.released.entry(user).or_default();
                    *edge = (*edge).max(upto);
                }
            }
        }
        self.queues.retain(|_, q| !q.is_empty());
    }

    /// `user`'s v1 connection was sent its queue in `outcome`: it leaves the disk.
    pub fn flushed<C: ConnHandle>(&mut self, user: &Name, outcome: &Outcome<C>) {
        for (_, frame) in outcome.sends() {
            if let ServerFrame::Chat {
                message,
                offline: true,
            } = frame
            {
                if let Some(queue) = self.queues.get_mut(user) {
                    queue.remove(&message.id);
                }
            }
        }
        self.queues.retain(|_, q| !q.is_empty());
    }

    pub fn state(&self) -> DurableState {
        let list = |m: &BTreeMap<Name, BTreeSet<Name>>| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.iter().cloned().collect()))
                .collect()
        };
        DurableState {
            queues: self
                .queues
                .iter()
                .map(|(u, q)| (u.clone(), q.values().cloned().collect()))
                .collect(),
            groups: list(&self.groups),
            blocks: list(&self.blocks),
            released: self.released.iter().map(|(u, e)| (u.clone(), *e)).collect(),
            next_message_id: 1,
            ..DurableState::default()
        }
    }
}

/// Each user's deque as its message ids, oldest first: what the model tests
/// compare with their reference model after every step.
pub fn queue_ids(s: &StructuresSnapshot) -> BTreeMap<String, Vec<u64>> {
    s.offline_messages
        .iter()
        .map(|(u, q)| (u.to_string(), q.messages.iter().map(|m| m.id).collect()))
        .collect()
}
