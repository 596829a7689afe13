//! The registry REST API, over real HTTPS on loopback: every success and
//! error case of PUT/POST/GET /api/1/clients/{uuid}, signatures over the exact
//! body bytes, limits, and a rotation followed by logins.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod api_support;

use api_support::{Identity, disconnect_message, key_body, login, new_key, sign, start_server};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chatr_proto::Packet;

#[tokio::test]
async fn register_then_get_then_same_key_again() {
    let server = start_server(|_| {}).await;
    let api = server.api();
    let id = Identity::new();

    let reply = api.register(&id).await;
    assert_eq!(reply.status, 201, "{}", reply.text());
    let json = reply.json();
    assert_eq!(json["clientId"], id.uuid.to_string());
    assert_eq!(json["publicKey"], id.public_b64());

    let reply = api.get(&format!("/api/1/clients/{}", id.uuid)).await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.json(),
        serde_json::json!({"clientId": id.uuid.to_string(), "publicKey": id.public_b64()})
    );

    // Registering the same key again is idempotent: 200, not 201.
    let reply = api.register(&id).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["publicKey"], id.public_b64());
    assert_eq!(server.handle().registry().len(), 1);
    server.stop().await;
}

#[tokio::test]
async fn uppercase_and_simple_uuid_forms_name_the_same_client() {
    let server = start_server(|_| {}).await;
    let api = server.api();
    let id = Identity::new();
    let upper = id.uuid.to_string().to_uppercase();
    assert_eq!(
        api.put_signed(&upper, &id.body(), &id.key).await.status,
        201
    );
    let simple = id.uuid.simple().to_string();
    let reply = api.get(&format!("/api/1/clients/{simple}")).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["clientId"], id.uuid.hyphenated().to_string());
    server.stop().await;
}

#[tokio::test]
async fn a_taken_uuid_refuses_another_key() {
    let server = start_server(|_| {}).await;
    let api = server.api();
    let id = Identity::new();
    assert_eq!(api.register(&id).await.status, 201);

    // Someone else, with their own key and a valid self-signature.
    let intruder = Identity {
        uuid: id.uuid,
        key: new_key(),
    };
    api.register(&intruder)
        .await
        .assert_error(409, "ClientAlreadyRegistered");
    let reply = api.get(&format!("/api/1/clients/{}", id.uuid)).await;
    assert_eq!(reply.json()["publicKey"], id.public_b64());
    server.stop().await;
}

#[tokio::test]
async fn concurrent_registrations_of_one_uuid_store_exactly_one_key() {
    let server = start_server(|_| {}).await;
    let api = server.api();
    let uuid = uuid::Uuid::new_v4();
    let attempts: Vec<_> = (0..6)
        .map(|_| {
            let api = api.clone();
            let id = Identity {
                uuid,
                key: new_key(),
            };
            tokio::spawn(async move { (api.register(&id).await.status, id) })
        })
        .collect();
    let mut winners = Vec::new();
    for attempt in attempts {
        let (status, id) = attempt.await.unwrap();
        match status {
            201 => winners.push(id),
            409 => {}
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(winners.len(), 1);
    assert_eq!(
        server.handle().registry().lookup(&uuid),
        Some(winners[0].key.verifying_key())
    );
    server.stop().await;
}

#[tokio::test]
async fn invalid_client_ids_are_refused_on_every_method() {
    let server = start_server(|_| {}).await;
    let api = server.api();
    let id = Identity::new();
    for bad in ["not-a-uuid", "1234", "6a1f6d4e-2b47-4b5f-9d4c-1c0e7d1f1a1"] {
        api.put_signed(bad, &id.body(), &id.key)
            .await
            .assert_error(400, "InvalidClientId");
        api.post_signed(bad, &id.body(), &id.key)
            .await
            .assert_error(400, "InvalidClientId");
        api.get(&format!("/api/1/clients/{bad}"))
            .await
            .assert_error(400, "InvalidClientId");
    }
    assert!(server.handle().registry().is_empty());
    server.stop().await;
}

#[tokio::test]
async fn unknown_clients_do_not_exist() {
    let server = start_server(|_| {}).await;
    let api = server.api();
    let id = Identity::new();
    api.get(&format!("/api/1/clients/{}", id.uuid))
        .await
        .assert_error(404, "ClientDoesNotExist");
    // Rotating an identity that was never registered.
    api.post_signed(&id.uuid.to_string(), &id.body(), &id.key)
        .await
        .assert_error(404, "ClientDoesNotExist");
    server.stop().await;
}

#[tokio::test]
async fn invalid_public_keys_are_refused() {
    let server = start_server(|_| {}).await;
    let api = server.api();
    let id = Identity::new();
    let uuid = id.uuid.to_string();
    let mut weak = [0u8; 32];
    weak[0] = 1; // the identity point: small order, anyone can "sign" for it
    let cases = [
        "not base64!".to_owned(),
        STANDARD.encode([7u8; 31]),
        STANDARD.encode([7u8; 33]),
        STANDARD.encode(weak),
        // URL-safe alphabet / no padding is not the documented encoding.
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(id.key.verifying_key().as_bytes()),
    ];
    for key in cases {
        let body = format!(r#"{{"key":"{key}"}}"#);
        api.put_signed(&uuid, body.as_bytes(), &id.key)
            .await
            .assert_error(400, "InvalidPublicKey");
    }
    assert!(server.handle().registry().is_empty());
    server.stop().await;
}

#[tokio::test]
async fn malformed_bodies_are_refused() {
    let server = start_server(|_| {}).await;
    let api = server.api();
    let id = Identity::new();
    let uuid = id.uuid.to_string();
    let key = id.public_b64();
    let cases = [
        String::new(),
        "{".to_owned(),
        "null".to_owned(),
        format!(r#"["{key}"]"#),
        r#"{"kee":"x"}"#.to_owned(),
        format!(r#"{{"key":"{key}","extra":1}}"#),
        r#"{"key":42}"#.to_owned(),
        format!(r#"{{"key":"{key}"}} trailing"#),
        // Duplicate members: a map would silently keep the last one.
        format!(r#"{{"key":"{key}","key":"{key}"}}"#),
        format!(r#"{{"key":"AAAA","key":"{key}"}}"#),
        format!(r#"{{"extra":1,"key":"{key}"}}"#),
        format!(r#"{{"key":"{key}","key":42}}"#),
        "{}".to_owned(),
    ];
    for body in cases {
        api.put_signed(&uuid, body.as_bytes(), &id.key)
            .await
            .assert_error(400, "InvalidBody");
    }
    // Not UTF-8 at all.
    api.put_signed(&uuid, &[0xff, 0xfe, 0x00], &id.key)
        .await
        .assert_error(400, "InvalidBody");
    assert!(server.handle().registry().is_empty());
    server.stop().await;
}

#[tokio::test]
async fn oversized_bodies_are_refused() {
    let server = start_server(|_| {}).await;
    let api = server.api();
    let id = Identity::new();
    // Valid JSON with a valid key, padded past the 1 KiB limit with whitespace.
    let mut body = id.body();
    body.extend(std::iter::repeat_n(b' ', 2048));
    api.put_signed(&id.uuid.to_string(), &body, &id.key)
        .await
        .assert_error(413, "PayloadTooLarge");
    // Just under the limit is fine (whitespace is valid JSON).
    let mut body = id.body();
    body.extend(std::iter::repeat_n(b' ', 1024 - body.len()));
    assert_eq!(
        api.put_signed(&id.uuid.to_string(), &body, &id.key)
            .await
            .status,
        201
    );
    server.stop().await;
}

#[tokio::test]
async fn signatures_cover_the_exact_body_bytes() {
    let server = start_server(|_| {}).await;
    let api = server.api();
    let id = Identity::new();
    let path = format!("/api/1/clients/{}", id.uuid);
    let compact = id.body();
    let spaced = format!(r#"{{ "key" : "{}" }}"#, id.public_b64()).into_bytes();
    let newline = [compact.as_slice(), b"\n"].concat();

    // A signature over the compact form does not cover a re-serialized or
    // whitespace-changed body, though both carry the same key.
    for sent in [&spaced, &newline] {
        let sig = sign(&id.key, &compact);
        api.request("PUT", &path, &[("Chatr-PublicKey-Signature", &sig)], sent)
            .await
            .assert_error(401, "InvalidSignature");
    }
    // Missing, malformed and foreign signatures.
    api.request("PUT", &path, &[], &compact)
        .await
        .assert_error(401, "InvalidSignature");
    for bad in ["%%%", "AAAA", &STANDARD.encode([0u8; 64])] {
        api.request(
            "PUT",
            &path,
            &[("Chatr-PublicKey-Signature", bad)],
            &compact,
        )
        .await
        .assert_error(401, "InvalidSignature");
    }
    // Registering a key one does not hold: body names key A, signed by key B.
    let other = new_key();
    api.put_signed(&id.uuid.to_string(), &compact, &other)
        .await
        .assert_error(401, "InvalidSignature");
    assert!(server.handle().registry().is_empty());

    // Whatever bytes are sent, a signature over exactly those bytes works.
    let sig = sign(&id.key, &spaced);
    let reply = api
        .request(
            "PUT",
            &path,
            &[("Chatr-PublicKey-Signature", &sig)],
            &spaced,
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.text());
    server.stop().await;
}

#[tokio::test]
async fn rotation_needs_the_old_key_and_takes_effect_for_the_next_login() {
    let server = start_server(|_| {}).await;
    let api = server.api();
    let old = Identity::new();
    let uuid = old.uuid.to_string();
    assert_eq!(api.register(&old).await.status, 201);

    // Logged in with the old key before the rotation.
    let (mut before, first) = login(
        server.connect_addr(),
        &server.cert_pem(),
        old.uuid,
        &old.key,
    )
    .await;
    assert!(matches!(first, Packet::Connected(_)), "{first:?}");

    let new = new_key();
    let body = key_body(&new);
    // Signed with the new key instead of the old one: refused, nothing changes.
    api.post_signed(&uuid, &body, &new)
        .await
        .assert_error(401, "InvalidSignature");
    // Signed by the old key over other bytes than those sent.
    let sig = sign(&old.key, &body);
    let spaced = format!(
        r#"{{"key": "{}"}}"#,
        STANDARD.encode(new.verifying_key().as_bytes())
    );
    api.request(
        "POST",
        &format!("/api/1/clients/{uuid}"),
        &[("Chatr-PublicKey-Signature", &sig)],
        spaced.as_bytes(),
    )
    .await
    .assert_error(401, "InvalidSignature");
    // A bad new key.
    api.post_signed(&uuid, br#"{"key":"AAAA"}"#, &old.key)
        .await
        .assert_error(400, "InvalidPublicKey");
    assert_eq!(
        server.handle().registry().lookup(&old.uuid),
        Some(old.key.verifying_key())
    );

    // The real rotation.
    let reply = api.post_signed(&uuid, &body, &old.key).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        reply.json()["publicKey"],
        STANDARD.encode(new.verifying_key().as_bytes())
    );
    let reply = api.get(&format!("/api/1/clients/{uuid}")).await;
    assert_eq!(
        reply.json()["publicKey"],
        STANDARD.encode(new.verifying_key().as_bytes())
    );
    // Replaying the same rotation is signed by a key that is no longer current.
    api.post_signed(&uuid, &body, &old.key)
        .await
        .assert_error(401, "InvalidSignature");
    // PUT of the old key is now a conflict.
    api.register(&old)
        .await
        .assert_error(409, "ClientAlreadyRegistered");

    let _ = futures_util::SinkExt::<chatr_proto::Packet>::close(&mut before).await;
    drop(before);
    // Wait until the hub forgot the old session, so the next logins are judged on keys only.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while server.handle().hub().is_connected(&old.uuid) {
        assert!(std::time::Instant::now() < deadline, "old session lingers");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    // The old key no longer logs in; the new one does.
    let (_s, refused) = login(
        server.connect_addr(),
        &server.cert_pem(),
        old.uuid,
        &old.key,
    )
    .await;
    assert_eq!(
        disconnect_message(&refused),
        Some("Failed to verify!"),
        "{refused:?}"
    );
    let (_s, accepted) = login(server.connect_addr(), &server.cert_pem(), old.uuid, &new).await;
    assert!(matches!(accepted, Packet::Connected(_)), "{accepted:?}");
    server.stop().await;
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_json() {
    let server = start_server(|_| {}).await;
    let api = server.api();
    api.get("/api/2/clients/x")
        .await
        .assert_error(404, "NotFound");
    let id = Identity::new();
    api.request("DELETE", &format!("/api/1/clients/{}", id.uuid), &[], b"")
        .await
        .assert_error(405, "MethodNotAllowed");
    server.stop().await;
}

#[tokio::test]
async fn requests_are_rate_limited_per_address() {
    let server = start_server(|c| {
        c.limits.api_requests_per_second = 1;
        c.limits.api_burst = 3;
    })
    .await;
    let api = server.api();
    let id = Identity::new();
    let mut limited = None;
    let mut statuses = Vec::new();
    for _ in 0..15 {
        let reply = api.register(&id).await;
        statuses.push(reply.status);
        if reply.status == 429 {
            limited = Some(reply);
            break;
        }
    }
    let limited = limited.expect("15 requests at 1/s with burst 3 were never limited");
    limited.assert_error(429, "RateLimited");
    assert_eq!(statuses[0], 201);
    assert!(
        statuses[1..statuses.len() - 1].iter().all(|s| *s == 200),
        "{statuses:?}"
    );
    let retry: u64 = limited.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    // Health checks and metrics stay reachable; the refusal is counted.
    assert_eq!(api.get("/healthz").await.status, 200);
    let metrics = api.get("/metrics").await.text();
    assert!(
        metrics
            .lines()
            .any(|l| l == "chatr_registrations_total{result=\"rate_limited\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l == "chatr_registrations_total{result=\"created\"} 1"),
        "{metrics}"
    );
    server.stop().await;
}

/// The example in docs/PROTOCOL.md §12, byte for byte (RFC 8032 test 1 key).
#[tokio::test]
async fn documented_example_registers() {
    let server = start_server(|_| {}).await;
    let api = server.api();
    let body = br#"{"key":"11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="}"#;
    let sig =
        "Zcm2D1ZWa1Ek5h3CLOznbBhZRowFW/1TpxWH+c4OcqxnDf8dBUsPfqIbjDqS2+CxWWx+8VU0QXXojJEl3CqoAQ==";
    let reply = api
        .request(
            "PUT",
            "/api/1/clients/00112233-4455-6677-8899-aabbccddeeff",
            &[
                ("Content-Type", "application/json"),
                ("Chatr-PublicKey-Signature", sig),
            ],
            body,
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.text());
    assert_eq!(
        reply.text(),
        r#"{"clientId":"00112233-4455-6677-8899-aabbccddeeff","publicKey":"11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="}"#
    );
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/PROTOCOL.md"))
        .unwrap();
    assert!(doc.contains(sig) && doc.contains(std::str::from_utf8(body).unwrap()));
    server.stop().await;
}
