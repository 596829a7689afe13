//! Brokering between two clients, as the spec says, over real TLS.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod connect_support;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use connect_support::*;
use tokio::net::UdpSocket;

fn lan(port: u16) -> (IpAddr, Option<u16>) {
    ("192.168.1.20".parse().unwrap(), Some(port))
}

#[tokio::test]
async fn full_exchange_with_udp_endpoint_and_shared_secret() {
    let server = start_server(|_| {}).await;
    let alice = Identity::registered(&server);
    let bob = Identity::registered(&server);
    let (mut a, a_token) = Client::login_v2(&server, &alice).await;
    let (mut b, _) = Client::login_v2(&server, &bob).await;

    // Alice binds her UDP socket; Bob does not (falls back to TCP-observed).
    let a_udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let observed = udp_bind(&a_udp, &server, &a_token).await;
    assert_eq!(observed, a_udp.local_addr().unwrap());

    let (ip, port) = lan(40001);
    a.send(OP_REQUEST, &uuid_endpoint(&bob.uuid, ip, port))
        .await;

    // Bob sees the request from Alice with her private endpoint.
    let f = b.next_answering_pings().await.unwrap();
    assert_eq!(f.opcode, OP_REQUEST);
    assert_eq!(f.payload, uuid_endpoint(&alice.uuid, ip, port));

    let (bip, bport) = lan(40002);
    b.send(OP_ACCEPT, &uuid_endpoint(&alice.uuid, bip, bport))
        .await;

    // Alice: Accept(Bob, Bob's private endpoint), then ClientInfo(Bob).
    let f = a.next_answering_pings().await.unwrap();
    assert_eq!(f.opcode, OP_ACCEPT);
    assert_eq!(f.payload, uuid_endpoint(&bob.uuid, bip, bport));
    let info_a = parse_client_info(&a.next_answering_pings().await.unwrap());
    assert_eq!(info_a.uuid, bob.uuid);
    assert_eq!(
        (info_a.public_ip, info_a.public_port),
        (b.local.ip(), Some(b.local.port())),
        "no UDP binding: TCP-observed endpoint"
    );
    assert_eq!(info_a.tcp, Some((b.local.ip(), b.local.port())));

    // Bob: ClientInfo(Alice) with her UDP-observed endpoint.
    let info_b = parse_client_info(&b.next_answering_pings().await.unwrap());
    assert_eq!(info_b.uuid, alice.uuid);
    let a_udp_addr = a_udp.local_addr().unwrap();
    assert_eq!(
        (info_b.public_ip, info_b.public_port),
        (a_udp_addr.ip(), Some(a_udp_addr.port()))
    );
    assert_eq!(info_b.tcp, Some((a.local.ip(), a.local.port())));

    // One fresh secret, the same for both.
    assert!(info_a.link_secret.is_some());
    assert_eq!(info_a.link_secret, info_b.link_secret);
    assert_ne!(info_a.link_secret, Some([0u8; 32]));
    server.stop().await;
}

#[tokio::test]
async fn each_exchange_gets_a_new_secret() {
    let server = start_server(|_| {}).await;
    let alice = Identity::registered(&server);
    let bob = Identity::registered(&server);
    let (mut a, _) = Client::login_v2(&server, &alice).await;
    let (mut b, _) = Client::login_v2(&server, &bob).await;
    let mut secrets = Vec::new();
    for _ in 0..2 {
        a.send(OP_REQUEST, &uuid_endpoint(&bob.uuid, lan(1).0, lan(1).1))
            .await;
        assert_eq!(b.next_answering_pings().await.unwrap().opcode, OP_REQUEST);
        b.send(OP_ACCEPT, &uuid_endpoint(&alice.uuid, lan(2).0, lan(2).1))
            .await;
        assert_eq!(a.next_answering_pings().await.unwrap().opcode, OP_ACCEPT);
        secrets.push(parse_client_info(&a.next_answering_pings().await.unwrap()).link_secret);
        parse_client_info(&b.next_answering_pings().await.unwrap());
    }
    assert_ne!(secrets[0], secrets[1]);
    server.stop().await;
}

#[tokio::test]
async fn offline_target_is_denied() {
    let server = start_server(|_| {}).await;
    let alice = Identity::registered(&server);
    let ghost = Identity::registered(&server);
    let (mut a, _) = Client::login_v2(&server, &alice).await;
    a.send(OP_REQUEST, &uuid_endpoint(&ghost.uuid, lan(1).0, lan(1).1))
        .await;
    let f = a.next_answering_pings().await.unwrap();
    assert_eq!(
        f,
        Frame {
            opcode: OP_DENIED,
            payload: ghost.uuid.as_bytes().to_vec()
        }
    );
    server.stop().await;
}

#[tokio::test]
async fn denial_reaches_the_requester_naming_the_target() {
    let server = start_server(|_| {}).await;
    let alice = Identity::registered(&server);
    let bob = Identity::registered(&server);
    let (mut a, _) = Client::login_v2(&server, &alice).await;
    let (mut b, _) = Client::login_v2(&server, &bob).await;
    a.send(OP_REQUEST, &uuid_endpoint(&bob.uuid, lan(1).0, lan(1).1))
        .await;
    assert_eq!(b.next_answering_pings().await.unwrap().opcode, OP_REQUEST);
    b.send(OP_DENIED, alice.uuid.as_bytes()).await;
    let f = a.next_answering_pings().await.unwrap();
    assert_eq!(
        f,
        Frame {
            opcode: OP_DENIED,
            payload: bob.uuid.as_bytes().to_vec()
        }
    );
    // Bob learns nothing about Alice beyond the request.
    b.stay_alive_quietly(Duration::from_millis(300)).await;
    server.stop().await;
}

#[tokio::test]
async fn unanswered_request_expires_and_late_accept_is_dropped() {
    let server = start_server(|c| c.timings.request_timeout = Duration::from_millis(500)).await;
    let alice = Identity::registered(&server);
    let bob = Identity::registered(&server);
    let (mut a, _) = Client::login_v2(&server, &alice).await;
    let (mut b, _) = Client::login_v2(&server, &bob).await;
    a.send(OP_REQUEST, &uuid_endpoint(&bob.uuid, lan(1).0, lan(1).1))
        .await;
    assert_eq!(b.next_answering_pings().await.unwrap().opcode, OP_REQUEST);
    // Bob says nothing: Alice gets Denied(Bob) when the request expires.
    let (f, ()) = tokio::join!(
        a.next_answering_pings(),
        b.stay_alive_quietly(Duration::from_millis(700))
    );
    assert_eq!(
        f.unwrap(),
        Frame {
            opcode: OP_DENIED,
            payload: bob.uuid.as_bytes().to_vec()
        }
    );
    // Too late now: the accept reaches nobody and nobody gets ClientInfo.
    b.send(OP_ACCEPT, &uuid_endpoint(&alice.uuid, lan(2).0, lan(2).1))
        .await;
    let ((), ()) = tokio::join!(
        a.stay_alive_quietly(Duration::from_millis(400)),
        b.stay_alive_quietly(Duration::from_millis(400))
    );
    server.stop().await;
}

#[tokio::test]
async fn answers_to_requests_nobody_made_are_dropped() {
    let server = start_server(|_| {}).await;
    let alice = Identity::registered(&server);
    let mallory = Identity::registered(&server);
    let (mut a, _) = Client::login_v2(&server, &alice).await;
    let (mut m, _) = Client::login_v2(&server, &mallory).await;
    // Mallory "accepts" a request Alice never made, and denies one too.
    m.send(OP_ACCEPT, &uuid_endpoint(&alice.uuid, lan(2).0, lan(2).1))
        .await;
    m.send(OP_DENIED, alice.uuid.as_bytes()).await;
    let ((), ()) = tokio::join!(
        a.stay_alive_quietly(Duration::from_millis(400)),
        m.stay_alive_quietly(Duration::from_millis(400))
    );
    server.stop().await;
}

#[tokio::test]
async fn requests_are_rate_limited_per_session() {
    let server = start_server(|c| {
        c.limits.request_burst = 2;
        c.limits.requests_per_second = 1;
    })
    .await;
    let alice = Identity::registered(&server);
    let bob = Identity::registered(&server);
    let (mut a, _) = Client::login_v2(&server, &alice).await;
    let (mut b, _) = Client::login_v2(&server, &bob).await;
    for _ in 0..3 {
        a.send(OP_REQUEST, &uuid_endpoint(&bob.uuid, lan(1).0, lan(1).1))
            .await;
    }
    // The third is refused at once. Bob sees the request once: the second was a
    // repeat of the pending one, collapsed into it.
    let f = a.next_answering_pings().await.unwrap();
    assert_eq!(
        f,
        Frame {
            opcode: OP_DENIED,
            payload: bob.uuid.as_bytes().to_vec()
        }
    );
    assert_eq!(b.next_answering_pings().await.unwrap().opcode, OP_REQUEST);
    b.stay_alive_quietly(Duration::from_millis(300)).await;
    server.stop().await;
}

#[tokio::test]
async fn spec_client_gets_spec_layouts_from_an_extended_peer() {
    let server = start_server(|_| {}).await;
    let alice = Identity::registered(&server);
    let spec = Identity::registered(&server);
    let (mut a, _) = Client::login_v2(&server, &alice).await;
    let mut s = Client::login_v1(&server, &spec).await;

    let (ip, port) = lan(40001);
    a.send(OP_REQUEST, &uuid_endpoint(&spec.uuid, ip, port))
        .await;
    // Exactly the spec's bytes: UUID ‖ Address, no port.
    let f = s.next_answering_pings().await.unwrap();
    assert_eq!(f.opcode, OP_REQUEST);
    assert_eq!(f.payload, uuid_endpoint(&alice.uuid, ip, None));

    // The spec client accepts with a spec-layout endpoint.
    s.send(
        OP_ACCEPT,
        &uuid_endpoint(&alice.uuid, "192.168.1.30".parse().unwrap(), None),
    )
    .await;
    let f = s.next_answering_pings().await.unwrap();
    // ClientInfo for the spec client: UUID ‖ Address, 21 bytes, nothing more.
    assert_eq!(f.opcode, OP_CLIENT_INFO);
    assert_eq!(f.payload.len(), 16 + 5);
    let info = parse_client_info(&f);
    assert_eq!(info.uuid, alice.uuid);
    assert_eq!(info.public_ip, a.local.ip());

    // The extended client gets the extended layout, with the spec client's
    // TCP-observed endpoint (a spec client never binds UDP).
    let f = a.next_answering_pings().await.unwrap();
    assert_eq!(f.opcode, OP_ACCEPT);
    assert_eq!(
        f.payload,
        uuid_endpoint(&spec.uuid, "192.168.1.30".parse().unwrap(), None)
    );
    let info = parse_client_info(&a.next_answering_pings().await.unwrap());
    let s_tcp: SocketAddr = s.local;
    assert_eq!(
        (info.public_ip, info.public_port),
        (s_tcp.ip(), Some(s_tcp.port()))
    );
    assert!(info.link_secret.is_some());
    server.stop().await;
}
