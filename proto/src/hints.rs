//! Link hints (version 3): what a client tells its peer, through the brokered exchange,
//! about its NAT and about the extra ways to reach it.
//!
//! They ride after the port of `PacketConnectionRequest` / `PacketConnectionRequestAccept`
//! (`docs/PROTOCOL.md` §5), so each side learns the other's before the hole punch starts
//! and both pick the same punching strategy (§10.7): port prediction for a NAT that hands
//! out ports in sequence, the birthday technique for one that picks them at random, and
//! the extra candidates (a port mapping the router granted, global IPv6 addresses).

use std::net::{IpAddr, SocketAddr};

use crate::error::DecodeError;
use crate::reader::Reader;
use crate::writer::{Writer, address_len};

/// Most extra candidates one side announces.
pub const MAX_EXTRA_CANDIDATES: usize = 8;

/// How the sender's NAT maps its UDP socket, as it measured it against the server's ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NatMapping {
    /// Not measured (no NAT probe ports, or no answers).
    #[default]
    Unknown,
    /// No NAT: the server sees the socket's own address and port.
    NoNat,
    /// One public port for every destination (RFC 4787 endpoint-independent mapping).
    EndpointIndependent,
    /// A new public port per destination, chosen at random (symmetric NAT).
    DependentRandom,
    /// A new public port per destination, in sequence: each new mapping is the previous
    /// port plus [`NatHint::step`] (modulo background traffic through the same NAT).
    DependentSequential,
}

impl NatMapping {
    fn to_wire(self) -> u8 {
        match self {
            Self::Unknown => 0,
            Self::NoNat => 1,
            Self::EndpointIndependent => 2,
            Self::DependentRandom => 3,
            Self::DependentSequential => 4,
        }
    }

    /// Unknown values (from a newer peer) read as [`NatMapping::Unknown`].
    fn from_wire(b: u8) -> Self {
        match b {
            1 => Self::NoNat,
            2 => Self::EndpointIndependent,
            3 => Self::DependentRandom,
            4 => Self::DependentSequential,
            _ => Self::Unknown,
        }
    }

    /// Whether the public port depends on the destination (a peer cannot just use the
    /// port the server saw).
    pub fn is_destination_dependent(self) -> bool {
        matches!(self, Self::DependentRandom | Self::DependentSequential)
    }

    /// A stable name for reports and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::NoNat => "none",
            Self::EndpointIndependent => "endpoint-independent",
            Self::DependentRandom => "symmetric-random",
            Self::DependentSequential => "symmetric-sequential",
        }
    }
}

/// The sender's NAT, as it measured it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NatHint {
    /// Its mapping behaviour.
    pub mapping: NatMapping,
    /// For [`NatMapping::DependentSequential`]: the step between consecutive new ports
    /// (may be negative); 0 otherwise.
    pub step: i16,
    /// The newest public port the sender saw its NAT allocate (its last probe), a base for
    /// the peer's prediction; `None` when unknown.
    pub last_port: Option<u16>,
}

/// Where an extra candidate comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CandidateOrigin {
    /// A mapping the sender's router granted (UPnP IGD, NAT-PMP or PCP).
    PortMapped,
    /// A global IPv6 address of one of the sender's interfaces, with its socket's port
    /// (no NAT66: reachable once the sender's firewall has seen traffic out).
    Ipv6Global,
}

impl CandidateOrigin {
    fn to_wire(self) -> u8 {
        match self {
            Self::PortMapped => 1,
            Self::Ipv6Global => 2,
        }
    }

    fn from_wire(b: u8) -> Option<Self> {
        match b {
            1 => Some(Self::PortMapped),
            2 => Some(Self::Ipv6Global),
            _ => None,
        }
    }
}

/// One extra way to reach the sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtraCandidate {
    /// Where it comes from.
    pub origin: CandidateOrigin,
    /// The address and port (the port is always known).
    pub addr: SocketAddr,
}

/// Everything a version-3 request or accept says beyond its private endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LinkHints {
    /// The sender's NAT.
    pub nat: NatHint,
    /// Extra candidates, at most [`MAX_EXTRA_CANDIDATES`] (more are not sent).
    pub candidates: Vec<ExtraCandidate>,
}

impl LinkHints {
    fn sent_candidates(&self) -> &[ExtraCandidate] {
        self.candidates
            .get(..MAX_EXTRA_CANDIDATES)
            .unwrap_or(&self.candidates)
    }

    /// Bytes [`LinkHints::write`] produces.
    pub(crate) fn wire_len(&self) -> usize {
        6 + self
            .sent_candidates()
            .iter()
            .map(|c| 1 + address_len(&c.addr.ip()) + 2)
            .sum::<usize>()
    }

    /// `mapping u8 ‖ step int16 ‖ last port u16 ‖ count u8 ‖ count × (origin u8 ‖ Address ‖ port)`.
    pub(crate) fn write(&self, w: &mut Writer<'_>) {
        w.u8(self.nat.mapping.to_wire());
        w.u16(self.nat.step.cast_unsigned());
        w.u16(self.nat.last_port.unwrap_or(0));
        let sent = self.sent_candidates();
        // At most MAX_EXTRA_CANDIDATES, so it fits a byte.
        w.u8(u8::try_from(sent.len()).unwrap_or(u8::MAX));
        for c in sent {
            w.u8(c.origin.to_wire());
            w.address(&c.addr.ip());
            w.u16(c.addr.port());
        }
    }

    /// Reads the hints; candidates of an origin this version does not know, and those
    /// with port 0, are skipped.
    pub(crate) fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let mapping = NatMapping::from_wire(r.u8("LinkHints.mapping")?);
        let step = r.u16("LinkHints.step")?.cast_signed();
        let last_port = r.u16("LinkHints.last_port")?;
        let count = r.u8("LinkHints.count")?;
        if usize::from(count) > MAX_EXTRA_CANDIDATES {
            return Err(DecodeError::LengthTooLarge {
                field: "LinkHints.count",
                len: u32::from(count),
                max: MAX_EXTRA_CANDIDATES,
            });
        }
        let mut candidates = Vec::with_capacity(usize::from(count));
        for _ in 0..count {
            let origin = r.u8("LinkHints.candidate.origin")?;
            let ip: IpAddr = r.address("LinkHints.candidate.address")?;
            let port = r.u16("LinkHints.candidate.port")?;
            if let Some(origin) = CandidateOrigin::from_wire(origin)
                && port != 0
            {
                candidates.push(ExtraCandidate {
                    origin,
                    addr: SocketAddr::new(ip, port),
                });
            }
        }
        Ok(Self {
            nat: NatHint {
                mapping,
                step: if mapping == NatMapping::DependentSequential {
                    step
                } else {
                    0
                },
                last_port: (last_port != 0).then_some(last_port),
            },
            candidates,
        })
    }
}
