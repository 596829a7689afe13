//! What can go wrong in the session layer, with the real causes kept: the I/O
//! errors travel as `Arc<io::Error>` because the driver's state is published
//! on a `watch` (and so must be `Clone`).

use std::io;
use std::sync::Arc;
use std::time::Duration;

use super::event::SessionEnd;

/// Errors of the session layer.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The server's certificate is not the one we trust.
    #[error(
        "the Connect server's TLS certificate is not trusted: {0}; if the server's certificate really changed, run `chatr init` again with the new certificate or fingerprint"
    )]
    ServerCertMismatch(String),
    /// The server refused our login signature.
    #[error(
        "the server refused our login ({0}): this identity is not registered there, or with another key; run `chatr register`"
    )]
    LoginRejected(String),
    /// Another client with our UUID is online.
    #[error(
        "another client with this identity is already connected to the server; stop it, or use another --home"
    )]
    AlreadyConnected,
    /// The server could not be reached (resolution, TCP, TLS).
    #[error("cannot reach the Connect server {server}: {cause}")]
    Unreachable {
        /// `host:port`.
        server: String,
        /// What failed.
        #[source]
        cause: ConnectError,
    },
    /// The server did not come online in time.
    #[error(
        "not connected to the Connect server after {waited:?} (last problem: {})",
        last_problem.as_ref().map_or_else(|| "none".to_owned(), ToString::to_string)
    )]
    NotOnline {
        /// How long we waited.
        waited: Duration,
        /// Why the last attempt failed, if one did.
        last_problem: Option<Box<OfflineReason>>,
    },
    /// The session is not logged in right now.
    #[error("not connected to the Connect server right now; try again in a moment")]
    Offline,
    /// The session task has stopped.
    #[error("the session has stopped")]
    Stopped,
}

/// Why a connection to the server could not be set up.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The host name did not resolve.
    #[error("cannot resolve: {0}")]
    Resolve(#[source] Arc<io::Error>),
    /// TCP could not connect (or its socket could not be read back).
    #[error("{0}")]
    Tcp(#[source] Arc<io::Error>),
    /// The host is not a valid TLS server name.
    #[error("{0:?} is not a valid server name for TLS")]
    BadServerName(String),
    /// The TLS handshake failed for another reason than the certificate.
    #[error("TLS handshake failed: {0}")]
    Tls(#[source] Arc<io::Error>),
    /// The channel-binding exporter could not be computed.
    #[error("TLS exporter unavailable: {0}")]
    Exporter(#[source] rustls::Error),
    /// TCP plus TLS did not finish within the connect timeout.
    #[error("connecting timed out after {0:?}")]
    Timeout(Duration),
}

/// Why the driver is offline: how its last round ended.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum OfflineReason {
    /// Connecting failed.
    #[error(transparent)]
    Connect(SessionError),
    /// The session ended.
    #[error(transparent)]
    Ended(SessionEnd),
}
