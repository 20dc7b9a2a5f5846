//! The shell's one way into the core's rules: each call is recorded first
//! when `serve --record` is on, in the order the owner applies them, so a
//! replay (`vivachat replay`) goes through exactly the same states.
//!
//! Recording is a line handed to a writer thread (`lecture/record.rs`):
//! no disk I/O happens while the core is held.

use super::backend::{Core, Handle};
use super::hub::Hub;
use crate::core::{ConnHandle, ConnId, Disk, Outcome, Step};
use crate::lecture::record::Recorded;
use crate::names::UserId;
use crate::protocol::{Envelope, Message, RequestError};

/// Unix time in milliseconds.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Records what `input` builds, at `t`, if recording: the input is only
/// built then (a close's unsent messages are cloned for it).
fn record(hub: &Hub, t: u64, input: impl FnOnce() -> Recorded) {
    if let Some(recorder) = &hub.config.record {
        if let Some(stopped) = recorder.record(t, input()) {
            match &hub.log {
                Some(log) => log.line(stopped),
                None => eprintln!("{stopped}"),
            }
        }
    }
}

pub(crate) fn connect(
    hub: &Hub,
    core: &mut Core,
    user: &UserId,
    conn: Handle,
) -> Step<Outcome<Handle>> {
    record(hub, now_ms(), || Recorded::Connect {
        user: user.clone(),
        conn: conn.id(),
        resume: conn.resume(),
        epoch: conn.resume_epoch().map(str::to_string),
        batched: conn.presence_batched(),
    });
    core.connect(user, conn)
}

pub(crate) fn handle(
    hub: &Hub,
    core: &mut Core,
    user: &UserId,
    conn: &Handle,
    envelope: Envelope,
    now_ms: u64,
) -> Step<Outcome<Handle>> {
    record(hub, now_ms, || {
        Recorded::request(user, conn.id(), &envelope.request)
    });
    core.handle(user, conn, envelope, now_ms)
}

pub(crate) fn refuse(
    hub: &Hub,
    core: &Core,
    user: &UserId,
    conn: &Handle,
    error: RequestError,
) -> Outcome<Handle> {
    record(hub, now_ms(), || Recorded::Refuse {
        user: user.clone(),
        conn: conn.id(),
        code: error.code,
        detail: error.detail.clone(),
    });
    core.refuse(user, conn, error)
}

pub(crate) fn disconnect(
    hub: &Hub,
    core: &mut Core,
    user: &UserId,
    conn: ConnId,
    unsent: Vec<Message>,
) -> Step<Outcome<Handle>> {
    record(hub, now_ms(), || Recorded::close(user, conn, &unsent));
    core.disconnect(user, conn, unsent)
}

pub(crate) fn flushed(hub: &Hub, core: &mut Core, conn: ConnId) {
    record(hub, now_ms(), || Recorded::Flushed { conn });
    core.flushed(conn);
}

/// The devices of a name just claimed, to close those without the token.
pub(crate) fn devices(hub: &Hub, core: &mut Core, user: &UserId) -> Step<Vec<Handle>> {
    record(hub, now_ms(), || Recorded::Claimed { user: user.clone() });
    core.devices(user)
}

pub(crate) fn all_connections(hub: &Hub, core: &Core) -> Vec<Handle> {
    record(hub, now_ms(), || Recorded::AllConnections);
    core.all_connections()
}

/// v1.2's tick: recorded (and applied) only when it has something to do,
/// so a quiet server's recording does not grow ten lines a second.
pub(crate) fn presence_tick(hub: &Hub, core: &mut Core) -> Option<Outcome<Handle>> {
    if !core.presence_tick_due() {
        return None;
    }
    record(hub, now_ms(), || Recorded::PresenceTick);
    core.presence_tick()
}

/// Recorded only when it changes: the owner tells the core before every batch.
pub(crate) fn set_disk(hub: &Hub, core: &mut Core, disk: Disk) {
    if *core.disk() != disk {
        record(hub, now_ms(), || Recorded::Disk {
            unavailable: match &disk {
                Disk::Writable => None,
                Disk::Unavailable(why) => Some(why.clone()),
            },
        });
    }
    core.set_disk(disk);
}

/// Cluster: what another node routed here acted on Redis, which a replay of
/// this node's inputs does not hold; it is recorded so the replay can say so.
pub(crate) fn relayed(hub: &Hub, outcome: &Step<Outcome<Handle>>) {
    if let Ok(outcome) = outcome {
        record(hub, now_ms(), || Recorded::Relayed {
            summary: crate::event_log::summary(&outcome.event),
        });
    }
}
