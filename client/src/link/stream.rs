//! One bidirectional QUIC stream on a peer link, tagged with what it carries.
//!
//! The side that opens a stream writes one **kind byte** first ([`StreamKind`]); the other side
//! reads it in [`PeerLink::accept_stream`](super::PeerLink::accept_stream) and hands the stream
//! to the matching application (chat, pipe, file transfer). A stream of unknown kind is refused
//! (stopped and reset) without affecting the rest of the link, so new kinds can be added later.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::LinkError;
use super::close_code::CloseCode;
use super::version::LinkVersion;

/// What a bidirectional stream carries; its byte is the first byte the opener sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StreamKind {
    /// An Enclave-style chat session (`0x01`), see [`chat`](super::chat).
    Chat,
    /// A byte pipe with end-to-end delivery confirmation (`0x02`), see [`pipe`](super::pipe).
    Pipe,
    /// One file with a size and SHA-256 check (`0x03`), see [`transfer`](super::transfer).
    File,
    /// One room's session between two members (`0x04`), see [`crate::room`].
    Room,
}

impl StreamKind {
    /// The kind byte on the wire.
    pub fn to_byte(self) -> u8 {
        match self {
            Self::Chat => 0x01,
            Self::Pipe => 0x02,
            Self::File => 0x03,
            Self::Room => 0x04,
        }
    }

    /// Parses a kind byte; `None` for kinds this version does not know.
    pub fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            0x01 => Some(Self::Chat),
            0x02 => Some(Self::Pipe),
            0x03 => Some(Self::File),
            0x04 => Some(Self::Room),
            _ => None,
        }
    }
}

/// A bidirectional stream of a [`PeerLink`](super::PeerLink), past its kind byte.
///
/// It is a tokio [`AsyncRead`] + [`AsyncWrite`]; `shutdown` (or [`finish`](Self::finish))
/// closes our sending half while the peer's half stays readable. Use
/// [`into_split`](Self::into_split) to read and write from different tasks.
#[derive(Debug)]
pub struct LinkStream {
    kind: StreamKind,
    version: LinkVersion,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
}

impl LinkStream {
    pub(crate) fn new(
        kind: StreamKind,
        version: LinkVersion,
        send: quinn::SendStream,
        recv: quinn::RecvStream,
    ) -> Self {
        Self {
            kind,
            version,
            send,
            recv,
        }
    }

    /// The link's protocol revision, which decides details of some stream kinds (the
    /// pipe's checksum).
    pub fn version(&self) -> LinkVersion {
        self.version
    }

    /// What this stream carries.
    pub fn kind(&self) -> StreamKind {
        self.kind
    }

    /// The two halves, for concurrent reading and writing.
    pub fn into_split(self) -> (quinn::SendStream, quinn::RecvStream) {
        (self.send, self.recv)
    }

    /// Closes our sending half (the peer reads end-of-stream after the data already written).
    pub fn finish(&mut self) -> Result<(), LinkError> {
        self.send
            .finish()
            .map_err(|_| LinkError::Protocol("the stream was already closed"))
    }

    /// Waits until the peer has received everything we sent on a finished stream (or stopped
    /// it). Call this before closing the link, which would discard data still in flight.
    pub async fn wait_delivered(&mut self) -> Result<(), LinkError> {
        wait_delivered(&mut self.send).await
    }

    /// Abandons the stream in both directions with `code` (the peer sees a reset).
    pub fn abort(&mut self, code: CloseCode) {
        let _ = self.send.reset(code.to_varint());
        let _ = self.recv.stop(code.to_varint());
    }
}

/// Waits until a finished send half is fully acknowledged by the peer.
pub(crate) async fn wait_delivered(send: &mut quinn::SendStream) -> Result<(), LinkError> {
    match send.stopped().await {
        Ok(None) => Ok(()),
        Ok(Some(_code)) => Err(LinkError::Protocol(
            "the peer stopped reading before the end of the stream",
        )),
        Err(quinn::StoppedError::ConnectionLost(e)) => Err(LinkError::Connection(e)),
        Err(_) => Err(LinkError::Protocol("the stream was closed early")),
    }
}

impl AsyncRead for LinkStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        AsyncRead::poll_read(Pin::new(&mut self.get_mut().recv), cx, buf)
    }
}

impl AsyncWrite for LinkStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        AsyncWrite::poll_write(Pin::new(&mut self.get_mut().send), cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        AsyncWrite::poll_flush(Pin::new(&mut self.get_mut().send), cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        AsyncWrite::poll_shutdown(Pin::new(&mut self.get_mut().send), cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_bytes_round_trip_and_unknown_is_none() {
        for kind in [
            StreamKind::Chat,
            StreamKind::Pipe,
            StreamKind::File,
            StreamKind::Room,
        ] {
            assert_eq!(StreamKind::from_byte(kind.to_byte()), Some(kind));
        }
        assert_eq!(StreamKind::Chat.to_byte(), 0x01);
        assert_eq!(StreamKind::Pipe.to_byte(), 0x02);
        assert_eq!(StreamKind::File.to_byte(), 0x03);
        assert_eq!(StreamKind::from_byte(0x00), None);
        assert_eq!(StreamKind::Room.to_byte(), 0x04);
        assert_eq!(StreamKind::from_byte(0x05), None);
    }
}
