//! Deciding whether the server's TLS certificate is the right one.
//!
//! Both the Connect session and the registry API use the same certificate, so
//! both build their rustls config here, from the config's [`Trust`]:
//!
//! * **pinned certificate**: the presented leaf must equal a pinned certificate
//!   byte for byte, or chain to one of them used as a root (so pinning a dev CA
//!   works too);
//! * **fingerprint**: the SHA-256 of the presented leaf must match;
//! * **system roots**: ordinary web PKI validation against the operating
//!   system's trust store (`rustls-native-certs`: the distribution's CA bundle,
//!   honouring `SSL_CERT_FILE` / `SSL_CERT_DIR`), so a CA the administrator
//!   installed is trusted too; where the system has no usable store (a minimal
//!   container without `ca-certificates`), Mozilla's bundled list
//!   (`webpki-roots`) instead.
//!
//! Everything uses rustls' ring provider only.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::config::{Fingerprint, Trust};
use crate::home::Home;

/// What can go wrong building the TLS trust.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrustError {
    /// The pinned certificate file could not be read or holds no certificate.
    #[error("cannot use the pinned server certificate {path}: {reason}")]
    PinnedCert {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The server host is not a valid TLS server name.
    #[error("{0:?} is not a valid server name for TLS")]
    BadServerName(String),
    /// rustls refused the configuration.
    #[error("TLS configuration error: {0}")]
    Tls(#[from] rustls::Error),
}

/// Why the verifier refused the server (carried inside `rustls::Error`).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct PinMismatch(String);

/// The ring crypto provider used everywhere in the client.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads every certificate in a PEM file.
pub fn read_pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TrustError> {
    let err = |reason: String| TrustError::PinnedCert {
        path: path.to_path_buf(),
        reason,
    };
    let iter = CertificateDer::pem_file_iter(path).map_err(|e| err(e.to_string()))?;
    let certs = iter
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no CERTIFICATE block found".into()));
    }
    Ok(certs)
}

/// The SHA-256 fingerprint of a DER certificate.
pub fn fingerprint_of(cert: &[u8]) -> Fingerprint {
    let digest = ring::digest::digest(&ring::digest::SHA256, cert);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    Fingerprint(out)
}

/// The TLS server name for a host (DNS name or IP literal).
pub fn server_name(host: &str) -> Result<ServerName<'static>, TrustError> {
    ServerName::try_from(host.to_string()).map_err(|_| TrustError::BadServerName(host.into()))
}

/// A rustls client config that trusts the server as `trust` says.
///
/// Relative pinned-certificate paths are resolved against the home directory.
pub fn client_config(trust: &Trust, home: &Home) -> Result<Arc<ClientConfig>, TrustError> {
    let provider = crypto_provider();
    let verifier: Arc<dyn ServerCertVerifier> = match trust {
        Trust::PinnedCert(path) => {
            let path = if path.is_absolute() {
                path.clone()
            } else {
                home.dir().join(path)
            };
            let certs = read_pem_certs(&path)?;
            Arc::new(PinnedVerifier::new(Pin::Certs(certs), provider.clone())?)
        }
        Trust::Fingerprint(fp) => Arc::new(PinnedVerifier::new(
            Pin::Fingerprint(*fp),
            provider.clone(),
        )?),
        Trust::SystemRoots => {
            let native = rustls_native_certs::load_native_certs();
            for error in &native.errors {
                tracing::debug!(%error, "part of the system trust store could not be read");
            }
            let (roots, source) = system_roots(native.certs);
            tracing::debug!(roots = roots.len(), ?source, "trusting system roots");
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?
        }
    };
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Where the "system roots" trust anchors came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootsSource {
    /// The operating system's trust store.
    OperatingSystem,
    /// Mozilla's list bundled into the binary (the system store was empty or unreadable).
    Bundled,
}

/// The trust anchors for [`Trust::SystemRoots`]: the usable certificates of the
/// operating system's store (`native`), or the bundled Mozilla list if there are none.
pub fn system_roots(native: Vec<CertificateDer<'static>>) -> (RootCertStore, RootsSource) {
    let mut roots = RootCertStore::empty();
    let (_added, _unusable) = roots.add_parsable_certificates(native);
    if roots.is_empty() {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        (roots, RootsSource::Bundled)
    } else {
        (roots, RootsSource::OperatingSystem)
    }
}

/// Whether an I/O error from a TLS handshake means "the server's certificate
/// is not the one we trust" (as opposed to a network failure).
pub fn is_cert_rejection(err: &std::io::Error) -> Option<String> {
    let inner = err.get_ref()?;
    match inner.downcast_ref::<rustls::Error>()? {
        rustls::Error::InvalidCertificate(e) => Some(match e {
            CertificateError::Other(other) => other.to_string(),
            e => format!("{e:?}"),
        }),
        _ => None,
    }
}

enum Pin {
    Certs(Vec<CertificateDer<'static>>),
    Fingerprint(Fingerprint),
}

/// Accepts exactly the pinned certificate(s) or fingerprint.
struct PinnedVerifier {
    pin: Pin,
    /// For a pinned CA: normal validation with the pinned certs as roots.
    ca: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl std::fmt::Debug for PinnedVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PinnedVerifier")
    }
}

impl PinnedVerifier {
    fn new(pin: Pin, provider: Arc<CryptoProvider>) -> Result<Self, TrustError> {
        let ca = match &pin {
            Pin::Certs(certs) => {
                let mut roots = RootCertStore::empty();
                // A self-signed leaf is not a usable trust anchor for webpki
                // (it is not a CA); those are matched byte for byte instead.
                let (_added, _ignored) = roots.add_parsable_certificates(certs.iter().cloned());
                if roots.is_empty() {
                    None
                } else {
                    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                        .build()
                        .ok()
                }
            }
            Pin::Fingerprint(_) => None,
        };
        Ok(Self { pin, ca, provider })
    }
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let presented = fingerprint_of(end_entity.as_ref());
        match &self.pin {
            Pin::Fingerprint(fp) if *fp == presented => Ok(ServerCertVerified::assertion()),
            Pin::Fingerprint(fp) => Err(mismatch(format!(
                "the server presented a certificate with SHA-256 {presented}, but {fp} is pinned"
            ))),
            Pin::Certs(certs) => {
                if certs.iter().any(|c| c.as_ref() == end_entity.as_ref()) {
                    return Ok(ServerCertVerified::assertion());
                }
                if let Some(ca) = &self.ca
                    && ca
                        .verify_server_cert(
                            end_entity,
                            intermediates,
                            server_name,
                            ocsp_response,
                            now,
                        )
                        .is_ok()
                {
                    return Ok(ServerCertVerified::assertion());
                }
                Err(mismatch(format!(
                    "the server presented a certificate (SHA-256 {presented}) that is not the pinned one"
                )))
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn mismatch(msg: String) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(
        PinMismatch(msg),
    ))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_is_sha256() {
        // SHA-256("abc")
        assert_eq!(
            fingerprint_of(b"abc").to_string(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn server_names() {
        assert!(server_name("localhost").is_ok());
        assert!(server_name("127.0.0.1").is_ok());
        assert!(server_name("::1").is_ok());
        assert!(server_name("bad name").is_err());
    }

    #[test]
    fn system_roots_and_fingerprint_configs_build() {
        let home = Home::new("/nonexistent");
        client_config(&Trust::SystemRoots, &home).unwrap();
        client_config(&Trust::Fingerprint(Fingerprint([1; 32])), &home).unwrap();
        assert!(matches!(
            client_config(&Trust::PinnedCert("missing.pem".into()), &home),
            Err(TrustError::PinnedCert { .. })
        ));
    }

    /// A CA and a server certificate for `name` it issued, made in `dir` by the server's
    /// own `chatr-server certs` code (what an operator following `certs/README.md` pins).
    /// Returns the CA's PEM file and the server certificate's DER.
    fn ca_and_leaf(dir: &Path, name: &str) -> (PathBuf, CertificateDer<'static>) {
        use chatr_server::admin::certs::{create_ca, issue_server};
        let ca = create_ca(&dir.join("ca"), "Chatr test CA", 30).unwrap();
        let issued = issue_server(
            &ca.cert,
            &ca.key,
            "Chatr test CA",
            &dir.join("server"),
            &[name.to_owned()],
            30,
        )
        .unwrap();
        // The file holds the leaf, then the CA.
        let leaf = read_pem_certs(&issued.cert).unwrap().remove(0);
        (ca.cert, leaf)
    }

    fn verify(
        verifier: &dyn ServerCertVerifier,
        leaf: &CertificateDer<'_>,
        name: &str,
    ) -> Result<ServerCertVerified, rustls::Error> {
        verifier.verify_server_cert(leaf, &[], &server_name(name).unwrap(), &[], UnixTime::now())
    }

    /// A verifier pinning the certificate(s) in the PEM file at `path`.
    fn pinned_file(path: &Path) -> PinnedVerifier {
        PinnedVerifier::new(Pin::Certs(read_pem_certs(path).unwrap()), crypto_provider()).unwrap()
    }

    fn pinned_from_pem(pem: &str) -> PinnedVerifier {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pinned.pem");
        std::fs::write(&path, pem).unwrap();
        pinned_file(&path)
    }

    #[test]
    fn a_pinned_ca_accepts_the_leaves_it_signed_for_the_right_name_only() {
        let dir = tempfile::tempdir().unwrap();
        let (dev_ca, good) = ca_and_leaf(&dir.path().join("dev"), "chatr.test");
        let verifier = pinned_file(&dev_ca);
        assert!(
            verifier.ca.is_some(),
            "a CA certificate must become a trust anchor"
        );

        verify(&verifier, &good, "chatr.test").unwrap();

        // Signed by the pinned CA, but for another host.
        let err = verify(&verifier, &good, "other.test").unwrap_err();
        assert!(err.to_string().contains("not the pinned one"), "{err}");

        // Right name, but signed by some other CA.
        let (_, forged) = ca_and_leaf(&dir.path().join("stranger"), "chatr.test");
        let err = verify(&verifier, &forged, "chatr.test").unwrap_err();
        assert!(err.to_string().contains("not the pinned one"), "{err}");
    }

    #[test]
    fn a_pinned_self_signed_leaf_matches_byte_for_byte() {
        let params = rcgen::CertificateParams::new(vec!["chatr.test".to_owned()]).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let leaf = params.self_signed(&key).unwrap();
        let verifier = pinned_from_pem(&leaf.pem());
        verify(&verifier, leaf.der(), "chatr.test").unwrap();
        // Pinned means pinned: the name is not what is checked for a pinned leaf.
        verify(&verifier, leaf.der(), "any.name").unwrap();

        let other = params
            .self_signed(&rcgen::KeyPair::generate().unwrap())
            .unwrap();
        assert!(verify(&verifier, other.der(), "chatr.test").is_err());
    }

    #[test]
    fn a_fingerprint_pin_accepts_only_that_certificate() {
        let params = rcgen::CertificateParams::new(vec!["chatr.test".to_owned()]).unwrap();
        let leaf = params
            .self_signed(&rcgen::KeyPair::generate().unwrap())
            .unwrap();
        let pin = Pin::Fingerprint(fingerprint_of(leaf.der()));
        let verifier = PinnedVerifier::new(pin, crypto_provider()).unwrap();
        verify(&verifier, leaf.der(), "chatr.test").unwrap();
        let other = params
            .self_signed(&rcgen::KeyPair::generate().unwrap())
            .unwrap();
        let err = verify(&verifier, other.der(), "chatr.test").unwrap_err();
        assert!(err.to_string().contains("is pinned"), "{err}");
    }

    #[test]
    fn system_roots_come_from_the_os_store_and_trust_an_installed_ca() {
        let dir = tempfile::tempdir().unwrap();
        let (installed, leaf) = ca_and_leaf(&dir.path().join("corp"), "corp.test");
        let (roots, source) = system_roots(read_pem_certs(&installed).unwrap());
        assert_eq!(source, RootsSource::OperatingSystem);
        assert_eq!(roots.len(), 1);
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), crypto_provider())
                .build()
                .unwrap();
        verify(verifier.as_ref(), &leaf, "corp.test").unwrap();
        let (_, stranger) = ca_and_leaf(&dir.path().join("stranger"), "corp.test");
        assert!(verify(verifier.as_ref(), &stranger, "corp.test").is_err());
    }

    #[test]
    fn without_a_usable_os_store_the_bundled_roots_are_used() {
        let (roots, source) = system_roots(Vec::new());
        assert_eq!(source, RootsSource::Bundled);
        assert_eq!(roots.len(), webpki_roots::TLS_SERVER_ROOTS.len());
        // Garbage in the store counts as nothing usable.
        let (roots, source) = system_roots(vec![CertificateDer::from(vec![1u8, 2, 3])]);
        assert_eq!(source, RootsSource::Bundled);
        assert!(!roots.is_empty());
    }
}
