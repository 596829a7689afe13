//! One link attempt from the first brokering packet to a confirmed link, and the link's
//! paths after that: the waits for the server's answers, the hole punch, the relay, and
//! when QUIC starts.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use chatr_proto::{Endpoint, LINK_SECRET_LEN, LinkHints, NatHint};
use uuid::Uuid;

use super::config::PathConfig;
use super::id::{PathClass, PathId, RelayVia, SendPlan};
use super::manager::{PathEvent, PathManager};
use super::reason::RelayReason;
use crate::nat::{
    BIRTHDAY_PROBES, PREDICT_WINDOW, SPRAY_RATE, Strategy, birthday_ports, predicted_ports,
};
use crate::punch::{
    Candidate, CandidateKind, LocalNet, ProbeKeys, Punch, PunchConfig, PunchEvent, PunchFailure,
    PunchSuccess, Role,
};

/// Time limits of a link attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentConfig {
    /// Hole punching.
    pub punch: PunchConfig,
    /// Path probing and selection.
    pub paths: PathConfig,
    /// Initiator: how long to wait for the peer's answer (default 30 s, the server's own
    /// request expiry).
    pub request_timeout: Duration,
    /// How long `PacketClientInfo` may take after the accept (default 10 s).
    pub client_info_timeout: Duration,
    /// Initiator: when ClientInfo overtakes the accept, how long to wait for the accept,
    /// which carries the peer's LAN candidate (default 300 ms).
    pub accept_grace: Duration,
    /// How long the QUIC handshake (and the responder's confirmation) may take once the
    /// exchange's ClientInfo arrived (default 15 s). Without a relay, a punch that finds
    /// no path fails the attempt earlier.
    pub link_timeout: Duration,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            punch: PunchConfig::default(),
            paths: PathConfig::default(),
            request_timeout: Duration::from_secs(30),
            client_info_timeout: Duration::from_secs(10),
            accept_grace: Duration::from_millis(300),
            link_timeout: Duration::from_secs(15),
        }
    }
}

/// What `PacketClientInfo` told us, as the agent needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    /// The peer's public endpoint (UDP-observed, else TCP-observed).
    pub public_endpoint: Endpoint,
    /// The peer's TCP-observed endpoint.
    pub tcp_endpoint: Option<Endpoint>,
    /// The exchange's secret (authenticates probes).
    pub link_secret: [u8; LINK_SECRET_LEN],
    /// How we reach the exchange's relay, when the server relays it.
    pub relay: Option<RelayVia>,
}

/// What we know about ourselves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalInfo {
    /// Our UUID.
    pub uuid: Uuid,
    /// The interface address our Connect session uses (our LAN).
    pub private_ip: IpAddr,
    /// Our public endpoint as the server sees it, if known.
    pub public: Option<Endpoint>,
    /// Our measured round trip to the server, a first estimate for QUIC.
    pub server_rtt: Option<Duration>,
}

/// Something the driver must do.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum AgentAction {
    /// Initiator: send `PacketConnectionRequest` (with our private endpoint).
    SendRequest,
    /// Responder: send `PacketConnectionRequestAccept` (with our private endpoint).
    SendAccept,
    /// Initiator: open the QUIC connection to the link's virtual address now.
    StartQuic {
        /// A first RTT estimate for QUIC, when one is known.
        initial_rtt: Option<Duration>,
    },
    /// The link is up (QUIC confirmed).
    Linked(Box<LinkOutcome>),
    /// The attempt failed.
    Failed(AgentFailure),
}

/// How a link came up.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkOutcome {
    /// The path carrying it.
    pub path: PathId,
    /// What a user is told about that path.
    pub class: PathClass,
    /// From `PacketClientInfo` to the confirmed link.
    pub elapsed: Duration,
    /// The punch's agreed path, when it had agreed by then.
    pub punch: Option<PunchSuccess>,
    /// Probes the punch sent so far.
    pub probes_sent: u32,
    /// The peer's announced candidates.
    pub candidates: Vec<Candidate>,
    /// When relayed: why, as far as known now.
    pub relay_reason: Option<RelayReason>,
}

/// Why a link attempt failed.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum AgentFailure {
    /// The peer said no, or is offline.
    Denied,
    /// Initiator: no answer within the request timeout.
    RequestTimeout,
    /// No `PacketClientInfo` in time after the accept.
    ClientInfoTimeout,
    /// The Connect session ended before the exchange finished.
    SessionLost(String),
    /// No relay, and the punch found no path.
    PunchFailed(Box<PunchFailure>),
    /// The QUIC handshake did not complete in time (relayed exchange).
    LinkTimeout,
    /// The QUIC handshake failed; the driver knows the error.
    QuicFailed,
}

#[derive(Debug)]
enum Phase {
    /// Initiator: request sent, waiting for the accept (or denial).
    AwaitingAnswer { deadline: Instant },
    /// Waiting for ClientInfo (initiator after the accept; responder after accepting).
    AwaitingClientInfo { deadline: Instant },
    /// Initiator: ClientInfo came first; giving a reordered accept a moment.
    AwaitingAccept { exchange: Exchange, until: Instant },
    /// Paths exist; QUIC is being set up.
    Linking { deadline: Option<Instant> },
    /// QUIC is confirmed; the paths are kept up.
    Linked,
    /// Failed or closed.
    Over,
}

/// Sans-IO link attempt (and, once linked, the link's path keeper).
///
/// # Calling order
/// 1. [`LinkAgent::initiate`] or [`LinkAgent::respond`]; execute its actions.
/// 2. Feed [`LinkAgent::handle_accepted`] / [`LinkAgent::handle_client_info`] /
///    [`LinkAgent::handle_denied`] / [`LinkAgent::handle_session_lost`] as the session
///    reports them, [`LinkAgent::handle_datagram`] for every control datagram of the
///    exchange (probes, by exchange id, with the path they came over),
///    [`LinkAgent::handle_quic_established`] / [`LinkAgent::handle_quic_failed`] for the
///    QUIC connection, and [`LinkAgent::handle_timeout`] at [`LinkAgent::poll_timeout`].
/// 3. After every input: drain [`LinkAgent::poll_action`], [`LinkAgent::poll_transmit`]
///    (send each on its path) and publish [`LinkAgent::plan`] to the socket.
#[derive(Debug)]
pub struct LinkAgent {
    config: AgentConfig,
    role: Role,
    local: LocalInfo,
    peer: Uuid,
    peer_private: Option<Endpoint>,
    phase: Phase,
    client_info_at: Option<Instant>,
    candidates: Vec<Candidate>,
    punch: Option<Punch>,
    punch_result: Option<Result<PunchSuccess, PunchFailure>>,
    paths: Option<PathManager>,
    pinned: Option<PathId>,
    /// Our NAT, as we measured it (sent to the peer in our hints).
    local_nat: NatHint,
    /// What the peer told us about its NAT and extra candidates.
    peer_hints: Option<LinkHints>,
    /// What this side does beyond the plain punch (chosen when ClientInfo arrives).
    strategy: Strategy,
    /// The punch's probe count when last seen (it outlives the punch machine).
    probes_seen: u32,
    /// The peer's public endpoint, once ClientInfo told it.
    peer_public: Option<SocketAddr>,
    /// The exchange's probe keys, once ClientInfo gave the secret (birthday sockets
    /// are checked against them even after the punch machine is gone).
    keys: Option<ProbeKeys>,
    actions: VecDeque<AgentAction>,
    events: VecDeque<PathEvent>,
    transmits: VecDeque<(PathId, Vec<u8>)>,
}

impl LinkAgent {
    /// An initiator's attempt at `now`: asks for the link first.
    pub fn initiate(now: Instant, config: AgentConfig, local: LocalInfo, peer: Uuid) -> Self {
        let deadline = now + config.request_timeout;
        let mut agent = Self::new(config, Role::Initiator, local, peer, None);
        agent.phase = Phase::AwaitingAnswer { deadline };
        agent.actions.push_back(AgentAction::SendRequest);
        agent
    }

    /// A responder's attempt at `now`, for a request that carried `peer_private`.
    pub fn respond(
        now: Instant,
        config: AgentConfig,
        local: LocalInfo,
        peer: Uuid,
        peer_private: Endpoint,
    ) -> Self {
        let deadline = now + config.client_info_timeout;
        let mut agent = Self::new(config, Role::Responder, local, peer, Some(peer_private));
        agent.phase = Phase::AwaitingClientInfo { deadline };
        agent.actions.push_back(AgentAction::SendAccept);
        agent
    }

    fn new(
        config: AgentConfig,
        role: Role,
        local: LocalInfo,
        peer: Uuid,
        peer_private: Option<Endpoint>,
    ) -> Self {
        Self {
            config,
            role,
            local,
            peer,
            peer_private,
            phase: Phase::Over,
            client_info_at: None,
            candidates: Vec::new(),
            punch: None,
            punch_result: None,
            paths: None,
            pinned: None,
            local_nat: NatHint::default(),
            peer_hints: None,
            strategy: Strategy::Plain,
            probes_seen: 0,
            peer_public: None,
            keys: None,
            actions: VecDeque::new(),
            events: VecDeque::new(),
            transmits: VecDeque::new(),
        }
    }

    // ----- getters -----

    /// Our role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The peer.
    pub fn peer(&self) -> Uuid {
        self.peer
    }

    /// Where the link's datagrams go now (empty before ClientInfo).
    pub fn plan(&self) -> SendPlan {
        self.paths
            .as_ref()
            .map(|p| p.plan().clone())
            .unwrap_or_default()
    }

    /// The path manager, once the exchange's ClientInfo arrived.
    pub fn paths(&self) -> Option<&PathManager> {
        self.paths.as_ref()
    }

    /// Whether the link is up.
    pub fn is_linked(&self) -> bool {
        matches!(self.phase, Phase::Linked)
    }

    /// Whether the attempt (or the link) is over.
    pub fn is_over(&self) -> bool {
        matches!(self.phase, Phase::Over)
    }

    /// What this side does beyond the plain punch (`Plain` before ClientInfo).
    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    /// The hard side of the birthday technique: where its many sockets send (the peer's
    /// public endpoint), when this side is that.
    pub fn birthday_target(&self) -> Option<SocketAddr> {
        (self.strategy == Strategy::BirthdaySockets)
            .then_some(self.peer_public)
            .flatten()
    }

    /// A Probe of the running punch for another socket to send (see
    /// [`Punch::extra_probe`]); `None` when the punch is over.
    pub fn extra_probe(&mut self) -> Option<Vec<u8>> {
        self.punch
            .as_mut()
            .filter(|p| !p.is_finished())
            .map(Punch::extra_probe)
    }

    /// Whether `datagram` is an authentic probe datagram (Probe or acknowledgement) from
    /// the peer in this exchange.
    pub fn is_peer_probe(&self, datagram: &[u8]) -> bool {
        self.keys
            .as_ref()
            .is_some_and(|k| k.open(datagram).is_ok_and(|p| p.sender == self.peer))
    }

    /// Whether the punch agreed on a direct path (it may have been lost since).
    pub fn punch_succeeded(&self) -> bool {
        matches!(self.punch_result, Some(Ok(_)))
    }

    /// Probes the punch's spray (prediction or birthday) sent so far.
    pub fn spray_sent(&self) -> u32 {
        self.punch.as_ref().map_or(0, Punch::spray_sent)
    }

    /// Punch probes sent for this link so far, including after the punch machine ended.
    pub fn probes_sent(&self) -> u32 {
        let live = self.punch.as_ref().map_or(0, |p| p.stats().probes_sent);
        live.max(self.probes_seen)
    }

    /// Why the link is relayed right now, if it is.
    pub fn relay_reason(&self) -> Option<RelayReason> {
        let paths = self.paths.as_ref()?;
        if !paths.active_class()?.is_relayed() {
            return None;
        }
        if self.pinned.is_some() {
            return Some(RelayReason::Pinned);
        }
        if paths.active() == Some(PathId::Relay(RelayVia::Tls)) {
            return Some(RelayReason::UdpBlocked);
        }
        if self.strategy == Strategy::BothRandom {
            return Some(RelayReason::BothSymmetric);
        }
        Some(match &self.punch_result {
            Some(Err(failure)) => RelayReason::PunchFailed {
                reason: failure.reason.clone(),
            },
            Some(Ok(_)) => RelayReason::DirectLost,
            None => RelayReason::NoDirectYet,
        })
    }

    // ----- inputs: brokering -----

    /// Our NAT as we measured it (call before the exchange's ClientInfo): it decides,
    /// with the peer's, how hard the punch tries (`docs/PROTOCOL.md` §10.7).
    pub fn set_local_nat(&mut self, nat: NatHint) {
        self.local_nat = nat;
    }

    /// The peer's hints from its request or accept (version 3): its NAT and extra
    /// candidates.
    pub fn set_peer_hints(&mut self, hints: LinkHints) {
        self.peer_hints = Some(hints);
    }

    /// Initiator: the peer accepted, announcing `private_endpoint`.
    pub fn handle_accepted(&mut self, now: Instant, private_endpoint: Endpoint) {
        self.peer_private = Some(private_endpoint);
        match std::mem::replace(&mut self.phase, Phase::Over) {
            Phase::AwaitingAnswer { deadline } => {
                let deadline = deadline.min(now + self.config.client_info_timeout);
                self.phase = Phase::AwaitingClientInfo { deadline };
            }
            Phase::AwaitingAccept { exchange, .. } => self.start_linking(now, exchange),
            other => self.phase = other,
        }
    }

    /// The server's `PacketClientInfo` for this exchange.
    pub fn handle_client_info(&mut self, now: Instant, exchange: Exchange) {
        match std::mem::replace(&mut self.phase, Phase::Over) {
            Phase::AwaitingClientInfo { .. } => self.start_linking(now, exchange),
            // The accept carries the LAN candidate: give a reordered one a moment.
            Phase::AwaitingAnswer { .. } if self.role == Role::Initiator => {
                self.client_info_at = Some(now);
                self.phase = Phase::AwaitingAccept {
                    exchange,
                    until: now + self.config.accept_grace,
                };
            }
            other => self.phase = other,
        }
    }

    /// The peer denied (initiator), or gave up (responder), or is offline.
    pub fn handle_denied(&mut self, _now: Instant) {
        if self.is_brokering() {
            self.fail(AgentFailure::Denied);
        }
    }

    /// The Connect session ended. Only an attempt still waiting for the server fails;
    /// a link in progress or up goes on without it.
    pub fn handle_session_lost(&mut self, _now: Instant, why: &str) {
        if self.is_brokering() {
            self.fail(AgentFailure::SessionLost(why.to_owned()));
        }
    }

    // ----- inputs: the network -----

    /// A control datagram of this exchange (a probe) arrived over `path`.
    pub fn handle_datagram(&mut self, now: Instant, path: PathId, datagram: &[u8]) {
        if let (PathId::Direct(from), Some(punch)) = (path, self.punch.as_mut()) {
            // After the attempt only a repeated Nominate still needs the punch.
            let nomination = datagram.get(4).is_some_and(|t| *t == 0x12);
            if !punch.is_finished() || nomination {
                punch.handle_datagram(now, from, datagram);
            }
        }
        if let Some(paths) = self.paths.as_mut() {
            paths.handle_datagram(now, path, datagram);
        }
        self.after_input(now);
    }

    /// The QUIC connection is up and confirmed.
    pub fn handle_quic_established(&mut self, now: Instant) {
        if !matches!(self.phase, Phase::Linking { .. }) {
            return;
        }
        self.phase = Phase::Linked;
        let outcome = self.outcome(now);
        self.actions
            .push_back(AgentAction::Linked(Box::new(outcome)));
        self.after_input(now);
    }

    /// The QUIC handshake failed.
    pub fn handle_quic_failed(&mut self, _now: Instant) {
        if matches!(self.phase, Phase::Linking { .. }) {
            self.fail(AgentFailure::QuicFailed);
        }
    }

    /// The server closed the exchange's relay: the link can no longer use it.
    pub fn handle_relay_closed(&mut self, now: Instant) {
        if let Some(paths) = self.paths.as_mut() {
            paths.relay_closed(now);
        }
        self.after_input(now);
    }

    /// The link closed: nothing more to keep up.
    pub fn handle_link_closed(&mut self, _now: Instant) {
        self.phase = Phase::Over;
        self.punch = None;
    }

    /// Forces the link onto `path` (or back to automatic choice).
    pub fn pin(&mut self, now: Instant, path: Option<PathId>) {
        self.pinned = path;
        if let Some(paths) = self.paths.as_mut() {
            paths.pin(now, path);
        }
        self.after_input(now);
    }

    /// Time passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        match &self.phase {
            Phase::AwaitingAnswer { deadline } if now >= *deadline => {
                self.fail(AgentFailure::RequestTimeout);
                return;
            }
            Phase::AwaitingClientInfo { deadline } if now >= *deadline => {
                self.fail(AgentFailure::ClientInfoTimeout);
                return;
            }
            Phase::AwaitingAccept { until, .. } if now >= *until => {
                if let Phase::AwaitingAccept { exchange, .. } =
                    std::mem::replace(&mut self.phase, Phase::Over)
                {
                    self.start_linking(now, exchange);
                }
                return;
            }
            Phase::Linking {
                deadline: Some(deadline),
            } if now >= *deadline => {
                self.fail(AgentFailure::LinkTimeout);
                return;
            }
            _ => {}
        }
        if let Some(punch) = self.punch.as_mut() {
            punch.handle_timeout(now);
        }
        if let Some(paths) = self.paths.as_mut() {
            paths.handle_timeout(now);
        }
        self.after_input(now);
    }

    // ----- outputs -----

    /// The next thing the driver must do.
    pub fn poll_action(&mut self) -> Option<AgentAction> {
        self.actions.pop_front()
    }

    /// The next probe and the path it goes on.
    pub fn poll_transmit(&mut self) -> Option<(PathId, Vec<u8>)> {
        self.transmits.pop_front()
    }

    /// The next path event (switches).
    pub fn poll_event(&mut self) -> Option<PathEvent> {
        self.events.pop_front()
    }

    /// When [`LinkAgent::handle_timeout`] is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let phase = match &self.phase {
            Phase::AwaitingAnswer { deadline } | Phase::AwaitingClientInfo { deadline } => {
                Some(*deadline)
            }
            Phase::AwaitingAccept { until, .. } => Some(*until),
            Phase::Linking { deadline } => *deadline,
            Phase::Linked | Phase::Over => None,
        };
        if matches!(self.phase, Phase::Over) {
            return None;
        }
        [
            phase,
            self.punch.as_ref().and_then(Punch::poll_timeout),
            self.paths.as_ref().and_then(PathManager::poll_timeout),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    // ----- internals -----

    fn is_brokering(&self) -> bool {
        matches!(
            self.phase,
            Phase::AwaitingAnswer { .. }
                | Phase::AwaitingClientInfo { .. }
                | Phase::AwaitingAccept { .. }
        )
    }

    fn fail(&mut self, failure: AgentFailure) {
        self.phase = Phase::Over;
        self.punch = None;
        self.actions.push_back(AgentAction::Failed(failure));
    }

    fn start_linking(&mut self, now: Instant, exchange: Exchange) {
        let at = *self.client_info_at.get_or_insert(now);
        let mut candidates = Candidate::from_endpoints(
            self.peer_private,
            Some(exchange.public_endpoint),
            exchange.tcp_endpoint,
        );
        if let Some(hints) = &self.peer_hints {
            candidates.extend(Candidate::from_hints(hints));
        }
        self.candidates = crate::punch::dedup(candidates);
        let punch = Punch::new(
            now,
            self.config.punch.clone(),
            self.role,
            self.local.uuid,
            self.peer,
            exchange.link_secret,
            self.candidates.clone(),
        )
        .with_local_networks([LocalNet::guess(self.local.private_ip)]);
        self.keys = Some(ProbeKeys::new(&exchange.link_secret));
        let peer_public = exchange.public_endpoint.socket_addr();
        self.peer_public = peer_public;
        let peer_nat = self.peer_hints.as_ref().map(|h| h.nat);
        self.strategy = Strategy::choose(&self.local_nat, peer_nat.as_ref());
        let targets: Vec<SocketAddr> = match (self.strategy, peer_public, peer_nat) {
            (Strategy::Predict, Some(public), Some(nat)) => predicted_ports(&nat, PREDICT_WINDOW)
                .into_iter()
                .map(|port| SocketAddr::new(public.ip(), port))
                .collect(),
            (Strategy::BirthdaySpray, Some(public), _) => {
                birthday_ports(&exchange.link_secret, BIRTHDAY_PROBES)
                    .into_iter()
                    .map(|port| SocketAddr::new(public.ip(), port))
                    .collect()
            }
            _ => Vec::new(),
        };
        tracing::debug!(strategy = ?self.strategy, guesses = targets.len(), "punch strategy");
        let punch = if targets.is_empty() {
            punch
        } else {
            punch.with_spray(now, targets, SPRAY_RATE)
        };
        let optimistic = optimistic_target(self.local.public, &self.candidates);
        let mut paths = PathManager::new(
            now,
            self.config.paths.clone(),
            self.local.uuid,
            self.peer,
            &exchange.link_secret,
            &self.candidates,
            exchange.relay,
            optimistic,
            true,
        );
        if self.pinned.is_some() {
            paths.pin(now, self.pinned);
        }
        self.punch = Some(punch);
        self.paths = Some(paths);
        // With a relay the punch may fail without failing the link, and without one a
        // punched path may still never carry a handshake (a wrong key, a peer that
        // gave up): the handshake has a deadline of its own.
        let deadline = Some(at.max(now) + self.config.link_timeout);
        self.phase = Phase::Linking { deadline };
        if self.role == Role::Initiator {
            self.actions.push_back(AgentAction::StartQuic {
                initial_rtt: self.local.server_rtt,
            });
        }
        self.after_input(now);
    }

    /// Moves the punch's and the manager's outputs along, and handles the punch's end.
    fn after_input(&mut self, now: Instant) {
        if let Some(punch) = self.punch.as_mut() {
            self.probes_seen = self.probes_seen.max(punch.stats().probes_sent);
            while let Some(t) = punch.poll_transmit() {
                self.transmits
                    .push_back((PathId::Direct(t.destination), t.contents));
            }
            let mut finished = None;
            while let Some(event) = punch.poll_event() {
                if let Some(paths) = self.paths.as_mut() {
                    paths.handle_punch_event(now, &event);
                }
                match event {
                    PunchEvent::Succeeded(success) => finished = Some(Ok(success)),
                    PunchEvent::Failed(failure) => finished = Some(Err(failure)),
                    _ => {}
                }
            }
            if let Some(result) = finished {
                if let Some(paths) = self.paths.as_mut() {
                    paths.punch_finished(now);
                }
                let failed_for_good = result.is_err()
                    && matches!(self.phase, Phase::Linking { .. })
                    && !self.paths.as_ref().is_some_and(PathManager::has_relay);
                self.punch_result = Some(result);
                if failed_for_good && let Some(Err(failure)) = self.punch_result.clone() {
                    self.fail(AgentFailure::PunchFailed(Box::new(failure)));
                    return;
                }
            }
            if self.punch.as_ref().is_some_and(Punch::is_closed) {
                self.punch = None;
            }
        }
        if let Some(paths) = self.paths.as_mut() {
            while let Some(t) = paths.poll_transmit() {
                self.transmits.push_back(t);
            }
            while let Some(e) = paths.poll_event() {
                self.events.push_back(e);
            }
        }
    }

    fn outcome(&self, now: Instant) -> LinkOutcome {
        let paths = self.paths.as_ref();
        let path = paths
            .and_then(PathManager::active)
            .unwrap_or(PathId::Relay(RelayVia::Udp));
        let class = paths.map_or(PathClass::DirectPublic, |p| p.class_of(path));
        let punch = match &self.punch_result {
            Some(Ok(s)) if PathId::Direct(s.remote) == path => Some(s.clone()),
            _ => None,
        };
        LinkOutcome {
            path,
            class,
            elapsed: now.saturating_duration_since(self.client_info_at.unwrap_or(now)),
            probes_sent: self
                .punch
                .as_ref()
                .map(|p| p.stats().probes_sent)
                .or(punch.as_ref().map(|s| s.probes_sent))
                .unwrap_or(0),
            punch,
            candidates: self.candidates.clone(),
            relay_reason: self.relay_reason(),
        }
    }
}

/// The address worth an optimistic try: the peer's server-observed UDP endpoint, unless
/// it shares our public IP (the peer is behind our NAT, which may not hairpin; its
/// private endpoint is the way) or ours is unknown.
pub(crate) fn optimistic_target(
    ours: Option<Endpoint>,
    candidates: &[Candidate],
) -> Option<SocketAddr> {
    let our_ip = ours.and_then(|e| e.socket_addr()).map(|a| a.ip())?;
    candidates
        .iter()
        .find(|c| c.kind == CandidateKind::PublicUdp)
        .map(|c| c.addr)
        .filter(|addr| addr.ip().to_canonical() != our_ip.to_canonical())
}

#[cfg(test)]
#[path = "agent_tests.rs"]
mod tests;
