//! The relay (version 3), from raw bytes: who gets a relay id, what is forwarded
//! where, and what is dropped (strangers, guessed ids, replays, rate limits).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod connect_support;

use std::time::{Duration, Instant};

use connect_support::*;
use tokio::net::UdpSocket;

const QUIET: Duration = Duration::from_millis(300);

/// A server whose pings do not end these tests' sessions while they wait in
/// silence (the raw clients here only answer pings when they read frames).
async fn server_with(tweak: impl FnOnce(&mut chatr_server::ServerConfig)) -> TestServer {
    start_server(|c| {
        c.timings.ping_interval = Duration::from_secs(60);
        c.timings.ping_timeout = Duration::from_secs(120);
        tweak(c);
    })
    .await
}

/// A UDP socket on loopback with a receive buffer big enough for a burst.
fn big_udp() -> UdpSocket {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
    socket.set_recv_buffer_size(4 << 20).unwrap();
    socket.set_nonblocking(true).unwrap();
    socket
        .bind(
            &"127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
    UdpSocket::from_std(socket.into()).unwrap()
}
const TO_SERVER: u8 = 0x30;
const FROM_SERVER: u8 = 0x31;

/// Two logged-in version-3 clients with bound UDP sockets and a brokered exchange.
struct Pair {
    a: Client,
    b: Client,
    a_udp: UdpSocket,
    b_udp: UdpSocket,
    relay: [u8; 8],
}

async fn pair(server: &TestServer) -> Pair {
    let (a_id, b_id) = (Identity::registered(server), Identity::registered(server));
    let (mut a, a_login) = Client::login_v3(server, &a_id).await;
    let (mut b, b_login) = Client::login_v3(server, &b_id).await;
    let a_udp = big_udp();
    let b_udp = big_udp();
    assert_eq!(
        udp_bind_v3(&a_udp, server, &a_login, 1).await,
        a_udp.local_addr().unwrap()
    );
    assert_eq!(
        udp_bind_v3(&b_udp, server, &b_login, 1).await,
        b_udp.local_addr().unwrap()
    );
    let (info_a, info_b) = broker(&mut a, &mut b, &b_id).await;
    let relay = relay_id_of(&info_a).expect("a relay id for two version-3 parties");
    assert_eq!(
        relay_id_of(&info_b),
        Some(relay),
        "both parties get the same relay"
    );
    Pair {
        a,
        b,
        a_udp,
        b_udp,
        relay,
    }
}

#[tokio::test]
async fn version3_sessions_are_offered_both_relays() {
    let server = server_with(|_| {}).await;
    let id = Identity::registered(&server);
    let (_c, login) = Client::login_v3(&server, &id).await;
    assert_eq!(login.version, 3);
    assert_eq!(login.features & 0x03, 0x03, "UDP and TLS relay offered");
    server.stop().await;
}

#[tokio::test]
async fn udp_relay_forwards_between_the_two_parties() {
    let server = server_with(|_| {}).await;
    let p = pair(&server).await;
    let inner = [0x41, 1, 2, 3, 4];
    p.a_udp
        .send_to(&relayed(TO_SERVER, &p.relay, &inner), server.addr())
        .await
        .unwrap();
    let (got, from) = recv_within(&p.b_udp, PATIENCE).await.expect("relayed to B");
    assert_eq!(from, server.addr());
    assert_eq!(got, relayed(FROM_SERVER, &p.relay, &inner));
    p.b_udp
        .send_to(&relayed(TO_SERVER, &p.relay, b"\x42back"), server.addr())
        .await
        .unwrap();
    let (got, _) = recv_within(&p.a_udp, PATIENCE).await.expect("relayed to A");
    assert_eq!(got, relayed(FROM_SERVER, &p.relay, b"\x42back"));
    assert_eq!(server.handle.metrics().relay_links(), 1);
    server.stop().await;
}

#[tokio::test]
async fn a_burst_is_forwarded_whole_and_in_order() {
    // Enough same-size datagrams back to back that the kernel batches them (GRO).
    let server = server_with(|_| {}).await;
    let p = pair(&server).await;
    let count = 200u16;
    for i in 0..count {
        let mut inner = vec![0x40; 1200];
        inner[1..3].copy_from_slice(&i.to_be_bytes());
        p.a_udp
            .send_to(&relayed(TO_SERVER, &p.relay, &inner), server.addr())
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    while let Some((got, _)) = recv_within(&p.b_udp, Duration::from_secs(2)).await {
        assert_eq!(got.len(), 13 + 1200);
        assert_eq!(&got[..13], &relayed(FROM_SERVER, &p.relay, &[])[..]);
        seen.push(u16::from_be_bytes([got[14], got[15]]));
        if seen.len() == usize::from(count) {
            break;
        }
    }
    assert_eq!(seen, (0..count).collect::<Vec<_>>());
    server.stop().await;
}

#[tokio::test]
async fn strangers_and_guessed_ids_are_dropped() {
    let server = server_with(|_| {}).await;
    let p = pair(&server).await;
    let stranger = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    // The right relay id from an address that is not a party's binding.
    stranger
        .send_to(&relayed(TO_SERVER, &p.relay, b"\x41inject"), server.addr())
        .await
        .unwrap();
    // A guessed id from a party's own socket.
    p.a_udp
        .send_to(&relayed(TO_SERVER, &[7; 8], b"\x41guess"), server.addr())
        .await
        .unwrap();
    // The server-to-client form sent to the server.
    p.a_udp
        .send_to(
            &relayed(FROM_SERVER, &p.relay, b"\x41reflect"),
            server.addr(),
        )
        .await
        .unwrap();
    assert!(
        recv_within(&p.b_udp, QUIET).await.is_none(),
        "B got a stranger's datagram"
    );
    assert!(recv_within(&stranger, QUIET).await.is_none());
    let metrics = server.handle.metrics().render();
    assert!(
        metrics.contains("chatr_relay_drops_total{cause=\"stranger\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("chatr_relay_drops_total{cause=\"unknown_relay\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("chatr_relay_drops_total{cause=\"malformed\"} 1"),
        "{metrics}"
    );
    // The parties still get through.
    p.a_udp
        .send_to(&relayed(TO_SERVER, &p.relay, b"\x41real"), server.addr())
        .await
        .unwrap();
    assert!(recv_within(&p.b_udp, PATIENCE).await.is_some());
    server.stop().await;
}

#[tokio::test]
async fn a_replayed_binding_cannot_move_the_endpoint_or_redirect_the_relay() {
    let server = server_with(|_| {}).await;
    let (a_id, b_id) = (Identity::registered(&server), Identity::registered(&server));
    let (mut a, a_login) = Client::login_v3(&server, &a_id).await;
    let (mut b, b_login) = Client::login_v3(&server, &b_id).await;
    let a_udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let b_udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let sniffed = auth_binding(&a_login.token, &a_login.binding_key, 1);
    assert!(
        try_bind(&a_udp, &server, &sniffed, PATIENCE)
            .await
            .is_some()
    );
    udp_bind_v3(&b_udp, &server, &b_login, 1).await;
    let attacker = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    // Replayed exactly, from the attacker's address: no answer, nothing moves.
    assert_eq!(try_bind(&attacker, &server, &sniffed, QUIET).await, None);
    // The plain (version-2) form with the sniffed token: refused for a v3 session.
    let mut plain = vec![0x00, b'C', b'H', b'R', 0x01];
    plain.extend_from_slice(&a_login.token);
    assert_eq!(try_bind(&attacker, &server, &plain, QUIET).await, None);
    // A higher counter with a forged tag.
    let mut forged = auth_binding(&a_login.token, &[0; 32], 99);
    forged[21..29].copy_from_slice(&2u64.to_be_bytes());
    assert_eq!(try_bind(&attacker, &server, &forged, QUIET).await, None);
    assert_eq!(
        server.handle.hub().udp_endpoint(&a_id.uuid),
        Some(a_udp.local_addr().unwrap())
    );
    // Relayed datagrams still reach A, not the attacker.
    let (_, info_b) = broker(&mut a, &mut b, &b_id).await;
    let relay = relay_id_of(&info_b).unwrap();
    b_udp
        .send_to(&relayed(TO_SERVER, &relay, b"\x41for A"), server.addr())
        .await
        .unwrap();
    assert!(recv_within(&a_udp, PATIENCE).await.is_some());
    assert!(recv_within(&attacker, QUIET).await.is_none());
    // The owner's next binding (higher counter) is answered; a lower one is not.
    assert!(
        try_bind(
            &a_udp,
            &server,
            &auth_binding(&a_login.token, &a_login.binding_key, 5),
            PATIENCE
        )
        .await
        .is_some()
    );
    assert_eq!(
        try_bind(
            &a_udp,
            &server,
            &auth_binding(&a_login.token, &a_login.binding_key, 4),
            QUIET
        )
        .await,
        None
    );
    server.stop().await;
}

#[tokio::test]
async fn a_party_without_udp_is_reached_over_tls_and_back() {
    let server = server_with(|_| {}).await;
    let (a_id, b_id) = (Identity::registered(&server), Identity::registered(&server));
    let (mut a, a_login) = Client::login_v3(&server, &a_id).await;
    // B's network blocks UDP: it never binds.
    let (mut b, _) = Client::login_v3(&server, &b_id).await;
    let a_udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    udp_bind_v3(&a_udp, &server, &a_login, 1).await;
    let (info_a, _) = broker(&mut a, &mut b, &b_id).await;
    let relay = relay_id_of(&info_a).unwrap();
    a_udp
        .send_to(&relayed(TO_SERVER, &relay, b"\x41over tls"), server.addr())
        .await
        .unwrap();
    let f = b.next_answering_pings().await.unwrap();
    assert_eq!(f.opcode, OP_RELAY_DATA, "{f:?}");
    assert_eq!(&f.payload[..8], &relay);
    assert_eq!(&f.payload[8..], b"\x41over tls");
    // B answers inside its TLS session; A gets it over UDP.
    let mut payload = relay.to_vec();
    payload.extend_from_slice(b"\x42from tls");
    b.send(OP_RELAY_DATA, &payload).await;
    let (got, _) = recv_within(&a_udp, PATIENCE).await.expect("TLS to UDP");
    assert_eq!(got, relayed(FROM_SERVER, &relay, b"\x42from tls"));
    server.stop().await;
}

#[tokio::test]
async fn both_parties_over_tls() {
    let server = server_with(|_| {}).await;
    let (a_id, b_id) = (Identity::registered(&server), Identity::registered(&server));
    let (mut a, _) = Client::login_v3(&server, &a_id).await;
    let (mut b, _) = Client::login_v3(&server, &b_id).await;
    let (info_a, _) = broker(&mut a, &mut b, &b_id).await;
    let relay = relay_id_of(&info_a).unwrap();
    for i in 0..50u8 {
        let mut payload = relay.to_vec();
        payload.extend_from_slice(&[0x40, i]);
        a.send(OP_RELAY_DATA, &payload).await;
    }
    for i in 0..50u8 {
        let f = b.next_answering_pings().await.unwrap();
        assert_eq!(f.opcode, OP_RELAY_DATA);
        assert_eq!(&f.payload[8..], &[0x40, i]);
    }
    server.stop().await;
}

#[tokio::test]
async fn no_relay_unless_both_parties_speak_version3() {
    let server = server_with(|_| {}).await;
    let (a_id, b_id) = (Identity::registered(&server), Identity::registered(&server));
    let (mut a, _) = Client::login_v3(&server, &a_id).await;
    let (mut b, _) = Client::login_v2(&server, &b_id).await;
    let (info_a, info_b) = broker(&mut a, &mut b, &b_id).await;
    assert_eq!(relay_id_of(&info_a), None);
    // The version-2 party gets exactly the version-2 layout (parse asserts no tail).
    assert!(parse_client_info(&info_b).link_secret.is_some());
    assert_eq!(server.handle.metrics().relay_links(), 0);
    server.stop().await;
}

#[tokio::test]
async fn version3_packets_from_a_version2_session_are_invalid() {
    let server = server_with(|_| {}).await;
    let id = Identity::registered(&server);
    let (mut c, _) = Client::login_v2(&server, &id).await;
    let mut payload = [1u8; 8].to_vec();
    payload.push(0x41);
    c.send(OP_RELAY_DATA, &payload).await;
    c.expect_disconnect("Invalid Packet").await;
    server.stop().await;
}

#[tokio::test]
async fn the_operator_can_switch_relaying_off() {
    let server = server_with(|c| c.relay.enabled = false).await;
    let (a_id, b_id) = (Identity::registered(&server), Identity::registered(&server));
    let (mut a, login) = Client::login_v3(&server, &a_id).await;
    assert_eq!(login.features & 0x03, 0, "no relay offered");
    let (mut b, _) = Client::login_v3(&server, &b_id).await;
    let (info_a, info_b) = broker(&mut a, &mut b, &b_id).await;
    assert_eq!(relay_id_of(&info_a), None);
    assert_eq!(relay_id_of(&info_b), None);
    let metrics = server.handle.metrics().render();
    assert!(
        metrics.contains("chatr_relay_opens_total{result=\"disabled\"} 1"),
        "{metrics}"
    );
    server.stop().await;
}

#[tokio::test]
async fn the_per_client_cap_limits_relays() {
    let server = server_with(|c| c.relay.max_links_per_client = 1).await;
    let (a_id, b_id, c_id) = (
        Identity::registered(&server),
        Identity::registered(&server),
        Identity::registered(&server),
    );
    let (mut a, _) = Client::login_v3(&server, &a_id).await;
    let (mut b, _) = Client::login_v3(&server, &b_id).await;
    let (mut c, _) = Client::login_v3(&server, &c_id).await;
    let (first, _) = broker(&mut a, &mut b, &b_id).await;
    assert!(relay_id_of(&first).is_some());
    let (second, _) = broker(&mut a, &mut c, &c_id).await;
    assert_eq!(relay_id_of(&second), None, "A is at its cap");
    let metrics = server.handle.metrics().render();
    assert!(
        metrics.contains("chatr_relay_opens_total{result=\"client_cap\"} 1"),
        "{metrics}"
    );
    server.stop().await;
}

#[tokio::test]
async fn close_by_a_party_and_idle_expiry() {
    let server = server_with(|c| c.relay.idle_timeout = Duration::from_millis(400)).await;
    let mut p = pair(&server).await;
    // A is done with it: B is told, and the relay forwards no more.
    let mut close = p.relay.to_vec();
    close.extend_from_slice(&[0]);
    p.a.send(OP_RELAY_CLOSE, &close).await;
    let f = p.b.next_answering_pings().await.unwrap();
    assert_eq!(f.opcode, OP_RELAY_CLOSE, "{f:?}");
    assert_eq!(&f.payload[..8], &p.relay);
    assert_eq!(&f.payload[8..], b"\x0eclosed by peer");
    p.a_udp
        .send_to(&relayed(TO_SERVER, &p.relay, b"\x41late"), server.addr())
        .await
        .unwrap();
    assert!(recv_within(&p.b_udp, QUIET).await.is_none());

    // A second relay between the same two expires when idle; both are told.
    let mut q = pair(&server).await;
    let started = Instant::now();
    for client in [&mut q.a, &mut q.b] {
        let f = client.next_answering_pings().await.unwrap();
        assert_eq!(f.opcode, OP_RELAY_CLOSE, "{f:?}");
        assert_eq!(&f.payload[8..], b"\x04idle");
    }
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(server.handle.metrics().relay_links(), 0);
    server.stop().await;
}

#[tokio::test]
async fn the_rate_limit_holds_within_ten_percent() {
    // 2 MB/s per client with a 64 KB burst; A offers about twice that for 2 s.
    const RATE: u64 = 2_000_000;
    const BURST: u64 = 64_000;
    let server = server_with(|c| {
        c.relay.client_rate = RATE;
        c.relay.client_burst = BURST;
    })
    .await;
    let p = pair(&server).await;
    let inner = vec![0x40; 1000];
    let datagram = relayed(TO_SERVER, &p.relay, &inner);
    let received = tokio::spawn(async move {
        let mut total = 0u64;
        while let Some((got, _)) = recv_within(&p.b_udp, Duration::from_millis(500)).await {
            total += (got.len() - 13) as u64;
        }
        total
    });
    let started = Instant::now();
    let mut sent = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    while started.elapsed() < Duration::from_secs(2) {
        tick.tick().await;
        // 4 KB per millisecond: 4 MB/s offered.
        for _ in 0..4 {
            p.a_udp.send_to(&datagram, server.addr()).await.unwrap();
            sent += 1000;
        }
    }
    let offered_for = started.elapsed().as_secs_f64();
    let total = received.await.unwrap();
    let expected = BURST as f64 + RATE as f64 * offered_for;
    let ratio = total as f64 / expected;
    assert!(
        sent as f64 > 1.5 * expected,
        "the test did not offer enough: {sent}"
    );
    assert!(
        (0.9..=1.1).contains(&ratio),
        "forwarded {total} B of {sent} B offered in {offered_for:.2} s; expected {expected:.0} (ratio {ratio:.3})"
    );
    let metrics = server.handle.metrics().render();
    assert!(
        !metrics.contains("chatr_relay_drops_total{cause=\"rate_limited\"} 0"),
        "{metrics}"
    );
    server.stop().await;
}
