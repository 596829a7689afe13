//! Why a registry operation failed.

use uuid::Uuid;

/// A registry operation failed. Each variant says what happened; the REST API
/// and the admin socket turn them into answers that tell the caller what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// The UUID already has a different key (rotate it with the old key instead).
    #[error("client {0} is already registered with a different key")]
    AlreadyRegistered(Uuid),
    /// The UUID has no key.
    #[error("client {0} is not registered")]
    DoesNotExist(Uuid),
    /// A rotation raced with another one: the key it was signed with is no
    /// longer the current key.
    #[error("the key of client {0} changed while rotating; sign with the current key and retry")]
    KeyChanged(Uuid),
    /// The registration token is unknown or was already used.
    #[error("registration token is unknown or already used")]
    InvalidToken,
    /// Another process (probably a running `chatr-server`) has the database open.
    #[error(
        "registry database {path} is in use by another process; stop the other chatr-server \
         or use the admin commands, which talk to the running server"
    )]
    Locked {
        /// The database file.
        path: String,
    },
    /// The server is shutting down and accepts no more writes.
    #[error("the registry is shutting down; retry against the restarted server")]
    ShuttingDown,
    /// The database failed; nothing was acknowledged.
    #[error("registry storage error: {0}")]
    Storage(#[from] redb::Error),
    /// Creating the data directory failed.
    #[error("cannot create registry directory {path}: {source}")]
    Io {
        /// The directory.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The registry configuration is unusable (e.g. a bad PostgreSQL URL or CA file).
    #[error("registry configuration: {0}")]
    Config(String),
    /// PostgreSQL refused or failed a query; nothing was acknowledged.
    #[cfg(feature = "cluster")]
    #[error("PostgreSQL registry: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// No PostgreSQL connection could be had in time; nothing was acknowledged.
    #[cfg(feature = "cluster")]
    #[error("PostgreSQL registry unreachable: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    /// The storage did not answer in time; the write was not acknowledged (it may or
    /// may not have been committed).
    #[error("registry storage did not answer within {0:?}; retry")]
    Timeout(std::time::Duration),
    /// The blocking write task died (a bug; nothing was acknowledged).
    #[error("registry write task failed: {0}")]
    Task(String),
}
