//! Ping/pong as the spec says, with short configured intervals.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod connect_support;

use std::collections::HashSet;
use std::time::Duration;

use connect_support::*;

#[tokio::test]
async fn pings_carry_fresh_ids_and_pongs_keep_the_session() {
    let server = start_server(|_| {}).await;
    let id = Identity::registered(&server);
    let (mut c, _) = Client::login_v2(&server, &id).await;
    let mut ids = HashSet::new();
    // Answer five pings: well past the 600 ms ping timeout in total.
    for _ in 0..5 {
        let f = c.next_frame().await.unwrap();
        assert_eq!(f.opcode, OP_PING, "{f:?}");
        assert_eq!(f.payload.len(), 8);
        ids.insert(f.payload.clone());
        c.send(OP_PONG, &f.payload).await;
    }
    assert!(ids.len() >= 4, "ping ids should be random: {ids:?}");
    assert!(server.handle.hub().is_connected(&id.uuid));
    server.stop().await;
}

#[tokio::test]
async fn no_pong_times_out() {
    let server = start_server(|_| {}).await;
    let id = Identity::registered(&server);
    let (mut c, _) = Client::login_v2(&server, &id).await;
    let f = c.next_frame().await.unwrap();
    assert_eq!(f.opcode, OP_PING);
    c.expect_disconnect("Time out").await;
    server.stop().await;
}

#[tokio::test]
async fn pong_with_another_id_is_ignored() {
    let server = start_server(|_| {}).await;
    let id = Identity::registered(&server);
    let (mut c, _) = Client::login_v2(&server, &id).await;
    let f = c.next_frame().await.unwrap();
    assert_eq!(f.opcode, OP_PING);
    let mut c_id = Cursor(&f.payload);
    let wrong = c_id.i64().wrapping_add(1);
    // Keep sending wrong pongs: they must not keep the session alive.
    let deadline = tokio::time::Instant::now() + Duration::from_millis(400);
    while tokio::time::Instant::now() < deadline {
        c.send(OP_PONG, &wrong.to_be_bytes()).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.expect_disconnect("Time out").await;
    server.stop().await;
}

#[tokio::test]
async fn spec_client_is_pinged_too() {
    let server = start_server(|_| {}).await;
    let id = Identity::registered(&server);
    let mut c = Client::login_v1(&server, &id).await;
    let f = c.next_frame().await.unwrap();
    assert_eq!(f.opcode, OP_PING);
    c.send(OP_PONG, &f.payload).await;
    c.stay_alive_quietly(Duration::from_millis(800)).await;
    assert!(server.handle.hub().is_connected(&id.uuid));
    server.stop().await;
}
