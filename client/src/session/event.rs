//! What the session tells the rest of the client.

use std::fmt;

use chatr_proto::{
    DisconnectReason, Endpoint, LINK_SECRET_LEN, PresenceStatus, RelayId, UDP_TOKEN_LEN,
};
use uuid::Uuid;

use super::transport_error::TransportError;

/// An event surfaced by the session machine (and forwarded by its driver).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionEvent {
    /// Login succeeded (`PacketConnected`).
    Connected {
        /// Token for the UDP binding message (absent on servers without the extension).
        udp_token: Option<[u8; UDP_TOKEN_LEN]>,
    },
    /// The server answered our UDP binding: this is our public UDP endpoint.
    UdpBound {
        /// Source address and port the server saw on our UDP socket.
        observed: Endpoint,
        /// Source address and port the server sees on our TCP connection
        /// (absent from servers that send the short BindingResponse).
        tcp_observed: Option<Endpoint>,
    },
    /// The server stopped waiting for a binding response (old server, or UDP blocked).
    UdpBindingFailed,
    /// A peer asks for a link (`PacketConnectionRequest` received).
    IncomingRequest {
        /// The requester.
        peer: Uuid,
        /// The requester's private endpoint.
        private_endpoint: Endpoint,
        /// The requester's NAT and extra candidates (version 3).
        hints: Option<chatr_proto::LinkHints>,
    },
    /// A peer accepted our request (`PacketConnectionRequestAccept` received).
    Accepted {
        /// The accepter.
        peer: Uuid,
        /// The accepter's private endpoint.
        private_endpoint: Endpoint,
        /// The accepter's NAT and extra candidates (version 3).
        hints: Option<chatr_proto::LinkHints>,
    },
    /// Our request was denied, or the peer is not online.
    Denied {
        /// The peer that was asked.
        peer: Uuid,
    },
    /// The server's `PacketClientInfo` after an accept.
    ClientInfo {
        /// The other party.
        peer: Uuid,
        /// Its public endpoint (UDP-observed, else TCP-observed).
        public_endpoint: Endpoint,
        /// Its TCP-observed endpoint (extension).
        tcp_endpoint: Option<Endpoint>,
        /// Secret shared by both parties of this exchange (extension).
        link_secret: Option<[u8; LINK_SECRET_LEN]>,
        /// The relay the server keeps for this exchange (version 3).
        relay_id: Option<RelayId>,
    },
    /// The server ended a relay (version 3): the link that used it cannot any more.
    RelayClosed {
        /// The relay.
        relay: RelayId,
        /// The server's reason ("idle", "closed by peer", …).
        reason: String,
    },
    /// A mutual contact came online, changed status or went offline (version 3).
    Presence {
        /// The contact.
        peer: Uuid,
        /// Its status ([`PresenceStatus::Offline`]: gone, or it withdrew consent).
        status: PresenceStatus,
        /// Its status message.
        message: String,
    },
    /// The server acknowledged our latest presence packet: every contact not announced
    /// online by now is offline.
    PresenceSynced,
    /// The session ended; the driver reconnects unless told to stop.
    Disconnected {
        /// Why.
        reason: SessionEnd,
    },
}

/// Why a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionEnd {
    /// The server sent `PacketDisconnect` with this message.
    Server(String),
    /// `PacketConnected` did not arrive in time.
    LoginTimeout,
    /// The server sent nothing (not even a ping) for too long.
    IdleTimeout,
    /// The server broke the protocol (we sent "Invalid Packet").
    ProtocolViolation(String),
    /// The connection failed or was closed.
    Transport(TransportError),
    /// We closed it.
    Local,
}

impl SessionEnd {
    /// The defined reason the server gave, if it sent one of those messages.
    pub fn server_reason(&self) -> Option<DisconnectReason> {
        match self {
            Self::Server(message) => DisconnectReason::from_message(message),
            _ => None,
        }
    }

    /// The server refused our login signature ("Failed to verify!"): not
    /// registered, or registered with another key.
    pub fn is_login_rejected(&self) -> bool {
        self.server_reason() == Some(DisconnectReason::FailedToVerify)
    }

    /// Another session with our UUID is online ("Already connected!").
    pub fn is_already_connected(&self) -> bool {
        self.server_reason() == Some(DisconnectReason::AlreadyConnected)
    }
}

impl std::error::Error for SessionEnd {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Transport(err) => Some(err),
            _ => None,
        }
    }
}

impl fmt::Display for SessionEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Server(m) => write!(f, "server closed the session: {m}"),
            Self::LoginTimeout => f.write_str("login timed out"),
            Self::IdleTimeout => f.write_str("server stopped answering"),
            Self::ProtocolViolation(m) => write!(f, "server broke the protocol: {m}"),
            Self::Transport(m) => write!(f, "connection lost: {m}"),
            Self::Local => f.write_str("closed by us"),
        }
    }
}
