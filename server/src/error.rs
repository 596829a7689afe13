//! Why the server could not start.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::admin::AdminError;
use crate::registry::RegistryError;
use crate::tls::TlsError;

/// [`crate::start`] failed; nothing is left running.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The data directory could not be created.
    #[error("cannot create data directory {path}: {source}; choose a writable --data-dir")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A listening socket could not be bound.
    #[error(
        "cannot listen on {addr} ({protocol}): {source}; is another server using it? pick another address or port"
    )]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// "TCP" or "UDP".
        protocol: &'static str,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The certificate or key could not be loaded or created.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The identity registry could not be opened.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The admin socket could not be set up.
    #[error(transparent)]
    Admin(#[from] AdminError),
    /// Cluster settings are given, but this build has no cluster mode.
    #[error(
        "{0} is set, but this chatr-server was built without cluster mode; rebuild with \
         `cargo build --release -p chatr-server --features cluster` or remove the cluster_* and \
         registry_postgres* settings"
    )]
    ClusterNotBuilt(&'static str),
    /// Joining the cluster failed.
    #[cfg(feature = "cluster")]
    #[error(transparent)]
    Cluster(#[from] crate::cluster::nats::ClusterError),
}
