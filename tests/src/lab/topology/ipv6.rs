//! IPv6 in the lab: a public IPv6 segment beside the IPv4 one, and dual-stack sites whose
//! routers route IPv6 (no NAT66) behind a stateful firewall.
//!
//! ```text
//!   [srv 203.0.113.1 | 2001:2::1]──br0──wan[router 203.0.113.12 | 2001:2::c]lan──[host 192.168.3.2 | 2001:2:0:3::2]
//! ```
//!
//! - **Addresses.** The benchmarking block `2001:2::/48` (RFC 5180: never routed on the
//!   internet) plays the global IPv6 internet: the public segment is `2001:2::/64`, where
//!   the member with IPv4 address `203.0.113.N` has `2001:2::N` (N in hex); the LAN of
//!   site `S` is `2001:2:0:S::/64` (router `::1`, hosts from `::2`), and the link between
//!   a CGNAT site's carrier and home router `2001:2:1:S::/64` (carrier `::1`, home `::2`).
//!   The client treats this block as global, so it offers these addresses to peers.
//! - **Routing.** Like the IPv4 segment, the IPv6 one has no default route: every
//!   IPv6 member of the public segment gets a route to each dual-stack site's LAN via
//!   that site's router, and a permanent neighbour entry for every other member (so no
//!   datagram waits for neighbour discovery across a delay wire).
//! - **Firewall.** A dual-stack router keeps its IPv4 NAT profile and forwards IPv6 through
//!   the same `table inet` filter (`nat.rs`): anything from the LAN goes out, only
//!   established and related traffic comes in, new inbound flows are dropped. That is the
//!   stateful firewall of a home router with native IPv6, and UDP hole punching opens it
//!   the way it opens an address-and-port-dependent NAT filter, without any port
//!   translation. A `udp-blocked` site's filter drops IPv6 UDP as well.
//! - **Quiet.** IPv6 is switched on per interface, only on the interfaces that carry it,
//!   with no router solicitations, no autoconfiguration and no duplicate address
//!   detection: every global address in the lab is one assigned here, usable at once.
//!   Interfaces on the public segment get no link-local address either (their neighbours
//!   are permanent entries, so nothing multicasts across the delay wires); LAN and carrier
//!   links keep one, because Linux sources the neighbour solicitations for forwarded
//!   packets from it. A dual-stack router's WAN input accepts neighbour discovery (as
//!   RFC 4890 asks of a firewall): the carrier link of a CGNAT site needs it.

use std::net::Ipv6Addr;
use std::sync::Arc;

use super::{Host, Lab, Site, public_mac};
use crate::lab::error::LabError;
use crate::lab::nat::{NatProfile, WAN};
use crate::lab::netns::Netns;

/// The public IPv6 segment's first three groups, `2001:2::/64`'s.
const PUBLIC6: [u16; 3] = [0x2001, 0x0002, 0x0000];

/// Appended to a dual-stack router's input filter (`nat.rs`): neighbour discovery from
/// the WAN side is neither new nor established to conntrack, so the filter would drop it.
const ND_ON_WAN: &str = "add rule inet chatrlab_filter input iifname \"wan\" icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } accept\n";

/// The lab's IPv6 state: the members of the public IPv6 segment and the routes to the
/// dual-stack sites' LANs.
#[derive(Debug, Default)]
pub(super) struct Ipv6Segment {
    members: Vec<Member6>,
    /// `(LAN prefix, router address on the public segment)` of every dual-stack site.
    routes: Vec<(String, Ipv6Addr)>,
}

/// One interface on the public IPv6 segment.
#[derive(Debug)]
struct Member6 {
    ns: Arc<Netns>,
    ifname: String,
    ip: Ipv6Addr,
    mac: String,
}

/// `2001:2::N` for the public-segment member with IPv4 last octet `octet`.
pub(super) fn public_ipv6(octet: u8) -> Ipv6Addr {
    Ipv6Addr::new(
        PUBLIC6[0],
        PUBLIC6[1],
        PUBLIC6[2],
        0,
        0,
        0,
        0,
        u16::from(octet),
    )
}

/// Address `host` in the LAN of site `site` (`2001:2:0:S::host`).
fn lan_ipv6(site: u16, host: u16) -> Ipv6Addr {
    Ipv6Addr::new(PUBLIC6[0], PUBLIC6[1], 0, site, 0, 0, 0, host)
}

/// Address `host` on the carrier link of CGNAT site `site` (`2001:2:1:S::host`).
fn carrier_ipv6(site: u16, host: u16) -> Ipv6Addr {
    Ipv6Addr::new(PUBLIC6[0], PUBLIC6[1], 1, site, 0, 0, 0, host)
}

/// Which interfaces get a link-local address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LinkLocal {
    /// On the public segment: none.
    Without,
    /// On a LAN or a carrier link: one, for neighbour discovery.
    With,
}

/// Switches IPv6 on for `ifname` in `ns`, quietly (see the module docs).
fn enable(ns: &Netns, ifname: &str, link_local: LinkLocal) -> Result<(), LabError> {
    let addr_gen_mode = match link_local {
        LinkLocal::Without => "1",
        LinkLocal::With => "0",
    };
    for (key, value) in [
        ("addr_gen_mode", addr_gen_mode),
        ("accept_dad", "0"),
        ("accept_ra", "0"),
        ("autoconf", "0"),
        ("router_solicitations", "0"),
        ("disable_ipv6", "0"),
    ] {
        ns.sysctl(&format!("net/ipv6/conf/{ifname}/{key}"), value)?;
    }
    Ok(())
}

/// Gives `ifname` in `ns` the address `ip/64` (IPv6 switched on first).
fn assign(ns: &Netns, ifname: &str, ip: Ipv6Addr, link_local: LinkLocal) -> Result<(), LabError> {
    enable(ns, ifname, link_local)?;
    ns.ip(&[
        "-6",
        "addr",
        "add",
        &format!("{ip}/64"),
        "dev",
        ifname,
        "nodad",
    ])?;
    Ok(())
}

impl Ipv6Segment {
    /// Puts `ifname` of `ns` (IPv4 address `203.0.113.octet`) on the public IPv6 segment:
    /// its address, permanent neighbour entries both ways with every member, and routes
    /// to every dual-stack LAN that is not behind `ns` itself.
    fn join(&mut self, ns: &Arc<Netns>, ifname: &str, octet: u8) -> Result<Ipv6Addr, LabError> {
        let ip = public_ipv6(octet);
        assign(ns, ifname, ip, LinkLocal::Without)?;
        let mac = public_mac(std::net::Ipv4Addr::new(0, 0, 0, octet));
        for member in &self.members {
            neighbour(ns, ifname, member.ip, &member.mac)?;
            neighbour(&member.ns, &member.ifname, ip, &mac)?;
        }
        for (prefix, via) in &self.routes {
            ns.ip(&["-6", "route", "add", prefix, "via", &via.to_string()])?;
        }
        self.members.push(Member6 {
            ns: ns.clone(),
            ifname: ifname.to_owned(),
            ip,
            mac,
        });
        Ok(ip)
    }

    /// Routes `prefix` via `via` on every member but the router at `via` itself.
    fn add_route(&mut self, prefix: String, via: Ipv6Addr) -> Result<(), LabError> {
        for member in self.members.iter().filter(|m| m.ip != via) {
            member
                .ns
                .ip(&["-6", "route", "add", &prefix, "via", &via.to_string()])?;
        }
        self.routes.push((prefix, via));
        Ok(())
    }
}

/// A permanent neighbour entry for `ip` at `mac` on `dev`.
fn neighbour(ns: &Netns, dev: &str, ip: Ipv6Addr, mac: &str) -> Result<(), LabError> {
    ns.ip(&[
        "-6",
        "neigh",
        "replace",
        &ip.to_string(),
        "lladdr",
        mac,
        "dev",
        dev,
        "nud",
        "permanent",
    ])
    .map(drop)
}

/// The last octet of a public-segment IPv4 address.
fn octet_of(ip: std::net::Ipv4Addr) -> u8 {
    ip.octets()[3]
}

impl Lab {
    /// Gives the lab a public IPv6 segment: every public host added from now on (the
    /// server, observers) is dual-stack, and [`Lab::add_dual_stack_site`] becomes
    /// available. Call it before adding any host.
    pub fn enable_ipv6(&mut self) -> Result<(), LabError> {
        if !self.public_members.is_empty() {
            return Err(LabError::Topology(
                "enable IPv6 before adding hosts or sites".into(),
            ));
        }
        self.ipv6.get_or_insert_with(Ipv6Segment::default);
        Ok(())
    }

    /// Whether the lab has a public IPv6 segment.
    pub fn has_ipv6(&self) -> bool {
        self.ipv6.is_some()
    }

    /// Adds a site like [`Lab::add_site`], dual-stack: its IPv4 side behaves like
    /// `profile`, its IPv6 side is routed (no NAT66) behind a stateful firewall, and its
    /// hosts get global IPv6 addresses. Needs [`Lab::enable_ipv6`].
    pub fn add_dual_stack_site(
        &mut self,
        name: &str,
        profile: NatProfile,
        link: super::LinkCondition,
    ) -> Result<Site, LabError> {
        if self.ipv6.is_none() {
            return Err(LabError::Topology(
                "a dual-stack site needs Lab::enable_ipv6 first".into(),
            ));
        }
        let mut site = self.add_site(name, profile, link)?;
        site.dual_stack = true;
        let index = site.index;
        // Routers from the outside in: the outermost joins the public segment.
        let routers: Vec<Arc<Netns>> = site.routers.iter().rev().cloned().collect();
        for (depth, router) in routers.iter().enumerate() {
            router.sysctl("net/ipv6/conf/all/forwarding", "1")?;
            router.nft(ND_ON_WAN)?;
            if depth == 0 {
                let octet = site.public_ip.map(octet_of).ok_or_else(|| {
                    LabError::Topology("a NAT site without a public address".into())
                })?;
                let wan = self.join_ipv6(router, WAN, octet)?;
                self.add_ipv6_route(format!("{}/64", lan_ipv6(index, 0)), wan)?;
            } else {
                // CGNAT: the carrier (depth 0) routes the LAN to the home router.
                let carrier = &routers[depth - 1];
                assign(carrier, "lan", carrier_ipv6(index, 1), LinkLocal::With)?;
                assign(router, WAN, carrier_ipv6(index, 2), LinkLocal::With)?;
                let to_home = carrier_ipv6(index, 2).to_string();
                carrier.ip(&[
                    "-6",
                    "route",
                    "add",
                    &format!("{}/64", lan_ipv6(index, 0)),
                    "via",
                    &to_home,
                ])?;
                router.ip(&[
                    "-6",
                    "route",
                    "add",
                    "default",
                    "via",
                    &carrier_ipv6(index, 1).to_string(),
                ])?;
            }
        }
        if let Some(inner) = &site.lan_router {
            assign(inner, "lan", lan_ipv6(index, 1), LinkLocal::With)?;
        }
        Ok(site)
    }

    /// Puts `ifname` of `ns` on the public IPv6 segment when the lab has one.
    pub(super) fn join_ipv6(
        &mut self,
        ns: &Arc<Netns>,
        ifname: &str,
        octet: u8,
    ) -> Result<Ipv6Addr, LabError> {
        let segment = self
            .ipv6
            .as_mut()
            .ok_or_else(|| LabError::Topology("the lab has no IPv6".into()))?;
        segment.join(ns, ifname, octet)
    }

    fn add_ipv6_route(&mut self, prefix: String, via: Ipv6Addr) -> Result<(), LabError> {
        match self.ipv6.as_mut() {
            Some(segment) => segment.add_route(prefix, via),
            None => Ok(()),
        }
    }

    /// The IPv6 side of a new host `ns` at `site` (its `nth` host), when the site is
    /// dual-stack: a LAN address with a default route via the router, or, on a public
    /// (`none`) site, an address on the public segment.
    pub(super) fn host_ipv6(
        &mut self,
        site: &Site,
        ns: &Arc<Netns>,
        public_ip: std::net::Ipv4Addr,
    ) -> Result<Option<Ipv6Addr>, LabError> {
        if !site.dual_stack {
            return Ok(None);
        }
        if site.lan_router.is_none() {
            return self.join_ipv6(ns, "eth0", octet_of(public_ip)).map(Some);
        }
        let ip = lan_ipv6(site.index, u16::from(site.hosts) + 1);
        assign(ns, "eth0", ip, LinkLocal::With)?;
        ns.ip(&[
            "-6",
            "route",
            "add",
            "default",
            "via",
            &lan_ipv6(site.index, 1).to_string(),
        ])?;
        Ok(Some(ip))
    }
}

impl Host {
    /// The host's global IPv6 address, when it is dual-stack.
    pub fn ipv6(&self) -> Option<Ipv6Addr> {
        self.ipv6
    }
}

impl Site {
    /// Whether the site routes IPv6 as well ([`Lab::add_dual_stack_site`]).
    pub fn is_dual_stack(&self) -> bool {
        self.dual_stack
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_follow_the_plan() {
        assert_eq!(public_ipv6(12).to_string(), "2001:2::c");
        assert_eq!(lan_ipv6(3, 2).to_string(), "2001:2:0:3::2");
        assert_eq!(carrier_ipv6(250, 1).to_string(), "2001:2:1:fa::1");
    }
}
