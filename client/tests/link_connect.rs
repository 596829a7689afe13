//! Link setup over loopback: pinned raw keys, impostors refused in both directions, streams.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod link_support;

use chatr_client::link::{CloseCode, LinkError, StreamKind};
use std::time::Duration;

use link_support::{config, endpoint, endpoint_with, identity, linked_pair};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

#[tokio::test]
async fn pinned_keys_link_and_each_side_sees_the_other() {
    let pair = linked_pair().await;
    assert_eq!(
        pair.initiator.peer_key(),
        pair.responder_key.verifying_key()
    );
    assert_eq!(
        pair.responder.peer_key(),
        pair.initiator_key.verifying_key()
    );
    assert_eq!(
        pair.initiator.remote_addr(),
        pair.responder_endpoint.local_addr().unwrap()
    );
    assert_eq!(
        pair.responder.remote_addr(),
        pair.initiator_endpoint.local_addr().unwrap()
    );
    // ALPN chatr/3, the newest both sides offer, was negotiated.
    let data = pair
        .initiator
        .connection()
        .handshake_data()
        .unwrap()
        .downcast::<quinn::crypto::rustls::HandshakeData>()
        .unwrap();
    assert_eq!(data.protocol.as_deref(), Some(&b"chatr/3"[..]));
    assert_eq!(
        pair.initiator.version(),
        chatr_client::link::LinkVersion::V3
    );

    // One stream each way, to check both can open.
    let mut from_initiator = pair.initiator.open(StreamKind::Chat).await.unwrap();
    from_initiator.write_all(b"hello responder").await.unwrap();
    from_initiator.finish().unwrap();
    let mut at_responder = pair.responder.accept_stream().await.unwrap();
    assert_eq!(at_responder.kind(), StreamKind::Chat);
    let mut got = Vec::new();
    at_responder.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"hello responder");

    let mut from_responder = pair.responder.open(StreamKind::File).await.unwrap();
    from_responder.write_all(b"hello initiator").await.unwrap();
    from_responder.finish().unwrap();
    let mut at_initiator = pair.initiator.accept_stream().await.unwrap();
    assert_eq!(at_initiator.kind(), StreamKind::File);
    let mut got = Vec::new();
    at_initiator.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"hello initiator");
}

#[tokio::test]
async fn initiator_refuses_a_responder_with_another_key() {
    let initiator_key = identity();
    let impostor_key = identity();
    let real_responder = identity().verifying_key();
    let (initiator, _c1) = endpoint(&initiator_key);
    let (impostor, _c2) = endpoint(&impostor_key);
    let addr = impostor.local_addr().unwrap();

    let (connected, accepted) = tokio::join!(initiator.connect(addr, real_responder), async {
        let incoming = impostor.accept().await;
        match incoming {
            // The initiator aborts the handshake, so normally this fails already.
            Ok(incoming) => incoming
                .accept(&initiator_key.verifying_key())
                .await
                .map(|_| ()),
            Err(e) => Err(e),
        }
    });
    match connected {
        Err(LinkError::KeyMismatch { expected, got }) => {
            assert_eq!(*expected, real_responder);
            assert_eq!(*got, impostor_key.verifying_key());
        }
        other => panic!("expected KeyMismatch, got {other:?}"),
    }
    assert!(accepted.is_err(), "the impostor must not get a link");
}

#[tokio::test]
async fn responder_refuses_an_initiator_with_another_key() {
    let impostor_key = identity();
    let responder_key = identity();
    let expected_initiator = identity().verifying_key();
    let (impostor, _c1) = endpoint(&impostor_key);
    let (responder, _c2) = endpoint(&responder_key);
    let addr = responder.local_addr().unwrap();

    let (connected, accepted) = tokio::join!(
        impostor.connect(addr, responder_key.verifying_key()),
        async {
            let incoming = responder.accept().await.unwrap();
            assert_eq!(incoming.peer_key(), impostor_key.verifying_key());
            incoming.accept(&expected_initiator).await
        }
    );
    match accepted {
        Err(LinkError::KeyMismatch { expected, got }) => {
            assert_eq!(*expected, expected_initiator);
            assert_eq!(*got, impostor_key.verifying_key());
        }
        other => panic!("expected KeyMismatch, got {other:?}"),
    }
    match connected {
        Err(LinkError::Refused { reason }) => {
            assert!(reason.contains("key mismatch"), "reason: {reason}");
        }
        other => panic!("expected Refused, got {other:?}"),
    }
}

#[tokio::test]
async fn refused_link_reports_the_reason() {
    let a = identity();
    let b = identity();
    let (initiator, _c1) = endpoint(&a);
    let (responder, _c2) = endpoint(&b);
    let addr = responder.local_addr().unwrap();
    let (connected, ()) = tokio::join!(initiator.connect(addr, b.verifying_key()), async {
        responder
            .accept()
            .await
            .unwrap()
            .refuse("not accepting links now");
    });
    match connected {
        Err(LinkError::Refused { reason }) => assert_eq!(reason, "not accepting links now"),
        other => panic!("expected Refused, got {other:?}"),
    }
}

#[tokio::test]
async fn connect_to_a_silent_address_times_out() {
    let a = identity();
    let mut quick = config();
    quick.handshake_timeout = Duration::from_millis(300);
    let (initiator, _c) = endpoint_with(&a, quick);
    // A bound socket that never answers.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let result = initiator
        .connect(silent.local_addr().unwrap(), identity().verifying_key())
        .await;
    assert!(
        matches!(result, Err(LinkError::HandshakeTimeout { .. })),
        "{result:?}"
    );
}

#[tokio::test]
async fn several_streams_run_at_once_on_one_link() {
    let pair = linked_pair().await;
    let kinds = [
        StreamKind::Chat,
        StreamKind::Pipe,
        StreamKind::File,
        StreamKind::Pipe,
    ];
    let payload = |i: usize| vec![i as u8; 200_000 + i];

    // Open all streams and write to all of them concurrently, finishing none until every
    // stream is open (so they really overlap).
    let mut streams = Vec::new();
    for kind in kinds {
        streams.push(pair.initiator.open(kind).await.unwrap());
    }
    let writers = streams
        .into_iter()
        .enumerate()
        .map(|(i, mut s)| async move {
            s.write_all(&[i as u8]).await.unwrap();
            s.write_all(&payload(i)).await.unwrap();
            s.finish().unwrap();
            // Read the echo back.
            let mut echo = Vec::new();
            s.read_to_end(&mut echo).await.unwrap();
            (i, echo)
        });
    let responder = pair.responder.clone();
    let echo_server = tokio::spawn(async move {
        let mut tasks = Vec::new();
        for _ in 0..kinds.len() {
            let mut s = responder.accept_stream().await.unwrap();
            tasks.push(tokio::spawn(async move {
                let kind = s.kind();
                let mut data = Vec::new();
                s.read_to_end(&mut data).await.unwrap();
                s.write_all(&data).await.unwrap();
                s.finish().unwrap();
                s.wait_delivered().await.unwrap();
                (kind, data[0])
            }));
        }
        let mut seen = Vec::new();
        for t in tasks {
            seen.push(t.await.unwrap());
        }
        seen
    });
    let results = futures_util::future::join_all(writers).await;
    for (i, echo) in results {
        assert_eq!(echo[0], i as u8);
        assert_eq!(&echo[1..], &payload(i)[..]);
    }
    let mut seen = echo_server.await.unwrap();
    seen.sort_by_key(|(_, i)| *i);
    let kinds_seen: Vec<_> = seen.iter().map(|(k, _)| *k).collect();
    assert_eq!(kinds_seen, kinds);
}

#[tokio::test]
async fn unknown_stream_kinds_are_refused_and_skipped() {
    let pair = linked_pair().await;
    // A stream with a kind byte this version does not know.
    let (mut send, mut recv) = pair.initiator.connection().open_bi().await.unwrap();
    send.write_all(&[0x7f, 1, 2, 3]).await.unwrap();
    let mut good = pair.initiator.open(StreamKind::Pipe).await.unwrap();
    good.write_all(b"ok").await.unwrap();
    good.finish().unwrap();

    let mut accepted = pair.responder.accept_stream().await.unwrap();
    assert_eq!(accepted.kind(), StreamKind::Pipe);
    let mut got = Vec::new();
    accepted.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"ok");

    // The unknown stream was reset with the Refused code.
    let mut buf = [0u8; 8];
    match recv.read(&mut buf).await {
        Err(quinn::ReadError::Reset(code)) => {
            assert_eq!(code, CloseCode::Refused.to_varint())
        }
        other => panic!("expected a reset, got {other:?}"),
    }
}

#[tokio::test]
async fn closing_the_link_is_seen_by_the_peer() {
    let pair = linked_pair().await;
    pair.initiator.close(CloseCode::Normal, "bye");
    match pair.responder.closed().await {
        LinkError::Connection(quinn::ConnectionError::ApplicationClosed(close)) => {
            assert_eq!(close.error_code, CloseCode::Normal.to_varint());
            assert_eq!(&close.reason[..], b"bye");
        }
        other => panic!("unexpected close: {other:?}"),
    }
    assert!(pair.responder.accept_stream().await.is_err());
}

#[tokio::test]
async fn a_stalled_handshake_does_not_hold_up_other_peers() {
    let responder_key = identity();
    let responder_public = responder_key.verifying_key();
    let (responder, _rc) = endpoint(&responder_key);
    let responder_addr = responder.local_addr().unwrap();

    // A "black hole" relay: it forwards the staller's packets to the responder but never
    // forwards anything back, so that handshake hangs on the responder's side.
    let relay = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let relay_addr = relay.local_addr().unwrap();
    let relay_task = tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        loop {
            let (n, from) = relay.recv_from(&mut buf).await.unwrap();
            if from != responder_addr {
                relay.send_to(&buf[..n], responder_addr).await.unwrap();
            }
        }
    });
    let staller_key = identity();
    let (staller, _sc) = endpoint(&staller_key);
    let stalled = tokio::spawn(async move {
        let _ = staller.connect(relay_addr, responder_public).await;
    });
    // Let the stalled handshake reach the responder first.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let good_key = identity();
    let (good, _gc) = endpoint(&good_key);
    let connecting =
        tokio::spawn(async move { good.connect(responder_addr, responder_public).await });

    // The first finished handshake is the good peer's, not the stalled one.
    let incoming = responder.accept().await.unwrap();
    assert_eq!(incoming.peer_key(), good_key.verifying_key());
    let responder_link = incoming.accept(&good_key.verifying_key()).await.unwrap();
    let initiator_link = connecting.await.unwrap().unwrap();
    assert_eq!(initiator_link.peer_key(), responder_public);
    assert_eq!(responder_link.peer_key(), good_key.verifying_key());
    relay_task.abort();
    stalled.abort();
}

#[tokio::test]
async fn a_closed_endpoint_accepts_and_connects_no_more() {
    let key = identity();
    let (endpoint_a, _c) = endpoint(&key);
    endpoint_a.close().await;
    assert!(matches!(
        endpoint_a.accept().await,
        Err(LinkError::EndpointClosed)
    ));
    let result = endpoint_a
        .connect("127.0.0.1:9".parse().unwrap(), identity().verifying_key())
        .await;
    assert!(
        matches!(result, Err(LinkError::Connect { .. })),
        "{result:?}"
    );
}
