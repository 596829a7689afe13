//! `tokio_util::codec` adapter, so the server and the client can run
//! `Framed<TlsStream, ConnectCodec>` and get a `Stream` of [`Packet`]s and a `Sink`.
//!
//! This is a thin shell over [`decode_frame`] and [`Packet::encode`]; it does no I/O
//! itself. The decoder reserves only what the declared (already bounded) frame length
//! needs and copies nothing but the packet's own fields.

use bytes::{Buf, BufMut, BytesMut};
use integer_encoding::VarInt;
use tokio_util::codec::{Decoder, Encoder};

use crate::error::DecodeError;
use crate::frame::{decode_frame, frame_header, frame_len};
use crate::packet::{MAX_RELAY_DATAGRAM, Packet, PacketRelayData};
use crate::varint::MAX_VARINT_LEN;
use crate::{RELAY_ID_LEN, RelayId};

/// Frames Connect packets on a byte stream.
#[derive(Debug, Default)]
pub struct ConnectCodec {
    /// Reused encode buffer, so encoding does not allocate per packet.
    scratch: Vec<u8>,
}

impl ConnectCodec {
    /// A new codec.
    pub fn new() -> Self {
        Self::default()
    }
}

/// Appends the frame of a [`PacketRelayData`] carrying `datagram` for `relay_id` to `dst`,
/// byte for byte what [`Packet::encode`] writes for it, without building the packet.
///
/// The TLS relay moves one frame per QUIC datagram; building a `Packet` would copy each
/// datagram into a vector of its own first. A datagram longer than
/// [`MAX_RELAY_DATAGRAM`] is cut to it, as [`Packet::encode`] does.
pub fn encode_relay_data(relay_id: &RelayId, datagram: &[u8], dst: &mut BytesMut) {
    let datagram = datagram.get(..MAX_RELAY_DATAGRAM).unwrap_or(datagram);
    let body_len = 1 + RELAY_ID_LEN + datagram.len();
    // Within MAX_FRAME, so it fits a u32.
    let body = u32::try_from(body_len).unwrap_or(u32::MAX);
    let mut prefix = [0u8; MAX_VARINT_LEN];
    let prefix_len = body.encode_var(&mut prefix);
    dst.reserve(prefix_len + body_len);
    dst.put_slice(prefix.get(..prefix_len).unwrap_or(&prefix));
    dst.put_u8(PacketRelayData::OPCODE);
    dst.put_slice(relay_id.as_bytes());
    dst.put_slice(datagram);
}

/// Read-buffer room a session keeps while it receives relayed datagrams.
pub const RELAY_READ_BUFFER: usize = 64 * 1024;

/// Makes room for a run of `PacketRelayData` frames in a `Framed` read buffer (call it
/// after decoding one).
///
/// Decoded datagrams are slices of the buffer, so while they wait in a queue the buffer
/// is shared and each `reserve` allocates afresh, by default just one frame's worth: one
/// allocation and one short read per datagram. With [`RELAY_READ_BUFFER`] of room, one
/// allocation and one read take dozens of frames. Sessions that never relay keep their
/// small buffers.
pub fn make_room_for_relay_data(read_buffer: &mut BytesMut) {
    if read_buffer.capacity() - read_buffer.len() < RELAY_READ_BUFFER / 4 {
        read_buffer.reserve(RELAY_READ_BUFFER);
    }
}

/// Error from [`ConnectCodec`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The underlying stream failed (or closed inside a frame).
    #[error("connection I/O failed: {0}")]
    Io(#[from] std::io::Error),
    /// The peer sent an invalid frame; close the session.
    #[error("invalid frame from peer: {0}")]
    Decode(#[from] DecodeError),
}

impl Decoder for ConnectCodec {
    type Item = Packet;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Packet>, CodecError> {
        if let Some(packet) = take_relay_data(src)? {
            return Ok(Some(packet));
        }
        match decode_frame(src) {
            Ok((packet, used)) => {
                src.advance(used);
                Ok(Some(packet))
            }
            Err(DecodeError::Incomplete) => {
                // The length is known and bounded by MAX_FRAME once the prefix is readable.
                if let Ok(total) = frame_len(src) {
                    src.reserve(total.saturating_sub(src.len()));
                }
                Ok(None)
            }
            Err(e) => Err(CodecError::Decode(e)),
        }
    }
}

/// A whole `PacketRelayData` frame at the start of `src`, taken out with its datagram as
/// a slice of `src`'s buffer: the TLS relay moves one frame per QUIC datagram, and a copy
/// and an allocation each were a tenth of a relaying client's and server's time.
/// `None` (nothing taken) for any other frame, and for one not wholly buffered yet: the
/// general decoder then says what it is.
fn take_relay_data(src: &mut BytesMut) -> Result<Option<Packet>, CodecError> {
    let Ok((body_len, header)) = frame_header(src) else {
        return Ok(None);
    };
    let total = header + body_len;
    if src.len() < total || src.get(header) != Some(&PacketRelayData::OPCODE) {
        return Ok(None);
    }
    let payload_at = header + 1;
    let (relay_id, datagram) = PacketRelayData::parse(src.get(payload_at..total).unwrap_or(&[]))?;
    let frame = src.split_to(total).freeze();
    let datagram = frame.slice(payload_at + datagram.start..payload_at + datagram.end);
    Ok(Some(Packet::RelayData(PacketRelayData {
        relay_id,
        datagram,
    })))
}

impl Encoder<&Packet> for ConnectCodec {
    type Error = CodecError;

    fn encode(&mut self, item: &Packet, dst: &mut BytesMut) -> Result<(), CodecError> {
        self.scratch.clear();
        item.encode(&mut self.scratch);
        dst.extend_from_slice(&self.scratch);
        Ok(())
    }
}

impl Encoder<Packet> for ConnectCodec {
    type Error = CodecError;

    fn encode(&mut self, item: Packet, dst: &mut BytesMut) -> Result<(), CodecError> {
        Encoder::<&Packet>::encode(self, &item, dst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_data_frames_are_what_the_packet_encodes() {
        let relay_id = RelayId::from_wire([7; RELAY_ID_LEN]).expect("a valid relay id");
        for len in [
            1,
            127,
            128,
            1200,
            16_383,
            16_384,
            MAX_RELAY_DATAGRAM,
            MAX_RELAY_DATAGRAM + 9,
        ] {
            let datagram: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut direct = BytesMut::new();
            encode_relay_data(&relay_id, &datagram, &mut direct);
            let packet = Packet::RelayData(PacketRelayData {
                relay_id,
                datagram: datagram.clone().into(),
            });
            assert_eq!(
                &direct[..],
                &packet.to_bytes()[..],
                "datagram of {len} bytes"
            );
            let mut codec = ConnectCodec::new();
            let decoded = codec.decode(&mut direct).expect("valid").expect("complete");
            let Packet::RelayData(data) = decoded else {
                panic!("decoded {decoded:?}");
            };
            assert_eq!(data.relay_id, relay_id);
            assert_eq!(
                data.datagram,
                datagram.get(..MAX_RELAY_DATAGRAM).unwrap_or(&datagram)
            );
            assert!(direct.is_empty());
        }
    }

    #[test]
    fn the_relay_data_fast_path_decodes_as_the_slice_decoder_does() {
        let relay_id = RelayId::from_wire([9; RELAY_ID_LEN]).expect("a valid relay id");
        let mut stream = BytesMut::new();
        encode_relay_data(&relay_id, b"first", &mut stream);
        stream.extend_from_slice(&Packet::Ping(crate::PacketPing { ping_id: 7 }).to_bytes());
        encode_relay_data(&relay_id, b"second", &mut stream);
        let whole = stream.clone().freeze();
        // Fed a byte at a time: incomplete frames wait, each frame comes out once.
        let mut codec = ConnectCodec::new();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for &b in whole.iter() {
            buf.put_u8(b);
            while let Some(packet) = codec.decode(&mut buf).expect("valid") {
                got.push(packet);
            }
        }
        let mut by_slice = Vec::new();
        let mut at = 0;
        while at < whole.len() {
            let (packet, used) = decode_frame(whole.get(at..).unwrap_or_default()).expect("valid");
            by_slice.push(packet);
            at += used;
        }
        assert_eq!(got, by_slice);
        assert_eq!(got.len(), 3);

        // Invalid relay frames are the same errors on both paths: an empty datagram, and
        // a relay id the protocol never hands out.
        let mut empty = BytesMut::from(&[1 + RELAY_ID_LEN as u8, PacketRelayData::OPCODE][..]);
        empty.extend_from_slice(relay_id.as_bytes());
        let mut zero_id = BytesMut::new();
        encode_relay_data(&relay_id, b"x", &mut zero_id);
        for b in zero_id.iter_mut().skip(2).take(RELAY_ID_LEN) {
            *b = 0;
        }
        for bad in [empty, zero_id] {
            let slice_error = decode_frame(&bad).expect_err("invalid");
            match ConnectCodec::new().decode(&mut bad.clone()) {
                Err(CodecError::Decode(e)) => assert_eq!(e, slice_error),
                other => panic!("expected {slice_error:?}, got {other:?}"),
            }
        }
    }
}
