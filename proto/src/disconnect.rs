//! The messages a [`PacketDisconnect`] carries: the spec's four, and this
//! project's extensions. Both sides name them through [`DisconnectReason`], so
//! the exact bytes (`"Failed to verify!"` has its `!`, `"Time out"` its space)
//! are written down once.

use std::fmt;

use crate::PacketDisconnect;

/// A reason with a defined wire message. Messages are compared byte for byte;
/// anything else a peer sends is just text ([`DisconnectReason::from_message`]
/// gives `None`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DisconnectReason {
    /// Spec: a packet that is not allowed here, or a frame that cannot be decoded.
    InvalidPacket,
    /// Spec: unknown UUID or bad login signature.
    FailedToVerify,
    /// Spec: the UUID already has a live session.
    AlreadyConnected,
    /// Spec: no matching pong in time.
    TimeOut,
    /// Extension: the server is stopping.
    ServerShuttingDown,
    /// Extension: an admin removed this identity from the registry.
    IdentityRemoved,
    /// Extension: the client is stopping (client → server; the server ignores the text).
    ClientShuttingDown,
    /// Extension (version 3): the client sent presence packets faster than the server's
    /// limit allows.
    TooManyPresenceUpdates,
}

impl DisconnectReason {
    /// Every reason, spec ones first.
    pub const ALL: [DisconnectReason; 8] = [
        Self::InvalidPacket,
        Self::FailedToVerify,
        Self::AlreadyConnected,
        Self::TimeOut,
        Self::ServerShuttingDown,
        Self::IdentityRemoved,
        Self::ClientShuttingDown,
        Self::TooManyPresenceUpdates,
    ];

    /// The exact message on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::InvalidPacket => "Invalid Packet",
            Self::FailedToVerify => "Failed to verify!",
            Self::AlreadyConnected => "Already connected!",
            Self::TimeOut => "Time out",
            Self::ServerShuttingDown => "Server shutting down",
            Self::IdentityRemoved => "Identity removed",
            Self::ClientShuttingDown => "Client shutting down",
            Self::TooManyPresenceUpdates => "Too many presence updates",
        }
    }

    /// The reason whose message is exactly `message`, if any.
    pub fn from_message(message: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == message)
    }

    /// Whether the spec defines it (the rest are extensions).
    pub const fn is_spec(self) -> bool {
        matches!(
            self,
            Self::InvalidPacket | Self::FailedToVerify | Self::AlreadyConnected | Self::TimeOut
        )
    }
}

impl fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<DisconnectReason> for PacketDisconnect {
    fn from(reason: DisconnectReason) -> Self {
        PacketDisconnect::new(reason.as_str())
    }
}

impl PacketDisconnect {
    /// The defined reason this packet carries, if its message is one.
    pub fn reason(&self) -> Option<DisconnectReason> {
        DisconnectReason::from_message(&self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_the_spec_bytes_and_round_trip() {
        assert_eq!(DisconnectReason::InvalidPacket.as_str(), "Invalid Packet");
        assert_eq!(
            DisconnectReason::FailedToVerify.as_str(),
            "Failed to verify!"
        );
        assert_eq!(
            DisconnectReason::AlreadyConnected.as_str(),
            "Already connected!"
        );
        assert_eq!(DisconnectReason::TimeOut.as_str(), "Time out");
        assert_eq!(
            DisconnectReason::ServerShuttingDown.as_str(),
            "Server shutting down"
        );
        assert_eq!(
            DisconnectReason::IdentityRemoved.as_str(),
            "Identity removed"
        );
        assert_eq!(
            DisconnectReason::ClientShuttingDown.as_str(),
            "Client shutting down"
        );
        for reason in DisconnectReason::ALL {
            assert_eq!(
                DisconnectReason::from_message(reason.as_str()),
                Some(reason)
            );
            assert_eq!(PacketDisconnect::from(reason).reason(), Some(reason));
        }
        let spec: Vec<_> = DisconnectReason::ALL
            .into_iter()
            .filter(|r| r.is_spec())
            .collect();
        assert_eq!(spec.len(), 4);
    }

    #[test]
    fn near_misses_are_just_text() {
        for message in [
            "Failed to verify",
            "failed to verify!",
            "Time out ",
            "",
            "Invalid packet",
        ] {
            assert_eq!(DisconnectReason::from_message(message), None, "{message:?}");
        }
    }
}
