//! Which way a datagram to the peer goes: one of its direct addresses, or the relay.

use std::fmt;
use std::net::SocketAddr;

/// How a datagram reaches the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RelayVia {
    /// Wrapped in `00 'C' 'H' 'R' 30 ‖ relay id` to the Connect server's UDP port.
    Udp,
    /// As `PacketRelayData` inside the Connect TLS session (for networks that block UDP).
    Tls,
}

/// One path to the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PathId {
    /// Straight to this address of the peer, from our UDP socket.
    Direct(SocketAddr),
    /// Through the Connect server's relay.
    Relay(RelayVia),
}

impl PathId {
    /// Whether this path goes through the relay.
    pub fn is_relay(&self) -> bool {
        matches!(self, Self::Relay(_))
    }
}

impl fmt::Display for PathId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Direct(addr) => write!(f, "direct {addr}"),
            Self::Relay(RelayVia::Udp) => f.write_str("UDP relay"),
            Self::Relay(RelayVia::Tls) => f.write_str("TLS relay"),
        }
    }
}

/// What a user is told about the path in use (reports, `chatr status`, banners).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PathClass {
    /// Directly, inside one LAN.
    DirectLan,
    /// Directly, across the internet (through the NATs).
    DirectPublic,
    /// Relayed by the Connect server over UDP.
    RelayUdp,
    /// Relayed by the Connect server inside its TLS connection.
    RelayTls,
}

impl PathClass {
    /// Stable name, as in `--report` (`"direct-lan"`, `"direct-public"`, `"relay-udp"`,
    /// `"relay-tls"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DirectLan => "direct-lan",
            Self::DirectPublic => "direct-public",
            Self::RelayUdp => "relay-udp",
            Self::RelayTls => "relay-tls",
        }
    }

    /// Words for a banner: "direct (LAN)", "relayed over TLS", …
    pub fn describe(self) -> &'static str {
        match self {
            Self::DirectLan => "direct (LAN)",
            Self::DirectPublic => "direct (internet)",
            Self::RelayUdp => "relayed by the server (UDP)",
            Self::RelayTls => "relayed by the server (inside TLS)",
        }
    }

    /// Whether the server relays this path.
    pub fn is_relayed(self) -> bool {
        matches!(self, Self::RelayUdp | Self::RelayTls)
    }
}

impl fmt::Display for PathClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the socket sends each datagram of a link: to `primary`, and during set-up
/// also a copy to each of `extra` (QUIC drops the duplicates), so the first packets
/// need not wait for a decision on which path works.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SendPlan {
    /// The path that carries the link; `None` = nothing to send on (yet).
    pub primary: Option<PathId>,
    /// Paths that get a copy too.
    pub extra: Vec<PathId>,
}

impl SendPlan {
    /// Every path a datagram goes on, primary first.
    pub fn paths(&self) -> impl Iterator<Item = PathId> + '_ {
        self.primary
            .iter()
            .copied()
            .chain(self.extra.iter().copied())
    }
}
