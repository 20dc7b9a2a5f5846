//! Operation counting and tracing: how the core proves its Big-O claims.
//!
//! Every call into one of the five structures is counted here, per structure and
//! per kind of operation, so a running server can show that routing 1,000
//! messages cost exactly 1,000 `active_connections.get`. Counting is one
//! integer increment; the optional [`Trace`] is what the event log narrates.

use std::borrow::Cow;
use std::cell::Cell;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::names::Name;

/// The seed's five structures, named as in the seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Structure {
    ActiveConnections,
    Presence,
    OfflineMessages,
    GroupMembers,
    BlockedUsers,
}

impl Structure {
    pub const ALL: [Structure; 5] = [
        Structure::ActiveConnections,
        Structure::Presence,
        Structure::OfflineMessages,
        Structure::GroupMembers,
        Structure::BlockedUsers,
    ];

    /// Everything said about this structure, from one table (see [`FACTS`]).
    pub fn facts(self) -> &'static Facts {
        &FACTS[self as usize]
    }

    pub fn name(self) -> &'static str {
        self.facts().name
    }

    /// The Rust type behind the name, for tables and narration.
    pub fn rust_type(self) -> &'static str {
        self.facts().rust_type
    }

    /// The operations this structure offers, in the order tables show them.
    pub fn ops(self) -> &'static [Op] {
        use Op::*;
        match self {
            Structure::ActiveConnections => &[Get, Insert, Remove, Iterate],
            Structure::Presence => &[Insert, Remove, Iterate],
            Structure::OfflineMessages => &[Len, PushBack, PopFront, Iterate],
            Structure::GroupMembers => &[Contains, Insert, Remove, Iterate, Len],
            Structure::BlockedUsers => &[Contains, Insert, Remove, Len],
        }
    }
}

/// One structure, as the event log, `inspect` and `bench` describe it.
#[derive(Debug)]
pub struct Facts {
    /// The seed's name for it.
    pub name: &'static str,
    pub rust_type: &'static str,
    /// The seed's Python type, as a student wrote it.
    pub python_type: &'static str,
    /// The costs that justify the choice, quoted in each table's title.
    pub headline: &'static str,
    /// The seed's reason for the choice, in one line.
    pub why: &'static str,
}

/// The five structures in [`Structure::ALL`] order: the one place their
/// names, types, costs and reasons are written.
pub const FACTS: [Facts; 5] = [
    Facts {
        name: "active_connections",
        rust_type: "HashMap<UserId, Vec<ConnHandle>>",
        python_type: "dict[str, list[WebSocket]]",
        headline: "get O(1)",
        why: "Instant O(1) lookup of a user's sockets; the Vec holds several devices (laptop + phone) at once.",
    },
    Facts {
        name: "presence",
        rust_type: "BTreeSet<UserId>",
        python_type: "set[str]",
        headline: "insert/remove O(log n), iterate O(n)",
        why: "One entry per online user, kept equal to the users with a connection; ordered, so each welcome and `who` list it by name without a sort (the seed's set needs one per connect).",
    },
    Facts {
        name: "offline_messages",
        rust_type: "HashMap<UserId, VecDeque<Message>>",
        python_type: "dict[str, collections.deque]",
        headline: "push_back O(1)*, pop_front O(1)",
        why: "A deque appends at the back and pops the front in O(1), so the flush on connect is FIFO; a Vec pops its front in O(n).",
    },
    Facts {
        name: "group_members",
        rust_type: "HashMap<GroupId, HashSet<UserId>>",
        python_type: "dict[str, set[str]]",
        headline: "contains O(1), fan-out O(m)",
        why: "A set keeps members unique and answers \"may this user post here?\" in O(1).",
    },
    Facts {
        name: "blocked_users",
        rust_type: "HashMap<UserId, HashSet<UserId>>",
        python_type: "dict[str, set[str]]",
        headline: "contains O(1)",
        why: "\"Does bob block alice?\" is asked for every message to bob: one O(1) set look-up.",
    },
];

/// A kind of operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    Get,
    Contains,
    Insert,
    Remove,
    Len,
    PushBack,
    PopFront,
    Iterate,
}

const OP_KINDS: usize = 8;

impl Op {
    pub fn name(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::Contains => "contains",
            Op::Insert => "insert",
            Op::Remove => "remove",
            Op::Len => "len",
            Op::PushBack => "push_back",
            Op::PopFront => "pop_front",
            Op::Iterate => "iterate",
        }
    }
}

/// The cost of one operation on one structure, as the event log and tables quote it.
/// Hash operations are expected O(1) (SipHash, so an attacker cannot force the
/// O(n) worst case by choosing colliding names), for keys of at most 32 bytes.
/// `*` is amortised: one call in a while costs O(n), a resize.
pub fn complexity(structure: Structure, op: Op) -> &'static str {
    match (structure, op) {
        // Removing one device scans the user's few devices: d is usually 1 to 3.
        (Structure::ActiveConnections, Op::Remove) => "O(d)",
        // A walk visits the table's buckets, and a table never shrinks: it
        // costs the most users it ever held ("cap"), not the users it holds.
        (Structure::ActiveConnections, Op::Iterate) => "O(cap)",
        // An ordered set (a B-tree here, a sorted set in Redis): the welcome
        // walks it in name order, and each join or leave finds its place.
        (Structure::Presence, Op::Iterate) => "O(n)",
        (Structure::Presence, Op::Insert | Op::Remove) => "O(log n)",
        (Structure::GroupMembers, Op::Iterate) => "O(m)",
        // A resume copies the k held messages after its position (found by
        // binary search in the id-ordered deque: O(log n + k)).
        (Structure::OfflineMessages, Op::Iterate) => "O(k)",
        // VecDeque and every hash table grow by doubling, which moves or
        // rehashes all n entries once: O(1) amortised.
        (Structure::OfflineMessages, Op::PushBack) => "O(1)*",
        (_, Op::Insert) => "O(1)*",
        _ => "O(1)",
    }
}

/// One call in this many is timed (the 1st, 17th, 33rd, ...: the first, cold
/// one too, so a short run has a time for every operation it used). Reading
/// the clock costs about as much as a hash look-up, so timing
/// every call would distort what is measured; one in 16 cost about 2% of the
/// server's CPU per routed message (3.35 against 3.27 us, docs/performance.md).
pub const SAMPLE_EVERY: u64 = 16;

#[derive(Default)]
struct OpCell {
    count: Cell<u64>,
    timed: Cell<u64>,
    nanos: Cell<u64>,
}

/// A monotonic clock in nanoseconds. The core never reads a clock itself:
/// the server passes one in to time sampled operations, and tests leave it
/// out, so their op tables are the same on every run.
pub type Clock = fn() -> u64;

/// What every table of operation counts says about its timings.
pub const TIMING_NOTE: &str = "Every call on a structure is counted; the first call of each \
     operation and one in 16 after it are timed (mean time per call; until the 17th call it is \
     the first, cold call alone).";

/// What the cost column's marks mean, said once under every table of costs.
pub const COST_NOTE: &str =
    "Cost: * is amortised (now and then one call resizes the table, O(n)); \
     cap is a table's capacity, set by the most entries it ever held (tables never shrink).";

/// Counters (and sampled timings) for every (structure, operation) pair.
/// `Cell` lets read-only look-ups (`&self`) count too; the core has one
/// owner at a time, so the counters need no atomics.
#[derive(Default)]
pub struct OpCounts {
    cells: [[OpCell; OP_KINDS]; 5],
    /// With a clock, one call in [`SAMPLE_EVERY`] is timed; without one, none.
    clock: Option<Clock>,
    /// What reading the clock twice costs, subtracted from each timed call so
    /// the mean is the operation's own cost.
    overhead_ns: u64,
}

impl OpCounts {
    /// Counters that time one call in [`SAMPLE_EVERY`] with `clock`.
    pub fn timed(clock: Clock) -> OpCounts {
        let overhead_ns = (0..200)
            .map(|_| {
                let start = clock();
                std::hint::black_box(());
                clock().saturating_sub(start)
            })
            .min()
            .unwrap_or(0);
        OpCounts {
            clock: Some(clock),
            overhead_ns,
            ..OpCounts::default()
        }
    }

    /// Counts one call of `op` on `structure` and runs it; times one call in
    /// [`SAMPLE_EVERY`], starting with the first, so a short run has a mean
    /// time for every operation it used.
    pub fn measure<R>(&self, structure: Structure, op: Op, f: impl FnOnce() -> R) -> R {
        let cell = &self.cells[structure as usize][op as usize];
        let n = cell.count.get();
        cell.count.set(n + 1);
        let Some(clock) = self.clock.filter(|_| n % SAMPLE_EVERY == 0) else {
            return f();
        };
        let start = clock();
        let result = f();
        let ns = clock()
            .saturating_sub(start)
            .saturating_sub(self.overhead_ns);
        cell.timed.set(cell.timed.get() + 1);
        cell.nanos.set(cell.nanos.get() + ns);
        result
    }

    /// A plain copy of every counter, for reports and snapshots.
    pub fn table(&self) -> OpTable {
        OpTable(
            Structure::ALL
                .iter()
                .flat_map(|&s| s.ops().iter().map(move |&op| (s, op)))
                .map(|(s, op)| {
                    let cell = &self.cells[s as usize][op as usize];
                    let timed = cell.timed.get();
                    OpCount {
                        structure: s,
                        op,
                        count: cell.count.get(),
                        complexity: Cow::Borrowed(complexity(s, op)),
                        mean_ns: (timed > 0).then(|| cell.nanos.get() as f64 / timed as f64),
                    }
                })
                .collect(),
        )
    }
}

/// One row of an [`OpTable`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpCount {
    pub structure: Structure,
    pub op: Op,
    pub count: u64,
    pub complexity: Cow<'static, str>,
    /// Mean wall time of the sampled calls, in nanoseconds (None before the first sample).
    pub mean_ns: Option<f64>,
}

/// Every counter at one instant, one row per operation a structure offers.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct OpTable(pub Vec<OpCount>);

impl OpTable {
    pub fn get(&self, structure: Structure, op: Op) -> u64 {
        self.0
            .iter()
            .find(|c| c.structure == structure && c.op == op)
            .map_or(0, |c| c.count)
    }

    pub fn total(&self) -> u64 {
        self.0.iter().map(|c| c.count).sum()
    }

    /// What happened between `earlier` and `self`: each counter minus its earlier value.
    pub fn since(&self, earlier: &OpTable) -> OpTable {
        OpTable(
            self.0
                .iter()
                .map(|c| OpCount {
                    count: c.count - earlier.get(c.structure, c.op),
                    ..c.clone()
                })
                .collect(),
        )
    }
}

/// One traced operation: `blocked_users[bob].contains(alice)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpRecord {
    pub structure: Structure,
    pub op: Op,
    /// The outer key (the user or group the structure was indexed by).
    pub key: Option<Name>,
    /// The inner argument, for set and deque operations on a keyed entry.
    pub arg: Option<Name>,
    /// A size after the operation (deque length, devices, members), where it tells something.
    pub size: Option<usize>,
    /// How many identical (structure, op) records in a row this one stands for.
    pub times: u32,
    /// In a cluster, the Redis command that did it: `RPUSH vivachat:q:bob O(1)`.
    pub via: Option<String>,
}

/// The longest trace kept for one event: a presence broadcast to 10,000 users
/// is narrated as its first operations and a count, in O(1) memory.
const TRACE_LIMIT: usize = 24;

/// The operations one event performed, in order, for the event log.
/// A disabled trace records nothing and allocates nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Trace {
    enabled: bool,
    records: Vec<OpRecord>,
    omitted: u64,
}

impl Trace {
    pub fn new(enabled: bool) -> Trace {
        Trace {
            enabled,
            ..Trace::default()
        }
    }

    /// Records an operation; consecutive repeats of one (structure, op) fold into one record, "N times".
    pub fn record(
        &mut self,
        structure: Structure,
        op: Op,
        key: Option<&Name>,
        arg: Option<&Name>,
        size: Option<usize>,
    ) {
        if !self.enabled {
            return;
        }
        if self.omitted > 0 {
            self.omitted += 1;
            return;
        }
        if let Some(last) = self.records.last_mut() {
            if last.structure == structure && last.op == op {
                last.times += 1;
                last.key = key.cloned();
                last.arg = arg.cloned();
                last.size = size;
                return;
            }
        }
        if self.records.len() == TRACE_LIMIT {
            self.omitted += 1;
            return;
        }
        self.records.push(OpRecord {
            structure,
            op,
            key: key.cloned(),
            arg: arg.cloned(),
            size,
            times: 1,
            via: None,
        });
    }

    /// Says which Redis command carried out the operation just recorded
    /// (built only while tracing: the event log's narration, not routing).
    pub fn via(&mut self, command: impl FnOnce() -> String) {
        if !self.enabled || self.omitted > 0 {
            return;
        }
        if let Some(last) = self.records.last_mut() {
            last.via = Some(command());
        }
    }

    pub fn records(&self) -> &[OpRecord] {
        &self.records
    }

    /// Operations left out once the trace was full.
    pub fn omitted(&self) -> u64 {
        self.omitted
    }
}

impl fmt::Display for OpRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.structure.name();
        let op = self.op.name();
        if self.times > 1 {
            // A folded run, in words: "active_connections.get 30 times, the last for bob".
            write!(f, "{s}.{op} {} times", self.times)?;
            if let Some(key) = &self.key {
                write!(f, ", the last for {key}")?;
            }
        } else {
            match (&self.key, &self.arg) {
                (Some(k), Some(a)) => write!(f, "{s}[{k}].{op}({a})")?,
                (Some(k), None)
                    if matches!(self.op, Op::PushBack | Op::PopFront)
                        || (self.structure, self.op)
                            == (Structure::OfflineMessages, Op::Iterate) =>
                {
                    write!(f, "{s}[{k}].{op}")?
                }
                (Some(k), None) => write!(f, "{s}.{op}({k})")?,
                (None, _) => write!(f, "{s}.{op}")?,
            }
        }
        write!(f, " {}", complexity(self.structure, self.op))?;
        if let Some(command) = &self.via {
            write!(f, " -> {command}")?;
        }
        if let Some(n) = self.size {
            let unit = match self.structure {
                Structure::ActiveConnections => "devices",
                Structure::GroupMembers => "members",
                _ => "len",
            };
            if unit == "len" {
                write!(f, ", len {n}")?;
            } else {
                write!(f, ", {n} {unit}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Name {
        Name::parse(s).unwrap()
    }

    #[test]
    fn the_facts_table_is_in_structure_order() {
        // `Structure::facts` indexes FACTS by the enum's discriminant.
        let names: Vec<&str> = Structure::ALL.iter().map(|s| s.name()).collect();
        assert_eq!(
            names,
            [
                "active_connections",
                "presence",
                "offline_messages",
                "group_members",
                "blocked_users"
            ]
        );
        assert_eq!(
            Structure::OfflineMessages.rust_type(),
            "HashMap<UserId, VecDeque<Message>>"
        );
    }

    #[test]
    fn counts_per_structure_and_kind() {
        let c = OpCounts::default();
        c.measure(Structure::Presence, Op::Insert, || ());
        c.measure(Structure::Presence, Op::Insert, || ());
        c.measure(Structure::BlockedUsers, Op::Contains, || ());
        let t = c.table();
        assert_eq!(t.get(Structure::Presence, Op::Insert), 2);
        assert_eq!(t.get(Structure::BlockedUsers, Op::Contains), 1);
        assert_eq!(t.total(), 3);
        c.measure(Structure::Presence, Op::Insert, || ());
        assert_eq!(c.table().since(&t).total(), 1);
    }

    #[test]
    fn one_call_in_sample_every_is_timed() {
        fn clock() -> u64 {
            static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
            EPOCH
                .get_or_init(std::time::Instant::now)
                .elapsed()
                .as_nanos() as u64
        }
        let c = OpCounts::timed(clock);
        let slow = || std::thread::sleep(std::time::Duration::from_micros(200));
        c.measure(Structure::Presence, Op::Iterate, slow);
        let first = c
            .table()
            .0
            .iter()
            .find(|r| r.op == Op::Iterate && r.structure == Structure::Presence)
            .unwrap()
            .mean_ns;
        assert!(
            first.is_some_and(|ns| ns >= 200_000.0),
            "the first call is timed, so a short run has a time: {first:?}"
        );
        for _ in 1..2 * SAMPLE_EVERY {
            c.measure(Structure::Presence, Op::Iterate, slow);
        }
        let row = c
            .table()
            .0
            .into_iter()
            .find(|r| r.op == Op::Iterate && r.structure == Structure::Presence)
            .unwrap();
        assert_eq!(row.count, 2 * SAMPLE_EVERY);
        let mean = row.mean_ns.expect("two calls were timed");
        assert!(mean >= 200_000.0, "a 200 us sleep measured as {mean} ns");
        assert_eq!(c.table().0[0].mean_ns, None, "never called, never timed");
        // Without a clock nothing is timed, so a test's op table is the same every run.
        let untimed = OpCounts::default();
        for _ in 0..2 * SAMPLE_EVERY {
            untimed.measure(Structure::Presence, Op::Iterate, || ());
        }
        assert!(untimed.table().0.iter().all(|r| r.mean_ns.is_none()));
    }

    #[test]
    fn trace_folds_repeats_and_caps_its_length() {
        let mut t = Trace::new(true);
        for _ in 0..3 {
            t.record(
                Structure::OfflineMessages,
                Op::PopFront,
                Some(&n("bob")),
                None,
                Some(1),
            );
        }
        assert_eq!(t.records().len(), 1);
        assert_eq!(t.records()[0].times, 3);
        for i in 0..100 {
            let op = if i % 2 == 0 { Op::Get } else { Op::Contains };
            t.record(Structure::ActiveConnections, op, Some(&n("x")), None, None);
        }
        assert_eq!(t.records().len(), TRACE_LIMIT);
        assert_eq!(t.omitted(), 100 - (TRACE_LIMIT as u64 - 1));
    }

    #[test]
    fn disabled_trace_records_nothing() {
        let mut t = Trace::new(false);
        t.record(Structure::Presence, Op::Insert, Some(&n("a")), None, None);
        assert!(t.records().is_empty());
    }

    #[test]
    fn narration_reads_like_the_code() {
        let mut t = Trace::new(true);
        t.record(
            Structure::BlockedUsers,
            Op::Contains,
            Some(&n("bob")),
            Some(&n("alice")),
            None,
        );
        t.record(
            Structure::OfflineMessages,
            Op::PushBack,
            Some(&n("bob")),
            None,
            Some(3),
        );
        let lines: Vec<String> = t.records().iter().map(|r| r.to_string()).collect();
        assert_eq!(
            lines,
            [
                "blocked_users[bob].contains(alice) O(1)",
                "offline_messages[bob].push_back O(1)*, len 3"
            ]
        );
    }
}
