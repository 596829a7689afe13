//! The relay: forwarding the datagrams of an accepted exchange between its two
//! parties, for clients that cannot reach each other directly.
//!
//! # Where this sits in the flow
//!
//! 1. Two version-3 sessions finish an exchange: B accepted A's ConnectionRequest.
//!    A's session machine asks [`RelayBroker::open`] for a relay with a fresh random
//!    [`RelayId`]; if relaying is on and the caps allow it, both parties get that id in
//!    their `PacketClientInfo`. No exchange, no relay: the server never relays between
//!    clients that did not both consent through ConnectionRequest and Accept.
//! 2. Each party may then send datagrams for the other (QUIC packets, punch probes):
//!    - **UDP relay**: `00 'C' 'H' 'R' 30 ‖ relay id ‖ datagram` to the Connect UDP
//!      port. It is accepted only from the UDP endpoint that party's session bound with
//!      an authenticated binding (`docs/PROTOCOL.md` §7), so a third party who sees or
//!      guesses a relay id can neither inject from elsewhere nor redirect the relay.
//!    - **TLS relay**: `PacketRelayData` inside the party's own TLS session.
//! 3. The server forwards each datagram to the other party as `… 31 ‖ relay id ‖
//!    datagram`: over UDP to its bound endpoint when that party last sent over UDP (or
//!    has sent nothing yet but has a binding), else as `PacketRelayData` in its TLS
//!    session ([`RelayOut`], a bounded per-session queue).
//!
//! The relay only ever sees QUIC ciphertext and authenticated probes: the parties'
//! link is end-to-end encrypted and pinned to their ed25519 keys.
//!
//! Limits ([`crate::RelayConfig`]): a cap on relays for the server and per client,
//! byte-rate token buckets per client and for the whole server ([`ByteBucket`]), a
//! bounded TLS queue per session, and an idle expiry ([`Relay::sweep`]). Every drop is
//! counted by cause in `/metrics`.
//!
//! In a cluster the two parties may be on different nodes: the relay lives on the
//! initiator's node and the other node passes the datagrams on over NATS (`remote`),
//! admitted against the same limits on the relay's node.

mod byte_bucket;
mod link;
mod remote;
mod udp_batch;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::Instant;

use chatr_proto::{RelayId, SessionFeatures};
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use tokio::sync::mpsc;
use uuid::Uuid;

pub(crate) use self::byte_bucket::ByteBucket;
pub(crate) use self::link::{RelayLink, Transport};
use self::remote::{Hop, HopKind, RemoteLink};
pub(crate) use self::udp_batch::UdpForward;
use crate::config::RelayConfig;
use crate::hub::{Hub, SessionShared};
use crate::metrics::{Metrics, RelayCloseReason, RelayDrop, RelayOpenResult};

/// What a session's TLS writer is asked to send for the relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RelayOut {
    /// A relayed datagram for this session's client (`PacketRelayData`).
    Data(RelayId, bytes::Bytes),
    /// The relay is over (`PacketRelayClose`).
    Closed(RelayId, &'static str),
}

/// How the session machine opens and closes relays (the real [`Relay`], or a
/// stand-in in tests). Calls are synchronous lookups in memory.
pub(crate) trait RelayBroker: Send + Sync {
    /// What a version-3 session is offered.
    fn features(&self) -> SessionFeatures;
    /// Opens relay `id` between the two parties of an accepted exchange; `false`
    /// when relaying is off or a cap is reached.
    fn open(&self, parties: [Uuid; 2], id: RelayId, now: Instant) -> bool;
    /// Party `by` no longer needs relay `id`.
    fn close(&self, id: RelayId, by: Uuid);
}

/// A broker that never relays (tests, and a server built without a relay).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct NoRelay;

impl RelayBroker for NoRelay {
    fn features(&self) -> SessionFeatures {
        SessionFeatures::default()
    }
    fn open(&self, _: [Uuid; 2], _: RelayId, _: Instant) -> bool {
        false
    }
    fn close(&self, _: RelayId, _: Uuid) {}
}

/// What the relay keeps per client (UUID).
#[derive(Debug)]
struct ClientRelay {
    links: usize,
    bucket: ByteBucket,
}

/// The relay. Cheap to clone; clones share state.
#[derive(Debug, Clone)]
pub(crate) struct Relay {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: RelayConfig,
    hub: Hub,
    metrics: Arc<Metrics>,
    links: DashMap<RelayId, Arc<RelayLink>>,
    /// Relays living on another node whose party here is one of ours (clusters only).
    remote: DashMap<RelayId, Arc<RemoteLink>>,
    clients: DashMap<Uuid, ClientRelay>,
    total: Mutex<ByteBucket>,
    /// The Connect UDP socket, for forwarding what arrives over TLS to a UDP party.
    udp: OnceLock<Arc<tokio::net::UdpSocket>>,
    /// Where `RelayLink` activity timestamps count from.
    epoch: Instant,
}

/// Why a relayed datagram was not forwarded (counted in `/metrics`).
pub(crate) type Dropped = RelayDrop;

impl Relay {
    /// A relay with `config`, finding sessions through `hub`, started at `now`.
    pub(crate) fn new(config: RelayConfig, hub: Hub, metrics: Arc<Metrics>, now: Instant) -> Self {
        let total = ByteBucket::new(config.total_rate, config.total_burst, now);
        Self {
            inner: Arc::new(Inner {
                config,
                hub,
                metrics,
                links: DashMap::new(),
                remote: DashMap::new(),
                clients: DashMap::new(),
                total: Mutex::new(total),
                udp: OnceLock::new(),
                epoch: now,
            }),
        }
    }

    /// A handle that does not keep the relay alive (the cluster's).
    pub(crate) fn downgrade(&self) -> WeakRelay {
        WeakRelay(Arc::downgrade(&self.inner))
    }

    /// Gives the relay the Connect UDP socket (once, when the UDP port starts).
    pub(crate) fn set_udp_socket(&self, socket: Arc<tokio::net::UdpSocket>) {
        let _ = self.inner.udp.set(socket);
    }

    /// The configuration.
    pub(crate) fn config(&self) -> &RelayConfig {
        &self.inner.config
    }

    /// The relay with `id`, if open.
    pub(crate) fn link(&self, id: &RelayId) -> Option<Arc<RelayLink>> {
        self.inner.links.get(id).map(|l| Arc::clone(l.value()))
    }

    fn elapsed_ms(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.inner.epoch).as_millis())
            .unwrap_or(u64::MAX)
    }

    /// Takes `bytes` from the sender's and the server's buckets, or says which refused.
    fn admit(&self, sender: Uuid, bytes: usize, now: Instant) -> Result<(), Dropped> {
        if self.admit_prefix(sender, std::iter::once(bytes), now) == 1 {
            Ok(())
        } else {
            Err(RelayDrop::RateLimited)
        }
    }

    /// Takes the datagrams of `sizes` from the sender's and the server's buckets in
    /// order, as long as both have room; returns how many were admitted. A burst that
    /// overruns the rate loses its tail, not all of it.
    fn admit_prefix(
        &self,
        sender: Uuid,
        sizes: impl Iterator<Item = usize>,
        now: Instant,
    ) -> usize {
        let config = &self.inner.config;
        let mut client = (config.client_rate != 0).then(|| {
            self.inner
                .clients
                .entry(sender)
                .or_insert_with(|| ClientRelay {
                    links: 0,
                    bucket: ByteBucket::new(config.client_rate, config.client_burst, now),
                })
        });
        let mut total = (config.total_rate != 0).then(|| {
            self.inner
                .total
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
        });
        let mut admitted = 0;
        for size in sizes {
            if let Some(client) = client.as_mut()
                && !client.bucket.try_take(size, now)
            {
                break;
            }
            if let Some(total) = total.as_mut()
                && !total.try_take(size, now)
            {
                if let Some(client) = client.as_mut() {
                    client.bucket.refund(size);
                }
                break;
            }
            admitted += 1;
        }
        admitted
    }

    /// Where datagrams for party `to` of `link` go now.
    fn target(&self, link: &RelayLink, to: usize) -> Result<Target, Dropped> {
        let uuid = link.party(to);
        let Some(session) = self.inner.hub.session_of(&uuid) else {
            // On another node of the cluster: hop there.
            return self
                .inner
                .hub
                .cluster()
                .route_of(&uuid)
                .map(Target::Remote)
                .ok_or(RelayDrop::PeerOffline);
        };
        self.local_target(&session, link.via(to))
    }

    /// Where datagrams for `session`, which last sent over `via`, go.
    fn local_target(
        &self,
        session: &SessionShared,
        via: Option<Transport>,
    ) -> Result<Target, Dropped> {
        let udp = session.udp_endpoint();
        let queue = session.relay_queue();
        let use_udp = match via {
            Some(Transport::Udp) => udp.is_some(),
            Some(Transport::Tls) => false,
            None => udp.is_some(),
        };
        match (use_udp, udp, queue) {
            (true, Some(addr), _) => Ok(Target::Udp(addr)),
            (_, _, Some(queue)) if self.inner.config.tls => Ok(Target::Tls(queue.clone())),
            (_, Some(addr), _) => Ok(Target::Udp(addr)),
            _ => Err(RelayDrop::PeerOffline),
        }
    }

    /// Forwards one datagram that arrived in `sender`'s TLS session for relay `id`.
    pub(crate) fn forward_tls(
        &self,
        sender: &SessionShared,
        id: RelayId,
        datagram: bytes::Bytes,
        now: Instant,
    ) {
        let metrics = &self.inner.metrics;
        if !self.inner.config.tls {
            metrics.relay_dropped(RelayDrop::Disabled);
            return;
        }
        let Some(link) = self.link(&id) else {
            if let Some(remote) = self.remote_link(&id) {
                // Its home is another node: admitted there.
                if remote.party != sender.uuid {
                    metrics.relay_dropped(RelayDrop::Stranger);
                    return;
                }
                remote.sent(Transport::Tls, self.elapsed_ms(now));
                let kind = HopKind::ToHome(Transport::Tls);
                if !self.hop(&remote.home, kind, id, sender.uuid, &datagram) {
                    metrics.relay_dropped(RelayDrop::QueueFull);
                }
                return;
            }
            metrics.relay_dropped(RelayDrop::UnknownRelay);
            // Tell the client once per datagram: its relay is gone (expired, or never
            // was); it stops using it. Best effort, like the datagram itself.
            if let Some(queue) = sender.relay_queue() {
                let _ = queue.try_send(RelayOut::Closed(id, "unknown relay"));
            }
            return;
        };
        let Some(from) = link.index_of(&sender.uuid) else {
            metrics.relay_dropped(RelayDrop::Stranger);
            return;
        };
        if let Err(cause) = self.admit(sender.uuid, datagram.len(), now) {
            metrics.relay_dropped(cause);
            return;
        }
        link.record(from, Transport::Tls, self.elapsed_ms(now));
        let to = 1 - from;
        match self.target(&link, to) {
            Ok(Target::Tls(queue)) => self.push_tls(&queue, id, datagram),
            Ok(Target::Udp(addr)) => self.send_udp_one(addr, id, &datagram),
            Ok(Target::Remote(node)) => self.push_remote(&node, id, link.party(to), &datagram),
            Err(cause) => metrics.relay_dropped(cause),
        }
    }

    /// The relay with `id` living on another node, if one of our sessions is its party.
    fn remote_link(&self, id: &RelayId) -> Option<Arc<RemoteLink>> {
        self.inner.remote.get(id).map(|l| Arc::clone(l.value()))
    }

    /// Sends a hop to `node` over the cluster; `false` if it cannot go now.
    fn hop(&self, node: &str, kind: HopKind, id: RelayId, party: Uuid, datagram: &[u8]) -> bool {
        let cluster = self.inner.hub.cluster();
        let Some(me) = cluster.node_id() else {
            return false;
        };
        cluster.relay_hop(node, Hop::encode(kind, &id, &party, &me, datagram))
    }

    /// Forwards a datagram of relay `id` (admitted here) to party `to` on `node`.
    fn push_remote(&self, node: &str, id: RelayId, to: Uuid, datagram: &[u8]) {
        if !self.hop(node, HopKind::ToParty, id, to, datagram) {
            self.inner.metrics.relay_dropped(RelayDrop::QueueFull);
        }
    }

    /// Another node's session `party` is the responder of relay `id`, which lives on
    /// node `home`: its datagrams hop there. `false` (the exchange is not relayed for
    /// that party) when relaying is off or this node's cap is reached.
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    pub(crate) fn adopt(&self, id: RelayId, home: String, party: Uuid, now: Instant) -> bool {
        let config = &self.inner.config;
        if !config.enabled || self.inner.remote.len() >= config.max_links {
            self.inner.metrics.relay_open(if config.enabled {
                RelayOpenResult::ServerCap
            } else {
                RelayOpenResult::Disabled
            });
            return false;
        }
        tracing::info!(relay = %id, %party, %home, "relay on another node adopted");
        let link = RemoteLink::new(home, party, self.elapsed_ms(now));
        self.inner.remote.insert(id, Arc::new(link));
        true
    }

    /// A hop another node sent here. Returns the party it came from and that party's
    /// node, so the cluster can route to it.
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    pub(crate) fn on_hop(&self, bytes: &[u8], now: Instant) -> Option<(Uuid, String)> {
        let metrics = &self.inner.metrics;
        let Some(hop) = Hop::parse(bytes) else {
            metrics.relay_dropped(RelayDrop::Malformed);
            return None;
        };
        match hop.kind {
            HopKind::ToHome(transport) => {
                let Some(link) = self.link(&hop.id) else {
                    metrics.relay_dropped(RelayDrop::UnknownRelay);
                    return None;
                };
                let Some(from) = link.index_of(&hop.party) else {
                    metrics.relay_dropped(RelayDrop::Stranger);
                    return None;
                };
                if let Err(cause) = self.admit(hop.party, hop.datagram.len(), now) {
                    metrics.relay_dropped(cause);
                } else {
                    link.record(from, transport, self.elapsed_ms(now));
                    let to = 1 - from;
                    match self.target(&link, to) {
                        Ok(Target::Tls(queue)) => {
                            self.push_tls(
                                &queue,
                                hop.id,
                                bytes::Bytes::copy_from_slice(hop.datagram),
                            );
                        }
                        Ok(Target::Udp(addr)) => self.send_udp_one(addr, hop.id, hop.datagram),
                        Ok(Target::Remote(node)) => {
                            self.push_remote(&node, hop.id, link.party(to), hop.datagram);
                        }
                        Err(cause) => metrics.relay_dropped(cause),
                    }
                }
                Some((hop.party, hop.node.to_owned()))
            }
            HopKind::ToParty => {
                let Some(remote) = self.remote_link(&hop.id).filter(|r| r.party == hop.party)
                else {
                    metrics.relay_dropped(RelayDrop::UnknownRelay);
                    return None;
                };
                remote.touch(self.elapsed_ms(now));
                let Some(session) = self.inner.hub.session_of(&hop.party) else {
                    metrics.relay_dropped(RelayDrop::PeerOffline);
                    return None;
                };
                match self.local_target(&session, remote.via()) {
                    Ok(Target::Tls(queue)) => {
                        self.push_tls(&queue, hop.id, bytes::Bytes::copy_from_slice(hop.datagram))
                    }
                    Ok(Target::Udp(addr)) => self.send_udp_one(addr, hop.id, hop.datagram),
                    Ok(Target::Remote(_)) => metrics.relay_dropped(RelayDrop::PeerOffline),
                    Err(cause) => metrics.relay_dropped(cause),
                }
                None
            }
            HopKind::Close => {
                self.close(hop.id, hop.party);
                Some((hop.party, hop.node.to_owned()))
            }
            HopKind::Closed(reason) => {
                let removed = self
                    .inner
                    .remote
                    .remove_if(&hop.id, |_, r| r.party == hop.party);
                if removed.is_some()
                    && let Some(session) = self.inner.hub.session_of(&hop.party)
                    && let Some(queue) = session.relay_queue()
                {
                    let _ = queue.try_send(RelayOut::Closed(hop.id, reason.message()));
                }
                None
            }
        }
    }

    fn push_tls(&self, queue: &mpsc::Sender<RelayOut>, id: RelayId, datagram: bytes::Bytes) {
        let len = datagram.len();
        match queue.try_send(RelayOut::Data(id, datagram)) {
            Ok(()) => self.inner.metrics.relay_forwarded(Transport::Tls, len),
            Err(_) => self.inner.metrics.relay_dropped(RelayDrop::QueueFull),
        }
    }

    fn send_udp_one(&self, addr: SocketAddr, id: RelayId, datagram: &[u8]) {
        let Some(socket) = self.inner.udp.get() else {
            self.inner.metrics.relay_dropped(RelayDrop::SendFailed);
            return;
        };
        let mut out = Vec::with_capacity(chatr_proto::udp::RELAY_HEADER_LEN + datagram.len());
        out.extend_from_slice(&chatr_proto::udp::relay_header(
            chatr_proto::udp::TYPE_RELAY_FROM_SERVER,
            &id,
        ));
        out.extend_from_slice(datagram);
        match socket.try_send_to(&out, crate::udp::map_destination(socket, addr)) {
            Ok(_) => self
                .inner
                .metrics
                .relay_forwarded(Transport::Udp, datagram.len()),
            Err(_) => self.inner.metrics.relay_dropped(RelayDrop::SendFailed),
        }
    }

    /// Sends an already-rewritten relayed datagram as it is.
    fn send_udp_raw(&self, addr: SocketAddr, datagram: &[u8]) {
        let Some(socket) = self.inner.udp.get() else {
            self.inner.metrics.relay_dropped(RelayDrop::SendFailed);
            return;
        };
        let inner = datagram
            .len()
            .saturating_sub(chatr_proto::udp::RELAY_HEADER_LEN);
        match socket.try_send_to(datagram, crate::udp::map_destination(socket, addr)) {
            Ok(_) => self.inner.metrics.relay_forwarded(Transport::Udp, inner),
            Err(_) => self.inner.metrics.relay_dropped(RelayDrop::SendFailed),
        }
    }

    /// Removes relay `id` and tells its parties why (those with a TLS session).
    fn remove(&self, id: &RelayId, reason: RelayCloseReason, notify: [bool; 2]) {
        let Some((_, link)) = self.inner.links.remove(id) else {
            return;
        };
        self.inner.metrics.relay_closed(reason);
        for (i, tell) in notify.into_iter().enumerate() {
            let uuid = link.party(i);
            if let Entry::Occupied(mut client) = self.inner.clients.entry(uuid) {
                let state = client.get_mut();
                state.links = state.links.saturating_sub(1);
                if state.links == 0 {
                    client.remove();
                }
            }
            if !tell {
                continue;
            }
            match self.inner.hub.session_of(&uuid) {
                Some(session) => {
                    if let Some(queue) = session.relay_queue() {
                        let _ = queue.try_send(RelayOut::Closed(*id, reason.message()));
                    }
                }
                None => {
                    if let Some(node) = self.inner.hub.cluster().route_of(&uuid) {
                        self.hop(&node, HopKind::Closed(reason), *id, uuid, &[]);
                    }
                }
            }
        }
        tracing::info!(relay = %id, initiator = %link.party(0), responder = %link.party(1), reason = reason.message(), "relay closed");
    }

    /// Closes every relay that carried nothing for the idle timeout. Returns how many.
    pub(crate) fn sweep(&self, now: Instant) -> usize {
        let now_ms = self.elapsed_ms(now);
        let idle_ms = u64::try_from(self.inner.config.idle_timeout.as_millis()).unwrap_or(u64::MAX);
        let idle: Vec<RelayId> = self
            .inner
            .links
            .iter()
            .filter(|l| now_ms.saturating_sub(l.last_active_ms()) >= idle_ms)
            .map(|l| *l.key())
            .collect();
        for id in &idle {
            self.remove(id, RelayCloseReason::Idle, [true, true]);
        }
        // Relays of other nodes idle as long: their home closes them too, and says so.
        self.inner
            .remote
            .retain(|_, r| now_ms.saturating_sub(r.last_active_ms()) < idle_ms);
        idle.len()
    }

    /// Handles the relayed datagrams of one UDP receive from `source` (see
    /// [`UdpForward`]).
    pub(crate) fn forward_udp(
        &self,
        source: SocketAddr,
        batch: &mut [u8],
        stride: usize,
        now: Instant,
    ) -> UdpForward {
        udp_batch::forward(self, source, batch, stride, now)
    }
}

impl RelayBroker for Relay {
    fn features(&self) -> SessionFeatures {
        let config = &self.inner.config;
        if !config.enabled {
            return SessionFeatures::default();
        }
        let udp = SessionFeatures::RELAY_UDP;
        if config.tls {
            udp.with(SessionFeatures::RELAY_TLS)
        } else {
            udp
        }
    }

    fn open(&self, parties: [Uuid; 2], id: RelayId, now: Instant) -> bool {
        let config = &self.inner.config;
        let metrics = &self.inner.metrics;
        if !config.enabled {
            metrics.relay_open(RelayOpenResult::Disabled);
            return false;
        }
        if self.inner.links.len() >= config.max_links {
            tracing::warn!(
                max = config.max_links,
                "relay cap reached; exchange not relayed"
            );
            metrics.relay_open(RelayOpenResult::ServerCap);
            return false;
        }
        // Reserve a slot for each party, or none.
        let mut reserved = Vec::with_capacity(2);
        for uuid in parties {
            let mut client = self
                .inner
                .clients
                .entry(uuid)
                .or_insert_with(|| ClientRelay {
                    links: 0,
                    bucket: ByteBucket::new(config.client_rate, config.client_burst, now),
                });
            if client.links >= config.max_links_per_client {
                drop(client);
                for undo in reserved {
                    if let Some(mut c) = self.inner.clients.get_mut(&undo) {
                        c.links = c.links.saturating_sub(1);
                    }
                }
                tracing::info!(%uuid, max = config.max_links_per_client, "per-client relay cap reached");
                metrics.relay_open(RelayOpenResult::ClientCap);
                return false;
            }
            client.links += 1;
            reserved.push(uuid);
        }
        let link = Arc::new(RelayLink::new(parties, self.elapsed_ms(now)));
        self.inner.links.insert(id, link);
        metrics.relay_open(RelayOpenResult::Opened);
        tracing::info!(relay = %id, initiator = %parties[0], responder = %parties[1], "relay opened");
        true
    }

    fn close(&self, id: RelayId, by: Uuid) {
        let Some(link) = self.link(&id) else {
            // Living on another node: tell it.
            if let Some((_, remote)) = self.inner.remote.remove_if(&id, |_, r| r.party == by) {
                self.hop(&remote.home, HopKind::Close, id, by, &[]);
            }
            return;
        };
        let Some(from) = link.index_of(&by) else {
            // Only a party may close a relay.
            self.inner.metrics.relay_dropped(RelayDrop::Stranger);
            return;
        };
        let mut notify = [false; 2];
        if let Some(other) = notify.get_mut(1 - from) {
            *other = true;
        }
        self.remove(&id, RelayCloseReason::ClosedByPeer, notify);
    }
}

/// Where one forwarded datagram goes.
#[derive(Debug, Clone)]
pub(crate) enum Target {
    /// To this UDP endpoint, from the Connect UDP port.
    Udp(SocketAddr),
    /// Into this session's TLS queue.
    Tls(mpsc::Sender<RelayOut>),
    /// To the party's node, over the cluster (a hop).
    Remote(String),
}

/// A relay handle that does not keep the relay alive.
#[derive(Debug, Clone)]
#[cfg_attr(not(feature = "cluster"), allow(dead_code))]
pub(crate) struct WeakRelay(Weak<Inner>);

#[cfg_attr(not(feature = "cluster"), allow(dead_code))]
impl WeakRelay {
    /// The relay, while it exists.
    pub(crate) fn upgrade(&self) -> Option<Relay> {
        self.0.upgrade().map(|inner| Relay { inner })
    }
}
