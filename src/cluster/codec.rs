//! How the shared structures' values are written in Redis: a queue entry
//! (`id \t cost \t sender \t json`, the scripts read the first three), a
//! device's record, and names read back. A leaf: the structures and the
//! views both use it.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::core::queued_cost;
use crate::names::{Name, UserId};
use crate::protocol::{Message, Target};

/// A message as a queue entry holds it (the `json` part of an entry).
#[derive(Serialize, Deserialize)]
struct Stored {
    id: u64,
    from: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    to: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    group: Option<String>,
    text: String,
    ts: u64,
    #[serde(default)]
    receipt: bool,
}

/// `id \t cost \t sender \t json`: the scripts read the first three fields.
pub fn encode(m: &Message) -> String {
    let (to, group) = match &m.target {
        Target::User(u) => (Some(u.to_string()), None),
        Target::Group(g) => (None, Some(g.to_string())),
    };
    let stored = Stored {
        id: m.id,
        from: m.from.to_string(),
        to,
        group,
        text: m.text.to_string(),
        ts: m.ts,
        receipt: m.receipt,
    };
    let json = serde_json::to_string(&stored).unwrap_or_default();
    format!(
        "{}\t{}\t{}\t{json}",
        m.id,
        queued_cost(m.text.len()),
        m.from
    )
}

/// The id is the entry's first field: the keep script writes the id it
/// settled on there, in front of a message encoded with id 0.
pub fn decode(entry: &str) -> Option<Message> {
    let mut fields = entry.splitn(4, '\t');
    let id: u64 = fields.next()?.parse().ok()?;
    let json = fields.nth(2)?;
    let s: Stored = serde_json::from_str(json).ok()?;
    let target = match (s.to, s.group) {
        (Some(u), _) => Target::User(Name::parse(&u).ok()?),
        (None, Some(g)) => Target::Group(Name::parse(&g).ok()?),
        (None, None) => return None,
    };
    Some(Message {
        id,
        from: Name::parse(&s.from).ok()?,
        target,
        text: Arc::from(s.text),
        ts: s.ts,
        receipt: s.receipt,
    })
}

/// What a device's field in `devices:{user}` holds: `1` or `0` (it resumed
/// or not), then where and since when, for `/inspect` on any node.
#[derive(Serialize, Deserialize, Default)]
pub struct DeviceRecord {
    #[serde(default)]
    pub remote: Option<String>,
    #[serde(default)]
    pub since: Option<u64>,
}

pub fn names(raw: Vec<String>) -> Vec<UserId> {
    raw.iter().filter_map(|s| Name::parse(s).ok()).collect()
}
