//! `GET /certificate`, `/healthz` and `/metrics`, and the API's TLS: same
//! certificate as the Connect port, reloaded without a restart.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod api_support;

use std::time::Duration;

use api_support::{
    Api, Identity, client_config, disconnect_message, login, start_server, tls_connect,
};
use chatr_proto::Packet;
use rustls_pki_types::ServerName;
use tokio_rustls::TlsConnector;

fn has_line(text: &str, line: &str) -> bool {
    text.lines().any(|l| l == line)
}

#[tokio::test]
async fn certificate_is_the_connect_servers_and_healthz_answers() {
    let server = start_server(|_| {}).await;
    let api = server.api();
    let reply = api.get("/certificate").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.headers["content-type"], "application/x-pem-file");
    assert_eq!(reply.text(), server.cert_pem());
    let on_disk = std::fs::read_to_string(server.dir.path().join("cert.pem")).unwrap();
    assert_eq!(reply.text(), on_disk);

    // The API's TLS presents that very certificate.
    let tls = tls_connect(api.addr, &server.cert_pem()).await;
    let presented = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    assert_eq!(
        chatr_server::tls::fingerprint(&presented),
        server.handle().cert_fingerprint()
    );

    let reply = api.get("/healthz").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "ok\n");
    server.stop().await;
}

#[tokio::test]
async fn metrics_report_logins_registrations_and_sessions() {
    let server = start_server(|_| {}).await;
    let api = server.api();
    let id = Identity::new();
    assert_eq!(api.register(&id).await.status, 201);
    api.register(&Identity {
        uuid: id.uuid,
        key: api_support::new_key(),
    })
    .await
    .assert_error(409, "ClientAlreadyRegistered");

    let (_online, first) = login(server.connect_addr(), &server.cert_pem(), id.uuid, &id.key).await;
    assert!(matches!(first, Packet::Connected(_)));
    let stranger = Identity::new();
    let (_s, refused) = login(
        server.connect_addr(),
        &server.cert_pem(),
        stranger.uuid,
        &stranger.key,
    )
    .await;
    assert_eq!(disconnect_message(&refused), Some("Failed to verify!"));

    let reply = api.get("/metrics").await;
    assert_eq!(reply.status, 200);
    assert!(
        reply.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = reply.text();
    for line in [
        "chatr_connected_clients 1",
        "chatr_logins_total{result=\"ok\"} 1",
        "chatr_logins_total{result=\"failed_to_verify\"} 1",
        "chatr_registrations_total{result=\"created\"} 1",
        "chatr_registrations_total{result=\"already_registered\"} 1",
        "chatr_registered_identities 1",
        "chatr_ping_timeouts_total 0",
        "chatr_udp_bindings_total 0",
        "# TYPE chatr_login_duration_seconds histogram",
        "# TYPE chatr_broker_duration_seconds histogram",
        "chatr_login_duration_seconds_count 1",
        "chatr_login_duration_seconds_bucket{le=\"+Inf\"} 1",
    ] {
        assert!(has_line(&text, line), "missing {line:?} in\n{text}");
    }
    assert!(
        text.contains("# TYPE chatr_brokered_requests_total counter"),
        "{text}"
    );
    server.stop().await;
}

#[tokio::test]
async fn certificate_reload_applies_to_new_api_connections() {
    let server = start_server(|_| {}).await;
    let old_pem = server.cert_pem();
    let old_fp = server.handle().cert_fingerprint();
    let dir = server.dir.path();
    std::fs::remove_file(dir.join("cert.pem")).unwrap();
    std::fs::remove_file(dir.join("key.pem")).unwrap();
    chatr_server::tls::generate_self_signed(
        &dir.join("cert.pem"),
        &dir.join("key.pem"),
        &["localhost".to_owned()],
    )
    .unwrap();
    server.handle().tls().reload().unwrap();
    let new_pem = server.handle().cert_pem();
    assert_ne!(new_pem, old_pem);
    assert_ne!(server.handle().cert_fingerprint(), old_fp);

    // Clients pinned to the old certificate are refused; the new one works.
    let tcp = tokio::net::TcpStream::connect(server.handle().api_addr())
        .await
        .unwrap();
    let handshake = tokio::time::timeout(
        Duration::from_secs(10),
        TlsConnector::from(client_config(&old_pem))
            .connect(ServerName::try_from("localhost").unwrap(), tcp),
    )
    .await
    .unwrap();
    assert!(handshake.is_err(), "old pin still accepted");
    let api = Api {
        addr: server.handle().api_addr(),
        cert_pem: new_pem.clone(),
    };
    let reply = api.get("/certificate").await;
    assert_eq!(reply.text(), new_pem);
    server.stop().await;
}
