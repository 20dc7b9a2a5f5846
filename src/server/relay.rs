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

use serde::Deserialize;
use serde_json::value::RawValue;

use super::backend::{Backend, Remote};
use super::hub::Hub;
use super::outbox::Outgoing;
use crate::cluster::{link, Link, HEARTBEAT_EVERY, HEARTBEAT_TTL};
use crate::core::Relayed;
use crate::names::{Name, UserId};
use crate::protocol::{parse_server_frame, Message, ServerFrame};

/// One PUBLISH to another node's channel.
pub(crate) struct Publish {
    node: Arc<str>,
    payload: String,
    /// A chat message for one user: queued if no node receives it.
    lost: Option<(UserId, Message)>,
}

impl Publish {
    /// What `remote` gets for `frame`, already serialised once as `encoded`.
    pub fn new(remote: &Remote, frame: &ServerFrame, encoded: &Outgoing) -> Publish {
        let message = frame.chat_message();
        let payload = format!(
            r#"{{"kind":"user","user":"{}","held":{},"receipt":{},"frame":{}}}"#,
            remote.user,
            remote.resuming,
            message.is_some_and(|m| m.receipt),
            encoded.text.as_str(),
        );
        Publish {
            node: remote.node.clone(),
            payload,
            lost: message.map(|m| (remote.user.clone(), m.clone())),
        }
    }
}

/// Publishes a batch in one round trip (a pipeline). Returns the chat
/// messages that no node received: PUBLISH answers how many subscribers got
/// it, and 0 means the node holding the socket is gone.
pub(crate) fn publish(link: &Link, batch: Vec<Publish>) -> Vec<(UserId, Message)> {
    let result = link.run("PUBLISH", "O(N+M)", |c| {
        let mut pipe = redis::pipe();
        for p in &batch {
            pipe.cmd("PUBLISH")
                .arg(link.key(&format!("node:{}", p.node)))
                .arg(&p.payload);
        }
        pipe.query::<Vec<i64>>(c)
    });
    // One round trip, but each PUBLISH is a command of its own: count them all.
    if result.is_ok() {
        link.count("PUBLISH", "O(N+M)", batch.len().saturating_sub(1) as u64);
    }
    let received = result.unwrap_or_else(|_| vec![0; batch.len()]);
    batch
        .into_iter()
        .zip(received)
        .filter(|(_, n)| *n == 0)
        .filter_map(|(p, _)| p.lost)
        .collect()
}

#[derive(Deserialize)]
struct Incoming<'a> {
    kind: &'a str,
    #[serde(default)]
    user: Option<&'a str>,
    #[serde(default)]
    about: Option<&'a str>,
    #[serde(default)]
    held: bool,
    #[serde(default)]
    receipt: bool,
    #[serde(default)]
    order: u64,
    #[serde(borrow, default)]
    frame: Option<&'a RawValue>,
}

/// What another node published here, as the core's input; None if it is not
/// one of ours (a newer or older node's format), which is then ignored.
fn parse(payload: &str) -> Option<Relayed> {
    let incoming: Incoming = serde_json::from_str(payload).ok()?;
    let frame = || parse_server_frame(incoming.frame?.get()).ok();
    Some(match incoming.kind {
        "user" => {
            let mut frame = frame()?;
            // The receipt flag is the sender's business, so not in the frame.
            if let ServerFrame::Chat { message, .. } = &mut frame {
                message.receipt = incoming.receipt;
            }
            Relayed::ToUser {
                user: Name::parse(incoming.user?).ok()?,
                frame,
                held: incoming.held,
            }
        }
        "all" => Relayed::ToEveryone {
            about: Name::parse(incoming.about?).ok()?,
            frame: frame()?,
            order: incoming.order,
        },
        "take" => Relayed::TakeQueue {
            user: Name::parse(incoming.user?).ok()?,
        },
        _ => return None,
    })
}

/// Joins the cluster: names this node's connection ids and subscribes to
/// its channel before any socket is accepted, then runs the heartbeat.
/// Returns the threads, which end when the server shuts down.
pub(crate) fn start(hub: Arc<Hub>, link: Arc<Link>) -> Result<Vec<JoinHandle<()>>, String> {
    let (ready, subscribed) = mpsc::channel();
    let subscriber = {
        let (hub, link) = (hub.clone(), link.clone());
        std::thread::Builder::new()
            .name("vivachat-subscriber".into())
            .spawn(move || subscribe(&hub, &link, ready))
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
    // A node restarted under the same name forgets its previous run's
    // devices (the sweep also takes it out of `nodes`), then beats.
    if let Backend::Redis(backend) = hub.core().structures_mut() {
        backend.resync()?;
    }
    beat(&link)?;
    let heart = std::thread::Builder::new()
        .name("vivachat-heartbeat".into())
        .spawn(move || heartbeat(&hub, &link))
        .map_err(|e| e.to_string())?;
    Ok(vec![subscriber, heart])
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

fn subscribe(hub: &Hub, link: &Link, ready: mpsc::Sender<()>) {
    let channel = link.key(&format!("node:{}", link.node()));
    while !hub.shutdown.has_begun() {
        let Ok(mut con) = link::open(link.client()) else {
            std::thread::sleep(Duration::from_millis(250));
            continue;
        };
        let mut pubsub = con.as_pubsub();
        if pubsub.subscribe(&channel).is_err()
            || pubsub
                .set_read_timeout(Some(Duration::from_millis(250)))
                .is_err()
        {
            std::thread::sleep(Duration::from_millis(250));
            continue;
        }
        let _ = ready.send(());
        while !hub.shutdown.has_begun() {
            match pubsub.get_message() {
                Ok(message) => {
                    let payload: String = message.get_payload().unwrap_or_default();
                    if let Some(relayed) = parse(&payload) {
                        hub.apply(|core| core.relayed(relayed));
                    }
                }
                Err(e) if e.is_timeout() => {}
                Err(_) => break,
            }
        }
    }
}

/// Renews this node's heartbeat: `alive:{node}` for [`HEARTBEAT_TTL`], and
/// its name in `nodes` (which survivors scan for expired heartbeats).
fn beat(link: &Link) -> Result<(), String> {
    let ttl = HEARTBEAT_TTL.as_millis() as u64;
    link.run("SET PX + SADD (heartbeat)", "O(1)", |c| {
        redis::pipe()
            .cmd("SET")
            .arg(link.key(&format!("alive:{}", link.node())))
            .arg(1)
            .arg("PX")
            .arg(ttl)
            .ignore()
            .cmd("SADD")
            .arg(link.key("nodes"))
            .arg(link.node())
            .ignore()
            .query::<()>(c)
    })
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
        if beat(link).is_err() {
            continue;
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
                hub.apply(|core| core.node_lost(&node));
            }
        }
    }
}

/// Redis answers again: reconnect, and (under the core's lock, before any
/// rule runs) register this node's open sockets again.
fn recover(hub: &Hub, link: &Link) {
    if link.reconnect().is_err() {
        return;
    }
    let mut core = hub.core();
    let result = match core.structures_mut() {
        Backend::Redis(backend) => backend.resync(),
        Backend::Memory(_) => Ok(0),
    };
    drop(core);
    let _ = beat(link);
    if let Some(log) = &hub.log {
        log.line(match result {
            Ok(n) => format!("! Redis is back: registered this node's {n} device(s) again"),
            Err(why) => format!("! Redis answered, then failed again: {why}"),
        });
    }
}
