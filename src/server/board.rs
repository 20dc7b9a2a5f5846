//! The board's live feed, `GET /board/feed`: newline-delimited JSON, one
//! [`BoardFrame`] per line, pushed by the server as the class chats.
//!
//! Coalesced, so a big class cannot swamp the page or the core: routing only
//! appends the event to a short ring (while a board is open or the server
//! narrates), and one task builds at most [`FRAMES_PER_SECOND`] frames, each from one
//! bounded snapshot, whatever the message rate and however many boards
//! watch. A board that reads slowly skips frames: it always gets the latest.

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::handshake::Peer;
use super::hub::Hub;
use crate::board::{BoardFrame, Flow, FrameContext, QUEUE_ENDS};
use crate::core::{QueueView, Step};
use crate::event_log::format_event;

/// At most this many frames a second: smooth enough to watch a push_back
/// happen, and a bounded cost however fast the class chats.
pub const FRAMES_PER_SECOND: u64 = 10;
/// A quiet board still gets a frame this often, so its clock and ages move.
const REFRESH: Duration = Duration::from_secs(1);
/// Boards watching at once; a projector needs one, a few spares cost little.
const MAX_VIEWERS: usize = 32;

/// Builds frames while a board watches, until `stop`.
pub(crate) async fn publish(hub: Arc<Hub>, stop: impl Future<Output = ()>) {
    let mut tick = tokio::time::interval(Duration::from_millis(1000 / FRAMES_PER_SECOND));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut seen = u64::MAX;
    let mut last = Instant::now();
    let mut seq = 0;
    let mut last_build_us = 0;
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = &mut stop => break,
        }
        let board = &hub.board;
        if !board.watched() {
            seen = u64::MAX;
            continue;
        }
        let events = board
            .recent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .events;
        if events == seen && last.elapsed() < REFRESH {
            continue;
        }
        let started = Instant::now();
        seq += 1;
        let frame = match build(&hub, seq, events.wrapping_sub(seen), last_build_us).await {
            Some(Ok(frame)) => frame,
            // A cluster's Redis did not answer: the boards keep the last frame.
            Some(Err(_)) => continue,
            None => break,
        };
        let mut json = serde_json::to_vec(&frame).unwrap_or_default();
        json.push(b'\n');
        board.frames.send_replace(Some(Bytes::from(json)));
        last_build_us = started.elapsed().as_micros() as u64;
        board.built.fetch_add(1, Ordering::Relaxed);
        board.build_us.fetch_add(last_build_us, Ordering::Relaxed);
        seen = events;
        last = Instant::now();
    }
}

/// One frame; None once the core's owner has stopped, an error when a
/// cluster's Redis did not answer.
async fn build(hub: &Hub, seq: u64, events_since: u64, build_us: u64) -> Option<Step<BoardFrame>> {
    // A cluster reads Redis off the owner (see `Hub::read_shared`).
    let shared = match hub.read_shared(QueueView::Ends(QUEUE_ENDS)).await {
        Some(Err(why)) => return Some(Err(why)),
        shared => shared.and_then(Result::ok),
    };
    let (structures, ops, hold_us) = hub
        .look(|core| {
            let hold = Instant::now();
            let structures = match shared {
                Some(mut structures) => {
                    core.structures().add_unsent(&mut structures);
                    Ok(structures)
                }
                None => core.snapshot_ends(QUEUE_ENDS),
            };
            let ops = core.op_table();
            (structures, ops, hold.elapsed().as_micros() as u64)
        })
        .await?;
    let structures = match structures {
        Ok(structures) => structures,
        Err(why) => return Some(Err(why)),
    };
    let (lines, last_chat, last_diff) = {
        let recent = hub.board.recent.lock().unwrap_or_else(|e| e.into_inner());
        (
            recent.lines.clone(),
            recent.last_chat.clone(),
            recent.last_diff.clone(),
        )
    };
    let cx = FrameContext {
        seq,
        join_url: hub.site.join_url.clone(),
        uptime_ms: hub.uptime().as_millis() as u64,
        events: lines
            .iter()
            .map(|(at, event, trace)| format_event(*at, event, trace, false))
            .collect(),
        flow: last_chat.and_then(|(event, trace)| Flow::of(&event, &trace)),
        // The first frame has nothing before it to coalesce.
        events_since: if events_since > u64::MAX / 2 {
            0
        } else {
            events_since
        },
        hold_us,
        build_us,
        presence_diff: last_diff,
    };
    Some(Ok(BoardFrame::build(&structures, ops, cx)))
}

/// Counts a board while its feed is open.
struct Viewing(Arc<Hub>);

impl Drop for Viewing {
    fn drop(&mut self) {
        self.0.board.viewers.fetch_sub(1, Ordering::Relaxed);
    }
}

/// `GET /board/feed`: the same access rule as `/inspect`, then one frame per line.
pub(crate) async fn feed(
    State(hub): State<Arc<Hub>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
) -> Response {
    if let Err(refused) = hub.site.may_see_everything(&peer.addr, &headers) {
        return refused.into_response();
    }
    if hub.shutdown.has_begun() {
        return (StatusCode::SERVICE_UNAVAILABLE, "server shutting down\n").into_response();
    }
    if hub.board.viewers.fetch_add(1, Ordering::Relaxed) >= MAX_VIEWERS {
        hub.board.viewers.fetch_sub(1, Ordering::Relaxed);
        return (
            StatusCode::TOO_MANY_REQUESTS,
            format!("{MAX_VIEWERS} boards are already open; close one first\n"),
        )
            .into_response();
    }
    // A feed is long-lived by design: the handshake deadline must not cut it.
    peer.upgraded();
    let viewing = Viewing(hub.clone());
    let mut frames = hub.board.frames.subscribe();
    frames.mark_changed();
    let stream = futures_util::stream::unfold(
        (frames, viewing),
        |(mut frames, viewing)| async move {
            loop {
                tokio::select! {
                    changed = frames.changed() => changed.ok()?,
                    () = viewing.0.shutdown.begun() => return None,
                    // A blank line now and then: proxies keep the stream open.
                    () = tokio::time::sleep(Duration::from_secs(15)) => {
                        return Some((Ok::<_, Infallible>(Bytes::from_static(b"\n")), (frames, viewing)));
                    }
                }
                let frame = frames.borrow_and_update().clone();
                if let Some(frame) = frame {
                    return Some((Ok(frame), (frames, viewing)));
                }
            }
        },
    );
    (
        [
            (header::CONTENT_TYPE, "application/x-ndjson"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}
