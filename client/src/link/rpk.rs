//! TLS 1.3 with RFC 7250 raw public keys: a peer's certificate is its ed25519 identity.
//!
//! There is no CA between two Chatr peers: each one already knows the other's ed25519 key
//! (pinned in contacts or fetched from the registry). So instead of X.509 certificates both
//! sides send a bare `SubjectPublicKeyInfo` (RFC 7250 `RawPublicKey` certificate type) and prove
//! possession of the matching private key with the TLS 1.3 `CertificateVerify` signature.
//!
//! - The **initiator** (QUIC client) uses a `PinnedServerKey` verifier: any key other than
//!   the one it expects fails the handshake. The key seen is recorded, so the caller can report
//!   `LinkError::KeyMismatch { expected, got }`.
//! - The **responder** (QUIC server) uses `AnyEd25519ClientKey`: the client must present *an*
//!   ed25519 key and sign with it. Which key is acceptable is decided right after the handshake
//!   by [`IncomingLink::accept`](super::IncomingLink::accept), which knows who the responder
//!   agreed to talk to.
//!
//! Only ed25519 signatures, TLS 1.3, ALPN `chatr/3`, `chatr/2` or `chatr/1` (see
//! `version`), the ring provider, and no session resumption (every link proves both keys
//! afresh).

use std::sync::{Arc, OnceLock};

use ed25519_dalek::pkcs8::EncodePrivateKey as _;
use ed25519_dalek::{SigningKey, VerifyingKey};
use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{AlwaysResolvesClientRawPublicKeys, Resumption};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, SubjectPublicKeyInfoDer,
    UnixTime,
};
use rustls::server::AlwaysResolvesServerRawPublicKeys;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, DistinguishedName, Error as TlsError, SignatureScheme};

use super::{LinkError, LinkVersion};

/// DER prefix of an ed25519 `SubjectPublicKeyInfo` (RFC 8410): SEQUENCE { SEQUENCE { OID
/// 1.3.101.112 }, BIT STRING (0 unused bits) }, followed by the 32 key bytes.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// Length of an ed25519 SPKI in DER.
pub const ED25519_SPKI_LEN: usize = ED25519_SPKI_PREFIX.len() + 32;

/// The raw public key (SPKI DER) a peer sends for `key`.
pub fn spki_der(key: &VerifyingKey) -> Vec<u8> {
    let mut der = Vec::with_capacity(ED25519_SPKI_LEN);
    der.extend_from_slice(&ED25519_SPKI_PREFIX);
    der.extend_from_slice(key.as_bytes());
    der
}

/// Parses an ed25519 SPKI, accepting only the exact RFC 8410 encoding. `None` for any other
/// key type, encoding, or an invalid curve point.
pub fn key_from_spki(der: &[u8]) -> Option<VerifyingKey> {
    let rest = der.strip_prefix(&ED25519_SPKI_PREFIX)?;
    let bytes: &[u8; 32] = rest.try_into().ok()?;
    VerifyingKey::from_bytes(bytes).ok()
}

/// The TLS provider for peer links: ring, nothing else.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Our identity as a rustls `CertifiedKey` whose "certificate" is our raw public key.
pub(crate) fn certified_key(
    identity: &SigningKey,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, LinkError> {
    let pkcs8 = identity
        .to_pkcs8_der()
        .map_err(|_| TlsError::General("cannot encode the identity key as PKCS#8".into()))?;
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8.as_bytes().to_vec()));
    let key = provider.key_provider.load_private_key(der)?;
    let spki = CertificateDer::from(spki_der(&identity.verifying_key()));
    Ok(Arc::new(CertifiedKey::new(vec![spki], key)))
}

/// Verifies a TLS 1.3 `CertificateVerify` made with the raw key in `cert`.
fn verify_signature(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
    algorithms: &WebPkiSupportedAlgorithms,
) -> Result<HandshakeSignatureValid, TlsError> {
    if dss.scheme != SignatureScheme::ED25519 {
        return Err(TlsError::PeerMisbehaved(
            rustls::PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme,
        ));
    }
    let spki = SubjectPublicKeyInfoDer::from(cert.as_ref());
    rustls::crypto::verify_tls13_signature_with_raw_key(message, &spki, dss, algorithms)
}

/// Parses the presented raw key, or fails the handshake with a bad-certificate alert.
fn presented_key(end_entity: &CertificateDer<'_>) -> Result<VerifyingKey, TlsError> {
    key_from_spki(end_entity.as_ref())
        .ok_or(TlsError::InvalidCertificate(CertificateError::BadEncoding))
}

/// TLS 1.2 is never negotiated (the configs allow TLS 1.3 only), so its hooks refuse.
fn no_tls12() -> TlsError {
    TlsError::General("TLS 1.2 is not used for peer links".into())
}

/// What the initiator saw during the handshake, for error reporting.
pub(crate) type SeenKey = Arc<OnceLock<VerifyingKey>>;

/// The initiator's verifier: accepts exactly one ed25519 raw key.
#[derive(Debug)]
pub(crate) struct PinnedServerKey {
    expected: VerifyingKey,
    seen: SeenKey,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedServerKey {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        if !intermediates.is_empty() {
            return Err(TlsError::InvalidCertificate(CertificateError::BadEncoding));
        }
        let key = presented_key(end_entity)?;
        // One verifier per connection, so the first key is the only key.
        let _ = self.seen.set(key);
        if key != self.expected {
            return Err(TlsError::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        Err(no_tls12())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }

    fn requires_raw_public_keys(&self) -> bool {
        true
    }
}

/// The responder's verifier: any ed25519 raw key whose owner signs the handshake.
#[derive(Debug)]
pub(crate) struct AnyEd25519ClientKey {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for AnyEd25519ClientKey {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, TlsError> {
        if !intermediates.is_empty() {
            return Err(TlsError::InvalidCertificate(CertificateError::BadEncoding));
        }
        presented_key(end_entity)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        Err(no_tls12())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }

    fn requires_raw_public_keys(&self) -> bool {
        true
    }
}

/// The initiator's TLS config for one connection, pinning `expected`, plus the slot where the
/// key the peer presented is recorded.
pub(crate) fn client_config(
    provider: &Arc<CryptoProvider>,
    identity: &Arc<CertifiedKey>,
    expected: VerifyingKey,
    newest: LinkVersion,
) -> Result<(rustls::ClientConfig, SeenKey), LinkError> {
    let seen = SeenKey::default();
    let verifier = PinnedServerKey {
        expected,
        seen: seen.clone(),
        algorithms: provider.signature_verification_algorithms,
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(Arc::new(AlwaysResolvesClientRawPublicKeys::new(
            identity.clone(),
        )));
    config.alpn_protocols = LinkVersion::offered(newest);
    config.resumption = Resumption::disabled();
    Ok((config, seen))
}

/// The responder's TLS config: our raw key, any client raw key, ALPN `chatr/3`, `chatr/2`
/// or `chatr/1` (the first of ours the initiator offers: rustls picks by the server's order).
pub(crate) fn server_config(
    provider: &Arc<CryptoProvider>,
    identity: &Arc<CertifiedKey>,
    newest: LinkVersion,
) -> Result<rustls::ServerConfig, LinkError> {
    let verifier = AnyEd25519ClientKey {
        algorithms: provider.signature_verification_algorithms,
    };
    let mut config = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(Arc::new(AlwaysResolvesServerRawPublicKeys::new(
            identity.clone(),
        )));
    config.alpn_protocols = LinkVersion::offered(newest);
    // No tickets: a resumed session would skip proving the client key again.
    config.send_tls13_tickets = 0;
    Ok(config)
}

/// The peer's key from a finished QUIC handshake (its raw public key certificate).
pub(crate) fn peer_key(connection: &quinn::Connection) -> Option<VerifyingKey> {
    let identity = connection.peer_identity()?;
    let certs = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    match certs.as_slice() {
        [only] => key_from_spki(only.as_ref()),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    #[test]
    fn spki_round_trips() {
        let public = key(7).verifying_key();
        let der = spki_der(&public);
        assert_eq!(der.len(), ED25519_SPKI_LEN);
        assert_eq!(key_from_spki(&der), Some(public));
    }

    #[test]
    fn spki_matches_the_pkcs8_encoder() {
        use ed25519_dalek::pkcs8::EncodePublicKey as _;
        let public = key(9).verifying_key();
        let reference = public.to_public_key_der().unwrap();
        assert_eq!(spki_der(&public), reference.as_bytes());
    }

    #[test]
    fn spki_rejects_other_encodings() {
        let der = spki_der(&key(1).verifying_key());
        assert_eq!(key_from_spki(&der[..der.len() - 1]), None);
        let mut longer = der.clone();
        longer.push(0);
        assert_eq!(key_from_spki(&longer), None);
        let mut other_oid = der.clone();
        other_oid[8] = 0x71; // Ed448
        assert_eq!(key_from_spki(&other_oid), None);
        assert_eq!(key_from_spki(&[]), None);
    }

    #[test]
    fn certified_key_presents_our_spki() {
        let provider = provider();
        let identity = key(3);
        let certified = certified_key(&identity, &provider).unwrap();
        let presented = certified.end_entity_cert().unwrap();
        assert_eq!(
            key_from_spki(presented.as_ref()),
            Some(identity.verifying_key())
        );
        // The private key rustls loaded matches the raw key we present.
        let loaded = certified.key.public_key().unwrap();
        assert_eq!(loaded.as_ref(), presented.as_ref());
    }

    #[test]
    fn pinned_verifier_records_and_refuses_other_keys() {
        let provider = provider();
        let expected = key(1).verifying_key();
        let other = key(2).verifying_key();
        let seen = SeenKey::default();
        let verifier = PinnedServerKey {
            expected,
            seen: seen.clone(),
            algorithms: provider.signature_verification_algorithms,
        };
        let name = ServerName::try_from("chatr.peer").unwrap();
        let result = verifier.verify_server_cert(
            &CertificateDer::from(spki_der(&other)),
            &[],
            &name,
            &[],
            UnixTime::now(),
        );
        assert!(result.is_err());
        assert_eq!(seen.get(), Some(&other));

        let fresh = PinnedServerKey {
            expected,
            seen: SeenKey::default(),
            algorithms: provider.signature_verification_algorithms,
        };
        assert!(
            fresh
                .verify_server_cert(
                    &CertificateDer::from(spki_der(&expected)),
                    &[],
                    &name,
                    &[],
                    UnixTime::now(),
                )
                .is_ok()
        );
    }
}
