//! Presence of mutual contacts (version 3, opcodes 0xB–0xD).
//!
//! A client tells the server whom it consents to share presence with
//! ([`PacketPresenceContacts`], its contact list, in batches) and its own status
//! ([`PacketPresenceStatus`]); the server tells it when a *mutual* contact comes online,
//! changes status or goes offline ([`PacketPresence`]). "Mutual" is the whole privacy
//! rule: the server reveals B to A only while A's list names B **and** B's list names A,
//! so listing a stranger reveals nothing. `docs/PROTOCOL.md` §5 has the byte layouts and
//! §13 the server's rules.

use uuid::Uuid;

/// The most UUIDs one [`PacketPresenceContacts`] carries (16 bytes each: 3202 bytes,
/// within [`crate::MAX_FRAME`]). Longer lists are sent in several packets.
pub const MAX_PRESENCE_BATCH: usize = 200;

/// The longest status message, in bytes of UTF-8 (longer is invalid on the wire;
/// encoders cut at a character boundary).
pub const MAX_STATUS_MESSAGE: usize = 256;

/// A status as the Enclave protocol numbers it (one byte on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub enum PresenceStatus {
    /// `0`: offline (from a client: appear offline to every contact).
    #[default]
    Offline,
    /// `1`: at the computer and willing to chat.
    Available,
    /// `2`: idle or away.
    Away,
    /// `3`: busy; do not expect an answer.
    Busy,
}

impl PresenceStatus {
    /// The byte on the wire.
    pub fn to_byte(self) -> u8 {
        match self {
            Self::Offline => 0,
            Self::Available => 1,
            Self::Away => 2,
            Self::Busy => 3,
        }
    }

    /// Parses the byte; `None` for values this version does not know.
    pub fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            0 => Some(Self::Offline),
            1 => Some(Self::Available),
            2 => Some(Self::Away),
            3 => Some(Self::Busy),
            _ => None,
        }
    }

    /// A lowercase word for people and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Offline => "offline",
            Self::Available => "available",
            Self::Away => "away",
            Self::Busy => "busy",
        }
    }

    /// Whether this says the contact is online (any status but offline).
    pub fn is_online(self) -> bool {
        self != Self::Offline
    }
}

impl std::fmt::Display for PresenceStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a [`PacketPresenceContacts`] does with its UUIDs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ContactsOp {
    /// `0`: consent to share presence with these contacts (and ask for theirs).
    Add,
    /// `1`: withdraw that consent.
    Remove,
}

impl ContactsOp {
    /// The byte on the wire.
    pub fn to_byte(self) -> u8 {
        match self {
            Self::Add => 0,
            Self::Remove => 1,
        }
    }

    /// Parses the byte; `None` for values this version does not know.
    pub fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            0 => Some(Self::Add),
            1 => Some(Self::Remove),
            _ => None,
        }
    }
}

/// Opcode 0xB, client → server (version 3): add UUIDs to, or remove them from, the
/// list of contacts this session shares presence with. A session starts with an empty
/// list; a client sends its whole list after login, [`MAX_PRESENCE_BATCH`] at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacketPresenceContacts {
    /// Add or remove.
    pub op: ContactsOp,
    /// At most [`MAX_PRESENCE_BATCH`] UUIDs (encoders cut longer lists).
    pub contacts: Vec<Uuid>,
}

/// Opcode 0xC, client → server (version 3): this session's status, as its mutual
/// contacts will see it. Until a client sends one it counts as available with no message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacketPresenceStatus {
    /// The status ([`PresenceStatus::Offline`]: appear offline).
    pub status: PresenceStatus,
    /// Free text, at most [`MAX_STATUS_MESSAGE`] bytes.
    pub message: String,
}

/// Opcode 0xD, server → client (version 3): a mutual contact's presence changed (or,
/// with the client's own UUID, the server's acknowledgement of its latest presence
/// packet: everything about its contacts up to that packet has been sent before it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacketPresence {
    /// The contact (or the receiver itself, for the acknowledgement).
    pub uuid: Uuid,
    /// Its status; [`PresenceStatus::Offline`] when it went offline or withdrew consent.
    pub status: PresenceStatus,
    /// Its status message (empty when offline).
    pub message: String,
}
