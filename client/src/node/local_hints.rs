//! What this client tells its peers about itself (version-3 link hints): its NAT as it
//! measured it, and its extra candidates. Several parts of the client learn these
//! independently (NAT probing, the router's port mapping, the interfaces' IPv6
//! addresses); this composes them into the one [`LinkHints`] the session sends.

use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};

use chatr_proto::{CandidateOrigin, ExtraCandidate, LinkHints, MAX_EXTRA_CANDIDATES, NatHint};

use crate::session::SessionHandle;

/// The parts of our hints, each kept up to date by whoever learns it.
#[derive(Debug)]
pub(crate) struct LocalHints {
    session: SessionHandle,
    parts: Mutex<Parts>,
}

#[derive(Debug, Default, Clone)]
struct Parts {
    nat: NatHint,
    port_mapped: Option<SocketAddr>,
    ipv6: Vec<SocketAddr>,
}

impl LocalHints {
    /// Hints that go out on `session`'s requests and accepts.
    pub(crate) fn new(session: SessionHandle) -> Self {
        Self {
            session,
            parts: Mutex::new(Parts::default()),
        }
    }

    /// Our NAT, as the NAT probes measured it.
    #[allow(
        dead_code,
        reason = "NAT probing (issue 11, part 2) calls it; merged from its own branch"
    )]
    pub(crate) fn set_nat(&self, nat: NatHint) {
        self.update(|p| p.nat = nat);
    }

    /// The public endpoint our router mapped to our socket (`None`: no mapping).
    pub(crate) fn set_port_mapped(&self, endpoint: Option<SocketAddr>) {
        self.update(|p| p.port_mapped = endpoint);
    }

    /// Our global IPv6 addresses, with our socket's port.
    pub(crate) fn set_ipv6(&self, endpoints: Vec<SocketAddr>) {
        self.update(|p| p.ipv6 = endpoints);
    }

    /// Our NAT as last measured.
    pub(crate) fn nat(&self) -> NatHint {
        self.parts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .nat
    }

    fn update(&self, change: impl FnOnce(&mut Parts)) {
        let hints = {
            let mut parts = self.parts.lock().unwrap_or_else(PoisonError::into_inner);
            change(&mut parts);
            compose(&parts)
        };
        self.session.set_link_hints(hints);
    }
}

/// The port mapping first (it works through any NAT that granted it), then IPv6
/// addresses, at most [`MAX_EXTRA_CANDIDATES`].
fn compose(parts: &Parts) -> LinkHints {
    let mapped = parts.port_mapped.map(|addr| ExtraCandidate {
        origin: CandidateOrigin::PortMapped,
        addr,
    });
    let ipv6 = parts.ipv6.iter().map(|&addr| ExtraCandidate {
        origin: CandidateOrigin::Ipv6Global,
        addr,
    });
    LinkHints {
        nat: parts.nat,
        candidates: mapped
            .into_iter()
            .chain(ipv6)
            .take(MAX_EXTRA_CANDIDATES)
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mapping_comes_first_and_the_list_is_capped() {
        let parts = Parts {
            nat: NatHint::default(),
            port_mapped: Some("198.51.100.1:4000".parse().unwrap()),
            ipv6: (1..20)
                .map(|i| format!("[2001:db8::{i}]:4000").parse().unwrap())
                .collect(),
        };
        let hints = compose(&parts);
        assert_eq!(hints.candidates.len(), MAX_EXTRA_CANDIDATES);
        assert_eq!(hints.candidates[0].origin, CandidateOrigin::PortMapped);
        assert!(
            hints.candidates[1..]
                .iter()
                .all(|c| c.origin == CandidateOrigin::Ipv6Global)
        );
    }
}
