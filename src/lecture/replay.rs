//! Replay: a recording's inputs fed one by one to a fresh core, with no
//! sockets. The core reads no clock and no randomness, so the state after K
//! inputs is exactly the state the live server had after its K-th: the same
//! structures and the same operation counts.
//!
//! Going back is replaying from the start to the step before: O(K) rules of
//! a few microseconds each, and correct by construction (no undo to get wrong).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use serde::Serialize;

use super::record::{Device, Line, Recorded, Recording};
use crate::board::{BoardFrame, FrameContext, EVENT_LINES, QUEUE_ENDS};
use crate::core::StructuresSnapshot;
use crate::core::{
    ChatCore, ConnId, Disk, Event, MemoryStructures, OpTable, Outcome, Snapshot, Trace,
};
use crate::names::UserId;
use crate::protocol::{parse_request, Request, RequestError};

pub type ReplayCore = ChatCore<MemoryStructures<Device>>;

/// A fresh core set up as the recording's header says: its limits, its
/// epoch and, with `--data`, what the server loaded before the first input.
pub fn fresh_core(recording: &Recording) -> ReplayCore {
    let h = &recording.header;
    let structures = match h.restored {
        Some(_) => MemoryStructures::journaled(),
        None => MemoryStructures::default(),
    };
    let mut core = ChatCore::new(structures, h.limits.clone());
    core.set_epoch(h.epoch.clone());
    if let Some(restored) = &h.restored {
        core.restore(&restored.durable_state(&h.epoch));
    }
    // Counting is always on; the trace is the narration a replay is for.
    core.set_tracing(true);
    core
}

/// What `/lecture/step` answers: step `step` of `steps`, in words and as the board draws it.
#[derive(Debug, Clone, Serialize)]
pub struct StepView {
    pub step: usize,
    pub steps: usize,
    /// The input, in words (None at step 0).
    pub input: Option<String>,
    /// What the core made of it.
    pub event: Option<String>,
    /// Each structure operation, with its cost.
    pub operations: Vec<String>,
    pub changed: Changed,
    pub touched_ops: Vec<String>,
    /// The next input in words, for Predict (None after the last).
    pub next_input: Option<String>,
    pub board: BoardFrame,
}

/// One step as a student reads it aloud.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Narration {
    /// The input, in words: what the client did ("alice sends bob: hi").
    pub input: String,
    /// What the core made of it: the event log's first words.
    pub event: String,
    /// Each structure operation it made, with its cost, in order.
    pub operations: Vec<String>,
    /// The event log's line for it, as `serve` prints it.
    pub line: String,
}

/// The input of a recorded line, in words, before knowing what it did:
/// what "Predict" shows.
pub fn describe(input: &Recorded) -> String {
    match input {
        Recorded::Connect {
            user,
            conn,
            resume: None,
            ..
        } => format!("{user} connects (conn {conn})"),
        Recorded::Connect {
            user,
            conn,
            resume: Some(n),
            ..
        } => format!("{user} connects (conn {conn}) and resumes after message {n}"),
        Recorded::Request { user, frame, .. } => match parse_request(frame.get()) {
            Ok(envelope) => request_words(user, &envelope.request),
            Err(_) => format!("{user} sends {}", frame.get()),
        },
        Recorded::Refuse { user, code, .. } => {
            format!("{user} sends a frame the server refuses before routing ({code})")
        }
        Recorded::Close {
            user, conn, unsent, ..
        } if unsent.is_empty() => format!("{user}'s conn {conn} closes"),
        Recorded::Close {
            user, conn, unsent, ..
        } => format!(
            "{user}'s conn {conn} closes with {} message(s) its socket never got",
            unsent.len()
        ),
        Recorded::Flushed { conn } => format!("conn {conn}'s socket takes the last of its flush"),
        Recorded::PresenceTick => {
            "the presence tick: batched connections hear what changed".to_string()
        }
        Recorded::Claimed { user } => format!("{user} claims the name with a token"),
        Recorded::AllConnections => "the server lists every connection".to_string(),
        Recorded::Disk { unavailable: None } => "the data file can be written again".to_string(),
        Recorded::Disk {
            unavailable: Some(why),
        } => format!("the data file cannot be written: {why}"),
        Recorded::Relayed { summary } => format!("another node routes here: {summary}"),
    }
}

fn request_words(user: &UserId, request: &Request) -> String {
    match request {
        Request::Message { to, text, .. } => format!("{user} sends {to}: {text:?}"),
        Request::GroupMessage { group, text, .. } => format!("{user} sends #{group}: {text:?}"),
        Request::GroupJoin { group } => format!("{user} joins #{group}"),
        Request::GroupLeave { group } => format!("{user} leaves #{group}"),
        Request::Block { user: whom } => format!("{user} blocks {whom}"),
        Request::Unblock { user: whom } => format!("{user} unblocks {whom}"),
        Request::Who => format!("{user} asks who is online"),
        Request::Ping => format!("{user} pings the server"),
        Request::Received { id } => {
            format!("{user}'s client confirms every message up to {id} (received)")
        }
    }
}

/// What one step changed, per structure: the keys whose entry is new,
/// gone or different (`presence` lists users), for the board to highlight.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Changed {
    pub active_connections: Vec<String>,
    pub presence: Vec<String>,
    pub offline_messages: Vec<String>,
    pub group_members: Vec<String>,
    pub blocked_users: Vec<String>,
}

fn changed_keys<K: Ord + ToString, V: PartialEq>(
    before: &BTreeMap<K, V>,
    after: &BTreeMap<K, V>,
) -> Vec<String> {
    let mut keys: Vec<String> = after
        .iter()
        .filter(|(k, v)| before.get(k) != Some(v))
        .map(|(k, _)| k.to_string())
        .collect();
    keys.extend(
        before
            .keys()
            .filter(|k| !after.contains_key(k))
            .map(ToString::to_string),
    );
    keys.sort();
    keys
}

impl Changed {
    pub fn between(before: &StructuresSnapshot, after: &StructuresSnapshot) -> Changed {
        let set = |v: &[UserId]| {
            v.iter()
                .map(|u| (u.clone(), ()))
                .collect::<BTreeMap<_, _>>()
        };
        Changed {
            active_connections: changed_keys(&before.active_connections, &after.active_connections),
            presence: changed_keys(&set(&before.presence), &set(&after.presence)),
            offline_messages: changed_keys(&before.offline_messages, &after.offline_messages),
            group_members: changed_keys(&before.groups, &after.groups),
            blocked_users: changed_keys(&before.blocked, &after.blocked),
        }
    }
}

/// A recording being stepped through: the core at step `k` (after `k`
/// inputs), the narration of step `k`, and the board's recent lines.
pub struct Cursor {
    recording: Arc<Recording>,
    core: ReplayCore,
    devices: HashMap<ConnId, Device>,
    k: usize,
    narration: Option<Narration>,
    lines: VecDeque<String>,
    flow: Option<crate::board::Flow>,
    /// The latest presence tick up to this step, which the board's presence region shows.
    diff: Option<crate::board::DiffShown>,
    /// The structures and counts at the step before, for what this one changed.
    before: StructuresSnapshot,
    ops_before: OpTable,
}

impl Cursor {
    /// Step 0: the state before the first input.
    pub fn new(recording: Arc<Recording>) -> Cursor {
        let core = fresh_core(&recording);
        let before = whole(&core);
        Cursor {
            recording,
            core,
            devices: HashMap::new(),
            k: 0,
            narration: None,
            lines: VecDeque::new(),
            flow: None,
            diff: None,
            before,
            ops_before: OpTable::default(),
        }
    }

    /// Inputs in the recording: the last step's number.
    pub fn steps(&self) -> usize {
        self.recording.lines.len()
    }

    pub fn step(&self) -> usize {
        self.k
    }

    /// The narration of the step just taken (None at step 0).
    pub fn narration(&self) -> Option<&Narration> {
        self.narration.as_ref()
    }

    /// The next input, in words (None after the last).
    pub fn next_input(&self) -> Option<String> {
        self.recording.lines.get(self.k).map(|l| describe(&l.input))
    }

    /// Applies the next input. False after the last one.
    pub fn forward(&mut self) -> bool {
        self.advance(true)
    }

    /// `forward`, keeping what the step changed only when asked: a seek
    /// far ahead copies the structures once, for its last step, not per step.
    fn advance(&mut self, keep_before: bool) -> bool {
        let recording = self.recording.clone();
        let Some(line) = recording.lines.get(self.k) else {
            return false;
        };
        if keep_before {
            self.before = whole(&self.core);
            self.ops_before = self.core.op_table();
        }
        let narration = self.apply(line);
        self.k += 1;
        self.lines.push_back(narration.line.clone());
        if self.lines.len() > EVENT_LINES {
            self.lines.pop_front();
        }
        self.narration = Some(narration);
        true
    }

    /// Moves to step `k` (clamped to the last): forwards from here, or from
    /// the start when `k` is behind.
    pub fn seek(&mut self, k: usize) {
        let k = k.min(self.steps());
        if k < self.k {
            *self = Cursor::new(self.recording.clone());
        }
        while self.k + 1 < k && self.advance(false) {}
        if self.k < k {
            self.forward();
        }
    }

    /// What this step changed in each structure.
    pub fn changed(&self) -> Changed {
        match self.k {
            0 => Changed::default(),
            _ => Changed::between(&self.before, &whole(&self.core)),
        }
    }

    /// The operations this step made, as `structure.op` (the board's names).
    pub fn touched_ops(&self) -> Vec<String> {
        let after = self.core.op_table();
        after
            .0
            .iter()
            .filter(|row| row.count > self.ops_before.get(row.structure, row.op))
            .filter(|_| self.k > 0)
            .map(|row| format!("{}.{}", row.structure.name(), row.op.name()))
            .collect()
    }

    /// Everything the lecture board shows at this step.
    pub fn view(&self) -> StepView {
        let narration = self.narration.clone();
        StepView {
            step: self.k,
            steps: self.steps(),
            input: narration.as_ref().map(|n| n.input.clone()),
            event: narration.as_ref().map(|n| n.event.clone()),
            operations: narration.map(|n| n.operations).unwrap_or_default(),
            changed: self.changed(),
            touched_ops: self.touched_ops(),
            next_input: self.next_input(),
            board: self.board_frame(),
        }
    }

    /// `/inspect` at this step.
    pub fn snapshot(&self) -> Snapshot {
        self.core
            .snapshot()
            .expect("in memory a snapshot always succeeds")
    }

    /// The structures and counts as they were before this step (None at
    /// step 0), kept by `forward`: what a view marks changes against,
    /// without replaying to the step before.
    pub fn snapshot_before(&self) -> Option<Snapshot> {
        (self.k > 0).then(|| {
            let next_id = self.core.next_message_id();
            Snapshot::new(self.before.clone(), &self.ops_before, next_id)
        })
    }

    /// The board's frame at this step (the five structures with each
    /// deque cut to its ends, the counts, the last message's path).
    pub fn board_frame(&self) -> BoardFrame {
        let structures = self
            .core
            .snapshot_ends(QUEUE_ENDS)
            .expect("in memory a snapshot always succeeds");
        let context = FrameContext {
            seq: self.k as u64,
            join_url: String::new(),
            uptime_ms: self.elapsed_ms(),
            events: self.lines.iter().cloned().collect(),
            flow: self.flow.clone(),
            events_since: u64::from(self.k > 0),
            hold_us: 0,
            build_us: 0,
            presence_diff: self.diff.clone(),
        };
        BoardFrame::build(&structures, self.core.op_table(), context)
    }

    /// The wall-clock time (Unix ms) of this step's input, as recorded.
    pub fn time_ms(&self) -> u64 {
        match self.k {
            0 => self.recording.lines.first().map_or(0, |l| l.t),
            k => self.recording.lines[k - 1].t,
        }
    }

    /// Milliseconds from the first input to this step's.
    pub fn elapsed_ms(&self) -> u64 {
        let first = self.recording.lines.first().map_or(0, |l| l.t);
        match self.k {
            0 => 0,
            k => self.recording.lines[k - 1].t.saturating_sub(first),
        }
    }

    fn apply(&mut self, line: &Line) -> Narration {
        let input = describe(&line.input);
        let at = std::time::Duration::from_millis(self.elapsed_ms_at(line));
        let outcome = apply(&mut self.core, &mut self.devices, line);
        match outcome {
            Some(outcome) => {
                if let Some(flow) = crate::board::Flow::of(&outcome.event, &outcome.trace) {
                    self.flow = Some(flow);
                }
                // Numbered by step, so stepping back and forth replays the same ids.
                let step = self.k as u64 + 1;
                if let Some(diff) = crate::board::DiffShown::of(&outcome.event, step) {
                    self.diff = Some(diff);
                }
                narrate(input, at, &outcome.event, &outcome.trace)
            }
            None => Narration {
                line: format!("[{:>9.3}s] {}", at.as_secs_f64(), quiet(&line.input)),
                event: quiet(&line.input),
                operations: Vec::new(),
                input,
            },
        }
    }

    fn elapsed_ms_at(&self, line: &Line) -> u64 {
        let first = self.recording.lines.first().map_or(0, |l| l.t);
        line.t.saturating_sub(first)
    }
}

/// Applies one recorded input to `core` exactly as the live server's owner
/// did; `devices` are the open connections by id (a request names its
/// device by id). Returns the rule's outcome, when the input was a rule.
pub fn apply(
    core: &mut ReplayCore,
    devices: &mut HashMap<ConnId, Device>,
    line: &Line,
) -> Option<Outcome<Device>> {
    // A connection the recording never opened is a refusal before the
    // upgrade finished: its id is all a reply needs.
    let device = |devices: &HashMap<ConnId, Device>, conn: ConnId| {
        devices.get(&conn).cloned().unwrap_or(Device {
            id: conn,
            resume: None,
            epoch: None,
            batched: false,
        })
    };
    const DONE: &str = "in memory a rule always completes";
    match &line.input {
        Recorded::Connect {
            user,
            conn,
            resume,
            epoch,
            batched,
        } => {
            let new = Device {
                id: *conn,
                resume: *resume,
                epoch: epoch.clone(),
                batched: *batched,
            };
            devices.insert(*conn, new.clone());
            Some(core.connect(user, new).expect(DONE))
        }
        Recorded::Request { user, conn, frame } => {
            let device = device(devices, *conn);
            Some(match parse_request(frame.get()) {
                Ok(envelope) => core.handle(user, &device, envelope, line.t).expect(DONE),
                Err(error) => core.refuse(user, &device, error),
            })
        }
        Recorded::Refuse {
            user,
            conn,
            code,
            detail,
        } => {
            let device = device(devices, *conn);
            let error = RequestError::new(*code, detail.clone(), None);
            Some(core.refuse(user, &device, error))
        }
        Recorded::Close { user, conn, unsent } => {
            devices.remove(conn);
            let unsent = Recorded::unsent(unsent);
            Some(core.disconnect(user, *conn, unsent).expect(DONE))
        }
        Recorded::Flushed { conn } => {
            core.flushed(*conn);
            None
        }
        Recorded::PresenceTick => core.presence_tick(),
        Recorded::Claimed { user } => {
            let _ = core.devices(user);
            None
        }
        Recorded::AllConnections => {
            let _ = core.all_connections();
            None
        }
        Recorded::Disk { unavailable } => {
            core.set_disk(match unavailable {
                None => Disk::Writable,
                Some(why) => Disk::Unavailable(why.clone()),
            });
            None
        }
        Recorded::Relayed { .. } => None,
    }
}

/// What an input without an event did, for the narration.
fn quiet(input: &Recorded) -> String {
    match input {
        Recorded::Flushed { conn } => format!(
            "~ conn {conn} was sent the last of its flush: its bytes leave the memory budget"
        ),
        Recorded::Claimed { user } => {
            format!("~ {user} was claimed: active_connections.get({user}) finds the devices to close")
        }
        Recorded::AllConnections => {
            "~ active_connections.iterate: every connection listed".to_string()
        }
        Recorded::Disk { unavailable: None } => "~ the data file is writable again".to_string(),
        Recorded::Disk {
            unavailable: Some(why),
        } => format!("~ the data file cannot be written ({why}): what must be kept is refused"),
        Recorded::Relayed { summary } => format!(
            "~ relayed from another node ({summary}): it acted on the structures in Redis, not replayed"
        ),
        other => describe(other),
    }
}

fn narrate(input: String, at: std::time::Duration, event: &Event, trace: &Trace) -> Narration {
    let mut operations: Vec<String> = trace.records().iter().map(|r| r.to_string()).collect();
    if trace.omitted() > 0 {
        operations.push(format!("... and {} more operation(s)", trace.omitted()));
    }
    Narration {
        input,
        event: crate::event_log::summary(event),
        operations,
        line: crate::event_log::format_event(at, event, trace, false),
    }
}

/// Every structure whole, for a step's comparison with the one before.
fn whole(core: &ReplayCore) -> StructuresSnapshot {
    core.snapshot()
        .expect("in memory a snapshot always succeeds")
        .structures
}
