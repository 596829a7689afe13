//! Payload layout of each packet: the spec's fields, then our trailing extensions.
//!
//! Extension rule (see `docs/PROTOCOL.md`): extension fields follow the spec's fields
//! in a fixed order. When the payload ends exactly before an extension field, that
//! field and all later ones are absent (`None`). When it ends *inside* one (e.g. one
//! byte of a port), the frame is invalid ([`DecodeError::Truncated`]). Bytes after the
//! last extension field we know are ignored, so newer peers can append more.

use std::net::{IpAddr, Ipv4Addr};

use crate::endpoint::Endpoint;
use crate::error::DecodeError;
use crate::hints::LinkHints;
use crate::limits::{MAX_BYTE_ARRAY_LEN, MAX_STRING_LEN};
use crate::packet::{
    LINK_SECRET_LEN, MAX_NAT_PROBE_PORTS, MAX_RELAY_DATAGRAM, PacketClientInfo, PacketConnect,
    PacketConnected, PacketConnectionRequest, PacketConnectionRequestAccept,
    PacketConnectionRequestDenied, PacketDisconnect, PacketPing, PacketPong, PacketRelayClose,
    PacketRelayData, RELAY_ID_LEN, RelayId, SessionFeatures, SessionParams, UDP_TOKEN_LEN,
};
use crate::presence::{
    ContactsOp, MAX_PRESENCE_BATCH, MAX_STATUS_MESSAGE, PacketPresence, PacketPresenceContacts,
    PacketPresenceStatus, PresenceStatus,
};
use crate::reader::Reader;
use crate::varint::varint_len;
use crate::writer::{Writer, address_len};

/// Encoding and decoding of one packet's payload (everything after the opcode).
pub(crate) trait Payload: Sized {
    /// Exact number of bytes [`Payload::write`] produces.
    fn payload_len(&self) -> usize;
    /// Appends the payload.
    fn write(&self, w: &mut Writer<'_>);
    /// Parses a complete payload.
    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError>;
}

/// Stand-in written for an absent `Endpoint` that is followed by a present extension
/// field: 0.0.0.0 with port 0. Decoding maps an unspecified address with port 0 back to
/// `None` (such an endpoint could not be dialled anyway).
const ABSENT_ENDPOINT: Endpoint = Endpoint {
    ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    port: None,
};

/// Longest prefix of `s` that is at most `max` bytes and ends on a char boundary.
fn clamp_str(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end = end.saturating_sub(1);
    }
    s.get(..end).unwrap_or_default()
}

/// Longest prefix of `b` that is at most `max` bytes.
fn clamp_bytes(b: &[u8], max: usize) -> &[u8] {
    b.get(..max).unwrap_or(b)
}

/// Port as written on the wire: 0 means unknown.
fn wire_port(port: Option<u16>) -> u16 {
    port.unwrap_or(0)
}

/// Port as read from the wire: 0 means unknown.
fn port_from_wire(port: u16) -> Option<u16> {
    (port != 0).then_some(port)
}

/// Reads the optional trailing port after a spec `Address`.
fn read_trailing_port(r: &mut Reader<'_>, field: &'static str) -> Result<Option<u16>, DecodeError> {
    if r.is_empty() {
        return Ok(None);
    }
    Ok(port_from_wire(r.u16(field)?))
}

impl Payload for PacketConnect {
    fn payload_len(&self) -> usize {
        4 + 16 + 4 + clamp_bytes(&self.signature, MAX_BYTE_ARRAY_LEN).len()
    }

    fn write(&self, w: &mut Writer<'_>) {
        w.u32(self.version);
        w.uuid(&self.uuid);
        w.bytes_i32(clamp_bytes(&self.signature, MAX_BYTE_ARRAY_LEN));
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            version: r.u32("PacketConnect.version")?,
            uuid: r.uuid("PacketConnect.uuid")?,
            signature: r
                .bytes_i32("PacketConnect.signature", MAX_BYTE_ARRAY_LEN)?
                .to_vec(),
        })
    }
}

impl Payload for PacketDisconnect {
    fn payload_len(&self) -> usize {
        let s = clamp_str(&self.message, MAX_STRING_LEN);
        // The clamp keeps the length far below u32::MAX.
        varint_len(u32::try_from(s.len()).unwrap_or(u32::MAX)) + s.len()
    }

    fn write(&self, w: &mut Writer<'_>) {
        w.string(clamp_str(&self.message, MAX_STRING_LEN));
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            message: r
                .string("PacketDisconnect.message", MAX_STRING_LEN)?
                .to_owned(),
        })
    }
}

impl Payload for PacketConnected {
    fn payload_len(&self) -> usize {
        // The session parameters follow the token; a token is written for them if absent.
        let token = self.udp_token.is_some() || self.session.is_some();
        let session = self.session.as_ref().map_or(0, |s| {
            4 + 1 + 1 + 2 * s.nat_probe_ports.len().min(MAX_NAT_PROBE_PORTS)
        });
        if token { UDP_TOKEN_LEN } else { 0 }.saturating_add(session)
    }

    fn write(&self, w: &mut Writer<'_>) {
        if let Some(token) = &self.udp_token {
            w.raw(token);
        } else if self.session.is_some() {
            w.raw(&[0; UDP_TOKEN_LEN]);
        }
        if let Some(session) = &self.session {
            let ports = session.nat_probe_ports.get(..MAX_NAT_PROBE_PORTS);
            let ports = ports.unwrap_or(&session.nat_probe_ports);
            w.u32(session.version);
            w.u8(session.features.0);
            // At most MAX_NAT_PROBE_PORTS (4), so the count fits a byte.
            w.u8(u8::try_from(ports.len()).unwrap_or(0));
            for port in ports {
                w.u16(*port);
            }
        }
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let udp_token = if r.is_empty() {
            None
        } else {
            Some(r.array::<UDP_TOKEN_LEN>("PacketConnected.udp_token")?)
        };
        let session = if r.is_empty() {
            None
        } else {
            let version = r.u32("PacketConnected.session.version")?;
            let features = SessionFeatures(r.u8("PacketConnected.session.features")?);
            let count = r.u8("PacketConnected.session.nat_probe_ports")?;
            if usize::from(count) > MAX_NAT_PROBE_PORTS {
                return Err(DecodeError::LengthTooLarge {
                    field: "PacketConnected.session.nat_probe_ports",
                    len: u32::from(count),
                    max: MAX_NAT_PROBE_PORTS,
                });
            }
            let mut nat_probe_ports = Vec::with_capacity(usize::from(count));
            for _ in 0..count {
                nat_probe_ports.push(r.u16("PacketConnected.session.nat_probe_ports")?);
            }
            Some(SessionParams {
                version,
                features,
                nat_probe_ports,
            })
        };
        Ok(Self { udp_token, session })
    }
}

impl Payload for PacketPing {
    fn payload_len(&self) -> usize {
        8
    }

    fn write(&self, w: &mut Writer<'_>) {
        w.i64(self.ping_id);
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            ping_id: r.i64("PacketPing.ping_id")?,
        })
    }
}

impl Payload for PacketPong {
    fn payload_len(&self) -> usize {
        8
    }

    fn write(&self, w: &mut Writer<'_>) {
        w.i64(self.ping_id);
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            ping_id: r.i64("PacketPong.ping_id")?,
        })
    }
}

/// Layout shared by ConnectionRequest and ConnectionRequestAccept: UUID, Address, then the
/// trailing port extension (omitted when unknown and nothing follows), then the version-3
/// hints (which need the port written, `0000` when unknown).
fn private_endpoint_len(ep: &Endpoint, hints: Option<&LinkHints>) -> usize {
    16 + address_len(&ep.ip)
        + if ep.port.is_some() || hints.is_some() {
            2
        } else {
            0
        }
        + hints.map_or(0, LinkHints::wire_len)
}

fn write_uuid_endpoint(
    w: &mut Writer<'_>,
    uuid: &uuid::Uuid,
    ep: &Endpoint,
    hints: Option<&LinkHints>,
) {
    w.uuid(uuid);
    w.address(&ep.ip);
    if ep.port.is_some() || hints.is_some() {
        w.u16(wire_port(ep.port));
    }
    if let Some(hints) = hints {
        hints.write(w);
    }
}

/// UUID, private endpoint and hints, as both packets carry them.
fn read_uuid_endpoint(
    r: &mut Reader<'_>,
    fields: [&'static str; 3],
) -> Result<(uuid::Uuid, Endpoint, Option<LinkHints>), DecodeError> {
    let [uuid_field, ip_field, port_field] = fields;
    let uuid = r.uuid(uuid_field)?;
    let ip = r.address(ip_field)?;
    let port = read_trailing_port(r, port_field)?;
    let hints = if r.is_empty() {
        None
    } else {
        Some(LinkHints::read(r)?)
    };
    Ok((uuid, Endpoint { ip, port }, hints))
}

impl Payload for PacketConnectionRequest {
    fn payload_len(&self) -> usize {
        private_endpoint_len(&self.private_endpoint, self.hints.as_ref())
    }

    fn write(&self, w: &mut Writer<'_>) {
        write_uuid_endpoint(w, &self.uuid, &self.private_endpoint, self.hints.as_ref());
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let (uuid, private_endpoint, hints) = read_uuid_endpoint(
            r,
            [
                "PacketConnectionRequest.uuid",
                "PacketConnectionRequest.private_endpoint",
                "PacketConnectionRequest.private_endpoint.port",
            ],
        )?;
        Ok(Self {
            uuid,
            private_endpoint,
            hints,
        })
    }
}

impl Payload for PacketConnectionRequestAccept {
    fn payload_len(&self) -> usize {
        private_endpoint_len(&self.private_endpoint, self.hints.as_ref())
    }

    fn write(&self, w: &mut Writer<'_>) {
        write_uuid_endpoint(w, &self.uuid, &self.private_endpoint, self.hints.as_ref());
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let (uuid, private_endpoint, hints) = read_uuid_endpoint(
            r,
            [
                "PacketConnectionRequestAccept.uuid",
                "PacketConnectionRequestAccept.private_endpoint",
                "PacketConnectionRequestAccept.private_endpoint.port",
            ],
        )?;
        Ok(Self {
            uuid,
            private_endpoint,
            hints,
        })
    }
}

impl Payload for PacketConnectionRequestDenied {
    fn payload_len(&self) -> usize {
        16
    }

    fn write(&self, w: &mut Writer<'_>) {
        w.uuid(&self.uuid);
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            uuid: r.uuid("PacketConnectionRequestDenied.uuid")?,
        })
    }
}

/// Which ClientInfo extension fields are written: a field is written when it or any
/// later field is present, so trailing `None`s are omitted.
struct ClientInfoLayout {
    port: bool,
    tcp: bool,
    secret: bool,
    relay: bool,
}

impl PacketClientInfo {
    fn layout(&self) -> ClientInfoLayout {
        let relay = self.relay_id.is_some();
        let secret = self.link_secret.is_some() || relay;
        let tcp = self.tcp_endpoint.is_some() || secret;
        let port = self.public_endpoint.port.is_some() || tcp;
        ClientInfoLayout {
            port,
            tcp,
            secret,
            relay,
        }
    }
}

impl Payload for PacketClientInfo {
    fn payload_len(&self) -> usize {
        let layout = self.layout();
        let tcp = self.tcp_endpoint.unwrap_or(ABSENT_ENDPOINT);
        16 + address_len(&self.public_endpoint.ip)
            + if layout.port { 2 } else { 0 }
            + if layout.tcp {
                address_len(&tcp.ip) + 2
            } else {
                0
            }
            + if layout.secret { LINK_SECRET_LEN } else { 0 }
            + if layout.relay { RELAY_ID_LEN } else { 0 }
    }

    fn write(&self, w: &mut Writer<'_>) {
        let layout = self.layout();
        w.uuid(&self.uuid);
        w.address(&self.public_endpoint.ip);
        if layout.port {
            w.u16(wire_port(self.public_endpoint.port));
        }
        if layout.tcp {
            let tcp = self.tcp_endpoint.unwrap_or(ABSENT_ENDPOINT);
            w.address(&tcp.ip);
            w.u16(wire_port(tcp.port));
        }
        if layout.secret {
            // A missing secret before a relay id is written as zeros (no exchange has it).
            w.raw(&self.link_secret.unwrap_or([0; LINK_SECRET_LEN]));
        }
        if let Some(relay) = &self.relay_id {
            w.raw(relay.as_bytes());
        }
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let uuid = r.uuid("PacketClientInfo.uuid")?;
        let ip = r.address("PacketClientInfo.public_endpoint")?;
        let port = read_trailing_port(r, "PacketClientInfo.public_endpoint.port")?;
        let tcp_endpoint = if r.is_empty() {
            None
        } else {
            // The TCP endpoint is one extension field: Address and port together.
            let ip = r.address("PacketClientInfo.tcp_endpoint")?;
            let port = port_from_wire(r.u16("PacketClientInfo.tcp_endpoint.port")?);
            (!(ip.is_unspecified() && port.is_none())).then_some(Endpoint { ip, port })
        };
        let link_secret = if r.is_empty() {
            None
        } else {
            Some(r.array::<LINK_SECRET_LEN>("PacketClientInfo.link_secret")?)
        };
        let relay_id = if r.is_empty() {
            None
        } else {
            RelayId::from_wire(r.array::<RELAY_ID_LEN>("PacketClientInfo.relay_id")?)
        };
        Ok(Self {
            uuid,
            public_endpoint: Endpoint { ip, port },
            tcp_endpoint,
            link_secret,
            relay_id,
        })
    }
}

impl Payload for PacketRelayData {
    fn payload_len(&self) -> usize {
        RELAY_ID_LEN + clamp_bytes(&self.datagram, MAX_RELAY_DATAGRAM).len()
    }

    fn write(&self, w: &mut Writer<'_>) {
        w.raw(self.relay_id.as_bytes());
        w.raw(clamp_bytes(&self.datagram, MAX_RELAY_DATAGRAM));
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let payload = r.remaining();
        let (relay_id, datagram) = PacketRelayData::parse(payload)?;
        let datagram = r
            .take(payload.len(), "PacketRelayData.datagram")?
            .get(datagram)
            .map(bytes::Bytes::copy_from_slice)
            .ok_or(DecodeError::Truncated {
                field: "PacketRelayData.datagram",
            })?;
        Ok(Self { relay_id, datagram })
    }
}

impl Payload for PacketRelayClose {
    fn payload_len(&self) -> usize {
        let s = clamp_str(&self.reason, MAX_STRING_LEN);
        RELAY_ID_LEN + varint_len(u32::try_from(s.len()).unwrap_or(u32::MAX)) + s.len()
    }

    fn write(&self, w: &mut Writer<'_>) {
        w.raw(self.relay_id.as_bytes());
        w.string(clamp_str(&self.reason, MAX_STRING_LEN));
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let id = r.array::<RELAY_ID_LEN>("PacketRelayClose.relay_id")?;
        let relay_id = RelayId::from_wire(id).ok_or(DecodeError::InvalidRelayId {
            field: "PacketRelayClose.relay_id",
        })?;
        Ok(Self {
            relay_id,
            reason: r
                .string("PacketRelayClose.reason", MAX_STRING_LEN)?
                .to_owned(),
        })
    }
}

/// Bytes a `String` of `s` takes on the wire.
fn string_len(s: &str) -> usize {
    varint_len(u32::try_from(s.len()).unwrap_or(u32::MAX)) + s.len()
}

fn read_status(r: &mut Reader<'_>, field: &'static str) -> Result<PresenceStatus, DecodeError> {
    let value = r.u8(field)?;
    PresenceStatus::from_byte(value).ok_or(DecodeError::InvalidCode { field, value })
}

impl Payload for PacketPresenceContacts {
    fn payload_len(&self) -> usize {
        2 + 16 * self.contacts.len().min(MAX_PRESENCE_BATCH)
    }

    fn write(&self, w: &mut Writer<'_>) {
        let contacts = self.contacts.get(..MAX_PRESENCE_BATCH);
        let contacts = contacts.unwrap_or(&self.contacts);
        w.u8(self.op.to_byte());
        // At most MAX_PRESENCE_BATCH (200), so the count fits a byte.
        w.u8(u8::try_from(contacts.len()).unwrap_or(0));
        for uuid in contacts {
            w.uuid(uuid);
        }
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let field = "PacketPresenceContacts.op";
        let value = r.u8(field)?;
        let op = ContactsOp::from_byte(value).ok_or(DecodeError::InvalidCode { field, value })?;
        let count = r.u8("PacketPresenceContacts.count")?;
        if usize::from(count) > MAX_PRESENCE_BATCH {
            return Err(DecodeError::LengthTooLarge {
                field: "PacketPresenceContacts.count",
                len: u32::from(count),
                max: MAX_PRESENCE_BATCH,
            });
        }
        let mut contacts = Vec::with_capacity(usize::from(count));
        for _ in 0..count {
            contacts.push(r.uuid("PacketPresenceContacts.contacts")?);
        }
        Ok(Self { op, contacts })
    }
}

impl Payload for PacketPresenceStatus {
    fn payload_len(&self) -> usize {
        1 + string_len(clamp_str(&self.message, MAX_STATUS_MESSAGE))
    }

    fn write(&self, w: &mut Writer<'_>) {
        w.u8(self.status.to_byte());
        w.string(clamp_str(&self.message, MAX_STATUS_MESSAGE));
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            status: read_status(r, "PacketPresenceStatus.status")?,
            message: r
                .string("PacketPresenceStatus.message", MAX_STATUS_MESSAGE)?
                .to_owned(),
        })
    }
}

impl Payload for PacketPresence {
    fn payload_len(&self) -> usize {
        16 + 1 + string_len(clamp_str(&self.message, MAX_STATUS_MESSAGE))
    }

    fn write(&self, w: &mut Writer<'_>) {
        w.uuid(&self.uuid);
        w.u8(self.status.to_byte());
        w.string(clamp_str(&self.message, MAX_STATUS_MESSAGE));
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            uuid: r.uuid("PacketPresence.uuid")?,
            status: read_status(r, "PacketPresence.status")?,
            message: r
                .string("PacketPresence.message", MAX_STATUS_MESSAGE)?
                .to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clamp_str_respects_char_boundaries() {
        assert_eq!(clamp_str("héllo", 2), "h");
        assert_eq!(clamp_str("héllo", 3), "hé");
        assert_eq!(clamp_str("hi", 8), "hi");
    }
}
