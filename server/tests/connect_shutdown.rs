//! Graceful shutdown, admin kicks and certificate reload as seen by clients.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod connect_support;

use std::time::Duration;

use connect_support::*;

#[tokio::test]
async fn shutdown_tells_every_client_and_then_stops() {
    let server = start_server(|_| {}).await;
    let alice = Identity::registered(&server);
    let bob = Identity::registered(&server);
    let (mut a, _) = Client::login_v2(&server, &alice).await;
    let mut b = Client::login_v1(&server, &bob).await;
    // A connection that has not logged in yet is told too.
    let mut pending = Client::connect(&server).await;
    // The server side of the handshake completes a little after the client
    // side; a connection still in its handshake is just dropped.
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.shutdown.cancel();
    a.expect_disconnect("Server shutting down").await;
    b.expect_disconnect("Server shutting down").await;
    pending.expect_disconnect("Server shutting down").await;
    tokio::time::timeout(PATIENCE, server.handle.join())
        .await
        .expect("join");
}

#[tokio::test]
async fn hub_disconnect_kicks_one_session_with_its_message() {
    let server = start_server(|_| {}).await;
    let alice = Identity::registered(&server);
    let bob = Identity::registered(&server);
    let (mut a, _) = Client::login_v2(&server, &alice).await;
    let (mut b, _) = Client::login_v2(&server, &bob).await;
    assert!(
        server
            .handle
            .hub()
            .disconnect(&alice.uuid, "Identity removed")
    );
    a.expect_disconnect("Identity removed").await;
    b.stay_alive_quietly(Duration::from_millis(300)).await;
    assert!(server.handle.hub().is_connected(&bob.uuid));
    assert!(!server.handle.hub().disconnect(&uuid::Uuid::new_v4(), "x"));
    server.stop().await;
}

#[tokio::test]
async fn certificate_reload_keeps_sessions() {
    let server = start_server(|_| {}).await;
    let alice = Identity::registered(&server);
    let (mut a, _) = Client::login_v2(&server, &alice).await;
    let before = server.handle.cert_fingerprint();
    let cert = server.handle.tls().cert_path().to_path_buf();
    let key = cert.with_file_name("key.pem");
    std::fs::remove_file(&cert).unwrap();
    std::fs::remove_file(&key).unwrap();
    chatr_server::tls::generate_self_signed(&cert, &key, &["localhost".to_string()]).unwrap();
    server.handle.tls().reload().unwrap();
    assert_ne!(server.handle.cert_fingerprint(), before);
    a.stay_alive_quietly(Duration::from_millis(300)).await;
    assert!(server.handle.hub().is_connected(&alice.uuid));
    // New connections get the new certificate (the helper trusts the current PEM).
    let bob = Identity::registered(&server);
    let _ = Client::login_v2(&server, &bob).await;
    server.stop().await;
}
