//! One WebSocket connection: a reader (this task) and a writer (a spawned task).
//!
//! The reader turns each frame into an [`Input`] for the core's owner; what
//! the core decides comes back through the connection's outbox. The writer
//! only drains that outbox into the socket, so a client that stops reading
//! blocks nobody but itself.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};

use super::admission::Admitted;
use super::conn::{close_frame, Asked, Conn, Ending, CLOSE_POLICY};
use super::hub::Hub;
use super::input::Input;
use super::limits::TokenBucket;
use super::outbox::Next;
use super::socket::{feed_text, Socket};
use crate::names::UserId;
use crate::output::now_ms;
use crate::protocol::{parse_request, ErrorCode, Request, RequestError};
use crate::store::Store;

pub(crate) async fn serve(
    hub: Arc<Hub>,
    socket: Socket,
    user: UserId,
    remote: SocketAddr,
    admitted: Admitted,
    asked: Asked,
) {
    let conn = hub.new_connection(user, remote, admitted.authenticated, asked);
    let (sink, stream) = socket.split();
    let mut writer = tokio::spawn(write_loop(sink, conn.clone(), hub.clone()));
    // The owner applies inputs in order: this connect before any request read below.
    hub.send(Input::Connect {
        conn: conn.clone(),
        claimed_now: admitted.claimed_now,
    })
    .await;
    let ending = read_loop(&hub, &conn, stream).await;
    hub.send(Input::Close {
        conn: conn.clone(),
        ending,
    })
    .await;
    // The writer ends after its close frame; a client that never reads cannot hold it forever.
    if tokio::time::timeout(hub.config.shutdown_grace, &mut writer)
        .await
        .is_err()
    {
        writer.abort();
    }
}

async fn read_loop(hub: &Hub, conn: &Conn, mut stream: SplitStream<Socket>) -> Ending {
    let net = &hub.config.net;
    let limit = net.max_message_bytes;
    let mut bucket = net
        .rate_limit
        .map(|rate| TokenBucket::new(rate, Instant::now()));
    // One timer per connection, at a third of the idle timeout: after one quiet
    // third it asks for a ping, after the whole timeout it gives up. Any frame
    // but a repeated `received` counts as a sign of life, so a chatty client
    // is never pinged.
    let idle_timeout = net.idle_timeout;
    let period = idle_timeout.map_or(Duration::from_secs(3600), |t| {
        (t / 3).max(Duration::from_millis(10))
    });
    let mut check = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();
    // The highest id this connection confirmed: a `received` that confirms
    // nothing new is not a sign of life, or a client that never reads could
    // keep its socket, and what it is sent, by repeating one.
    let mut confirmed: Option<u64> = None;
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
        let now = Instant::now();
        // A text frame is judged once parsed (see `confirms_more`).
        if !matches!(frame, Some(Ok(WsMessage::Text(_)))) {
            last_heard = now;
        }
        let refusal = match frame {
            Some(Ok(WsMessage::Text(text))) => {
                if text.len() > limit {
                    return Ending::TooLarge(text.len());
                }
                match parse_request(&text) {
                    Ok(envelope) => {
                        if confirms_more(&envelope.request, &mut confirmed) {
                            last_heard = now;
                        }
                        // Over the rate limit (when one is set): refused, not routed.
                        let over = bucket.as_mut().is_some_and(|b| !b.take(now));
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
                            conn.outbox.request_sent();
                            hub.send(Input::Request {
                                conn: conn.clone(),
                                envelope,
                                now_ms: now_ms(),
                            })
                            .await;
                            continue;
                        }
                    }
                    Err(error) => {
                        last_heard = now;
                        error
                    }
                }
            }
            Some(Ok(WsMessage::Binary(bytes))) => {
                if bytes.len() > limit {
                    return Ending::TooLarge(bytes.len());
                }
                RequestError::bad_json("binary frames are not accepted; send JSON as a text frame")
            }
            // tungstenite answers pings itself; pongs need nothing.
            Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_))) => continue,
            Some(Ok(WsMessage::Close(_))) | None => return Ending::Gone,
            Some(Err(error)) => return ending_of(error),
        };
        conn.outbox.request_sent();
        hub.send(Input::Refuse {
            conn: conn.clone(),
            error: refusal,
        })
        .await;
    }
}

/// Whether `request` is a sign of life: anything but a `received` that
/// confirms no id above what this connection already confirmed.
fn confirms_more(request: &Request, confirmed: &mut Option<u64>) -> bool {
    let Request::Received { id } = *request else {
        return true;
    };
    if confirmed.is_some_and(|c| id <= c) {
        return false;
    }
    *confirmed = Some(id);
    true
}

/// How a read error ends the connection: a message over tungstenite's hard
/// limit and a text frame that is not UTF-8 are answered; anything else
/// (a reset, a protocol violation) means the peer is gone.
fn ending_of(error: WsError) -> Ending {
    use tokio_tungstenite::tungstenite::error::CapacityError;
    match error {
        WsError::Capacity(CapacityError::MessageTooLong { size, .. }) => Ending::TooLarge(size),
        WsError::Utf8(_) => Ending::BadUtf8,
        _ => Ending::Gone,
    }
}

async fn write_loop(mut sink: SplitSink<Socket, WsMessage>, conn: Conn, hub: Arc<Hub>) {
    let store: Option<&Store> = hub.store.as_deref();
    loop {
        let next = conn.outbox.next().await;
        let write = async {
            match next {
                Next::Frames(frames) => {
                    // feed, then one flush: the socket gathers up to 8 KiB per
                    // write, so a burst costs a few system calls, not one per frame.
                    for frame in &frames {
                        // Durable mode: nothing leaves before its changes are on disk.
                        if let (Some(store), Some(seq)) = (store, frame.seq) {
                            if seq > store.committed_now() {
                                sink.flush().await?;
                                if !store.committed(seq).await {
                                    return Ok(false);
                                }
                            }
                        }
                        feed_text(&mut sink, &frame.text).await?;
                    }
                    sink.flush().await?;
                    if conn.outbox.wrote() {
                        hub.send(Input::Flushed { conn: conn.clone() }).await;
                    }
                    // Written to the socket: flushed queue messages may now leave
                    // the disk. A resuming device's leave when it confirms them.
                    if let Some(store) = store.filter(|_| conn.resume.is_none()) {
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
