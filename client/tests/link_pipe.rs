//! The byte pipe over a real peer link: bulk data, both directions, delivery confirmation.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod link_support;

use std::time::Instant;

use bytes::{Bytes, BytesMut};
use chatr_client::link::pipe::{PipeCodec, PipeError, PipeFrame, PipeSummary, run_pipe};
use chatr_client::link::{CloseCode, StreamKind};
use link_support::{linked_pair, random_bytes, sha256};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_util::codec::Encoder as _;

#[tokio::test]
async fn fifty_mebibytes_arrive_intact_and_are_confirmed() {
    const LEN: usize = 50 * 1024 * 1024;
    let pair = linked_pair().await;
    let data = random_bytes(LEN);
    let expected = sha256(&data);

    let responder = pair.responder.clone();
    let receiver = tokio::spawn(async move {
        let stream = responder.accept_stream().await.unwrap();
        assert_eq!(stream.kind(), StreamKind::Pipe);
        let mut output = Vec::with_capacity(LEN);
        let report = run_pipe(stream, tokio::io::empty(), &mut output)
            .await
            .unwrap();
        (report, output)
    });

    let started = Instant::now();
    let stream = pair.initiator.open(StreamKind::Pipe).await.unwrap();
    let report = run_pipe(stream, &data[..], tokio::io::sink())
        .await
        .unwrap();
    let elapsed = started.elapsed();
    let (peer_report, output) = receiver.await.unwrap();

    assert_eq!(report.sent, LEN as u64);
    assert_eq!(report.received, 0);
    assert!(report.delivered);
    assert_eq!(peer_report.received, LEN as u64);
    assert_eq!(peer_report.sent, 0);
    assert!(
        peer_report.delivered,
        "the empty direction is confirmed too"
    );
    assert_eq!(output.len(), LEN);
    assert_eq!(sha256(&output), expected);
    // Informational only (never asserted): loopback throughput of this build.
    eprintln!(
        "piped {} MiB in {:?} ({:.0} MiB/s)",
        LEN / (1024 * 1024),
        elapsed,
        LEN as f64 / (1024.0 * 1024.0) / elapsed.as_secs_f64()
    );
}

#[tokio::test]
async fn both_directions_flow_at_once() {
    let pair = linked_pair().await;
    let a_data = random_bytes(3 * 1024 * 1024 + 17);
    let b_data = random_bytes(2 * 1024 * 1024 + 5);

    let responder = pair.responder.clone();
    let b_input = b_data.clone();
    let b_side = tokio::spawn(async move {
        let stream = responder.accept_stream().await.unwrap();
        let mut output = Vec::new();
        let report = run_pipe(stream, &b_input[..], &mut output).await.unwrap();
        (report, output)
    });
    let stream = pair.initiator.open(StreamKind::Pipe).await.unwrap();
    let mut a_output = Vec::new();
    let a_report = run_pipe(stream, &a_data[..], &mut a_output).await.unwrap();
    let (b_report, b_output) = b_side.await.unwrap();

    assert!(a_report.delivered && b_report.delivered);
    assert_eq!(a_report.sent, a_data.len() as u64);
    assert_eq!(a_report.received, b_data.len() as u64);
    assert_eq!(b_report.sent, b_data.len() as u64);
    assert_eq!(b_report.received, a_data.len() as u64);
    assert_eq!(sha256(&a_output), sha256(&b_data));
    assert_eq!(sha256(&b_output), sha256(&a_data));
}

fn frame(f: PipeFrame) -> BytesMut {
    let mut out = BytesMut::new();
    PipeCodec.encode(f, &mut out).unwrap();
    out
}

fn summary_of(data: &[u8]) -> PipeSummary {
    PipeSummary {
        total: data.len() as u64,
        sha256: sha256(data),
    }
}

#[tokio::test]
async fn a_wrong_acknowledgement_means_not_delivered() {
    let pair = linked_pair().await;
    let responder = pair.responder.clone();
    // A peer that reads everything but acknowledges one byte less.
    let liar = tokio::spawn(async move {
        let mut stream = responder.accept_stream().await.unwrap();
        let mut seen = vec![0u8; 5 + 5 + 41];
        stream.read_exact(&mut seen).await.unwrap();
        stream
            .write_all(&frame(PipeFrame::End(summary_of(b""))))
            .await
            .unwrap();
        stream
            .write_all(&frame(PipeFrame::Ack(summary_of(b"hell"))))
            .await
            .unwrap();
        stream.finish().unwrap();
        stream.wait_delivered().await.unwrap();
    });
    let stream = pair.initiator.open(StreamKind::Pipe).await.unwrap();
    let report = run_pipe(stream, &b"hello"[..], tokio::io::sink())
        .await
        .unwrap();
    liar.await.unwrap();
    assert_eq!(report.sent, 5);
    assert!(!report.delivered);
}

#[tokio::test]
async fn data_that_does_not_match_the_end_summary_is_an_error() {
    let pair = linked_pair().await;
    let mut raw = pair.initiator.open(StreamKind::Pipe).await.unwrap();
    raw.write_all(&frame(PipeFrame::Data(Bytes::from_static(b"abc"))))
        .await
        .unwrap();
    raw.write_all(&frame(PipeFrame::End(summary_of(b"abcd"))))
        .await
        .unwrap();

    let stream = pair.responder.accept_stream().await.unwrap();
    let result = run_pipe(stream, tokio::io::empty(), tokio::io::sink()).await;
    match result {
        Err(PipeError::Corrupted {
            received,
            sent,
            hash_ok,
        }) => {
            assert_eq!((received, sent, hash_ok), (3, 4, false));
        }
        other => panic!("expected Corrupted, got {other:?}"),
    }
}

#[tokio::test]
async fn a_peer_that_vanishes_before_acknowledging_fails_the_pipe() {
    let pair = linked_pair().await;
    let responder = pair.responder.clone();
    let vanisher = tokio::spawn(async move {
        let mut stream = responder.accept_stream().await.unwrap();
        let mut first = [0u8; 5];
        stream.read_exact(&mut first).await.unwrap();
        responder.close(CloseCode::Normal, "gone");
    });
    let stream = pair.initiator.open(StreamKind::Pipe).await.unwrap();
    let data = random_bytes(1024 * 1024);
    let result = run_pipe(stream, &data[..], tokio::io::sink()).await;
    vanisher.await.unwrap();
    assert!(result.is_err(), "{result:?}");
}

#[tokio::test]
async fn garbage_on_a_pipe_stream_is_rejected() {
    let pair = linked_pair().await;
    let mut raw = pair.initiator.open(StreamKind::Pipe).await.unwrap();
    raw.write_all(&[0x00, 0xff, 0xff, 0xff, 0xff])
        .await
        .unwrap();
    let stream = pair.responder.accept_stream().await.unwrap();
    let result = run_pipe(stream, tokio::io::empty(), tokio::io::sink()).await;
    assert!(matches!(result, Err(PipeError::BadLength(_))), "{result:?}");
}
