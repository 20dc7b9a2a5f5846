//! Graceful shutdown: one [`CancellationToken`] everyone watches (the HTTP
//! listener, the dashboard, every connection's reader) and one
//! [`TaskTracker`] of connection tasks, so `run` can wait for their closing
//! handshakes, bounded by the grace period. Closing the sockets themselves
//! is the core owner's job (`owner.rs`, `close_all`), in its one order.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

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

    /// Begins shutdown. The core's owner calls it, in the same step as
    /// closing every socket, so no connection registers in between.
    pub fn cancel(&self) {
        self.token.cancel();
    }

    /// The tracker connection tasks register with (`track_future`), so
    /// shutdown can wait for them.
    pub fn tasks(&self) -> TaskTracker {
        self.tasks.clone()
    }

    /// Waits up to `grace` for every connection's task to finish.
    pub async fn wait(&self, grace: Duration) {
        self.tasks.close();
        let _ = tokio::time::timeout(grace, self.tasks.wait()).await;
    }
}
