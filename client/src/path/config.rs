//! Timings of path probing and selection.

use std::time::Duration;

/// How often paths are probed, how quickly a dead path is given up, and how long
/// datagrams are copied onto several paths while a link is set up.
///
/// Fields are public so tests and the CLI can tune them:
/// `PathConfig { dead_after: Duration::from_secs(2), ..PathConfig::default() }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathConfig {
    /// Interval of the heartbeat probe on the direct path in use (default 1 s).
    pub heartbeat: Duration,
    /// The direct path in use is dead when no probe on it was answered for this long
    /// (default 3 s): the link falls back to the relay (or another direct path).
    pub dead_after: Duration,
    /// First interval between probes of a path not in use (default 500 ms), backing
    /// off ×1.5 up to [`PathConfig::probe_max`].
    pub probe_first: Duration,
    /// Longest interval between probes of a path not in use while the link is young
    /// (default 2 s): how soon a direct path that opens is noticed.
    pub probe_max: Duration,
    /// Interval between probes of a path not in use once the link is older than
    /// [`PathConfig::fast_for`] (default 15 s).
    pub probe_slow: Duration,
    /// How long after the link starts (or after the path in use changes) paths are
    /// probed at up to [`PathConfig::probe_max`] (default 120 s).
    pub fast_for: Duration,
    /// While set up, and for this long after it starts (default 2 s), every datagram
    /// also goes to the relay and the plausible direct paths, so the first packets
    /// need not wait for a decision.
    pub setup_window: Duration,
    /// Interval of a probe through the relay while a direct path is in use (default
    /// 15 s): keeps the relay from expiring (the server's idle timeout is 60 s by
    /// default) so the link can fall back at once.
    pub relay_keepalive: Duration,
    /// Answered probes in a row before a path that died is used again (default 2):
    /// hysteresis, so a flaky path does not make the link flap.
    pub promote_after: u32,
}

impl Default for PathConfig {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(1),
            dead_after: Duration::from_secs(3),
            probe_first: Duration::from_millis(500),
            probe_max: Duration::from_secs(2),
            probe_slow: Duration::from_secs(15),
            fast_for: Duration::from_secs(120),
            setup_window: Duration::from_secs(2),
            relay_keepalive: Duration::from_secs(15),
            promote_after: 2,
        }
    }
}
