//! What blocks kept out of the offline deques, counted so that a blocked
//! sender meets the limits an unblocked one would (v1.1: a block changes what
//! happens, never what the sender is told, even at `--max-offline` and
//! `--max-memory`). No message is stored: per (recipient, sender) only how
//! many copies, and how many bytes, would be in the recipient's deque now.
//! Bounded by the blocks themselves: an entry exists only for a sender the
//! recipient blocks.

use std::collections::HashMap;

use crate::core::QueuedBytes;
use crate::names::UserId;

#[derive(Debug, Default)]
pub struct Withheld {
    /// recipient → sender → (copies, bytes) that would be in their deque.
    by_recipient: HashMap<UserId, HashMap<UserId, (usize, usize)>>,
    /// sender → bytes of all their withheld copies: their share of the budget.
    by_sender: HashMap<UserId, usize>,
}

impl Withheld {
    /// Copies of `sender`'s messages a block kept out of `recipient`'s deque
    /// (they stay counted after an unblock, until the deque is emptied, as
    /// the copies themselves would). O(1), no hashing while nothing is withheld.
    pub fn copies(&self, recipient: &UserId, sender: &UserId) -> usize {
        if self.by_recipient.is_empty() {
            return 0;
        }
        self.by_recipient
            .get(recipient)
            .and_then(|s| s.get(sender))
            .map_or(0, |c| c.0)
    }

    /// The budget's counters as `sender` would meet them if nobody blocked
    /// them: their withheld bytes are added to theirs and to the total. O(1),
    /// and no hashing at all while nothing is withheld (the usual case).
    pub fn as_seen_by(&self, sender: &UserId, mut queued: QueuedBytes) -> QueuedBytes {
        if self.by_sender.is_empty() {
            return queued;
        }
        let extra = self.by_sender.get(sender).copied().unwrap_or(0);
        queued.all += extra;
        queued.sender += extra;
        queued
    }

    /// A copy of `cost` bytes that a block kept out of `recipient`'s deque.
    pub fn add(&mut self, recipient: &UserId, sender: &UserId, cost: usize) {
        let entry = self
            .by_recipient
            .entry(recipient.clone())
            .or_default()
            .entry(sender.clone())
            .or_default();
        entry.0 += 1;
        entry.1 += cost;
        *self.by_sender.entry(sender.clone()).or_default() += cost;
    }

    /// Is anything withheld from `recipient`? (Only then is it worth asking
    /// whether their deque was emptied.)
    pub fn any_for(&self, recipient: &UserId) -> bool {
        self.by_recipient.contains_key(recipient)
    }

    /// `recipient`'s deque was emptied (flushed, or every message confirmed):
    /// the copies it would have held are gone with it.
    pub fn emptied(&mut self, recipient: &UserId) {
        let Some(senders) = self.by_recipient.remove(recipient) else {
            return;
        };
        for (sender, (_, bytes)) in senders {
            if let Some(total) = self.by_sender.get_mut(&sender) {
                *total = total.saturating_sub(bytes);
                if *total == 0 {
                    self.by_sender.remove(&sender);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::Name;

    #[test]
    fn copies_and_bytes_go_when_the_deque_is_emptied() {
        let (bob, eve, ann) = (
            Name::parse("bob").unwrap(),
            Name::parse("eve").unwrap(),
            Name::parse("ann").unwrap(),
        );
        let mut w = Withheld::default();
        let none = QueuedBytes { all: 10, sender: 0 };
        assert_eq!(w.as_seen_by(&eve, none), none);
        w.add(&bob, &eve, 100);
        w.add(&bob, &eve, 100);
        w.add(&ann, &eve, 50);
        assert_eq!(w.copies(&bob, &eve), 2);
        assert_eq!(
            w.as_seen_by(&eve, none),
            QueuedBytes {
                all: 260,
                sender: 250
            }
        );
        assert_eq!(
            w.as_seen_by(&bob, none),
            none,
            "only the blocked sender's view"
        );
        w.emptied(&bob);
        assert_eq!(w.copies(&bob, &eve), 0);
        assert_eq!(
            w.as_seen_by(&eve, none),
            QueuedBytes {
                all: 60,
                sender: 50
            }
        );
        w.emptied(&ann);
        assert!(w.by_sender.is_empty() && w.by_recipient.is_empty());
    }
}
