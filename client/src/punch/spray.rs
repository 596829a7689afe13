//! Paced probing of many guessed ports on the peer's address: port prediction against a
//! sequential NAT, the easy side of the birthday technique against a random one
//! (`docs/PROTOCOL.md` §10.7).
//!
//! Each guessed address gets one Probe, at most `rate` per second in total. A guess
//! that is right either gets its Probe through the peer's NAT (a mapping towards us
//! exists there), or opens our own NAT's filter for the peer's next Probe from that
//! port: either way the plain machinery (acknowledgement, or a peer-reflexive
//! candidate) takes over.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The schedule of one spray.
#[derive(Debug)]
pub(crate) struct Spray {
    targets: VecDeque<SocketAddr>,
    rate: u32,
    started_at: Instant,
    sent: u32,
    /// Transaction id → the guessed address and when its probe went out.
    txids: HashMap<u64, (SocketAddr, Instant)>,
}

impl Spray {
    /// Sprays `targets` in order from `now`, `rate` probes per second (at least 1).
    pub(crate) fn new(now: Instant, targets: Vec<SocketAddr>, rate: u32) -> Self {
        Self {
            txids: HashMap::with_capacity(targets.len()),
            targets: targets.into(),
            rate: rate.max(1),
            started_at: now,
            sent: 0,
        }
    }

    /// How many probes are due at `now` (the pace allows them and targets remain).
    pub(crate) fn due(&self, now: Instant) -> usize {
        let elapsed = now.saturating_duration_since(self.started_at).as_nanos();
        // One probe at once, then `rate` per second. Integer arithmetic, so that at
        // exactly `next_at` the next probe is due (a rounding error would spin the timer).
        let allowed = elapsed * u128::from(self.rate) / 1_000_000_000 + 1;
        let owed = u64::try_from(allowed)
            .unwrap_or(u64::MAX)
            .saturating_sub(u64::from(self.sent));
        usize::try_from(owed)
            .unwrap_or(usize::MAX)
            .min(self.targets.len())
    }

    /// The next guessed address, recorded under `txid`.
    pub(crate) fn next(&mut self, now: Instant, txid: u64) -> Option<SocketAddr> {
        let target = self.targets.pop_front()?;
        self.sent = self.sent.saturating_add(1);
        self.txids.insert(txid, (target, now));
        Some(target)
    }

    /// When the next probe is due (`None`: nothing left).
    pub(crate) fn next_at(&self) -> Option<Instant> {
        if self.targets.is_empty() {
            return None;
        }
        // The first instant at which `due` allows one more: ⌈sent / rate⌉ seconds in.
        let nanos = (u64::from(self.sent) * 1_000_000_000).div_ceil(u64::from(self.rate));
        Some(self.started_at + Duration::from_nanos(nanos))
    }

    /// The guess and send time of a spray probe with `txid`.
    pub(crate) fn sent_to(&self, txid: u64) -> Option<(SocketAddr, Instant)> {
        self.txids.get(&txid).copied()
    }

    /// Probes sent so far.
    pub(crate) fn sent(&self) -> u32 {
        self.sent
    }

    /// Stops: nothing more is sent (a path was found).
    pub(crate) fn stop(&mut self) {
        self.targets.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pace_is_the_rate() {
        let t0 = Instant::now();
        let targets: Vec<SocketAddr> = (0..1000)
            .map(|i| SocketAddr::from(([198, 51, 100, 1], 2000 + i)))
            .collect();
        let mut spray = Spray::new(t0, targets, 200);
        let mut txid = 0;
        let mut send = |spray: &mut Spray, at: Instant| {
            let n = spray.due(at);
            for _ in 0..n {
                txid += 1;
                spray.next(at, txid).unwrap();
            }
            n
        };
        assert_eq!(send(&mut spray, t0), 1);
        assert_eq!(send(&mut spray, t0), 0);
        assert_eq!(spray.next_at(), Some(t0 + Duration::from_millis(5)));
        // Exactly at `next_at` the next one is due (no timer spinning on rounding).
        let at = spray.next_at().unwrap();
        assert_eq!(send(&mut spray, at), 1);
        assert_eq!(send(&mut spray, t0 + Duration::from_millis(100)), 19);
        assert_eq!(send(&mut spray, t0 + Duration::from_secs(1)), 180);
        assert_eq!(spray.sent(), 201);
        // Late timers never burst past what the rate allows overall, nor past the list.
        assert_eq!(send(&mut spray, t0 + Duration::from_secs(60)), 799);
        assert_eq!(spray.next_at(), None);
        assert_eq!(spray.sent_to(1).map(|s| s.0.port()), Some(2000));
    }
}
