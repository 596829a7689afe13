//! A dual-stack server and clients of both families, on loopback: one client logs in over
//! IPv6 (`::1`), the other over IPv4 (`127.0.0.1`), to the same `[::]` listener; the
//! server observes each in its own family, IPv4 unmapped, and the two link directly
//! through their dual-stack sockets.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod session_support;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use chatr_client::Client;
use chatr_client::config::HostPort;
use chatr_client::link::StreamKind;
use session_support::{TestServer, WAIT, client_options};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn an_ipv6_client_and_an_ipv4_client_of_one_dual_stack_server_link_directly() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(
        dir.path(),
        Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0)),
    )
    .await;
    let port = server.handle.connect_addr().port();
    let alice_id = server.registered_identity().await;
    let bob_id = server.registered_identity().await;
    let mut alice_options = client_options(&server, alice_id.clone());
    alice_options.server = HostPort {
        host: "::1".into(),
        port,
    };
    let mut bob_options = client_options(&server, bob_id.clone());
    bob_options.server = HostPort {
        host: "127.0.0.1".into(),
        port,
    };
    let alice = Client::start(alice_options).await.unwrap();
    let bob = Client::start(bob_options).await.unwrap();
    assert!(alice.is_dual_stack() && bob.is_dual_stack());

    // Each is observed in its own family: alice as ::1, bob as plain IPv4 (not ::ffff:…).
    let alice_online = alice.session().wait_udp_bound(WAIT).await.unwrap();
    let bob_online = bob.session().wait_udp_bound(WAIT).await.unwrap();
    assert_eq!(
        alice_online.udp_observed.and_then(|e| e.socket_addr()),
        Some(SocketAddr::new(
            IpAddr::V6(Ipv6Addr::LOCALHOST),
            alice.local_port()
        ))
    );
    assert_eq!(
        bob_online.udp_observed.and_then(|e| e.socket_addr()),
        Some(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            bob.local_port()
        ))
    );
    // STUN over each family says the same.
    assert_eq!(
        alice.stun_probe(WAIT).await.unwrap(),
        SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), alice.local_port())
    );
    assert_eq!(
        bob.stun_probe(WAIT).await.unwrap(),
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), bob.local_port())
    );

    let bob2 = bob.clone();
    let alice_key = alice_id.verifying_key();
    let responder = tokio::spawn(async move {
        let req = bob2.next_request().await.unwrap();
        let (link, report) = req.accept(alice_key).await.unwrap();
        let mut stream = link.accept_stream().await.unwrap();
        let mut buf = [0u8; 5];
        stream.read_exact(&mut buf).await.unwrap();
        stream.write_all(&buf).await.unwrap();
        stream.finish().unwrap();
        (link, report)
    });
    let (link, report) = tokio::time::timeout(
        WAIT,
        alice.request_link(bob_id.uuid(), bob_id.verifying_key()),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(!report.class.is_relayed(), "{report:?}");
    assert_eq!(report.remote.port(), bob.local_port(), "{report:?}");
    let mut stream = link.open(StreamKind::Pipe).await.unwrap();
    stream.write_all(b"hello").await.unwrap();
    let mut echo = [0u8; 5];
    stream.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"hello");
    let (_bob_link, bob_report) = tokio::time::timeout(WAIT, responder)
        .await
        .unwrap()
        .unwrap();
    assert!(!bob_report.class.is_relayed(), "{bob_report:?}");
    assert_eq!(bob_report.remote.port(), alice.local_port());

    alice.shutdown().await;
    bob.shutdown().await;
    server.stop().await;
}
