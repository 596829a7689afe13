//! How a [`Client`](super::Client) is set up.

use std::sync::Arc;
use std::time::Duration;

use crate::config::HostPort;
use crate::error::ClientError;
use crate::home::Home;
use crate::identity::Identity;
use crate::link::LinkConfig;
use crate::path::{PathConfig, PathPolicy};
use crate::portmap::PortMapConfig;
use crate::punch::PunchConfig;
use crate::session::{BackoffConfig, SessionTimings};

/// Everything [`Client::start`](super::Client::start) needs. Fields are public so
/// embedders and tests can tune them; [`ClientOptions::new`] gives the defaults.
#[derive(Clone)]
#[non_exhaustive]
pub struct ClientOptions {
    /// Who we are.
    pub identity: Identity,
    /// The Connect server `host:port`.
    pub server: HostPort,
    /// TLS trust for the Connect server (see [`crate::trust::client_config`]).
    pub tls: Arc<rustls::ClientConfig>,
    /// Local port P for the UDP socket and the TCP session (0 = any free port).
    pub local_port: u16,
    /// Connect-session timers.
    pub session: SessionTimings,
    /// Reconnect pacing.
    pub backoff: BackoffConfig,
    /// Hole-punching pacing and limits.
    pub punch: PunchConfig,
    /// Path probing and selection (direct versus relayed) once a link is up.
    pub paths: PathConfig,
    /// Which paths links may use (default: direct when it works, else relayed).
    pub path_policy: PathPolicy,
    /// Peer-link (QUIC) settings.
    pub link: LinkConfig,
    /// How long a link request may wait to come online first (default 15 s).
    pub online_timeout: Duration,
    /// How long the peer has to accept or deny a request (default 40 s; the
    /// server expires requests after 30 s by default and then denies them).
    pub request_timeout: Duration,
    /// How long `PacketClientInfo` may take after an accept (default 10 s).
    pub client_info_timeout: Duration,
    /// Asking the router for a port mapping (default: PCP, NAT-PMP, then UPnP IGD, in
    /// the background; [`PortMapConfig::off`] never asks).
    pub port_mapping: PortMapConfig,
    /// Incoming requests queued for [`Client::next_request`](super::Client::next_request)
    /// before further ones are denied (default 16).
    pub incoming_queue: usize,
    /// What we share through presence from the first login on (default: nobody).
    pub presence: crate::session::PresenceWanted,
}

impl std::fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientOptions")
            .field("uuid", &self.identity.uuid())
            .field("server", &self.server.to_string())
            .field("local_port", &self.local_port)
            .finish_non_exhaustive()
    }
}

impl ClientOptions {
    /// Defaults for `identity` using the server at `server`, trusted per `tls`.
    pub fn new(identity: Identity, server: HostPort, tls: Arc<rustls::ClientConfig>) -> Self {
        Self {
            identity,
            server,
            tls,
            local_port: 0,
            session: SessionTimings::default(),
            backoff: BackoffConfig::default(),
            punch: PunchConfig::default(),
            paths: PathConfig::default(),
            path_policy: PathPolicy::default(),
            link: LinkConfig::default(),
            online_timeout: Duration::from_secs(15),
            request_timeout: Duration::from_secs(40),
            client_info_timeout: Duration::from_secs(10),
            incoming_queue: 16,
            presence: crate::session::PresenceWanted::default(),
            port_mapping: PortMapConfig::default(),
        }
    }

    /// Options from a home directory: its identity, server, trust and port.
    pub fn from_home(home: &Home) -> Result<Self, ClientError> {
        let identity = home.identity()?;
        let config = home.config()?;
        let tls = crate::trust::client_config(&config.trust, home)?;
        let mut options = Self::new(identity, config.server.clone(), tls);
        options.local_port = config.local_port.unwrap_or(0);
        Ok(options)
    }
}
