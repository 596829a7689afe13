//! A minimal STUN (RFC 8489) Binding client, for `chatr status`.
//!
//! The Connect server answers STUN Binding requests on its UDP port. Sent from
//! the shared UDP socket, the answer says which public address and port our
//! NAT gave that socket: the same fact the Chatr binding message reports, but
//! asked in a standard way that also works against any STUN server.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// STUN magic cookie.
const MAGIC_COOKIE: u32 = 0x2112_A442;
/// Binding request message type.
const BINDING_REQUEST: u16 = 0x0001;
/// Binding success response message type.
const BINDING_SUCCESS: u16 = 0x0101;
/// MAPPED-ADDRESS attribute.
const ATTR_MAPPED_ADDRESS: u16 = 0x0001;
/// XOR-MAPPED-ADDRESS attribute.
const ATTR_XOR_MAPPED_ADDRESS: u16 = 0x0020;
/// Header length.
const HEADER_LEN: usize = 20;

/// A 96-bit STUN transaction id.
pub type TransactionId = [u8; 12];

/// A Binding request with transaction id `txid` (no attributes).
pub fn binding_request(txid: &TransactionId) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN);
    out.extend_from_slice(&BINDING_REQUEST.to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
    out.extend_from_slice(txid);
    out
}

/// Parses a Binding success response: its transaction id and mapped address
/// (XOR-MAPPED-ADDRESS preferred over MAPPED-ADDRESS). `None` for anything else.
pub fn parse_binding_response(buf: &[u8]) -> Option<(TransactionId, SocketAddr)> {
    let header = buf.get(..HEADER_LEN)?;
    let msg_type = u16::from_be_bytes([*header.first()?, *header.get(1)?]);
    let len = usize::from(u16::from_be_bytes([*header.get(2)?, *header.get(3)?]));
    if msg_type != BINDING_SUCCESS || header.get(4..8)? != MAGIC_COOKIE.to_be_bytes() {
        return None;
    }
    let txid: TransactionId = header.get(8..20)?.try_into().ok()?;
    let mut attrs = buf.get(HEADER_LEN..HEADER_LEN.checked_add(len)?)?;
    let mut mapped = None;
    while attrs.len() >= 4 {
        let kind = u16::from_be_bytes([*attrs.first()?, *attrs.get(1)?]);
        let alen = usize::from(u16::from_be_bytes([*attrs.get(2)?, *attrs.get(3)?]));
        let value = attrs.get(4..4 + alen)?;
        match kind {
            ATTR_XOR_MAPPED_ADDRESS => return parse_address(value, Some(&txid)).map(|a| (txid, a)),
            ATTR_MAPPED_ADDRESS => mapped = parse_address(value, None),
            _ => {}
        }
        // Attributes are padded to 4 bytes.
        let padded = (4 + alen).div_ceil(4) * 4;
        attrs = attrs.get(padded..).unwrap_or_default();
    }
    mapped.map(|a| (txid, a))
}

fn parse_address(value: &[u8], xor_txid: Option<&TransactionId>) -> Option<SocketAddr> {
    let family = *value.get(1)?;
    let mut port = u16::from_be_bytes([*value.get(2)?, *value.get(3)?]);
    let cookie = MAGIC_COOKIE.to_be_bytes();
    if xor_txid.is_some() {
        port ^= (MAGIC_COOKIE >> 16) as u16;
    }
    let ip = match family {
        0x01 => {
            let mut b: [u8; 4] = value.get(4..8)?.try_into().ok()?;
            if xor_txid.is_some() {
                for (x, c) in b.iter_mut().zip(cookie) {
                    *x ^= c;
                }
            }
            IpAddr::V4(Ipv4Addr::from(b))
        }
        0x02 => {
            let mut b: [u8; 16] = value.get(4..20)?.try_into().ok()?;
            if let Some(txid) = xor_txid {
                let key = cookie.iter().chain(txid.iter());
                for (x, k) in b.iter_mut().zip(key) {
                    *x ^= k;
                }
            }
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Whether a datagram is a STUN message (two top bits clear, magic cookie).
pub fn is_stun(buf: &[u8]) -> bool {
    chatr_proto::udp::is_stun(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xor_response(txid: &TransactionId, addr: SocketAddr) -> Vec<u8> {
        let mut value = vec![0u8, 0];
        let port = addr.port() ^ (MAGIC_COOKIE >> 16) as u16;
        let cookie = MAGIC_COOKIE.to_be_bytes();
        match addr.ip() {
            IpAddr::V4(ip) => {
                value[1] = 1;
                value.extend_from_slice(&port.to_be_bytes());
                value.extend(ip.octets().iter().zip(cookie).map(|(a, b)| a ^ b));
            }
            IpAddr::V6(ip) => {
                value[1] = 2;
                value.extend_from_slice(&port.to_be_bytes());
                let key: Vec<u8> = cookie.iter().chain(txid.iter()).copied().collect();
                value.extend(ip.octets().iter().zip(key).map(|(a, b)| a ^ b));
            }
        }
        // An unknown attribute first (length 1, padded), then XOR-MAPPED-ADDRESS.
        let mut attrs = vec![0x80, 0x22, 0, 1, b'x', 0, 0, 0];
        attrs.extend_from_slice(&ATTR_XOR_MAPPED_ADDRESS.to_be_bytes());
        attrs.extend_from_slice(&(value.len() as u16).to_be_bytes());
        attrs.extend_from_slice(&value);
        let mut out = Vec::new();
        out.extend_from_slice(&BINDING_SUCCESS.to_be_bytes());
        out.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
        out.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        out.extend_from_slice(txid);
        out.extend_from_slice(&attrs);
        out
    }

    #[test]
    fn request_layout() {
        let req = binding_request(&[7; 12]);
        assert_eq!(req.len(), 20);
        assert_eq!(&req[..4], &[0, 1, 0, 0]);
        assert_eq!(&req[4..8], &[0x21, 0x12, 0xA4, 0x42]);
        assert!(is_stun(&req));
    }

    #[test]
    fn xor_mapped_v4_and_v6() {
        let txid = [3u8; 12];
        for addr in ["198.51.100.7:40000", "[2001:db8::9]:5"] {
            let addr: SocketAddr = addr.parse().unwrap();
            let resp = xor_response(&txid, addr);
            assert_eq!(parse_binding_response(&resp), Some((txid, addr)));
        }
    }

    #[test]
    fn garbage_is_none() {
        assert_eq!(parse_binding_response(&[]), None);
        assert_eq!(parse_binding_response(&binding_request(&[1; 12])), None);
        let mut resp = xor_response(&[1; 12], "1.2.3.4:5".parse().unwrap());
        resp.truncate(resp.len() - 3);
        assert_eq!(parse_binding_response(&resp), None);
    }
}
