//! Deterministic in-process network for the hole-punching suites (`punch_*.rs`).
//!
//! - A virtual clock jumps to the earliest of: a host's `Punch::poll_timeout()`, a host's
//!   start time, the next datagram arrival. No sockets, no sleeps, no real time.
//! - The network is a tree of segments: the internet at the root; every NAT has an outer
//!   address on its parent segment and owns an inner segment (a LAN, or a CGNAT's
//!   shared-address segment). A datagram is delivered inside a segment if its
//!   destination IP is there; otherwise it goes up through the segment's NAT (outbound
//!   translation) until it finds it. Private addresses do not route on the internet.
//! - NAT models (RFC 4787 terms): mapping endpoint-independent (keeps the source port
//!   when free, like Linux masquerade) or address-and-port-dependent (a fresh
//!   pseudo-random port per destination, from a seeded RNG: masquerade `fully-random`);
//!   filtering endpoint-independent, address-dependent or address-and-port-dependent.
//!   Inbound traffic without a mapping, or not allowed by the filter, is dropped at the
//!   NAT (never reaches the host). No NAT hairpins.
//! - Links: one-way latency (plus optional jitter) for datagrams that cross the
//!   internet, a small LAN latency otherwise, and seeded random loss.
//! - "The server" is not simulated as a node: brokering computes what it would have
//!   observed by translating a binding datagram from each host to [`SERVER`] through its
//!   NATs (creating the same NAT state a real binding does), and the TCP-observed
//!   endpoint the same way for TCP.
// Test support shared by several test crates: not every crate uses every item, and its
// `pub` items are only reachable within each test crate.
#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use chatr_client::punch::{
    Candidate, CandidateKind, LocalNet, Punch, PunchConfig, PunchEvent, PunchFailure, PunchSuccess,
    Role, exchange_id_of, is_probe,
};
use chatr_proto::Endpoint;
use uuid::Uuid;

/// Where the simulated Connect server's UDP and TCP ports are.
pub const SERVER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 3478);
/// The port every client binds (TCP and UDP share it, as the client does).
pub const CLIENT_PORT: u16 = 4000;

pub fn initiator_uuid() -> Uuid {
    Uuid::from_bytes([0x11; 16])
}
pub fn responder_uuid() -> Uuid {
    Uuid::from_bytes([0x22; 16])
}

/// splitmix64: tiny, seeded, deterministic.
#[derive(Debug, Clone)]
pub struct SimRng(u64);

impl SimRng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

// ---------------------------------------------------------------- NAT model

/// RFC 4787 mapping behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mapping {
    /// One external port per internal endpoint, whatever the destination.
    EndpointIndependent,
    /// A new external port for every destination address and port ("symmetric").
    AddressAndPortDependent,
}

/// RFC 4787 filtering behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filtering {
    /// Anyone may send to a mapped port ("full cone").
    EndpointIndependent,
    /// Only IPs the internal endpoint sent to ("address-restricted").
    AddressDependent,
    /// Only IP:port pairs the internal endpoint sent to ("port-restricted").
    AddressAndPortDependent,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NatBehavior {
    pub mapping: Mapping,
    pub filtering: Filtering,
}

impl NatBehavior {
    pub const FULL_CONE: Self = Self {
        mapping: Mapping::EndpointIndependent,
        filtering: Filtering::EndpointIndependent,
    };
    pub const ADDRESS_RESTRICTED: Self = Self {
        mapping: Mapping::EndpointIndependent,
        filtering: Filtering::AddressDependent,
    };
    pub const PORT_RESTRICTED: Self = Self {
        mapping: Mapping::EndpointIndependent,
        filtering: Filtering::AddressAndPortDependent,
    };
    pub const SYMMETRIC: Self = Self {
        mapping: Mapping::AddressAndPortDependent,
        filtering: Filtering::AddressAndPortDependent,
    };
}

/// The NAT lab's profiles (issue 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Profile {
    /// No NAT: a public host.
    Public,
    /// EIM + EIF.
    FullCone,
    /// EIM + ADF.
    AddressRestricted,
    /// EIM + APDF (Linux masquerade dropping unsolicited inbound).
    PortRestricted,
    /// APDM + APDF (masquerade `fully-random`).
    Symmetric,
    /// Two layers: a port-restricted home router behind a port-restricted carrier NAT.
    Cgnat,
}

impl Profile {
    pub const ALL: [Profile; 6] = [
        Profile::Public,
        Profile::FullCone,
        Profile::AddressRestricted,
        Profile::PortRestricted,
        Profile::Symmetric,
        Profile::Cgnat,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Profile::Public => "public",
            Profile::FullCone => "full-cone",
            Profile::AddressRestricted => "address-restricted",
            Profile::PortRestricted => "port-restricted",
            Profile::Symmetric => "symmetric",
            Profile::Cgnat => "cgnat",
        }
    }

    /// NAT layers from the host outwards.
    pub fn layers(self) -> Vec<NatBehavior> {
        match self {
            Profile::Public => vec![],
            Profile::FullCone => vec![NatBehavior::FULL_CONE],
            Profile::AddressRestricted => vec![NatBehavior::ADDRESS_RESTRICTED],
            Profile::PortRestricted => vec![NatBehavior::PORT_RESTRICTED],
            Profile::Symmetric => vec![NatBehavior::SYMMETRIC],
            Profile::Cgnat => vec![NatBehavior::PORT_RESTRICTED, NatBehavior::PORT_RESTRICTED],
        }
    }

    /// Whether some layer only lets in the exact IP:port the host sent to.
    fn filters_by_port(self) -> bool {
        self.layers()
            .iter()
            .any(|l| l.filtering == Filtering::AddressAndPortDependent)
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The honest expected outcome of our algorithm (no port prediction, no relay):
///
/// a direct path exists unless one side is **symmetric** (new port per destination) and
/// the other side's NAT filters by **port** (port-restricted, symmetric, cgnat). Then
/// each side's probes go to a port the other NAT never opened for them: the symmetric
/// side's probes leave from a port the other side never sent to (dropped by its
/// port-dependent filter), and the other side's probes go to the symmetric side's
/// server-facing port, whose filter only admits the server.
pub fn expect_direct(a: Profile, b: Profile) -> bool {
    !((a == Profile::Symmetric && b.filters_by_port())
        || (b == Profile::Symmetric && a.filters_by_port()))
}

#[derive(Debug, Default)]
struct PortEntry {
    internal: Option<SocketAddr>,
    /// Remote endpoints this mapping sent to (what the filter admits).
    contacted: HashSet<SocketAddr>,
}

#[derive(Debug)]
struct Nat {
    outer_ip: IpAddr,
    outer_seg: usize,
    inner_seg: usize,
    behavior: NatBehavior,
    /// Whether inside hosts can reach each other through the outer address.
    hairpin: bool,
    mappings: HashMap<(SocketAddr, Option<SocketAddr>), u16>,
    ports: HashMap<u16, PortEntry>,
    /// TCP port space (only used to compute TCP-observed endpoints).
    tcp_ports: HashMap<SocketAddr, u16>,
    rng: SimRng,
    /// Drops every UDP datagram in both directions (a network that only lets TCP out).
    blocks_udp: bool,
}

/// UDP ports handed out at random (TCP ones come from a disjoint range, so a
/// symmetric NAT's TCP-observed port never equals one of its UDP mappings by chance;
/// real NATs can collide, but the suites want exact expectations).
const UDP_RANDOM_PORTS: std::ops::Range<u16> = 20_000..60_000;
const TCP_RANDOM_PORTS: std::ops::Range<u16> = 60_000..65_000;

/// Picks an external port: the internal one when the mapping is endpoint-independent
/// and it is free (Linux masquerade keeps ports), else a pseudo-random free one.
fn alloc_port(
    rng: &mut SimRng,
    mapping: Mapping,
    range: std::ops::Range<u16>,
    preferred: u16,
    used: impl Fn(u16) -> bool,
) -> u16 {
    if mapping == Mapping::EndpointIndependent && !used(preferred) {
        return preferred;
    }
    loop {
        let port = range.start + rng.below(u64::from(range.end - range.start)) as u16;
        if !used(port) {
            return port;
        }
    }
}

impl Nat {
    /// Translates an outgoing datagram's source, creating mapping and filter state.
    fn outbound(&mut self, src: SocketAddr, dst: SocketAddr) -> SocketAddr {
        let key = match self.behavior.mapping {
            Mapping::EndpointIndependent => (src, None),
            Mapping::AddressAndPortDependent => (src, Some(dst)),
        };
        let port = match self.mappings.get(&key) {
            Some(port) => *port,
            None => {
                let port = alloc_port(
                    &mut self.rng,
                    self.behavior.mapping,
                    UDP_RANDOM_PORTS,
                    src.port(),
                    |p| self.ports.contains_key(&p),
                );
                self.mappings.insert(key, port);
                self.ports.insert(
                    port,
                    PortEntry {
                        internal: Some(src),
                        contacted: HashSet::new(),
                    },
                );
                port
            }
        };
        if let Some(entry) = self.ports.get_mut(&port) {
            entry.contacted.insert(dst);
        }
        SocketAddr::new(self.outer_ip, port)
    }

    /// Translates an incoming datagram's destination, or drops it (`None`).
    fn inbound(&self, src: SocketAddr, dst: SocketAddr) -> Option<SocketAddr> {
        let entry = self.ports.get(&dst.port())?;
        let allowed = match self.behavior.filtering {
            Filtering::EndpointIndependent => true,
            Filtering::AddressDependent => entry.contacted.iter().any(|c| c.ip() == src.ip()),
            Filtering::AddressAndPortDependent => entry.contacted.contains(&src),
        };
        if allowed { entry.internal } else { None }
    }

    /// The port a TCP connection from `src` gets (separate port space; preserved when EIM).
    fn tcp_outbound(&mut self, src: SocketAddr) -> SocketAddr {
        if let Some(port) = self.tcp_ports.get(&src) {
            return SocketAddr::new(self.outer_ip, *port);
        }
        let port = alloc_port(
            &mut self.rng,
            self.behavior.mapping,
            TCP_RANDOM_PORTS,
            src.port(),
            |p| self.tcp_ports.values().any(|v| *v == p),
        );
        self.tcp_ports.insert(src, port);
        SocketAddr::new(self.outer_ip, port)
    }
}

// ---------------------------------------------------------------- network

/// The root segment.
pub const INTERNET: usize = 0;

#[derive(Debug)]
struct Segment {
    /// The NAT that owns this segment (None for the internet).
    parent: Option<usize>,
}

#[derive(Debug, Clone, Copy)]
enum NodeKind {
    Host(usize),
    /// A NAT's outer interface.
    Nat(usize),
    /// The Connect server's UDP port ([`SERVER`]); see [`Sim::add_server`].
    Server,
}

#[derive(Debug)]
struct Node {
    ip: IpAddr,
    seg: usize,
    kind: NodeKind,
}

/// What to start on a host when its start time comes.
#[derive(Debug, Clone)]
struct PendingPunch {
    config: PunchConfig,
    role: Role,
    local: Uuid,
    peer: Uuid,
    secret: [u8; 32],
    candidates: Vec<Candidate>,
    /// The host's own network, as the orchestrator passes it.
    local_nets: Vec<LocalNet>,
}

/// A simulated client host.
#[derive(Debug)]
pub struct Host {
    pub name: String,
    /// Its own socket address (the private endpoint it announces).
    pub addr: SocketAddr,
    seg: usize,
    pub punch: Option<Punch>,
    pending: Option<PendingPunch>,
    start_at: Instant,
    /// Events with the virtual time (since the simulation began) they appeared.
    pub events: Vec<(Duration, PunchEvent)>,
    /// Non-probe datagrams received: (time, source, bytes).
    pub received: Vec<(Duration, SocketAddr, Vec<u8>)>,
    /// Probe datagrams received while no matching `Punch` ran (before start, or after
    /// it was dropped, or of another exchange).
    pub stray_probes: u32,
    /// Datagrams this host sent (probes included).
    pub sent: u32,
}

impl Host {
    /// The outcome, once the host's punch has one.
    pub fn outcome(&self) -> Option<Result<PunchSuccess, PunchFailure>> {
        self.events.iter().find_map(|(_, e)| match e {
            PunchEvent::Succeeded(s) => Some(Ok(s.clone())),
            PunchEvent::Failed(f) => Some(Err(f.clone())),
            _ => None,
        })
    }

    pub fn success(&self) -> PunchSuccess {
        match self.outcome() {
            Some(Ok(s)) => s,
            other => panic!("{}: expected success, got {other:?}", self.name),
        }
    }

    pub fn failure(&self) -> PunchFailure {
        match self.outcome() {
            Some(Err(f)) => f,
            other => panic!("{}: expected failure, got {other:?}", self.name),
        }
    }

    pub fn learned(&self) -> Vec<Candidate> {
        self.events
            .iter()
            .filter_map(|(_, e)| match e {
                PunchEvent::CandidateLearned(c) => Some(*c),
                _ => None,
            })
            .collect()
    }
}

/// Link conditions and punch configuration of a simulation.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// One-way latency of a datagram that crosses the internet.
    pub latency: Duration,
    /// Extra uniformly random delay in `0..=jitter` per internet datagram (reorders).
    pub jitter: Duration,
    /// One-way latency inside a LAN / CGNAT segment.
    pub lan_latency: Duration,
    /// Probability that any datagram is lost.
    pub loss: f64,
    /// Seeds loss, jitter, NAT port choice and the link secret.
    pub seed: u64,
    pub punch: PunchConfig,
    /// When each side receives its PacketClientInfo and starts punching.
    pub initiator_start: Duration,
    pub responder_start: Duration,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            latency: Duration::from_millis(20),
            jitter: Duration::ZERO,
            lan_latency: Duration::from_millis(1),
            loss: 0.0,
            seed: 1,
            punch: PunchConfig::default(),
            initiator_start: Duration::ZERO,
            responder_start: Duration::ZERO,
        }
    }
}

#[derive(Debug)]
struct InFlight {
    arrive_at: Instant,
    seq: u64,
    target: usize,
    src: SocketAddr,
    dst: SocketAddr,
    bytes: Vec<u8>,
}

impl PartialEq for InFlight {
    fn eq(&self, other: &Self) -> bool {
        (self.arrive_at, self.seq) == (other.arrive_at, other.seq)
    }
}
impl Eq for InFlight {}
impl PartialOrd for InFlight {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for InFlight {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.arrive_at, self.seq).cmp(&(other.arrive_at, other.seq))
    }
}

/// Why datagrams did not arrive.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DropStats {
    pub lost: u32,
    /// Dropped by a NAT: no mapping or not admitted by its filter.
    pub filtered: u32,
    /// Destination IP exists on no segment on the way up (e.g. a private IP elsewhere).
    pub unroutable: u32,
    /// Sent to the outer address of a NAT the datagram was leaving through.
    pub no_hairpin: u32,
    /// Arrived at a host on a port it does not listen on.
    pub port_closed: u32,
    pub delivered: u32,
}

/// One datagram as sent by a host (before NAT translation).
#[derive(Debug, Clone)]
pub struct Tapped {
    pub at: Duration,
    pub host: usize,
    pub destination: SocketAddr,
    pub bytes: Vec<u8>,
}

/// The simulated network and its hosts.
#[derive(Debug)]
pub struct Sim {
    pub base: Instant,
    pub now: Instant,
    pub cfg: SimConfig,
    segs: Vec<Segment>,
    nodes: Vec<Node>,
    nats: Vec<Nat>,
    pub hosts: Vec<Host>,
    in_flight: BinaryHeap<Reverse<InFlight>>,
    rng: SimRng,
    seq: u64,
    pub drops: DropStats,
    /// Every datagram sent by a host.
    pub tap: Vec<Tapped>,
    /// Datagrams that reached [`SERVER`] (after [`Sim::add_server`]): (time, source, bytes).
    pub server_inbox: Vec<(Duration, SocketAddr, Vec<u8>)>,
    /// Public addresses between which every datagram is dropped (a black hole).
    pub blackhole: Option<(IpAddr, IpAddr)>,
    /// Hosts whose datagrams (probes too) all land in [`Host::received`], for a driver
    /// outside the simulator (see `link_sim`).
    external: HashSet<usize>,
}

impl Sim {
    pub fn new(cfg: SimConfig) -> Self {
        let base = Instant::now();
        Self {
            base,
            now: base,
            rng: SimRng::new(cfg.seed ^ 0x5EED_0000_0000_0001),
            cfg,
            segs: vec![Segment { parent: None }],
            nodes: Vec::new(),
            nats: Vec::new(),
            hosts: Vec::new(),
            in_flight: BinaryHeap::new(),
            seq: 0,
            drops: DropStats::default(),
            tap: Vec::new(),
            server_inbox: Vec::new(),
            blackhole: None,
            external: HashSet::new(),
        }
    }

    /// Puts the Connect server's UDP port ([`SERVER`]) on the internet: datagrams to it
    /// land in [`Sim::server_inbox`].
    pub fn add_server(&mut self) {
        self.nodes.push(Node {
            ip: SERVER.ip(),
            seg: INTERNET,
            kind: NodeKind::Server,
        });
    }

    /// Sends `bytes` from the server's UDP port to `dst` (an address on the internet).
    pub fn send_from_server(&mut self, dst: SocketAddr, bytes: Vec<u8>) {
        let Some(target) = self.node_at(INTERNET, dst.ip()) else {
            self.drops.unroutable += 1;
            return;
        };
        if self.rng.chance(self.cfg.loss) {
            self.drops.lost += 1;
            return;
        }
        self.seq += 1;
        self.in_flight.push(Reverse(InFlight {
            arrive_at: self.now + self.cfg.latency,
            seq: self.seq,
            target,
            src: SERVER,
            dst,
            bytes,
        }));
    }

    /// Host `h` is driven from outside: everything it receives goes to [`Host::received`].
    pub fn drive_externally(&mut self, h: usize) {
        self.external.insert(h);
    }

    /// When the next datagram arrives, if one is in flight.
    pub fn next_arrival(&self) -> Option<Instant> {
        self.in_flight.peek().map(|Reverse(p)| p.arrive_at)
    }

    /// Moves the clock to `now` (never back) and delivers every datagram due by then.
    pub fn advance_to(&mut self, now: Instant) {
        self.now = self.now.max(now);
        while self
            .in_flight
            .peek()
            .is_some_and(|Reverse(p)| p.arrive_at <= self.now)
        {
            let Reverse(packet) = self.in_flight.pop().unwrap();
            self.deliver(packet);
        }
    }

    /// Virtual time since the simulation began.
    pub fn elapsed(&self) -> Duration {
        self.now - self.base
    }

    // ---- building ----

    /// Adds a NAT with its outer address on `outer_seg`; returns its inner segment.
    pub fn add_nat(&mut self, outer_seg: usize, outer_ip: IpAddr, behavior: NatBehavior) -> usize {
        let inner_seg = self.segs.len();
        let nat = self.nats.len();
        self.segs.push(Segment { parent: Some(nat) });
        self.nodes.push(Node {
            ip: outer_ip,
            seg: outer_seg,
            kind: NodeKind::Nat(nat),
        });
        let seed = self.cfg.seed.wrapping_mul(31).wrapping_add(nat as u64);
        self.nats.push(Nat {
            outer_ip,
            outer_seg,
            inner_seg,
            behavior,
            hairpin: false,
            mappings: HashMap::new(),
            ports: HashMap::new(),
            tcp_ports: HashMap::new(),
            rng: SimRng::new(seed),
            blocks_udp: false,
        });
        inner_seg
    }

    /// The NAT that owns `inner_seg` drops all UDP from now on (TCP still gets out).
    pub fn block_udp(&mut self, inner_seg: usize) {
        let nat = self.segs[inner_seg].parent.unwrap();
        self.nats[nat].blocks_udp = true;
    }

    /// The segment host `h` lives on.
    pub fn host_segment(&self, h: usize) -> usize {
        self.hosts[h].seg
    }

    /// Lets the NAT that owns `inner_seg` hairpin (most home routers here do not).
    pub fn enable_hairpin(&mut self, inner_seg: usize) {
        let nat = self.segs[inner_seg].parent.unwrap();
        self.nats[nat].hairpin = true;
    }

    pub fn add_host(&mut self, seg: usize, addr: SocketAddr, name: &str) -> usize {
        let id = self.hosts.len();
        self.nodes.push(Node {
            ip: addr.ip(),
            seg,
            kind: NodeKind::Host(id),
        });
        self.hosts.push(Host {
            name: name.to_owned(),
            addr,
            seg,
            punch: None,
            pending: None,
            start_at: self.base,
            events: Vec::new(),
            received: Vec::new(),
            stray_probes: 0,
            sent: 0,
        });
        id
    }

    /// Builds the network of site `i` for `profile` and returns the segment its
    /// host(s) live on. Address plan: public hosts 198.51.100.(10+i); NAT outer
    /// addresses 203.0.113.(10+i) (home) and 203.0.113.(100+i) (carrier); carrier
    /// segment 100.64.i.0; home LAN 192.168.(i+1).0.
    pub fn add_site_segment(&mut self, profile: Profile, i: u8) -> usize {
        match profile {
            Profile::Public => INTERNET,
            Profile::Cgnat => {
                let carrier = self.add_nat(
                    INTERNET,
                    IpAddr::V4(Ipv4Addr::new(203, 0, 113, 100 + i)),
                    NatBehavior::PORT_RESTRICTED,
                );
                self.add_nat(
                    carrier,
                    IpAddr::V4(Ipv4Addr::new(100, 64, i, 10)),
                    NatBehavior::PORT_RESTRICTED,
                )
            }
            other => {
                let behavior = other.layers()[0];
                self.add_nat(
                    INTERNET,
                    IpAddr::V4(Ipv4Addr::new(203, 0, 113, 10 + i)),
                    behavior,
                )
            }
        }
    }

    /// One host at site `i` behind `profile`.
    pub fn add_site(&mut self, profile: Profile, i: u8, name: &str) -> usize {
        let seg = self.add_site_segment(profile, i);
        let ip = if seg == INTERNET {
            Ipv4Addr::new(198, 51, 100, 10 + i)
        } else {
            Ipv4Addr::new(192, 168, i + 1, 2)
        };
        self.add_host(seg, SocketAddr::new(IpAddr::V4(ip), CLIENT_PORT), name)
    }

    /// Initiator behind `a` (host 0), responder behind `b` (host 1), brokered.
    pub fn pair(a: Profile, b: Profile, cfg: SimConfig) -> Self {
        let mut sim = Sim::new(cfg);
        let i = sim.add_site(a, 0, &format!("initiator({a})"));
        let r = sim.add_site(b, 1, &format!("responder({b})"));
        sim.broker(i, r);
        sim
    }

    /// Both hosts on one LAN behind one `profile` router (no hairpinning).
    pub fn same_lan(profile: Profile, cfg: SimConfig) -> Self {
        assert_ne!(profile, Profile::Public, "a public host has no LAN");
        let mut sim = Sim::new(cfg);
        let seg = sim.add_site_segment(profile, 0);
        let i = sim.add_host(seg, "192.168.1.2:4000".parse().unwrap(), "initiator(lan)");
        let r = sim.add_host(seg, "192.168.1.3:4000".parse().unwrap(), "responder(lan)");
        sim.broker(i, r);
        sim
    }

    // ---- what the server observes ----

    fn node_at(&self, seg: usize, ip: IpAddr) -> Option<usize> {
        self.nodes.iter().position(|n| n.seg == seg && n.ip == ip)
    }

    /// Like [`Sim::observe_udp`], but `None` when a NAT on the way drops UDP.
    pub fn try_observe_udp(&mut self, host: usize) -> Option<SocketAddr> {
        let mut seg = self.hosts[host].seg;
        while let Some(nat) = self.segs[seg].parent {
            if self.nats[nat].blocks_udp {
                return None;
            }
            seg = self.nats[nat].outer_seg;
        }
        Some(self.observe_udp(host))
    }

    /// The source address the server sees for a UDP datagram from `host` (the binding
    /// exchange; creates the NAT state it creates for real).
    pub fn observe_udp(&mut self, host: usize) -> SocketAddr {
        let mut src = self.hosts[host].addr;
        let mut seg = self.hosts[host].seg;
        while let Some(nat) = self.segs[seg].parent {
            src = self.nats[nat].outbound(src, SERVER);
            seg = self.nats[nat].outer_seg;
        }
        src
    }

    /// The source address the server sees for the TCP connection of `host`.
    pub fn observe_tcp(&mut self, host: usize) -> SocketAddr {
        let mut src = self.hosts[host].addr;
        let mut seg = self.hosts[host].seg;
        while let Some(nat) = self.segs[seg].parent {
            src = self.nats[nat].tcp_outbound(src);
            seg = self.nats[nat].outer_seg;
        }
        src
    }

    /// The candidates the orchestrator would build for a peer `host`.
    pub fn candidates_of(&mut self, host: usize) -> Vec<Candidate> {
        let private = self.hosts[host].addr;
        let udp = self.observe_udp(host);
        let tcp = self.observe_tcp(host);
        Candidate::from_endpoints(
            Some(Endpoint::new(private)),
            Some(Endpoint::new(udp)),
            Some(Endpoint::new(tcp)),
        )
    }

    /// The link secret the server hands both parties (derived from the seed).
    pub fn secret(&self) -> [u8; 32] {
        let mut rng = SimRng::new(self.cfg.seed ^ 0xC0FF_EE00);
        let mut secret = [0u8; 32];
        for chunk in secret.chunks_mut(8) {
            chunk.copy_from_slice(&rng.next_u64().to_be_bytes());
        }
        secret
    }

    /// Brokers an exchange: `initiator` and `responder` get each other's candidates and
    /// start punching at their configured start times.
    pub fn broker(&mut self, initiator: usize, responder: usize) {
        let secret = self.secret();
        self.broker_with(initiator, responder, secret);
    }

    pub fn broker_with(&mut self, initiator: usize, responder: usize, secret: [u8; 32]) {
        let for_initiator = self.candidates_of(responder);
        let for_responder = self.candidates_of(initiator);
        let (ini_start, resp_start) = (self.cfg.initiator_start, self.cfg.responder_start);
        let config = self.cfg.punch.clone();
        self.hosts[initiator].pending = Some(PendingPunch {
            config: config.clone(),
            role: Role::Initiator,
            local: initiator_uuid(),
            peer: responder_uuid(),
            secret,
            candidates: for_initiator,
            local_nets: vec![LocalNet::guess(self.hosts[initiator].addr.ip())],
        });
        self.hosts[initiator].start_at = self.base + ini_start;
        self.hosts[responder].pending = Some(PendingPunch {
            config,
            role: Role::Responder,
            local: responder_uuid(),
            peer: initiator_uuid(),
            secret,
            candidates: for_responder,
            local_nets: vec![LocalNet::guess(self.hosts[responder].addr.ip())],
        });
        self.hosts[responder].start_at = self.base + resp_start;
    }

    /// Host `h` will not start its punch (its PacketClientInfo never arrives).
    pub fn forget_pending(&mut self, h: usize) {
        self.hosts[h].pending = None;
    }

    /// The candidates host `h` was (or will be) started with.
    pub fn given_candidates(&self, h: usize) -> Vec<Candidate> {
        if let Some(p) = &self.hosts[h].pending {
            return p.candidates.clone();
        }
        self.hosts[h]
            .punch
            .as_ref()
            .map(|p| p.candidates().copied().collect())
            .unwrap_or_default()
    }

    // ---- moving datagrams ----

    /// Sends `bytes` from `host`'s socket to `dst` through the network.
    pub fn send(&mut self, host: usize, dst: SocketAddr, bytes: Vec<u8>) {
        let src = self.hosts[host].addr;
        self.send_from(host, src, dst, bytes);
    }

    /// Like [`Sim::send`] but from another port (or spoofed address) of `host`.
    pub fn send_from(&mut self, host: usize, src: SocketAddr, dst: SocketAddr, bytes: Vec<u8>) {
        self.hosts[host].sent += 1;
        self.tap.push(Tapped {
            at: self.elapsed(),
            host,
            destination: dst,
            bytes: bytes.clone(),
        });
        let mut src = src;
        let mut seg = self.hosts[host].seg;
        let target = loop {
            if let Some(node) = self.node_at(seg, dst.ip()) {
                break node;
            }
            let Some(nat) = self.segs[seg].parent else {
                self.drops.unroutable += 1;
                return;
            };
            if dst.ip() == self.nats[nat].outer_ip {
                if !self.nats[nat].hairpin {
                    self.drops.no_hairpin += 1;
                    return;
                }
                // Hairpin: translate out, then straight back in at the NAT itself.
                src = self.nats[nat].outbound(src, dst);
                seg = self.nats[nat].outer_seg;
                break self
                    .nodes
                    .iter()
                    .position(|n| matches!(n.kind, NodeKind::Nat(id) if id == nat))
                    .unwrap();
            }
            if self.nats[nat].blocks_udp {
                self.drops.filtered += 1;
                return;
            }
            src = self.nats[nat].outbound(src, dst);
            seg = self.nats[nat].outer_seg;
        };
        if seg == INTERNET
            && let Some((a, b)) = self.blackhole
            && ((src.ip() == a && dst.ip() == b) || (src.ip() == b && dst.ip() == a))
        {
            self.drops.filtered += 1;
            return;
        }
        if self.rng.chance(self.cfg.loss) {
            self.drops.lost += 1;
            return;
        }
        let delay = if seg == INTERNET || self.nodes[target].seg == INTERNET {
            let jitter_ns = self.cfg.jitter.as_nanos() as u64;
            let extra = if jitter_ns > 0 {
                self.rng.below(jitter_ns + 1)
            } else {
                0
            };
            self.cfg.latency + Duration::from_nanos(extra)
        } else {
            self.cfg.lan_latency
        };
        self.seq += 1;
        self.in_flight.push(Reverse(InFlight {
            arrive_at: self.now + delay,
            seq: self.seq,
            target,
            src,
            dst,
            bytes,
        }));
    }

    fn deliver(&mut self, packet: InFlight) {
        let mut node = packet.target;
        let mut dst = packet.dst;
        loop {
            match self.nodes[node].kind {
                NodeKind::Server => {
                    self.drops.delivered += 1;
                    let at = self.elapsed();
                    self.server_inbox.push((at, packet.src, packet.bytes));
                    return;
                }
                NodeKind::Host(h) => {
                    if self.hosts[h].addr != dst {
                        self.drops.port_closed += 1;
                        return;
                    }
                    self.drops.delivered += 1;
                    self.host_receive(h, packet.src, &packet.bytes);
                    return;
                }
                NodeKind::Nat(n) => {
                    if self.nats[n].blocks_udp {
                        self.drops.filtered += 1;
                        return;
                    }
                    let Some(internal) = self.nats[n].inbound(packet.src, dst) else {
                        self.drops.filtered += 1;
                        return;
                    };
                    let inner = self.nats[n].inner_seg;
                    let Some(next) = self.node_at(inner, internal.ip()) else {
                        self.drops.unroutable += 1;
                        return;
                    };
                    node = next;
                    dst = internal;
                }
            }
        }
    }

    fn host_receive(&mut self, h: usize, src: SocketAddr, bytes: &[u8]) {
        let now = self.now;
        let at = self.elapsed();
        let external = self.external.contains(&h);
        let host = &mut self.hosts[h];
        if external || !is_probe(bytes) {
            host.received.push((at, src, bytes.to_vec()));
            return;
        }
        match host.punch.as_mut() {
            Some(punch) if exchange_id_of(bytes) == Some(punch.exchange_id()) => {
                punch.handle_datagram(now, src, bytes);
            }
            _ => {
                host.stray_probes += 1;
                return;
            }
        }
        self.flush(h);
    }

    /// Sends what host `h`'s punch queued and records its events.
    fn flush(&mut self, h: usize) {
        let at = self.elapsed();
        loop {
            let Some(punch) = self.hosts[h].punch.as_mut() else {
                return;
            };
            let Some(t) = punch.poll_transmit() else {
                break;
            };
            self.send(h, t.destination, t.contents);
        }
        let host = &mut self.hosts[h];
        if let Some(punch) = host.punch.as_mut() {
            while let Some(e) = punch.poll_event() {
                host.events.push((at, e));
            }
        }
    }

    /// Advances to the next instant something happens. `false` when nothing is left or
    /// the next thing is after `limit` (virtual time since the start).
    pub fn step(&mut self, limit: Duration) -> bool {
        let next_host = self
            .hosts
            .iter()
            .filter_map(|h| match (&h.punch, &h.pending) {
                (Some(p), _) => p.poll_timeout(),
                (None, Some(_)) => Some(h.start_at),
                (None, None) => None,
            })
            .min();
        let next_packet = self.in_flight.peek().map(|Reverse(p)| p.arrive_at);
        let Some(next) = [next_host, next_packet].into_iter().flatten().min() else {
            return false;
        };
        if next > self.base + limit {
            return false;
        }
        self.now = self.now.max(next);
        let now = self.now;

        for h in 0..self.hosts.len() {
            if self.hosts[h].punch.is_none()
                && self.hosts[h].start_at <= now
                && let Some(p) = self.hosts[h].pending.take()
            {
                self.hosts[h].punch = Some(
                    Punch::new(
                        now,
                        p.config,
                        p.role,
                        p.local,
                        p.peer,
                        p.secret,
                        p.candidates,
                    )
                    .with_local_networks(p.local_nets),
                );
                self.flush(h);
            }
        }
        while self
            .in_flight
            .peek()
            .is_some_and(|Reverse(p)| p.arrive_at <= now)
        {
            let Reverse(packet) = self.in_flight.pop().unwrap();
            self.deliver(packet);
        }
        for h in 0..self.hosts.len() {
            let due = self.hosts[h]
                .punch
                .as_ref()
                .and_then(|p| p.poll_timeout())
                .is_some_and(|t| t <= now);
            if due {
                self.hosts[h].punch.as_mut().unwrap().handle_timeout(now);
                self.flush(h);
                let after = self.hosts[h].punch.as_ref().unwrap().poll_timeout();
                assert!(
                    after.is_none_or(|t| t > now),
                    "{}: poll_timeout did not advance past handle_timeout(now)",
                    self.hosts[h].name
                );
            }
        }
        true
    }

    /// Runs until `done` holds or nothing is left to do before `limit`.
    pub fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&Sim) -> bool) {
        let mut steps = 0u32;
        while !done(self) && self.step(limit) {
            steps += 1;
            assert!(steps < 1_000_000, "simulation does not converge");
        }
    }

    /// Runs until both brokered hosts (0 and 1) have an outcome.
    pub fn run(&mut self) {
        let limit = self.cfg.punch.give_up_after
            + self.cfg.initiator_start.max(self.cfg.responder_start)
            + Duration::from_secs(1);
        self.run_until(limit, |s| {
            s.hosts[0].outcome().is_some() && s.hosts[1].outcome().is_some()
        });
    }

    /// Runs for `d` more virtual time.
    pub fn run_for(&mut self, d: Duration) {
        let limit = self.elapsed() + d;
        self.run_until(limit, |_| false);
        self.now = self.now.max(self.base + limit);
    }

    /// After success: each side sends one application datagram to its `remote`, with
    /// loss switched off. Checks that each arrives at the other host **from the address
    /// that host agreed on** — the path works both ways and both sides agree on it.
    pub fn check_link(&mut self, a: usize, b: usize) {
        let (sa, sb) = (self.hosts[a].success(), self.hosts[b].success());
        let saved = self.cfg.loss;
        self.cfg.loss = 0.0;
        let before = (self.hosts[a].received.len(), self.hosts[b].received.len());
        self.send(a, sa.remote, b"data a->b".to_vec());
        self.send(b, sb.remote, b"data b->a".to_vec());
        self.run_for(self.cfg.latency * 2 + self.cfg.jitter + self.cfg.lan_latency * 2);
        self.cfg.loss = saved;
        let got_b: Vec<_> = self.hosts[b].received[before.1..].to_vec();
        let got_a: Vec<_> = self.hosts[a].received[before.0..].to_vec();
        assert!(
            got_b
                .iter()
                .any(|(_, src, bytes)| bytes == b"data a->b" && *src == sb.remote),
            "{} -> {} over {} did not arrive from {} (got {got_b:?}, drops {:?})",
            self.hosts[a].name,
            self.hosts[b].name,
            sa.remote,
            sb.remote,
            self.drops
        );
        assert!(
            got_a
                .iter()
                .any(|(_, src, bytes)| bytes == b"data b->a" && *src == sa.remote),
            "{} -> {} over {} did not arrive from {} (got {got_a:?}, drops {:?})",
            self.hosts[b].name,
            self.hosts[a].name,
            sb.remote,
            sa.remote,
            self.drops
        );
    }

    /// Probes that hosts sent, by type byte.
    pub fn sent_of_type(&self, host: usize, kind: u8) -> usize {
        self.tap
            .iter()
            .filter(|t| t.host == host && is_probe(&t.bytes) && t.bytes[4] == kind)
            .count()
    }
}

/// One-line description of an outcome for assertion messages.
pub fn describe(outcome: &Option<Result<PunchSuccess, PunchFailure>>) -> String {
    match outcome {
        None => "no outcome".to_owned(),
        Some(Ok(s)) => format!(
            "direct via {} ({}, {}) in {:?} with {} probes",
            s.remote, s.kind, s.path, s.elapsed, s.probes_sent
        ),
        Some(Err(f)) => format!("failed: {f}"),
    }
}

/// The candidate kind a successful `remote` was announced as, if it was.
pub fn kind_given(candidates: &[Candidate], remote: SocketAddr) -> Option<CandidateKind> {
    candidates.iter().find(|c| c.addr == remote).map(|c| c.kind)
}
