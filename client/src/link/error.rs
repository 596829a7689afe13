//! Errors of the peer-link layer.

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine as _;
use ed25519_dalek::VerifyingKey;

/// Why setting up or using a peer link failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// The UDP socket failed (bind, configure or send).
    #[error("UDP socket error: {0}")]
    Io(#[from] std::io::Error),

    /// Building the TLS configuration from our identity failed.
    #[error("could not set up TLS for the peer link: {0}")]
    Tls(#[from] rustls::Error),

    /// The peer authenticated with a different key from the one we expected (from contacts or
    /// the registry). Either someone is impersonating the peer, or the peer rotated its key.
    #[error(
        "peer key mismatch: expected {}, but the peer presented {}; \
         the link was refused (if the peer rotated its key, re-add the contact)",
        key_base64(.expected),
        key_base64(.got)
    )]
    KeyMismatch {
        /// The key we pinned for this peer.
        expected: Box<VerifyingKey>,
        /// The key the peer actually proved possession of.
        got: Box<VerifyingKey>,
    },

    /// The peer's certificate is not an ed25519 raw public key (SPKI DER).
    #[error("the peer did not present an ed25519 raw public key")]
    NotAnEd25519Key,

    /// The peer closed the link during setup; typically it does not accept our key.
    #[error("the peer refused the link: {reason}")]
    Refused {
        /// The reason the peer gave.
        reason: String,
    },

    /// The handshake or the responder's confirmation did not arrive in time.
    #[error(
        "the link handshake with {remote} timed out after {after:?}; \
         the path may be blocked or the peer went away"
    )]
    HandshakeTimeout {
        /// The peer's address.
        remote: SocketAddr,
        /// How long we waited.
        after: Duration,
    },

    /// quinn refused to start a connection (bad address, endpoint stopping, …).
    #[error("could not start a QUIC connection to {remote}: {source}")]
    Connect {
        /// The address we tried.
        remote: SocketAddr,
        /// quinn's reason.
        source: quinn::ConnectError,
    },

    /// The QUIC connection failed or was closed.
    #[error("the peer link failed: {0}")]
    Connection(#[from] quinn::ConnectionError),

    /// The endpoint was closed; no more links can be made or accepted.
    #[error("the link endpoint is closed")]
    EndpointClosed,

    /// Writing to a stream failed.
    #[error("writing to the peer link failed: {0}")]
    Write(#[from] quinn::WriteError),

    /// Reading from a stream failed, or it ended early.
    #[error("reading from the peer link failed: {0}")]
    Read(#[from] quinn::ReadExactError),

    /// The peer broke the link protocol (e.g. an invalid stream header or confirmation).
    #[error("the peer broke the link protocol: {0}")]
    Protocol(&'static str),
}

impl LinkError {
    /// A [`LinkError::KeyMismatch`].
    pub(crate) fn key_mismatch(expected: VerifyingKey, got: VerifyingKey) -> Self {
        Self::KeyMismatch {
            expected: Box::new(expected),
            got: Box::new(got),
        }
    }
}

/// Standard base64 of the 32 key bytes, as `chatr whoami` prints it.
pub(crate) fn key_base64(key: &VerifyingKey) -> String {
    base64::engine::general_purpose::STANDARD.encode(key.as_bytes())
}
