//! Pacing and time limits of a hole-punching attempt.

use std::time::Duration;

/// Smallest probe interval the machine accepts, so a zero interval cannot spin.
const MIN_INTERVAL: Duration = Duration::from_millis(1);

/// How fast to probe, when to give up and how long to wait for a LAN path.
///
/// Fields are public so the CLI and tests can tune them:
/// `PunchConfig { give_up_after: Duration::from_secs(3), ..PunchConfig::default() }`.
#[derive(Debug, Clone, PartialEq)]
pub struct PunchConfig {
    /// First interval between two probes to the same candidate (default 100 ms).
    pub initial_interval: Duration,
    /// Factor applied to the interval after each probe to a candidate (default 1.5).
    /// Values below 1 (or not finite) are treated as 1.
    pub backoff: f64,
    /// Upper bound of the interval between two probes to one candidate (default 1 s).
    pub max_interval: Duration,
    /// The attempt fails this long after it started without an agreed path (default 10 s).
    pub give_up_after: Duration,
    /// After the first public path is validated, the initiator waits this long for a LAN
    /// path before nominating (default 200 ms, two probe intervals). Skipped when no
    /// private candidate that is plausibly on our own LAN is left unvalidated (see
    /// [`super::Punch::with_local_networks`]).
    pub lan_grace: Duration,
    /// After success the machine keeps answering the peer's probes and repeated
    /// Nominates this long, in case our acknowledgement was lost (default 10 s, as long
    /// as the initiator may keep nominating). The driver keeps routing probe datagrams
    /// to it until [`super::Punch::is_closed`].
    pub linger: Duration,
}

impl Default for PunchConfig {
    fn default() -> Self {
        Self {
            initial_interval: Duration::from_millis(100),
            backoff: 1.5,
            max_interval: Duration::from_secs(1),
            give_up_after: Duration::from_secs(10),
            lan_grace: Duration::from_millis(200),
            linger: Duration::from_secs(10),
        }
    }
}

impl PunchConfig {
    /// The first interval, never below 1 ms.
    pub(crate) fn first_interval(&self) -> Duration {
        self.initial_interval.max(MIN_INTERVAL)
    }

    /// The interval that follows `current`: `current × backoff`, capped at
    /// `max_interval` (itself never below the first interval).
    pub(crate) fn next_interval(&self, current: Duration) -> Duration {
        let cap = self.max_interval.max(self.first_interval());
        let factor = if self.backoff.is_finite() && self.backoff >= 1.0 {
            self.backoff
        } else {
            1.0
        };
        Duration::try_from_secs_f64(current.as_secs_f64() * factor)
            .unwrap_or(cap)
            .clamp(MIN_INTERVAL, cap)
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn backoff_schedule() {
        let c = PunchConfig::default();
        let mut i = c.first_interval();
        let mut seen = vec![i];
        for _ in 0..8 {
            i = c.next_interval(i);
            seen.push(i);
        }
        let ms: Vec<u128> = seen.iter().map(|d| d.as_millis()).collect();
        assert_eq!(ms, vec![100, 150, 225, 337, 506, 759, 1000, 1000, 1000]);
    }

    #[test]
    fn hostile_values_do_not_panic_or_spin() {
        let c = PunchConfig {
            initial_interval: Duration::ZERO,
            backoff: f64::NAN,
            max_interval: Duration::ZERO,
            ..PunchConfig::default()
        };
        assert_eq!(c.first_interval(), MIN_INTERVAL);
        assert_eq!(c.next_interval(Duration::ZERO), MIN_INTERVAL);
        let huge = PunchConfig {
            backoff: f64::MAX,
            ..PunchConfig::default()
        };
        assert_eq!(
            huge.next_interval(Duration::from_secs(1)),
            Duration::from_secs(1)
        );
    }
}
