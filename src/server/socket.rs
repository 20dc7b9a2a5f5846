//! What a connection holds between writes, and how a long frame goes out.
//!
//! tungstenite writes each frame into a buffer of its own and keeps that
//! buffer's capacity for the connection's life, so one 130 KB welcome (the
//! online list of a class of 10,000) used to cost its connection 130 KB
//! until it closed. Two changes bound it:
//! - a text frame longer than [`FRAGMENT_BYTES`] goes out as one message in
//!   several WebSocket fragments (RFC 6455 §5.4), so tungstenite's buffer
//!   never holds more than one fragment;
//! - tungstenite hands every frame straight to [`LeanIo`], which gathers a
//!   batch for one system call and frees its buffer as soon as it is written.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use futures_util::{Sink, SinkExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::{Bytes, Error, Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

/// One accepted WebSocket connection.
pub(crate) type Socket = WebSocketStream<LeanIo<TokioIo<Upgraded>>>;

/// The longest fragment the server writes. Every WebSocket client
/// reassembles fragments into one message; 1 KiB keeps what a connection
/// holds between frames small and costs a 4-byte header per KiB of a long one.
pub(crate) const FRAGMENT_BYTES: usize = 1024;

/// Up to this much is gathered before a write system call: a burst of small
/// frames costs one call per 8 KiB, not one per frame.
pub(crate) const BATCH_BYTES: usize = 8 * 1024;

/// Feeds `text` as one message: a single frame, or fragments of at most
/// [`FRAGMENT_BYTES`] split at character boundaries (a receiver may check
/// UTF-8 per fragment). Feeding does not flush.
pub(crate) async fn feed_text<S>(sink: &mut S, text: &Utf8Bytes) -> Result<(), Error>
where
    S: Sink<Message, Error = Error> + Unpin,
{
    if text.len() <= FRAGMENT_BYTES {
        return sink.feed(Message::Text(text.clone())).await;
    }
    let bytes = Bytes::from(text.clone());
    let mut start = 0;
    while start < bytes.len() {
        let end = fragment_end(text.as_str(), start);
        let opcode = if start == 0 {
            Data::Text
        } else {
            Data::Continue
        };
        let last = end == bytes.len();
        let fragment = Frame::message(bytes.slice(start..end), OpCode::Data(opcode), last);
        sink.feed(Message::Frame(fragment)).await?;
        start = end;
    }
    Ok(())
}

/// Where the fragment starting at `start` ends: [`FRAGMENT_BYTES`] on, or
/// earlier at the character boundary before it.
fn fragment_end(text: &str, start: usize) -> usize {
    let mut end = (start + FRAGMENT_BYTES).min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    end
}

/// A socket with a write buffer that exists only while it has bytes to write.
pub(crate) struct LeanIo<S> {
    inner: S,
    pending: Vec<u8>,
    /// How much of `pending` the socket has taken.
    written: usize,
}

impl<S> LeanIo<S> {
    pub(crate) fn new(inner: S) -> LeanIo<S> {
        LeanIo {
            inner,
            pending: Vec::new(),
            written: 0,
        }
    }

    fn unwritten(&self) -> usize {
        self.pending.len() - self.written
    }
}

impl<S: AsyncWrite + Unpin> LeanIo<S> {
    /// Writes out everything gathered, then gives the buffer back: an idle
    /// connection holds none.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.pending.len() {
            let n =
                ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.pending = Vec::new();
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for LeanIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for LeanIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.unwritten() >= BATCH_BYTES {
            ready!(this.poll_drain(cx))?;
        }
        if this.pending.capacity() == 0 {
            this.pending.reserve(BATCH_BYTES.max(buf.len()));
        }
        this.pending.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use tokio::io::AsyncReadExt;
    use tokio_tungstenite::tungstenite::protocol::Role;

    #[test]
    fn fragments_end_on_character_boundaries() {
        // 'é' is two bytes: a cut at 1024 would fall inside the one at 1023.
        let text = format!("{}é{}", "a".repeat(FRAGMENT_BYTES - 1), "b".repeat(10));
        assert_eq!(fragment_end(&text, 0), FRAGMENT_BYTES - 1);
        assert_eq!(fragment_end(&text, FRAGMENT_BYTES - 1), text.len());
    }

    /// A long frame, fragmented by the server, is one message to a client,
    /// and once written the server's side holds no write buffer.
    #[tokio::test]
    async fn a_long_frame_arrives_whole_and_leaves_no_buffer_behind() {
        let (server_io, client_io) = tokio::io::duplex(1 << 20);
        let mut server =
            WebSocketStream::from_raw_socket(LeanIo::new(server_io), Role::Server, None).await;
        let mut client = WebSocketStream::from_raw_socket(client_io, Role::Client, None).await;
        let long: String = (0..5_000).map(|i| format!("é{i},")).collect();
        feed_text(&mut server, &Utf8Bytes::from(long.clone()))
            .await
            .unwrap();
        feed_text(&mut server, &Utf8Bytes::from_static("short"))
            .await
            .unwrap();
        server.flush().await.unwrap();
        assert_eq!(server.get_ref().pending.capacity(), 0);
        let first = client.next().await.unwrap().unwrap();
        assert_eq!(first, Message::text(long));
        let second = client.next().await.unwrap().unwrap();
        assert_eq!(second, Message::text("short"));
    }

    /// Bytes on the wire: the first fragment is a text frame without FIN, the
    /// rest are continuations, and only the last has FIN.
    #[tokio::test]
    async fn fragments_are_text_then_continuations() {
        let (server_io, mut raw) = tokio::io::duplex(1 << 20);
        let mut server =
            WebSocketStream::from_raw_socket(LeanIo::new(server_io), Role::Server, None).await;
        let text = "x".repeat(FRAGMENT_BYTES * 2 + 10);
        feed_text(&mut server, &Utf8Bytes::from(text))
            .await
            .unwrap();
        server.flush().await.unwrap();
        let mut firsts = Vec::new();
        for _ in 0..3 {
            let mut header = [0u8; 2];
            raw.read_exact(&mut header).await.unwrap();
            let len = match header[1] & 0x7f {
                126 => {
                    let mut ext = [0u8; 2];
                    raw.read_exact(&mut ext).await.unwrap();
                    usize::from(u16::from_be_bytes(ext))
                }
                n => usize::from(n),
            };
            let mut payload = vec![0u8; len];
            raw.read_exact(&mut payload).await.unwrap();
            firsts.push((header[0], len));
        }
        assert_eq!(
            firsts,
            [(0x01, FRAGMENT_BYTES), (0x00, FRAGMENT_BYTES), (0x80, 10)]
        );
    }
}
