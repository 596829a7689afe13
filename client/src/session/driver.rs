//! The async shell around [`Session`]: one task per client that keeps a
//! Connect session up.
//!
//! Each round it resolves the server, opens TCP from local port P (shared with
//! the UDP socket), does TLS with the configured trust, computes the channel
//! binding exporter, and then feeds a fresh [`Session`] from
//! `Framed<TlsStream, ConnectCodec>`, the command channel, routed UDP control
//! datagrams and the session's own timer. When the session ends it reports
//! `Disconnected`, waits a jittered exponential backoff and tries again, until
//! the cancellation token fires. Everything crossing task boundaries goes
//! through bounded channels; the current state is published on a `watch`.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chatr_proto::codec::{CodecError, ConnectCodec};
use chatr_proto::udp::UdpMessage;
use chatr_proto::{CHANNEL_BINDING_EXPORTER_LABEL, CHANNEL_BINDING_EXPORTER_LEN, Endpoint, Packet};
use futures_util::future::BoxFuture;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use super::backoff::{Backoff, BackoffConfig};
use super::event::SessionEvent;
use super::machine::{Session, SessionTimings};
use crate::config::HostPort;
use crate::identity::Identity;
use crate::net::{connect_same_port, resolve};
use crate::trust::{is_cert_rejection, server_name};

/// Where the session driver sends UDP control datagrams: the client's shared
/// UDP socket (port P), whoever owns it.
pub trait DatagramOut: Send + Sync + 'static {
    /// Sends one datagram to `to` from the shared socket.
    fn send_datagram<'a>(
        &'a self,
        to: SocketAddr,
        datagram: &'a [u8],
    ) -> BoxFuture<'a, io::Result<()>>;
}

impl DatagramOut for tokio::net::UdpSocket {
    fn send_datagram<'a>(
        &'a self,
        to: SocketAddr,
        datagram: &'a [u8],
    ) -> BoxFuture<'a, io::Result<()>> {
        Box::pin(async move { self.send_to(datagram, to).await.map(|_| ()) })
    }
}

/// Errors of the session layer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The server's certificate is not the one we trust.
    #[error(
        "the Connect server's TLS certificate is not trusted: {0}; if the server's certificate really changed, run `chatr init` again with the new certificate or fingerprint"
    )]
    ServerCertMismatch(String),
    /// The server refused our login signature.
    #[error(
        "the server refused our login ({0}): this identity is not registered there, or with another key; run `chatr register`"
    )]
    LoginRejected(String),
    /// Another client with our UUID is online.
    #[error(
        "another client with this identity is already connected to the server; stop it, or use another --home"
    )]
    AlreadyConnected,
    /// The server could not be reached (resolution, TCP, TLS).
    #[error("cannot reach the Connect server {server}: {reason}")]
    Unreachable {
        /// `host:port`.
        server: String,
        /// What failed.
        reason: String,
    },
    /// The server did not come online in time.
    #[error("not connected to the Connect server after {0:?} (last problem: {1})")]
    NotOnline(Duration, String),
    /// The session is not logged in right now.
    #[error("not connected to the Connect server right now; try again in a moment")]
    Offline,
    /// The session task has stopped.
    #[error("the session has stopped")]
    Stopped,
}

/// How the driver connects.
#[derive(Clone)]
pub struct SessionConfig {
    /// Who we are.
    pub identity: Identity,
    /// The Connect server.
    pub server: HostPort,
    /// TLS trust for the server.
    pub tls: Arc<rustls::ClientConfig>,
    /// Local port P (the port of the shared UDP socket).
    pub local_port: u16,
    /// Session timers.
    pub timings: SessionTimings,
    /// Reconnect pacing.
    pub backoff: BackoffConfig,
    /// TCP connect plus TLS handshake limit (default 10 s).
    pub connect_timeout: Duration,
    /// Writing one packet must finish within this (default 10 s).
    pub write_timeout: Duration,
}

impl std::fmt::Debug for SessionConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionConfig")
            .field("uuid", &self.identity.uuid())
            .field("server", &self.server.to_string())
            .field("local_port", &self.local_port)
            .finish_non_exhaustive()
    }
}

impl SessionConfig {
    /// Defaults for `identity` talking to `server` from port `local_port`.
    pub fn new(
        identity: Identity,
        server: HostPort,
        tls: Arc<rustls::ClientConfig>,
        local_port: u16,
    ) -> Self {
        Self {
            identity,
            server,
            tls,
            local_port,
            timings: SessionTimings::default(),
            backoff: BackoffConfig::default(),
            connect_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
        }
    }
}

/// Facts about a logged-in session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnlineInfo {
    /// The server's address (TCP and UDP).
    pub server: SocketAddr,
    /// Our end of the TCP connection (our private endpoint: interface address, port).
    pub local: SocketAddr,
    /// Whether the TCP connection uses the UDP socket's port P.
    pub same_port: bool,
    /// Our public UDP endpoint as the server saw it, once known.
    pub udp_observed: Option<Endpoint>,
    /// Our public TCP endpoint as the server sees it (from the BindingResponse).
    pub tcp_observed: Option<Endpoint>,
    /// The server never answered our binding requests.
    pub udp_binding_failed: bool,
    /// How many logins this driver has completed (1 for the first).
    pub logins: u64,
    /// A round-trip estimate to the server (the TCP connect time), a first estimate
    /// for a new link's QUIC.
    pub server_rtt: Option<Duration>,
    /// Whether the server relays over TLS for this session (version 3).
    pub tls_relay: bool,
}

/// The driver's current state.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionStatus {
    /// Connecting or logging in.
    Connecting {
        /// Reconnect attempt number (0 for the first connection).
        attempt: u32,
    },
    /// Logged in.
    Online(OnlineInfo),
    /// Lost; retrying after a delay.
    Offline {
        /// What went wrong.
        reason: String,
        /// Delay before the next attempt.
        retry_in: Duration,
    },
    /// The driver stopped (shutdown, or a problem retrying cannot fix).
    Stopped(Option<SessionError>),
}

enum Command {
    Request(Uuid, Endpoint, oneshot::Sender<Result<(), SessionError>>),
    Accept(Uuid, Endpoint, oneshot::Sender<Result<(), SessionError>>),
    Deny(Uuid, oneshot::Sender<Result<(), SessionError>>),
    CloseRelay(
        chatr_proto::RelayId,
        oneshot::Sender<Result<(), SessionError>>,
    ),
}

/// Handle to a running session driver. Cheap to clone.
#[derive(Clone)]
pub struct SessionHandle {
    commands: mpsc::Sender<Command>,
    status: watch::Receiver<SessionStatus>,
    udp_in: mpsc::Sender<(SocketAddr, UdpMessage)>,
}

impl std::fmt::Debug for SessionHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionHandle")
            .field("status", &*self.status.borrow())
            .finish()
    }
}

impl SessionHandle {
    /// The current state.
    pub fn status(&self) -> SessionStatus {
        self.status.borrow().clone()
    }

    /// A receiver that sees every state change.
    pub fn watch(&self) -> watch::Receiver<SessionStatus> {
        self.status.clone()
    }

    /// Info about the current login, if online.
    pub fn online(&self) -> Option<OnlineInfo> {
        match &*self.status.borrow() {
            SessionStatus::Online(info) => Some(info.clone()),
            _ => None,
        }
    }

    /// Waits until the session is online (returns at once if it is), or fails
    /// when the driver stops or `timeout` passes.
    pub async fn wait_online(&self, timeout: Duration) -> Result<OnlineInfo, SessionError> {
        self.wait_for(timeout, |s| match s {
            SessionStatus::Online(info) => Some(info.clone()),
            _ => None,
        })
        .await
    }

    /// Waits until the session is online and its UDP binding is settled
    /// (answered, or given up).
    pub async fn wait_udp_bound(&self, timeout: Duration) -> Result<OnlineInfo, SessionError> {
        self.wait_for(timeout, |s| match s {
            SessionStatus::Online(info)
                if info.udp_observed.is_some() || info.udp_binding_failed =>
            {
                Some(info.clone())
            }
            _ => None,
        })
        .await
    }

    async fn wait_for(
        &self,
        timeout: Duration,
        want: impl Fn(&SessionStatus) -> Option<OnlineInfo>,
    ) -> Result<OnlineInfo, SessionError> {
        let mut rx = self.status.clone();
        let deadline = Instant::now() + timeout;
        let mut last_problem = String::from("none");
        loop {
            {
                let status = rx.borrow_and_update();
                if let Some(info) = want(&status) {
                    return Ok(info);
                }
                match &*status {
                    SessionStatus::Stopped(Some(e)) => return Err(e.clone()),
                    SessionStatus::Stopped(None) => return Err(SessionError::Stopped),
                    SessionStatus::Offline { reason, .. } => last_problem = reason.clone(),
                    _ => {}
                }
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(SessionError::Stopped),
                Err(_) => return Err(SessionError::NotOnline(timeout, last_problem)),
            }
        }
    }

    /// Sends `PacketConnectionRequest` for `peer` with our private endpoint.
    pub async fn request(
        &self,
        peer: Uuid,
        private_endpoint: Endpoint,
    ) -> Result<(), SessionError> {
        self.command(|tx| Command::Request(peer, private_endpoint, tx))
            .await
    }

    /// Sends `PacketConnectionRequestAccept` for `peer` with our private endpoint.
    pub async fn accept(&self, peer: Uuid, private_endpoint: Endpoint) -> Result<(), SessionError> {
        self.command(|tx| Command::Accept(peer, private_endpoint, tx))
            .await
    }

    /// Sends `PacketConnectionRequestDenied` for `peer`.
    pub async fn deny(&self, peer: Uuid) -> Result<(), SessionError> {
        self.command(|tx| Command::Deny(peer, tx)).await
    }

    /// Tells the server we no longer need `relay` (version 3; best effort, never
    /// waits): it can free the relay at once instead of at its idle timeout.
    pub fn close_relay(&self, relay: chatr_proto::RelayId) {
        let (tx, _) = oneshot::channel();
        let _ = self.commands.try_send(Command::CloseRelay(relay, tx));
    }

    /// Hands a control datagram that arrived on the shared UDP socket to the
    /// session (binding responses). Never blocks; drops when the queue is full.
    pub fn deliver_udp(&self, from: SocketAddr, message: UdpMessage) {
        let _ = self.udp_in.try_send((from, message));
    }

    async fn command(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<(), SessionError>>) -> Command,
    ) -> Result<(), SessionError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| SessionError::Stopped)?;
        rx.await.map_err(|_| SessionError::Stopped)?
    }
}

/// Starts the driver task on `tracker`. Events go to `events` (bounded; the
/// driver waits when it is full, so keep draining it). It stops when `shutdown`
/// is cancelled, after saying goodbye to the server.
pub fn spawn_session(
    config: SessionConfig,
    udp: Arc<dyn DatagramOut>,
    events: mpsc::Sender<SessionEvent>,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) -> SessionHandle {
    let (cmd_tx, cmd_rx) = mpsc::channel(32);
    let (udp_tx, udp_rx) = mpsc::channel(32);
    let (status_tx, status_rx) = watch::channel(SessionStatus::Connecting { attempt: 0 });
    let driver = Driver {
        config,
        udp,
        events,
        shutdown,
        commands: cmd_rx,
        udp_in: udp_rx,
        status: status_tx,
        logins: 0,
    };
    tracker.spawn(driver.run());
    SessionHandle {
        commands: cmd_tx,
        status: status_rx,
        udp_in: udp_tx,
    }
}

struct Driver {
    config: SessionConfig,
    udp: Arc<dyn DatagramOut>,
    events: mpsc::Sender<SessionEvent>,
    shutdown: CancellationToken,
    commands: mpsc::Receiver<Command>,
    udp_in: mpsc::Receiver<(SocketAddr, UdpMessage)>,
    status: watch::Sender<SessionStatus>,
    logins: u64,
}

/// How one connection attempt ended.
enum RoundEnd {
    /// We were told to stop.
    Shutdown,
    /// It ended; reconnect (after backoff). `logged_in` says whether it got that far.
    Lost {
        reason: String,
        logged_in: bool,
        fatal: Option<SessionError>,
    },
}

type Conn = Framed<TlsStream<tokio::net::TcpStream>, ConnectCodec>;

impl Driver {
    async fn run(mut self) {
        let mut backoff = Backoff::new(self.config.backoff.clone());
        let span = tracing::info_span!("session", uuid = %self.config.identity.uuid(), server = %self.config.server);
        let _enter = span.enter();
        loop {
            let _ = self.status.send(SessionStatus::Connecting {
                attempt: backoff.attempt(),
            });
            match self.round().await {
                RoundEnd::Shutdown => break,
                RoundEnd::Lost {
                    reason,
                    logged_in,
                    fatal,
                } => {
                    if logged_in {
                        backoff.reset();
                    }
                    if let Some(err) = fatal {
                        tracing::info!(%err, "session stopped");
                        let _ = self.status.send(SessionStatus::Stopped(Some(err)));
                        return;
                    }
                    let delay = backoff.next_delay(rand::random::<f64>());
                    tracing::info!(%reason, ?delay, "session lost; reconnecting");
                    let _ = self.status.send(SessionStatus::Offline {
                        reason,
                        retry_in: delay,
                    });
                    tokio::select! {
                        _ = self.shutdown.cancelled() => break,
                        _ = tokio::time::sleep(delay) => {}
                        // Fail commands promptly while offline instead of letting callers hang.
                        _ = Self::refuse_commands(&mut self.commands) => {}
                    }
                }
            }
        }
        let _ = self.status.send(SessionStatus::Stopped(None));
    }

    async fn refuse_commands(commands: &mut mpsc::Receiver<Command>) {
        while let Some(cmd) = commands.recv().await {
            reply(cmd, Err(SessionError::Offline));
        }
        // The handle is gone: nobody will ever send again; stay pending.
        std::future::pending::<()>().await;
    }

    /// Connects and runs one session to its end.
    async fn round(&mut self) -> RoundEnd {
        let connect = tokio::time::timeout(self.config.connect_timeout, self.connect());
        let conn = tokio::select! {
            _ = self.shutdown.cancelled() => return RoundEnd::Shutdown,
            r = connect => r,
        };
        let (conn, server, local, same_port, exporter) = match conn {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                let fatal = matches!(e, SessionError::ServerCertMismatch(_)).then(|| e.clone());
                return RoundEnd::Lost {
                    reason: e.to_string(),
                    logged_in: false,
                    fatal,
                };
            }
            Err(_) => {
                return RoundEnd::Lost {
                    reason: format!(
                        "connecting timed out after {:?}",
                        self.config.connect_timeout
                    ),
                    logged_in: false,
                    fatal: None,
                };
            }
        };
        tracing::debug!(%server, %local, same_port, "connected; logging in");
        let mut session = Session::new(
            Instant::now().into_std(),
            &self.config.identity,
            &exporter,
            self.config.timings.clone(),
        );
        session.set_server_udp(server);
        let info = OnlineInfo {
            server,
            local,
            same_port,
            udp_observed: None,
            tcp_observed: None,
            udp_binding_failed: false,
            logins: self.logins,
            server_rtt: None,
            tls_relay: false,
        };
        self.drive(conn, session, info).await
    }

    async fn connect(
        &self,
    ) -> Result<
        (
            Conn,
            SocketAddr,
            SocketAddr,
            bool,
            [u8; CHANNEL_BINDING_EXPORTER_LEN],
        ),
        SessionError,
    > {
        let unreachable = |reason: String| SessionError::Unreachable {
            server: self.config.server.to_string(),
            reason,
        };
        let server = resolve(&self.config.server)
            .await
            .map_err(|e| unreachable(format!("cannot resolve: {e}")))?;
        let tcp = connect_same_port(self.config.local_port, server, self.config.connect_timeout)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let local = tcp
            .stream
            .local_addr()
            .map_err(|e| unreachable(e.to_string()))?;
        let name = server_name(&self.config.server.host).map_err(|e| unreachable(e.to_string()))?;
        let tls = TlsConnector::from(self.config.tls.clone())
            .connect(name, tcp.stream)
            .await
            .map_err(|e| match is_cert_rejection(&e) {
                Some(why) => SessionError::ServerCertMismatch(why),
                None => unreachable(format!("TLS handshake failed: {e}")),
            })?;
        let exporter = tls
            .get_ref()
            .1
            .export_keying_material(
                [0u8; CHANNEL_BINDING_EXPORTER_LEN],
                CHANNEL_BINDING_EXPORTER_LABEL,
                None,
            )
            .map_err(|e| unreachable(format!("TLS exporter unavailable: {e}")))?;
        Ok((
            Framed::new(tls, ConnectCodec::new()),
            server,
            local,
            tcp.same_port,
            exporter,
        ))
    }

    async fn drive(
        &mut self,
        mut conn: Conn,
        mut session: Session,
        mut info: OnlineInfo,
    ) -> RoundEnd {
        let mut logged_in = false;
        let mut shutting_down = false;
        loop {
            // Outputs first: packets, datagrams, events.
            let mut wrote = false;
            while let Some(packet) = session.poll_transmit() {
                if let Err(e) = self.write(&mut conn, packet).await {
                    session.handle_transport_closed(e);
                    break;
                }
                wrote = true;
            }
            if wrote && let Err(e) = self.flush(&mut conn).await {
                session.handle_transport_closed(e);
            }
            while let Some(msg) = session.poll_udp_transmit() {
                if let Err(e) = self.udp.send_datagram(info.server, &msg.to_bytes()).await {
                    tracing::debug!(error = %e, "UDP binding request not sent");
                }
            }
            while let Some(event) = session.poll_event() {
                match &event {
                    SessionEvent::Connected { .. } => {
                        logged_in = true;
                        self.logins += 1;
                        info.logins = self.logins;
                        tracing::info!(local = %info.local, "logged in");
                        let _ = self.status.send(SessionStatus::Online(info.clone()));
                    }
                    SessionEvent::UdpBound {
                        observed,
                        tcp_observed,
                    } => {
                        info.udp_observed = Some(*observed);
                        info.tcp_observed = *tcp_observed;
                        info.udp_binding_failed = false;
                        tracing::debug!(?observed, "UDP mapping learned");
                        let _ = self.status.send(SessionStatus::Online(info.clone()));
                    }
                    SessionEvent::UdpBindingFailed => {
                        info.udp_binding_failed = true;
                        tracing::warn!("the server never answered our UDP binding requests");
                        let _ = self.status.send(SessionStatus::Online(info.clone()));
                    }
                    SessionEvent::Disconnected { reason } => {
                        let reason = reason.clone();
                        self.forward(event).await;
                        let _ = SinkExt::<Packet>::close(&mut conn).await;
                        if shutting_down {
                            return RoundEnd::Shutdown;
                        }
                        // Problems that retrying cannot fix stop the driver, but
                        // only before the first successful login: later they can
                        // be transient (a takeover in progress, a restored server).
                        let fatal = if self.logins == 0 {
                            if reason.is_login_rejected() {
                                Some(SessionError::LoginRejected(reason.to_string()))
                            } else if reason.is_already_connected() {
                                Some(SessionError::AlreadyConnected)
                            } else {
                                None
                            }
                        } else {
                            None
                        };
                        return RoundEnd::Lost {
                            reason: reason.to_string(),
                            logged_in,
                            fatal,
                        };
                    }
                    _ => {}
                }
                self.forward(event).await;
            }
            let timeout = session.poll_timeout().map(Instant::from_std);
            tokio::select! {
                _ = self.shutdown.cancelled(), if !shutting_down => {
                    shutting_down = true;
                    session.close("Client shutting down");
                }
                frame = conn.next() => match frame {
                    Some(Ok(packet)) => session.handle_packet(Instant::now().into_std(), packet),
                    Some(Err(CodecError::Decode(e))) => session.handle_invalid_frame(e),
                    Some(Err(e)) => session.handle_transport_closed(e.to_string()),
                    None => session.handle_transport_closed("the server closed the connection"),
                },
                Some(cmd) = self.commands.recv() => {
                    let result = match &cmd {
                        Command::Request(peer, ep, _) => session.request(*peer, *ep),
                        Command::Accept(peer, ep, _) => session.accept(*peer, *ep),
                        Command::Deny(peer, _) => session.deny(*peer),
                        Command::CloseRelay(relay, _) => {
                            session.close_relay(*relay);
                            Ok(())
                        }
                    };
                    reply(cmd, result.map_err(|_| SessionError::Offline));
                }
                Some((from, msg)) = self.udp_in.recv() => {
                    session.handle_udp(Instant::now().into_std(), from, msg);
                }
                _ = sleep_until_opt(timeout) => session.handle_timeout(Instant::now().into_std()),
            }
        }
    }

    async fn write(&self, conn: &mut Conn, packet: Packet) -> Result<(), String> {
        match tokio::time::timeout(self.config.write_timeout, conn.feed(packet)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("writing to the server timed out".into()),
        }
    }

    async fn flush(&self, conn: &mut Conn) -> Result<(), String> {
        match tokio::time::timeout(self.config.write_timeout, SinkExt::<Packet>::flush(conn)).await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("writing to the server timed out".into()),
        }
    }

    async fn forward(&self, event: SessionEvent) {
        tokio::select! {
            _ = self.events.send(event) => {}
            // Nobody drains events during shutdown: don't hang on them.
            _ = self.shutdown.cancelled() => {}
        }
    }
}

fn reply(cmd: Command, result: Result<(), SessionError>) {
    let tx = match cmd {
        Command::Request(_, _, tx)
        | Command::Accept(_, _, tx)
        | Command::Deny(_, tx)
        | Command::CloseRelay(_, tx) => tx,
    };
    let _ = tx.send(result);
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
