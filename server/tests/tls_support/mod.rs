//! The TLS client side shared by the Connect and registry/ops test helpers:
//! TLS 1.3 over ring, trusting exactly the certificate(s) the test server
//! presents, so a wrong or substituted certificate fails the handshake.
#![allow(clippy::unwrap_used, unreachable_pub)]

use std::sync::Arc;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;

/// A TLS client configuration that trusts exactly the certificates in `cert_pem`.
pub fn client_config(cert_pem: &str) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(cert_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    Arc::new(config)
}
