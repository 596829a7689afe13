//! The orchestrator: the library API that programs embed (and the CLI uses).
//!
//! A [`Client`] owns one UDP socket on port P, wrapped by the link layer's
//! [`LinkEndpoint`] (QUIC plus a side channel for every non-QUIC datagram),
//! and one Connect session from the same port P. Its background tasks:
//!
//! * **session events** → brokering packets go to the link attempt waiting for
//!   that peer; incoming requests queue up for [`Client::next_request`];
//! * **control datagrams** from the socket → hole-punching probes go to the
//!   [`Punch`] of their exchange id, binding responses to the session, STUN
//!   answers to [`Client::stun_probe`];
//! * **incoming QUIC links** → to the responder attempt expecting that key.
//!
//! A link attempt, initiator side ([`Client::request_link`]): send
//! `PacketConnectionRequest` with our private endpoint (interface address and
//! port P), wait for the accept and `PacketClientInfo`, build the peer's
//! candidates (private, UDP-observed, TCP-observed), punch, then QUIC-connect
//! to the nominated path pinning the peer's key (at once, while the punch keeps
//! nominating until the responder acknowledges). A first QUIC attempt already
//! starts on the peer's UDP-observed endpoint when ClientInfo arrives, raced
//! against the punched one (`link_race`). The responder side
//! ([`IncomingRequest::accept`]) mirrors it and accepts the QUIC link only from
//! the pinned key. Links do not depend on the session once made: they survive
//! the server going away and coming back.

mod link_race;
mod options;
mod punch_driver;
mod report;
mod shared;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chatr_proto::Endpoint;
use ed25519_dalek::VerifyingKey;
use futures_util::future::BoxFuture;
use tokio::sync::{Mutex as AsyncMutex, mpsc, oneshot};
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;
use uuid::Uuid;

pub use options::ClientOptions;
pub use report::{AttemptReport, AttemptResult, LinkReport, TriedCandidate};

use self::link_race::{Linked, RaceFailure, optimistic_target, race_link};
use self::punch_driver::{PunchOutcome, drive_punch};
use self::shared::{Brokered, ClientInfo, ExchangeGuard, Shared};
use crate::error::ClientError;
use crate::identity::Identity;
use crate::link::{ControlRx, IncomingLink, LinkEndpoint, LinkError, PeerLink, RawSender};
use crate::net::{bind_udp, canonical, resolve, wildcard_for};
use crate::punch::{Candidate, LocalNet, Punch, PunchSuccess, Role, exchange_id_of, is_probe};
use crate::session::{
    ConnectError, DatagramOut, OnlineInfo, SessionError, SessionEvent, SessionHandle,
    SessionStatus, spawn_session,
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
    requests: AsyncMutex<mpsc::Receiver<(Uuid, Endpoint)>>,
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

/// A peer asking us for a link. Answer with [`IncomingRequest::accept`] or
/// [`IncomingRequest::deny`]; dropped unanswered, the server expires it and
/// the peer sees a denial.
#[derive(Debug)]
pub struct IncomingRequest {
    peer: Uuid,
    private_endpoint: Endpoint,
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
            .respond(self.peer, self.private_endpoint, peer_key)
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
        // Bind the family the server is reachable on.
        let server_addr =
            resolve(&options.server)
                .await
                .map_err(|e| SessionError::Unreachable {
                    server: options.server.to_string(),
                    cause: ConnectError::Resolve(Arc::new(e)),
                })?;
        let socket =
            bind_udp(wildcard_for(server_addr, options.local_port)).map_err(ClientError::Socket)?;
        let (endpoint, control) =
            LinkEndpoint::new(socket, options.identity.signing_key(), options.link.clone())?;
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
        let out: Arc<dyn DatagramOut> = Arc::new(raw.clone());
        let session = spawn_session(
            session_config,
            out,
            events_tx,
            shutdown.child_token(),
            &tracker,
        );

        let shared = Arc::new(Shared::default());
        let (req_tx, req_rx) = mpsc::channel(options.incoming_queue.max(1));
        tracker.spawn(session_events(
            events_rx,
            shared.clone(),
            session.clone(),
            req_tx,
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

        Ok(Client {
            inner: Arc::new(Inner {
                identity: options.identity.clone(),
                session,
                endpoint,
                raw,
                port,
                shared,
                requests: AsyncMutex::new(req_rx),
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

    /// Waits until logged in to the Connect server.
    pub async fn wait_online(&self, timeout: Duration) -> Result<OnlineInfo, ClientError> {
        Ok(self.inner.session.wait_online(timeout).await?)
    }

    /// Asks the server's STUN responder (on its UDP port) which public address
    /// our UDP socket has. Needs the session online (to know the server address).
    pub async fn stun_probe(&self, timeout: Duration) -> Result<SocketAddr, ClientError> {
        let online = self.wait_online(timeout).await?;
        let txid: stun::TransactionId = rand::random();
        let rx = self.inner.shared.add_stun(txid);
        let request = stun::binding_request(&txid);
        let deadline = tokio::time::Instant::now() + timeout;
        let mut rx = std::pin::pin!(rx);
        // Resend a few times: UDP may lose the request or the answer.
        let result = loop {
            self.inner
                .raw
                .send_raw(online.server, &request)
                .await
                .map_err(ClientError::Socket)?;
            let wait = tokio::time::sleep(Duration::from_millis(300));
            tokio::select! {
                r = &mut rx => break r.map_err(|_| ClientError::ShuttingDown),
                _ = wait => {}
            }
            if tokio::time::Instant::now() >= deadline {
                break Err(ClientError::Timeout("the server's STUN answer"));
            }
        };
        self.inner.shared.cancel_stun(&txid);
        result
    }

    /// Waits for the next peer asking us for a link; `None` once shut down.
    pub async fn next_request(&self) -> Option<IncomingRequest> {
        let mut rx = self.inner.requests.lock().await;
        let (peer, private_endpoint) = tokio::select! {
            r = rx.recv() => r?,
            _ = self.inner.shutdown.cancelled() => return None,
        };
        Some(IncomingRequest {
            peer,
            private_endpoint,
            client: self.clone(),
        })
    }

    /// Opens a direct link to `peer`, which must prove `peer_key`: request via
    /// the server, punch, then QUIC with the pinned key. We are the initiator.
    pub async fn request_link(
        &self,
        peer: Uuid,
        peer_key: VerifyingKey,
    ) -> Result<(PeerLink, LinkReport), ClientError> {
        let inner = &self.inner;
        let (online, _guard, mut brokered) = self.begin_exchange(peer).await?;
        inner
            .session
            .request(peer, self.private_endpoint(&online))
            .await?;
        tracing::info!(%peer, "link requested");

        // The accept and ClientInfo can come in either order.
        let mut deadline = tokio::time::Instant::now() + inner.options.request_timeout;
        let mut peer_private = None;
        let info = loop {
            let msg = tokio::time::timeout_at(deadline, brokered.recv())
                .await
                .map_err(|_| ClientError::RequestTimeout {
                    peer,
                    secs: inner.options.request_timeout.as_secs(),
                })?
                .ok_or(ClientError::ShuttingDown)?;
            match msg {
                Brokered::Denied => return Err(ClientError::Denied { peer }),
                Brokered::SessionLost(why) => return Err(ClientError::SessionLost(why)),
                Brokered::Accepted(ep) => {
                    peer_private = Some(ep);
                    deadline = deadline
                        .min(tokio::time::Instant::now() + inner.options.client_info_timeout);
                }
                Brokered::ClientInfo(info) => {
                    if peer_private.is_none() {
                        // Give a reordered accept a moment (it carries the LAN candidate).
                        if let Ok(Some(Brokered::Accepted(ep))) =
                            tokio::time::timeout(Duration::from_millis(300), brokered.recv()).await
                        {
                            peer_private = Some(ep);
                        }
                    }
                    break info;
                }
            }
        };
        let candidates =
            Candidate::from_endpoints(peer_private, Some(info.public_endpoint), info.tcp_endpoint);
        let secret = info.link_secret.ok_or(ClientError::NoLinkSecret)?;
        let local = self.private_endpoint(&online).ip;
        let outcome = self.start_punch(Role::Initiator, peer, secret, candidates.clone(), local);
        // Our public address as the server sees it now (the UDP binding may have completed
        // after the request went out).
        let ours = self
            .wait_online(Duration::ZERO)
            .await
            .ok()
            .and_then(|now| now.udp_observed.or(now.tcp_observed));
        let optimistic = optimistic_target(ours, &candidates);
        let Linked {
            link,
            remote,
            punch,
            pending_punch,
        } = match race_link(&inner.endpoint, peer_key, optimistic, outcome).await {
            Ok(linked) => linked,
            Err(RaceFailure::PunchFailed(f)) => return Err(ClientError::PunchFailed(f)),
            Err(RaceFailure::Link(e)) => return Err(link_error(peer, e)),
            Err(RaceFailure::ShuttingDown) => return Err(ClientError::ShuttingDown),
        };
        let punch_time = info.at.elapsed();
        // The optimistic link may have beaten the punch: its result follows shortly.
        let punch = match (punch, pending_punch) {
            (Some(s), _) => Some(s),
            (None, Some(rx)) => late_punch_result(rx).await,
            (None, None) => None,
        };
        // The punch describes the link only if it agreed on the path the link took; its
        // probes were sent either way.
        let mut report = LinkReport::new(
            peer,
            Role::Initiator,
            remote,
            punch_time,
            punch.as_ref().filter(|s| s.remote == remote),
            candidates,
        );
        report.probes_sent = punch.as_ref().map_or(0, |s| s.probes_sent);
        tracing::info!(%peer, remote = %report.remote, path = %report.path, ms = report.punch_time.as_millis(), "link up");
        Ok((link, report))
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
        peer_key: VerifyingKey,
    ) -> Result<(PeerLink, LinkReport), ClientError> {
        let inner = &self.inner;
        let (online, _guard, mut brokered) = self.begin_exchange(peer).await?;
        // Expect the QUIC link before the server can even tell the peer to start.
        let (waiter, incoming) = inner.shared.add_quic_waiter(peer_key);
        inner
            .session
            .accept(peer, self.private_endpoint(&online))
            .await?;
        tracing::info!(%peer, "link request accepted");

        let deadline = tokio::time::Instant::now() + inner.options.client_info_timeout;
        let info: ClientInfo = loop {
            let msg = tokio::time::timeout_at(deadline, brokered.recv())
                .await
                .map_err(|_| ClientError::Timeout("the server's ClientInfo"))?
                .ok_or(ClientError::ShuttingDown)?;
            match msg {
                Brokered::ClientInfo(info) => break info,
                Brokered::SessionLost(why) => return Err(ClientError::SessionLost(why)),
                // The requester gave up (or a stray packet): nothing to link.
                Brokered::Denied => return Err(ClientError::Denied { peer }),
                Brokered::Accepted(_) => {}
            }
        };
        let candidates = Candidate::from_endpoints(
            Some(peer_private),
            Some(info.public_endpoint),
            info.tcp_endpoint,
        );
        inner
            .shared
            .set_remotes(&waiter, candidates.iter().map(|c| c.addr).collect());
        let secret = info.link_secret.ok_or(ClientError::NoLinkSecret)?;
        let local = self.private_endpoint(&online).ip;
        let mut outcome =
            self.start_punch(Role::Responder, peer, secret, candidates.clone(), local);
        let mut incoming = incoming;
        let handshake_wait = inner.options.link.handshake_timeout + Duration::from_secs(2);

        // The initiator connects as soon as it nominates a path, so its QUIC
        // link may arrive before or after our punch reports success (normally
        // just after: the Nominate goes out first on the same path).
        let (link_in, success): (IncomingLink, Option<_>) = tokio::select! {
            r = &mut outcome => {
                let success = r
                    .map_err(|_| ClientError::ShuttingDown)?
                    .map_err(|f| ClientError::PunchFailed(Box::new(f)))?;
                let mut remotes: Vec<SocketAddr> = candidates.iter().map(|c| c.addr).collect();
                remotes.push(success.remote);
                inner.shared.set_remotes(&waiter, remotes);
                let link_in = tokio::time::timeout(handshake_wait, &mut incoming)
                    .await
                    .map_err(|_| ClientError::Timeout("the peer's QUIC link after punching"))?
                    .map_err(|_| ClientError::ShuttingDown)?;
                (link_in, Some(success))
            }
            r = &mut incoming => (r.map_err(|_| ClientError::ShuttingDown)?, None),
        };
        drop(waiter);
        let remote = canonical(link_in.remote_addr());
        let link = link_in
            .accept(&peer_key)
            .await
            .map_err(|e| link_error(peer, e))?;
        let punch_time = info.at.elapsed();
        // Describe the path from the punch when it finished, else from the address.
        let success = match success {
            Some(s) => Some(s),
            None => late_punch_result(outcome).await,
        };
        let report = LinkReport::new(
            peer,
            Role::Responder,
            remote,
            punch_time,
            success.as_ref(),
            candidates,
        );
        tracing::info!(%peer, remote = %report.remote, path = %report.path, ms = report.punch_time.as_millis(), "link up");
        Ok((link, report))
    }

    /// Our private endpoint: the interface address the TCP session uses, with
    /// the UDP socket's port P (even if TCP had to fall back to another port).
    fn private_endpoint(&self, online: &OnlineInfo) -> Endpoint {
        Endpoint {
            ip: online.local.ip().to_canonical(),
            port: Some(self.inner.port),
        }
    }

    fn start_punch(
        &self,
        role: Role,
        peer: Uuid,
        secret: [u8; chatr_proto::LINK_SECRET_LEN],
        candidates: Vec<Candidate>,
        local_ip: IpAddr,
    ) -> oneshot::Receiver<PunchOutcome> {
        let inner = &self.inner;
        // Our interface address (the one the session uses): only a private candidate
        // in its network is worth the initiator's LAN grace wait.
        let punch = Punch::new(
            Instant::now(),
            inner.options.punch.clone(),
            role,
            inner.identity.uuid(),
            peer,
            secret,
            candidates,
        )
        .with_local_networks([LocalNet::guess(local_ip)]);
        let (tx, rx) = mpsc::channel(64);
        inner.shared.add_punch(punch.exchange_id(), tx);
        let (done_tx, done_rx) = oneshot::channel();
        inner.tracker.spawn(drive_punch(
            punch,
            rx,
            inner.raw.clone(),
            inner.shared.clone(),
            done_tx,
            inner.shutdown.clone(),
        ));
        done_rx
    }

    /// Stops the client: says goodbye to the server, closes every link, and
    /// waits for the background tasks. Finish your streams first.
    pub async fn shutdown(&self) {
        self.inner.shutdown.cancel();
        self.inner.endpoint.close().await;
        self.inner.tracker.close();
        self.inner.tracker.wait().await;
    }
}

/// How long a side whose link came up before its punch finished waits for the punch's
/// result, to describe the path in its report.
const LATE_PUNCH_WAIT: Duration = Duration::from_millis(500);

/// The punch's success, if it arrives within [`LATE_PUNCH_WAIT`].
async fn late_punch_result(rx: oneshot::Receiver<PunchOutcome>) -> Option<PunchSuccess> {
    tokio::time::timeout(LATE_PUNCH_WAIT, rx)
        .await
        .ok()
        .and_then(|r| r.ok())
        .and_then(|r| r.ok())
}

fn link_error(peer: Uuid, e: LinkError) -> ClientError {
    match e {
        LinkError::KeyMismatch { .. } => ClientError::KeyMismatch { peer },
        LinkError::Refused { reason } => ClientError::LinkRefused { peer, reason },
        other => ClientError::Link(other),
    }
}

/// Forwards session events: brokering to waiting attempts, requests to the queue.
async fn session_events(
    mut events: mpsc::Receiver<SessionEvent>,
    shared: Arc<Shared>,
    session: SessionHandle,
    requests: mpsc::Sender<(Uuid, Endpoint)>,
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
            } => {
                let queued = requests.try_send((peer, private_endpoint)).is_ok();
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
            } => {
                let routed = shared.route_brokered(peer, Brokered::Accepted(private_endpoint));
                if !routed {
                    tracing::debug!(%peer, "accept for no pending request");
                }
            }
            SessionEvent::Denied { peer } => {
                shared.route_brokered(peer, Brokered::Denied);
            }
            SessionEvent::ClientInfo {
                peer,
                public_endpoint,
                tcp_endpoint,
                link_secret,
            } => {
                let info = ClientInfo {
                    public_endpoint,
                    tcp_endpoint,
                    link_secret,
                    at: Instant::now(),
                };
                let routed = shared.route_brokered(peer, Brokered::ClientInfo(info));
                if !routed {
                    tracing::debug!(%peer, "ClientInfo for no pending exchange");
                }
            }
            SessionEvent::Disconnected { reason } => {
                shared.session_lost(&reason.to_string());
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
        let (from, datagram) = tokio::select! {
            _ = shutdown.cancelled() => break,
            d = control.recv() => match d { Some(d) => d, None => break },
        };
        if is_probe(&datagram) {
            if let Some(id) = exchange_id_of(&datagram) {
                shared.route_probe(&id, from, datagram);
            }
        } else if stun::is_stun(&datagram) {
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
