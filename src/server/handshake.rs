//! The listener: every accepted TCP connection must become a WebSocket (or
//! finish its plain HTTP request) within the handshake timeout.
//!
//! Without it, a client could open thousands of TCP connections and send
//! nothing, or half a request, and hold a file descriptor each for ever: the
//! connection limits only count connections that reached the upgrade. The
//! deadline is checked when the connection waits to read, so a silent one is
//! closed when it passes; once the upgrade is accepted it is switched off, and
//! the WebSocket's own idle timeout (pings) takes over.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Sleep;

/// Who is on the other end, and a switch the upgrade handler turns on.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    upgraded: Arc<AtomicBool>,
}

impl Peer {
    /// The upgrade was accepted: the handshake deadline no longer applies.
    pub fn upgraded(&self) {
        self.upgraded.store(true, Ordering::Relaxed);
    }
}

impl Connected<IncomingStream<'_, GuardedListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, GuardedListener>) -> Self {
        stream.remote_addr().clone()
    }
}

/// A TCP listener whose connections carry the handshake deadline.
pub struct GuardedListener {
    inner: TcpListener,
    timeout: Option<Duration>,
}

impl GuardedListener {
    pub fn new(inner: TcpListener, timeout: Option<Duration>) -> Self {
        GuardedListener { inner, timeout }
    }
}

impl Listener for GuardedListener {
    type Io = Guarded;
    type Addr = Peer;

    async fn accept(&mut self) -> (Guarded, Peer) {
        // axum's own accept loop: it retries (and backs off on) accept errors.
        let (tcp, addr) = Listener::accept(&mut self.inner).await;
        // No Nagle delay: chat frames are small and must leave at once, not wait
        // up to 40 ms for the peer's delayed ACK.
        let _ = tcp.set_nodelay(true);
        let upgraded = Arc::new(AtomicBool::new(false));
        let guarded = Guarded {
            tcp,
            deadline: self.timeout.map(|t| Box::pin(tokio::time::sleep(t))),
            upgraded: upgraded.clone(),
        };
        (guarded, Peer { addr, upgraded })
    }

    fn local_addr(&self) -> io::Result<Peer> {
        Ok(Peer {
            addr: self.inner.local_addr()?,
            upgraded: Arc::default(),
        })
    }
}

/// A TCP stream whose reads fail once the deadline has passed, unless the
/// connection was upgraded first.
pub struct Guarded {
    tcp: TcpStream,
    deadline: Option<Pin<Box<Sleep>>>,
    upgraded: Arc<AtomicBool>,
}

impl AsyncRead for Guarded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(deadline) = &mut this.deadline {
            if this.upgraded.load(Ordering::Relaxed) {
                this.deadline = None;
            } else if deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no WebSocket upgrade within the handshake timeout",
                )));
            }
        }
        Pin::new(&mut this.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}
