//! Candidate endpoints of the peer, and what kind of path a working one gives.
//!
//! The orchestrator learns up to three endpoints of the peer from the brokered exchange:
//! its private endpoint (PacketConnectionRequest / Accept), its UDP-observed public
//! endpoint and its TCP-observed public endpoint (PacketClientInfo). While punching, a
//! fourth kind appears: a peer-reflexive endpoint, the source of an authenticated probe
//! that matched none of the others (a symmetric NAT maps a new port per destination).

use std::net::{IpAddr, SocketAddr};

use chatr_proto::Endpoint;

use crate::net::canonical;

/// Where a candidate endpoint of the peer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CandidateKind {
    /// The peer's own socket address (the private endpoint it announced). Works on a
    /// shared LAN, where the peers can reach each other without a NAT in between.
    Private,
    /// The address the Connect server saw the peer's UDP binding come from.
    PublicUdp,
    /// The address the Connect server saw the peer's TCP connection come from. Useful
    /// when the NAT keeps the port for TCP and UDP alike.
    PublicTcp,
    /// Learned while punching: the source of an authenticated probe from the peer that
    /// matched no announced candidate.
    PeerReflexive,
    /// A mapping the peer's router granted it (UPnP IGD, NAT-PMP or PCP), from its hints.
    PortMapped,
    /// A global IPv6 address of the peer's interfaces, from its hints.
    Ipv6Global,
}

impl CandidateKind {
    /// Stable lower-case name, as used in reports (`"private"`, `"public-udp"`,
    /// `"public-tcp"`, `"peer-reflexive"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Private => "private",
            Self::PublicUdp => "public-udp",
            Self::PublicTcp => "public-tcp",
            Self::PeerReflexive => "peer-reflexive",
            Self::PortMapped => "port-mapped",
            Self::Ipv6Global => "ipv6-global",
        }
    }

    /// Which kind wins when the same address is announced as several kinds.
    ///
    /// An address the server observed is public: if the peer's private endpoint equals
    /// its observed one, the peer has no NAT and the path is not a LAN path.
    fn dedup_rank(self) -> u8 {
        match self {
            Self::PublicUdp => 3,
            Self::PortMapped | Self::Ipv6Global => 3,
            Self::PublicTcp => 2,
            Self::Private => 1,
            Self::PeerReflexive => 0,
        }
    }

    /// Preference when several validated paths are available (higher is better).
    pub(crate) fn preference(self) -> u8 {
        match self {
            // A global IPv6 path has no NAT to rebind: as good as a LAN one.
            Self::Private | Self::Ipv6Global => 3,
            Self::PublicUdp | Self::PortMapped => 2,
            Self::PeerReflexive => 1,
            Self::PublicTcp => 0,
        }
    }
}

impl std::fmt::Display for CandidateKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a working path stays inside a LAN or crosses the public internet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PathKind {
    /// Directly to the peer's private endpoint (both on one LAN, no NAT in between).
    Lan,
    /// Through the NATs, over the peer's public or peer-reflexive endpoint.
    Public,
}

impl PathKind {
    /// Stable lower-case name, as used in reports (`"lan"`, `"public"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Lan => "lan",
            Self::Public => "public",
        }
    }
}

impl std::fmt::Display for PathKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One address of the peer worth probing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Candidate {
    /// The peer's address (IPv4-mapped IPv6 addresses are stored as IPv4).
    pub addr: SocketAddr,
    /// Where the address came from.
    pub kind: CandidateKind,
}

impl Candidate {
    /// A candidate; the address is canonicalised (`::ffff:a.b.c.d` → `a.b.c.d`).
    pub fn new(addr: SocketAddr, kind: CandidateKind) -> Self {
        Self {
            addr: canonical(addr),
            kind,
        }
    }

    /// Whether probing this address can make sense: a port, and an IP that is neither
    /// unspecified, multicast nor broadcast.
    pub fn is_probeable(&self) -> bool {
        if self.addr.port() == 0 {
            return false;
        }
        match self.addr.ip() {
            IpAddr::V4(ip) => !(ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast()),
            IpAddr::V6(ip) => !(ip.is_unspecified() || ip.is_multicast()),
        }
    }

    /// The candidates a peer's version-3 hints add.
    pub fn from_hints(hints: &chatr_proto::LinkHints) -> Vec<Candidate> {
        hints
            .candidates
            .iter()
            .map(|c| {
                let kind = match c.origin {
                    chatr_proto::CandidateOrigin::PortMapped => CandidateKind::PortMapped,
                    chatr_proto::CandidateOrigin::Ipv6Global => CandidateKind::Ipv6Global,
                };
                Candidate::new(c.addr, kind)
            })
            .collect()
    }

    /// Builds the candidate list from what the brokered exchange announced.
    ///
    /// `private` is the peer's endpoint from PacketConnectionRequest / Accept,
    /// `public_udp` is `PacketClientInfo.public_endpoint` (UDP-observed when the peer
    /// sent a binding), `public_tcp` is `PacketClientInfo.tcp_endpoint`. Endpoints
    /// without a port or with an unusable IP are skipped; equal addresses are merged
    /// (see [`dedup`]).
    pub fn from_endpoints(
        private: Option<Endpoint>,
        public_udp: Option<Endpoint>,
        public_tcp: Option<Endpoint>,
    ) -> Vec<Candidate> {
        let announced = [
            (private, CandidateKind::Private),
            (public_udp, CandidateKind::PublicUdp),
            (public_tcp, CandidateKind::PublicTcp),
        ];
        dedup(
            announced
                .into_iter()
                .filter_map(|(endpoint, kind)| {
                    endpoint
                        .and_then(|e| e.socket_addr())
                        .map(|addr| Candidate::new(addr, kind))
                })
                .collect(),
        )
    }
}

impl std::fmt::Display for Candidate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.addr, self.kind)
    }
}

/// Canonicalises, drops unprobeable candidates and merges equal addresses.
///
/// When one address is announced as several kinds, the observed (public) kind wins over
/// `Private`: a peer whose private endpoint is its public one has no NAT, and a path to
/// it is a public path. Order of first appearance is kept.
pub fn dedup(candidates: Vec<Candidate>) -> Vec<Candidate> {
    let mut out: Vec<Candidate> = Vec::with_capacity(candidates.len());
    for candidate in candidates {
        let candidate = Candidate::new(candidate.addr, candidate.kind);
        if !candidate.is_probeable() {
            continue;
        }
        match out.iter_mut().find(|c| c.addr == candidate.addr) {
            Some(existing) => {
                if candidate.kind.dedup_rank() > existing.kind.dedup_rank() {
                    existing.kind = candidate.kind;
                }
            }
            None => out.push(candidate),
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn ep(s: &str) -> Endpoint {
        Endpoint::new(s.parse().unwrap())
    }

    #[test]
    fn from_endpoints_merges_and_keeps_public_kind() {
        let c = Candidate::from_endpoints(
            Some(ep("10.0.0.2:4000")),
            Some(ep("203.0.113.5:4000")),
            Some(ep("203.0.113.5:4000")),
        );
        assert_eq!(
            c,
            vec![
                Candidate::new("10.0.0.2:4000".parse().unwrap(), CandidateKind::Private),
                Candidate::new(
                    "203.0.113.5:4000".parse().unwrap(),
                    CandidateKind::PublicUdp
                ),
            ]
        );
    }

    #[test]
    fn public_host_is_not_lan() {
        // No NAT: private == observed, so the candidate is public.
        let c = Candidate::from_endpoints(
            Some(ep("198.51.100.7:4000")),
            Some(ep("198.51.100.7:4000")),
            None,
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].kind, CandidateKind::PublicUdp);
    }

    #[test]
    fn skips_unusable() {
        let unknown_port = Endpoint {
            ip: "10.0.0.2".parse().unwrap(),
            port: None,
        };
        let c = Candidate::from_endpoints(
            Some(unknown_port),
            Some(ep("0.0.0.0:4000")),
            Some(ep("224.0.0.1:4000")),
        );
        assert!(c.is_empty(), "{c:?}");
    }

    #[test]
    fn canonicalises_mapped_v6() {
        let c = dedup(vec![
            Candidate::new(
                "[::ffff:203.0.113.5]:4000".parse().unwrap(),
                CandidateKind::PublicTcp,
            ),
            Candidate::new(
                "203.0.113.5:4000".parse().unwrap(),
                CandidateKind::PublicUdp,
            ),
        ]);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].addr, "203.0.113.5:4000".parse::<SocketAddr>().unwrap());
        assert_eq!(c[0].kind, CandidateKind::PublicUdp);
    }

    #[test]
    fn names() {
        assert_eq!(CandidateKind::PeerReflexive.as_str(), "peer-reflexive");
        assert_eq!(CandidateKind::PublicTcp.to_string(), "public-tcp");
        assert_eq!(PathKind::Lan.as_str(), "lan");
        assert_eq!(PathKind::Public.to_string(), "public");
    }
}
