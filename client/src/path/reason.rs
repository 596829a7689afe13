//! Why a link is relayed, in words a user understands.

use std::fmt;

use crate::punch::FailReason;

/// Why the server relays a link rather than the peers talking directly.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RelayReason {
    /// The link was pinned to the relay (`--path`, tests, benchmarks).
    Pinned,
    /// UDP to the Connect server does not get through from here, so the relay runs
    /// inside the TLS session.
    UdpBlocked,
    /// The hole punch gave up.
    PunchFailed {
        /// What it saw.
        reason: FailReason,
    },
    /// The punch is still running and no direct path has answered yet.
    NoDirectYet,
    /// A direct path worked, then stopped answering.
    DirectLost,
    /// Both NATs give a new random port for every destination (both measured it):
    /// neither side can guess the other's port, so no direct path can be punched.
    BothSymmetric,
}

impl RelayReason {
    /// A stable short name for reports (`"pinned"`, `"udp-blocked"`, `"punch-failed"`,
    /// `"no-direct-yet"`, `"direct-lost"`).
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Pinned => "pinned",
            Self::UdpBlocked => "udp-blocked",
            Self::PunchFailed { .. } => "punch-failed",
            Self::NoDirectYet => "no-direct-yet",
            Self::DirectLost => "direct-lost",
            Self::BothSymmetric => "both-symmetric",
        }
    }
}

impl fmt::Display for RelayReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pinned => f.write_str("this link was pinned to the relay"),
            Self::UdpBlocked => f.write_str(
                "UDP to the Connect server does not get through from this network: relayed \
                 inside the TLS connection to the server",
            ),
            Self::PunchFailed { reason } => write!(
                f,
                "no direct path worked ({reason}): one side's NAT probably gives a new port for \
                 every destination while the other filters by port, or UDP is blocked between \
                 you; relayed through the server, still trying direct in the background"
            ),
            Self::NoDirectYet => f.write_str(
                "no direct path has answered yet: relayed through the server meanwhile, still \
                 trying direct",
            ),
            Self::DirectLost => f.write_str(
                "the direct path stopped answering: relayed through the server until it comes \
                 back",
            ),
            Self::BothSymmetric => f.write_str(
                "both NATs give a new random port for every destination (symmetric NATs on both \
                 sides), so neither side can guess where to send: relayed through the server \
                 (a port mapping on either router, or IPv6, would allow a direct path)",
            ),
        }
    }
}
