//! The hole-punching state machine of one brokered exchange.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use chatr_proto::LINK_SECRET_LEN;
use uuid::Uuid;

use super::candidate::{Candidate, CandidateKind, PathKind, dedup};
use super::config::PunchConfig;
use super::event::{FailReason, PunchEvent, PunchFailure, PunchSuccess, Transmit};
use super::local_net::LocalNet;
use super::spray::Spray;
use super::wire::{ExchangeId, FLAG_LAN, Probe, ProbeKeys, ProbeType};
use crate::net::canonical;

/// At most this many peer-reflexive candidates are learned per attempt. Only the peer can
/// create them (they need the secret), so this only bounds a misbehaving peer.
const MAX_LEARNED: usize = 8;
/// Transaction ids of probes we still accept an answer for (oldest forgotten first).
/// Ten seconds of backed-off probing to a dozen candidates stays well below this.
const MAX_OUTSTANDING: usize = 256;
/// Datagrams queued for the driver; more are dropped (UDP is lossy anyway). The driver
/// drains the queue after every call, so this is only reached if it does not.
const MAX_TRANSMITS: usize = 64;
/// Nominate transaction ids remembered by the initiator.
const MAX_NOMINATIONS: usize = 32;

/// Which side of the brokered exchange this machine is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Sent the PacketConnectionRequest; chooses the path (Nominate) and is the QUIC client.
    Initiator,
    /// Accepted the request; follows the initiator's nomination and is the QUIC server.
    Responder,
}

/// Counters of one attempt, for logs and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PunchStats {
    /// Probes and Nominates sent.
    pub probes_sent: u32,
    /// ProbeAcks and NominateAcks sent.
    pub acks_sent: u32,
    /// Datagrams that authenticated as coming from the peer in this exchange.
    pub authentic_received: u32,
    /// Datagrams ignored: not a probe, another exchange, bad tag, wrong sender or
    /// direction, unknown transaction, or arriving after the attempt was over.
    pub ignored: u32,
    /// Datagrams dropped because the driver did not drain [`Punch::poll_transmit`].
    pub transmits_dropped: u32,
}

/// One candidate and how probing it goes.
#[derive(Debug)]
struct PathState {
    candidate: Candidate,
    /// Probes (and Nominates) sent to it.
    probes: u32,
    /// Interval before the next scheduled probe after the one at `next_probe_at`.
    interval: Duration,
    /// When to probe next; `None` once probing stopped (a path was chosen).
    next_probe_at: Option<Instant>,
    last_probe_at: Option<Instant>,
    /// Round-trip time of the first answered probe; `Some` = validated.
    validated: Option<Duration>,
}

/// A Probe we sent and still accept a ProbeAck for.
#[derive(Debug, Clone, Copy)]
struct Outstanding {
    txid: u64,
    path: usize,
    sent_at: Instant,
}

#[derive(Debug)]
enum Phase {
    /// Probing every candidate. The initiator sets `decide_at` when a public path
    /// validated and it waits [`PunchConfig::lan_grace`] for a LAN path.
    Probing { decide_at: Option<Instant> },
    /// Initiator: nominating `path` until the responder acknowledges.
    Nominating {
        path: usize,
        /// Our recent Nominate txids (any of them may be acknowledged).
        txids: VecDeque<u64>,
        /// Retransmission interval (constant: the path is known to work).
        interval: Duration,
        next_at: Instant,
    },
    /// Agreed on `remote`; answering late probes/Nominates until `until`.
    Succeeded { remote: SocketAddr, until: Instant },
    /// Failed, or lingered long enough after success. Ignores everything.
    Closed,
}

/// Sans-IO hole puncher for one brokered exchange (one `link_secret`, one peer).
///
/// It never reads the clock or touches a socket: every input carries `now`, every output
/// is pulled.
///
/// # Protocol
/// Both sides send authenticated Probes to every candidate endpoint of the peer (every
/// ~100 ms at first, backing off), and answer every authenticated Probe with a ProbeAck
/// sent back to the Probe's source. A path is *validated* when a ProbeAck for one of our
/// Probes to an address comes back from that same address: both directions work. An
/// authenticated datagram from an unknown address makes it a peer-reflexive candidate,
/// answered and probed at once. The initiator picks the best validated path (a LAN path
/// first, waiting [`PunchConfig::lan_grace`] for one after the first public path when a
/// private candidate is plausibly on our LAN, see [`Punch::with_local_networks`]) and
/// sends Nominate over it until the responder answers NominateAck; the responder
/// succeeds on the first Nominate, with the Nominate's source as its remote.
///
/// # Calling order (one driver per UDP socket)
/// 1. [`Punch::new`] when the PacketClientInfo of the exchange arrives; it already
///    queues the first round of probes.
/// 2. Drain: [`Punch::poll_transmit`] until `None` (send each), then
///    [`Punch::poll_event`] until `None`, then re-arm one timer at
///    [`Punch::poll_timeout`] (`None` = no timer needed).
/// 3. On a datagram whose [`super::exchange_id_of`] equals [`Punch::exchange_id`]:
///    [`Punch::handle_datagram`], then drain (2).
/// 4. When the timer fires: [`Punch::handle_timeout`], then drain (2).
/// 5. After [`PunchEvent::Succeeded`], hand the socket to QUIC towards
///    [`PunchSuccess::remote`], but keep routing probe datagrams to this machine until
///    [`Punch::is_closed`] (it answers a Nominate whose acknowledgement was lost).
///    The initiator may already start QUIC on [`PunchEvent::Nominating`] (the path is
///    validated); it must still keep feeding the machine, which retransmits the
///    Nominate until the responder acknowledges it.
///    After [`PunchEvent::Failed`] the machine is closed and may be dropped.
#[derive(Debug)]
pub struct Punch {
    config: PunchConfig,
    role: Role,
    local: Uuid,
    peer: Uuid,
    keys: ProbeKeys,
    started_at: Instant,
    deadline: Instant,
    paths: Vec<PathState>,
    /// IPs of announced private candidates, to classify peer-reflexive ones.
    private_ips: Vec<IpAddr>,
    /// IPs of announced public candidates.
    public_ips: Vec<IpAddr>,
    /// Our own networks: only a LAN candidate inside one of them is worth waiting
    /// [`PunchConfig::lan_grace`] for. Empty = unknown, every LAN candidate is.
    local_nets: Vec<LocalNet>,
    learned: usize,
    next_txid: u64,
    outstanding: VecDeque<Outstanding>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<PunchEvent>,
    phase: Phase,
    stats: PunchStats,
    /// Guessed ports being probed (prediction or birthday), if any.
    spray: Option<Spray>,
}

impl Punch {
    /// Starts an attempt at `now` and queues the first probe to every candidate.
    ///
    /// `local` and `peer` are the two UUIDs of the exchange, `link_secret` the secret
    /// from PacketClientInfo, `candidates` the peer's endpoints (see
    /// [`Candidate::from_endpoints`]); they are canonicalised and de-duplicated here.
    /// An empty list is allowed: the peer's probes may still arrive and be learned.
    pub fn new(
        now: Instant,
        config: PunchConfig,
        role: Role,
        local: Uuid,
        peer: Uuid,
        link_secret: [u8; LINK_SECRET_LEN],
        candidates: Vec<Candidate>,
    ) -> Self {
        let candidates = dedup(candidates);
        let first = config.first_interval();
        let ips_of = |wanted: &dyn Fn(CandidateKind) -> bool| -> Vec<IpAddr> {
            candidates
                .iter()
                .filter(|c| wanted(c.kind))
                .map(|c| c.addr.ip())
                .collect()
        };
        let private_ips = ips_of(&|k| k == CandidateKind::Private);
        let public_ips =
            ips_of(&|k| matches!(k, CandidateKind::PublicUdp | CandidateKind::PublicTcp));
        let paths = candidates
            .into_iter()
            .map(|candidate| PathState {
                candidate,
                probes: 0,
                interval: first,
                next_probe_at: Some(now),
                last_probe_at: None,
                validated: None,
            })
            .collect();
        let mut punch = Self {
            deadline: after(now, config.give_up_after),
            config,
            role,
            local,
            peer,
            keys: ProbeKeys::new(&link_secret),
            started_at: now,
            paths,
            private_ips,
            public_ips,
            local_nets: Vec::new(),
            learned: 0,
            next_txid: 1,
            outstanding: VecDeque::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            phase: Phase::Probing { decide_at: None },
            stats: PunchStats::default(),
            spray: None,
        };
        tracing::debug!(
            exchange = %punch.keys.exchange_id(),
            role = ?role,
            peer = %peer,
            candidates = punch.paths.len(),
            "hole punching started"
        );
        punch.send_due_probes(now);
        punch
    }

    /// Tells the machine our own interface address(es) and network(s), so the initiator
    /// waits [`PunchConfig::lan_grace`] for a LAN path only when a private candidate of the
    /// peer is plausibly on our LAN (inside one of `nets`, see [`LocalNet`]). Without
    /// this call every private candidate counts as plausible (the cautious default).
    /// Call it right after [`Punch::new`], before feeding any input.
    pub fn with_local_networks(mut self, nets: impl IntoIterator<Item = LocalNet>) -> Self {
        self.local_nets = nets.into_iter().collect();
        self
    }

    /// Also probes `targets` (guessed addresses of the peer: predicted or random ports),
    /// one Probe each, at most `rate` per second (`docs/PROTOCOL.md` §10.7). Call right
    /// after [`Punch::new`]; the first goes out at once.
    pub fn with_spray(mut self, now: Instant, targets: Vec<SocketAddr>, rate: u32) -> Self {
        tracing::debug!(targets = targets.len(), rate, "spraying guessed ports");
        self.spray = Some(Spray::new(now, targets, rate));
        self.send_spray(now);
        self
    }

    /// Probes the spray sent so far.
    pub fn spray_sent(&self) -> u32 {
        self.spray.as_ref().map_or(0, Spray::sent)
    }

    /// A Probe of this exchange for the driver to send from another socket (the hard
    /// side of the birthday technique: one from each of its many sockets). Answers to
    /// it are not tracked: what counts is the peer's Probe it lets in.
    pub fn extra_probe(&mut self) -> Vec<u8> {
        let txid = self.fresh_txid();
        self.stats.probes_sent = self.stats.probes_sent.saturating_add(1);
        self.keys.seal(&Probe {
            kind: ProbeType::Probe,
            sender: self.local,
            txid,
            flags: 0,
        })
    }

    // ---- getters ----

    /// The id that routes this exchange's datagrams to this machine.
    pub fn exchange_id(&self) -> ExchangeId {
        self.keys.exchange_id()
    }

    /// Our role in the exchange.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The peer's UUID.
    pub fn peer(&self) -> Uuid {
        self.peer
    }

    /// When the attempt started (the `now` given to [`Punch::new`]).
    pub fn started_at(&self) -> Instant {
        self.started_at
    }

    /// Every candidate known so far (announced ones first, then learned ones).
    pub fn candidates(&self) -> impl Iterator<Item = &Candidate> + '_ {
        self.paths.iter().map(|p| &p.candidate)
    }

    /// Counters of this attempt.
    pub fn stats(&self) -> PunchStats {
        self.stats
    }

    /// Whether the attempt is over (succeeded or failed). A succeeded machine may still
    /// answer late probes until [`Punch::is_closed`].
    pub fn is_finished(&self) -> bool {
        matches!(self.phase, Phase::Succeeded { .. } | Phase::Closed)
    }

    /// Whether the machine has nothing left to do and can be dropped.
    pub fn is_closed(&self) -> bool {
        matches!(self.phase, Phase::Closed)
    }

    // ---- inputs ----

    /// Feeds a datagram received from `from` on the punching socket.
    ///
    /// Anything that is not an authentic probe of this exchange from the peer, in the
    /// right direction, is ignored (counted in [`PunchStats::ignored`]).
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        // A datagram that arrives after the limit (or after the linger) must not revive
        // the attempt, even if the driver's timer is late.
        let ended = match self.phase {
            Phase::Probing { .. } | Phase::Nominating { .. } => now >= self.deadline,
            Phase::Succeeded { until, .. } => now >= until,
            Phase::Closed => false,
        };
        if ended {
            self.handle_timeout(now);
        }
        if self.is_closed() {
            self.stats.ignored = self.stats.ignored.saturating_add(1);
            return;
        }
        let from = canonical(from);
        let probe = match self.keys.open(datagram) {
            Ok(probe) => probe,
            Err(why) => {
                tracing::trace!(%from, ?why, "ignoring datagram");
                self.stats.ignored = self.stats.ignored.saturating_add(1);
                return;
            }
        };
        // Our own probes reflected back (or a peer claiming our id) carry our UUID.
        if probe.sender != self.peer || probe.sender == self.local {
            tracing::trace!(%from, sender = %probe.sender, "ignoring probe from wrong sender");
            self.stats.ignored = self.stats.ignored.saturating_add(1);
            return;
        }
        let accepted = match probe.kind {
            ProbeType::Probe => self.on_probe(now, from, probe.txid),
            ProbeType::ProbeAck => self.on_probe_ack(now, from, probe.txid),
            ProbeType::Nominate => self.on_nominate(now, from, probe.txid, probe.flags),
            ProbeType::NominateAck => self.on_nominate_ack(now, from, probe.txid),
        };
        if accepted {
            self.stats.authentic_received = self.stats.authentic_received.saturating_add(1);
        } else {
            self.stats.ignored = self.stats.ignored.saturating_add(1);
        }
    }

    /// Advances timers: sends due probes or Nominates, decides after the LAN grace,
    /// gives up at the limit, closes after lingering. Harmless to call early.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.phase {
            Phase::Closed => return,
            Phase::Succeeded { until, .. } => {
                if now >= until {
                    self.phase = Phase::Closed;
                }
                return;
            }
            Phase::Probing { .. } | Phase::Nominating { .. } => {}
        }
        if now >= self.deadline {
            self.fail(now);
            return;
        }
        match &self.phase {
            Phase::Probing {
                decide_at: Some(at),
            } if *at <= now => self.decide(now),
            Phase::Probing { .. } => {
                self.send_due_probes(now);
                self.send_spray(now);
            }
            Phase::Nominating { next_at, .. } if *next_at <= now => self.send_nominate(now),
            Phase::Nominating { .. } | Phase::Succeeded { .. } | Phase::Closed => {}
        }
    }

    // ---- outputs ----

    /// The next datagram to send, if any.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// When [`Punch::handle_timeout`] must be called next; `None` once closed.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Closed => None,
            Phase::Succeeded { until, .. } => Some(*until),
            Phase::Nominating { next_at, .. } => Some((*next_at).min(self.deadline)),
            Phase::Probing { decide_at } => {
                let next_probe = self.paths.iter().filter_map(|p| p.next_probe_at).min();
                let next_spray = self.spray.as_ref().and_then(Spray::next_at);
                [Some(self.deadline), *decide_at, next_probe, next_spray]
                    .into_iter()
                    .flatten()
                    .min()
            }
        }
    }

    /// The next progress event, if any.
    pub fn poll_event(&mut self) -> Option<PunchEvent> {
        self.events.pop_front()
    }

    // ---- internals ----

    fn on_probe(&mut self, now: Instant, from: SocketAddr, txid: u64) -> bool {
        self.send_ack(ProbeType::ProbeAck, from, txid);
        if matches!(self.phase, Phase::Probing { .. }) {
            let known = self.path_index(from);
            if let Some(idx) = known.or_else(|| self.learn(now, from)) {
                self.triggered_probe(idx, now);
            }
        }
        true
    }

    fn on_probe_ack(&mut self, now: Instant, from: SocketAddr, txid: u64) -> bool {
        let Some(sent) = self.outstanding.iter().find(|o| o.txid == txid).copied() else {
            return self.on_spray_ack(now, from, txid);
        };
        let Phase::Probing { decide_at } = self.phase else {
            // Already decided: a late ack changes nothing.
            return true;
        };
        let Some(path) = self.paths.get_mut(sent.path) else {
            return false;
        };
        if path.candidate.addr != from {
            // The peer's NAT answered from another port than we probed (it maps per
            // destination): learn that port and probe it; this ack proves nothing about
            // the path we probed.
            if let Some(idx) = self.path_index(from).or_else(|| self.learn(now, from)) {
                self.triggered_probe(idx, now);
            }
            return true;
        }
        if path.validated.is_some() {
            return true;
        }
        let rtt = now.saturating_duration_since(sent.sent_at);
        // Keep probing it (at the backed-off pace) until a path is nominated: the peer
        // may not have validated it yet, and our probes give it triggered checks.
        path.validated = Some(rtt);
        if let Some(spray) = self.spray.as_mut() {
            spray.stop();
        }
        let candidate = path.candidate;
        let kind = self.path_kind(sent.path);
        tracing::debug!(remote = %candidate.addr, kind = %candidate.kind, path = %kind, ?rtt, "path validated");
        self.events.push_back(PunchEvent::PathValidated {
            remote: candidate.addr,
            kind: candidate.kind,
            path: kind,
            rtt,
        });
        if self.role == Role::Initiator {
            if kind == PathKind::Lan {
                self.decide(now);
            } else if decide_at.is_none() {
                if self.lan_pending() {
                    let at = after(now, self.config.lan_grace);
                    self.phase = Phase::Probing {
                        decide_at: Some(at),
                    };
                } else {
                    self.decide(now);
                }
            }
        }
        true
    }

    /// An acknowledgement of a spray probe: the guess was right. It becomes a
    /// peer-reflexive candidate, validated by this very acknowledgement.
    fn on_spray_ack(&mut self, now: Instant, from: SocketAddr, txid: u64) -> bool {
        let Some((target, sent_at)) = self.spray.as_ref().and_then(|s| s.sent_to(txid)) else {
            return false;
        };
        if target != from || !matches!(self.phase, Phase::Probing { .. }) {
            return true;
        }
        tracing::debug!(remote = %from, "a guessed port answered");
        if let Some(spray) = self.spray.as_mut() {
            spray.stop();
        }
        let idx = match self.path_index(from) {
            Some(idx) => idx,
            None => {
                let candidate = Candidate::new(from, CandidateKind::PeerReflexive);
                self.paths.push(PathState {
                    candidate,
                    probes: 1,
                    interval: self.config.first_interval(),
                    next_probe_at: Some(after(now, self.config.first_interval())),
                    last_probe_at: Some(sent_at),
                    validated: None,
                });
                self.events
                    .push_back(PunchEvent::CandidateLearned(candidate));
                self.paths.len() - 1
            }
        };
        if self.outstanding.len() >= MAX_OUTSTANDING {
            self.outstanding.pop_front();
        }
        self.outstanding.push_back(Outstanding {
            txid,
            path: idx,
            sent_at,
        });
        self.on_probe_ack(now, from, txid)
    }

    /// Sends the spray probes that are due.
    fn send_spray(&mut self, now: Instant) {
        if !matches!(self.phase, Phase::Probing { .. }) {
            return;
        }
        // A late timer must not overflow the transmit queue: the rest follow next time.
        let due = self
            .spray
            .as_ref()
            .map_or(0, |s| s.due(now))
            .min(MAX_TRANSMITS / 2);
        for _ in 0..due {
            let txid = self.fresh_txid();
            let Some(target) = self.spray.as_mut().and_then(|s| s.next(now, txid)) else {
                break;
            };
            self.stats.probes_sent = self.stats.probes_sent.saturating_add(1);
            self.queue(ProbeType::Probe, target, txid, 0);
        }
    }

    fn on_nominate(&mut self, now: Instant, from: SocketAddr, txid: u64, flags: u8) -> bool {
        if self.role != Role::Responder {
            return false; // wrong direction
        }
        match self.phase {
            Phase::Probing { .. } => {
                let idx = self.path_index(from).or_else(|| self.learn(now, from));
                let (kind, rtt) = idx
                    .and_then(|i| self.paths.get(i))
                    .map_or((CandidateKind::PeerReflexive, None), |p| {
                        (p.candidate.kind, p.validated)
                    });
                let path = if flags & FLAG_LAN != 0 {
                    PathKind::Lan
                } else {
                    PathKind::Public
                };
                self.send_ack(ProbeType::NominateAck, from, txid);
                self.succeed(now, from, kind, path, rtt);
                true
            }
            Phase::Succeeded { remote, .. } if remote == from => {
                // Our NominateAck was lost; the initiator repeats.
                self.send_ack(ProbeType::NominateAck, from, txid);
                true
            }
            Phase::Succeeded { .. } | Phase::Nominating { .. } | Phase::Closed => false,
        }
    }

    fn on_nominate_ack(&mut self, now: Instant, from: SocketAddr, txid: u64) -> bool {
        let Phase::Nominating {
            path, ref txids, ..
        } = self.phase
        else {
            return false;
        };
        if !txids.contains(&txid) {
            return false;
        }
        let Some(state) = self.paths.get(path) else {
            return false;
        };
        if state.candidate.addr != from {
            return false;
        }
        let (candidate, rtt) = (state.candidate, state.validated);
        let kind = self.path_kind(path);
        self.succeed(now, candidate.addr, candidate.kind, kind, rtt);
        true
    }

    /// Initiator: nominates the best validated path.
    fn decide(&mut self, now: Instant) {
        let best = self
            .paths
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.validated.map(|rtt| (i, p, rtt)))
            .max_by_key(|(i, p, rtt)| {
                (
                    self.path_kind(*i) == PathKind::Lan,
                    p.candidate.kind.preference(),
                    std::cmp::Reverse(*rtt),
                )
            })
            .map(|(i, _, _)| i);
        let Some(idx) = best else {
            self.phase = Phase::Probing { decide_at: None };
            return;
        };
        for path in &mut self.paths {
            path.next_probe_at = None;
        }
        let Some(candidate) = self.paths.get(idx).map(|p| p.candidate) else {
            return;
        };
        let kind = self.path_kind(idx);
        tracing::debug!(remote = %candidate.addr, kind = %candidate.kind, path = %kind, "nominating");
        self.events.push_back(PunchEvent::Nominating {
            remote: candidate.addr,
            kind: candidate.kind,
            path: kind,
        });
        self.phase = Phase::Nominating {
            path: idx,
            txids: VecDeque::new(),
            interval: self.config.first_interval(),
            next_at: now,
        };
        self.send_nominate(now);
    }

    fn send_nominate(&mut self, now: Instant) {
        let Phase::Nominating { path: idx, .. } = self.phase else {
            return;
        };
        let flags = if self.path_kind(idx) == PathKind::Lan {
            FLAG_LAN
        } else {
            0
        };
        let txid = self.fresh_txid();
        let Phase::Nominating {
            txids,
            interval,
            next_at,
            ..
        } = &mut self.phase
        else {
            return;
        };
        if txids.len() >= MAX_NOMINATIONS {
            txids.pop_front();
        }
        txids.push_back(txid);
        // The path is known to work, so a missing NominateAck means loss, not a closed
        // NAT: retransmit at the initial pace rather than backing off.
        *next_at = after(now, *interval);
        let Some(state) = self.paths.get_mut(idx) else {
            return;
        };
        state.probes = state.probes.saturating_add(1);
        state.last_probe_at = Some(now);
        let destination = state.candidate.addr;
        self.stats.probes_sent = self.stats.probes_sent.saturating_add(1);
        self.queue(ProbeType::Nominate, destination, txid, flags);
    }

    fn send_due_probes(&mut self, now: Instant) {
        for idx in 0..self.paths.len() {
            let due = self
                .paths
                .get(idx)
                .and_then(|p| p.next_probe_at)
                .is_some_and(|at| at <= now);
            if due {
                self.send_probe(idx, now, true);
            }
        }
    }

    /// Probes `idx` now because the peer just showed up on it (its NAT is open for us
    /// now), unless it is validated. If it was probed very recently, the probe is only
    /// brought forward to `min_gap` after the last one, so two peers cannot ping-pong
    /// triggered probes.
    fn triggered_probe(&mut self, idx: usize, now: Instant) {
        let min_gap = self.config.first_interval() / 2;
        let Some(path) = self.paths.get_mut(idx) else {
            return;
        };
        if path.validated.is_some() {
            return;
        }
        match path.last_probe_at {
            Some(last) if now.saturating_duration_since(last) < min_gap => {
                let soon = after(last, min_gap);
                path.next_probe_at = Some(path.next_probe_at.map_or(soon, |at| at.min(soon)));
            }
            _ => self.send_probe(idx, now, false),
        }
    }

    /// Sends a Probe to `idx`. A scheduled probe backs the interval off; a triggered one
    /// only pushes the next scheduled probe one interval away.
    fn send_probe(&mut self, idx: usize, now: Instant, scheduled: bool) {
        let txid = self.fresh_txid();
        let next_interval = self
            .paths
            .get(idx)
            .map(|p| self.config.next_interval(p.interval));
        let Some(path) = self.paths.get_mut(idx) else {
            return;
        };
        path.probes = path.probes.saturating_add(1);
        path.last_probe_at = Some(now);
        path.next_probe_at = Some(after(now, path.interval));
        if scheduled && let Some(next) = next_interval {
            path.interval = next;
        }
        let destination = path.candidate.addr;
        if self.outstanding.len() >= MAX_OUTSTANDING {
            self.outstanding.pop_front();
        }
        self.outstanding.push_back(Outstanding {
            txid,
            path: idx,
            sent_at: now,
        });
        self.stats.probes_sent = self.stats.probes_sent.saturating_add(1);
        self.queue(ProbeType::Probe, destination, txid, 0);
    }

    fn send_ack(&mut self, kind: ProbeType, to: SocketAddr, txid: u64) {
        self.stats.acks_sent = self.stats.acks_sent.saturating_add(1);
        self.queue(kind, to, txid, 0);
    }

    fn queue(&mut self, kind: ProbeType, destination: SocketAddr, txid: u64, flags: u8) {
        if self.transmits.len() >= MAX_TRANSMITS {
            self.stats.transmits_dropped = self.stats.transmits_dropped.saturating_add(1);
            return;
        }
        let contents = self.keys.seal(&Probe {
            kind,
            sender: self.local,
            txid,
            flags,
        });
        self.transmits.push_back(Transmit {
            destination,
            contents,
        });
    }

    fn fresh_txid(&mut self) -> u64 {
        let txid = self.next_txid;
        self.next_txid = self.next_txid.wrapping_add(1);
        txid
    }

    fn path_index(&self, addr: SocketAddr) -> Option<usize> {
        self.paths.iter().position(|p| p.candidate.addr == addr)
    }

    /// Adds `addr` as a peer-reflexive candidate (bounded).
    fn learn(&mut self, now: Instant, addr: SocketAddr) -> Option<usize> {
        let candidate = Candidate::new(addr, CandidateKind::PeerReflexive);
        if self.learned >= MAX_LEARNED || !candidate.is_probeable() {
            return None;
        }
        self.learned += 1;
        tracing::debug!(remote = %addr, "learned peer-reflexive candidate");
        self.paths.push(PathState {
            candidate,
            probes: 0,
            interval: self.config.first_interval(),
            next_probe_at: Some(now),
            last_probe_at: None,
            validated: None,
        });
        self.events
            .push_back(PunchEvent::CandidateLearned(candidate));
        Some(self.paths.len() - 1)
    }

    /// LAN when the peer's announced private endpoint answered, or a peer-reflexive
    /// address on the IP of its private endpoint (and not on its public IP).
    fn path_kind(&self, idx: usize) -> PathKind {
        let lan = self
            .paths
            .get(idx)
            .is_some_and(|p| p.candidate.kind == CandidateKind::Private)
            || self.reflexive_on_lan(idx);
        if lan { PathKind::Lan } else { PathKind::Public }
    }

    fn reflexive_on_lan(&self, idx: usize) -> bool {
        self.paths.get(idx).is_some_and(|p| {
            let ip = p.candidate.addr.ip();
            p.candidate.kind == CandidateKind::PeerReflexive
                && self.private_ips.contains(&ip)
                && !self.public_ips.contains(&ip)
        })
    }

    /// Whether a LAN path worth waiting for could still validate: an unvalidated LAN
    /// candidate that is plausibly on our own LAN. A private address of another network
    /// (the peer's home LAN behind its own router) cannot answer from here, so waiting
    /// for it would only delay the link by the whole grace.
    fn lan_pending(&self) -> bool {
        (0..self.paths.len()).any(|i| {
            self.path_kind(i) == PathKind::Lan
                && self.paths.get(i).is_some_and(|p| {
                    p.validated.is_none() && self.maybe_on_our_lan(p.candidate.addr.ip())
                })
        })
    }

    /// Whether `ip` can be on our LAN (always, when our networks are unknown).
    fn maybe_on_our_lan(&self, ip: IpAddr) -> bool {
        self.local_nets.is_empty() || self.local_nets.iter().any(|net| net.contains(ip))
    }

    fn succeed(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        kind: CandidateKind,
        path: PathKind,
        rtt: Option<Duration>,
    ) {
        for state in &mut self.paths {
            state.next_probe_at = None;
        }
        let success = PunchSuccess {
            remote,
            kind,
            path,
            elapsed: now.saturating_duration_since(self.started_at),
            probes_sent: self.stats.probes_sent,
            rtt,
        };
        tracing::info!(
            exchange = %self.keys.exchange_id(),
            peer = %self.peer,
            %remote,
            %kind,
            %path,
            elapsed_ms = success.elapsed.as_millis() as u64,
            probes = success.probes_sent,
            "hole punched"
        );
        self.phase = Phase::Succeeded {
            remote,
            until: after(now, self.config.linger),
        };
        self.events.push_back(PunchEvent::Succeeded(success));
    }

    fn fail(&mut self, now: Instant) {
        let validated: Vec<SocketAddr> = self
            .paths
            .iter()
            .filter(|p| p.validated.is_some())
            .map(|p| p.candidate.addr)
            .collect();
        let reason = match &self.phase {
            Phase::Nominating { path, .. } => match self.paths.get(*path) {
                Some(p) => FailReason::NominationUnacknowledged {
                    remote: p.candidate.addr,
                },
                None => FailReason::NoPathValidated,
            },
            _ if validated.is_empty() => FailReason::NoPathValidated,
            _ => FailReason::NotNominated { validated },
        };
        let failure = PunchFailure {
            reason,
            tried: self.paths.iter().map(|p| (p.candidate, p.probes)).collect(),
            probes_sent: self.stats.probes_sent,
            elapsed: now.saturating_duration_since(self.started_at),
        };
        tracing::info!(
            exchange = %self.keys.exchange_id(),
            peer = %self.peer,
            error = %failure,
            "hole punching gave up"
        );
        self.phase = Phase::Closed;
        self.events.push_back(PunchEvent::Failed(failure));
    }
}

/// `now + d`, saturating instead of panicking on absurd configured durations.
fn after(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 86_400)))
        .unwrap_or(now)
}
