//! Tunables of a peer link endpoint.

use std::time::Duration;

/// Settings for a [`LinkEndpoint`](super::LinkEndpoint) and every link it carries.
///
/// The defaults suit links across home NATs: a keep-alive well under the typical 30 s UDP
/// mapping lifetime, and an idle timeout long enough to ride out a short outage.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct LinkConfig {
    /// How often QUIC sends a keep-alive when the link is otherwise quiet. Keeps NAT
    /// mappings open; capped at 15 s. Default 10 s.
    pub keep_alive: Duration,
    /// A link with no traffic from the peer for this long is dead. Default 45 s.
    pub idle_timeout: Duration,
    /// How long `connect` waits for the handshake and the responder's confirmation, and how
    /// long `accept` waits for an incoming handshake to finish. Default 10 s.
    pub handshake_timeout: Duration,
    /// Capacity of the control-datagram channel (non-QUIC datagrams). When full, further
    /// datagrams are dropped and counted rather than blocking QUIC. Default 256.
    pub control_queue: usize,
    /// Maximum number of concurrent bidirectional streams the peer may open. Default 32.
    pub max_streams: u32,
    /// Accept incoming links only at a path-managed virtual address (see `link::routes`);
    /// a handshake from a plain address is ignored, not answered. The [`crate::Client`]
    /// sets this: every link it makes is path-managed, and a handshake that reached us
    /// from an address the path manager has not learned yet is a copy of one that also
    /// comes through a known path. Default `false`.
    pub virtual_only: bool,
    /// The newest peer-link revision this side offers in ALPN (see
    /// [`LinkVersion`](super::LinkVersion)); a link runs the newest both sides offer.
    /// Lower it only to talk like an older build (tests of mixed versions). Default
    /// [`LinkVersion::NEWEST`](super::LinkVersion::NEWEST).
    pub newest_version: super::LinkVersion,
}

/// Upper bound on the keep-alive interval: most NATs drop an idle UDP mapping after 30 s or
/// more, so 15 s leaves room for one lost keep-alive.
pub(crate) const MAX_KEEP_ALIVE: Duration = Duration::from_secs(15);

impl Default for LinkConfig {
    fn default() -> Self {
        Self {
            keep_alive: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(45),
            handshake_timeout: Duration::from_secs(10),
            control_queue: 256,
            max_streams: 32,
            virtual_only: false,
            newest_version: super::LinkVersion::NEWEST,
        }
    }
}

impl LinkConfig {
    /// The keep-alive actually used: the configured one, capped at 15 s, at least 100 ms.
    pub(crate) fn effective_keep_alive(&self) -> Duration {
        self.keep_alive
            .clamp(Duration::from_millis(100), MAX_KEEP_ALIVE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_alive_is_capped_at_fifteen_seconds() {
        let config = LinkConfig {
            keep_alive: Duration::from_secs(60),
            ..LinkConfig::default()
        };
        assert_eq!(config.effective_keep_alive(), Duration::from_secs(15));
        assert_eq!(
            LinkConfig::default().effective_keep_alive(),
            Duration::from_secs(10)
        );
    }
}
