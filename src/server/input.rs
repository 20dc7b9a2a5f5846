//! What reaches the core: every [`Input`] its owner (`owner.rs`) applies,
//! in the one order they arrive.

use tokio::sync::oneshot;

use super::backend::Core;
use super::conn::{Conn, Ending};
use crate::core::Relayed;
use crate::protocol::{Envelope, RequestError};

/// At most this many inputs the cluster's owner thread applies per wake:
/// enough to amortise the wake-up under load, few enough to keep `/inspect`'s
/// batch figures meaningful.
pub(crate) const MAX_BATCH: usize = 256;

/// How many inputs may wait for the cluster's owner thread. A reader that
/// finds the channel full waits, so a flood costs bounded memory however
/// slow Redis is. (In memory each reader applies or hands over its input
/// before it reads the next, and `Outbox::has_room` bounds what it sends.)
pub(crate) const CHANNEL_BOUND: usize = 4096;

/// A read-only look at the core for a view (`/inspect`, the board, the
/// dashboard): it copies what it needs and sends it back itself.
pub(crate) type Look = Box<dyn FnOnce(&Core) + Send>;

/// Everything that reaches the core, in the one order it is applied.
pub(crate) enum Input {
    /// A socket was upgraded: register it and flush its queue. When its
    /// name was just claimed, the name's devices without the token go first.
    Connect { conn: Conn, claimed_now: bool },
    /// A request parsed from one of this node's sockets.
    Request {
        conn: Conn,
        envelope: Envelope,
        now_ms: u64,
    },
    /// A frame the reader refused before routing (bad JSON, the rate limit).
    Refuse { conn: Conn, error: RequestError },
    /// The writer took the last of a v1 flush the core charged to the
    /// budget (see `core/flushing.rs`): the charge goes.
    Flushed { conn: Conn },
    /// A socket's reader ended: answer if the ending needs it, then leave.
    Close { conn: Conn, ending: Ending },
    /// v1.2: the presence tick: the batched connections get the changes since the last.
    PresenceTick,
    /// Cluster: what another node published to this one in one PUBLISH,
    /// applied together.
    Relayed(Vec<Relayed>),
    /// Cluster: a node's heartbeat expired; its users go offline.
    NodeLost(String),
    /// Cluster: this node was declared dead, or its subscription broke (said
    /// why): it closes every socket (1012, with `reason`, the cause in a few
    /// words for the client) and registers again.
    Fence { reason: &'static str, why: String },
    /// Cluster: Redis restarted and this node subscribed again: held messages
    /// published to it before that never arrived, so it closes the sockets
    /// that resumed (1012), which resume and get them. A v1 socket missed
    /// nothing: a PUBLISH that reached no subscriber was queued by its sender.
    FenceResuming(String),
    /// Cluster: nothing to apply; wakes the owner so that it registers this
    /// node's sockets again now that Redis answers (see [`Hub::resync_wanted`]).
    Wake,
    /// Shutdown: close every socket with 1001 and put back what it was not sent.
    CloseAll(oneshot::Sender<()>),
    /// A view's look at the core.
    Look(Look),
    /// The server has stopped: hand the core back.
    Stop,
}
