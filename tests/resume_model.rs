//! Model-based property test of v1.1 resume: random sequences of v1 and
//! resuming connections (from position 0, from the last id seen, or from an
//! id this run never issued), direct and group messages with and without
//! receipts, `received`, and closes with unsent messages, run against
//! `ChatCore` and against a plain reference model of each user's window. After every step, every
//! delivery, ack, welcome and receipt is what the model predicts, the deques
//! and released positions are the model's, the invariants hold, and the
//! journal replayed into a fresh core gives back the same windows (durable
//! mode loses nothing a kill -9 could take).
//!
//! `PROPTEST_CASES=2000 cargo test --test resume_model` runs a longer search.

use std::collections::{BTreeMap, HashMap, VecDeque};

#[path = "common/disk.rs"]
mod disk;

use disk::Disk;
use proptest::prelude::*;
use vivachat::core::{ChatCore, ConnId, CoreConfig, Device, MemoryStructures, Outcome};
use vivachat::names::Name;
use vivachat::protocol::{parse_request, Message, ServerFrame};

const USERS: [&str; 3] = ["ann", "bob", "cy"];
const MAX_OFFLINE: usize = 4;

#[derive(Debug, Clone)]
enum From {
    Zero,
    /// The highest id this user's devices have been sent.
    LastSeen,
    /// Any id, often one this run never issued.
    Any(u64),
}

#[derive(Debug, Clone)]
enum Step {
    Connect(usize, Option<From>),
    /// Close the k-th open connection; with `true`, the messages it was sent
    /// live in its last step count as never written to its socket.
    Disconnect(usize, bool),
    Send(usize, usize, bool),
    /// From the k-th connection to the group every user is in.
    Post(usize, bool),
    /// `received` from the k-th connection: the last id it saw, or any id.
    Received(usize, Option<u64>),
}

fn from() -> impl Strategy<Value = Option<From>> {
    prop_oneof![
        2 => Just(None),
        1 => Just(Some(From::Zero)),
        2 => Just(Some(From::LastSeen)),
        1 => (0..40u64).prop_map(|n| Some(From::Any(n))),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0..USERS.len(), from()).prop_map(|(u, f)| Step::Connect(u, f)),
        2 => (any::<usize>(), any::<bool>()).prop_map(|(k, u)| Step::Disconnect(k, u)),
        5 => (any::<usize>(), 0..USERS.len(), any::<bool>()).prop_map(|(k, t, r)| Step::Send(k, t, r)),
        2 => (any::<usize>(), any::<bool>()).prop_map(|(k, r)| Step::Post(k, r)),
        3 => (any::<usize>(), proptest::option::of(0..40u64)).prop_map(|(k, m)| Step::Received(k, m)),
    ]
}

struct Open {
    conn: ConnId,
    user: usize,
    resume: Option<u64>,
    /// Messages sent to it live in the last step (for an unclean close).
    last_live: Vec<Message>,
    /// The highest message id it has been sent.
    seen: u64,
}

/// The reference model: a deque of (id, sender, asked for a receipt) per user.
#[derive(Default)]
struct Model {
    open: Vec<Open>,
    window: HashMap<usize, VecDeque<(u64, usize, bool)>>,
    released: HashMap<usize, u64>,
    next_id: u64,
}

impl Model {
    fn conns_of(&self, user: usize) -> Vec<ConnId> {
        self.open
            .iter()
            .filter(|o| o.user == user)
            .map(|o| o.conn)
            .collect()
    }

    /// Pops everything up to `upto`; returns the receipts due: (sender, id, member).
    fn release(&mut self, user: usize, upto: u64) -> Vec<(usize, u64)> {
        let mut receipts = Vec::new();
        let window = self.window.entry(user).or_default();
        while window.front().is_some_and(|(id, _, _)| *id <= upto) {
            let (id, sender, receipt) = window.pop_front().unwrap();
            if receipt {
                receipts.push((sender, id));
            }
        }
        if upto > self.released.get(&user).copied().unwrap_or(0) {
            self.released.insert(user, upto);
        }
        receipts
    }

    /// Receipt frames expected per connection.
    fn receipt_frames(&self, receipts: &[(usize, u64)]) -> BTreeMap<ConnId, Vec<u64>> {
        let mut out: BTreeMap<ConnId, Vec<u64>> = BTreeMap::new();
        for (sender, id) in receipts {
            for conn in self.conns_of(*sender) {
                out.entry(conn).or_default().push(*id);
            }
        }
        out
    }
}

fn n(s: &str) -> Name {
    Name::parse(s).unwrap()
}

/// What one outcome sent: chat ids, receipt ids and other frames, per connection.
#[derive(Default, Debug, PartialEq)]
struct Sent {
    chats: BTreeMap<ConnId, Vec<u64>>,
    receipts: BTreeMap<ConnId, Vec<u64>>,
    replies: BTreeMap<ConnId, Vec<String>>,
}

fn sent(outcome: &Outcome<Device>) -> Sent {
    let mut s = Sent::default();
    for (device, frame) in outcome.sends() {
        let conn = device.id;
        match frame {
            ServerFrame::Chat { message, .. } => s.chats.entry(conn).or_default().push(message.id),
            ServerFrame::Receipt { id, .. } => s.receipts.entry(conn).or_default().push(*id),
            ServerFrame::Ack { status, .. } => s
                .replies
                .entry(conn)
                .or_default()
                .push(format!("{status:?}")),
            ServerFrame::Error(e) => s
                .replies
                .entry(conn)
                .or_default()
                .push(format!("{:?}", e.code)),
            ServerFrame::Welcome { queued, resume, .. } => s
                .replies
                .entry(conn)
                .or_default()
                .push(format!("welcome {queued} {resume:?}")),
            ServerFrame::Presence { .. }
            | ServerFrame::PresenceDiff { .. }
            | ServerFrame::Who { .. }
            | ServerFrame::Pong => {}
        }
    }
    s
}

/// Sends `request` from the k-th open connection, applies its journal to the
/// disk, and returns the connection, its user, and the outcome.
fn from_open(
    core: &mut ChatCore<MemoryStructures<Device>>,
    disk: &mut Disk,
    m: &Model,
    k: usize,
    request: serde_json::Value,
) -> Option<(ConnId, usize, Outcome<Device>)> {
    let o = m.open.get(k % m.open.len().max(1))?;
    let device = Device {
        id: o.conn,
        resume: o.resume,
    };
    let envelope = parse_request(&request.to_string()).unwrap();
    let outcome = core
        .handle(&n(USERS[o.user]), &device, envelope, 0)
        .unwrap();
    disk.apply(&outcome);
    Some((o.conn, o.user, outcome))
}

fn run(steps: Vec<Step>) -> Result<(), TestCaseError> {
    let mut core: ChatCore<MemoryStructures<Device>> = ChatCore::new(
        MemoryStructures::journaled(),
        CoreConfig {
            max_offline: MAX_OFFLINE,
            ..CoreConfig::default()
        },
    );
    let mut m = Model {
        next_id: 1,
        ..Model::default()
    };
    let mut disk = Disk::default();
    // Everyone is in group g (joined without a connection: membership is the user's).
    for (u, user) in USERS.iter().enumerate() {
        let join = parse_request(r#"{"type":"group_join","group":"g"}"#).unwrap();
        let device = Device {
            id: 1_000_000 + u as u64,
            resume: None,
        };
        core.handle(&n(user), &device, join, 0).unwrap();
    }
    let mut next_conn: ConnId = 1;
    for step in steps {
        for o in &mut m.open {
            o.last_live.clear();
        }
        match step {
            Step::Connect(u, from) => {
                let conn = next_conn;
                next_conn += 1;
                let last_seen = m
                    .open
                    .iter()
                    .filter(|o| o.user == u)
                    .map(|o| o.seen)
                    .max()
                    .unwrap_or(0);
                let resume = from.map(|f| match f {
                    From::Zero => 0,
                    From::LastSeen => last_seen,
                    From::Any(n) => n,
                });
                let device = Device { id: conn, resume };
                let outcome = core.connect(&n(USERS[u]), device).unwrap();
                disk.apply(&outcome);
                if resume.is_none() {
                    disk.flushed(&n(USERS[u]), &outcome);
                }
                let got = sent(&outcome);
                let (expected_flush, receipts, position): (Vec<u64>, _, _) = match resume {
                    None => {
                        let all = m.window.remove(&u).unwrap_or_default();
                        (all.into_iter().map(|(id, _, _)| id).collect(), vec![], None)
                    }
                    Some(asked) => {
                        // A position this run never issued is not trusted.
                        let position = if asked < m.next_id { asked } else { 0 };
                        let receipts = m.release(u, position);
                        let window = m.window.get(&u).cloned().unwrap_or_default();
                        let after = window.iter().filter(|(id, _, _)| *id > position);
                        (
                            after.map(|(id, _, _)| *id).collect(),
                            receipts,
                            Some(position),
                        )
                    }
                };
                prop_assert_eq!(
                    got.replies.get(&conn).cloned().unwrap_or_default(),
                    vec![format!("welcome {} {position:?}", expected_flush.len())]
                );
                prop_assert_eq!(
                    got.chats.get(&conn).cloned().unwrap_or_default(),
                    expected_flush.clone()
                );
                m.window.retain(|_, w| !w.is_empty());
                let seen = expected_flush.last().copied().unwrap_or(0);
                m.open.push(Open {
                    conn,
                    user: u,
                    resume,
                    last_live: Vec::new(),
                    seen,
                });
                // Receipts go to the sender's devices open now, the new one included.
                prop_assert_eq!(&got.receipts, &m.receipt_frames(&receipts));
            }
            Step::Disconnect(k, unclean) => {
                if m.open.is_empty() {
                    continue;
                }
                let o = m.open.remove(k % m.open.len());
                let unsent = if unclean { o.last_live.clone() } else { vec![] };
                let outcome = core
                    .disconnect(&n(USERS[o.user]), o.conn, unsent.clone())
                    .unwrap();
                disk.apply(&outcome);
                let last = m.conns_of(o.user).is_empty();
                if last && o.resume.is_none() {
                    let edge = m.released.get(&o.user).copied().unwrap_or(0);
                    let window = m.window.entry(o.user).or_default();
                    for msg in unsent {
                        let held = window.iter().any(|(id, _, _)| *id == msg.id);
                        if msg.id <= edge || held {
                            continue;
                        }
                        let at = window.iter().take_while(|(id, _, _)| *id < msg.id).count();
                        let sender = USERS.iter().position(|u| *u == msg.from.as_str()).unwrap();
                        window.insert(at, (msg.id, sender, msg.receipt));
                    }
                    m.window.retain(|_, w| !w.is_empty());
                }
            }
            Step::Send(k, to, receipt) => {
                let text = serde_json::json!({"type":"message","to":USERS[to],"text":"x","receipt":receipt});
                let Some((conn, from, outcome)) = from_open(&mut core, &mut disk, &m, k, text)
                else {
                    continue;
                };
                let got = sent(&outcome);
                let devices = m.conns_of(to);
                let hold = m.open.iter().any(|o| o.user == to && o.resume.is_some());
                let queued = m.window.get(&to).map_or(0, VecDeque::len);
                let status = if !devices.is_empty() && !hold {
                    "Delivered"
                } else if queued >= MAX_OFFLINE {
                    "InboxFull"
                } else if hold {
                    "Delivered"
                } else {
                    "Queued"
                };
                prop_assert_eq!(
                    got.replies.get(&conn).cloned().unwrap_or_default(),
                    vec![status.to_string()]
                );
                if status == "InboxFull" {
                    prop_assert!(got.chats.is_empty());
                    continue;
                }
                let id = m.next_id;
                m.next_id += 1;
                let expected: BTreeMap<ConnId, Vec<u64>> = if status == "Delivered" {
                    devices.iter().map(|c| (*c, vec![id])).collect()
                } else {
                    BTreeMap::new()
                };
                prop_assert_eq!(&got.chats, &expected, "deliveries of message {}", id);
                if status == "Queued" || hold {
                    m.window
                        .entry(to)
                        .or_default()
                        .push_back((id, from, receipt));
                }
                let message = outcome
                    .frames
                    .iter()
                    .find_map(ServerFrame::chat_message)
                    .cloned();
                for o in m.open.iter_mut().filter(|o| o.user == to) {
                    o.seen = id;
                    o.last_live.extend(message.clone());
                }
            }
            Step::Post(k, receipt) => {
                let text = serde_json::json!({"type":"group_message","group":"g","text":"x","receipt":receipt});
                let Some((conn, from, outcome)) = from_open(&mut core, &mut disk, &m, k, text)
                else {
                    continue;
                };
                let got = sent(&outcome);
                let id = m.next_id;
                m.next_id += 1;
                let (mut would_reach, mut would_queue) = (0, 0);
                let mut expected: BTreeMap<ConnId, Vec<u64>> = BTreeMap::new();
                let message = outcome
                    .frames
                    .iter()
                    .find_map(ServerFrame::chat_message)
                    .cloned();
                for member in 0..USERS.len() {
                    let devices = m.conns_of(member);
                    let reach: Vec<ConnId> =
                        devices.iter().copied().filter(|c| *c != conn).collect();
                    let hold = m
                        .open
                        .iter()
                        .any(|o| reach.contains(&o.conn) && o.resume.is_some());
                    let room = m.window.get(&member).map_or(0, VecDeque::len) < MAX_OFFLINE;
                    let (deliver, keep) = match (devices.is_empty(), hold) {
                        (false, false) => (true, false),
                        (_, true) => (room, room),
                        (true, false) => (false, room),
                    };
                    if deliver {
                        would_reach += reach.len();
                        for c in &reach {
                            expected.insert(*c, vec![id]);
                        }
                        for o in m.open.iter_mut().filter(|o| reach.contains(&o.conn)) {
                            o.seen = id;
                            o.last_live.extend(message.clone());
                        }
                    } else if keep {
                        would_queue += 1;
                    }
                    if keep {
                        m.window
                            .entry(member)
                            .or_default()
                            .push_back((id, from, receipt));
                    }
                }
                let status = if would_reach > 0 {
                    "Delivered"
                } else if would_queue > 0 {
                    "Queued"
                } else {
                    "Sent"
                };
                prop_assert_eq!(
                    got.replies.get(&conn).cloned().unwrap_or_default(),
                    vec![status.to_string()]
                );
                prop_assert_eq!(&got.chats, &expected, "fan-out of group message {}", id);
            }
            Step::Received(k, id) => {
                let Some((seen, resumed)) = m
                    .open
                    .get(k % m.open.len().max(1))
                    .map(|o| (o.seen, o.resume.is_some()))
                else {
                    continue;
                };
                let id = id.unwrap_or(seen);
                let text = serde_json::json!({"type":"received","id":id});
                let Some((_, user, outcome)) = from_open(&mut core, &mut disk, &m, k, text) else {
                    continue;
                };
                let got = sent(&outcome);
                // On a connection that did not resume, `received` does nothing.
                let receipts = match resumed {
                    true => m.release(user, id.min(m.next_id - 1)),
                    false => Vec::new(),
                };
                m.window.retain(|_, w| !w.is_empty());
                prop_assert!(
                    got.replies.is_empty() && got.chats.is_empty(),
                    "received has no answer"
                );
                prop_assert_eq!(&got.receipts, &m.receipt_frames(&receipts));
            }
        }
        let snapshot = core.snapshot().unwrap();
        for inv in &snapshot.invariants {
            prop_assert!(inv.holds, "{}: {:?}", inv.name, inv.detail);
        }
        let windows = disk::queue_ids(&snapshot.structures);
        let model: BTreeMap<String, Vec<u64>> = m
            .window
            .iter()
            .map(|(u, w)| {
                (
                    USERS[*u].to_string(),
                    w.iter().map(|(id, _, _)| *id).collect(),
                )
            })
            .collect();
        prop_assert_eq!(windows, model);
        let released: BTreeMap<String, u64> = snapshot
            .structures
            .released
            .iter()
            .map(|(u, e)| (u.to_string(), *e))
            .collect();
        let model_released: BTreeMap<String, u64> = m
            .released
            .iter()
            .map(|(u, e)| (USERS[*u].to_string(), *e))
            .collect();
        prop_assert_eq!(released, model_released);
        // Durable mode: the journal gives back exactly the windows and their edges.
        let mut restored: ChatCore<MemoryStructures<Device>> =
            ChatCore::new(MemoryStructures::default(), CoreConfig::default());
        restored.restore(&disk.state());
        let again = restored.snapshot().unwrap().structures;
        prop_assert_eq!(
            &again.offline_messages,
            &snapshot.structures.offline_messages
        );
        prop_assert_eq!(&again.released, &snapshot.structures.released);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(256),
        ..ProptestConfig::default()
    })]

    #[test]
    fn resume_and_received_agree_with_the_reference_model(steps in proptest::collection::vec(step(), 1..80)) {
        run(steps)?;
    }
}
