//! The structures a server routes with: in memory (one process, the
//! default), or shared through Redis by the nodes of a cluster
//! (`serve --redis`). One enum, so the core is compiled once for both and
//! the in-memory path pays one predictable branch per operation.

use std::borrow::Cow;

use super::conn::Conn;
use crate::cluster::RedisStructures;
use crate::core::{
    Change, ConnId, DirectFacts, DurableState, Kept, MemoryStructures, OpTable, QueueView,
    QueuedBytes, Step, Structures, StructuresSnapshot, Trace,
};
use crate::names::{GroupId, UserId};
use crate::protocol::Message;

/// What `active_connections` holds on a server: one of this node's sockets,
/// or (in a cluster) a stand-in for a user's devices on another node.
pub type Handle = crate::cluster::Handle<Conn>;
pub use crate::cluster::Remote;

/// The core as a server runs it: the rules over whichever backend it has.
pub(crate) type Core = crate::core::ChatCore<Backend>;

// One per server, never moved after start: the in-memory structures stay
// inline (no pointer to follow on the default path); Redis's are boxed.
#[allow(clippy::large_enum_variant)]
pub enum Backend {
    Memory(MemoryStructures<Handle>),
    Redis(Box<RedisStructures<Conn>>),
}

impl Backend {
    /// A view's snapshot read from Redis off the owner: this node's sockets
    /// add what they have not been sent. In memory the snapshot has it already.
    pub fn add_unsent(&self, snapshot: &mut StructuresSnapshot) {
        if let Backend::Redis(redis) = self {
            redis.add_unsent(snapshot);
        }
    }
}

/// Each method goes to whichever backend this server runs.
macro_rules! each {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            Backend::Memory($s) => $e,
            Backend::Redis($s) => $e,
        }
    };
}

impl Structures for Backend {
    type Conn = Handle;

    fn connections(&self, user: &UserId, trace: &mut Trace) -> Step<Cow<'_, [Handle]>> {
        each!(self, s => s.connections(user, trace))
    }
    fn local_connections(&self, user: &UserId, trace: &mut Trace) -> Step<Cow<'_, [Handle]>> {
        each!(self, s => s.local_connections(user, trace))
    }
    fn devices_of_all(&mut self, users: &[UserId], trace: &mut Trace) -> Step<Vec<Handle>> {
        each!(self, s => s.devices_of_all(users, trace))
    }
    fn add_connection(&mut self, user: &UserId, conn: Handle, trace: &mut Trace) -> Step<usize> {
        each!(self, s => s.add_connection(user, conn, trace))
    }
    fn remove_connection(
        &mut self,
        user: &UserId,
        id: ConnId,
        trace: &mut Trace,
    ) -> Step<Option<(usize, Handle)>> {
        each!(self, s => s.remove_connection(user, id, trace))
    }
    fn all_connections(&self, trace: &mut Trace) -> Vec<Handle> {
        each!(self, s => s.all_connections(trace))
    }
    fn set_online(&mut self, user: &UserId, trace: &mut Trace) -> Step<bool> {
        each!(self, s => s.set_online(user, trace))
    }
    fn set_offline(&mut self, user: &UserId, trace: &mut Trace) -> Step<bool> {
        each!(self, s => s.set_offline(user, trace))
    }
    fn online_users(&mut self, trace: &mut Trace) -> Step<Vec<UserId>> {
        each!(self, s => s.online_users(trace))
    }
    fn queued_len(&self, user: &UserId, trace: &mut Trace) -> Step<usize> {
        each!(self, s => s.queued_len(user, trace))
    }
    fn queue_push_back(
        &mut self,
        user: &UserId,
        message: Message,
        trace: &mut Trace,
    ) -> Step<usize> {
        each!(self, s => s.queue_push_back(user, message, trace))
    }
    fn queue_pop_front(&mut self, user: &UserId, trace: &mut Trace) -> Step<Option<Message>> {
        each!(self, s => s.queue_pop_front(user, trace))
    }
    fn queue_take_all(&mut self, user: &UserId, trace: &mut Trace) -> Step<Vec<Message>> {
        each!(self, s => s.queue_take_all(user, trace))
    }
    fn queue_held_after(&self, user: &UserId, after: u64, trace: &mut Trace) -> Step<Vec<Message>> {
        each!(self, s => s.queue_held_after(user, after, trace))
    }
    fn queue_release(&mut self, user: &UserId, upto: u64, trace: &mut Trace) -> Step<Vec<Message>> {
        each!(self, s => s.queue_release(user, upto, trace))
    }
    fn queue_put_back(&mut self, user: &UserId, message: Message, trace: &mut Trace) -> Step<bool> {
        each!(self, s => s.queue_put_back(user, message, trace))
    }
    fn keep(
        &mut self,
        message: Message,
        users: &[UserId],
        except: Option<ConnId>,
        trace: &mut Trace,
    ) -> Step<Kept> {
        each!(self, s => s.keep(message, users, except, trace))
    }
    fn join_group(&mut self, group: &GroupId, user: &UserId, trace: &mut Trace) -> Step<usize> {
        each!(self, s => s.join_group(group, user, trace))
    }
    fn leave_group(&mut self, group: &GroupId, user: &UserId, trace: &mut Trace) -> Step<bool> {
        each!(self, s => s.leave_group(group, user, trace))
    }
    fn is_member(&self, group: &GroupId, user: &UserId, trace: &mut Trace) -> Step<bool> {
        each!(self, s => s.is_member(group, user, trace))
    }
    fn group_members(&self, group: &GroupId, trace: &mut Trace) -> Step<Vec<UserId>> {
        each!(self, s => s.group_members(group, trace))
    }
    fn group_len(&self, group: &GroupId, trace: &mut Trace) -> Step<usize> {
        each!(self, s => s.group_len(group, trace))
    }
    fn group_count(&self, trace: &mut Trace) -> Step<usize> {
        each!(self, s => s.group_count(trace))
    }
    fn block(&mut self, by: &UserId, whom: &UserId, trace: &mut Trace) -> Step<bool> {
        each!(self, s => s.block(by, whom, trace))
    }
    fn unblock(&mut self, by: &UserId, whom: &UserId, trace: &mut Trace) -> Step<bool> {
        each!(self, s => s.unblock(by, whom, trace))
    }
    fn is_blocked(&self, by: &UserId, whom: &UserId, trace: &mut Trace) -> Step<bool> {
        each!(self, s => s.is_blocked(by, whom, trace))
    }
    fn blocked_len(&self, by: &UserId, trace: &mut Trace) -> Step<usize> {
        each!(self, s => s.blocked_len(by, trace))
    }
    fn direct_facts(
        &self,
        from: &UserId,
        to: &UserId,
        trace: &mut Trace,
    ) -> Step<DirectFacts<'_, Handle>> {
        each!(self, s => s.direct_facts(from, to, trace))
    }
    fn queued_bytes(&self) -> Step<usize> {
        each!(self, s => s.queued_bytes())
    }
    fn queued_bytes_of(&self, sender: &UserId) -> Step<QueuedBytes> {
        each!(self, s => s.queued_bytes_of(sender))
    }
    fn groups_of(&self, user: &UserId) -> Step<usize> {
        each!(self, s => s.groups_of(user))
    }
    fn issue_id(&self, next: u64, trace: &mut Trace) -> Step<u64> {
        each!(self, s => s.issue_id(next, trace))
    }
    fn next_id(&self, next: u64) -> Step<u64> {
        each!(self, s => s.next_id(next))
    }
    fn sweep_node(&mut self, node: &str, trace: &mut Trace) -> Step<Vec<UserId>> {
        each!(self, s => s.sweep_node(node, trace))
    }
    fn presence_is_news(&mut self, about: &UserId, order: u64) -> bool {
        each!(self, s => s.presence_is_news(about, order))
    }
    fn take_changes(&mut self) -> Vec<Change> {
        each!(self, s => s.take_changes())
    }
    fn restore(&mut self, state: &DurableState) {
        each!(self, s => s.restore(state))
    }
    fn op_table(&self) -> OpTable {
        each!(self, s => s.op_table())
    }
    fn snapshot(&self, view: QueueView) -> Step<StructuresSnapshot> {
        each!(self, s => s.snapshot(view))
    }
}
