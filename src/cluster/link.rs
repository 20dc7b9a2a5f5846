//! One node's command connection to Redis: every structure operation and
//! every PUBLISH of the node goes through it, in order, from the core's
//! owner thread. One connection (not a pool) is what keeps a node's rules in
//! one order in Redis too: a nudge published by a script and a frame
//! published after it arrive in that order. (Views read Redis on connections
//! of their own: `view.rs`.)
//!
//! Blocking, with a timeout, on purpose: the core is synchronous and its
//! owner is a thread of its own on a cluster, so a rule waits for its Redis
//! round trip there, never on a tokio worker. When a command fails
//! (Redis stopped, unreachable, timed out) the link is marked down and every
//! later command fails at once, until the heartbeat thread reconnects.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use redis::{Connection, RedisResult};
use serde::{Deserialize, Serialize};

use super::slot::{key_slot, owner, ranges};
use super::{ClusterConfig, COMMAND_TIMEOUT};

/// How many times one Redis command ran on this node, with its documented cost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RedisCount {
    pub command: String,
    pub count: u64,
    pub complexity: String,
}

pub struct Link {
    /// The Redis `--redis` named. On a Redis Cluster: any of its masters,
    /// asked where this cluster's slot is served.
    seed: redis::Client,
    /// The Redis that holds this cluster's keys: the seed, or on a Redis
    /// Cluster the master serving their slot (it changes on a failover).
    client: Mutex<redis::Client>,
    /// On a Redis Cluster, its masters as last seen, to ask where the slot
    /// went if the seed is gone; None on one Redis server.
    cluster: Option<Mutex<Vec<(String, u16)>>>,
    /// `prefix`, or `{prefix}` on a Redis Cluster: the hash tag that puts
    /// every key of this cluster in one slot (`slot.rs`).
    prefix: String,
    /// How many times the slot's master changed: the subscriber follows it.
    moves: AtomicU64,
    con: Mutex<Option<Connection>>,
    down: AtomicBool,
    /// Why it is down, for the `unavailable` error's detail.
    why: Mutex<String>,
    counts: Mutex<BTreeMap<&'static str, (u64, &'static str)>>,
    batches: Mutex<Batches>,
    pub config: ClusterConfig,
    /// `HOST:PORT/DB` without a password, for tables and logs.
    pub shown_url: String,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a user is told while Redis cannot be reached.
fn unreachable(url: &str, e: &redis::RedisError) -> String {
    format!("this server's Redis ({url}) cannot be reached ({e})")
}

/// Opens a connection with the read and write timeouts every command has.
pub fn open(client: &redis::Client) -> RedisResult<Connection> {
    let con = client.get_connection_with_timeout(COMMAND_TIMEOUT)?;
    con.set_read_timeout(Some(COMMAND_TIMEOUT))?;
    con.set_write_timeout(Some(COMMAND_TIMEOUT))?;
    Ok(con)
}

impl Link {
    /// Connects and checks Redis answers (PING); the error says what to do.
    pub fn connect(config: ClusterConfig) -> Result<Arc<Link>, String> {
        let shown_url = shown(&config.url);
        let client = redis::Client::open(config.url.as_str()).map_err(|e| {
            format!(
                "--redis {shown_url}: not a Redis URL ({e}); write redis://HOST:PORT or redis://HOST:PORT/DB"
            )
        })?;
        let mut con = open(&client).map_err(|e| {
            format!(
                "cannot reach Redis at {shown_url} ({e}); start it (redis-server --port PORT) or check --redis"
            )
        })?;
        redis::cmd("PING")
            .query::<String>(&mut con)
            .map_err(|e| format!("Redis at {shown_url} does not answer PING ({e})"))?;
        let (prefix, cluster, owner) = if is_a_cluster(&mut con) {
            let prefix = format!("{{{}}}", config.prefix);
            let (owner, masters) = find_owner(&client, &[], &prefix)
                .map_err(|e| format!("--redis {shown_url} is a Redis Cluster, but {e}"))?;
            needs_sharded_pubsub(&owner, &shown_url)?;
            (prefix, Some(Mutex::new(masters)), owner)
        } else {
            (config.prefix.clone(), None, client.clone())
        };
        let mut con = if cluster.is_some() {
            open(&owner).map_err(|e| {
                format!("--redis {shown_url}: cannot reach the master serving this cluster's slot ({e})")
            })?
        } else {
            con
        };
        let presence = format!("{prefix}:presence");
        presence_as_a_sorted_set(&mut con, &presence)
            .map_err(|e| format!("Redis at {shown_url}: cannot read {presence} ({e})"))?;
        Ok(Arc::new(Link {
            seed: client,
            client: Mutex::new(owner),
            cluster,
            prefix,
            moves: AtomicU64::new(0),
            con: Mutex::new(Some(con)),
            down: AtomicBool::new(false),
            why: Mutex::new(String::new()),
            counts: Mutex::new(BTreeMap::new()),
            batches: Mutex::new(Batches::default()),
            config,
            shown_url,
        }))
    }

    /// The Redis holding this cluster's keys, for a connection of its own
    /// (the subscriber, a view).
    pub fn client(&self) -> redis::Client {
        lock(&self.client).clone()
    }

    /// The client for the subscriber. On a Redis Cluster it speaks RESP3:
    /// a sharded message (`smessage`) reaches a RESP2 reader as an array
    /// redis-rs does not read as a message, and as a push in RESP3.
    pub fn subscriber_client(&self) -> redis::Client {
        let client = self.client();
        if !self.on_a_cluster() {
            return client;
        }
        let info = client.get_connection_info().clone();
        let settings = info
            .redis_settings()
            .clone()
            .set_protocol(redis::ProtocolVersion::RESP3);
        redis::Client::open(info.set_redis_settings(settings)).unwrap_or(client)
    }

    /// How many times the slot's master has changed (a failover): 0 on one Redis.
    pub fn owner_moves(&self) -> u64 {
        self.moves.load(Ordering::Acquire)
    }

    /// `prefix:rest`: every key and channel of this cluster.
    pub fn key(&self, rest: &str) -> String {
        format!("{}:{rest}", self.prefix)
    }

    /// What every key starts with: `prefix`, or `{prefix}` on a Redis Cluster.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// On a Redis Cluster, where this chat's keys are, for tables and logs:
    /// their slot and the master serving it now. None on one Redis.
    pub fn serving(&self) -> Option<String> {
        self.cluster.as_ref()?;
        let master = match self.client().get_connection_info().addr() {
            redis::ConnectionAddr::Tcp(host, port) => format!("{host}:{port}"),
            other => other.to_string(),
        };
        Some(format!(
            "slot {} of a Redis Cluster, on master {master}",
            key_slot(&self.prefix)
        ))
    }

    /// Whether `--redis` is a Redis Cluster.
    pub fn on_a_cluster(&self) -> bool {
        self.cluster.is_some()
    }

    /// How a frame is published to a node's channel: PUBLISH on one Redis;
    /// on a Redis Cluster SPUBLISH, which goes only to the shard that serves
    /// the channel's slot, where PUBLISH would be copied to every node of the
    /// cluster over its bus.
    pub fn publish_command(&self) -> &'static str {
        if self.on_a_cluster() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        }
    }

    /// The subscribe that hears [`Link::publish_command`]: a sharded channel
    /// is heard only through SSUBSCRIBE, on the master serving its slot.
    pub fn subscribe_command(&self) -> &'static str {
        if self.on_a_cluster() {
            "SSUBSCRIBE"
        } else {
            "SUBSCRIBE"
        }
    }

    pub fn node(&self) -> &str {
        &self.config.node_id
    }

    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Acquire)
    }

    /// Why Redis is unusable now (None: it is usable).
    pub fn down_reason(&self) -> Option<String> {
        self.is_down().then(|| lock(&self.why).clone())
    }

    /// Runs `f` on the command connection, counting `command` once (its cost
    /// as Redis documents it). An error marks the link down.
    pub fn run<T>(
        &self,
        command: &'static str,
        complexity: &'static str,
        f: impl FnOnce(&mut Connection) -> RedisResult<T>,
    ) -> Result<T, String> {
        if self.is_down() {
            return Err(lock(&self.why).clone());
        }
        let mut con = lock(&self.con);
        let Some(c) = con.as_mut() else {
            return Err(lock(&self.why).clone());
        };
        self.count(command, complexity, 1);
        match f(c) {
            Ok(v) => Ok(v),
            Err(e) => {
                let why = unreachable(&self.shown_url, &e);
                // A script or type error is a bug, not an outage: report it
                // without dropping a connection that works. A redirect
                // (MOVED: a failover moved the slot) is an outage until the
                // heartbeat finds the slot's new master.
                if e.is_io_error()
                    || e.is_timeout()
                    || e.is_connection_dropped()
                    || e.is_cluster_error()
                {
                    if let (Some((host, port)), Some(masters)) = (e.redirect_node(), &self.cluster)
                    {
                        // Where Redis said the slot went: asked first next time.
                        let went = (host.to_string(), port);
                        let mut masters = lock(masters);
                        masters.retain(|m| *m != went);
                        masters.insert(0, went);
                    }
                    *con = None;
                    *lock(&self.why) = why.clone();
                    self.down.store(true, Ordering::Release);
                }
                Err(why)
            }
        }
    }

    /// Reconnects after an outage (the heartbeat thread calls this once PING
    /// answers again). The owner then registers this node's devices again
    /// before it applies anything else (`Hub::resync_wanted`).
    /// On a Redis Cluster the slot's master is looked up again first: after
    /// a failover it is the promoted replica.
    pub fn reconnect(&self) -> Result<(), String> {
        if let Some(masters) = &self.cluster {
            let seen = lock(masters).clone();
            let (owner, now) = find_owner(&self.seed, &seen, &self.prefix)?;
            *lock(masters) = now;
            let mut client = lock(&self.client);
            if client.get_connection_info().addr() != owner.get_connection_info().addr() {
                self.moves.fetch_add(1, Ordering::AcqRel);
            }
            *client = owner;
        }
        let con = open(&self.client()).map_err(|e| e.to_string())?;
        *lock(&self.con) = Some(con);
        self.down.store(false, Ordering::Release);
        Ok(())
    }

    /// Counts `n` more runs of `command` (a pipeline of n is one `run`).
    pub fn count(&self, command: &'static str, complexity: &'static str, n: u64) {
        lock(&self.counts)
            .entry(command)
            .and_modify(|(count, _)| *count += n)
            .or_insert((n, complexity));
    }

    /// One batch pipeline was read for `rules` direct messages.
    pub fn batched(&self, rules: usize) {
        let mut b = lock(&self.batches);
        b.round_trips += 1;
        b.rules += rules as u64;
        b.largest = b.largest.max(rules as u64);
    }

    pub fn batches(&self) -> Batches {
        *lock(&self.batches)
    }

    /// Every command this node ran, most used first.
    pub fn counts(&self) -> Vec<RedisCount> {
        let mut all: Vec<RedisCount> = lock(&self.counts)
            .iter()
            .map(|(command, (count, complexity))| RedisCount {
                command: command.to_string(),
                count: *count,
                complexity: complexity.to_string(),
            })
            .collect();
        all.sort_by(|a, b| b.count.cmp(&a.count).then(a.command.cmp(&b.command)));
        all
    }
}

/// How well the batch pipelines shared their round trips: the rules (direct
/// messages) they read for, in how many round trips, and the most in one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batches {
    pub round_trips: u64,
    pub rules: u64,
    pub largest: u64,
}

/// Whether this Redis is a node of a Redis Cluster (`cluster_enabled:1`).
fn is_a_cluster(con: &mut Connection) -> bool {
    let info: String = redis::cmd("INFO")
        .arg("cluster")
        .query(con)
        .unwrap_or_default();
    info.lines().any(|l| l.trim() == "cluster_enabled:1")
}

/// `host:port` of the seed, for the list of masters to ask.
fn seed_address(client: &redis::Client) -> (String, u16) {
    match client.get_connection_info().addr() {
        redis::ConnectionAddr::Tcp(host, port) => (host.clone(), *port),
        redis::ConnectionAddr::TcpTls { host, port, .. } => (host.clone(), *port),
        _ => (String::new(), 0),
    }
}

/// The seed's connection settings (password, TLS) at another address.
fn at(seed: &redis::Client, host: &str, port: u16) -> redis::ConnectionInfo {
    let addr = match seed.get_connection_info().addr() {
        redis::ConnectionAddr::TcpTls {
            insecure,
            tls_params,
            ..
        } => redis::ConnectionAddr::TcpTls {
            host: host.to_string(),
            port,
            insecure: *insecure,
            tls_params: tls_params.clone(),
        },
        _ => redis::ConnectionAddr::Tcp(host.to_string(), port),
    };
    seed.get_connection_info().clone().set_addr(addr)
}

/// Asks each of `seen` (where a redirect pointed first, then the masters
/// seen before), then the seed, which master serves the slot of `prefix`'s
/// tag; returns a client for it and every master now in the cluster. Two
/// masters may briefly disagree after a failover: a node sent to the old
/// one is redirected (MOVED) and asks again.
fn find_owner(
    seed: &redis::Client,
    seen: &[(String, u16)],
    prefix: &str,
) -> Result<(redis::Client, Vec<(String, u16)>), String> {
    let slot = key_slot(prefix);
    let mut why = String::from("no master answered CLUSTER SLOTS");
    let mut candidates = seen.to_vec();
    candidates.push(seed_address(seed));
    let mut asked: Vec<&(String, u16)> = Vec::new();
    for candidate in &candidates {
        if asked.contains(&candidate) {
            continue;
        }
        asked.push(candidate);
        let (host, port) = (&candidate.0, candidate.1);
        let reply = redis::Client::open(at(seed, host, port)).and_then(|c| {
            let mut con = open(&c)?;
            redis::cmd("CLUSTER")
                .arg("SLOTS")
                .query::<redis::Value>(&mut con)
        });
        let reply = match reply {
            Ok(reply) => reply,
            Err(e) => {
                why = format!("{host}:{port} did not answer CLUSTER SLOTS ({e})");
                continue;
            }
        };
        let all = ranges(&reply, host);
        let Some(range) = owner(&all, slot) else {
            why = format!("no master serves slot {slot} (the slot of {prefix}) now: is the cluster complete (redis-cli --cluster check)?");
            continue;
        };
        let client =
            redis::Client::open(at(seed, &range.host, range.port)).map_err(|e| e.to_string())?;
        let mut masters: Vec<(String, u16)> =
            all.iter().map(|r| (r.host.clone(), r.port)).collect();
        masters.sort_unstable();
        masters.dedup();
        return Ok((client, masters));
    }
    Err(why)
}

/// A node publishes with SPUBLISH on a Redis Cluster, which Redis 7 added.
fn needs_sharded_pubsub(owner: &redis::Client, shown_url: &str) -> Result<(), String> {
    let version = open(owner)
        .and_then(|mut c| redis::cmd("INFO").arg("server").query::<String>(&mut c))
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("redis_version:"))
                .and_then(|v| v.trim().split('.').next()?.parse::<u32>().ok())
        });
    match version {
        Some(major) if major >= 7 => Ok(()),
        _ => Err(format!(
            "--redis {shown_url} is a Redis Cluster older than Redis 7: vivachat publishes with \
             sharded pub/sub (SPUBLISH), which Redis 7.0 added; upgrade it, or use one standalone redis-server"
        )),
    }
}

/// Before 2026-12-04 a node kept `presence` as a SET; now it is a sorted set
/// (every score 0, so in name order). A SET left by an older node is turned
/// into one, in one atomic step, so a Redis kept across the upgrade keeps
/// working (its users keep their place until the sweep or their own close).
fn presence_as_a_sorted_set(con: &mut Connection, key: &str) -> RedisResult<()> {
    const CONVERT: &str = r"
if redis.call('TYPE', KEYS[1]).ok ~= 'set' then return 0 end
local users = redis.call('SMEMBERS', KEYS[1])
redis.call('DEL', KEYS[1])
for _, u in ipairs(users) do redis.call('ZADD', KEYS[1], 0, u) end
return #users
";
    redis::Script::new(CONVERT).key(key).invoke::<i64>(con)?;
    Ok(())
}

/// The URL without its password: `redis://:secret@host:6379` shows as `host:6379`.
fn shown(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    rest.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_is_never_shown() {
        assert_eq!(shown("redis://:hunter2@10.0.0.5:6379/2"), "10.0.0.5:6379/2");
        assert_eq!(shown("redis://127.0.0.1:7000"), "127.0.0.1:7000");
    }
}
