//! Relays whose two parties are on different nodes of a cluster (docs/CLUSTER.md).
//!
//! A relay lives on its *home* node: the initiator's, where the exchange completed
//! and [`super::Relay`]'s `open` ran with both parties' caps and buckets. The other
//! party's node keeps a [`RemoteLink`] for it (adopted when the ClientInfo naming the
//! relay reaches that party), and the two nodes pass datagrams over NATS as [`Hop`]s:
//!
//! - the remote party's datagrams (UDP from its bound endpoint, or `PacketRelayData` in
//!   its TLS session) go to the home node as [`HopKind::ToHome`], where they are
//!   admitted against the same buckets and caps as on one node and forwarded;
//! - what the home node forwards to the remote party goes as [`HopKind::ToParty`], and
//!   that party's node sends it over UDP or TLS exactly as it would locally;
//! - a `PacketRelayClose` from the remote party goes home as [`HopKind::Close`]; the home
//!   node's closes (idle, closed by peer) come back as [`HopKind::Closed`].
//!
//! A hop is binary (it carries QUIC packets at line rate): `kind u8 ‖ relay id ‖ party
//! UUID ‖ node id length u8 ‖ sending node id ‖ datagram`.
//!
//! Without the `cluster` feature nothing arrives from other nodes, so the receiving
//! half is unused there.
#![cfg_attr(not(feature = "cluster"), allow(dead_code))]

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use chatr_proto::{RELAY_ID_LEN, RelayId};
use uuid::Uuid;

use super::Transport;
use crate::metrics::RelayCloseReason;

/// What one hop between nodes carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HopKind {
    /// A datagram from the remote party (the hop's UUID), sent to the relay's home.
    ToHome(Transport),
    /// A datagram the home node forwards to the party (the hop's UUID) on the receiver.
    ToParty,
    /// The remote party (the hop's UUID) closed the relay.
    Close,
    /// The home node closed the relay, for this reason; tell the party (the hop's UUID).
    Closed(RelayCloseReason),
}

impl HopKind {
    fn to_wire(self) -> u8 {
        match self {
            Self::ToHome(Transport::Udp) => 1,
            Self::ToHome(Transport::Tls) => 2,
            Self::ToParty => 3,
            Self::Close => 4,
            Self::Closed(RelayCloseReason::Idle) => 5,
            Self::Closed(RelayCloseReason::ClosedByPeer) => 6,
        }
    }

    fn from_wire(b: u8) -> Option<Self> {
        Some(match b {
            1 => Self::ToHome(Transport::Udp),
            2 => Self::ToHome(Transport::Tls),
            3 => Self::ToParty,
            4 => Self::Close,
            5 => Self::Closed(RelayCloseReason::Idle),
            6 => Self::Closed(RelayCloseReason::ClosedByPeer),
            _ => return None,
        })
    }
}

/// One parsed hop, borrowing its datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Hop<'a> {
    pub(crate) kind: HopKind,
    pub(crate) id: RelayId,
    /// The party the hop is from (`ToHome`, `Close`) or for (`ToParty`, `Closed`).
    pub(crate) party: Uuid,
    /// The node that sent it.
    pub(crate) node: &'a str,
    pub(crate) datagram: &'a [u8],
}

impl<'a> Hop<'a> {
    /// Encodes a hop.
    pub(crate) fn encode(
        kind: HopKind,
        id: &RelayId,
        party: &Uuid,
        node: &str,
        datagram: &[u8],
    ) -> bytes::Bytes {
        let node = node
            .as_bytes()
            .get(..usize::from(u8::MAX))
            .unwrap_or(node.as_bytes());
        let mut out = Vec::with_capacity(1 + RELAY_ID_LEN + 16 + 1 + node.len() + datagram.len());
        out.push(kind.to_wire());
        out.extend_from_slice(id.as_bytes());
        out.extend_from_slice(party.as_bytes());
        out.push(u8::try_from(node.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(node);
        out.extend_from_slice(datagram);
        out.into()
    }

    /// Parses a hop; `None` for anything malformed.
    pub(crate) fn parse(bytes: &'a [u8]) -> Option<Self> {
        let (&kind, rest) = bytes.split_first()?;
        let kind = HopKind::from_wire(kind)?;
        let (id, rest) = rest.split_at_checked(RELAY_ID_LEN)?;
        let id = RelayId::from_wire(id.try_into().ok()?)?;
        let (party, rest) = rest.split_at_checked(16)?;
        let party = Uuid::from_slice(party).ok()?;
        let (&node_len, rest) = rest.split_first()?;
        let (node, datagram) = rest.split_at_checked(usize::from(node_len))?;
        let node = std::str::from_utf8(node).ok()?;
        Some(Self {
            kind,
            id,
            party,
            node,
            datagram,
        })
    }
}

/// A relay whose home is another node, as the node of its local party keeps it.
#[derive(Debug)]
pub(crate) struct RemoteLink {
    /// The node the relay lives on.
    pub(crate) home: String,
    /// The party on this node.
    pub(crate) party: Uuid,
    /// The transport the party last sent on (`Transport::to_wire`, 0 = none yet).
    via: AtomicU8,
    last_active_ms: AtomicU64,
}

impl RemoteLink {
    pub(crate) fn new(home: String, party: Uuid, now_ms: u64) -> Self {
        Self {
            home,
            party,
            via: AtomicU8::new(0),
            last_active_ms: AtomicU64::new(now_ms),
        }
    }

    /// The transport the party last sent on.
    pub(crate) fn via(&self) -> Option<Transport> {
        Transport::from_wire(self.via.load(Ordering::Relaxed))
    }

    /// The party sent a datagram over `transport` at `now_ms`.
    pub(crate) fn sent(&self, transport: Transport, now_ms: u64) {
        self.via.store(transport.to_wire(), Ordering::Relaxed);
        self.touch(now_ms);
    }

    /// Something passed at `now_ms`.
    pub(crate) fn touch(&self, now_ms: u64) {
        self.last_active_ms.fetch_max(now_ms, Ordering::Relaxed);
    }

    pub(crate) fn last_active_ms(&self) -> u64 {
        self.last_active_ms.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hops_round_trip_and_malformed_ones_are_refused() {
        let id = RelayId([3; RELAY_ID_LEN]);
        let party = Uuid::from_bytes([4; 16]);
        for kind in [
            HopKind::ToHome(Transport::Udp),
            HopKind::ToHome(Transport::Tls),
            HopKind::ToParty,
            HopKind::Close,
            HopKind::Closed(RelayCloseReason::Idle),
            HopKind::Closed(RelayCloseReason::ClosedByPeer),
        ] {
            let bytes = Hop::encode(kind, &id, &party, "0a0b0c0d", b"quic");
            let hop = Hop::parse(&bytes).unwrap();
            assert_eq!(
                hop,
                Hop {
                    kind,
                    id,
                    party,
                    node: "0a0b0c0d",
                    datagram: b"quic",
                }
            );
        }
        let good = Hop::encode(HopKind::ToParty, &id, &party, "n", b"");
        for cut in 0..good.len() {
            assert!(Hop::parse(&good[..cut]).is_none(), "cut at {cut}");
        }
        let mut bad = good.to_vec();
        bad[0] = 99;
        assert!(Hop::parse(&bad).is_none());
        let zero_id = Hop::encode(
            HopKind::ToParty,
            &RelayId([0; RELAY_ID_LEN]),
            &party,
            "n",
            b"",
        );
        assert!(Hop::parse(&zero_id).is_none());
    }
}
