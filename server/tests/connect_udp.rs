//! The UDP side of the Connect port: binding messages and STUN.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod connect_support;

use std::net::SocketAddr;
use std::time::Duration;

use connect_support::*;
use tokio::net::UdpSocket;

#[tokio::test]
async fn binding_request_is_answered_with_the_observed_endpoint() {
    let server = start_server(|_| {}).await;
    let id = Identity::registered(&server);
    let (c, token) = Client::login_v2(&server, &id).await;
    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let (observed, tcp_observed) = udp_bind_both(&udp, &server, &token).await;
    assert_eq!(observed, udp.local_addr().unwrap());
    // The extension after the UDP endpoint: this session's TCP source.
    assert_eq!(tcp_observed, Some(c.local));
    assert_eq!(server.handle.hub().udp_endpoint(&id.uuid), Some(observed));
    server.stop().await;
}

#[tokio::test]
async fn unknown_token_gets_no_answer() {
    let server = start_server(|_| {}).await;
    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut msg = vec![0x00, b'C', b'H', b'R', 0x01];
    msg.extend_from_slice(&[0x5a; 16]);
    udp.send_to(&msg, server.addr()).await.unwrap();
    // Then a STUN request: its answer must be the first thing we get back.
    let stun = stun_request([9; 12]);
    udp.send_to(&stun, server.addr()).await.unwrap();
    let mut buf = [0u8; 256];
    let (n, _) = tokio::time::timeout(PATIENCE, udp.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        &buf[..2],
        &[0x01, 0x01],
        "first reply must be the STUN answer"
    );
    assert_eq!(&buf[8..20], &[9; 12]);
    assert!(n >= 20);
    server.stop().await;
}

#[tokio::test]
async fn token_of_an_ended_session_no_longer_binds() {
    let server = start_server(|_| {}).await;
    let id = Identity::registered(&server);
    let (mut c, token) = Client::login_v2(&server, &id).await;
    c.send(OP_DISCONNECT, &[0]).await;
    c.expect_closed().await;
    tokio::time::timeout(PATIENCE, async {
        while server.handle.hub().is_connected(&id.uuid) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut msg = vec![0x00, b'C', b'H', b'R', 0x01];
    msg.extend_from_slice(&token);
    udp.send_to(&msg, server.addr()).await.unwrap();
    udp.send_to(&stun_request([3; 12]), server.addr())
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    tokio::time::timeout(PATIENCE, udp.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        &buf[..2],
        &[0x01, 0x01],
        "the stale token must not be answered"
    );
    server.stop().await;
}

/// A Binding request as RFC 8489 §5 lays it out, with a SOFTWARE attribute.
fn stun_request(transaction: [u8; 12]) -> Vec<u8> {
    let software = b"test";
    let mut m = vec![0x00, 0x01];
    m.extend_from_slice(&(4 + software.len() as u16).to_be_bytes());
    m.extend_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
    m.extend_from_slice(&transaction);
    m.extend_from_slice(&[0x80, 0x22]);
    m.extend_from_slice(&(software.len() as u16).to_be_bytes());
    m.extend_from_slice(software);
    m
}

#[tokio::test]
async fn stun_binding_request_gets_xor_mapped_address() {
    let server = start_server(|_| {}).await;
    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let tx = [
        0xB7, 0xE7, 0xA7, 0x01, 0xBC, 0x34, 0xD6, 0x86, 0xFA, 0x87, 0xDF, 0xAE,
    ];
    let mut buf = [0u8; 512];
    let mut reply = None;
    for _ in 0..5 {
        udp.send_to(&stun_request(tx), server.addr()).await.unwrap();
        if let Ok(Ok((n, from))) =
            tokio::time::timeout(Duration::from_secs(1), udp.recv_from(&mut buf)).await
        {
            assert_eq!(from, server.addr(), "STUN is served on the Connect port");
            reply = Some(buf[..n].to_vec());
            break;
        }
    }
    let reply = reply.expect("no STUN answer");
    // Binding success response, magic cookie, same transaction id.
    assert_eq!(&reply[0..2], &[0x01, 0x01]);
    assert_eq!(
        usize::from(u16::from_be_bytes([reply[2], reply[3]])),
        reply.len() - 20
    );
    assert_eq!(&reply[4..8], &[0x21, 0x12, 0xA4, 0x42]);
    assert_eq!(&reply[8..20], &tx);
    // Find XOR-MAPPED-ADDRESS and decode it by hand.
    let mut attrs = &reply[20..];
    let mut mapped = None;
    while attrs.len() >= 4 {
        let kind = u16::from_be_bytes([attrs[0], attrs[1]]);
        let len = usize::from(u16::from_be_bytes([attrs[2], attrs[3]]));
        let value = &attrs[4..4 + len];
        if kind == 0x0020 {
            assert_eq!(value[1], 0x01, "IPv4 family");
            let port = u16::from_be_bytes([value[2], value[3]]) ^ 0x2112;
            let ip = [
                value[4] ^ 0x21,
                value[5] ^ 0x12,
                value[6] ^ 0xA4,
                value[7] ^ 0x42,
            ];
            mapped = Some(SocketAddr::from((ip, port)));
        }
        attrs = &attrs[4 + len.div_ceil(4) * 4..];
    }
    assert_eq!(mapped, Some(udp.local_addr().unwrap()));
    server.stop().await;
}
