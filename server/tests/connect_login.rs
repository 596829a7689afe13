//! Login over real TLS on loopback, exactly as the spec says, plus the v2
//! channel binding and the duplicate-UUID takeover.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod connect_support;

use std::time::Duration;

use connect_support::*;

#[tokio::test]
async fn v2_login_gets_connected_with_a_udp_token() {
    let server = start_server(|_| {}).await;
    let id = Identity::registered(&server);
    let (mut a, token) = Client::login_v2(&server, &id).await;
    assert_ne!(token, [0u8; 16]);
    assert!(server.handle.hub().is_connected(&id.uuid));
    // A live client stays connected across several ping timeouts.
    a.stay_alive_quietly(Duration::from_millis(1500)).await;
    assert!(server.handle.hub().is_connected(&id.uuid));
    server.stop().await;
}

#[tokio::test]
async fn spec_client_login_gets_an_empty_connected() {
    let server = start_server(|_| {}).await;
    let id = Identity::registered(&server);
    let _c = Client::login_v1(&server, &id).await;
    assert!(server.handle.hub().is_connected(&id.uuid));
    server.stop().await;
}

#[tokio::test]
async fn spec_client_with_another_version_number_is_still_a_spec_client() {
    // The spec says the version is ignored; an unbound signature means the
    // spec layout whatever the number.
    let server = start_server(|_| {}).await;
    let id = Identity::registered(&server);
    let mut c = Client::connect(&server).await;
    c.send(OP_CONNECT, &connect_payload(7, &id.uuid, &id.sign_v1()))
        .await;
    let f = c.next_frame().await.unwrap();
    assert_eq!(
        f,
        Frame {
            opcode: OP_CONNECTED,
            payload: vec![]
        }
    );
    server.stop().await;
}

#[tokio::test]
async fn first_packet_other_than_connect_is_invalid() {
    let server = start_server(|_| {}).await;
    let mut c = Client::connect(&server).await;
    c.send(OP_PONG, &5i64.to_be_bytes()).await;
    c.expect_disconnect("Invalid Packet").await;

    let mut c = Client::connect(&server).await;
    let target = uuid::Uuid::new_v4();
    c.send(
        OP_REQUEST,
        &uuid_endpoint(&target, "10.0.0.1".parse().unwrap(), None),
    )
    .await;
    c.expect_disconnect("Invalid Packet").await;
    server.stop().await;
}

#[tokio::test]
async fn unknown_uuid_fails_to_verify() {
    let server = start_server(|_| {}).await;
    let stranger = Identity::new();
    let mut c = Client::connect(&server).await;
    let sig = stranger.sign_v2(&c.exporter());
    c.send(OP_CONNECT, &connect_payload(2, &stranger.uuid, &sig))
        .await;
    c.expect_disconnect("Failed to verify!").await;
    server.stop().await;
}

#[tokio::test]
async fn bad_signature_fails_to_verify() {
    let server = start_server(|_| {}).await;
    let id = Identity::registered(&server);
    let impostor = Identity {
        uuid: id.uuid,
        key: Identity::new().key,
    };
    let mut c = Client::connect(&server).await;
    let sig = impostor.sign_v2(&c.exporter());
    c.send(OP_CONNECT, &connect_payload(2, &id.uuid, &sig))
        .await;
    c.expect_disconnect("Failed to verify!").await;

    let mut c = Client::connect(&server).await;
    c.send(
        OP_CONNECT,
        &connect_payload(1, &id.uuid, &impostor.sign_v1()),
    )
    .await;
    c.expect_disconnect("Failed to verify!").await;

    // Not even 64 bytes.
    let mut c = Client::connect(&server).await;
    c.send(OP_CONNECT, &connect_payload(1, &id.uuid, &[1, 2, 3]))
        .await;
    c.expect_disconnect("Failed to verify!").await;
    server.stop().await;
}

#[tokio::test]
async fn v2_signature_replayed_on_another_tls_session_is_refused() {
    let server = start_server(|_| {}).await;
    let id = Identity::registered(&server);
    let mut first = Client::connect(&server).await;
    let captured = connect_payload(2, &id.uuid, &id.sign_v2(&first.exporter()));
    first.send(OP_CONNECT, &captured).await;
    assert_eq!(first.next_frame().await.unwrap().opcode, OP_CONNECTED);
    first.send(OP_DISCONNECT, &[0]).await;
    first.expect_closed().await;

    // An attacker who saw those bytes replays them on its own connection.
    let mut replay = Client::connect(&server).await;
    replay.send(OP_CONNECT, &captured).await;
    replay.expect_disconnect("Failed to verify!").await;
    server.stop().await;
}

#[tokio::test]
async fn require_channel_binding_refuses_spec_signatures() {
    let server = start_server(|c| c.require_channel_binding = true).await;
    let id = Identity::registered(&server);
    let mut c = Client::connect(&server).await;
    c.send(OP_CONNECT, &connect_payload(1, &id.uuid, &id.sign_v1()))
        .await;
    c.expect_disconnect("Failed to verify!").await;
    let (_c, _token) = Client::login_v2(&server, &id).await;
    server.stop().await;
}

#[tokio::test]
async fn connect_after_login_is_invalid() {
    let server = start_server(|_| {}).await;
    let id = Identity::registered(&server);
    let (mut c, _) = Client::login_v2(&server, &id).await;
    let sig = id.sign_v2(&c.exporter());
    c.send(OP_CONNECT, &connect_payload(2, &id.uuid, &sig))
        .await;
    c.expect_disconnect("Invalid Packet").await;
    // The session is gone from the hub.
    tokio::time::timeout(PATIENCE, async {
        while server.handle.hub().is_connected(&id.uuid) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    server.stop().await;
}

#[tokio::test]
async fn client_disconnect_closes_the_session() {
    let server = start_server(|_| {}).await;
    let id = Identity::registered(&server);
    let (mut c, _) = Client::login_v2(&server, &id).await;
    let mut payload = varint(3);
    payload.extend_from_slice(b"bye");
    c.send(OP_DISCONNECT, &payload).await;
    c.expect_closed().await;
    server.stop().await;
}

#[tokio::test]
async fn live_duplicate_is_already_connected_and_keeps_its_session() {
    let server = start_server(|_| {}).await;
    let id = Identity::registered(&server);
    let (mut old, _) = Client::login_v2(&server, &id).await;
    let done = std::sync::atomic::AtomicBool::new(false);
    tokio::join!(
        async {
            let mut c = Client::connect(&server).await;
            let sig = id.sign_v2(&c.exporter());
            c.send(OP_CONNECT, &connect_payload(2, &id.uuid, &sig))
                .await;
            c.expect_disconnect("Already connected!").await;
            done.store(true, std::sync::atomic::Ordering::SeqCst);
        },
        async {
            // The old client answers the probe ping (and every other ping).
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                old.stay_alive_quietly(Duration::from_millis(50)).await;
            }
        }
    );
    old.stay_alive_quietly(Duration::from_millis(300)).await;
    assert!(server.handle.hub().is_connected(&id.uuid));
    server.stop().await;
}

#[tokio::test]
async fn dead_session_is_taken_over_by_the_newcomer() {
    let server = start_server(|c| {
        // Long ping timeout: only the takeover probe can detect the dead client.
        c.timings.ping_interval = std::time::Duration::from_secs(30);
        c.timings.ping_timeout = std::time::Duration::from_secs(60);
    })
    .await;
    let id = Identity::registered(&server);
    let (mut old, old_token) = Client::login_v2(&server, &id).await;
    // The old client goes silent: it never answers anything from now on.
    let (mut fresh, new_token) = Client::login_v2(&server, &id).await;
    assert_ne!(old_token, new_token);
    assert!(server.handle.hub().is_connected(&id.uuid));
    // The old connection is closed ("Time out": it missed the probe ping).
    old.expect_disconnect("Time out").await;
    fresh.stay_alive_quietly(Duration::from_millis(200)).await;
    assert!(server.handle.hub().is_connected(&id.uuid));
    server.stop().await;
}
