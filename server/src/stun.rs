//! A minimal STUN server (RFC 8489) for the Connect UDP port: a Binding
//! request is answered with the source address the server saw, in
//! XOR-MAPPED-ADDRESS, so ordinary STUN tools can discover their mapping here.
//!
//! No authentication and no RFC 5780 NAT-behaviour discovery: a request with a
//! comprehension-required attribute we do not understand (e.g.
//! CHANGE-REQUEST) gets the RFC's 420 error listing it. Anything else that is
//! not a well-formed Binding request (indications, responses, other methods,
//! malformed messages, a FINGERPRINT that is not last or whose CRC does not
//! match) is dropped silently, as a server must not answer what it cannot
//! parse (RFC 8489 §7.3: a failed FINGERPRINT check means "not STUN", and the
//! message is discarded). Pure functions only; the socket lives in `udp.rs`.

use std::net::{IpAddr, SocketAddr};

/// The magic cookie, bytes 4..8 of every STUN message.
pub const MAGIC_COOKIE: u32 = 0x2112_A442;
/// Length of the STUN header.
pub const HEADER_LEN: usize = 20;
/// Message type of a Binding request.
pub const BINDING_REQUEST: u16 = 0x0001;
/// Message type of a Binding success response.
pub const BINDING_SUCCESS: u16 = 0x0101;
/// Message type of a Binding error response.
pub const BINDING_ERROR: u16 = 0x0111;
/// XOR-MAPPED-ADDRESS attribute type.
pub const ATTR_XOR_MAPPED_ADDRESS: u16 = 0x0020;
/// ERROR-CODE attribute type.
pub const ATTR_ERROR_CODE: u16 = 0x0009;
/// UNKNOWN-ATTRIBUTES attribute type.
pub const ATTR_UNKNOWN_ATTRIBUTES: u16 = 0x000A;
/// FINGERPRINT attribute type.
pub const ATTR_FINGERPRINT: u16 = 0x8028;

/// XOR applied to the CRC-32 in FINGERPRINT ("STUN").
const FINGERPRINT_XOR: u32 = 0x5354_554E;

/// Comprehension-required attributes a Binding request may carry that we
/// understand well enough to ignore (authentication is not used here).
const KNOWN_REQUIRED: [u16; 11] = [
    0x0001, // MAPPED-ADDRESS
    0x0006, // USERNAME
    0x0008, // MESSAGE-INTEGRITY
    0x0009, // ERROR-CODE
    0x000A, // UNKNOWN-ATTRIBUTES
    0x0014, // REALM
    0x0015, // NONCE
    0x001C, // MESSAGE-INTEGRITY-SHA256
    0x001D, // PASSWORD-ALGORITHM
    0x001E, // USERHASH
    0x0020, // XOR-MAPPED-ADDRESS
];

/// The answer to `request` received from `source`, or `None` to stay silent.
pub fn respond(request: &[u8], source: SocketAddr) -> Option<Vec<u8>> {
    let (header, body) = request.split_first_chunk::<HEADER_LEN>()?;
    let msg_type = u16::from_be_bytes([header[0], header[1]]);
    let length = usize::from(u16::from_be_bytes([header[2], header[3]]));
    let cookie = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
    let transaction: [u8; 12] = header.get(8..20)?.try_into().ok()?;
    if msg_type != BINDING_REQUEST
        || cookie != MAGIC_COOKIE
        || length != body.len()
        || !length.is_multiple_of(4)
    {
        return None;
    }
    let attributes = parse_attributes(body)?;
    let with_fingerprint = match attributes
        .iter()
        .position(|(kind, _)| *kind == ATTR_FINGERPRINT)
    {
        None => false,
        Some(at) if at + 1 == attributes.len() && fingerprint_matches(request) => true,
        // Not the last attribute, wrong length or wrong CRC: not a STUN message for us.
        Some(_) => return None,
    };
    let unknown: Vec<u16> = attributes
        .iter()
        .map(|(kind, _)| *kind)
        .filter(|kind| *kind < 0x8000 && !KNOWN_REQUIRED.contains(kind))
        .collect();

    let mut out = Message::new(
        if unknown.is_empty() {
            BINDING_SUCCESS
        } else {
            BINDING_ERROR
        },
        transaction,
    );
    if unknown.is_empty() {
        out.attribute(
            ATTR_XOR_MAPPED_ADDRESS,
            &xor_mapped_address(source, &transaction),
        );
    } else {
        let mut error = vec![0, 0, 4, 20];
        error.extend_from_slice(b"Unknown Attribute");
        out.attribute(ATTR_ERROR_CODE, &error);
        let list: Vec<u8> = unknown.iter().flat_map(|k| k.to_be_bytes()).collect();
        out.attribute(ATTR_UNKNOWN_ATTRIBUTES, &list);
    }
    // Agents that use FINGERPRINT (ICE) expect it on answers too.
    Some(if with_fingerprint {
        out.finish_with_fingerprint()
    } else {
        out.finish()
    })
}

/// The attributes of a message body as (type, value) pairs, or `None` if the
/// TLV structure does not add up.
fn parse_attributes(mut body: &[u8]) -> Option<Vec<(u16, &[u8])>> {
    let mut attributes = Vec::new();
    while !body.is_empty() {
        let (head, rest) = body.split_first_chunk::<4>()?;
        let kind = u16::from_be_bytes([head[0], head[1]]);
        let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
        let padded = len.div_ceil(4) * 4;
        let value = rest.get(..len)?;
        body = rest.get(padded..)?;
        attributes.push((kind, value));
    }
    Some(attributes)
}

/// Whether `message` ends in a FINGERPRINT attribute (type, length 4, value)
/// whose value is the CRC-32 of everything before it XOR "STUN" (RFC 8489
/// §14.7). The header's length field already counts the attribute, so the CRC
/// covers the message exactly as received.
fn fingerprint_matches(message: &[u8]) -> bool {
    let Some(split) = message.len().checked_sub(8) else {
        return false;
    };
    let (covered, attribute) = message.split_at(split);
    let mut expected = [0u8; 8];
    expected[..2].copy_from_slice(&ATTR_FINGERPRINT.to_be_bytes());
    expected[2..4].copy_from_slice(&4u16.to_be_bytes());
    expected[4..].copy_from_slice(&(crc32(covered) ^ FINGERPRINT_XOR).to_be_bytes());
    attribute == expected
}

/// XOR-MAPPED-ADDRESS value (RFC 8489 §14.2).
pub fn xor_mapped_address(addr: SocketAddr, transaction: &[u8; 12]) -> Vec<u8> {
    let cookie = MAGIC_COOKIE.to_be_bytes();
    let port = addr.port() ^ (MAGIC_COOKIE >> 16) as u16;
    let mut value = vec![0];
    match addr.ip().to_canonical() {
        IpAddr::V4(ip) => {
            value.push(0x01);
            value.extend_from_slice(&port.to_be_bytes());
            value.extend(ip.octets().iter().zip(cookie).map(|(a, k)| a ^ k));
        }
        IpAddr::V6(ip) => {
            value.push(0x02);
            value.extend_from_slice(&port.to_be_bytes());
            let key = cookie.iter().chain(transaction.iter());
            value.extend(ip.octets().iter().zip(key).map(|(a, k)| a ^ k));
        }
    }
    value
}

/// Decodes an XOR-MAPPED-ADDRESS value (for tests and clients).
pub fn decode_xor_mapped_address(value: &[u8], transaction: &[u8; 12]) -> Option<SocketAddr> {
    let (head, addr) = value.split_first_chunk::<4>()?;
    let port = u16::from_be_bytes([head[2], head[3]]) ^ (MAGIC_COOKIE >> 16) as u16;
    let cookie = MAGIC_COOKIE.to_be_bytes();
    let ip = match head[1] {
        0x01 => {
            let octets: [u8; 4] = addr.try_into().ok()?;
            let mut out = [0u8; 4];
            for ((o, a), k) in out.iter_mut().zip(octets).zip(cookie) {
                *o = a ^ k;
            }
            IpAddr::from(out)
        }
        0x02 => {
            let octets: [u8; 16] = addr.try_into().ok()?;
            let mut out = [0u8; 16];
            let key = cookie.iter().chain(transaction.iter());
            for ((o, a), k) in out.iter_mut().zip(octets).zip(key) {
                *o = a ^ k;
            }
            IpAddr::from(out)
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// A STUN message being built.
struct Message {
    bytes: Vec<u8>,
}

impl Message {
    fn new(msg_type: u16, transaction: [u8; 12]) -> Self {
        let mut bytes = Vec::with_capacity(64);
        bytes.extend_from_slice(&msg_type.to_be_bytes());
        bytes.extend_from_slice(&[0, 0]);
        bytes.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        bytes.extend_from_slice(&transaction);
        Self { bytes }
    }

    fn attribute(&mut self, kind: u16, value: &[u8]) {
        self.bytes.extend_from_slice(&kind.to_be_bytes());
        // Values we write are a few dozen bytes.
        let len = u16::try_from(value.len()).unwrap_or(u16::MAX);
        self.bytes.extend_from_slice(&len.to_be_bytes());
        self.bytes.extend_from_slice(value);
        while !self.bytes.len().is_multiple_of(4) {
            self.bytes.push(0);
        }
        self.set_length(self.bytes.len() - HEADER_LEN);
    }

    fn set_length(&mut self, len: usize) {
        let len = u16::try_from(len).unwrap_or(u16::MAX).to_be_bytes();
        if let Some(field) = self.bytes.get_mut(2..4) {
            field.copy_from_slice(&len);
        }
    }

    fn finish(self) -> Vec<u8> {
        self.bytes
    }

    /// Appends FINGERPRINT: CRC-32 of everything before it, with the length
    /// field already counting the FINGERPRINT attribute, XOR "STUN".
    fn finish_with_fingerprint(mut self) -> Vec<u8> {
        self.set_length(self.bytes.len() + 8 - HEADER_LEN);
        let crc = crc32(&self.bytes) ^ FINGERPRINT_XOR;
        self.bytes
            .extend_from_slice(&ATTR_FINGERPRINT.to_be_bytes());
        self.bytes.extend_from_slice(&4u16.to_be_bytes());
        self.bytes.extend_from_slice(&crc.to_be_bytes());
        self.bytes
    }
}

/// CRC-32 (ISO-HDLC, as in zlib), bitwise: answers are tiny, no table needed.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for byte in data {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xEDB8_8320 & mask);
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(attributes: &[(u16, &[u8])]) -> Vec<u8> {
        let mut m = Message::new(BINDING_REQUEST, [7; 12]);
        for (kind, value) in attributes {
            m.attribute(*kind, value);
        }
        m.finish()
    }

    #[test]
    fn crc32_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn rfc5769_ipv4_xor_mapped_address() {
        // RFC 5769 §2.2: 192.0.2.1:32853 with transaction b7e7a701bc34d686fa87dfae.
        let tx: [u8; 12] = [
            0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
        ];
        let value = xor_mapped_address("192.0.2.1:32853".parse().unwrap(), &tx);
        assert_eq!(value, [0x00, 0x01, 0xa1, 0x47, 0xe1, 0x12, 0xa6, 0x43]);
    }

    #[test]
    fn rfc5769_ipv6_xor_mapped_address() {
        // RFC 5769 §2.3: [2001:db8:1234:5678:11:2233:4455:6677]:32853.
        let tx: [u8; 12] = [
            0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
        ];
        let addr: SocketAddr = "[2001:db8:1234:5678:11:2233:4455:6677]:32853"
            .parse()
            .unwrap();
        let value = xor_mapped_address(addr, &tx);
        assert_eq!(
            value,
            [
                0x00, 0x02, 0xa1, 0x47, 0x01, 0x13, 0xa9, 0xfa, 0xa5, 0xd3, 0xf1, 0x79, 0xbc, 0x25,
                0xf4, 0xb5, 0xbe, 0xd2, 0xb9, 0xd9
            ]
        );
        assert_eq!(decode_xor_mapped_address(&value, &tx), Some(addr));
    }

    #[test]
    fn binding_request_gets_success_with_same_transaction() {
        let src: SocketAddr = "203.0.113.9:40000".parse().unwrap();
        let answer = respond(&request(&[]), src).unwrap();
        assert_eq!(&answer[0..2], &BINDING_SUCCESS.to_be_bytes());
        assert_eq!(&answer[4..8], &MAGIC_COOKIE.to_be_bytes());
        assert_eq!(&answer[8..20], &[7; 12]);
        let attrs = parse_attributes(&answer[20..]).unwrap();
        assert_eq!(attrs.len(), 1);
        assert_eq!(attrs[0].0, ATTR_XOR_MAPPED_ADDRESS);
        assert_eq!(decode_xor_mapped_address(attrs[0].1, &[7; 12]), Some(src));
        assert_eq!(
            usize::from(u16::from_be_bytes([answer[2], answer[3]])),
            answer.len() - 20
        );
    }

    /// A request ending in a correct FINGERPRINT, with `attributes` before it.
    fn request_with_fingerprint(attributes: &[(u16, &[u8])]) -> Vec<u8> {
        let mut m = Message::new(BINDING_REQUEST, [7; 12]);
        for (kind, value) in attributes {
            m.attribute(*kind, value);
        }
        m.finish_with_fingerprint()
    }

    #[test]
    fn fingerprint_is_echoed_and_correct() {
        let src: SocketAddr = "203.0.113.9:40000".parse().unwrap();
        let req = request_with_fingerprint(&[(0x8022, b"client")]);
        assert!(fingerprint_matches(&req));
        let answer = respond(&req, src).unwrap();
        let attrs = parse_attributes(&answer[20..]).unwrap();
        let (kind, value) = attrs.last().unwrap();
        assert_eq!(*kind, ATTR_FINGERPRINT);
        let covered = &answer[..answer.len() - 8];
        let expected = crc32(covered) ^ FINGERPRINT_XOR;
        assert_eq!(*value, expected.to_be_bytes());
    }

    #[test]
    fn rfc5769_sample_request_fingerprint_verifies() {
        // RFC 5769 §2.1, byte for byte (SOFTWARE, PRIORITY, ICE-CONTROLLED,
        // USERNAME, MESSAGE-INTEGRITY, FINGERPRINT).
        let sample: [u8; 108] = [
            0x00, 0x01, 0x00, 0x58, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34,
            0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae, 0x80, 0x22, 0x00, 0x10, 0x53, 0x54, 0x55, 0x4e,
            0x20, 0x74, 0x65, 0x73, 0x74, 0x20, 0x63, 0x6c, 0x69, 0x65, 0x6e, 0x74, 0x00, 0x24,
            0x00, 0x04, 0x6e, 0x00, 0x01, 0xff, 0x80, 0x29, 0x00, 0x08, 0x93, 0x2f, 0xf9, 0xb1,
            0x51, 0x26, 0x3b, 0x36, 0x00, 0x06, 0x00, 0x09, 0x65, 0x76, 0x74, 0x6a, 0x3a, 0x68,
            0x36, 0x76, 0x59, 0x20, 0x20, 0x20, 0x00, 0x08, 0x00, 0x14, 0x9a, 0xea, 0xa7, 0x0c,
            0xbf, 0xd8, 0xcb, 0x56, 0x78, 0x1e, 0xf2, 0xb5, 0xb2, 0xd3, 0xf2, 0x49, 0xc1, 0xb5,
            0x71, 0xa2, 0x80, 0x28, 0x00, 0x04, 0xe5, 0x7a, 0x3b, 0xcf,
        ];
        assert!(fingerprint_matches(&sample));
        // Answered (420: PRIORITY is an ICE attribute we do not know), not discarded.
        let answer = respond(&sample, "192.0.2.1:32853".parse().unwrap()).unwrap();
        assert_eq!(&answer[0..2], &BINDING_ERROR.to_be_bytes());
    }

    #[test]
    fn wrong_or_misplaced_fingerprint_is_discarded() {
        let src: SocketAddr = "203.0.113.9:40000".parse().unwrap();
        // Wrong CRC (any bit).
        let good = request_with_fingerprint(&[(0x8022, b"client")]);
        for bit in [0usize, 7, 31] {
            let mut bad = good.clone();
            let at = bad.len() - 4 + bit / 8;
            bad[at] ^= 1 << (bit % 8);
            assert_eq!(respond(&bad, src), None, "bit {bit}");
        }
        // The CRC of a different message (body changed after fingerprinting).
        let mut tampered = good.clone();
        tampered[20 + 4] ^= 0x20;
        assert_eq!(respond(&tampered, src), None);
        // An all-zero FINGERPRINT.
        assert_eq!(respond(&request(&[(ATTR_FINGERPRINT, &[0; 4])]), src), None);
        // FINGERPRINT not last: malformed.
        let mut m = Message::new(BINDING_REQUEST, [7; 12]);
        m.attribute(0x8022, b"x");
        let mut fingerprinted = m.finish_with_fingerprint();
        fingerprinted.extend_from_slice(&[0x80, 0x22, 0x00, 0x00]);
        let len = u16::try_from(fingerprinted.len() - HEADER_LEN).unwrap();
        fingerprinted[2..4].copy_from_slice(&len.to_be_bytes());
        assert_eq!(respond(&fingerprinted, src), None);
        // Wrong length of the FINGERPRINT value.
        assert_eq!(respond(&request(&[(ATTR_FINGERPRINT, &[0; 8])]), src), None);
        // The intact request is answered.
        assert!(respond(&good, src).is_some());
    }

    #[test]
    fn unknown_required_attribute_gets_420() {
        let src: SocketAddr = "203.0.113.9:40000".parse().unwrap();
        // CHANGE-REQUEST (RFC 5780) is comprehension-required and unsupported;
        // SOFTWARE (0x8022) is optional and ignored.
        let answer = respond(&request(&[(0x0003, &[0, 0, 0, 6]), (0x8022, b"t")]), src).unwrap();
        assert_eq!(&answer[0..2], &BINDING_ERROR.to_be_bytes());
        let attrs = parse_attributes(&answer[20..]).unwrap();
        assert_eq!(attrs[0].0, ATTR_ERROR_CODE);
        assert_eq!(&attrs[0].1[2..4], &[4, 20]);
        assert_eq!(attrs[1], (ATTR_UNKNOWN_ATTRIBUTES, &[0x00, 0x03][..]));
    }

    #[test]
    fn other_messages_are_ignored() {
        let src: SocketAddr = "203.0.113.9:40000".parse().unwrap();
        let mut indication = request(&[]);
        indication[1] = 0x11; // Binding indication
        assert_eq!(respond(&indication, src), None);
        let mut response = request(&[]);
        response[0] = 0x01; // success response
        assert_eq!(respond(&response, src), None);
        let mut bad_cookie = request(&[]);
        bad_cookie[4] = 0;
        assert_eq!(respond(&bad_cookie, src), None);
        // Declared length disagrees with the datagram.
        let mut bad_len = request(&[(0x8022, b"abcd")]);
        bad_len.truncate(bad_len.len() - 4);
        assert_eq!(respond(&bad_len, src), None);
        // Attribute running past the end.
        let mut bad_attr = request(&[]);
        bad_attr.extend_from_slice(&[0x80, 0x22, 0x00, 0x10]);
        bad_attr[3] = 4;
        assert_eq!(respond(&bad_attr, src), None);
        assert_eq!(respond(&[0u8; 10], src), None);
    }
}
