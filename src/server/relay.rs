//! Cluster mode in the shell: frames published to other nodes, what other
//! nodes publish here, and each node's heartbeat and sweep of dead nodes.
//! The core decides everything these carry out ([`ChatCore::relayed`],
//! [`ChatCore::node_lost`]); nothing here routes.
//!
//! [`ChatCore::relayed`]: crate::core::ChatCore::relayed
//! [`ChatCore::node_lost`]: crate::core::ChatCore::node_lost

use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::hub::Hub;
use super::input::Input;
use super::publish::parse;
use crate::cluster::{open, Link, HEARTBEAT_EVERY, HEARTBEAT_TTL};

/// Subscribes to this node's channel, before any socket is accepted, and
/// returns once subscribed; the thread feeds what arrives to the core's owner
/// until the server shuts down.
pub(crate) fn subscribe(hub: Arc<Hub>, link: Arc<Link>) -> Result<JoinHandle<()>, String> {
    let (ready, subscribed) = mpsc::channel();
    let subscriber = {
        let link = link.clone();
        std::thread::Builder::new()
            .name("vivachat-subscriber".into())
            .spawn(move || listen(&hub, &link, ready))
            .map_err(|e| e.to_string())?
    };
    subscribed
        .recv_timeout(Duration::from_secs(5))
        .map_err(|_| {
            format!(
                "could not subscribe to this node's channel on {}",
                link.shown_url
            )
        })?;
    Ok(subscriber)
}

/// Beats once, then runs the heartbeat (and the sweep of dead nodes) on a
/// thread of its own until the server shuts down.
pub(crate) fn start_heartbeat(hub: Arc<Hub>, link: Arc<Link>) -> Result<JoinHandle<()>, String> {
    let _first = beat(&link)?;
    std::thread::Builder::new()
        .name("vivachat-heartbeat".into())
        .spawn(move || heartbeat(&hub, &link))
        .map_err(|e| e.to_string())
}

/// Leaves the cluster at shutdown (every socket is closed by then): the
/// heartbeat goes at once, so nobody waits for its TTL.
pub(crate) fn leave(link: &Link) {
    let _ = link.run("DEL", "O(1)", |c| {
        redis::pipe()
            .cmd("DEL")
            .arg(link.key(&format!("alive:{}", link.node())))
            .cmd("SREM")
            .arg(link.key("nodes"))
            .arg(link.node())
            .query::<()>(c)
    });
}

fn listen(hub: &Hub, link: &Link, ready: mpsc::Sender<()>) {
    let channel = link.key(&format!("node:{}", link.node()));
    let command = link.subscribe_command();
    // The Redis process the last subscription was made on, and the slot's
    // moves then.
    let mut subscribed_on: Option<(String, u64)> = None;
    while !hub.shutdown.has_begun() {
        let moved = link.owner_moves();
        let Ok(mut con) = open(&link.subscriber_client()) else {
            std::thread::sleep(Duration::from_millis(250));
            continue;
        };
        let server = run_id(&mut con).unwrap_or_default();
        // Confirmed within the connection's command timeout, or tried again.
        let confirmed = con
            .send_packed_command(&redis::cmd(command).arg(&channel).get_packed_command())
            .and_then(|()| con.recv_response());
        let mut pubsub = con.as_pubsub();
        if !confirmed.is_ok_and(|reply| is_kind(&reply, command))
            || pubsub
                .set_read_timeout(Some(Duration::from_millis(250)))
                .is_err()
        {
            std::thread::sleep(Duration::from_millis(250));
            continue;
        }
        let _ = ready.send(());
        // Subscribed again, so what was published here meanwhile is gone.
        // The same Redis dropped the subscription (a client kill, its output
        // buffer limit): PUBLISH had counted this node until then, so senders
        // were told `delivered` for frames dropped with it. The slot moved to
        // another master (a Redis Cluster's failover): SPUBLISH there counted
        // no subscriber, so what was sent meanwhile was queued, and a client
        // that stays connected would not be flushed it. So in both cases every
        // connection is closed (1012), and reconnects to its queue. A Redis
        // that restarted: the keep script may have published held messages
        // here before this node subscribed again (see `Input::FenceResuming`).
        if let Some((before, moved_before)) = &subscribed_on {
            hub.send_blocking(if moved != *moved_before {
                Input::Fence {
                    reason: "this node's Redis Cluster master failed over; reconnect",
                    why: "the Redis Cluster moved this cluster's slot to another master (a failover), and this node subscribed there (what was published meanwhile was queued)".into(),
                }
            } else if !server.is_empty() && server == *before {
                Input::Fence {
                    reason: "Redis dropped this node's subscription; reconnect",
                    why: "Redis dropped this node's subscription and it was opened again (what was published to it meanwhile is gone)".into(),
                }
            } else {
                Input::FenceResuming("Redis restarted, and this node subscribed again (held messages published to it before that are gone)".into())
            });
        }
        subscribed_on = Some((server, moved));
        // On a Redis Cluster, a failover moves the slot to another master:
        // the link finds it (`Link::reconnect`), and the subscription follows.
        while !hub.shutdown.has_begun() && link.owner_moves() == moved {
            match pubsub.get_message() {
                Ok(message) => {
                    let payload: String = message.get_payload().unwrap_or_default();
                    let relayed = parse(&payload);
                    if !relayed.is_empty() {
                        hub.send_blocking(Input::Relayed(relayed));
                    }
                }
                Err(e) if e.is_timeout() || interrupted(&e) => {}
                Err(_) => break,
            }
        }
    }
}

/// Whether a pub/sub reply is the confirmation of `command` (`subscribe`,
/// `ssubscribe`), in RESP2 (an array) or RESP3 (a push).
fn is_kind(reply: &redis::Value, command: &str) -> bool {
    let kind = match reply {
        redis::Value::Push { kind, .. } => kind.to_string(),
        redis::Value::Array(items) => match items.first() {
            Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
            _ => return false,
        },
        _ => return false,
    };
    kind.eq_ignore_ascii_case(command)
}

/// Which Redis process this connection reached (`INFO server`'s run_id):
/// it changes when Redis restarts.
fn run_id(con: &mut redis::Connection) -> Option<String> {
    let info: String = redis::cmd("INFO").arg("server").query(con).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("run_id:"))
        .map(|id| id.trim().to_string())
}

/// A read cut short by a signal (EINTR): SIGSTOP and SIGCONT do this to a
/// blocked read. Nothing was read, so the subscription is intact: read again.
fn interrupted(e: &redis::RedisError) -> bool {
    // redis keeps the io::Error behind an `Arc<dyn Error>`.
    type Shared = Arc<dyn std::error::Error + Send + Sync>;
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<Shared>())
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .is_some_and(|io| io.kind() == std::io::ErrorKind::Interrupted)
}

/// What one heartbeat found.
struct Beat {
    /// The previous heartbeat had not expired: false means the others may
    /// have counted this node dead.
    alive: bool,
    /// This node's marker (`marker:{node}`, set at its first beat, no TTL)
    /// was still there: false means Redis lost its data since.
    kept: bool,
}

/// Renews this node's heartbeat: `alive:{node}` for [`HEARTBEAT_TTL`], and
/// its name in `nodes` (which survivors scan for expired heartbeats), and
/// checks its marker, in one round trip (`SET ... GET`: Redis 6.2 or later).
fn beat(link: &Link) -> Result<Beat, String> {
    let ttl = HEARTBEAT_TTL.as_millis() as u64;
    let (alive, kept) = link.run("SET PX GET + SADD + SET GET (heartbeat)", "O(1)", |c| {
        redis::pipe()
            .cmd("SET")
            .arg(link.key(&format!("alive:{}", link.node())))
            .arg(1)
            .arg("PX")
            .arg(ttl)
            .arg("GET")
            .cmd("SADD")
            .arg(link.key("nodes"))
            .arg(link.node())
            .ignore()
            .cmd("SET")
            .arg(link.key(&format!("marker:{}", link.node())))
            .arg(1)
            .arg("GET")
            .query::<(Option<String>, Option<String>)>(c)
    })?;
    Ok(Beat {
        alive: alive.is_some(),
        kept: kept.is_some(),
    })
}

/// How long nodes admit only names they know as claimed after Redis lost
/// its data: every live node beats in that time, and puts back its claims.
const RECONCILE: Duration = Duration::from_secs(3);

/// Redis lost its data (restarted without persistence, or flushed): what it
/// held for the cluster is gone, and this node says so. It puts back the
/// name claims it knows, and (through the owner, before its next input) the
/// highest message id it issued, so claims and ids do not start again.
fn reconcile(hub: &Hub, link: &Link) {
    let (put_back, differ) = hub.gate.reconcile(link, RECONCILE);
    hub.resync_wanted
        .store(true, std::sync::atomic::Ordering::Release);
    hub.send_blocking(Input::Wake);
    if let Some(log) = &hub.log {
        log.line(format!(
            "! Redis lost its data (restarted without persistence, or flushed): queues, groups and blocks it held are gone; this node put back {put_back} name claim(s) and its highest message id, and admits only names it knows as claimed for {} s while the other nodes do the same",
            RECONCILE.as_secs()
        ));
        for user in differ {
            log.line(format!(
                "! {user} was claimed again with another token before this node put its claim back: that claim stands"
            ));
        }
    }
}

/// Once a [`HEARTBEAT_EVERY`]: renew the heartbeat, reconnect after an
/// outage, and sweep every node whose heartbeat expired.
fn heartbeat(hub: &Hub, link: &Link) {
    let mut next = Instant::now();
    while !hub.shutdown.has_begun() {
        next += HEARTBEAT_EVERY;
        std::thread::sleep(
            next.saturating_duration_since(Instant::now())
                .min(HEARTBEAT_EVERY),
        );
        if hub.shutdown.has_begun() {
            return;
        }
        if link.is_down() {
            recover(hub, link);
            continue;
        }
        let Ok(beat) = beat(link) else {
            continue;
        };
        if !beat.kept {
            reconcile(hub, link);
        }
        if !beat.alive {
            hub.send_blocking(Input::Fence {
                reason: "this node was counted dead (its heartbeat expired); reconnect",
                why: format!(
                    "this node's heartbeat had expired (paused or cut off for over {} s): the others counted it dead",
                    HEARTBEAT_TTL.as_secs()
                ),
            });
        }
        let nodes = link.run("SMEMBERS", "O(N)", |c| {
            redis::cmd("SMEMBERS")
                .arg(link.key("nodes"))
                .query::<Vec<String>>(c)
        });
        for node in nodes.unwrap_or_default() {
            if node == link.node() {
                continue;
            }
            let alive = link.run("EXISTS", "O(1)", |c| {
                redis::cmd("EXISTS")
                    .arg(link.key(&format!("alive:{node}")))
                    .query::<bool>(c)
            });
            if alive == Ok(false) {
                hub.send_blocking(Input::NodeLost(node));
            }
        }
    }
}

/// Redis answers again: reconnect, and have the core's owner register this
/// node's open sockets again before it applies any other input.
fn recover(hub: &Hub, link: &Link) {
    // Wanted before the link answers, so no rule runs on it first.
    hub.resync_wanted
        .store(true, std::sync::atomic::Ordering::Release);
    if link.reconnect().is_err() {
        return;
    }
    hub.send_blocking(Input::Wake);
    if let Ok(Beat { kept: false, .. }) = beat(link) {
        reconcile(hub, link);
    }
}
