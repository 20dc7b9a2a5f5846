//! One WebSocket connection as the rest of the server sees it: who it is,
//! its outbox, and the close codes it can end with. A leaf: it imports no
//! other file of the server but the outbox, so every file that handles a
//! connection can name it without importing the code that serves it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::outbox::Outbox;
use crate::core::{ConnDetail, ConnHandle, ConnId};
use crate::names::UserId;

pub(crate) const CLOSE_GOING_AWAY: u16 = 1001;
/// RFC 6455: a text frame that is not valid UTF-8.
pub(crate) const CLOSE_INVALID_DATA: u16 = 1007;
pub(crate) const CLOSE_POLICY: u16 = 1008;
pub(crate) const CLOSE_TOO_BIG: u16 = 1009;
/// Service restart: a cluster node that was declared dead (paused or cut off
/// past its heartbeat) or missed what was published to it closes its sockets,
/// so that they reconnect and get what waits for them.
pub(crate) const CLOSE_RESTART: u16 = 1012;
/// Try again later: a cluster node whose Redis cannot be reached.
pub(crate) const CLOSE_TRY_AGAIN: u16 = 1013;
/// Application close code (4000-4999 are free for applications): no pong in time.
pub(crate) const CLOSE_IDLE: u16 = 4000;
/// The name was just claimed with a token this connection does not have.
pub(crate) const CLOSE_CLAIMED: u16 = 4001;

pub(crate) fn close_frame(code: u16, reason: &'static str) -> CloseFrame {
    CloseFrame {
        code: code.into(),
        reason: Utf8Bytes::from_static(reason),
    }
}

/// One WebSocket connection, as stored in `active_connections`.
pub struct Connection {
    pub id: ConnId,
    pub user: UserId,
    pub remote: SocketAddr,
    pub connected_at_ms: u64,
    pub outbox: Outbox,
    /// It presented the token of a claimed name (false: the name was open).
    pub authenticated: bool,
    /// v1.1: it connected with `?resume=N`, so what is routed to it is held.
    pub resume: Option<Resume>,
    /// v1.2: it connected with `?presence=batched`: one diff per tick.
    pub presence_batched: bool,
    /// Cluster mode: where its registration falls in the cluster-wide order
    /// of presence changes (set by the Redis backend; 0 otherwise).
    pub presence_order: AtomicU64,
}

/// What the client asked for in its upgrade's query, checked before it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Asked {
    /// v1.1 `?resume=N&epoch=E`.
    pub resume: Option<Resume>,
    /// v1.2 `?presence=batched`.
    pub presence_batched: bool,
}

/// `?resume=N&epoch=E`: the highest id the client has, and the run it is from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    pub from: u64,
    pub epoch: Option<String>,
}

/// The handle the core stores: cloning it is one atomic increment.
pub type Conn = Arc<Connection>;

impl ConnHandle for Conn {
    fn id(&self) -> ConnId {
        self.id
    }

    fn detail(&self) -> ConnDetail {
        ConnDetail {
            id: self.id,
            remote: Some(self.remote.to_string()),
            connected_at_ms: Some(self.connected_at_ms),
            unsent: Some(self.outbox.len()),
            node: None,
        }
    }

    fn resume(&self) -> Option<u64> {
        self.resume.as_ref().map(|r| r.from)
    }

    fn resume_epoch(&self) -> Option<&str> {
        self.resume.as_ref()?.epoch.as_deref()
    }

    fn presence_batched(&self) -> bool {
        self.presence_batched
    }
}

impl crate::cluster::LocalDevice for Conn {
    fn peer(&self) -> (String, u64) {
        (self.remote.to_string(), self.connected_at_ms)
    }

    fn registered_at(&self) -> u64 {
        self.presence_order.load(Ordering::Relaxed)
    }

    fn set_registered_at(&self, order: u64) {
        self.presence_order.store(order, Ordering::Relaxed);
    }
}

/// How a connection's reader ended, which decides what happens to its
/// unsent frames.
pub(crate) enum Ending {
    /// The client closed, the socket failed, or the server is shutting down.
    Gone,
    /// The client sent a message over the size limit: answer, then close with 1009.
    TooLarge(usize),
    /// Nothing heard, not even a pong, for the idle timeout: close with 4000.
    Idle(Duration),
    /// A text frame that is not UTF-8: answer `bad_json`, then close with 1007.
    BadUtf8,
}
