//! `tokio_util::codec` adapter, so the server and the client can run
//! `Framed<TlsStream, ConnectCodec>` and get a `Stream` of [`Packet`]s and a `Sink`.
//!
//! This is a thin shell over [`decode_frame`] and [`Packet::encode`]; it does no I/O
//! itself. The decoder reserves only what the declared (already bounded) frame length
//! needs and copies nothing but the packet's own fields.

use bytes::{Buf, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::error::DecodeError;
use crate::frame::{decode_frame, frame_len};
use crate::packet::Packet;

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
