//! The client's identity: a UUID plus an ed25519 signing key.
//!
//! The UUID names the client at the Connect server and in other people's
//! address books; the key proves it. The registry (REST API) stores the public
//! half, the Connect login signs with the private half, and peer links present
//! the same key as an RFC 7250 raw public key.
//!
//! On disk (inside the home directory) the key is a PKCS#8 PEM file readable by
//! the owner only (mode 0600) and the UUID is a one-line text file. Files are
//! written to a temporary name and renamed into place, so a crash never leaves
//! half a key behind.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use uuid::Uuid;

/// What can go wrong loading or saving an identity.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// Reading or writing an identity file failed.
    #[error("cannot access {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The home directory has no identity yet.
    #[error("no identity in {home}; run `chatr init --server HOST` first")]
    NotInitialized {
        /// The home directory that was searched.
        home: PathBuf,
    },
    /// The key file is not a valid ed25519 PKCS#8 PEM document.
    #[error("{path} is not an ed25519 PKCS#8 PEM private key: {reason}")]
    BadKey {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        reason: String,
    },
    /// The UUID file does not hold a UUID.
    #[error("{path} does not contain a UUID")]
    BadUuid {
        /// The file.
        path: PathBuf,
    },
    /// Encoding the key as PEM failed (should not happen).
    #[error("cannot encode the private key as PEM: {0}")]
    Encode(String),
}

/// A UUID and its ed25519 signing key.
#[derive(Clone)]
pub struct Identity {
    uuid: Uuid,
    key: SigningKey,
}

impl std::fmt::Debug for Identity {
    // Never print the private key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("uuid", &self.uuid)
            .field("public_key", &self.public_key_base64())
            .finish()
    }
}

/// File name of the private key inside the home directory.
pub const KEY_FILE: &str = "identity.pem";
/// File name of the UUID inside the home directory.
pub const UUID_FILE: &str = "uuid";
/// File name of a rotated key that the registry has not yet confirmed.
pub const PENDING_KEY_FILE: &str = "identity.next.pem";

impl Identity {
    /// A fresh random UUID (v4) and key.
    pub fn generate() -> Self {
        Self {
            uuid: Uuid::new_v4(),
            key: generate_key(),
        }
    }

    /// An identity from parts (tests, embedding programs with their own storage).
    pub fn from_parts(uuid: Uuid, key: SigningKey) -> Self {
        Self { uuid, key }
    }

    /// The client id.
    pub fn uuid(&self) -> Uuid {
        self.uuid
    }

    /// The private key.
    pub fn signing_key(&self) -> &SigningKey {
        &self.key
    }

    /// The public key.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// The public key as standard base64 (what the registry and `whoami` show).
    pub fn public_key_base64(&self) -> String {
        B64.encode(self.verifying_key().as_bytes())
    }

    /// Signs `message` with the private key.
    pub fn sign(&self, message: &[u8]) -> Signature {
        self.key.sign(message)
    }

    /// The same UUID with another key (key rotation).
    pub fn with_key(&self, key: SigningKey) -> Self {
        Self {
            uuid: self.uuid,
            key,
        }
    }

    /// Whether `dir` holds an identity.
    pub fn exists(dir: &Path) -> bool {
        dir.join(KEY_FILE).exists() || dir.join(UUID_FILE).exists()
    }

    /// Loads the identity kept in `dir`.
    pub fn load(dir: &Path) -> Result<Self, IdentityError> {
        let key_path = dir.join(KEY_FILE);
        let uuid_path = dir.join(UUID_FILE);
        if !key_path.exists() || !uuid_path.exists() {
            return Err(IdentityError::NotInitialized {
                home: dir.to_path_buf(),
            });
        }
        let key = read_key(&key_path)?;
        let text = fs::read_to_string(&uuid_path).map_err(|source| IdentityError::Io {
            path: uuid_path.clone(),
            source,
        })?;
        let uuid =
            Uuid::parse_str(text.trim()).map_err(|_| IdentityError::BadUuid { path: uuid_path })?;
        Ok(Self { uuid, key })
    }

    /// Saves the identity into `dir` (key 0600, UUID file), replacing any present.
    pub fn save(&self, dir: &Path) -> Result<(), IdentityError> {
        write_key(&dir.join(KEY_FILE), &self.key)?;
        write_private(&dir.join(UUID_FILE), format!("{}\n", self.uuid).as_bytes())
    }
}

/// A new random ed25519 signing key from the OS-seeded thread RNG.
pub fn generate_key() -> SigningKey {
    let mut secret = [0u8; 32];
    rand::fill(&mut secret[..]);
    SigningKey::from_bytes(&secret)
}

/// Reads a PKCS#8 PEM ed25519 key.
pub fn read_key(path: &Path) -> Result<SigningKey, IdentityError> {
    let pem = fs::read_to_string(path).map_err(|source| IdentityError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    SigningKey::from_pkcs8_pem(&pem).map_err(|e| IdentityError::BadKey {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Writes a key as PKCS#8 PEM with mode 0600 (atomically).
pub fn write_key(path: &Path, key: &SigningKey) -> Result<(), IdentityError> {
    let pem = key
        .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
        .map_err(|e| IdentityError::Encode(e.to_string()))?;
    write_private(path, pem.as_bytes())
}

/// Parses a standard-base64 ed25519 public key.
pub fn parse_public_key(b64: &str) -> Option<VerifyingKey> {
    let bytes = B64.decode(b64.trim()).ok()?;
    let arr: [u8; 32] = bytes.as_slice().try_into().ok()?;
    VerifyingKey::from_bytes(&arr).ok()
}

/// Encodes a public key as standard base64.
pub fn public_key_base64(key: &VerifyingKey) -> String {
    B64.encode(key.as_bytes())
}

/// Writes `data` to `path` readable by the owner only: temp file + fsync + rename.
pub(crate) fn write_private(path: &Path, data: &[u8]) -> Result<(), IdentityError> {
    let io_err = |source| IdentityError::Io {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp).map_err(io_err)?;
    // `mode` only applies when the file is created; a stale temp file keeps its
    // old mode, so set it explicitly.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(io_err)?;
    }
    file.write_all(data).map_err(io_err)?;
    file.sync_all().map_err(io_err)?;
    drop(file);
    fs::rename(&tmp, path).map_err(io_err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::Verifier;

    #[test]
    fn save_load_roundtrip_with_private_mode() {
        let dir = tempfile::tempdir().unwrap();
        let id = Identity::generate();
        id.save(dir.path()).unwrap();
        let back = Identity::load(dir.path()).unwrap();
        assert_eq!(back.uuid(), id.uuid());
        assert_eq!(back.verifying_key(), id.verifying_key());
        let pem = fs::read_to_string(dir.path().join(KEY_FILE)).unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"), "{pem}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.path().join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let sig = back.sign(b"hello");
        id.verifying_key().verify(b"hello", &sig).unwrap();
    }

    #[test]
    fn missing_identity_is_not_initialized() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            Identity::load(dir.path()),
            Err(IdentityError::NotInitialized { .. })
        ));
    }

    #[test]
    fn garbage_key_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        Identity::generate().save(dir.path()).unwrap();
        fs::write(dir.path().join(KEY_FILE), "not a key").unwrap();
        assert!(matches!(
            Identity::load(dir.path()),
            Err(IdentityError::BadKey { .. })
        ));
    }

    #[test]
    fn public_key_base64_roundtrip() {
        let id = Identity::generate();
        let parsed = parse_public_key(&id.public_key_base64()).unwrap();
        assert_eq!(parsed, id.verifying_key());
        assert!(parse_public_key("AAAA").is_none());
        assert!(parse_public_key("!!").is_none());
    }

    #[test]
    fn keys_differ() {
        assert_ne!(generate_key().to_bytes(), generate_key().to_bytes());
    }
}
