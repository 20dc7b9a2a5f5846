//! A device as a cluster node's `active_connections` holds it: one of this
//! node's sockets, or a stand-in for a user's devices on another node. A
//! frame sent to a stand-in is published on that node's channel, and that
//! node writes it to its own sockets. Generic over the local socket type, so
//! the cluster needs nothing from the server that serves the sockets.

use std::sync::Arc;

use crate::core::{ConnDetail, ConnHandle, ConnId};
use crate::names::UserId;

/// What the cluster needs to know of one of this node's sockets.
pub trait LocalDevice: ConnHandle {
    /// The peer's address and the connect time (ms), kept in Redis for `/inspect`.
    fn peer(&self) -> (String, u64);
    /// Where its registration falls in the cluster-wide order of presence
    /// changes: a change relayed from another node goes only to devices
    /// registered before it.
    fn registered_at(&self) -> u64;
    fn set_registered_at(&self, order: u64);
}

/// What `active_connections` holds on a server: one of this node's sockets,
/// or (in a cluster) a stand-in for a user's devices on another node. A frame
/// sent to a stand-in is published on that node's channel, and that node
/// writes it to its own sockets.
pub enum Handle<L> {
    Local(L),
    Remote(Arc<Remote>),
}

// Not derived: a derive would ask `Remote: Clone` and `L: Clone` both.
impl<L: Clone> Clone for Handle<L> {
    fn clone(&self) -> Self {
        match self {
            Handle::Local(l) => Handle::Local(l.clone()),
            Handle::Remote(r) => Handle::Remote(r.clone()),
        }
    }
}

/// Devices on another node of the cluster.
pub struct Remote {
    /// Unique among handles (high bit set); not a socket's id.
    pub id: ConnId,
    pub node: Arc<str>,
    /// Whose devices there.
    pub user: UserId,
    /// A device of the user there resumed (v1.1): what is routed to them is held.
    pub resuming: bool,
}

impl<L> Handle<L> {
    /// This node's socket, if it is one.
    pub fn local(&self) -> Option<&L> {
        match self {
            Handle::Local(conn) => Some(conn),
            Handle::Remote(_) => None,
        }
    }
}

impl<L: LocalDevice> ConnHandle for Handle<L> {
    fn id(&self) -> ConnId {
        match self {
            Handle::Local(conn) => conn.id(),
            Handle::Remote(remote) => remote.id,
        }
    }

    fn detail(&self) -> ConnDetail {
        match self {
            Handle::Local(conn) => conn.detail(),
            Handle::Remote(remote) => ConnDetail {
                id: remote.id,
                node: Some(remote.node.to_string()),
                ..ConnDetail::default()
            },
        }
    }

    fn resume(&self) -> Option<u64> {
        match self {
            Handle::Local(conn) => conn.resume(),
            // Its position is that node's business; here only "it holds" matters.
            Handle::Remote(remote) => remote.resuming.then_some(0),
        }
    }

    fn resume_epoch(&self) -> Option<&str> {
        match self {
            Handle::Local(conn) => conn.resume_epoch(),
            Handle::Remote(_) => None,
        }
    }

    fn is_local(&self) -> bool {
        matches!(self, Handle::Local(_))
    }

    fn presence_batched(&self) -> bool {
        match self {
            Handle::Local(conn) => conn.presence_batched(),
            Handle::Remote(_) => false,
        }
    }

    fn presence_order(&self) -> u64 {
        match self {
            Handle::Local(conn) => conn.registered_at(),
            Handle::Remote(_) => 0,
        }
    }
}
