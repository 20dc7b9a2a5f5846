//! Graceful shutdown: one [`CancellationToken`] everyone watches (the HTTP
//! listener, the dashboard, every connection's reader) and one
//! [`TaskTracker`] of connection tasks, so `run` can wait for their closing
//! handshakes, bounded by the grace period.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::connection::{close_frame, CLOSE_GOING_AWAY};
use super::deliver::deliver;
use super::hub::{Conn, Hub};
use super::outbox::unsent_messages;
use crate::core::{Event, Trace};
use crate::protocol::Message;

#[derive(Default)]
pub(crate) struct Shutdown {
    token: CancellationToken,
    tasks: TaskTracker,
}

impl Shutdown {
    /// True once shutdown has begun: new upgrades are refused.
    pub fn has_begun(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves when shutdown begins.
    pub fn begun(&self) -> impl Future<Output = ()> + Send + 'static {
        self.token.clone().cancelled_owned()
    }

    /// The tracker connection tasks register with (`track_future`), so
    /// shutdown can wait for them.
    pub fn tasks(&self) -> TaskTracker {
        self.tasks.clone()
    }

    /// Begins shutdown: every connection is closed with 1001 at once, and
    /// every frame not known to be written to it (its outbox, and the batch a
    /// stuck write holds) goes back to its user's offline deque, so with
    /// `--data` the store writes it before the server exits. Then waits up to
    /// `grace` for the connections' tasks to finish.
    pub async fn begin(&self, hub: &Hub, grace: Duration) {
        self.close_all(hub);
        self.tasks.close();
        let _ = tokio::time::timeout(grace, self.tasks.wait()).await;
    }

    /// Closes every connection, putting back what was not written (see `begin`).
    fn close_all(&self, hub: &Hub) {
        let mut core = hub.core();
        // Under the core lock, so no connection registers between the flag and the closes.
        self.token.cancel();
        let mut connections: Vec<Conn> = core
            .all_connections()
            .into_iter()
            .filter_map(|h| h.local().cloned())
            .collect();
        if let Some(log) = &hub.log {
            log.event(
                Event::Shutdown {
                    connections: connections.len(),
                },
                Trace::new(false),
            );
        }
        // A user's devices side by side: a message routed to two devices is
        // one message, and it goes back once, oldest first, with the last device.
        connections.sort_by(|a, b| a.user.cmp(&b.user).then(a.id.cmp(&b.id)));
        // Every outbox is closed first, so the presence `offline` of one user
        // is not pushed to another who is about to get 1001 anyway.
        let unsent: Vec<Vec<Message>> = connections
            .iter()
            .map(|conn| {
                let frames = conn.outbox.take_all_and_close(Some(close_frame(
                    CLOSE_GOING_AWAY,
                    "server shutting down",
                )));
                unsent_messages(&frames)
            })
            .collect();
        let mut pending: Vec<Message> = Vec::new();
        for (i, (conn, mine)) in connections.iter().zip(unsent).enumerate() {
            pending.extend(mine);
            let last_device = connections
                .get(i + 1)
                .is_none_or(|next| next.user != conn.user);
            let undelivered = if last_device {
                pending.sort_by_key(|m| m.id);
                pending.dedup_by_key(|m| m.id);
                std::mem::take(&mut pending)
            } else {
                Vec::new()
            };
            let outcome = core.disconnect(&conn.user, conn.id, undelivered);
            deliver(&mut core, outcome, hub);
        }
    }
}
