//! Shared helpers for the `link_*` integration tests: endpoints on loopback UDP sockets.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use chatr_client::link::{ControlRx, LinkConfig, LinkEndpoint, PeerLink};
use ed25519_dalek::SigningKey;

/// A fresh random identity.
pub fn identity() -> SigningKey {
    SigningKey::from_bytes(&rand::random::<[u8; 32]>())
}

/// Short timeouts so failing tests fail fast.
pub fn config() -> LinkConfig {
    let mut config = LinkConfig::default();
    config.handshake_timeout = Duration::from_secs(5);
    config.idle_timeout = Duration::from_secs(10);
    config.keep_alive = Duration::from_secs(1);
    config
}

/// An endpoint on a loopback UDP socket bound to port 0.
pub fn endpoint(identity: &SigningKey) -> (LinkEndpoint, ControlRx) {
    endpoint_with(identity, config())
}

/// An endpoint on a loopback UDP socket bound to port 0, with `config`.
pub fn endpoint_with(identity: &SigningKey, config: LinkConfig) -> (LinkEndpoint, ControlRx) {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    LinkEndpoint::new(socket, identity, config).unwrap()
}

/// Two endpoints linked with correctly pinned keys.
pub struct Pair {
    pub initiator: PeerLink,
    pub responder: PeerLink,
    pub initiator_endpoint: LinkEndpoint,
    pub responder_endpoint: LinkEndpoint,
    pub initiator_control: ControlRx,
    pub responder_control: ControlRx,
    pub initiator_key: SigningKey,
    pub responder_key: SigningKey,
}

/// Links two fresh endpoints (initiator connects, responder accepts the expected key).
pub async fn linked_pair() -> Pair {
    linked_pair_with(config(), config()).await
}

/// [`linked_pair`] with a config for each side.
pub async fn linked_pair_with(initiator: LinkConfig, responder: LinkConfig) -> Pair {
    let initiator_key = identity();
    let responder_key = identity();
    let (initiator_endpoint, initiator_control) = endpoint_with(&initiator_key, initiator);
    let (responder_endpoint, responder_control) = endpoint_with(&responder_key, responder);
    let responder_addr = responder_endpoint.local_addr().unwrap();
    let expected_initiator = initiator_key.verifying_key();
    let (initiator, responder) = tokio::join!(
        initiator_endpoint.connect(responder_addr, responder_key.verifying_key()),
        async {
            let incoming = responder_endpoint.accept().await.unwrap();
            incoming.accept(&expected_initiator).await
        }
    );
    Pair {
        initiator: initiator.unwrap(),
        responder: responder.unwrap(),
        initiator_endpoint,
        responder_endpoint,
        initiator_control,
        responder_control,
        initiator_key,
        responder_key,
    }
}

/// `len` random bytes (from the OS through ring, which is fast even in debug builds).
pub fn random_bytes(len: usize) -> Vec<u8> {
    use ring::rand::SecureRandom as _;
    let mut out = vec![0u8; len];
    let rng = ring::rand::SystemRandom::new();
    for chunk in out.chunks_mut(1024 * 1024) {
        rng.fill(chunk).unwrap();
    }
    out
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, data).as_ref());
    out
}
