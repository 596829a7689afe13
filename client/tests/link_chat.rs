//! Enclave-style chat over a real peer link on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod link_support;

use chatr_client::link::StreamKind;
use chatr_client::link::chat::{ChatError, ChatPacket, ChatProfile, ChatSession, Status};
use link_support::linked_pair;
use tokio::io::AsyncWriteExt as _;

fn profile(alias: &str, status: Status, message: &str) -> ChatProfile {
    ChatProfile {
        alias: alias.into(),
        status,
        status_message: message.into(),
    }
}

#[tokio::test]
async fn two_peers_handshake_chat_and_part_politely() {
    let pair = linked_pair().await;
    let alice = profile("Alice", Status::Available, "around");
    let bob = profile("Bob", Status::Busy, "in a meeting");

    let stream = pair.initiator.open(StreamKind::Chat).await.unwrap();
    let responder = pair.responder.clone();
    let bob_side = tokio::spawn(async move {
        let stream = responder.accept_stream().await.unwrap();
        assert_eq!(stream.kind(), StreamKind::Chat);
        let mut chat = ChatSession::start(stream, &bob).await.unwrap();
        let hello = chat.peer_handshake().clone();
        let first = chat.recv().await.unwrap().unwrap();
        chat.send_message("hi Alice").await.unwrap();
        let (mut writer, mut reader) = chat.split();
        writer
            .set_status(Status::Away, Some("lunch".into()))
            .await
            .unwrap();
        let mut rest = Vec::new();
        while let Some(packet) = reader.recv().await.unwrap() {
            rest.push(packet);
        }
        // Once the chat is over, recv keeps saying so.
        assert!(reader.recv().await.unwrap().is_none());
        writer.close().await.unwrap();
        (hello, first, rest)
    });

    let mut chat = ChatSession::start(stream, &alice).await.unwrap();
    let hello = chat.peer_handshake().clone();
    assert_eq!(hello.alias.as_deref(), Some("Bob"));
    assert_eq!(hello.status, Some(Status::Busy));
    assert_eq!(hello.status_message.as_deref(), Some("in a meeting"));

    chat.send_message("hello Bob").await.unwrap();
    let reply = chat.recv().await.unwrap().unwrap();
    assert_eq!(reply.message.as_deref(), Some("hi Alice"));
    assert!(reply.timestamp.is_some());
    let status = chat.recv().await.unwrap().unwrap();
    assert_eq!(status.status, Some(Status::Away));
    assert_eq!(status.status_message.as_deref(), Some("lunch"));
    assert_eq!(status.message, None);
    chat.send_message("enjoy").await.unwrap();
    chat.close().await.unwrap();

    let (bob_saw_hello, bob_first, bob_rest) = bob_side.await.unwrap();
    assert_eq!(bob_saw_hello.alias.as_deref(), Some("Alice"));
    assert_eq!(bob_saw_hello.status, Some(Status::Available));
    assert_eq!(bob_saw_hello.status_message.as_deref(), Some("around"));
    assert_eq!(bob_first.message.as_deref(), Some("hello Bob"));
    assert!(bob_first.timestamp.is_some());
    assert_eq!(bob_rest.len(), 2);
    assert_eq!(bob_rest[0].message.as_deref(), Some("enjoy"));
    assert!(bob_rest[1].is_goodbye());

    // Alice sees Bob's goodbye after her own.
    let last = chat.recv().await.unwrap().unwrap();
    assert!(last.is_goodbye());
    assert!(chat.recv().await.unwrap().is_none());
}

/// Frames raw JSON the way an Enclave peer would.
fn enclave_frame(json: &str) -> Vec<u8> {
    let mut out = (json.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(json.as_bytes());
    out
}

#[tokio::test]
async fn raw_enclave_packets_without_timestamps_are_understood() {
    let pair = linked_pair().await;
    let mut raw = pair.initiator.open(StreamKind::Chat).await.unwrap();
    raw.write_all(&enclave_frame(
        r#"{"alias":"John Smith","status":1,"status-message":""}"#,
    ))
    .await
    .unwrap();
    raw.write_all(&enclave_frame(
        r#"{"message":"no clock here","mood":"odd"}"#,
    ))
    .await
    .unwrap();
    raw.write_all(&enclave_frame(r#"{"status":0}"#))
        .await
        .unwrap();
    raw.finish().unwrap();

    let stream = pair.responder.accept_stream().await.unwrap();
    let mut chat = ChatSession::start(stream, &profile("Me", Status::Available, ""))
        .await
        .unwrap();
    assert_eq!(chat.peer_handshake().alias.as_deref(), Some("John Smith"));
    assert_eq!(chat.peer_handshake().timestamp, None);
    let message = chat.recv().await.unwrap().unwrap();
    assert_eq!(
        message,
        ChatPacket {
            message: Some("no clock here".into()),
            ..ChatPacket::default()
        }
    );
    assert!(chat.recv().await.unwrap().unwrap().is_goodbye());
    assert!(chat.recv().await.unwrap().is_none());
}

#[tokio::test]
async fn hostile_chat_input_fails_the_chat_cleanly() {
    let pair = linked_pair().await;
    let mut raw = pair.initiator.open(StreamKind::Chat).await.unwrap();
    raw.write_all(&enclave_frame(r#"{"alias":"Mallory","status":1}"#))
        .await
        .unwrap();
    // Announces 4 GiB.
    raw.write_all(&u32::MAX.to_be_bytes()).await.unwrap();

    let stream = pair.responder.accept_stream().await.unwrap();
    let mut chat = ChatSession::start(stream, &profile("Me", Status::Available, ""))
        .await
        .unwrap();
    assert!(matches!(chat.recv().await, Err(ChatError::TooLarge { .. })));
    assert!(chat.recv().await.unwrap().is_none());

    // Bad JSON on another chat stream.
    let mut raw = pair.initiator.open(StreamKind::Chat).await.unwrap();
    raw.write_all(&enclave_frame(r#"{"alias": oops}"#))
        .await
        .unwrap();
    let stream = pair.responder.accept_stream().await.unwrap();
    let result = ChatSession::start(stream, &profile("Me", Status::Available, "")).await;
    assert!(
        matches!(result, Err(ChatError::InvalidJson(_))),
        "{result:?}"
    );

    // A peer that closes before its handshake.
    let mut raw = pair.initiator.open(StreamKind::Chat).await.unwrap();
    raw.finish().unwrap();
    let stream = pair.responder.accept_stream().await.unwrap();
    let result = ChatSession::start(stream, &profile("Me", Status::Available, "")).await;
    assert!(matches!(result, Err(ChatError::NoHandshake)), "{result:?}");
}
