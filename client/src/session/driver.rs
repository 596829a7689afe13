//! The async shell around [`Session`]: one task per client that keeps a
//! Connect session up.
//!
//! Each round [`connect`](super::connect()) opens a connection (TCP from local
//! port P, shared with the UDP socket, then TLS and the channel-binding
//! exporter) and [`Driver::drive`] feeds a fresh [`Session`] from
//! `Framed<stream, ConnectCodec>`, the command channel, routed UDP control
//! datagrams and the session's own timer. When the session ends it reports
//! `Disconnected`, waits a jittered exponential backoff and tries again, until
//! the cancellation token fires. Everything crossing task boundaries goes
//! through bounded channels; the current state is published on a `watch`.
//!
//! The driver is generic over its stream ([`Connect`]), so its tests run it
//! over in-memory pipes with paused time (`driver_tests.rs`).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use chatr_proto::codec::{CodecError, ConnectCodec, encode_relay_data, make_room_for_relay_data};
use chatr_proto::udp::UdpMessage;
use chatr_proto::{DisconnectReason, Packet};
use futures_util::future::BoxFuture;
use futures_util::{FutureExt as _, SinkExt, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use super::backoff::Backoff;
use super::config::SessionConfig;
use super::connect::{Connect, Connected, ServerTls};
use super::error::{ConnectError, OfflineReason, SessionError};
use super::event::{SessionEnd, SessionEvent};
use super::handle::{Command, OnlineInfo, PresenceWanted, SessionHandle, SessionStatus};
use super::machine::Session;
use super::transport_error::TransportError;
use crate::deadline::sleep_until_opt;
use crate::link::{TlsOutgoing, TlsRelayPort};

/// Relayed datagrams written into the TLS buffer per loop turn, before a flush (and
/// relayed frames read per turn).
const RELAY_BATCH: usize = 64;

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

/// Starts the driver task on `tracker`. Events go to `events` (bounded; the
/// driver waits when it is full, so keep draining it). It stops when `shutdown`
/// is cancelled, after saying goodbye to the server.
///
/// `relay` is the link socket's end of the TLS relay (version 3): relayed datagrams
/// the socket wants sent inside the session, and where those that arrive go.
pub fn spawn_session(
    config: SessionConfig,
    udp: Arc<dyn DatagramOut>,
    relay: Option<TlsRelayPort>,
    events: mpsc::Sender<SessionEvent>,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) -> SessionHandle {
    spawn_with(ServerTls, config, udp, relay, events, shutdown, tracker)
}

/// [`spawn_session`] over connections from `connector`.
pub(crate) fn spawn_with<C: Connect>(
    connector: C,
    config: SessionConfig,
    udp: Arc<dyn DatagramOut>,
    relay: Option<TlsRelayPort>,
    events: mpsc::Sender<SessionEvent>,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) -> SessionHandle {
    let (cmd_tx, cmd_rx) = mpsc::channel(32);
    let (udp_tx, udp_rx) = mpsc::channel(32);
    let (status_tx, status_rx) = watch::channel(SessionStatus::Connecting { attempt: 0 });
    let (hints_tx, hints_rx) = watch::channel(chatr_proto::LinkHints::default());
    let span =
        tracing::info_span!("session", uuid = %config.identity.uuid(), server = %config.server);
    let presence = config.presence.clone();
    let driver = Driver {
        connector,
        config,
        udp,
        events,
        shutdown,
        commands: cmd_rx,
        udp_in: udp_rx,
        status: status_tx,
        logins: 0,
        relay,
        presence,
        hints: hints_rx,
    };
    tracker.spawn(driver.run().instrument(span));
    SessionHandle {
        commands: cmd_tx,
        status: status_rx,
        udp_in: udp_tx,
        hints: std::sync::Arc::new(hints_tx),
    }
}

struct Driver<C> {
    connector: C,
    config: SessionConfig,
    udp: Arc<dyn DatagramOut>,
    events: mpsc::Sender<SessionEvent>,
    shutdown: CancellationToken,
    commands: mpsc::Receiver<Command>,
    udp_in: mpsc::Receiver<(SocketAddr, UdpMessage)>,
    status: watch::Sender<SessionStatus>,
    /// What our requests and accepts tell peers about us.
    hints: watch::Receiver<chatr_proto::LinkHints>,
    logins: u64,
    relay: Option<TlsRelayPort>,
    /// What we share through presence; sent after each login.
    presence: PresenceWanted,
}

/// How one round (a connection attempt and the session on it) ended.
enum RoundEnd {
    /// We were told to stop.
    Shutdown,
    /// It ended; reconnect (after backoff) unless `fatal`. `logged_in` says
    /// whether it got that far.
    Lost {
        reason: OfflineReason,
        logged_in: bool,
        fatal: Option<SessionError>,
    },
}

impl<C: Connect> Driver<C> {
    async fn run(mut self) {
        let mut backoff = Backoff::new(self.config.backoff.clone());
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
            cmd.reply(Err(SessionError::Offline));
        }
        // The handle is gone: nobody will ever send again; stay pending.
        std::future::pending::<()>().await;
    }

    /// Connects and runs one session to its end.
    async fn round(&mut self) -> RoundEnd {
        let timeout = self.config.connect_timeout;
        let connect = tokio::time::timeout(timeout, self.connector.connect(&self.config));
        let connected = tokio::select! {
            _ = self.shutdown.cancelled() => return RoundEnd::Shutdown,
            r = connect => r.unwrap_or_else(|_| Err(SessionError::Unreachable {
                server: self.config.server.to_string(),
                cause: ConnectError::Timeout(timeout),
            })),
        };
        match connected {
            Ok(connected) => self.drive(connected).await,
            Err(err) => RoundEnd::Lost {
                fatal: matches!(err, SessionError::ServerCertMismatch(_)).then(|| err.clone()),
                reason: OfflineReason::Connect(err),
                logged_in: false,
            },
        }
    }

    /// Logs in on `connected` and runs the session until it ends.
    async fn drive<S>(&mut self, connected: Connected<S>) -> RoundEnd
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let Connected {
            stream,
            server,
            local,
            same_port,
            exporter,
            binding_key,
            rtt,
        } = connected;
        tracing::debug!(%server, %local, same_port, "connected; logging in");
        let mut conn = Framed::new(stream, ConnectCodec::new());
        let mut session = Session::new(
            Instant::now().into_std(),
            &self.config.identity,
            &exporter,
            self.config.timings.clone(),
        );
        session.set_server_udp(server);
        if let Some(key) = binding_key {
            session.set_binding_key(key);
        }
        let mut info = OnlineInfo {
            server,
            local,
            same_port,
            udp_observed: None,
            tcp_observed: None,
            udp_binding_failed: false,
            logins: self.logins,
            server_rtt: rtt,
            tls_relay: false,
            presence: false,
            udp_relay: false,
            nat_probe_ports: Vec::new(),
        };
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
                        let v3 = session.server_version() >= chatr_proto::VERSION_3;
                        let features = session.features();
                        info.tls_relay =
                            v3 && features.contains(chatr_proto::SessionFeatures::RELAY_TLS);
                        info.udp_relay =
                            v3 && features.contains(chatr_proto::SessionFeatures::RELAY_UDP);
                        info.presence = session.has_presence();
                        if info.presence {
                            let wanted = &self.presence;
                            let contacts: Vec<_> = wanted.contacts.iter().copied().collect();
                            // The server may acknowledge each packet on its own, and the
                            // first acknowledgement ends "who is online" (PresenceSynced):
                            // so the contacts go first. A status other than the default must
                            // go before them (an "appear offline" user must never show up
                            // online), at the price of an early acknowledgement.
                            let default = wanted.status == chatr_proto::PresenceStatus::Available
                                && wanted.message.is_empty();
                            if !default {
                                let _ = session.presence_status(wanted.status, &wanted.message);
                            }
                            let _ =
                                session.presence_contacts(chatr_proto::ContactsOp::Add, &contacts);
                        }
                        info.nat_probe_ports = if v3 {
                            session.nat_probe_ports().to_vec()
                        } else {
                            Vec::new()
                        };
                        // Whatever waited for the TLS relay while we were offline is stale.
                        if let Some(relay) = self.relay.as_mut() {
                            while relay.outgoing.try_recv().is_ok() {}
                        }
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
                        // Closing flushes what is queued (a goodbye): bounded like
                        // every write, and skipped when the transport failed already,
                        // where it would stall again (or forever, on a server that
                        // stopped reading).
                        if !matches!(reason, SessionEnd::Transport(_)) {
                            let close = SinkExt::<Packet>::close(&mut conn);
                            let _ = tokio::time::timeout(self.config.write_timeout, close).await;
                        }
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
                            reason: OfflineReason::Ended(reason),
                            logged_in,
                            fatal,
                        };
                    }
                    _ => {}
                }
                self.forward(event).await;
            }
            let timeout = session.poll_timeout().map(Instant::from_std);
            let relaying = logged_in && session.server_version() >= chatr_proto::VERSION_3;
            let relay_out = async {
                match self.relay.as_mut() {
                    Some(relay) if relaying => relay.outgoing.recv().await,
                    _ => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = self.shutdown.cancelled(), if !shutting_down => {
                    shutting_down = true;
                    session.close(DisconnectReason::ClientShuttingDown.as_str());
                }
                Some(first) = relay_out => {
                    if let Err(e) = self.write_relayed(&mut conn, first).await {
                        session.handle_transport_closed(e);
                    }
                }
                frame = conn.next() => {
                    // A bulk transfer over the TLS relay brings many frames per read of
                    // the TLS stream: take those already decoded in this turn, not one
                    // per turn of this loop (each turn re-arms every branch and a timer).
                    let mut relayed = self.on_frame(&mut session, relaying, frame);
                    let mut taken = 1;
                    while relayed && taken < RELAY_BATCH {
                        let Some(frame) = conn.next().now_or_never() else {
                            break;
                        };
                        relayed = self.on_frame(&mut session, relaying, frame);
                        taken += 1;
                    }
                    if relayed {
                        make_room_for_relay_data(conn.read_buffer_mut());
                    }
                }
                Some(cmd) = self.commands.recv() => {
                    let result = match &cmd {
                        Command::Request(peer, ep, _) => {
                            session.request(*peer, *ep, self.hints.borrow().clone())
                        }
                        Command::Accept(peer, ep, _) => {
                            session.accept(*peer, *ep, self.hints.borrow().clone())
                        }
                        Command::Deny(peer, _) => session.deny(*peer),
                        Command::CloseRelay(relay, _) => {
                            session.close_relay(*relay);
                            Ok(())
                        }
                        Command::SetPresence(wanted, _) => {
                            if logged_in {
                                apply_presence(&mut session, &self.presence, wanted);
                            }
                            self.presence = wanted.clone();
                            Ok(())
                        }
                    };
                    cmd.reply(result.map_err(|_| SessionError::Offline));
                }
                Some((from, msg)) = self.udp_in.recv() => {
                    session.handle_udp(Instant::now().into_std(), from, msg);
                }
                _ = sleep_until_opt(timeout) => session.handle_timeout(Instant::now().into_std()),
            }
        }
    }

    /// Handles one frame read from the server; `true` when it was a relayed datagram
    /// (handed to the link socket), `false` for anything else.
    fn on_frame(
        &self,
        session: &mut Session,
        relaying: bool,
        frame: Option<Result<Packet, CodecError>>,
    ) -> bool {
        match frame {
            // Relayed datagrams of a version-3 session go straight to the link socket:
            // opaque data, not protocol state. A full queue drops them, as UDP would.
            Some(Ok(Packet::RelayData(data))) if relaying => {
                if let Some(relay) = &self.relay {
                    let _ = relay.incoming.try_send((data.relay_id, data.datagram));
                }
                return true;
            }
            Some(Ok(packet)) => session.handle_packet(Instant::now().into_std(), packet),
            Some(Err(CodecError::Decode(e))) => session.handle_invalid_frame(e),
            Some(Err(e)) => session.handle_transport_closed(codec_to_transport(e)),
            None => session.handle_transport_closed(TransportError::Closed),
        }
        false
    }

    /// Writes one send of relayed datagrams and whatever else is queued (up to
    /// [`RELAY_BATCH`] datagrams) as `PacketRelayData` frames, then flushes. The frames
    /// are encoded straight into the write buffer: the whole batch waits on one flush
    /// (bounded by the write time-out), not on one per datagram.
    async fn write_relayed<S>(
        &mut self,
        conn: &mut Framed<S, ConnectCodec>,
        first: TlsOutgoing,
    ) -> Result<(), TransportError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let mut next = Some(first);
        let mut written = 0;
        while let Some(out) = next.take() {
            let buffer = conn.write_buffer_mut();
            for datagram in out.segments() {
                encode_relay_data(&out.relay, datagram, buffer);
                written += 1;
            }
            if written < RELAY_BATCH {
                next = self.relay.as_mut().and_then(|r| r.outgoing.try_recv().ok());
            }
        }
        self.flush(conn).await
    }

    /// Queues one packet in the write buffer (writing out when it is full).
    async fn write<S>(
        &self,
        conn: &mut Framed<S, ConnectCodec>,
        packet: Packet,
    ) -> Result<(), TransportError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        match tokio::time::timeout(self.config.write_timeout, conn.feed(packet)).await {
            Ok(result) => result.map_err(codec_to_transport),
            Err(_) => Err(TransportError::WriteTimeout),
        }
    }

    /// Writes out everything queued.
    async fn flush<S>(&self, conn: &mut Framed<S, ConnectCodec>) -> Result<(), TransportError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        match tokio::time::timeout(self.config.write_timeout, SinkExt::<Packet>::flush(conn)).await
        {
            Ok(result) => result.map_err(codec_to_transport),
            Err(_) => Err(TransportError::WriteTimeout),
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

/// Sends the difference between what the server has (`old`) and `new`.
fn apply_presence(session: &mut Session, old: &PresenceWanted, new: &PresenceWanted) {
    let added: Vec<_> = new.contacts.difference(&old.contacts).copied().collect();
    let removed: Vec<_> = old.contacts.difference(&new.contacts).copied().collect();
    if (new.status, &new.message) != (old.status, &old.message) {
        let _ = session.presence_status(new.status, &new.message);
    }
    if !removed.is_empty() {
        let _ = session.presence_contacts(chatr_proto::ContactsOp::Remove, &removed);
    }
    if !added.is_empty() || removed.is_empty() {
        // An empty add still gets an acknowledgement: the caller learns it was applied.
        let _ = session.presence_contacts(chatr_proto::ContactsOp::Add, &added);
    }
}

/// The connection is unusable: I/O failed (what else the codec may report is
/// kept as the cause, as invalid data).
fn codec_to_transport(err: CodecError) -> TransportError {
    match err {
        CodecError::Io(err) => err.into(),
        other => io::Error::new(io::ErrorKind::InvalidData, other).into(),
    }
}

#[cfg(test)]
#[path = "driver_tests.rs"]
mod tests;
