//! Per-connection message-rate limiting: a token bucket.
//!
//! The bucket holds up to `rate` tokens (one second's worth, so short bursts
//! pass) and refills continuously at `rate` per second; each request takes
//! one. O(1) per request, no timers: the refill is computed from elapsed time.

use std::time::Instant;

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
    fn slow_rates_still_allow_one_message() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(0.5, t0);
        assert!(b.take(t0));
        assert!(!b.take(t0 + Duration::from_secs(1)));
        assert!(b.take(t0 + Duration::from_secs(3)));
    }
}
