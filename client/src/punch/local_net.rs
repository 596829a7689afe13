//! Our own network, to judge whether a private candidate of the peer can be on our LAN.
//!
//! The initiator waits [`super::PunchConfig::lan_grace`] for a LAN path after the first
//! public path validates. That wait only pays off when the peer's private endpoint can
//! actually be reached from here: two peers behind different home routers both announce
//! private addresses, but neither can reach the other's. A private candidate is
//! *plausibly on our LAN* when it lies in the network of one of our own interface
//! addresses (the interface prefix when the driver knows it, else the usual /24 for IPv4
//! and /64 for IPv6); our own IP always qualifies.

use std::net::IpAddr;

/// One of our own interface addresses with its network prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LocalNet {
    ip: IpAddr,
    prefix: u8,
}

impl LocalNet {
    /// Prefix assumed for an IPv4 address whose interface prefix is unknown.
    pub const DEFAULT_V4_PREFIX: u8 = 24;
    /// Prefix assumed for an IPv6 address whose interface prefix is unknown.
    pub const DEFAULT_V6_PREFIX: u8 = 64;

    /// Our address `ip` on a network of `prefix` bits (clamped to the family's width;
    /// IPv4-mapped IPv6 addresses are treated as IPv4).
    pub fn new(ip: IpAddr, prefix: u8) -> Self {
        let ip = ip.to_canonical();
        let width = match ip {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        Self {
            ip,
            prefix: prefix.min(width),
        }
    }

    /// Our address `ip` with the usual LAN prefix of its family (/24 or /64).
    pub fn guess(ip: IpAddr) -> Self {
        let prefix = match ip.to_canonical() {
            IpAddr::V4(_) => Self::DEFAULT_V4_PREFIX,
            IpAddr::V6(_) => Self::DEFAULT_V6_PREFIX,
        };
        Self::new(ip, prefix)
    }

    /// Our address.
    pub fn ip(&self) -> IpAddr {
        self.ip
    }

    /// The network prefix length in bits.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` is our address or lies in our network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.ip, ip.to_canonical()) {
            (IpAddr::V4(ours), IpAddr::V4(theirs)) => same_prefix(
                u128::from(ours.to_bits()),
                u128::from(theirs.to_bits()),
                32,
                self.prefix,
            ),
            (IpAddr::V6(ours), IpAddr::V6(theirs)) => {
                same_prefix(ours.to_bits(), theirs.to_bits(), 128, self.prefix)
            }
            _ => false,
        }
    }
}

/// Whether the top `prefix` of `width` bits of `a` and `b` agree.
fn same_prefix(a: u128, b: u128, width: u32, prefix: u8) -> bool {
    let host_bits = width.saturating_sub(u32::from(prefix));
    a.checked_shr(host_bits).unwrap_or(0) == b.checked_shr(host_bits).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn guessed_v4_network_is_the_slash_24() {
        let net = LocalNet::guess(ip("192.168.1.2"));
        assert_eq!(net.prefix(), 24);
        assert!(net.contains(ip("192.168.1.2")), "our own IP");
        assert!(net.contains(ip("192.168.1.254")));
        assert!(net.contains(ip("::ffff:192.168.1.7")), "mapped form");
        assert!(!net.contains(ip("192.168.2.2")), "another home LAN");
        assert!(!net.contains(ip("10.0.0.1")));
        assert!(!net.contains(ip("fe80::1")), "other family");
    }

    #[test]
    fn guessed_v6_network_is_the_slash_64() {
        let net = LocalNet::guess(ip("2001:db8:1:2::10"));
        assert_eq!(net.prefix(), 64);
        assert!(net.contains(ip("2001:db8:1:2:abcd::1")));
        assert!(!net.contains(ip("2001:db8:1:3::10")));
        assert!(!net.contains(ip("192.168.1.2")));
    }

    #[test]
    fn explicit_prefixes_are_honoured_and_clamped() {
        let wide = LocalNet::new(ip("10.1.2.3"), 8);
        assert!(wide.contains(ip("10.200.0.1")));
        assert!(!wide.contains(ip("11.0.0.1")));
        let host = LocalNet::new(ip("10.1.2.3"), 200);
        assert_eq!(host.prefix(), 32);
        assert!(host.contains(ip("10.1.2.3")));
        assert!(!host.contains(ip("10.1.2.4")));
        let everything = LocalNet::new(ip("10.1.2.3"), 0);
        assert!(everything.contains(ip("203.0.113.9")));
        let mapped = LocalNet::new(ip("::ffff:172.16.0.5"), 16);
        assert_eq!(mapped.ip(), ip("172.16.0.5"));
        assert!(mapped.contains(ip("172.16.9.9")));
    }
}
