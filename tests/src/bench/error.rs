//! Why a benchmark could not produce its figure.

use std::path::PathBuf;

/// A benchmark failed to run (as opposed to running and reporting a bad figure).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BenchError {
    /// A file or socket operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// TLS setup or handshake failed.
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// The server's certificate could not be created or loaded.
    #[error("server TLS identity: {0}")]
    ServerTls(#[from] chatr_server::tls::TlsError),
    /// The server under test could not be started or stopped.
    #[error("server process: {0}")]
    Server(String),
    /// The server broke the protocol (or refused a login).
    #[error("protocol: {0}")]
    Protocol(String),
    /// The connection closed before the expected packet.
    #[error("connection closed: {0}")]
    Closed(String),
    /// An operation did not finish in time.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The identities file is unusable.
    #[error("identities file {path}: {reason}")]
    Identities {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The NAT lab could not be built or used.
    #[error("NAT lab: {0}")]
    Lab(String),
    /// An external tool (iperf3, chatr) failed.
    #[error("{tool}: {reason}")]
    Tool {
        /// The tool.
        tool: String,
        /// What went wrong.
        reason: String,
    },
    /// The smoke run found the server misbehaving.
    #[error("smoke check failed: {0}")]
    Check(String),
    /// The benchmark's options cannot give a meaningful figure.
    #[error("bad options: {0}")]
    Usage(String),
}

impl BenchError {
    /// An I/O error with what was being done.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }
}
