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
//! - [`spawn_session`] (`driver.rs`): the tokio task that runs sessions back to
//!   back, reconnecting with backoff, and its [`SessionHandle`].

mod backoff;
mod driver;
mod event;
mod machine;

pub use backoff::{Backoff, BackoffConfig};
pub use driver::{
    DatagramOut, OnlineInfo, SessionConfig, SessionError, SessionHandle, SessionStatus,
    spawn_session,
};
pub use event::{DisconnectReason, SessionEvent};
pub use machine::{NotLoggedIn, Session, SessionTimings};
