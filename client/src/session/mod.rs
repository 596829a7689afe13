//! The Connect session: TLS to the server, login, pings, brokering, reconnects.
//!
//! A client stays logged in to the Connect server so that peers can reach it:
//! it opens TLS from local port P, logs in with `PacketConnect` version 2 (the
//! signature covers a TLS exporter value, so a recorded login cannot be
//! replayed on another connection), answers every ping with the same id, tells
//! the server its UDP mapping with a binding message from the shared UDP
//! socket, and relays connection requests, accepts, denials and client info.
//!
//! - [`Session`] (`machine.rs`): the sans-IO state machine of one connection.
//! - [`Backoff`] (`backoff.rs`): reconnect pacing with injected randomness.
//! - [`connect()`] (`connect.rs`): TCP from port P, TLS, the channel-binding
//!   exporter: a [`Connected`] stream for one session.
//! - [`spawn_session`] (`driver.rs`): the tokio task that runs sessions back to
//!   back over such streams, reconnecting with backoff, and its
//!   [`SessionHandle`] (`handle.rs`).
//! - [`SessionConfig`] (`config.rs`): who, where, trust, timers.
//! - [`SessionError`] and the causes it keeps (`error.rs`, `transport_error.rs`).

mod backoff;
mod config;
mod connect;
mod driver;
mod error;
mod event;
mod handle;
mod machine;
mod transport_error;

pub use backoff::{Backoff, BackoffConfig};
pub use config::SessionConfig;
pub use connect::{Connected, connect};
pub use driver::{DatagramOut, spawn_session};
pub use error::{ConnectError, OfflineReason, SessionError};
pub use event::{SessionEnd, SessionEvent};
pub use handle::{OnlineInfo, PresenceWanted, SessionHandle, SessionStatus};
pub use machine::{NotLoggedIn, Session, SessionTimings};
pub use transport_error::TransportError;
