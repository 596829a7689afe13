//! The byte pipe over a real peer link: bulk data, both directions, delivery confirmation.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod link_support;

use std::time::Instant;

use bytes::{Bytes, BytesMut};
use chatr_client::link::pipe::PipeReport;
use chatr_client::link::pipe::{
    PipeCodec, PipeError, PipeFrame, PipeSummary, run_pipe, run_pipe_blocking,
};
use chatr_client::link::{CloseCode, LinkVersion, StreamKind};
use link_support::{config, linked_pair, linked_pair_with, random_bytes, sha256};
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

/// The summary a peer on a link of this build's version sends (XXH3-128 on `chatr/3`).
fn summary_of(data: &[u8]) -> PipeSummary {
    PipeSummary::of(LinkVersion::NEWEST, data)
}

/// Pipes `data` from the initiator to the responder of `pair`; the responder's report and
/// output.
async fn pipe_one_way(
    pair: &link_support::Pair,
    data: Vec<u8>,
) -> (PipeReport, PipeReport, Vec<u8>) {
    let responder = pair.responder.clone();
    let receiver = tokio::spawn(async move {
        let stream = responder.accept_stream().await.unwrap();
        let mut output = Vec::new();
        let report = run_pipe(stream, tokio::io::empty(), &mut output)
            .await
            .unwrap();
        (report, output)
    });
    let stream = pair.initiator.open(StreamKind::Pipe).await.unwrap();
    let report = run_pipe(stream, &data[..], tokio::io::sink())
        .await
        .unwrap();
    let (peer_report, output) = receiver.await.unwrap();
    (report, peer_report, output)
}

#[tokio::test]
async fn peers_of_this_version_agree_on_chatr_3_and_its_xxh3_checksum() {
    let pair = linked_pair().await;
    assert_eq!(pair.initiator.version(), LinkVersion::V3);
    assert_eq!(pair.responder.version(), LinkVersion::V3);
    // A summary of an older revision (SHA-256 from chatr/1, BLAKE3 from chatr/2) does not
    // pass on chatr/3.
    let sha = PipeSummary::of(LinkVersion::V1, b"abc");
    assert_eq!(sha.checksum, sha256(b"abc"));
    for older in [sha, PipeSummary::of(LinkVersion::V2, b"abc")] {
        let mut raw = pair.initiator.open(StreamKind::Pipe).await.unwrap();
        raw.write_all(&frame(PipeFrame::Data(Bytes::from_static(b"abc"))))
            .await
            .unwrap();
        raw.write_all(&frame(PipeFrame::End(older))).await.unwrap();
        let stream = pair.responder.accept_stream().await.unwrap();
        let result = run_pipe(stream, tokio::io::empty(), tokio::io::sink()).await;
        assert!(
            matches!(
                result,
                Err(PipeError::Corrupted {
                    received: 3,
                    sent: 3,
                    hash_ok: false
                })
            ),
            "{result:?}"
        );
    }
}

#[tokio::test]
async fn an_older_peer_and_a_chatr_3_peer_pipe_on_the_older_revision() {
    for older in [LinkVersion::V1, LinkVersion::V2] {
        let mut old = config();
        old.newest_version = older;
        for (initiator, responder) in [(old.clone(), config()), (config(), old.clone())] {
            let pair = linked_pair_with(initiator, responder).await;
            assert_eq!(pair.initiator.version(), older);
            assert_eq!(pair.responder.version(), older);
            let data = random_bytes(300_000);
            let (report, peer_report, output) = pipe_one_way(&pair, data.clone()).await;
            assert!(report.delivered && peer_report.delivered, "{older}");
            assert_eq!(output, data, "{older}");
        }
    }
    // What a chatr/1 peer checks is SHA-256: its END for "hi" is the PROTOCOL.md example.
    assert_eq!(
        hex::encode(PipeSummary::of(LinkVersion::V1, b"hi").checksum),
        "8f434346648f6b96df89dda901c5176b10a6d83961dd3c1ac88b59b2dc327aa4"
    );
}

/// A blocking writer into shared memory, like stdout opened as a file.
#[derive(Clone, Default)]
struct SharedOutput(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for SharedOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A temporary file holding `data`, read from its start (the blocking pipe reads a descriptor).
fn file_with(data: &[u8]) -> std::fs::File {
    use std::io::{Seek as _, Write as _};
    let mut file = tempfile::tempfile().unwrap();
    file.write_all(data).unwrap();
    file.rewind().unwrap();
    file
}

#[tokio::test]
async fn blocking_input_and_output_threads_carry_both_directions() {
    let pair = linked_pair().await;
    let a_data = random_bytes(5 * 1024 * 1024 + 3);
    let b_data = random_bytes(1024 * 1024 + 11);
    let responder = pair.responder.clone();
    let b_input = b_data.clone();
    let b_output = SharedOutput::default();
    let b_seen = b_output.clone();
    let b_side = tokio::spawn(async move {
        let stream = responder.accept_stream().await.unwrap();
        run_pipe_blocking(stream, file_with(&b_input), b_output)
            .await
            .unwrap()
    });
    let stream = pair.initiator.open(StreamKind::Pipe).await.unwrap();
    let a_output = SharedOutput::default();
    let a_report = run_pipe_blocking(stream, file_with(&a_data), a_output.clone())
        .await
        .unwrap();
    let b_report = b_side.await.unwrap();
    assert!(a_report.delivered && b_report.delivered);
    assert_eq!(
        (a_report.sent, a_report.received),
        (a_data.len() as u64, b_data.len() as u64)
    );
    // Everything was written out before the ACK that made the peer's report delivered.
    assert_eq!(*a_output.0.lock().unwrap(), b_data);
    assert_eq!(*b_seen.0.lock().unwrap(), a_data);
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
