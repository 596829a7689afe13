//! The spec's `VarInt`: protobuf unsigned LEB128 of a `u32`, 1 to 5 bytes.
//!
//! Seven value bits per byte, least significant group first; the high bit says
//! "another byte follows". A sixth byte, or a fifth byte carrying bits above bit 31,
//! is invalid. Non-minimal encodings (e.g. `80 00` for 0) are accepted, as protobuf
//! does; the encoder always writes the minimal form.

use integer_encoding::VarInt;

use crate::error::DecodeError;

/// Maximum encoded length of a VarInt, in bytes.
pub const MAX_VARINT_LEN: usize = 5;

/// Decodes a VarInt at the start of `buf`, returning the value and the bytes used.
///
/// # Errors
/// [`DecodeError::Incomplete`] when `buf` ends before the last byte (fewer than 5 bytes
/// seen, all with the continuation bit), [`DecodeError::VarIntTooLong`] when the fifth
/// byte has the continuation bit, [`DecodeError::VarIntOverflow`] when the value does
/// not fit in a `u32`.
pub fn decode_varint(buf: &[u8]) -> Result<(u32, usize), DecodeError> {
    let mut value: u32 = 0;
    for (i, &byte) in buf.iter().take(MAX_VARINT_LEN).enumerate() {
        let bits = u32::from(byte & 0x7f);
        if i == MAX_VARINT_LEN - 1 {
            if byte & 0x80 != 0 {
                return Err(DecodeError::VarIntTooLong);
            }
            // The fifth byte holds bits 28..35; only 4 of them fit in a u32.
            if bits > 0x0f {
                return Err(DecodeError::VarIntOverflow);
            }
        }
        value |= bits << (7 * i);
        if byte & 0x80 == 0 {
            return Ok((value, i + 1));
        }
    }
    Err(DecodeError::Incomplete)
}

/// Appends the minimal VarInt encoding of `value` to `out`.
pub fn encode_varint(value: u32, out: &mut Vec<u8>) {
    let mut tmp = [0u8; MAX_VARINT_LEN];
    let n = value.encode_var(&mut tmp);
    out.extend_from_slice(tmp.get(..n).unwrap_or(&tmp));
}

/// Length in bytes of the minimal VarInt encoding of `value` (1 to 5).
pub fn varint_len(value: u32) -> usize {
    value.required_space()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        let cases: &[(u32, &[u8])] = &[
            (0, &[0x00]),
            (1, &[0x01]),
            (127, &[0x7f]),
            (128, &[0x80, 0x01]),
            (300, &[0xac, 0x02]),
            (4096, &[0x80, 0x20]),
            (u32::MAX, &[0xff, 0xff, 0xff, 0xff, 0x0f]),
        ];
        for &(value, bytes) in cases {
            let mut out = Vec::new();
            encode_varint(value, &mut out);
            assert_eq!(out, bytes, "encode {value}");
            assert_eq!(varint_len(value), bytes.len());
            assert_eq!(
                decode_varint(bytes),
                Ok((value, bytes.len())),
                "decode {value}"
            );
        }
    }

    #[test]
    fn non_minimal_is_accepted() {
        assert_eq!(decode_varint(&[0x80, 0x00]), Ok((0, 2)));
    }

    #[test]
    fn six_bytes_is_too_long() {
        assert_eq!(
            decode_varint(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x00]),
            Err(DecodeError::VarIntTooLong)
        );
    }

    #[test]
    fn overflow_is_rejected() {
        assert_eq!(
            decode_varint(&[0xff, 0xff, 0xff, 0xff, 0x10]),
            Err(DecodeError::VarIntOverflow)
        );
    }

    #[test]
    fn prefix_is_incomplete() {
        assert_eq!(decode_varint(&[]), Err(DecodeError::Incomplete));
        assert_eq!(decode_varint(&[0x80, 0x80]), Err(DecodeError::Incomplete));
    }

    #[test]
    fn agrees_with_integer_encoding_for_valid_input() {
        for value in [
            0u32,
            5,
            200,
            16_383,
            16_384,
            1 << 21,
            (1 << 28) - 1,
            1 << 28,
            u32::MAX,
        ] {
            let bytes = value.encode_var_vec();
            assert_eq!(u32::decode_var(&bytes), Some((value, bytes.len())));
            assert_eq!(decode_varint(&bytes), Ok((value, bytes.len())));
        }
    }
}
