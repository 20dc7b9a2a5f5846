//! The bounded queue between routing and one connection's socket writer.
//!
//! Routing pushes without ever waiting (O(1), by the core's owner); the
//! connection's writer task drains it into the socket. The bound is what
//! keeps one slow client from stalling everyone or growing memory without
//! limit: when it is full, the connection is evicted (see `server/deliver.rs`).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::protocol::{Message, ServerFrame};
use crate::store::Seq;

/// One serialised frame, shared by every connection it fans out to.
#[derive(Debug)]
pub struct Encoded {
    /// The JSON text, exactly as it goes on the wire.
    pub text: Utf8Bytes,
    /// The chat message inside, kept so an unsent one can go back to the offline deque.
    pub message: Option<Message>,
    /// Durable mode: the store batch that must be on disk before this frame
    /// is written (None: nothing to wait for).
    pub seq: Option<crate::store::Seq>,
    /// A message flushed from the offline queue: once written to the socket,
    /// durable mode deletes it from disk.
    pub flushed: bool,
}

impl Encoded {
    /// `frame`, serialised once. `seq`: the store batch it waits for.
    pub fn of(frame: &ServerFrame, seq: Option<Seq>) -> Outgoing {
        Arc::new(Encoded {
            text: Utf8Bytes::from(frame.to_json()),
            message: frame.chat_message().cloned(),
            seq,
            flushed: matches!(frame, ServerFrame::Chat { offline: true, .. }),
        })
    }

    /// What holding this frame costs an outbox's byte budget: its text and
    /// a fixed share for the entry.
    pub fn cost(&self) -> usize {
        FRAME_OVERHEAD_BYTES + self.text.len()
    }
}

/// The bytes an outbox slot and the frame's bookkeeping take besides the text.
const FRAME_OVERHEAD_BYTES: usize = 64;

/// One frame waiting in an outbox. An `Arc` keeps each queued slot at 8 bytes:
/// when 10,000 users join, every outbox absorbs a storm of presence frames,
/// and the slots, not the shared frames, are what multiply.
pub type Outgoing = Arc<Encoded>;

/// The chat messages among unsent frames, oldest first: what goes back to
/// the offline queue when a connection ends before writing them.
fn unsent_messages<'a>(frames: impl IntoIterator<Item = &'a Outgoing>) -> Vec<Message> {
    frames
        .into_iter()
        .filter_map(|o| o.message.clone())
        .collect()
}

/// A connect-time flush, as the core decided it: its chat frames, not yet
/// serialised, and the store batch they wait for.
#[derive(Debug, Default)]
struct Flush {
    frames: VecDeque<ServerFrame>,
    seq: Option<Seq>,
    /// The core charged this flush to the memory budget (a v1 flush, which
    /// took the messages out of the deque): once the writer has taken its
    /// last frame, the owner is told, and the charge goes.
    charged: bool,
}

/// Why a push was refused; the frame comes back to the caller.
#[derive(Debug)]
pub enum PushError {
    /// The outbox holds `capacity` frames: the client is not reading.
    Full(Outgoing),
    /// The connection is closing; nothing more is written to it.
    Closed(Outgoing),
}

#[derive(Debug, Clone, PartialEq)]
enum State {
    Open,
    /// Write what is queued, then this close frame (or a plain close), then stop.
    Draining(Option<CloseFrame>),
    /// Stop now, even in the middle of a write.
    Aborted,
    /// The writer has taken the close frame: nothing is left to do.
    Finished,
}

struct Inner {
    frames: VecDeque<Outgoing>,
    /// The connect-time flush, written after the first `ahead` frames (the
    /// welcome) and before everything pushed after it.
    flush: Flush,
    ahead: usize,
    state: State,
    /// Frames allowed beyond `capacity` until the writer has taken them: the
    /// connect-time welcome (and any receipts of its resume), which must not
    /// get a new connection evicted on arrival.
    backlog: usize,
    /// The reader heard nothing for a while: the writer should send a ping.
    ping_due: bool,
    /// Bytes of the queued frames and of the batch in flight (see
    /// [`Encoded::cost`]): a frame counts until it is written.
    bytes: usize,
    /// The batch the writer took and has not finished writing: a client that
    /// stopped reading holds it in a stuck write, so when such a connection is
    /// given up (evicted, idle, shutdown) these go back to the queue too.
    in_flight: Vec<Outgoing>,
    in_flight_bytes: usize,
    /// Requests the reader handed to the core that the core has not applied
    /// yet: each will push its reply here, so the reader counts them as if
    /// they were queued already (see [`Outbox::has_room`]).
    unapplied: usize,
}

/// What the writer should do next.
#[derive(Debug)]
pub enum Next {
    Frames(Vec<Outgoing>),
    Ping,
    Close(Option<CloseFrame>),
    Stop,
}

pub struct Outbox {
    inner: Mutex<Inner>,
    capacity: usize,
    /// The most bytes of frames it may hold (besides the connect-time backlog,
    /// and counting the batch in flight).
    max_bytes: usize,
    /// Bytes in every outbox of the server together, for `--max-memory`.
    total: Arc<AtomicUsize>,
    /// Wakes the writer when frames arrive or the state changes.
    wake_writer: Notify,
    /// Wakes the reader (and a writer stuck in a write) when the state leaves `Open`.
    state_changed: Notify,
    /// Wakes a reader waiting for the writer to catch up.
    drained: Notify,
}

/// The writer takes at most this many frames per flush: large enough to batch
/// a burst into one syscall, small enough to bound the work between flushes.
const BATCH: usize = 64;

/// ... and stops taking once it holds this many bytes (so at most this plus
/// one frame): what one stuck write can hold, a copy of which sits in the
/// WebSocket's buffer.
const BATCH_BYTES: usize = 64 * 1024;

/// An empty outbox keeps at most this many slots of capacity.
const SHRINK_ABOVE: usize = 64;

impl Drop for Outbox {
    fn drop(&mut self) {
        let bytes = self.lock().bytes;
        self.total.fetch_sub(bytes, Ordering::Relaxed);
    }
}

impl Outbox {
    /// An outbox bounded in frames only (tests).
    pub fn new(capacity: usize) -> Outbox {
        Outbox::with_bytes(capacity, usize::MAX, Arc::default())
    }

    /// An outbox bounded in frames and in bytes, counting its bytes into `total`.
    pub fn with_bytes(capacity: usize, max_bytes: usize, total: Arc<AtomicUsize>) -> Outbox {
        Outbox {
            inner: Mutex::new(Inner {
                frames: VecDeque::new(),
                flush: Flush::default(),
                ahead: 0,
                state: State::Open,
                backlog: 0,
                unapplied: 0,
                ping_due: false,
                bytes: 0,
                in_flight: Vec::new(),
                in_flight_bytes: 0,
            }),
            capacity: capacity.max(1),
            max_bytes,
            total,
            wake_writer: Notify::new(),
            state_changed: Notify::new(),
            drained: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic elsewhere cannot leave a VecDeque half-updated, so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Frames not yet taken by the writer, the flush's included.
    pub fn len(&self) -> usize {
        let inner = self.lock();
        inner.frames.len() + inner.flush.frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of the frames waiting in it.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    /// The chat messages of every queued frame and of the flush not yet
    /// taken, in the order they would have been written; takes them out,
    /// keeping the byte counts right. With `in_flight`, the writer's
    /// unfinished batch comes first.
    fn drain_unsent(&self, inner: &mut Inner, in_flight: bool) -> Vec<Message> {
        let mut taken = inner.bytes - inner.in_flight_bytes;
        let mut unsent = Vec::new();
        if in_flight {
            taken = inner.bytes;
            inner.in_flight_bytes = 0;
            unsent = unsent_messages(&std::mem::take(&mut inner.in_flight));
        }
        self.total.fetch_sub(taken, Ordering::Relaxed);
        inner.bytes -= taken;
        let ahead = inner.ahead.min(inner.frames.len());
        let frames: Vec<Outgoing> = inner.frames.drain(..).collect();
        let flush = std::mem::take(&mut inner.flush.frames);
        inner.ahead = 0;
        unsent.extend(unsent_messages(&frames[..ahead]));
        unsent.extend(flush.into_iter().filter_map(ServerFrame::into_chat_message));
        unsent.extend(unsent_messages(&frames[ahead..]));
        unsent
    }

    /// Starts the connect-time flush: `frames` are written after what is
    /// queued now (the welcome) and before anything pushed later, encoded
    /// batch by batch as the writer takes them. Err gives them back when the
    /// connection is already closing.
    pub fn stream(
        &self,
        frames: Vec<ServerFrame>,
        seq: Option<Seq>,
        charged: bool,
    ) -> Result<(), Vec<ServerFrame>> {
        let mut inner = self.lock();
        if inner.state != State::Open {
            return Err(frames);
        }
        inner.ahead = inner.frames.len();
        inner.flush = Flush {
            frames: frames.into(),
            seq,
            charged,
        };
        drop(inner);
        self.wake_writer.notify_one();
        Ok(())
    }

    /// Frames of the connect-time flush not yet taken by the writer.
    pub fn flush_left(&self) -> usize {
        self.lock().flush.frames.len()
    }

    /// Queues a frame without waiting. O(1).
    pub fn push(&self, frame: Outgoing) -> Result<(), PushError> {
        let mut inner = self.lock();
        if inner.state != State::Open {
            return Err(PushError::Closed(frame));
        }
        if inner.frames.len() >= self.capacity + inner.backlog {
            return Err(PushError::Full(frame));
        }
        // Bytes as well as frames: 1,024 frames of 64 KB would be 64 MB for one
        // client that does not read. The welcome is exempt (a class of 10,000
        // makes its online list large); the flush is not pushed at all (`stream`).
        let cost = frame.cost();
        if inner.backlog == 0 && inner.bytes > 0 && inner.bytes + cost > self.max_bytes {
            return Err(PushError::Full(frame));
        }
        inner.bytes += cost;
        self.total.fetch_add(cost, Ordering::Relaxed);
        inner.frames.push_back(frame);
        drop(inner);
        self.wake_writer.notify_one();
        Ok(())
    }

    /// Lets the `n` frames already queued exceed the bound (see `Inner::backlog`).
    pub fn allow_backlog(&self, n: usize) {
        self.lock().backlog = n;
    }

    fn set_state(&self, inner: &mut Inner, state: State) {
        inner.state = state;
        self.wake_writer.notify_one();
        self.state_changed.notify_waiters();
    }

    /// Asks the writer for a WebSocket ping (after any queued frames); a live
    /// client answers it with a pong, which is what the idle timeout waits for.
    pub fn request_ping(&self) {
        let mut inner = self.lock();
        if inner.state == State::Open {
            inner.ping_due = true;
            drop(inner);
            self.wake_writer.notify_one();
        }
    }

    /// Graceful close: what is queued is still written, then `frame`. No-op unless open.
    pub fn close_after_pending(&self, frame: CloseFrame) {
        let mut inner = self.lock();
        if inner.state == State::Open {
            self.set_state(&mut inner, State::Draining(Some(frame)));
        }
    }

    /// The peer is gone or leaving: take the unsent messages (for re-queueing) and
    /// let the writer finish the closing handshake. Empty unless the outbox was open.
    pub fn take_and_close(&self, frame: Option<CloseFrame>) -> Vec<Message> {
        let mut inner = self.lock();
        if inner.state != State::Open {
            return Vec::new();
        }
        let pending = self.drain_unsent(&mut inner, false);
        self.set_state(&mut inner, State::Draining(frame));
        pending
    }

    /// A connection given up on (idle, or the server stopping): every frame
    /// not known to be written, the writer's unfinished batch first, and the
    /// writer sends `frame` next. The batch may have partly reached the client,
    /// so a message can come back twice (same id), never not at all.
    pub fn take_all_and_close(&self, frame: Option<CloseFrame>) -> Vec<Message> {
        let mut inner = self.lock();
        let pending = self.drain_unsent(&mut inner, true);
        if matches!(inner.state, State::Open | State::Draining(_)) {
            self.set_state(&mut inner, State::Draining(frame));
        }
        pending
    }

    /// Eviction: stop writing at once and hand back every frame not known to
    /// be written, the writer's unfinished batch first.
    pub fn abort(&self) -> Vec<Message> {
        let mut inner = self.lock();
        let pending = self.drain_unsent(&mut inner, true);
        self.set_state(&mut inner, State::Aborted);
        pending
    }

    /// The writer finished writing the batch it took: its bytes no longer count.
    /// True once, when that batch ended a flush the core charged for.
    pub fn wrote(&self) -> bool {
        let mut inner = self.lock();
        inner.in_flight.clear();
        let written = std::mem::take(&mut inner.in_flight_bytes);
        inner.bytes -= written;
        self.total.fetch_sub(written, Ordering::Relaxed);
        let flush = &mut inner.flush;
        flush.frames.is_empty() && std::mem::take(&mut flush.charged)
    }

    pub fn is_open(&self) -> bool {
        self.lock().state == State::Open
    }

    /// True once [`Outbox::abort`] has run: the connection was evicted, and the
    /// eviction already removed it from the core.
    pub fn was_evicted(&self) -> bool {
        self.lock().state == State::Aborted
    }

    /// Resolves once the outbox is no longer open (closing or aborted).
    pub async fn closed(&self) {
        loop {
            // Created before the check, so a change between check and await is not missed.
            let changed = self.state_changed.notified();
            if self.lock().state != State::Open {
                return;
            }
            changed.await;
        }
    }

    /// Resolves once the outbox is at most half full (or closing), counting
    /// the replies of requests the core has not applied yet. The reader
    /// awaits this before reading the next request, so a client that sends
    /// faster than it reads its replies is slowed down by TCP backpressure
    /// instead of being evicted for its own acks.
    pub async fn has_room(&self) {
        loop {
            let drained = self.drained.notified();
            {
                let inner = self.lock();
                if inner.state != State::Open || self.room_for_reader(&inner) {
                    return;
                }
            }
            drained.await;
        }
    }

    fn room_for_reader(&self, inner: &Inner) -> bool {
        inner.frames.len() + inner.unapplied <= self.capacity / 2 + inner.backlog
    }

    /// The reader handed a request to the core.
    pub fn request_sent(&self) {
        self.lock().unapplied += 1;
    }

    /// The core applied one of this connection's requests (its replies are
    /// pushed by now); wakes the reader if that made room.
    pub fn request_applied(&self) {
        let mut inner = self.lock();
        let before = self.room_for_reader(&inner);
        inner.unapplied = inner.unapplied.saturating_sub(1);
        let after = self.room_for_reader(&inner);
        drop(inner);
        if after && !before {
            self.drained.notify_waiters();
        }
    }

    /// Resolves once the outbox is aborted.
    pub async fn aborted(&self) {
        loop {
            let changed = self.state_changed.notified();
            if self.lock().state == State::Aborted {
                return;
            }
            changed.await;
        }
    }

    /// The writer's next batch, at most [`BATCH`] frames and [`BATCH_BYTES`]:
    /// the frames ahead of the flush, then the flush (encoded now), then
    /// the rest. Its bytes count until [`Outbox::wrote`].
    fn take_batch(&self, inner: &mut Inner) -> Option<Vec<Outgoing>> {
        // The writer only asks again once the last batch is written.
        let written = std::mem::take(&mut inner.in_flight_bytes);
        inner.bytes -= written;
        self.total.fetch_sub(written, Ordering::Relaxed);
        inner.in_flight.clear();
        let mut batch = Vec::new();
        let mut bytes = 0;
        let seq = inner.flush.seq;
        while batch.len() < BATCH && bytes < BATCH_BYTES {
            let frame = if inner.ahead == 0 && !inner.flush.frames.is_empty() {
                let encoded = Encoded::of(&inner.flush.frames.pop_front().unwrap(), seq);
                // Newly serialised: it joins the bytes that count (queued frames already do).
                inner.bytes += encoded.cost();
                self.total.fetch_add(encoded.cost(), Ordering::Relaxed);
                encoded
            } else if let Some(frame) = inner.frames.pop_front() {
                inner.ahead = inner.ahead.saturating_sub(1);
                inner.backlog = inner.backlog.saturating_sub(1);
                frame
            } else {
                break;
            };
            bytes += frame.cost();
            batch.push(frame);
        }
        if batch.is_empty() {
            return None;
        }
        inner.in_flight.clone_from(&batch);
        inner.in_flight_bytes = bytes;
        if inner.frames.is_empty() && inner.frames.capacity() > SHRINK_ABOVE {
            // A burst (a presence storm as a class joins) grows the deque;
            // VecDeque never shrinks by itself, and 10,000 idle
            // connections each keeping a burst-sized buffer add up.
            inner.frames.shrink_to(SHRINK_ABOVE / 4);
        }
        if inner.flush.frames.is_empty() && inner.flush.frames.capacity() > 0 {
            inner.flush.frames = VecDeque::new();
        }
        Some(batch)
    }

    /// Waits for the writer's next piece of work.
    pub async fn next(&self) -> Next {
        loop {
            let woken = self.wake_writer.notified();
            {
                let mut inner = self.lock();
                if matches!(inner.state, State::Aborted | State::Finished) {
                    return Next::Stop;
                }
                if let Some(batch) = self.take_batch(&mut inner) {
                    drop(inner);
                    self.drained.notify_waiters();
                    return Next::Frames(batch);
                }
                if std::mem::take(&mut inner.ping_due) && inner.state == State::Open {
                    return Next::Ping;
                }
                if let State::Draining(frame) = &inner.state {
                    let frame = frame.clone();
                    inner.state = State::Finished;
                    return Next::Close(frame);
                }
            }
            woken.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn out(s: &'static str) -> Outgoing {
        Arc::new(Encoded {
            text: Utf8Bytes::from_static(s),
            message: None,
            seq: None,
            flushed: false,
        })
    }

    fn message(id: u64, text_bytes: usize) -> Message {
        Message {
            id,
            from: crate::names::Name::parse("alice").unwrap(),
            target: crate::protocol::Target::User(crate::names::Name::parse("bob").unwrap()),
            text: "x".repeat(text_bytes).into(),
            ts: 0,
            receipt: false,
        }
    }

    fn chat(id: u64, text_bytes: usize, offline: bool) -> ServerFrame {
        ServerFrame::Chat {
            message: message(id, text_bytes),
            offline,
        }
    }

    fn ids(frames: &[Outgoing]) -> Vec<Option<u64>> {
        frames
            .iter()
            .map(|f| f.message.as_ref().map(|m| m.id))
            .collect()
    }

    async fn batch(o: &Outbox) -> Vec<Outgoing> {
        match tokio::time::timeout(Duration::from_secs(5), o.next()).await {
            Ok(Next::Frames(frames)) => frames,
            other => panic!("expected frames, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_flush_goes_after_the_welcome_and_before_what_is_pushed_later() {
        let o = Outbox::new(8);
        o.push(out("welcome")).unwrap();
        let flush = (1..=3).map(|id| chat(id, 10, true)).collect();
        o.stream(flush, None, false).unwrap();
        o.push(Encoded::of(&chat(4, 10, false), None)).unwrap();
        assert_eq!(o.flush_left(), 3);
        // One write: the welcome, the flush, and only then what came later.
        let first = batch(&o).await;
        assert_eq!(ids(&first), [None, Some(1), Some(2), Some(3), Some(4)]);
        assert!(
            first[1..4].iter().all(|f| f.flushed),
            "flushed frames are marked so"
        );
        assert!(!first[4].flushed);
        assert_eq!(o.flush_left(), 0);
    }

    #[tokio::test]
    async fn a_flush_is_encoded_a_batch_at_a_time_and_counts_until_written() {
        let total = Arc::new(AtomicUsize::new(0));
        let o = Outbox::with_bytes(8, 256 * 1024, total.clone());
        let flush = (1..=100).map(|id| chat(id, 30_000, true)).collect();
        o.stream(flush, None, false).unwrap();
        // Nothing is encoded before the writer asks: 3 MB of queue costs no outbox bytes.
        assert_eq!(o.bytes(), 0);
        assert_eq!(total.load(Ordering::Relaxed), 0);
        let first = batch(&o).await;
        let in_flight: usize = first.iter().map(|f| f.cost()).sum();
        assert_eq!(
            first.len(),
            3,
            "a batch stops once it holds {BATCH_BYTES} bytes"
        );
        assert!(in_flight < BATCH_BYTES + 31_000);
        // A stuck write still counts, against this outbox and the server's total.
        assert_eq!(o.bytes(), in_flight);
        assert_eq!(total.load(Ordering::Relaxed), in_flight);
        assert_eq!(o.flush_left(), 97);
        o.wrote();
        assert_eq!(o.bytes(), 0);
        assert_eq!(total.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn giving_up_mid_flush_hands_back_every_unwritten_message_in_order() {
        let o = Outbox::new(8);
        o.push(out("welcome")).unwrap();
        o.stream(
            (1..=7).map(|id| chat(id, 30_000, true)).collect(),
            None,
            false,
        )
        .unwrap();
        o.push(Encoded::of(&chat(8, 10, false), None)).unwrap();
        assert_eq!(ids(&batch(&o).await), [None, Some(1), Some(2), Some(3)]);
        o.wrote();
        let stuck = batch(&o).await;
        assert_eq!(ids(&stuck), [Some(4), Some(5), Some(6)]);
        // Evicted in the middle of that write: the stuck batch, the rest of
        // the flush, then the live message, as they would have been written.
        let unsent: Vec<u64> = o.abort().iter().map(|m| m.id).collect();
        assert_eq!(unsent, [4, 5, 6, 7, 8]);
        assert_eq!(o.bytes(), 0);
    }

    #[tokio::test]
    async fn a_charged_flush_is_reported_once_when_its_last_batch_is_written() {
        let o = Outbox::new(8);
        o.stream(
            (1..=4).map(|id| chat(id, 30_000, true)).collect(),
            None,
            true,
        )
        .unwrap();
        let _ = batch(&o).await;
        assert!(!o.wrote(), "one more message of the flush to go");
        let _ = batch(&o).await;
        assert!(o.wrote(), "the last of the flush is written");
        o.push(out("live")).unwrap();
        let _ = batch(&o).await;
        assert!(!o.wrote(), "reported once");
    }

    #[tokio::test]
    async fn a_flush_to_a_closing_connection_is_handed_back() {
        let o = Outbox::new(8);
        o.take_and_close(None);
        let back = o.stream(vec![chat(1, 10, true)], None, true).unwrap_err();
        assert_eq!(back.len(), 1);
    }

    #[tokio::test]
    async fn push_is_bounded_and_fifo() {
        let o = Outbox::new(2);
        o.push(out("a")).unwrap();
        o.push(out("b")).unwrap();
        assert!(matches!(o.push(out("c")), Err(PushError::Full(_))));
        let Next::Frames(f) = o.next().await else {
            panic!("expected frames")
        };
        let texts: Vec<&str> = f.iter().map(|f| f.text.as_str()).collect();
        assert_eq!(texts, ["a", "b"]);
        o.push(out("c")).unwrap();
    }

    #[tokio::test]
    async fn a_connect_backlog_may_exceed_the_bound_until_written() {
        let o = Outbox::new(2);
        o.allow_backlog(10);
        for _ in 0..10 {
            o.push(out("flushed")).unwrap();
        }
        o.push(out("live")).unwrap();
        o.push(out("live")).unwrap();
        assert!(matches!(o.push(out("live")), Err(PushError::Full(_))));
        let Next::Frames(f) = o.next().await else {
            panic!("expected frames")
        };
        assert_eq!(f.len(), 12);
        // The backlog is spent: the plain bound applies again.
        o.push(out("a")).unwrap();
        o.push(out("b")).unwrap();
        assert!(matches!(o.push(out("c")), Err(PushError::Full(_))));
    }

    #[tokio::test]
    async fn has_room_waits_for_the_writer_to_drain() {
        let o = Arc::new(Outbox::new(4));
        for _ in 0..4 {
            o.push(out("x")).unwrap();
        }
        let waiter = {
            let o = o.clone();
            tokio::spawn(async move { o.has_room().await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "full outbox: the reader must wait");
        let _ = o.next().await;
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("draining wakes the reader")
            .unwrap();
    }

    #[tokio::test]
    async fn graceful_close_writes_pending_first() {
        let o = Outbox::new(8);
        o.push(out("a")).unwrap();
        o.close_after_pending(CloseFrame {
            code: 1001.into(),
            reason: Utf8Bytes::from_static("bye"),
        });
        assert!(matches!(o.push(out("late")), Err(PushError::Closed(_))));
        assert!(matches!(o.next().await, Next::Frames(f) if f.len() == 1));
        assert!(matches!(o.next().await, Next::Close(Some(f)) if u16::from(f.code) == 1001));
        assert!(matches!(o.next().await, Next::Stop));
    }

    #[tokio::test]
    async fn abort_hands_back_unsent_frames_and_wakes_waiters() {
        let o = Arc::new(Outbox::new(8));
        o.push(Encoded::of(&chat(1, 10, false), None)).unwrap();
        o.push(out("presence")).unwrap();
        let waiter = {
            let o = o.clone();
            tokio::spawn(async move { o.aborted().await })
        };
        tokio::task::yield_now().await;
        let pending = o.abort();
        assert_eq!(pending.len(), 1, "the chat message, not the presence frame");
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("aborted() must resolve")
            .unwrap();
        assert!(matches!(o.next().await, Next::Stop));
        tokio::time::timeout(Duration::from_secs(5), o.closed())
            .await
            .expect("closed() resolves after abort");
    }

    #[tokio::test]
    async fn take_and_close_returns_pending_once() {
        let o = Outbox::new(8);
        o.push(Encoded::of(&chat(1, 10, false), None)).unwrap();
        assert_eq!(o.take_and_close(None).len(), 1);
        assert!(o.take_and_close(None).is_empty());
        assert!(matches!(o.next().await, Next::Close(None)));
    }
}
