//! The host's global IPv6 addresses: candidates a peer can reach without any NAT.
//!
//! A pair stuck behind IPv4 NATs often has global IPv6 on both sides, with only a
//! stateful firewall in front (no NAT66): an address of our own interface is then the
//! address the peer sees, and once our firewall has seen a datagram go out to the peer
//! it lets the peer's answer in. So the client announces these addresses, with its
//! socket's port, as `Ipv6Global` candidates in its link hints (`docs/PROTOCOL.md` §5,
//! §15), whatever family its server address has.
//!
//! Only *global unicast* addresses qualify (see [`is_global_unicast`]): loopback,
//! link-local, unique-local, multicast and documentation addresses reach nobody on the
//! internet, and announcing them would only leak them and waste probes. Addresses the
//! kernel has not finished checking (tentative, duplicate) or has deprecated are skipped
//! too.
//!
//! On Linux the list comes from `/proc/net/if_inet6`, which also gives each address's
//! flags (a `getifaddrs` wrapper crate would not); elsewhere the list is empty and only
//! the address the server observes over IPv6 is announced.

use std::net::Ipv6Addr;

/// Where Linux lists every IPv6 address of every interface, with scope and flags.
#[cfg(target_os = "linux")]
const IF_INET6: &str = "/proc/net/if_inet6";

/// `IFA_F_DADFAILED`: duplicate address detection failed.
const IFA_F_DADFAILED: u32 = 0x08;
/// `IFA_F_DEPRECATED`: still valid, but no longer to be used for new traffic.
const IFA_F_DEPRECATED: u32 = 0x20;
/// `IFA_F_TENTATIVE`: duplicate address detection still running.
const IFA_F_TENTATIVE: u32 = 0x40;

/// Whether `ip` is a global unicast address a peer on the internet could reach:
/// inside `2000::/3` (every global unicast allocation), and not one of its reserved
/// non-global blocks (documentation `2001:db8::/32` and `3fff::/20`).
///
/// The lab's public IPv6 segment uses the benchmarking block `2001:2::/48` (RFC 5180),
/// which counts as global here: no real host carries it, and inside the lab it plays
/// the part of the internet.
pub fn is_global_unicast(ip: &Ipv6Addr) -> bool {
    let s = ip.segments();
    let in_2000_3 = s[0] & 0xe000 == 0x2000;
    let documentation =
        (s[0] == 0x2001 && s[1] == 0x0db8) || (s[0] == 0x3fff && s[1] & 0xf000 == 0);
    in_2000_3 && !documentation
}

/// The global unicast IPv6 addresses of this host's interfaces, deduplicated, in the
/// kernel's order (empty when the host has no IPv6 or the list cannot be read).
pub fn interface_addresses() -> Vec<Ipv6Addr> {
    #[cfg(target_os = "linux")]
    {
        match std::fs::read_to_string(IF_INET6) {
            Ok(text) => parse_if_inet6(&text),
            // No IPv6 in this kernel (or namespace): nothing to offer.
            Err(err) => {
                tracing::debug!(%err, "no IPv6 address list");
                Vec::new()
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        Vec::new()
    }
}

/// Parses `/proc/net/if_inet6`: one address per line,
/// `ADDRESS(32 hex) IFINDEX PREFIXLEN SCOPE FLAGS IFNAME`, all numbers in hex. Lines that
/// do not parse are skipped (a kernel with a different layout yields fewer candidates,
/// never an error).
pub(crate) fn parse_if_inet6(text: &str) -> Vec<Ipv6Addr> {
    let mut out: Vec<Ipv6Addr> = Vec::new();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let (Some(hex), Some(_ifindex), Some(_prefix), Some(_scope), Some(flags)) = (
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
        ) else {
            continue;
        };
        let (Some(ip), Ok(flags)) = (parse_hex_address(hex), u32::from_str_radix(flags, 16)) else {
            continue;
        };
        let unusable = flags & (IFA_F_DADFAILED | IFA_F_DEPRECATED | IFA_F_TENTATIVE) != 0;
        if !unusable && is_global_unicast(&ip) && !out.contains(&ip) {
            out.push(ip);
        }
    }
    out
}

/// 32 hex digits → the address.
fn parse_hex_address(hex: &str) -> Option<Ipv6Addr> {
    if hex.len() != 32 {
        return None;
    }
    u128::from_str_radix(hex, 16).ok().map(Ipv6Addr::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    #[test]
    fn only_global_unicast_qualifies() {
        for global in [
            "2a00:1450:4001:82b::200e",
            "2001:2:0:3::2",
            "2606:4700::1111",
            "3fff:1000::1",
            "3ffe::1",
        ] {
            assert!(is_global_unicast(&ip(global)), "{global}");
        }
        for other in [
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "fc00::1",
            "ff02::1",
            "::ffff:192.0.2.1",
            "2001:db8::1",
            "3fff::1",
            "3fff:fff::1",
            "4000::1",
            "1fff::1",
        ] {
            assert!(!is_global_unicast(&ip(other)), "{other}");
        }
    }

    #[test]
    fn parses_proc_net_if_inet6_and_skips_unusable_addresses() {
        let text = "\
00000000000000000000000000000001 01 80 10 80       lo
fe800000000000000000000000000001 02 40 20 80     eth0
20010002000000030000000000000002 02 40 00 80     eth0
2a001450400108200000000000000001 03 40 00 20     wlan0
2a001450400108200000000000000002 03 40 00 40     wlan0
2a001450400108200000000000000003 03 40 00 08     wlan0
2a001450400108200000000000000004 03 40 00 01     wlan0
20010002000000030000000000000002 04 40 00 80     eth1
fd000000000000000000000000000001 02 40 00 80     eth0
20010db8000000000000000000000001 02 40 00 80     eth0
garbage line
2a00zz50400108200000000000000005 03 40 00 00     wlan0
";
        assert_eq!(
            parse_if_inet6(text),
            // Loopback, link-local, deprecated, tentative, DAD-failed, duplicate, ULA,
            // documentation and malformed lines are skipped; a temporary address is kept.
            vec![ip("2001:2:0:3::2"), ip("2a00:1450:4001:820::4")]
        );
    }
}
