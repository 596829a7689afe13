//! How a session driver connects and paces itself.

use std::sync::Arc;
use std::time::Duration;

use super::backoff::BackoffConfig;
use super::machine::SessionTimings;
use crate::config::HostPort;
use crate::identity::Identity;

/// How the driver connects.
#[derive(Clone)]
pub struct SessionConfig {
    /// Who we are.
    pub identity: Identity,
    /// The Connect server.
    pub server: HostPort,
    /// TLS trust for the server.
    pub tls: Arc<rustls::ClientConfig>,
    /// Local port P (the port of the shared UDP socket).
    pub local_port: u16,
    /// Session timers.
    pub timings: SessionTimings,
    /// Reconnect pacing.
    pub backoff: BackoffConfig,
    /// TCP connect plus TLS handshake limit (default 10 s).
    pub connect_timeout: Duration,
    /// Writing one packet must finish within this (default 10 s).
    pub write_timeout: Duration,
    /// What we share through presence from the first login on (so the server's first
    /// acknowledgement already covers it); change it later with
    /// [`SessionHandle::set_presence`](super::SessionHandle::set_presence).
    pub presence: super::handle::PresenceWanted,
}

impl std::fmt::Debug for SessionConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionConfig")
            .field("uuid", &self.identity.uuid())
            .field("server", &self.server.to_string())
            .field("local_port", &self.local_port)
            .finish_non_exhaustive()
    }
}

impl SessionConfig {
    /// Defaults for `identity` talking to `server` from port `local_port`.
    pub fn new(
        identity: Identity,
        server: HostPort,
        tls: Arc<rustls::ClientConfig>,
        local_port: u16,
    ) -> Self {
        Self {
            identity,
            server,
            tls,
            local_port,
            timings: SessionTimings::default(),
            backoff: BackoffConfig::default(),
            connect_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            presence: super::handle::PresenceWanted::default(),
        }
    }
}
