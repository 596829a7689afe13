//! Chatr client library: identity, Connect session, UDP hole punching on the
//! session's port, and authenticated QUIC peer links.
//!
//! # The flow
//!
//! 1. [`identity`]: an ed25519 key and a UUID, kept in a [`home::Home`]
//!    directory with the [`config`] (server, API URL, certificate trust) and the
//!    [`contacts`] address book (pinned peer keys).
//! 2. [`rest`]: register the key with the server's identity registry, rotate
//!    it, and look up peers' keys.
//! 3. [`net`] + [`session`]: a UDP socket on port P, and a TLS session to the
//!    Connect server from the same port P; login with channel binding, pings,
//!    the UDP binding message, brokering, reconnect with backoff.
//! 4. [`punch`]: after the server's `ClientInfo`, both peers probe each
//!    other's candidate endpoints from the UDP socket until a path opens.
//! 5. [`link`]: QUIC over that path, both sides authenticated by their raw
//!    ed25519 keys; chat, pipe and file streams.
//! 6. [`peers`] keeps one link per peer for a long-running client, and [`room`] runs
//!    group chats over a mesh of them; the session also carries the presence of
//!    mutual contacts ([`Client::presence`]).
//!
//! 6. [`portmap`]: in the background, the router is asked (PCP, NAT-PMP, UPnP IGD) to
//!    forward a public port to the socket; peers get that endpoint as a candidate.
//!
//! [`node::Client`] ties it together: the API other programs embed (the `chatr`
//! command line is one of them, in the `chatr-cli` crate; this library carries
//! no CLI, log subscriber or server code).
//! [`trust`] builds the TLS verifier (pinned cert, fingerprint or web roots)
//! and [`error::ClientError`] collects every layer's errors.

pub mod config;
pub mod contacts;
mod deadline;
pub mod error;
pub mod global_ipv6;
pub mod home;
pub mod identity;
pub mod link;
pub mod nat;
pub mod net;
pub mod node;
pub mod path;
pub mod peers;
pub mod portmap;
pub mod punch;
pub mod rest;
pub mod room;
pub mod session;
pub mod stun;
pub mod trust;

pub use error::ClientError;
pub use node::{
    AttemptReport, Client, ClientOptions, ContactPresence, IncomingRequest, LinkReport,
    PresenceView, TransferReport,
};
