//! Graceful shutdown: one [`CancellationToken`] everyone watches (the HTTP
//! listener, the dashboard, every connection's reader) and one
//! [`TaskTracker`] of connection tasks, so `run` can wait for their closing
//! handshakes, bounded by the grace period.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::connection::{close_frame, CLOSE_GOING_AWAY};
use super::hub::Hub;
use crate::core::{Event, Trace};

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

    /// Begins shutdown: tells every connection the server is going away (close
    /// code 1001), then waits up to `grace` for their tasks to finish.
    pub async fn begin(&self, hub: &Hub, grace: Duration) {
        // Under the core lock, so no connection registers between the flag and the closes.
        let connections = {
            let core = hub.core();
            self.token.cancel();
            core.all_connections()
        };
        if let Some(log) = &hub.log {
            log.event(
                Event::Shutdown {
                    connections: connections.len(),
                },
                Trace::new(false),
            );
        }
        for conn in connections {
            conn.outbox
                .close_after_pending(close_frame(CLOSE_GOING_AWAY, "server shutting down"));
        }
        self.tasks.close();
        let _ = tokio::time::timeout(grace, self.tasks.wait()).await;
    }
}
