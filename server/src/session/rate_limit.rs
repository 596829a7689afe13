//! Token bucket for connection requests, with time passed in by the caller.
//!
//! A session may send `burst` requests at once and then `rate` per second on
//! average. The bucket never reads the clock, so tests step time explicitly.

use std::time::Instant;

/// A token bucket: `capacity` tokens, refilled at `rate` tokens per second.
#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    capacity: f64,
    rate: f64,
    tokens: f64,
    updated: Instant,
}

impl TokenBucket {
    /// A full bucket at `now`.
    pub(crate) fn new(rate_per_second: u32, burst: u32, now: Instant) -> Self {
        let capacity = f64::from(burst);
        Self {
            capacity,
            rate: f64::from(rate_per_second),
            tokens: capacity,
            updated: now,
        }
    }

    /// Takes one token if there is one; `false` means "over the limit".
    pub(crate) fn try_take(&mut self, now: Instant) -> bool {
        // Time never runs backwards here; a `now` older than the last update
        // (callers mixing clocks) simply adds nothing.
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.updated = self.updated.max(now);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.capacity);
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
    use std::time::Duration;

    use super::*;

    #[test]
    fn burst_then_refill() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(2, 3, t0);
        assert!(bucket.try_take(t0));
        assert!(bucket.try_take(t0));
        assert!(bucket.try_take(t0));
        assert!(!bucket.try_take(t0));
        // Half a second at 2/s refills one token.
        let t1 = t0 + Duration::from_millis(500);
        assert!(bucket.try_take(t1));
        assert!(!bucket.try_take(t1));
        // A long pause refills only up to the burst.
        let t2 = t1 + Duration::from_secs(60);
        for _ in 0..3 {
            assert!(bucket.try_take(t2));
        }
        assert!(!bucket.try_take(t2));
    }

    #[test]
    fn zero_burst_refuses_everything() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(10, 0, t0);
        assert!(!bucket.try_take(t0 + Duration::from_secs(5)));
    }

    #[test]
    fn older_now_adds_nothing() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut bucket = TokenBucket::new(1, 1, t0);
        assert!(bucket.try_take(t0));
        assert!(!bucket.try_take(t0 - Duration::from_secs(5)));
        assert!(bucket.try_take(t0 + Duration::from_secs(1)));
    }
}
