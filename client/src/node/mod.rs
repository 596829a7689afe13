//! The orchestrator: the library API that programs embed (and the CLI uses).
//!
//! A [`Client`] owns one UDP socket on port P, wrapped by the link layer's
//! [`LinkEndpoint`] (QUIC, the relay paths, and a side channel for every non-QUIC
//! datagram), and one Connect session from the same port P. Its background tasks:
//!
//! * **session events** → brokering packets go to the link attempt waiting for
//!   that peer; incoming requests queue up for [`Client::next_request`];
//! * **control datagrams** from the socket (direct or relayed) → punch and path
//!   probes go to the link of their exchange id, binding responses to the session,
//!   STUN answers to [`Client::stun_probe`];
//! * **incoming QUIC links** → to the responder attempt expecting them (by the
//!   link's virtual address, else by key).
//!
//! A link attempt ([`Client::request_link`] as initiator, [`IncomingRequest::accept`]
//! as responder) is a sans-IO [`LinkAgent`] driven by a thin
//! task (`link_driver`): it sends the request or the accept, waits for the server's
//! answers, punches, and (initiator) opens one QUIC connection to the peer's virtual
//! address at once when ClientInfo arrives. The socket sends that connection's
//! datagrams on the paths the agent chooses — the relay and the peer's plausible
//! direct addresses while it is set up, then the confirmed direct path, else the
//! relay — so the first packets never wait for a punch that may fail, and a working
//! direct path is still used within about 2 RTT. The responder accepts the link only
//! from the pinned key. After link-up the agent keeps the link's paths in a
//! background task (heartbeats, fall back to the relay, move to a direct path that
//! opens). Direct links do not depend on the session once made: they survive the
//! server going away and coming back.
//!
//! One more background task asks the router for a port mapping of the socket
//! ([`crate::portmap`]); a grant joins our link hints, so peers punch toward it too.

mod birthday;
mod ipv6_offer;
mod link_driver;
// Main wires the setters up only in part so far (nothing calls set_nat, set_port_mapped
// or set_ipv6 yet); without this the workspace does not pass clippy -D warnings.
#[allow(dead_code)]
mod local_hints;
mod nat_probe;
mod options;
mod presence;
mod report;
mod shared;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chatr_proto::Endpoint;
use chatr_proto::LinkHints;
use ed25519_dalek::VerifyingKey;
use futures_util::future::BoxFuture;
use tokio::sync::{Mutex as AsyncMutex, mpsc, watch};
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;
use uuid::Uuid;

pub(crate) use local_hints::LocalHints;
pub use options::ClientOptions;
pub use presence::{ContactPresence, PresenceView};
pub use report::{AttemptReport, AttemptResult, LinkReport, TransferReport, TriedCandidate};

use self::link_driver::{DriverContext, run_attempt};
use self::shared::{Brokered, ClientInfo, ExchangeGuard, Shared};
use crate::error::ClientError;
use crate::identity::Identity;
use crate::link::{ControlRx, LinkEndpoint, LinkError, PeerLink, RawSender, Source};
use crate::net::{bind_udp_dual_stack, resolve, socket_is_dual_stack};
use crate::path::{AgentConfig, LinkAgent, LocalInfo};
use crate::portmap::PortMapStatus;
use crate::punch::{exchange_id_of, is_probe};
use crate::session::{
    ConnectError, DatagramOut, OnlineInfo, PresenceWanted, SessionError, SessionEvent,
    SessionHandle, SessionStatus, spawn_session,
};
use crate::stun;

impl DatagramOut for RawSender {
    fn send_datagram<'a>(
        &'a self,
        to: SocketAddr,
        datagram: &'a [u8],
    ) -> BoxFuture<'a, std::io::Result<()>> {
        Box::pin(self.send_raw(to, datagram))
    }
}

/// A running Chatr client. Cheap to clone; every clone is the same client.
/// Dropping the last clone stops it (prefer [`Client::shutdown`], which waits).
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    identity: Identity,
    options: ClientOptions,
    session: SessionHandle,
    endpoint: Arc<LinkEndpoint>,
    raw: RawSender,
    port: u16,
    shared: Arc<Shared>,
    /// What our requests and accepts tell peers about us.
    hints: Arc<local_hints::LocalHints>,
    /// Our IPv6 candidates (part of `hints`).
    ipv6: Arc<ipv6_offer::Ipv6Offer>,
    /// What the router granted (see [`Client::port_mapping`]).
    port_mapping: tokio::sync::watch::Receiver<PortMapStatus>,
    /// Measures our NAT's behaviour from the link socket.
    prober: nat_probe::Prober,
    requests: AsyncMutex<mpsc::Receiver<QueuedRequest>>,
    presence: watch::Receiver<PresenceView>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    _stop_on_drop: DropGuard,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("uuid", &self.inner.identity.uuid())
            .field("port", &self.inner.port)
            .finish_non_exhaustive()
    }
}

/// A request waiting for [`Client::next_request`]: who, its private endpoint and hints.
type QueuedRequest = (Uuid, Endpoint, Option<LinkHints>);

/// A peer asking us for a link. Answer with [`IncomingRequest::accept`] or
/// [`IncomingRequest::deny`]; dropped unanswered, the server expires it and
/// the peer sees a denial.
#[derive(Debug)]
pub struct IncomingRequest {
    peer: Uuid,
    private_endpoint: Endpoint,
    hints: Option<LinkHints>,
    client: Client,
}

impl IncomingRequest {
    /// The requester's UUID.
    pub fn peer(&self) -> Uuid {
        self.peer
    }

    /// The private endpoint the requester announced.
    pub fn private_endpoint(&self) -> Endpoint {
        self.private_endpoint
    }

    /// Accepts, punches, and waits for the requester's QUIC link, which must
    /// prove `peer_key` (else [`ClientError::KeyMismatch`]).
    pub async fn accept(
        self,
        peer_key: VerifyingKey,
    ) -> Result<(PeerLink, LinkReport), ClientError> {
        self.client
            .respond(self.peer, self.private_endpoint, self.hints, peer_key)
            .await
    }

    /// Denies the request.
    pub async fn deny(self) -> Result<(), ClientError> {
        Ok(self.client.inner.session.deny(self.peer).await?)
    }
}

impl Client {
    /// Binds the UDP socket (port `options.local_port`, 0 = any), starts the
    /// QUIC endpoint on it and the Connect session from the same port, and
    /// returns at once (the session logs in in the background; see
    /// [`Client::wait_online`]).
    pub async fn start(options: ClientOptions) -> Result<Client, ClientError> {
        // An unresolvable server name is the caller's mistake: say so at once.
        let server_addr =
            resolve(&options.server)
                .await
                .map_err(|e| SessionError::Unreachable {
                    server: options.server.to_string(),
                    cause: ConnectError::Resolve(Arc::new(e)),
                })?;
        // Dual-stack whatever the server's family: the session may run over IPv4 while
        // direct paths to peers run over IPv6.
        let socket = bind_udp_dual_stack(options.local_port).map_err(ClientError::Socket)?;
        let dual_stack = socket_is_dual_stack(&socket);
        let mut link_config = options.link.clone();
        // Every link this client makes is path-managed (one virtual address per peer).
        link_config.virtual_only = true;
        let (endpoint, control) =
            LinkEndpoint::new(socket, options.identity.signing_key(), link_config)?;
        let port = endpoint.local_addr().map_err(ClientError::Socket)?.port();
        let endpoint = Arc::new(endpoint);
        let raw = endpoint.raw_sender();

        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let (events_tx, events_rx) = mpsc::channel(64);
        let mut session_config = crate::session::SessionConfig::new(
            options.identity.clone(),
            options.server.clone(),
            options.tls.clone(),
            port,
        );
        session_config.timings = options.session.clone();
        session_config.backoff = options.backoff.clone();
        session_config.presence = options.presence.clone();
        let out: Arc<dyn DatagramOut> = Arc::new(raw.clone());
        let session = spawn_session(
            session_config,
            out,
            endpoint.take_tls_relay(),
            events_tx,
            shutdown.child_token(),
            &tracker,
        );

        let shared = Arc::new(Shared::default());
        let (req_tx, req_rx) = mpsc::channel(options.incoming_queue.max(1));
        let (presence_tx, presence_rx) = watch::channel(PresenceView::default());
        tracker.spawn(session_events(
            events_rx,
            shared.clone(),
            session.clone(),
            req_tx,
            presence_tx,
            tracker.clone(),
            shutdown.clone(),
        ));
        tracker.spawn(route_control(
            control,
            shared.clone(),
            session.clone(),
            shutdown.clone(),
        ));
        tracker.spawn(accept_links(
            endpoint.clone(),
            shared.clone(),
            shutdown.clone(),
        ));
        tracing::info!(uuid = %options.identity.uuid(), port, "client started");

        let hints = Arc::new(local_hints::LocalHints::new(session.clone()));
        let ipv6 = Arc::new(ipv6_offer::Ipv6Offer::new(
            port,
            dual_stack,
            Arc::clone(&hints),
        ));
        ipv6.refresh(None);
        tracker.spawn(ipv6_offer::observe_over_ipv6(ipv6_offer::ObserveContext {
            offer: Arc::clone(&ipv6),
            session: session.clone(),
            shared: shared.clone(),
            raw: raw.clone(),
            server: options.server.clone(),
            online_timeout: options.online_timeout,
            shutdown: shutdown.clone(),
        }));
        // A server on loopback is on this machine: no router lies between, and asking
        // one would send packets off the machine for nothing (tests run like this).
        let mut port_map_config = options.port_mapping.clone();
        if server_addr.ip().is_loopback() {
            port_map_config.mode = crate::portmap::PortMapMode::Off;
        }
        let port_mapping = crate::portmap::spawn(
            port_map_config,
            port,
            hints.clone(),
            shutdown.clone(),
            &tracker,
        );
        let prober = nat_probe::Prober {
            raw: raw.clone(),
            shared: shared.clone(),
            hints: hints.clone(),
            port,
            measured: Arc::new(tokio::sync::watch::channel(None).0),
        };
        tracker.spawn(nat_probe::watch_logins(
            prober.clone(),
            session.clone(),
            shutdown.clone(),
        ));
        Ok(Client {
            inner: Arc::new(Inner {
                identity: options.identity.clone(),
                hints,
                ipv6,
                port_mapping,
                prober,
                session,
                endpoint,
                raw,
                port,
                shared,
                requests: AsyncMutex::new(req_rx),
                presence: presence_rx,
                _stop_on_drop: shutdown.clone().drop_guard(),
                shutdown,
                tracker,
                options,
            }),
        })
    }

    /// Our UUID.
    pub fn uuid(&self) -> Uuid {
        self.inner.identity.uuid()
    }

    /// The local port P shared by the UDP socket and the TCP session.
    pub fn local_port(&self) -> u16 {
        self.inner.port
    }

    /// The session's current state.
    pub fn session_status(&self) -> SessionStatus {
        self.inner.session.status()
    }

    /// The session handle (state changes, raw brokering commands).
    pub fn session(&self) -> &SessionHandle {
        &self.inner.session
    }

    /// What the router granted for our UDP socket, as of now.
    pub fn port_mapping(&self) -> PortMapStatus {
        self.inner.port_mapping.borrow().clone()
    }

    /// Waits (at most `timeout`) until the router has answered or is known not to, and
    /// returns what it granted.
    pub async fn wait_port_mapping(&self, timeout: Duration) -> PortMapStatus {
        let mut rx = self.inner.port_mapping.clone();
        let settled = tokio::time::timeout(timeout, rx.wait_for(PortMapStatus::is_settled)).await;
        match settled {
            Ok(Ok(status)) => status.clone(),
            _ => self.port_mapping(),
        }
    }

    /// Waits until logged in to the Connect server.
    pub async fn wait_online(&self, timeout: Duration) -> Result<OnlineInfo, ClientError> {
        Ok(self.inner.session.wait_online(timeout).await?)
    }

    /// Our contacts' presence as the server tells it (version 3; empty and not
    /// `available` on servers without presence). Set what we share with
    /// [`Client::set_presence`].
    pub fn presence(&self) -> watch::Receiver<PresenceView> {
        self.inner.presence.clone()
    }

    /// Sets whom we share presence with and our status; kept across reconnects.
    pub async fn set_presence(&self, wanted: PresenceWanted) -> Result<(), ClientError> {
        Ok(self.inner.session.set_presence(wanted).await?)
    }

    /// Waits until the server acknowledged our presence (so absent contacts are
    /// offline), or `timeout`. On a server without presence it returns at once with a
    /// view that is not `available`.
    pub async fn wait_presence(&self, timeout: Duration) -> Result<PresenceView, ClientError> {
        let deadline = tokio::time::Instant::now() + timeout;
        self.wait_online(timeout).await?;
        let mut rx = self.presence();
        loop {
            {
                let view = rx.borrow_and_update();
                let online = self.inner.session.online();
                if view.synced || online.is_some_and(|o| !o.presence) {
                    return Ok(view.clone());
                }
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(ClientError::ShuttingDown),
                Err(_) => return Err(ClientError::Timeout("the server's presence answer")),
            }
        }
    }

    /// Asks the server's STUN responder (on its UDP port) which public address
    /// our UDP socket has. Needs the session online (to know the server address).
    pub async fn stun_probe(&self, timeout: Duration) -> Result<SocketAddr, ClientError> {
        let online = self.wait_online(timeout).await?;
        stun_request(&self.inner.shared, &self.inner.raw, online.server, timeout).await
    }

    /// Whether our UDP socket carries IPv6 as well as IPv4 (false only on a host without
    /// IPv6 support).
    pub fn is_dual_stack(&self) -> bool {
        self.inner.ipv6.dual_stack()
    }

    /// The IPv6 endpoints we offer peers now: our interfaces' global addresses with port
    /// P, then our address as the server observed it over IPv6 (when it did). Re-reads
    /// the interfaces.
    pub fn ipv6_candidates(&self) -> Vec<SocketAddr> {
        self.inner
            .ipv6
            .refresh(self.inner.session.online().as_ref())
    }

    /// Our address as the server observed it over IPv6 (any scope, for diagnostics),
    /// when its name has an IPv6 address that answered STUN.
    pub fn ipv6_observed(&self) -> Option<SocketAddr> {
        self.inner.ipv6.observed()
    }

    /// Our NAT's behaviour as measured against the server's NAT probe ports after the
    /// last login (`docs/PROTOCOL.md` §10.7), waiting up to `timeout` for the first
    /// measurement. [`chatr_proto::NatMapping::Unknown`] when the server has no probe
    /// ports or they did not answer; `None` when nothing was measured in time.
    pub async fn nat_behaviour(&self, timeout: Duration) -> Option<chatr_proto::NatHint> {
        let mut rx = self.inner.prober.measured.subscribe();
        let waited = tokio::time::timeout(timeout, rx.wait_for(Option::is_some)).await;
        match waited {
            Ok(Ok(hint)) => *hint,
            _ => None,
        }
    }

    /// Waits for the next peer asking us for a link; `None` once shut down.
    pub async fn next_request(&self) -> Option<IncomingRequest> {
        let mut rx = self.inner.requests.lock().await;
        let (peer, private_endpoint, hints) = tokio::select! {
            r = rx.recv() => r?,
            _ = self.inner.shutdown.cancelled() => return None,
        };
        Some(IncomingRequest {
            peer,
            private_endpoint,
            hints,
            client: self.clone(),
        })
    }

    /// Opens a link to `peer`, which must prove `peer_key`: request via the server,
    /// then QUIC with the pinned key over the best path (direct where the punch opens
    /// one, else the server's relay when it offers one). We are the initiator.
    pub async fn request_link(
        &self,
        peer: Uuid,
        peer_key: VerifyingKey,
    ) -> Result<(PeerLink, LinkReport), ClientError> {
        let (online, guard, brokered) = self.begin_exchange(peer).await?;
        self.inner.ipv6.refresh(Some(&online));
        self.inner.prober.before_attempt(&online).await;
        let mut agent = LinkAgent::initiate(
            std::time::Instant::now(),
            self.agent_config(),
            self.local_info(&online),
            peer,
        );
        agent.set_local_nat(self.inner.hints.nat());
        run_attempt(
            self.driver_context(peer, peer_key, &online),
            agent,
            (guard, brokered),
        )
        .await
    }

    /// The common start of both sides of a link attempt: wait until the
    /// session is online, then claim `peer`'s exchange slot (one attempt per
    /// peer at a time) and its channel of brokered packets.
    async fn begin_exchange(
        &self,
        peer: Uuid,
    ) -> Result<(OnlineInfo, ExchangeGuard, mpsc::Receiver<Brokered>), ClientError> {
        let online = self.wait_online(self.inner.options.online_timeout).await?;
        let (guard, brokered) = self
            .inner
            .shared
            .register_exchange(peer)
            .ok_or(ClientError::AlreadyLinking { peer })?;
        Ok((online, guard, brokered))
    }

    /// Responder side of a link attempt (see [`IncomingRequest::accept`]).
    async fn respond(
        &self,
        peer: Uuid,
        peer_private: Endpoint,
        peer_hints: Option<LinkHints>,
        peer_key: VerifyingKey,
    ) -> Result<(PeerLink, LinkReport), ClientError> {
        let (online, guard, brokered) = self.begin_exchange(peer).await?;
        self.inner.ipv6.refresh(Some(&online));
        self.inner.prober.before_attempt(&online).await;
        let mut agent = LinkAgent::respond(
            std::time::Instant::now(),
            self.agent_config(),
            self.local_info(&online),
            peer,
            peer_private,
        );
        agent.set_local_nat(self.inner.hints.nat());
        if let Some(hints) = peer_hints {
            agent.set_peer_hints(hints);
        }
        run_attempt(
            self.driver_context(peer, peer_key, &online),
            agent,
            (guard, brokered),
        )
        .await
    }

    fn agent_config(&self) -> AgentConfig {
        let options = &self.inner.options;
        AgentConfig {
            punch: options.punch.clone(),
            paths: options.paths.clone(),
            request_timeout: options.request_timeout,
            client_info_timeout: options.client_info_timeout,
            // The QUIC handshake and the responder's confirmation, plus room for the
            // punch's first round trips.
            link_timeout: options.link.handshake_timeout + Duration::from_secs(2),
            ..AgentConfig::default()
        }
    }

    fn local_info(&self, online: &OnlineInfo) -> LocalInfo {
        // Our public address as the server sees it now (the UDP binding may have
        // completed after we came online).
        let now = self
            .inner
            .session
            .online()
            .unwrap_or_else(|| online.clone());
        LocalInfo {
            uuid: self.inner.identity.uuid(),
            private_ip: online.local.ip().to_canonical(),
            public: now.udp_observed.or(now.tcp_observed),
            server_rtt: now.server_rtt,
        }
    }

    fn driver_context(&self, peer: Uuid, key: VerifyingKey, online: &OnlineInfo) -> DriverContext {
        let inner = &self.inner;
        let now = inner.session.online().unwrap_or_else(|| online.clone());
        DriverContext {
            peer,
            key,
            endpoint: Arc::clone(&inner.endpoint),
            session: inner.session.clone(),
            shared: Arc::clone(&inner.shared),
            private_endpoint: self.private_endpoint(online),
            tls_relay: now.tls_relay,
            path_policy: inner.options.path_policy,
            request_timeout: inner.options.request_timeout,
            shutdown: inner.shutdown.clone(),
            tracker: inner.tracker.clone(),
        }
    }

    /// Our private endpoint: the interface address the TCP session uses, with
    /// the UDP socket's port P (even if TCP had to fall back to another port).
    fn private_endpoint(&self, online: &OnlineInfo) -> Endpoint {
        Endpoint {
            ip: online.local.ip().to_canonical(),
            port: Some(self.inner.port),
        }
    }

    /// Stops the client: says goodbye to the server, closes every link, and
    /// waits for the background tasks. Finish your streams first.
    pub async fn shutdown(&self) {
        // Links first, while the session still runs: their last packets (the peer's
        // final acknowledgements, CONNECTION_CLOSE) may need the TLS relay.
        self.inner.endpoint.close().await;
        self.inner.shutdown.cancel();
        self.inner.tracker.close();
        self.inner.tracker.wait().await;
    }
}

/// Asks the STUN responder at `server` (a Connect server's UDP port) which address our
/// socket has, resending every 300 ms until `timeout`.
async fn stun_request(
    shared: &Shared,
    raw: &RawSender,
    server: SocketAddr,
    timeout: Duration,
) -> Result<SocketAddr, ClientError> {
    let txid: stun::TransactionId = rand::random();
    let rx = shared.add_stun(txid);
    let request = stun::binding_request(&txid);
    let deadline = tokio::time::Instant::now() + timeout;
    let mut rx = std::pin::pin!(rx);
    // Resend a few times: UDP may lose the request or the answer.
    let result = loop {
        if let Err(err) = raw.send_raw(server, &request).await {
            shared.cancel_stun(&txid);
            return Err(ClientError::Socket(err));
        }
        let wait = tokio::time::sleep(Duration::from_millis(300));
        tokio::select! {
            r = &mut rx => break r.map_err(|_| ClientError::ShuttingDown),
            _ = wait => {}
        }
        if tokio::time::Instant::now() >= deadline {
            break Err(ClientError::Timeout("the server's STUN answer"));
        }
    };
    shared.cancel_stun(&txid);
    result
}

/// Forwards session events: brokering to waiting attempts, requests to the queue.
async fn session_events(
    mut events: mpsc::Receiver<SessionEvent>,
    shared: Arc<Shared>,
    session: SessionHandle,
    requests: mpsc::Sender<QueuedRequest>,
    presence: watch::Sender<PresenceView>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => break,
            e = events.recv() => match e { Some(e) => e, None => break },
        };
        match event {
            SessionEvent::IncomingRequest {
                peer,
                private_endpoint,
                hints,
            } => {
                let queued = requests.try_send((peer, private_endpoint, hints)).is_ok();
                if !queued {
                    tracing::warn!(%peer, "too many pending link requests; denying");
                    // Not awaited here: the session driver may be waiting for us
                    // to take its next event.
                    let session = session.clone();
                    tracker.spawn(async move {
                        let _ = session.deny(peer).await;
                    });
                }
            }
            SessionEvent::Accepted {
                peer,
                private_endpoint,
                hints,
            } => {
                let routed =
                    shared.route_brokered(peer, Brokered::Accepted(private_endpoint, hints));
                if !routed {
                    tracing::debug!(%peer, "accept for no pending request");
                }
            }
            SessionEvent::Denied { peer } => {
                shared.route_brokered(peer, Brokered::Denied);
            }
            SessionEvent::RelayClosed { relay, reason } => {
                tracing::debug!(%relay, %reason, "the server closed a relay");
                shared.relay_closed(&relay);
            }
            SessionEvent::ClientInfo {
                peer,
                public_endpoint,
                tcp_endpoint,
                link_secret,
                relay_id,
            } => {
                let info = ClientInfo {
                    public_endpoint,
                    tcp_endpoint,
                    link_secret,
                    relay_id,
                };
                let routed = shared.route_brokered(peer, Brokered::ClientInfo(info));
                if !routed {
                    tracing::debug!(%peer, "ClientInfo for no pending exchange");
                }
            }
            SessionEvent::Connected { .. } => {
                let available = session.online().is_some_and(|o| o.presence);
                presence.send_replace(PresenceView {
                    available,
                    ..PresenceView::default()
                });
            }
            SessionEvent::Presence {
                peer,
                status,
                message,
            } => presence.send_modify(|view| view.apply(peer, status, message)),
            SessionEvent::PresenceSynced => {
                presence.send_if_modified(|view| {
                    let changed = !view.synced;
                    view.synced = true;
                    changed
                });
            }
            SessionEvent::Disconnected { reason } => {
                shared.session_lost(&reason.to_string());
                // Nothing is known about anyone while we are offline.
                presence.send_replace(PresenceView::default());
            }
            _ => {}
        }
    }
}

/// Routes the non-QUIC datagrams of the shared socket.
async fn route_control(
    mut control: ControlRx,
    shared: Arc<Shared>,
    session: SessionHandle,
    shutdown: CancellationToken,
) {
    loop {
        let (source, datagram) = tokio::select! {
            _ = shutdown.cancelled() => break,
            d = control.recv() => match d { Some(d) => d, None => break },
        };
        if is_probe(&datagram) {
            if let Some(id) = exchange_id_of(&datagram) {
                shared.route_probe(&id, source, datagram);
            }
            continue;
        }
        // Everything else comes from the server itself, never through the relay.
        let Source::Direct(from) = source else {
            continue;
        };
        if stun::is_stun(&datagram) {
            if let Some((txid, mapped)) = stun::parse_binding_response(&datagram) {
                shared.complete_stun(&txid, mapped);
            }
        } else if let Ok(msg) = chatr_proto::udp::UdpMessage::decode(&datagram) {
            session.deliver_udp(from, msg);
        } else {
            tracing::trace!(%from, len = datagram.len(), "unknown datagram dropped");
        }
    }
}

/// Hands incoming QUIC links to the responder attempt expecting them.
async fn accept_links(
    endpoint: Arc<LinkEndpoint>,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    loop {
        let incoming = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = endpoint.accept() => r,
        };
        match incoming {
            Ok(link) => {
                if let Some(unwanted) = shared.dispatch_incoming(link) {
                    tracing::info!(remote = %unwanted.remote_addr(), "refusing an unexpected peer link");
                    unwanted.refuse("no link was agreed with this key");
                }
            }
            Err(LinkError::EndpointClosed) => break,
            Err(e) => tracing::debug!(error = %e, "incoming link failed"),
        }
    }
}
