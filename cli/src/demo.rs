//! `chatr demo`: a whole Chatr deployment in one process, for the README.
//!
//! It starts a Connect server on loopback with a temporary data directory,
//! registers two identities (alice and bob) through the real REST API, starts
//! two clients, has alice ask bob for a link, and lets them chat over it.

use std::time::Duration;

use chatr_client::config::{ApiUrl, Fingerprint, HostPort, Trust};
use chatr_client::home::Home;
use chatr_client::identity::Identity;
use chatr_client::link::chat::{ChatProfile, ChatSession, Status};
use chatr_client::link::{CloseCode, StreamKind};
use chatr_client::rest::RegistryClient;
use chatr_client::{Client, ClientOptions};
use chatr_server::ServerConfig;
use tokio_util::sync::CancellationToken;

use super::CliError;

const WAIT: Duration = Duration::from_secs(20);

fn other(msg: impl std::fmt::Display) -> CliError {
    CliError::Io(std::io::Error::other(msg.to_string()))
}

pub(crate) async fn run() -> Result<(), CliError> {
    let data = tempfile_dir()?;
    let shutdown = CancellationToken::new();
    let server = chatr_server::start(ServerConfig::for_tests(&data), shutdown.clone())
        .await
        .map_err(other)?;
    let addr = server.connect_addr();
    println!(
        "* Connect server on {addr} (registry https://{}), data in {}",
        server.api_addr(),
        data.display()
    );
    println!("  certificate SHA-256 {}", server.cert_fingerprint());

    let result = scenario(&server).await;
    shutdown.cancel();
    server.join().await;
    let _ = std::fs::remove_dir_all(&data);
    result
}

async fn scenario(server: &chatr_server::ServerHandle) -> Result<(), CliError> {
    let fp: Fingerprint = server.cert_fingerprint().parse()?;
    let trust = Trust::Fingerprint(fp);
    let tls = chatr_client::trust::client_config(&trust, &Home::new("."))?;
    let api: ApiUrl = format!("https://{}", server.api_addr()).parse()?;
    let registry = RegistryClient::new(api, tls.clone());
    let connect = HostPort {
        host: server.connect_addr().ip().to_string(),
        port: server.connect_addr().port(),
    };

    let alice_id = Identity::generate();
    let bob_id = Identity::generate();
    registry.register(&alice_id, None).await?;
    registry.register(&bob_id, None).await?;
    println!(
        "* registered alice {} and bob {}",
        alice_id.uuid(),
        bob_id.uuid()
    );

    let alice = Client::start(ClientOptions::new(
        alice_id.clone(),
        connect.clone(),
        tls.clone(),
    ))
    .await?;
    let bob = Client::start(ClientOptions::new(bob_id.clone(), connect, tls)).await?;
    alice.wait_online(WAIT).await?;
    bob.wait_online(WAIT).await?;
    println!(
        "* both online: alice on UDP/TCP port {}, bob on port {}",
        alice.local_port(),
        bob.local_port()
    );

    // Bob accepts alice (whose key he pinned) and answers her chat.
    let bob_side = {
        let bob = bob.clone();
        let alice_key = alice_id.verifying_key();
        tokio::spawn(async move {
            let request = bob
                .next_request()
                .await
                .ok_or_else(|| other("bob stopped"))?;
            let (link, _) = request.accept(alice_key).await?;
            let stream = link.accept_stream().await?;
            let mut chat = ChatSession::start(stream, &profile("bob", "reading the README"))
                .await
                .map_err(other)?;
            while let Some(packet) = chat.recv().await.map_err(other)? {
                if packet.is_goodbye() {
                    break;
                }
                if let Some(text) = packet.message {
                    let reply = format!("got \"{text}\" — hello from bob!");
                    println!("  bob → alice:   {reply}");
                    chat.send_message(&reply).await.map_err(other)?;
                }
            }
            // Keep the chat (and its stream) open until the demo ends, so alice's
            // goodbye is fully acknowledged.
            Ok::<_, CliError>((link, chat))
        })
    };

    println!("* alice asks the server for a link to bob…");
    let (link, report) = alice
        .request_link(bob_id.uuid(), bob_id.verifying_key())
        .await?;
    println!(
        "* link up: {}, {} probes",
        report.describe(),
        report.probes_sent
    );
    let stream = link.open(StreamKind::Chat).await?;
    let mut chat = ChatSession::start(stream, &profile("alice", "trying chatr"))
        .await
        .map_err(other)?;
    println!(
        "* bob's handshake: alias {:?}, status message {:?}",
        chat.peer_handshake().alias.as_deref().unwrap_or("?"),
        chat.peer_handshake()
            .status_message
            .as_deref()
            .unwrap_or("")
    );
    for text in [
        "Hi Bob, this goes straight to you.",
        "No server in between.",
    ] {
        println!("  alice → bob:   {text}");
        chat.send_message(text).await.map_err(other)?;
        let reply = tokio::time::timeout(WAIT, chat.recv())
            .await
            .map_err(|_| other("bob did not answer"))?
            .map_err(other)?;
        if reply.is_none() {
            return Err(other("bob left early"));
        }
    }
    chat.close().await.map_err(other)?;
    let (bob_link, _bob_chat) = tokio::time::timeout(WAIT, bob_side)
        .await
        .map_err(|_| other("bob did not finish"))?
        .map_err(other)??;
    println!("* alice said goodbye (status 0); closing");
    link.close(CloseCode::Normal, "demo over");
    bob_link.close(CloseCode::Normal, "demo over");
    alice.shutdown().await;
    bob.shutdown().await;
    println!("* done");
    Ok(())
}

fn profile(alias: &str, status_message: &str) -> ChatProfile {
    ChatProfile {
        alias: alias.into(),
        status: Status::Available,
        status_message: status_message.into(),
    }
}

/// A fresh private directory under the system temp dir.
fn tempfile_dir() -> Result<std::path::PathBuf, CliError> {
    let dir = std::env::temp_dir().join(format!("chatr-demo-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
