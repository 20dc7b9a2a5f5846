//! The bytes of v1 flushes on their way to a socket. A v1 device takes its
//! queue at connect, and the shell writes it as fast as the socket reads, so
//! for a while those messages are in neither a deque nor the client. They
//! still count against `--max-memory`'s share for the deques until the
//! writer has taken the last of them, or the connection closes: otherwise a
//! client that connects and never reads would empty a full queue's budget,
//! and let it be filled again behind it, once per name.

use std::collections::HashMap;

use crate::core::ConnId;

#[derive(Debug, Default)]
pub struct Flushing {
    /// connection → bytes of its flush still charged. An entry only while a
    /// flush is on its way, so it is as small as the number of such flushes.
    by_conn: HashMap<ConnId, usize>,
    total: usize,
}

impl Flushing {
    /// Charges `bytes` of `conn`'s flush. O(1).
    pub fn charge(&mut self, conn: ConnId, bytes: usize) {
        if bytes > 0 {
            *self.by_conn.entry(conn).or_default() += bytes;
            self.total += bytes;
        }
    }

    /// `conn`'s flush has been handed to its socket, or it closed: its charge
    /// goes. Returns the bytes released. O(1), no hashing while nothing is charged.
    pub fn release(&mut self, conn: ConnId) -> usize {
        if self.by_conn.is_empty() {
            return 0;
        }
        let bytes = self.by_conn.remove(&conn).unwrap_or(0);
        self.total -= bytes;
        bytes
    }

    /// Bytes of every flush still on its way.
    pub fn total(&self) -> usize {
        self.total
    }
}
