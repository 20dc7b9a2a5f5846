//! The seed's five structures in Redis: what a cluster node routes with.
//!
//! Each method is the same operation as in memory, counted and traced the
//! same way, and carried out by one Redis command (or one script), which the
//! trace names beside it: `offline_messages[bob].push_back O(1)* -> RPUSH
//! vivachat:q:bob O(1)`. The node's own sockets stay in a local map; the
//! devices of other nodes come back from Redis as [`Remote`] stand-ins.

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use redis::Script;
use serde::{Deserialize, Serialize};

use super::handle::{Handle, LocalDevice, Remote};
use super::link::Link;
use super::scripts;
use crate::core::ops::{Op, OpCounts, Structure};
use crate::core::{
    queued_cost, Change, ConnDetail, ConnHandle, ConnId, DurableState, OpTable, QueueView,
    QueuedBytes, Structures, StructuresSnapshot, Trace,
};
use crate::names::{GroupId, Name, UserId};
use crate::protocol::{Message, Target};

use Structure::*;

struct Scripts {
    connect: Script,
    disconnect: Script,
    push: Script,
    put_back: Script,
    take_all: Script,
    pop_front: Script,
    release: Script,
    join: Script,
    leave: Script,
    sweep: Script,
}

impl Scripts {
    fn new() -> Scripts {
        Scripts {
            connect: Script::new(&scripts::connect()),
            disconnect: Script::new(&scripts::disconnect()),
            push: Script::new(&scripts::push()),
            put_back: Script::new(&scripts::put_back()),
            take_all: Script::new(&scripts::take_all()),
            pop_front: Script::new(&scripts::pop_front()),
            release: Script::new(&scripts::release()),
            join: Script::new(scripts::JOIN),
            leave: Script::new(scripts::LEAVE),
            sweep: Script::new(&scripts::sweep()),
        }
    }
}

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

pub fn decode(entry: &str) -> Option<Message> {
    let json = entry.splitn(4, '\t').nth(3)?;
    let s: Stored = serde_json::from_str(json).ok()?;
    let target = match (s.to, s.group) {
        (Some(u), _) => Target::User(Name::parse(&u).ok()?),
        (None, Some(g)) => Target::Group(Name::parse(&g).ok()?),
        (None, None) => return None,
    };
    Some(Message {
        id: s.id,
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
struct DeviceRecord {
    #[serde(default)]
    remote: Option<String>,
    #[serde(default)]
    since: Option<u64>,
}

fn names(raw: Vec<String>) -> Vec<UserId> {
    raw.iter().filter_map(|s| Name::parse(s).ok()).collect()
}

/// What one pipelined round trip fetched for routing a direct message from
/// `from` to `to`; each part is used once, by the operation that asks for it.
#[derive(Default)]
struct Prefetched {
    from: Option<UserId>,
    to: Option<UserId>,
    bytes: Option<(usize, usize)>,
    blocked: Option<bool>,
    devices: Option<Vec<(String, String)>>,
    id: Option<u64>,
}

/// What a trace shows as the size after an operation, read from its answer.
type SizeOf<T> = fn(&T) -> Option<usize>;

pub struct RedisStructures<L> {
    link: Arc<Link>,
    /// This node's sockets: `active_connections` for the devices whose
    /// socket is here. Redis holds every node's (a HASH per user).
    local: HashMap<UserId, Vec<Handle<L>>>,
    ops: OpCounts,
    /// The `presence_order` of the last presence change this node made (see
    /// `scripts::CONNECT`), which its relayed presence frames carry.
    order: Cell<u64>,
    /// The online users the connect script read, atomically with the
    /// registration, for the welcome (`online_users` right after it).
    online: RefCell<Option<Vec<UserId>>>,
    /// Per user, the order of the last presence change this node's devices
    /// were shown: a relayed change at or below it is old news.
    shown_presence: RefCell<HashMap<UserId, u64>>,
    /// The presence change this rule made may go straight to this node's
    /// devices (see `caught_up`).
    direct: Cell<bool>,
    /// Whether the last connect or disconnect script changed `presence` (it
    /// does so atomically with the device), for `set_online`/`set_offline`.
    presence_changed: Cell<bool>,
    failure: RefCell<Option<String>>,
    prefetched: RefCell<Prefetched>,
    next_remote: Cell<u64>,
    /// The highest message id this node issued or saw issued.
    highest_id: Cell<u64>,
    scripts: Scripts,
}

impl<L: LocalDevice> RedisStructures<L> {
    pub fn new(link: Arc<Link>, clock: Option<crate::core::ops::Clock>) -> RedisStructures<L> {
        RedisStructures {
            link,
            local: HashMap::new(),
            ops: clock.map(OpCounts::timed).unwrap_or_default(),
            order: Cell::new(0),
            online: RefCell::new(None),
            shown_presence: RefCell::default(),
            direct: Cell::new(false),
            presence_changed: Cell::new(false),
            failure: RefCell::new(None),
            prefetched: RefCell::default(),
            next_remote: Cell::new(1 << 63),
            highest_id: Cell::new(0),
            scripts: Scripts::new(),
        }
    }

    fn key(&self, rest: impl std::fmt::Display) -> String {
        self.link.key(&rest.to_string())
    }

    /// The first failure of this rule is kept; the shell refuses the rule's outcome.
    fn ok<T: Default>(&self, result: Result<T, String>) -> T {
        result.unwrap_or_else(|why| {
            self.failure.borrow_mut().get_or_insert(why);
            T::default()
        })
    }

    fn field(&self, id: ConnId) -> String {
        format!("{}/{id}", self.link.node())
    }

    fn remote(&self, node: &str, user: &UserId, resuming: bool) -> Handle<L> {
        let id = self.next_remote.get();
        self.next_remote.set(id.wrapping_add(1) | (1 << 63));
        Handle::Remote(Arc::new(Remote {
            id,
            node: Arc::from(node),
            user: user.clone(),
            resuming,
        }))
    }

    fn nudge_payload(&self, user: &UserId) -> String {
        serde_json::json!({"kind": "take", "user": user.as_str()}).to_string()
    }

    /// Registers one of this node's devices in Redis (CONNECT): on connect,
    /// and again for every device after Redis comes back.
    /// Returns the devices the user has anywhere, whether this made them
    /// online, and the order of their previous presence change.
    fn register(&self, user: &UserId, handle: &Handle<L>) -> Result<(usize, bool, u64), String> {
        let (record, resumed) = match handle {
            Handle::Local(conn) => (
                DeviceRecord {
                    remote: Some(conn.peer().0),
                    since: Some(conn.peer().1),
                },
                conn.resume().is_some(),
            ),
            Handle::Remote(_) => (DeviceRecord::default(), false),
        };
        let value = format!(
            "{}{}",
            u8::from(resumed),
            serde_json::to_string(&record).unwrap_or_default()
        );
        let (n, added, order, online, prev): (usize, u8, u64, Vec<String>, u64) =
            self.link.run("EVALSHA connect", "O(n)", |c| {
                self.scripts
                    .connect
                    .key(self.key(format_args!("devices:{user}")))
                    .key(self.key(format_args!("on:{}", self.link.node())))
                    .key(self.key("presence"))
                    .key(self.key("presence_order"))
                    .key(self.key("presence_last"))
                    .arg(user.as_str())
                    .arg(self.field(handle.id()))
                    .arg(value)
                    .arg(&self.link.config.prefix)
                    .invoke(c)
            })?;
        self.order.set(order);
        *self.online.borrow_mut() = Some(names(online));
        if let Handle::Local(conn) = handle {
            conn.set_registered_at(order);
        }
        Ok((n, added == 1, prev))
    }

    /// After an outage: forgets what Redis remembers of this node (devices
    /// that closed meanwhile) and registers every open socket again, so
    /// presence is right before the first rule runs. Presence changes during
    /// the outage are not announced (nothing could be sent then).
    pub fn resync(&mut self) -> Result<usize, String> {
        let node = self.link.node().to_string();
        self.run_sweep(&node)?;
        let mut registered = 0;
        self.online.borrow_mut().take();
        for (user, devices) in &self.local {
            for device in devices {
                self.register(user, device)?;
                registered += 1;
            }
        }
        self.online.borrow_mut().take();
        self.direct.set(false);
        Ok(registered)
    }

    fn run_sweep(&self, node: &str) -> Result<Vec<UserId>, String> {
        let gone: Vec<String> = self.link.run("EVALSHA sweep", "O(users x devices)", |c| {
            self.scripts
                .sweep
                .key(self.key(format_args!("on:{node}")))
                .key(self.key("presence"))
                .key(self.key("nodes"))
                .key(self.key("presence_order"))
                .key(self.key("presence_last"))
                .arg(&self.link.config.prefix)
                .arg(node)
                .invoke(c)
        })?;
        Ok(names(gone))
    }

    /// The budget counter `field` of HASH `bytes` ("" is the total).
    fn bytes(&self, field: &str) -> usize {
        let r = self.link.run("HGET (budget)", "O(1)", |c| {
            redis::cmd("HGET")
                .arg(self.key("bytes"))
                .arg(field)
                .query::<Option<i64>>(c)
        });
        self.ok(r).unwrap_or(0).max(0) as usize
    }

    fn decode_all(&self, entries: Vec<String>) -> Vec<Message> {
        entries.iter().filter_map(|e| decode(e)).collect()
    }

    /// A presence change this node made (`order`; the user's previous one was
    /// `prev`) can go straight to its own devices, ahead of anything routed
    /// after it, when they were shown every earlier change of that user;
    /// its copy through Redis is then old news. Otherwise an earlier change
    /// is still on its way through Redis, and this one follows it there.
    fn caught_up(&self, user: &UserId, order: u64, prev: u64) -> bool {
        let mut shown = self.shown_presence.borrow_mut();
        let last = shown.get(user).copied().unwrap_or(0);
        if prev > last {
            return false;
        }
        shown.insert(user.clone(), order);
        true
    }

    /// One operation carried out by one Redis command on one key (`SADD`,
    /// `SREM`, `SISMEMBER`, `SCARD`, `LLEN`), with an optional member:
    /// counted as `op` on `structure`, and traced with the command beside it.
    fn one_command<T: redis::FromRedisValue + Default>(
        &self,
        (structure, op): (Structure, Op),
        command: &'static str,
        key: &str,
        member: Option<&UserId>,
        (outer, size): (Option<&Name>, SizeOf<T>),
        trace: &mut Trace,
    ) -> T {
        let r = self.ops.measure(structure, op, || {
            self.link.run(command, "O(1)", |c| {
                let mut cmd = redis::cmd(command);
                cmd.arg(key);
                if let Some(member) = member {
                    cmd.arg(member.as_str());
                }
                cmd.query::<T>(c)
            })
        });
        let value: T = self.ok(r);
        trace.record(structure, op, outer, member, size(&value));
        trace.via(|| match member {
            Some(m) => format!("{command} {key} {m} O(1)"),
            None => format!("{command} {key} O(1)"),
        });
        value
    }

    /// A part of the prefetch, if `pick` finds it for this operation's keys.
    fn take_prefetched<T>(
        &self,
        pick: impl FnOnce(&mut Prefetched) -> Option<Option<T>>,
    ) -> Option<T> {
        pick(&mut self.prefetched.borrow_mut()).flatten()
    }

    /// Counts `op` once more for each of `extra` items a script did in one call.
    fn count_more(&self, structure: Structure, op: Op, extra: usize) {
        for _ in 0..extra {
            self.ops.measure(structure, op, || ());
        }
    }

    /// Keys matching `prefix:kind:*`, with the part after the prefix. Bounded: inspection only.
    fn scan(&self, kind: &str) -> Vec<(String, String)> {
        let pattern = self.key(format_args!("{kind}:*"));
        let strip = pattern.len() - 1;
        let mut keys = Vec::new();
        let mut cursor: u64 = 0;
        for _ in 0..100_000 {
            let r = self.link.run("SCAN (inspect)", "O(N)", |c| {
                redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000)
                    .query::<(u64, Vec<String>)>(c)
            });
            let (next, batch) = self.ok(r);
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
        keys
    }

    fn members(&self, key: &str) -> Vec<UserId> {
        let r = self.link.run("SMEMBERS (inspect)", "O(n)", |c| {
            redis::cmd("SMEMBERS").arg(key).query::<Vec<String>>(c)
        });
        let mut all = names(self.ok(r));
        all.sort_unstable();
        all
    }
}

impl<L: LocalDevice + Clone> Structures for RedisStructures<L> {
    type Conn = Handle<L>;

    fn connections(&self, user: &UserId, trace: &mut Trace) -> Cow<'_, [Handle<L>]> {
        let key = self.key(format_args!("devices:{user}"));
        let all = self.ops.measure(ActiveConnections, Op::Get, || {
            match self.take_prefetched(|p| (p.to.as_ref() == Some(user)).then(|| p.devices.take()))
            {
                Some(devices) => Ok(devices),
                None => self.link.run("HGETALL", "O(d)", |c| {
                    redis::cmd("HGETALL")
                        .arg(&key)
                        .query::<Vec<(String, String)>>(c)
                }),
            }
        });
        let all = self.ok(all);
        let mut handles: Vec<Handle<L>> = self.local.get(user).cloned().unwrap_or_default();
        // One stand-in per other node, however many of the user's devices it has.
        let mut nodes: BTreeMap<&str, bool> = BTreeMap::new();
        for (field, value) in &all {
            let node = field.rsplit_once('/').map_or(field.as_str(), |(n, _)| n);
            if node != self.link.node() {
                *nodes.entry(node).or_default() |= value.starts_with('1');
            }
        }
        for (node, resuming) in nodes {
            handles.push(self.remote(node, user, resuming));
        }
        trace.record(
            ActiveConnections,
            Op::Get,
            Some(user),
            None,
            Some(all.len()),
        );
        trace.via(|| format!("HGETALL {key} O(d)"));
        Cow::Owned(handles)
    }

    fn local_connections(&self, user: &UserId, trace: &mut Trace) -> Cow<'_, [Handle<L>]> {
        let devices = self.ops.measure(ActiveConnections, Op::Get, || {
            self.local.get(user).map_or(&[][..], Vec::as_slice)
        });
        trace.record(
            ActiveConnections,
            Op::Get,
            Some(user),
            None,
            Some(devices.len()),
        );
        trace.via(|| "this node's own sockets, no Redis".to_string());
        Cow::Borrowed(devices)
    }

    /// Presence changes are published by the connect, disconnect and sweep
    /// scripts themselves (see `scripts::connect`), to every node. This
    /// node's own devices get its change here, at once, when it has shown
    /// them every earlier change of that user (`caught_up`); else through Redis.
    fn devices_of_all(&self, users: &[UserId], trace: &mut Trace) -> Vec<Handle<L>> {
        let direct = self.direct.take();
        let all: Vec<Handle<L>> = self.ops.measure(ActiveConnections, Op::Iterate, || {
            if !direct {
                return Vec::new();
            }
            users
                .iter()
                .filter_map(|u| self.local.get(u))
                .flatten()
                .cloned()
                .collect()
        });
        trace.record(ActiveConnections, Op::Iterate, None, None, Some(all.len()));
        trace.via(|| {
            format!(
                "{}; PUBLISH to every node in the same script O(N+M): one order for all",
                if direct {
                    "this node's sockets now"
                } else {
                    "this node's later, through Redis"
                }
            )
        });
        all
    }

    fn presence_is_news(&self, about: &UserId, order: u64) -> bool {
        let mut shown = self.shown_presence.borrow_mut();
        let last = shown.entry(about.clone()).or_default();
        if order <= *last {
            return false;
        }
        *last = order;
        true
    }

    fn add_connection(&mut self, user: &UserId, conn: Handle<L>, trace: &mut Trace) -> usize {
        let result = self
            .ops
            .measure(ActiveConnections, Op::Insert, || self.register(user, &conn));
        let (n, added, prev) = self.ok(result);
        self.presence_changed.set(added);
        if added {
            self.direct
                .set(self.caught_up(user, self.order.get(), prev));
        }
        self.local.entry(user.clone()).or_default().push(conn);
        trace.record(ActiveConnections, Op::Insert, Some(user), None, Some(n));
        trace.via(|| {
            format!(
                "HSET {} {} (connect script) O(1)",
                self.key(format_args!("devices:{user}")),
                self.link.node()
            )
        });
        n
    }

    fn remove_connection(
        &mut self,
        user: &UserId,
        id: ConnId,
        trace: &mut Trace,
    ) -> Option<(usize, Handle<L>)> {
        let devices = self.local.get_mut(user)?;
        let at = devices.iter().position(|d| d.id() == id)?;
        let handle = devices.swap_remove(at);
        if devices.is_empty() {
            self.local.remove(user);
        }
        let field = self.field(id);
        let result = self.ops.measure(ActiveConnections, Op::Remove, || {
            self.link.run("EVALSHA disconnect", "O(1)", |c| {
                self.scripts
                    .disconnect
                    .key(self.key(format_args!("devices:{user}")))
                    .key(self.key(format_args!("on:{}", self.link.node())))
                    .key(self.key("presence"))
                    .key(self.key("presence_order"))
                    .key(self.key("presence_last"))
                    .arg(user.as_str())
                    .arg(&field)
                    .arg(&self.link.config.prefix)
                    .invoke::<(usize, u8, u64, u64)>(c)
            })
        });
        let (n, removed, order, prev) = self.ok(result);
        self.order.set(order);
        if removed == 1 {
            self.direct.set(self.caught_up(user, order, prev));
        }
        self.presence_changed.set(removed == 1);
        trace.record(ActiveConnections, Op::Remove, Some(user), None, Some(n));
        trace.via(|| {
            format!(
                "HDEL {} {field} (disconnect script) O(1)",
                self.key(format_args!("devices:{user}"))
            )
        });
        Some((n, handle))
    }

    fn all_connections(&self, trace: &mut Trace) -> Vec<Handle<L>> {
        let all: Vec<Handle<L>> = self.ops.measure(ActiveConnections, Op::Iterate, || {
            self.local.values().flatten().cloned().collect()
        });
        trace.record(ActiveConnections, Op::Iterate, None, None, Some(all.len()));
        all
    }

    fn set_online(&mut self, user: &UserId, trace: &mut Trace) -> bool {
        self.ops.measure(Presence, Op::Insert, || ());
        trace.record(Presence, Op::Insert, Some(user), None, None);
        trace.via(|| {
            format!(
                "SADD {} {user} O(1), in the same connect script",
                self.key("presence")
            )
        });
        self.presence_changed.get()
    }

    fn set_offline(&mut self, user: &UserId, trace: &mut Trace) -> bool {
        self.ops.measure(Presence, Op::Remove, || ());
        trace.record(Presence, Op::Remove, Some(user), None, None);
        trace.via(|| {
            format!(
                "SREM {} {user} O(1), in the same disconnect script",
                self.key("presence")
            )
        });
        self.presence_changed.get()
    }

    fn online_users(&self, trace: &mut Trace) -> Vec<UserId> {
        let key = self.key("presence");
        if let Some(all) = self.online.borrow_mut().take() {
            self.ops.measure(Presence, Op::Iterate, || ());
            trace.record(Presence, Op::Iterate, None, None, Some(all.len()));
            trace.via(|| format!("SMEMBERS {key} O(n), in the same connect script"));
            return all;
        }
        let r = self.ops.measure(Presence, Op::Iterate, || {
            self.link.run("SMEMBERS", "O(N)", |c| {
                redis::cmd("SMEMBERS").arg(&key).query::<Vec<String>>(c)
            })
        });
        let all = names(self.ok(r));
        trace.record(Presence, Op::Iterate, None, None, Some(all.len()));
        trace.via(|| format!("SMEMBERS {key} O(n)"));
        all
    }

    fn queued_len(&self, user: &UserId, trace: &mut Trace) -> usize {
        let key = self.key(format_args!("q:{user}"));
        let size: SizeOf<usize> = |n| Some(*n);
        self.one_command(
            (OfflineMessages, Op::Len),
            "LLEN",
            &key,
            None,
            (Some(user), size),
            trace,
        )
    }

    fn queue_push_back(&mut self, user: &UserId, message: Message, trace: &mut Trace) -> usize {
        let key = self.key(format_args!("q:{user}"));
        let r = self.ops.measure(OfflineMessages, Op::PushBack, || {
            self.link.run("EVALSHA push (RPUSH)", "O(1)", |c| {
                self.scripts
                    .push
                    .key(&key)
                    .key(self.key("bytes"))
                    .key(self.key(format_args!("devices:{user}")))
                    .arg(encode(&message))
                    .arg(message.id)
                    .arg(message.from.as_str())
                    .arg(queued_cost(message.text.len()))
                    .arg(self.key("node:"))
                    .arg(self.nudge_payload(user))
                    .invoke(c)
            })
        });
        let len: usize = self.ok(r);
        trace.record(OfflineMessages, Op::PushBack, Some(user), None, Some(len));
        trace.via(|| format!("RPUSH {key} O(1)"));
        len
    }

    fn queue_pop_front(&mut self, user: &UserId, trace: &mut Trace) -> Option<Message> {
        let key = self.key(format_args!("q:{user}"));
        let r = self.ops.measure(OfflineMessages, Op::PopFront, || {
            self.link.run("EVALSHA pop (LPOP)", "O(1)", |c| {
                self.scripts
                    .pop_front
                    .key(&key)
                    .key(self.key("bytes"))
                    .invoke::<Option<String>>(c)
            })
        });
        let message = self.ok(r).as_deref().and_then(decode);
        trace.record(OfflineMessages, Op::PopFront, Some(user), None, None);
        trace.via(|| format!("LPOP {key} O(1)"));
        message
    }

    fn queue_take_all(&mut self, user: &UserId, trace: &mut Trace) -> Vec<Message> {
        let key = self.key(format_args!("q:{user}"));
        let r = self.ops.measure(OfflineMessages, Op::PopFront, || {
            self.link.run("EVALSHA take (LRANGE+DEL)", "O(k)", |c| {
                self.scripts
                    .take_all
                    .key(&key)
                    .key(self.key("bytes"))
                    .invoke::<Vec<String>>(c)
            })
        });
        let all = self.decode_all(self.ok(r));
        // One pop_front per message, as in memory; Redis did them in one script.
        self.count_more(OfflineMessages, Op::PopFront, all.len().saturating_sub(1));
        trace.record(OfflineMessages, Op::PopFront, Some(user), None, Some(0));
        trace.via(|| {
            format!("LRANGE + DEL {key} in one script O(k): a second device cannot take it too")
        });
        all
    }

    fn queue_held_after(&self, user: &UserId, after: u64, trace: &mut Trace) -> Vec<Message> {
        let key = self.key(format_args!("q:{user}"));
        let r = self.ops.measure(OfflineMessages, Op::Iterate, || {
            self.link.run("LRANGE", "O(n)", |c| {
                redis::cmd("LRANGE")
                    .arg(&key)
                    .arg(0)
                    .arg(-1)
                    .query::<Vec<String>>(c)
            })
        });
        let held: Vec<Message> = self
            .decode_all(self.ok(r))
            .into_iter()
            .filter(|m| m.id > after)
            .collect();
        trace.record(
            OfflineMessages,
            Op::Iterate,
            Some(user),
            None,
            Some(held.len()),
        );
        trace.via(|| format!("LRANGE {key} 0 -1 O(n)"));
        held
    }

    fn queue_release(&mut self, user: &UserId, upto: u64, trace: &mut Trace) -> Vec<Message> {
        let key = self.key(format_args!("q:{user}"));
        let r = self.ops.measure(OfflineMessages, Op::PopFront, || {
            self.link.run("EVALSHA release (LPOP)", "O(k)", |c| {
                self.scripts
                    .release
                    .key(&key)
                    .key(self.key("bytes"))
                    .key(self.key("released"))
                    .arg(user.as_str())
                    .arg(upto)
                    .invoke::<Vec<String>>(c)
            })
        });
        let released = self.decode_all(self.ok(r));
        self.count_more(
            OfflineMessages,
            Op::PopFront,
            released.len().saturating_sub(1),
        );
        trace.record(OfflineMessages, Op::PopFront, Some(user), None, None);
        trace.via(|| format!("LPOP {key} while id <= {upto} (release script) O(k)"));
        released
    }

    fn queue_put_back(&mut self, user: &UserId, message: Message, trace: &mut Trace) -> bool {
        let key = self.key(format_args!("q:{user}"));
        let r = self.ops.measure(OfflineMessages, Op::PushBack, || {
            self.link.run("EVALSHA put_back (RPUSH)", "O(1)", |c| {
                self.scripts
                    .put_back
                    .key(&key)
                    .key(self.key("bytes"))
                    .key(self.key("released"))
                    .key(self.key(format_args!("devices:{user}")))
                    .arg(encode(&message))
                    .arg(message.id)
                    .arg(message.from.as_str())
                    .arg(queued_cost(message.text.len()))
                    .arg(user.as_str())
                    .arg(self.key("node:"))
                    .arg(self.nudge_payload(user))
                    .invoke::<u8>(c)
            })
        });
        let put = self.ok(r) == 1;
        trace.record(OfflineMessages, Op::PushBack, Some(user), None, None);
        trace.via(|| format!("RPUSH {key} in id order (put-back script) O(1)"));
        put
    }

    fn join_group(&mut self, group: &GroupId, user: &UserId, trace: &mut Trace) -> usize {
        let key = self.key(format_args!("g:{group}"));
        let r = self.ops.measure(GroupMembers, Op::Insert, || {
            self.link.run("EVALSHA join (SADD)", "O(1)", |c| {
                self.scripts
                    .join
                    .key(&key)
                    .key(self.key("groups"))
                    .key(self.key(format_args!("ug:{user}")))
                    .arg(user.as_str())
                    .arg(group.as_str())
                    .invoke(c)
            })
        });
        let size: usize = self.ok(r);
        trace.record(
            GroupMembers,
            Op::Insert,
            Some(group),
            Some(user),
            Some(size),
        );
        trace.via(|| format!("SADD {key} {user} O(1)"));
        size
    }

    fn leave_group(&mut self, group: &GroupId, user: &UserId, trace: &mut Trace) -> bool {
        let key = self.key(format_args!("g:{group}"));
        let r = self.ops.measure(GroupMembers, Op::Remove, || {
            self.link.run("EVALSHA leave (SREM)", "O(1)", |c| {
                self.scripts
                    .leave
                    .key(&key)
                    .key(self.key("groups"))
                    .key(self.key(format_args!("ug:{user}")))
                    .arg(user.as_str())
                    .arg(group.as_str())
                    .invoke::<u8>(c)
            })
        });
        let was = self.ok(r) == 1;
        trace.record(GroupMembers, Op::Remove, Some(group), Some(user), None);
        trace.via(|| format!("SREM {key} {user} O(1)"));
        was
    }

    fn is_member(&self, group: &GroupId, user: &UserId, trace: &mut Trace) -> bool {
        let key = self.key(format_args!("g:{group}"));
        let size: SizeOf<bool> = |_| None;
        self.one_command(
            (GroupMembers, Op::Contains),
            "SISMEMBER",
            &key,
            Some(user),
            (Some(group), size),
            trace,
        )
    }

    fn group_members(&self, group: &GroupId, trace: &mut Trace) -> Vec<UserId> {
        let key = self.key(format_args!("g:{group}"));
        let r = self.ops.measure(GroupMembers, Op::Iterate, || {
            self.link.run("SMEMBERS", "O(N)", |c| {
                redis::cmd("SMEMBERS").arg(&key).query::<Vec<String>>(c)
            })
        });
        let members = names(self.ok(r));
        trace.record(
            GroupMembers,
            Op::Iterate,
            Some(group),
            None,
            Some(members.len()),
        );
        trace.via(|| format!("SMEMBERS {key} O(m)"));
        members
    }

    fn group_len(&self, group: &GroupId, trace: &mut Trace) -> usize {
        let key = self.key(format_args!("g:{group}"));
        let size: SizeOf<usize> = |n| Some(*n);
        self.one_command(
            (GroupMembers, Op::Len),
            "SCARD",
            &key,
            None,
            (Some(group), size),
            trace,
        )
    }

    fn group_count(&self, trace: &mut Trace) -> usize {
        let key = self.key("groups");
        let size: SizeOf<usize> = |n| Some(*n);
        self.one_command(
            (GroupMembers, Op::Len),
            "SCARD",
            &key,
            None,
            (None, size),
            trace,
        )
    }

    fn block(&mut self, by: &UserId, whom: &UserId, trace: &mut Trace) -> bool {
        let key = self.key(format_args!("b:{by}"));
        let size: SizeOf<bool> = |_| None;
        self.one_command(
            (BlockedUsers, Op::Insert),
            "SADD",
            &key,
            Some(whom),
            (Some(by), size),
            trace,
        )
    }

    fn unblock(&mut self, by: &UserId, whom: &UserId, trace: &mut Trace) -> bool {
        let key = self.key(format_args!("b:{by}"));
        let size: SizeOf<bool> = |_| None;
        self.one_command(
            (BlockedUsers, Op::Remove),
            "SREM",
            &key,
            Some(whom),
            (Some(by), size),
            trace,
        )
    }

    fn is_blocked(&self, by: &UserId, whom: &UserId, trace: &mut Trace) -> bool {
        let key = self.key(format_args!("b:{by}"));
        let prefetched = self.take_prefetched(|p| {
            (p.to.as_ref() == Some(by) && p.from.as_ref() == Some(whom)).then(|| p.blocked.take())
        });
        let r = self.ops.measure(BlockedUsers, Op::Contains, || {
            if let Some(blocked) = prefetched {
                return Ok(blocked);
            }
            self.link.run("SISMEMBER", "O(1)", |c| {
                redis::cmd("SISMEMBER")
                    .arg(&key)
                    .arg(whom.as_str())
                    .query::<bool>(c)
            })
        });
        let blocked = self.ok(r);
        trace.record(BlockedUsers, Op::Contains, Some(by), Some(whom), None);
        trace.via(|| format!("SISMEMBER {key} {whom} O(1)"));
        blocked
    }

    fn blocked_len(&self, by: &UserId, trace: &mut Trace) -> usize {
        let key = self.key(format_args!("b:{by}"));
        let size: SizeOf<usize> = |n| Some(*n);
        self.one_command(
            (BlockedUsers, Op::Len),
            "SCARD",
            &key,
            None,
            (Some(by), size),
            trace,
        )
    }

    fn queued_bytes(&self) -> usize {
        self.bytes("")
    }

    /// One HMGET reads the sender's bytes and the total together: the
    /// budget check asks for both on every message.
    fn queued_bytes_of(&self, sender: &UserId) -> QueuedBytes {
        let prefetched =
            self.take_prefetched(|p| (p.from.as_ref() == Some(sender)).then(|| p.bytes.take()));
        if let Some((mine, total)) = prefetched {
            return QueuedBytes {
                all: total,
                sender: mine,
            };
        }
        let r = self.link.run("HMGET (budget)", "O(1)", |c| {
            redis::cmd("HMGET")
                .arg(self.key("bytes"))
                .arg(sender.as_str())
                .arg("")
                .query::<(Option<i64>, Option<i64>)>(c)
        });
        let (mine, total) = self.ok(r);
        QueuedBytes {
            all: total.unwrap_or(0).max(0) as usize,
            sender: mine.unwrap_or(0).max(0) as usize,
        }
    }

    fn groups_of(&self, user: &UserId) -> usize {
        let r = self.link.run("SCARD", "O(1)", |c| {
            redis::cmd("SCARD")
                .arg(self.key(format_args!("ug:{user}")))
                .query(c)
        });
        self.ok(r)
    }

    fn issue_id(&self, _next: &mut u64, _trace: &mut Trace) -> u64 {
        let key = self.key("next_id");
        let r = match self.take_prefetched(|p| Some(p.id.take())) {
            Some(id) => Ok(id),
            None => self.link.run("INCR", "O(1)", |c| {
                redis::cmd("INCR").arg(&key).query::<u64>(c)
            }),
        };
        let id = self.ok(r);
        self.highest_id.set(self.highest_id.get().max(id));
        id
    }

    fn next_id(&self, _next: u64) -> u64 {
        let r = self.link.run("GET", "O(1)", |c| {
            redis::cmd("GET")
                .arg(self.key("next_id"))
                .query::<Option<u64>>(c)
        });
        let issued = self.ok(r).unwrap_or(0).max(self.highest_id.get());
        issued + 1
    }

    /// One round trip (a pipeline) for the four things routing a direct
    /// message asks first. The id is taken now: a request refused after it
    /// leaves a gap in the ids, never a repeat.
    fn prefetch_route(&self, from: &UserId, to: &UserId) {
        let r = self.link.run("PIPELINE (route)", "O(d)", |c| {
            redis::pipe()
                .cmd("HMGET")
                .arg(self.key("bytes"))
                .arg(from.as_str())
                .arg("")
                .cmd("SISMEMBER")
                .arg(self.key(format_args!("b:{to}")))
                .arg(from.as_str())
                .cmd("HGETALL")
                .arg(self.key(format_args!("devices:{to}")))
                .cmd("INCR")
                .arg(self.key("next_id"))
                .query::<((Option<i64>, Option<i64>), bool, Vec<(String, String)>, u64)>(c)
        });
        let Ok(((mine, total), blocked, devices, id)) = r else {
            // The operations run one by one and report the failure themselves.
            self.forget_prefetch();
            return;
        };
        let bytes = |b: Option<i64>| b.unwrap_or(0).max(0) as usize;
        *self.prefetched.borrow_mut() = Prefetched {
            from: Some(from.clone()),
            to: Some(to.clone()),
            bytes: Some((bytes(mine), bytes(total))),
            blocked: Some(blocked),
            devices: Some(devices),
            id: Some(id),
        };
    }

    fn forget_prefetch(&self) {
        *self.prefetched.borrow_mut() = Prefetched::default();
    }

    fn take_failure(&mut self) -> Option<String> {
        self.forget_prefetch();
        self.failure.borrow_mut().take()
    }

    fn sweep_node(&mut self, node: &str, trace: &mut Trace) -> Vec<UserId> {
        let r = self
            .ops
            .measure(ActiveConnections, Op::Remove, || self.run_sweep(node));
        let gone = self.ok(r);
        trace.record(ActiveConnections, Op::Remove, None, None, Some(gone.len()));
        trace.via(|| {
            format!(
                "sweep script: HDEL {node}'s fields from each of its users' HASH, SREM {} the users left with none",
                self.key("presence")
            )
        });
        gone
    }

    /// A cluster is durable only as far as its Redis is (run it with
    /// `--appendonly yes`); `--data` is refused with `--redis`.
    fn take_changes(&mut self) -> Vec<Change> {
        // The end of every rule: nothing prefetched outlives it.
        self.forget_prefetch();
        self.direct.set(false);
        Vec::new()
    }

    fn restore(&mut self, _state: &DurableState) {}

    fn op_table(&self) -> OpTable {
        self.ops.table()
    }

    fn snapshot(&self, view: QueueView) -> StructuresSnapshot {
        let mut snapshot = StructuresSnapshot::default();
        for (key, user) in self.scan("devices") {
            let Ok(user) = Name::parse(&user) else {
                continue;
            };
            let r = self.link.run("HGETALL (inspect)", "O(d)", |c| {
                redis::cmd("HGETALL")
                    .arg(&key)
                    .query::<Vec<(String, String)>>(c)
            });
            let mut ids = Vec::new();
            for (field, value) in self.ok(r) {
                let Some((node, id)) = field.rsplit_once('/') else {
                    continue;
                };
                let Ok(id) = id.parse::<ConnId>() else {
                    continue;
                };
                let record: DeviceRecord =
                    serde_json::from_str(value.get(1..).unwrap_or("")).unwrap_or_default();
                let here = self
                    .local
                    .get(&user)
                    .and_then(|d| d.iter().find(|h| h.id() == id));
                ids.push(id);
                snapshot.connection_details.push(ConnDetail {
                    id,
                    remote: record.remote,
                    connected_at_ms: record.since,
                    unsent: here.and_then(|h| h.detail().unsent),
                    node: Some(node.to_string()),
                });
            }
            ids.sort_unstable();
            if !ids.is_empty() {
                snapshot.active_connections.insert(user, ids);
            }
        }
        snapshot.connection_details.sort_unstable_by_key(|d| d.id);
        snapshot.presence = self.members(&self.key("presence"));
        for (key, user) in self.scan("q") {
            let Ok(user) = Name::parse(&user) else {
                continue;
            };
            let r = self.link.run("LRANGE (inspect)", "O(n)", |c| {
                redis::cmd("LRANGE")
                    .arg(&key)
                    .arg(0)
                    .arg(-1)
                    .query::<Vec<String>>(c)
            });
            let queue: VecDeque<Message> = self.decode_all(self.ok(r)).into();
            if !queue.is_empty() {
                snapshot.offline_messages.insert(user, view.copy(&queue));
            }
        }
        let r = self.link.run("HGETALL (inspect)", "O(n)", |c| {
            redis::cmd("HGETALL")
                .arg(self.key("released"))
                .query::<Vec<(String, u64)>>(c)
        });
        snapshot.released = self
            .ok(r)
            .into_iter()
            .filter_map(|(u, n)| Some((Name::parse(&u).ok()?, n)))
            .collect();
        for (key, group) in self.scan("g") {
            if let Ok(group) = Name::parse(&group) {
                snapshot.groups.insert(group, self.members(&key));
            }
        }
        for (key, user) in self.scan("b") {
            if let Ok(user) = Name::parse(&user) {
                let blocked = self.members(&key);
                if !blocked.is_empty() {
                    snapshot.blocked.insert(user, blocked);
                }
            }
        }
        snapshot
    }
}
