//! The whole user journey with a client written only from the spec and the
//! project's documents: register over the HTTPS REST API with raw HTTP/1.1,
//! fetch the certificate, then log in on the Connect port and broker.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod connect_support;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use connect_support::*;
use ed25519_dalek::Signer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One HTTP/1.1 request over TLS to the API port; returns (status, body).
async fn https(server: &TestServer, request: String) -> (u16, String) {
    let tcp = TcpStream::connect(server.handle.api_addr()).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector(server).connect(name, tcp).await.unwrap();
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(PATIENCE, tls.read_to_end(&mut response))
        .await
        .unwrap()
        .ok();
    let text = String::from_utf8_lossy(&response).to_string();
    let status = text[9..12].parse().unwrap();
    let body = text
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    (status, body)
}

async fn register(server: &TestServer, id: &Identity) -> u16 {
    let key = STANDARD.encode(id.key.verifying_key().as_bytes());
    let body = format!("{{\"key\":\"{key}\"}}");
    let signature = STANDARD.encode(id.key.sign(body.as_bytes()).to_bytes());
    let request = format!(
        "PUT /api/1/clients/{} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nChatr-PublicKey-Signature: {signature}\r\nConnection: close\r\n\r\n{body}",
        id.uuid,
        body.len()
    );
    https(server, request).await.0
}

#[tokio::test]
async fn register_over_the_api_then_log_in_and_broker() {
    let server = start_server(|_| {}).await;
    let (status, pem) = https(
        &server,
        "GET /certificate HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".into(),
    )
    .await;
    assert_eq!(status, 200);
    assert!(pem.contains("BEGIN CERTIFICATE"));

    let spec = Identity::new();
    let modern = Identity::new();
    assert_eq!(register(&server, &spec).await, 201);
    assert_eq!(register(&server, &modern).await, 201);

    let mut s = Client::login_v1(&server, &spec).await;
    let (mut m, _) = Client::login_v2(&server, &modern).await;
    s.send(
        OP_REQUEST,
        &uuid_endpoint(&modern.uuid, "192.168.0.2".parse().unwrap(), None),
    )
    .await;
    let f = m.next_answering_pings().await.unwrap();
    assert_eq!(
        f.payload,
        uuid_endpoint(&spec.uuid, "192.168.0.2".parse().unwrap(), None)
    );
    m.send(OP_DENIED, spec.uuid.as_bytes()).await;
    let f = s.next_answering_pings().await.unwrap();
    assert_eq!(
        f,
        Frame {
            opcode: OP_DENIED,
            payload: modern.uuid.as_bytes().to_vec()
        }
    );
    server.stop().await;
}
