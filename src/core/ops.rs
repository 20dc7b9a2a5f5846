//! Operation counting and tracing: how the core proves its Big-O claims.
//!
//! Every call into one of the five structures is counted here, per structure and
//! per kind of operation, so a running server can show that routing 1,000
//! messages cost exactly 1,000 `active_connections.get`. Counting is one
//! integer increment; the optional [`Trace`] is what the event log narrates.

use std::borrow::Cow;
use std::cell::Cell;
use std::fmt;
use std::sync::OnceLock;
use std::time::Instant;

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

    pub fn name(self) -> &'static str {
        match self {
            Structure::ActiveConnections => "active_connections",
            Structure::Presence => "presence",
            Structure::OfflineMessages => "offline_messages",
            Structure::GroupMembers => "group_members",
            Structure::BlockedUsers => "blocked_users",
        }
    }

    /// The Rust type behind the name, for tables and narration.
    pub fn rust_type(self) -> &'static str {
        match self {
            Structure::ActiveConnections => "HashMap<UserId, Vec<ConnHandle>>",
            Structure::Presence => "HashSet<UserId>",
            Structure::OfflineMessages => "HashMap<UserId, VecDeque<Message>>",
            Structure::GroupMembers => "HashMap<GroupId, HashSet<UserId>>",
            Structure::BlockedUsers => "HashMap<UserId, HashSet<UserId>>",
        }
    }

    /// The operations this structure offers, in the order tables show them.
    pub fn ops(self) -> &'static [Op] {
        use Op::*;
        match self {
            Structure::ActiveConnections => &[Get, Insert, Remove, Iterate],
            Structure::Presence => &[Insert, Remove, Iterate],
            Structure::OfflineMessages => &[Len, PushBack, PopFront],
            Structure::GroupMembers => &[Contains, Insert, Remove, Iterate, Len],
            Structure::BlockedUsers => &[Contains, Insert, Remove, Len],
        }
    }
}

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
/// O(n) worst case by choosing colliding names).
pub fn complexity(structure: Structure, op: Op) -> &'static str {
    match (structure, op) {
        // Removing one device scans the user's few devices: d is usually 1 to 3.
        (Structure::ActiveConnections, Op::Remove) => "O(d)",
        (Structure::ActiveConnections, Op::Iterate) => "O(n)",
        (Structure::Presence, Op::Iterate) => "O(n)",
        (Structure::GroupMembers, Op::Iterate) => "O(m)",
        // VecDeque grows by doubling, so push_back is O(1) amortised.
        (Structure::OfflineMessages, Op::PushBack) => "O(1)*",
        (Structure::ActiveConnections, Op::Insert) => "O(1)*",
        _ => "O(1)",
    }
}

/// One call in this many is timed (the 16th, 32nd, ...: never the cold first
/// call). Reading the clock costs about as much as a hash look-up, so timing
/// every call would distort what is measured; one in 16 cost about 2% of the
/// server's CPU per routed message (3.35 against 3.27 us, docs/performance.md).
pub const SAMPLE_EVERY: u64 = 16;

#[derive(Default)]
struct OpCell {
    count: Cell<u64>,
    timed: Cell<u64>,
    nanos: Cell<u64>,
}

/// Counters (and sampled timings) for every (structure, operation) pair.
/// `Cell` lets read-only look-ups (`&self`) count too; the core lives behind
/// one mutex, so the counters need no atomics.
#[derive(Default)]
pub struct OpCounts {
    cells: [[OpCell; OP_KINDS]; 5],
}

/// What reading the clock twice costs on this machine, subtracted from each
/// timed call so the mean is the operation's own cost.
fn clock_overhead_ns() -> u64 {
    static OVERHEAD: OnceLock<u64> = OnceLock::new();
    *OVERHEAD.get_or_init(|| {
        (0..200)
            .map(|_| {
                let start = Instant::now();
                std::hint::black_box(());
                start.elapsed().as_nanos() as u64
            })
            .min()
            .unwrap_or(0)
    })
}

impl OpCounts {
    /// Counts one call of `op` on `structure` and runs it; times one call in [`SAMPLE_EVERY`].
    pub fn measure<R>(&self, structure: Structure, op: Op, f: impl FnOnce() -> R) -> R {
        let cell = &self.cells[structure as usize][op as usize];
        let n = cell.count.get();
        cell.count.set(n + 1);
        if n % SAMPLE_EVERY != SAMPLE_EVERY - 1 {
            return f();
        }
        let start = Instant::now();
        let result = f();
        let ns = (start.elapsed().as_nanos() as u64).saturating_sub(clock_overhead_ns());
        cell.timed.set(cell.timed.get() + 1);
        cell.nanos.set(cell.nanos.get() + ns);
        result
    }

    pub fn get(&self, structure: Structure, op: Op) -> u64 {
        self.cells[structure as usize][op as usize].count.get()
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

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Records an operation; consecutive repeats of one (structure, op) fold into `×N`.
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
        });
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
            // A folded run names the last key only: "active_connections.get ×30 (last: bob)".
            write!(f, "{s}.{op} ×{}", self.times)?;
            if let Some(key) = &self.key {
                write!(f, " (last {key})")?;
            }
        } else {
            match (&self.key, &self.arg) {
                (Some(k), Some(a)) => write!(f, "{s}[{k}].{op}({a})")?,
                (Some(k), None) if self.op == Op::PushBack || self.op == Op::PopFront => {
                    write!(f, "{s}[{k}].{op}")?
                }
                (Some(k), None) => write!(f, "{s}.{op}({k})")?,
                (None, _) => write!(f, "{s}.{op}")?,
            }
        }
        write!(f, " {}", complexity(self.structure, self.op))?;
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
        let c = OpCounts::default();
        let slow = || std::thread::sleep(std::time::Duration::from_micros(200));
        c.measure(Structure::Presence, Op::Iterate, slow);
        assert_eq!(
            c.table()
                .0
                .iter()
                .find(|r| r.op == Op::Iterate && r.structure == Structure::Presence)
                .unwrap()
                .mean_ns,
            None,
            "the first call is not timed"
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
