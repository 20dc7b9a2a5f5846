//! The seed's five structures in Redis: what a cluster node routes with.
//!
//! Each method is the same operation as in memory, counted and traced the
//! same way, and carried out by one Redis command (or one script), which the
//! trace names beside it: `offline_messages[bob].push_back O(1)* -> RPUSH
//! vivachat:q:bob O(1)`. The node's own sockets stay in a local map; the
//! devices of other nodes come back from Redis as [`Remote`] stand-ins.

use std::borrow::Cow;
use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use redis::Script;

use super::codec::{decode, encode, names, DeviceRecord};
use super::handle::{Handle, LocalDevice, Remote};
use super::link::Link;
use super::prefetch::{Budget, Fields, Prefetched, Reserved};
use super::scripts;
use crate::core::ops::{Op, OpCounts, Structure};
use crate::core::{
    queued_cost, Change, ConnHandle, ConnId, DirectFacts, DurableState, Kept, OpTable, QueueView,
    QueuedBytes, Step, Structures, StructuresSnapshot, Trace, Unavailable,
};
use crate::names::{GroupId, Name, UserId};
use crate::protocol::{Message, ServerFrame};

use Structure::*;

struct Scripts {
    connect: Script,
    disconnect: Script,
    push: Script,
    keep: Script,
    put_back: Script,
    take_all: Script,
    pop_front: Script,
    release: Script,
    join: Script,
    leave: Script,
    sweep: Script,
    raise_id: Script,
}

impl Scripts {
    /// `publish` is how the scripts publish to a node's channel
    /// ([`Link::publish_command`]): each script starts by naming it.
    fn new(publish: &str) -> Scripts {
        let script = |body: &str| Script::new(&format!("local PUBLISH = '{publish}'\n{body}"));
        Scripts {
            connect: script(&scripts::connect()),
            disconnect: script(&scripts::disconnect()),
            push: script(&scripts::push()),
            keep: script(&scripts::keep()),
            put_back: script(&scripts::put_back()),
            take_all: script(&scripts::take_all()),
            pop_front: script(&scripts::pop_front()),
            release: script(&scripts::release()),
            join: script(scripts::JOIN),
            leave: script(scripts::LEAVE),
            sweep: script(&scripts::sweep()),
            raise_id: script(scripts::RAISE_ID),
        }
    }
}

/// What the connect script answered for one device: how many the user now
/// has anywhere, whether this made them online, the order of this change and
/// of their previous one, and who is online (read in the same script).
struct Registered {
    devices: usize,
    added: bool,
    order: u64,
    prev: u64,
    online: Vec<UserId>,
}

/// A budget counter as Redis holds it (absent, or an integer).
fn counter(value: Option<i64>) -> usize {
    value.unwrap_or(0).max(0) as usize
}

/// The budget's two counters, the sender's and the total, as HMGET reads them.
fn budget(mine: Option<i64>, total: Option<i64>) -> QueuedBytes {
    QueuedBytes {
        all: counter(total),
        sender: counter(mine),
    }
}

/// `active_connections.get(user)` in the trace, with the Redis command it took.
fn trace_devices(trace: &mut Trace, user: &UserId, devices: usize, via: impl FnOnce() -> String) {
    trace.record(ActiveConnections, Op::Get, Some(user), None, Some(devices));
    trace.via(via);
}

/// A reply of Redis, or why there was none, as a rule's step.
fn step<T>(reply: Result<T, String>) -> Step<T> {
    reply.map_err(Unavailable)
}

/// What one facts pipeline read, in the order it was asked (`read_facts`).
struct Facts {
    budgets: Vec<Budget>,
    blocks: Vec<bool>,
    devices: Vec<Fields>,
    lens: Vec<usize>,
}

/// The next `n` replies of a pipeline, each as a `T`.
fn take<T: redis::FromRedisValue>(
    replies: &mut impl Iterator<Item = redis::Value>,
    n: usize,
) -> Result<Vec<T>, String> {
    replies
        .take(n)
        .map(|v| {
            redis::from_redis_value(v).map_err(|e| format!("Redis answered a pipeline oddly ({e})"))
        })
        .collect()
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
    order: u64,
    /// The online users the connect script read, atomically with the
    /// registration, for the welcome: `online_users` takes them right after
    /// `add_connection`, in the same rule.
    online: Option<Vec<UserId>>,
    /// Per user, the order of the last presence change this node's devices
    /// were shown: a relayed change at or below it is old news.
    shown_presence: HashMap<UserId, u64>,
    /// The presence change this rule made may go straight to this node's
    /// devices (see `caught_up`); set by the step that made it.
    direct: bool,
    /// Whether the last connect or disconnect script changed `presence` (it
    /// does so atomically with the device), for `set_online`/`set_offline`.
    presence_changed: bool,
    scripts: Scripts,
    /// What the batch's pipeline read for its direct messages (`prefetch.rs`).
    prefetched: Prefetched,
    /// Message ids reserved from the cluster's counter, one INCRBY per batch.
    reserved: Reserved,
}

impl<L: LocalDevice> RedisStructures<L> {
    pub fn new(link: Arc<Link>, clock: Option<crate::core::ops::Clock>) -> RedisStructures<L> {
        let scripts = Scripts::new(link.publish_command());
        RedisStructures {
            link,
            local: HashMap::new(),
            ops: clock.map(OpCounts::timed).unwrap_or_default(),
            order: 0,
            online: None,
            shown_presence: HashMap::new(),
            direct: false,
            presence_changed: false,
            scripts,
            prefetched: Prefetched::default(),
            reserved: Reserved::default(),
        }
    }

    fn key(&self, rest: impl std::fmt::Display) -> String {
        self.link.key(&rest.to_string())
    }

    fn field(&self, id: ConnId) -> String {
        format!("{}/{id}", self.link.node())
    }

    /// The stand-in for `user`'s devices on `node`. Its id is drawn from the
    /// two names, with the high bit set, so it never equals a socket's id and
    /// is the same every time it is built.
    fn remote(&self, node: &str, user: &UserId, resuming: bool) -> Handle<L> {
        let mut hasher = DefaultHasher::new();
        (node, user.as_str()).hash(&mut hasher);
        let id = hasher.finish() | (1 << 63);
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
    fn register(&self, user: &UserId, handle: &Handle<L>) -> Result<Registered, String> {
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
                    .arg(self.link.prefix())
                    .invoke(c)
            })?;
        if let Handle::Local(conn) = handle {
            conn.set_registered_at(order);
        }
        Ok(Registered {
            devices: n,
            added: added == 1,
            order,
            prev,
            online: names(online),
        })
    }

    /// After an outage: forgets what Redis remembers of this node (devices
    /// that closed meanwhile) and registers every open socket again, so
    /// presence is right before the first rule runs. Presence changes during
    /// the outage are not announced (nothing could be sent then).
    /// `issued` is the highest message id this node issued: the shared
    /// counter is raised to it, in case Redis lost the counter.
    /// `epoch` is the cluster's, put back if Redis forgot it, so a client's
    /// `&epoch=` still matches on every node (the ids go on, so its position
    /// still means what it did).
    pub fn resync(&mut self, issued: u64, epoch: &str) -> Result<usize, String> {
        let node = self.link.node().to_string();
        self.prefetched.forget_all();
        self.reserved.drop_all();
        self.run_sweep(&node)?;
        self.link.run("EVALSHA raise_id + SET NX", "O(1)", |c| {
            self.scripts
                .raise_id
                .key(self.key("next_id"))
                .arg(issued)
                .invoke::<u64>(c)?;
            redis::cmd("SET")
                .arg(self.key("epoch"))
                .arg(epoch)
                .arg("NX")
                .query::<()>(c)
        })?;
        let mut registered = 0;
        for (user, devices) in &self.local {
            for device in devices {
                self.order = self.register(user, device)?.order;
                registered += 1;
            }
        }
        self.online = None;
        self.direct = false;
        Ok(registered)
    }

    /// Before a batch runs: reads in one pipeline what its direct messages
    /// (`wants`: sender, recipient) will ask first, each distinct key once,
    /// and reserves an id for each with one INCRBY (less what is left from
    /// the last batch). The rules then find their facts in `prefetched` (see
    /// `prefetch.rs` for why that is safe).
    pub fn prefetch(&mut self, wants: &[(UserId, UserId)]) -> Result<(), String> {
        if wants.is_empty() {
            return Ok(());
        }
        let reserve = (wants.len() as u64).saturating_sub(self.reserved.left());
        let mut senders: Vec<&UserId> = wants.iter().map(|(from, _)| from).collect();
        let mut pairs: Vec<(&UserId, &UserId)> = wants.iter().map(|(f, t)| (t, f)).collect();
        let mut recipients: Vec<&UserId> = wants.iter().map(|(_, to)| to).collect();
        // O(k log k) for the batch's k messages: each key read once.
        senders.sort_unstable();
        senders.dedup();
        pairs.sort_unstable();
        pairs.dedup();
        recipients.sort_unstable();
        recipients.dedup();
        let read = self.read_facts(
            ("PIPELINE (batch)", "O(rules)"),
            &senders,
            &pairs,
            &recipients,
            reserve,
        )?;
        self.link.batched(wants.len());
        self.link
            .count("HMGET (budget)", "O(1)", senders.len() as u64);
        self.link.count("SISMEMBER", "O(1)", pairs.len() as u64);
        self.link.count("HGETALL", "O(d)", recipients.len() as u64);
        self.link.count("LLEN", "O(1)", recipients.len() as u64);
        let mut filling = self.prefetched.fill(wants.len());
        for (from, budget) in senders.into_iter().zip(read.budgets) {
            filling.budget(from.clone(), budget);
        }
        for ((to, from), blocked) in pairs.into_iter().zip(read.blocks) {
            filling.block(to.clone(), from.clone(), blocked);
        }
        for ((to, fields), len) in recipients.into_iter().zip(read.devices).zip(read.lens) {
            filling.devices(to.clone(), fields);
            filling.len(to.clone(), len);
        }
        if reserve > 0 {
            self.link.count("INCRBY", "O(1)", 1);
        }
        Ok(())
    }

    /// One pipeline, counted once as `command`: the budget of each of
    /// `senders`, each (recipient, sender) block, the devices of each of
    /// `recipients`, and, if `reserve` > 0, that many ids (taken into
    /// `reserved`). What a batch reads and what one rule reads alone.
    fn read_facts(
        &self,
        command: (&'static str, &'static str),
        senders: &[&UserId],
        pairs: &[(&UserId, &UserId)],
        recipients: &[&UserId],
        reserve: u64,
    ) -> Result<Facts, String> {
        let bytes = self.key("bytes");
        let mut pipe = redis::pipe();
        for from in senders {
            pipe.cmd("HMGET").arg(&bytes).arg(from.as_str()).arg("");
        }
        for (to, from) in pairs {
            pipe.cmd("SISMEMBER")
                .arg(self.key(format_args!("b:{to}")))
                .arg(from.as_str());
        }
        for to in recipients {
            pipe.cmd("HGETALL")
                .arg(self.key(format_args!("devices:{to}")));
        }
        for to in recipients {
            pipe.cmd("LLEN").arg(self.key(format_args!("q:{to}")));
        }
        if reserve > 0 {
            pipe.cmd("INCRBY").arg(self.key("next_id")).arg(reserve);
        }
        let replies: Vec<redis::Value> = self.link.run(command.0, command.1, |c| pipe.query(c))?;
        if replies.len()
            != senders.len() + pairs.len() + 2 * recipients.len() + usize::from(reserve > 0)
        {
            return Err("Redis answered a pipeline with the wrong number of replies".to_string());
        }
        let mut replies = replies.into_iter();
        let facts = Facts {
            budgets: take(&mut replies, senders.len())?,
            blocks: take(&mut replies, pairs.len())?,
            devices: take(&mut replies, recipients.len())?,
            lens: take(&mut replies, recipients.len())?,
        };
        if let [top] = take::<u64>(&mut replies, usize::from(reserve > 0))?[..] {
            self.reserved.reserved(reserve, top);
        }
        Ok(facts)
    }

    /// Sweeps `node`'s devices. Another node is swept only while its heartbeat
    /// is still expired, checked in the same script: one that came back
    /// between the check and the sweep is left alone (and fences itself).
    fn run_sweep(&self, node: &str) -> Result<Vec<UserId>, String> {
        let other = node != self.link.node();
        let gone: Vec<String> = self.link.run("EVALSHA sweep", "O(users x devices)", |c| {
            self.scripts
                .sweep
                .key(self.key(format_args!("on:{node}")))
                .key(self.key("presence"))
                .key(self.key("nodes"))
                .key(self.key("presence_order"))
                .key(self.key("presence_last"))
                .key(self.key(format_args!("alive:{node}")))
                .arg(self.link.prefix())
                .arg(node)
                .arg(u8::from(other))
                .arg(super::HEARTBEAT_TTL.as_millis() as u64)
                .invoke(c)
        })?;
        Ok(names(gone))
    }

    /// The budget counter `field` of HASH `bytes` ("" is the total).
    fn bytes(&self, field: &str) -> Step<usize> {
        let r = self.link.run("HGET (budget)", "O(1)", |c| {
            redis::cmd("HGET")
                .arg(self.key("bytes"))
                .arg(field)
                .query::<Option<i64>>(c)
        });
        Ok(counter(step(r)?))
    }

    fn decode_all(&self, entries: Vec<String>) -> Vec<Message> {
        entries.iter().filter_map(|e| decode(e)).collect()
    }

    /// A presence change this node made (`order`; the user's previous one was
    /// `prev`) can go straight to its own devices, ahead of anything routed
    /// after it, when they were shown every earlier change of that user;
    /// its copy through Redis is then old news. Otherwise an earlier change
    /// is still on its way through Redis, and this one follows it there.
    fn caught_up(&mut self, user: &UserId, order: u64, prev: u64) -> bool {
        let last = self.shown_presence.get(user).copied().unwrap_or(0);
        if prev > last {
            return false;
        }
        self.shown_presence.insert(user.clone(), order);
        true
    }

    /// One operation carried out by one Redis command on one key (`SADD`,
    /// `SREM`, `SISMEMBER`, `SCARD`, `LLEN`), with an optional member:
    /// counted as `op` on `structure`, and traced with the command beside it.
    fn one_command<T: redis::FromRedisValue>(
        &self,
        (structure, op): (Structure, Op),
        command: &'static str,
        key: &str,
        member: Option<&UserId>,
        (outer, size): (Option<&Name>, SizeOf<T>),
        trace: &mut Trace,
    ) -> Step<T> {
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
        let value: T = step(r)?;
        trace.record(structure, op, outer, member, size(&value));
        trace.via(|| match member {
            Some(m) => format!("{command} {key} {m} O(1)"),
            None => format!("{command} {key} O(1)"),
        });
        Ok(value)
    }

    /// Counts `op` once more for each of `extra` items a script did in one call.
    fn count_more(&self, structure: Structure, op: Op, extra: usize) {
        for _ in 0..extra {
            self.ops.measure(structure, op, || ());
        }
    }

    /// Each of this node's sockets in a view's snapshot gets what it has
    /// not been sent (the view read the rest from Redis).
    pub fn add_unsent(&self, snapshot: &mut StructuresSnapshot) {
        for detail in &mut snapshot.connection_details {
            if detail.node.as_deref() != Some(self.link.node()) {
                continue;
            }
            let here = self.local.values().flatten().find(|h| h.id() == detail.id);
            detail.unsent = here.and_then(|h| h.detail().unsent);
        }
    }

    /// How a fact was read, for the narration.
    fn batch_how(&self, batched: bool) -> String {
        match (batched, self.prefetched.rules) {
            (true, 1) => "in the batch's pipeline (1 rule in one round trip)".to_string(),
            (true, n) => format!("in the batch's pipeline ({n} rules in one round trip)"),
            (false, _) => "in one pipeline".to_string(),
        }
    }

    /// A direct message's budget, block and devices in a round trip of its
    /// own, when its batch's pipeline did not read them (or a rule before it
    /// changed them); an id is reserved in it too if none is left.
    fn read_direct_facts(
        &self,
        from: &UserId,
        to: &UserId,
    ) -> Result<(Budget, bool, Fields), String> {
        let reserve = u64::from(self.reserved.left() == 0);
        let read = self.read_facts(
            ("PIPELINE (route)", "O(d)"),
            &[from],
            &[(to, from)],
            &[to],
            reserve,
        )?;
        let mut one = read.budgets.into_iter().zip(read.blocks).zip(read.devices);
        let ((budget, blocked), fields) =
            one.next().ok_or("Redis answered a pipeline with nothing")?;
        Ok((budget, blocked, fields))
    }

    /// The handles routing gets for `user`'s devices, from their HASH's
    /// fields (`node/conn` -> `1` or `0` and a record): this node's own
    /// sockets, and one stand-in per other node, however many devices it has.
    fn handles_from(&self, user: &UserId, fields: &[(String, String)]) -> Vec<Handle<L>> {
        let mut handles: Vec<Handle<L>> = self.local.get(user).cloned().unwrap_or_default();
        let mut nodes: BTreeMap<&str, bool> = BTreeMap::new();
        for (field, value) in fields {
            let node = field.rsplit_once('/').map_or(field.as_str(), |(n, _)| n);
            if node != self.link.node() {
                *nodes.entry(node).or_default() |= value.starts_with('1');
            }
        }
        for (node, resuming) in nodes {
            handles.push(self.remote(node, user, resuming));
        }
        handles
    }
}

impl<L: LocalDevice + Clone> Structures for RedisStructures<L> {
    type Conn = Handle<L>;

    fn connections(&self, user: &UserId, trace: &mut Trace) -> Step<Cow<'_, [Handle<L>]>> {
        let key = self.key(format_args!("devices:{user}"));
        let fields = self.ops.measure(ActiveConnections, Op::Get, || {
            self.link.run("HGETALL", "O(d)", |c| {
                redis::cmd("HGETALL")
                    .arg(&key)
                    .query::<Vec<(String, String)>>(c)
            })
        });
        let fields = step(fields)?;
        trace_devices(trace, user, fields.len(), || format!("HGETALL {key} O(d)"));
        Ok(Cow::Owned(self.handles_from(user, &fields)))
    }

    fn local_connections(&self, user: &UserId, trace: &mut Trace) -> Step<Cow<'_, [Handle<L>]>> {
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
        Ok(Cow::Borrowed(devices))
    }

    /// Presence changes are published by the connect, disconnect and sweep
    /// scripts themselves (see `scripts::connect`), to every node. This
    /// node's own devices get its change here, at once, when it has shown
    /// them every earlier change of that user (`caught_up`); else through Redis.
    fn devices_of_all(&mut self, users: &[UserId], trace: &mut Trace) -> Step<Vec<Handle<L>>> {
        let direct = std::mem::take(&mut self.direct);
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
        let publish = self.link.publish_command();
        trace.via(|| {
            format!(
                "{}; {publish} to every node in the same script O(N+M): every node gets them in one order",
                if direct {
                    "this node's sockets now"
                } else {
                    "this node's later, through Redis"
                }
            )
        });
        Ok(all)
    }

    fn presence_is_news(&mut self, about: &UserId, order: u64) -> bool {
        let last = self.shown_presence.entry(about.clone()).or_default();
        if order <= *last {
            return false;
        }
        *last = order;
        true
    }

    fn add_connection(&mut self, user: &UserId, conn: Handle<L>, trace: &mut Trace) -> Step<usize> {
        self.prefetched.forget_devices(user);
        let result = self
            .ops
            .measure(ActiveConnections, Op::Insert, || self.register(user, &conn));
        // Kept here even when Redis failed: the close that follows removes it,
        // and its disconnect script removes whatever Redis did record.
        self.local.entry(user.clone()).or_default().push(conn);
        let registered = step(result)?;
        self.order = registered.order;
        self.online = Some(registered.online);
        self.presence_changed = registered.added;
        self.direct = registered.added && self.caught_up(user, registered.order, registered.prev);
        let n = registered.devices;
        trace.record(ActiveConnections, Op::Insert, Some(user), None, Some(n));
        trace.via(|| {
            format!(
                "HSET {} {} (connect script) O(1)",
                self.key(format_args!("devices:{user}")),
                self.link.node()
            )
        });
        Ok(n)
    }

    fn remove_connection(
        &mut self,
        user: &UserId,
        id: ConnId,
        trace: &mut Trace,
    ) -> Step<Option<(usize, Handle<L>)>> {
        self.prefetched.forget_devices(user);
        let Some(devices) = self.local.get_mut(user) else {
            return Ok(None);
        };
        let Some(at) = devices.iter().position(|d| d.id() == id) else {
            return Ok(None);
        };
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
                    .arg(self.link.prefix())
                    .invoke::<(usize, u8, u64, u64)>(c)
            })
        });
        let (n, removed, order, prev) = step(result)?;
        self.order = order;
        self.direct = removed == 1 && self.caught_up(user, order, prev);
        self.presence_changed = removed == 1;
        trace.record(ActiveConnections, Op::Remove, Some(user), None, Some(n));
        trace.via(|| {
            format!(
                "HDEL {} {field} (disconnect script) O(1)",
                self.key(format_args!("devices:{user}"))
            )
        });
        Ok(Some((n, handle)))
    }

    fn all_connections(&self, trace: &mut Trace) -> Vec<Handle<L>> {
        let all: Vec<Handle<L>> = self.ops.measure(ActiveConnections, Op::Iterate, || {
            self.local.values().flatten().cloned().collect()
        });
        trace.record(ActiveConnections, Op::Iterate, None, None, Some(all.len()));
        all
    }

    fn set_online(&mut self, user: &UserId, trace: &mut Trace) -> Step<bool> {
        self.ops.measure(Presence, Op::Insert, || ());
        trace.record(Presence, Op::Insert, Some(user), None, None);
        trace.via(|| {
            format!(
                "ZADD {} 0 {user} O(log n), in the same connect script",
                self.key("presence")
            )
        });
        Ok(self.presence_changed)
    }

    fn set_offline(&mut self, user: &UserId, trace: &mut Trace) -> Step<bool> {
        self.ops.measure(Presence, Op::Remove, || ());
        trace.record(Presence, Op::Remove, Some(user), None, None);
        trace.via(|| {
            format!(
                "ZREM {} {user} O(log n), in the same disconnect script",
                self.key("presence")
            )
        });
        Ok(self.presence_changed)
    }

    fn online_users(&mut self, trace: &mut Trace) -> Step<Vec<UserId>> {
        let key = self.key("presence");
        if let Some(all) = self.online.take() {
            self.ops.measure(Presence, Op::Iterate, || ());
            trace.record(Presence, Op::Iterate, None, None, Some(all.len()));
            trace.via(|| format!("ZRANGE {key} 0 -1 O(log n + n), in the same connect script"));
            return Ok(all);
        }
        let r = self.ops.measure(Presence, Op::Iterate, || {
            self.link.run("ZRANGE", "O(log(N)+M)", |c| {
                redis::cmd("ZRANGE")
                    .arg(&key)
                    .arg(0)
                    .arg(-1)
                    .query::<Vec<String>>(c)
            })
        });
        let all = names(step(r)?);
        trace.record(Presence, Op::Iterate, None, None, Some(all.len()));
        trace.via(|| format!("ZRANGE {key} 0 -1 O(log n + n)"));
        Ok(all)
    }

    fn queued_len(&self, user: &UserId, trace: &mut Trace) -> Step<usize> {
        let key = self.key(format_args!("q:{user}"));
        if let Some(len) = self.prefetched.len(user) {
            self.ops.measure(OfflineMessages, Op::Len, || ());
            trace.record(OfflineMessages, Op::Len, Some(user), None, Some(len));
            trace.via(|| format!("LLEN {key} O(1), {}", self.batch_how(true)));
            return Ok(len);
        }
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

    fn queue_push_back(
        &mut self,
        user: &UserId,
        message: Message,
        trace: &mut Trace,
    ) -> Step<usize> {
        let key = self.key(format_args!("q:{user}"));
        let sender = message.from.clone();
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
        let (len, total, mine): (usize, i64, i64) = step(r)?;
        self.prefetched.pushed(user, len, &sender, mine, total);
        trace.record(OfflineMessages, Op::PushBack, Some(user), None, Some(len));
        trace.via(|| format!("RPUSH {key} O(1)"));
        Ok(len)
    }

    /// One script (`scripts::keep`) for every copy: the id settled, each
    /// copy appended in id order and published to the nodes with devices of
    /// its user, this node's own included, so no copy goes straight to a
    /// socket here ahead of one still on its way through Redis.
    fn keep(
        &mut self,
        message: Message,
        users: &[UserId],
        except: Option<ConnId>,
        trace: &mut Trace,
    ) -> Step<Kept> {
        let chat = ServerFrame::Chat {
            message: Message {
                id: 0,
                ..message.clone()
            },
            offline: false,
        };
        let tail = format!(
            r#""kind":"user","held":true,"receipt":{},"except":{},"frame":{}}}"#,
            message.receipt,
            except.map_or("null".to_string(), |c| c.to_string()),
            chat.to_json()
        );
        let entry = encode(&Message {
            id: 0,
            ..message.clone()
        });
        let r = self.ops.measure(OfflineMessages, Op::PushBack, || {
            let command = match self.link.on_a_cluster() {
                true => "EVALSHA keep (RPUSH + SPUBLISH)",
                false => "EVALSHA keep (RPUSH + PUBLISH)",
            };
            self.link.run(command, "O(users)", |c| {
                let mut call = self.scripts.keep.prepare_invoke();
                call.key(self.key("next_id"))
                    .key(self.key("bytes"))
                    .key(self.key("kept"))
                    .key(self.key("released"));
                for user in users {
                    call.key(self.key(format_args!("q:{user}")))
                        .key(self.key(format_args!("devices:{user}")));
                }
                call.arg(message.id)
                    .arg(&entry)
                    .arg(message.from.as_str())
                    .arg(queued_cost(message.text.len()))
                    .arg(self.key("node:"))
                    .arg(&tail);
                for user in users {
                    call.arg(user.as_str());
                }
                call.invoke::<Vec<i64>>(c)
            })
        });
        let answered = step(r)?;
        let (id, total, mine, lens) = match answered[..] {
            [id, total, mine, ref lens @ ..] if lens.len() == users.len() => {
                (id as u64, total, mine, lens)
            }
            _ => {
                self.prefetched.forget_queues();
                return step(Err(
                    "the keep script answered in an unknown shape".to_string()
                ));
            }
        };
        // What the script read as it wrote replaces what the batch read.
        for (user, &len) in users.iter().zip(lens) {
            self.prefetched
                .pushed(user, len as usize, &message.from, mine, total);
        }
        // One push_back per copy, as in memory; Redis did them in one script.
        self.count_more(OfflineMessages, Op::PushBack, users.len().saturating_sub(1));
        let publish = self.link.publish_command();
        for user in users {
            let key = self.key(format_args!("q:{user}"));
            trace.record(OfflineMessages, Op::PushBack, Some(user), None, None);
            trace.via(|| {
                format!(
                    "RPUSH {key} id {id} + {publish} to each node with {user}'s devices (keep script) O(1)"
                )
            });
        }
        Ok(Kept { id, sent: true })
    }

    fn queue_pop_front(&mut self, user: &UserId, trace: &mut Trace) -> Step<Option<Message>> {
        self.prefetched.forget_queues();
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
        let message = step(r)?.as_deref().and_then(decode);
        trace.record(OfflineMessages, Op::PopFront, Some(user), None, None);
        trace.via(|| format!("LPOP {key} O(1)"));
        Ok(message)
    }

    fn queue_take_all(&mut self, user: &UserId, trace: &mut Trace) -> Step<Vec<Message>> {
        self.prefetched.forget_queues();
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
        let all = self.decode_all(step(r)?);
        // One pop_front per message, as in memory; Redis did them in one script.
        self.count_more(OfflineMessages, Op::PopFront, all.len().saturating_sub(1));
        trace.record(OfflineMessages, Op::PopFront, Some(user), None, Some(0));
        trace.via(|| {
            format!("LRANGE + DEL {key} in one script O(k): a second device cannot take it too")
        });
        Ok(all)
    }

    fn queue_held_after(&self, user: &UserId, after: u64, trace: &mut Trace) -> Step<Vec<Message>> {
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
            .decode_all(step(r)?)
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
        Ok(held)
    }

    fn queue_release(&mut self, user: &UserId, upto: u64, trace: &mut Trace) -> Step<Vec<Message>> {
        self.prefetched.forget_queues();
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
        let released = self.decode_all(step(r)?);
        self.count_more(
            OfflineMessages,
            Op::PopFront,
            released.len().saturating_sub(1),
        );
        trace.record(OfflineMessages, Op::PopFront, Some(user), None, None);
        trace.via(|| format!("LPOP {key} while id <= {upto} (release script) O(k)"));
        Ok(released)
    }

    fn queue_put_back(&mut self, user: &UserId, message: Message, trace: &mut Trace) -> Step<bool> {
        self.prefetched.forget_queues();
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
        let put = step(r)? == 1;
        trace.record(OfflineMessages, Op::PushBack, Some(user), None, None);
        trace.via(|| format!("RPUSH {key} in id order (put-back script) O(1)"));
        Ok(put)
    }

    fn join_group(&mut self, group: &GroupId, user: &UserId, trace: &mut Trace) -> Step<usize> {
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
        let size: usize = step(r)?;
        trace.record(
            GroupMembers,
            Op::Insert,
            Some(group),
            Some(user),
            Some(size),
        );
        trace.via(|| format!("SADD {key} {user} O(1)"));
        Ok(size)
    }

    fn leave_group(&mut self, group: &GroupId, user: &UserId, trace: &mut Trace) -> Step<bool> {
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
        let was = step(r)? == 1;
        trace.record(GroupMembers, Op::Remove, Some(group), Some(user), None);
        trace.via(|| format!("SREM {key} {user} O(1)"));
        Ok(was)
    }

    fn is_member(&self, group: &GroupId, user: &UserId, trace: &mut Trace) -> Step<bool> {
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

    fn group_members(&self, group: &GroupId, trace: &mut Trace) -> Step<Vec<UserId>> {
        let key = self.key(format_args!("g:{group}"));
        let r = self.ops.measure(GroupMembers, Op::Iterate, || {
            self.link.run("SMEMBERS", "O(N)", |c| {
                redis::cmd("SMEMBERS").arg(&key).query::<Vec<String>>(c)
            })
        });
        let members = names(step(r)?);
        trace.record(
            GroupMembers,
            Op::Iterate,
            Some(group),
            None,
            Some(members.len()),
        );
        trace.via(|| format!("SMEMBERS {key} O(m)"));
        Ok(members)
    }

    fn group_len(&self, group: &GroupId, trace: &mut Trace) -> Step<usize> {
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

    fn group_count(&self, trace: &mut Trace) -> Step<usize> {
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

    fn block(&mut self, by: &UserId, whom: &UserId, trace: &mut Trace) -> Step<bool> {
        self.prefetched.forget_block(by, whom);
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

    fn unblock(&mut self, by: &UserId, whom: &UserId, trace: &mut Trace) -> Step<bool> {
        self.prefetched.forget_block(by, whom);
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

    fn is_blocked(&self, by: &UserId, whom: &UserId, trace: &mut Trace) -> Step<bool> {
        let key = self.key(format_args!("b:{by}"));
        let r = self.ops.measure(BlockedUsers, Op::Contains, || {
            self.link.run("SISMEMBER", "O(1)", |c| {
                redis::cmd("SISMEMBER")
                    .arg(&key)
                    .arg(whom.as_str())
                    .query::<bool>(c)
            })
        });
        let blocked = step(r)?;
        trace.record(BlockedUsers, Op::Contains, Some(by), Some(whom), None);
        trace.via(|| format!("SISMEMBER {key} {whom} O(1)"));
        Ok(blocked)
    }

    fn blocked_len(&self, by: &UserId, trace: &mut Trace) -> Step<usize> {
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

    fn queued_bytes(&self) -> Step<usize> {
        self.bytes("")
    }

    /// One HMGET reads the sender's bytes and the total together: the
    /// budget check asks for both on every message.
    fn queued_bytes_of(&self, sender: &UserId) -> Step<QueuedBytes> {
        let r = self.link.run("HMGET (budget)", "O(1)", |c| {
            redis::cmd("HMGET")
                .arg(self.key("bytes"))
                .arg(sender.as_str())
                .arg("")
                .query::<(Option<i64>, Option<i64>)>(c)
        });
        let (mine, total) = step(r)?;
        Ok(budget(mine, total))
    }

    fn groups_of(&self, user: &UserId) -> Step<usize> {
        let r = self.link.run("SCARD", "O(1)", |c| {
            redis::cmd("SCARD")
                .arg(self.key(format_args!("ug:{user}")))
                .query(c)
        });
        step(r)
    }

    /// An id this node reserved for its batch, or else one INCR of the counter
    /// every node shares: unique across the cluster, and increasing on this
    /// node. The core's own `next` is not the cluster's.
    fn issue_id(&self, _next: u64, _trace: &mut Trace) -> Step<u64> {
        if let Some(id) = self.reserved.take() {
            return Ok(id);
        }
        let r = self.link.run("INCR", "O(1)", |c| {
            redis::cmd("INCR").arg(self.key("next_id")).query::<u64>(c)
        });
        step(r)
    }

    /// The shared counter's next, or the core's (past every id this node
    /// issued) if Redis has forgotten the counter (restarted empty).
    fn next_id(&self, next: u64) -> Step<u64> {
        let r = self.link.run("GET", "O(1)", |c| {
            redis::cmd("GET")
                .arg(self.key("next_id"))
                .query::<Option<u64>>(c)
        });
        Ok((step(r)?.unwrap_or(0) + 1).max(next))
    }

    /// What routing a direct message asks first: the budget, the block,
    /// the devices and the id. Usually read already, with the rest of its
    /// batch, in one pipeline (`prefetch`); else in a round trip of its own.
    /// Each part is counted and narrated as the operation it stands for, in
    /// the order memory does them. The id is taken now: a request refused
    /// after it leaves a gap in the ids, never a repeat.
    fn direct_facts(
        &self,
        from: &UserId,
        to: &UserId,
        trace: &mut Trace,
    ) -> Step<DirectFacts<'_, Handle<L>>> {
        let devices_key = self.key(format_args!("devices:{to}"));
        let blocks_key = self.key(format_args!("b:{to}"));
        let r = self.ops.measure(ActiveConnections, Op::Get, || {
            match self.prefetched.facts(from, to) {
                Some((budget, blocked, fields)) => Ok((budget, blocked, fields.clone(), true)),
                None => self
                    .read_direct_facts(from, to)
                    .map(|(budget, blocked, fields)| (budget, blocked, fields, false)),
            }
        });
        let ((mine, total), blocked, fields, batched) = step(r)?;
        let id = match self.reserved.take() {
            Some(id) => id,
            None => self.issue_id(0, trace)?,
        };
        let how = self.batch_how(batched);
        self.ops.measure(BlockedUsers, Op::Contains, || ());
        trace.record(BlockedUsers, Op::Contains, Some(to), Some(from), None);
        trace.via(|| format!("SISMEMBER {blocks_key} {from} O(1), {how}"));
        trace_devices(trace, to, fields.len(), || {
            format!("HGETALL {devices_key} O(d), {how}")
        });
        Ok(DirectFacts {
            queued: budget(mine, total),
            blocked,
            devices: Cow::Owned(self.handles_from(to, &fields)),
            id: Some(id),
        })
    }

    fn sweep_node(&mut self, node: &str, trace: &mut Trace) -> Step<Vec<UserId>> {
        self.prefetched.forget_all();
        let r = self
            .ops
            .measure(ActiveConnections, Op::Remove, || self.run_sweep(node));
        let gone = step(r)?;
        // The sweep script publishes the presence changes: none goes direct.
        self.direct = false;
        trace.record(ActiveConnections, Op::Remove, None, None, Some(gone.len()));
        trace.via(|| {
            format!(
                "sweep script: HDEL {node}'s fields from each of its users' HASH, SREM {} the users left with none",
                self.key("presence")
            )
        });
        Ok(gone)
    }

    /// A cluster is durable only as far as its Redis is (run it with
    /// `--appendonly yes`); `--data` is refused with `--redis`.
    fn take_changes(&mut self) -> Vec<Change> {
        // The end of every rule: its presence change, if any, was broadcast.
        self.direct = false;
        Vec::new()
    }

    fn restore(&mut self, _state: &DurableState) {}

    fn op_table(&self) -> OpTable {
        self.ops.table()
    }

    /// Read on a connection of its own (`view.rs`), bounded and pipelined;
    /// each of this node's sockets adds what it has not been sent.
    fn snapshot(&self, view: QueueView) -> Step<StructuresSnapshot> {
        let mut snapshot = step(super::view::read(&self.link, view))?;
        self.add_unsent(&mut snapshot);
        Ok(snapshot)
    }
}
