//! The real `chatr-server` binary: durability across `kill -9`, the admin CLI
//! against a running (and a stopped) server, signals (SIGTERM, SIGHUP),
//! configuration layers, JSON logs and the `cert` tools.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod api_support;

use std::time::Duration;

use api_support::{
    Api, Identity, admin, disconnect_message, key_body, login, new_key, next_packet, spawn_binary,
    spawn_binary_with_env,
};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chatr_proto::Packet;
use futures_util::StreamExt as _;

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn acknowledged_writes_survive_kill_9() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let id = Identity::new();
    let rotated = Identity::new();
    let new = new_key();
    {
        let mut server = spawn_binary(&data, &[]);
        let api = server.api();
        assert_eq!(api.register(&id).await.status, 201);
        server.child.kill().unwrap(); // SIGKILL right after the 201
        server.child.wait().unwrap();
    }
    {
        let mut server = spawn_binary(&data, &[]);
        let api = server.api();
        let reply = api.get(&format!("/api/1/clients/{}", id.uuid)).await;
        assert_eq!(reply.status, 200, "{}", server.stderr());
        assert_eq!(reply.json()["publicKey"], id.public_b64());
        // A rotation acknowledged just before a kill -9 is kept too.
        assert_eq!(api.register(&rotated).await.status, 201);
        let reply = api
            .post_signed(&rotated.uuid.to_string(), &key_body(&new), &rotated.key)
            .await;
        assert_eq!(reply.status, 200);
        server.child.kill().unwrap();
        server.child.wait().unwrap();
    }
    let server = spawn_binary(&data, &[]);
    let api = server.api();
    let reply = api.get(&format!("/api/1/clients/{}", rotated.uuid)).await;
    assert_eq!(
        reply.json()["publicKey"],
        STANDARD.encode(new.verifying_key().as_bytes())
    );
    // And the restored registry serves logins.
    let (_s, first) = login(server.connect_addr(), &api.cert_pem, id.uuid, &id.key).await;
    assert!(matches!(first, Packet::Connected(_)), "{first:?}");
}

#[tokio::test]
async fn admin_cli_manages_a_running_server() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let server = spawn_binary(&data, &[]);
    let api = server.api();
    let id = Identity::new();
    let uuid = id.uuid.to_string();

    let out = admin(&data, &["identity", "add", &uuid, &id.public_b64()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "identity created\n");
    let out = admin(&data, &["identity", "add", &uuid, &id.public_b64()]);
    assert_eq!(stdout(&out), "identity unchanged\n");

    // Registered by the admin, visible over REST, usable for login.
    let other = Identity::new();
    assert_eq!(api.register(&other).await.status, 201);
    let out = admin(&data, &["identity", "list"]);
    assert!(out.status.success());
    let mut expected = vec![
        format!("{} {}", id.uuid, id.public_b64()),
        format!("{} {}", other.uuid, other.public_b64()),
    ];
    expected.sort();
    assert_eq!(stdout(&out).lines().collect::<Vec<_>>(), expected);

    let (mut session, first) = login(server.connect_addr(), &api.cert_pem, id.uuid, &id.key).await;
    assert!(matches!(first, Packet::Connected(_)), "{first:?}");

    // Removal disconnects the live session and forbids the next login.
    let out = admin(&data, &["identity", "remove", &uuid]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("disconnected"), "{}", stdout(&out));
    let kicked = next_packet(&mut session).await;
    assert_eq!(
        disconnect_message(&kicked),
        Some("Identity removed"),
        "{kicked:?}"
    );
    let (_s, refused) = login(server.connect_addr(), &api.cert_pem, id.uuid, &id.key).await;
    assert_eq!(disconnect_message(&refused), Some("Failed to verify!"));
    api.get(&format!("/api/1/clients/{uuid}"))
        .await
        .assert_error(404, "ClientDoesNotExist");

    // Errors: unknown identity, bad UUID, bad key.
    let out = admin(&data, &["identity", "remove", &uuid]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no such identity"),
        "{}",
        stderr(&out)
    );
    let out = admin(&data, &["identity", "add", "nope", &id.public_b64()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("InvalidClientId"), "{}", stderr(&out));
    let out = admin(&data, &["identity", "add", &uuid, "AAAA"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("InvalidPublicKey"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test]
async fn tokens_issued_by_the_cli_open_token_registration() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let server = spawn_binary(&data, &["--registration", "token"]);
    let api = server.api();
    let out = admin(&data, &["token", "issue"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let token = stdout(&out).trim().to_owned();
    assert_eq!(token.len(), 43, "{token:?}");

    let id = Identity::new();
    api.register(&id).await.assert_error(401, "InvalidToken");
    let sig = api_support::sign(&id.key, &id.body());
    let headers = [
        ("Chatr-PublicKey-Signature", sig.as_str()),
        ("Chatr-Registration-Token", token.as_str()),
    ];
    let path = format!("/api/1/clients/{}", id.uuid);
    assert_eq!(
        api.request("PUT", &path, &headers, &id.body()).await.status,
        201
    );
    let second = Identity::new();
    let sig = api_support::sign(&second.key, &second.body());
    let headers = [
        ("Chatr-PublicKey-Signature", sig.as_str()),
        ("Chatr-Registration-Token", token.as_str()),
    ];
    api.request(
        "PUT",
        &format!("/api/1/clients/{}", second.uuid),
        &headers,
        &second.body(),
    )
    .await
    .assert_error(401, "InvalidToken");
}

#[tokio::test]
async fn admin_cli_works_on_a_stopped_server_and_a_second_server_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // No server yet: listing finds no registry; adding creates it.
    let out = admin(&data, &["identity", "list"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no server is running"),
        "{}",
        stderr(&out)
    );
    let id = Identity::new();
    let out = admin(
        &data,
        &["identity", "add", &id.uuid.to_string(), &id.public_b64()],
    );
    assert!(out.status.success(), "{}", stderr(&out));

    let server = spawn_binary(&data, &[]);
    let reply = server
        .api()
        .get(&format!("/api/1/clients/{}", id.uuid))
        .await;
    assert_eq!(reply.status, 200);

    // A second server on the same data dir fails clearly.
    let out = std::process::Command::new(api_support::BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--api-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(&data)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("in use by another process"),
        "{}",
        stderr(&out)
    );
    // The first one still answers its admin socket.
    let out = admin(&data, &["identity", "list"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains(&id.uuid.to_string()));
    drop(server);
}

#[tokio::test]
async fn sigterm_disconnects_clients_and_exits_zero() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut server = spawn_binary(&data, &[]);
    let api = server.api();
    let id = Identity::new();
    assert_eq!(api.register(&id).await.status, 201);
    let (mut session, first) = login(server.connect_addr(), &api.cert_pem, id.uuid, &id.key).await;
    assert!(matches!(first, Packet::Connected(_)));
    assert!(data.join("admin.sock").exists());

    server.signal("TERM");
    let last = next_packet(&mut session).await;
    assert_eq!(
        disconnect_message(&last),
        Some("Server shutting down"),
        "{last:?}"
    );
    // Then the connection closes.
    let after = tokio::time::timeout(Duration::from_secs(10), session.next())
        .await
        .unwrap();
    assert!(after.is_none() || after.is_some_and(|r| r.is_err()));
    let status = server.wait_exit(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "{}", server.stderr());
    assert!(!data.join("admin.sock").exists());
    assert!(server.stderr().contains("SIGTERM"), "{}", server.stderr());
}

#[tokio::test]
async fn sighup_reloads_the_certificate_and_keeps_sessions() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let certs = tmp.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    let (cert, key) = (certs.join("cert.pem"), certs.join("key.pem"));
    chatr_server::tls::generate_self_signed(&cert, &key, &["localhost".to_owned()]).unwrap();
    let server = spawn_binary(
        &data,
        &[
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
            "--ping-interval",
            "200ms",
        ],
    );
    let old_pem = std::fs::read_to_string(&cert).unwrap();
    let api = Api {
        addr: server.api_addr(),
        cert_pem: old_pem.clone(),
    };
    let id = Identity::new();
    assert_eq!(api.register(&id).await.status, 201);
    let (mut session, first) = login(server.connect_addr(), &old_pem, id.uuid, &id.key).await;
    assert!(matches!(first, Packet::Connected(_)));

    // Replace the files (as certbot would) and send SIGHUP.
    std::fs::remove_file(&cert).unwrap();
    std::fs::remove_file(&key).unwrap();
    chatr_server::tls::generate_self_signed(&cert, &key, &["localhost".to_owned()]).unwrap();
    let new_pem = std::fs::read_to_string(&cert).unwrap();
    server.signal("HUP");
    let new_api = Api {
        addr: api.addr,
        cert_pem: new_pem.clone(),
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        // Until the reload happened, the new pin fails the handshake.
        let attempt = tokio::spawn({
            let new_api = new_api.clone();
            async move { new_api.get("/certificate").await }
        })
        .await;
        if let Ok(reply) = attempt {
            assert_eq!(reply.text(), new_pem);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no reload: {}",
            server.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The session from before the reload is still served: it keeps getting pings.
    let mut pings = 0;
    while pings < 2 {
        let packet = tokio::time::timeout(Duration::from_secs(5), session.next())
            .await
            .expect("session went quiet after SIGHUP")
            .expect("session closed by SIGHUP")
            .unwrap();
        let Packet::Ping(ping) = packet else {
            panic!("unexpected {packet:?}");
        };
        futures_util::SinkExt::send(
            &mut session,
            Packet::Pong(chatr_proto::PacketPong {
                ping_id: ping.ping_id,
            }),
        )
        .await
        .unwrap();
        pings += 1;
    }
    // New logins use the new certificate.
    let (_s, first) = login(
        server.connect_addr(),
        &new_pem,
        Identity::new().uuid,
        &new_key(),
    )
    .await;
    assert_eq!(disconnect_message(&first), Some("Failed to verify!"));
}

#[tokio::test]
async fn env_beats_config_file_and_cli_beats_env_in_the_binary() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("chatr.toml");
    std::fs::write(&config, "registration = \"token\"\nlog_format = \"json\"\n").unwrap();
    let config_str = config.to_str().unwrap();

    // File says token, env says closed: closed.
    let data = tmp.path().join("a");
    let server = spawn_binary_with_env(
        &data,
        &[],
        &[
            ("CHATR_CONFIG", config_str),
            ("CHATR_REGISTRATION", "closed"),
        ],
    );
    server
        .api()
        .register(&Identity::new())
        .await
        .assert_error(403, "RegistrationClosed");
    // JSON logs from the file: every stderr line is a JSON object.
    let logs = server.stderr();
    assert!(!logs.is_empty());
    for line in logs.lines() {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(value.get("level").is_some(), "{line}");
    }
    drop(server);

    // The command line beats both.
    let data = tmp.path().join("b");
    let server = spawn_binary_with_env(
        &data,
        &["--registration", "open", "--log-format", "human"],
        &[
            ("CHATR_CONFIG", config_str),
            ("CHATR_REGISTRATION", "closed"),
        ],
    );
    assert_eq!(server.api().register(&Identity::new()).await.status, 201);
    assert!(
        serde_json::from_str::<serde_json::Value>(server.stderr().lines().next().unwrap()).is_err()
    );
}

#[tokio::test]
async fn cert_tools_make_a_ca_and_a_server_certificate_it_signs() {
    let tmp = tempfile::tempdir().unwrap();
    let out_dir = tmp.path().join("dev");
    let run = |args: &[&str]| {
        std::process::Command::new(api_support::BIN)
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&[
        "cert",
        "ca",
        "--out",
        out_dir.to_str().unwrap(),
        "--name",
        "Test CA",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let ca = out_dir.join("ca.pem");
    let out = run(&[
        "cert",
        "server",
        "--ca-cert",
        ca.to_str().unwrap(),
        "--ca-key",
        out_dir.join("ca-key.pem").to_str().unwrap(),
        "--ca-name",
        "Test CA",
        "--out",
        out_dir.to_str().unwrap(),
        "--san",
        "localhost",
        "--san",
        "127.0.0.1",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let cert = out_dir.join("cert.pem");
    let key = out_dir.join("key.pem");
    let out = run(&["cert", "fingerprint", cert.to_str().unwrap()]);
    let fingerprint = stdout(&out).trim().to_owned();
    assert_eq!(fingerprint.len(), 64);

    let data = tmp.path().join("data");
    let server = spawn_binary(
        &data,
        &[
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ],
    );
    assert_eq!(server.ready["fingerprint"], fingerprint);
    // A client that trusts only the CA reaches the API and the Connect port.
    let ca_pem = std::fs::read_to_string(&ca).unwrap();
    let api = Api {
        addr: server.api_addr(),
        cert_pem: ca_pem.clone(),
    };
    let id = Identity::new();
    assert_eq!(api.register(&id).await.status, 201);
    let (_s, first) = login(server.connect_addr(), &ca_pem, id.uuid, &id.key).await;
    assert!(matches!(first, Packet::Connected(_)), "{first:?}");
    // No self-signed certificate was created in the data dir.
    assert!(!data.join("cert.pem").exists());
}
