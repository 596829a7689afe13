//! Registration policies: `open` (covered by api_clients), `token` (single-use
//! admin-issued tokens in the `Chatr-Registration-Token` header) and `closed`
//! (admin only). Rotation by the key's owner works under every policy.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod api_support;

use api_support::{Identity, key_body, login, new_key, sign, start_server};
use chatr_proto::Packet;
use chatr_server::RegistrationPolicy;

fn put_with_token<'a>(
    id: &Identity,
    token: &'a str,
    sig: &'a str,
) -> (String, [(&'static str, &'a str); 2]) {
    (
        format!("/api/1/clients/{}", id.uuid),
        [
            ("Chatr-PublicKey-Signature", sig),
            ("Chatr-Registration-Token", token),
        ],
    )
}

#[tokio::test]
async fn token_policy_needs_a_fresh_token_per_registration() {
    let server = start_server(|c| c.registration = RegistrationPolicy::Token).await;
    let api = server.api();
    let a = Identity::new();
    let b = Identity::new();

    // No token, and an unknown token.
    api.register(&a).await.assert_error(401, "InvalidToken");
    let sig_a = sign(&a.key, &a.body());
    let (path, headers) = put_with_token(&a, "made-up", &sig_a);
    api.request("PUT", &path, &headers, &a.body())
        .await
        .assert_error(401, "InvalidToken");

    let token = server.handle().registry().issue_token().await.unwrap();
    assert_eq!(server.handle().registry().unused_tokens(), 1);

    // A request that fails for another reason does not use the token up.
    let (path, headers) = put_with_token(&a, &token, "AAAA");
    api.request("PUT", &path, &headers, &a.body())
        .await
        .assert_error(401, "InvalidSignature");
    assert_eq!(server.handle().registry().unused_tokens(), 1);

    let (path, headers) = put_with_token(&a, &token, &sig_a);
    let reply = api.request("PUT", &path, &headers, &a.body()).await;
    assert_eq!(reply.status, 201, "{}", reply.text());
    assert_eq!(server.handle().registry().unused_tokens(), 0);

    // Retrying the same registration is still fine (idempotent)…
    let reply = api.request("PUT", &path, &headers, &a.body()).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    // …but the token does not register anyone else.
    let sig_b = sign(&b.key, &b.body());
    let (path, headers) = put_with_token(&b, &token, &sig_b);
    api.request("PUT", &path, &headers, &b.body())
        .await
        .assert_error(401, "InvalidToken");
    assert_eq!(server.handle().registry().lookup(&b.uuid), None);

    // Rotation needs no token: the old key is the authority.
    let new = new_key();
    let reply = api
        .post_signed(&a.uuid.to_string(), &key_body(&new), &a.key)
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());

    let metrics = api.get("/metrics").await.text();
    for line in [
        "chatr_registrations_total{result=\"invalid_token\"} 3",
        "chatr_registrations_total{result=\"invalid_signature\"} 1",
        "chatr_registrations_total{result=\"created\"} 1",
        "chatr_registrations_total{result=\"unchanged\"} 1",
        "chatr_registrations_total{result=\"rotated\"} 1",
        "chatr_registration_tokens_unused 0",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "missing {line}:\n{metrics}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn closed_policy_refuses_clients_but_admins_can_add() {
    let server = start_server(|c| c.registration = RegistrationPolicy::Closed).await;
    let api = server.api();
    let id = Identity::new();
    api.register(&id)
        .await
        .assert_error(403, "RegistrationClosed");
    // A token does not open a closed server.
    let token = server.handle().registry().issue_token().await.unwrap();
    let sig = sign(&id.key, &id.body());
    let (path, headers) = put_with_token(&id, &token, &sig);
    api.request("PUT", &path, &headers, &id.body())
        .await
        .assert_error(403, "RegistrationClosed");
    assert_eq!(server.handle().registry().lookup(&id.uuid), None);

    // The admin adds the identity; lookups and logins work.
    server
        .handle()
        .registry()
        .put(id.uuid, id.key.verifying_key())
        .await
        .unwrap();
    let reply = api.get(&format!("/api/1/clients/{}", id.uuid)).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["publicKey"], id.public_b64());
    let (_session, first) =
        login(server.connect_addr(), &server.cert_pem(), id.uuid, &id.key).await;
    assert!(matches!(first, Packet::Connected(_)), "{first:?}");

    // The owner may still rotate.
    let new = new_key();
    let reply = api
        .post_signed(&id.uuid.to_string(), &key_body(&new), &id.key)
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        server.handle().registry().lookup(&id.uuid),
        Some(new.verifying_key())
    );
    server.stop().await;
}
