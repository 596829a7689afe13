//! How the connection under a session failed (what a session's
//! `SessionEnd::Transport` carries).

use std::io;
use std::sync::Arc;

/// How the connection under a session failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// Reading or writing failed.
    #[error("{0}")]
    Io(#[source] Arc<io::Error>),
    /// A write did not finish within the write timeout: the server is not reading.
    #[error("writing to the server timed out")]
    WriteTimeout,
    /// The server closed the connection.
    #[error("the server closed the connection")]
    Closed,
}

impl From<io::Error> for TransportError {
    fn from(err: io::Error) -> Self {
        Self::Io(Arc::new(err))
    }
}

/// Equal when they say the same: I/O errors have no identity beyond kind and text.
impl PartialEq for TransportError {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Io(a), Self::Io(b)) => a.kind() == b.kind() && a.to_string() == b.to_string(),
            (Self::WriteTimeout, Self::WriteTimeout) | (Self::Closed, Self::Closed) => true,
            _ => false,
        }
    }
}

impl Eq for TransportError {}
