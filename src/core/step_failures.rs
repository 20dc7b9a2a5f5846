//! The backend contract under failure: a step that cannot be carried out
//! stops the rule, and the rule never acts on a value made up for it.
//!
//! `Failing` wraps the in-memory structures and makes the n-th step fail,
//! as a cluster's Redis does when it stops answering. Every rule is run once
//! per step it takes, failing at that step: each run must answer an error,
//! never an outcome (the old contract answered "not blocked", "no devices"
//! or id 0, and the rule delivered on them).

use std::borrow::Cow;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{json, Value};

use super::*;
use crate::names::Name;
use crate::protocol::{parse_request, Envelope, Message};

/// Memory structures whose step number `fail_at` (counted from 0) fails.
struct Failing {
    inner: MemoryStructures<Device>,
    /// Steps taken since the count was last reset.
    taken: AtomicUsize,
    fail_at: Option<usize>,
}

impl Failing {
    fn step<T>(&self, answer: Step<T>) -> Step<T> {
        let n = self.taken.fetch_add(1, Ordering::Relaxed);
        match self.fail_at {
            Some(at) if at == n => Err(Unavailable(format!("step {n} failed"))),
            _ => answer,
        }
    }
}

/// Each method is the memory one, counted as one step.
macro_rules! step {
    ($self:ident . $method:ident ( $($arg:expr),* )) => {{
        let answer = $self.inner.$method($($arg),*);
        $self.step(answer)
    }};
}

impl Structures for Failing {
    type Conn = Device;

    fn connections(&self, user: &UserId, t: &mut Trace) -> Step<Cow<'_, [Device]>> {
        step!(self.connections(user, t))
    }
    fn add_connection(&mut self, user: &UserId, conn: Device, t: &mut Trace) -> Step<usize> {
        step!(self.add_connection(user, conn, t))
    }
    fn remove_connection(
        &mut self,
        user: &UserId,
        id: ConnId,
        t: &mut Trace,
    ) -> Step<Option<(usize, Device)>> {
        step!(self.remove_connection(user, id, t))
    }
    fn all_connections(&self, t: &mut Trace) -> Vec<Device> {
        self.inner.all_connections(t)
    }
    fn set_online(&mut self, user: &UserId, t: &mut Trace) -> Step<bool> {
        step!(self.set_online(user, t))
    }
    fn set_offline(&mut self, user: &UserId, t: &mut Trace) -> Step<bool> {
        step!(self.set_offline(user, t))
    }
    fn online_users(&mut self, t: &mut Trace) -> Step<Vec<UserId>> {
        step!(self.online_users(t))
    }
    fn queued_len(&self, user: &UserId, t: &mut Trace) -> Step<usize> {
        step!(self.queued_len(user, t))
    }
    fn queue_push_back(&mut self, user: &UserId, m: Message, t: &mut Trace) -> Step<usize> {
        step!(self.queue_push_back(user, m, t))
    }
    fn queue_pop_front(&mut self, user: &UserId, t: &mut Trace) -> Step<Option<Message>> {
        step!(self.queue_pop_front(user, t))
    }
    fn queue_held_after(&self, user: &UserId, after: u64, t: &mut Trace) -> Step<Vec<Message>> {
        step!(self.queue_held_after(user, after, t))
    }
    fn queue_release(&mut self, user: &UserId, upto: u64, t: &mut Trace) -> Step<Vec<Message>> {
        step!(self.queue_release(user, upto, t))
    }
    fn queue_put_back(&mut self, user: &UserId, m: Message, t: &mut Trace) -> Step<bool> {
        step!(self.queue_put_back(user, m, t))
    }
    fn join_group(&mut self, group: &GroupId, user: &UserId, t: &mut Trace) -> Step<usize> {
        step!(self.join_group(group, user, t))
    }
    fn leave_group(&mut self, group: &GroupId, user: &UserId, t: &mut Trace) -> Step<bool> {
        step!(self.leave_group(group, user, t))
    }
    fn is_member(&self, group: &GroupId, user: &UserId, t: &mut Trace) -> Step<bool> {
        step!(self.is_member(group, user, t))
    }
    fn group_members(&self, group: &GroupId, t: &mut Trace) -> Step<Vec<UserId>> {
        step!(self.group_members(group, t))
    }
    fn group_len(&self, group: &GroupId, t: &mut Trace) -> Step<usize> {
        step!(self.group_len(group, t))
    }
    fn group_count(&self, t: &mut Trace) -> Step<usize> {
        step!(self.group_count(t))
    }
    fn block(&mut self, by: &UserId, whom: &UserId, t: &mut Trace) -> Step<bool> {
        step!(self.block(by, whom, t))
    }
    fn unblock(&mut self, by: &UserId, whom: &UserId, t: &mut Trace) -> Step<bool> {
        step!(self.unblock(by, whom, t))
    }
    fn is_blocked(&self, by: &UserId, whom: &UserId, t: &mut Trace) -> Step<bool> {
        step!(self.is_blocked(by, whom, t))
    }
    fn blocked_len(&self, by: &UserId, t: &mut Trace) -> Step<usize> {
        step!(self.blocked_len(by, t))
    }
    fn queued_bytes(&self) -> Step<usize> {
        step!(self.queued_bytes())
    }
    fn queued_bytes_of(&self, sender: &UserId) -> Step<QueuedBytes> {
        step!(self.queued_bytes_of(sender))
    }
    fn groups_of(&self, user: &UserId) -> Step<usize> {
        step!(self.groups_of(user))
    }
    fn issue_id(&self, next: u64, t: &mut Trace) -> Step<u64> {
        step!(self.issue_id(next, t))
    }
    fn next_id(&self, next: u64) -> Step<u64> {
        step!(self.next_id(next))
    }
    fn take_changes(&mut self) -> Vec<Change> {
        self.inner.take_changes()
    }
    fn restore(&mut self, state: &DurableState) {
        self.inner.restore(state)
    }
    fn op_table(&self) -> OpTable {
        self.inner.op_table()
    }
    fn snapshot(&self, view: QueueView) -> Step<StructuresSnapshot> {
        self.inner.snapshot(view)
    }
}

type FailingCore = ChatCore<Failing>;

fn n(s: &str) -> Name {
    Name::parse(s).unwrap()
}

/// A device that did not resume (v1).
fn d(id: ConnId) -> Device {
    Device { id, resume: None }
}

fn request(json: Value) -> Envelope {
    parse_request(&json.to_string()).expect("test requests are valid")
}

/// The scene every rule below runs in: ann (1) and bob (2) online, cat
/// offline with one message queued (id 1), all three in group g.
fn scene() -> FailingCore {
    let mut core = ChatCore::new(
        Failing {
            inner: MemoryStructures::default(),
            taken: AtomicUsize::new(0),
            fail_at: None,
        },
        CoreConfig::default(),
    );
    for (user, conn) in [("ann", 1), ("bob", 2), ("cat", 3)] {
        core.connect(&n(user), d(conn)).unwrap();
        core.handle(
            &n(user),
            &d(conn),
            request(json!({"type": "group_join", "group": "g"})),
            0,
        )
        .unwrap();
    }
    core.disconnect(&n("cat"), 3, vec![]).unwrap();
    core.handle(
        &n("ann"),
        &d(1),
        request(json!({"type": "message", "to": "cat", "text": "hi"})),
        0,
    )
    .unwrap();
    core
}

/// One rule, as the shell would run it.
type Rule = fn(&mut FailingCore) -> Step<Outcome<Device>>;

fn rules() -> Vec<(&'static str, Rule)> {
    vec![
        ("a direct message to someone online", |c| {
            c.handle(
                &n("ann"),
                &d(1),
                request(json!({"type": "message", "to": "bob", "text": "x"})),
                0,
            )
        }),
        ("a direct message to someone offline", |c| {
            c.handle(
                &n("ann"),
                &d(1),
                request(json!({"type": "message", "to": "cat", "text": "x"})),
                0,
            )
        }),
        ("a group message", |c| {
            c.handle(
                &n("ann"),
                &d(1),
                request(json!({"type": "group_message", "group": "g", "text": "x"})),
                0,
            )
        }),
        ("a join", |c| {
            c.handle(
                &n("bob"),
                &d(2),
                request(json!({"type": "group_join", "group": "h"})),
                0,
            )
        }),
        ("a block", |c| {
            c.handle(
                &n("bob"),
                &d(2),
                request(json!({"type": "block", "user": "ann"})),
                0,
            )
        }),
        ("who", |c| {
            c.handle(&n("bob"), &d(2), request(json!({"type": "who"})), 0)
        }),
        ("a connect that flushes a queue", |c| {
            c.connect(&n("cat"), d(3))
        }),
        ("a resuming connect", |c| {
            let resuming = Device {
                id: 4,
                resume: Some(1),
            };
            c.connect(&n("cat"), resuming)
        }),
        ("a last device closing, with a message to put back", |c| {
            let unsent = Message {
                id: 1,
                from: n("ann"),
                target: crate::protocol::Target::User(n("bob")),
                text: std::sync::Arc::from("x"),
                ts: 0,
                receipt: false,
            };
            c.disconnect(&n("bob"), 2, vec![unsent])
        }),
    ]
}

/// How many steps `rule` takes in the scene when nothing fails.
fn steps_of(rule: Rule) -> (usize, Outcome<Device>) {
    let mut core = scene();
    core.structures_mut().taken.store(0, Ordering::Relaxed);
    let outcome = rule(&mut core).expect("nothing fails");
    (core.structures_mut().taken.load(Ordering::Relaxed), outcome)
}

#[test]
fn a_failed_step_stops_every_rule_with_an_error_never_an_outcome() {
    for (name, rule) in rules() {
        let (steps, _) = steps_of(rule);
        assert!(steps >= 1, "{name}: takes at least one step");
        for at in 0..steps {
            let mut core = scene();
            let s = core.structures_mut();
            s.taken.store(0, Ordering::Relaxed);
            s.fail_at = Some(at);
            match rule(&mut core) {
                Err(Unavailable(why)) => assert_eq!(why, format!("step {at} failed"), "{name}"),
                Ok(outcome) => panic!(
                    "{name}: step {at} of {steps} failed, yet the rule answered {:?}",
                    outcome.event
                ),
            }
        }
    }
}

#[test]
fn a_failure_after_the_last_step_changes_nothing() {
    for (name, rule) in rules() {
        let (steps, clean) = steps_of(rule);
        let mut core = scene();
        let s = core.structures_mut();
        s.taken.store(0, Ordering::Relaxed);
        s.fail_at = Some(steps);
        let outcome = rule(&mut core).unwrap_or_else(|why| panic!("{name}: {why}"));
        assert_eq!(outcome.event, clean.event, "{name}");
        assert_eq!(outcome.frames, clean.frames, "{name}");
    }
}
