//! The application codes a peer link closes with (QUIC `CONNECTION_CLOSE` and
//! stream resets), shared by the link and its streams.

use quinn::VarInt;

/// Application close codes of a peer link (QUIC `CONNECTION_CLOSE` / stream reset codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseCode {
    /// `0`: the user is done; nothing went wrong.
    Normal,
    /// `1`: the responder expected another key from this initiator.
    KeyMismatch,
    /// `2`: the link (or stream) is refused by policy.
    Refused,
    /// `3`: the peer broke the link protocol.
    Protocol,
}

impl CloseCode {
    /// The code on the wire.
    pub fn to_varint(self) -> VarInt {
        VarInt::from_u32(match self {
            Self::Normal => 0,
            Self::KeyMismatch => 1,
            Self::Refused => 2,
            Self::Protocol => 3,
        })
    }

    /// Parses a code from the wire; `None` for codes this version does not know.
    pub fn from_varint(code: VarInt) -> Option<Self> {
        match code.into_inner() {
            0 => Some(Self::Normal),
            1 => Some(Self::KeyMismatch),
            2 => Some(Self::Refused),
            3 => Some(Self::Protocol),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_codes_round_trip() {
        for code in [
            CloseCode::Normal,
            CloseCode::KeyMismatch,
            CloseCode::Refused,
            CloseCode::Protocol,
        ] {
            assert_eq!(CloseCode::from_varint(code.to_varint()), Some(code));
        }
        assert_eq!(CloseCode::KeyMismatch.to_varint().into_inner(), 1);
        assert_eq!(CloseCode::from_varint(VarInt::from_u32(99)), None);
    }
}
