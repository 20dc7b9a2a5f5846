//! One round trip for a batch of rules: before the owner applies the inputs
//! it took together, the facts their direct messages will read (each
//! sender's budget, each block, each recipient's devices) come from Redis in
//! one pipeline, and so do the ids they will take. A rule then finds its
//! facts here instead of waiting for a round trip of its own.
//!
//! Why it is correct: every fact is read after the rule's request arrived
//! and before its answer is sent, as a read in its own round trip would be.
//! What this node's own earlier rules in the batch change (a device added or
//! removed, a block, anything kept or released) is forgotten here as they
//! change it, so a later rule of the batch reads Redis afresh. One change is
//! kept instead: a copy put in a queue (the `keep` or `push` script) answers
//! the queue's new length and the budget counters as the script wrote them,
//! so those facts are fresher than the batch's read, not staler, and the
//! next message to an offline user needs no round trip but its own script.
//!
//! Why it is fast: a round trip costs two system calls and two wake-ups on
//! each side, tens of microseconds; a command in a pipeline costs Redis well
//! under one. A batch of 100 rules pays one round trip, not 100.

use std::cell::Cell;
use std::collections::HashMap;

use crate::names::UserId;

/// A sender's two budget counters as HMGET read them (theirs, the total).
pub(super) type Budget = (Option<i64>, Option<i64>);
/// A recipient's devices as HGETALL read them (`node/conn` -> record).
pub(super) type Fields = Vec<(String, String)>;

/// What the last batch's pipeline read, until a rule of this node changes it.
#[derive(Default)]
pub(super) struct Prefetched {
    budgets: HashMap<UserId, Budget>,
    /// Keyed (recipient, sender): does the recipient block the sender?
    blocks: HashMap<(UserId, UserId), bool>,
    devices: HashMap<UserId, Fields>,
    /// Each recipient's queue length (LLEN), for `--max-offline`.
    lens: HashMap<UserId, usize>,
    /// How many rules the pipeline was read for, for the trace.
    pub rules: usize,
}

impl Prefetched {
    /// Everything a direct message from `from` to `to` reads, if all of it
    /// is still here. O(1): three hash look-ups.
    pub fn facts(&self, from: &UserId, to: &UserId) -> Option<(Budget, bool, &Fields)> {
        let budget = *self.budgets.get(from)?;
        let blocked = *self.blocks.get(&(to.clone(), from.clone()))?;
        Some((budget, blocked, self.devices.get(to)?))
    }

    /// `user`'s queue length, if it is still here. O(1).
    pub fn len(&self, user: &UserId) -> Option<usize> {
        self.lens.get(user).copied()
    }

    pub fn fill(&mut self, rules: usize) -> Filling<'_> {
        self.forget_all();
        self.rules = rules;
        Filling(self)
    }

    /// `user`'s devices changed on this node (connect, close).
    pub fn forget_devices(&mut self, user: &UserId) {
        self.devices.remove(user);
    }

    /// `by` blocked or unblocked `whom`.
    pub fn forget_block(&mut self, by: &UserId, whom: &UserId) {
        self.blocks.remove(&(by.clone(), whom.clone()));
    }

    /// Something was kept, released or taken: every budget's total changed,
    /// and so did some queue's length.
    pub fn forget_queues(&mut self) {
        self.budgets.clear();
        self.lens.clear();
    }

    /// A script put one message in `user`'s queue and answered what it then
    /// read: the queue's length, the sender's counter and the total. Those
    /// replace what the batch read (every budget's total moved): O(s) for
    /// the batch's s senders, at most 256. A length of 0 means the id was
    /// there already and nothing was written: the batch's facts are then
    /// forgotten, as for any change this node cannot account for.
    pub fn pushed(&mut self, user: &UserId, len: usize, sender: &UserId, mine: i64, total: i64) {
        if len == 0 {
            self.forget_queues();
            return;
        }
        self.lens.insert(user.clone(), len);
        for (who, (theirs, all)) in self.budgets.iter_mut() {
            *all = Some(total);
            if who == sender {
                *theirs = Some(mine);
            }
        }
    }

    /// A sweep or a resync: any user's devices may have changed.
    pub fn forget_all(&mut self) {
        self.budgets.clear();
        self.blocks.clear();
        self.devices.clear();
        self.lens.clear();
    }
}

/// The facts being put in as the pipeline's replies are read.
pub(super) struct Filling<'a>(&'a mut Prefetched);

impl Filling<'_> {
    pub fn budget(&mut self, sender: UserId, budget: Budget) {
        self.0.budgets.insert(sender, budget);
    }
    pub fn block(&mut self, to: UserId, from: UserId, blocked: bool) {
        self.0.blocks.insert((to, from), blocked);
    }
    pub fn devices(&mut self, user: UserId, fields: Fields) {
        self.0.devices.insert(user, fields);
    }
    pub fn len(&mut self, user: UserId, len: usize) {
        self.0.lens.insert(user, len);
    }
}

/// The ids this node reserved from the cluster's counter and has not used:
/// `[next, end)`. One `INCRBY next_id k` per batch reserves k at once, so the
/// shared counter is written once per round trip, not once per message. A
/// `Cell`, because a rule takes an id in a read step (`&self`).
#[derive(Default)]
pub(super) struct Reserved {
    next: Cell<u64>,
    end: Cell<u64>,
}

impl Reserved {
    pub fn left(&self) -> u64 {
        self.end.get() - self.next.get()
    }

    /// The next reserved id, if one is left.
    pub fn take(&self) -> Option<u64> {
        let id = self.next.get();
        (id < self.end.get()).then(|| {
            self.next.set(id + 1);
            id
        })
    }

    /// `INCRBY next_id k` answered `top`: `top - k + 1 ..= top` are ours.
    pub fn reserved(&self, k: u64, top: u64) {
        self.next.set(top + 1 - k);
        self.end.set(top + 1);
    }

    /// After Redis came back: ids reserved before may not be above what it
    /// now counts from, so none is used (they are skipped, never repeated).
    pub fn drop_all(&self) {
        self.next.set(0);
        self.end.set(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::Name;

    fn u(s: &str) -> UserId {
        Name::parse(s).unwrap()
    }

    #[test]
    fn a_fact_is_found_only_while_nothing_changed_it() {
        let mut p = Prefetched::default();
        let mut f = p.fill(2);
        f.budget(u("alice"), (Some(10), Some(99)));
        f.block(u("bob"), u("alice"), false);
        f.devices(u("bob"), vec![("n1/7".into(), "0{}".into())]);
        let (budget, blocked, fields) = p.facts(&u("alice"), &u("bob")).unwrap();
        assert_eq!(
            (budget, blocked, fields.len()),
            ((Some(10), Some(99)), false, 1)
        );
        assert!(p.facts(&u("bob"), &u("alice")).is_none(), "never read");
        p.forget_block(&u("bob"), &u("alice"));
        assert!(p.facts(&u("alice"), &u("bob")).is_none());
        let mut f = p.fill(1);
        f.budget(u("alice"), (None, None));
        f.block(u("bob"), u("alice"), true);
        f.devices(u("bob"), Vec::new());
        f.len(u("bob"), 4);
        p.forget_queues();
        assert!(p.facts(&u("alice"), &u("bob")).is_none());
        assert_eq!(p.len(&u("bob")), None);
    }

    #[test]
    fn a_push_leaves_the_facts_it_read_in_place_of_the_batch_s() {
        let mut p = Prefetched::default();
        let mut f = p.fill(2);
        f.budget(u("alice"), (Some(10), Some(99)));
        f.budget(u("carol"), (None, Some(99)));
        f.block(u("bob"), u("alice"), false);
        f.block(u("bob"), u("carol"), false);
        f.devices(u("bob"), Vec::new());
        f.len(u("bob"), 4);
        p.pushed(&u("bob"), 5, &u("alice"), 40, 129);
        assert_eq!(p.len(&u("bob")), Some(5));
        assert_eq!(
            p.facts(&u("alice"), &u("bob")).unwrap().0,
            (Some(40), Some(129))
        );
        assert_eq!(
            p.facts(&u("carol"), &u("bob")).unwrap().0,
            (None, Some(129)),
            "only the total moved"
        );
        p.pushed(&u("bob"), 0, &u("alice"), 0, 0);
        assert_eq!(
            p.len(&u("bob")),
            None,
            "a copy already there: nothing to account for"
        );
        assert!(p.facts(&u("alice"), &u("bob")).is_none());
    }

    #[test]
    fn reserved_ids_are_taken_once_each_and_dropped_after_an_outage() {
        let r = Reserved::default();
        assert_eq!(r.take(), None);
        r.reserved(3, 12);
        assert_eq!((r.take(), r.take(), r.left()), (Some(10), Some(11), 1));
        assert_eq!(r.take(), Some(12));
        assert_eq!(r.take(), None);
        r.reserved(2, 20);
        r.drop_all();
        assert_eq!(r.take(), None);
    }
}
