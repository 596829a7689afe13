//! Size limits of the wire format. The spec sets none; these are ours (see `docs/PROTOCOL.md`).
//!
//! They are checked *before* any buffer is allocated or awaited, so a hostile peer can
//! make us hold at most `MAX_FRAME` + 5 bytes per session.

/// Maximum frame length: the value of the length VarInt (opcode + payload), in bytes.
///
/// The largest spec packet is under 100 bytes; the largest packet we can encode is a
/// [`crate::PacketConnect`] with a [`MAX_BYTE_ARRAY_LEN`]-byte signature (1049 bytes).
pub const MAX_FRAME: usize = 4096;

/// Maximum byte length of a `String` field (e.g. a disconnect reason).
pub const MAX_STRING_LEN: usize = 1024;

/// Maximum length of an `Int32`-length-prefixed byte array (e.g. a signature; ed25519
/// signatures are 64 bytes).
pub const MAX_BYTE_ARRAY_LEN: usize = 1024;
