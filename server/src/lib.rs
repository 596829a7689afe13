//! Chatr Connect server: the rendezvous that lets two clients find each
//! other's public endpoints and punch a UDP path (see
//! `/docs/PROTOCOL.md` and the spec it extends).
//!
//! Flow through the modules:
//! 1. [`server::start`] binds TLS (TCP) and the discovery/STUN port (UDP) on
//!    the same port number, the HTTPS registry [`api`] and the [`admin`]
//!    socket, and spawns one task per connection ([`session`]).
//! 2. A connection must complete the TLS 1.3 handshake ([`tls`]) and send
//!    PacketConnect within the login timeout. The signature is checked against
//!    the [`registry`] (channel-bound for version 2), the UUID is claimed in
//!    the [`hub`] (probing a previous session with the same UUID), and the
//!    client gets PacketConnected with a UDP token.
//! 3. The client sends the token over UDP (`udp.rs`); the server records the
//!    observed mapping. Standard STUN requests are answered too ([`stun`]).
//! 4. The session pings its client; connection requests are brokered between
//!    sessions through the hub's bounded per-session queues; after an accept
//!    both clients get ClientInfo with the other's public endpoint.
//!
//! 5. Version-3 clients may share presence with their mutual contacts ([`presence`]).
//!
//! [`metrics`] counts what operators ask about; [`settings`] turns CLI flags,
//! `CHATR_*` variables and TOML into a [`ServerConfig`].
//!
//! With the `cluster` feature, several nodes serve behind one name: the
//! [`cluster`] module routes brokering between nodes and claims each UUID
//! cluster-wide over NATS, and the [`registry`] lives in PostgreSQL
//! (`docs/CLUSTER.md`). Without it (the default) the server is one node.

pub mod admin;
pub mod api;
pub mod cluster;
pub mod config;
mod conn_limit;
pub mod error;
pub mod hub;
pub mod listen;
pub mod metrics;
mod nat_probe;
pub mod presence;
pub mod registry;
mod relay;
pub mod server;
pub mod session;
pub mod settings;
pub mod stun;
pub mod tls;
mod udp;

pub use cluster::ClusterConfig;
pub use config::{Limits, PostgresConfig, RegistrationPolicy, RelayConfig, ServerConfig, Timings};
pub use error::ServerError;
pub use hub::Hub;
pub use presence::PresenceConfig;
pub use server::{ServerHandle, run, start};
