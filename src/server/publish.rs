//! The wire between the nodes of a cluster, both directions: what this
//! node publishes on another node's channel ([`Publish`], [`publish`]) and
//! what it makes of a payload published to it ([`parse`]). One place, so the
//! two directions cannot disagree about the format (the Lua scripts publish
//! the `all` and `take` kinds, and the keep script the `user` kind with the
//! `id` it settled on; `cluster/scripts.rs`).

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

/// Publishes an outcome's frames for other nodes in one round trip: one
/// PUBLISH per node, its payload a JSON array of every frame for that node,
/// which the node applies as one input. So a node's recipients of one
/// message all have it before any of them can answer it. Returns the chat
/// messages that no node is subscribed for: PUBLISH answers how many
/// subscribers Redis handed it to, so 0 means the node's subscription is gone
/// and the message is queued. 1 is no proof of receipt: a crashed host stays
/// subscribed until TCP gives up, so only resume makes this at least once.
pub(crate) fn publish(link: &Link, batch: Vec<Publish>) -> Vec<(UserId, Message)> {
    // Nodes in the order their first frame came: a handful per outcome.
    let mut per_node: Vec<(Arc<str>, Vec<Publish>)> = Vec::new();
    for p in batch {
        match per_node.iter_mut().find(|(node, _)| *node == p.node) {
            Some((_, items)) => items.push(p),
            None => per_node.push((p.node.clone(), vec![p])),
        }
    }
    let command = link.publish_command();
    let result = link.run(command, "O(N+M)", |c| {
        let mut pipe = redis::pipe();
        for (node, items) in &per_node {
            let payloads: Vec<&str> = items.iter().map(|p| p.payload.as_str()).collect();
            pipe.cmd(command)
                .arg(link.key(&format!("node:{node}")))
                .arg(format!("[{}]", payloads.join(",")));
        }
        pipe.query::<Vec<i64>>(c)
    });
    // One round trip, but each PUBLISH is a command of its own: count them all.
    if result.is_ok() {
        link.count(command, "O(N+M)", per_node.len().saturating_sub(1) as u64);
    }
    let received = result.unwrap_or_else(|_| vec![0; per_node.len()]);
    per_node
        .into_iter()
        .zip(received)
        .filter(|(_, n)| *n == 0)
        .flat_map(|((_, items), _)| items.into_iter().filter_map(|p| p.lost))
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
    /// Set by the keep script, which settles a kept message's id.
    #[serde(default)]
    id: Option<u64>,
    #[serde(default)]
    except: Option<u64>,
    #[serde(borrow, default)]
    frame: Option<&'a RawValue>,
}

/// What another node published here, as the core's inputs, in order: an
/// array from a node's [`publish`], or one object from a Lua script. What is
/// not one of ours (a newer or older node's format) is skipped.
pub(crate) fn parse(payload: &str) -> Vec<Relayed> {
    if payload.trim_start().starts_with('[') {
        let items: Vec<&RawValue> = serde_json::from_str(payload).unwrap_or_default();
        return items
            .iter()
            .filter_map(|item| parse_one(item.get()))
            .collect();
    }
    parse_one(payload).into_iter().collect()
}

fn parse_one(payload: &str) -> Option<Relayed> {
    let incoming: Incoming = serde_json::from_str(payload).ok()?;
    let frame = || parse_server_frame(incoming.frame?.get()).ok();
    Some(match incoming.kind {
        "user" => {
            let mut frame = frame()?;
            // The receipt flag is the sender's business, so not in the frame.
            if let ServerFrame::Chat { message, .. } = &mut frame {
                message.receipt = incoming.receipt;
                if let Some(id) = incoming.id {
                    message.id = id;
                }
            }
            Relayed::ToUser {
                user: Name::parse(incoming.user?).ok()?,
                frame,
                held: incoming.held,
                except: incoming.except,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_s_array_and_a_script_s_object_both_parse_in_order() {
        let frame = r#"{"type":"presence","user":"bob","status":"online"}"#;
        let array = format!(
            r#"[{{"kind":"user","user":"amy","held":false,"receipt":false,"frame":{frame}}},{{"kind":"take","user":"bo"}},{{"kind":"what"}}]"#
        );
        let parsed = parse(&array);
        assert_eq!(parsed.len(), 2, "the unknown kind is skipped");
        assert!(matches!(&parsed[0], Relayed::ToUser { user, .. } if user.as_str() == "amy"));
        assert!(matches!(&parsed[1], Relayed::TakeQueue { user } if user.as_str() == "bo"));
        let one = parse(r#"{"kind":"take","user":"cy"}"#);
        assert!(matches!(&one[..], [Relayed::TakeQueue { user }] if user.as_str() == "cy"));
        assert!(parse("not json").is_empty());
    }
}
