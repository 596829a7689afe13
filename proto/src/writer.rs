//! Writing the spec's data types, big-endian. Infallible: every value we hold fits
//! its wire type (lengths are clamped by the packet encoders to the limits).

use std::net::IpAddr;

use uuid::Uuid;

use crate::varint::encode_varint;

/// Appends wire-encoded values to a byte vector.
#[derive(Debug)]
pub struct Writer<'a> {
    out: &'a mut Vec<u8>,
}

impl<'a> Writer<'a> {
    /// A writer appending to `out`.
    pub fn new(out: &'a mut Vec<u8>) -> Self {
        Self { out }
    }

    /// Writes raw bytes.
    pub fn raw(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }

    /// Writes a `bool` as 0 or 1.
    pub fn bool(&mut self, v: bool) {
        self.out.push(u8::from(v));
    }

    /// Writes a `byte` (signed 8-bit).
    pub fn byte(&mut self, v: i8) {
        self.raw(&v.to_be_bytes());
    }

    /// Writes a `uint8`.
    pub fn u8(&mut self, v: u8) {
        self.out.push(v);
    }

    /// Writes a big-endian `uint16`.
    pub fn u16(&mut self, v: u16) {
        self.raw(&v.to_be_bytes());
    }

    /// Writes a big-endian `uint32`.
    pub fn u32(&mut self, v: u32) {
        self.raw(&v.to_be_bytes());
    }

    /// Writes a big-endian `Int32`.
    pub fn i32(&mut self, v: i32) {
        self.raw(&v.to_be_bytes());
    }

    /// Writes a big-endian `long`.
    pub fn i64(&mut self, v: i64) {
        self.raw(&v.to_be_bytes());
    }

    /// Writes a `VarInt`.
    pub fn varint(&mut self, v: u32) {
        encode_varint(v, self.out);
    }

    /// Writes a `UUID` in RFC 4122 byte order.
    pub fn uuid(&mut self, v: &Uuid) {
        self.raw(v.as_bytes());
    }

    /// Writes an `Int32`-length-prefixed byte array.
    ///
    /// `bytes` must be at most `i32::MAX` long (callers clamp to the field limit first).
    pub fn bytes_i32(&mut self, bytes: &[u8]) {
        self.i32(i32::try_from(bytes.len()).unwrap_or(i32::MAX));
        self.raw(bytes);
    }

    /// Writes a `String`: VarInt byte length then the UTF-8 bytes.
    ///
    /// `s` must be at most `u32::MAX` bytes (callers clamp to the field limit first).
    pub fn string(&mut self, s: &str) {
        self.varint(u32::try_from(s.len()).unwrap_or(u32::MAX));
        self.raw(s.as_bytes());
    }

    /// Writes an `Address`: version byte (4 or 6) then the address bytes.
    pub fn address(&mut self, ip: &IpAddr) {
        match ip {
            IpAddr::V4(v4) => {
                self.u8(4);
                self.raw(&v4.octets());
            }
            IpAddr::V6(v6) => {
                self.u8(6);
                self.raw(&v6.octets());
            }
        }
    }
}

/// Encoded length of an `Address`.
pub(crate) fn address_len(ip: &IpAddr) -> usize {
    match ip {
        IpAddr::V4(_) => 5,
        IpAddr::V6(_) => 17,
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn writes_big_endian_types() {
        let mut out = Vec::new();
        let mut w = Writer::new(&mut out);
        w.bool(true);
        w.byte(-2);
        w.u16(0x0102);
        w.u32(0x0304_0506);
        w.i64(-1);
        w.string("é");
        w.bytes_i32(&[9]);
        w.address(&IpAddr::V4(Ipv4Addr::new(1, 2, 3, 4)));
        assert_eq!(
            out,
            [
                0x01, 0xfe, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                0xff, 0xff, 0x02, 0xc3, 0xa9, 0x00, 0x00, 0x00, 0x01, 0x09, 0x04, 0x01, 0x02, 0x03,
                0x04
            ]
        );
    }
}
