//! `vivachat bench core`: routing through the in-memory core alone: how
//! much of a message's cost is the routing decision. It takes no lock,
//! serialises nothing and delivers nothing; the locked section as the
//! server runs it (the rule, each frame serialised once, the pushes into
//! outboxes) is `bench load`'s "core held", from the server's own counter.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Instant;

use serde::Serialize;

use crate::core::{ChatCore, ConnId, CoreConfig, MemoryStructures};
use crate::names::Name;
use crate::protocol::parse_request;

#[derive(Debug, Clone, Serialize)]
pub struct CoreReport {
    pub users: usize,
    pub messages: usize,
    pub seconds: f64,
    pub messages_per_second: f64,
    pub ns_per_message: f64,
    /// "structure.operation" -> operations per routed message.
    pub ops_per_message: BTreeMap<String, f64>,
}

/// Routes `messages` direct messages between `users` online users (user i
/// writes to user i+1), parsed once beforehand so only routing is timed.
pub fn run(users: usize, messages: usize) -> CoreReport {
    let users = users.max(2);
    let mut core: ChatCore<MemoryStructures<ConnId>> = ChatCore::new(
        MemoryStructures::default(),
        CoreConfig {
            max_offline: usize::MAX,
            ..CoreConfig::default()
        },
    );
    let names: Vec<Name> = (0..users)
        .map(|i| Name::parse(&format!("user{i}")).unwrap_or_else(|_| unreachable!()))
        .collect();
    for (i, name) in names.iter().enumerate() {
        // In memory no step can fail: there is nothing to wait for.
        let _ = black_box(core.connect(name, i as ConnId));
    }
    let requests: Vec<_> = (0..users)
        .map(|i| {
            let text = format!(
                r#"{{"type":"message","to":"user{}","text":"hello there, a typical chat line"}}"#,
                (i + 1) % users
            );
            parse_request(&text)
                .map_err(|e| e.detail)
                .unwrap_or_else(|e| panic!("{e}"))
        })
        .collect();
    let before = core.op_table();
    let start = Instant::now();
    for j in 0..messages {
        let i = j % users;
        let outcome = core.handle(&names[i], &(i as ConnId), requests[i].clone(), 0);
        let _ = black_box(outcome);
    }
    let seconds = start.elapsed().as_secs_f64();
    let spent = core.op_table().since(&before);
    let ops_per_message = spent
        .0
        .iter()
        .filter(|r| r.count > 0)
        .map(|r| {
            (
                format!("{}.{}", r.structure.name(), r.op.name()),
                r.count as f64 / messages.max(1) as f64,
            )
        })
        .collect();
    CoreReport {
        users,
        messages,
        seconds,
        messages_per_second: messages as f64 / seconds.max(1e-9),
        ns_per_message: seconds * 1e9 / messages.max(1) as f64,
        ops_per_message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_message_costs_one_get_and_one_block_check() {
        let r = run(10, 1_000);
        assert_eq!(r.ops_per_message.get("active_connections.get"), Some(&1.0));
        assert_eq!(r.ops_per_message.get("blocked_users.contains"), Some(&1.0));
        assert_eq!(r.ops_per_message.len(), 2, "{:?}", r.ops_per_message);
        assert!(r.messages_per_second > 0.0);
    }
}
