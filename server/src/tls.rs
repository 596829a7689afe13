//! The server's TLS identity: certificate chain, private key and the rustls
//! configuration built from them.
//!
//! Clients reach the Connect port over TLS 1.3 only, with the *ring* provider
//! (the only crypto provider in the dependency tree). With no `--cert`/`--key`
//! configured, a self-signed certificate is created on first start in the data
//! dir (`cert.pem`, `key.pem` with mode 0600) and reused afterwards; its SHA-256
//! fingerprint is what clients pin. [`TlsIdentity::reload`] re-reads the files
//! (SIGHUP): new handshakes use the new certificate, running sessions keep theirs.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::ServerConfig;

/// File name of the generated certificate inside the data dir.
pub const GENERATED_CERT_FILE: &str = "cert.pem";
/// File name of the generated private key inside the data dir.
pub const GENERATED_KEY_FILE: &str = "key.pem";

/// Why the TLS identity could not be loaded or created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A certificate or key file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A file is not valid PEM of the expected kind.
    #[error(
        "{path} is not a usable PEM file ({source}); expected CERTIFICATE blocks or a PRIVATE KEY"
    )]
    Pem {
        /// The file.
        path: PathBuf,
        /// What the PEM parser said.
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    /// The certificate file holds no certificate.
    #[error("{path} holds no CERTIFICATE block; give the server certificate chain in PEM")]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// Only one of `--cert` and `--key` was given.
    #[error("--cert and --key must be given together (or neither, for a self-signed certificate)")]
    IncompletePair,
    /// A generated certificate or key could not be written.
    #[error("cannot write {path}: {source}; check that the data dir is writable")]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The generated key file exists without its certificate, or the reverse.
    #[error(
        "{present} exists but {missing} does not; restore it or remove both to create a new certificate"
    )]
    HalfGenerated {
        /// The file that exists.
        present: PathBuf,
        /// The file that is missing.
        missing: PathBuf,
    },
    /// rcgen could not create the self-signed certificate.
    #[error("cannot generate a self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the certificate/key pair (e.g. they do not match).
    #[error("the certificate and key are not usable together: {0}")]
    Rustls(#[from] rustls::Error),
}

/// One loaded certificate/key pair and what is derived from it.
struct Loaded {
    config: Arc<rustls::ServerConfig>,
    cert_pem: String,
    fingerprint: String,
}

/// The reloadable TLS identity of the server. Cheap to clone; clones share state.
#[derive(Clone)]
pub struct TlsIdentity {
    current: Arc<RwLock<Arc<Loaded>>>,
    cert_path: Arc<PathBuf>,
    key_path: Arc<PathBuf>,
}

impl fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsIdentity")
            .field("cert", &self.cert_path)
            .field("key", &self.key_path)
            .field("fingerprint", &self.fingerprint())
            .finish()
    }
}

impl TlsIdentity {
    /// Loads `config.cert`/`config.key`, or with neither configured the
    /// self-signed pair in `config.data_dir`, creating it on first start.
    pub fn load_or_create(config: &ServerConfig) -> Result<Self, TlsError> {
        match (&config.cert, &config.key) {
            (Some(cert), Some(key)) => Self::from_files(cert, key),
            (None, None) => {
                let cert = config.data_dir.join(GENERATED_CERT_FILE);
                let key = config.data_dir.join(GENERATED_KEY_FILE);
                match (cert.exists(), key.exists()) {
                    (true, true) => {}
                    (false, false) => {
                        let sans = default_sans(&config.san);
                        generate_self_signed(&cert, &key, &sans)?;
                        tracing::info!(cert = %cert.display(), ?sans, "created a self-signed certificate");
                    }
                    (true, false) => {
                        return Err(TlsError::HalfGenerated {
                            present: cert,
                            missing: key,
                        });
                    }
                    (false, true) => {
                        return Err(TlsError::HalfGenerated {
                            present: key,
                            missing: cert,
                        });
                    }
                }
                Self::from_files(&cert, &key)
            }
            _ => Err(TlsError::IncompletePair),
        }
    }

    /// Loads a PEM certificate chain and private key.
    pub fn from_files(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let loaded = load(cert, key)?;
        Ok(Self {
            current: Arc::new(RwLock::new(Arc::new(loaded))),
            cert_path: Arc::new(cert.to_path_buf()),
            key_path: Arc::new(key.to_path_buf()),
        })
    }

    /// Re-reads the certificate and key files. On error the old identity stays
    /// in use. Sessions already established are not affected.
    pub fn reload(&self) -> Result<(), TlsError> {
        let loaded = Arc::new(load(&self.cert_path, &self.key_path)?);
        tracing::info!(fingerprint = %loaded.fingerprint, "TLS certificate reloaded");
        match self.current.write() {
            Ok(mut guard) => *guard = loaded,
            // A writer never panics while holding the lock, but if one did the
            // value is still a whole `Arc`: replace it.
            Err(poisoned) => *poisoned.into_inner() = loaded,
        }
        Ok(())
    }

    fn loaded(&self) -> Arc<Loaded> {
        match self.current.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// A TLS acceptor with the current certificate.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.server_config())
    }

    /// The current rustls configuration (TLS 1.3 only, ring), e.g. for the
    /// HTTPS API, which serves the same certificate.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        Arc::clone(&self.loaded().config)
    }

    /// Lowercase hex SHA-256 of the leaf certificate's DER: what clients pin.
    pub fn fingerprint(&self) -> String {
        self.loaded().fingerprint.clone()
    }

    /// The certificate chain in PEM, as served on `GET /certificate`.
    pub fn cert_pem(&self) -> String {
        self.loaded().cert_pem.clone()
    }

    /// Path of the certificate file in use.
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }
}

/// Lowercase hex SHA-256 of a DER certificate.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, der))
}

/// The rustls configuration every Chatr TLS server uses: ring, TLS 1.3 only,
/// no client certificates, the server's cipher-suite order (see
/// `suite_rank`).
pub fn rustls_server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<rustls::ServerConfig, TlsError> {
    let mut provider = rustls::crypto::ring::default_provider();
    // Stable sort: suites we do not rank keep the provider's order, last.
    provider
        .cipher_suites
        .sort_by_key(|suite| suite_rank(suite.suite()));
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    // rustls clients list AES-256-GCM/SHA-384 first. SHA-384 (SHA-512 rounds)
    // gets no SHA-NI help, and the handshake transcript hash and key schedule
    // were 8.7 % of a login's server CPU in the profile (BENCHMARKS.md), while
    // SHA-256 runs on SHA-NI. AES-128-GCM is a full-strength TLS 1.3 suite, so
    // the server picks by its own order.
    config.ignore_client_order = true;
    Ok(config)
}

/// Server preference among TLS 1.3 suites (lower first): AES-128-GCM (AES-NI
/// and SHA-NI on any current server CPU), then ChaCha20-Poly1305 (SHA-256
/// too), then everything else (AES-256-GCM/SHA-384).
fn suite_rank(suite: rustls::CipherSuite) -> u8 {
    match suite {
        rustls::CipherSuite::TLS13_AES_128_GCM_SHA256 => 0,
        rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 => 1,
        _ => 2,
    }
}

fn load(cert: &Path, key: &Path) -> Result<Loaded, TlsError> {
    let cert_pem = fs::read_to_string(cert).map_err(|source| TlsError::Read {
        path: cert.to_path_buf(),
        source,
    })?;
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            path: cert.to_path_buf(),
            source,
        })?;
    let Some(leaf) = chain.first() else {
        return Err(TlsError::NoCertificate {
            path: cert.to_path_buf(),
        });
    };
    let fingerprint = fingerprint(leaf);
    let key_bytes = fs::read(key).map_err(|source| TlsError::Read {
        path: key.to_path_buf(),
        source,
    })?;
    let key_der = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|source| TlsError::Pem {
        path: key.to_path_buf(),
        source,
    })?;
    let config = rustls_server_config(chain, key_der)?;
    Ok(Loaded {
        config: Arc::new(config),
        cert_pem,
        fingerprint,
    })
}

/// Subject alternative names of the generated certificate: localhost,
/// 127.0.0.1, ::1, this machine's hostname, then `extra`.
pub fn default_sans(extra: &[String]) -> Vec<String> {
    let mut sans: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    if let Some(host) = hostname() {
        sans.push(host);
    }
    sans.extend(extra.iter().cloned());
    let mut seen = std::collections::HashSet::new();
    sans.retain(|s| seen.insert(s.clone()));
    sans
}

fn hostname() -> Option<String> {
    // No libc call needed (unsafe is forbidden): Linux exposes it in procfs.
    let raw = fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| fs::read_to_string("/etc/hostname"))
        .ok()?;
    let host = raw.trim();
    (!host.is_empty()).then(|| host.to_string())
}

/// Creates a self-signed certificate for `sans` and writes it to `cert_path`
/// and its private key to `key_path` (mode 0600, created exclusively).
pub fn generate_self_signed(
    cert_path: &Path,
    key_path: &Path,
    sans: &[String],
) -> Result<(), TlsError> {
    let certified = rcgen::generate_simple_self_signed(sans.to_vec())?;
    if let Some(dir) = key_path.parent() {
        fs::create_dir_all(dir).map_err(|source| TlsError::Write {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    // The key is written first: a crash in between leaves a key without a
    // certificate, which is reported rather than silently overwritten.
    write_new(
        key_path,
        certified.signing_key.serialize_pem().as_bytes(),
        0o600,
    )?;
    write_new(cert_path, certified.cert.pem().as_bytes(), 0o644)?;
    Ok(())
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), TlsError> {
    create_file_with(path, bytes, mode).map_err(|source| TlsError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// Creates `path` with permissions `mode`, writes `bytes` and syncs them to
/// disk. Fails if the file already exists: key material is never silently
/// overwritten.
pub(crate) fn create_file_with(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn first_start_creates_a_pair_and_reuses_it() {
        let dir = tempfile::tempdir().unwrap();
        let config = ServerConfig::for_tests(dir.path());
        let first = TlsIdentity::load_or_create(&config).unwrap();
        let key_mode = fs::metadata(dir.path().join(GENERATED_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(key_mode & 0o777, 0o600);
        assert_eq!(first.fingerprint().len(), 64);
        assert!(first.cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));

        let second = TlsIdentity::load_or_create(&config).unwrap();
        assert_eq!(first.fingerprint(), second.fingerprint());
    }

    #[test]
    fn fingerprint_is_sha256_of_leaf_der() {
        let dir = tempfile::tempdir().unwrap();
        let config = ServerConfig::for_tests(dir.path());
        let identity = TlsIdentity::load_or_create(&config).unwrap();
        let pem = fs::read(dir.path().join(GENERATED_CERT_FILE)).unwrap();
        let der = CertificateDer::from_pem_slice(&pem).unwrap();
        let expected = hex::encode(ring::digest::digest(&ring::digest::SHA256, &der));
        assert_eq!(identity.fingerprint(), expected);
    }

    #[test]
    fn reload_picks_up_a_new_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let config = ServerConfig::for_tests(dir.path());
        let identity = TlsIdentity::load_or_create(&config).unwrap();
        let before = identity.fingerprint();
        fs::remove_file(dir.path().join(GENERATED_CERT_FILE)).unwrap();
        fs::remove_file(dir.path().join(GENERATED_KEY_FILE)).unwrap();
        generate_self_signed(
            &dir.path().join(GENERATED_CERT_FILE),
            &dir.path().join(GENERATED_KEY_FILE),
            &["example.test".to_string()],
        )
        .unwrap();
        identity.reload().unwrap();
        assert_ne!(identity.fingerprint(), before);
    }

    #[test]
    fn reload_failure_keeps_the_old_identity() {
        let dir = tempfile::tempdir().unwrap();
        let config = ServerConfig::for_tests(dir.path());
        let identity = TlsIdentity::load_or_create(&config).unwrap();
        let before = identity.fingerprint();
        fs::write(dir.path().join(GENERATED_CERT_FILE), "not pem").unwrap();
        assert!(identity.reload().is_err());
        assert_eq!(identity.fingerprint(), before);
    }

    #[test]
    fn half_generated_pair_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(GENERATED_KEY_FILE), "x").unwrap();
        let config = ServerConfig::for_tests(dir.path());
        assert!(matches!(
            TlsIdentity::load_or_create(&config),
            Err(TlsError::HalfGenerated { .. })
        ));
    }

    #[test]
    fn cert_without_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = ServerConfig::for_tests(dir.path());
        config.cert = Some(dir.path().join("c.pem"));
        assert!(matches!(
            TlsIdentity::load_or_create(&config),
            Err(TlsError::IncompletePair)
        ));
    }

    /// Runs an in-memory TLS 1.3 handshake against the server's configuration
    /// with a client offering `offered` (in that order of preference) and
    /// returns the suite the server chose.
    fn negotiated(offered: &[rustls::CipherSuite]) -> rustls::CipherSuite {
        let dir = tempfile::tempdir().unwrap();
        let identity = TlsIdentity::load_or_create(&ServerConfig::for_tests(dir.path())).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(identity.cert_pem().as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let mut provider = rustls::crypto::ring::default_provider();
        provider.cipher_suites = offered
            .iter()
            .map(|want| {
                *rustls::crypto::ring::ALL_CIPHER_SUITES
                    .iter()
                    .find(|s| s.suite() == *want)
                    .unwrap()
            })
            .collect();
        let client_config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut client =
            rustls::ClientConnection::new(Arc::new(client_config), "localhost".try_into().unwrap())
                .unwrap();
        let mut server = rustls::ServerConnection::new(identity.server_config()).unwrap();
        let mut wire = Vec::new();
        for _ in 0..10 {
            if !client.is_handshaking() && !server.is_handshaking() {
                break;
            }
            wire.clear();
            client.write_tls(&mut wire).unwrap();
            server.read_tls(&mut wire.as_slice()).unwrap();
            server.process_new_packets().unwrap();
            wire.clear();
            server.write_tls(&mut wire).unwrap();
            client.read_tls(&mut wire.as_slice()).unwrap();
            client.process_new_packets().unwrap();
        }
        assert!(!client.is_handshaking() && !server.is_handshaking());
        let chosen = server.negotiated_cipher_suite().unwrap().suite();
        assert_eq!(client.negotiated_cipher_suite().unwrap().suite(), chosen);
        chosen
    }

    #[test]
    fn server_prefers_sha256_suites_over_the_clients_order() {
        use rustls::CipherSuite::{
            TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256,
        };
        // rustls' own client order puts AES-256/SHA-384 first.
        let client_default: Vec<_> = rustls::crypto::ring::default_provider()
            .cipher_suites
            .iter()
            .map(|s| s.suite())
            .filter(|s| {
                [
                    TLS13_AES_128_GCM_SHA256,
                    TLS13_AES_256_GCM_SHA384,
                    TLS13_CHACHA20_POLY1305_SHA256,
                ]
                .contains(s)
            })
            .collect();
        assert_eq!(client_default.first(), Some(&TLS13_AES_256_GCM_SHA384));
        assert_eq!(negotiated(&client_default), TLS13_AES_128_GCM_SHA256);
        assert_eq!(
            negotiated(&[TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256]),
            TLS13_CHACHA20_POLY1305_SHA256
        );
        // A client that offers only SHA-384 still gets in.
        assert_eq!(
            negotiated(&[TLS13_AES_256_GCM_SHA384]),
            TLS13_AES_256_GCM_SHA384
        );
    }

    #[test]
    fn default_sans_include_loopback_and_extras() {
        let sans = default_sans(&["chat.example".to_string(), "localhost".to_string()]);
        assert!(sans.contains(&"localhost".to_string()));
        assert!(sans.contains(&"127.0.0.1".to_string()));
        assert!(sans.contains(&"::1".to_string()));
        assert!(sans.contains(&"chat.example".to_string()));
        assert_eq!(sans.iter().filter(|s| *s == "localhost").count(), 1);
    }
}
