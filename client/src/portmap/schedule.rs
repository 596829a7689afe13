//! When to renew a lease, and when a failed renewal means the mapping is gone.
//!
//! Sans-IO: every function takes `now`; the driver sleeps until the instant it gets.
//! RFC 6886 §3.3 and RFC 6887 §11.2.1 both say to renew at half the lifetime; a
//! renewal that fails is retried at half the remaining time (at least
//! [`MIN_RETRY`] apart), until the lease runs out and the mapping is dropped.

use std::time::{Duration, Instant};

/// Retries of a failed renewal are at least this far apart.
pub const MIN_RETRY: Duration = Duration::from_secs(2);

/// How long after a grant we renew it: half the lease, at least one second.
pub fn renew_after(lease: Duration) -> Duration {
    (lease / 2).max(Duration::from_secs(1))
}

/// The renewal timing of one granted lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseSchedule {
    expires: Instant,
    next: Instant,
}

/// What to do after a renewal failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    /// Try again at this instant; the mapping still holds until then.
    RetryAt(Instant),
    /// The lease ran out (or will before a retry could help): drop the candidate.
    Expired,
}

impl LeaseSchedule {
    /// A lease of `lease` granted (or renewed) at `now`.
    pub fn granted(now: Instant, lease: Duration) -> Self {
        Self {
            expires: now + lease,
            next: now + renew_after(lease),
        }
    }

    /// When to send the next renewal.
    pub fn next_renewal(&self) -> Instant {
        self.next
    }

    /// When the router forgets the mapping unless renewed.
    pub fn expires(&self) -> Instant {
        self.expires
    }

    /// A renewal failed at `now`.
    pub fn renewal_failed(&mut self, now: Instant) -> AfterFailure {
        let left = self.expires.saturating_duration_since(now);
        let wait = (left / 2).max(MIN_RETRY);
        if wait >= left {
            return AfterFailure::Expired;
        }
        self.next = now + wait;
        AfterFailure::RetryAt(self.next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renews_at_half_the_lease() {
        let t0 = Instant::now();
        let s = LeaseSchedule::granted(t0, Duration::from_secs(7200));
        assert_eq!(s.next_renewal(), t0 + Duration::from_secs(3600));
        assert_eq!(s.expires(), t0 + Duration::from_secs(7200));
        assert_eq!(
            renew_after(Duration::from_millis(500)),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn failed_renewals_halve_the_remaining_time_then_expire() {
        let t0 = Instant::now();
        let mut s = LeaseSchedule::granted(t0, Duration::from_secs(120));
        let mut now = s.next_renewal();
        let mut retries = Vec::new();
        while let AfterFailure::RetryAt(at) = s.renewal_failed(now) {
            assert!(at > now && at < s.expires());
            retries.push(at - t0);
            now = at;
        }
        let secs: Vec<u64> = retries.iter().map(Duration::as_secs).collect();
        assert_eq!(secs, [90, 105, 112, 116, 118]);
        assert!(now < s.expires());
    }

    #[test]
    fn a_failure_after_expiry_is_expired() {
        let t0 = Instant::now();
        let mut s = LeaseSchedule::granted(t0, Duration::from_secs(10));
        assert_eq!(
            s.renewal_failed(t0 + Duration::from_secs(11)),
            AfterFailure::Expired
        );
    }
}
