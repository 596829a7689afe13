//! NAT profiles and the nftables rulesets that make a namespace behave like each one.
//!
//! Vocabulary from RFC 4787: *mapping* says whether the public port a NAT picks
//! depends on the destination (endpoint-independent, EIM, or address-and-port
//! dependent, APDM); *filtering* says which outside sources may send to a mapping
//! (anyone: EIF; the addresses we sent to: ADF; the exact address:port pairs we
//! sent to: APDF). Linux conntrack gives APDF for free; masquerade preserves the
//! source port where it can (EIM) and with `fully-random` picks a fresh port per
//! flow (APDM). The cone profiles add the missing filtering kinds with a dynamic
//! nftables map, learned from outgoing UDP, that DNATs inbound datagrams back to
//! the host that owns the mapping.
//!
//! Every router filters its WAN side the way a home router does: inbound packets
//! that match no mapping are dropped in the `input`/`forward` hooks, before they
//! reach a socket and before conntrack confirms an entry for them, so they leave
//! no state behind (a stray entry would steal the port the next outgoing flow
//! wants and break endpoint-independent mapping).

use std::fmt;
use std::str::FromStr;

/// How a site reaches the public segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum NatProfile {
    /// A public host: no NAT, no firewall.
    None,
    /// EIM + endpoint-independent filtering (UDP): anyone may send to a live mapping.
    FullCone,
    /// EIM + address-dependent filtering (UDP): hosts we sent to may send from any port.
    AddressRestricted,
    /// EIM + address-and-port-dependent filtering: plain Linux masquerade.
    PortRestricted,
    /// APDM (a new random port per destination) + APDF: masquerade `fully-random`.
    Symmetric,
    /// APDM with ports handed out in sequence (one counter for every new UDP flow of the
    /// whole site, step 1) + APDF: `snat to ADDR : numgen inc mod N map { … }`.
    SymmetricSequential,
    /// Two NAT layers: a port-restricted home router behind a port-restricted carrier NAT.
    Cgnat,
    /// A port-restricted router whose firewall drops every UDP packet, in and out (a
    /// network that lets only TCP through): no punching, no UDP relay; only TLS works.
    UdpBlocked,
    /// A symmetric NAT whose router runs miniupnpd: it grants UPnP IGD, NAT-PMP and PCP
    /// mappings, and a mapped port takes anyone's packets (see `lab::upnp`).
    Upnp,
}

/// RFC 4787 mapping behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mapping {
    /// No translation at all.
    NoTranslation,
    /// Same public ip:port for every destination.
    EndpointIndependent,
    /// A new public port per destination ip:port.
    AddressAndPortDependent,
}

/// RFC 4787 filtering behaviour for inbound packets to a mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filtering {
    /// Nothing is filtered.
    Open,
    /// Anyone may send once a mapping exists.
    EndpointIndependent,
    /// Only addresses the host has sent to (from any port).
    AddressDependent,
    /// Only the exact ip:port pairs the host has sent to.
    AddressAndPortDependent,
}

impl NatProfile {
    /// Every NAT behaviour, in table order (each passes UDP; see also
    /// [`NatProfile::WITH_FIREWALLS`]).
    pub const ALL: [NatProfile; 7] = [
        NatProfile::None,
        NatProfile::FullCone,
        NatProfile::AddressRestricted,
        NatProfile::PortRestricted,
        NatProfile::Symmetric,
        NatProfile::SymmetricSequential,
        NatProfile::Cgnat,
    ];

    /// [`NatProfile::ALL`] and the profiles that block traffic outright, in table order.
    pub const WITH_FIREWALLS: [NatProfile; 8] = [
        NatProfile::None,
        NatProfile::FullCone,
        NatProfile::AddressRestricted,
        NatProfile::PortRestricted,
        NatProfile::Symmetric,
        NatProfile::SymmetricSequential,
        NatProfile::Cgnat,
        NatProfile::UdpBlocked,
    ];

    /// Profiles outside [`NatProfile::WITH_FIREWALLS`]'s full matrix (they join it
    /// against a few partners only; see `matrix::Pair::all`).
    pub const EXTRA: [NatProfile; 1] = [NatProfile::Upnp];

    /// Whether the profile lets any UDP through.
    pub fn passes_udp(self) -> bool {
        self != NatProfile::UdpBlocked
    }

    /// The profile's name as used on the command line and in `docs/NAT-MATRIX.md`.
    pub fn name(self) -> &'static str {
        match self {
            NatProfile::None => "none",
            NatProfile::FullCone => "full-cone",
            NatProfile::AddressRestricted => "address-restricted",
            NatProfile::PortRestricted => "port-restricted",
            NatProfile::Symmetric => "symmetric",
            NatProfile::SymmetricSequential => "symmetric-sequential",
            NatProfile::Cgnat => "cgnat",
            NatProfile::UdpBlocked => "udp-blocked",
            NatProfile::Upnp => "upnp",
        }
    }

    /// The mapping behaviour seen from the public segment.
    pub fn mapping(self) -> Mapping {
        match self {
            NatProfile::None => Mapping::NoTranslation,
            NatProfile::Symmetric | NatProfile::SymmetricSequential | NatProfile::Upnp => {
                Mapping::AddressAndPortDependent
            }
            NatProfile::FullCone
            | NatProfile::AddressRestricted
            | NatProfile::PortRestricted
            | NatProfile::Cgnat
            | NatProfile::UdpBlocked => Mapping::EndpointIndependent,
        }
    }

    /// The filtering behaviour seen from the public segment.
    pub fn filtering(self) -> Filtering {
        match self {
            NatProfile::None => Filtering::Open,
            NatProfile::FullCone => Filtering::EndpointIndependent,
            NatProfile::AddressRestricted => Filtering::AddressDependent,
            NatProfile::PortRestricted
            | NatProfile::Symmetric
            | NatProfile::SymmetricSequential
            | NatProfile::Cgnat
            | NatProfile::UdpBlocked
            | NatProfile::Upnp => Filtering::AddressAndPortDependent,
        }
    }

    /// The NAT layers from the host outwards (empty for a public host).
    pub(crate) fn layers(self) -> &'static [Layer] {
        match self {
            NatProfile::None => &[],
            NatProfile::FullCone => &[Layer::FullCone],
            NatProfile::AddressRestricted => &[Layer::AddressRestricted],
            NatProfile::PortRestricted => &[Layer::PortRestricted],
            NatProfile::Symmetric => &[Layer::Symmetric],
            NatProfile::SymmetricSequential => &[Layer::SymmetricSequential],
            NatProfile::Cgnat => &[Layer::PortRestricted, Layer::PortRestricted],
            NatProfile::UdpBlocked => &[Layer::TcpOnly],
            NatProfile::Upnp => &[Layer::Upnp],
        }
    }
}

impl fmt::Display for NatProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Error for an unknown profile name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown NAT profile `{0}` (expected one of: none, full-cone, address-restricted, port-restricted, symmetric, symmetric-sequential, cgnat, udp-blocked, upnp)"
)]
pub struct UnknownProfile(pub String);

impl FromStr for NatProfile {
    type Err = UnknownProfile;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        NatProfile::WITH_FIREWALLS
            .into_iter()
            .chain(NatProfile::EXTRA)
            .find(|p| p.name() == s)
            .ok_or_else(|| UnknownProfile(s.to_owned()))
    }
}

/// One NAT box's behaviour (a profile is one or two of these stacked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Layer {
    FullCone,
    AddressRestricted,
    PortRestricted,
    Symmetric,
    /// Symmetric with sequential ports (needs the WAN address: `snat` names it).
    SymmetricSequential,
    /// Port-restricted, and every UDP packet through the router is dropped.
    TcpOnly,
    /// Symmetric, with miniupnpd granting port mappings (`lab::upnp`).
    Upnp,
}

/// First public port of the sequential NAT, and how many it cycles through.
pub(crate) const SEQUENTIAL_BASE: u16 = 20_000;
pub(crate) const SEQUENTIAL_PORTS: u16 = 4_096;

/// The `snat` of a sequential NAT: every new UDP flow takes the next port of the site's
/// one counter. nftables' `numgen` yields a host-order number, which used directly as a
/// port comes out byte-swapped, so a map turns counter values into ports.
fn sequential_snat(wan_ip: std::net::Ipv4Addr) -> String {
    let entries: Vec<String> = (0..SEQUENTIAL_PORTS)
        .map(|i| format!("{i} : {}", SEQUENTIAL_BASE + i))
        .collect();
    format!(
        "oifname \"{WAN}\" meta l4proto udp snat ip to {wan_ip} : numgen inc mod {SEQUENTIAL_PORTS} map {{ {} }}\n    oifname \"{WAN}\" masquerade",
        entries.join(", ")
    )
}

/// Name of the WAN interface in every router namespace; rules key on it.
pub(crate) const WAN: &str = "wan";

/// The nftables ruleset of one NAT router whose outside interface is [`WAN`].
#[cfg(test)]
pub(crate) fn router_ruleset(layer: Layer) -> String {
    router_ruleset_at(layer, None)
}

/// [`router_ruleset`] for a router whose WAN address is `wan_ip` (needed by
/// [`Layer::SymmetricSequential`]; without it that layer falls back to masquerade
/// `fully-random`).
pub(crate) fn router_ruleset_at(layer: Layer, wan_ip: Option<std::net::Ipv4Addr>) -> String {
    if layer == Layer::Upnp {
        return super::upnp::ruleset();
    }
    let cone = matches!(layer, Layer::FullCone | Layer::AddressRestricted);
    // A TCP-only network drops UDP before anything else, both ways and to the router.
    let udp_drop = if layer == Layer::TcpOnly {
        "    meta l4proto udp drop\n"
    } else {
        ""
    };
    let mut rules = String::new();
    // Filtering that every home router has: the WAN side may only answer.
    rules.push_str(&format!(
        "table inet chatrlab_filter {{
  chain input {{
    type filter hook input priority filter; policy drop;
{udp_drop}    iifname != \"{WAN}\" accept
    ct state established,related accept
  }}
  chain forward {{
    type filter hook forward priority filter; policy drop;
{udp_drop}    iifname != \"{WAN}\" accept
    ct state established,related accept
{dnat_accept}  }}
}}
",
        dnat_accept = if cone {
            "    ct status dnat accept\n"
        } else {
            ""
        }
    ));
    let masquerade = match (layer, wan_ip) {
        (Layer::SymmetricSequential, Some(ip)) => sequential_snat(ip),
        (Layer::Symmetric | Layer::SymmetricSequential, _) => "masquerade fully-random".to_owned(),
        _ => "masquerade".to_owned(),
    };
    let masquerade_rule = if masquerade.starts_with("oifname") {
        masquerade
    } else {
        format!("oifname \"{WAN}\" {masquerade}")
    };
    rules.push_str(&format!(
        "table ip chatrlab_nat {{
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    {masquerade_rule}
  }}
"
    ));
    if cone {
        // `mappings`: public UDP port -> the LAN ip:port that owns it, learned just
        // after SNAT (priority srcnat + 10 sees the translated source port).
        rules.push_str(&format!(
            "  map mappings {{
    type inet_service : ipv4_addr . inet_service
    flags dynamic,timeout
    timeout 120s
  }}
  set contacted {{
    type ipv4_addr . inet_service
    flags dynamic,timeout
    timeout 120s
  }}
  chain learn {{
    type filter hook postrouting priority srcnat + 10; policy accept;
    oifname \"{WAN}\" meta l4proto udp update @mappings {{ udp sport : ct original ip saddr . ct original proto-src }}
    oifname \"{WAN}\" meta l4proto udp update @contacted {{ ip daddr . udp sport }}
  }}
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    {condition}iifname \"{WAN}\" meta l4proto udp dnat ip to udp dport map @mappings
  }}
",
            condition = if layer == Layer::AddressRestricted {
                // Address-dependent filtering: only from addresses this mapping sent to.
                "ip saddr . udp dport @contacted "
            } else {
                ""
            }
        ));
    }
    rules.push_str("}\n");
    rules
}

/// A netdev-family ruleset dropping `percent` % of the frames received on `device`.
pub(crate) fn loss_ruleset(device: &str, percent: u8) -> String {
    format!(
        "table netdev chatrlab_loss_{device} {{
  chain ingress {{
    type filter hook ingress device \"{device}\" priority -500; policy accept;
    numgen random mod 100 < {percent} drop
  }}
}}
"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_tcp_only_router_drops_udp() {
        let blocked = router_ruleset(Layer::TcpOnly);
        assert_eq!(blocked.matches("meta l4proto udp drop").count(), 2);
        assert!(blocked.contains("masquerade\n"));
        assert!(!router_ruleset(Layer::PortRestricted).contains("udp drop"));
    }

    #[test]
    fn names_round_trip() {
        for profile in NatProfile::WITH_FIREWALLS
            .into_iter()
            .chain(NatProfile::EXTRA)
        {
            assert_eq!(profile.name().parse::<NatProfile>(), Ok(profile));
        }
        assert!("cone".parse::<NatProfile>().is_err());
    }

    #[test]
    fn symmetric_is_fully_random_and_port_restricted_is_not() {
        assert!(router_ruleset(Layer::Symmetric).contains("masquerade fully-random"));
        let pr = router_ruleset(Layer::PortRestricted);
        assert!(pr.contains("masquerade\n"));
        assert!(!pr.contains("fully-random"));
        assert!(!pr.contains("dnat"));
    }

    #[test]
    fn sequential_maps_the_counter_to_ports_in_order() {
        let ip = std::net::Ipv4Addr::new(198, 51, 100, 9);
        let rules = router_ruleset_at(Layer::SymmetricSequential, Some(ip));
        assert!(rules.contains(&format!(
            "udp snat ip to 198.51.100.9 : numgen inc mod {SEQUENTIAL_PORTS} map {{ 0 : 20000, 1 : 20001,"
        )));
        assert!(rules.contains(&format!(
            "{} : {}",
            SEQUENTIAL_PORTS - 1,
            20_000 + SEQUENTIAL_PORTS - 1
        )));
        // TCP still goes out through plain masquerade.
        assert!(rules.contains("oifname \"wan\" masquerade\n"));
        assert!(!rules.contains("fully-random"));
    }

    #[test]
    fn only_address_restricted_checks_contacted_set() {
        assert!(
            router_ruleset(Layer::AddressRestricted).contains("ip saddr . udp dport @contacted")
        );
        let fc = router_ruleset(Layer::FullCone);
        assert!(fc.contains("dnat ip to udp dport map @mappings"));
        assert!(!fc.contains("@contacted dnat") && !fc.contains("ip saddr . udp dport @contacted"));
    }
}
