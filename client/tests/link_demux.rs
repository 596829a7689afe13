//! The shared socket: control datagrams reach the control channel while QUIC runs on it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod link_support;

use std::collections::HashSet;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::Duration;

use chatr_client::link::{ControlRx, LinkEndpoint, Source, StreamKind};
use link_support::{config, identity, linked_pair, random_bytes, sha256};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Reads `count` datagrams from `rx`, failing after a generous deadline.
async fn take(rx: &mut ControlRx, count: usize) -> Vec<(SocketAddr, Vec<u8>)> {
    let mut out = Vec::new();
    while out.len() < count {
        let (from, bytes) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("control datagram did not arrive")
            .expect("control channel closed");
        let Source::Direct(from) = from else {
            panic!("a direct datagram reported as relayed: {from:?}");
        };
        out.push((from, bytes.to_vec()));
    }
    out
}

#[tokio::test]
async fn control_datagrams_are_diverted_while_quic_streams_data() {
    let mut pair = linked_pair().await;
    let responder_addr = pair.responder_endpoint.local_addr().unwrap();
    let initiator_addr = pair.initiator_endpoint.local_addr().unwrap();

    // Bulk QUIC traffic from initiator to responder in the background.
    let data = random_bytes(8 * 1024 * 1024);
    let expected = sha256(&data);
    let mut out = pair.initiator.open(StreamKind::Pipe).await.unwrap();
    let writer = tokio::spawn(async move {
        out.write_all(&data).await.unwrap();
        out.finish().unwrap();
        out.wait_delivered().await.unwrap();
    });
    let responder = pair.responder.clone();
    let reader = tokio::spawn(async move {
        let mut stream = responder.accept_stream().await.unwrap();
        let mut got = Vec::new();
        stream.read_to_end(&mut got).await.unwrap();
        got
    });

    // Meanwhile, control datagrams arrive at the responder's socket from a stranger and from
    // the peer itself (same address as its QUIC packets).
    let stranger = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let stranger_addr = stranger.local_addr().unwrap();
    let probe = |i: u8| vec![0x00, b'C', b'H', b'R', 0x10, i];
    // A STUN binding request header: type 0x0001, length 0, magic cookie, transaction id.
    let mut stun = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42];
    stun.extend_from_slice(&[7u8; 12]);
    let mut expected_control = HashSet::new();
    for i in 0..20u8 {
        expected_control.insert((stranger_addr, probe(i)));
        expected_control.insert((initiator_addr, probe(100 + i)));
    }
    expected_control.insert((stranger_addr, stun.clone()));

    // The kernel drops UDP datagrams whenever the responder's receive buffer overflows, which
    // QUIC's bursts do on a loaded machine (that is UDP, not the demux). So, like the real
    // hole-punch, resend what has not arrived yet; a datagram the demux misroutes never arrives
    // however often it is sent, and the test times out on it.
    let mut got = HashSet::new();
    let mut arrivals = 0u64;
    for _round in 0..40 {
        let missing: Vec<_> = expected_control.difference(&got).cloned().collect();
        if missing.is_empty() {
            break;
        }
        for (from, datagram) in &missing {
            if *from == stranger_addr {
                stranger.send_to(datagram, responder_addr).await.unwrap();
            } else {
                pair.initiator_endpoint
                    .send_raw(responder_addr, datagram)
                    .await
                    .unwrap();
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        while let Ok(Some((from, bytes))) =
            tokio::time::timeout(Duration::from_millis(250), pair.responder_control.recv()).await
        {
            let Source::Direct(from) = from else {
                panic!("a direct datagram reported as relayed: {from:?}");
            };
            let item = (from, bytes.to_vec());
            assert!(
                expected_control.contains(&item),
                "unexpected datagram in the control channel: {item:?}"
            );
            arrivals += 1;
            got.insert(item);
        }
    }
    assert_eq!(got, expected_control, "control datagrams never arrived");

    writer.await.unwrap();
    let received = reader.await.unwrap();
    assert_eq!(sha256(&received), expected);
    assert_eq!(pair.responder_control.dropped(), 0);
    assert_eq!(pair.responder_control.delivered(), arrivals);
    // Nothing QUIC leaked into the control channel.
    assert!(pair.responder_control.try_recv().is_none());
    assert!(pair.initiator_control.try_recv().is_none());
}

#[tokio::test]
async fn raw_sender_reaches_the_peer_and_rejects_quic_lookalikes() {
    let mut pair = linked_pair().await;
    let initiator_addr = pair.initiator_endpoint.local_addr().unwrap();
    let sender = pair.responder_endpoint.raw_sender();
    assert_eq!(
        sender.local_addr().unwrap(),
        pair.responder_endpoint.local_addr().unwrap()
    );
    sender
        .send_raw(initiator_addr, b"\0CHR\x11hello")
        .await
        .unwrap();
    let got = take(&mut pair.initiator_control, 1).await;
    assert_eq!(
        got,
        vec![(
            pair.responder_endpoint.local_addr().unwrap(),
            b"\0CHR\x11hello".to_vec()
        )]
    );

    let err = sender
        .send_raw(initiator_addr, &[0x40, 1, 2])
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);

    // The link still works after all that.
    let mut s = pair.initiator.open(StreamKind::Chat).await.unwrap();
    s.write_all(b"x").await.unwrap();
    s.finish().unwrap();
    let mut r = pair.responder.accept_stream().await.unwrap();
    let mut buf = Vec::new();
    r.read_to_end(&mut buf).await.unwrap();
    assert_eq!(buf, b"x");
}

#[tokio::test]
async fn a_full_control_queue_drops_and_counts_without_blocking_quic() {
    let key = identity();
    let mut small = config();
    small.control_queue = 2;
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let (endpoint, mut control) = LinkEndpoint::new(socket, &key, small).unwrap();
    let addr = endpoint.local_addr().unwrap();

    let stranger = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for i in 0..10u8 {
        stranger
            .send_to(&[0, b'C', b'H', b'R', i], addr)
            .await
            .unwrap();
    }
    // Wait until the socket has seen all ten (nobody reads the channel meanwhile).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while control.delivered() + control.dropped() < 10 {
        assert!(tokio::time::Instant::now() < deadline, "datagrams lost");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(control.delivered(), 2);
    assert_eq!(control.dropped(), 8);
    assert_eq!(endpoint.control_stats(), (2, 8));
    let first = take(&mut control, 2).await;
    assert_eq!(first[0].1, vec![0, b'C', b'H', b'R', 0]);
    assert_eq!(first[1].1, vec![0, b'C', b'H', b'R', 1]);

    // QUIC on the same endpoint is unaffected.
    let peer_key = identity();
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let (peer, _peer_control) = LinkEndpoint::new(socket, &peer_key, config()).unwrap();
    let (link, accepted) = tokio::join!(peer.connect(addr, key.verifying_key()), async {
        endpoint
            .accept()
            .await
            .unwrap()
            .accept(&peer_key.verifying_key())
            .await
    });
    link.unwrap();
    accepted.unwrap();
}
