//! Limits: per-connection message rate (a token bucket), and how many
//! connections the server, and one remote address, may hold.
//!
//! The bucket holds up to `rate` tokens (one second's worth, so short bursts
//! pass) and refills continuously at `rate` per second; each request takes
//! one. O(1) per request, no timers: the refill is computed from elapsed time.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Open connections in all and per remote address, counted from the moment an
/// upgrade is accepted until its task ends.
#[derive(Debug, Default)]
pub struct Slots {
    inner: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// Why a connection was refused a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    Server(usize),
    Address(usize),
}

impl Slots {
    /// Reserves a slot, or says which limit is reached. The slot is released
    /// when the returned guard is dropped, whether or not the upgrade completes.
    pub fn reserve(
        self: &Arc<Self>,
        ip: IpAddr,
        max_total: usize,
        max_per_ip: usize,
    ) -> Result<Slot, Full> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.0 >= max_total {
            return Err(Full::Server(max_total));
        }
        let here = inner.1.entry(ip).or_default();
        if *here >= max_per_ip {
            return Err(Full::Address(max_per_ip));
        }
        *here += 1;
        inner.0 += 1;
        Ok(Slot {
            slots: self.clone(),
            ip,
        })
    }

    pub fn total(&self) -> usize {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).0
    }
}

/// One reserved connection slot; dropping it frees the slot.
#[derive(Debug)]
pub struct Slot {
    slots: Arc<Slots>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut inner = self.slots.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.0 = inner.0.saturating_sub(1);
        if let Some(n) = inner.1.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                inner.1.remove(&self.ip);
            }
        }
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
    fn slots_count_in_all_and_per_address_and_free_on_drop() {
        let slots = Arc::new(Slots::default());
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let s1 = slots.reserve(a, 3, 2).unwrap();
        let _s2 = slots.reserve(a, 3, 2).unwrap();
        assert_eq!(slots.reserve(a, 3, 2).unwrap_err(), Full::Address(2));
        let _s3 = slots.reserve(b, 3, 2).unwrap();
        assert_eq!(slots.reserve(b, 3, 2).unwrap_err(), Full::Server(3));
        drop(s1);
        assert_eq!(slots.total(), 2);
        assert!(slots.reserve(a, 3, 2).is_ok());
    }

    #[test]
    fn slow_rates_still_allow_one_message() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(0.5, t0);
        assert!(b.take(t0));
        assert!(!b.take(t0 + Duration::from_secs(1)));
        assert!(b.take(t0 + Duration::from_secs(3)));
    }
}
