//! Room ids: 16 bytes derived from the creator's identity and a random nonce, so a
//! genesis record can only name the room it created (`record::Genesis::room_id`).

use std::fmt;

/// Identifies one room everywhere (the name is only a label and may repeat).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomId(pub [u8; 16]);

impl RoomId {
    /// The id's bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// Lowercase hex, 32 characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 32 hex characters.
    pub fn from_hex(s: &str) -> Option<Self> {
        let bytes = hex::decode(s.trim()).ok()?;
        Some(Self(bytes.try_into().ok()?))
    }

    /// The first 8 hex characters, to tell rooms with the same name apart.
    pub fn short(&self) -> String {
        self.to_hex().chars().take(8).collect()
    }
}

impl fmt::Display for RoomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for RoomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RoomId({})", self.short())
    }
}
