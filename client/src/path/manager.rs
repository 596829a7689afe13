//! The paths of one link, how each one fares, and which one carries the link.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chatr_proto::LINK_SECRET_LEN;
use uuid::Uuid;

use super::config::PathConfig;
use super::id::{PathClass, PathId, RelayVia, SendPlan};
use crate::punch::{
    Candidate, CandidateKind, PathKind, Probe, ProbeKeys, ProbeType, PunchEvent, PunchSuccess,
};

/// ProbeAcks we still accept, oldest forgotten first.
const MAX_OUTSTANDING: usize = 128;
/// Direct paths one link keeps (announced plus learned); more learned ones are ignored.
const MAX_DIRECT: usize = 16;
/// Queued probes; more are dropped (the driver drains after every call).
const MAX_TRANSMITS: usize = 64;

/// How a path is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Health {
    /// Never answered.
    Untested,
    /// Answered recently.
    Confirmed,
    /// Was confirmed, then stopped answering: needs
    /// [`PathConfig::promote_after`] answers in a row to be used again.
    Dead,
}

#[derive(Debug)]
struct Direct {
    addr: SocketAddr,
    kind: CandidateKind,
    lan: bool,
    health: Health,
    acks_in_row: u32,
    last_ack: Option<Instant>,
    rtt: Option<Duration>,
    interval: Duration,
    next_probe: Option<Instant>,
    /// Whether the peer has proved it can send to us from this address (it is where an
    /// authentic datagram came from): worth a copy of set-up traffic.
    heard_from: bool,
}

#[derive(Debug)]
struct Relay {
    via: RelayVia,
    last_ack: Option<Instant>,
    rtt: Option<Duration>,
    next_probe: Instant,
}

/// Something a driver or a user may want to know.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PathEvent {
    /// The link now goes over `to`.
    Switched {
        /// The path it used before, if any.
        from: Option<PathId>,
        /// The path it uses now.
        to: PathId,
        /// Why, in a few words ("direct path confirmed", "direct path stopped answering").
        why: &'static str,
    },
}

/// Sans-IO path manager of one link: probes the peer's direct addresses and the relay
/// with the exchange's authenticated probes (`docs/PROTOCOL.md` §10), answers the peer's,
/// and decides which path each datagram of the link takes ([`PathManager::plan`]).
///
/// Rules, in order:
/// 1. A path pinned with [`PathManager::pin`] (tests, benchmarks, `--path`) is always used.
/// 2. A *confirmed* direct path (a probe on it was answered within
///    [`PathConfig::dead_after`]) beats the relay. The one in use is kept while it stays
///    confirmed, unless a LAN path is confirmed while it is a public one. A path that died
///    is used again only after [`PathConfig::promote_after`] answers in a row.
/// 3. Otherwise the relay, when the exchange has one.
/// 4. Otherwise the best guess: the path in use, else the peer's server-observed UDP
///    endpoint (the optimistic start of `docs/PROTOCOL.md` §10.4).
///
/// During [`PathConfig::setup_window`] every datagram also goes to the relay and to the
/// direct paths worth a try, unless a direct path is already confirmed.
///
/// The path in use gets a heartbeat probe every [`PathConfig::heartbeat`] (when there is
/// something to fall back to); other paths are probed at backed-off intervals, so a
/// direct path that opens later is found and the link moves to it.
///
/// # Calling order
/// [`PathManager::new`] when the exchange's ClientInfo arrives. After every `handle_*`
/// call, drain [`PathManager::poll_transmit`] (send each on its path) and
/// [`PathManager::poll_event`], publish [`PathManager::plan`] to the socket, and re-arm
/// one timer at [`PathManager::poll_timeout`].
#[derive(Debug)]
pub struct PathManager {
    config: PathConfig,
    local: Uuid,
    peer: Uuid,
    keys: ProbeKeys,
    direct: Vec<Direct>,
    relay: Option<Relay>,
    /// Set while the hole punch runs: it probes the direct paths and answers the peer's
    /// probes on them.
    punching: bool,
    pinned: Option<PathId>,
    active: Option<PathId>,
    /// The peer's server-observed UDP endpoint, if worth an optimistic try.
    optimistic: Option<SocketAddr>,
    setup_until: Instant,
    fast_until: Instant,
    next_txid: u64,
    outstanding: VecDeque<(u64, PathId, Instant)>,
    transmits: VecDeque<(PathId, Vec<u8>)>,
    events: VecDeque<PathEvent>,
    plan: SendPlan,
    switches: u32,
    probes_sent: u32,
}

impl PathManager {
    /// The paths of a link whose exchange's ClientInfo arrived at `now`.
    ///
    /// `candidates` are the peer's direct endpoints (as for the punch), `relay` how we
    /// reach the exchange's relay if it has one, `optimistic` the address worth a try
    /// before anything is confirmed. With `punching`, the direct paths are left to the
    /// hole punch until [`PathManager::punch_finished`].
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        now: Instant,
        config: PathConfig,
        local: Uuid,
        peer: Uuid,
        link_secret: &[u8; LINK_SECRET_LEN],
        candidates: &[Candidate],
        relay: Option<RelayVia>,
        optimistic: Option<SocketAddr>,
        punching: bool,
    ) -> Self {
        let mut manager = Self {
            setup_until: now + config.setup_window,
            fast_until: now + config.fast_for,
            local,
            peer,
            keys: ProbeKeys::new(link_secret),
            direct: Vec::new(),
            relay: relay.map(|via| Relay {
                via,
                last_ack: None,
                rtt: None,
                next_probe: now,
            }),
            punching,
            pinned: None,
            active: None,
            optimistic,
            next_txid: 1,
            outstanding: VecDeque::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            plan: SendPlan::default(),
            switches: 0,
            probes_sent: 0,
            config,
        };
        for c in candidates {
            manager.add_direct(now, c.addr, c.kind);
        }
        manager.select(now, "link set up");
        // The first round of probes (the relay's, and the direct paths' unless the punch
        // has them) goes out at once.
        manager.handle_timeout(now);
        manager
    }

    // ----- getters -----

    /// Where the link's datagrams go now.
    pub fn plan(&self) -> &SendPlan {
        &self.plan
    }

    /// The path that carries the link.
    pub fn active(&self) -> Option<PathId> {
        self.active
    }

    /// What a user is told about `path`.
    pub fn class_of(&self, path: PathId) -> PathClass {
        match path {
            PathId::Relay(RelayVia::Udp) => PathClass::RelayUdp,
            PathId::Relay(RelayVia::Tls) => PathClass::RelayTls,
            PathId::Direct(addr) => match self.direct.iter().find(|d| d.addr == addr) {
                Some(d) if d.lan => PathClass::DirectLan,
                _ => PathClass::DirectPublic,
            },
        }
    }

    /// The class of the path in use.
    pub fn active_class(&self) -> Option<PathClass> {
        self.active.map(|p| self.class_of(p))
    }

    /// The measured round trip of the path in use, if known.
    pub fn active_rtt(&self) -> Option<Duration> {
        match self.active? {
            PathId::Relay(_) => self.relay.as_ref()?.rtt,
            PathId::Direct(addr) => self.direct.iter().find(|d| d.addr == addr)?.rtt,
        }
    }

    /// Whether the exchange has a relay.
    pub fn has_relay(&self) -> bool {
        self.relay.is_some()
    }

    /// How often the path in use changed after the first choice.
    pub fn switches(&self) -> u32 {
        self.switches
    }

    /// Probes this manager sent.
    pub fn probes_sent(&self) -> u32 {
        self.probes_sent
    }

    /// The peer's direct addresses known now (announced and learned).
    pub fn direct_addrs(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.direct.iter().map(|d| d.addr)
    }

    // ----- inputs -----

    /// Forces every datagram onto `path` (or back to automatic choice with `None`).
    pub fn pin(&mut self, now: Instant, path: Option<PathId>) {
        self.pinned = path;
        self.select(now, "pinned");
    }

    /// The server closed the exchange's relay: it is no path any more.
    pub fn relay_closed(&mut self, now: Instant) {
        if self.relay.take().is_some() {
            self.select(now, "the server closed the relay");
        }
    }

    /// The hole punch is over; the manager probes and answers on the direct paths now.
    pub fn punch_finished(&mut self, now: Instant) {
        if !self.punching {
            return;
        }
        self.punching = false;
        for d in &mut self.direct {
            if d.next_probe.is_none() {
                d.next_probe = Some(now + d.interval);
            }
        }
    }

    /// What the hole punch found out.
    pub fn handle_punch_event(&mut self, now: Instant, event: &PunchEvent) {
        match event {
            PunchEvent::CandidateLearned(c) => {
                let index = self.add_direct(now, c.addr, c.kind);
                if let Some(d) = index.and_then(|i| self.direct.get_mut(i)) {
                    d.heard_from = true;
                }
            }
            PunchEvent::PathValidated {
                remote, rtt, path, ..
            } => {
                self.confirm(now, PathId::Direct(*remote), Some(*rtt));
                self.mark_lan(*remote, *path);
            }
            PunchEvent::Nominating { remote, path, .. } => {
                self.mark_lan(*remote, *path);
                self.confirm(now, PathId::Direct(*remote), None);
            }
            PunchEvent::Succeeded(PunchSuccess {
                remote, path, rtt, ..
            }) => {
                self.mark_lan(*remote, *path);
                self.confirm(now, PathId::Direct(*remote), *rtt);
            }
            PunchEvent::Failed(_) => {}
        }
        self.select(now, "direct path confirmed");
    }

    /// A control datagram of this exchange arrived over `path`.
    pub fn handle_datagram(&mut self, now: Instant, path: PathId, datagram: &[u8]) {
        let Ok(probe) = self.keys.open(datagram) else {
            return;
        };
        if probe.sender != self.peer {
            return;
        }
        if let PathId::Direct(addr) = path {
            let index = match self.direct.iter().position(|d| d.addr == addr) {
                Some(i) => Some(i),
                None => self.add_direct(now, addr, CandidateKind::PeerReflexive),
            };
            if let Some(d) = index.and_then(|i| self.direct.get_mut(i)) {
                d.heard_from = true;
                // A path the peer just used is worth probing soon.
                if !self.punching && d.health != Health::Confirmed {
                    let soon = now + self.config.probe_first / 4;
                    d.next_probe = Some(d.next_probe.map_or(soon, |t| t.min(soon)));
                }
            }
        }
        match probe.kind {
            // While the punch runs it answers on the direct paths itself.
            ProbeType::Probe if !(self.punching && matches!(path, PathId::Direct(_))) => {
                let ack = self.keys.seal(&Probe {
                    kind: ProbeType::ProbeAck,
                    sender: self.local,
                    txid: probe.txid,
                    flags: 0,
                });
                self.queue(path, ack);
            }
            ProbeType::ProbeAck => {
                if let Some(pos) = self
                    .outstanding
                    .iter()
                    .position(|(txid, p, _)| *txid == probe.txid && *p == path)
                    && let Some((_, _, sent_at)) = self.outstanding.remove(pos)
                {
                    let rtt = now.saturating_duration_since(sent_at);
                    self.confirm(now, path, Some(rtt));
                    self.select(now, "direct path confirmed");
                }
            }
            _ => {}
        }
    }

    /// Time passed: heartbeats, probes, dead paths.
    pub fn handle_timeout(&mut self, now: Instant) {
        // The path in use stopped answering?
        if let Some(PathId::Direct(addr)) = self.active
            && let Some(d) = self.direct.iter_mut().find(|d| d.addr == addr)
            && d.health == Health::Confirmed
            && d.last_ack
                .is_none_or(|t| now.saturating_duration_since(t) >= self.config.dead_after)
        {
            d.health = Health::Dead;
            d.acks_in_row = 0;
            d.interval = self.config.probe_first;
            self.fast_until = now + self.config.fast_for;
            self.select(now, "direct path stopped answering");
        }
        for i in 0..self.direct.len() {
            let due = self
                .direct
                .get(i)
                .is_some_and(|d| !self.punching && d.next_probe.is_some_and(|t| t <= now));
            if due {
                self.probe_direct(now, i);
            }
        }
        if let Some(relay) = &self.relay
            && relay.next_probe <= now
        {
            let path = PathId::Relay(relay.via);
            self.send_probe(now, path);
            let every = if self.active == Some(path) || self.relay_untested() {
                self.config.heartbeat.max(self.config.relay_keepalive / 4)
            } else {
                self.config.relay_keepalive
            };
            if let Some(relay) = &mut self.relay {
                relay.next_probe = now + every;
            }
        }
        // The set-up window may just have closed: the copies stop.
        self.select(now, "set-up over");
    }

    // ----- outputs -----

    /// The next probe to send and the path it goes on.
    pub fn poll_transmit(&mut self) -> Option<(PathId, Vec<u8>)> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<PathEvent> {
        self.events.pop_front()
    }

    /// When [`PathManager::handle_timeout`] is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut consider = |t: Instant| next = Some(next.map_or(t, |n| n.min(t)));
        if !self.punching {
            for d in &self.direct {
                if let Some(t) = d.next_probe {
                    consider(t);
                }
            }
        }
        if let Some(relay) = &self.relay {
            consider(relay.next_probe);
        }
        if let Some(PathId::Direct(addr)) = self.active
            && let Some(d) = self.direct.iter().find(|d| d.addr == addr)
            && d.health == Health::Confirmed
            && let Some(t) = d.last_ack
        {
            consider(t + self.config.dead_after);
        }
        if !self.plan.extra.is_empty() {
            consider(self.setup_until);
        }
        next
    }

    // ----- internals -----

    fn relay_untested(&self) -> bool {
        self.relay.as_ref().is_some_and(|r| r.last_ack.is_none())
    }

    fn add_direct(&mut self, now: Instant, addr: SocketAddr, kind: CandidateKind) -> Option<usize> {
        let addr = SocketAddr::new(addr.ip().to_canonical(), addr.port());
        if let Some(i) = self.direct.iter().position(|d| d.addr == addr) {
            return Some(i);
        }
        if self.direct.len() >= MAX_DIRECT || !Candidate::new(addr, kind).is_probeable() {
            return None;
        }
        self.direct.push(Direct {
            addr,
            kind,
            lan: kind == CandidateKind::Private,
            health: Health::Untested,
            acks_in_row: 0,
            last_ack: None,
            rtt: None,
            interval: self.config.probe_first,
            next_probe: (!self.punching).then_some(now),
            heard_from: false,
        });
        Some(self.direct.len() - 1)
    }

    fn mark_lan(&mut self, addr: SocketAddr, kind: PathKind) {
        if let Some(d) = self.direct.iter_mut().find(|d| d.addr == addr) {
            d.lan = kind == PathKind::Lan;
        }
    }

    fn confirm(&mut self, now: Instant, path: PathId, rtt: Option<Duration>) {
        match path {
            PathId::Direct(addr) => {
                let Some(index) = self.add_direct(now, addr, CandidateKind::PeerReflexive) else {
                    return;
                };
                let Some(d) = self.direct.get_mut(index) else {
                    return;
                };
                d.acks_in_row = d.acks_in_row.saturating_add(1);
                d.last_ack = Some(now);
                d.heard_from = true;
                if rtt.is_some() {
                    d.rtt = rtt;
                }
                if d.health != Health::Dead || d.acks_in_row >= self.config.promote_after {
                    d.health = Health::Confirmed;
                }
            }
            PathId::Relay(_) => {
                if let Some(relay) = &mut self.relay {
                    relay.last_ack = Some(now);
                    if rtt.is_some() {
                        relay.rtt = rtt;
                    }
                }
            }
        }
    }

    fn probe_direct(&mut self, now: Instant, index: usize) {
        let active = self.active;
        let has_fallback = self.relay.is_some() || self.direct.len() > 1;
        let Some(d) = self.direct.get_mut(index) else {
            return;
        };
        let path = PathId::Direct(d.addr);
        let next = if Some(path) == active && d.health == Health::Confirmed {
            // Heartbeat: only worth it when there is somewhere to fall back to.
            if has_fallback {
                self.config.heartbeat
            } else {
                self.config.probe_slow
            }
        } else {
            let current = d.interval;
            let cap = if now < self.fast_until {
                self.config.probe_max
            } else {
                self.config.probe_slow
            };
            d.interval = current
                .mul_f64(1.5)
                .min(cap)
                .max(self.config.probe_first.min(cap));
            current
        };
        d.next_probe = Some(now + next);
        self.send_probe(now, path);
    }

    fn send_probe(&mut self, now: Instant, path: PathId) {
        let txid = self.next_txid;
        self.next_txid = self.next_txid.wrapping_add(1);
        let datagram = self.keys.seal(&Probe {
            kind: ProbeType::Probe,
            sender: self.local,
            txid,
            flags: 0,
        });
        if self.outstanding.len() >= MAX_OUTSTANDING {
            self.outstanding.pop_front();
        }
        self.outstanding.push_back((txid, path, now));
        self.probes_sent = self.probes_sent.saturating_add(1);
        self.queue(path, datagram);
    }

    fn queue(&mut self, path: PathId, datagram: Vec<u8>) {
        if self.transmits.len() < MAX_TRANSMITS {
            self.transmits.push_back((path, datagram));
        }
    }

    /// Whether direct path `d` may carry the link now.
    fn usable(&self, d: &Direct, now: Instant) -> bool {
        d.health == Health::Confirmed
            && d.last_ack
                .is_some_and(|t| now.saturating_duration_since(t) < self.config.dead_after)
    }

    /// Re-decides the plan; records a switch with `why`.
    fn select(&mut self, now: Instant, why: &'static str) {
        let primary = self.pinned.or_else(|| self.choose(now));
        let confirmed_direct = matches!(primary, Some(PathId::Direct(addr))
            if self.direct.iter().any(|d| d.addr == addr && self.usable(d, now)));
        let mut extra = Vec::new();
        if self.pinned.is_none() && now < self.setup_until && !confirmed_direct {
            if let Some(relay) = &self.relay {
                extra.push(PathId::Relay(relay.via));
            }
            if let Some(addr) = self.optimistic {
                extra.push(PathId::Direct(addr));
            }
            for d in &self.direct {
                if d.heard_from || d.health == Health::Confirmed {
                    extra.push(PathId::Direct(d.addr));
                }
            }
            extra.retain(|p| Some(*p) != primary);
            extra.sort_unstable();
            extra.dedup();
        }
        if primary != self.active {
            if let Some(to) = primary {
                if self.active.is_some() {
                    self.switches = self.switches.saturating_add(1);
                }
                self.events.push_back(PathEvent::Switched {
                    from: self.active,
                    to,
                    why,
                });
            }
            self.active = primary;
        }
        self.plan = SendPlan { primary, extra };
    }

    fn choose(&self, now: Instant) -> Option<PathId> {
        let usable: Vec<&Direct> = self.direct.iter().filter(|d| self.usable(d, now)).collect();
        let rank = |d: &Direct| {
            (
                d.lan,
                d.kind.preference(),
                std::cmp::Reverse(d.rtt.unwrap_or(Duration::MAX)),
            )
        };
        let best = usable.iter().copied().max_by_key(|d| rank(d));
        if let Some(PathId::Direct(addr)) = self.active
            && let Some(current) = usable.iter().find(|d| d.addr == addr)
        {
            // Hysteresis: stay, unless a LAN path beats a public one.
            return match best {
                Some(b) if b.lan && !current.lan => Some(PathId::Direct(b.addr)),
                _ => Some(PathId::Direct(current.addr)),
            };
        }
        if let Some(best) = best {
            return Some(PathId::Direct(best.addr));
        }
        if let Some(relay) = &self.relay {
            return Some(PathId::Relay(relay.via));
        }
        self.active
            .or_else(|| self.optimistic.map(PathId::Direct))
            .or_else(|| {
                self.direct
                    .iter()
                    .find(|d| d.heard_from)
                    .map(|d| PathId::Direct(d.addr))
            })
    }
}

#[cfg(test)]
#[path = "manager_tests.rs"]
mod tests;
