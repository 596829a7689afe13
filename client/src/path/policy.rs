//! Which paths a link may use: the user's `--path` choice.

use std::fmt;
use std::str::FromStr;

use super::id::{PathId, RelayVia};

/// Which paths a link may use (`chatr --path`, [`crate::ClientOptions::path_policy`]).
///
/// [`PathPolicy::Auto`] is what users want: direct whenever the network allows, else the
/// relay, switching as paths open and die. The others pin the link, for a network the
/// user knows better than the probes do, and for tests and benchmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PathPolicy {
    /// Direct when a direct path works, else relayed (the default).
    #[default]
    Auto,
    /// Never relayed: the link fails when no direct path works (the behaviour before
    /// the relay existed).
    DirectOnly,
    /// Always relayed by the server: over UDP when our UDP binding works, else inside TLS.
    Relay,
    /// Always relayed inside the TLS session, even when UDP works.
    RelayTls,
}

impl PathPolicy {
    /// Every policy, in `--path` order.
    pub const ALL: [PathPolicy; 4] = [
        PathPolicy::Auto,
        PathPolicy::DirectOnly,
        PathPolicy::Relay,
        PathPolicy::RelayTls,
    ];

    /// The `--path` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::DirectOnly => "direct",
            Self::Relay => "relay",
            Self::RelayTls => "relay-tls",
        }
    }

    /// How the link reaches the relay under this policy, given how it could (`None`:
    /// the exchange has no relay, or the policy refuses it).
    pub fn relay(self, available: Option<RelayVia>, tls_allowed: bool) -> Option<RelayVia> {
        match self {
            Self::Auto | Self::Relay => available,
            Self::DirectOnly => None,
            Self::RelayTls => tls_allowed.then_some(RelayVia::Tls),
        }
    }

    /// The path the link is pinned to from the start, if any.
    pub fn pin(self, relay: Option<RelayVia>) -> Option<PathId> {
        match self {
            Self::Auto | Self::DirectOnly => None,
            Self::Relay | Self::RelayTls => relay.map(PathId::Relay),
        }
    }
}

impl fmt::Display for PathPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error for an unknown `--path` value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown path policy `{0}` (expected one of: auto, direct, relay, relay-tls)")]
pub struct UnknownPathPolicy(pub String);

impl FromStr for PathPolicy {
    type Err = UnknownPathPolicy;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| UnknownPathPolicy(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_is_an_error() {
        for p in PathPolicy::ALL {
            assert_eq!(p.as_str().parse::<PathPolicy>(), Ok(p));
        }
        assert!("fast".parse::<PathPolicy>().is_err());
    }

    #[test]
    fn relay_choice_follows_the_policy() {
        let udp = Some(RelayVia::Udp);
        assert_eq!(PathPolicy::Auto.relay(udp, true), udp);
        assert_eq!(PathPolicy::DirectOnly.relay(udp, true), None);
        assert_eq!(PathPolicy::RelayTls.relay(udp, true), Some(RelayVia::Tls));
        assert_eq!(PathPolicy::RelayTls.relay(udp, false), None);
        assert_eq!(
            PathPolicy::Relay.pin(udp),
            Some(PathId::Relay(RelayVia::Udp))
        );
        assert_eq!(PathPolicy::Auto.pin(udp), None);
        assert_eq!(PathPolicy::Relay.pin(None), None);
    }
}
