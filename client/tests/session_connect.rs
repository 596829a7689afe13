//! The Connect session against a real in-process server on loopback: login v2,
//! the UDP binding on the shared port, pings answered, refusals, reconnects.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod session_support;

use std::sync::Arc;
use std::time::Duration;

use chatr_client::config::{Fingerprint, Trust};
use chatr_client::home::Home;
use chatr_client::identity::Identity;
use chatr_client::net::bind_udp;
use chatr_client::session::{
    DatagramOut, SessionEnd, SessionError, SessionEvent, SessionHandle, SessionStatus,
    spawn_session,
};
use chatr_proto::udp::UdpMessage;
use session_support::{TestServer, WAIT};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A client's UDP socket plus a task routing binding responses to the session.
struct TestClient {
    session: SessionHandle,
    events: mpsc::Receiver<SessionEvent>,
    port: u16,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl TestClient {
    fn start(server: &TestServer, identity: Identity) -> Self {
        Self::start_with(server.session_config(identity, 0))
    }

    fn start_with(mut config: chatr_client::session::SessionConfig) -> Self {
        let std_udp = bind_udp("0.0.0.0:0".parse().unwrap()).unwrap();
        let udp = Arc::new(tokio::net::UdpSocket::from_std(std_udp).unwrap());
        let port = udp.local_addr().unwrap().port();
        config.local_port = port;
        let (tx, events) = mpsc::channel(64);
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let out: Arc<dyn DatagramOut> = udp.clone();
        let session = spawn_session(config, out, None, tx, shutdown.clone(), &tracker);
        // Route control datagrams from the UDP socket to the session (the
        // orchestrator's job in the real client).
        let router_session = session.clone();
        let router_shutdown = shutdown.clone();
        tracker.spawn(async move {
            let mut buf = [0u8; 1500];
            loop {
                tokio::select! {
                    _ = router_shutdown.cancelled() => break,
                    r = udp.recv_from(&mut buf) => {
                        let Ok((n, from)) = r else { break };
                        if let Ok(msg) = UdpMessage::decode(&buf[..n]) {
                            router_session.deliver_udp(from, msg);
                        }
                    }
                }
            }
        });
        Self {
            session,
            events,
            port,
            shutdown,
            tracker,
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

#[tokio::test]
async fn login_v2_binds_udp_on_the_same_port_and_answers_pings() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), None).await;
    let id = server.registered_identity().await;
    let mut client = TestClient::start(&server, id.clone());

    let info = client.session.wait_udp_bound(WAIT).await.unwrap();
    assert_eq!(info.server, server.handle.connect_addr());
    assert!(info.same_port, "TCP should use the UDP socket's port");
    assert_eq!(info.local.port(), client.port);
    let observed = info.udp_observed.expect("binding answered");
    assert_eq!(observed.port, Some(client.port));
    assert_eq!(observed.ip.to_string(), "127.0.0.1");
    assert_eq!(
        server.handle.hub().udp_endpoint(&id.uuid()),
        Some(observed.socket_addr().unwrap())
    );
    match client.events.recv().await.unwrap() {
        SessionEvent::Connected { udp_token } => assert!(udp_token.is_some()),
        other => panic!("{other:?}"),
    }

    // The server pings every 200 ms and times out after 600 ms: staying
    // connected for 2.5 s means every ping was answered.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(server.handle.hub().is_connected(&id.uuid()));
    let info = client.session.online().expect("still online");
    assert_eq!(info.logins, 1, "the session never dropped");

    client.stop().await;
    // A polite goodbye removes us from the hub at once.
    tokio::time::timeout(WAIT, async {
        while server.handle.hub().is_connected(&id.uuid()) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
    server.stop().await;
}

#[tokio::test]
async fn unregistered_identity_is_refused_and_not_retried() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), None).await;
    let client = TestClient::start(&server, Identity::generate());
    let err = client.session.wait_online(WAIT).await.unwrap_err();
    assert!(matches!(err, SessionError::LoginRejected(_)), "{err:?}");
    assert!(matches!(
        client.session.status(),
        SessionStatus::Stopped(Some(SessionError::LoginRejected(_)))
    ));
    client.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn wrong_fingerprint_is_a_cert_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), None).await;
    let id = server.registered_identity().await;
    let mut config = server.session_config(id, 0);
    config.tls = chatr_client::trust::client_config(
        &Trust::Fingerprint(Fingerprint([0xAA; 32])),
        &Home::new("/nonexistent"),
    )
    .unwrap();
    let client = TestClient::start_with(config);
    let err = client.session.wait_online(WAIT).await.unwrap_err();
    assert!(
        matches!(err, SessionError::ServerCertMismatch(_)),
        "{err:?}"
    );
    client.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn pinned_certificate_file_is_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), None).await;
    let id = server.registered_identity().await;
    let home = tempfile::tempdir().unwrap();
    std::fs::write(
        home.path().join("server-cert.pem"),
        server.handle.cert_pem(),
    )
    .unwrap();
    let mut config = server.session_config(id, 0);
    config.tls = chatr_client::trust::client_config(
        &Trust::PinnedCert("server-cert.pem".into()),
        &Home::new(home.path()),
    )
    .unwrap();
    let client = TestClient::start_with(config);
    client.session.wait_online(WAIT).await.unwrap();
    client.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn commands_are_refused_while_offline_and_brokering_works_online() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), None).await;
    let a = server.registered_identity().await;
    let b = server.registered_identity().await;
    let mut ca = TestClient::start(&server, a.clone());
    let mut cb = TestClient::start(&server, b.clone());
    let ia = ca.session.wait_udp_bound(WAIT).await.unwrap();
    let ib = cb.session.wait_udp_bound(WAIT).await.unwrap();
    // Skip the Connected events.
    assert!(matches!(
        ca.events.recv().await,
        Some(SessionEvent::Connected { .. })
    ));
    assert!(matches!(
        cb.events.recv().await,
        Some(SessionEvent::Connected { .. })
    ));

    // Version 3 on both ends: what A says about its NAT reaches B, and B's (default)
    // hints reach A.
    let a_hints = chatr_proto::LinkHints {
        nat: chatr_proto::NatHint {
            mapping: chatr_proto::NatMapping::DependentSequential,
            step: 2,
            last_port: Some(40_002),
        },
        candidates: vec![chatr_proto::ExtraCandidate {
            origin: chatr_proto::CandidateOrigin::PortMapped,
            addr: "198.51.100.9:4500".parse().unwrap(),
        }],
    };
    ca.session.set_link_hints(a_hints.clone());
    ca.session.request(b.uuid(), ia.local.into()).await.unwrap();
    let ev = next_brokering(&mut cb.events).await;
    assert_eq!(
        ev,
        SessionEvent::IncomingRequest {
            peer: a.uuid(),
            private_endpoint: ia.local.into(),
            hints: Some(a_hints),
        }
    );
    cb.session.accept(a.uuid(), ib.local.into()).await.unwrap();
    assert_eq!(
        next_brokering(&mut ca.events).await,
        SessionEvent::Accepted {
            peer: b.uuid(),
            private_endpoint: ib.local.into(),
            hints: Some(chatr_proto::LinkHints::default()),
        }
    );
    for (events, peer, peer_udp) in [
        (&mut ca.events, b.uuid(), ib.udp_observed),
        (&mut cb.events, a.uuid(), ia.udp_observed),
    ] {
        match next_brokering(events).await {
            SessionEvent::ClientInfo {
                peer: p,
                public_endpoint,
                link_secret,
                ..
            } => {
                assert_eq!(p, peer);
                assert_eq!(Some(public_endpoint), peer_udp);
                assert!(link_secret.is_some());
            }
            other => panic!("{other:?}"),
        }
    }

    // An offline peer is denied.
    let ghost = uuid::Uuid::new_v4();
    ca.session.request(ghost, ia.local.into()).await.unwrap();
    assert_eq!(
        next_brokering(&mut ca.events).await,
        SessionEvent::Denied { peer: ghost }
    );
    ca.stop().await;
    cb.stop().await;
    server.stop().await;
}

async fn next_brokering(events: &mut mpsc::Receiver<SessionEvent>) -> SessionEvent {
    loop {
        let ev = tokio::time::timeout(WAIT, events.recv())
            .await
            .expect("event in time")
            .expect("driver alive");
        // Not brokering: the UDP binding, and the presence the driver sends (and the
        // server acknowledges) after every login.
        if !matches!(
            ev,
            SessionEvent::UdpBound { .. }
                | SessionEvent::PresenceSynced
                | SessionEvent::Presence { .. }
        ) {
            return ev;
        }
    }
}

#[tokio::test]
async fn reconnects_with_backoff_after_a_server_restart_on_the_same_port() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), None).await;
    let id = server.registered_identity().await;
    let mut client = TestClient::start(&server, id.clone());
    let first = client.session.wait_online(WAIT).await.unwrap();
    assert_eq!(first.logins, 1);

    let addr = server.stop().await;
    // The server said goodbye; the driver reports it and goes offline.
    let reason = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(SessionEvent::Disconnected { reason }) = client.events.recv().await {
                return reason;
            }
        }
    })
    .await
    .unwrap();
    assert!(
        matches!(&reason, SessionEnd::Server(m) if m == "Server shutting down")
            || matches!(reason, SessionEnd::Transport(_)),
        "{reason:?}"
    );
    // While the server is down, the driver keeps retrying (Offline/Connecting).
    let mut watch = client.session.watch();
    tokio::time::timeout(WAIT, async {
        loop {
            if matches!(*watch.borrow_and_update(), SessionStatus::Offline { .. }) {
                break;
            }
            watch.changed().await.unwrap();
        }
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(client.session.online().is_none());

    // Same data dir (same registry and certificate), same port.
    let server = TestServer::start(dir.path(), Some(addr)).await;
    let again = tokio::time::timeout(WAIT, async {
        loop {
            if let Ok(info) = client.session.wait_online(WAIT).await
                && info.logins >= 2
            {
                return info;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(again.logins, 2);
    assert!(server.handle.hub().is_connected(&id.uuid()));
    client.stop().await;
    server.stop().await;
}
