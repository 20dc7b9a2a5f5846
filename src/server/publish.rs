//! The wire between the nodes of a cluster, both directions: what this
//! node publishes on another node's channel ([`Publish`], [`publish`]) and
//! what it makes of a payload published to it ([`parse`]). One place, so the
//! two directions cannot disagree about the format (the Lua scripts publish
//! the `all` and `take` kinds; `cluster/scripts.rs`).

use std::sync::Arc;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::backend::Remote;
use super::outbox::Outgoing;
use crate::cluster::Link;
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
pub(crate) fn parse(payload: &str) -> Option<Relayed> {
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
