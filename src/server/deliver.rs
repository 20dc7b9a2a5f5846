//! Delivering what the core decided: every frame of an outcome into its
//! connection's outbox, in order, by the core's one holder (see `owner.rs`).
//!
//! Slow-client policy: a push into a full outbox evicts that connection at
//! once. Its unsent chat messages (and the one that did not fit) go back to
//! the core, which re-queues them in the offline deque if it was the user's
//! last device. The eviction's own outcome (presence `offline`) is delivered
//! in the same loop, so routing never waits for any socket.
//!
//! Durable mode: the outcome's changes go to the store first, and its frames
//! carry the batch number, so the writer holds them until that batch is on
//! disk. An ack of `queued` therefore always follows the write.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;

use super::backend::Core;
use super::backend::Handle;
use super::conn::Conn;
use super::hub::Hub;
use super::outbox::{Encoded, Outgoing, PushError};
use super::publish;
use super::recorded;
use crate::core::{Outcome, Relayed, Step};
use crate::protocol::{Message, ServerFrame};
use crate::store::{Seq, StoreStopped, NEVER_COMMITTED};

/// Delivers `outcome` (and any evictions it causes). Only the core's owner calls it.
pub(crate) fn deliver(core: &mut Core, outcome: Outcome<Handle>, hub: &Hub) {
    let log = hub.log.as_ref();
    let mut work = VecDeque::from([outcome]);
    while let Some(mut outcome) = work.pop_front() {
        let seq = match &hub.store {
            Some(store) => {
                match store.submit(std::mem::take(&mut outcome.changes), core.next_message_id()) {
                    Ok(seq) => seq,
                    // The writer is gone (it only stops at shutdown): these frames
                    // wait for a commit that will never come, so nothing that
                    // needed the disk is acknowledged, and the connection closes.
                    Err(StoreStopped) => Some(NEVER_COMMITTED),
                }
            }
            None => None,
        };
        let encoded = encode(&outcome.frames, seq);
        let mut evicted: Vec<(Conn, Vec<Message>)> = Vec::new();
        let mut to_publish = Vec::new();
        for delivery in &outcome.deliveries {
            let conn = match &delivery.conn {
                Handle::Local(conn) => conn,
                Handle::Remote(remote) => {
                    let frame = &outcome.frames[delivery.frame];
                    to_publish.push(publish::Publish::new(
                        remote,
                        frame,
                        &encoded[delivery.frame],
                    ));
                    continue;
                }
            };
            let refused = match conn.outbox.push(encoded[delivery.frame].clone()) {
                Ok(()) => continue,
                Err(PushError::Full(o)) => o,
                // Closed: the connection is evicted in this loop, or the server is
                // shutting down; any other closing connection has already left the core.
                Err(PushError::Closed(o)) => o,
            };
            let index = match evicted.iter().position(|(c, _)| c.id == conn.id) {
                Some(i) => i,
                None if conn.outbox.is_open() => {
                    evicted.push((conn.clone(), Vec::new()));
                    evicted.len() - 1
                }
                None => continue,
            };
            evicted[index].1.extend(refused.message.clone());
        }
        // A new connection's queue, after its welcome. If it is already
        // closing, its disconnect may have run, so the flush is treated as
        // evicted: its messages go back to the queue now.
        if let Some(flush) = outcome.flush.take() {
            if let Handle::Local(conn) = &flush.conn {
                if let Err(frames) = conn.outbox.stream(flush.frames, seq, flush.charged > 0) {
                    let refused = frames.into_iter().filter_map(|f| f.into_chat_message());
                    match evicted.iter().position(|(c, _)| c.id == conn.id) {
                        Some(i) => evicted[i].1.extend(refused),
                        None => evicted.push((conn.clone(), refused.collect())),
                    }
                }
            }
        }
        // Cluster mode: frames for other nodes' sockets, in one round trip.
        // One that reached no node (its node died before the sweep) is queued.
        if let Some(link) = hub.cluster.as_ref().filter(|_| !to_publish.is_empty()) {
            for (user, message) in publish::publish(link, to_publish) {
                let outcome = core.relayed(Relayed::Undeliverable { user, message });
                recorded::relayed(hub, &outcome);
                work.extend(trusted(hub, outcome));
            }
        }
        // --max-memory: when every outbox together holds more than its share,
        // the fullest (a client that stopped reading) is evicted first. The
        // scan is O(connections), paid only while over the budget.
        if hub.outbox_bytes.load(Ordering::Relaxed) > hub.config.net.max_outbox_total {
            let fullest = recorded::all_connections(hub, core)
                .into_iter()
                .filter_map(|h| h.local().cloned())
                .filter(|c| c.outbox.is_open() && !evicted.iter().any(|(e, _)| e.id == c.id))
                .max_by_key(|c| c.outbox.bytes());
            if let Some(conn) = fullest.filter(|c| c.outbox.bytes() > 0) {
                evicted.push((conn, Vec::new()));
            }
        }
        // Kept whenever the rule was traced (a board is open, or the server
        // narrates), so a board opened mid-class shows the last message and
        // the recent events at once.
        if hub.board.watched() || log.is_some() {
            hub.board.record(&outcome.event, &outcome.trace);
        }
        if let Some(log) = log {
            log.event(outcome.event, outcome.trace);
        }
        for (conn, refused) in evicted {
            let mut unsent = conn.outbox.abort();
            unsent.extend(refused);
            if let Some(log) = log {
                log.line(format!(
                    "! evicted {} (conn {}): its outbox was full, up to {} frames or {} KiB unread (client too slow or stuck)",
                    conn.user,
                    conn.id,
                    conn.outbox.capacity(),
                    hub.config.net.max_outbox_bytes / 1024
                ));
            }
            let outcome = recorded::disconnect(hub, core, &conn.user, conn.id, unsent);
            work.extend(trusted(hub, outcome));
        }
    }
}

/// A rule's outcome, or none when Redis failed under it: the rule stopped
/// there and nothing it decided is sent (said in the log).
pub(crate) fn trusted(hub: &Hub, outcome: Step<Outcome<Handle>>) -> Option<Outcome<Handle>> {
    outcome
        .inspect_err(|why| {
            if let Some(log) = &hub.log {
                log.line(format!(
                    "! Redis failed under the last event ({why}); its shared state is repaired when Redis is back (this node registers its sockets again)"
                ));
            }
        })
        .ok()
}

/// Each frame serialised once, however many connections it fans out to.
fn encode(frames: &[ServerFrame], seq: Option<Seq>) -> Vec<Outgoing> {
    frames.iter().map(|frame| Encoded::of(frame, seq)).collect()
}
