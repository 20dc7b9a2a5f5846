//! What the projector's board (`GET /board`) draws: one [`BoardFrame`] built
//! from a snapshot of the five structures, the operation counts and the
//! latest events. Pure, so every rule here is tested without a server or a
//! browser; the server only decides when to build one and who receives it.
//!
//! A frame is bounded whatever the class size: at most [`SHOWN`] entries per
//! structure and [`QUEUE_ENDS`] boxes at each end of a deque, so a class of
//! 300 costs the page the same to draw as a class of 30.

use serde::Serialize;

use crate::core::{DiffSummary, Event, Op, OpTable, Structure, StructuresSnapshot, Trace};
use crate::names::{GroupId, UserId};
use crate::protocol::{AckStatus, Message, Target};

/// Entries drawn per structure; the rest are counted ("+12 more").
pub const SHOWN: usize = 40;
/// Boxes drawn at each end of an offline deque; the middle is counted.
pub const QUEUE_ENDS: usize = 4;
/// Narrated event lines the board keeps.
pub const EVENT_LINES: usize = 8;

/// A list cut to [`SHOWN`] entries, with how many were left out.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Shown<T> {
    pub items: Vec<T>,
    pub more: usize,
}

impl<T> Shown<T> {
    fn cut(all: impl ExactSizeIterator<Item = T>) -> Shown<T> {
        let total = all.len();
        let items: Vec<T> = all.take(SHOWN).collect();
        Shown {
            more: total - items.len(),
            items,
        }
    }
}

/// One key of `active_connections`: a user and their device chips.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Devices {
    pub user: UserId,
    pub devices: Vec<Device>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Device {
    pub id: u64,
    /// Where it connects from, as the server saw it.
    pub remote: Option<String>,
}

/// One user's offline deque: its front boxes, then its back boxes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Deque {
    pub user: UserId,
    pub len: usize,
    /// Oldest first; the first box is the front (next to be flushed).
    pub boxes: Vec<QueuedBox>,
    /// Boxes left out after the first [`QUEUE_ENDS`] ones (0: none).
    pub skipped: usize,
}

/// One queued message as a box: its id, who sent it and, for a group message, where.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QueuedBox {
    pub id: u64,
    pub from: UserId,
    pub group: Option<GroupId>,
}

impl From<&Message> for QueuedBox {
    fn from(m: &Message) -> QueuedBox {
        QueuedBox {
            id: m.id,
            from: m.from.clone(),
            group: match &m.target {
                Target::Group(g) => Some(g.clone()),
                Target::User(_) => None,
            },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Members {
    pub group: GroupId,
    pub members: Vec<UserId>,
}

/// Who `by` blocks.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Blocks {
    pub by: UserId,
    pub whom: Vec<UserId>,
}

/// Whole-structure sizes, shown even when entries are cut.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Totals {
    pub users_connected: usize,
    pub devices: usize,
    pub online: usize,
    pub queued: usize,
    pub deques: usize,
    pub groups: usize,
    pub blockers: usize,
}

/// One step of the seed's message flow, and whether the last message took it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Step {
    /// The structure consulted or changed.
    pub structure: &'static str,
    /// The question or action, in the structure's terms.
    pub ask: String,
    /// What it answered for this message.
    pub answer: String,
    /// False for a branch the message did not take.
    pub taken: bool,
}

/// The path of the latest chat message through the seed's flow:
/// blocked? -> online? -> push to each device, or queue.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Flow {
    pub id: u64,
    pub from: UserId,
    /// `bob` or `#g1`.
    pub to: String,
    pub steps: Vec<Step>,
    /// The ack the sender got.
    pub status: AckStatus,
}

/// Everything the board shows at one instant.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BoardFrame {
    /// What the server adds: sequence, join URL, events, flow, costs.
    #[serde(flatten)]
    pub context: FrameContext,
    pub totals: Totals,
    pub active_connections: Shown<Devices>,
    pub presence: Shown<UserId>,
    pub offline_messages: Shown<Deque>,
    pub group_members: Shown<Members>,
    pub blocked_users: Shown<Blocks>,
    /// Every operation counter with its cost class.
    pub ops: OpTable,
}

/// What the server knows besides the structures when it builds a frame.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct FrameContext {
    /// Increases with every frame, so the page can tell a new one from a repeat.
    pub seq: u64,
    /// The address students open (also encoded in the QR code).
    pub join_url: String,
    pub uptime_ms: u64,
    /// The latest event-log lines, oldest first.
    pub events: Vec<String>,
    pub flow: Option<Flow>,
    /// Chat events since the previous frame: how much this frame coalesces.
    pub events_since: u64,
    /// Microseconds the core was locked to copy it (chat waits this long).
    pub hold_us: u64,
    /// Microseconds the previous frame took to build and encode: the feed's
    /// server cost, paid once per frame however many boards watch.
    pub build_us: u64,
    /// The latest batched-presence tick, which the presence region shows.
    pub presence_diff: Option<DiffShown>,
}

/// One tick's presence diff as the board shows it: who arrived and left
/// (the first few of each), and how many connections the one frame went to.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DiffShown {
    /// Tells one tick from the next (the event's number in the feed).
    pub id: u64,
    #[serde(flatten)]
    pub diff: DiffSummary,
}

impl DiffShown {
    /// The diff of a `PresenceDiff` event, or None for any other event.
    pub fn of(event: &Event, id: u64) -> Option<DiffShown> {
        let Event::PresenceDiff(diff) = event else {
            return None;
        };
        Some(DiffShown {
            id,
            diff: diff.clone(),
        })
    }
}

impl BoardFrame {
    /// Draws `s` (taken with `QueueView::Ends(QUEUE_ENDS)` or whole) as the board shows it.
    pub fn build(s: &StructuresSnapshot, ops: OpTable, cx: FrameContext) -> BoardFrame {
        let remote = |id: u64| {
            s.connection_details
                .binary_search_by_key(&id, |d| d.id)
                .ok()
                .and_then(|i| s.connection_details[i].remote.clone())
        };
        let totals = Totals {
            users_connected: s.active_connections.len(),
            devices: s.active_connections.values().map(Vec::len).sum(),
            online: s.presence.len(),
            queued: s.offline_messages.values().map(|q| q.len).sum(),
            deques: s.offline_messages.len(),
            groups: s.groups.len(),
            blockers: s.blocked.len(),
        };
        BoardFrame {
            context: cx,
            totals,
            active_connections: Shown::cut(s.active_connections.iter().map(|(user, ids)| {
                Devices {
                    user: user.clone(),
                    devices: ids
                        .iter()
                        .map(|&id| Device {
                            id,
                            remote: remote(id),
                        })
                        .collect(),
                }
            })),
            presence: Shown::cut(s.presence.iter().cloned()),
            offline_messages: Shown::cut(s.offline_messages.iter().map(|(user, q)| deque(user, q))),
            group_members: Shown::cut(s.groups.iter().map(|(group, members)| Members {
                group: group.clone(),
                members: members.clone(),
            })),
            blocked_users: Shown::cut(s.blocked.iter().map(|(by, whom)| Blocks {
                by: by.clone(),
                whom: whom.clone(),
            })),
            ops,
        }
    }
}

/// A deque's boxes: all of a short one; the two ends of a long one, wherever
/// the snapshot's own cut was.
fn deque(user: &UserId, q: &crate::core::snapshot::QueueSnapshot) -> Deque {
    let boxes: Vec<QueuedBox> = q.messages.iter().map(QueuedBox::from).collect();
    if boxes.len() <= 2 * QUEUE_ENDS {
        return Deque {
            user: user.clone(),
            len: q.len,
            boxes,
            skipped: q.skipped,
        };
    }
    let back = boxes.len() - QUEUE_ENDS;
    let kept: Vec<QueuedBox> = boxes[..QUEUE_ENDS]
        .iter()
        .chain(&boxes[back..])
        .cloned()
        .collect();
    Deque {
        user: user.clone(),
        len: q.len,
        skipped: q.len - kept.len(),
        boxes: kept,
    }
}

/// The size the trace recorded for `structure.op` on `key`, if it did.
fn traced_size(trace: &Trace, structure: Structure, op: Op, key: &UserId) -> Option<usize> {
    trace
        .records()
        .iter()
        .find(|r| r.structure == structure && r.op == op && r.key.as_ref() == Some(key))
        .and_then(|r| r.size)
}

impl Flow {
    /// The path of a chat message, or None for any other event.
    pub fn of(event: &Event, trace: &Trace) -> Option<Flow> {
        match event {
            Event::Message {
                from,
                to,
                id,
                status,
                blocked,
                ..
            } => Some(direct(from, to, *id, (*status, *blocked), trace)),
            Event::GroupMessage {
                from,
                group,
                id,
                status,
                connections,
                queued,
                blocked,
            } => Some(Flow {
                id: *id,
                from: from.clone(),
                to: format!("#{group}"),
                steps: vec![
                    Step {
                        structure: "group_members",
                        ask: format!("is {from} in #{group}?"),
                        answer: "yes: send to every other member".into(),
                        taken: true,
                    },
                    Step {
                        structure: "blocked_users",
                        ask: format!("for each member: does it block {from}?"),
                        answer: match blocked {
                            0 => "nobody does".into(),
                            n => format!("{n} do: skipped, and {from} is not told"),
                        },
                        taken: true,
                    },
                    Step {
                        structure: "active_connections",
                        ask: "online members: push to each device".into(),
                        answer: format!("{connections} connection(s)"),
                        taken: *connections > 0,
                    },
                    Step {
                        structure: "offline_messages",
                        ask: "offline members: push_back on their deque".into(),
                        answer: format!("{queued} queued"),
                        taken: *queued > 0,
                    },
                ],
                status: *status,
            }),
            _ => None,
        }
    }
}

/// The seed's flow for one direct message. v1.1: the devices are looked up
/// (and the ack decided) whether or not the recipient blocks the sender; a
/// block only stops the push or the push_back.
fn direct(
    from: &UserId,
    to: &UserId,
    id: u64,
    (status, blocked): (AckStatus, bool),
    trace: &Trace,
) -> Flow {
    let devices = traced_size(trace, Structure::ActiveConnections, Op::Get, to).unwrap_or(0);
    let online = status == AckStatus::Delivered;
    let queue_len = traced_size(trace, Structure::OfflineMessages, Op::PushBack, to);
    let steps = vec![
        Step {
            structure: "blocked_users",
            ask: format!("does {to} block {from}?"),
            answer: if blocked {
                format!("yes: dropped, yet {from} is told `{status}` as if not")
            } else {
                "no".into()
            },
            taken: true,
        },
        Step {
            structure: "active_connections",
            ask: format!("is {to} online? (get their devices)"),
            answer: if online {
                format!("yes, {devices} device(s)")
            } else {
                "no devices".into()
            },
            taken: true,
        },
        Step {
            structure: "active_connections",
            ask: "push to each device".into(),
            answer: format!("{devices} frame(s) sent"),
            taken: online && !blocked,
        },
        // A resuming recipient (v1.1) gets it live AND held in the deque
        // until their client confirms it: the deque as a sliding window.
        Step {
            structure: "offline_messages",
            ask: format!("push_back on {to}'s deque"),
            answer: match (online, queue_len) {
                (true, Some(len)) => {
                    format!("held until {to}'s client confirms it (resume), window {len}")
                }
                (false, Some(len)) => format!("queued, deque length {len}"),
                _ => "queued".into(),
            },
            taken: (status == AckStatus::Queued || queue_len.is_some()) && !blocked,
        },
    ];
    Flow {
        id,
        from: from.clone(),
        to: to.to_string(),
        steps,
        status,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::snapshot::{ConnDetail, QueueSnapshot};
    use crate::core::QueueView;
    use crate::names::Name;
    use std::sync::Arc;

    fn n(s: &str) -> Name {
        Name::parse(s).unwrap()
    }

    fn message(id: u64) -> Message {
        Message {
            id,
            from: n("alice"),
            target: Target::User(n("bob")),
            text: Arc::from("hi"),
            ts: 0,
            receipt: false,
        }
    }

    fn traced(records: &[(Structure, Op, &str, usize)]) -> Trace {
        let mut t = Trace::new(true);
        for (s, op, key, size) in records {
            t.record(*s, *op, Some(&n(key)), None, Some(*size));
        }
        t
    }

    #[test]
    fn a_direct_message_to_an_online_user_lights_the_push_branch() {
        let event = Event::Message {
            from: n("alice"),
            to: n("bob"),
            id: 7,
            status: AckStatus::Delivered,
            blocked: false,
            held: false,
        };
        let trace = traced(&[(Structure::ActiveConnections, Op::Get, "bob", 2)]);
        let flow = Flow::of(&event, &trace).unwrap();
        let taken: Vec<bool> = flow.steps.iter().map(|s| s.taken).collect();
        assert_eq!(taken, [true, true, true, false]);
        assert_eq!(flow.steps[1].answer, "yes, 2 device(s)");
        assert_eq!(flow.steps[2].answer, "2 frame(s) sent");
        assert_eq!(flow.to, "bob");
    }

    #[test]
    fn a_message_to_a_resuming_user_lights_both_branches() {
        let event = Event::Message {
            from: n("alice"),
            to: n("bob"),
            id: 7,
            status: AckStatus::Delivered,
            blocked: false,
            held: false,
        };
        let trace = traced(&[
            (Structure::ActiveConnections, Op::Get, "bob", 1),
            (Structure::OfflineMessages, Op::PushBack, "bob", 4),
        ]);
        let flow = Flow::of(&event, &trace).unwrap();
        let taken: Vec<bool> = flow.steps.iter().map(|s| s.taken).collect();
        assert_eq!(taken, [true, true, true, true], "sent live and held");
        assert_eq!(
            flow.steps[3].answer,
            "held until bob's client confirms it (resume), window 4"
        );
    }

    #[test]
    fn a_queued_message_lights_the_deque_and_a_blocked_one_stops_at_the_first_step() {
        let queued = Event::Message {
            from: n("alice"),
            to: n("bob"),
            id: 8,
            status: AckStatus::Queued,
            blocked: false,
            held: false,
        };
        let trace = traced(&[
            (Structure::ActiveConnections, Op::Get, "bob", 0),
            (Structure::OfflineMessages, Op::PushBack, "bob", 3),
        ]);
        let flow = Flow::of(&queued, &trace).unwrap();
        let taken: Vec<bool> = flow.steps.iter().map(|s| s.taken).collect();
        assert_eq!(taken, [true, true, false, true]);
        assert_eq!(flow.steps[3].answer, "queued, deque length 3");

        // Blocked: the devices are still looked up and the ack is the same,
        // but neither branch is taken.
        let blocked = Event::Message {
            from: n("alice"),
            to: n("bob"),
            id: 9,
            status: AckStatus::Delivered,
            blocked: true,
            held: false,
        };
        let trace = traced(&[(Structure::ActiveConnections, Op::Get, "bob", 1)]);
        let flow = Flow::of(&blocked, &trace).unwrap();
        let taken: Vec<bool> = flow.steps.iter().map(|s| s.taken).collect();
        assert_eq!(taken, [true, true, false, false]);
        assert_eq!(
            flow.steps[0].answer,
            "yes: dropped, yet alice is told `delivered` as if not"
        );
        assert_eq!(flow.status, AckStatus::Delivered);
    }

    #[test]
    fn a_group_message_takes_the_branches_its_counts_say() {
        let event = Event::GroupMessage {
            from: n("alice"),
            group: n("g1"),
            id: 3,
            status: AckStatus::Delivered,
            connections: 2,
            queued: 0,
            blocked: 1,
        };
        let flow = Flow::of(&event, &Trace::new(false)).unwrap();
        assert_eq!(flow.steps[1].answer, "1 do: skipped, and alice is not told");
        assert_eq!(flow.to, "#g1");
        let taken: Vec<bool> = flow.steps.iter().map(|s| s.taken).collect();
        assert_eq!(taken, [true, true, true, false]);
        let other = Event::Ping { user: n("alice") };
        assert_eq!(Flow::of(&other, &Trace::new(true)), None);
    }

    #[test]
    fn a_frame_is_bounded_however_big_the_class() {
        let mut s = StructuresSnapshot::default();
        for i in 0..300u64 {
            let user = n(&format!("u{i:03}"));
            s.active_connections.insert(user.clone(), vec![i]);
            s.connection_details.push(ConnDetail {
                id: i,
                remote: Some(format!("10.0.0.{}:1", i % 250)),
                ..ConnDetail::default()
            });
            s.presence.push(user);
        }
        let long: std::collections::VecDeque<Message> = (1..=50).map(message).collect();
        s.offline_messages
            .insert(n("bob"), QueueView::Ends(QUEUE_ENDS).copy(&long));
        s.offline_messages.insert(
            n("carol"),
            QueueSnapshot {
                len: 3,
                messages: (1..=3).map(message).collect(),
                skipped: 0,
            },
        );
        let frame = BoardFrame::build(&s, OpTable::default(), FrameContext::default());
        assert_eq!(frame.active_connections.items.len(), SHOWN);
        assert_eq!(frame.active_connections.more, 300 - SHOWN);
        assert_eq!(frame.presence.more, 300 - SHOWN);
        assert_eq!(frame.totals.devices, 300);
        assert_eq!(frame.totals.queued, 53);
        assert_eq!(
            frame.active_connections.items[5].devices[0]
                .remote
                .as_deref(),
            Some("10.0.0.5:1")
        );
        let bob = &frame.offline_messages.items[0];
        let ids: Vec<u64> = bob.boxes.iter().map(|b| b.id).collect();
        assert_eq!(ids, [1, 2, 3, 4, 47, 48, 49, 50]);
        assert_eq!((bob.len, bob.skipped), (50, 42));
        let carol = &frame.offline_messages.items[1];
        assert_eq!((carol.boxes.len(), carol.skipped), (3, 0));
    }

    #[test]
    fn a_whole_deque_is_cut_to_its_ends_too() {
        let whole: std::collections::VecDeque<Message> = (1..=20).map(message).collect();
        let d = deque(&n("bob"), &QueueView::All.copy(&whole));
        let ids: Vec<u64> = d.boxes.iter().map(|b| b.id).collect();
        assert_eq!(ids, [1, 2, 3, 4, 17, 18, 19, 20]);
        assert_eq!(d.skipped, 12);
    }
}
