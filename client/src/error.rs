//! The client library's top-level error: one enum over every layer, with
//! variants for the problems a person can act on (peer offline, denied, punch
//! failed, key mismatch, server certificate mismatch, not registered, …).

use uuid::Uuid;

use crate::config::ConfigError;
use crate::contacts::ContactsError;
use crate::identity::IdentityError;
use crate::link::LinkError;
use crate::punch::PunchFailure;
use crate::rest::RestError;
use crate::session::SessionError;
use crate::trust::TrustError;

/// Anything the client library can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Identity files.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// Config file.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Address book.
    #[error(transparent)]
    Contacts(#[from] ContactsError),
    /// TLS trust setup.
    #[error(transparent)]
    Trust(#[from] TrustError),
    /// Registry API.
    #[error(transparent)]
    Rest(#[from] RestError),
    /// Connect session.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// A local socket could not be set up.
    #[error("cannot open the local UDP/TCP port: {0}")]
    Socket(#[source] std::io::Error),
    /// The peer denied our request, or is not connected to the server (the
    /// server answers both the same way).
    #[error(
        "{peer} denied the link request or is offline (not connected to the Connect server); ask them to run `chatr listen` and to have you in their contacts"
    )]
    Denied {
        /// The peer.
        peer: Uuid,
    },
    /// The peer did not answer the request in time.
    #[error("{peer} did not answer the link request within {secs} s")]
    RequestTimeout {
        /// The peer.
        peer: Uuid,
        /// Seconds waited.
        secs: u64,
    },
    /// The peer presented another key than the pinned one.
    #[error(
        "{peer} presented a different key than the one pinned for it: refusing the link (if they really rotated their key, remove and re-add the contact)"
    )]
    KeyMismatch {
        /// The peer.
        peer: Uuid,
    },
    /// The registry has no such client.
    #[error("{0} is not registered at this server; check the UUID with its owner (`chatr whoami`)")]
    PeerNotRegistered(Uuid),
    /// Nobody with that alias or UUID is in the address book.
    #[error(
        "unknown peer {0:?}: not an alias or UUID in the address book (see `chatr contacts list`)"
    )]
    UnknownPeer(String),
    /// The peer refused our QUIC link (it pinned another key for us).
    #[error("{peer} refused the link: {reason} (they may have pinned an old key of ours)")]
    LinkRefused {
        /// The peer.
        peer: Uuid,
        /// Their reason.
        reason: String,
    },
    /// Hole punching found no working path.
    #[error("{0}")]
    PunchFailed(Box<PunchFailure>),
    /// The peer link failed.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// The server gave no link secret (a server without the extension), so
    /// probes cannot be authenticated.
    #[error(
        "the server did not send a link secret: it is too old for authenticated hole punching; upgrade the server"
    )]
    NoLinkSecret,
    /// A link attempt with this peer is already in progress.
    #[error("a link attempt with {peer} is already in progress")]
    AlreadyLinking {
        /// The peer.
        peer: Uuid,
    },
    /// The session to the server was lost while brokering.
    #[error("lost the connection to the Connect server while setting up the link ({0}); try again")]
    SessionLost(String),
    /// Something did not arrive in time.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    /// The client is shutting down.
    #[error("the client is shutting down")]
    ShuttingDown,
}
