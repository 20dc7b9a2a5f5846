//! `vivachat bench structures`: each of the seed's structure choices against
//! the naive alternative, on the same workload, at growing sizes.
//!
//! Two runs per point: a counting run with [`Probe`] keys, which count every
//! hash and comparison (identical on every machine), and a timing run with
//! plain `String` keys (median of several repetitions, `black_box` so nothing
//! is optimised away).

use std::cell::Cell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher};
use std::hint::black_box;
use std::time::Instant;

use serde::Serialize;

use super::fit::{class_of_counts, log_log_slope, Class};

thread_local! {
    static HASHES: Cell<u64> = const { Cell::new(0) };
    static COMPARISONS: Cell<u64> = const { Cell::new(0) };
    static MOVES: Cell<u64> = const { Cell::new(0) };
}

fn bump(counter: &'static std::thread::LocalKey<Cell<u64>>, by: u64) {
    counter.with(|c| c.set(c.get() + by));
}

fn take(counter: &'static std::thread::LocalKey<Cell<u64>>) -> u64 {
    counter.with(|c| c.replace(0))
}

/// A key that counts how often it is hashed and compared: the instrument.
#[derive(Clone, Debug)]
pub struct Probe(pub String);

impl PartialEq for Probe {
    fn eq(&self, other: &Probe) -> bool {
        bump(&COMPARISONS, 1);
        self.0 == other.0
    }
}

impl Eq for Probe {}

impl Hash for Probe {
    fn hash<H: Hasher>(&self, state: &mut H) {
        bump(&HASHES, 1);
        self.0.hash(state);
    }
}

/// What `Vec::remove(0)` does, one element at a time, counting each
/// element moved as it moves: the front walks to the back by swaps with its
/// neighbour (every later element moves one place left, as in std's shift),
/// then is popped. The counted steps are the loop's own iterations, so they
/// are observed, not computed from the length.
fn remove_front_counted<T>(v: &mut Vec<T>) -> T {
    for i in 1..v.len() {
        v.swap(i - 1, i);
        bump(&MOVES, 1);
    }
    v.pop().expect("a non-empty queue")
}

/// The keys of a workload: user names.
pub trait Key: Clone + Eq + Hash {
    /// Whether this key counts (so element moves are counted too).
    const COUNTS: bool;
    /// The hasher of the maps and sets: random keys (SipHash with a per-map
    /// seed, as in the server) when timing; fixed keys when counting, so the
    /// collisions, and therefore the counted comparisons, are the same on
    /// every run and every machine.
    type Hasher: BuildHasher + Default + Clone;
    fn make(i: usize) -> Self;
}

impl Key for String {
    const COUNTS: bool = false;
    type Hasher = std::collections::hash_map::RandomState;
    fn make(i: usize) -> String {
        format!("user{i:07}")
    }
}

impl Key for Probe {
    const COUNTS: bool = true;
    type Hasher = BuildHasherDefault<std::collections::hash_map::DefaultHasher>;
    fn make(i: usize) -> Probe {
        Probe(String::make(i))
    }
}

/// Operations counted per operation of the workload.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Counts {
    /// Keys hashed.
    pub hashes: f64,
    /// Keys compared for equality.
    pub comparisons: f64,
    /// Elements shifted in memory (by `Vec::remove(0)`).
    pub moves: f64,
}

impl Counts {
    /// The dominant cost, for fitting: every kind of step counts as one.
    pub fn total(&self) -> f64 {
        self.hashes + self.comparisons + self.moves
    }
}

/// A deterministic pseudo-random sequence of indices below `n` (xorshift):
/// every machine runs exactly the same queries.
fn indices(n: usize, k: usize, seed: u64) -> Vec<usize> {
    let mut x = seed | 1;
    (0..k)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n as u64) as usize
        })
        .collect()
}

/// One of the seed's five choices, with its alternatives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Workload {
    QueueDrain,
    Presence,
    ConnectionLookup,
    GroupJoin,
    BlockCheck,
}

/// One implementation of a workload.
#[derive(Debug, Clone, Copy)]
pub struct Variant {
    pub name: &'static str,
    /// The seed's choice (the first variant of every workload).
    pub chosen: bool,
    /// Cost grows with N, so fewer operations are timed at large N.
    pub linear: bool,
}

const fn chosen(name: &'static str) -> Variant {
    Variant {
        name,
        chosen: true,
        linear: false,
    }
}
const fn naive(name: &'static str, linear: bool) -> Variant {
    Variant {
        name,
        chosen: false,
        linear,
    }
}

/// One measurement: N keys, k operations per repetition, `reps` repetitions.
struct Bench<K> {
    keys: Vec<K>,
    n: usize,
    k: usize,
    reps: usize,
}

impl<K: Key> Bench<K> {
    /// Nanoseconds per operation of one timed repetition.
    fn timed(&self, op: &mut dyn FnMut()) -> f64 {
        let start = Instant::now();
        op();
        start.elapsed().as_nanos() as f64 / self.k.max(1) as f64
    }

    /// The seed's queue: `VecDeque::pop_front`, O(1). Each pop is made at
    /// length N (the popped message rejoins at the back, as a new one would
    /// arrive), so every N counts the same operation.
    fn deque_pop_front(&self) -> Vec<f64> {
        let (keys, k, reps) = (&self.keys, self.k, self.reps);
        let mut times = Vec::with_capacity(reps);
        let base: VecDeque<K> = keys.iter().cloned().collect();
        for _ in 0..reps {
            let mut q = base.clone();
            times.push(self.timed(&mut || {
                for _ in 0..k {
                    if let Some(front) = black_box(q.pop_front()) {
                        q.push_back(front);
                    }
                }
            }));
        }
        times
    }

    /// The naive queue: `Vec::remove(0)` shifts every later element, O(n).
    /// Timed, it is std's own; counted, the same shifts done one element at
    /// a time ([`remove_front_counted`]), so each move is seen as it happens.
    fn vec_remove_front(&self) -> Vec<f64> {
        let (keys, k, reps) = (&self.keys, self.k, self.reps);
        let mut times = Vec::with_capacity(reps);
        let base: Vec<K> = keys.clone();
        for _ in 0..reps {
            let mut v = base.clone();
            times.push(self.timed(&mut || {
                for _ in 0..k {
                    let front = match K::COUNTS {
                        true => remove_front_counted(&mut v),
                        false => v.remove(0),
                    };
                    v.push(black_box(front));
                }
            }));
        }
        times
    }

    /// `HashSet::contains` (0), `Vec::contains` (1), `HashMap::contains_key` (2).
    fn presence(&self, v: usize) -> Vec<f64> {
        let (keys, n, k, reps) = (&self.keys, self.n, self.k, self.reps);
        let mut times = Vec::with_capacity(reps);
        let queries: Vec<K> = indices(n, k, 1)
            .into_iter()
            .map(|i| keys[i].clone())
            .collect();
        let set: HashSet<K, K::Hasher> = keys.iter().cloned().collect();
        let map: HashMap<K, Vec<u64>, K::Hasher> =
            keys.iter().map(|key| (key.clone(), vec![1])).collect();
        reset();
        for _ in 0..reps {
            times.push(self.timed(&mut || {
                for q in &queries {
                    let found = match v {
                        0 => set.contains(black_box(q)),
                        1 => keys.contains(black_box(q)),
                        _ => map.contains_key(black_box(q)),
                    };
                    black_box(found);
                }
            }));
        }
        times
    }

    /// `HashMap::get` (0) against a scan of (user, sockets) pairs (1).
    fn connection_lookup(&self, v: usize) -> Vec<f64> {
        let (keys, n, k, reps) = (&self.keys, self.n, self.k, self.reps);
        let mut times = Vec::with_capacity(reps);
        let queries: Vec<K> = indices(n, k, 2)
            .into_iter()
            .map(|i| keys[i].clone())
            .collect();
        let map: HashMap<K, Vec<u64>, K::Hasher> =
            keys.iter().map(|key| (key.clone(), vec![1, 2])).collect();
        let pairs: Vec<(K, Vec<u64>)> = keys.iter().map(|key| (key.clone(), vec![1, 2])).collect();
        reset();
        for _ in 0..reps {
            times.push(self.timed(&mut || {
                for q in &queries {
                    let sockets = if v == 0 {
                        map.get(black_box(q)).map(Vec::len)
                    } else {
                        pairs
                            .iter()
                            .find(|(user, _)| user == black_box(q))
                            .map(|(_, s)| s.len())
                    };
                    black_box(sockets);
                }
            }));
        }
        times
    }

    /// `HashSet::insert` (0) against `Vec` contains-then-push (1).
    fn group_join(&self, v: usize) -> Vec<f64> {
        let (keys, n, k, reps) = (&self.keys, self.n, self.k, self.reps);
        let mut times = Vec::with_capacity(reps);
        let joiners: Vec<K> = (n..n + k).map(K::make).collect();
        let set: HashSet<K, K::Hasher> = keys.iter().cloned().collect();
        reset();
        for _ in 0..reps {
            let mut members_set = set.clone();
            members_set.reserve(k);
            let mut members_vec = keys.clone();
            members_vec.reserve(k);
            let mut batch = joiners.clone();
            reset();
            times.push(self.timed(&mut || {
                for m in batch.drain(..) {
                    if v == 0 {
                        black_box(members_set.insert(m));
                    } else if !members_vec.contains(&m) {
                        members_vec.push(m);
                    }
                }
            }));
        }
        times
    }

    /// A map of sets (0) against a scan of (blocker, blocked) pairs (1).
    fn block_check(&self, v: usize) -> Vec<f64> {
        let (keys, n, k, reps) = (&self.keys, self.n, self.k, self.reps);
        let mut times = Vec::with_capacity(reps);
        // User i blocks user (7i + 1) mod n: n block pairs.
        let blocked = |i: usize| (7 * i + 1) % n;
        let mut map: HashMap<K, HashSet<K, K::Hasher>, K::Hasher> = HashMap::default();
        let mut pairs: Vec<(K, K)> = Vec::with_capacity(n);
        for i in 0..n {
            map.entry(keys[i].clone())
                .or_default()
                .insert(keys[blocked(i)].clone());
            pairs.push((keys[i].clone(), keys[blocked(i)].clone()));
        }
        // Half the queries are blocked pairs, half are not.
        let queries: Vec<(K, K)> = indices(n, k, 3)
            .into_iter()
            .enumerate()
            .map(|(j, i)| {
                let sender = if j % 2 == 0 {
                    blocked(i)
                } else {
                    (blocked(i) + 1) % n
                };
                (keys[i].clone(), keys[sender].clone())
            })
            .collect();
        reset();
        for _ in 0..reps {
            times.push(self.timed(&mut || {
                for (recipient, sender) in &queries {
                    let is_blocked = if v == 0 {
                        map.get(black_box(recipient))
                            .is_some_and(|set| set.contains(sender))
                    } else {
                        pairs
                            .iter()
                            .any(|(a, b)| a == black_box(recipient) && b == sender)
                    };
                    black_box(is_blocked);
                }
            }));
        }
        times
    }
}

impl Workload {
    pub const ALL: [Workload; 5] = [
        Workload::QueueDrain,
        Workload::Presence,
        Workload::ConnectionLookup,
        Workload::GroupJoin,
        Workload::BlockCheck,
    ];

    /// The workload's name in JSON (`queue_drain`, `presence`, ...).
    pub fn key(self) -> &'static str {
        match self {
            Workload::QueueDrain => "queue_drain",
            Workload::Presence => "presence",
            Workload::ConnectionLookup => "connection_lookup",
            Workload::GroupJoin => "group_join",
            Workload::BlockCheck => "block_check",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Workload::QueueDrain => "offline queue: pop the oldest of N queued messages",
            Workload::Presence => "presence check: is this user among N online users?",
            Workload::ConnectionLookup => "connection lookup: find a user's sockets among N users",
            Workload::GroupJoin => {
                "group join: add a new member to a group of N, refusing duplicates"
            }
            Workload::BlockCheck => {
                "block check: does the recipient block the sender? (N block pairs)"
            }
        }
    }

    /// What the seed claims, in its words.
    pub fn claim(self) -> &'static str {
        match self {
            Workload::QueueDrain => "Deque is O(1) to pop from the front; a List is O(N)",
            Workload::Presence => "a Set check is O(1) and faster than checking Dict keys",
            Workload::ConnectionLookup => "HashMap gives O(1) access to a user's sockets",
            Workload::GroupJoin => "a Set prevents duplicates and checks membership in O(1)",
            Workload::BlockCheck => {
                "O(1) check of sender in blocked_users[recipient] on every message"
            }
        }
    }

    pub fn variants(self) -> &'static [Variant] {
        const QUEUE: [Variant; 2] = [chosen("VecDeque::pop_front"), naive("Vec::remove(0)", true)];
        const PRESENCE: [Variant; 3] = [
            chosen("HashSet::contains"),
            naive("Vec::contains", true),
            naive("HashMap::contains_key", false),
        ];
        const LOOKUP: [Variant; 2] = [
            chosen("HashMap::get"),
            naive("Vec<(user, sockets)> scan", true),
        ];
        const JOIN: [Variant; 2] = [
            chosen("HashSet::insert"),
            naive("Vec contains + push", true),
        ];
        const BLOCK: [Variant; 2] = [
            chosen("HashMap<user, HashSet>"),
            naive("Vec<(blocker, blocked)> scan", true),
        ];
        match self {
            Workload::QueueDrain => &QUEUE,
            Workload::Presence => &PRESENCE,
            Workload::ConnectionLookup => &LOOKUP,
            Workload::GroupJoin => &JOIN,
            Workload::BlockCheck => &BLOCK,
        }
    }

    /// Runs `k` operations of `variant` on a structure of size `n`, `reps`
    /// times; returns the nanoseconds per operation of each repetition.
    pub fn run<K: Key>(self, variant: usize, n: usize, k: usize, reps: usize) -> Vec<f64> {
        let n = n.max(1);
        let bench = Bench {
            keys: (0..n).map(K::make).collect(),
            n,
            k: self.ops_at(n, k),
            reps,
        };
        match self {
            Workload::QueueDrain if variant == 0 => bench.deque_pop_front(),
            Workload::QueueDrain => bench.vec_remove_front(),
            Workload::Presence => bench.presence(variant),
            Workload::ConnectionLookup => bench.connection_lookup(variant),
            Workload::GroupJoin => bench.group_join(variant),
            Workload::BlockCheck => bench.block_check(variant),
        }
    }

    /// How many operations a structure of size n takes: joins stop at n/2 so
    /// the group stays near size n. Queue pops keep the queue at n, so any k fit.
    pub fn ops_at(self, n: usize, k: usize) -> usize {
        match self {
            Workload::GroupJoin => k.min((n / 2).max(1)),
            _ => k,
        }
    }

    /// The operations one op costs, counted with [`Probe`] keys (building the
    /// structure is not counted).
    pub fn count(self, variant: usize, n: usize, k: usize) -> Counts {
        reset();
        // `run` resets the counters once the structure is built; queue drains
        // build by cloning, which hashes nothing and compares nothing.
        let _ = self.run::<Probe>(variant, n, k, 1);
        let k = self.ops_at(n, k) as f64;
        Counts {
            hashes: take(&HASHES) as f64 / k,
            comparisons: take(&COMPARISONS) as f64 / k,
            moves: take(&MOVES) as f64 / k,
        }
    }
}

/// What inserting N new keys into an empty `HashSet` costs, with no
/// capacity reserved: the growth every table of the core goes through.
/// Counted with [`Probe`] keys: a resize rehashes every key it moves, so the
/// hashes one insert triggers are observed, not computed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Growth {
    pub n: usize,
    /// Hashes per insert, over all N: the amortised cost.
    pub hashes_per_insert: f64,
    /// The most hashes one insert took (a resize: every key so far, rehashed).
    pub worst_insert_hashes: u64,
    /// Which insert that was (1-based): the table's size when it grew.
    pub worst_at: usize,
    /// Inserts that resized the table.
    pub resizes: usize,
    /// Time, not a count (plain `String` keys, one clock read per insert, so
    /// it varies run to run): the slowest single insert, and the median one.
    pub worst_insert_ns: f64,
    pub median_insert_ns: f64,
}

/// Times each of n inserts into an empty set: the slowest is a resize,
/// which every other input waits for while the core is held.
fn time_each_insert(n: usize) -> (f64, f64) {
    let keys: Vec<String> = (0..n).map(|i| format!("user{i:07}")).collect();
    let mut set: HashSet<String> = HashSet::new();
    let mut times: Vec<f64> = Vec::with_capacity(n);
    for key in keys {
        let start = Instant::now();
        set.insert(black_box(key));
        times.push(start.elapsed().as_nanos() as f64);
    }
    black_box(&set);
    times.sort_by(f64::total_cmp);
    (
        times.last().copied().unwrap_or(0.0),
        times.get(n / 2).copied().unwrap_or(0.0),
    )
}

pub fn growth(n: usize) -> Growth {
    let keys: Vec<Probe> = (0..n).map(Probe::make).collect();
    let mut set: HashSet<Probe, <Probe as Key>::Hasher> = HashSet::default();
    reset();
    let (mut total, mut worst, mut worst_at, mut resizes) = (0, 0, 0, 0);
    for (i, key) in keys.into_iter().enumerate() {
        set.insert(key);
        let hashes = take(&HASHES);
        // One hash for the insert itself; more means the table grew.
        if hashes > 1 {
            resizes += 1;
        }
        if hashes > worst {
            (worst, worst_at) = (hashes, i + 1);
        }
        total += hashes;
    }
    reset();
    let (worst_insert_ns, median_insert_ns) = time_each_insert(n);
    Growth {
        n,
        hashes_per_insert: total as f64 / n.max(1) as f64,
        worst_insert_hashes: worst,
        worst_at,
        resizes,
        worst_insert_ns,
        median_insert_ns,
    }
}

/// Heap bytes in use, as the allocator counts them (glibc's `mallinfo2`:
/// small blocks in the main arena plus blocks big enough to be mmapped).
/// The bench runs on the main thread, so its allocations are in that arena.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn heap_in_use() -> Option<usize> {
    // SAFETY: mallinfo2 only reads the allocator's own counters.
    let info = unsafe { libc::mallinfo2() };
    Some(info.uordblks + info.hblkhd)
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn heap_in_use() -> Option<usize> {
    None
}

/// What a structure's entries cost in memory, measured by the allocator, and
/// what a table that once held N costs after all but 3 leave.
#[derive(Debug, Clone, Serialize)]
pub struct Footprint {
    pub structure: &'static str,
    pub n: usize,
    /// Heap bytes the structure allocated for its n entries, over n. The
    /// names themselves are shared (`Arc<str>`) and not counted.
    pub bytes_per_entry: f64,
    /// Slots the table has room for before it next grows (`capacity()`):
    /// hashbrown keeps at most 7/8 of its buckets full.
    pub capacity: usize,
    /// The same table after n - 3 removals: nothing is given back.
    pub bytes_after_removals: usize,
    pub capacity_after_removals: usize,
    /// Iterating those 3 entries, against a table built with 3: the walk
    /// visits every bucket, so it is O(capacity), not O(len) (time, median).
    pub iterate_3_ns: Option<f64>,
    pub iterate_3_fresh_ns: Option<f64>,
}

fn iterate_ns<T>(table: &HashSet<T>) -> f64 {
    let reps = 201;
    let mut times: Vec<f64> = (0..reps)
        .map(|_| {
            let start = Instant::now();
            for user in black_box(table) {
                black_box(user);
            }
            start.elapsed().as_nanos() as f64
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[reps / 2]
}

/// Builds a table of n entries, then keeps 3 of them, asking the allocator
/// what it holds after each; the table is returned for more measuring.
fn measured<T>(
    structure: &'static str,
    n: usize,
    build: impl FnOnce() -> T,
    capacity: impl Fn(&T) -> usize,
    keep_3: impl FnOnce(&mut T),
) -> Option<(Footprint, T)> {
    let before = heap_in_use()?;
    let mut table = build();
    let bytes = heap_in_use()?.saturating_sub(before);
    let full = capacity(&table);
    keep_3(&mut table);
    let after = heap_in_use()?.saturating_sub(before);
    let footprint = Footprint {
        structure,
        n,
        bytes_per_entry: bytes as f64 / n.max(1) as f64,
        capacity: full,
        bytes_after_removals: after,
        capacity_after_removals: capacity(&table),
        iterate_3_ns: None,
        iterate_3_fresh_ns: None,
    };
    Some((footprint, table))
}

/// Measures the seed's `presence` (`HashSet<UserId>`), `active_connections` (`HashMap`
/// of one device each) and `blocked_users` (`HashMap` of one block each) at
/// n entries. None where the allocator cannot be asked.
pub fn footprint(n: usize) -> Option<Vec<Footprint>> {
    use crate::names::Name;
    let names: Vec<Name> = (0..n)
        .map(|i| Name::parse(&format!("user{i:06}")).expect("a valid name"))
        .collect();
    let keep: Vec<Name> = names[..3.min(n)].to_vec();
    let mut out = Vec::new();

    let (mut presence, table) = measured(
        "a HashSet<UserId>, the seed's presence",
        n,
        || names.iter().cloned().collect::<HashSet<Name>>(),
        HashSet::capacity,
        |t| t.retain(|u| keep.contains(u)),
    )?;
    let fresh: HashSet<Name> = keep.iter().cloned().collect();
    presence.iterate_3_ns = Some(iterate_ns(&table));
    presence.iterate_3_fresh_ns = Some(iterate_ns(&fresh));
    out.push(presence);
    drop((table, fresh));

    let (devices, table) = measured(
        "active_connections (HashMap<UserId, Vec>, 1 device each)",
        n,
        || {
            let pairs = names.iter().enumerate();
            pairs
                .map(|(i, u)| (u.clone(), vec![i as u64]))
                .collect::<HashMap<Name, Vec<u64>>>()
        },
        HashMap::capacity,
        |t| t.retain(|u, _| keep.contains(u)),
    )?;
    out.push(devices);
    drop(table);

    let (blocked, _table) = measured(
        "blocked_users (HashMap<UserId, HashSet>, 1 block each)",
        n,
        || {
            let pairs = names.iter().zip(names.iter().cycle().skip(1));
            pairs
                .map(|(by, whom)| (by.clone(), HashSet::from([whom.clone()])))
                .collect::<HashMap<Name, HashSet<Name>>>()
        },
        HashMap::capacity,
        |t| t.retain(|u, _| keep.contains(u)),
    )?;
    out.push(blocked);
    Some(out)
}

fn reset() {
    take(&HASHES);
    take(&COMPARISONS);
    take(&MOVES);
}

/// How much work one comparison may do, so defaults finish in seconds.
#[derive(Debug, Clone)]
pub struct Budget {
    pub sizes: Vec<usize>,
    /// Operations per repetition for a constant-cost variant.
    pub ops: usize,
    /// Element visits per repetition for a linear variant (ops = this / N).
    pub visits: usize,
    pub reps: usize,
}

impl Budget {
    pub fn default_sweep() -> Budget {
        Budget {
            sizes: vec![100, 1_000, 10_000, 100_000],
            ops: 20_000,
            visits: 20_000_000,
            reps: 5,
        }
    }

    pub fn quick() -> Budget {
        Budget {
            sizes: vec![100, 1_000, 10_000],
            ops: 5_000,
            visits: 4_000_000,
            reps: 3,
        }
    }

    fn ops_for(&self, variant: &Variant, n: usize) -> usize {
        if variant.linear {
            (self.visits / n.max(1)).clamp(20, self.ops)
        } else {
            self.ops
        }
    }
}

/// One measured size of one variant.
#[derive(Debug, Clone, Serialize)]
pub struct Point {
    pub n: usize,
    pub ops: usize,
    pub counts: Counts,
    pub ns_median: f64,
    pub ns_min: f64,
    pub ns_max: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct VariantResult {
    pub name: &'static str,
    pub chosen: bool,
    pub points: Vec<Point>,
    /// Log-log slope of the time per operation against N.
    pub time_slope: Option<f64>,
    /// Log-log slope of the counted steps per operation against N.
    pub count_slope: Option<f64>,
    pub class: Option<Class>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ComparisonResult {
    pub workload: Workload,
    pub title: &'static str,
    pub claim: &'static str,
    pub variants: Vec<VariantResult>,
    /// The smallest N (of 2, 4, ... 1024) from which the seed's choice is faster
    /// than the first naive variant at every larger size; None if never.
    pub crossover: Option<usize>,
    pub confirmed: bool,
    pub verdict: String,
    /// A second claim of the seed's that the counts correct (the lesson,
    /// not a failure of the first): e.g. "a set is faster than a dict's keys".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub correction: Option<String>,
    pub summary: String,
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs.get(xs.len() / 2).copied().unwrap_or(0.0)
}

/// Measures one point: counts once, then times `reps` repetitions after a warm-up.
pub fn measure(workload: Workload, variant: usize, n: usize, budget: &Budget) -> Point {
    let v = &workload.variants()[variant];
    let ops = budget.ops_for(v, n);
    let counts = workload.count(variant, n, ops);
    let _warm_up = workload.run::<String>(variant, n, ops, 1);
    let times = workload.run::<String>(variant, n, ops, budget.reps);
    let ns_min = times.iter().copied().fold(f64::INFINITY, f64::min);
    let ns_max = times.iter().copied().fold(0.0, f64::max);
    Point {
        n,
        ops: workload.ops_at(n, ops),
        counts,
        ns_median: median(times),
        ns_min,
        ns_max,
    }
}

/// The smallest power of two from which the chosen structure beats the first naive one.
fn crossover(workload: Workload, reps: usize) -> Option<usize> {
    let sizes: Vec<usize> = (1..=10).map(|p| 1usize << p).collect();
    let faster: Vec<bool> = sizes
        .iter()
        .map(|&n| {
            let t = |v| median(workload.run::<String>(v, n, 2_000, reps));
            t(0) < t(1)
        })
        .collect();
    (0..sizes.len())
        .find(|&i| faster[i..].iter().all(|&f| f))
        .map(|i| sizes[i])
}

fn group(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Runs one comparison at every size; `progress` is called after each point.
pub fn compare(
    workload: Workload,
    budget: &Budget,
    progress: &mut dyn FnMut(),
) -> ComparisonResult {
    let mut variants = Vec::new();
    for (i, v) in workload.variants().iter().enumerate() {
        let points: Vec<Point> = budget
            .sizes
            .iter()
            .map(|&n| {
                let p = measure(workload, i, n, budget);
                progress();
                p
            })
            .collect();
        let time_slope = log_log_slope(
            &points
                .iter()
                .map(|p| (p.n as f64, p.ns_median))
                .collect::<Vec<_>>(),
        );
        let count_slope = log_log_slope(
            &points
                .iter()
                .map(|p| (p.n as f64, p.counts.total()))
                .collect::<Vec<_>>(),
        );
        // The counted steps alone decide the class: they are the algorithm's
        // work, identical on every machine. Time adds memory effects on top (a
        // hash table of 100,000 keys no longer fits in the cache), shown beside
        // it, never deciding.
        let class = class_of_counts(
            &points
                .iter()
                .map(|p| (p.n as f64, p.counts.total()))
                .collect::<Vec<_>>(),
        );
        variants.push(VariantResult {
            name: v.name,
            chosen: v.chosen,
            points,
            time_slope,
            count_slope,
            class,
        });
    }
    let crossover = crossover(workload, budget.reps.min(3));
    progress();
    let Judgement {
        confirmed,
        verdict,
        correction,
        summary,
    } = judge(workload, &variants, crossover);
    ComparisonResult {
        workload,
        title: workload.title(),
        claim: workload.claim(),
        variants,
        crossover,
        confirmed,
        verdict,
        correction,
        summary,
    }
}

/// Compares the measurements with the seed's claim, in plain words.
fn judge(workload: Workload, variants: &[VariantResult], crossover: Option<usize>) -> Judgement {
    let chosen = &variants[0];
    let last = |v: &VariantResult| v.points.last().cloned();
    let (Some(c), Some(naive)) = (last(chosen), last(&variants[1])) else {
        return Judgement {
            confirmed: false,
            verdict: "not enough data".into(),
            correction: None,
            summary: String::new(),
        };
    };
    let speedup = naive.ns_median / c.ns_median.max(0.001);
    let n = group(c.n as u64);
    let chosen_flat = chosen.class == Some(Class::Constant);
    let naive_linear = matches!(
        variants[1].class,
        Some(
            Class::Linear | Class::Linearithmic | Class::LinearOrLinearithmic | Class::Superlinear
        )
    );
    // What makes the naive structure competitive when N is tiny, per workload.
    let why_small = match workload {
        Workload::QueueDrain => {
            "shifting a handful of elements costs about what the ring buffer's bookkeeping does"
        }
        _ => "for a handful of elements a scan beats hashing",
    };
    let cross = match crossover {
        Some(2) => "It was faster at every size tried, from N = 2 (timing).".to_string(),
        Some(x) => format!(
            "Below N = {x} the naive structure was as fast or faster (timing): {why_small}."
        ),
        None => "The naive structure was as fast at every small size tried, 2 to 1,024 (timing)."
            .to_string(),
    };
    // The verdict is the counts' alone (the same on every run and machine):
    // the classes they fit, and less counted work at the largest N. Times
    // are reported beside it, never judged.
    let less_work = c.counts.total() < naive.counts.total();
    let confirmed = chosen_flat && naive_linear && less_work;
    let mut correction = None;
    let verdict = if confirmed {
        format!(
            "confirmed: {} is {} and {} is {} (counted steps)",
            chosen.name,
            Class::Constant.label(),
            variants[1].name,
            variants[1].class.map_or("?", Class::label)
        )
    } else {
        format!(
            "not confirmed: {} fits {}, {} fits {} (counted steps)",
            chosen.name,
            chosen.class.map_or("?", Class::label),
            variants[1].name,
            variants[1].class.map_or("?", Class::label)
        )
    };
    let mut summary = match workload {
        Workload::QueueDrain => format!(
            "At N = {n}, each pop from the front of a Vec moved {} elements (N - 1; draining all {n} would move {}); VecDeque moved {} at every N: O(1). On this run VecDeque was {speedup:.0}x faster (timing).",
            group(naive.counts.moves.round() as u64),
            group((c.n as u64) * (c.n as u64).saturating_sub(1) / 2),
            c.counts.moves
        ),
        _ => format!(
            "At N = {n}, {} did {:.1} hash(es) and {:.1} comparison(s) per operation; {} compared {} keys. On this run {} was {speedup:.0}x faster (timing).",
            chosen.name,
            c.counts.hashes,
            c.counts.comparisons,
            variants[1].name,
            group(naive.counts.comparisons.round() as u64),
            chosen.name
        ),
    };
    if workload == Workload::Presence {
        if let Some(map) = variants.get(2).and_then(last) {
            let (said, corrected) = set_against_map(&c, &map);
            summary += &said;
            correction = corrected;
        }
    }
    summary += " ";
    summary += &cross;
    Judgement {
        confirmed,
        verdict,
        correction,
        summary,
    }
}

/// The seed's second presence claim, that a set beats a map's keys: the
/// sentence for the summary, and the correction when the counted work is the
/// same (one hash and about one comparison for both, on every run). The
/// timing is reported, never judged.
fn set_against_map(set: &Point, map: &Point) -> (String, Option<String>) {
    let ratio = map.ns_median / set.ns_median.max(0.001);
    let same_work = (map.counts.hashes - set.counts.hashes).abs() < 0.05
        && (map.counts.comparisons - set.counts.comparisons).abs() < 0.05;
    let said = format!(
        " HashMap::contains_key did {:.1} hash and {:.1} comparison per check, {}; on this run the map took {ratio:.2}x the set's time (timing, which also reflects memory: the map's entries carry a value, so fewer fit in the cache).",
        map.counts.hashes,
        map.counts.comparisons,
        if same_work {
            "the same counted work as the set: the seed's claim that a set check is faster than checking dict keys does not hold; in Rust a HashSet<K> is a HashMap<K, ()>"
        } else {
            "not the set's counted work"
        }
    );
    let corrected = same_work.then(|| {
        "corrected: a set is not faster than a map's keys (the same counted look-up: \
         one hash, about one comparison)"
            .to_string()
    });
    (said, corrected)
}

/// What the counts say of a claim: the first claim confirmed or not, and a
/// second one they correct, in words.
struct Judgement {
    confirmed: bool,
    verdict: String,
    correction: Option<String>,
    summary: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_pop_from_a_vec_of_n_moves_n_minus_1_at_every_n() {
        for (n, k) in [(5, 5), (100, 10), (10_000, 10)] {
            let vec = Workload::QueueDrain.count(1, n, k);
            assert_eq!(vec.moves, (n - 1) as f64, "N = {n}");
            assert_eq!((vec.hashes, vec.comparisons), (0.0, 0.0));
            let deque = Workload::QueueDrain.count(0, n, k);
            assert_eq!(deque, Counts::default(), "pop_front moves nothing");
        }
    }

    #[test]
    fn the_counted_removal_does_what_std_remove_0_does_one_move_at_a_time() {
        for n in [1, 2, 7, 100] {
            let mut std_vec: Vec<usize> = (0..n).collect();
            let mut counted = std_vec.clone();
            take(&MOVES);
            assert_eq!(remove_front_counted(&mut counted), std_vec.remove(0));
            assert_eq!(counted, std_vec, "the same elements, in the same order");
            assert_eq!(take(&MOVES), n as u64 - 1, "one move per later element");
        }
    }

    #[test]
    fn growing_a_set_is_amortised_o_1_and_its_worst_insert_rehashes_all() {
        let g = growth(100_000);
        // Doubling: the resizes rehash 3.5 + 7 + 14 + ... < 2N keys in all.
        assert!((1.0..3.0).contains(&g.hashes_per_insert), "{g:?}");
        // The last resize rehashed everything inserted before it, plus itself.
        assert_eq!(g.worst_insert_hashes, g.worst_at as u64, "{g:?}");
        assert!(g.worst_at > 100_000 / 4, "{g:?}");
        // log2(100,000 / 3.5) doublings, give or take one.
        assert!((13..=16).contains(&g.resizes), "{g:?}");
        let counts = |g: Growth| {
            (
                g.hashes_per_insert,
                g.worst_insert_hashes,
                g.worst_at,
                g.resizes,
            )
        };
        assert_eq!(
            counts(growth(1_000)),
            counts(growth(1_000)),
            "the same counts on every run"
        );
    }

    #[test]
    fn hash_look_ups_cost_one_hash_whatever_n() {
        for n in [10, 1_000] {
            let set = Workload::Presence.count(0, n, 500);
            assert_eq!(set.hashes, 1.0, "n = {n}");
            assert!(set.comparisons >= 1.0 && set.comparisons < 1.1, "{set:?}");
            let map = Workload::Presence.count(2, n, 500);
            assert_eq!(
                (map.hashes, map.comparisons),
                (set.hashes, set.comparisons),
                "a set is a map's keys"
            );
            let block = Workload::BlockCheck.count(0, n, 500);
            assert_eq!(block.hashes, 2.0, "recipient, then sender");
        }
    }

    #[test]
    fn scans_compare_about_half_the_keys_on_a_hit_and_all_on_a_miss() {
        // The queries are a fixed pseudo-random sequence: the same counts everywhere.
        let scan = Workload::Presence.count(1, 1_000, 2_000);
        assert!((400.0..600.0).contains(&scan.comparisons), "{scan:?}");
        assert_eq!(
            scan,
            Workload::Presence.count(1, 1_000, 2_000),
            "deterministic"
        );
        // A join checks the whole group (a miss: the joiner is new), then pushes.
        let join = Workload::GroupJoin.count(1, 100, 10);
        assert_eq!(
            join.comparisons,
            100.0 + 4.5,
            "100, 101, ... 109: mean 104.5"
        );
    }

    #[test]
    fn a_comparison_finds_the_classes_and_judges_the_claim() {
        let budget = Budget {
            sizes: vec![100, 1_000, 10_000],
            ops: 2_000,
            visits: 1_000_000,
            reps: 3,
        };
        let mut steps = 0;
        let r = compare(Workload::ConnectionLookup, &budget, &mut || steps += 1);
        assert_eq!(steps, 2 * 3 + 1);
        assert_eq!(r.variants[0].class, Some(Class::Constant));
        assert_eq!(r.variants[1].class, Some(Class::Linear));
        assert!(r.confirmed, "{}", r.verdict);
        assert!(r.summary.contains("At N = 10,000"), "{}", r.summary);
    }
}
