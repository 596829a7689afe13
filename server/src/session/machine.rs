//! The sans-IO state machine of one client connection.
//!
//! Calling order (as in quinn-proto): feed inputs with the `handle_*` methods,
//! each taking `now`; after every input drain [`Session::poll_action`] until it
//! returns `None` and execute the actions in order; then sleep until
//! [`Session::poll_timeout`] (if any) and call [`Session::handle_timeout`].
//! Answers to `Claim`/`TakeOver`/`Probe` actions come back through
//! [`Session::handle_claim`] and [`Session::handle_probe_result`].
//!
//! The machine never reads the clock, never touches a socket and gets its
//! randomness from an injected RNG, so every rule below is unit-tested with
//! made-up instants.
//!
//! Phases: awaiting PacketConnect → claiming the UUID in the hub → (probing
//! the session that holds it) → logged in → closed.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use chatr_proto::{
    DisconnectReason, Endpoint, Packet, PacketClientInfo, PacketConnected, PacketConnectionRequest,
    PacketConnectionRequestAccept, PacketConnectionRequestDenied, PacketDisconnect, PacketPing,
    PacketPresence, RelayId, SessionFeatures, SessionParams, VERSION_3,
};
use rand::RngExt;
use rand::rngs::StdRng;
use uuid::Uuid;

use super::action::{Action, Claim, Layout, PresenceAction};
use super::event::{ClaimOutcome, HubEvent, PeerEndpoints, PeerEvent};
use super::login::{self, LoginRefusal};
use super::ping::{PingDue, PingTracker};
use super::rate_limit::TokenBucket;
use super::{KeyLookup, SessionConfig};
use crate::metrics::{BrokerResult, LoginResult, Metrics};
use crate::presence::PendingPresence;
use crate::relay::{NoRelay, RelayBroker};

/// A request this session made and is waiting on.
#[derive(Debug, Clone, Copy)]
struct Outgoing {
    sent_at: Instant,
    expires: Instant,
}

/// State of a session whose login succeeded.
#[derive(Debug)]
struct LoggedIn {
    uuid: Uuid,
    layout: Layout,
    ping: PingTracker,
    /// A newcomer with our UUID is waiting to hear whether we are alive.
    probe_pending: bool,
    limiter: TokenBucket,
    /// Requests others may send us (all of them together).
    incoming_limiter: TokenBucket,
    /// Whether this session was offered presence (version 3, presence enabled).
    presence: bool,
    /// Presence packets our client may send.
    presence_limiter: TokenBucket,
    /// Requests we sent, by target.
    outgoing: HashMap<Uuid, Outgoing>,
    /// Requests made to us that our client has not answered, by requester,
    /// with their expiry. Only these may be answered.
    incoming: HashMap<Uuid, Instant>,
}

#[derive(Debug)]
enum State {
    AwaitingConnect { deadline: Instant },
    Claiming { claim: Claim, after_probe: bool },
    Probing { claim: Claim, deadline: Instant },
    LoggedIn(Box<LoggedIn>),
    Closed,
}

/// One client connection's protocol logic.
pub(crate) struct Session {
    config: SessionConfig,
    keys: Arc<dyn KeyLookup>,
    relays: Arc<dyn RelayBroker>,
    metrics: Arc<Metrics>,
    rng: StdRng,
    exporter: Option<[u8; 32]>,
    accepted_at: Instant,
    state: State,
    actions: VecDeque<Action>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("state", &self.state)
            .finish()
    }
}

impl Session {
    /// A connection accepted at `accepted_at` (TCP accept time: the login
    /// deadline counts the TLS handshake too). `exporter` is the TLS channel
    /// binding value of this connection.
    pub(crate) fn new(
        accepted_at: Instant,
        exporter: Option<[u8; 32]>,
        config: SessionConfig,
        keys: Arc<dyn KeyLookup>,
        metrics: Arc<Metrics>,
        rng: StdRng,
    ) -> Self {
        let deadline = accepted_at + config.timings.login_timeout;
        Self {
            config,
            keys,
            relays: Arc::new(NoRelay),
            metrics,
            rng,
            exporter,
            accepted_at,
            state: State::AwaitingConnect { deadline },
            actions: VecDeque::new(),
        }
    }

    /// Relays accepted exchanges of version-3 clients through `relays` (without
    /// this, nothing is relayed).
    pub(crate) fn with_relays(mut self, relays: Arc<dyn RelayBroker>) -> Self {
        self.relays = relays;
        self
    }

    // ----- getters -----

    /// The logged-in UUID.
    #[cfg(test)]
    pub(crate) fn uuid(&self) -> Option<Uuid> {
        match &self.state {
            State::LoggedIn(s) => Some(s.uuid),
            _ => None,
        }
    }

    /// The logged-in client's layout.
    pub(crate) fn layout(&self) -> Option<Layout> {
        match &self.state {
            State::LoggedIn(s) => Some(s.layout),
            _ => None,
        }
    }

    /// `false` while the login waits on the hub (claim, probe): the driver then
    /// leaves client bytes in the socket (TCP back-pressure) instead of feeding
    /// packets the machine has no use for yet.
    pub(crate) fn wants_packets(&self) -> bool {
        matches!(
            self.state,
            State::AwaitingConnect { .. } | State::LoggedIn(_)
        )
    }

    /// `true` once the session has decided to close.
    pub(crate) fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    // ----- outputs -----

    /// The next action to execute.
    pub(crate) fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`Session::handle_timeout`] must be called next.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        match &self.state {
            State::AwaitingConnect { deadline } | State::Probing { deadline, .. } => {
                Some(*deadline)
            }
            State::LoggedIn(s) => {
                let ping = s.ping.deadline();
                let outgoing = s.outgoing.values().map(|o| o.expires);
                let incoming = s.incoming.values().copied();
                outgoing.chain(incoming).chain(Some(ping)).min()
            }
            State::Claiming { .. } | State::Closed => None,
        }
    }

    // ----- inputs -----

    /// A packet from our client.
    pub(crate) fn handle_packet(&mut self, now: Instant, packet: Packet) {
        match &mut self.state {
            State::Closed => {}
            State::AwaitingConnect { .. } => self.on_first_packet(packet),
            State::Claiming { .. } | State::Probing { .. } => match packet {
                Packet::Disconnect(_) => self.close(None),
                // The client must wait for PacketConnected before sending more.
                _ => self.refuse_invalid_packet(),
            },
            State::LoggedIn(_) => self.on_packet(now, packet),
        }
    }

    /// Our client sent bytes that are not a valid frame.
    pub(crate) fn handle_malformed(&mut self, _now: Instant) {
        if !self.is_closed() {
            self.refuse_invalid_packet();
        }
    }

    /// Our client closed the connection (or it failed).
    pub(crate) fn handle_closed(&mut self, _now: Instant) {
        self.close(None);
    }

    /// The server or an admin ends the session; `message` is sent as
    /// PacketDisconnect when given (a slow reader gets none: it would not read it).
    pub(crate) fn handle_kick(&mut self, _now: Instant, message: Option<&str>) {
        self.close(message);
    }

    /// The hub's answer to [`Action::Claim`] or [`Action::TakeOver`].
    pub(crate) fn handle_claim(&mut self, now: Instant, outcome: ClaimOutcome) {
        let State::Claiming { claim, after_probe } = &self.state else {
            return;
        };
        let (claim, after_probe) = (claim.clone(), *after_probe);
        match outcome {
            ClaimOutcome::Admitted => self.admit(now, claim),
            ClaimOutcome::Occupied if !after_probe => {
                self.actions.push_back(Action::Probe { uuid: claim.uuid });
                self.state = State::Probing {
                    claim,
                    deadline: now + self.config.timings.takeover_probe,
                };
            }
            // Someone else took the UUID while we probed: never steal twice.
            ClaimOutcome::Occupied => self.refuse_login(
                LoginResult::AlreadyConnected,
                DisconnectReason::AlreadyConnected.as_str(),
            ),
        }
    }

    /// Whether the session holding our UUID answered the probe ping.
    pub(crate) fn handle_probe_result(&mut self, _now: Instant, alive: bool) {
        let State::Probing { claim, .. } = &self.state else {
            return;
        };
        if alive {
            self.refuse_login(
                LoginResult::AlreadyConnected,
                DisconnectReason::AlreadyConnected.as_str(),
            );
        } else {
            let claim = claim.clone();
            self.actions.push_back(Action::TakeOver(claim.clone()));
            self.state = State::Claiming {
                claim,
                after_probe: true,
            };
        }
    }

    /// A message from the hub.
    pub(crate) fn handle_hub_event(&mut self, now: Instant, event: HubEvent) {
        let State::LoggedIn(s) = &mut self.state else {
            return;
        };
        match event {
            HubEvent::Probe => {
                s.probe_pending = true;
                let id = self.rng.random::<i64>();
                s.ping.sent(now, id);
                self.send(Packet::Ping(PacketPing { ping_id: id }));
            }
            HubEvent::Peer {
                from,
                endpoints,
                event,
            } => self.on_peer_event(now, from, endpoints, event),
            HubEvent::Undeliverable { to, event } => {
                if let PeerEvent::Request { .. } = event
                    && s.outgoing.remove(&to).is_some()
                {
                    self.metrics.brokered(BrokerResult::Offline);
                    self.send(Packet::ConnectionRequestDenied(
                        PacketConnectionRequestDenied { uuid: to },
                    ));
                } else {
                    tracing::debug!(%to, ?event, "peer gone before the exchange finished");
                }
            }
        }
    }

    /// The presence registry has news for our client: contacts that came, changed or
    /// went, then (with our own UUID) the acknowledgement of our latest presence packet.
    pub(crate) fn handle_presence(&mut self, _now: Instant, pending: PendingPresence) {
        let State::LoggedIn(s) = &self.state else {
            return;
        };
        if !s.presence {
            return;
        }
        let me = s.uuid;
        for (uuid, state) in pending.updates {
            self.send(Packet::Presence(PacketPresence {
                uuid,
                status: state.status,
                message: state.message,
            }));
        }
        if let Some(state) = pending.ack {
            self.send(Packet::Presence(PacketPresence {
                uuid: me,
                status: state.status,
                message: state.message,
            }));
        }
    }

    /// Time passed: login deadline, probe deadline, pings, request expiry.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        match &mut self.state {
            State::AwaitingConnect { deadline } if now >= *deadline => {
                // Slow or silent client (slow-loris): dropped without a word.
                self.metrics.login(LoginResult::Timeout);
                self.close(None);
            }
            State::Probing { deadline, .. } if now >= *deadline => {
                self.handle_probe_result(now, false);
            }
            State::LoggedIn(s) => {
                match s.ping.poll(now) {
                    PingDue::Nothing => {}
                    PingDue::SendPing => {
                        let id = self.rng.random::<i64>();
                        s.ping.sent(now, id);
                        self.send(Packet::Ping(PacketPing { ping_id: id }));
                    }
                    PingDue::TimedOut => {
                        self.metrics.ping_timeout();
                        self.close(Some(DisconnectReason::TimeOut.as_str()));
                        return;
                    }
                }
                self.expire_requests(now);
            }
            _ => {}
        }
    }

    // ----- internals -----

    fn on_first_packet(&mut self, packet: Packet) {
        match packet {
            Packet::Connect(connect) => {
                let key = self.keys.lookup(&connect.uuid);
                match login::verify(
                    &connect,
                    key.as_ref(),
                    self.exporter.as_ref(),
                    self.config.require_channel_binding,
                ) {
                    Ok(layout) => {
                        let udp_token = layout.is_extended().then(|| {
                            let mut token: [u8; chatr_proto::UDP_TOKEN_LEN] = self.rng.random();
                            // In a cluster the token starts with this node's tag, so a
                            // binding datagram reaching another node is routed here.
                            if let Some(prefix) = self.config.udp_token_prefix
                                && let Some(head) = token.get_mut(..prefix.len())
                            {
                                head.copy_from_slice(&prefix);
                            }
                            token
                        });
                        let claim = Claim {
                            uuid: connect.uuid,
                            udp_token,
                            layout,
                        };
                        self.actions.push_back(Action::Claim(claim.clone()));
                        self.state = State::Claiming {
                            claim,
                            after_probe: false,
                        };
                    }
                    Err(refusal) => {
                        let reason = match refusal {
                            LoginRefusal::UnknownUuid => "unknown UUID",
                            LoginRefusal::MalformedSignature => "malformed signature",
                            LoginRefusal::BadSignature => "signature does not verify",
                        };
                        tracing::info!(uuid = %connect.uuid, version = connect.version, reason, "login refused");
                        self.refuse_login(
                            LoginResult::FailedToVerify,
                            DisconnectReason::FailedToVerify.as_str(),
                        );
                    }
                }
            }
            // A client may hang up politely before logging in.
            Packet::Disconnect(_) => self.close(None),
            _ => self.refuse_invalid_packet(),
        }
    }

    fn admit(&mut self, now: Instant, claim: Claim) {
        self.metrics.login(LoginResult::Ok);
        self.metrics
            .observe_login_latency(now.saturating_duration_since(self.accepted_at));
        let timings = &self.config.timings;
        self.state = State::LoggedIn(Box::new(LoggedIn {
            uuid: claim.uuid,
            layout: claim.layout,
            ping: PingTracker::new(now, timings.ping_interval, timings.ping_timeout),
            probe_pending: false,
            limiter: TokenBucket::new(
                self.config.requests_per_second,
                self.config.request_burst,
                now,
            ),
            incoming_limiter: TokenBucket::new(
                self.config.incoming_requests_per_second,
                self.config.incoming_request_burst,
                now,
            ),
            outgoing: HashMap::new(),
            incoming: HashMap::new(),
            presence: claim.layout.is_version3() && self.config.presence,
            presence_limiter: TokenBucket::new(
                self.config.presence_rate,
                self.config.presence_burst,
                now,
            ),
        }));
        let presence = if claim.layout.is_version3() && self.config.presence {
            SessionFeatures::PRESENCE
        } else {
            SessionFeatures::default()
        };
        let session = claim.layout.is_version3().then(|| SessionParams {
            version: VERSION_3,
            features: self.relays.features().with(presence),
            nat_probe_ports: self.config.nat_probe_ports.clone(),
        });
        self.send(Packet::Connected(PacketConnected {
            udp_token: claim.udp_token,
            session,
        }));
    }

    fn on_packet(&mut self, now: Instant, packet: Packet) {
        let State::LoggedIn(s) = &mut self.state else {
            return;
        };
        match packet {
            Packet::Pong(pong) => {
                if s.ping.pong(now, pong.ping_id) {
                    if std::mem::take(&mut s.probe_pending) {
                        self.actions.push_back(Action::ProbeAnswered);
                    }
                } else {
                    tracing::debug!(ping_id = pong.ping_id, "pong for another ping ignored");
                }
            }
            Packet::ConnectionRequest(request) => self.on_request(now, request),
            Packet::ConnectionRequestAccept(accept) => {
                if s.incoming.remove(&accept.uuid).is_some() {
                    // Hints are a version-3 field: from anyone else they are not passed on.
                    let hints = accept.hints.filter(|_| s.layout.is_version3());
                    self.actions.push_back(Action::Forward {
                        to: accept.uuid,
                        event: PeerEvent::Accepted {
                            private_endpoint: accept.private_endpoint,
                            hints,
                        },
                    });
                } else {
                    tracing::debug!(peer = %accept.uuid, "accept answers no pending request; dropped");
                }
            }
            Packet::ConnectionRequestDenied(denied) => {
                if s.incoming.remove(&denied.uuid).is_some() {
                    self.actions.push_back(Action::Forward {
                        to: denied.uuid,
                        event: PeerEvent::Denied,
                    });
                } else {
                    tracing::debug!(peer = %denied.uuid, "deny answers no pending request; dropped");
                }
            }
            Packet::Disconnect(_) => self.close(None),
            // Version-3 packets from a client that logged in below version 3 do not
            // exist for it (as for the spec).
            Packet::RelayData(_) | Packet::RelayClose(_) if !s.layout.is_version3() => {
                self.refuse_invalid_packet();
            }
            Packet::RelayData(data) => self.actions.push_back(Action::Relay(data)),
            Packet::RelayClose(close) => self.relays.close(close.relay_id, s.uuid),
            // Presence packets exist only for a session that was offered presence.
            Packet::PresenceContacts(_) | Packet::PresenceStatus(_) if !s.presence => {
                self.refuse_invalid_packet();
            }
            Packet::PresenceContacts(_) | Packet::PresenceStatus(_)
                if !s.presence_limiter.try_take(now) =>
            {
                tracing::info!("too many presence updates; closing");
                self.close(Some(DisconnectReason::TooManyPresenceUpdates.as_str()));
            }
            Packet::PresenceContacts(p) => self
                .actions
                .push_back(Action::Presence(PresenceAction::Contacts(p.op, p.contacts))),
            Packet::PresenceStatus(p) => {
                self.actions
                    .push_back(Action::Presence(PresenceAction::Status(
                        p.status, p.message,
                    )))
            }
            // PacketConnect may only be sent once; Connected, Ping, ClientInfo and
            // Presence are server-side packets.
            Packet::Connect(_)
            | Packet::Connected(_)
            | Packet::Ping(_)
            | Packet::ClientInfo(_)
            | Packet::Presence(_) => {
                self.refuse_invalid_packet();
            }
        }
    }

    fn on_request(&mut self, now: Instant, request: PacketConnectionRequest) {
        let State::LoggedIn(s) = &mut self.state else {
            return;
        };
        let target = request.uuid;
        let refusal = if target == s.uuid {
            Some(BrokerResult::Denied)
        } else if !s.limiter.try_take(now)
            || (!s.outgoing.contains_key(&target)
                && s.outgoing.len() >= self.config.max_pending_requests)
        {
            Some(BrokerResult::RateLimited)
        } else {
            None
        };
        if let Some(result) = refusal {
            tracing::debug!(%target, ?result, "connection request refused");
            self.metrics.brokered(result);
            self.send(Packet::ConnectionRequestDenied(
                PacketConnectionRequestDenied { uuid: target },
            ));
            return;
        }
        // A repeated request to the same target restarts its clock, but is not
        // forwarded again: the target already has it (one request per pair, however
        // often it is sent).
        let repeated = s
            .outgoing
            .insert(
                target,
                Outgoing {
                    sent_at: now,
                    expires: now + self.config.timings.request_timeout,
                },
            )
            .is_some();
        if repeated {
            tracing::debug!(%target, "repeated request collapsed into the pending one");
            return;
        }
        // Hints are a version-3 field: from anyone else they are not passed on.
        let hints = request.hints.filter(|_| s.layout.is_version3());
        self.actions.push_back(Action::Forward {
            to: target,
            event: PeerEvent::Request {
                private_endpoint: request.private_endpoint,
                hints,
            },
        });
    }

    fn on_peer_event(
        &mut self,
        now: Instant,
        from: Uuid,
        endpoints: PeerEndpoints,
        event: PeerEvent,
    ) {
        let State::LoggedIn(s) = &mut self.state else {
            return;
        };
        match event {
            PeerEvent::Request {
                private_endpoint,
                hints,
            } => {
                let expires = now + self.config.timings.request_timeout;
                if let Some(pending) = s.incoming.get_mut(&from) {
                    // Already shown to our client: only its expiry moves.
                    *pending = expires;
                    return;
                }
                if s.incoming.len() >= self.config.max_pending_requests
                    || !s.incoming_limiter.try_take(now)
                {
                    // Too many requests for this client (from everyone together, or
                    // a flood): deny on its behalf rather than let them crowd it.
                    self.metrics.brokered(BrokerResult::Busy);
                    self.actions.push_back(Action::Forward {
                        to: from,
                        event: PeerEvent::Denied,
                    });
                    return;
                }
                s.incoming.insert(from, expires);
                self.send(Packet::ConnectionRequest(PacketConnectionRequest {
                    uuid: from,
                    private_endpoint,
                    hints,
                }));
            }
            PeerEvent::Accepted {
                private_endpoint,
                hints,
            } => {
                let Some(outgoing) = s.outgoing.remove(&from) else {
                    tracing::debug!(peer = %from, "accept after our request expired; dropped");
                    return;
                };
                self.metrics.brokered(BrokerResult::Accepted);
                self.metrics
                    .observe_broker_latency(now.saturating_duration_since(outgoing.sent_at));
                let link_secret = self.rng.random();
                // Both parties consented (our request, their accept): relay the exchange
                // if both speak version 3 and the relay has room. We are the initiator.
                let relay_id = if s.layout.is_version3() && endpoints.v3 {
                    let id = RelayId::from_wire(self.rng.random())
                        .unwrap_or(RelayId([1; chatr_proto::RELAY_ID_LEN]));
                    let parties = [s.uuid, from];
                    self.relays.open(parties, id, now).then_some(id)
                } else {
                    None
                };
                self.send(Packet::ConnectionRequestAccept(
                    PacketConnectionRequestAccept {
                        uuid: from,
                        private_endpoint,
                        hints,
                    },
                ));
                self.send(client_info(from, endpoints, link_secret, relay_id));
                self.actions.push_back(Action::Forward {
                    to: from,
                    event: PeerEvent::ClientInfo {
                        link_secret,
                        relay_id,
                    },
                });
            }
            PeerEvent::Denied => {
                if s.outgoing.remove(&from).is_some() {
                    self.metrics.brokered(BrokerResult::Denied);
                    self.send(Packet::ConnectionRequestDenied(
                        PacketConnectionRequestDenied { uuid: from },
                    ));
                } else {
                    tracing::debug!(peer = %from, "deny after our request expired; dropped");
                }
            }
            PeerEvent::ClientInfo {
                link_secret,
                relay_id,
            } => {
                self.send(client_info(from, endpoints, link_secret, relay_id));
            }
        }
    }

    fn expire_requests(&mut self, now: Instant) {
        let State::LoggedIn(s) = &mut self.state else {
            return;
        };
        s.incoming.retain(|_, expires| *expires > now);
        let mut expired: Vec<Uuid> = s
            .outgoing
            .iter()
            .filter(|(_, o)| o.expires <= now)
            .map(|(target, _)| *target)
            .collect();
        // Deterministic order for several expiring at once.
        expired.sort_unstable();
        for target in expired {
            s.outgoing.remove(&target);
            self.metrics.brokered(BrokerResult::Expired);
            self.actions
                .push_back(Action::Send(Packet::ConnectionRequestDenied(
                    PacketConnectionRequestDenied { uuid: target },
                )));
        }
    }

    /// Queues `packet` for our client, shaped for its layout.
    fn send(&mut self, packet: Packet) {
        let packet = match self.layout() {
            Some(Layout::Spec) => spec_layout(packet),
            Some(Layout::Extended) => version2_layout(packet),
            _ => packet,
        };
        self.actions.push_back(Action::Send(packet));
    }

    fn refuse_login(&mut self, result: LoginResult, message: &str) {
        self.metrics.login(result);
        self.close(Some(message));
    }

    fn refuse_invalid_packet(&mut self) {
        if !matches!(self.state, State::LoggedIn(_)) {
            self.metrics.login(LoginResult::InvalidPacket);
        }
        self.close(Some(DisconnectReason::InvalidPacket.as_str()));
    }

    fn close(&mut self, message: Option<&str>) {
        if self.is_closed() {
            return;
        }
        // Whoever is waiting for our client's answer is told now, not at expiry.
        if let State::LoggedIn(s) = &mut self.state {
            let mut waiting: Vec<Uuid> = s.incoming.drain().map(|(from, _)| from).collect();
            waiting.sort_unstable();
            for from in waiting {
                self.actions.push_back(Action::Forward {
                    to: from,
                    event: PeerEvent::Denied,
                });
            }
        }
        if let Some(message) = message {
            self.actions
                .push_back(Action::Send(Packet::Disconnect(PacketDisconnect {
                    message: message.to_string(),
                })));
        }
        self.actions.push_back(Action::Close);
        self.state = State::Closed;
    }
}

fn client_info(
    peer: Uuid,
    endpoints: PeerEndpoints,
    link_secret: [u8; chatr_proto::LINK_SECRET_LEN],
    relay_id: Option<RelayId>,
) -> Packet {
    Packet::ClientInfo(PacketClientInfo {
        uuid: peer,
        public_endpoint: endpoints.public(),
        tcp_endpoint: Some(endpoints.tcp()),
        link_secret: Some(link_secret),
        relay_id,
    })
}

/// Strips the version-3 fields, so a version-2 client gets exactly the layout it knows.
fn version2_layout(packet: Packet) -> Packet {
    match packet {
        Packet::Connected(p) => Packet::Connected(PacketConnected { session: None, ..p }),
        Packet::ClientInfo(p) => Packet::ClientInfo(PacketClientInfo {
            relay_id: None,
            ..p
        }),
        Packet::ConnectionRequest(p) => {
            Packet::ConnectionRequest(PacketConnectionRequest { hints: None, ..p })
        }
        Packet::ConnectionRequestAccept(p) => {
            Packet::ConnectionRequestAccept(PacketConnectionRequestAccept { hints: None, ..p })
        }
        other => other,
    }
}

/// Strips every extension field, so a spec-only client gets exactly the
/// spec's bytes.
fn spec_layout(packet: Packet) -> Packet {
    fn bare(endpoint: Endpoint) -> Endpoint {
        Endpoint {
            ip: endpoint.ip,
            port: None,
        }
    }
    match packet {
        Packet::Connected(_) => Packet::Connected(PacketConnected::default()),
        Packet::ConnectionRequest(p) => Packet::ConnectionRequest(PacketConnectionRequest {
            private_endpoint: bare(p.private_endpoint),
            hints: None,
            ..p
        }),
        Packet::ConnectionRequestAccept(p) => {
            Packet::ConnectionRequestAccept(PacketConnectionRequestAccept {
                private_endpoint: bare(p.private_endpoint),
                hints: None,
                ..p
            })
        }
        Packet::ClientInfo(p) => Packet::ClientInfo(PacketClientInfo {
            uuid: p.uuid,
            public_endpoint: bare(p.public_endpoint),
            tcp_endpoint: None,
            link_secret: None,
            relay_id: None,
        }),
        other => other,
    }
}
