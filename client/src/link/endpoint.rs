//! The QUIC endpoint on the shared socket: connect as initiator, accept as responder.
//!
//! # Link setup
//!
//! 1. The initiator connects with a TLS config that pins the responder's key
//!    ([`rpk`](super::rpk)). A different key fails the handshake →
//!    [`LinkError::KeyMismatch`].
//! 2. The responder's handshake accepts any ed25519 client key; [`LinkEndpoint::accept`]
//!    returns an [`IncomingLink`] exposing it.
//! 3. The responder checks that key against the peer it agreed to talk to
//!    ([`IncomingLink::accept`]). On a match it opens a unidirectional stream and sends one
//!    byte `0x01` ("link confirmed"); on a mismatch it closes the connection with
//!    [`CloseCode::KeyMismatch`] and reports [`LinkError::KeyMismatch`].
//! 4. The initiator's [`LinkEndpoint::connect`] returns only after that confirmation, so both
//!    sides agree the link exists (or the initiator gets [`LinkError::Refused`]).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ed25519_dalek::{SigningKey, VerifyingKey};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{IdleTimeout, TransportConfig, VarInt};
use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use tokio::sync::{Mutex, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::LinkError;
use super::close_code::CloseCode;
use super::config::LinkConfig;
use super::congestion::FlooredBbr;
use super::peer_link::PeerLink;
use super::routes::{Route, Routes};
use super::rpk::{self, SeenKey};
use super::socket::{ControlRx, PathSocket, RawSender, TlsRelayPort};
use crate::path::{PathId, SendPlan};

/// The byte the responder sends on its first unidirectional stream to confirm the link.
const LINK_CONFIRMED: u8 = 0x01;

/// The TLS server name the initiator sends. Peers are identified by their raw keys, never by
/// name, so it is a constant that reveals nothing.
const SERVER_NAME: &str = "chatr.peer";

/// Unidirectional streams each side may open: the confirmation, plus room for later use.
const MAX_UNI_STREAMS: u32 = 4;

/// Per-stream receive window. quinn's default (1.25 MB) caps one stream at
/// window / RTT, about 240 Mbit/s at a 40 ms RTT, below what a home uplink
/// path can carry; a pipe or file transfer is one stream. Memory is only
/// committed while the application leaves received data unread.
const STREAM_RECEIVE_WINDOW: u32 = 16 * 1024 * 1024;

/// Connection-wide receive and send windows: room for the one bulk stream
/// plus chat beside it.
const CONNECTION_WINDOW: u32 = 32 * 1024 * 1024;

/// Incoming handshakes run concurrently (so one stalled peer cannot hold up the others), but
/// no more than this many at once.
const MAX_PENDING_HANDSHAKES: usize = 16;

/// Finished incoming handshakes waiting for [`LinkEndpoint::accept`].
const ACCEPT_QUEUE: usize = 16;

/// Largest UDP payload QUIC may discover: quinn's 1452, less room for the 13-byte relay
/// header (plus slack), so a datagram sized for a direct path still fits through the UDP
/// relay inside a 1500-byte MTU, over IPv4 or IPv6, when the link moves there.
pub const MAX_QUIC_PAYLOAD: u16 = 1436;

/// Lowest initial RTT estimate [`LinkEndpoint::connect_with_rtt`] uses: a LAN round trip
/// of a fraction of a millisecond would make the first retransmission timers
/// needlessly tight against scheduling jitter.
pub const MIN_INITIAL_RTT: Duration = Duration::from_millis(10);

/// Highest initial RTT estimate [`LinkEndpoint::connect_with_rtt`] uses (a slower probe
/// answer was probably delayed by loss, not by the path).
pub const MAX_INITIAL_RTT: Duration = Duration::from_secs(1);

/// Shortest time [`LinkEndpoint::close`] lets closed connections drain.
const MIN_CLOSE_LINGER: Duration = Duration::from_millis(100);

/// quinn's default maximum ACK delay, part of every probe timeout.
const MAX_ACK_DELAY: Duration = Duration::from_millis(25);

type AcceptResult = Result<IncomingLink, LinkError>;

/// A QUIC endpoint for peer links on the client's shared UDP socket.
///
/// It acts as both initiator (QUIC client) and responder (QUIC server). Every non-QUIC
/// datagram arriving on the socket goes to the [`ControlRx`] returned by [`new`](Self::new);
/// probes go out through [`send_raw`](Self::send_raw) or a [`RawSender`].
#[derive(Debug)]
pub struct LinkEndpoint {
    endpoint: quinn::Endpoint,
    socket: Arc<PathSocket>,
    /// The session driver's end of the TLS relay, until it is taken.
    tls_relay: std::sync::Mutex<Option<TlsRelayPort>>,
    provider: Arc<CryptoProvider>,
    identity: Arc<CertifiedKey>,
    transport: Arc<TransportConfig>,
    config: LinkConfig,
    /// The largest RTT seen on a confirmed link, in µs (0: none yet); sizes the close linger.
    link_rtt: Arc<AtomicU64>,
    /// Results of incoming handshakes, produced by the acceptor task.
    incoming: Mutex<mpsc::Receiver<AcceptResult>>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl Drop for LinkEndpoint {
    fn drop(&mut self) {
        // The acceptor task holds an endpoint handle; let it go so the socket can close once
        // the last link is gone.
        self.shutdown.cancel();
    }
}

impl LinkEndpoint {
    /// Takes over the already-bound UDP `socket` (port P) and starts a QUIC endpoint on it,
    /// authenticating as `identity`. Must be called inside a tokio runtime.
    pub fn new(
        socket: std::net::UdpSocket,
        identity: &SigningKey,
        config: LinkConfig,
    ) -> Result<(Self, ControlRx), LinkError> {
        let provider = rpk::provider();
        let certified = rpk::certified_key(identity, &provider)?;
        let transport = Arc::new(transport_config(&config));

        let server_tls = rpk::server_config(&provider, &certified, config.newest_version)?;
        let server_quic = QuicServerConfig::try_from(server_tls).map_err(no_initial_suite)?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_quic));
        server.transport_config(transport.clone());
        // A path-managed link's peer is its virtual address whatever the path; a
        // datagram from an address QUIC does not know is not a migration but a stray.
        // NAT rebinding is found by the path probes instead (`crate::path`).
        server.migration(false);

        let mut endpoint_config = quinn::EndpointConfig::default();
        // Every QUIC packet must keep bit 0x40 set: it is how the socket tells QUIC apart from
        // control datagrams and STUN.
        endpoint_config.grease_quic_bit(false);

        let (socket, control, tls_relay) =
            PathSocket::new(socket, config.control_queue, config.virtual_only)?;
        let endpoint = quinn::Endpoint::new_with_abstract_socket(
            endpoint_config,
            Some(server),
            socket.clone(),
            Arc::new(quinn::TokioRuntime),
        )?;
        let (accepted_tx, accepted_rx) = mpsc::channel(ACCEPT_QUEUE);
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let link_rtt = Arc::new(AtomicU64::new(0));
        tasks.spawn(run_acceptor(
            endpoint.clone(),
            accepted_tx,
            config.handshake_timeout,
            config.virtual_only,
            link_rtt.clone(),
            shutdown.clone(),
            tasks.clone(),
        ));
        let link_endpoint = Self {
            endpoint,
            socket,
            tls_relay: std::sync::Mutex::new(Some(tls_relay)),
            provider,
            identity: certified,
            transport,
            config,
            link_rtt,
            incoming: Mutex::new(accepted_rx),
            shutdown,
            tasks,
        };
        Ok((link_endpoint, control))
    }

    /// Opens a link to `remote` as initiator, accepting only a peer that proves `expected`.
    ///
    /// Returns once the responder has confirmed the link. Fails with
    /// [`LinkError::KeyMismatch`] if the peer has another key, [`LinkError::Refused`] if the
    /// responder does not accept ours, and [`LinkError::HandshakeTimeout`] after
    /// [`LinkConfig::handshake_timeout`].
    pub async fn connect(
        &self,
        remote: SocketAddr,
        expected: VerifyingKey,
    ) -> Result<PeerLink, LinkError> {
        self.connect_with_rtt(remote, expected, None).await
    }

    /// [`connect`](Self::connect), starting QUIC's RTT estimate from `measured` (e.g. the
    /// round trip the hole punch just saw on this path) instead of quinn's generic 333 ms.
    ///
    /// With the estimate from the path itself, a lost handshake packet is resent after a
    /// few path RTTs rather than after about a second. The value is clamped to
    /// [`MIN_INITIAL_RTT`]..=[`MAX_INITIAL_RTT`]; `None` keeps the default. The RTT
    /// estimate is local to this side and never sent.
    pub async fn connect_with_rtt(
        &self,
        remote: SocketAddr,
        expected: VerifyingKey,
        measured: Option<Duration>,
    ) -> Result<PeerLink, LinkError> {
        let (tls, seen) = rpk::client_config(
            &self.provider,
            &self.identity,
            expected,
            self.config.newest_version,
        )?;
        let quic = QuicClientConfig::try_from(tls).map_err(no_initial_suite)?;
        let mut client = quinn::ClientConfig::new(Arc::new(quic));
        let transport = match measured {
            None => self.transport.clone(),
            Some(rtt) => Arc::new(client_transport_config(&self.config, rtt)),
        };
        client.transport_config(transport);
        let connecting = self
            .endpoint
            .connect_with(client, remote, SERVER_NAME)
            .map_err(|source| LinkError::Connect { remote, source })?;

        let setup = async {
            let connection = connecting
                .await
                .map_err(|e| handshake_error(e, &seen, expected))?;
            // The verifier already refused other keys; this re-check is belt and braces.
            let got = rpk::peer_key(&connection).ok_or(LinkError::NotAnEd25519Key)?;
            if got != expected {
                connection.close(CloseCode::KeyMismatch.to_varint(), b"unexpected key");
                return Err(LinkError::key_mismatch(expected, got));
            }
            await_confirmation(&connection).await?;
            record_rtt(&self.link_rtt, &connection);
            tracing::debug!(%remote, "peer link confirmed (initiator)");
            Ok(PeerLink::new(connection, got))
        };
        let after = self.config.handshake_timeout;
        match tokio::time::timeout(after, setup).await {
            Ok(result) => result,
            Err(_) => Err(LinkError::HandshakeTimeout { remote, after }),
        }
    }

    /// Waits for the next peer to complete a handshake with us (as responder).
    ///
    /// The returned [`IncomingLink`] has proved its key but is not confirmed yet: check it
    /// with [`IncomingLink::accept`] or turn it away with [`IncomingLink::refuse`]. Handshakes
    /// run in the background, several at once, each bounded by
    /// [`LinkConfig::handshake_timeout`]; an error concerns one failed attempt only (the
    /// endpoint stays usable), except [`LinkError::EndpointClosed`]. Cancel-safe.
    pub async fn accept(&self) -> Result<IncomingLink, LinkError> {
        let mut incoming = self.incoming.lock().await;
        incoming
            .recv()
            .await
            .unwrap_or(Err(LinkError::EndpointClosed))
    }

    /// Sends a raw (non-QUIC) datagram from the link socket, e.g. a hole-punch probe.
    pub async fn send_raw(&self, to: SocketAddr, datagram: &[u8]) -> io::Result<()> {
        self.socket.send_raw(to, datagram).await
    }

    /// A cloneable handle for sending raw datagrams from other tasks.
    pub fn raw_sender(&self) -> RawSender {
        RawSender::new(self.socket.clone())
    }

    /// The local address of the link socket.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// The session driver's end of the TLS relay (once; `None` after).
    pub fn take_tls_relay(&self) -> Option<TlsRelayPort> {
        self.tls_relay
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }

    /// The table of path-managed links.
    pub(crate) fn routes(&self) -> &Arc<Routes> {
        self.socket.routes()
    }

    /// Sets where a path-managed link's datagrams go (see `link::routes`).
    pub(crate) fn set_plan(
        &self,
        route: &Route,
        plan: &SendPlan,
        direct: impl Iterator<Item = SocketAddr>,
    ) {
        self.socket.set_plan(route, plan, direct);
    }

    /// Sends a control datagram of a path-managed link on `path`.
    /// Makes `socket` carry the direct path to `remote`, feeding it `first` (the
    /// datagram that won it) as received (birthday punching; see `socket.rs`).
    pub(crate) fn adopt_aux(
        &self,
        remote: SocketAddr,
        socket: Arc<tokio::net::UdpSocket>,
        first: bytes::Bytes,
    ) {
        self.socket.adopt_aux(remote, socket);
        self.socket.inject_aux(remote, first);
    }

    /// Stops using the auxiliary socket of `remote`.
    pub(crate) fn release_aux(&self, remote: SocketAddr) {
        self.socket.release_aux(remote);
    }

    pub(crate) async fn send_on_path(
        &self,
        route: &Route,
        path: PathId,
        datagram: &[u8],
    ) -> io::Result<()> {
        self.socket.send_on_path(route, path, datagram).await
    }

    /// Relayed QUIC datagrams (sent, received, dropped) so far.
    pub fn relay_stats(&self) -> (u64, u64, u64) {
        let s = self.socket.relay_stats();
        (
            s.sent.load(std::sync::atomic::Ordering::Relaxed),
            s.received.load(std::sync::atomic::Ordering::Relaxed),
            s.dropped.load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    /// The settings this endpoint runs with.
    pub fn config(&self) -> &LinkConfig {
        &self.config
    }

    /// Control datagrams (delivered to the channel, dropped because it was full) so far.
    pub fn control_stats(&self) -> (u64, u64) {
        self.socket.stats()
    }

    /// Closes every link with [`CloseCode::Normal`], stops accepting, and lets the closed
    /// connections drain for about three probe timeouts of the slowest link this endpoint
    /// carried (at least 100 ms, at most the idle timeout), so a peer whose first
    /// `CONNECTION_CLOSE` was lost is answered again; it returns as soon as every connection
    /// has drained.
    pub async fn close(&self) {
        self.shutdown.cancel();
        self.endpoint
            .close(CloseCode::Normal.to_varint(), b"endpoint closing");
        self.tasks.close();
        let rtt = match self.link_rtt.load(Ordering::Relaxed) {
            0 => None,
            micros => Some(Duration::from_micros(micros)),
        };
        let linger = close_linger(rtt, self.config.idle_timeout);
        let _ = tokio::time::timeout(linger, async {
            self.tasks.wait().await;
            self.endpoint.wait_idle().await;
        })
        .await;
    }
}

/// Takes incoming connections and runs their handshakes concurrently, queueing the results
/// for [`LinkEndpoint::accept`].
async fn run_acceptor(
    endpoint: quinn::Endpoint,
    accepted: mpsc::Sender<AcceptResult>,
    timeout: Duration,
    virtual_only: bool,
    link_rtt: Arc<AtomicU64>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    let pending = Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES));
    loop {
        let incoming = tokio::select! {
            _ = shutdown.cancelled() => break,
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => incoming,
                None => break,
            },
        };
        if virtual_only && !super::routes::is_virtual(incoming.remote_address()) {
            // Not answered at all: a reply (even a refusal) would reach the initiator's
            // one connection and could end it.
            tracing::debug!(remote = %incoming.remote_address(), "ignoring a handshake from an unmanaged address");
            incoming.ignore();
            continue;
        }
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            permit = pending.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let accepted = accepted.clone();
        let shutdown = shutdown.clone();
        let link_rtt = link_rtt.clone();
        tasks.spawn(async move {
            let result = tokio::select! {
                _ = shutdown.cancelled() => return,
                result = handshake(incoming, timeout, link_rtt) => result,
            };
            if let Err(e) = &result {
                tracing::debug!(error = %e, "incoming peer link handshake failed");
            }
            // The permit is held until the result is queued, so an endpoint nobody accepts
            // from holds at most MAX_PENDING_HANDSHAKES connections.
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = accepted.send(result) => {}
            }
            drop(permit);
        });
    }
}

/// Completes one incoming handshake (as responder) and reads the peer's key.
async fn handshake(
    incoming: quinn::Incoming,
    after: Duration,
    link_rtt: Arc<AtomicU64>,
) -> AcceptResult {
    let remote = incoming.remote_address();
    let connecting = incoming.accept()?;
    let connection = match tokio::time::timeout(after, connecting).await {
        Ok(result) => result?,
        Err(_) => return Err(LinkError::HandshakeTimeout { remote, after }),
    };
    match rpk::peer_key(&connection) {
        Some(peer) => {
            tracing::debug!(%remote, "incoming peer link authenticated");
            Ok(IncomingLink {
                connection,
                peer,
                link_rtt,
            })
        }
        None => {
            connection.close(CloseCode::Protocol.to_varint(), b"no ed25519 raw key");
            Err(LinkError::NotAnEd25519Key)
        }
    }
}

/// A peer that completed the handshake with us as responder, waiting for our decision.
#[derive(Debug)]
pub struct IncomingLink {
    connection: quinn::Connection,
    peer: VerifyingKey,
    /// The endpoint's largest link RTT, updated when this link is confirmed.
    link_rtt: Arc<AtomicU64>,
}

impl IncomingLink {
    /// The key the peer proved during the handshake.
    pub fn peer_key(&self) -> VerifyingKey {
        self.peer
    }

    /// Where the peer connected from.
    pub fn remote_addr(&self) -> SocketAddr {
        self.connection.remote_address()
    }

    /// Confirms the link if the peer's key is `expected`. Otherwise closes it with
    /// [`CloseCode::KeyMismatch`] and fails with [`LinkError::KeyMismatch`].
    pub async fn accept(self, expected: &VerifyingKey) -> Result<PeerLink, LinkError> {
        if self.peer != *expected {
            self.connection.close(
                CloseCode::KeyMismatch.to_varint(),
                b"key mismatch: this is not the key the responder expected",
            );
            return Err(LinkError::key_mismatch(*expected, self.peer));
        }
        let mut confirm = self.connection.open_uni().await?;
        confirm.write_all(&[LINK_CONFIRMED]).await?;
        let _ = confirm.finish();
        record_rtt(&self.link_rtt, &self.connection);
        tracing::debug!(remote = %self.connection.remote_address(), "peer link confirmed (responder)");
        Ok(PeerLink::new(self.connection, self.peer))
    }

    /// Turns the peer away with [`CloseCode::Refused`] and `reason`.
    pub fn refuse(self, reason: &str) {
        self.connection
            .close(CloseCode::Refused.to_varint(), reason.as_bytes());
    }
}

/// Keeps the largest RTT of the confirmed links in `largest` (µs).
fn record_rtt(largest: &AtomicU64, connection: &quinn::Connection) {
    let micros = u64::try_from(connection.rtt().as_micros()).unwrap_or(u64::MAX);
    largest.fetch_max(micros.max(1), Ordering::Relaxed);
}

/// How long [`LinkEndpoint::close`] waits for closed connections to drain: three probe
/// timeouts (RFC 9000 §10.2) of a link with round trip `rtt` (a probe timeout taken as
/// 3 × RTT + the maximum ACK delay, as it is early in a connection), at least
/// [`MIN_CLOSE_LINGER`] and at most the idle timeout.
///
/// Waiting for *every* connection to drain (quinn's `wait_idle`) kept a process alive for
/// connections that never were links and have nobody left to tell:
/// - an attempt that lost the link race with its Initial lost never had an RTT sample, so
///   quinn drains it for 3 probe timeouts of the generic 333 ms estimate, about 3 s;
/// - quinn-proto 0.11.19 never starts the drain timer of a server connection whose *first*
///   Initial is the peer's `CONNECTION_CLOSE` (the initiator dropping such an attempt): it
///   is only freed by its idle timeout, 45 s later (issue 12's listener hang).
fn close_linger(rtt: Option<Duration>, idle_timeout: Duration) -> Duration {
    let pto = rtt.map_or(Duration::ZERO, |rtt| {
        rtt.saturating_mul(3).saturating_add(MAX_ACK_DELAY)
    });
    pto.saturating_mul(3)
        .clamp(MIN_CLOSE_LINGER, idle_timeout.max(MIN_CLOSE_LINGER))
}

/// Waits for the responder's confirmation byte on its first unidirectional stream.
async fn await_confirmation(connection: &quinn::Connection) -> Result<(), LinkError> {
    let mut confirm = connection.accept_uni().await.map_err(refusal)?;
    let mut byte = [0u8; 1];
    match confirm.read_exact(&mut byte).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::ReadError(quinn::ReadError::ConnectionLost(e))) => {
            return Err(refusal(e));
        }
        Err(e) => return Err(LinkError::Read(e)),
    }
    if byte != [LINK_CONFIRMED] {
        connection.close(CloseCode::Protocol.to_varint(), b"bad link confirmation");
        return Err(LinkError::Protocol("bad link confirmation"));
    }
    Ok(())
}

/// Maps a connection closed by the peer during setup to [`LinkError::Refused`].
fn refusal(error: quinn::ConnectionError) -> LinkError {
    match error {
        quinn::ConnectionError::ApplicationClosed(close) => {
            let reason = String::from_utf8_lossy(&close.reason).into_owned();
            let reason = match CloseCode::from_varint(close.error_code) {
                Some(CloseCode::KeyMismatch) => "key mismatch: the peer expected a different key \
                    from us (if we rotated our key, the peer must refresh its contact for us)"
                    .to_owned(),
                _ if reason.is_empty() => format!("closed with code {}", close.error_code),
                _ => reason,
            };
            LinkError::Refused { reason }
        }
        other => LinkError::Connection(other),
    }
}

/// Explains a failed initiator handshake, preferring the key mismatch our verifier saw.
fn handshake_error(
    error: quinn::ConnectionError,
    seen: &SeenKey,
    expected: VerifyingKey,
) -> LinkError {
    match seen.get() {
        Some(&got) if got != expected => LinkError::key_mismatch(expected, got),
        _ => refusal(error),
    }
}

/// quinn refuses a rustls config without TLS_AES_128_GCM_SHA256; ring always has it.
fn no_initial_suite(error: quinn::crypto::rustls::NoInitialCipherSuite) -> LinkError {
    LinkError::Tls(rustls::Error::General(error.to_string()))
}

/// The transport settings of one outgoing connection whose path RTT was measured: those
/// shared by both roles, with QUIC's initial RTT estimate taken from the measurement.
fn client_transport_config(config: &LinkConfig, measured: Duration) -> TransportConfig {
    let mut transport = transport_config(config);
    transport.initial_rtt(measured.clamp(MIN_INITIAL_RTT, MAX_INITIAL_RTT));
    transport
}

/// The QUIC transport settings shared by both roles.
fn transport_config(config: &LinkConfig) -> TransportConfig {
    let mut transport = TransportConfig::default();
    transport.keep_alive_interval(Some(config.effective_keep_alive()));
    let idle_ms = u32::try_from(config.idle_timeout.as_millis()).unwrap_or(u32::MAX);
    transport.max_idle_timeout(Some(IdleTimeout::from(VarInt::from_u32(idle_ms.max(1)))));
    transport.max_concurrent_bidi_streams(VarInt::from_u32(config.max_streams));
    transport.max_concurrent_uni_streams(VarInt::from_u32(MAX_UNI_STREAMS));
    transport.stream_receive_window(VarInt::from_u32(STREAM_RECEIVE_WINDOW));
    transport.receive_window(VarInt::from_u32(CONNECTION_WINDOW));
    transport.send_window(u64::from(CONNECTION_WINDOW));
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(MAX_QUIC_PAYLOAD);
    transport.mtu_discovery_config(Some(mtu));
    // BBR rather than quinn's default Cubic: random loss on a punched path is not
    // congestion (see `congestion`).
    transport.congestion_controller_factory(Arc::new(FlooredBbr::default()));
    transport
}

#[cfg(test)]
mod tests {
    use super::*;

    /// quinn's `TransportConfig` has no getters; its `Debug` output lists every field.
    fn initial_rtt_of(transport: &TransportConfig) -> String {
        let debug = format!("{transport:?}");
        let start = debug.find("initial_rtt: ").unwrap();
        let rest = &debug[start + "initial_rtt: ".len()..];
        rest[..rest.find(',').unwrap()].to_owned()
    }

    #[test]
    fn measured_rtt_becomes_the_initial_estimate_within_bounds() {
        let config = LinkConfig::default();
        let with =
            |ms| initial_rtt_of(&client_transport_config(&config, Duration::from_millis(ms)));
        assert_eq!(with(47), "47ms");
        assert_eq!(with(0), "10ms");
        assert_eq!(with(5_000), "1s");
        // Without a measurement the shared config keeps quinn's default.
        assert_eq!(initial_rtt_of(&transport_config(&config)), "333ms");
    }

    #[test]
    fn measured_rtt_keeps_the_other_link_settings() {
        let config = LinkConfig {
            keep_alive: Duration::from_secs(60),
            max_streams: 7,
            ..LinkConfig::default()
        };
        let shared = format!("{:?}", transport_config(&config));
        let measured = format!(
            "{:?}",
            client_transport_config(&config, Duration::from_millis(47))
        );
        // Only the RTT estimate differs; keep-alive (capped at 15 s), idle timeout and
        // stream limits are the shared ones.
        assert_eq!(
            measured.replace("initial_rtt: 47ms", "initial_rtt: 333ms"),
            shared
        );
        assert!(
            shared.contains("keep_alive_interval: Some(15s)"),
            "{shared}"
        );
        assert!(
            shared.contains("max_concurrent_bidi_streams: 7"),
            "{shared}"
        );
    }

    #[test]
    fn close_linger_is_three_probe_timeouts_within_bounds() {
        let idle = Duration::from_secs(45);
        assert_eq!(close_linger(None, idle), MIN_CLOSE_LINGER);
        // A LAN link: the floor.
        assert_eq!(
            close_linger(Some(Duration::from_micros(400)), idle),
            MIN_CLOSE_LINGER
        );
        // 100 ms: 3 × (300 ms + 25 ms).
        assert_eq!(
            close_linger(Some(Duration::from_millis(100)), idle),
            Duration::from_millis(975)
        );
        assert_eq!(close_linger(Some(Duration::from_secs(60)), idle), idle);
    }

    /// A responder whose incoming connection began with the initiator's CONNECTION_CLOSE
    /// (the initiator gave up on an attempt whose first Initial was lost) must not keep
    /// `close` waiting for that connection's idle timeout.
    #[tokio::test]
    async fn close_does_not_wait_for_an_attempt_that_began_with_its_close() {
        let key = || SigningKey::from_bytes(&rand::random::<[u8; 32]>());
        let (responder_key, initiator_key) = (key(), key());
        let config = LinkConfig {
            idle_timeout: Duration::from_secs(10),
            ..LinkConfig::default()
        };
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let responder_addr = socket.local_addr().unwrap();
        let (responder, _control) =
            LinkEndpoint::new(socket, &responder_key, config.clone()).unwrap();
        // Between the two: a relay that loses the initiator's first datagram (its Initial)
        // and passes on the rest.
        let relay = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let relay_addr = relay.local_addr().unwrap();
        let relaying = tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            let mut first = true;
            while let Ok((n, from)) = relay.recv_from(&mut buf).await {
                if from == responder_addr || std::mem::take(&mut first) {
                    continue;
                }
                let _ = relay
                    .send_to(buf.get(..n).unwrap_or_default(), responder_addr)
                    .await;
            }
        });
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let (initiator, _control) = LinkEndpoint::new(socket, &initiator_key, config).unwrap();
        // The attempt is abandoned before quinn resends its Initial: dropping it sends a
        // CONNECTION_CLOSE, the first packet of that connection the responder sees.
        let attempt = tokio::time::timeout(
            Duration::from_millis(200),
            initiator.connect(relay_addr, responder_key.verifying_key()),
        )
        .await;
        assert!(attempt.is_err(), "{attempt:?}");
        let seen = tokio::time::timeout(Duration::from_secs(3), responder.accept()).await;
        assert!(
            matches!(seen, Ok(Err(LinkError::Connection(_)))),
            "the responder should see the aborted handshake: {seen:?}"
        );
        let started = std::time::Instant::now();
        responder.close().await;
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "close took {:?}",
            started.elapsed()
        );
        relaying.abort();
    }

    #[test]
    fn flow_control_windows_leave_room_for_long_fat_paths() {
        let shared = format!("{:?}", transport_config(&LinkConfig::default()));
        assert!(
            shared.contains("stream_receive_window: 16777216"),
            "{shared}"
        );
        assert!(shared.contains("receive_window: 33554432"), "{shared}");
        assert!(shared.contains("send_window: 33554432"), "{shared}");
    }
}
