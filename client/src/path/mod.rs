//! The ways to the peer, and which one carries a link.
//!
//! # Where this sits in the flow
//!
//! After the brokered exchange, two clients may reach each other directly (a path the
//! hole punch opened, `crate::punch`) or only through the Connect server's relay (an
//! exchange of two version-3 clients gets a relay id in its `PacketClientInfo`). A link is
//! one QUIC connection whatever the path: QUIC talks to a stable virtual address of the
//! peer, and the socket sends each datagram over the path [`PathManager`] chose
//! ([`SendPlan`]), wrapping it for the relay when needed (`crate::link::socket`).
//!
//! - [`PathId`]: a direct address of the peer, or the relay over UDP or TLS.
//! - [`PathManager`]: sans-IO; probes the paths with the exchange's authenticated probes,
//!   answers the peer's, and decides the plan: a confirmed direct path over the relay,
//!   with hysteresis, heartbeats on the path in use, and copies on every plausible path
//!   while the link is set up.
//! - [`LinkAgent`]: sans-IO; one link attempt from the first brokering packet on: the
//!   waits for the server's answers, the hole punch, when QUIC starts, and the paths
//!   after that. The async driver (`crate::node`) only executes its actions.
//! - [`PathClass`]: what a user is told (`direct-lan`, `direct-public`, `relay-udp`,
//!   `relay-tls`).
//!
//! `docs/PROTOCOL.md` §15 describes the behaviour and its timings.
#![deny(clippy::indexing_slicing)]

mod agent;
mod config;
mod id;
mod manager;
mod policy;
mod reason;
mod status;

pub use agent::{
    AgentAction, AgentConfig, AgentFailure, Exchange, LinkAgent, LinkOutcome, LocalInfo,
};
pub use config::PathConfig;
pub use id::{PathClass, PathId, RelayVia, SendPlan};
pub use manager::{PathEvent, PathManager};
pub use policy::{PathPolicy, UnknownPathPolicy};
pub use reason::RelayReason;
pub use status::{LinkPaths, PathStatus};
