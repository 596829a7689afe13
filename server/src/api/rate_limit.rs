//! Per-source-address token buckets for the REST API.
//!
//! Sans-IO: the caller passes `now`, so tests drive time explicitly. IPv6
//! clients are bucketed by /64 (the same [`source_key`] as the connection
//! caps), because one host usually owns a whole /64 and could otherwise rotate
//! addresses to escape the limit. The table is bounded:
//! when full, idle (refilled) buckets are dropped; if that frees nothing, new
//! addresses share one overflow bucket instead of growing memory.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::conn_limit::source_key;
use std::time::{Duration, Instant};

/// Most addresses tracked at once.
const DEFAULT_MAX_ENTRIES: usize = 65_536;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Token buckets keyed by client address.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    rate: f64,
    burst: f64,
    max_entries: usize,
    buckets: HashMap<IpAddr, Bucket>,
}

impl RateLimiter {
    /// `rate` requests per second sustained, `burst` at once. `rate == 0`
    /// disables the limit.
    pub(crate) fn new(rate: u32, burst: u32) -> Self {
        Self::with_capacity(rate, burst, DEFAULT_MAX_ENTRIES)
    }

    pub(crate) fn with_capacity(rate: u32, burst: u32, max_entries: usize) -> Self {
        Self {
            rate: f64::from(rate),
            burst: f64::from(burst.max(1)),
            max_entries: max_entries.max(1),
            buckets: HashMap::new(),
        }
    }

    /// Takes one token for `ip` at `now`; `Err(wait)` says when the next one is due.
    pub(crate) fn check(&mut self, now: Instant, ip: IpAddr) -> Result<(), Duration> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        let mut key = source_key(ip);
        if !self.buckets.contains_key(&key) && self.buckets.len() >= self.max_entries {
            self.prune(now);
            if self.buckets.len() >= self.max_entries {
                key = IpAddr::V6(Ipv6Addr::UNSPECIFIED);
            }
        }
        let (rate, burst) = (self.rate, self.burst);
        let bucket = self.buckets.entry(key).or_insert(Bucket {
            tokens: burst,
            last: now,
        });
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / rate))
        }
    }

    /// Drops buckets that have refilled completely: forgetting them changes nothing.
    fn prune(&mut self, now: Instant) {
        let (rate, burst) = (self.rate, self.burst);
        self.buckets.retain(|_, b| {
            let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
            b.tokens + elapsed * rate < burst
        });
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.buckets.len()
    }
}

/// The address used when a request carries no peer address (in-process tests).
pub(crate) const UNKNOWN_PEER: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn burst_then_refill_at_rate() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(2, 3);
        let a = ip("192.0.2.1");
        for _ in 0..3 {
            assert!(rl.check(t0, a).is_ok());
        }
        let wait = rl.check(t0, a).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        // Another address has its own bucket.
        assert!(rl.check(t0, ip("192.0.2.2")).is_ok());
        // Half a second later one token is back, and only one.
        let t1 = t0 + Duration::from_millis(500);
        assert!(rl.check(t1, a).is_ok());
        assert!(rl.check(t1, a).is_err());
        // Long idle: back to the full burst, not more.
        let t2 = t1 + Duration::from_secs(60);
        for _ in 0..3 {
            assert!(rl.check(t2, a).is_ok());
        }
        assert!(rl.check(t2, a).is_err());
    }

    #[test]
    fn ipv6_is_bucketed_by_slash_64_and_mapped_v4_as_v4() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(1, 1);
        assert!(rl.check(t0, ip("2001:db8:1:2::1")).is_ok());
        assert!(rl.check(t0, ip("2001:db8:1:2:ffff::9")).is_err());
        assert!(rl.check(t0, ip("2001:db8:1:3::1")).is_ok());
        assert!(rl.check(t0, ip("198.51.100.7")).is_ok());
        assert!(rl.check(t0, ip("::ffff:198.51.100.7")).is_err());
    }

    #[test]
    fn zero_rate_disables() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(0, 1);
        for _ in 0..100 {
            assert!(rl.check(t0, ip("192.0.2.1")).is_ok());
        }
    }

    #[test]
    fn table_is_bounded() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::with_capacity(1, 1, 2);
        assert!(rl.check(t0, ip("192.0.2.1")).is_ok());
        assert!(rl.check(t0, ip("192.0.2.2")).is_ok());
        // Full of busy buckets: newcomers share the overflow bucket.
        assert!(rl.check(t0, ip("192.0.2.3")).is_ok());
        assert!(rl.check(t0, ip("192.0.2.4")).is_err());
        assert!(rl.tracked() <= 3);
        // Once the old buckets have refilled they are pruned for newcomers.
        let t1 = t0 + Duration::from_secs(5);
        assert!(rl.check(t1, ip("192.0.2.5")).is_ok());
        assert!(rl.tracked() <= 2);
    }
}
