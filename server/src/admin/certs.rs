//! `chatr-server cert …`: a development CA and server certificates signed by it.
//!
//! The default self-signed certificate is pinned by fingerprint. A small
//! private CA is the next step up: install `ca.pem` on clients once
//! (`chatr init --server-cert ca.pem`) and re-issue server certificates
//! freely. For the public internet, use a real CA such as Let's Encrypt and
//! pass its files with `--cert`/`--key` (see `certs/README.md`).
//!
//! rcgen is built without its X.509 parser, so an existing CA certificate is
//! not parsed: the issuer is rebuilt from the CA key and its name (the
//! `--ca-name` given to `cert ca`), and every issued chain is verified against
//! `ca.pem` with webpki before it is written, so a mismatch cannot go unnoticed.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::client::danger::ServerCertVerifier as _;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::tls::{create_file_with, fingerprint};

/// File names written by [`create_ca`].
pub const CA_CERT_FILE: &str = "ca.pem";
/// See [`CA_CERT_FILE`].
pub const CA_KEY_FILE: &str = "ca-key.pem";
/// File names written by [`issue_server`].
pub const SERVER_CERT_FILE: &str = "cert.pem";
/// See [`SERVER_CERT_FILE`].
pub const SERVER_KEY_FILE: &str = "key.pem";

/// Why a certificate could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// An output file exists already.
    #[error("{0} already exists; remove it or choose another --out directory")]
    Exists(PathBuf),
    /// A PEM file could not be parsed.
    #[error("{path} is not a usable PEM file: {message}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// rcgen refused.
    #[error("cannot create the certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// The issued certificate does not chain to the CA certificate.
    #[error(
        "the issued certificate does not verify against {ca}: {message}. Does --ca-name match the \
         --name given to `cert ca`, and does --ca-key belong to --ca-cert?"
    )]
    Verify {
        /// The CA file.
        ca: PathBuf,
        /// The verifier's complaint.
        message: String,
    },
}

/// Files written by a command, and the fingerprint to show.
#[derive(Debug, Clone)]
pub struct Issued {
    /// Certificate file (PEM).
    pub cert: PathBuf,
    /// Private key file (PEM, mode 0600).
    pub key: PathBuf,
    /// Hex SHA-256 of the certificate's DER.
    pub fingerprint: String,
}

fn validity(params: &mut CertificateParams, days: u32) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    // Backdate an hour to tolerate clock skew between server and clients.
    params.not_before = epoch + now.saturating_sub(Duration::from_secs(3600));
    params.not_after = epoch + now + Duration::from_secs(u64::from(days) * 86_400);
}

fn ca_params(name: &str, days: u32) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, days);
    params
}

/// Creates a CA: `<out>/ca.pem` and `<out>/ca-key.pem`.
pub fn create_ca(out: &Path, name: &str, days: u32) -> Result<Issued, CertError> {
    let cert_path = out.join(CA_CERT_FILE);
    let key_path = out.join(CA_KEY_FILE);
    refuse_existing(&[&cert_path, &key_path])?;
    let key = KeyPair::generate()?;
    let cert = ca_params(name, days).self_signed(&key)?;
    create_dir(out)?;
    write_new(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_new(&cert_path, cert.pem().as_bytes(), 0o644)?;
    Ok(Issued {
        cert: cert_path,
        key: key_path,
        fingerprint: fingerprint(cert.der()),
    })
}

/// Issues a server certificate for `sans`, signed by the CA in
/// `ca_cert`/`ca_key` named `ca_name`: `<out>/cert.pem` (leaf then CA) and
/// `<out>/key.pem`.
pub fn issue_server(
    ca_cert: &Path,
    ca_key: &Path,
    ca_name: &str,
    out: &Path,
    sans: &[String],
    days: u32,
) -> Result<Issued, CertError> {
    let cert_path = out.join(SERVER_CERT_FILE);
    let key_path = out.join(SERVER_KEY_FILE);
    refuse_existing(&[&cert_path, &key_path])?;
    let ca_pem = read(ca_cert)?;
    let ca_der = CertificateDer::from_pem_slice(ca_pem.as_bytes()).map_err(|e| CertError::Pem {
        path: ca_cert.to_path_buf(),
        message: e.to_string(),
    })?;
    let ca_key_pair = KeyPair::from_pem(&read(ca_key)?).map_err(|e| CertError::Pem {
        path: ca_key.to_path_buf(),
        message: e.to_string(),
    })?;
    let issuer = Issuer::new(ca_params(ca_name, 1), ca_key_pair);

    let mut params = CertificateParams::new(sans.to_vec())?;
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        sans.first().map_or("chatr-server", String::as_str),
    );
    params.distinguished_name = dn;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, days);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;

    verify_chain(ca_cert, &ca_der, cert.der(), sans)?;

    create_dir(out)?;
    write_new(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    let chain = format!("{}{}", cert.pem(), ca_pem.trim_start());
    write_new(&cert_path, chain.as_bytes(), 0o644)?;
    Ok(Issued {
        cert: cert_path,
        key: key_path,
        fingerprint: fingerprint(cert.der()),
    })
}

/// SHA-256 fingerprint (hex) of the first certificate in a PEM file.
pub fn fingerprint_file(path: &Path) -> Result<String, CertError> {
    let pem = read(path)?;
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| CertError::Pem {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    Ok(fingerprint(&der))
}

/// Checks, as a client would, that `leaf` chains to `ca_der` for every SAN.
fn verify_chain(
    ca_path: &Path,
    ca_der: &CertificateDer<'_>,
    leaf: &CertificateDer<'_>,
    sans: &[String],
) -> Result<(), CertError> {
    let fail = |message: String| CertError::Verify {
        ca: ca_path.to_path_buf(),
        message,
    };
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(ca_der.clone().into_owned())
        .map_err(|e| fail(e.to_string()))?;
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .map_err(|e| fail(e.to_string()))?;
    for san in sans {
        let name = match san.parse::<IpAddr>() {
            Ok(ip) => ServerName::IpAddress(ip.into()),
            Err(_) => ServerName::try_from(san.clone()).map_err(|e| fail(e.to_string()))?,
        };
        verifier
            .verify_server_cert(leaf, &[], &name, &[], UnixTime::now())
            .map_err(|e| fail(format!("{san}: {e}")))?;
    }
    Ok(())
}

fn refuse_existing(paths: &[&Path]) -> Result<(), CertError> {
    match paths.iter().find(|p| p.exists()) {
        Some(p) => Err(CertError::Exists(p.to_path_buf())),
        None => Ok(()),
    }
}

fn create_dir(dir: &Path) -> Result<(), CertError> {
    std::fs::create_dir_all(dir).map_err(|source| CertError::Io {
        path: dir.to_path_buf(),
        source,
    })
}

fn read(path: &Path) -> Result<String, CertError> {
    std::fs::read_to_string(path).map_err(|source| CertError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CertError> {
    create_file_with(path, bytes, mode).map_err(|source| CertError::Io {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::TlsIdentity;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn ca_then_server_cert_load_and_verify() {
        let dir = tempfile::tempdir().unwrap();
        let ca = create_ca(dir.path(), "Test CA", 30).unwrap();
        let mode = std::fs::metadata(&ca.key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let out = dir.path().join("server");
        let sans = vec!["chat.example.test".to_owned(), "127.0.0.1".to_owned()];
        let server = issue_server(&ca.cert, &ca.key, "Test CA", &out, &sans, 30).unwrap();
        // The chain holds leaf + CA, and the server can load the pair.
        let chain = std::fs::read_to_string(&server.cert).unwrap();
        assert_eq!(chain.matches("BEGIN CERTIFICATE").count(), 2);
        let identity = TlsIdentity::from_files(&server.cert, &server.key).unwrap();
        assert_eq!(identity.fingerprint(), server.fingerprint);
        assert_eq!(fingerprint_file(&server.cert).unwrap(), server.fingerprint);
        // Issuing again into the same directory is refused.
        assert!(matches!(
            issue_server(&ca.cert, &ca.key, "Test CA", &out, &sans, 30),
            Err(CertError::Exists(_))
        ));
    }

    #[test]
    fn wrong_ca_name_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let ca = create_ca(dir.path(), "Real CA", 30).unwrap();
        let err = issue_server(
            &ca.cert,
            &ca.key,
            "Other CA",
            &dir.path().join("s"),
            &["localhost".to_owned()],
            30,
        )
        .unwrap_err();
        assert!(matches!(err, CertError::Verify { .. }), "{err}");
        assert!(!dir.path().join("s").join(SERVER_CERT_FILE).exists());
    }
}
