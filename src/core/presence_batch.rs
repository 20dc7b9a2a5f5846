//! Batched presence (v1.2, `?presence=batched`): instead of one frame per
//! change to every online connection, each tick sends the changes since the
//! last one, coalesced, as one `presence_diff` frame, built and serialised
//! once and shared by every batched connection. A storm of n arrivals then
//! costs each connection one frame per tick, not n frames: O(n) frames per
//! tick in all instead of O(n²) for the storm.
//!
//! A batched client applies a diff as set operations (add who is `online`,
//! remove who is `offline`), so a repeat is harmless. A change that undoes
//! an earlier one in the same tick is dropped (nobody hears of alice if she
//! came and went within one tick), but only while no batched connection still
//! open was greeted between the two: that one saw the first change in its
//! welcome, so it must hear the second.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::core::ConnId;
use crate::names::UserId;
use crate::protocol::PresenceStatus;

/// One user's change since the last tick.
#[derive(Debug, Clone, Copy)]
struct Pending {
    status: PresenceStatus,
    /// Their status at the last tick: what every connection greeted before
    /// their first change this tick still believes.
    before: PresenceStatus,
    /// The greeting count when the user first changed in this tick.
    since: u64,
}

/// The changes of the current tick, and who was greeted during it.
#[derive(Debug, Default)]
pub struct PresenceBatch {
    /// user -> their latest status, for the users who changed this tick.
    /// Ordered, so the diff's lists come out sorted: O(log k) per change.
    pending: BTreeMap<UserId, Pending>,
    /// Batched connections greeted this tick and still open, by the
    /// greeting count at their welcome.
    greeted: BTreeSet<u64>,
    greeting_of: HashMap<ConnId, u64>,
    greetings: u64,
    /// Open connections that take v1's frame per change: while there are
    /// none, a change costs no look-up of anyone's devices.
    v1_open: usize,
    /// Open batched connections: while there are none, there is nobody to
    /// keep changes for (a newcomer's welcome lists the truth).
    batched_open: usize,
}

/// What one tick sends: who came online and who went offline since the last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diff {
    pub online: Vec<UserId>,
    pub offline: Vec<UserId>,
}

impl Diff {
    pub fn changes(&self) -> usize {
        self.online.len() + self.offline.len()
    }
}

impl PresenceBatch {
    /// `user` changed to `status`. `may_cancel` is false for a change that
    /// came from another node of a cluster: its welcome order is Redis's,
    /// not this node's, so it only ever overwrites. O(log k + log g).
    pub fn changed(&mut self, user: &UserId, status: PresenceStatus, may_cancel: bool) {
        if self.batched_open == 0 {
            return;
        }
        match self.pending.get_mut(user) {
            None => {
                let before = match status {
                    PresenceStatus::Online => PresenceStatus::Offline,
                    PresenceStatus::Offline => PresenceStatus::Online,
                };
                self.pending.insert(
                    user.clone(),
                    Pending {
                        status,
                        before,
                        since: self.greetings,
                    },
                );
            }
            // Back where the tick began, and no batched connection greeted
            // since the first change is still open (one would have seen the
            // middle in its welcome): nobody needs to hear of it.
            Some(p)
                if may_cancel
                    && status == p.before
                    && self.greeted.range(p.since + 1..).next().is_none() =>
            {
                self.pending.remove(user);
            }
            // Otherwise every batched connection is told the last status:
            // right for all of them, whatever each saw before.
            Some(p) => p.status = status,
        }
    }

    /// A connection was greeted (its welcome listed who is online now).
    pub fn greeted(&mut self, conn: ConnId, batched: bool) {
        if !batched {
            self.v1_open += 1;
            return;
        }
        self.batched_open += 1;
        self.greetings += 1;
        self.greeted.insert(self.greetings);
        self.greeting_of.insert(conn, self.greetings);
    }

    /// A connection closed: its welcome no longer matters.
    pub fn gone(&mut self, conn: ConnId, batched: bool) {
        if !batched {
            self.v1_open = self.v1_open.saturating_sub(1);
            return;
        }
        self.batched_open = self.batched_open.saturating_sub(1);
        if let Some(at) = self.greeting_of.remove(&conn) {
            self.greeted.remove(&at);
        }
        // The last batched connection left: what was kept was for nobody,
        // and the next one's welcome will list the truth.
        if self.batched_open == 0 {
            self.pending.clear();
            self.greeted.clear();
            self.greeting_of.clear();
        }
    }

    /// Whether any open connection takes a frame per change (v1).
    pub fn has_v1(&self) -> bool {
        self.v1_open > 0
    }

    /// The tick: the diff of everything since the last one (None if
    /// nothing changed), and a fresh start: every batched connection now
    /// knows the same state. O(k) for k changes.
    pub fn tick(&mut self) -> Option<Diff> {
        self.greeted.clear();
        self.greeting_of.clear();
        if self.pending.is_empty() {
            return None;
        }
        let mut diff = Diff {
            online: Vec::new(),
            offline: Vec::new(),
        };
        for (user, p) in std::mem::take(&mut self.pending) {
            match p.status {
                PresenceStatus::Online => diff.online.push(user),
                PresenceStatus::Offline => diff.offline.push(user),
            }
        }
        Some(diff)
    }

    /// Whether a tick would change anything: a diff to send, or a welcome
    /// to forget.
    pub fn due(&self) -> bool {
        !self.pending.is_empty() || !self.greeted.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::Name;
    use PresenceStatus::*;

    fn n(s: &str) -> UserId {
        Name::parse(s).unwrap()
    }

    #[test]
    fn an_arrival_and_departure_within_a_tick_cancel_and_repeats_collapse() {
        let mut b = PresenceBatch::default();
        b.greeted(1, true);
        b.tick();
        b.changed(&n("alice"), Online, true);
        b.changed(&n("alice"), Offline, true);
        b.changed(&n("bob"), Online, true);
        assert_eq!(
            b.tick(),
            Some(Diff {
                online: vec![n("bob")],
                offline: vec![]
            })
        );
        assert_eq!(b.tick(), None, "an idle tick sends nothing");
    }

    #[test]
    fn a_connection_greeted_between_two_changes_hears_the_second() {
        let mut b = PresenceBatch::default();
        b.greeted(1, true);
        b.tick();
        b.changed(&n("alice"), Online, true);
        b.greeted(7, true); // saw alice online in its welcome
        b.changed(&n("alice"), Offline, true);
        b.changed(&n("alice"), Online, true);
        b.changed(&n("alice"), Offline, true);
        let diff = b.tick().unwrap();
        assert_eq!(diff.offline, vec![n("alice")]);
        // Once it closed, nobody saw the middle: the pair cancels again.
        b.changed(&n("carol"), Online, true);
        b.greeted(8, true);
        b.gone(8, true);
        b.changed(&n("carol"), Offline, true);
        assert_eq!(b.tick(), None);
    }

    #[test]
    fn a_change_from_another_node_never_cancels() {
        let mut b = PresenceBatch::default();
        b.greeted(1, true);
        b.tick();
        b.changed(&n("dan"), Online, false);
        b.changed(&n("dan"), Offline, false);
        assert_eq!(b.tick().unwrap().offline, vec![n("dan")]);
    }

    #[test]
    fn with_no_batched_connection_nothing_is_kept() {
        let mut b = PresenceBatch::default();
        b.changed(&n("erin"), Online, true);
        assert!(!b.due());
        b.greeted(1, false);
        assert!(b.has_v1() && !b.due());
    }
}
