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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use redis::{Connection, RedisResult};
use serde::{Deserialize, Serialize};

use super::{ClusterConfig, COMMAND_TIMEOUT};

/// How many times one Redis command ran on this node, with its documented cost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RedisCount {
    pub command: String,
    pub count: u64,
    pub complexity: String,
}

pub struct Link {
    client: redis::Client,
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
        refuse_a_cluster(&mut con, &shown_url)?;
        let presence = format!("{}:presence", config.prefix);
        presence_as_a_sorted_set(&mut con, &presence)
            .map_err(|e| format!("Redis at {shown_url}: cannot read {presence} ({e})"))?;
        Ok(Arc::new(Link {
            client,
            con: Mutex::new(Some(con)),
            down: AtomicBool::new(false),
            why: Mutex::new(String::new()),
            counts: Mutex::new(BTreeMap::new()),
            batches: Mutex::new(Batches::default()),
            config,
            shown_url,
        }))
    }

    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    /// `prefix:rest`: every key and channel of this cluster.
    pub fn key(&self, rest: &str) -> String {
        format!("{}:{rest}", self.config.prefix)
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
                // without dropping a connection that works.
                if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() {
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
    pub fn reconnect(&self) -> RedisResult<()> {
        let con = open(&self.client)?;
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

/// A node of a Redis Cluster is refused before anything is written, with
/// the reason: each of the node's Lua scripts changes a user's keys and
/// cluster-wide ones (`presence`, the budget, the id counter) in one atomic
/// step, and a Redis Cluster refuses a script whose keys are in several
/// slots (CROSSSLOT).
fn refuse_a_cluster(con: &mut Connection, shown_url: &str) -> Result<(), String> {
    let info: String = redis::cmd("INFO")
        .arg("cluster")
        .query(con)
        .unwrap_or_default();
    if info.lines().any(|l| l.trim() == "cluster_enabled:1") {
        return Err(format!(
            "--redis {shown_url} is a node of a Redis Cluster (cluster_enabled:1), and vivachat \
             runs on one Redis server for now: its scripts change a user's keys and cluster-wide \
             ones in one atomic step, which a Redis Cluster refuses across hash slots (CROSSSLOT). \
             Start a standalone redis-server (cluster-enabled no) and point --redis at it"
        ));
    }
    Ok(())
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
