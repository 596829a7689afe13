//! Framing: `VarInt length ‖ uint8 opcode ‖ payload`, where length = 1 + payload length.
//!
//! [`decode_frame`] is the only entry point for bytes from the network. It checks the
//! length against [`MAX_FRAME`] as soon as the VarInt is readable, before the body is
//! awaited or anything is allocated, and reports [`DecodeError::Incomplete`] only while
//! more bytes could still complete a frame.

use crate::error::DecodeError;
use crate::limits::MAX_FRAME;
use crate::packet::Packet;
use crate::payload::Payload;
use crate::reader::Reader;
use crate::varint::{decode_varint, varint_len};
use crate::writer::Writer;

/// Parses the length prefix and returns `(body_len, header_len)`, with the length checked.
///
/// When the VarInt itself is not fully buffered, the bytes seen so far already bound the
/// value: if no continuation could produce a length in `1..=MAX_FRAME`, the prefix is
/// rejected at once instead of waiting.
pub(crate) fn frame_header(buf: &[u8]) -> Result<(usize, usize), DecodeError> {
    match decode_varint(buf) {
        Ok((len, used)) => {
            let body = usize::try_from(len).unwrap_or(usize::MAX);
            if body == 0 {
                Err(DecodeError::ZeroLength)
            } else if body > MAX_FRAME {
                Err(DecodeError::FrameTooLarge {
                    len,
                    max: MAX_FRAME,
                })
            } else {
                Ok((body, used))
            }
        }
        Err(DecodeError::Incomplete) => {
            // Every buffered byte has its continuation bit set and there are at most 4.
            let mut partial: u64 = 0;
            for (i, b) in buf.iter().enumerate() {
                partial |= u64::from(b & 0x7f) << (7 * i);
            }
            // Smallest value any continuation can still produce, ignoring 0.
            let smallest = if partial == 0 {
                1u64 << (7 * buf.len())
            } else {
                partial
            };
            if smallest > MAX_FRAME as u64 {
                Err(DecodeError::FrameTooLarge {
                    len: u32::try_from(smallest).unwrap_or(u32::MAX),
                    max: MAX_FRAME,
                })
            } else {
                Err(DecodeError::Incomplete)
            }
        }
        Err(other) => Err(other),
    }
}

/// Total length (length prefix + opcode + payload) of the frame starting at `buf[0]`.
///
/// Needs only the length prefix; useful to reserve exactly what the frame needs.
///
/// # Errors
/// [`DecodeError::Incomplete`] while the length prefix is not fully buffered, or any
/// length error ([`DecodeError::ZeroLength`], [`DecodeError::FrameTooLarge`], VarInt errors).
pub fn frame_len(buf: &[u8]) -> Result<usize, DecodeError> {
    let (body, header) = frame_header(buf)?;
    Ok(header + body)
}

/// Decodes one frame from the start of `buf`, returning the packet and the number of
/// bytes it used. Bytes after the frame are left alone.
///
/// # Errors
/// [`DecodeError::Incomplete`] when `buf` holds a proper prefix of a frame that is not
/// already known to be invalid (the length and, once buffered, the opcode are checked
/// early). Any other variant means the stream is invalid and the session must close; in
/// particular a frame whose payload ends inside a field is [`DecodeError::Truncated`].
pub fn decode_frame(buf: &[u8]) -> Result<(Packet, usize), DecodeError> {
    let (body_len, header) = frame_header(buf)?;
    let total = header + body_len;
    let Some(body) = buf.get(header..total) else {
        if let Some(&opcode) = buf.get(header)
            && !Packet::is_known_opcode(opcode)
        {
            return Err(DecodeError::UnknownOpcode { opcode });
        }
        return Err(DecodeError::Incomplete);
    };
    let (&opcode, payload) = body.split_first().ok_or(DecodeError::ZeroLength)?;
    let packet = Packet::decode(opcode, payload)?;
    Ok((packet, total))
}

fn read_all<P: Payload>(payload: &[u8]) -> Result<P, DecodeError> {
    // Trailing bytes after the known fields are tolerated (future extensions).
    P::read(&mut Reader::new(payload))
}

impl Packet {
    /// `true` for the opcodes 0x0–0x8 (the spec's) and 0x9–0xD (version 3).
    pub fn is_known_opcode(opcode: u8) -> bool {
        opcode <= crate::PacketPresence::OPCODE
    }

    /// `true` for packets only a version-3 session may send or be sent.
    pub fn is_version3(&self) -> bool {
        self.opcode() > crate::PacketClientInfo::OPCODE
    }

    /// This packet's opcode.
    pub fn opcode(&self) -> u8 {
        match self {
            Self::Connect(_) => crate::PacketConnect::OPCODE,
            Self::Disconnect(_) => crate::PacketDisconnect::OPCODE,
            Self::Connected(_) => crate::PacketConnected::OPCODE,
            Self::Ping(_) => crate::PacketPing::OPCODE,
            Self::Pong(_) => crate::PacketPong::OPCODE,
            Self::ConnectionRequest(_) => crate::PacketConnectionRequest::OPCODE,
            Self::ConnectionRequestAccept(_) => crate::PacketConnectionRequestAccept::OPCODE,
            Self::ConnectionRequestDenied(_) => crate::PacketConnectionRequestDenied::OPCODE,
            Self::ClientInfo(_) => crate::PacketClientInfo::OPCODE,
            Self::RelayData(_) => crate::PacketRelayData::OPCODE,
            Self::RelayClose(_) => crate::PacketRelayClose::OPCODE,
            Self::PresenceContacts(_) => crate::PacketPresenceContacts::OPCODE,
            Self::PresenceStatus(_) => crate::PacketPresenceStatus::OPCODE,
            Self::Presence(_) => crate::PacketPresence::OPCODE,
        }
    }

    /// The spec's name of this packet, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Connect(_) => "PacketConnect",
            Self::Disconnect(_) => "PacketDisconnect",
            Self::Connected(_) => "PacketConnected",
            Self::Ping(_) => "PacketPing",
            Self::Pong(_) => "PacketPong",
            Self::ConnectionRequest(_) => "PacketConnectionRequest",
            Self::ConnectionRequestAccept(_) => "PacketConnectionRequestAccept",
            Self::ConnectionRequestDenied(_) => "PacketConnectionRequestDenied",
            Self::ClientInfo(_) => "PacketClientInfo",
            Self::RelayData(_) => "PacketRelayData",
            Self::RelayClose(_) => "PacketRelayClose",
            Self::PresenceContacts(_) => "PacketPresenceContacts",
            Self::PresenceStatus(_) => "PacketPresenceStatus",
            Self::Presence(_) => "PacketPresence",
        }
    }

    fn payload_len(&self) -> usize {
        match self {
            Self::Connect(p) => p.payload_len(),
            Self::Disconnect(p) => p.payload_len(),
            Self::Connected(p) => p.payload_len(),
            Self::Ping(p) => p.payload_len(),
            Self::Pong(p) => p.payload_len(),
            Self::ConnectionRequest(p) => p.payload_len(),
            Self::ConnectionRequestAccept(p) => p.payload_len(),
            Self::ConnectionRequestDenied(p) => p.payload_len(),
            Self::ClientInfo(p) => p.payload_len(),
            Self::RelayData(p) => p.payload_len(),
            Self::RelayClose(p) => p.payload_len(),
            Self::PresenceContacts(p) => p.payload_len(),
            Self::PresenceStatus(p) => p.payload_len(),
            Self::Presence(p) => p.payload_len(),
        }
    }

    fn write_payload(&self, w: &mut Writer<'_>) {
        match self {
            Self::Connect(p) => p.write(w),
            Self::Disconnect(p) => p.write(w),
            Self::Connected(p) => p.write(w),
            Self::Ping(p) => p.write(w),
            Self::Pong(p) => p.write(w),
            Self::ConnectionRequest(p) => p.write(w),
            Self::ConnectionRequestAccept(p) => p.write(w),
            Self::ConnectionRequestDenied(p) => p.write(w),
            Self::ClientInfo(p) => p.write(w),
            Self::RelayData(p) => p.write(w),
            Self::RelayClose(p) => p.write(w),
            Self::PresenceContacts(p) => p.write(w),
            Self::PresenceStatus(p) => p.write(w),
            Self::Presence(p) => p.write(w),
        }
    }

    /// Length of the whole frame [`Packet::encode`] writes (prefix + opcode + payload).
    pub fn encoded_len(&self) -> usize {
        let body = 1 + self.payload_len();
        varint_len(u32::try_from(body).unwrap_or(u32::MAX)) + body
    }

    /// Appends the whole frame (VarInt length, opcode, payload) to `out`.
    ///
    /// Never writes a frame [`decode_frame`] rejects: a `String` longer than
    /// [`crate::MAX_STRING_LEN`] is cut at a char boundary and a byte array longer than
    /// [`crate::MAX_BYTE_ARRAY_LEN`] is cut, which keeps every frame within [`MAX_FRAME`].
    pub fn encode(&self, out: &mut Vec<u8>) {
        let body = 1 + self.payload_len();
        out.reserve(self.encoded_len());
        let mut w = Writer::new(out);
        w.varint(u32::try_from(body).unwrap_or(u32::MAX));
        w.u8(self.opcode());
        self.write_payload(&mut w);
    }

    /// The whole frame as a new vector.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode(&mut out);
        out
    }

    /// Decodes a packet from its opcode and complete payload (the frame body after the
    /// opcode). Trailing bytes after the fields we know are ignored.
    ///
    /// # Errors
    /// [`DecodeError::UnknownOpcode`] or any field error; never
    /// [`DecodeError::Incomplete`], because the payload is complete by definition.
    pub fn decode(opcode: u8, payload: &[u8]) -> Result<Self, DecodeError> {
        Ok(match opcode {
            crate::PacketConnect::OPCODE => Self::Connect(read_all(payload)?),
            crate::PacketDisconnect::OPCODE => Self::Disconnect(read_all(payload)?),
            crate::PacketConnected::OPCODE => Self::Connected(read_all(payload)?),
            crate::PacketPing::OPCODE => Self::Ping(read_all(payload)?),
            crate::PacketPong::OPCODE => Self::Pong(read_all(payload)?),
            crate::PacketConnectionRequest::OPCODE => Self::ConnectionRequest(read_all(payload)?),
            crate::PacketConnectionRequestAccept::OPCODE => {
                Self::ConnectionRequestAccept(read_all(payload)?)
            }
            crate::PacketConnectionRequestDenied::OPCODE => {
                Self::ConnectionRequestDenied(read_all(payload)?)
            }
            crate::PacketClientInfo::OPCODE => Self::ClientInfo(read_all(payload)?),
            crate::PacketRelayData::OPCODE => Self::RelayData(read_all(payload)?),
            crate::PacketRelayClose::OPCODE => Self::RelayClose(read_all(payload)?),
            crate::PacketPresenceContacts::OPCODE => Self::PresenceContacts(read_all(payload)?),
            crate::PacketPresenceStatus::OPCODE => Self::PresenceStatus(read_all(payload)?),
            crate::PacketPresence::OPCODE => Self::Presence(read_all(payload)?),
            opcode => return Err(DecodeError::UnknownOpcode { opcode }),
        })
    }
}
