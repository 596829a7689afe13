//! Caps on simultaneous TCP connections: in total and per source.
//!
//! Checked right after `accept`, before any TLS work, so a flood of idle
//! connections (slow-loris) from one address cannot exhaust the server. IPv6
//! sources are grouped by /64, since one subscriber usually owns a whole /64.
//! A [`ConnectionPermit`] is held by the connection task and frees its slot
//! when dropped.
//!
//! A limiter made with [`ConnectionLimiter::evicting_idle`] (the REST API's)
//! also keeps the total cap from being *filled* by connections that do
//! nothing: each permit is either busy (a request is being handled) or idle
//! (TLS handshake, waiting for headers or a body, kept alive between requests,
//! writing an answer nobody reads). When the total cap is reached, a newcomer
//! evicts the connection that has been idle longest instead of being refused:
//! the evicted task sees [`ConnectionPermit::evicted`] and closes. Only
//! requests being served hold their slot for sure, and those are bounded by
//! the rate limit and by how long a handler takes. The per-source cap is never
//! bypassed: a source over its share is refused, not served by eviction.
//!
//! Sans-IO: the caller passes `now`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use tokio_util::sync::CancellationToken;

/// Counts open connections and refuses those over the caps.
#[derive(Debug, Clone)]
pub(crate) struct ConnectionLimiter {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    max_total: usize,
    max_per_source: usize,
    /// Whether idle connections are tracked and evicted when the total cap is full.
    evict_idle: bool,
    counts: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_source: HashMap<IpAddr, usize>,
    /// Idle permits (evicting limiters only): id → idle since.
    idle: HashMap<u64, Idle>,
    next_id: u64,
    evicted: u64,
}

#[derive(Debug)]
struct Idle {
    since: Instant,
    evict: CancellationToken,
}

/// One admitted connection; dropping it frees the slot.
#[derive(Debug)]
pub(crate) struct ConnectionPermit {
    inner: Arc<Inner>,
    source: IpAddr,
    id: u64,
    evict: CancellationToken,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The source (IPv4 address, IPv6 /64) already has its share.
    PerSource,
    /// The total cap is reached (and, when evicting, every connection is busy).
    Total,
}

/// The key a source address is counted under: IPv4 as is (also when
/// IPv4-mapped), IPv6 by its /64.
pub(crate) fn source_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let mut octets = v6.octets();
            if let Some(host) = octets.get_mut(8..) {
                host.fill(0);
            }
            IpAddr::from(octets)
        }
    }
}

impl ConnectionLimiter {
    /// Refuses connections over `max_total` or over `max_per_source` per source.
    pub(crate) fn new(max_total: usize, max_per_source: usize) -> Self {
        Self::build(max_total, max_per_source, false)
    }

    /// Like [`new`](Self::new), but a newcomer over the total cap evicts the
    /// longest-idle connection instead of being refused (see the module docs).
    pub(crate) fn evicting_idle(max_total: usize, max_per_source: usize) -> Self {
        Self::build(max_total, max_per_source, true)
    }

    fn build(max_total: usize, max_per_source: usize, evict_idle: bool) -> Self {
        Self {
            inner: Arc::new(Inner {
                max_total,
                max_per_source,
                evict_idle,
                counts: Mutex::new(Counts::default()),
            }),
        }
    }

    /// Admits a connection from `ip` at `now`, or says which cap refused it.
    /// On an evicting limiter the new permit starts idle (its TLS handshake).
    pub(crate) fn try_admit(&self, now: Instant, ip: IpAddr) -> Result<ConnectionPermit, Refused> {
        let source = source_key(ip);
        let mut counts = self.lock();
        let from_source = counts.per_source.get(&source).copied().unwrap_or(0);
        if from_source >= self.inner.max_per_source {
            return Err(Refused::PerSource);
        }
        if counts.total >= self.inner.max_total {
            if !self.inner.evict_idle {
                return Err(Refused::Total);
            }
            // The victim keeps its slot until its task drops the permit, a
            // moment later; counting it out now keeps a burst of newcomers
            // from all evicting the same victim.
            let oldest = counts
                .idle
                .iter()
                .min_by_key(|(id, idle)| (idle.since, **id))
                .map(|(id, _)| *id);
            let Some(victim) = oldest.and_then(|id| counts.idle.remove(&id)) else {
                return Err(Refused::Total);
            };
            victim.evict.cancel();
            counts.evicted += 1;
        }
        counts.total += 1;
        counts.per_source.insert(source, from_source + 1);
        let id = counts.next_id;
        counts.next_id += 1;
        let evict = CancellationToken::new();
        if self.inner.evict_idle {
            counts.idle.insert(
                id,
                Idle {
                    since: now,
                    evict: evict.clone(),
                },
            );
        }
        Ok(ConnectionPermit {
            inner: Arc::clone(&self.inner),
            source,
            id,
            evict,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.inner
            .counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Open connections right now (evicted ones until their task has closed them).
    pub(crate) fn open(&self) -> usize {
        self.lock().total
    }

    /// Connections evicted so far.
    pub(crate) fn evicted(&self) -> u64 {
        self.lock().evicted
    }
}

impl ConnectionPermit {
    /// A request is about to be handled: this connection cannot be evicted
    /// until [`mark_idle`](Self::mark_idle). `false` if it was evicted already
    /// (then don't start the handler: the connection is being closed). Always
    /// `true` on a non-evicting limiter.
    #[must_use]
    pub(crate) fn mark_busy(&self) -> bool {
        if !self.inner.evict_idle {
            return true;
        }
        // Under the lock that eviction takes too: either the eviction came
        // first and this says so, or this comes first and eviction skips us.
        let mut counts = self.lock();
        if self.evict.is_cancelled() {
            return false;
        }
        counts.idle.remove(&self.id);
        true
    }

    /// Nothing is being handled since `now`: evictable again.
    pub(crate) fn mark_idle(&self, now: Instant) {
        if !self.inner.evict_idle || self.evict.is_cancelled() {
            return;
        }
        self.lock().idle.insert(
            self.id,
            Idle {
                since: now,
                evict: self.evict.clone(),
            },
        );
    }

    /// Cancelled when a newcomer evicted this connection; close it then.
    pub(crate) fn evicted(&self) -> &CancellationToken {
        &self.evict
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.inner
            .counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut counts = self.lock();
        counts.total = counts.total.saturating_sub(1);
        counts.idle.remove(&self.id);
        if let Some(n) = counts.per_source.get_mut(&self.source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.per_source.remove(&self.source);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn per_source_and_total_caps() {
        let now = Instant::now();
        let limiter = ConnectionLimiter::new(3, 2);
        let a = ip("192.0.2.1");
        let b = ip("192.0.2.2");
        let p1 = limiter.try_admit(now, a).unwrap();
        let _p2 = limiter.try_admit(now, a).unwrap();
        assert_eq!(limiter.try_admit(now, a).unwrap_err(), Refused::PerSource);
        let _p3 = limiter.try_admit(now, b).unwrap();
        // Total cap.
        assert_eq!(
            limiter.try_admit(now, ip("192.0.2.3")).unwrap_err(),
            Refused::Total
        );
        drop(p1);
        assert_eq!(limiter.open(), 2);
        assert!(limiter.try_admit(now, a).is_ok());
    }

    #[test]
    fn ipv6_grouped_by_64_and_mapped_v4_is_v4() {
        let now = Instant::now();
        let limiter = ConnectionLimiter::new(10, 1);
        let _p = limiter.try_admit(now, ip("2001:db8::1")).unwrap();
        assert!(limiter.try_admit(now, ip("2001:db8::2")).is_err());
        assert!(limiter.try_admit(now, ip("2001:db8::ffff:1:2:3")).is_err());
        assert!(limiter.try_admit(now, ip("2001:db8:0:1::1")).is_ok());
        let _q = limiter.try_admit(now, ip("192.0.2.1")).unwrap();
        assert!(limiter.try_admit(now, ip("::ffff:192.0.2.1")).is_err());
    }

    #[test]
    fn non_evicting_limiter_never_evicts() {
        let now = Instant::now();
        let limiter = ConnectionLimiter::new(1, 1);
        let p = limiter.try_admit(now, ip("192.0.2.1")).unwrap();
        p.mark_idle(now);
        let later = now + Duration::from_secs(60);
        assert_eq!(
            limiter.try_admit(later, ip("192.0.2.2")).unwrap_err(),
            Refused::Total
        );
        assert!(!p.evicted().is_cancelled());
    }

    #[test]
    fn full_cap_evicts_the_longest_idle_connection() {
        let t0 = Instant::now();
        let limiter = ConnectionLimiter::evicting_idle(3, 2);
        let old = limiter.try_admit(t0, ip("192.0.2.1")).unwrap();
        let newer = limiter
            .try_admit(t0 + Duration::from_secs(1), ip("192.0.2.2"))
            .unwrap();
        let busy = limiter.try_admit(t0, ip("192.0.2.3")).unwrap();
        assert!(busy.mark_busy());
        // Full: the newcomer evicts the longest-idle one, not the busy one.
        let t1 = t0 + Duration::from_secs(5);
        let fresh = limiter.try_admit(t1, ip("192.0.2.4")).unwrap();
        assert!(old.evicted().is_cancelled());
        assert!(!newer.evicted().is_cancelled());
        assert!(!busy.evicted().is_cancelled());
        assert_eq!(limiter.evicted(), 1);
        // The victim's slot is free only once its task drops the permit, but a
        // second newcomer does not pick the same victim again.
        let next = limiter.try_admit(t1, ip("192.0.2.5")).unwrap();
        assert!(newer.evicted().is_cancelled());
        assert_eq!(limiter.open(), 5);
        drop((old, newer));
        assert_eq!(limiter.open(), 3);
        // Everyone idle is gone or busy: refused.
        assert!(fresh.mark_busy());
        assert!(next.mark_busy());
        assert_eq!(
            limiter.try_admit(t1, ip("192.0.2.6")).unwrap_err(),
            Refused::Total
        );
        // Back to idle: evictable again, ordered by when it went idle.
        next.mark_idle(t1 + Duration::from_secs(1));
        fresh.mark_idle(t1 + Duration::from_secs(2));
        let _last = limiter
            .try_admit(t1 + Duration::from_secs(3), ip("192.0.2.6"))
            .unwrap();
        assert!(next.evicted().is_cancelled());
        assert!(!fresh.evicted().is_cancelled());
        drop(busy);
    }

    #[test]
    fn eviction_never_bypasses_the_per_source_cap() {
        let t0 = Instant::now();
        let limiter = ConnectionLimiter::evicting_idle(2, 1);
        let a = limiter.try_admit(t0, ip("2001:db8:1:1::1")).unwrap();
        let _b = limiter.try_admit(t0, ip("192.0.2.9")).unwrap();
        let later = t0 + Duration::from_secs(30);
        // The same /64 from another address is over its share: refused, no eviction.
        assert_eq!(
            limiter.try_admit(later, ip("2001:db8:1:1::2")).unwrap_err(),
            Refused::PerSource
        );
        assert!(!a.evicted().is_cancelled());
        // Another /64 evicts.
        assert!(limiter.try_admit(later, ip("2001:db8:1:2::1")).is_ok());
        assert!(a.evicted().is_cancelled());
    }

    #[test]
    fn an_evicted_permit_stays_evicted() {
        let t0 = Instant::now();
        let limiter = ConnectionLimiter::evicting_idle(1, 1);
        let a = limiter.try_admit(t0, ip("192.0.2.1")).unwrap();
        let _b = limiter.try_admit(t0, ip("192.0.2.2")).unwrap();
        assert!(a.evicted().is_cancelled());
        // A request that was already in flight ends; the connection must not
        // become a victim twice or count as idle again.
        assert!(!a.mark_busy());
        a.mark_idle(t0);
        assert_eq!(limiter.lock().idle.len(), 1);
    }
}
