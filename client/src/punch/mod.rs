//! UDP hole punching between two clients of one brokered exchange (sans-IO).
//!
//! # Where this sits in the flow
//! 1. The initiator sends PacketConnectionRequest (with its private endpoint); the
//!    responder answers PacketConnectionRequestAccept (with its own).
//! 2. The server sends each side PacketClientInfo: the other's UDP-observed public
//!    endpoint, its TCP-observed endpoint and a fresh 32-byte `link_secret` shared by
//!    exactly these two parties.
//! 3. Each side builds the peer's [`Candidate`]s ([`Candidate::from_endpoints`]) and starts
//!    a [`Punch`] on the UDP socket that shares the port of its TCP connection.
//! 4. Both send authenticated Probes to every candidate and acknowledge the other's;
//!    a path is validated when an acknowledgement returns from the address probed. NATs
//!    open for the peer because each side's outgoing probes create the mapping and
//!    filter entry its NAT needs to let the other side's probes in; a symmetric NAT's
//!    fresh port is learned from the peer's probes (peer-reflexive candidate).
//! 5. The initiator nominates the best validated path (LAN preferred) with an
//!    authenticated Nominate; the responder acknowledges. Both report the agreed path
//!    and the QUIC link (initiator = client) starts on it. The initiator's driver may
//!    start QUIC as soon as [`PunchEvent::Nominating`] appears (the path is validated,
//!    and the handshake proves it again) instead of waiting a round trip for the
//!    acknowledgement; it keeps feeding the machine, which keeps nominating until
//!    acknowledged, until [`Punch::is_closed`].
//!
//! Datagram layout, key derivation, exchange id, schedule and the NAT pairs that work:
//! `docs/PROTOCOL.md`, section 10 "Hole-punching probes (client ↔ client)".
//!
//! The machine never reads the clock or touches a socket; see [`Punch`] for the calling
//! order its driver follows. It is tested in `client/tests/punch_*.rs` over a
//! deterministic simulated network with NAT models.
#![deny(clippy::indexing_slicing)]

mod candidate;
mod config;
mod event;
#[cfg(test)]
mod hard_nat_tests;
mod local_net;
mod machine;
#[cfg(test)]
mod machine_tests;
mod spray;
mod wire;

pub use candidate::{Candidate, CandidateKind, PathKind, dedup};
pub use config::PunchConfig;
pub use event::{FailReason, PunchEvent, PunchFailure, PunchSuccess, Transmit};
pub use local_net::LocalNet;
pub use machine::{Punch, PunchStats, Role};
pub use wire::{EXCHANGE_ID_LEN, ExchangeId, PROBE_LEN, exchange_id_of, is_probe};
// The path manager (`crate::path`) keeps probing paths after the punch, with the same
// authenticated datagrams.
pub(crate) use wire::{Probe, ProbeKeys, ProbeType};
