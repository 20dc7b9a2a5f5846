//! Durable mode's view of the core: which changes must reach the disk, and
//! the state that is loaded back on start.
//!
//! Only the state that outlives connections is durable: the offline queues,
//! the groups and the blocks (`active_connections` and `presence` describe
//! sockets, which a restart closes anyway). Every mutating operation on those
//! three structures appends a [`Change`] when the journal is on; the server
//! writes them to disk before it sends the acks that depend on them.
//!
//! Taking a message off a queue is not journaled here: the server deletes it
//! from disk only after the frame was written to the socket (see `server`).
//! A resuming user's messages leave the disk when they are released instead.

use crate::names::{GroupId, UserId};
use crate::protocol::Message;

/// One change to durable state, in the order the core made it.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// A message appended to `user`'s offline deque.
    Queued {
        user: UserId,
        message: Message,
    },
    Joined {
        group: GroupId,
        user: UserId,
    },
    Left {
        group: GroupId,
        user: UserId,
    },
    Blocked {
        by: UserId,
        whom: UserId,
    },
    Unblocked {
        by: UserId,
        whom: UserId,
    },
    /// A resuming user confirmed every message up to `upto`: they leave the
    /// disk, and the position is kept.
    Released {
        user: UserId,
        upto: u64,
    },
}

/// Everything durable mode loads on start.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DurableState {
    /// Each user's queue, oldest first.
    pub queues: Vec<(UserId, Vec<Message>)>,
    pub groups: Vec<(GroupId, Vec<UserId>)>,
    /// (blocker, the users they block)
    pub blocks: Vec<(UserId, Vec<UserId>)>,
    /// Resuming users' released positions.
    pub released: Vec<(UserId, u64)>,
    /// Message ids below this may have been used before the restart.
    pub next_message_id: u64,
    /// The data file's epoch (see `ChatCore::set_epoch`).
    pub epoch: Option<String>,
}

impl DurableState {
    pub fn queued_messages(&self) -> usize {
        self.queues.iter().map(|(_, q)| q.len()).sum()
    }

    pub fn block_count(&self) -> usize {
        self.blocks.iter().map(|(_, b)| b.len()).sum()
    }
}
