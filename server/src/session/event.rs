//! Inputs a session receives from the hub (that is, from other sessions).
//!
//! Sessions never share state directly: session A's machine emits
//! [`super::Action::Forward`], the hub delivers it to session B's bounded queue
//! as [`HubEvent::Peer`], stamped with A's UUID and current endpoints, and B's
//! driver feeds it to B's machine.

use std::net::SocketAddr;

use chatr_proto::LinkHints;
use chatr_proto::{Endpoint, LINK_SECRET_LEN, RelayId};
use uuid::Uuid;

/// The addresses the server observed for a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PeerEndpoints {
    /// Source address of the session's TLS connection.
    pub(crate) tcp: SocketAddr,
    /// Source address of its last valid UDP binding message, if any.
    pub(crate) udp: Option<SocketAddr>,
    /// Whether the session speaks version 3 (may be relayed).
    pub(crate) v3: bool,
}

impl PeerEndpoints {
    /// The public endpoint announced in ClientInfo: the UDP mapping when the
    /// client bound one (the NAT maps UDP separately), else the TCP address.
    pub(crate) fn public(&self) -> Endpoint {
        Endpoint::new(self.udp.unwrap_or(self.tcp))
    }

    /// The TCP-observed endpoint.
    pub(crate) fn tcp(&self) -> Endpoint {
        Endpoint::new(self.tcp)
    }
}

/// A message from one session to another, relayed by the hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PeerEvent {
    /// The sender asks the receiver for a link (receiver's client gets a
    /// ConnectionRequest naming the sender).
    Request {
        /// The sender's private endpoint, as its client gave it.
        private_endpoint: Endpoint,
        /// The sender's NAT and extra candidates (version-3 senders only).
        hints: Option<LinkHints>,
    },
    /// The sender accepts the receiver's earlier request.
    Accepted {
        /// The sender's private endpoint, as its client gave it.
        private_endpoint: Endpoint,
        /// The sender's NAT and extra candidates (version-3 senders only).
        hints: Option<LinkHints>,
    },
    /// The sender denies the receiver's earlier request.
    Denied,
    /// The exchange completed: the receiver's client gets ClientInfo about the
    /// sender with this secret (the sender's client got the same secret).
    ClientInfo {
        /// Shared per-exchange secret for the hole-punching probes.
        link_secret: [u8; LINK_SECRET_LEN],
        /// The relay the server opened for this exchange, if it relays it.
        relay_id: Option<RelayId>,
    },
}

/// Everything the hub hands to a session machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HubEvent {
    /// A message from another logged-in session.
    Peer {
        /// The sending session's UUID (set by the hub, never by a client).
        from: Uuid,
        /// The sender's observed endpoints at the time of sending.
        endpoints: PeerEndpoints,
        /// What it says.
        event: PeerEvent,
    },
    /// Someone else is logging in with our UUID: ping our client now; answer
    /// [`super::Action::ProbeAnswered`] once it pongs.
    Probe,
    /// A forward we asked for could not be delivered (target offline or its
    /// queue full).
    Undeliverable {
        /// The intended receiver.
        to: Uuid,
        /// The message that was not delivered.
        event: PeerEvent,
    },
}

/// The hub's answer to [`super::Action::Claim`] / [`super::Action::TakeOver`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClaimOutcome {
    /// The UUID is ours now.
    Admitted,
    /// Another live session holds the UUID.
    Occupied,
}
