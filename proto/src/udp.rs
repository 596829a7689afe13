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
//! [`crate::PacketClientInfo`]. A version-3 session sends
//! [`UdpMessage::BindingRequestAuth`] instead: the token plus a counter and an HMAC with a
//! key both ends export from the TLS session, so a sniffed or replayed datagram cannot move
//! the session's endpoint.
//!
//! Relay (version 3): types 0x30/0x31 ([`TYPE_RELAY_TO_SERVER`], [`TYPE_RELAY_FROM_SERVER`])
//! wrap any datagram of a relayed exchange behind a [`RelayId`]; see [`relay_header`] and
//! [`parse_relayed`]. Multi-byte integers are big-endian.

use std::ops::RangeInclusive;

use crate::endpoint::Endpoint;
use crate::error::DecodeError;
use crate::packet::{RELAY_ID_LEN, RelayId, UDP_TOKEN_LEN};
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

/// Type byte of [`UdpMessage::BindingRequestAuth`] (version 3).
pub const TYPE_BINDING_REQUEST_AUTH: u8 = 0x03;

/// Type bytes reserved for hole-punching probes (client ↔ client).
pub const PUNCH_TYPES: RangeInclusive<u8> = 0x10..=0x1F;

/// Type byte of a relayed datagram on its way to the server (client → server).
pub const TYPE_RELAY_TO_SERVER: u8 = 0x30;

/// Type byte of a relayed datagram the server forwards (server → client).
pub const TYPE_RELAY_FROM_SERVER: u8 = 0x31;

/// Bytes a relay header adds in front of a relayed datagram: magic, type, relay id.
pub const RELAY_HEADER_LEN: usize = UDP_HEADER_LEN + RELAY_ID_LEN;

/// Length of the HMAC-SHA256 tag of [`UdpMessage::BindingRequestAuth`].
pub const BINDING_TAG_LEN: usize = 32;

/// Length of the key that authenticates binding requests (exported from TLS with
/// [`crate::UDP_BINDING_EXPORTER_LABEL`]).
pub const BINDING_KEY_LEN: usize = 32;

/// Bytes covered by the tag of a [`UdpMessage::BindingRequestAuth`]: header, token, counter.
const BINDING_AUTH_SIGNED_LEN: usize = UDP_HEADER_LEN + UDP_TOKEN_LEN + 8;

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
    /// Type 0x03, client → server (version 3): the binding request of a version-3
    /// session, authenticated. The server accepts it only if `tag` verifies with the
    /// session's binding key and `counter` is higher than any it accepted before for
    /// that session; a version-3 session's plain [`UdpMessage::BindingRequest`] is dropped.
    BindingRequestAuth {
        /// The `udp_token` from [`crate::PacketConnected`] (names the session).
        token: [u8; UDP_TOKEN_LEN],
        /// Strictly increasing per session (the client starts at 1).
        counter: u64,
        /// `HMAC-SHA256(binding key, header ‖ token ‖ counter)`.
        tag: [u8; BINDING_TAG_LEN],
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
            Self::BindingRequestAuth { .. } => TYPE_BINDING_REQUEST_AUTH,
            Self::BindingResponse { .. } => TYPE_BINDING_RESPONSE,
        }
    }

    /// Length of the encoded datagram.
    pub fn encoded_len(&self) -> usize {
        UDP_HEADER_LEN
            + match self {
                Self::BindingRequest { .. } => UDP_TOKEN_LEN,
                Self::BindingRequestAuth { .. } => UDP_TOKEN_LEN + 8 + BINDING_TAG_LEN,
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
            Self::BindingRequestAuth {
                token,
                counter,
                tag,
            } => {
                w.raw(token);
                w.raw(&counter.to_be_bytes());
                w.raw(tag);
            }
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
            TYPE_BINDING_REQUEST_AUTH => Ok(Self::BindingRequestAuth {
                token: r.array::<UDP_TOKEN_LEN>("BindingRequestAuth.token")?,
                counter: u64::from_be_bytes(r.array::<8>("BindingRequestAuth.counter")?),
                tag: r.array::<BINDING_TAG_LEN>("BindingRequestAuth.tag")?,
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

impl UdpMessage {
    /// An authenticated binding request for the session with `token`, signed with `key`.
    pub fn binding_request_auth(
        key: &[u8; BINDING_KEY_LEN],
        token: [u8; UDP_TOKEN_LEN],
        counter: u64,
    ) -> Self {
        let signed = binding_auth_signed(&token, counter);
        let hmac_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
        let mut tag = [0u8; BINDING_TAG_LEN];
        tag.copy_from_slice(ring::hmac::sign(&hmac_key, &signed).as_ref());
        Self::BindingRequestAuth {
            token,
            counter,
            tag,
        }
    }

    /// For a [`UdpMessage::BindingRequestAuth`]: whether its tag verifies with `key`
    /// (constant time). `false` for every other message.
    pub fn verify_binding_auth(&self, key: &[u8; BINDING_KEY_LEN]) -> bool {
        let Self::BindingRequestAuth {
            token,
            counter,
            tag,
        } = self
        else {
            return false;
        };
        let signed = binding_auth_signed(token, *counter);
        let hmac_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
        ring::hmac::verify(&hmac_key, &signed, tag).is_ok()
    }
}

/// The bytes a binding request's tag covers: `00 'C' 'H' 'R' 03 ‖ token ‖ counter`.
fn binding_auth_signed(token: &[u8; UDP_TOKEN_LEN], counter: u64) -> [u8; BINDING_AUTH_SIGNED_LEN] {
    let mut signed = [0u8; BINDING_AUTH_SIGNED_LEN];
    let (magic, rest) = signed.split_at_mut(UDP_MAGIC.len());
    let (kind, rest) = rest.split_at_mut(1);
    let (tok, ctr) = rest.split_at_mut(UDP_TOKEN_LEN);
    magic.copy_from_slice(&UDP_MAGIC);
    kind.copy_from_slice(&[TYPE_BINDING_REQUEST_AUTH]);
    tok.copy_from_slice(token);
    ctr.copy_from_slice(&counter.to_be_bytes());
    signed
}

/// The header in front of a relayed datagram: `00 'C' 'H' 'R' ‖ kind ‖ relay id`, with
/// `kind` [`TYPE_RELAY_TO_SERVER`] or [`TYPE_RELAY_FROM_SERVER`].
pub fn relay_header(kind: u8, relay: &RelayId) -> [u8; RELAY_HEADER_LEN] {
    let mut header = [0u8; RELAY_HEADER_LEN];
    let (magic, rest) = header.split_at_mut(UDP_MAGIC.len());
    magic.copy_from_slice(&UDP_MAGIC);
    let (k, id) = rest.split_at_mut(1);
    k.copy_from_slice(&[kind]);
    id.copy_from_slice(relay.as_bytes());
    header
}

/// A relayed datagram, split: its type byte, its relay, and the datagram it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Relayed<'a> {
    /// [`TYPE_RELAY_TO_SERVER`] or [`TYPE_RELAY_FROM_SERVER`].
    pub kind: u8,
    /// The exchange's relay.
    pub relay: RelayId,
    /// The wrapped datagram (never empty).
    pub inner: &'a [u8],
}

/// Splits a relayed datagram; `None` unless `buf` has a relay type, a non-zero relay id
/// and at least one byte of inner datagram.
pub fn parse_relayed(buf: &[u8]) -> Option<Relayed<'_>> {
    let kind = control_type(buf)?;
    if kind != TYPE_RELAY_TO_SERVER && kind != TYPE_RELAY_FROM_SERVER {
        return None;
    }
    let id = buf.get(UDP_HEADER_LEN..RELAY_HEADER_LEN)?;
    let relay = RelayId::from_wire(id.try_into().ok()?)?;
    let inner = buf.get(RELAY_HEADER_LEN..).filter(|i| !i.is_empty())?;
    Some(Relayed { kind, relay, inner })
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
#[allow(clippy::indexing_slicing)]
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
    fn authenticated_binding_request_bytes_and_tag() {
        let key = [0x42; BINDING_KEY_LEN];
        let msg = UdpMessage::binding_request_auth(&key, [0xab; 16], 7);
        let bytes = msg.to_bytes();
        assert_eq!(bytes.len(), 61);
        assert_eq!(bytes.len(), msg.encoded_len());
        assert_eq!(&bytes[..5], &[0x00, 0x43, 0x48, 0x52, 0x03]);
        assert_eq!(&bytes[5..21], &[0xab; 16]);
        assert_eq!(&bytes[21..29], &7u64.to_be_bytes());
        let decoded = UdpMessage::decode(&bytes).unwrap();
        assert_eq!(decoded, msg);
        assert!(decoded.verify_binding_auth(&key));
        // Another key, another counter or another token: the tag no longer verifies.
        assert!(!decoded.verify_binding_auth(&[0x43; BINDING_KEY_LEN]));
        for flip in [6, 22, 40, 60] {
            let mut forged = bytes.clone();
            forged[flip] ^= 1;
            let forged = UdpMessage::decode(&forged).unwrap();
            assert!(!forged.verify_binding_auth(&key), "byte {flip} flipped");
        }
        // A plain request never "verifies".
        assert!(!UdpMessage::BindingRequest { token: [0xab; 16] }.verify_binding_auth(&key));
        // Cut anywhere inside: malformed.
        for cut in 5..bytes.len() {
            assert!(matches!(
                UdpMessage::decode(&bytes[..cut]),
                Err(UdpDecodeError::Malformed(_))
            ));
        }
    }

    #[test]
    fn relay_header_round_trip() {
        let relay = RelayId([1, 2, 3, 4, 5, 6, 7, 8]);
        let header = relay_header(TYPE_RELAY_TO_SERVER, &relay);
        assert_eq!(
            header,
            [0x00, 0x43, 0x48, 0x52, 0x30, 1, 2, 3, 4, 5, 6, 7, 8]
        );
        let mut datagram = header.to_vec();
        datagram.extend_from_slice(&[0x41, 0xee]);
        assert_eq!(
            parse_relayed(&datagram),
            Some(Relayed {
                kind: TYPE_RELAY_TO_SERVER,
                relay,
                inner: &[0x41, 0xee],
            })
        );
        // Never STUN, never QUIC, and not a UdpMessage.
        assert!(!is_stun(&datagram));
        assert!(!is_quic(&datagram));
        assert!(matches!(
            UdpMessage::decode(&datagram),
            Err(UdpDecodeError::UnknownType { kind: 0x30 })
        ));
        // Nothing inside, a zero relay id, or another type: not relayed.
        assert_eq!(parse_relayed(&header), None);
        let mut zero = relay_header(TYPE_RELAY_FROM_SERVER, &RelayId([0; 8])).to_vec();
        zero.push(0x41);
        assert_eq!(parse_relayed(&zero), None);
        let mut other = datagram.clone();
        other[4] = 0x32;
        assert_eq!(parse_relayed(&other), None);
        assert_eq!(parse_relayed(&datagram[..10]), None);
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
