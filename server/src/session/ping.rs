//! Liveness tracking for one logged-in session (spec: PacketPing/PacketPong).
//!
//! The server sends a ping `interval` after the last matching pong (and after
//! login). A pong must echo the id of the *latest* ping; others are ignored.
//! With no matching pong `timeout` after the first unanswered ping the session
//! times out. A probe (someone else logging in with this UUID) sends a new ping
//! at once; the timeout deadline of an already unanswered ping is kept, so
//! probes cannot extend the life of a dead session.

use std::time::{Duration, Instant};

/// What the tracker wants done when a deadline passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PingDue {
    /// Nothing yet.
    Nothing,
    /// Time to send a ping (call [`PingTracker::sent`] with its id).
    SendPing,
    /// No matching pong in time: "Time out".
    TimedOut,
}

#[derive(Debug, Clone, Copy)]
enum State {
    /// Waiting to send the next ping at `next_at`.
    Idle { next_at: Instant },
    /// Ping `id` is unanswered; give up at `deadline`.
    Waiting { id: i64, deadline: Instant },
}

/// Ping/pong bookkeeping with injected time.
#[derive(Debug, Clone)]
pub(crate) struct PingTracker {
    interval: Duration,
    timeout: Duration,
    state: State,
}

impl PingTracker {
    /// Starts tracking at login time `now`: the first ping is due `interval` later.
    pub(crate) fn new(now: Instant, interval: Duration, timeout: Duration) -> Self {
        Self {
            interval,
            timeout,
            state: State::Idle {
                next_at: now + interval,
            },
        }
    }

    /// The next instant at which [`PingTracker::poll`] has something to do.
    pub(crate) fn deadline(&self) -> Instant {
        match self.state {
            State::Idle { next_at } => next_at,
            State::Waiting { deadline, .. } => deadline,
        }
    }

    /// What is due at `now`.
    pub(crate) fn poll(&self, now: Instant) -> PingDue {
        match self.state {
            State::Idle { next_at } if now >= next_at => PingDue::SendPing,
            State::Waiting { deadline, .. } if now >= deadline => PingDue::TimedOut,
            _ => PingDue::Nothing,
        }
    }

    /// Records that ping `id` was sent at `now`.
    pub(crate) fn sent(&mut self, now: Instant, id: i64) {
        let deadline = match self.state {
            State::Waiting { deadline, .. } => deadline,
            State::Idle { .. } => now + self.timeout,
        };
        self.state = State::Waiting { id, deadline };
    }

    /// A pong with `id` arrived at `now`; `true` if it matched the latest ping.
    pub(crate) fn pong(&mut self, now: Instant, id: i64) -> bool {
        match self.state {
            State::Waiting { id: expected, .. } if expected == id => {
                self.state = State::Idle {
                    next_at: now + self.interval,
                };
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn ping_after_interval_and_timeout_after_timeout() {
        let t0 = Instant::now();
        let mut p = PingTracker::new(t0, 5 * SEC, 15 * SEC);
        assert_eq!(p.deadline(), t0 + 5 * SEC);
        assert_eq!(p.poll(t0 + 4 * SEC), PingDue::Nothing);
        assert_eq!(p.poll(t0 + 5 * SEC), PingDue::SendPing);
        p.sent(t0 + 5 * SEC, 7);
        assert_eq!(p.deadline(), t0 + 20 * SEC);
        assert_eq!(p.poll(t0 + 19 * SEC), PingDue::Nothing);
        assert_eq!(p.poll(t0 + 20 * SEC), PingDue::TimedOut);
    }

    #[test]
    fn matching_pong_schedules_next_ping() {
        let t0 = Instant::now();
        let mut p = PingTracker::new(t0, 5 * SEC, 15 * SEC);
        p.sent(t0 + 5 * SEC, 7);
        assert!(!p.pong(t0 + 6 * SEC, 8));
        assert!(p.pong(t0 + 7 * SEC, 7));
        assert_eq!(p.deadline(), t0 + 12 * SEC);
        // A second pong for the same id is stale.
        assert!(!p.pong(t0 + 8 * SEC, 7));
    }

    #[test]
    fn extra_ping_keeps_first_deadline() {
        let t0 = Instant::now();
        let mut p = PingTracker::new(t0, 5 * SEC, 15 * SEC);
        p.sent(t0 + 5 * SEC, 1);
        p.sent(t0 + 10 * SEC, 2);
        assert_eq!(p.deadline(), t0 + 20 * SEC);
        // Only the latest id counts.
        assert!(!p.pong(t0 + 11 * SEC, 1));
        assert!(p.pong(t0 + 11 * SEC, 2));
    }
}
