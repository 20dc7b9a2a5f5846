//! The functional core: the five structures and every routing decision, with no I/O.
//!
//! [`ChatCore`] takes events (a connection opened, a request arrived, a
//! connection closed) and returns an [`Outcome`]: which frames go to which
//! connections, and what happened, for the event log. The network layer
//! only carries outcomes out, so everything here is tested without a socket.
//! Time comes in as arguments; nothing here reads a clock, a file, a socket
//! or a random source.

pub mod claims;
pub mod flushing;
pub mod journal;
pub mod memory;
pub mod ops;
pub mod presence_batch;
pub mod routing;
pub mod snapshot;
#[cfg(test)]
mod step_failures;
pub mod structures;
#[cfg(test)]
mod tests;
pub mod withheld;

use std::collections::HashMap;

use crate::names::{GroupId, UserId};
use crate::protocol::{AckStatus, ErrorCode, ServerFrame};

pub use journal::{Change, DurableState};
pub use memory::MemoryStructures;
pub use ops::{Facts, Op, OpTable, Structure, Trace, FACTS};
pub use routing::Relayed;
pub use snapshot::{ConnDetail, ConnId, Invariant, QueueView, Snapshot, StructuresSnapshot};
pub use structures::{
    ConnHandle, Device, DirectFacts, Kept, QueuedBytes, Step, Structures, Unavailable,
};

/// The core's default limits; `serve`'s flags use these same constants.
pub const MAX_OFFLINE: u64 = 10_000;
pub const MAX_GROUPS: u64 = 10_000;
pub const MAX_GROUP_SIZE: u64 = 10_000;
pub const MAX_BLOCKED: u64 = 10_000;

/// Groups one user may be a member of (`--max-groups-per-user`): so that one
/// client cannot take every one of `--max-groups`.
pub const MAX_GROUPS_PER_USER: u64 = 100;

/// What one queued copy of a message costs the memory budget: its text and a
/// fixed share for the `Message` entry, its names and the deque slot. A group
/// message queued for m offline members counts m times: the entries are real
/// even where the text is shared.
pub const QUEUED_ENTRY_BYTES: usize = 96;

pub fn queued_cost(text_bytes: usize) -> usize {
    QUEUED_ENTRY_BYTES + text_bytes
}

/// Limits and switches of the core. A recording's header keeps the limits
/// (`serve --record`), so a replay refuses what the live server refused.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CoreConfig {
    /// Longest offline deque per user; a direct message beyond it is refused with `inbox_full`.
    pub max_offline: usize,
    /// Record a [`Trace`] of every event for the event log. Counting is always on.
    #[serde(skip)]
    pub trace: bool,
    /// Longest text of a message, in characters; `None` leaves only the frame-size limit.
    pub max_text_chars: Option<usize>,
    /// Groups the server holds at most; creating one more is `limit_reached`.
    pub max_groups: usize,
    /// Members one group holds at most.
    pub max_group_size: usize,
    /// Users one user may block at most.
    pub max_blocked: usize,
    /// Groups one user may be in at most.
    pub max_groups_per_user: usize,
    /// Bytes all offline deques together may hold (from `--max-memory`).
    pub max_queued_bytes: usize,
    /// Bytes of one sender's messages that may wait in offline deques: names
    /// that never connect cannot take the whole budget.
    pub max_queued_bytes_per_sender: usize,
}

impl CoreConfig {
    /// What queueing for offline users may fill of the deques' budget:
    /// three quarters. The last quarter only takes copies held for online
    /// users whose clients confirm them (v1.1), so strangers' queues filling
    /// up cannot stop live chat.
    pub fn max_offline_queued_bytes(&self) -> usize {
        self.max_queued_bytes - self.max_queued_bytes / 4
    }
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            max_offline: MAX_OFFLINE as usize,
            trace: false,
            max_text_chars: None,
            max_groups: MAX_GROUPS as usize,
            max_group_size: MAX_GROUP_SIZE as usize,
            max_blocked: MAX_BLOCKED as usize,
            max_groups_per_user: MAX_GROUPS_PER_USER as usize,
            max_queued_bytes: usize::MAX,
            max_queued_bytes_per_sender: usize::MAX,
        }
    }
}

/// Whether changes that must reach the disk can be made now. In memory, and
/// while the data file can be written, it is `Writable`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Disk {
    #[default]
    Writable,
    /// Why not, in words for the error's detail.
    Unavailable(String),
}

/// The state of the chat and the rules that change it.
///
/// ```
/// use vivachat::core::{ChatCore, CoreConfig, MemoryStructures};
/// use vivachat::names::Name;
/// use vivachat::protocol::parse_request;
///
/// // Connection handles are plain numbers here: no sockets needed.
/// let mut core: ChatCore<MemoryStructures<u64>> =
///     ChatCore::new(MemoryStructures::default(), CoreConfig::default());
/// let alice = Name::parse("alice").unwrap();
/// // Each rule answers a `Step`: in memory it is always `Ok`, on a cluster
/// // it is an error when Redis does not answer.
/// core.connect(&alice, 1).unwrap();
/// let hi = parse_request(r#"{"type":"message","to":"bob","text":"hi"}"#).unwrap();
/// let outcome = core.handle(&alice, &1, hi, 1_764_000_000_000).unwrap();
/// // bob is offline: alice's connection gets the ack, the message waits in bob's deque.
/// assert_eq!(outcome.frames_for(1)[0].to_json(), r#"{"type":"ack","id":1,"status":"queued"}"#);
/// assert_eq!(core.snapshot().unwrap().structures.offline_messages.len(), 1);
/// ```
pub struct ChatCore<S: Structures> {
    structures: S,
    config: CoreConfig,
    /// One counter for direct and group messages, so ids increase in processing order.
    next_message_id: u64,
    /// Told by the shell before each rule: requests that would change durable
    /// state are refused while the disk cannot be written.
    disk: Disk,
    /// This run of the server (with `--data`: this data file), so a resume
    /// position from another run, whose ids meant other messages, is not
    /// trusted. Centrifugo calls the same idea a stream's epoch.
    epoch: String,
    /// What blocks kept out of the deques, so a blocked sender meets the same
    /// limits (see `withheld.rs`).
    withheld: withheld::Withheld,
    /// v1 flushes taken from their deques and not yet handed to their
    /// sockets: still counted in the budget (see `flushing.rs`).
    flushing: flushing::Flushing,
    /// v1.2: the presence changes waiting for the next tick (`presence_batch.rs`).
    presence_batch: presence_batch::PresenceBatch,
    /// Per resuming connection, the highest held message id it was sent (its
    /// window on connect, then relayed copies). In a cluster a relayed copy
    /// at or below it came late through Redis: sending it would break the
    /// device's id order. O(1) per relayed copy.
    held_sent: HashMap<ConnId, u64>,
}

/// One frame for one connection: an index into [`Outcome::frames`], so a frame
/// fanned out to 30 devices is built (and serialised) once.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery<C> {
    pub conn: C,
    pub frame: usize,
}

/// What the core decided: frames to send, in order, and what happened.
#[derive(Debug, Clone)]
pub struct Outcome<C> {
    pub frames: Vec<ServerFrame>,
    pub deliveries: Vec<Delivery<C>>,
    pub event: Event,
    pub trace: Trace,
    /// Durable changes to write before any of `deliveries` is sent (empty
    /// unless the journal is on).
    pub changes: Vec<Change>,
    /// A new connection's queue, written to it after every delivery above.
    pub flush: Option<Flush<C>>,
}

/// A connect-time flush: the chat frames for one new connection, oldest
/// first. The shell writes them after its welcome, encoding each only as
/// the socket takes it, so a queue of any size reaches its owner at the pace
/// of their socket and never sits in memory twice.
#[derive(Debug, Clone)]
pub struct Flush<C> {
    pub conn: C,
    pub frames: Vec<ServerFrame>,
    /// Bytes charged to the budget until the shell says the flush left
    /// (`ChatCore::flushed`): a v1 flush, which took them out of the deque.
    pub charged: usize,
}

impl<C: Clone> Outcome<C> {
    /// Every frame this outcome sends, with its connection, in the order
    /// each connection receives them: the deliveries, then the flush.
    pub fn sends(&self) -> impl Iterator<Item = (&C, &ServerFrame)> {
        let delivered = self
            .deliveries
            .iter()
            .map(|d| (&d.conn, &self.frames[d.frame]));
        let flushed = self
            .flush
            .iter()
            .flat_map(|f| f.frames.iter().map(move |frame| (&f.conn, frame)));
        delivered.chain(flushed)
    }

    /// The frames one connection receives, in order (for tests and tools).
    pub fn frames_for(&self, id: ConnId) -> Vec<&ServerFrame>
    where
        C: ConnHandle,
    {
        self.sends()
            .filter(|(conn, _)| conn.id() == id)
            .map(|(_, frame)| frame)
            .collect()
    }
}

/// How many names of each side of a presence diff an event keeps.
pub const DIFF_NAMES: usize = 8;

/// A tick's presence diff as the event log and the board tell it: how many
/// arrived and left, the first [`DIFF_NAMES`] of each in name order (a
/// storm's tick can hold thousands), and how many connections got the frame.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DiffSummary {
    pub online: usize,
    pub offline: usize,
    pub first_online: Vec<UserId>,
    pub first_offline: Vec<UserId>,
    pub connections: usize,
}

/// What happened, in domain terms: the event log's first words.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Connected {
        user: UserId,
        conn: ConnId,
        devices: usize,
        flushed: usize,
        notified: usize,
        /// v1.1: the position it resumed from (the flush re-sent what is held
        /// after it, and released what is up to it); None for v1.
        resume: Option<u64>,
        /// Messages the resume position released (confirmed by it).
        released: usize,
    },
    Disconnected {
        user: UserId,
        conn: ConnId,
        devices: usize,
        requeued: usize,
        notified: usize,
    },
    /// `disconnect` of a connection the core no longer holds: nothing to do.
    AlreadyGone {
        user: UserId,
        conn: ConnId,
    },
    Message {
        from: UserId,
        to: UserId,
        id: u64,
        /// What the sender was told (the same whether or not `to` blocks them).
        status: AckStatus,
        /// `to` blocks `from`: nothing was sent or stored.
        blocked: bool,
        /// Delivered live and also kept in `to`'s deque until their client
        /// confirms it (a device of theirs resumed, v1.1).
        held: bool,
    },
    GroupMessage {
        from: UserId,
        group: GroupId,
        id: u64,
        /// What the sender was told, counting members who block them as if they did not.
        status: AckStatus,
        /// Connections that really got it, and members it was really queued for.
        connections: usize,
        queued: usize,
        /// Members who block the sender: skipped.
        blocked: usize,
    },
    Joined {
        user: UserId,
        group: GroupId,
        members: usize,
    },
    Left {
        user: UserId,
        group: GroupId,
        was_member: bool,
    },
    Blocked {
        by: UserId,
        whom: UserId,
    },
    Unblocked {
        by: UserId,
        whom: UserId,
    },
    Who {
        user: UserId,
        online: usize,
    },
    Ping {
        user: UserId,
    },
    /// A resuming client confirmed every message up to `upto`.
    /// `upto` is None when the connection did not resume (v1): it has no
    /// window, so its `received` does nothing.
    Received {
        user: UserId,
        upto: Option<u64>,
        /// Messages that left the window.
        released: usize,
        /// Receipts sent to senders who asked for one (and are online).
        receipts: usize,
    },
    Refused {
        user: UserId,
        code: ErrorCode,
        detail: String,
    },
    Shutdown {
        connections: usize,
    },
    /// v1.2: a tick's presence diff, built once and sent to every batched connection.
    PresenceDiff(DiffSummary),
    /// Cluster mode: a node stopped renewing its heartbeat and was swept.
    NodeLost {
        node: String,
        /// Users whose last device was there: announced offline.
        offline: Vec<UserId>,
        notified: usize,
    },
    /// Cluster mode: what another node routed here, carried out on this
    /// node's own sockets.
    Relayed {
        /// Whose devices it was for; for a presence broadcast, the user it is about.
        user: UserId,
        what: Relay,
        /// Connections on this node that got it.
        connections: usize,
        /// Chat messages that found none of the user's devices here any more,
        /// so went back to their queue.
        requeued: usize,
    },
}

/// What another node of a cluster asked this one to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relay {
    /// A frame for one user's devices here.
    ToUser,
    /// A presence frame for every device here but the user's own.
    ToEveryone,
    /// The user's queue got a message while they were online here: take it.
    TakeQueue,
}

impl<S: Structures> ChatCore<S> {
    pub fn new(structures: S, config: CoreConfig) -> Self {
        ChatCore {
            structures,
            config,
            next_message_id: 1,
            disk: Disk::Writable,
            epoch: String::new(),
            withheld: withheld::Withheld::default(),
            flushing: flushing::Flushing::default(),
            presence_batch: presence_batch::PresenceBatch::default(),
            held_sent: HashMap::new(),
        }
    }

    /// Names this run (the shell draws it at random, or loads it with the data file).
    pub fn set_epoch(&mut self, epoch: String) {
        self.epoch = epoch;
    }

    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// What the store says about the disk, before the next rule runs.
    pub fn set_disk(&mut self, disk: Disk) {
        self.disk = disk;
    }

    pub fn disk(&self) -> &Disk {
        &self.disk
    }

    pub fn config(&self) -> &CoreConfig {
        &self.config
    }

    /// Loads what durable mode saved: queues, groups, blocks, and the next id
    /// (never one that may have been used before the restart).
    pub fn restore(&mut self, state: &DurableState) {
        self.structures.restore(state);
        let highest = state
            .queues
            .iter()
            .flat_map(|(_, q)| q.iter().map(|m| m.id))
            .max()
            .unwrap_or(0);
        self.next_message_id = self
            .next_message_id
            .max(state.next_message_id)
            .max(highest + 1);
    }

    /// The id the next accepted message will get.
    pub fn next_message_id(&self) -> u64 {
        self.next_message_id
    }

    pub fn op_table(&self) -> OpTable {
        self.structures.op_table()
    }

    /// A consistent copy of everything, for `/inspect`. O(total state).
    pub fn snapshot(&self) -> Step<Snapshot> {
        Ok(Snapshot::new(
            self.structures.snapshot(QueueView::All)?,
            &self.structures.op_table(),
            self.structures.next_id(self.next_message_id)?,
        ))
    }

    /// `/inspect`'s document around structures read elsewhere (a cluster
    /// reads Redis for a view off the core's owner, then asks it for this).
    pub fn snapshot_of(&self, structures: StructuresSnapshot) -> Step<Snapshot> {
        Ok(Snapshot::new(
            structures,
            &self.structures.op_table(),
            self.structures.next_id(self.next_message_id)?,
        ))
    }

    /// The structures, for a view to read what only they know (a cluster
    /// node's own sockets). Rules never go around the core this way.
    pub fn structures(&self) -> &S {
        &self.structures
    }

    /// The five structures with only the ends of each deque, for the board:
    /// O(users + groups + blocks), however long the queues grow.
    pub fn snapshot_ends(&self, keep: usize) -> Step<StructuresSnapshot> {
        self.structures.snapshot(QueueView::Ends(keep))
    }

    /// Bytes held by the offline deques, as the memory budget counts them.
    pub fn queued_bytes(&self) -> Step<usize> {
        self.structures.queued_bytes()
    }

    /// The structures themselves, for the shell's upkeep of a backend (a
    /// cluster node registering its sockets again after Redis comes back).
    /// Rules never go around the core this way.
    pub fn structures_mut(&mut self) -> &mut S {
        &mut self.structures
    }

    /// Turns the event-log trace on or off (the board turns it on while watched).
    pub fn set_tracing(&mut self, on: bool) {
        self.config.trace = on;
    }
}
