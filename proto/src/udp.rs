//! UDP control datagrams on the client's UDP socket (an extension to the spec).
//!
//! Three kinds of datagram share one UDP socket and are told apart by their first bytes:
//! - **Chatr control** (this module): `00 'C' 'H' 'R'` ([`UDP_MAGIC`]), then a type byte,
//!   then the type's body. Types 0x01/0x02 are the binding exchange below; 0x10–0x1F
//!   ([`PUNCH_TYPES`]) are hole-punching probes, defined by the client's punch module.
//! - **QUIC**: bit 0x40 of byte 0 is set (we disable quinn's `grease_quic_bit`), see [`is_quic`].
//! - **STUN**: two top bits of byte 0 clear and the magic cookie `0x2112A442` at
//!   bytes 4..8, see [`is_stun`]. A Chatr type byte is never 0x21, so a control
//!   datagram never looks like STUN.
//!
//! Binding: after [`crate::PacketConnected`] carries a `udp_token`, the client sends
//! [`UdpMessage::BindingRequest`] with that token from its UDP socket to the server's UDP
//! port; the server answers [`UdpMessage::BindingResponse`] with the source address it
//! saw, and uses that mapping as the client's public endpoint in
//! [`crate::PacketClientInfo`]. Multi-byte integers are big-endian.

use std::ops::RangeInclusive;

use crate::endpoint::Endpoint;
use crate::error::DecodeError;
use crate::packet::UDP_TOKEN_LEN;
use crate::reader::Reader;
use crate::writer::{Writer, address_len};

/// First four bytes of every Chatr control datagram: `0x00` then `b"CHR"`.
pub const UDP_MAGIC: [u8; 4] = [0x00, b'C', b'H', b'R'];

/// Length of the control header: [`UDP_MAGIC`] plus the type byte.
pub const UDP_HEADER_LEN: usize = UDP_MAGIC.len() + 1;

/// Type byte of [`UdpMessage::BindingRequest`].
pub const TYPE_BINDING_REQUEST: u8 = 0x01;

/// Type byte of [`UdpMessage::BindingResponse`].
pub const TYPE_BINDING_RESPONSE: u8 = 0x02;

/// Type bytes reserved for hole-punching probes (client ↔ client).
pub const PUNCH_TYPES: RangeInclusive<u8> = 0x10..=0x1F;

/// STUN magic cookie (RFC 5389), at bytes 4..8 of every STUN message.
pub const STUN_MAGIC_COOKIE: u32 = 0x2112_A442;

/// A Chatr control datagram exchanged with the Connect server's UDP port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum UdpMessage {
    /// Type 0x01, client → server: "this is the UDP socket of the session that got `token`".
    BindingRequest {
        /// The `udp_token` from [`crate::PacketConnected`].
        token: [u8; UDP_TOKEN_LEN],
    },
    /// Type 0x02, server → client: the source address and port the server saw.
    BindingResponse {
        /// Observed public endpoint (Address then `uint16` port).
        observed: Endpoint,
        /// *Trailing extension*: the TCP source of the same session as the server
        /// sees it (Address then `uint16` port), so a client can tell its public
        /// TCP endpoint too. Absent in the short form.
        tcp_observed: Option<Endpoint>,
    },
}

/// A datagram could not be decoded as a [`UdpMessage`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UdpDecodeError {
    /// The datagram does not start with [`UDP_MAGIC`] and a type byte.
    #[error("not a Chatr control datagram")]
    NotControl,
    /// The type byte is not a [`UdpMessage`] type (punch probes are decoded elsewhere).
    #[error("unknown control datagram type {kind:#04x}")]
    UnknownType {
        /// The type byte.
        kind: u8,
    },
    /// The body is malformed (too short, bad address version, …).
    #[error("malformed control datagram: {0}")]
    Malformed(#[from] DecodeError),
}

impl UdpMessage {
    /// The type byte.
    pub fn kind(&self) -> u8 {
        match self {
            Self::BindingRequest { .. } => TYPE_BINDING_REQUEST,
            Self::BindingResponse { .. } => TYPE_BINDING_RESPONSE,
        }
    }

    /// Length of the encoded datagram.
    pub fn encoded_len(&self) -> usize {
        UDP_HEADER_LEN
            + match self {
                Self::BindingRequest { .. } => UDP_TOKEN_LEN,
                Self::BindingResponse {
                    observed,
                    tcp_observed,
                } => {
                    address_len(&observed.ip)
                        + 2
                        + tcp_observed.map_or(0, |tcp| address_len(&tcp.ip) + 2)
                }
            }
    }

    /// Appends the datagram (header and body) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.reserve(self.encoded_len());
        write_header(self.kind(), out);
        let mut w = Writer::new(out);
        match self {
            Self::BindingRequest { token } => w.raw(token),
            Self::BindingResponse {
                observed,
                tcp_observed,
            } => {
                w.address(&observed.ip);
                w.u16(observed.port.unwrap_or(0));
                if let Some(tcp) = tcp_observed {
                    w.address(&tcp.ip);
                    w.u16(tcp.port.unwrap_or(0));
                }
            }
        }
    }

    /// The datagram as a new vector.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode(&mut out);
        out
    }

    /// Decodes a whole datagram. Bytes after the body are ignored (future extensions).
    ///
    /// # Errors
    /// [`UdpDecodeError::NotControl`] without the header, [`UdpDecodeError::UnknownType`]
    /// for other types (including [`PUNCH_TYPES`]), [`UdpDecodeError::Malformed`] otherwise.
    pub fn decode(buf: &[u8]) -> Result<Self, UdpDecodeError> {
        let kind = control_type(buf).ok_or(UdpDecodeError::NotControl)?;
        let mut r = Reader::new(buf.get(UDP_HEADER_LEN..).unwrap_or_default());
        match kind {
            TYPE_BINDING_REQUEST => Ok(Self::BindingRequest {
                token: r.array::<UDP_TOKEN_LEN>("BindingRequest.token")?,
            }),
            TYPE_BINDING_RESPONSE => {
                let ip = r.address("BindingResponse.observed")?;
                let port = r.u16("BindingResponse.observed.port")?;
                // The TCP endpoint is optional: the short form ends here.
                let tcp_observed = if r.is_empty() {
                    None
                } else {
                    let tcp_ip = r.address("BindingResponse.tcp_observed")?;
                    let tcp_port = r.u16("BindingResponse.tcp_observed.port")?;
                    Some(Endpoint {
                        ip: tcp_ip,
                        port: (tcp_port != 0).then_some(tcp_port),
                    })
                };
                Ok(Self::BindingResponse {
                    observed: Endpoint {
                        ip,
                        port: (port != 0).then_some(port),
                    },
                    tcp_observed,
                })
            }
            kind => Err(UdpDecodeError::UnknownType { kind }),
        }
    }
}

/// Appends the control header ([`UDP_MAGIC`] and `kind`) to `out`; punch probes use this too.
pub fn write_header(kind: u8, out: &mut Vec<u8>) {
    out.extend_from_slice(&UDP_MAGIC);
    out.push(kind);
}

/// The type byte of a Chatr control datagram, or `None` if `buf` is not one.
pub fn control_type(buf: &[u8]) -> Option<u8> {
    let (magic, rest) = buf.split_first_chunk::<4>()?;
    if *magic != UDP_MAGIC {
        return None;
    }
    rest.first().copied()
}

/// `true` when `buf` is a Chatr control datagram (magic plus a type byte).
pub fn is_chatr_control(buf: &[u8]) -> bool {
    control_type(buf).is_some()
}

/// `true` when `buf` looks like a STUN message: at least the 20-byte header, top two
/// bits of byte 0 clear, and the magic cookie at bytes 4..8.
pub fn is_stun(buf: &[u8]) -> bool {
    buf.len() >= 20
        && buf.first().is_some_and(|b| b & 0xC0 == 0)
        && buf
            .get(4..8)
            .is_some_and(|c| c == STUN_MAGIC_COOKIE.to_be_bytes())
}

/// `true` when `buf` may be a QUIC packet: bit 0x40 ("fixed bit") of byte 0 is set.
pub fn is_quic(buf: &[u8]) -> bool {
    buf.first().is_some_and(|b| b & 0x40 != 0)
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;

    #[test]
    fn binding_request_bytes() {
        let msg = UdpMessage::BindingRequest { token: [0xab; 16] };
        let bytes = msg.to_bytes();
        let mut expected = vec![0x00, 0x43, 0x48, 0x52, 0x01];
        expected.extend_from_slice(&[0xab; 16]);
        assert_eq!(bytes, expected);
        assert_eq!(bytes.len(), msg.encoded_len());
        assert_eq!(UdpMessage::decode(&bytes), Ok(msg));
        assert!(is_chatr_control(&bytes));
        assert!(!is_stun(&bytes));
        assert!(!is_quic(&bytes));
    }

    #[test]
    fn binding_response_bytes() {
        let msg = UdpMessage::BindingResponse {
            observed: Endpoint {
                ip: IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7)),
                port: Some(40000),
            },
            tcp_observed: None,
        };
        let bytes = msg.to_bytes();
        assert_eq!(
            bytes,
            [
                0x00, 0x43, 0x48, 0x52, 0x02, 0x04, 203, 0, 113, 7, 0x9c, 0x40
            ]
        );
        assert_eq!(UdpMessage::decode(&bytes), Ok(msg));
    }

    #[test]
    fn binding_response_with_tcp_endpoint_bytes() {
        // Written by hand: header, UDP 203.0.113.7:40000, TCP 203.0.113.7:40001.
        let bytes = [
            0x00, 0x43, 0x48, 0x52, 0x02, 0x04, 203, 0, 113, 7, 0x9c, 0x40, 0x04, 203, 0, 113, 7,
            0x9c, 0x41,
        ];
        let msg = UdpMessage::BindingResponse {
            observed: Endpoint {
                ip: IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7)),
                port: Some(40000),
            },
            tcp_observed: Some(Endpoint {
                ip: IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7)),
                port: Some(40001),
            }),
        };
        assert_eq!(msg.to_bytes(), bytes);
        assert_eq!(msg.encoded_len(), bytes.len());
        assert_eq!(UdpMessage::decode(&bytes), Ok(msg));
        // A TCP endpoint cut short is malformed, not silently dropped.
        for cut in 13..bytes.len() {
            assert!(matches!(
                UdpMessage::decode(bytes.get(..cut).unwrap_or_default()),
                Err(UdpDecodeError::Malformed(_))
            ));
        }
    }

    #[test]
    fn rejects_other_datagrams() {
        assert_eq!(UdpMessage::decode(b"\0CH"), Err(UdpDecodeError::NotControl));
        assert_eq!(
            UdpMessage::decode(b"\0CHR"),
            Err(UdpDecodeError::NotControl)
        );
        assert_eq!(
            UdpMessage::decode(b"\0CHR\x10"),
            Err(UdpDecodeError::UnknownType { kind: 0x10 })
        );
        assert!(matches!(
            UdpMessage::decode(b"\0CHR\x01\x00"),
            Err(UdpDecodeError::Malformed(DecodeError::Truncated { .. }))
        ));
        assert!(matches!(
            UdpMessage::decode(b"\0CHR\x02\x05\x01\x02\x03\x04\x00\x01"),
            Err(UdpDecodeError::Malformed(
                DecodeError::InvalidAddressVersion { version: 5, .. }
            ))
        ));
    }

    #[test]
    fn classifies_stun_and_quic() {
        let mut stun = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42];
        stun.extend_from_slice(&[0u8; 12]);
        assert!(is_stun(&stun));
        assert!(!is_chatr_control(&stun));
        assert!(!is_quic(&stun));
        assert!(!is_stun(stun.get(..19).unwrap()));
        assert!(is_quic(&[0xc0, 0, 0, 0]));
        assert!(is_quic(&[0x40]));
        assert!(!is_quic(&[0x80]));
        assert!(!is_quic(&[]));
    }
}
