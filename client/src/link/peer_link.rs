//! An authenticated, confirmed QUIC connection to one peer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::VerifyingKey;

use super::LinkError;
use super::close_code::CloseCode;
use super::stream::{LinkStream, StreamKind};
use super::version::LinkVersion;

/// A direct, mutually authenticated link to a peer.
///
/// Made by [`LinkEndpoint::connect`](super::LinkEndpoint::connect) (initiator) or
/// [`IncomingLink::accept`](super::IncomingLink::accept) (responder); by then both sides have
/// proved their ed25519 keys and each has checked the other's against the key it expected.
/// Cheap to clone; all clones are the same link.
#[derive(Debug, Clone)]
pub struct PeerLink {
    connection: quinn::Connection,
    peer: VerifyingKey,
    version: LinkVersion,
    paths: Option<Arc<Paths>>,
}

/// The path task's handle, shared by every clone of one [`PeerLink`]. When the last
/// clone is gone, `_users` tells the task, which lets go of its own handle of the
/// connection (so dropping the link closes it, as with plain quinn).
#[derive(Debug)]
struct Paths {
    handle: crate::path::LinkPaths,
    _users: tokio_util::sync::DropGuard,
}

impl PeerLink {
    pub(crate) fn new(connection: quinn::Connection, peer: VerifyingKey) -> Self {
        Self {
            version: LinkVersion::of(&connection),
            connection,
            peer,
            paths: None,
        }
    }

    /// The same link, with the handle of the task that keeps its paths; `users` is
    /// cancelled once every clone of the link is dropped.
    pub(crate) fn with_paths(
        mut self,
        paths: crate::path::LinkPaths,
        users: tokio_util::sync::CancellationToken,
    ) -> Self {
        self.paths = Some(Arc::new(Paths {
            handle: paths,
            _users: users.drop_guard(),
        }));
        self
    }

    /// Which path the link uses, why, and a way to pin it; `None` for a link made with
    /// [`LinkEndpoint`](super::LinkEndpoint) directly (one fixed address).
    pub fn paths(&self) -> Option<&crate::path::LinkPaths> {
        self.paths.as_deref().map(|p| &p.handle)
    }

    /// The peer's ed25519 identity, proved during the handshake.
    pub fn peer_key(&self) -> VerifyingKey {
        self.peer
    }

    /// The peer-link revision both sides agreed on in the handshake.
    pub fn version(&self) -> LinkVersion {
        self.version
    }

    /// The peer's address as QUIC knows it: for a link made by a
    /// [`crate::Client`], a stable virtual address whatever the path (see
    /// [`PeerLink::paths`] for the path itself).
    pub fn remote_addr(&self) -> SocketAddr {
        self.connection.remote_address()
    }

    /// The current round-trip time estimate.
    pub fn rtt(&self) -> Duration {
        self.connection.rtt()
    }

    /// The underlying quinn connection, for statistics or advanced use.
    pub fn connection(&self) -> &quinn::Connection {
        &self.connection
    }

    /// Opens a new bidirectional stream carrying `kind` (writes the kind byte at once, which
    /// also makes the stream visible to the peer).
    pub async fn open(&self, kind: StreamKind) -> Result<LinkStream, LinkError> {
        let (mut send, recv) = self.connection.open_bi().await?;
        send.write_all(&[kind.to_byte()]).await?;
        Ok(LinkStream::new(kind, self.version, send, recv))
    }

    /// Waits for the next stream the peer opens and reads its kind. Streams of unknown kind
    /// are refused (stopped and reset with [`CloseCode::Refused`]) and skipped. Fails when the
    /// link closes.
    pub async fn accept_stream(&self) -> Result<LinkStream, LinkError> {
        loop {
            let (mut send, mut recv) = self.connection.accept_bi().await?;
            let mut kind = [0u8; 1];
            match recv.read_exact(&mut kind).await {
                Ok(()) => {}
                Err(quinn::ReadExactError::ReadError(quinn::ReadError::ConnectionLost(e))) => {
                    return Err(LinkError::Connection(e));
                }
                // A stream that ends or is reset before its kind byte carries nothing.
                Err(_) => continue,
            }
            let [byte] = kind;
            match StreamKind::from_byte(byte) {
                Some(kind) => return Ok(LinkStream::new(kind, self.version, send, recv)),
                None => {
                    tracing::debug!(kind = byte, "refusing a stream of unknown kind");
                    let _ = recv.stop(CloseCode::Refused.to_varint());
                    let _ = send.reset(CloseCode::Refused.to_varint());
                }
            }
        }
    }

    /// Closes the link at once with `code` and a short human-readable `reason`. Data not yet
    /// acknowledged by the peer is discarded: finish streams and wait for
    /// [`LinkStream::wait_delivered`] first.
    pub fn close(&self, code: CloseCode, reason: &str) {
        self.connection.close(code.to_varint(), reason.as_bytes());
    }

    /// Waits until the link is closed (by either side, or by the idle timeout) and says why.
    pub async fn closed(&self) -> LinkError {
        LinkError::Connection(self.connection.closed().await)
    }
}
