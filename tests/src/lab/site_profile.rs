//! A site as the matrix names it: a NAT profile, optionally dual-stack (`symmetric+v6`).

use std::fmt;
use std::str::FromStr;

use super::nat::{NatProfile, UnknownProfile};

/// What the name of a dual-stack variant ends with.
const DUAL_STACK_SUFFIX: &str = "+v6";

/// A NAT profile for the site's IPv4 side and whether the site also routes IPv6 behind a
/// stateful firewall (`topology/ipv6.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SiteProfile {
    /// How the site's IPv4 side reaches the public segment.
    pub nat: NatProfile,
    /// Whether the site and its hosts have global IPv6 too.
    pub ipv6: bool,
}

impl SiteProfile {
    /// An IPv4-only site.
    pub fn v4(nat: NatProfile) -> Self {
        Self { nat, ipv6: false }
    }

    /// A dual-stack site.
    pub fn dual_stack(nat: NatProfile) -> Self {
        Self { nat, ipv6: true }
    }
}

impl fmt::Display for SiteProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let suffix = if self.ipv6 { DUAL_STACK_SUFFIX } else { "" };
        write!(f, "{}{suffix}", self.nat)
    }
}

impl FromStr for SiteProfile {
    type Err = UnknownProfile;

    /// `PROFILE` or `PROFILE+v6`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.strip_suffix(DUAL_STACK_SUFFIX) {
            Some(nat) => nat.parse().map(Self::dual_stack),
            None => s.parse().map(Self::v4),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for nat in NatProfile::WITH_FIREWALLS {
            for site in [SiteProfile::v4(nat), SiteProfile::dual_stack(nat)] {
                assert_eq!(site.to_string().parse::<SiteProfile>(), Ok(site));
            }
        }
        assert_eq!(
            "symmetric+v6".parse::<SiteProfile>(),
            Ok(SiteProfile::dual_stack(NatProfile::Symmetric))
        );
        assert!("symmetric+v4".parse::<SiteProfile>().is_err());
        assert!("+v6".parse::<SiteProfile>().is_err());
    }
}
