//! Outputs of the session machine, executed in order by the driver.

use chatr_proto::{ContactsOp, Packet, PacketRelayData, PresenceStatus, UDP_TOKEN_LEN};
use uuid::Uuid;

use super::event::PeerEvent;

/// Which packet layout a session's client understands, decided by the
/// signature that verified at login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// The spec as written (version 1, or an unbound signature): no trailing
    /// extension fields are ever sent to this client.
    Spec,
    /// Version 2 with a channel-bound signature: ports, `udp_token`,
    /// `tcp_endpoint` and `link_secret` are sent.
    Extended,
    /// Version 3 (or later) with a channel-bound signature: everything of version 2,
    /// plus the session parameters in PacketConnected, relay ids in ClientInfo, the
    /// relay packets, and authenticated UDP bindings.
    Version3,
}

impl Layout {
    /// Whether the client gets the extension fields (version 2 or 3).
    pub fn is_extended(self) -> bool {
        matches!(self, Self::Extended | Self::Version3)
    }

    /// Whether the client speaks version 3.
    pub fn is_version3(self) -> bool {
        matches!(self, Self::Version3)
    }
}

/// What a session asks the hub for when its login verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Claim {
    /// The verified UUID.
    pub(crate) uuid: Uuid,
    /// The token the client will send in its UDP binding message (extended
    /// layout only).
    pub(crate) udp_token: Option<[u8; UDP_TOKEN_LEN]>,
    /// The client's layout.
    pub(crate) layout: Layout,
}

/// One thing the driver must do for the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// Write this packet to our client.
    Send(Packet),
    /// Register the session in the hub under `claim.uuid`; answer with
    /// `handle_claim`.
    Claim(Claim),
    /// The UUID is taken: probe the session holding it; answer with
    /// `handle_probe_result`.
    Probe {
        /// The contested UUID.
        uuid: Uuid,
    },
    /// The probed session did not answer: replace it with us; answer with
    /// `handle_claim`.
    TakeOver(Claim),
    /// Deliver a message to another session through the hub. A failure comes
    /// back as [`super::HubEvent::Undeliverable`].
    Forward {
        /// The receiving session.
        to: Uuid,
        /// The message.
        event: PeerEvent,
    },
    /// Our client answered the probe ping: tell the probing newcomer(s).
    ProbeAnswered,
    /// Our (version-3) client sent a datagram for one of its relays: forward it.
    Relay(PacketRelayData),
    /// Our (version-3) client changed what it shares: apply it to the presence registry.
    Presence(PresenceAction),
    /// Flush what was sent, then close the connection.
    Close,
}

/// A presence change our client asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PresenceAction {
    /// Add to or remove from our consent list.
    Contacts(ContactsOp, Vec<Uuid>),
    /// Our status.
    Status(PresenceStatus, String),
}
