//! Token bucket over bytes, with time passed in by the caller.
//!
//! Relayed traffic is limited in bytes per second, per client and for the whole
//! server. A datagram is let through only if the bucket holds its whole size; a
//! bucket with rate 0 never limits. Like the session's request bucket it never
//! reads the clock, so tests step time explicitly.

use std::time::Instant;

/// `burst` bytes of capacity, refilled at `rate` bytes per second.
#[derive(Debug, Clone)]
pub(crate) struct ByteBucket {
    rate: u64,
    burst: u64,
    tokens: f64,
    updated: Instant,
}

impl ByteBucket {
    /// A full bucket at `now`. A `rate` of 0 means unlimited.
    pub(crate) fn new(rate: u64, burst: u64, now: Instant) -> Self {
        Self {
            rate,
            burst,
            tokens: burst as f64,
            updated: now,
        }
    }

    /// Whether this bucket limits anything.
    pub(crate) fn is_unlimited(&self) -> bool {
        self.rate == 0
    }

    /// Takes `bytes` if the bucket holds them all; `false` means "over the limit"
    /// (and nothing is taken, so a smaller datagram may still pass).
    pub(crate) fn try_take(&mut self, bytes: usize, now: Instant) -> bool {
        if self.is_unlimited() {
            return true;
        }
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.updated = self.updated.max(now);
        self.tokens = (self.tokens + elapsed * self.rate as f64).min(self.burst as f64);
        let cost = bytes as f64;
        if self.tokens >= cost {
            self.tokens -= cost;
            true
        } else {
            false
        }
    }

    /// Gives back `bytes` taken by [`ByteBucket::try_take`] for a datagram that was
    /// then not forwarded after all (another limit refused it).
    pub(crate) fn refund(&mut self, bytes: usize) {
        if !self.is_unlimited() {
            self.tokens = (self.tokens + bytes as f64).min(self.burst as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn burst_then_rate() {
        let t0 = Instant::now();
        let mut bucket = ByteBucket::new(1000, 1500, t0);
        assert!(bucket.try_take(1200, t0));
        // 300 left: a 400-byte datagram waits, a 300-byte one passes.
        assert!(!bucket.try_take(400, t0));
        assert!(bucket.try_take(300, t0));
        // 100 ms at 1000 B/s refills 100 bytes.
        let t1 = t0 + Duration::from_millis(100);
        assert!(!bucket.try_take(101, t1));
        assert!(bucket.try_take(100, t1));
        // A long pause refills only up to the burst.
        let t2 = t1 + Duration::from_secs(3600);
        assert!(bucket.try_take(1500, t2));
        assert!(!bucket.try_take(1, t2));
    }

    #[test]
    fn refund_restores_up_to_the_burst() {
        let t0 = Instant::now();
        let mut bucket = ByteBucket::new(1, 1000, t0);
        assert!(bucket.try_take(800, t0));
        bucket.refund(800);
        assert!(bucket.try_take(1000, t0));
        bucket.refund(5000);
        assert!(!bucket.try_take(1001, t0));
    }

    #[test]
    fn zero_rate_is_unlimited() {
        let t0 = Instant::now();
        let mut bucket = ByteBucket::new(0, 0, t0);
        assert!(bucket.try_take(usize::MAX, t0));
    }

    #[test]
    fn the_long_run_rate_holds() {
        // 10 MB/s for 10 s of 1200-byte datagrams offered at twice the rate.
        let t0 = Instant::now();
        let mut bucket = ByteBucket::new(10_000_000, 100_000, t0);
        let mut passed = 0u64;
        for i in 0..200_000u64 {
            let now = t0 + Duration::from_micros(i * 50);
            if bucket.try_take(1200, now) {
                passed += 1200;
            }
        }
        let expected = 10_000_000.0 * 10.0 + 100_000.0;
        let ratio = passed as f64 / expected;
        assert!(
            (0.99..=1.01).contains(&ratio),
            "passed {passed} B, ratio {ratio}"
        );
    }
}
