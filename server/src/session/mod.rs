//! One client connection, from TCP accept to close.
//!
//! The protocol logic is the sans-IO `machine::Session`: login (PacketConnect
//! first, signature check, duplicate-UUID probe and takeover), ping/pong, and
//! this client's half of brokering (rate limit, pending requests and their
//! expiry, dropping answers nobody asked for). `driver` is the one tokio task
//! per connection that owns the TLS stream and the session's bounded inbox
//! from the [`crate::hub::Hub`], and executes the machine's actions.

mod action;
pub(crate) mod driver;
mod event;
mod login;
pub(crate) mod machine;
mod ping;
mod rate_limit;
#[cfg(test)]
mod tests;

use ed25519_dalek::VerifyingKey;
use uuid::Uuid;

pub use action::Layout;
pub(crate) use action::{Action, PresenceAction};
pub(crate) use event::{ClaimOutcome, HubEvent, PeerEndpoints, PeerEvent};

use crate::config::{ServerConfig, Timings};
use crate::registry::Registry;

/// Where the login path finds registered keys (the registry, or a map in tests).
pub(crate) trait KeyLookup: Send + Sync {
    /// The registered key of `uuid`.
    fn lookup(&self, uuid: &Uuid) -> Option<VerifyingKey>;

    /// For a `uuid` that [`KeyLookup::lookup`] did not find: a read of shared storage
    /// that caches what it finds, if there is shared storage to read (a cluster's).
    fn fetch(&self, _uuid: Uuid) -> Option<crate::cluster::BoxFuture<()>> {
        None
    }
}

impl KeyLookup for Registry {
    fn lookup(&self, uuid: &Uuid) -> Option<VerifyingKey> {
        Registry::lookup(self, uuid)
    }

    fn fetch(&self, uuid: Uuid) -> Option<crate::cluster::BoxFuture<()>> {
        self.fetch_missing(uuid)
    }
}

/// The parts of [`ServerConfig`] a session needs.
#[derive(Debug, Clone)]
pub(crate) struct SessionConfig {
    pub(crate) timings: Timings,
    pub(crate) require_channel_binding: bool,
    pub(crate) requests_per_second: u32,
    pub(crate) request_burst: u32,
    pub(crate) max_pending_requests: usize,
    pub(crate) incoming_requests_per_second: u32,
    pub(crate) incoming_request_burst: u32,
    /// UDP ports that answer STUN for NAT behaviour discovery (announced to
    /// version-3 sessions).
    pub(crate) nat_probe_ports: Vec<u16>,
    /// In a cluster: the first bytes of every UDP token this node issues (its tag).
    pub(crate) udp_token_prefix: Option<[u8; crate::cluster::TOKEN_PREFIX_LEN]>,
    /// Presence: offered at all, and the packet rate limit.
    pub(crate) presence: bool,
    pub(crate) presence_rate: u32,
    pub(crate) presence_burst: u32,
}

impl SessionConfig {
    pub(crate) fn from_server(config: &ServerConfig) -> Self {
        Self {
            timings: config.timings.clone(),
            require_channel_binding: config.require_channel_binding,
            requests_per_second: config.limits.requests_per_second,
            request_burst: config.limits.request_burst,
            max_pending_requests: config.limits.max_pending_requests,
            incoming_requests_per_second: config.limits.incoming_requests_per_second,
            incoming_request_burst: config.limits.incoming_request_burst,
            nat_probe_ports: Vec::new(),
            udp_token_prefix: None,
            presence: config.presence.enabled,
            presence_rate: config.presence.updates_per_second,
            presence_burst: config.presence.update_burst,
        }
    }
}
