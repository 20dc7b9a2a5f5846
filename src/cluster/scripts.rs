//! The Lua scripts a cluster node runs in Redis. Redis runs a script alone,
//! start to end, so each is one atomic step of the shared structures: the
//! reason they exist is the races between nodes that one command cannot close.
//!
//! Each script is run with `PUBLISH` set to the command that publishes to a
//! node's channel: PUBLISH on one Redis, SPUBLISH on a Redis Cluster.
//!
//! A queue entry is `id \t cost \t sender \t json`: the scripts read the id
//! (for order) and the cost and sender (for the memory budget) without
//! decoding the message.

/// Announces a presence change to every node, from inside the script that
/// made it: Redis runs scripts one at a time and delivers each channel's
/// messages in the order they were published, so every node (this one too,
/// through its own channel) sees every user's online/offline changes in the
/// one order they happened. `order` is the change's number in that order: a
/// node gives the frame only to devices registered before it (a device
/// registered after it saw the change in its welcome).
const ANNOUNCE: &str = r#"
local function announce(prefix, user, status, order)
  local frame = '{"type":"presence","user":"' .. user .. '","status":"' .. status .. '"}'
  local payload = '{"kind":"all","about":"' .. user .. '","order":' .. order .. ',"frame":' .. frame .. '}'
  for _, node in ipairs(redis.call('SMEMBERS', prefix .. ':nodes')) do
    redis.call(PUBLISH, prefix .. ':node:' .. node, payload)
  end
end
-- Records the change as the user's last (HASH presence_last) and announces
-- it; returns the order of the user's previous change (0: none).
local function changed(prefix, last, user, status, order)
  local prev = tonumber(redis.call('HGET', last, user) or '0')
  redis.call('HSET', last, user, order)
  announce(prefix, user, status, order)
  return prev
end
"#;

/// A device connects: registered in `active_connections` (the user's HASH
/// of devices, field `node/conn`) and in `presence`, in one step, so two
/// nodes connecting and closing the same user's devices at once always
/// agree on who was first and who was last. The first device anywhere is
/// announced online. Returns the online users as of this step, in name
/// order (a sorted set, every score 0), for the welcome: exactly the state
/// the announcements after it change.
/// Also returns the order of the user's previous presence change (HASH
/// `presence_last`), so the node knows whether it has seen it.
/// KEYS: devices:{user}, on:{node}, presence, presence_order, presence_last.
/// ARGV: user, field, value, prefix.
/// Returns {devices anywhere, 1 if the user was not in presence, order,
/// online users, previous change's order}.
pub fn connect() -> String {
    format!(
        "{ANNOUNCE}
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
local n = redis.call('HLEN', KEYS[1])
local added = redis.call('ZADD', KEYS[3], 0, ARGV[1])
local order = redis.call('INCR', KEYS[4])
local prev = 0
if added == 1 then prev = changed(ARGV[4], KEYS[5], ARGV[1], 'online', order) end
return {{n, added, order, redis.call('ZRANGE', KEYS[3], 0, -1), prev}}
"
    )
}

/// A device closes; the last one anywhere takes the user out of `presence`
/// and is announced offline.
/// KEYS: devices:{user}, on:{node}, presence, presence_order, presence_last.
/// ARGV: user, field, prefix.
/// Returns {devices left anywhere, 1 if the user left presence, order,
/// previous change's order}.
pub fn disconnect() -> String {
    format!(
        "{ANNOUNCE}
if redis.call('HDEL', KEYS[1], ARGV[2]) == 1 then
  if redis.call('HINCRBY', KEYS[2], ARGV[1], -1) <= 0 then
    redis.call('HDEL', KEYS[2], ARGV[1])
  end
end
local n = redis.call('HLEN', KEYS[1])
local removed = 0
if n == 0 then removed = redis.call('ZREM', KEYS[3], ARGV[1]) end
local order = redis.call('INCR', KEYS[4])
local prev = 0
if removed == 1 then prev = changed(ARGV[3], KEYS[5], ARGV[1], 'offline', order) end
return {{n, removed, order, prev}}
"
    )
}

/// Shared by the scripts that add to a queue: the budget's counters, and the
/// nudge. A message is queued because its router saw no device; if one
/// connected in between (its flush already ran), the nodes holding the
/// user's devices are told to take the queue, so it does not wait for the
/// next connect. Not for a resuming user: their deque is a held window.
const GROW_AND_NUDGE: &str = r"
local function grow(bytes, from, cost)
  local total = redis.call('HINCRBY', bytes, '', cost)
  return total, redis.call('HINCRBY', bytes, from, cost)
end
local function nudge(devices, channel_prefix, payload)
  local all = redis.call('HGETALL', devices)
  local nodes = {}
  for i = 1, #all, 2 do
    if string.sub(all[i + 1], 1, 1) == '1' then return end
    nodes[string.match(all[i], '^(.*)/')] = true
  end
  for node, _ in pairs(nodes) do
    redis.call(PUBLISH, channel_prefix .. node, payload)
  end
end
";

/// Puts `entry` (id `id`) in the queue in id order, scanning from the back:
/// O(1) for a new message (two nodes can push for one user at once, each
/// with an id from the one counter, and the later id must still end up
/// behind). Returns the new length, or 0 if that id is already there.
const INSERT: &str = r"
local function insert(q, entry, id)
  local len = redis.call('LLEN', q)
  local i = len - 1
  while i >= 0 do
    local e = redis.call('LINDEX', q, i)
    local eid = tonumber(string.match(e, '^(%d+)\t'))
    if eid == id then return 0 end
    if eid < id then break end
    i = i - 1
  end
  if i == len - 1 then
    return redis.call('RPUSH', q, entry)
  elseif i < 0 then
    return redis.call('LPUSH', q, entry)
  end
  return redis.call('LINSERT', q, 'AFTER', redis.call('LINDEX', q, i), entry)
end
";

/// Appends one message: the offline queue's `push_back` (RPUSH).
/// KEYS: q:{user}, bytes, devices:{user}.
/// ARGV: entry, id, sender, cost, channel prefix, nudge payload.
/// Returns {the length (0: the id was there already), the budget's total,
/// the sender's counter}, so the node's next rules need not read them again.
pub fn push() -> String {
    format!(
        "{GROW_AND_NUDGE}{INSERT}
local len = insert(KEYS[1], ARGV[1], tonumber(ARGV[2]))
local total, mine = 0, 0
if len > 0 then total, mine = grow(KEYS[2], ARGV[3], ARGV[4]) end
nudge(KEYS[3], ARGV[5], ARGV[6])
return {{len, total, mine}}
"
    )
}

/// Keeps one message for each of its users (one for a direct message, the
/// members whose copy is kept for a group message), in one step, the way
/// Centrifugo publishes with history: the id, the append and the PUBLISH are
/// one atomic step, so every user's deque, and what each node is sent for
/// them, are in one order, the id order. The id the router took is kept
/// unless some user already has a higher one kept or released (another
/// node's message overtook it): then a new one is drawn, higher than all.
/// Each copy goes to every node with devices of that user: the message
/// itself if one of them resumed (the node sends it as is), else a nudge to
/// take the queue (a v1 device connected while the router looked).
/// KEYS: next_id, bytes, kept, released, then q:{user} and devices:{user}
/// for each user.
/// ARGV: proposed id, entry with id 0, sender, cost, channel prefix, the
/// payload's tail (after its id and user), then the users.
/// Returns {the id, the budget's total, the sender's counter, then each
/// user's queue length (0: that id was there already)}: what the node's next
/// rules would otherwise read again.
pub fn keep() -> String {
    format!(
        r#"{GROW_AND_NUDGE}{INSERT}
local id = tonumber(ARGV[1])
local users = {{}}
for i = 7, #ARGV do table.insert(users, ARGV[i]) end
for i, user in ipairs(users) do
  local last = math.max(tonumber(redis.call('HGET', KEYS[3], user) or '0'),
    tonumber(redis.call('HGET', KEYS[4], user) or '0'))
  local tail = redis.call('LINDEX', KEYS[3 + 2 * i], -1)
  if tail then last = math.max(last, tonumber(string.match(tail, '^(%d+)\t'))) end
  if id <= last then
    id = redis.call('INCR', KEYS[1])
    break
  end
end
local entry = id .. string.sub(ARGV[2], 2)
local out = {{id, 0, 0}}
for i, user in ipairs(users) do
  local devices = KEYS[4 + 2 * i]
  table.insert(out, insert(KEYS[3 + 2 * i], entry, id))
  out[2], out[3] = grow(KEYS[2], ARGV[3], ARGV[4])
  redis.call('HSET', KEYS[3], user, id)
  local all = redis.call('HGETALL', devices)
  local nodes, holds = {{}}, false
  for j = 1, #all, 2 do
    holds = holds or string.sub(all[j + 1], 1, 1) == '1'
    nodes[string.match(all[j], '^(.*)/')] = true
  end
  local payload = '{{"kind":"take","user":"' .. user .. '"}}'
  if holds then payload = '{{"id":' .. id .. ',"user":"' .. user .. '",' .. ARGV[6] end
    for node, _ in pairs(nodes) do
    redis.call(PUBLISH, ARGV[5] .. node, payload)
  end
end
return out
"#
    )
}

/// Puts back a message a device never got, in id order; 0 when it is still
/// held there or its user already confirmed it (as in memory).
/// KEYS: q:{user}, bytes, released, devices:{user}.
/// ARGV: entry, id, sender, cost, user, channel prefix, nudge payload.
pub fn put_back() -> String {
    format!(
        "{GROW_AND_NUDGE}{INSERT}
local id = tonumber(ARGV[2])
local edge = tonumber(redis.call('HGET', KEYS[3], ARGV[5]) or '-1')
if id <= edge then return 0 end
if insert(KEYS[1], ARGV[1], id) == 0 then return 0 end
grow(KEYS[2], ARGV[3], ARGV[4])
nudge(KEYS[4], ARGV[6], ARGV[7])
return 1
"
    )
}

const SHRINK: &str = r"
local function shrink(bytes, entry)
  local cost, from = string.match(entry, '^%d+\t(%d+)\t([^\t]*)\t')
  redis.call('HINCRBY', bytes, '', -tonumber(cost))
  if redis.call('HINCRBY', bytes, from, -tonumber(cost)) <= 0 then
    redis.call('HDEL', bytes, from)
  end
end
";

/// The flush on connect: the whole queue in one step (LRANGE + DEL), so two
/// devices of one user connecting at once on two nodes cannot both take a
/// message, nor split the queue between them.
/// KEYS: q:{user}, bytes. Returns the entries, oldest first.
pub fn take_all() -> String {
    format!(
        "{SHRINK}
local all = redis.call('LRANGE', KEYS[1], 0, -1)
redis.call('DEL', KEYS[1])
for _, e in ipairs(all) do shrink(KEYS[2], e) end
return all
"
    )
}

/// The oldest message (LPOP), with the budget's counters.
/// KEYS: q:{user}, bytes. Returns the entry or nil.
pub fn pop_front() -> String {
    format!(
        "{SHRINK}
local e = redis.call('LPOP', KEYS[1])
if e then shrink(KEYS[2], e) end
return e
"
    )
}

/// `received` M: pops every held message with id <= M from the front and
/// moves the user's released position up to M.
/// KEYS: q:{user}, bytes, released. ARGV: user, M. Returns the popped entries.
pub fn release() -> String {
    format!(
        "{SHRINK}
local upto = tonumber(ARGV[2])
local out = {{}}
while true do
  local e = redis.call('LINDEX', KEYS[1], 0)
  if not e then break end
  if tonumber(string.match(e, '^(%d+)\t')) > upto then break end
  redis.call('LPOP', KEYS[1])
  shrink(KEYS[2], e)
  table.insert(out, e)
end
if upto > tonumber(redis.call('HGET', KEYS[3], ARGV[1]) or '0') then
  redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
end
return out
"
    )
}

/// Joins a group: its SET, the SET of groups (for `--max-groups`) and the
/// user's SET of groups (for `--max-groups-per-user`) move together.
/// KEYS: g:{group}, groups, ug:{user}. ARGV: user, group. Returns the size.
pub const JOIN: &str = r"
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('SADD', KEYS[2], ARGV[2])
redis.call('SADD', KEYS[3], ARGV[2])
return redis.call('SCARD', KEYS[1])
";

/// Raises the id counter to at least what a node issued: after Redis lost
/// its data, ids go on from the highest any node put back, never again from 1.
/// KEYS: next_id. ARGV: the highest id the node issued. Returns the counter.
pub const RAISE_ID: &str = r"
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
local issued = tonumber(ARGV[1])
if cur < issued then redis.call('SET', KEYS[1], issued) return issued end
return cur
";

/// Leaves a group; an emptied group stops existing (as in memory).
/// KEYS: g:{group}, groups, ug:{user}. ARGV: user, group. Returns 1 if a member.
pub const LEAVE: &str = r"
local was = redis.call('SREM', KEYS[1], ARGV[1])
redis.call('SREM', KEYS[3], ARGV[2])
if redis.call('SCARD', KEYS[1]) == 0 then redis.call('SREM', KEYS[2], ARGV[2]) end
return was
";

/// A node stopped renewing its heartbeat: its devices leave every user's
/// HASH, and users left with none leave `presence` and are announced
/// offline. Run by whichever survivor notices first; the others then find
/// nothing to do, so each user is announced once. With ARGV[3] = 1 (a
/// survivor sweeping another node) it does nothing if that node's heartbeat
/// is back: the check and the sweep are one step. A node sweeping itself
/// (it registers its sockets again next) stays in `nodes`, so it hears every
/// presence change from that step on, not only after its next heartbeat;
/// and it beats in the same step (ARGV[4]: the heartbeat's TTL in ms), so
/// no survivor sweeps the devices it is about to register.
/// KEYS: on:{dead}, presence, nodes, presence_order, presence_last, alive:{dead}.
/// ARGV: key prefix, dead node, 1 or 0, TTL. Returns the users who went offline.
pub fn sweep() -> String {
    format!(
        "{ANNOUNCE}
if ARGV[3] == '1' and redis.call('EXISTS', KEYS[6]) == 1 then return {{}} end
local users = redis.call('HKEYS', KEYS[1])
local gone = {{}}
local mine = ARGV[2] .. '/'
for _, u in ipairs(users) do
  local devices = ARGV[1] .. ':devices:' .. u
  for _, f in ipairs(redis.call('HKEYS', devices)) do
    if string.sub(f, 1, #mine) == mine then redis.call('HDEL', devices, f) end
  end
  if redis.call('HLEN', devices) == 0 and redis.call('ZREM', KEYS[2], u) == 1 then
    table.insert(gone, u)
  end
end
redis.call('DEL', KEYS[1])
if ARGV[3] == '1' then
  redis.call('SREM', KEYS[3], ARGV[2])
else
  redis.call('SADD', KEYS[3], ARGV[2])
  redis.call('SET', KEYS[6], 1, 'PX', ARGV[4])
end
for _, u in ipairs(gone) do
  changed(ARGV[1], KEYS[5], u, 'offline', redis.call('INCR', KEYS[4]))
end
return gone
"
    )
}
