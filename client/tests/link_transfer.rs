//! File transfer over a real peer link: size and SHA-256 checks, hostile senders.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod link_support;

use std::path::Path;

use chatr_client::link::transfer::{
    FileHeader, LimitExceeded, ReceiveLimits, Reply, ReplyStatus, TransferError, receive_file,
    receive_file_with, send_file,
};
use chatr_client::link::{LinkStream, PeerLink, StreamKind};
use link_support::{linked_pair, random_bytes, sha256};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

fn dir_entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn a_file_arrives_with_matching_size_and_hash() {
    let pair = linked_pair().await;
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let content = random_bytes(3 * 1024 * 1024 + 123);
    let path = src.path().join("holiday photos.tar");
    std::fs::write(&path, &content).unwrap();

    let responder = pair.responder.clone();
    let dst_path = dst.path().to_path_buf();
    let receiver = tokio::spawn(async move {
        let stream = responder.accept_stream().await.unwrap();
        assert_eq!(stream.kind(), StreamKind::File);
        receive_file(stream, &dst_path).await
    });
    let sent = send_file(&pair.initiator, &path).await.unwrap();
    let received = receiver.await.unwrap().unwrap();

    assert_eq!(sent.name, "holiday photos.tar");
    assert_eq!(sent.size, content.len() as u64);
    assert_eq!(sent.sha256, sha256(&content));
    assert_eq!(received.path, dst.path().join("holiday photos.tar"));
    assert_eq!(received.size, sent.size);
    assert_eq!(received.sha256, sent.sha256);
    assert_eq!(std::fs::read(&received.path).unwrap(), content);
}

#[tokio::test]
async fn an_existing_file_is_never_overwritten() {
    let pair = linked_pair().await;
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    std::fs::write(dst.path().join("notes.txt"), b"keep me").unwrap();
    let path = src.path().join("notes.txt");
    std::fs::write(&path, b"new notes").unwrap();

    let responder = pair.responder.clone();
    let dst_path = dst.path().to_path_buf();
    let receiver = tokio::spawn(async move {
        let stream = responder.accept_stream().await.unwrap();
        receive_file(stream, &dst_path).await
    });
    send_file(&pair.initiator, &path).await.unwrap();
    let received = receiver.await.unwrap().unwrap();
    assert_eq!(received.path, dst.path().join("notes (1).txt"));
    assert_eq!(
        std::fs::read(dst.path().join("notes.txt")).unwrap(),
        b"keep me"
    );
    assert_eq!(std::fs::read(&received.path).unwrap(), b"new notes");
}

/// Opens a file stream and writes `bytes` raw, then finishes it.
async fn raw_sender(link: &PeerLink, bytes: Vec<u8>) -> LinkStream {
    let mut stream = link.open(StreamKind::File).await.unwrap();
    stream.write_all(&bytes).await.unwrap();
    stream.finish().unwrap();
    stream
}

fn header_bytes(name: &str, size: u64, sha: [u8; 32]) -> Vec<u8> {
    let mut out = Vec::new();
    FileHeader {
        name: name.into(),
        size,
        sha256: sha,
    }
    .encode(&mut out)
    .unwrap();
    out
}

/// Reads the receiver's reply from the raw sender's stream.
async fn reply_of(stream: &mut LinkStream) -> Reply {
    let mut bytes = Vec::new();
    stream.read_to_end(&mut bytes).await.unwrap();
    let (reply, used) = Reply::decode(&bytes).unwrap().unwrap();
    assert_eq!(used, bytes.len());
    reply
}

/// Runs one hostile transfer and returns the receiver's error, the reply, and what is left
/// in the receive directory.
async fn hostile(bytes: Vec<u8>) -> (TransferError, Reply, Vec<String>) {
    let pair = linked_pair().await;
    let dst = tempfile::tempdir().unwrap();
    let mut sender = raw_sender(&pair.initiator, bytes).await;
    let stream = pair.responder.accept_stream().await.unwrap();
    let result = receive_file(stream, dst.path()).await;
    let reply = reply_of(&mut sender).await;
    (result.unwrap_err(), reply, dir_entries(dst.path()))
}

#[tokio::test]
async fn a_short_body_fails_and_leaves_no_partial_file() {
    let body = random_bytes(50_000);
    let mut bytes = header_bytes("short.bin", 100_000, sha256(&body));
    bytes.extend_from_slice(&body);
    let (error, reply, left) = hostile(bytes).await;
    assert!(
        matches!(
            error,
            TransferError::SizeMismatch {
                expected: 100_000,
                ..
            }
        ),
        "{error}"
    );
    assert_eq!(reply.status, ReplyStatus::SizeMismatch);
    assert!(reply.message.contains("100000"), "{}", reply.message);
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[tokio::test]
async fn a_long_body_fails_and_leaves_no_partial_file() {
    let body = random_bytes(1000);
    let mut bytes = header_bytes("long.bin", 999, sha256(&body[..999]));
    bytes.extend_from_slice(&body);
    let (error, reply, left) = hostile(bytes).await;
    assert!(
        matches!(error, TransferError::SizeMismatch { .. }),
        "{error}"
    );
    assert_eq!(reply.status, ReplyStatus::SizeMismatch);
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[tokio::test]
async fn a_wrong_hash_fails_and_leaves_no_partial_file() {
    let body = random_bytes(10_000);
    let mut bytes = header_bytes("tampered.bin", 10_000, [0u8; 32]);
    bytes.extend_from_slice(&body);
    let (error, reply, left) = hostile(bytes).await;
    assert!(matches!(error, TransferError::HashMismatch), "{error}");
    assert_eq!(reply.status, ReplyStatus::HashMismatch);
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[tokio::test]
async fn a_path_traversal_name_is_refused() {
    let mut bytes = Vec::new();
    let name = b"../escape.txt";
    bytes.extend_from_slice(&(name.len() as u16).to_be_bytes());
    bytes.extend_from_slice(name);
    bytes.extend_from_slice(&3u64.to_be_bytes());
    bytes.extend_from_slice(&sha256(b"abc"));
    bytes.extend_from_slice(b"abc");
    let (error, reply, left) = hostile(bytes).await;
    assert!(matches!(error, TransferError::BadName(_)), "{error}");
    assert_eq!(reply.status, ReplyStatus::BadHeader);
    assert!(left.is_empty());
}

#[tokio::test]
async fn a_truncated_or_oversized_header_is_refused() {
    // Name length beyond the limit.
    let (error, reply, left) = hostile(vec![0xff, 0xff, b'a']).await;
    assert!(matches!(error, TransferError::BadHeader(_)), "{error}");
    assert_eq!(reply.status, ReplyStatus::BadHeader);
    assert!(left.is_empty());
    // Stream ends inside the header.
    let (error, reply, _) = hostile(vec![0x00, 0x05, b'a', b'b']).await;
    assert!(matches!(error, TransferError::BadHeader(_)), "{error}");
    assert_eq!(reply.status, ReplyStatus::BadHeader);
}

#[tokio::test]
async fn the_sender_learns_why_the_receiver_failed() {
    let pair = linked_pair().await;
    let src = tempfile::tempdir().unwrap();
    let path = src.path().join("data.bin");
    std::fs::write(&path, random_bytes(2 * 1024 * 1024)).unwrap();
    let missing_dir = src.path().join("does-not-exist");

    let responder = pair.responder.clone();
    let receiver = tokio::spawn(async move {
        let stream = responder.accept_stream().await.unwrap();
        receive_file(stream, &missing_dir).await
    });
    let result = send_file(&pair.initiator, &path).await;
    assert!(matches!(receiver.await.unwrap(), Err(TransferError::Io(_))));
    match result {
        Err(TransferError::Rejected { status, .. }) => {
            assert_eq!(status, ReplyStatus::StorageError)
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
}

/// Sends a file of `len` random bytes to a receiver with `limits`; returns both results and
/// what the receive directory holds afterwards.
async fn send_against_limits(
    len: usize,
    limits: ReceiveLimits,
) -> (
    Result<chatr_client::link::transfer::ReceivedFile, TransferError>,
    Result<chatr_client::link::transfer::SentFile, TransferError>,
    Vec<String>,
) {
    let pair = linked_pair().await;
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let path = src.path().join("big.bin");
    std::fs::write(&path, random_bytes(len)).unwrap();
    let responder = pair.responder.clone();
    let dst_path = dst.path().to_path_buf();
    let receiver = tokio::spawn(async move {
        let stream = responder.accept_stream().await.unwrap();
        receive_file_with(stream, &dst_path, &limits).await
    });
    let sent = send_file(&pair.initiator, &path).await;
    let received = receiver.await.unwrap();
    (received, sent, dir_entries(dst.path()))
}

#[tokio::test]
async fn a_file_over_the_receivers_size_limit_is_refused_before_it_is_written() {
    let limits = ReceiveLimits {
        max_size: Some(1024 * 1024),
        ..ReceiveLimits::default()
    };
    let (received, sent, left) = send_against_limits(1024 * 1024 + 1, limits).await;
    assert!(
        matches!(
            received,
            Err(TransferError::Limit(LimitExceeded::TooLarge {
                size: 1_048_577,
                limit: 1_048_576
            }))
        ),
        "{received:?}"
    );
    match sent {
        Err(TransferError::Rejected { status, message }) => {
            assert_eq!(status, ReplyStatus::Refused);
            assert!(message.contains("--max-size"), "{message}");
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
    assert!(left.is_empty(), "nothing may be stored: {left:?}");

    // Exactly at the limit is fine.
    let (received, sent, left) = send_against_limits(1024 * 1024, limits).await;
    assert_eq!(received.unwrap().size, 1024 * 1024);
    assert_eq!(sent.unwrap().size, 1024 * 1024);
    assert_eq!(left, vec!["big.bin".to_owned()]);
}

#[tokio::test]
async fn a_file_that_would_fill_the_receivers_disk_is_refused() {
    // A reserve no file system has: every non-empty file would eat into it.
    let limits = ReceiveLimits {
        max_size: None,
        disk_reserve: u64::MAX,
    };
    let (received, sent, left) = send_against_limits(4096, limits).await;
    assert!(
        matches!(
            received,
            Err(TransferError::Limit(LimitExceeded::NoSpace {
                size: 4096,
                ..
            }))
        ),
        "{received:?}"
    );
    match sent {
        Err(TransferError::Rejected { status, message }) => {
            assert_eq!(status, ReplyStatus::StorageError);
            assert!(message.contains("free some space"), "{message}");
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
    assert!(left.is_empty(), "nothing may be stored: {left:?}");
}
