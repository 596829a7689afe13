//! Hostile clients: malformed frames, slow-loris, connection floods.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod connect_support;

use std::time::Duration;

use connect_support::*;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

#[tokio::test]
async fn varint_longer_than_five_bytes_is_invalid() {
    let server = start_server(|_| {}).await;
    let mut c = Client::connect(&server).await;
    c.send_raw(&[0xff, 0xff, 0xff, 0xff, 0xff, 0x01]).await;
    c.expect_disconnect("Invalid Packet").await;
    server.stop().await;
}

#[tokio::test]
async fn huge_declared_length_is_refused_before_reading_it() {
    let server = start_server(|_| {}).await;
    let mut c = Client::connect(&server).await;
    // 256 MiB declared, nothing sent after it.
    c.send_raw(&varint(256 << 20)).await;
    c.expect_disconnect("Invalid Packet").await;
    server.stop().await;
}

#[tokio::test]
async fn unknown_opcode_and_zero_length_are_invalid() {
    let server = start_server(|_| {}).await;
    let mut c = Client::connect(&server).await;
    c.send(0x7f, &[1, 2, 3]).await;
    c.expect_disconnect("Invalid Packet").await;

    let mut c = Client::connect(&server).await;
    c.send_raw(&[0x00]).await;
    c.expect_disconnect("Invalid Packet").await;
    server.stop().await;
}

#[tokio::test]
async fn truncated_connect_is_invalid() {
    let server = start_server(|_| {}).await;
    let mut c = Client::connect(&server).await;
    // PacketConnect whose frame ends inside the UUID.
    c.send(OP_CONNECT, &[0, 0, 0, 2, 1, 2, 3]).await;
    c.expect_disconnect("Invalid Packet").await;
    server.stop().await;
}

#[tokio::test]
async fn garbage_after_login_is_invalid() {
    let server = start_server(|_| {}).await;
    let id = Identity::registered(&server);
    let (mut c, _) = Client::login_v2(&server, &id).await;
    // A ConnectionRequest with address version 5.
    let mut payload = uuid::Uuid::new_v4().as_bytes().to_vec();
    payload.extend_from_slice(&[5, 1, 2, 3, 4]);
    c.send(OP_REQUEST, &payload).await;
    c.expect_disconnect("Invalid Packet").await;
    server.stop().await;
}

#[tokio::test]
async fn random_garbage_never_crashes_the_server() {
    let server = start_server(|_| {}).await;
    for seed in 0u8..8 {
        let mut c = Client::connect(&server).await;
        let garbage: Vec<u8> = (0..64u8)
            .map(|i| i.wrapping_mul(37).wrapping_add(seed.wrapping_mul(11)))
            .collect();
        c.try_send_raw(&garbage).await;
        // Whatever it was, the connection ends (usually "Invalid Packet").
        while let Some(f) = c.next_frame().await {
            if f.opcode == OP_DISCONNECT {
                assert_eq!(f.disconnect_message(), "Invalid Packet");
            }
        }
    }
    // Still serving.
    let id = Identity::registered(&server);
    let _ = Client::login_v2(&server, &id).await;
    server.stop().await;
}

#[tokio::test]
async fn silent_tls_client_is_dropped_after_the_login_timeout() {
    let server = start_server(|c| c.timings.login_timeout = Duration::from_millis(400)).await;
    let mut c = Client::connect(&server).await;
    // Sends nothing at all: dropped without a PacketDisconnect.
    c.expect_closed().await;
    server.stop().await;
}

#[tokio::test]
async fn partial_frame_does_not_extend_the_login_timeout() {
    let server = start_server(|c| c.timings.login_timeout = Duration::from_millis(400)).await;
    let mut c = Client::connect(&server).await;
    // A slow-loris: a length prefix, then one byte at a time.
    c.send_raw(&[40]).await;
    let closed = tokio::time::timeout(PATIENCE, async {
        loop {
            c.try_send_raw(&[0]).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            let mut probe = [0u8; 1];
            match tokio::time::timeout(
                Duration::from_millis(1),
                tokio::io::AsyncReadExt::read(&mut c.stream, &mut probe),
            )
            .await
            {
                Ok(Ok(0)) | Ok(Err(_)) => return,
                _ => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "slow-loris connection was not dropped");
    server.stop().await;
}

#[tokio::test]
async fn tcp_client_without_tls_is_dropped_after_the_login_timeout() {
    let server = start_server(|c| c.timings.login_timeout = Duration::from_millis(400)).await;
    let mut tcp = TcpStream::connect(server.addr()).await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(PATIENCE, tcp.read(&mut buf))
        .await
        .expect("idle TCP connection was not dropped")
        .unwrap_or(0);
    assert_eq!(n, 0);
    server.stop().await;
}

async fn is_closed_now(tcp: &mut TcpStream) -> bool {
    let mut buf = [0u8; 16];
    matches!(
        tokio::time::timeout(PATIENCE, tcp.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

fn still_open(tcp: &TcpStream) -> bool {
    let mut buf = [0u8; 16];
    matches!(tcp.try_read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

#[tokio::test]
async fn connections_per_source_ip_are_capped() {
    let server = start_server(|c| {
        c.limits.max_connections_per_ip = 3;
        c.timings.login_timeout = Duration::from_secs(30);
    })
    .await;
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(TcpStream::connect(server.addr()).await.unwrap());
    }
    // Give the server time to accept them (a bound, not a speed claim).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut fourth = TcpStream::connect(server.addr()).await.unwrap();
    assert!(
        is_closed_now(&mut fourth).await,
        "fourth connection from one IP must be refused"
    );
    for tcp in &idle {
        assert!(still_open(tcp));
    }
    // Closing one frees a slot: a real client logs in again.
    drop(idle.pop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let id = Identity::registered(&server);
    let _ = Client::login_v2(&server, &id).await;
    server.stop().await;
}

#[tokio::test]
async fn total_connections_are_capped() {
    let server = start_server(|c| {
        c.limits.max_connections = 2;
        c.timings.login_timeout = Duration::from_secs(30);
    })
    .await;
    let a = TcpStream::connect(server.addr()).await.unwrap();
    let b = TcpStream::connect(server.addr()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut c = TcpStream::connect(server.addr()).await.unwrap();
    assert!(is_closed_now(&mut c).await);
    assert!(still_open(&a) && still_open(&b));
    server.stop().await;
}
