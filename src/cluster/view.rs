//! What the board and `/inspect` read of a cluster's shared structures.
//!
//! On a connection of their own, never the core's: a view may take a
//! while (it walks the keyspace), and routing must not wait for it. Bounded:
//! of each queue only its length and its two ends, as the board shows them
//! in memory, so a view costs O(users + groups + blocks), never O(queued
//! messages). Pipelined: one round trip per batch of keys that SCAN returns.

use redis::Connection;

use super::codec::{decode, names, DeviceRecord};
use super::link::{open, Link};
use crate::core::snapshot::QueueSnapshot;
use crate::core::{ConnDetail, ConnId, QueueView, StructuresSnapshot};
use crate::names::Name;

/// Messages shown from each end of a queue by `/inspect` on a cluster (the
/// board keeps its own, fewer): enough to read, never the whole queue.
pub const INSPECT_ENDS: usize = 50;

/// Keys SCAN is asked for per call, and keys one pipeline reads.
const BATCH: usize = 100;

/// Reads every shared structure for a view. Each socket's `unsent` is this
/// node's to add (the caller asks the core's owner for it).
pub fn read(link: &Link, view: QueueView) -> Result<StructuresSnapshot, String> {
    let mut con = open(&link.client()).map_err(|e| format!("cannot read Redis for a view: {e}"))?;
    let keep = match view {
        QueueView::Ends(keep) => keep,
        QueueView::All => INSPECT_ENDS,
    };
    let failed = |e: redis::RedisError| format!("Redis failed while a view read it: {e}");
    let mut snapshot = StructuresSnapshot::default();
    read_devices(link, &mut con, &mut snapshot).map_err(failed)?;
    read_queues(link, &mut con, keep, &mut snapshot).map_err(failed)?;
    read_sets(link, &mut con, &mut snapshot).map_err(failed)?;
    Ok(snapshot)
}

/// Keys `prefix:kind:*`, each with the part after `kind:`, sorted.
fn scan(
    link: &Link,
    con: &mut Connection,
    kind: &str,
) -> redis::RedisResult<Vec<(String, String)>> {
    let pattern = link.key(&format!("{kind}:*"));
    let strip = pattern.len() - 1;
    let mut keys = Vec::new();
    let mut cursor: u64 = 0;
    // Bounded: SCAN returns cursor 0 after one pass over the keyspace.
    for _ in 0..1_000_000 {
        link.count("SCAN (view)", "O(N)", 1);
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(BATCH)
            .query(con)?;
        keys.extend(batch.into_iter().map(|k| {
            let rest = k[strip..].to_string();
            (k, rest)
        }));
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    keys.sort_unstable();
    keys.dedup();
    Ok(keys)
}

/// `active_connections` and `presence`, read in one transaction (MULTI/EXEC)
/// so that they are from one moment: the connect and disconnect scripts keep
/// them equal, and a view must not show them apart. The devices are those of
/// every user SCAN found and every user online; a user who came online after
/// the SCAN is added and the transaction read again (at most four times).
fn read_devices(
    link: &Link,
    con: &mut Connection,
    snapshot: &mut StructuresSnapshot,
) -> redis::RedisResult<()> {
    let mut users: std::collections::BTreeSet<String> = scan(link, con, "devices")?
        .into_iter()
        .map(|(_, user)| user)
        .collect();
    let mut attempts = 0;
    let (online, hashes) = loop {
        attempts += 1;
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("ZRANGE")
            .arg(link.key("presence"))
            .arg(0)
            .arg(-1);
        for user in &users {
            pipe.cmd("HGETALL")
                .arg(link.key(&format!("devices:{user}")));
        }
        link.count(
            "MULTI SMEMBERS + HGETALL (view)",
            "O(n + d)",
            users.len() as u64 + 1,
        );
        let mut answers: Vec<redis::Value> = pipe.query(con)?;
        let online: Vec<String> = redis::from_redis_value(answers.remove(0))?;
        let unseen: Vec<String> = online
            .iter()
            .filter(|u| !users.contains(*u))
            .cloned()
            .collect();
        if unseen.is_empty() || attempts == 4 {
            break (online, answers);
        }
        users.extend(unseen);
    };
    // A sorted set: already in name order.
    snapshot.presence = names(online);
    for (user, fields) in users.iter().zip(hashes) {
        let fields: Vec<(String, String)> = redis::from_redis_value(fields)?;
        let Ok(user) = Name::parse(user) else {
            continue;
        };
        let mut ids = Vec::new();
        for (field, value) in fields {
            let Some((node, id)) = field.rsplit_once('/') else {
                continue;
            };
            let Ok(id) = id.parse::<ConnId>() else {
                continue;
            };
            let record: DeviceRecord =
                serde_json::from_str(value.get(1..).unwrap_or("")).unwrap_or_default();
            ids.push(id);
            snapshot.connection_details.push(ConnDetail {
                id,
                remote: record.remote,
                connected_at_ms: record.since,
                unsent: None,
                node: Some(node.to_string()),
            });
        }
        ids.sort_unstable();
        if !ids.is_empty() {
            snapshot.active_connections.insert(user, ids);
        }
    }
    snapshot.connection_details.sort_unstable_by_key(|d| d.id);
    Ok(())
}

/// `offline_messages`: each queue's length and its two ends, and the
/// released positions.
fn read_queues(
    link: &Link,
    con: &mut Connection,
    keep: usize,
    snapshot: &mut StructuresSnapshot,
) -> redis::RedisResult<()> {
    let keep = keep.max(1) as isize;
    for batch in scan(link, con, "q")?.chunks(BATCH) {
        let mut pipe = redis::pipe();
        for (key, _) in batch {
            pipe.cmd("LLEN").arg(key);
            pipe.cmd("LRANGE").arg(key).arg(0).arg(2 * keep - 1);
            pipe.cmd("LRANGE").arg(key).arg(-keep).arg(-1);
        }
        link.count(
            "LLEN + LRANGE ends (view)",
            "O(1) + O(k)",
            batch.len() as u64,
        );
        let answers: Vec<(usize, Vec<String>, Vec<String>)> = {
            let flat: Vec<redis::Value> = pipe.query(con)?;
            let mut out = Vec::with_capacity(batch.len());
            let mut it = flat.into_iter();
            while let (Some(len), Some(front), Some(back)) = (it.next(), it.next(), it.next()) {
                out.push((
                    redis::from_redis_value(len)?,
                    redis::from_redis_value(front)?,
                    redis::from_redis_value(back)?,
                ));
            }
            out
        };
        for ((_, user), (len, front, back)) in batch.iter().zip(answers) {
            let Ok(user) = Name::parse(user) else {
                continue;
            };
            if len == 0 {
                continue;
            }
            let keep = keep as usize;
            let (messages, skipped) = if len > 2 * keep {
                let ends = front.iter().take(keep).chain(back.iter());
                (ends.filter_map(|e| decode(e)).collect(), len - 2 * keep)
            } else {
                (front.iter().filter_map(|e| decode(e)).collect(), 0)
            };
            snapshot.offline_messages.insert(
                user,
                QueueSnapshot {
                    len,
                    messages,
                    skipped,
                },
            );
        }
    }
    link.count("HGETALL (view)", "O(n)", 1);
    let released: Vec<(String, u64)> =
        redis::cmd("HGETALL").arg(link.key("released")).query(con)?;
    snapshot.released = released
        .into_iter()
        .filter_map(|(u, n)| Some((Name::parse(&u).ok()?, n)))
        .collect();
    Ok(())
}

/// `group_members` and `blocked_users`: sets, read whole (they are bounded
/// by --max-group-size and --max-blocked).
fn read_sets(
    link: &Link,
    con: &mut Connection,
    snapshot: &mut StructuresSnapshot,
) -> redis::RedisResult<()> {
    for (kind, groups) in [("g", true), ("b", false)] {
        for batch in scan(link, con, kind)?.chunks(BATCH) {
            let mut pipe = redis::pipe();
            for (key, _) in batch {
                pipe.cmd("SMEMBERS").arg(key);
            }
            link.count("SMEMBERS (view)", "O(n)", batch.len() as u64);
            let all: Vec<Vec<String>> = pipe.query(con)?;
            for ((_, name), members) in batch.iter().zip(all) {
                let (Ok(name), members) = (Name::parse(name), sorted(names(members))) else {
                    continue;
                };
                // A set emptied since SCAN found it no longer exists in Redis.
                if members.is_empty() {
                    continue;
                }
                if groups {
                    snapshot.groups.insert(name, members);
                } else {
                    snapshot.blocked.insert(name, members);
                }
            }
        }
    }
    Ok(())
}

fn sorted(mut names: Vec<Name>) -> Vec<Name> {
    names.sort_unstable();
    names
}
