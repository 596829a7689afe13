//! Two library clients link through a real in-process server on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod session_support;

use chatr_client::link::StreamKind;
use chatr_client::link::chat::{ChatProfile, ChatSession, Status};
use chatr_client::punch::Role;
use chatr_client::{Client, ClientError};
use session_support::{TestServer, WAIT, client_options, pattern, sha256};

fn profile(alias: &str) -> ChatProfile {
    ChatProfile {
        alias: alias.into(),
        status: Status::Available,
        status_message: String::new(),
    }
}

#[tokio::test]
async fn two_clients_link_and_chat() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), None).await;
    let alice_id = server.registered_identity().await;
    let bob_id = server.registered_identity().await;
    let alice = Client::start(client_options(&server, alice_id.clone()))
        .await
        .unwrap();
    let bob = Client::start(client_options(&server, bob_id.clone()))
        .await
        .unwrap();
    alice.wait_online(WAIT).await.unwrap();
    bob.wait_online(WAIT).await.unwrap();

    let bob2 = bob.clone();
    let alice_key = alice_id.verifying_key();
    let responder = tokio::spawn(async move {
        let req = bob2.next_request().await.unwrap();
        assert_eq!(req.peer(), alice_id.uuid());
        let (link, report) = req.accept(alice_key).await.unwrap();
        assert_eq!(report.role, Role::Responder);
        let stream = link.accept_stream().await.unwrap();
        assert_eq!(stream.kind(), StreamKind::Chat);
        let mut chat = ChatSession::start(stream, &profile("bob")).await.unwrap();
        assert_eq!(chat.peer_handshake().alias.as_deref(), Some("alice"));
        let msg = chat.recv().await.unwrap().unwrap();
        assert_eq!(msg.message.as_deref(), Some("hello bob"));
        chat.send_message("hi alice").await.unwrap();
        let bye = chat.recv().await.unwrap().unwrap();
        assert!(bye.is_goodbye());
        link
    });

    let (link, report) = tokio::time::timeout(
        WAIT,
        alice.request_link(bob_id.uuid(), bob_id.verifying_key()),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(report.peer, bob_id.uuid());
    assert_eq!(report.role, Role::Initiator);
    assert_eq!(report.remote.port(), bob.local_port());
    let stream = link.open(StreamKind::Chat).await.unwrap();
    let mut chat = ChatSession::start(stream, &profile("alice")).await.unwrap();
    assert_eq!(chat.peer_handshake().alias.as_deref(), Some("bob"));
    chat.send_message("hello bob").await.unwrap();
    let reply = chat.recv().await.unwrap().unwrap();
    assert_eq!(reply.message.as_deref(), Some("hi alice"));
    chat.close().await.unwrap();
    let _bob_link = tokio::time::timeout(WAIT, responder)
        .await
        .unwrap()
        .unwrap();

    alice.shutdown().await;
    bob.shutdown().await;
    server.stop().await;
}

#[tokio::test]
async fn offline_peer_is_denied() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), None).await;
    let alice = Client::start(client_options(&server, server.registered_identity().await))
        .await
        .unwrap();
    let ghost = chatr_client::identity::Identity::generate();
    let err = alice
        .request_link(ghost.uuid(), ghost.verifying_key())
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Denied { .. }), "{err:?}");
    alice.shutdown().await;
    server.stop().await;
}

/// Two online clients and a link between them (alice initiator, bob responder).
struct Pair {
    server: TestServer,
    alice: Client,
    bob: Client,
    alice_link: chatr_client::link::PeerLink,
    bob_link: chatr_client::link::PeerLink,
    _dir: tempfile::TempDir,
}

async fn linked_pair() -> Pair {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), None).await;
    let alice_id = server.registered_identity().await;
    let bob_id = server.registered_identity().await;
    let alice = Client::start(client_options(&server, alice_id.clone()))
        .await
        .unwrap();
    let bob = Client::start(client_options(&server, bob_id.clone()))
        .await
        .unwrap();
    alice.wait_online(WAIT).await.unwrap();
    bob.wait_online(WAIT).await.unwrap();
    let bob2 = bob.clone();
    let responder = tokio::spawn(async move {
        let req = bob2.next_request().await.unwrap();
        req.accept(alice_id.verifying_key()).await.unwrap().0
    });
    let (alice_link, _) = tokio::time::timeout(
        WAIT,
        alice.request_link(bob_id.uuid(), bob_id.verifying_key()),
    )
    .await
    .unwrap()
    .unwrap();
    let bob_link = tokio::time::timeout(WAIT, responder)
        .await
        .unwrap()
        .unwrap();
    Pair {
        server,
        alice,
        bob,
        alice_link,
        bob_link,
        _dir: dir,
    }
}

impl Pair {
    async fn stop(self) {
        self.alice.shutdown().await;
        self.bob.shutdown().await;
        self.server.stop().await;
    }
}

#[tokio::test]
async fn pipe_50_mib_with_sha256_checked() {
    use chatr_client::link::pipe::run_pipe;
    let pair = linked_pair().await;
    let data = pattern(50 * 1024 * 1024, 7);
    let reply = pattern(1000, 9);
    let expected_hash = sha256(&data);

    let bob_link = pair.bob_link.clone();
    let reply2 = reply.clone();
    let bob_side = tokio::spawn(async move {
        let stream = bob_link.accept_stream().await.unwrap();
        assert_eq!(stream.kind(), StreamKind::Pipe);
        let mut out: Vec<u8> = Vec::new();
        let report = run_pipe(stream, std::io::Cursor::new(reply2), &mut out)
            .await
            .unwrap();
        (report, out)
    });
    let stream = pair.alice_link.open(StreamKind::Pipe).await.unwrap();
    let mut back: Vec<u8> = Vec::new();
    let report = tokio::time::timeout(
        std::time::Duration::from_secs(120),
        run_pipe(stream, std::io::Cursor::new(data.clone()), &mut back),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(report.delivered);
    assert_eq!(report.sent, data.len() as u64);
    assert_eq!(back, reply);
    let (bob_report, received) = tokio::time::timeout(WAIT, bob_side).await.unwrap().unwrap();
    assert!(bob_report.delivered);
    assert_eq!(received.len(), data.len());
    assert_eq!(sha256(&received), expected_hash);
    pair.stop().await;
}

#[tokio::test]
async fn send_a_file() {
    use chatr_client::link::transfer::{receive_file, send_file};
    let pair = linked_pair().await;
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let content = pattern(3 * 1024 * 1024 + 17, 3);
    let path = src.path().join("report.bin");
    std::fs::write(&path, &content).unwrap();

    let bob_link = pair.bob_link.clone();
    let dst_path = dst.path().to_path_buf();
    let bob_side = tokio::spawn(async move {
        let stream = bob_link.accept_stream().await.unwrap();
        assert_eq!(stream.kind(), StreamKind::File);
        receive_file(stream, &dst_path).await.unwrap()
    });
    let sent = send_file(&pair.alice_link, &path).await.unwrap();
    assert_eq!(sent.size, content.len() as u64);
    let got = tokio::time::timeout(WAIT, bob_side).await.unwrap().unwrap();
    assert_eq!(got.name, "report.bin");
    assert_eq!(std::fs::read(&got.path).unwrap(), content);
    assert_eq!(got.sha256.to_vec(), sha256(&content));
    pair.stop().await;
}

#[tokio::test]
async fn impostor_keys_are_refused_on_both_sides() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), None).await;
    let alice_id = server.registered_identity().await;
    let bob_id = server.registered_identity().await;
    let alice = Client::start(client_options(&server, alice_id.clone()))
        .await
        .unwrap();
    let bob = Client::start(client_options(&server, bob_id.clone()))
        .await
        .unwrap();
    alice.wait_online(WAIT).await.unwrap();
    bob.wait_online(WAIT).await.unwrap();
    let wrong = chatr_client::identity::Identity::generate().verifying_key();

    // 1. Alice pinned a wrong key for bob: her QUIC handshake refuses bob.
    let bob2 = bob.clone();
    let alice_key = alice_id.verifying_key();
    let responder = tokio::spawn(async move {
        let req = bob2.next_request().await.unwrap();
        req.accept(alice_key).await
    });
    let err = alice.request_link(bob_id.uuid(), wrong).await.unwrap_err();
    assert!(matches!(err, ClientError::KeyMismatch { .. }), "{err:?}");
    // Bob never sees a confirmed link; he gives up waiting for one.
    let bob_result = tokio::time::timeout(WAIT, responder)
        .await
        .unwrap()
        .unwrap();
    assert!(bob_result.is_err(), "bob must not get a link");

    // 2. Bob pinned a wrong key for alice: he refuses her link.
    let bob2 = bob.clone();
    let responder = tokio::spawn(async move {
        let req = bob2.next_request().await.unwrap();
        req.accept(wrong).await
    });
    let err = alice
        .request_link(bob_id.uuid(), bob_id.verifying_key())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::LinkRefused { .. } | ClientError::KeyMismatch { .. }
        ),
        "{err:?}"
    );
    let bob_err = tokio::time::timeout(WAIT, responder)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(bob_err, ClientError::KeyMismatch { .. }),
        "{bob_err:?}"
    );

    alice.shutdown().await;
    bob.shutdown().await;
    server.stop().await;
}

#[tokio::test]
async fn direct_link_survives_a_server_restart_and_clients_reconnect() {
    let pair = linked_pair().await;
    let alice_stream = pair.alice_link.open(StreamKind::Chat).await.unwrap();
    let bob_stream = tokio::time::timeout(WAIT, pair.bob_link.accept_stream())
        .await
        .unwrap()
        .unwrap();
    let (pa, pb) = (profile("alice"), profile("bob"));
    let (a, b) = tokio::join!(
        ChatSession::start(alice_stream, &pa),
        ChatSession::start(bob_stream, &pb),
    );
    let (mut a, mut b) = (a.unwrap(), b.unwrap());

    // The server goes away.
    let Pair {
        server,
        alice,
        bob,
        alice_link,
        bob_link,
        _dir,
    } = pair;
    let dir = _dir;
    let addr = server.stop().await;
    tokio::time::timeout(WAIT, async {
        while alice.session().online().is_some() || bob.session().online().is_some() {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();

    // The link does not care.
    a.send_message("server is down").await.unwrap();
    let got = tokio::time::timeout(WAIT, b.recv())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(got.message.as_deref(), Some("server is down"));

    // The server comes back on the same port; both clients log in again.
    let server = TestServer::start(dir.path(), Some(addr)).await;
    for c in [&alice, &bob] {
        tokio::time::timeout(WAIT, async {
            loop {
                if c.session().online().is_some_and(|i| i.logins >= 2) {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap();
    }
    b.send_message("still here").await.unwrap();
    let got = tokio::time::timeout(WAIT, a.recv())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(got.message.as_deref(), Some("still here"));
    // Direct, to bob's own socket (no relay was involved).
    let path = alice_link.paths().unwrap().current().path;
    assert!(
        matches!(path, Some(chatr_client::path::PathId::Direct(a)) if a.port() == bob.local_port()),
        "{path:?}"
    );
    drop(bob_link);
    alice.shutdown().await;
    bob.shutdown().await;
    server.stop().await;
}
