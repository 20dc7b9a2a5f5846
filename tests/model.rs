//! Model-based property test of the core: random sequences of connect,
//! disconnect, direct and group messages, joins, leaves, blocks and unblocks,
//! run against `ChatCore` and against a trivially correct reference model.
//! After every step the invariants must hold and every delivery, ack and
//! queue must be exactly what the model predicts, so every accepted message is
//! delivered exactly once or queued exactly once. Durable mode is checked on
//! the way: replaying the core's journal into a fresh core gives back exactly
//! the queues, groups and blocks after every step.
//!
//! `PROPTEST_CASES=2000 cargo test --test model` runs a longer search.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

#[path = "common/disk.rs"]
mod disk;

use disk::Disk;
use proptest::prelude::*;
use vivachat::core::{ChatCore, ConnId, CoreConfig, MemoryStructures, Outcome};
use vivachat::names::Name;
use vivachat::protocol::{parse_request, Request, ServerFrame, Target};

const USERS: [&str; 4] = ["ann", "ben", "cy", "dee"];
const GROUPS: [&str; 2] = ["g1", "g2"];
const MAX_OFFLINE: usize = 3;
// Small limits, so random runs hit them often.
const MAX_GROUPS: usize = 1;
const MAX_GROUP_SIZE: usize = 3;
const MAX_BLOCKED: usize = 2;

#[derive(Debug, Clone)]
enum Step {
    Connect(usize),
    /// Disconnect the k-th open connection (mod how many there are).
    Disconnect(usize),
    /// From the k-th open connection to a user.
    Message(usize, usize),
    Join(usize, usize),
    Leave(usize, usize),
    Post(usize, usize),
    Block(usize, usize),
    Unblock(usize, usize),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0..USERS.len()).prop_map(Step::Connect),
        2 => any::<usize>().prop_map(Step::Disconnect),
        4 => (any::<usize>(), 0..USERS.len()).prop_map(|(c, u)| Step::Message(c, u)),
        2 => (any::<usize>(), 0..GROUPS.len()).prop_map(|(c, g)| Step::Join(c, g)),
        1 => (any::<usize>(), 0..GROUPS.len()).prop_map(|(c, g)| Step::Leave(c, g)),
        3 => (any::<usize>(), 0..GROUPS.len()).prop_map(|(c, g)| Step::Post(c, g)),
        1 => (any::<usize>(), 0..USERS.len()).prop_map(|(c, u)| Step::Block(c, u)),
        1 => (any::<usize>(), 0..USERS.len()).prop_map(|(c, u)| Step::Unblock(c, u)),
    ]
}

/// The reference model: plain collections, no cleverness.
#[derive(Default)]
struct Model {
    /// Open connections in opening order: (id, user).
    open: Vec<(ConnId, usize)>,
    queues: HashMap<usize, VecDeque<u64>>,
    groups: HashMap<usize, BTreeSet<usize>>,
    /// (blocker, blocked)
    blocks: HashSet<(usize, usize)>,
    /// (recipient, sender): copies a block kept out of the recipient's queue,
    /// which count toward its limit for that sender until it is flushed.
    withheld: HashMap<(usize, usize), usize>,
    next_id: u64,
}

impl Model {
    fn conns_of(&self, user: usize) -> BTreeSet<ConnId> {
        self.open
            .iter()
            .filter(|(_, u)| *u == user)
            .map(|(c, _)| *c)
            .collect()
    }
}

/// One request from `user` on `conn`, handled by the core, its journal applied to the disk model.
fn handle(
    core: &mut ChatCore<MemoryStructures<ConnId>>,
    disk: &mut Disk,
    user: &str,
    conn: ConnId,
    text: &str,
) -> Outcome<ConnId> {
    let outcome = core
        .handle(&n(user), &conn, parse_request(text).unwrap(), 0)
        .unwrap();
    disk.apply(&outcome);
    outcome
}

fn n(s: &str) -> Name {
    Name::parse(s).unwrap()
}

/// Which message ids each connection received in this outcome, and the acks.
fn received(outcome: &Outcome<ConnId>) -> (BTreeMap<ConnId, Vec<u64>>, Vec<String>) {
    let mut got: BTreeMap<ConnId, Vec<u64>> = BTreeMap::new();
    let mut acks = Vec::new();
    for (&conn, frame) in outcome.sends() {
        match frame {
            ServerFrame::Chat { message, .. } => got.entry(conn).or_default().push(message.id),
            ServerFrame::Ack { status, .. } => acks.push(format!("{status:?}")),
            ServerFrame::Error(e) => acks.push(format!("{:?}", e.code)),
            _ => {}
        }
    }
    (got, acks)
}

fn run(steps: Vec<Step>) -> Result<(), TestCaseError> {
    let mut core: ChatCore<MemoryStructures<ConnId>> = ChatCore::new(
        MemoryStructures::journaled(),
        CoreConfig {
            max_offline: MAX_OFFLINE,
            trace: false,
            max_text_chars: None,
            max_groups: MAX_GROUPS,
            max_group_size: MAX_GROUP_SIZE,
            max_blocked: MAX_BLOCKED,
            ..CoreConfig::default()
        },
    );
    let mut m = Model {
        next_id: 1,
        ..Model::default()
    };
    let mut next_conn: ConnId = 1;
    let mut disk = Disk::default();
    for step in steps {
        let pick = |k: usize, m: &Model| (!m.open.is_empty()).then(|| m.open[k % m.open.len()]);
        match step {
            Step::Connect(u) => {
                let conn = next_conn;
                next_conn += 1;
                let outcome = core.connect(&n(USERS[u]), conn).unwrap();
                disk.apply(&outcome);
                disk.flushed(&n(USERS[u]), &outcome);
                let (got, _) = received(&outcome);
                m.open.push((conn, u));
                // The new connection gets the user's whole queue, oldest first, once.
                let expected: Vec<u64> = m.queues.remove(&u).map(Vec::from).unwrap_or_default();
                m.withheld.retain(|(to, _), _| *to != u);
                prop_assert_eq!(got.get(&conn).cloned().unwrap_or_default(), expected);
            }
            Step::Disconnect(k) => {
                let Some((conn, u)) = pick(k, &m) else {
                    continue;
                };
                disk.apply(&core.disconnect(&n(USERS[u]), conn, vec![]).unwrap());
                m.open.retain(|(c, _)| *c != conn);
            }
            Step::Message(k, to) => {
                let Some((conn, from)) = pick(k, &m) else {
                    continue;
                };
                let text = format!(r#"{{"type":"message","to":"{}","text":"x"}}"#, USERS[to]);
                let outcome = handle(&mut core, &mut disk, USERS[from], conn, &text);
                let (got, acks) = received(&outcome);
                let online = m.conns_of(to);
                // v1.1: the ack ignores the block; the block only stops delivery.
                let blocked = m.blocks.contains(&(to, from));
                let expected_ack = if !online.is_empty() {
                    "Delivered"
                } else if m.queues.get(&to).map_or(0, VecDeque::len)
                    + m.withheld.get(&(to, from)).copied().unwrap_or(0)
                    >= MAX_OFFLINE
                {
                    "InboxFull"
                } else {
                    "Queued"
                };
                prop_assert_eq!(acks, vec![expected_ack.to_string()]);
                if expected_ack == "InboxFull" {
                    prop_assert!(got.is_empty());
                    continue;
                }
                let id = m.next_id;
                m.next_id += 1;
                let expected: BTreeMap<ConnId, Vec<u64>> = match expected_ack {
                    "Delivered" if !blocked => online.iter().map(|c| (*c, vec![id])).collect(),
                    _ => BTreeMap::new(),
                };
                prop_assert_eq!(
                    got,
                    expected,
                    "deliveries of message {} to {}",
                    id,
                    USERS[to]
                );
                match (expected_ack == "Queued", blocked) {
                    (true, false) => m.queues.entry(to).or_default().push_back(id),
                    (true, true) => *m.withheld.entry((to, from)).or_default() += 1,
                    _ => {}
                }
            }
            Step::Join(k, g) | Step::Leave(k, g) => {
                let Some((conn, u)) = pick(k, &m) else {
                    continue;
                };
                let kind = if matches!(step, Step::Join(..)) {
                    "group_join"
                } else {
                    "group_leave"
                };
                let text = format!(r#"{{"type":"{kind}","group":"{}"}}"#, GROUPS[g]);
                let outcome = handle(&mut core, &mut disk, USERS[u], conn, &text);
                let is_member = m.groups.get(&g).is_some_and(|g| g.contains(&u));
                let size = m.groups.get(&g).map_or(0, BTreeSet::len);
                let refused = kind == "group_join"
                    && !is_member
                    && ((size == 0 && m.groups.len() >= MAX_GROUPS) || size >= MAX_GROUP_SIZE);
                if refused {
                    prop_assert_eq!(received(&outcome).1, vec!["LimitReached".to_string()]);
                    continue;
                }
                prop_assert_eq!(received(&outcome).1, vec!["Ok".to_string()]);
                let members = m.groups.entry(g).or_default();
                if kind == "group_join" {
                    members.insert(u);
                } else {
                    members.remove(&u);
                    if members.is_empty() {
                        m.groups.remove(&g);
                    }
                }
            }
            Step::Post(k, g) => {
                let Some((conn, from)) = pick(k, &m) else {
                    continue;
                };
                let text = format!(
                    r#"{{"type":"group_message","group":"{}","text":"x"}}"#,
                    GROUPS[g]
                );
                let outcome = handle(&mut core, &mut disk, USERS[from], conn, &text);
                let (got, acks) = received(&outcome);
                let members = m.groups.get(&g).cloned().unwrap_or_default();
                if !members.contains(&from) {
                    prop_assert_eq!(acks, vec!["NotMember".to_string()]);
                    prop_assert!(got.is_empty());
                    continue;
                }
                let id = m.next_id;
                m.next_id += 1;
                let mut expected: BTreeMap<ConnId, Vec<u64>> = BTreeMap::new();
                // What the sender is told counts members who block her as if
                // they did not (v1.1); they get nothing.
                let (mut would_reach, mut would_queue) = (0, 0);
                for member in members {
                    // The sender's own devices are never checked against her own blocks.
                    let blocks = member != from && m.blocks.contains(&(member, from));
                    let conns = m.conns_of(member);
                    if conns.is_empty() {
                        let withheld = m.withheld.entry((member, from)).or_default();
                        let q = m.queues.entry(member).or_default();
                        if q.len() + *withheld < MAX_OFFLINE {
                            would_queue += 1;
                            match blocks {
                                true => *withheld += 1,
                                false => q.push_back(id),
                            }
                        }
                    } else {
                        for c in conns.into_iter().filter(|c| *c != conn) {
                            would_reach += 1;
                            if !blocks {
                                expected.insert(c, vec![id]);
                            }
                        }
                    }
                }
                m.queues.retain(|_, q| !q.is_empty());
                m.withheld.retain(|_, n| *n > 0);
                let status = if would_reach > 0 {
                    "Delivered"
                } else if would_queue > 0 {
                    "Queued"
                } else {
                    "Sent"
                };
                prop_assert_eq!(acks, vec![status.to_string()]);
                prop_assert_eq!(got, expected, "fan-out of group message {}", id);
            }
            Step::Block(k, whom) | Step::Unblock(k, whom) => {
                let Some((conn, by)) = pick(k, &m) else {
                    continue;
                };
                let kind = if matches!(step, Step::Block(..)) {
                    "block"
                } else {
                    "unblock"
                };
                let text = format!(r#"{{"type":"{kind}","user":"{}"}}"#, USERS[whom]);
                let outcome = handle(&mut core, &mut disk, USERS[by], conn, &text);
                let blocking = m.blocks.iter().filter(|(b, _)| *b == by).count();
                if kind == "block" && blocking >= MAX_BLOCKED && !m.blocks.contains(&(by, whom)) {
                    prop_assert_eq!(received(&outcome).1, vec!["LimitReached".to_string()]);
                    continue;
                }
                prop_assert_eq!(received(&outcome).1, vec!["Ok".to_string()]);
                if kind == "block" {
                    m.blocks.insert((by, whom));
                } else {
                    m.blocks.remove(&(by, whom));
                }
            }
        }
        // After every step: the invariants, and the queues exactly as the model has them.
        let snapshot = core.snapshot().unwrap();
        // Durable mode: replaying the journal gives back exactly the durable state.
        let mut restored: ChatCore<MemoryStructures<ConnId>> =
            ChatCore::new(MemoryStructures::default(), CoreConfig::default());
        restored.restore(&disk.state());
        let again = restored.snapshot().unwrap().structures;
        prop_assert_eq!(
            &again.offline_messages,
            &snapshot.structures.offline_messages
        );
        prop_assert_eq!(&again.groups, &snapshot.structures.groups);
        prop_assert_eq!(&again.blocked, &snapshot.structures.blocked);
        for inv in &snapshot.invariants {
            prop_assert!(inv.holds, "{}: {:?}", inv.name, inv.detail);
        }
        let queues = disk::queue_ids(&snapshot.structures);
        let model_queues: BTreeMap<String, Vec<u64>> = m
            .queues
            .iter()
            .map(|(u, q)| (USERS[*u].to_string(), q.iter().copied().collect()))
            .collect();
        prop_assert_eq!(queues, model_queues);
        let online: Vec<String> = snapshot
            .structures
            .presence
            .iter()
            .map(ToString::to_string)
            .collect();
        let model_online: BTreeSet<String> =
            m.open.iter().map(|(_, u)| USERS[*u].to_string()).collect();
        prop_assert_eq!(online, model_online.into_iter().collect::<Vec<_>>());
        // Every queued message belongs to its target: direct ones to the user, group ones to a member.
        for (user, q) in &snapshot.structures.offline_messages {
            for msg in &q.messages {
                if let Target::User(to) = &msg.target {
                    prop_assert_eq!(to, user);
                }
            }
        }
    }
    Ok(())
}

/// Parses `text` and, if it is a request, handles it from a connected user in a
/// core with small limits: the sender gets exactly one reply, and the
/// invariants hold afterwards.
fn handle_once(text: &str) -> Result<(), TestCaseError> {
    let mut core: ChatCore<MemoryStructures<ConnId>> = ChatCore::new(
        MemoryStructures::default(),
        CoreConfig {
            max_offline: 1,
            max_text_chars: Some(10),
            max_groups: 1,
            max_group_size: 1,
            max_blocked: 1,
            ..CoreConfig::default()
        },
    );
    let ann = n("ann");
    core.connect(&ann, 1).unwrap();
    // `received` is the one request with no reply: it is the client's ack.
    let mut expected = 1;
    let outcome = match parse_request(text) {
        Ok(envelope) => {
            if matches!(envelope.request, Request::Received { .. }) {
                expected = 0;
            }
            core.handle(&ann, &1, envelope, 0).unwrap()
        }
        Err(error) => core.refuse(&ann, &1, error),
    };
    // A message to oneself also arrives on the sending device: count only replies.
    let replies = outcome
        .frames_for(1)
        .into_iter()
        .filter(|f| !matches!(f, ServerFrame::Chat { .. }))
        .count();
    prop_assert_eq!(replies, expected, "replies to {:?}", text);
    for inv in core.snapshot().unwrap().invariants {
        prop_assert!(inv.holds, "{}: {:?}", inv.name, inv.detail);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(128),
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_core_agrees_with_the_reference_model(steps in proptest::collection::vec(step(), 1..80)) {
        run(steps)?;
    }

    /// Whatever arrives as a frame, parsing returns a request or an error, and
    /// handling it answers the sender exactly once: it never panics.
    #[test]
    fn parsing_and_handling_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let text = String::from_utf8_lossy(&bytes);
        handle_once(&text)?;
    }

    /// Well-formed JSON of arbitrary shape: still a request or an error, never a panic.
    #[test]
    fn parsing_arbitrary_json_never_panics(
        kind in prop_oneof![
            Just("message".to_string()),
            Just("group_message".to_string()),
            Just("who".to_string()),
            Just("block".to_string()),
            ".*",
        ],
        to in ".{0,40}",
        text in any::<String>(),
        r in any::<i64>(),
    ) {
        let frame = serde_json::json!({"type": kind, "to": to, "user": to, "group": to, "text": text, "ref": r});
        match parse_request(&frame.to_string()) {
            Ok(envelope) => prop_assert_eq!(envelope.reference, Some(serde_json::json!(r).into())),
            Err(error) => prop_assert!(error.reference.is_none() || error.reference == Some(serde_json::json!(r).into())),
        }
        handle_once(&frame.to_string())?;
    }
}
