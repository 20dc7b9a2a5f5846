//! One WebSocket connection: a reader (this task) and a writer (a spawned task).
//!
//! The reader turns each frame into a core call and carries out the answer
//! under the core lock. The writer only drains the connection's outbox into
//! the socket, so a client that stops reading blocks nobody but itself.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message as WsMessage, Utf8Bytes, WebSocket};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};

use super::admission::Admitted;
use super::backend::Handle;
use super::deliver::deliver;
use super::hub::{Conn, Core, Hub, Resume};
use super::limits::TokenBucket;
use super::outbox::{unsent_messages, Next};
use crate::core::ConnHandle;
use crate::names::UserId;
use crate::output::now_ms;
use crate::protocol::{parse_request, ErrorCode, RequestError};
use crate::store::Store;

pub(crate) const CLOSE_GOING_AWAY: u16 = 1001;
/// RFC 6455: a text frame that is not valid UTF-8.
pub(crate) const CLOSE_INVALID_DATA: u16 = 1007;
pub(crate) const CLOSE_POLICY: u16 = 1008;
pub(crate) const CLOSE_TOO_BIG: u16 = 1009;
/// Try again later: a cluster node whose Redis cannot be reached.
pub(crate) const CLOSE_TRY_AGAIN: u16 = 1013;
/// Application close code (4000-4999 are free for applications): no pong in time.
pub(crate) const CLOSE_IDLE: u16 = 4000;
/// The name was just claimed with a token this connection does not have.
pub(crate) const CLOSE_CLAIMED: u16 = 4001;

pub(crate) fn close_frame(code: u16, reason: &'static str) -> CloseFrame {
    CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    }
}

/// How a connection ended, which decides what happens to its unsent frames.
enum Ending {
    /// The client closed, the socket failed, or the server is shutting down.
    Gone,
    /// The client sent a message over the size limit: answer, then close with 1009.
    TooLarge(usize),
    /// Nothing heard, not even a pong, for the idle timeout: close with 4000.
    Idle(Duration),
    /// A text frame that is not UTF-8: answer `bad_json`, then close with 1007.
    BadUtf8,
}

pub(crate) async fn serve(
    hub: Arc<Hub>,
    socket: WebSocket,
    user: UserId,
    remote: SocketAddr,
    admitted: Admitted,
    resume: Option<Resume>,
) {
    let conn = hub.new_connection(user.clone(), remote, admitted.authenticated, resume);
    let (sink, stream) = socket.split();
    let mut writer = tokio::spawn(write_loop(sink, conn.clone(), hub.store.clone()));
    {
        let mut core = hub.core();
        if hub.shutdown.has_begun() {
            // Raced with shutdown: never registered, so nothing to undo.
            conn.outbox
                .close_after_pending(close_frame(CLOSE_GOING_AWAY, "server shutting down"));
        } else {
            if admitted.claimed_now {
                close_unclaimed(&hub, &mut core, &user);
            }
            let outcome = core.connect(&user, Handle::Local(conn.clone()));
            if let Some(why) = core.take_failure() {
                // Cluster mode, Redis unreachable: what the connect did is not
                // trusted. The client is told why and reconnects later.
                refuse_unavailable(&hub, &mut core, &conn, &why);
            } else {
                // The welcome and the whole offline flush are exempt from the
                // slow-client bound; only what comes after counts against it.
                let own = outcome.deliveries.iter().filter(|d| d.conn.id() == conn.id);
                conn.outbox.allow_backlog(own.count());
                deliver(&mut core, outcome, &hub);
            }
        }
    }
    let ending = read_loop(&hub, &conn, stream).await;
    finish(&hub, &conn, ending);
    // The writer ends after its close frame; a client that never reads cannot hold it forever.
    if tokio::time::timeout(hub.config.shutdown_grace, &mut writer)
        .await
        .is_err()
    {
        writer.abort();
    }
}

/// A connect that Redis failed under: an `unavailable` error, then close
/// 1013 (try again later). The queue it may have taken is put back by the
/// disconnect that follows, when Redis answers again.
fn refuse_unavailable(hub: &Hub, core: &mut Core, conn: &Conn, why: &str) {
    let error = RequestError::new(
        ErrorCode::Unavailable,
        format!("{why}; reconnect in a moment"),
        None,
    );
    let refusal = core.refuse(&conn.user, &Handle::Local(conn.clone()), error);
    deliver(core, refusal, hub);
    conn.outbox
        .close_after_pending(close_frame(CLOSE_TRY_AGAIN, "redis unavailable"));
    if let Some(log) = &hub.log {
        log.line(format!("! refused {} (conn {}): {why}", conn.user, conn.id));
    }
}

/// The name has just been claimed: its connections without the token (which
/// may be someone else's) are closed with 4001 before the owner is registered,
/// so from now on only the owner's devices receive its messages. What they
/// had not yet been sent goes back to the queue, for the owner.
fn close_unclaimed(hub: &Hub, core: &mut Core, user: &UserId) {
    for device in core.devices(user) {
        let Some(device) = device.local().cloned() else {
            continue;
        };
        if device.authenticated {
            continue;
        }
        let unsent = unsent_messages(&device.outbox.take_and_close(Some(close_frame(
            CLOSE_CLAIMED,
            "this name was just claimed with a token; reconnect with it or use another name",
        ))));
        if let Some(log) = &hub.log {
            log.line(format!(
                "! closed {user} (conn {}): the name was claimed and this connection has no token",
                device.id
            ));
        }
        let outcome = core.disconnect(user, device.id, unsent);
        deliver(core, outcome, hub);
    }
}

/// Removes the connection from the core, atomically with closing its outbox,
/// so no frame can be routed to it in between and then lost.
fn finish(hub: &Hub, conn: &Conn, ending: Ending) {
    let mut core = hub.core();
    if conn.outbox.was_evicted() {
        return;
    }
    let unsent = match ending {
        Ending::Gone => conn.outbox.take_and_close(None),
        Ending::Idle(timeout) => {
            if let Some(log) = &hub.log {
                log.line(format!(
                    "! closed {} (conn {}): nothing heard for {} s, not even a pong (--idle-timeout)",
                    conn.user,
                    conn.id,
                    timeout.as_secs_f64()
                ));
            }
            // Its unsent messages were probably never read: they go back to the
            // queue, with the batch stuck in its socket write.
            conn.outbox
                .take_all_and_close(Some(close_frame(CLOSE_IDLE, "idle: no pong in time")))
        }
        Ending::TooLarge(size) => {
            let limit = hub.config.net.max_message_bytes;
            let error = RequestError::new(
                ErrorCode::TooLarge,
                format!(
                    "message of {size} bytes is over the {limit}-byte limit; \
                     the connection will close (1009). Split long texts."
                ),
                None,
            );
            let refusal = core.refuse(&conn.user, &Handle::Local(conn.clone()), error);
            deliver(&mut core, refusal, hub);
            conn.outbox
                .close_after_pending(close_frame(CLOSE_TOO_BIG, "message too large"));
            Vec::new()
        }
        Ending::BadUtf8 => {
            let error = RequestError::bad_json(
                "a text frame that is not valid UTF-8; the connection will close (1007)",
            );
            let refusal = core.refuse(&conn.user, &Handle::Local(conn.clone()), error);
            deliver(&mut core, refusal, hub);
            conn.outbox.close_after_pending(close_frame(
                CLOSE_INVALID_DATA,
                "invalid UTF-8 in a text frame",
            ));
            Vec::new()
        }
    };
    let outcome = core.disconnect(&conn.user, conn.id, unsent_messages(&unsent));
    deliver(&mut core, outcome, hub);
}

async fn read_loop(hub: &Hub, conn: &Conn, mut stream: SplitStream<WebSocket>) -> Ending {
    let net = &hub.config.net;
    let limit = net.max_message_bytes;
    let mut bucket = net
        .rate_limit
        .map(|rate| TokenBucket::new(rate, Instant::now()));
    // One timer per connection, at a third of the idle timeout: after one quiet
    // third it asks for a ping, after the whole timeout it gives up. Any frame
    // counts as a sign of life, so a chatty client is never pinged.
    let idle_timeout = net.idle_timeout;
    let period = idle_timeout.map_or(Duration::from_secs(3600), |t| {
        (t / 3).max(Duration::from_millis(10))
    });
    let mut check = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();
    loop {
        let frame = tokio::select! {
            frame = async {
                conn.outbox.has_room().await;
                stream.next().await
            } => frame,
            // Evicted, or the server is shutting down: stop reading.
            () = conn.outbox.closed() => return Ending::Gone,
            _ = check.tick(), if idle_timeout.is_some() => {
                let quiet = last_heard.elapsed();
                match idle_timeout {
                    Some(timeout) if quiet >= timeout => return Ending::Idle(timeout),
                    _ if quiet >= period => conn.outbox.request_ping(),
                    _ => {}
                }
                continue;
            }
        };
        last_heard = Instant::now();
        let refusal = match frame {
            Some(Ok(WsMessage::Text(text))) => {
                if text.len() > limit {
                    return Ending::TooLarge(text.len());
                }
                match parse_request(&text) {
                    Ok(envelope) => {
                        // Over the rate limit (when one is set): refused, not routed.
                        let over = bucket.as_mut().is_some_and(|b| !b.take(last_heard));
                        if over {
                            let rate = net.rate_limit.unwrap_or_default();
                            RequestError::new(
                                ErrorCode::RateLimited,
                                format!(
                                    "over {rate} requests per second; slow down and send it again"
                                ),
                                envelope.reference,
                            )
                        } else {
                            let now = now_ms();
                            let reference = envelope.reference.clone();
                            let handle = Handle::Local(conn.clone());
                            hub.apply_request(conn, reference, |core| {
                                core.handle(&conn.user, &handle, envelope, now)
                            });
                            continue;
                        }
                    }
                    Err(error) => error,
                }
            }
            Some(Ok(WsMessage::Binary(bytes))) => {
                if bytes.len() > limit {
                    return Ending::TooLarge(bytes.len());
                }
                RequestError::bad_json("binary frames are not accepted; send JSON as a text frame")
            }
            // tungstenite answers pings itself; pongs need nothing.
            Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => continue,
            Some(Ok(WsMessage::Close(_))) | None => return Ending::Gone,
            Some(Err(error)) => return ending_of(error),
        };
        hub.apply(|core| core.refuse(&conn.user, &Handle::Local(conn.clone()), refusal));
    }
}

/// How a read error ends the connection: a message over tungstenite's hard
/// limit and a text frame that is not UTF-8 are answered; anything else
/// (a reset, a protocol violation) means the peer is gone.
fn ending_of(error: axum::Error) -> Ending {
    use tungstenite::error::{CapacityError, Error};
    match error.into_inner().downcast_ref::<Error>() {
        Some(Error::Capacity(CapacityError::MessageTooLong { size, .. })) => {
            Ending::TooLarge(*size)
        }
        Some(Error::Utf8(_)) => Ending::BadUtf8,
        _ => Ending::Gone,
    }
}

async fn write_loop(
    mut sink: SplitSink<WebSocket, WsMessage>,
    conn: Conn,
    store: Option<Arc<Store>>,
) {
    loop {
        let next = conn.outbox.next().await;
        let write = async {
            match next {
                Next::Frames(frames) => {
                    // feed, then one flush: tungstenite gathers up to 8 KiB per
                    // write, so a burst costs a few system calls, not one per frame.
                    for frame in &frames {
                        // Durable mode: nothing leaves before its changes are on disk.
                        if let (Some(store), Some(seq)) = (store.as_deref(), frame.seq) {
                            if seq > store.committed_now() {
                                sink.flush().await?;
                                if !store.committed(seq).await {
                                    return Ok(false);
                                }
                            }
                        }
                        sink.feed(WsMessage::Text(frame.text.clone())).await?;
                    }
                    sink.flush().await?;
                    conn.outbox.wrote();
                    // Written to the socket: flushed queue messages may now leave
                    // the disk. A resuming device's leave when it confirms them.
                    if let Some(store) = store.as_deref().filter(|_| conn.resume.is_none()) {
                        for frame in frames.iter().filter(|f| f.flushed) {
                            if let Some(message) = &frame.message {
                                store.flushed(&conn.user, message.id);
                            }
                        }
                    }
                    Ok(true)
                }
                Next::Ping => sink
                    .send(WsMessage::Ping(Default::default()))
                    .await
                    .map(|()| true),
                Next::Close(frame) => {
                    if let Some(frame) = frame {
                        sink.send(WsMessage::Close(Some(frame))).await?;
                    }
                    sink.close().await.map(|()| false)
                }
                Next::Stop => Ok(false),
            }
        };
        let keep_going = tokio::select! {
            biased;
            result = write => matches!(result, Ok(true)),
            () = conn.outbox.aborted() => false,
        };
        if !keep_going {
            break;
        }
    }
    if conn.outbox.was_evicted() {
        // Say why, in case the client is only slow and not gone; but never wait
        // long for a socket that is not being read.
        let evicted = close_frame(
            CLOSE_POLICY,
            "evicted: too many unread frames; reconnect to get the rest",
        );
        let goodbye = async {
            sink.send(WsMessage::Close(Some(evicted))).await?;
            sink.close().await
        };
        let _ = tokio::time::timeout(Duration::from_millis(100), goodbye).await;
    }
}
