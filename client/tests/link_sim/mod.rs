//! Whole link attempts in virtual time: two [`LinkAgent`]s on the punch simulator's
//! network, a Connect server that relays (over UDP, and over TLS), and a stand-in for QUIC.
//!
//! - The network, NATs, loss and latency are `punch_sim`'s; both hosts are driven from
//!   here (every datagram they receive lands in `Host::received`).
//! - The server relays as `chatr-server` does: `… 30 ‖ id ‖ datagram` from a party's bound
//!   UDP endpoint goes to the other party as `… 31 ‖ id ‖ datagram`, over UDP to its bound
//!   endpoint when it last sent over UDP (or has not sent yet and has a binding), else over
//!   its TLS session. TLS is a reliable channel with the internet's one-way latency,
//!   which no NAT filters and no UDP block affects.
//! - QUIC is a four-message handshake with the real one's shape: Initial (initiator) →
//!   Handshake (responder) → Finished (initiator) → the responder's confirmation; each
//!   side retransmits on a probe timeout that starts at 1 s and doubles. Then, if asked,
//!   each side sends a data datagram every `data_every`. Every QUIC datagram goes on the
//!   sender's current [`SendPlan`] (primary and copies), like the real socket.
//! - A clock that jumps to the next event; no sockets, no sleeps.
#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chatr_client::path::{
    AgentAction, AgentConfig, AgentFailure, Exchange, LinkAgent, LinkOutcome, LocalInfo, PathEvent,
    PathId, RelayVia,
};
use chatr_client::punch::is_probe;
use chatr_proto::udp::{
    RELAY_HEADER_LEN, TYPE_RELAY_FROM_SERVER, TYPE_RELAY_TO_SERVER, parse_relayed, relay_header,
};
use chatr_proto::{Endpoint, RelayId};

use crate::punch_sim::{Profile, SERVER, Sim, SimConfig, initiator_uuid, responder_uuid};

/// The relay id the simulated server hands out.
pub const RELAY: RelayId = RelayId([0x5a; 8]);

const QUIC_INITIAL: u8 = 0xc1;
const QUIC_HANDSHAKE: u8 = 0xc2;
const QUIC_FINISHED: u8 = 0xc3;
const QUIC_CONFIRM: u8 = 0x41;
const QUIC_DATA: u8 = 0x42;
const FIRST_PTO: Duration = Duration::from_secs(1);

/// What the stand-in QUIC is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum QuicState {
    Idle,
    /// Waiting for the peer's next message; resend ours at `pto`.
    Handshaking {
        resend_at: Instant,
        pto: Duration,
        last: u8,
    },
    Established,
}

/// Which way a received datagram came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Direct(SocketAddr),
    RelayUdp,
    RelayTls,
}

impl Via {
    pub fn is_relay(self) -> bool {
        !matches!(self, Via::Direct(_))
    }
    fn path(self) -> PathId {
        match self {
            Via::Direct(a) => PathId::Direct(a),
            Via::RelayUdp => PathId::Relay(RelayVia::Udp),
            Via::RelayTls => PathId::Relay(RelayVia::Tls),
        }
    }
}

/// One side: its agent, its QUIC stand-in and what happened.
#[derive(Debug)]
pub struct Side {
    pub host: usize,
    pub agent: LinkAgent,
    quic: QuicState,
    is_initiator: bool,
    pub linked: Option<(Duration, LinkOutcome)>,
    pub failed: Option<(Duration, AgentFailure)>,
    pub switches: Vec<(Duration, PathEvent)>,
    /// Data datagrams received: (time, sequence number, how).
    pub data: Vec<(Duration, u32, Via)>,
    next_data_at: Option<Instant>,
    next_seq: u32,
    /// Data datagrams sent, by whether they went to the relay.
    pub data_sent_relayed: u32,
    pub data_sent_direct: u32,
    /// Where each QUIC datagram this side sent went first: (time, primary path).
    pub quic_sent: Vec<(Duration, Option<PathId>)>,
    /// The start time (its ClientInfo).
    start_at: Instant,
    /// The first probe timeout of this side's QUIC.
    pto: Duration,
    exchange: Option<Exchange>,
    established_at: Option<Duration>,
}

/// A TLS message in flight (to the server, or from it to a party).
#[derive(Debug, PartialEq, Eq)]
struct TlsMsg {
    arrive_at: Instant,
    seq: u64,
    /// `None` = to the server; `Some(i)` = to side `i`.
    to: Option<usize>,
    from: usize,
    bytes: Vec<u8>,
}

impl PartialOrd for TlsMsg {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for TlsMsg {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.arrive_at, self.seq).cmp(&(other.arrive_at, other.seq))
    }
}

/// How a link simulation is set up.
#[derive(Debug, Clone)]
pub struct LinkSimConfig {
    pub net: SimConfig,
    pub agent: AgentConfig,
    /// Whether the server relays the exchange.
    pub relay: bool,
    /// Which sides' networks block UDP entirely.
    pub udp_blocked: [bool; 2],
    /// Each side sends a data datagram this often once its QUIC is up.
    pub data_every: Option<Duration>,
}

impl Default for LinkSimConfig {
    fn default() -> Self {
        Self {
            net: SimConfig::default(),
            agent: AgentConfig::default(),
            relay: true,
            udp_blocked: [false, false],
            data_every: None,
        }
    }
}

/// Two agents on a simulated network.
#[derive(Debug)]
pub struct LinkSim {
    pub sim: Sim,
    pub sides: [Side; 2],
    cfg: LinkSimConfig,
    tls: BinaryHeap<Reverse<TlsMsg>>,
    tls_seq: u64,
    /// The server-observed (bound) UDP endpoint of each side.
    pub bound: [Option<SocketAddr>; 2],
    /// The transport each side last sent relay traffic on (true = TLS).
    last_via_tls: [Option<bool>; 2],
    pub relayed_udp: u32,
    pub relayed_tls: u32,
}

impl LinkSim {
    /// Initiator behind `a`, responder behind `b`, their exchange brokered at the
    /// configured start times.
    pub fn pair(a: Profile, b: Profile, cfg: LinkSimConfig) -> Self {
        let mut sim = Sim::new(cfg.net.clone());
        sim.add_server();
        let i = sim.add_site(a, 0, &format!("initiator({a})"));
        let r = sim.add_site(b, 1, &format!("responder({b})"));
        Self::brokered(sim, [i, r], cfg)
    }

    /// Both hosts behind one `profile` router.
    pub fn same_lan(profile: Profile, cfg: LinkSimConfig) -> Self {
        let mut sim = Sim::new(cfg.net.clone());
        sim.add_server();
        let seg = sim.add_site_segment(profile, 0);
        let i = sim.add_host(seg, "192.168.1.2:4000".parse().unwrap(), "initiator(lan)");
        let r = sim.add_host(seg, "192.168.1.3:4000".parse().unwrap(), "responder(lan)");
        Self::brokered(sim, [i, r], cfg)
    }

    fn brokered(mut sim: Sim, hosts: [usize; 2], cfg: LinkSimConfig) -> Self {
        for (side, &h) in hosts.iter().enumerate() {
            sim.drive_externally(h);
            if cfg.udp_blocked[side] {
                let seg = sim.host_segment(h);
                assert_ne!(
                    seg,
                    crate::punch_sim::INTERNET,
                    "a public host has no router to block UDP"
                );
                sim.block_udp(seg);
            }
        }
        let bound = [sim.try_observe_udp(hosts[0]), sim.try_observe_udp(hosts[1])];
        let tcp = [sim.observe_tcp(hosts[0]), sim.observe_tcp(hosts[1])];
        let private = [sim.hosts[hosts[0]].addr, sim.hosts[hosts[1]].addr];
        let secret = sim.secret();
        let t0 = sim.now;
        let starts = [t0 + cfg.net.initiator_start, t0 + cfg.net.responder_start];
        let make_side = |side: usize, agent: LinkAgent| Side {
            host: hosts[side],
            agent,
            quic: QuicState::Idle,
            is_initiator: side == 0,
            linked: None,
            failed: None,
            switches: Vec::new(),
            data: Vec::new(),
            next_data_at: None,
            next_seq: 0,
            data_sent_relayed: 0,
            data_sent_direct: 0,
            quic_sent: Vec::new(),
            start_at: starts[side],
            pto: FIRST_PTO,
            exchange: Some(Exchange {
                public_endpoint: Endpoint::new(bound[1 - side].unwrap_or(tcp[1 - side])),
                tcp_endpoint: Some(Endpoint::new(tcp[1 - side])),
                link_secret: secret,
                relay: cfg.relay.then(|| {
                    if bound[side].is_some() {
                        RelayVia::Udp
                    } else {
                        RelayVia::Tls
                    }
                }),
            }),
            established_at: None,
        };
        let local = |side: usize| LocalInfo {
            uuid: if side == 0 {
                initiator_uuid()
            } else {
                responder_uuid()
            },
            private_ip: private[side].ip(),
            public: Some(Endpoint::new(bound[side].unwrap_or(tcp[side]))),
            // The client measures it as its TCP connect time to the server.
            server_rtt: Some(cfg.net.latency * 2),
        };
        let mut initiator = LinkAgent::initiate(t0, cfg.agent.clone(), local(0), responder_uuid());
        initiator.handle_accepted(t0, Endpoint::new(private[1]));
        let responder = LinkAgent::respond(
            t0,
            cfg.agent.clone(),
            local(1),
            initiator_uuid(),
            Endpoint::new(private[0]),
        );
        let mut link = Self {
            sim,
            sides: [make_side(0, initiator), make_side(1, responder)],
            cfg,
            tls: BinaryHeap::new(),
            tls_seq: 0,
            bound,
            last_via_tls: [None, None],
            relayed_udp: 0,
            relayed_tls: 0,
        };
        for side in 0..2 {
            link.drain(side);
        }
        link
    }

    pub fn elapsed(&self) -> Duration {
        self.sim.elapsed()
    }

    fn now(&self) -> Instant {
        self.sim.now
    }

    // ---- sending ----

    fn send_on(&mut self, side: usize, path: PathId, bytes: Vec<u8>) {
        let host = self.sides[side].host;
        match path {
            PathId::Direct(addr) => self.sim.send(host, addr, bytes),
            PathId::Relay(RelayVia::Udp) => {
                let mut d = relay_header(TYPE_RELAY_TO_SERVER, &RELAY).to_vec();
                d.extend_from_slice(&bytes);
                self.sim.send(host, SERVER, d);
            }
            PathId::Relay(RelayVia::Tls) => self.push_tls(None, side, bytes),
        }
    }

    fn push_tls(&mut self, to: Option<usize>, from: usize, bytes: Vec<u8>) {
        self.tls_seq += 1;
        self.tls.push(Reverse(TlsMsg {
            arrive_at: self.now() + self.cfg.net.latency,
            seq: self.tls_seq,
            to,
            from,
            bytes,
        }));
    }

    /// Sends a QUIC datagram the way the socket does: on every path of the plan.
    fn send_quic(&mut self, side: usize, bytes: Vec<u8>) {
        let plan = self.sides[side].agent.plan();
        let at = self.elapsed();
        self.sides[side].quic_sent.push((at, plan.primary));
        if bytes.first() == Some(&QUIC_DATA) {
            match plan.primary {
                Some(PathId::Relay(_)) => self.sides[side].data_sent_relayed += 1,
                Some(PathId::Direct(_)) => self.sides[side].data_sent_direct += 1,
                None => {}
            }
        }
        for path in plan.paths() {
            self.send_on(side, path, bytes.clone());
        }
    }

    /// Executes what side `side`'s agent asks for.
    fn drain(&mut self, side: usize) {
        let at = self.elapsed();
        let now = self.now();
        while let Some(action) = self.sides[side].agent.poll_action() {
            match action {
                AgentAction::StartQuic { initial_rtt } => {
                    // quinn's first probe timeout is about three times its RTT estimate.
                    let pto = initial_rtt.map_or(FIRST_PTO, |rtt| rtt * 3);
                    self.sides[side].pto = pto;
                    self.sides[side].quic = QuicState::Handshaking {
                        resend_at: now + pto,
                        pto,
                        last: QUIC_INITIAL,
                    };
                    self.send_quic(side, vec![QUIC_INITIAL]);
                }
                AgentAction::Linked(outcome) => self.sides[side].linked = Some((at, *outcome)),
                AgentAction::Failed(f) => self.sides[side].failed = Some((at, f)),
                AgentAction::SendRequest | AgentAction::SendAccept => {}
                other => panic!("unexpected action {other:?}"),
            }
        }
        while let Some((path, bytes)) = self.sides[side].agent.poll_transmit() {
            self.send_on(side, path, bytes);
        }
        while let Some(event) = self.sides[side].agent.poll_event() {
            self.sides[side].switches.push((at, event));
        }
    }

    // ---- receiving ----

    fn receive(&mut self, side: usize, via: Via, bytes: &[u8]) {
        let now = self.now();
        if bytes.first().is_some_and(|b| b & 0x40 != 0) {
            self.quic_receive(side, via, bytes);
        } else if is_probe(bytes) {
            self.sides[side]
                .agent
                .handle_datagram(now, via.path(), bytes);
        }
        self.drain(side);
    }

    fn quic_receive(&mut self, side: usize, via: Via, bytes: &[u8]) {
        let now = self.now();
        let at = self.elapsed();
        let Some(&kind) = bytes.first() else { return };
        let initiator = self.sides[side].is_initiator;
        match (kind, initiator) {
            (QUIC_INITIAL, false) if self.sides[side].quic != QuicState::Established => {
                self.sides[side].quic = QuicState::Handshaking {
                    resend_at: now + FIRST_PTO,
                    pto: FIRST_PTO,
                    last: QUIC_HANDSHAKE,
                };
                self.send_quic(side, vec![QUIC_HANDSHAKE]);
            }
            (QUIC_HANDSHAKE, true) if self.sides[side].quic != QuicState::Established => {
                let pto = self.sides[side].pto;
                self.sides[side].quic = QuicState::Handshaking {
                    resend_at: now + pto,
                    pto,
                    last: QUIC_FINISHED,
                };
                self.send_quic(side, vec![QUIC_FINISHED]);
            }
            (QUIC_FINISHED, false) => {
                // Confirmation (and re-confirmation for a repeated Finished).
                self.send_quic(side, vec![QUIC_CONFIRM]);
                self.establish(side);
            }
            (QUIC_CONFIRM, true) => self.establish(side),
            (QUIC_DATA, _) => {
                let seq = bytes
                    .get(1..5)
                    .map(|b| u32::from_be_bytes(b.try_into().unwrap()))
                    .unwrap_or(0);
                self.sides[side].data.push((at, seq, via));
            }
            _ => {}
        }
    }

    fn establish(&mut self, side: usize) {
        if self.sides[side].quic == QuicState::Established {
            return;
        }
        let now = self.now();
        self.sides[side].quic = QuicState::Established;
        self.sides[side].established_at = Some(self.elapsed());
        self.sides[side].agent.handle_quic_established(now);
        if let Some(every) = self.cfg.data_every {
            self.sides[side].next_data_at = Some(now + every);
        }
        self.drain(side);
    }

    fn server_receive(
        &mut self,
        from_side: Option<usize>,
        src: Option<SocketAddr>,
        bytes: &[u8],
        via_tls: bool,
    ) {
        let inner: Vec<u8> = if via_tls {
            bytes.to_vec()
        } else {
            match parse_relayed(bytes) {
                Some(r) if r.kind == TYPE_RELAY_TO_SERVER && r.relay == RELAY => r.inner.to_vec(),
                _ => return,
            }
        };
        // The sender: by its TLS session, or by its bound UDP endpoint (strangers dropped).
        let from = match from_side {
            Some(s) => s,
            None => match (0..2).find(|&s| self.bound[s].is_some() && self.bound[s] == src) {
                Some(s) => s,
                None => return,
            },
        };
        if !self.cfg.relay {
            return;
        }
        self.last_via_tls[from] = Some(via_tls);
        let to = 1 - from;
        let to_tls = matches!(
            (self.last_via_tls[to], self.bound[to]),
            (Some(true), _) | (_, None)
        );
        if to_tls {
            self.relayed_tls += 1;
            self.push_tls(Some(to), from, inner);
        } else if let Some(addr) = self.bound[to] {
            self.relayed_udp += 1;
            let mut d = relay_header(TYPE_RELAY_FROM_SERVER, &RELAY).to_vec();
            d.extend_from_slice(&inner);
            self.sim.send_from_server(addr, d);
        }
    }

    // ---- time ----

    fn next_event(&self) -> Option<Instant> {
        let mut next = self.sim.next_arrival();
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n: Instant| n.min(t)));
            }
        };
        consider(self.tls.peek().map(|Reverse(m)| m.arrive_at));
        for side in &self.sides {
            if side.exchange.is_some() {
                consider(Some(side.start_at));
            }
            consider(side.agent.poll_timeout());
            if let QuicState::Handshaking { resend_at, .. } = side.quic {
                consider(Some(resend_at));
            }
            consider(side.next_data_at);
        }
        next
    }

    /// Advances to the next event; `false` when nothing is left before `limit`.
    pub fn step(&mut self, limit: Duration) -> bool {
        let Some(next) = self.next_event() else {
            return false;
        };
        if next > self.sim.base + limit {
            return false;
        }
        let now = next.max(self.now());
        self.sim.advance_to(now);
        // ClientInfo arrivals.
        for side in 0..2 {
            if self.sides[side].start_at <= now
                && let Some(exchange) = self.sides[side].exchange.take()
            {
                self.sides[side].agent.handle_client_info(now, exchange);
                self.drain(side);
            }
        }
        // UDP datagrams delivered to the hosts.
        for side in 0..2 {
            let host = self.sides[side].host;
            let received = std::mem::take(&mut self.sim.hosts[host].received);
            for (_, src, bytes) in received {
                let (via, inner) = if src == SERVER {
                    match parse_relayed(&bytes) {
                        Some(r) if r.kind == TYPE_RELAY_FROM_SERVER => {
                            (Via::RelayUdp, r.inner.to_vec())
                        }
                        _ => continue,
                    }
                } else {
                    (Via::Direct(src), bytes)
                };
                self.receive(side, via, &inner);
            }
        }
        let inbox = std::mem::take(&mut self.sim.server_inbox);
        for (_, src, bytes) in inbox {
            self.server_receive(None, Some(src), &bytes, false);
        }
        // TLS messages due.
        while self.tls.peek().is_some_and(|Reverse(m)| m.arrive_at <= now) {
            let Reverse(msg) = self.tls.pop().unwrap();
            match msg.to {
                None => self.server_receive(Some(msg.from), None, &msg.bytes, true),
                Some(side) => self.receive(side, Via::RelayTls, &msg.bytes),
            }
        }
        // Timers.
        for side in 0..2 {
            if self.sides[side]
                .agent
                .poll_timeout()
                .is_some_and(|t| t <= now)
            {
                self.sides[side].agent.handle_timeout(now);
                self.drain(side);
                assert!(
                    self.sides[side]
                        .agent
                        .poll_timeout()
                        .is_none_or(|t| t > now),
                    "side {side}: poll_timeout did not advance past handle_timeout(now)"
                );
            }
            if let QuicState::Handshaking {
                resend_at,
                pto,
                last,
            } = self.sides[side].quic
                && resend_at <= now
            {
                self.sides[side].quic = QuicState::Handshaking {
                    resend_at: now + pto * 2,
                    pto: pto * 2,
                    last,
                };
                self.send_quic(side, vec![last]);
            }
            if let (Some(at), Some(every)) = (self.sides[side].next_data_at, self.cfg.data_every)
                && at <= now
            {
                let seq = self.sides[side].next_seq;
                self.sides[side].next_seq += 1;
                let mut d = vec![QUIC_DATA];
                d.extend_from_slice(&seq.to_be_bytes());
                self.send_quic(side, d);
                self.sides[side].next_data_at = Some(now + every);
            }
        }
        true
    }

    /// Runs until `done` or nothing is left before `limit`.
    pub fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&LinkSim) -> bool) {
        let mut steps = 0u32;
        while !done(self) && self.step(limit) {
            steps += 1;
            assert!(steps < 2_000_000, "simulation does not converge");
        }
    }

    /// Runs until both sides linked or one failed (or `limit`).
    pub fn run_to_link(&mut self, limit: Duration) {
        self.run_until(limit, |s| {
            s.sides.iter().any(|x| x.failed.is_some()) || s.sides.iter().all(|x| x.linked.is_some())
        });
    }

    /// Runs for `d` more virtual time.
    pub fn run_for(&mut self, d: Duration) {
        let limit = self.elapsed() + d;
        self.run_until(limit, |_| false);
        let end = self.sim.base + limit;
        self.sim.advance_to(end);
    }

    /// The public address of side `side`'s outermost NAT (or the host, if public).
    pub fn public_ip(&self, side: usize) -> std::net::IpAddr {
        self.bound[side]
            .map(|a| a.ip())
            .unwrap_or_else(|| self.sim.hosts[self.sides[side].host].addr.ip())
    }

    /// One round trip between the two sites on the direct path.
    pub fn direct_rtt(&self) -> Duration {
        self.cfg.net.latency * 2
    }

    /// One round trip through the relay.
    pub fn relay_rtt(&self) -> Duration {
        self.cfg.net.latency * 4
    }

    /// The active path of side `side` now.
    pub fn active(&self, side: usize) -> Option<PathId> {
        self.sides[side].agent.paths().and_then(|p| p.active())
    }

    /// The first data datagram side `side` received via `pred` at or after `after`.
    pub fn first_data_after(
        &self,
        side: usize,
        after: Duration,
        pred: impl Fn(Via) -> bool,
    ) -> Option<Duration> {
        self.sides[side]
            .data
            .iter()
            .find(|(t, _, via)| *t >= after && pred(*via))
            .map(|(t, _, _)| *t)
    }
}

/// Fewer than this many bytes of relay header never appear in a relayed datagram.
pub const HEADER: usize = RELAY_HEADER_LEN;
