//! The interface to the seed's five structures, as routing uses them.
//!
//! Routing (`routing.rs`) only ever calls these methods, so another backend,
//! such as Redis for a multi-server deployment, can implement this trait and
//! reuse every routing rule unchanged. Each method is one instrumented
//! operation: it counts itself and, when tracing, records itself.

use std::borrow::Cow;

use crate::core::journal::{Change, DurableState};
use crate::core::ops::{OpTable, Trace};
use crate::core::snapshot::{ConnDetail, ConnId, QueueView, StructuresSnapshot};
use crate::names::{GroupId, UserId};
use crate::protocol::Message;

/// What `active_connections` stores per device. The server stores the handle
/// that reaches the socket's writer; unit tests store a bare [`ConnId`].
pub trait ConnHandle: Clone {
    fn id(&self) -> ConnId;

    /// Where and since when, for `/inspect`; a bare id knows neither.
    fn detail(&self) -> ConnDetail {
        ConnDetail {
            id: self.id(),
            ..ConnDetail::default()
        }
    }

    /// v1.1: the position this device resumed from (`?resume=N`); None for a
    /// v1 device. While a user has a resuming device, what is routed to them is held.
    fn resume(&self) -> Option<u64> {
        None
    }

    /// The epoch the client's position belongs to (`&epoch=E`), when it said.
    fn resume_epoch(&self) -> Option<&str> {
        None
    }

    /// v1.2: the connection asked for batched presence (`?presence=batched`):
    /// it gets one `presence_diff` per tick instead of a frame per change.
    fn presence_batched(&self) -> bool {
        false
    }

    /// False for a handle that stands for devices on another node of a
    /// cluster (`serve --redis`): a frame sent to it is published there.
    fn is_local(&self) -> bool {
        true
    }

    /// In a cluster, when this device was registered in the cluster-wide
    /// order of presence changes: a presence frame relayed from another node
    /// is only for devices registered before the change (the others saw it in
    /// their welcome). One server: 0, every device.
    fn presence_order(&self) -> u64 {
        0
    }
}

/// A device for tests and tools: an id, and whether it resumed (and from where).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Device {
    pub id: ConnId,
    pub resume: Option<u64>,
}

impl ConnHandle for Device {
    fn id(&self) -> ConnId {
        self.id
    }

    fn resume(&self) -> Option<u64> {
        self.resume
    }
}

impl ConnHandle for ConnId {
    fn id(&self) -> ConnId {
        *self
    }
}

/// The offline deques' bytes as the memory budget sees them (see
/// [`crate::core::queued_cost`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueuedBytes {
    /// Held by every deque together.
    pub all: usize,
    /// Of those, the bytes of one sender's messages.
    pub sender: usize,
}

/// A backend step that could not be carried out: a cluster's Redis did not
/// answer in time. The rule stops at the first one, so nothing it would have
/// decided afterwards is sent; what it wrote before stays written (see
/// docs/architecture.md, "When Redis fails"). In memory it never happens.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unavailable(pub String);

/// What a backend step answers: the value, or why it could not be had.
pub type Step<T> = Result<T, Unavailable>;

/// What routing a direct message reads before it decides, taken in one step
/// (see [`Structures::direct_facts`]).
pub struct DirectFacts<'a, C: Clone> {
    /// The memory budget's counters, for the sender.
    pub queued: QueuedBytes,
    /// Does the recipient block the sender?
    pub blocked: bool,
    /// The recipient's devices (empty when offline).
    pub devices: Cow<'a, [C]>,
    /// The message's id, when the backend issued it in the same step (Redis
    /// does, in the same round trip: a refused request then leaves a gap).
    pub id: Option<u64>,
}

/// What [`Structures::keep`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kept {
    /// The message's id: the one it came with, or a higher one.
    pub id: u64,
    /// The backend delivered the kept copies to the users' devices itself.
    pub sent: bool,
}

/// Every method is one counted operation, or one step a rule takes, and
/// answers [`Step`]: a rule never acts on a value made up for a failure.
/// Reads take `&self`; a method that also keeps what it learnt for the next
/// one (a cluster's presence order) takes `&mut self`, so no backend needs
/// interior mutability.
pub trait Structures {
    type Conn: ConnHandle;

    // active_connections: HashMap<UserId, Vec<ConnHandle>>
    /// The user's open connections (empty when offline). O(1). In memory a
    /// borrowed slice; a cluster builds the list (its own sockets, and one
    /// handle per other node that has some of the user's devices).
    fn connections(&self, user: &UserId, trace: &mut Trace) -> Step<Cow<'_, [Self::Conn]>>;
    /// The user's devices on this node only: what a frame relayed from another
    /// node of a cluster can reach. In memory, every device is local.
    fn local_connections(&self, user: &UserId, trace: &mut Trace) -> Step<Cow<'_, [Self::Conn]>> {
        self.connections(user, trace)
    }
    /// Every device of every user in `users`, for a presence broadcast. In a
    /// cluster, one handle per other node stands for all of its devices.
    fn devices_of_all(&mut self, users: &[UserId], trace: &mut Trace) -> Step<Vec<Self::Conn>> {
        let mut all = Vec::new();
        for user in users {
            all.extend(self.connections(user, trace)?.iter().cloned());
        }
        Ok(all)
    }
    /// Adds a device; returns how many the user now has. O(1) amortised.
    fn add_connection(&mut self, user: &UserId, conn: Self::Conn, trace: &mut Trace)
        -> Step<usize>;
    /// Removes a device; returns how many remain and its handle, or `None`
    /// if it was not there. O(d).
    fn remove_connection(
        &mut self,
        user: &UserId,
        id: ConnId,
        trace: &mut Trace,
    ) -> Step<Option<(usize, Self::Conn)>>;
    /// Every open connection on this node, for shutdown and relayed presence.
    /// O(n). Never a round trip (a cluster keeps its own sockets itself), so
    /// it cannot fail.
    fn all_connections(&self, trace: &mut Trace) -> Vec<Self::Conn>;

    // presence: BTreeSet<UserId>. Routing never asks "is bob online?" here:
    // it needs bob's sockets anyway, and `connections` answers both in one look-up.
    /// Returns true if the user was not online before.
    fn set_online(&mut self, user: &UserId, trace: &mut Trace) -> Step<bool>;
    /// Returns true if the user was online before.
    fn set_offline(&mut self, user: &UserId, trace: &mut Trace) -> Step<bool>;
    /// Every online user, in name order: what a welcome and `who` list. O(n).
    fn online_users(&mut self, trace: &mut Trace) -> Step<Vec<UserId>>;

    // offline_messages: HashMap<UserId, VecDeque<Message>>
    fn queued_len(&self, user: &UserId, trace: &mut Trace) -> Step<usize>;
    /// Appends to the user's deque; returns its new length. O(1) amortised.
    fn queue_push_back(
        &mut self,
        user: &UserId,
        message: Message,
        trace: &mut Trace,
    ) -> Step<usize>;
    /// Takes the oldest message. O(1). An emptied deque is removed from the map.
    fn queue_pop_front(&mut self, user: &UserId, trace: &mut Trace) -> Step<Option<Message>>;
    /// Takes the whole deque, oldest first: the flush on connect. One
    /// `pop_front` per message, O(k). A cluster does it in one atomic script,
    /// so two devices connecting at once on two nodes cannot both take a message.
    fn queue_take_all(&mut self, user: &UserId, trace: &mut Trace) -> Step<Vec<Message>> {
        let queued = self.queued_len(user, trace)?;
        let mut all = Vec::with_capacity(queued);
        for _ in 0..queued {
            match self.queue_pop_front(user, trace)? {
                Some(message) => all.push(message),
                None => break,
            }
        }
        Ok(all)
    }
    /// Copies of the held messages with id > `after`, oldest first, left in
    /// place: a resume re-sends without releasing. O(log n + k) for k copied.
    fn queue_held_after(&self, user: &UserId, after: u64, trace: &mut Trace) -> Step<Vec<Message>>;
    /// Pops every message with id <= `upto` from the front (one `pop_front`
    /// each, O(1)) and moves the released position up to `upto`.
    fn queue_release(&mut self, user: &UserId, upto: u64, trace: &mut Trace) -> Step<Vec<Message>>;
    /// Keeps a copy of an accepted message in the deque of each of `users`
    /// (queued for an offline user, held for a resuming one), in one step.
    /// In memory: one `push_back` each, and the core sends the live copies.
    /// A cluster runs one script: it may give the message a higher id, so
    /// that each user's deque, and what each of their devices is sent, stay in
    /// id order across nodes (a cumulative `received` needs that), and it
    /// publishes every copy itself, to each node with devices of that user:
    /// the core then sends none of them. `except`: the sending device, which
    /// never gets its own group message.
    fn keep(
        &mut self,
        message: Message,
        users: &[UserId],
        _except: Option<ConnId>,
        trace: &mut Trace,
    ) -> Step<Kept> {
        // The core sends the live copies itself, so no device is skipped here.
        for user in users {
            self.queue_push_back(user, message.clone(), trace)?;
        }
        Ok(Kept {
            id: message.id,
            sent: false,
        })
    }
    /// Puts back a message a closing device never got, in id order; false
    /// when it is still held or was already released. O(1) at the back.
    fn queue_put_back(&mut self, user: &UserId, message: Message, trace: &mut Trace) -> Step<bool>;

    // group_members: HashMap<GroupId, HashSet<UserId>>
    /// Returns the group's size afterwards; creates the group if new.
    fn join_group(&mut self, group: &GroupId, user: &UserId, trace: &mut Trace) -> Step<usize>;
    /// Returns true if the user was a member. An emptied group is removed.
    fn leave_group(&mut self, group: &GroupId, user: &UserId, trace: &mut Trace) -> Step<bool>;
    /// False also when the group does not exist. O(1).
    fn is_member(&self, group: &GroupId, user: &UserId, trace: &mut Trace) -> Step<bool>;
    /// Every member, in no particular order. O(m).
    fn group_members(&self, group: &GroupId, trace: &mut Trace) -> Step<Vec<UserId>>;
    /// Members of one group (0 when it does not exist), for `--max-group-size`. O(1).
    fn group_len(&self, group: &GroupId, trace: &mut Trace) -> Step<usize>;
    /// How many groups exist, for `--max-groups`. O(1).
    fn group_count(&self, trace: &mut Trace) -> Step<usize>;

    // blocked_users: HashMap<UserId, HashSet<UserId>>, "whom each user blocks"
    fn block(&mut self, by: &UserId, whom: &UserId, trace: &mut Trace) -> Step<bool>;
    fn unblock(&mut self, by: &UserId, whom: &UserId, trace: &mut Trace) -> Step<bool>;
    /// Does `by` block `whom`? Asked once per delivered message. O(1).
    fn is_blocked(&self, by: &UserId, whom: &UserId, trace: &mut Trace) -> Step<bool>;
    /// How many users `by` blocks, for `--max-blocked`. O(1).
    fn blocked_len(&self, by: &UserId, trace: &mut Trace) -> Step<usize>;

    /// The first step of routing a direct message from `from` to `to`: the
    /// budget, the block and the devices, each counted and narrated as its
    /// own operation, in that order. A backend whose every read is a round
    /// trip (Redis) reads them for a whole batch of rules in one, and issues
    /// the id there too.
    fn direct_facts(
        &self,
        from: &UserId,
        to: &UserId,
        trace: &mut Trace,
    ) -> Step<DirectFacts<'_, Self::Conn>> {
        Ok(DirectFacts {
            queued: self.queued_bytes_of(from)?,
            blocked: self.is_blocked(to, from, trace)?,
            devices: self.connections(to, trace)?,
            id: None,
        })
    }

    // The memory budget's bookkeeping: O(1) answers, not structure operations
    // (they are not counted).
    /// Bytes held by every offline deque together (see [`crate::core::queued_cost`]).
    fn queued_bytes(&self) -> Step<usize>;
    /// What the budget needs before `sender`'s next message: the bytes of
    /// every deque, and of `sender`'s messages in them, read together (one
    /// round trip on Redis), afresh each time: nothing read for one check is
    /// kept for the next.
    fn queued_bytes_of(&self, sender: &UserId) -> Step<QueuedBytes>;
    /// How many groups `user` is a member of.
    fn groups_of(&self, user: &UserId) -> Step<usize>;

    /// The id for the next accepted message, when the core's own counter says
    /// `next`. One server issues `next`; a cluster node takes one it reserved
    /// from the counter in Redis, so ids stay unique across its nodes.
    fn issue_id(&self, next: u64, _trace: &mut Trace) -> Step<u64> {
        Ok(next)
    }
    /// The id the next message will get, when the core's own counter (the
    /// highest id this node issued or restored, plus one) says `next`.
    fn next_id(&self, next: u64) -> Step<u64> {
        Ok(next)
    }
    /// A cluster node stopped renewing its heartbeat: its devices leave
    /// `active_connections`; returns the users who left `presence` with them.
    /// One server has no other node: nothing to do.
    fn sweep_node(&mut self, _node: &str, _trace: &mut Trace) -> Step<Vec<UserId>> {
        Ok(Vec::new())
    }
    /// A presence change relayed from another node of a cluster, about
    /// `about`, is news here: this node has not shown its devices that change
    /// or a later one (and from now on, it has). One server relays nothing:
    /// always news.
    fn presence_is_news(&mut self, _about: &UserId, _order: u64) -> bool {
        true
    }

    /// The durable changes made since the last call (see `core::journal`).
    /// Called at the end of every rule.
    fn take_changes(&mut self) -> Vec<Change>;
    /// Loads durable state into empty structures (not counted: it is not routing).
    fn restore(&mut self, state: &DurableState);

    /// Every operation counter.
    fn op_table(&self) -> OpTable;
    /// A consistent copy of all five structures, each deque whole or only its
    /// ends (see [`QueueView`]). Not counted: observing is not routing.
    fn snapshot(&self, view: QueueView) -> Step<StructuresSnapshot>;
}
