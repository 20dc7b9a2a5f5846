//! The core's one owner, and the rules it applies to each [`Input`]: every
//! input reaches [`ChatCore`] through one queue, is applied in arrival
//! order, and has its outcome delivered (`deliver`) before the next.
//!
//! Who holds the core while it applies them depends on what a rule waits for:
//! - **In memory, flat combining.** A rule is a few microseconds of CPU
//!   work, so the task that sends an input takes the core if it is free and
//!   applies every input waiting, its own and the others', before letting
//!   go (`Hub::send`). No thread hand-off, so no wake-up per message.
//! - **On a cluster, a thread of its own** ([`start`]), fed by a bounded
//!   channel: each rule waits for Redis round trips, and it waits here,
//!   never on a tokio worker that other sockets, `/healthz` and the pages
//!   need. (A `std::sync::Mutex` held across those round trips stalled every
//!   worker that wanted the core.) This is Redis's own shape: one thread
//!   owns the data, fed by everyone.
//!
//! Either way the holder takes every input already waiting (the thread at
//! most [`MAX_BATCH`] per wake), which is where a backend can serve a batch
//! together. docs/performance.md ("One owner for the core") measures both.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::sync::mpsc;

use super::backend::{Backend, Core, Handle};
use super::conn::{
    close_frame, Conn, Ending, CLOSE_CLAIMED, CLOSE_GOING_AWAY, CLOSE_IDLE, CLOSE_INVALID_DATA,
    CLOSE_RESTART, CLOSE_TOO_BIG, CLOSE_TRY_AGAIN,
};
use super::deliver::{deliver, trusted};
use super::hub::{Hub, Rules};
use super::input::{Input, MAX_BATCH};
use super::recorded;
use crate::core::{ConnHandle, Event, Outcome, Step, Trace};
use crate::names::UserId;
use crate::protocol::{Envelope, ErrorCode, Message, Request, RequestError};

/// Starts the owner thread; joining it gives the core back (for the final counts).
pub(crate) fn start(
    hub: Arc<Hub>,
    core: Core,
    inputs: mpsc::Receiver<Input>,
) -> std::io::Result<JoinHandle<Core>> {
    std::thread::Builder::new()
        .name("vivachat-core".into())
        .spawn(move || own(&hub, core, inputs))
}

fn own(hub: &Hub, mut core: Core, mut inputs: mpsc::Receiver<Input>) -> Core {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        // Sleeps until there is work, then takes everything already waiting.
        if inputs.blocking_recv_many(&mut batch, MAX_BATCH) == 0 {
            return core;
        }
        hub.owner_stats.record(batch.len());
        let held = std::time::Instant::now();
        prepare(hub, &mut core);
        read_ahead(hub, &mut core, &batch);
        for input in batch.drain(..) {
            if matches!(input, Input::Stop) {
                return core;
            }
            apply_one(hub, &mut core, input);
        }
        hub.owner_stats.held(held);
    }
}

/// The rules both shapes of owner run (see `Hub::send`).
pub(crate) const RULES: Rules = Rules {
    prepare,
    apply: apply_one,
};

/// One input, applied. A bug in one rule must not stop routing for
/// everyone: the core is only changed through steps that leave it
/// consistent, so a panic is caught and logged, and the server goes on.
fn apply_one(hub: &Hub, core: &mut Core, input: Input) {
    resync_if_wanted(hub, core);
    let requester = match &input {
        Input::Request { conn, .. } | Input::Refuse { conn, .. } => Some(conn.clone()),
        _ => None,
    };
    let applied = catch_unwind(AssertUnwindSafe(|| apply(hub, core, input)));
    if applied.is_err() {
        eprintln!("! a rule panicked (a bug); the server goes on");
    }
    // Its replies are pushed (or it failed): the reader may read on.
    if let Some(conn) = requester {
        conn.outbox.request_applied();
    }
}

/// Once per batch: what the rules need to know about the shell right now.
fn prepare(hub: &Hub, core: &mut Core) {
    // The rules refuse what needs the disk while it cannot be written.
    if let Some(store) = &hub.store {
        recorded::set_disk(hub, core, store.disk());
    }
    // The trace costs an allocation per event: only while someone reads it.
    core.set_tracing(hub.log.is_some() || hub.board.watched());
}

/// Cluster: what the batch's direct messages will read first, and the ids
/// they will take, in one round trip before any of them runs
/// (`cluster/prefetch.rs`). If Redis fails here, each rule's own step finds
/// out and says so to its requester.
fn read_ahead(hub: &Hub, core: &mut Core, batch: &[Input]) {
    resync_if_wanted(hub, core);
    let Backend::Redis(redis) = core.structures_mut() else {
        return;
    };
    // A group message takes an id only once it is accepted (a member, the
    // budget): reserving one for it here would spend ids on refusals.
    let wants: Vec<(UserId, UserId)> = batch
        .iter()
        .filter_map(|input| match input {
            Input::Request { conn, envelope, .. } => match &envelope.request {
                Request::Message { to, .. } => Some((conn.user.clone(), to.clone())),
                _ => None,
            },
            _ => None,
        })
        .collect();
    let _ = redis.prefetch(&wants);
}

/// Redis answers again after an outage: this node's sockets are registered
/// again before the next rule runs.
/// It stays wanted until it succeeds: no rule runs on a Redis that answers
/// again before this node's sockets and its highest id are back in it.
fn resync_if_wanted(hub: &Hub, core: &mut Core) {
    if !hub.resync_wanted.load(Ordering::Acquire) {
        return;
    }
    let issued = core.next_message_id().saturating_sub(1);
    let epoch = core.epoch().to_string();
    if let Backend::Redis(backend) = core.structures_mut() {
        // Still down: it stays wanted (a rule's own step says so to its requester).
        if let Ok(n) = backend.resync(issued, &epoch) {
            hub.resync_wanted.store(false, Ordering::Release);
            if let Some(log) = &hub.log {
                log.line(format!(
                    "! Redis is back: registered this node's {n} device(s) again"
                ));
            }
        }
    }
}

fn apply(hub: &Hub, core: &mut Core, input: Input) {
    match input {
        Input::Connect { conn, claimed_now } => connect(hub, core, conn, claimed_now),
        Input::Request {
            conn,
            envelope,
            now_ms,
        } => request(hub, core, &conn, envelope, now_ms),
        Input::Refuse { conn, error } => {
            let refusal =
                recorded::refuse(hub, core, &conn.user, &Handle::Local(conn.clone()), error);
            deliver(core, refusal, hub);
        }
        Input::Close { conn, ending } => close(hub, core, &conn, ending),
        Input::Flushed { conn } => recorded::flushed(hub, core, conn.id),
        Input::PresenceTick => {
            if let Some(outcome) = recorded::presence_tick(hub, core) {
                deliver(core, outcome, hub);
            }
        }
        Input::Relayed(batch) => {
            for relayed in batch {
                let outcome = core.relayed(relayed);
                recorded::relayed(hub, &outcome);
                finish_rule(hub, core, outcome);
            }
        }
        Input::NodeLost(node) => {
            let outcome = core.node_lost(&node);
            recorded::relayed(hub, &outcome);
            finish_rule(hub, core, outcome);
        }
        Input::Fence { reason, why } => fence(hub, core, reason, &why),
        Input::FenceResuming(why) => fence_resuming(hub, core, &why),
        Input::Wake => {}
        Input::CloseAll(done) => {
            close_all(hub, core);
            let _ = done.send(());
        }
        Input::Look(look) => look(core),
        Input::Stop => {}
    }
}

/// Delivers the outcome of a rule nobody answers (a close, a relayed frame),
/// or says in the log that Redis failed under it: it stopped there, and
/// nothing it decided is sent.
fn finish_rule(hub: &Hub, core: &mut Core, outcome: Step<Outcome<Handle>>) {
    if let Some(outcome) = trusted(hub, outcome) {
        deliver(core, outcome, hub);
    }
}

/// A request's rule. When Redis failed under it (cluster mode) its outcome
/// is not trusted, and the requester is told `unavailable` instead: an
/// error, never a silent loss.
fn request(hub: &Hub, core: &mut Core, conn: &Conn, envelope: Envelope, now_ms: u64) {
    let reference = envelope.reference.clone();
    let handle = Handle::Local(conn.clone());
    let outcome = match recorded::handle(hub, core, &conn.user, &handle, envelope, now_ms) {
        Ok(outcome) => outcome,
        Err(why) => {
            let error = RequestError::new(
                ErrorCode::Unavailable,
                format!("{why}. This may not have been done: send it again in a moment"),
                reference,
            );
            recorded::refuse(hub, core, &conn.user, &handle, error)
        }
    };
    deliver(core, outcome, hub);
}

fn connect(hub: &Hub, core: &mut Core, conn: Conn, claimed_now: bool) {
    if hub.shutdown.has_begun() {
        // Raced with shutdown: never registered, so nothing to undo.
        conn.outbox
            .close_after_pending(close_frame(CLOSE_GOING_AWAY, "server shutting down"));
        return;
    }
    let claimed = match claimed_now {
        true => close_unclaimed(hub, core, &conn.user),
        false => Ok(()),
    };
    let outcome = claimed
        .and_then(|()| recorded::connect(hub, core, &conn.user, Handle::Local(conn.clone())));
    let outcome = match outcome {
        Ok(outcome) => outcome,
        // Cluster mode, Redis unreachable: the connect stopped where it
        // failed. The client is told why and reconnects later.
        Err(why) => {
            refuse_unavailable(hub, core, &conn, &why.0);
            return;
        }
    };
    // The welcome is exempt from the slow-client bound (the flush is not
    // pushed: `deliver` streams it); what comes after counts against it.
    let own = outcome.deliveries.iter().filter(|d| d.conn.id() == conn.id);
    conn.outbox.allow_backlog(own.count());
    deliver(core, outcome, hub);
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
    refuse_and_close(hub, core, conn, error, CLOSE_TRY_AGAIN, "redis unavailable");
    if let Some(log) = &hub.log {
        log.line(format!("! refused {} (conn {}): {why}", conn.user, conn.id));
    }
}

/// The name has just been claimed: its connections without the token (which
/// may be someone else's) are closed with 4001 before the owner is registered,
/// so from now on only the owner's devices receive its messages. What they
/// had not yet been sent goes back to the queue, for the owner.
fn close_unclaimed(hub: &Hub, core: &mut Core, user: &UserId) -> Step<()> {
    for device in recorded::devices(hub, core, user)? {
        let Some(device) = device.local().cloned() else {
            continue;
        };
        if device.authenticated {
            continue;
        }
        let unsent = device.outbox.take_and_close(Some(close_frame(
            CLOSE_CLAIMED,
            "this name was just claimed with a token; reconnect with it or use another name",
        )));
        if let Some(log) = &hub.log {
            log.line(format!(
                "! closed {user} (conn {}): the name was claimed and this connection has no token",
                device.id
            ));
        }
        let outcome = recorded::disconnect(hub, core, user, device.id, unsent);
        finish_rule(hub, core, outcome);
    }
    Ok(())
}

/// Tells the client why (an error frame), then closes with `code` once
/// everything before it is written.
fn refuse_and_close(
    hub: &Hub,
    core: &mut Core,
    conn: &Conn,
    error: RequestError,
    code: u16,
    reason: &'static str,
) {
    let refusal = recorded::refuse(hub, core, &conn.user, &Handle::Local(conn.clone()), error);
    deliver(core, refusal, hub);
    conn.outbox.close_after_pending(close_frame(code, reason));
}

/// Removes the connection from the core, in the same step as closing its
/// outbox, so no frame can be routed to it in between and then lost.
fn close(hub: &Hub, core: &mut Core, conn: &Conn, ending: Ending) {
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
            refuse_and_close(hub, core, conn, error, CLOSE_TOO_BIG, "message too large");
            Vec::new()
        }
        Ending::BadUtf8 => {
            let error = RequestError::bad_json(
                "a text frame that is not valid UTF-8; the connection will close (1007)",
            );
            refuse_and_close(
                hub,
                core,
                conn,
                error,
                CLOSE_INVALID_DATA,
                "invalid UTF-8 in a text frame",
            );
            Vec::new()
        }
    };
    let outcome = recorded::disconnect(hub, core, &conn.user, conn.id, unsent);
    finish_rule(hub, core, outcome);
}

/// Shutdown: closes every connection with 1001; with `--data` the store
/// writes what goes back to the queues before the server exits.
fn close_all(hub: &Hub, core: &mut Core) {
    // In the owner's order, so no connection registers between the flag and
    // the closes (a later Connect sees the flag).
    hub.shutdown.cancel();
    if let Some(log) = &hub.log {
        let connections = recorded::all_connections(hub, core).len();
        log.event(Event::Shutdown { connections }, Trace::new(false));
    }
    close_every(hub, core, CLOSE_GOING_AWAY, "server shutting down");
}

/// A cluster node that the others declared dead (its heartbeat expired while
/// it was paused or cut off) has been swept: its users were announced offline
/// and what was sent to them since was queued. Or its subscription broke, and
/// what was published to it meanwhile is gone. Either way its sockets no
/// longer stand for what the cluster believes, so it closes them all (1012):
/// each client reconnects, through any node, and is flushed its queue; what
/// was unsent in their outboxes goes back to it first. Then it registers again.
fn fence(hub: &Hub, core: &mut Core, reason: &'static str, why: &str) {
    let connections = recorded::all_connections(hub, core).len();
    close_every(hub, core, CLOSE_RESTART, reason);
    hub.resync_wanted.store(true, Ordering::Release);
    if let Some(log) = &hub.log {
        log.line(format!(
            "! fenced: {why}; closed this node's {connections} connection(s) with 1012 so they reconnect and get their queues"
        ));
    }
}

/// Closes only the sockets that resumed, with 1012: they reconnect, resume
/// from what they have, and get what this node missed. Nothing goes back to
/// a queue: what a resuming socket was not sent is still held.
fn fence_resuming(hub: &Hub, core: &mut Core, why: &str) {
    let resuming: Vec<Conn> = recorded::all_connections(hub, core)
        .into_iter()
        .filter_map(|h| h.local().cloned())
        .filter(|c| c.resume.is_some())
        .collect();
    for conn in &resuming {
        conn.outbox.take_all_and_close(Some(close_frame(
            CLOSE_RESTART,
            "this node missed messages while Redis restarted; reconnect to resume",
        )));
        let outcome = recorded::disconnect(hub, core, &conn.user, conn.id, Vec::new());
        finish_rule(hub, core, outcome);
    }
    if let Some(log) = &hub.log {
        log.line(format!(
            "! {why}; closed this node's {} resuming connection(s) with 1012 so they resume",
            resuming.len()
        ));
    }
}

/// Closes every connection with `code`, and every frame not known to be
/// written to it (its outbox, and the batch a stuck write holds) goes back
/// to its user's offline deque.
fn close_every(hub: &Hub, core: &mut Core, code: u16, reason: &'static str) {
    let mut connections: Vec<Conn> = recorded::all_connections(hub, core)
        .into_iter()
        .filter_map(|h| h.local().cloned())
        .collect();
    // A user's devices side by side: a message routed to two devices is
    // one message, and it goes back once, oldest first, with the last device.
    connections.sort_by(|a, b| a.user.cmp(&b.user).then(a.id.cmp(&b.id)));
    // Every outbox is closed first, so the presence `offline` of one user
    // is not pushed to another who is about to get 1001 anyway.
    let unsent: Vec<Vec<Message>> = connections
        .iter()
        .map(|conn| {
            conn.outbox
                .take_all_and_close(Some(close_frame(code, reason)))
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
        let outcome = recorded::disconnect(hub, core, &conn.user, conn.id, undelivered);
        finish_rule(hub, core, outcome);
    }
}
