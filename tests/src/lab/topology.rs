//! The lab itself: a public segment, NAT sites, hosts, and the links between them.
//!
//! ```text
//!   [srv 203.0.113.1]──┐            public segment: bridge `br0` in namespace `pub`
//!   [obs 203.0.113.2]──┤
//!                      br0──p3══(wire: delay)══wan[router 203.0.113.12]lan──eth0[host 192.168.3.2]
//!                      br0──p4══(wire)══wan[carrier 203.0.113.13]lan──wan[home 100.64.4.2]lan──eth0[host]
//!                      br0──p5══(wire)══eth0[public host 203.0.113.14]
//! ```
//!
//! Every site's uplink to the bridge may pass through a [delay wire](super::wire)
//! and drops a share of frames on ingress at both ends (`nft numgen`), which is
//! how link conditions are made without `netem`. The public segment is a single
//! /24 with no default routes anywhere, so nothing in the lab can address a packet
//! to anything outside it. (The bridge also carries a second /24, `lab::upnp`'s
//! [`UPNP_PUBLIC_NET`], for the WAN addresses of `upnp` routers, which miniupnpd must take
//! for public; every member has an on-link route to the other /24.) Every namespace is named `chl-<run id>-…`; dropping the
//! [`Lab`] (also during a panic) stops the wires and deletes every namespace.
//!
//! IPv6 is off everywhere unless [`Lab::enable_ipv6`] asks for a public IPv6 segment;
//! then [`Lab::add_dual_stack_site`] adds sites that route global IPv6 behind a
//! stateful firewall besides their IPv4 NAT (`topology/ipv6.rs`).
//!
//! Two set-up details keep the first packets of a test from paying costs a real
//! network would not charge them:
//! - Every member of the public segment has a fixed MAC address and a permanent
//!   neighbour entry for every other member, like routers on a real internet segment
//!   whose next hops were resolved long ago. Without them, the first datagram between
//!   two sites waited for ARP across the delay wires (one extra one-way delay, or a
//!   whole 1 s ARP retry when the request was lost).
//! - Every veth end gets an explicit, lab-unique interface index. The kernel reports a
//!   veth's carrier change at once only when its index differs from its peer's; ends
//!   that happened to share an index (in different namespaces) stayed without carrier,
//!   so a bridge port dropped every frame for up to a second after set-up.

mod ipv6;

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

use super::error::LabError;
use super::nat::{self, NatProfile, WAN};
use super::netns::Netns;
use super::run_id::{self, NAMESPACE_PREFIX, RunLock};
use super::sys;
use super::upnp::{self, Miniupnpd, UPNP_PUBLIC_NET};
use super::wire::{Wire, WireStats};

/// The public segment's prefix length and base (TEST-NET-3, only inside the lab).
const PUBLIC_NET: [u8; 3] = [203, 0, 113];
/// Public hosts (server, observers) get .1 to .9; uplinks .10 and up.
const FIRST_UPLINK_HOST: u8 = 10;
const LAST_PUBLIC_HOST: u8 = 9;
/// Sites are numbered 1..=250; the number is the third octet of their LAN.
const MAX_SITES: u16 = 250;
/// Interface indexes the lab assigns to its veth ends start here, well above the
/// kernel's own (`lo`, bridges), which count up from 1 in each namespace.
const FIRST_IFINDEX: u32 = 1000;

/// Conditions on a site's uplink, applied in both directions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LinkCondition {
    /// One-way delay added by the wire between the site and the public segment.
    pub delay: Duration,
    /// Share of frames dropped at each end of the uplink, in percent (0–100).
    pub loss_percent: u8,
}

impl LinkCondition {
    /// No delay, no loss.
    pub const IDEAL: LinkCondition = LinkCondition {
        delay: Duration::ZERO,
        loss_percent: 0,
    };

    /// A link with `ms` milliseconds of one-way delay and no loss.
    pub fn delay_ms(ms: u64) -> LinkCondition {
        LinkCondition {
            delay: Duration::from_millis(ms),
            loss_percent: 0,
        }
    }

    /// The same link with `percent` % loss at each end.
    pub fn with_loss(self, percent: u8) -> LinkCondition {
        LinkCondition {
            loss_percent: percent.min(100),
            ..self
        }
    }
}

/// A host (its own namespace) somewhere in the lab. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Host {
    name: String,
    ns: Arc<Netns>,
    ip: Ipv4Addr,
    /// Its global IPv6 address on a dual-stack site (`ipv6.rs`).
    ipv6: Option<Ipv6Addr>,
}

impl Host {
    /// The host's name within the lab.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The host's own address (private behind a NAT, public otherwise).
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// The namespace the host lives in: run processes with [`Netns::command`], code
    /// with [`Netns::run_in`].
    pub fn netns(&self) -> &Netns {
        &self.ns
    }
}

/// A NAT site: the routers of one profile and the LAN behind them.
#[derive(Debug, Clone)]
pub struct Site {
    name: String,
    profile: NatProfile,
    index: u16,
    link: LinkCondition,
    /// Address on the public segment (the outermost router's WAN); `None` for public sites,
    /// whose hosts each get their own.
    public_ip: Option<Ipv4Addr>,
    /// The router hosts plug into (the innermost NAT), `None` for public sites.
    lan_router: Option<Arc<Netns>>,
    /// Routers from the inside out (home, carrier).
    routers: Vec<Arc<Netns>>,
    hosts: u8,
    /// Routes IPv6 too (`ipv6.rs`).
    dual_stack: bool,
}

impl Site {
    /// The site's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The site's NAT profile.
    pub fn profile(&self) -> NatProfile {
        self.profile
    }

    /// The address the site's traffic appears from on the public segment
    /// (`None` for a `none` site: its hosts are public themselves).
    pub fn public_ip(&self) -> Option<Ipv4Addr> {
        self.public_ip
    }

    /// The site's routers from the inside out (empty for `none`): e.g. to look inside
    /// with `nft list ruleset`, or to bind a socket on a router for a test.
    pub fn routers(&self) -> &[Arc<Netns>] {
        &self.routers
    }

    /// The uplink's link condition.
    pub fn link(&self) -> LinkCondition {
        self.link
    }
}

/// A whole lab; everything in it is torn down on drop.
#[derive(Debug)]
pub struct Lab {
    // Field order is drop order: stop wires, then delete namespaces, then release the lock.
    wires: Vec<Wire>,
    /// Daemons inside router namespaces (the `upnp` profile's miniupnpd).
    daemons: Vec<Miniupnpd>,
    namespaces: Vec<Arc<Netns>>,
    wire_ns: Option<Arc<Netns>>,
    public: Arc<Netns>,
    run: RunLock,
    next_uplink: u16,
    next_public_host: u8,
    next_site: u16,
    next_ifindex: u32,
    /// Interfaces on the public segment, for the permanent neighbour entries.
    public_members: Vec<SegmentMember>,
    /// The public IPv6 segment, once [`Lab::enable_ipv6`] asked for one.
    ipv6: Option<ipv6::Ipv6Segment>,
}

/// One interface on the public segment.
#[derive(Debug)]
struct SegmentMember {
    ns: Arc<Netns>,
    ifname: String,
    ip: Ipv4Addr,
}

impl SegmentMember {
    /// The neighbour-table command that tells another member where this one is.
    fn neigh_line(&self, dev: &str) -> String {
        format!(
            "neigh replace {} lladdr {} dev {dev} nud permanent",
            self.ip,
            public_mac(self.ip)
        )
    }
}

impl Lab {
    /// Builds an empty lab: checks prerequisites (root, `ip`, `nft`; installs the tools
    /// if missing), sweeps namespaces left by killed runs, and creates the public segment.
    pub fn new() -> Result<Lab, LabError> {
        sys::ensure_prerequisites()?;
        let run = RunLock::acquire()?;
        run_id::sweep_leftovers();
        let public = Arc::new(Netns::create(format!(
            "{NAMESPACE_PREFIX}{}-pub",
            run.id()
        ))?);
        public.ip(&["link", "add", "br0", "type", "bridge"])?;
        public.ip(&["link", "set", "br0", "up"])?;
        Ok(Lab {
            wires: Vec::new(),
            daemons: Vec::new(),
            namespaces: Vec::new(),
            wire_ns: None,
            public,
            run,
            next_uplink: 0,
            next_public_host: 1,
            next_site: 1,
            next_ifindex: FIRST_IFINDEX,
            public_members: Vec::new(),
            ipv6: None,
        })
    }

    /// The per-run prefix every namespace of this lab starts with (`chl-<id>-`).
    pub fn prefix(&self) -> String {
        format!("{NAMESPACE_PREFIX}{}-", self.run.id())
    }

    /// Names of all namespaces of this lab.
    pub fn namespace_names(&self) -> Vec<String> {
        let mut names = vec![self.public.name().to_owned()];
        names.extend(self.wire_ns.iter().map(|ns| ns.name().to_owned()));
        names.extend(self.namespaces.iter().map(|ns| ns.name().to_owned()));
        names
    }

    /// Counters of every delay wire (frames forwarded, dropped), in creation order.
    pub fn wire_stats(&self) -> Vec<Arc<WireStats>> {
        self.wires.iter().map(|w| w.stats().clone()).collect()
    }

    fn new_namespace(&mut self, suffix: &str) -> Result<Arc<Netns>, LabError> {
        let ns = Arc::new(Netns::create(format!("{}{suffix}", self.prefix()))?);
        self.namespaces.push(ns.clone());
        Ok(ns)
    }

    fn wire_namespace(&mut self) -> Result<Arc<Netns>, LabError> {
        if let Some(ns) = &self.wire_ns {
            return Ok(ns.clone());
        }
        let ns = Arc::new(Netns::create(format!("{}wire", self.prefix()))?);
        self.wire_ns = Some(ns.clone());
        Ok(ns)
    }

    /// Adds a host directly on the public segment, with an ideal link (the server, observers).
    pub fn add_public_host(&mut self, name: &str) -> Result<Host, LabError> {
        if self.next_public_host > LAST_PUBLIC_HOST {
            return Err(LabError::Topology(format!(
                "at most {LAST_PUBLIC_HOST} public hosts"
            )));
        }
        let octet = self.next_public_host;
        self.next_public_host += 1;
        let ns = self.new_namespace(&checked_name(name)?)?;
        let ip = Ipv4Addr::new(PUBLIC_NET[0], PUBLIC_NET[1], PUBLIC_NET[2], octet);
        self.attach_to_public(&ns, "eth0", LinkCondition::IDEAL, Some(ip))?;
        let ipv6 = match self.ipv6 {
            Some(_) => Some(self.join_ipv6(&ns, "eth0", octet)?),
            None => None,
        };
        Ok(Host {
            name: name.to_owned(),
            ns,
            ip,
            ipv6,
        })
    }

    /// Adds a site of the given profile whose uplink has `link` conditions.
    pub fn add_site(
        &mut self,
        name: &str,
        profile: NatProfile,
        link: LinkCondition,
    ) -> Result<Site, LabError> {
        let name = checked_name(name)?;
        if self.next_site > MAX_SITES {
            return Err(LabError::Topology(format!("at most {MAX_SITES} sites")));
        }
        let index = self.next_site;
        self.next_site += 1;
        let mut site = Site {
            name: name.clone(),
            profile,
            index,
            link,
            public_ip: None,
            lan_router: None,
            routers: Vec::new(),
            hosts: 0,
            dual_stack: false,
        };
        let layers = profile.layers();
        if layers.is_empty() {
            return Ok(site);
        }
        // Build from the outside in: the outermost router holds the public address.
        let mut outer: Option<Arc<Netns>> = None;
        for (depth, layer) in layers.iter().rev().enumerate() {
            let router = self.new_namespace(&format!("{name}-r{depth}"))?;
            for (key, value) in [
                ("net/ipv4/ip_forward", "1"),
                ("net/ipv4/conf/all/rp_filter", "0"),
                ("net/ipv4/conf/default/rp_filter", "0"),
            ] {
                router.sysctl(key, value)?;
            }
            match &outer {
                None => {
                    // miniupnpd needs a WAN address it takes for public (see `lab::upnp`).
                    let wan_ip = (*layer == nat::Layer::Upnp).then(|| {
                        upnp::wan_ip((u16::from(FIRST_UPLINK_HOST) + self.next_uplink) as u8)
                    });
                    let ip = self.attach_to_public(&router, WAN, link, wan_ip)?;
                    site.public_ip = Some(ip);
                }
                Some(carrier) => {
                    // Carrier-side link 100.64.<site>.0/24: carrier .1, home router .2.
                    let ifindex = self.take_ifindex_pair();
                    carrier_link(carrier, &router, index, ifindex)?;
                }
            }
            // Only the outermost router has a public address (the one snat may name).
            let wan_ip = if depth == 0 { site.public_ip } else { None };
            router.nft(&nat::router_ruleset_at(*layer, wan_ip))?;
            site.routers.insert(0, router.clone());
            outer = Some(router);
        }
        if let Some(inner) = outer {
            let gateway = lan_ip(index, 1);
            inner.ip(&["link", "add", "lan", "type", "bridge"])?;
            inner.ip(&["addr", "add", &format!("{gateway}/24"), "dev", "lan"])?;
            inner.ip(&["link", "set", "lan", "up"])?;
            if layers.contains(&nat::Layer::Upnp) {
                self.daemons.push(Miniupnpd::start(&inner, gateway, index)?);
            }
            site.lan_router = Some(inner);
        }
        Ok(site)
    }

    /// Adds a host to `site`: on its LAN behind the NAT, or, for a `none` site, directly on
    /// the public segment through the site's link.
    pub fn add_host(&mut self, site: &mut Site, name: &str) -> Result<Host, LabError> {
        let name = checked_name(name)?;
        if site.hosts >= 200 {
            return Err(LabError::Topology("at most 200 hosts per site".into()));
        }
        site.hosts += 1;
        let ns = self.new_namespace(&format!("{}-{name}", site.name))?;
        let ip = match &site.lan_router {
            None => {
                let ip = self.attach_to_public(&ns, "eth0", site.link, None)?;
                if site.public_ip.is_none() {
                    site.public_ip = Some(ip);
                }
                ip
            }
            Some(router) => {
                let port = format!("h{}", site.hosts);
                let ip = lan_ip(site.index, site.hosts + 1);
                let ifindex = self.take_ifindex_pair();
                add_veth(("eth0", &ns, None), (&port, router, None), ifindex)?;
                router.ip(&["link", "set", &port, "master", "lan", "up"])?;
                ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
                ns.ip(&["link", "set", "eth0", "up"])?;
                ns.ip(&[
                    "route",
                    "add",
                    "default",
                    "via",
                    &lan_ip(site.index, 1).to_string(),
                ])?;
                ip
            }
        };
        let ipv6 = self.host_ipv6(site, &ns, ip)?;
        Ok(Host { name, ns, ip, ipv6 })
    }

    /// Connects interface `ifname` (created here, in `ns`) to the public bridge, through a
    /// delay wire and loss rules as `link` asks, and gives it address `ip` (default: the
    /// next free uplink address), which it returns.
    fn attach_to_public(
        &mut self,
        ns: &Arc<Netns>,
        ifname: &str,
        link: LinkCondition,
        ip: Option<Ipv4Addr>,
    ) -> Result<Ipv4Addr, LabError> {
        let k = self.next_uplink;
        let octet = u16::from(FIRST_UPLINK_HOST) + k;
        if octet > 254 {
            return Err(LabError::Topology(
                "the public segment is full (245 uplinks)".into(),
            ));
        }
        self.next_uplink += 1;
        let port = format!("p{k}");
        let public = self.public.clone();
        let ip = ip.unwrap_or(Ipv4Addr::new(
            PUBLIC_NET[0],
            PUBLIC_NET[1],
            PUBLIC_NET[2],
            octet as u8,
        ));
        let mac = public_mac(ip);
        if link.delay.is_zero() {
            let ifindex = self.take_ifindex_pair();
            add_veth((ifname, ns, Some(&mac)), (&port, &public, None), ifindex)?;
        } else {
            let wire = self.wire_namespace()?;
            let (a, b) = (format!("u{k}a"), format!("u{k}b"));
            let ifindex = self.take_ifindex_pair();
            add_veth((ifname, ns, Some(&mac)), (&a, &wire, None), ifindex)?;
            let ifindex = self.take_ifindex_pair();
            add_veth((&b, &wire, None), (&port, &public, None), ifindex)?;
            wire.ip(&["link", "set", &a, "up"])?;
            wire.ip(&["link", "set", &b, "up"])?;
            self.wires.push(Wire::start(&wire, &a, &b, link.delay)?);
        }
        public.ip(&["link", "set", &port, "master", "br0", "up"])?;
        ns.ip(&["link", "set", ifname, "up"])?;
        if link.loss_percent > 0 {
            // Loss on ingress at both ends = loss in both directions. (Not inside the wire
            // namespace: AF_PACKET taps see frames before the netdev ingress hook.)
            ns.nft(&nat::loss_ruleset(ifname, link.loss_percent))?;
            public.nft(&nat::loss_ruleset(&port, link.loss_percent))?;
            // A veth passes a GSO batch (up to 64 KiB of TCP, a QUIC sender's 10 datagrams)
            // as one frame, so the rule would drop whole batches: far fewer loss events per
            // byte for whoever batches more. A real path loses packets, so both ends split
            // every batch into packets before they cross this link.
            for (dev_ns, dev) in [(ns.as_ref(), ifname), (public.as_ref(), port.as_str())] {
                dev_ns.ip(&["link", "set", dev, "gso_max_segs", "1"])?;
            }
        }
        ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", ifname])?;
        // The bridge carries two /24s: the lab's own and the `upnp` routers' (whose WAN
        // addresses miniupnpd must take for public). Each member reaches the other one on
        // link.
        let other_net = if ip.octets()[..3] == UPNP_PUBLIC_NET {
            PUBLIC_NET
        } else {
            UPNP_PUBLIC_NET
        };
        let other = format!("{}.{}.{}.0/24", other_net[0], other_net[1], other_net[2]);
        ns.ip(&["route", "replace", &other, "dev", ifname, "scope", "link"])?;
        self.join_public_segment(ns, ifname, ip)?;
        Ok(ip)
    }

    /// Two fresh interface indexes for the ends of a new veth pair.
    fn take_ifindex_pair(&mut self) -> u32 {
        let first = self.next_ifindex;
        self.next_ifindex += 2;
        first
    }

    /// Makes `ifname` (address `ip`, in `ns`) a resolved neighbour of every interface
    /// already on the public segment, and them of it: permanent entries, so no packet
    /// ever waits for ARP across a delay wire (or is lost with an ARP frame).
    fn join_public_segment(
        &mut self,
        ns: &Arc<Netns>,
        ifname: &str,
        ip: Ipv4Addr,
    ) -> Result<(), LabError> {
        let new = SegmentMember {
            ns: ns.clone(),
            ifname: ifname.to_owned(),
            ip,
        };
        if !self.public_members.is_empty() {
            // All existing members into the newcomer's table with one `ip` process.
            let batch: String = self
                .public_members
                .iter()
                .map(|m| m.neigh_line(ifname) + "\n")
                .collect();
            let mut cmd = sys::ip_command();
            cmd.args(["-n", ns.name(), "-batch", "-"]);
            sys::run_with_input(&mut cmd, Some(&batch))?;
        }
        for member in &self.public_members {
            let line = new.neigh_line(&member.ifname);
            let args: Vec<&str> = line.split(' ').collect();
            member.ns.ip(&args)?;
        }
        self.public_members.push(new);
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Wires first: their threads live in the wire namespace.
        self.wires.clear();
        self.daemons.clear();
        // Delete in reverse creation order (processes inside are killed first), even if a
        // caller still holds a `Host` or `Site` handle to some of them.
        while let Some(ns) = self.namespaces.pop() {
            ns.delete();
        }
        if let Some(ns) = self.wire_ns.take() {
            ns.delete();
        }
        self.public.delete();
    }
}

/// Creates a veth pair whose ends (name, namespace, optional MAC) start out in their
/// namespaces, with interface indexes `ifindex` and `ifindex + 1`. Distinct indexes
/// make the kernel treat the ends' carrier changes as urgent (a veth whose index equals
/// its peer's waits for the next once-a-second link-watch run, dropping frames until
/// then).
fn add_veth(
    (name, ns, mac): (&str, &Netns, Option<&str>),
    (peer, peer_ns, peer_mac): (&str, &Netns, Option<&str>),
    ifindex: u32,
) -> Result<(), LabError> {
    let (index, peer_index) = (ifindex.to_string(), (ifindex + 1).to_string());
    let mut cmd = sys::ip_command();
    cmd.args(["link", "add", name, "netns", ns.name(), "index", &index]);
    if let Some(mac) = mac {
        cmd.args(["address", mac]);
    }
    cmd.args([
        "type",
        "veth",
        "peer",
        "name",
        peer,
        "netns",
        peer_ns.name(),
    ]);
    cmd.args(["index", &peer_index]);
    if let Some(mac) = peer_mac {
        cmd.args(["address", mac]);
    }
    sys::run(&mut cmd).map(drop)
}

/// The fixed MAC of the public-segment interface with address `ip`
/// (locally administered, unicast: `02:cb:00:71:00:<last octet>`).
fn public_mac(ip: Ipv4Addr) -> String {
    format!("02:cb:00:71:00:{:02x}", ip.octets()[3])
}

/// Link between a carrier NAT (`lan` side, 100.64.<site>.1) and the home router inside it
/// (`wan` side, 100.64.<site>.2, default route via the carrier).
fn carrier_link(carrier: &Netns, home: &Netns, site: u16, ifindex: u32) -> Result<(), LabError> {
    let third = site.to_string();
    add_veth((WAN, home, None), ("lan", carrier, None), ifindex)?;
    carrier.ip(&["addr", "add", &format!("100.64.{third}.1/24"), "dev", "lan"])?;
    carrier.ip(&["link", "set", "lan", "up"])?;
    home.ip(&["addr", "add", &format!("100.64.{third}.2/24"), "dev", WAN])?;
    home.ip(&["link", "set", WAN, "up"])?;
    home.ip(&[
        "route",
        "add",
        "default",
        "via",
        &format!("100.64.{third}.1"),
    ])?;
    Ok(())
}

/// Address `host` on the LAN of site `site` (192.168.<site>.<host>).
fn lan_ip(site: u16, host: u8) -> Ipv4Addr {
    Ipv4Addr::new(192, 168, site as u8, host)
}

/// Names become part of namespace names: keep them short and shell-safe.
fn checked_name(name: &str) -> Result<String, LabError> {
    let ok = !name.is_empty()
        && name.len() <= 24
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(name.to_owned())
    } else {
        Err(LabError::Topology(format!(
            "name `{name}` must be 1-24 chars of a-z, 0-9 and -"
        )))
    }
}
