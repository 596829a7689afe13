//! Caps on simultaneous TCP connections: in total and per source.
//!
//! Checked right after `accept`, before any TLS work, so a flood of idle
//! connections (slow-loris) from one address cannot exhaust the server. IPv6
//! sources are grouped by /64, since one subscriber usually owns a whole /64.
//! A [`ConnectionPermit`] is held by the connection task and frees its slot
//! when dropped.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

/// Counts open connections and refuses those over the caps.
#[derive(Debug, Clone)]
pub(crate) struct ConnectionLimiter {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    max_total: usize,
    max_per_source: usize,
    counts: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_source: HashMap<IpAddr, usize>,
}

/// One admitted connection; dropping it frees the slot.
#[derive(Debug)]
pub(crate) struct ConnectionPermit {
    inner: Arc<Inner>,
    source: IpAddr,
}

/// The key a source address is counted under.
fn source_key(ip: IpAddr) -> IpAddr {
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
    pub(crate) fn new(max_total: usize, max_per_source: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                max_total,
                max_per_source,
                counts: Mutex::new(Counts::default()),
            }),
        }
    }

    /// Admits a connection from `ip`, or `None` if a cap is reached.
    pub(crate) fn try_admit(&self, ip: IpAddr) -> Option<ConnectionPermit> {
        let source = source_key(ip);
        let mut counts = self
            .inner
            .counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let from_source = counts.per_source.get(&source).copied().unwrap_or(0);
        if counts.total >= self.inner.max_total || from_source >= self.inner.max_per_source {
            return None;
        }
        counts.total += 1;
        counts.per_source.insert(source, from_source + 1);
        Some(ConnectionPermit {
            inner: Arc::clone(&self.inner),
            source,
        })
    }

    /// Open connections right now.
    pub(crate) fn open(&self) -> usize {
        self.inner
            .counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .total
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut counts = self
            .inner
            .counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        counts.total = counts.total.saturating_sub(1);
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

    #[test]
    fn per_source_and_total_caps() {
        let limiter = ConnectionLimiter::new(3, 2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let p1 = limiter.try_admit(a).unwrap();
        let _p2 = limiter.try_admit(a).unwrap();
        assert!(limiter.try_admit(a).is_none());
        let _p3 = limiter.try_admit(b).unwrap();
        // Total cap.
        assert!(limiter.try_admit("192.0.2.3".parse().unwrap()).is_none());
        drop(p1);
        assert_eq!(limiter.open(), 2);
        assert!(limiter.try_admit(a).is_some());
    }

    #[test]
    fn ipv6_grouped_by_64_and_mapped_v4_is_v4() {
        let limiter = ConnectionLimiter::new(10, 1);
        let _p = limiter.try_admit("2001:db8::1".parse().unwrap()).unwrap();
        assert!(limiter.try_admit("2001:db8::2".parse().unwrap()).is_none());
        assert!(
            limiter
                .try_admit("2001:db8:0:1::1".parse().unwrap())
                .is_some()
        );
        let _q = limiter.try_admit("192.0.2.1".parse().unwrap()).unwrap();
        assert!(
            limiter
                .try_admit("::ffff:192.0.2.1".parse().unwrap())
                .is_none()
        );
    }
}
