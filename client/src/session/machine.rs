//! The client side of one Connect session, as a sans-IO state machine.
//!
//! One [`Session`] lives for one TLS connection. It never touches a socket or
//! the clock: the driver feeds it packets, UDP control datagrams and timeouts
//! (each with `now`) and pulls out packets to write, datagrams to send to the
//! server's UDP port and [`SessionEvent`]s.
//!
//! Calling order for a driver:
//! 1. create it right after the TLS handshake (it queues `PacketConnect` v2,
//!    signed over the channel-binding message);
//! 2. loop: drain [`Session::poll_transmit`], [`Session::poll_udp_transmit`] and
//!    [`Session::poll_event`]; stop when [`Session::is_closed`]; otherwise wait
//!    for input or [`Session::poll_timeout`] and call the matching `handle_*`.
//!
//! Phases: logging in → logged in → closed. Only a logged-in session sends
//! requests, accepts and denials; a ping is answered in any phase.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chatr_proto::udp::UdpMessage;
use chatr_proto::{
    CHANNEL_BINDING_EXPORTER_LEN, DisconnectReason, Endpoint, LinkHints, Packet, PacketConnect,
    PacketConnectionRequest, PacketConnectionRequestAccept, PacketConnectionRequestDenied,
    PacketDisconnect, PacketPong, SessionFeatures, UDP_TOKEN_LEN, VERSION_2, VERSION_CURRENT,
    channel_binding_message,
};
use uuid::Uuid;

use super::event::{SessionEnd, SessionEvent};
use super::transport_error::TransportError;
use crate::identity::Identity;

/// Timers of a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionTimings {
    /// `PacketConnected` must arrive this long after we log in (default 10 s).
    pub login_timeout: Duration,
    /// The server pings at least every 5 s (spec); if nothing at all arrives for
    /// this long the connection is considered dead (default 20 s).
    pub idle_timeout: Duration,
    /// Interval between UDP binding requests until one is answered (default 300 ms).
    pub binding_interval: Duration,
    /// Binding requests sent before giving up (default 10).
    pub binding_attempts: u32,
    /// Once bound (or given up), one binding request every this long (default
    /// 25 s): it keeps the NAT's UDP mapping towards the server open, so the
    /// endpoint the server hands to peers stays valid, and it notices a
    /// mapping that changed.
    pub binding_refresh: Duration,
}

impl Default for SessionTimings {
    fn default() -> Self {
        Self {
            login_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(20),
            binding_interval: Duration::from_millis(300),
            binding_attempts: 10,
            binding_refresh: Duration::from_secs(25),
        }
    }
}

/// A command was given to a session that cannot carry it out now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NotLoggedIn {
    /// Still waiting for `PacketConnected`.
    #[error("not logged in yet")]
    LoggingIn,
    /// The session is over.
    #[error("the session is closed")]
    Closed,
}

#[derive(Debug)]
enum Binding {
    /// The server gave no token: it does not do UDP binding.
    Unsupported,
    /// Sending requests until a response arrives.
    Pending {
        token: [u8; UDP_TOKEN_LEN],
        next_at: Instant,
        sent: u32,
    },
    /// The server told us our UDP mapping; refreshed at `refresh_at`.
    Bound {
        observed: Endpoint,
        token: [u8; UDP_TOKEN_LEN],
        refresh_at: Instant,
    },
    /// No response after every attempt; one more request at `refresh_at`.
    GaveUp {
        token: [u8; UDP_TOKEN_LEN],
        refresh_at: Instant,
    },
}

impl Binding {
    fn token(&self) -> Option<[u8; UDP_TOKEN_LEN]> {
        match self {
            Binding::Unsupported => None,
            Binding::Pending { token, .. }
            | Binding::Bound { token, .. }
            | Binding::GaveUp { token, .. } => Some(*token),
        }
    }
}

#[derive(Debug)]
enum Phase {
    LoggingIn { deadline: Instant },
    LoggedIn { binding: Binding },
    Closed,
}

/// One Connect session (see the module docs for the calling order).
#[derive(Debug)]
pub struct Session {
    uuid: Uuid,
    timings: SessionTimings,
    phase: Phase,
    last_rx: Instant,
    transmit: VecDeque<Packet>,
    udp_transmit: VecDeque<UdpMessage>,
    events: VecDeque<SessionEvent>,
    /// Where binding responses may come from (the server's UDP port), when known.
    server_udp: Option<SocketAddr>,
    /// The version the server speaks on this session (2 unless `PacketConnected` said).
    server_version: u32,
    /// What a version-3 server offers this session.
    features: SessionFeatures,
    /// NAT probe ports a version-3 server announced.
    nat_probe_ports: Vec<u16>,
    /// The key that authenticates our binding requests to a version-3 server
    /// (exported from this TLS connection), and the last counter used.
    binding_key: Option<[u8; chatr_proto::udp::BINDING_KEY_LEN]>,
    binding_counter: u64,
}

impl Session {
    /// A session for `identity` on a TLS connection whose exporter (label
    /// [`chatr_proto::CHANNEL_BINDING_EXPORTER_LABEL`], no context) is
    /// `exporter`; queues the signed version-2 `PacketConnect`.
    pub fn new(
        now: Instant,
        identity: &Identity,
        exporter: &[u8; CHANNEL_BINDING_EXPORTER_LEN],
        timings: SessionTimings,
    ) -> Self {
        let uuid = identity.uuid();
        let signature = identity.sign(&channel_binding_message(&uuid, exporter));
        let mut session = Self {
            uuid,
            phase: Phase::LoggingIn {
                deadline: now + timings.login_timeout,
            },
            timings,
            last_rx: now,
            transmit: VecDeque::new(),
            udp_transmit: VecDeque::new(),
            events: VecDeque::new(),
            server_udp: None,
            server_version: VERSION_2,
            features: SessionFeatures::default(),
            nat_probe_ports: Vec::new(),
            binding_key: None,
            binding_counter: 0,
        };
        session.transmit.push_back(Packet::Connect(PacketConnect {
            version: VERSION_CURRENT,
            uuid,
            signature: signature.to_bytes().to_vec(),
        }));
        session
    }

    /// Authenticates binding requests with `key` when the server speaks version 3 (the
    /// TLS exporter value for `EXPORTER-chatr-udp-binding-v3`).
    pub fn set_binding_key(&mut self, key: [u8; chatr_proto::udp::BINDING_KEY_LEN]) {
        self.binding_key = Some(key);
    }

    /// The version the server speaks on this session (known once logged in).
    pub fn server_version(&self) -> u32 {
        self.server_version
    }

    /// What the server offers this session (version 3; empty before).
    pub fn features(&self) -> SessionFeatures {
        self.features
    }

    /// Whether the server offers presence on this session (version 3, feature `04`).
    pub fn has_presence(&self) -> bool {
        self.server_version >= chatr_proto::VERSION_3
            && self.features.contains(SessionFeatures::PRESENCE)
    }

    /// The NAT probe ports the server announced (version 3).
    pub fn nat_probe_ports(&self) -> &[u16] {
        &self.nat_probe_ports
    }

    /// Only accept binding responses from this address (the server's UDP port).
    pub fn set_server_udp(&mut self, addr: SocketAddr) {
        self.server_udp = Some(addr);
    }

    // ----- getters -----

    /// Our client id.
    pub fn uuid(&self) -> Uuid {
        self.uuid
    }

    /// Whether `PacketConnected` has arrived and the session is still open.
    pub fn is_logged_in(&self) -> bool {
        matches!(self.phase, Phase::LoggedIn { .. })
    }

    /// Whether the session is over (the driver should close the connection).
    pub fn is_closed(&self) -> bool {
        matches!(self.phase, Phase::Closed)
    }

    /// Our public UDP endpoint, once the server told us.
    pub fn udp_observed(&self) -> Option<Endpoint> {
        match &self.phase {
            Phase::LoggedIn {
                binding: Binding::Bound { observed, .. },
            } => Some(*observed),
            _ => None,
        }
    }

    // ----- inputs -----

    /// A packet from the server.
    pub fn handle_packet(&mut self, now: Instant, packet: Packet) {
        if self.is_closed() {
            return;
        }
        self.last_rx = now;
        match packet {
            // Pings are answered in every phase, with the same id.
            Packet::Ping(ping) => self.transmit.push_back(Packet::Pong(PacketPong {
                ping_id: ping.ping_id,
            })),
            Packet::Disconnect(d) => {
                self.close_with(SessionEnd::Server(d.message), false);
            }
            Packet::Connected(c) => match self.phase {
                Phase::LoggingIn { .. } => {
                    if let Some(params) = &c.session {
                        self.server_version = params.version;
                        self.features = params.features;
                        self.nat_probe_ports = params.nat_probe_ports.clone();
                    }
                    let binding = match c.udp_token {
                        Some(token) => Binding::Pending {
                            token,
                            next_at: now,
                            sent: 0,
                        },
                        None => Binding::Unsupported,
                    };
                    self.phase = Phase::LoggedIn { binding };
                    self.events.push_back(SessionEvent::Connected {
                        udp_token: c.udp_token,
                    });
                    // Send the first binding request right away.
                    self.handle_timeout(now);
                }
                _ => self.violation("PacketConnected after login"),
            },
            Packet::ConnectionRequest(p) if self.is_logged_in() => {
                self.events.push_back(SessionEvent::IncomingRequest {
                    peer: p.uuid,
                    private_endpoint: p.private_endpoint,
                    hints: p.hints,
                });
            }
            Packet::ConnectionRequestAccept(p) if self.is_logged_in() => {
                self.events.push_back(SessionEvent::Accepted {
                    peer: p.uuid,
                    private_endpoint: p.private_endpoint,
                    hints: p.hints,
                });
            }
            Packet::ConnectionRequestDenied(p) if self.is_logged_in() => {
                self.events.push_back(SessionEvent::Denied { peer: p.uuid });
            }
            Packet::ClientInfo(p) if self.is_logged_in() => {
                self.events.push_back(SessionEvent::ClientInfo {
                    peer: p.uuid,
                    public_endpoint: p.public_endpoint,
                    tcp_endpoint: p.tcp_endpoint,
                    link_secret: p.link_secret,
                    relay_id: p.relay_id,
                });
            }
            Packet::ConnectionRequest(_)
            | Packet::ConnectionRequestAccept(_)
            | Packet::ConnectionRequestDenied(_)
            | Packet::ClientInfo(_) => self.violation("brokering packet before login"),
            Packet::Connect(_) | Packet::Pong(_) => {
                self.violation("client-only packet from server")
            }
            Packet::RelayClose(p)
                if self.is_logged_in() && self.server_version >= chatr_proto::VERSION_3 =>
            {
                self.events.push_back(SessionEvent::RelayClosed {
                    relay: p.relay_id,
                    reason: p.reason,
                });
            }
            Packet::Presence(p) if self.is_logged_in() && self.has_presence() => {
                if p.uuid == self.uuid {
                    self.events.push_back(SessionEvent::PresenceSynced);
                } else {
                    self.events.push_back(SessionEvent::Presence {
                        peer: p.uuid,
                        status: p.status,
                        message: p.message,
                    });
                }
            }
            Packet::PresenceContacts(_) | Packet::PresenceStatus(_) => {
                self.violation("client-only packet from server")
            }
            // Relayed data of a version-3 session never reaches the machine (the driver
            // hands it to the link socket).
            Packet::RelayData(_) | Packet::RelayClose(_) | Packet::Presence(_) => {
                self.violation("version-3 packet on a version-2 session")
            }
        }
    }

    /// A control datagram that arrived on our UDP socket from `from`.
    pub fn handle_udp(&mut self, now: Instant, from: SocketAddr, message: UdpMessage) {
        if self.server_udp.is_some_and(|s| s != from) {
            return;
        }
        let UdpMessage::BindingResponse {
            observed,
            tcp_observed,
        } = message
        else {
            return;
        };
        if let Phase::LoggedIn { binding } = &mut self.phase
            && let Some(token) = binding.token()
        {
            // A duplicate answer is harmless; a new or changed mapping is news.
            let (changed, refresh_at) = match binding {
                Binding::Bound {
                    observed: old,
                    refresh_at,
                    ..
                } => (*old != observed, *refresh_at),
                _ => (true, now + self.timings.binding_refresh),
            };
            *binding = Binding::Bound {
                observed,
                token,
                refresh_at,
            };
            if changed {
                self.events.push_back(SessionEvent::UdpBound {
                    observed,
                    tcp_observed,
                });
            }
        }
    }

    /// Time passed: checks deadlines and paces binding requests.
    pub fn handle_timeout(&mut self, now: Instant) {
        match &mut self.phase {
            Phase::Closed => {}
            Phase::LoggingIn { deadline } => {
                if now >= *deadline {
                    self.close_with(SessionEnd::LoginTimeout, true);
                }
            }
            Phase::LoggedIn { binding } => {
                if now >= self.last_rx + self.timings.idle_timeout {
                    self.close_with(SessionEnd::IdleTimeout, true);
                    return;
                }
                match binding {
                    Binding::Pending {
                        token,
                        next_at,
                        sent,
                    } if now >= *next_at => {
                        if *sent >= self.timings.binding_attempts {
                            *binding = Binding::GaveUp {
                                token: *token,
                                refresh_at: now + self.timings.binding_refresh,
                            };
                            self.events.push_back(SessionEvent::UdpBindingFailed);
                        } else {
                            self.udp_transmit.push_back(binding_request(
                                self.server_version,
                                self.binding_key.as_ref(),
                                &mut self.binding_counter,
                                *token,
                            ));
                            *sent += 1;
                            *next_at = now + self.timings.binding_interval;
                        }
                    }
                    Binding::Bound {
                        token, refresh_at, ..
                    }
                    | Binding::GaveUp { token, refresh_at }
                        if now >= *refresh_at =>
                    {
                        self.udp_transmit.push_back(binding_request(
                            self.server_version,
                            self.binding_key.as_ref(),
                            &mut self.binding_counter,
                            *token,
                        ));
                        *refresh_at = now + self.timings.binding_refresh;
                    }
                    _ => {}
                }
            }
        }
    }

    /// The connection failed or the server closed it.
    pub fn handle_transport_closed(&mut self, why: TransportError) {
        if !self.is_closed() {
            self.close_with(SessionEnd::Transport(why), false);
        }
    }

    /// The server sent bytes that are not a valid frame.
    pub fn handle_invalid_frame(&mut self, why: impl std::fmt::Display) {
        self.violation(&format!("invalid frame: {why}"));
    }

    // ----- commands -----

    /// Asks the server for a link to `peer`, announcing our private endpoint (and, to a
    /// version-3 server, `hints`).
    pub fn request(
        &mut self,
        peer: Uuid,
        private_endpoint: Endpoint,
        hints: LinkHints,
    ) -> Result<(), NotLoggedIn> {
        self.ready()?;
        let hints = self.v3_hints(hints);
        self.transmit
            .push_back(Packet::ConnectionRequest(PacketConnectionRequest {
                uuid: peer,
                private_endpoint,
                hints,
            }));
        Ok(())
    }

    /// Accepts `peer`'s request, announcing our private endpoint (and, to a version-3
    /// server, `hints`).
    pub fn accept(
        &mut self,
        peer: Uuid,
        private_endpoint: Endpoint,
        hints: LinkHints,
    ) -> Result<(), NotLoggedIn> {
        self.ready()?;
        let hints = self.v3_hints(hints);
        self.transmit.push_back(Packet::ConnectionRequestAccept(
            PacketConnectionRequestAccept {
                uuid: peer,
                private_endpoint,
                hints,
            },
        ));
        Ok(())
    }

    /// Hints are a version-3 field: an older server would not pass them on (or read them).
    fn v3_hints(&self, hints: LinkHints) -> Option<LinkHints> {
        (self.server_version() >= chatr_proto::VERSION_3).then_some(hints)
    }

    /// Denies `peer`'s request.
    pub fn deny(&mut self, peer: Uuid) -> Result<(), NotLoggedIn> {
        self.ready()?;
        self.transmit.push_back(Packet::ConnectionRequestDenied(
            PacketConnectionRequestDenied { uuid: peer },
        ));
        Ok(())
    }

    /// Sets our presence status (`PacketPresenceStatus`); nothing on a session without
    /// presence ([`Session::has_presence`]).
    pub fn presence_status(
        &mut self,
        status: chatr_proto::PresenceStatus,
        message: &str,
    ) -> Result<(), NotLoggedIn> {
        self.ready()?;
        if self.has_presence() {
            self.transmit
                .push_back(Packet::PresenceStatus(chatr_proto::PacketPresenceStatus {
                    status,
                    message: message.to_owned(),
                }));
        }
        Ok(())
    }

    /// Adds `contacts` to (or removes them from) our presence consent list, in batches of
    /// [`chatr_proto::MAX_PRESENCE_BATCH`]; nothing on a session without presence.
    pub fn presence_contacts(
        &mut self,
        op: chatr_proto::ContactsOp,
        contacts: &[Uuid],
    ) -> Result<(), NotLoggedIn> {
        self.ready()?;
        if self.has_presence() {
            for batch in contacts.chunks(chatr_proto::MAX_PRESENCE_BATCH) {
                self.transmit.push_back(Packet::PresenceContacts(
                    chatr_proto::PacketPresenceContacts {
                        op,
                        contacts: batch.to_vec(),
                    },
                ));
            }
        }
        Ok(())
    }

    /// Tells the server we no longer need `relay`: `PacketRelayClose`, on a session the
    /// server runs at version 3 (anything else has no relays to close).
    pub fn close_relay(&mut self, relay: chatr_proto::RelayId) {
        if self.is_logged_in() && self.server_version >= chatr_proto::VERSION_3 {
            self.transmit
                .push_back(Packet::RelayClose(chatr_proto::PacketRelayClose {
                    relay_id: relay,
                    reason: String::new(),
                }));
        }
    }

    /// Ends the session politely (a `PacketDisconnect` is queued).
    pub fn close(&mut self, message: &str) {
        if !self.is_closed() {
            self.transmit
                .push_back(Packet::Disconnect(PacketDisconnect::new(message)));
            self.close_with(SessionEnd::Local, false);
        }
    }

    // ----- outputs -----

    /// The next packet to write to the server.
    pub fn poll_transmit(&mut self) -> Option<Packet> {
        self.transmit.pop_front()
    }

    /// The next datagram to send to the server's UDP port from our UDP socket.
    pub fn poll_udp_transmit(&mut self) -> Option<UdpMessage> {
        self.udp_transmit.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<SessionEvent> {
        self.events.pop_front()
    }

    /// When [`Session::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Closed => None,
            Phase::LoggingIn { deadline } => Some(*deadline),
            Phase::LoggedIn { binding } => {
                let idle = self.last_rx + self.timings.idle_timeout;
                match binding {
                    Binding::Pending { next_at, .. } => Some(idle.min(*next_at)),
                    Binding::Bound { refresh_at, .. } | Binding::GaveUp { refresh_at, .. } => {
                        Some(idle.min(*refresh_at))
                    }
                    Binding::Unsupported => Some(idle),
                }
            }
        }
    }

    // ----- internals -----

    fn ready(&self) -> Result<(), NotLoggedIn> {
        match self.phase {
            Phase::LoggedIn { .. } => Ok(()),
            Phase::LoggingIn { .. } => Err(NotLoggedIn::LoggingIn),
            Phase::Closed => Err(NotLoggedIn::Closed),
        }
    }

    fn violation(&mut self, what: &str) {
        tracing::warn!(uuid = %self.uuid, "server protocol violation: {what}");
        self.transmit
            .push_back(Packet::Disconnect(PacketDisconnect::from(
                DisconnectReason::InvalidPacket,
            )));
        self.close_with(SessionEnd::ProtocolViolation(what.to_string()), false);
    }

    /// Moves to Closed and reports why. `say_goodbye` queues a Disconnect for the server.
    fn close_with(&mut self, reason: SessionEnd, say_goodbye: bool) {
        if self.is_closed() {
            return;
        }
        if say_goodbye {
            self.transmit
                .push_back(Packet::Disconnect(PacketDisconnect::new(
                    reason.to_string(),
                )));
        }
        self.phase = Phase::Closed;
        self.events.push_back(SessionEvent::Disconnected { reason });
    }
}

/// The binding request to send: authenticated (with the next counter) to a version-3
/// server when we have the key, the plain form otherwise.
fn binding_request(
    server_version: u32,
    key: Option<&[u8; chatr_proto::udp::BINDING_KEY_LEN]>,
    counter: &mut u64,
    token: [u8; UDP_TOKEN_LEN],
) -> UdpMessage {
    match key {
        Some(key) if server_version >= chatr_proto::VERSION_3 => {
            *counter = counter.saturating_add(1);
            UdpMessage::binding_request_auth(key, token, *counter)
        }
        _ => UdpMessage::BindingRequest { token },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chatr_proto::{PacketClientInfo, PacketConnected, PacketPing, channel_binding_message};
    use ed25519_dalek::{Signature, Verifier};

    const EXPORTER: [u8; 32] = [9; 32];

    fn timings() -> SessionTimings {
        SessionTimings {
            login_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(20),
            binding_interval: Duration::from_millis(300),
            binding_attempts: 3,
            binding_refresh: Duration::from_secs(25),
        }
    }

    fn ep(s: &str) -> Endpoint {
        Endpoint::new(s.parse().unwrap())
    }

    fn logged_in(now: Instant, token: Option<[u8; 16]>) -> (Session, Identity) {
        let id = Identity::generate();
        let mut s = Session::new(now, &id, &EXPORTER, timings());
        assert!(matches!(s.poll_transmit(), Some(Packet::Connect(_))));
        s.handle_packet(
            now,
            Packet::Connected(PacketConnected {
                udp_token: token,
                session: None,
            }),
        );
        assert_eq!(
            s.poll_event(),
            Some(SessionEvent::Connected { udp_token: token })
        );
        (s, id)
    }

    fn drain_events(s: &mut Session) -> Vec<SessionEvent> {
        std::iter::from_fn(|| s.poll_event()).collect()
    }

    #[test]
    fn login_is_v3_with_channel_binding_signature() {
        let now = Instant::now();
        let id = Identity::generate();
        let mut s = Session::new(now, &id, &EXPORTER, timings());
        let Some(Packet::Connect(c)) = s.poll_transmit() else {
            panic!("no PacketConnect");
        };
        // Version 3 signs the same channel-bound message as version 2.
        assert_eq!(c.version, 3);
        assert_eq!(c.uuid, id.uuid());
        let sig = Signature::from_slice(&c.signature).unwrap();
        let msg = channel_binding_message(&id.uuid(), &EXPORTER);
        id.verifying_key().verify(&msg, &sig).unwrap();
        // Not the v1 message.
        assert!(
            id.verifying_key()
                .verify(id.uuid().as_bytes(), &sig)
                .is_err()
        );
        assert!(s.poll_transmit().is_none());
        assert!(!s.is_logged_in());
    }

    #[test]
    fn pings_are_answered_with_the_same_id_in_every_phase() {
        let now = Instant::now();
        let id = Identity::generate();
        let mut s = Session::new(now, &id, &EXPORTER, timings());
        s.poll_transmit();
        s.handle_packet(now, Packet::Ping(PacketPing { ping_id: -7 }));
        assert_eq!(
            s.poll_transmit(),
            Some(Packet::Pong(PacketPong { ping_id: -7 }))
        );
        s.handle_packet(now, Packet::Connected(PacketConnected::default()));
        s.handle_packet(now, Packet::Ping(PacketPing { ping_id: i64::MAX }));
        assert_eq!(
            s.poll_transmit(),
            Some(Packet::Pong(PacketPong { ping_id: i64::MAX }))
        );
    }

    #[test]
    fn login_times_out() {
        let now = Instant::now();
        let mut s = Session::new(now, &Identity::generate(), &EXPORTER, timings());
        s.poll_transmit();
        assert_eq!(s.poll_timeout(), Some(now + Duration::from_secs(5)));
        s.handle_timeout(now + Duration::from_secs(4));
        assert!(!s.is_closed());
        s.handle_timeout(now + Duration::from_secs(5));
        assert!(s.is_closed());
        assert_eq!(
            drain_events(&mut s),
            vec![SessionEvent::Disconnected {
                reason: SessionEnd::LoginTimeout
            }]
        );
        assert!(matches!(s.poll_transmit(), Some(Packet::Disconnect(_))));
        assert_eq!(s.poll_timeout(), None);
    }

    #[test]
    fn server_disconnect_is_reported_verbatim() {
        let now = Instant::now();
        let mut s = Session::new(now, &Identity::generate(), &EXPORTER, timings());
        s.poll_transmit();
        s.handle_packet(
            now,
            Packet::Disconnect(DisconnectReason::FailedToVerify.into()),
        );
        let ev = drain_events(&mut s);
        let [SessionEvent::Disconnected { reason }] = ev.as_slice() else {
            panic!("{ev:?}");
        };
        assert!(reason.is_login_rejected());
        assert!(s.is_closed());
        assert!(s.poll_transmit().is_none());
    }

    #[test]
    fn binding_is_retried_until_answered() {
        let now = Instant::now();
        let token = [5u8; 16];
        let server: SocketAddr = "10.0.0.1:7777".parse().unwrap();
        let (mut s, _) = logged_in(now, Some(token));
        s.set_server_udp(server);
        assert_eq!(
            s.poll_udp_transmit(),
            Some(UdpMessage::BindingRequest { token })
        );
        assert_eq!(s.poll_udp_transmit(), None);
        let t1 = now + Duration::from_millis(300);
        assert_eq!(s.poll_timeout(), Some(t1));
        s.handle_timeout(t1);
        assert_eq!(
            s.poll_udp_transmit(),
            Some(UdpMessage::BindingRequest { token })
        );
        // A response from elsewhere is ignored.
        let observed = ep("198.51.100.7:40000");
        s.handle_udp(
            t1,
            "10.0.0.2:7777".parse().unwrap(),
            UdpMessage::BindingResponse {
                observed,
                tcp_observed: None,
            },
        );
        assert_eq!(s.udp_observed(), None);
        s.handle_udp(
            t1,
            server,
            UdpMessage::BindingResponse {
                observed,
                tcp_observed: None,
            },
        );
        assert_eq!(s.udp_observed(), Some(observed));
        assert_eq!(
            drain_events(&mut s),
            vec![SessionEvent::UdpBound {
                observed,
                tcp_observed: None,
            }]
        );
        // Duplicates are not reported twice; no more retries go out.
        s.handle_udp(
            t1,
            server,
            UdpMessage::BindingResponse {
                observed,
                tcp_observed: None,
            },
        );
        assert!(drain_events(&mut s).is_empty());
        s.handle_timeout(t1 + Duration::from_secs(1));
        assert_eq!(s.poll_udp_transmit(), None);
        // But the mapping is refreshed every 25 s, and a change is reported.
        let refresh = t1 + Duration::from_secs(25);
        // (A ping keeps the idle deadline further away than the refresh.)
        s.handle_packet(
            t1 + Duration::from_secs(10),
            Packet::Ping(PacketPing { ping_id: 1 }),
        );
        assert!(s.poll_transmit().is_some());
        assert_eq!(s.poll_timeout(), Some(refresh));
        s.handle_timeout(refresh);
        assert_eq!(
            s.poll_udp_transmit(),
            Some(UdpMessage::BindingRequest { token })
        );
        let moved = ep("198.51.100.7:40001");
        s.handle_udp(
            refresh,
            server,
            UdpMessage::BindingResponse {
                observed: moved,
                tcp_observed: None,
            },
        );
        assert_eq!(s.udp_observed(), Some(moved));
        assert_eq!(
            drain_events(&mut s),
            vec![SessionEvent::UdpBound {
                observed: moved,
                tcp_observed: None,
            }]
        );
    }

    #[test]
    fn binding_gives_up_after_the_attempts() {
        let now = Instant::now();
        let (mut s, _) = logged_in(now, Some([1; 16]));
        let mut t = now;
        let mut sent = 0;
        for _ in 0..10 {
            while s.poll_udp_transmit().is_some() {
                sent += 1;
            }
            t += Duration::from_millis(300);
            s.handle_timeout(t);
        }
        assert_eq!(sent, 3);
        assert_eq!(drain_events(&mut s), vec![SessionEvent::UdpBindingFailed]);
        assert!(s.is_logged_in());
        // A late answer (UDP was only slow) still counts.
        let observed = ep("203.0.113.1:1000");
        s.handle_udp(
            t,
            "10.9.9.9:7777".parse().unwrap(),
            UdpMessage::BindingResponse {
                observed,
                tcp_observed: None,
            },
        );
        assert_eq!(s.udp_observed(), Some(observed));
    }

    #[test]
    fn no_token_no_binding() {
        let now = Instant::now();
        let (mut s, _) = logged_in(now, None);
        assert_eq!(s.poll_udp_transmit(), None);
        assert_eq!(s.poll_timeout(), Some(now + Duration::from_secs(20)));
    }

    #[test]
    fn idle_server_is_detected_and_pings_keep_it_alive() {
        let now = Instant::now();
        let (mut s, _) = logged_in(now, None);
        let t = now + Duration::from_secs(15);
        s.handle_packet(t, Packet::Ping(PacketPing { ping_id: 1 }));
        s.handle_timeout(now + Duration::from_secs(25));
        assert!(s.is_logged_in(), "a ping at 15 s keeps it alive until 35 s");
        s.handle_timeout(now + Duration::from_secs(35));
        assert!(s.is_closed());
        assert!(drain_events(&mut s).contains(&SessionEvent::Disconnected {
            reason: SessionEnd::IdleTimeout
        }));
    }

    #[test]
    fn brokering_packets_become_events() {
        let now = Instant::now();
        let (mut s, _) = logged_in(now, None);
        let peer = Uuid::new_v4();
        let private = ep("192.168.1.5:4000");
        s.handle_packet(
            now,
            Packet::ConnectionRequest(PacketConnectionRequest {
                uuid: peer,
                private_endpoint: private,
                hints: None,
            }),
        );
        s.handle_packet(
            now,
            Packet::ConnectionRequestAccept(PacketConnectionRequestAccept {
                uuid: peer,
                private_endpoint: private,
                hints: None,
            }),
        );
        s.handle_packet(
            now,
            Packet::ConnectionRequestDenied(PacketConnectionRequestDenied { uuid: peer }),
        );
        s.handle_packet(
            now,
            Packet::ClientInfo(PacketClientInfo {
                uuid: peer,
                public_endpoint: ep("203.0.113.9:5000"),
                tcp_endpoint: Some(ep("203.0.113.9:5001")),
                link_secret: Some([3; 32]),
                relay_id: None,
            }),
        );
        assert_eq!(
            drain_events(&mut s),
            vec![
                SessionEvent::IncomingRequest {
                    peer,
                    private_endpoint: private,
                    hints: None,
                },
                SessionEvent::Accepted {
                    peer,
                    private_endpoint: private,
                    hints: None,
                },
                SessionEvent::Denied { peer },
                SessionEvent::ClientInfo {
                    peer,
                    public_endpoint: ep("203.0.113.9:5000"),
                    tcp_endpoint: Some(ep("203.0.113.9:5001")),
                    link_secret: Some([3; 32]),
                    relay_id: None,
                },
            ]
        );
    }

    #[test]
    fn commands_need_a_login() {
        let now = Instant::now();
        let mut s = Session::new(now, &Identity::generate(), &EXPORTER, timings());
        s.poll_transmit();
        let peer = Uuid::new_v4();
        let private = ep("192.168.1.5:4000");
        assert_eq!(
            s.request(peer, private, LinkHints::default()),
            Err(NotLoggedIn::LoggingIn)
        );
        s.handle_packet(now, Packet::Connected(PacketConnected::default()));
        s.request(peer, private, LinkHints::default()).unwrap();
        s.accept(peer, private, LinkHints::default()).unwrap();
        s.deny(peer).unwrap();
        assert_eq!(
            std::iter::from_fn(|| s.poll_transmit()).collect::<Vec<_>>(),
            vec![
                Packet::ConnectionRequest(PacketConnectionRequest {
                    uuid: peer,
                    private_endpoint: private,
                    hints: None,
                }),
                Packet::ConnectionRequestAccept(PacketConnectionRequestAccept {
                    uuid: peer,
                    private_endpoint: private,
                    hints: None,
                }),
                Packet::ConnectionRequestDenied(PacketConnectionRequestDenied { uuid: peer }),
            ]
        );
        s.close("bye");
        assert_eq!(
            s.poll_transmit(),
            Some(Packet::Disconnect(PacketDisconnect::new("bye")))
        );
        assert_eq!(s.deny(peer), Err(NotLoggedIn::Closed));
    }

    #[test]
    fn protocol_violations_close_with_invalid_packet() {
        let now = Instant::now();
        // Brokering before login.
        let mut s = Session::new(now, &Identity::generate(), &EXPORTER, timings());
        s.poll_transmit();
        s.handle_packet(
            now,
            Packet::ConnectionRequestDenied(PacketConnectionRequestDenied {
                uuid: Uuid::new_v4(),
            }),
        );
        assert_eq!(
            s.poll_transmit(),
            Some(Packet::Disconnect(PacketDisconnect::from(
                DisconnectReason::InvalidPacket
            )))
        );
        assert!(s.is_closed());
        // A second Connected.
        let (mut s, _) = logged_in(now, None);
        s.handle_packet(now, Packet::Connected(PacketConnected::default()));
        assert!(s.is_closed());
        // A Pong from the server.
        let (mut s, _) = logged_in(now, None);
        s.handle_packet(now, Packet::Pong(PacketPong { ping_id: 1 }));
        assert!(s.is_closed());
        assert!(matches!(
            drain_events(&mut s).as_slice(),
            [SessionEvent::Disconnected {
                reason: SessionEnd::ProtocolViolation(_)
            }]
        ));
        // Nothing is handled after close.
        s.handle_packet(now, Packet::Ping(PacketPing { ping_id: 1 }));
        assert!(
            s.poll_transmit()
                .is_some_and(|p| matches!(p, Packet::Disconnect(_)))
        );
        assert!(s.poll_transmit().is_none());
    }

    #[test]
    fn transport_loss_is_reported_once() {
        let now = Instant::now();
        let (mut s, _) = logged_in(now, None);
        s.handle_transport_closed(TransportError::Closed);
        s.handle_transport_closed(TransportError::WriteTimeout);
        assert_eq!(
            drain_events(&mut s),
            vec![SessionEvent::Disconnected {
                reason: SessionEnd::Transport(TransportError::Closed)
            }]
        );
    }

    /// Logged in to a version-3 server that offers both relays.
    fn logged_in_v3(now: Instant, key: [u8; 32]) -> Session {
        let id = Identity::generate();
        let mut s = Session::new(now, &id, &EXPORTER, timings());
        s.set_binding_key(key);
        assert!(matches!(s.poll_transmit(), Some(Packet::Connect(_))));
        s.handle_packet(
            now,
            Packet::Connected(PacketConnected {
                udp_token: Some([4; 16]),
                session: Some(chatr_proto::SessionParams {
                    version: 3,
                    features: SessionFeatures::RELAY_UDP.with(SessionFeatures::RELAY_TLS),
                    nat_probe_ports: vec![7778],
                }),
            }),
        );
        s
    }

    #[test]
    fn a_version3_server_gets_authenticated_bindings_with_rising_counters() {
        let now = Instant::now();
        let key = [0x42; 32];
        let mut s = logged_in_v3(now, key);
        assert_eq!(s.server_version(), 3);
        assert!(s.features().contains(SessionFeatures::RELAY_TLS));
        assert_eq!(s.nat_probe_ports(), &[7778]);
        let first = s.poll_udp_transmit().unwrap();
        assert!(first.verify_binding_auth(&key), "{first:?}");
        let UdpMessage::BindingRequestAuth {
            counter: c1, token, ..
        } = first
        else {
            panic!("{first:?}");
        };
        assert_eq!(token, [4; 16]);
        s.handle_timeout(now + timings().binding_interval);
        let UdpMessage::BindingRequestAuth { counter: c2, .. } = s.poll_udp_transmit().unwrap()
        else {
            panic!("a retry must be authenticated too");
        };
        assert!(c2 > c1);
    }

    #[test]
    fn a_version2_server_gets_the_plain_binding_even_with_a_key() {
        let now = Instant::now();
        let id = Identity::generate();
        let mut s = Session::new(now, &id, &EXPORTER, timings());
        s.set_binding_key([1; 32]);
        s.poll_transmit();
        s.handle_packet(
            now,
            Packet::Connected(PacketConnected {
                udp_token: Some([4; 16]),
                session: None,
            }),
        );
        assert_eq!(
            s.poll_udp_transmit(),
            Some(UdpMessage::BindingRequest { token: [4; 16] })
        );
        // Relay packets do not exist on such a session.
        s.handle_packet(
            now,
            Packet::RelayClose(chatr_proto::PacketRelayClose {
                relay_id: chatr_proto::RelayId([1; 8]),
                reason: "idle".into(),
            }),
        );
        assert!(s.is_closed());
    }

    #[test]
    fn a_relay_the_server_closes_is_reported_and_ours_are_closed_on_request() {
        let now = Instant::now();
        let mut s = logged_in_v3(now, [2; 32]);
        drain_events(&mut s);
        s.handle_packet(
            now,
            Packet::RelayClose(chatr_proto::PacketRelayClose {
                relay_id: chatr_proto::RelayId([1; 8]),
                reason: "idle".into(),
            }),
        );
        assert_eq!(
            drain_events(&mut s),
            vec![SessionEvent::RelayClosed {
                relay: chatr_proto::RelayId([1; 8]),
                reason: "idle".into()
            }]
        );
        while s.poll_transmit().is_some() {}
        s.close_relay(chatr_proto::RelayId([3; 8]));
        assert_eq!(
            s.poll_transmit(),
            Some(Packet::RelayClose(chatr_proto::PacketRelayClose {
                relay_id: chatr_proto::RelayId([3; 8]),
                reason: String::new(),
            }))
        );
    }
}
