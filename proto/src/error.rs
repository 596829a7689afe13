//! Why a Connect frame could not be decoded.
//!
//! The decoder separates two outcomes that need different reactions:
//! [`DecodeError::Incomplete`] means "the frame is not fully buffered yet, read more
//! bytes and try again"; every other variant means the bytes can never become a valid
//! frame, so the session must be closed (the server answers "Invalid Packet").

/// A Connect frame could not be decoded.
///
/// Only [`DecodeError::Incomplete`] is recoverable (see [`DecodeError::is_incomplete`]).
/// `field` values name the packet field being read, e.g. `"PacketConnect.signature"`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The buffer holds a prefix of a frame that may still become valid: read more bytes.
    #[error("incomplete frame: more bytes are needed")]
    Incomplete,
    /// A VarInt ran past its 5-byte maximum.
    #[error("VarInt longer than 5 bytes")]
    VarIntTooLong,
    /// A 5-byte VarInt encodes a value that does not fit in 32 bits.
    #[error("VarInt value overflows u32")]
    VarIntOverflow,
    /// The frame length is 0 (a frame always holds at least the opcode).
    #[error("frame length is 0")]
    ZeroLength,
    /// The frame length exceeds [`crate::MAX_FRAME`]. For a length VarInt that is not
    /// fully buffered yet, `len` is the smallest length it could still encode.
    #[error("frame length {len} exceeds the maximum of {max} bytes")]
    FrameTooLarge {
        /// Declared length (opcode + payload), or its lower bound.
        len: u32,
        /// The limit, [`crate::MAX_FRAME`].
        max: usize,
    },
    /// The opcode is not one this version knows (0x0–0xD).
    #[error("unknown opcode {opcode:#04x}")]
    UnknownOpcode {
        /// The opcode byte received.
        opcode: u8,
    },
    /// The frame ended (by its declared length) in the middle of a field.
    #[error("frame ends inside field {field}")]
    Truncated {
        /// The field being read.
        field: &'static str,
    },
    /// A `String` is not valid UTF-8.
    #[error("field {field} is not valid UTF-8")]
    InvalidUtf8 {
        /// The field being read.
        field: &'static str,
    },
    /// An `Address` version byte is neither 4 nor 6.
    #[error("field {field} has address version {version}, expected 4 or 6")]
    InvalidAddressVersion {
        /// The field being read.
        field: &'static str,
        /// The version byte received.
        version: u8,
    },
    /// An `Int32` length prefix is negative.
    #[error("field {field} has negative length {len}")]
    NegativeLength {
        /// The field being read.
        field: &'static str,
        /// The length received.
        len: i32,
    },
    /// A length prefix (Int32 or VarInt) exceeds the field's limit.
    #[error("field {field} has length {len}, over the limit of {max}")]
    LengthTooLarge {
        /// The field being read.
        field: &'static str,
        /// The length received.
        len: u32,
        /// The field's limit.
        max: usize,
    },
    /// A relay id is all zeros, which means "no relay" and cannot name one.
    #[error("field {field} is the all-zero relay id")]
    InvalidRelayId {
        /// The field being read.
        field: &'static str,
    },
    /// A one-byte code (a presence status, a contact-list operation) has a value this
    /// version does not define.
    #[error("field {field} has value {value}, which is not defined")]
    InvalidCode {
        /// The field being read.
        field: &'static str,
        /// The byte received.
        value: u8,
    },
    /// A `bool` byte is neither 0 nor 1.
    #[error("field {field} has bool value {value}, expected 0 or 1")]
    InvalidBool {
        /// The field being read.
        field: &'static str,
        /// The byte received.
        value: u8,
    },
}

impl DecodeError {
    /// `true` when more bytes may complete the frame; any other error is fatal for the session.
    pub fn is_incomplete(&self) -> bool {
        matches!(self, Self::Incomplete)
    }
}
