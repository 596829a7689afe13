//! The direct peer link: QUIC over the punched UDP socket, authenticated with raw ed25519 keys.
//!
//! # Where this sits in the flow
//!
//! After the Connect server has brokered a `ClientInfo` exchange, both clients probe each
//! other's candidate endpoints from the *same* UDP socket that carries their server binding
//! messages (port P, shared with the TCP session). Once a path works, the **initiator** (the
//! side that sent the `ConnectionRequest`) opens a QUIC connection to the **responder** over
//! that very socket, so the NAT mapping the probes opened is the one QUIC uses.
//!
//! - [`socket`]: wraps the UDP socket for quinn, sends each datagram of a path-managed
//!   link on the paths its plan names (direct, the UDP relay, the TLS relay; see
//!   `routes`), and diverts every non-QUIC datagram (our `0x00 'C' 'H' 'R'` control
//!   datagrams, STUN) to a [`ControlRx`] channel; [`RawSender`] sends probes on the same
//!   socket.
//! - [`rpk`]: TLS 1.3 with RFC 7250 raw public keys — each side's certificate *is* its
//!   ed25519 identity (SPKI DER). The initiator pins the expected key; the responder learns the
//!   client's key from the handshake and checks it before confirming the link.
//! - [`LinkEndpoint`] / [`IncomingLink`] / [`PeerLink`]: connect, accept and confirm a link.
//! - [`LinkStream`] / [`StreamKind`]: each bidirectional stream starts with one kind byte.
//! - [`chat`], [`pipe`], [`transfer`]: the applications that run on a stream.
//! - `congestion`: the links' congestion control (BBR with a window floor for
//!   sub-millisecond paths).
//!
//! `docs/PROTOCOL.md` ("Peer link (QUIC)") is the byte-level reference for all of this.
#![deny(clippy::indexing_slicing)]

pub mod chat;
mod close_code;
mod config;
mod congestion;
mod endpoint;
mod error;
mod peer_link;
pub mod pipe;
mod receive_limits;
pub(crate) mod routes;
pub mod rpk;
pub mod socket;
mod stream;
pub mod transfer;
mod version;

pub use close_code::CloseCode;
pub use config::LinkConfig;
pub use endpoint::{
    IncomingLink, LinkEndpoint, MAX_INITIAL_RTT, MAX_QUIC_PAYLOAD, MIN_INITIAL_RTT,
};
pub use error::LinkError;
pub use peer_link::PeerLink;
pub use socket::{ControlRx, RawSender, Source, TlsOutgoing, TlsRelayPort, TlsRelayed};
pub use stream::{LinkStream, StreamKind};
pub use version::LinkVersion;
