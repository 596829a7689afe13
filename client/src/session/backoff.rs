//! Reconnect pacing: exponential backoff with jitter, sans-IO.
//!
//! When the server goes away every client tries to come back. Without jitter
//! they would all come back at the same instant and knock a restarting server
//! over again. So the n-th retry waits `initial × multiplier^n` capped at `max`,
//! then scaled down by a random fraction of up to `jitter` ("equal jitter").
//! The random number is an input, like time, so tests are deterministic.

use std::time::{Duration, Instant};

/// Backoff parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct BackoffConfig {
    /// Delay before the first retry (default 250 ms).
    pub initial: Duration,
    /// Upper bound of any delay (default 30 s).
    pub max: Duration,
    /// Growth factor per failed attempt (default 2; values below 1 count as 1).
    pub multiplier: f64,
    /// Fraction of the delay that is randomised, in `0..=1` (default 0.5: the
    /// delay is uniform in `[d/2, d]`).
    pub jitter: f64,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(250),
            max: Duration::from_secs(30),
            multiplier: 2.0,
            jitter: 0.5,
        }
    }
}

/// Exponential backoff state: how many retries have failed in a row.
#[derive(Debug, Clone)]
pub struct Backoff {
    config: BackoffConfig,
    attempt: u32,
}

impl Backoff {
    /// Fresh state: the next delay is the initial one.
    pub fn new(config: BackoffConfig) -> Self {
        Self { config, attempt: 0 }
    }

    /// Number of delays handed out since the last reset.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Starts over (after a successful login).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The un-jittered delay of the current attempt.
    pub fn ceiling(&self) -> Duration {
        let max = self.config.max.max(self.config.initial);
        let factor = if self.config.multiplier.is_finite() && self.config.multiplier >= 1.0 {
            self.config.multiplier
        } else {
            1.0
        };
        // powi saturates to infinity for large attempts; try_from then fails
        // and the cap applies.
        let exp = i32::try_from(self.attempt).unwrap_or(i32::MAX);
        let secs = self.config.initial.as_secs_f64() * factor.powi(exp);
        Duration::try_from_secs_f64(secs).map_or(max, |d| d.min(max))
    }

    /// The delay before the next retry, given a random sample `unit` in `[0, 1)`,
    /// and advances the attempt counter.
    pub fn next_delay(&mut self, unit: f64) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let jitter = if self.config.jitter.is_finite() {
            self.config.jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let unit = if unit.is_finite() {
            unit.clamp(0.0, 1.0)
        } else {
            0.0
        };
        ceiling.mul_f64(1.0 - jitter * unit)
    }

    /// When to retry, given the current time and a random sample in `[0, 1)`.
    pub fn next_at(&mut self, now: Instant, unit: f64) -> Instant {
        now + self.next_delay(unit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> BackoffConfig {
        BackoffConfig {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
            multiplier: 2.0,
            jitter: 0.5,
        }
    }

    #[test]
    fn grows_exponentially_then_caps() {
        let mut b = Backoff::new(cfg());
        // unit = 0: no jitter reduction, the ceiling itself.
        let delays: Vec<u128> = (0..8).map(|_| b.next_delay(0.0).as_millis()).collect();
        assert_eq!(delays, vec![100, 200, 400, 800, 1600, 2000, 2000, 2000]);
        assert_eq!(b.attempt(), 8);
    }

    #[test]
    fn jitter_stays_within_bounds() {
        let mut b = Backoff::new(cfg());
        // unit close to 1 halves the delay (jitter 0.5).
        assert_eq!(b.next_delay(0.999_999).as_millis(), 50);
        let mut b = Backoff::new(cfg());
        for i in 0..50 {
            let unit = f64::from(i) / 50.0;
            let ceiling = b.ceiling();
            let d = b.next_delay(unit);
            assert!(d <= ceiling && d >= ceiling / 2, "{d:?} vs {ceiling:?}");
        }
    }

    #[test]
    fn different_samples_spread_clients_apart() {
        let mut a = Backoff::new(cfg());
        let mut b = Backoff::new(cfg());
        assert_ne!(a.next_delay(0.1), b.next_delay(0.9));
    }

    #[test]
    fn reset_starts_over() {
        let mut b = Backoff::new(cfg());
        for _ in 0..5 {
            b.next_delay(0.0);
        }
        b.reset();
        assert_eq!(b.next_delay(0.0), Duration::from_millis(100));
    }

    #[test]
    fn next_at_adds_to_now() {
        let now = Instant::now();
        let mut b = Backoff::new(cfg());
        assert_eq!(b.next_at(now, 0.0), now + Duration::from_millis(100));
        assert_eq!(b.next_at(now, 0.0), now + Duration::from_millis(200));
    }

    #[test]
    fn hostile_parameters_do_not_panic() {
        let mut b = Backoff::new(BackoffConfig {
            initial: Duration::from_secs(1),
            max: Duration::ZERO,
            multiplier: f64::NAN,
            jitter: f64::INFINITY,
        });
        for _ in 0..100 {
            assert_eq!(b.next_delay(f64::NAN), Duration::from_secs(1));
        }
        let mut b = Backoff::new(BackoffConfig {
            multiplier: 1e300,
            ..cfg()
        });
        for _ in 0..40 {
            assert!(b.next_delay(0.0) <= Duration::from_secs(2));
        }
    }
}
