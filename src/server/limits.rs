//! Limits: per-connection message rate (a token bucket), and how many
//! connections the server, one remote address and one user may hold.
//!
//! The bucket holds up to `rate` tokens (one second's worth, so short bursts
//! pass) and refills continuously at `rate` per second; each request takes
//! one. O(1) per request, no timers: the refill is computed from elapsed time.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::names::UserId;

/// Open connections in all, per remote address and per user, counted from the
/// moment an upgrade is accepted until its task ends. Two small maps of
/// counters under one lock: O(1) per connect and disconnect.
#[derive(Debug, Default)]
pub struct Slots {
    inner: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
    per_user: HashMap<UserId, usize>,
}

/// The three connection limits.
#[derive(Debug, Clone, Copy)]
pub struct SlotLimits {
    pub total: usize,
    pub per_ip: usize,
    pub per_user: usize,
}

/// Why a connection was refused a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    Server(usize),
    Address(usize),
    User(usize),
}

/// Decrements a counter, removing it at zero so the map does not keep every
/// address or name ever seen.
fn release<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize>, key: &K) {
    if let Some(n) = map.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            map.remove(key);
        }
    }
}

impl Slots {
    /// Reserves a slot, or says which limit is reached. The slot is released
    /// when the returned guard is dropped, whether or not the upgrade completes.
    pub fn reserve(
        self: &Arc<Self>,
        ip: IpAddr,
        user: &UserId,
        limits: SlotLimits,
    ) -> Result<Slot, Full> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.total >= limits.total {
            return Err(Full::Server(limits.total));
        }
        if inner.per_ip.get(&ip).copied().unwrap_or(0) >= limits.per_ip {
            return Err(Full::Address(limits.per_ip));
        }
        if inner.per_user.get(user).copied().unwrap_or(0) >= limits.per_user {
            return Err(Full::User(limits.per_user));
        }
        inner.total += 1;
        *inner.per_ip.entry(ip).or_default() += 1;
        *inner.per_user.entry(user.clone()).or_default() += 1;
        Ok(Slot {
            slots: self.clone(),
            ip,
            user: user.clone(),
        })
    }

    pub fn total(&self) -> usize {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).total
    }
}

/// One reserved connection slot; dropping it frees the slot.
#[derive(Debug)]
pub struct Slot {
    slots: Arc<Slots>,
    ip: IpAddr,
    user: UserId,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut inner = self.slots.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.total = inner.total.saturating_sub(1);
        release(&mut inner.per_ip, &self.ip);
        release(&mut inner.per_user, &self.user);
    }
}

#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(per_second: f64, now: Instant) -> TokenBucket {
        let rate = per_second.max(0.001);
        TokenBucket {
            rate,
            tokens: rate.max(1.0),
            last: now,
        }
    }

    /// Takes a token if one is there; false means "over the limit".
    pub fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate.max(1.0));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A `Key:   123 kB` line of a /proc file, in bytes (Linux; None elsewhere).
/// `bench load` reads its server's the same way.
pub fn proc_bytes(file: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(file).ok()?;
    let kib: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix(key))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// The process's resident memory in bytes.
pub fn rss_bytes() -> Option<u64> {
    proc_bytes("/proc/self/status", "VmRSS:")
}

/// This machine's memory in bytes.
pub fn machine_memory() -> Option<u64> {
    proc_bytes("/proc/meminfo", "MemTotal:")
}

/// Makes glibc serve every allocation of 1 MiB or more (an Argon2 working
/// buffer, a burst-sized outbox) from its own mapping, returned to the OS the
/// moment it is freed. Left to itself glibc raises that threshold after the
/// first large free, and then keeps such buffers for ever. No-op elsewhere.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a tunable of the allocator.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

/// Gives freed memory back to the OS. glibc keeps what a burst of queued
/// messages freed in its arenas; without this, RSS after the queues drain
/// stays at its peak. A no-op where the allocator is not glibc's.
pub fn give_back_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Raises this process's open-file limit to its hard maximum, so thousands of
/// connections do not fail at a default of 1,024. Returns (before, after).
#[cfg(unix)]
// `rlim_t` is u64 on Linux but not on every Unix, so the casts stay.
#[allow(clippy::unnecessary_cast)]
pub fn raise_fd_limit() -> Option<(u64, u64)> {
    // SAFETY: getrlimit and setrlimit only read and write the struct we pass.
    unsafe {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return None;
        }
        let before = limit.rlim_cur as u64;
        if limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Some((before, before));
            }
        }
        Some((before, limit.rlim_cur as u64))
    }
}

#[cfg(not(unix))]
pub fn raise_fd_limit() -> Option<(u64, u64)> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_burst_of_one_second_then_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(5.0, t0);
        let burst = (0..20).filter(|_| b.take(t0)).count();
        assert_eq!(burst, 5, "one second's worth at once");
        assert!(
            !b.take(t0 + Duration::from_millis(100)),
            "0.5 token after 100 ms"
        );
        assert!(
            b.take(t0 + Duration::from_millis(200)),
            "a whole token after 200 ms"
        );
        // After a long pause the bucket is full again, but never fuller.
        let later = t0 + Duration::from_secs(60);
        assert_eq!((0..20).filter(|_| b.take(later)).count(), 5);
    }

    #[test]
    fn slots_count_in_all_per_address_and_per_user_and_free_on_drop() {
        let slots = Arc::new(Slots::default());
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let (ann, ben) = (
            crate::names::Name::parse("ann").unwrap(),
            crate::names::Name::parse("ben").unwrap(),
        );
        let limits = SlotLimits {
            total: 4,
            per_ip: 2,
            per_user: 2,
        };
        let s1 = slots.reserve(a, &ann, limits).unwrap();
        let _s2 = slots.reserve(a, &ben, limits).unwrap();
        assert_eq!(
            slots.reserve(a, &ben, limits).unwrap_err(),
            Full::Address(2)
        );
        let _s3 = slots.reserve(b, &ann, limits).unwrap();
        assert_eq!(slots.reserve(b, &ann, limits).unwrap_err(), Full::User(2));
        let _s4 = slots.reserve(b, &ben, limits).unwrap();
        assert_eq!(slots.reserve(b, &ben, limits).unwrap_err(), Full::Server(4));
        drop(s1);
        assert_eq!(slots.total(), 3);
        assert!(slots.reserve(a, &ann, limits).is_ok());
        // Counters at zero are removed, not kept for every name ever seen.
        let inner = slots.inner.lock().unwrap();
        assert!(inner.per_user.values().all(|n| *n > 0));
    }

    #[test]
    fn slow_rates_still_allow_one_message() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(0.5, t0);
        assert!(b.take(t0));
        assert!(!b.take(t0 + Duration::from_secs(1)));
        assert!(b.take(t0 + Duration::from_secs(3)));
    }
    #[cfg(unix)]
    #[test]
    #[allow(clippy::unnecessary_cast)]
    fn the_open_file_limit_is_raised_to_the_hard_maximum() {
        let (_, after) = raise_fd_limit().expect("getrlimit works");
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes only into `limit`.
        assert_eq!(
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
            0
        );
        assert_eq!(limit.rlim_cur as u64, after);
        assert_eq!(limit.rlim_cur, limit.rlim_max);
    }
}
