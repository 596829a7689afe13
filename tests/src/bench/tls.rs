//! TLS for the benchmark: one self-signed certificate shared by the Chatr server
//! and the bare baseline, and the load clients' pinned rustls client config.
//!
//! The client pins the certificate byte for byte (as a Chatr client pinning its
//! server does) but still verifies the handshake signature, so a handshake costs
//! the client what it costs a real one. Session resumption is off: every Chatr
//! login in practice is a fresh process with a full handshake.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::Resumption;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::bench::BenchError;

/// The certificate and key files both servers load.
#[derive(Debug, Clone)]
pub struct BenchCert {
    /// PEM certificate.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// The certificate, DER (what the client pins).
    pub der: CertificateDer<'static>,
}

impl BenchCert {
    /// Creates a self-signed certificate (the server's own generator: ECDSA P-256)
    /// in `dir`.
    pub fn create(dir: &Path) -> Result<Self, BenchError> {
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        chatr_server::tls::generate_self_signed(
            &cert,
            &key,
            &["localhost".to_string(), "127.0.0.1".to_string()],
        )?;
        let der = CertificateDer::from_pem_file(&cert)
            .map_err(|e| BenchError::Server(format!("cannot read {}: {e}", cert.display())))?;
        Ok(Self { cert, key, der })
    }

    /// The load clients' TLS connector.
    pub fn connector(&self) -> Result<tokio_rustls::TlsConnector, BenchError> {
        Ok(tokio_rustls::TlsConnector::from(client_config(
            self.der.clone(),
        )?))
    }
}

/// The ring provider, as everywhere in Chatr.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A TLS 1.3 client config that accepts exactly `pinned`.
pub fn client_config(pinned: CertificateDer<'static>) -> Result<Arc<ClientConfig>, BenchError> {
    let provider = provider();
    let verifier = Arc::new(Pinned {
        cert: pinned,
        algorithms: provider.signature_verification_algorithms,
    });
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.resumption = Resumption::disabled();
    Ok(Arc::new(config))
}

/// The server name the clients send (the certificate has it; the pin decides).
pub fn server_name() -> ServerName<'static> {
    ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into())
}

#[derive(Debug)]
struct Pinned {
    cert: CertificateDer<'static>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.cert.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
