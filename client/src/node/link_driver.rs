//! The thin async driver of a [`LinkAgent`]: it executes the agent's actions on the
//! session, the socket and quinn, feeds it what they report, and after the link is up
//! keeps it running in a task of its own, which keeps the link's paths until the link
//! closes.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ed25519_dalek::VerifyingKey;
use futures_util::future::BoxFuture;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::birthday::{Birthday, Catch};
use super::report::LinkReport;
use super::shared::{Brokered, ExchangeGuard, LinkInput, Shared, WaiterGuard};
use crate::deadline::sleep_until_opt;
use crate::error::ClientError;
use crate::link::routes::Route;
use crate::link::{IncomingLink, LinkEndpoint, LinkError, PeerLink, Source};
use crate::path::{
    AgentAction, AgentFailure, Exchange, LinkAgent, LinkOutcome, LinkPaths, PathId, PathPolicy,
    PathStatus, RelayVia,
};
use crate::punch::{ExchangeId, Role};
use crate::session::SessionHandle;

/// Probes queued for one link's agent.
const PROBE_QUEUE: usize = 64;

/// What the driver of one attempt needs from the client.
pub(crate) struct DriverContext {
    pub(crate) peer: Uuid,
    pub(crate) key: VerifyingKey,
    pub(crate) endpoint: Arc<LinkEndpoint>,
    pub(crate) session: SessionHandle,
    pub(crate) shared: Arc<Shared>,
    pub(crate) private_endpoint: chatr_proto::Endpoint,
    /// Whether the server relays over TLS for this session.
    pub(crate) tls_relay: bool,
    /// Which paths the link may use.
    pub(crate) path_policy: PathPolicy,
    /// How long the initiator waits for an answer (for the error message).
    pub(crate) request_timeout: Duration,
    pub(crate) shutdown: CancellationToken,
    pub(crate) tracker: tokio_util::task::TaskTracker,
}

/// Everything that happens to one attempt, while it is set up.
struct Attempt {
    ctx: DriverContext,
    agent: LinkAgent,
    brokered: mpsc::Receiver<Brokered>,
    _exchange: ExchangeGuard,
    route: Option<Arc<Route>>,
    exchange_id: Option<ExchangeId>,
    probes: Option<mpsc::Receiver<LinkInput>>,
    /// Initiator: the QUIC connection being set up.
    connecting: Option<BoxFuture<'static, Result<PeerLink, LinkError>>>,
    /// Responder: where the initiator's QUIC link will arrive.
    incoming: Option<(WaiterGuard, oneshot::Receiver<IncomingLink>)>,
    /// Responder: an arrived link being confirmed.
    confirming: Option<BoxFuture<'static, Result<PeerLink, LinkError>>>,
    link: Option<PeerLink>,
    quic_error: Option<LinkError>,
    /// The hard side of birthday punching, while its sockets wait.
    birthday: HardSide,
}

/// The hard side of birthday punching (`super::birthday`) for one link.
#[derive(Default)]
struct HardSide {
    started: bool,
    running: Option<Birthday>,
    /// The peer address whose path an adopted socket carries.
    adopted: Option<std::net::SocketAddr>,
}

impl HardSide {
    /// Opens the sockets once the agent says this side is the hard one; closes them once
    /// the link is direct some other way.
    fn maybe_start(&mut self, agent: &mut LinkAgent) {
        if self.started {
            if self.running.is_some() && self.adopted.is_none() && is_direct(agent) {
                tracing::debug!("birthday punching: direct without it; closing its sockets");
                self.running = None;
            }
            return;
        }
        let Some(target) = agent.birthday_target() else {
            return;
        };
        self.started = true;
        let probes: Vec<Vec<u8>> = (0..crate::nat::BIRTHDAY_SOCKETS)
            .filter_map(|_| agent.extra_probe())
            .collect();
        tracing::info!(%target, sockets = probes.len(), "birthday punching: opening sockets");
        self.running = Some(Birthday::start(target, probes, crate::nat::SPRAY_RATE));
    }

    /// A socket caught something from the peer's address: if it is the peer's Probe,
    /// that socket carries the direct path from now on and the others close.
    fn on_catch(&mut self, agent: &LinkAgent, endpoint: &LinkEndpoint, catch: Catch) {
        let (from, datagram, socket) = catch;
        if self.adopted.is_some() || !agent.is_peer_probe(&datagram) {
            return;
        }
        // The plain punch got there first: its path stays on the link socket.
        if is_direct(agent) {
            self.running = None;
            return;
        }
        tracing::info!(remote = %from, "birthday punching: a socket met the peer");
        endpoint.adopt_aux(from, socket, datagram);
        self.adopted = Some(from);
        self.running = None;
    }

    fn release(&mut self, endpoint: &LinkEndpoint) {
        self.running = None;
        if let Some(remote) = self.adopted.take() {
            endpoint.release_aux(remote);
        }
    }
}

/// Whether the punch already agreed on a direct path.
fn is_direct(agent: &LinkAgent) -> bool {
    agent.punch_succeeded()
}

async fn recv_catch(hard: &mut HardSide) -> Option<Catch> {
    match hard.running.as_mut() {
        Some(b) => b.caught.recv().await,
        None => std::future::pending().await,
    }
}

/// Runs a link attempt to its end: the link and its report, or why there is none. Once
/// linked, the agent goes on in a background task keeping the link's paths.
pub(crate) async fn run_attempt(
    ctx: DriverContext,
    agent: LinkAgent,
    exchange: (ExchangeGuard, mpsc::Receiver<Brokered>),
) -> Result<(PeerLink, LinkReport), ClientError> {
    let incoming = (agent.role() == Role::Responder).then(|| ctx.shared.add_quic_waiter(ctx.key));
    let (guard, brokered) = exchange;
    let mut attempt = Attempt {
        ctx,
        agent,
        brokered,
        _exchange: guard,
        route: None,
        exchange_id: None,
        probes: None,
        connecting: None,
        incoming,
        confirming: None,
        link: None,
        quic_error: None,
        birthday: HardSide::default(),
    };
    let outcome = match attempt.run().await {
        Ok(outcome) => outcome,
        Err(e) => {
            attempt.forget();
            return Err(e);
        }
    };
    let Some(link) = attempt.link.take() else {
        attempt.forget();
        return Err(ClientError::Timeout("the peer's QUIC link"));
    };
    let Attempt {
        ctx,
        agent,
        route,
        exchange_id,
        probes,
        birthday,
        ..
    } = attempt;
    let relay_server = route
        .as_ref()
        .and_then(|r| r.relay)
        .map(|(_, server)| server);
    let report = LinkReport::from_outcome(ctx.peer, agent.role(), &outcome, relay_server);
    tracing::info!(peer = %ctx.peer, path = %outcome.class, ms = outcome.elapsed.as_millis(), "link up");
    let (status_tx, status_rx) = watch::channel(status_of(&agent));
    let (pin_tx, pin_rx) = mpsc::channel(4);
    let users = CancellationToken::new();
    let link = link.with_paths(LinkPaths::new(status_rx, pin_tx), users.clone());
    let keeper = Keeper {
        agent,
        endpoint: Arc::clone(&ctx.endpoint),
        session: ctx.session.clone(),
        shared: Arc::clone(&ctx.shared),
        route,
        exchange_id,
        probes,
        connection: Some(link.connection().clone()),
        users,
        idle_timeout: ctx.endpoint.config().idle_timeout,
        status: status_tx,
        pin: pin_rx,
        shutdown: ctx.shutdown.clone(),
        birthday,
    };
    ctx.tracker.spawn(keeper.run());
    Ok((link, report))
}

impl Attempt {
    /// Drives the agent until it reports the link up (or fails).
    async fn run(&mut self) -> Result<LinkOutcome, ClientError> {
        loop {
            if let Some(outcome) = self.execute().await? {
                return Ok(outcome);
            }
            self.birthday.maybe_start(&mut self.agent);
            let timer = self
                .agent
                .poll_timeout()
                .map(tokio::time::Instant::from_std);
            tokio::select! {
                () = self.ctx.shutdown.cancelled() => return Err(ClientError::ShuttingDown),
                msg = self.brokered.recv() => match msg {
                    Some(msg) => self.on_brokered(msg)?,
                    None => return Err(ClientError::ShuttingDown),
                },
                Some(input) = recv_opt(&mut self.probes) => feed(&mut self.agent, input),
                Some(catch) = recv_catch(&mut self.birthday) => {
                    self.birthday.on_catch(&self.agent, &self.ctx.endpoint, catch);
                }
                r = poll_opt(&mut self.connecting) => {
                    self.connecting = None;
                    self.on_quic(r);
                }
                r = recv_incoming(&mut self.incoming) => {
                    self.incoming = None;
                    let incoming = r.map_err(|_| ClientError::ShuttingDown)?;
                    let key = self.ctx.key;
                    self.confirming = Some(Box::pin(async move { incoming.accept(&key).await }));
                }
                r = poll_opt(&mut self.confirming) => {
                    self.confirming = None;
                    self.on_quic(r);
                }
                () = sleep_until_opt(timer) => self.agent.handle_timeout(Instant::now()),
            }
        }
    }

    fn on_quic(&mut self, result: Result<PeerLink, LinkError>) {
        match result {
            Ok(link) => {
                self.link = Some(link);
                self.agent.handle_quic_established(Instant::now());
            }
            Err(e) => {
                tracing::debug!(error = %e, "QUIC link attempt failed");
                self.quic_error = Some(e);
                self.agent.handle_quic_failed(Instant::now());
            }
        }
    }

    fn on_brokered(&mut self, msg: Brokered) -> Result<(), ClientError> {
        let now = Instant::now();
        match msg {
            Brokered::Accepted(endpoint, hints) => {
                if let Some(hints) = hints {
                    self.agent.set_peer_hints(hints);
                }
                self.agent.handle_accepted(now, endpoint);
            }
            Brokered::Denied => self.agent.handle_denied(now),
            Brokered::SessionLost(why) => self.agent.handle_session_lost(now, &why),
            Brokered::ClientInfo(info) => {
                // Without a secret nothing can be authenticated.
                let secret = info.link_secret.ok_or(ClientError::NoLinkSecret)?;
                self.prepare_route(info.relay_id, ExchangeId::from_secret(&secret));
                // Asked now, not when the attempt began: the binding may have completed
                // since (it is sent right after login).
                let udp_bound = self
                    .ctx
                    .session
                    .online()
                    .is_some_and(|o| o.udp_observed.is_some());
                let via = if udp_bound {
                    Some(RelayVia::Udp)
                } else if self.ctx.tls_relay {
                    Some(RelayVia::Tls)
                } else {
                    None
                };
                let policy = self.ctx.path_policy;
                let relay = policy.relay(info.relay_id.and(via), self.ctx.tls_relay);
                if let Some(pin) = policy.pin(relay) {
                    self.agent.pin(now, Some(pin));
                }
                self.agent.handle_client_info(
                    now,
                    Exchange {
                        public_endpoint: info.public_endpoint,
                        tcp_endpoint: info.tcp_endpoint,
                        link_secret: secret,
                        relay,
                    },
                );
            }
        }
        Ok(())
    }

    /// Creates the link's route (its virtual address) and the probe channel of its exchange.
    fn prepare_route(&mut self, relay: Option<chatr_proto::RelayId>, id: ExchangeId) {
        if self.route.is_some() {
            return;
        }
        let server = self.ctx.session.online().map(|o| o.server);
        let route = self.ctx.endpoint.routes().add(relay.zip(server));
        if let Some((guard, _)) = &self.incoming {
            self.ctx.shared.set_virtual(guard, route.virtual_addr);
        }
        let (tx, rx) = mpsc::channel(PROBE_QUEUE);
        self.ctx.shared.add_punch(id, relay, tx);
        self.exchange_id = Some(id);
        self.probes = Some(rx);
        self.route = Some(route);
    }

    /// Executes the agent's outputs; `Some` once linked.
    async fn execute(&mut self) -> Result<Option<LinkOutcome>, ClientError> {
        // Probes first: on a fresh path they open the NATs QUIC's first packets need.
        send_transmits(&mut self.agent, &self.ctx.endpoint, self.route.as_deref()).await;
        publish_plan(&self.agent, &self.ctx.endpoint, self.route.as_deref());
        while let Some(action) = self.agent.poll_action() {
            match action {
                AgentAction::SendRequest => {
                    self.ctx
                        .session
                        .request(self.ctx.peer, self.ctx.private_endpoint)
                        .await?;
                    tracing::info!(peer = %self.ctx.peer, "link requested");
                }
                AgentAction::SendAccept => {
                    self.ctx
                        .session
                        .accept(self.ctx.peer, self.ctx.private_endpoint)
                        .await?;
                    tracing::info!(peer = %self.ctx.peer, "link request accepted");
                }
                AgentAction::StartQuic { initial_rtt } => {
                    let Some(route) = &self.route else {
                        continue;
                    };
                    let endpoint = Arc::clone(&self.ctx.endpoint);
                    let (to, key) = (route.virtual_addr, self.ctx.key);
                    self.connecting = Some(Box::pin(async move {
                        endpoint.connect_with_rtt(to, key, initial_rtt).await
                    }));
                }
                AgentAction::Linked(outcome) => return Ok(Some(*outcome)),
                AgentAction::Failed(failure) => return Err(self.failure(failure)),
            }
        }
        Ok(None)
    }

    fn failure(&mut self, failure: AgentFailure) -> ClientError {
        let peer = self.ctx.peer;
        match failure {
            AgentFailure::Denied => ClientError::Denied { peer },
            AgentFailure::RequestTimeout => ClientError::RequestTimeout {
                peer,
                secs: self.ctx.request_timeout.as_secs(),
            },
            AgentFailure::ClientInfoTimeout => ClientError::Timeout("the server's ClientInfo"),
            AgentFailure::SessionLost(why) => ClientError::SessionLost(why),
            AgentFailure::PunchFailed(f) => ClientError::PunchFailed(f),
            AgentFailure::QuicFailed => match self.quic_error.take() {
                Some(e) => link_error(peer, e),
                None => ClientError::Timeout("the peer's QUIC link"),
            },
            // LinkTimeout and anything newer.
            _ => ClientError::Timeout("the peer's QUIC link"),
        }
    }

    /// Forgets the attempt's route and probe channel (failed attempts), after [`DRAIN`]:
    /// a refusal's CONNECTION_CLOSE must still find its path.
    fn forget(&mut self) {
        self.birthday.release(&self.ctx.endpoint);
        if let Some(id) = self.exchange_id.take() {
            self.ctx.shared.remove_punch(&id);
        }
        let Some(route) = self.route.take() else {
            return;
        };
        let endpoint = Arc::clone(&self.ctx.endpoint);
        let shutdown = self.ctx.shutdown.clone();
        self.ctx.tracker.spawn(async move {
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = tokio::time::sleep(DRAIN) => endpoint.routes().remove(&route),
            }
        });
    }
}

/// How long a closed link's route stays, so QUIC's CONNECTION_CLOSE (sent after the
/// close, and again while draining) still finds its path.
const DRAIN: Duration = Duration::from_secs(3);

/// The task that keeps a link's paths once it is up: probes, heartbeats, switches.
///
/// It runs while the link's QUIC connection lives. It holds a handle of the connection
/// only while the application holds the link: once every [`PeerLink`] clone is gone it
/// lets go of it (so the connection closes as a dropped quinn connection does, once its
/// streams are done too), and then ends when the link has carried nothing for the idle
/// timeout. At client shutdown it ends at once and leaves the route to the endpoint,
/// which is closing every connection.
struct Keeper {
    agent: LinkAgent,
    endpoint: Arc<LinkEndpoint>,
    session: SessionHandle,
    shared: Arc<Shared>,
    route: Option<Arc<Route>>,
    exchange_id: Option<ExchangeId>,
    probes: Option<mpsc::Receiver<LinkInput>>,
    connection: Option<quinn::Connection>,
    users: CancellationToken,
    idle_timeout: Duration,
    status: watch::Sender<PathStatus>,
    pin: mpsc::Receiver<Option<PathId>>,
    shutdown: CancellationToken,
    birthday: HardSide,
}

impl Keeper {
    async fn run(mut self) {
        let span = tracing::debug_span!("paths", peer = %self.agent.peer());
        let mut idle_check = tokio::time::interval(Duration::from_secs(1));
        idle_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let ended = loop {
            send_transmits(&mut self.agent, &self.endpoint, self.route.as_deref()).await;
            publish_plan(&self.agent, &self.endpoint, self.route.as_deref());
            while let Some(event) = self.agent.poll_event() {
                span.in_scope(|| tracing::info!(?event, "link path changed"));
            }
            self.birthday.maybe_start(&mut self.agent);
            // Only a change is news for the watchers.
            let status = status_of(&self.agent);
            self.status.send_if_modified(|old| {
                let changed = *old != status;
                *old = status;
                changed
            });
            let timer = self
                .agent
                .poll_timeout()
                .map(tokio::time::Instant::from_std);
            tokio::select! {
                () = self.shutdown.cancelled() => break false,
                _ = closed_opt(&self.connection) => break true,
                () = self.users.cancelled(), if self.connection.is_some() => {
                    self.connection = None;
                }
                _ = idle_check.tick(), if self.connection.is_none() => {
                    let quiet = self.route.as_ref().map_or(Duration::MAX, |r| r.quiet_for());
                    if quiet >= self.idle_timeout {
                        break true;
                    }
                }
                Some(input) = recv_opt(&mut self.probes) => feed(&mut self.agent, input),
                Some(catch) = recv_catch(&mut self.birthday) => {
                    self.birthday.on_catch(&self.agent, &self.endpoint, catch);
                }
                Some(pin) = self.pin.recv() => self.agent.pin(Instant::now(), pin),
                () = sleep_until_opt(timer) => self.agent.handle_timeout(Instant::now()),
            }
        };
        self.agent.handle_link_closed(Instant::now());
        self.birthday.running = None;
        if !ended {
            return;
        }
        // Let QUIC's close get out on the path it has now.
        tokio::select! {
            () = self.shutdown.cancelled() => return,
            () = tokio::time::sleep(DRAIN) => {}
        }
        if let Some(route) = self.route.take() {
            if let Some((relay, _)) = route.relay {
                // The server may free the relay at once rather than at its idle timeout.
                self.session.close_relay(relay);
            }
            self.endpoint.routes().remove(&route);
        }
        self.birthday.release(&self.endpoint);
        if let Some(id) = self.exchange_id.take() {
            self.shared.remove_punch(&id);
        }
    }
}

async fn closed_opt(connection: &Option<quinn::Connection>) {
    match connection {
        Some(c) => {
            c.closed().await;
        }
        None => std::future::pending().await,
    }
}

fn status_of(agent: &LinkAgent) -> PathStatus {
    let Some(paths) = agent.paths() else {
        return PathStatus::default();
    };
    PathStatus {
        path: paths.active(),
        class: paths.active_class(),
        reason: agent.relay_reason(),
        switches: paths.switches(),
        rtt: paths.active_rtt(),
        probes_sent: agent.probes_sent(),
    }
}

/// Sends what the agent wants sent (probes) on their paths.
async fn send_transmits(agent: &mut LinkAgent, endpoint: &LinkEndpoint, route: Option<&Route>) {
    while let Some((path, datagram)) = agent.poll_transmit() {
        let sent = match (route, path) {
            (Some(route), path) => endpoint.send_on_path(route, path, &datagram).await,
            (None, PathId::Direct(addr)) => endpoint.send_raw(addr, &datagram).await,
            (None, PathId::Relay(_)) => continue,
        };
        if let Err(e) = sent {
            tracing::debug!(%path, error = %e, "probe not sent");
        }
    }
}

/// Tells the socket where the link's datagrams go now.
fn publish_plan(agent: &LinkAgent, endpoint: &LinkEndpoint, route: Option<&Route>) {
    let (Some(route), Some(paths)) = (route, agent.paths()) else {
        return;
    };
    endpoint.set_plan(route, paths.plan(), paths.direct_addrs());
}

/// Hands what arrived for the link to its agent.
fn feed(agent: &mut LinkAgent, input: LinkInput) {
    let now = Instant::now();
    match input {
        LinkInput::Datagram(source, datagram) => {
            agent.handle_datagram(now, path_of(source), &datagram);
        }
        LinkInput::RelayClosed => agent.handle_relay_closed(now),
    }
}

fn path_of(source: Source) -> PathId {
    match source {
        Source::Direct(addr) => PathId::Direct(addr),
        Source::Relay { via, .. } => PathId::Relay(via),
    }
}

/// Maps a link failure to what the user can act on.
pub(crate) fn link_error(peer: Uuid, e: LinkError) -> ClientError {
    match e {
        LinkError::KeyMismatch { .. } => ClientError::KeyMismatch { peer },
        LinkError::Refused { reason } => ClientError::LinkRefused { peer, reason },
        other => ClientError::Link(other),
    }
}

async fn recv_opt<T>(rx: &mut Option<mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn recv_incoming(
    slot: &mut Option<(WaiterGuard, oneshot::Receiver<IncomingLink>)>,
) -> Result<IncomingLink, oneshot::error::RecvError> {
    match slot {
        Some((_, rx)) => Pin::new(rx).await,
        None => std::future::pending().await,
    }
}

async fn poll_opt<T>(slot: &mut Option<BoxFuture<'static, T>>) -> T {
    match slot {
        Some(fut) => fut.as_mut().await,
        None => std::future::pending().await,
    }
}
