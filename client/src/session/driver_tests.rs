//! The session driver over in-memory pipes, with paused time: the test plays
//! the Connect server on the other end of a `tokio::io::duplex`, and a scripted
//! connector decides what each connection attempt gives. Time only moves when
//! every task waits, so backoff delays, timeouts and ping cadences are exact and
//! cost no wall-clock time.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::VecDeque;
use std::error::Error as _;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Mutex;
use std::time::Duration;

use chatr_proto::{
    Endpoint, PacketConnected, PacketConnectionRequest, PacketDisconnect, PacketPing, PacketPong,
    VERSION_CURRENT, channel_binding_message,
};
use ed25519_dalek::{Signature, Verifier as _};
use tokio::io::DuplexStream;

use super::*;
use crate::config::{Fingerprint, HostPort, Trust};
use crate::home::Home;
use crate::identity::Identity;
use crate::session::BackoffConfig;
use crate::session::event::SessionEnd;

const SERVER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 7777);
const LOCAL: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), 40000);
const EXPORTER: [u8; 32] = [7; 32];
const TOKEN: [u8; 16] = [9; 16];
const BINDING_KEY: [u8; 32] = [5; 32];
/// Longest any single step may take, in (paused) time.
const WAIT: Duration = Duration::from_secs(300);

type ServerEnd = Framed<DuplexStream, ConnectCodec>;

/// What one connection attempt gives.
enum Step {
    /// A pipe whose other end goes to the test.
    Pipe,
    /// This error.
    Fail(SessionError),
    /// Nothing, ever (the driver's connect timeout must end it).
    Hang,
}

/// A connector following a script; after the script, every attempt gets a pipe.
struct Scripted {
    script: Mutex<VecDeque<Step>>,
    attempts: Arc<Mutex<Vec<Instant>>>,
    servers: mpsc::Sender<ServerEnd>,
    pipe_capacity: usize,
}

impl Connect for Scripted {
    type Stream = DuplexStream;

    fn connect(
        &self,
        _config: &SessionConfig,
    ) -> impl Future<Output = Result<Connected<DuplexStream>, SessionError>> + Send {
        self.attempts.lock().unwrap().push(Instant::now());
        let step = self
            .script
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(Step::Pipe);
        let servers = self.servers.clone();
        let capacity = self.pipe_capacity;
        async move {
            match step {
                Step::Fail(err) => Err(err),
                Step::Hang => std::future::pending().await,
                Step::Pipe => {
                    let (client, server) = tokio::io::duplex(capacity);
                    servers
                        .send(Framed::new(server, ConnectCodec::new()))
                        .await
                        .unwrap();
                    Ok(Connected {
                        stream: client,
                        server: SERVER,
                        local: LOCAL,
                        same_port: true,
                        exporter: EXPORTER,
                        binding_key: Some(BINDING_KEY),
                        rtt: None,
                    })
                }
            }
        }
    }
}

/// Records the datagrams the driver sends from "the UDP socket".
struct Datagrams(mpsc::Sender<(SocketAddr, Vec<u8>)>);

impl DatagramOut for Datagrams {
    fn send_datagram<'a>(
        &'a self,
        to: SocketAddr,
        datagram: &'a [u8],
    ) -> BoxFuture<'a, io::Result<()>> {
        let _ = self.0.try_send((to, datagram.to_vec()));
        Box::pin(async { Ok(()) })
    }
}

struct Harness {
    handle: SessionHandle,
    events: mpsc::Receiver<SessionEvent>,
    servers: mpsc::Receiver<ServerEnd>,
    datagrams: mpsc::Receiver<(SocketAddr, Vec<u8>)>,
    attempts: Arc<Mutex<Vec<Instant>>>,
    identity: Identity,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

/// Deterministic backoff: 1 s, 2 s, 4 s, 8 s, 8 s, …
fn backoff() -> BackoffConfig {
    BackoffConfig {
        initial: Duration::from_secs(1),
        max: Duration::from_secs(8),
        multiplier: 2.0,
        jitter: 0.0,
    }
}

fn config(identity: Identity) -> SessionConfig {
    let tls = crate::trust::client_config(
        &Trust::Fingerprint(Fingerprint([0; 32])),
        &Home::new("/nonexistent"),
    )
    .unwrap();
    let server = HostPort {
        host: "connect.example.org".into(),
        port: 7777,
    };
    let mut config = SessionConfig::new(identity, server, tls, LOCAL.port());
    config.backoff = backoff();
    config
}

fn start(script: Vec<Step>) -> Harness {
    start_with(script, 64 * 1024, |_| {})
}

fn start_with(
    script: Vec<Step>,
    pipe_capacity: usize,
    tweak: impl FnOnce(&mut SessionConfig),
) -> Harness {
    let identity = Identity::generate();
    let mut config = config(identity.clone());
    tweak(&mut config);
    let (servers_tx, servers) = mpsc::channel(8);
    let (datagrams_tx, datagrams) = mpsc::channel(64);
    let (events_tx, events) = mpsc::channel(64);
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let connector = Scripted {
        script: Mutex::new(script.into()),
        attempts: attempts.clone(),
        servers: servers_tx,
        pipe_capacity,
    };
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let handle = spawn_with(
        connector,
        config,
        Arc::new(Datagrams(datagrams_tx)),
        None,
        events_tx,
        shutdown.clone(),
        &tracker,
    );
    Harness {
        handle,
        events,
        servers,
        datagrams,
        attempts,
        identity,
        shutdown,
        tracker,
    }
}

impl Harness {
    async fn next_server(&mut self) -> ServerEnd {
        tokio::time::timeout(WAIT, self.servers.recv())
            .await
            .expect("a connection attempt in time")
            .expect("driver alive")
    }

    /// Takes the next connection and logs it in like the server does.
    async fn accept_login(&mut self) -> ServerEnd {
        let mut server = self.next_server().await;
        expect_login(&mut server, &self.identity).await;
        server
            .send(Packet::Connected(PacketConnected {
                udp_token: Some(TOKEN),
                session: None,
            }))
            .await
            .unwrap();
        server
    }

    async fn next_event(&mut self) -> SessionEvent {
        tokio::time::timeout(WAIT, self.events.recv())
            .await
            .expect("an event in time")
            .expect("driver alive")
    }

    /// The next `Disconnected` event's reason, skipping others.
    async fn next_disconnect(&mut self) -> SessionEnd {
        loop {
            if let SessionEvent::Disconnected { reason } = self.next_event().await {
                return reason;
            }
        }
    }

    /// Waits for a status matching `want`.
    async fn wait_status(&self, want: impl Fn(&SessionStatus) -> bool) -> SessionStatus {
        let mut watch = self.handle.watch();
        tokio::time::timeout(WAIT, async {
            loop {
                {
                    let status = watch.borrow_and_update();
                    if want(&status) {
                        return status.clone();
                    }
                }
                watch.changed().await.unwrap();
            }
        })
        .await
        .expect("status in time")
    }

    /// A connection handed out already, if any (never waits).
    fn next_server_now(&mut self) -> Option<ServerEnd> {
        self.servers.try_recv().ok()
    }

    async fn next_datagram(&mut self) -> (SocketAddr, Vec<u8>) {
        tokio::time::timeout(WAIT, self.datagrams.recv())
            .await
            .expect("a datagram in time")
            .expect("driver alive")
    }

    fn attempts(&self) -> Vec<Instant> {
        self.attempts.lock().unwrap().clone()
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.tracker.close();
        tokio::time::timeout(WAIT, self.tracker.wait())
            .await
            .expect("driver stops");
    }
}

/// Reads a packet from the client.
async fn next_packet(server: &mut ServerEnd) -> Packet {
    tokio::time::timeout(WAIT, server.next())
        .await
        .expect("a packet in time")
        .expect("stream open")
        .expect("valid frame")
}

/// The client's first packet: a version-2 login signed over the channel binding.
async fn expect_login(server: &mut ServerEnd, identity: &Identity) {
    let Packet::Connect(login) = next_packet(server).await else {
        panic!("expected PacketConnect first");
    };
    assert_eq!(login.version, VERSION_CURRENT);
    assert_eq!(login.uuid, identity.uuid());
    let signature = Signature::from_slice(&login.signature).unwrap();
    identity
        .verifying_key()
        .verify(&channel_binding_message(&login.uuid, &EXPORTER), &signature)
        .unwrap();
}

fn endpoint(s: &str) -> Endpoint {
    Endpoint::new(s.parse().unwrap())
}

fn unreachable(cause: ConnectError) -> SessionError {
    SessionError::Unreachable {
        server: "connect.example.org:7777".into(),
        cause,
    }
}

fn refused() -> ConnectError {
    ConnectError::Tcp(Arc::new(io::Error::from(io::ErrorKind::ConnectionRefused)))
}

#[tokio::test(start_paused = true)]
async fn logs_in_binds_udp_and_answers_every_ping() {
    let mut h = start(vec![]);
    let mut server = h.accept_login().await;

    let info = h.handle.wait_online(WAIT).await.unwrap();
    assert_eq!(
        (info.server, info.local, info.same_port, info.logins),
        (SERVER, LOCAL, true, 1)
    );
    assert_eq!(
        h.next_event().await,
        SessionEvent::Connected {
            udp_token: Some(TOKEN)
        }
    );

    // The binding request goes to the server's UDP port from the shared socket.
    let (to, datagram) = h.next_datagram().await;
    assert_eq!(to, SERVER);
    assert_eq!(
        UdpMessage::decode(&datagram).unwrap(),
        UdpMessage::BindingRequest { token: TOKEN }
    );
    let observed = endpoint("198.51.100.7:40001");
    let tcp_observed = Some(endpoint("198.51.100.7:40000"));
    h.handle.deliver_udp(
        SERVER,
        UdpMessage::BindingResponse {
            observed,
            tcp_observed,
        },
    );
    let info = h.handle.wait_udp_bound(WAIT).await.unwrap();
    assert_eq!(info.udp_observed, Some(observed));
    assert_eq!(info.tcp_observed, tcp_observed);
    assert_eq!(
        h.next_event().await,
        SessionEvent::UdpBound {
            observed,
            tcp_observed
        }
    );

    // The spec's cadence, a ping every 5 s, for ten minutes: each is answered
    // with its id and the session never drops.
    let start = Instant::now();
    for ping_id in 0..120 {
        server
            .send(Packet::Ping(PacketPing { ping_id }))
            .await
            .unwrap();
        assert_eq!(
            next_packet(&mut server).await,
            Packet::Pong(PacketPong { ping_id })
        );
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    assert!(Instant::now() - start >= Duration::from_secs(600));
    assert_eq!(h.handle.online().unwrap().logins, 1);
    assert_eq!(h.attempts().len(), 1);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn reconnects_with_growing_backoff_and_a_login_resets_it() {
    let mut h = start(vec![
        Step::Pipe,
        Step::Fail(unreachable(refused())),
        Step::Fail(unreachable(refused())),
        Step::Pipe,
        Step::Fail(unreachable(refused())),
    ]);
    let server = h.accept_login().await;
    h.handle.wait_online(WAIT).await.unwrap();

    // The server goes away.
    drop(server);
    let lost_at = Instant::now();
    assert_eq!(
        h.next_disconnect().await,
        SessionEnd::Transport(TransportError::Closed)
    );
    let status = h
        .wait_status(|s| matches!(s, SessionStatus::Offline { .. }))
        .await;
    let SessionStatus::Offline { reason, retry_in } = status else {
        unreachable!()
    };
    assert!(matches!(
        reason,
        OfflineReason::Ended(SessionEnd::Transport(TransportError::Closed))
    ));
    assert_eq!(retry_in, Duration::from_secs(1));

    // Two refused attempts, then a login: 1 s, 2 s, 4 s apart.
    let _server = h.accept_login().await;
    h.wait_status(|s| matches!(s, SessionStatus::Online(i) if i.logins == 2))
        .await;
    let attempts = h.attempts();
    assert_eq!(attempts.len(), 4);
    assert_eq!(attempts[1] - lost_at, Duration::from_secs(1));
    assert_eq!(attempts[2] - attempts[1], Duration::from_secs(2));
    assert_eq!(attempts[3] - attempts[2], Duration::from_secs(4));

    // After that login the pacing starts over at 1 s.
    drop(_server);
    let lost_at = Instant::now();
    h.next_disconnect().await;
    let _third = h.accept_login().await;
    h.wait_status(|s| matches!(s, SessionStatus::Online(i) if i.logins == 3))
        .await;
    let attempts = h.attempts();
    assert_eq!(attempts.len(), 6);
    assert_eq!(attempts[4] - lost_at, Duration::from_secs(1));
    assert_eq!(attempts[5] - attempts[4], Duration::from_secs(2));
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn refusals_before_the_first_login_stop_the_driver() {
    for (message, want) in [
        (DisconnectReason::FailedToVerify, "LoginRejected"),
        (DisconnectReason::AlreadyConnected, "AlreadyConnected"),
    ] {
        let mut h = start(vec![]);
        let mut server = h.next_server().await;
        expect_login(&mut server, &h.identity).await;
        server
            .send(Packet::Disconnect(message.into()))
            .await
            .unwrap();
        let err = h.handle.wait_online(WAIT).await.unwrap_err();
        match (want, &err) {
            ("LoginRejected", SessionError::LoginRejected(text)) => {
                assert!(text.contains("Failed to verify!"), "{text}");
            }
            ("AlreadyConnected", SessionError::AlreadyConnected) => {}
            _ => panic!("{message}: {err:?}"),
        }
        assert!(matches!(h.handle.status(), SessionStatus::Stopped(Some(_))));
        // Not retried, however long we wait.
        tokio::time::sleep(Duration::from_secs(120)).await;
        assert_eq!(h.attempts().len(), 1, "{message}");
        h.stop().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_refusal_after_a_login_is_retried() {
    let mut h = start(vec![]);
    let first = h.accept_login().await;
    h.handle.wait_online(WAIT).await.unwrap();
    drop(first);
    h.next_disconnect().await;

    // A takeover in progress: "Already connected!" this time is transient.
    let mut second = h.next_server().await;
    expect_login(&mut second, &h.identity).await;
    second
        .send(Packet::Disconnect(
            DisconnectReason::AlreadyConnected.into(),
        ))
        .await
        .unwrap();
    let end = h.next_disconnect().await;
    assert_eq!(
        end.server_reason(),
        Some(DisconnectReason::AlreadyConnected)
    );
    assert!(end.is_already_connected());
    let _third = h.accept_login().await;
    h.wait_status(|s| matches!(s, SessionStatus::Online(i) if i.logins == 2))
        .await;
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn connect_errors_keep_their_cause_and_only_a_bad_certificate_is_fatal() {
    let mut h = start(vec![
        Step::Fail(unreachable(refused())),
        Step::Fail(SessionError::ServerCertMismatch(
            "fingerprint mismatch".into(),
        )),
    ]);
    let status = h
        .wait_status(|s| matches!(s, SessionStatus::Offline { .. }))
        .await;
    let SessionStatus::Offline {
        reason: OfflineReason::Connect(err),
        ..
    } = status
    else {
        panic!("{status:?}")
    };
    assert_eq!(
        err.to_string(),
        "cannot reach the Connect server connect.example.org:7777: connection refused"
    );
    // The I/O error itself is the root of the chain, not a string copy of it.
    let cause = err.source().unwrap();
    let io = cause
        .source()
        .unwrap()
        .downcast_ref::<Arc<io::Error>>()
        .unwrap();
    assert_eq!(io.kind(), io::ErrorKind::ConnectionRefused);

    let err = h.handle.wait_online(WAIT).await.unwrap_err();
    assert!(
        matches!(err, SessionError::ServerCertMismatch(_)),
        "{err:?}"
    );
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(h.attempts().len(), 2);
    assert!(h.next_server_now().is_none());
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_connect_that_hangs_ends_at_the_connect_timeout() {
    let mut h = start_with(vec![Step::Hang], 64 * 1024, |c| {
        c.connect_timeout = Duration::from_secs(10);
    });
    let status = h
        .wait_status(|s| matches!(s, SessionStatus::Offline { .. }))
        .await;
    let attempts = h.attempts();
    assert_eq!(Instant::now() - attempts[0], Duration::from_secs(10));
    assert!(
        matches!(
            &status,
            SessionStatus::Offline {
                reason: OfflineReason::Connect(SessionError::Unreachable {
                    cause: ConnectError::Timeout(t),
                    ..
                }),
                ..
            } if *t == Duration::from_secs(10)
        ),
        "{status:?}"
    );
    // The next attempt works.
    let _server = h.accept_login().await;
    h.handle.wait_online(WAIT).await.unwrap();
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn commands_are_refused_offline_and_sent_once_online() {
    let mut h = start(vec![Step::Fail(unreachable(refused()))]);
    h.wait_status(|s| matches!(s, SessionStatus::Offline { .. }))
        .await;
    let peer = uuid::Uuid::new_v4();
    let ours = endpoint("10.0.0.2:40000");
    // Answered at once while waiting to retry, not when the driver is back.
    let asked_at = Instant::now();
    assert!(matches!(
        h.handle.request(peer, ours).await,
        Err(SessionError::Offline)
    ));
    assert!(matches!(
        h.handle.deny(peer).await,
        Err(SessionError::Offline)
    ));
    assert_eq!(Instant::now(), asked_at);

    let mut server = h.accept_login().await;
    h.handle.wait_online(WAIT).await.unwrap();
    h.handle.request(peer, ours).await.unwrap();
    assert_eq!(
        next_packet(&mut server).await,
        Packet::ConnectionRequest(PacketConnectionRequest {
            uuid: peer,
            private_endpoint: ours,
            hints: None,
        })
    );
    h.handle.accept(peer, ours).await.unwrap();
    assert!(matches!(
        next_packet(&mut server).await,
        Packet::ConnectionRequestAccept(p) if p.uuid == peer && p.private_endpoint == ours
    ));
    h.handle.deny(peer).await.unwrap();
    assert!(matches!(
        next_packet(&mut server).await,
        Packet::ConnectionRequestDenied(p) if p.uuid == peer
    ));
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn shutdown_says_goodbye_then_stops() {
    let mut h = start(vec![]);
    let mut server = h.accept_login().await;
    h.handle.wait_online(WAIT).await.unwrap();
    let handle = h.handle.clone();
    let shutdown = h.shutdown.clone();
    shutdown.cancel();
    assert_eq!(
        next_packet(&mut server).await,
        Packet::Disconnect(PacketDisconnect::new("Client shutting down"))
    );
    // Then the stream closes.
    assert!(
        tokio::time::timeout(WAIT, server.next())
            .await
            .unwrap()
            .is_none()
    );
    h.stop().await;
    assert!(matches!(handle.status(), SessionStatus::Stopped(None)));
}

#[tokio::test(start_paused = true)]
async fn a_server_that_stops_reading_ends_the_session_at_the_write_timeout() {
    // A pipe that holds a few packets only.
    let mut h = start_with(vec![], 128, |c| c.write_timeout = Duration::from_secs(10));
    let _server = h.accept_login().await;
    h.handle.wait_online(WAIT).await.unwrap();
    // The server reads nothing more; requests pile up until a write stalls.
    let peer = uuid::Uuid::new_v4();
    let before = Instant::now();
    let mut sent = 0;
    while h
        .handle
        .request(peer, endpoint("10.0.0.2:40000"))
        .await
        .is_ok()
    {
        sent += 1;
        assert!(sent < 1000, "writes never stalled");
    }
    assert_eq!(
        h.next_disconnect().await,
        SessionEnd::Transport(TransportError::WriteTimeout)
    );
    assert_eq!(Instant::now() - before, Duration::from_secs(10));
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_silent_server_is_left_after_the_idle_timeout() {
    let mut h = start_with(vec![], 64 * 1024, |c| {
        c.timings.idle_timeout = Duration::from_secs(20);
    });
    let mut server = h.accept_login().await;
    h.handle.wait_online(WAIT).await.unwrap();
    let quiet_since = Instant::now();
    assert_eq!(h.next_disconnect().await, SessionEnd::IdleTimeout);
    assert_eq!(Instant::now() - quiet_since, Duration::from_secs(20));
    // We tell the server why before closing.
    assert_eq!(
        next_packet(&mut server).await,
        Packet::Disconnect(PacketDisconnect::new(SessionEnd::IdleTimeout.to_string()))
    );
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn waiting_for_online_names_the_last_problem() {
    let resolve = || {
        unreachable(ConnectError::Resolve(Arc::new(io::Error::new(
            io::ErrorKind::NotFound,
            "no such host",
        ))))
    };
    let h = start((0..10).map(|_| Step::Fail(resolve())).collect());
    let err = h
        .handle
        .wait_online(Duration::from_secs(5))
        .await
        .unwrap_err();
    let SessionError::NotOnline {
        waited,
        last_problem: Some(problem),
    } = &err
    else {
        panic!("{err:?}")
    };
    assert_eq!(*waited, Duration::from_secs(5));
    assert!(matches!(**problem, OfflineReason::Connect(_)));
    assert_eq!(
        err.to_string(),
        "not connected to the Connect server after 5s (last problem: cannot reach the Connect server connect.example.org:7777: cannot resolve: no such host)"
    );
    h.stop().await;
}
