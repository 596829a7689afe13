//! Where the socket sends each link's datagrams: the links' virtual addresses and their
//! current send plans.
//!
//! quinn talks to every path-managed link at a stable **virtual address** (`0.x.y.z:1`,
//! an address that is never a destination on any network), so the link survives every
//! change of path: the socket turns each datagram for that address into sends on the
//! paths of the link's [`SendPlan`], and reports every datagram that arrives from one of
//! the link's known paths as coming from the virtual address. The node updates the plan
//! as the link's [`crate::path::LinkAgent`] decides; the socket only reads it.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, PoisonError, RwLock};
use std::time::{Duration, Instant};

use chatr_proto::RelayId;

use crate::net::canonical;
use crate::path::{PathId, SendPlan};

/// Paths a datagram of one link may go on at once (primary plus copies).
pub(crate) const MAX_PLAN_PATHS: usize = 6;

/// A plan the socket can copy out cheaply on every send.
pub(crate) type PlanPaths = [Option<PathId>; MAX_PLAN_PATHS];

/// Whether `addr` is one of the virtual addresses (in its plain or IPv4-mapped form).
pub(crate) fn is_virtual(addr: SocketAddr) -> bool {
    match addr.ip().to_canonical() {
        IpAddr::V4(v4) => v4.octets()[0] == 0 && !v4.is_unspecified(),
        IpAddr::V6(_) => false,
    }
}

/// Where route activity times count from.
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

/// One path-managed link.
#[derive(Debug)]
pub(crate) struct Route {
    /// The address quinn uses for the peer.
    pub(crate) virtual_addr: SocketAddr,
    /// The exchange's relay and the server's UDP address, when relayed.
    pub(crate) relay: Option<(RelayId, SocketAddr)>,
    plan: RwLock<PlanPaths>,
    /// Milliseconds since [`EPOCH`] of the last QUIC datagram sent or received.
    last_quic_ms: AtomicU64,
}

impl Route {
    /// A QUIC datagram of this link went out or came in.
    pub(crate) fn touch(&self) {
        let ms = u64::try_from(EPOCH.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_quic_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// How long the link has carried no QUIC datagram.
    pub(crate) fn quiet_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_quic_ms.load(Ordering::Relaxed));
        EPOCH.elapsed().saturating_sub(last)
    }

    /// The paths a datagram goes on now, primary first.
    pub(crate) fn paths(&self) -> PlanPaths {
        *self.plan.read().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The table of path-managed links, shared by the socket (reads on every datagram) and
/// the node (writes when a plan changes). Locks are held for a lookup only.
#[derive(Debug, Default)]
pub(crate) struct Routes {
    by_virtual: RwLock<HashMap<SocketAddr, Arc<Route>>>,
    /// The peer's known direct addresses → its virtual address.
    by_direct: RwLock<HashMap<SocketAddr, SocketAddr>>,
    by_relay: RwLock<HashMap<RelayId, SocketAddr>>,
    next_id: AtomicU32,
}

impl Routes {
    /// Registers a link (with its relay, if any) and returns its route.
    pub(crate) fn add(&self, relay: Option<(RelayId, SocketAddr)>) -> Arc<Route> {
        // 24 bits of id in 0.x.y.z; ids wrap after 16 million links, long after the
        // first ones are gone.
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) % 0x00ff_ffff + 1;
        let [_, a, b, c] = id.to_be_bytes();
        let virtual_addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(0, a, b, c)), 1);
        let route = Arc::new(Route {
            virtual_addr,
            relay: relay.map(|(id, server)| (id, canonical(server))),
            plan: RwLock::new([None; MAX_PLAN_PATHS]),
            last_quic_ms: AtomicU64::new(0),
        });
        route.touch();
        write(&self.by_virtual).insert(virtual_addr, Arc::clone(&route));
        if let Some((id, _)) = relay {
            write(&self.by_relay).insert(id, virtual_addr);
        }
        route
    }

    /// Forgets a link.
    pub(crate) fn remove(&self, route: &Route) {
        write(&self.by_virtual).remove(&route.virtual_addr);
        write(&self.by_direct).retain(|_, v| *v != route.virtual_addr);
        if let Some((id, _)) = route.relay {
            write(&self.by_relay).remove(&id);
        }
    }

    /// Sets the plan of `route`, and learns its direct addresses for receiving. Returns
    /// the previous primary path.
    pub(crate) fn set_plan(
        &self,
        route: &Route,
        plan: &SendPlan,
        direct: impl Iterator<Item = SocketAddr>,
    ) -> Option<PathId> {
        let mut paths: PlanPaths = [None; MAX_PLAN_PATHS];
        for (slot, path) in paths.iter_mut().zip(plan.paths()) {
            *slot = Some(path);
        }
        let previous = {
            let mut current = route.plan.write().unwrap_or_else(PoisonError::into_inner);
            std::mem::replace(&mut *current, paths)[0]
        };
        let mut by_direct = write(&self.by_direct);
        for addr in direct {
            by_direct.insert(canonical(addr), route.virtual_addr);
        }
        previous
    }

    /// The route of the link at virtual address `addr`.
    pub(crate) fn get(&self, addr: SocketAddr) -> Option<Arc<Route>> {
        read(&self.by_virtual).get(&canonical(addr)).cloned()
    }

    /// The virtual address of the link whose peer has the direct address `addr`.
    pub(crate) fn virtual_of_direct(&self, addr: SocketAddr) -> Option<SocketAddr> {
        read(&self.by_direct).get(&canonical(addr)).copied()
    }

    /// The virtual address of the link relayed as `relay`.
    pub(crate) fn virtual_of_relay(&self, relay: &RelayId) -> Option<SocketAddr> {
        read(&self.by_relay).get(relay).copied()
    }

    /// Whether any link is relayed through the server at `addr` (datagrams from there
    /// may be relayed ones).
    pub(crate) fn is_relay_server(&self, addr: SocketAddr) -> bool {
        let addr = canonical(addr);
        read(&self.by_virtual)
            .values()
            .any(|r| r.relay.is_some_and(|(_, server)| server == addr))
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::path::RelayVia;

    #[test]
    fn virtual_addresses_are_recognised_in_both_forms() {
        let routes = Routes::default();
        let route = routes.add(None);
        let v = route.virtual_addr;
        assert!(is_virtual(v));
        let IpAddr::V4(v4) = v.ip() else { panic!() };
        let mapped = SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), v.port());
        assert!(is_virtual(mapped));
        assert!(routes.get(mapped).is_some());
        assert!(!is_virtual("0.0.0.0:1".parse().unwrap()));
        assert!(!is_virtual("10.0.0.1:1".parse().unwrap()));
        assert!(!is_virtual("[2001:db8::1]:1".parse().unwrap()));
        assert_ne!(routes.add(None).virtual_addr, v);
    }

    #[test]
    fn plans_and_addresses_are_learned_and_forgotten() {
        let routes = Routes::default();
        let server: SocketAddr = "198.51.100.1:7777".parse().unwrap();
        let route = routes.add(Some((RelayId([1; 8]), server)));
        let direct: SocketAddr = "203.0.113.5:4000".parse().unwrap();
        let plan = SendPlan {
            primary: Some(PathId::Relay(RelayVia::Udp)),
            extra: vec![PathId::Direct(direct)],
        };
        assert_eq!(routes.set_plan(&route, &plan, [direct].into_iter()), None);
        assert_eq!(route.paths()[0], Some(PathId::Relay(RelayVia::Udp)));
        assert_eq!(route.paths()[1], Some(PathId::Direct(direct)));
        assert_eq!(routes.virtual_of_direct(direct), Some(route.virtual_addr));
        assert_eq!(
            routes.virtual_of_relay(&RelayId([1; 8])),
            Some(route.virtual_addr)
        );
        assert!(routes.is_relay_server(server));
        routes.remove(&route);
        assert_eq!(routes.virtual_of_direct(direct), None);
        assert_eq!(routes.virtual_of_relay(&RelayId([1; 8])), None);
        assert!(routes.get(route.virtual_addr).is_none());
    }
}
