//! The client's HTTPS registry client against the real API of an in-process
//! server: register, re-register, conflicts, lookup, rotation (then login with
//! the new key only), tokens and certificate mismatches.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod session_support;

use std::sync::Arc;

use chatr_client::config::{Fingerprint, Trust};
use chatr_client::home::Home;
use chatr_client::identity::{Identity, generate_key};
use chatr_client::net::bind_udp;
use chatr_client::rest::{ApiErrorKind, Registration, RegistryClient, RestError};
use chatr_client::session::{DatagramOut, SessionError, spawn_session};
use chatr_server::{RegistrationPolicy, ServerConfig};
use session_support::{TestServer, WAIT};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[tokio::test]
async fn register_lookup_and_conflicts() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), None).await;
    let api = server.registry_client();
    let id = Identity::generate();

    assert_eq!(
        api.register(&id, None).await.unwrap(),
        Registration::Created
    );
    assert_eq!(
        api.register(&id, None).await.unwrap(),
        Registration::AlreadyRegistered
    );
    assert_eq!(api.lookup(id.uuid()).await.unwrap(), id.verifying_key());
    assert_eq!(
        server.handle.registry().lookup(&id.uuid()),
        Some(id.verifying_key())
    );

    // Same UUID, another key.
    let thief = id.with_key(generate_key());
    let err = api.register(&thief, None).await.unwrap_err();
    assert_eq!(err.api_kind(), Some(&ApiErrorKind::ClientAlreadyRegistered));

    // Unknown client.
    let err = api.lookup(uuid::Uuid::new_v4()).await.unwrap_err();
    assert_eq!(err.api_kind(), Some(&ApiErrorKind::ClientDoesNotExist));
    server.stop().await;
}

#[tokio::test]
async fn rotation_switches_the_login_key() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), None).await;
    let api = server.registry_client();
    let old = server.registered_identity().await;
    let new = old.with_key(generate_key());

    // Signed by the wrong (new) key: refused.
    let err = api
        .rotate(&new, &new.verifying_key(), None)
        .await
        .unwrap_err();
    assert_eq!(err.api_kind(), Some(&ApiErrorKind::InvalidSignature));

    api.rotate(&old, &new.verifying_key(), None).await.unwrap();
    assert_eq!(api.lookup(old.uuid()).await.unwrap(), new.verifying_key());

    assert!(login(&server, new).await.is_ok());
    let err = login(&server, old).await.unwrap_err();
    assert!(matches!(err, SessionError::LoginRejected(_)), "{err:?}");
    server.stop().await;
}

async fn login(server: &TestServer, id: Identity) -> Result<(), SessionError> {
    let udp = Arc::new(
        tokio::net::UdpSocket::from_std(bind_udp("0.0.0.0:0".parse().unwrap()).unwrap()).unwrap(),
    );
    let port = udp.local_addr().unwrap().port();
    let (tx, _rx) = mpsc::channel(64);
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let out: Arc<dyn DatagramOut> = udp;
    let session = spawn_session(
        server.session_config(id, port),
        out,
        None,
        tx,
        shutdown.clone(),
        &tracker,
    );
    let result = session.wait_online(WAIT).await.map(|_| ());
    shutdown.cancel();
    tracker.close();
    tracker.wait().await;
    result
}

#[tokio::test]
async fn token_policy_needs_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::for_tests(dir.path());
    config.registration = RegistrationPolicy::Token;
    let shutdown = CancellationToken::new();
    let handle = chatr_server::start(config, shutdown.clone()).await.unwrap();
    let fp: Fingerprint = handle.cert_fingerprint().parse().unwrap();
    let tls =
        chatr_client::trust::client_config(&Trust::Fingerprint(fp), &Home::new("/x")).unwrap();
    let api = RegistryClient::new(
        format!("https://{}", handle.api_addr()).parse().unwrap(),
        tls,
    );
    let id = Identity::generate();
    let err = api.register(&id, None).await.unwrap_err();
    assert_eq!(err.api_kind(), Some(&ApiErrorKind::InvalidToken), "{err}");
    let token = handle.registry().issue_token().await.unwrap();
    assert_eq!(
        api.register(&id, Some(&token)).await.unwrap(),
        Registration::Created
    );
    // Single use.
    let other = Identity::generate();
    let err = api.register(&other, Some(&token)).await.unwrap_err();
    assert_eq!(err.api_kind(), Some(&ApiErrorKind::InvalidToken));
    shutdown.cancel();
    handle.join().await;
}

#[tokio::test]
async fn wrong_certificate_is_reported_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), None).await;
    let tls = chatr_client::trust::client_config(
        &Trust::Fingerprint(Fingerprint([1; 32])),
        &Home::new("/x"),
    )
    .unwrap();
    let api = RegistryClient::new(server.api(), tls);
    let err = api.lookup(uuid::Uuid::new_v4()).await.unwrap_err();
    assert!(matches!(err, RestError::ServerCertMismatch(_)), "{err:?}");
    assert!(err.to_string().contains("not trusted"));
    server.stop().await;
}

#[tokio::test]
async fn unreachable_registry_is_a_connect_error() {
    // Bind and drop: nothing listens there any more.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let tls = chatr_client::trust::client_config(&Trust::SystemRoots, &Home::new("/x")).unwrap();
    let api = RegistryClient::new(format!("https://127.0.0.1:{port}").parse().unwrap(), tls);
    let err = api.lookup(uuid::Uuid::new_v4()).await.unwrap_err();
    assert!(matches!(err, RestError::Connect { .. }), "{err:?}");
}
