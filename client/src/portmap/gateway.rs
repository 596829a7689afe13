//! Which router to ask, and our own address toward it.
//!
//! PCP and NAT-PMP go to the default gateway (RFC 6886 §3, RFC 6887 §8.1). On Linux the
//! kernel's routing table in `/proc/net/route` names it; elsewhere there is no such
//! file and only UPnP (which finds its router by multicast) is tried.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};

use super::error::PortMapError;

/// Flag of a route whose next hop is a gateway (`RTF_GATEWAY`).
const RTF_GATEWAY: u32 = 0x2;
/// Flag of a route that is up (`RTF_UP`).
const RTF_UP: u32 = 0x1;

/// The IPv4 default gateway of the lowest-metric default route.
pub(super) fn default_gateway() -> Result<Ipv4Addr, PortMapError> {
    let table = std::fs::read_to_string("/proc/net/route").map_err(PortMapError::Local)?;
    parse_route_table(&table).ok_or(PortMapError::NoGateway)
}

/// The default gateway in the text of `/proc/net/route` (addresses in hex, in the
/// kernel's byte order, which is little-endian on every Linux host we run on).
fn parse_route_table(table: &str) -> Option<Ipv4Addr> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [
                _iface,
                dest,
                gateway,
                flags,
                _refcnt,
                _use,
                metric,
                mask,
                ..,
            ] = fields.as_slice()
            else {
                return None;
            };
            let hex = |s: &str| u32::from_str_radix(s, 16).ok();
            let flags = hex(flags)?;
            let default = hex(dest)? == 0 && hex(mask)? == 0;
            let usable = flags & RTF_UP != 0 && flags & RTF_GATEWAY != 0;
            let gateway = Ipv4Addr::from(hex(gateway)?.swap_bytes());
            let metric: u32 = metric.parse().ok()?;
            (default && usable && !gateway.is_unspecified()).then_some((metric, gateway))
        })
        .min_by_key(|(metric, _)| *metric)
        .map(|(_, gateway)| gateway)
}

/// Our address on the interface that reaches `gateway` (connecting a UDP socket sends
/// nothing; it only asks the kernel for the route's source address).
pub(super) fn local_ip_toward(gateway: IpAddr) -> Result<IpAddr, PortMapError> {
    let bind: SocketAddr = match gateway {
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(bind).map_err(PortMapError::Local)?;
    socket
        .connect((gateway, crab_nat::GATEWAY_PORT))
        .map_err(PortMapError::Local)?;
    Ok(socket.local_addr().map_err(PortMapError::Local)?.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "\
Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
wlan0\t00000000\t0101A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0
eth0\t00000000\t010200C0\t0003\t0\t0\t100\t00000000\t0\t0\t0
";

    #[test]
    fn the_lowest_metric_default_route_wins() {
        assert_eq!(parse_route_table(TABLE), Some(Ipv4Addr::new(192, 0, 2, 1)));
    }

    #[test]
    fn no_default_route_or_garbage_means_no_gateway() {
        let only_link = "Iface\tDestination\tGateway\n\
eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        assert_eq!(parse_route_table(only_link), None);
        assert_eq!(parse_route_table("header\nnot a route\n\n"), None);
        let down = "h\neth0\t00000000\t010200C0\t0002\t0\t0\t0\t00000000\t0\t0\t0\n";
        assert_eq!(parse_route_table(down), None);
    }
}
