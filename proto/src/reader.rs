//! Reading the spec's data types from a payload, without panicking.
//!
//! A [`Reader`] walks a byte slice that holds one *complete* payload (the frame was
//! already delimited by its length), so running out of bytes is
//! [`DecodeError::Truncated`], never "incomplete". Multi-byte integers are big-endian.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use uuid::Uuid;

use crate::error::DecodeError;
use crate::varint::decode_varint;

/// A cursor over a complete payload.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader over `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> &'a [u8] {
        self.buf
    }

    /// `true` when every byte has been read.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Takes `n` raw bytes.
    ///
    /// # Errors
    /// [`DecodeError::Truncated`] when fewer than `n` bytes remain.
    pub fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let (head, tail) = self
            .buf
            .split_at_checked(n)
            .ok_or(DecodeError::Truncated { field })?;
        self.buf = tail;
        Ok(head)
    }

    /// Takes a fixed-size array of raw bytes.
    ///
    /// # Errors
    /// [`DecodeError::Truncated`] when fewer than `N` bytes remain.
    pub fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let (head, tail) = self
            .buf
            .split_first_chunk::<N>()
            .ok_or(DecodeError::Truncated { field })?;
        self.buf = tail;
        Ok(*head)
    }

    /// Reads a `bool` (0 or 1; anything else is invalid).
    ///
    /// # Errors
    /// [`DecodeError::Truncated`], [`DecodeError::InvalidBool`].
    pub fn bool(&mut self, field: &'static str) -> Result<bool, DecodeError> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            value => Err(DecodeError::InvalidBool { field, value }),
        }
    }

    /// Reads a `byte` (signed 8-bit).
    ///
    /// # Errors
    /// [`DecodeError::Truncated`].
    pub fn byte(&mut self, field: &'static str) -> Result<i8, DecodeError> {
        Ok(i8::from_be_bytes(self.array(field)?))
    }

    /// Reads a `uint8`.
    ///
    /// # Errors
    /// [`DecodeError::Truncated`].
    pub fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(u8::from_be_bytes(self.array(field)?))
    }

    /// Reads a big-endian `uint16` (used by the port extension).
    ///
    /// # Errors
    /// [`DecodeError::Truncated`].
    pub fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }

    /// Reads a big-endian `uint32`.
    ///
    /// # Errors
    /// [`DecodeError::Truncated`].
    pub fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    /// Reads a big-endian `Int32`.
    ///
    /// # Errors
    /// [`DecodeError::Truncated`].
    pub fn i32(&mut self, field: &'static str) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array(field)?))
    }

    /// Reads a big-endian `long` (signed 64-bit).
    ///
    /// # Errors
    /// [`DecodeError::Truncated`].
    pub fn i64(&mut self, field: &'static str) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.array(field)?))
    }

    /// Reads a `VarInt`.
    ///
    /// # Errors
    /// [`DecodeError::Truncated`] when the payload ends inside it,
    /// [`DecodeError::VarIntTooLong`], [`DecodeError::VarIntOverflow`].
    pub fn varint(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        let (value, used) = decode_varint(self.buf).map_err(|e| match e {
            DecodeError::Incomplete => DecodeError::Truncated { field },
            other => other,
        })?;
        self.take(used, field)?;
        Ok(value)
    }

    /// Reads a `UUID`: 16 bytes in RFC 4122 (big-endian) order.
    ///
    /// # Errors
    /// [`DecodeError::Truncated`].
    pub fn uuid(&mut self, field: &'static str) -> Result<Uuid, DecodeError> {
        Ok(Uuid::from_bytes(self.array(field)?))
    }

    /// Reads an `Int32`-length-prefixed byte array of at most `max` bytes.
    ///
    /// The length is checked against `max` before the bytes are looked at, so an
    /// over-limit length is [`DecodeError::LengthTooLarge`] even if the frame is short.
    ///
    /// # Errors
    /// [`DecodeError::Truncated`], [`DecodeError::NegativeLength`],
    /// [`DecodeError::LengthTooLarge`].
    pub fn bytes_i32(&mut self, field: &'static str, max: usize) -> Result<&'a [u8], DecodeError> {
        let len = self.i32(field)?;
        let len = u32::try_from(len).map_err(|_| DecodeError::NegativeLength { field, len })?;
        let n = checked_len(len, max, field)?;
        self.take(n, field)
    }

    /// Reads a `String`: VarInt byte length (at most `max`), then UTF-8.
    ///
    /// # Errors
    /// [`DecodeError::Truncated`], [`DecodeError::LengthTooLarge`],
    /// [`DecodeError::InvalidUtf8`], VarInt errors.
    pub fn string(&mut self, field: &'static str, max: usize) -> Result<&'a str, DecodeError> {
        let len = self.varint(field)?;
        let n = checked_len(len, max, field)?;
        let bytes = self.take(n, field)?;
        std::str::from_utf8(bytes).map_err(|_| DecodeError::InvalidUtf8 { field })
    }

    /// Reads an `Address`: version 4 then 4 bytes, or version 6 then 16 bytes.
    ///
    /// # Errors
    /// [`DecodeError::Truncated`], [`DecodeError::InvalidAddressVersion`].
    pub fn address(&mut self, field: &'static str) -> Result<IpAddr, DecodeError> {
        match self.u8(field)? {
            4 => Ok(IpAddr::V4(Ipv4Addr::from(self.array::<4>(field)?))),
            6 => Ok(IpAddr::V6(Ipv6Addr::from(self.array::<16>(field)?))),
            version => Err(DecodeError::InvalidAddressVersion { field, version }),
        }
    }
}

/// Converts a wire length to `usize`, enforcing the field limit.
fn checked_len(len: u32, max: usize, field: &'static str) -> Result<usize, DecodeError> {
    match usize::try_from(len) {
        Ok(n) if n <= max => Ok(n),
        _ => Err(DecodeError::LengthTooLarge { field, len, max }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_are_big_endian() {
        let mut r = Reader::new(&[
            0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e,
            0xff,
        ]);
        assert_eq!(r.u32("a").unwrap(), 0x0102_0304);
        assert_eq!(r.i64("b").unwrap(), 0x0506_0708_090a_0b0c);
        assert_eq!(r.u16("c").unwrap(), 0x0d0e);
        assert_eq!(r.byte("d").unwrap(), -1);
        assert!(r.is_empty());
        assert_eq!(r.u8("e"), Err(DecodeError::Truncated { field: "e" }));
    }

    #[test]
    fn bool_values() {
        let mut r = Reader::new(&[0, 1, 2]);
        assert!(!r.bool("f").unwrap());
        assert!(r.bool("f").unwrap());
        assert_eq!(
            r.bool("f"),
            Err(DecodeError::InvalidBool {
                field: "f",
                value: 2
            })
        );
    }

    #[test]
    fn byte_array_limits() {
        let mut r = Reader::new(&[0xff, 0xff, 0xff, 0xff]);
        assert_eq!(
            r.bytes_i32("s", 8),
            Err(DecodeError::NegativeLength {
                field: "s",
                len: -1
            })
        );
        let mut r = Reader::new(&[0x00, 0x00, 0x00, 0x09]);
        assert_eq!(
            r.bytes_i32("s", 8),
            Err(DecodeError::LengthTooLarge {
                field: "s",
                len: 9,
                max: 8
            })
        );
        let mut r = Reader::new(&[0x00, 0x00, 0x00, 0x02, 0xaa]);
        assert_eq!(
            r.bytes_i32("s", 8),
            Err(DecodeError::Truncated { field: "s" })
        );
        let mut r = Reader::new(&[0x00, 0x00, 0x00, 0x02, 0xaa, 0xbb]);
        assert_eq!(r.bytes_i32("s", 8).unwrap(), &[0xaa, 0xbb]);
    }

    #[test]
    fn string_checks() {
        let mut r = Reader::new(&[0x02, b'h', b'i']);
        assert_eq!(r.string("m", 8).unwrap(), "hi");
        let mut r = Reader::new(&[0x02, 0xc3, 0x28]);
        assert_eq!(
            r.string("m", 8),
            Err(DecodeError::InvalidUtf8 { field: "m" })
        );
        let mut r = Reader::new(&[0x09]);
        assert_eq!(
            r.string("m", 8),
            Err(DecodeError::LengthTooLarge {
                field: "m",
                len: 9,
                max: 8
            })
        );
        let mut r = Reader::new(&[0x80]);
        assert_eq!(r.string("m", 8), Err(DecodeError::Truncated { field: "m" }));
    }

    #[test]
    fn address_versions() {
        let mut r = Reader::new(&[4, 10, 0, 0, 1]);
        assert_eq!(
            r.address("a").unwrap(),
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))
        );
        let mut v6 = vec![6u8];
        v6.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        assert_eq!(
            Reader::new(&v6).address("a").unwrap(),
            IpAddr::V6(Ipv6Addr::LOCALHOST)
        );
        assert_eq!(
            Reader::new(&[5, 1, 2, 3, 4]).address("a"),
            Err(DecodeError::InvalidAddressVersion {
                field: "a",
                version: 5
            })
        );
        assert_eq!(
            Reader::new(&[6, 1, 2, 3, 4]).address("a"),
            Err(DecodeError::Truncated { field: "a" })
        );
    }
}
