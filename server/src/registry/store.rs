//! The durable half of the registry: an embedded redb database.
//!
//! Every change is one write transaction committed with
//! [`Durability::Immediate`] (fsync) before the caller hears "done", so an
//! acknowledged registration survives `kill -9` and a power cut. The store is
//! only written from the registry's serialized write path and read in full
//! once at start-up; logins never touch it.

use std::path::{Path, PathBuf};

use ed25519_dalek::VerifyingKey;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use uuid::Uuid;

use super::error::RegistryError;
use super::token::TokenHash;

/// UUID bytes → ed25519 public key bytes.
const IDENTITIES: TableDefinition<[u8; 16], [u8; 32]> = TableDefinition::new("identities");
/// SHA-256 of an unused registration token → issue time (Unix seconds).
const TOKENS: TableDefinition<[u8; 32], u64> = TableDefinition::new("registration_tokens");

/// One change to persist; a batch of them commits atomically.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Change {
    /// Set the key of a UUID (register, rotate, admin add).
    PutIdentity(Uuid, VerifyingKey),
    /// Forget a UUID.
    RemoveIdentity(Uuid),
    /// Remember an unused token.
    PutToken(TokenHash, u64),
    /// Consume a token.
    RemoveToken(TokenHash),
}

/// What the database held at start-up.
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    pub(crate) identities: Vec<(Uuid, VerifyingKey)>,
    pub(crate) tokens: Vec<TokenHash>,
}

/// An open registry database.
#[derive(Debug)]
pub(crate) struct Store {
    db: Database,
}

fn storage(err: impl Into<redb::Error>) -> RegistryError {
    RegistryError::Storage(err.into())
}

impl Store {
    /// Opens (or creates) the database at `path` and reads everything in it.
    pub(crate) fn open(path: &Path) -> Result<(Self, Snapshot), RegistryError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| RegistryError::Io {
                path: dir.display().to_string(),
                source,
            })?;
        }
        let db = Database::create(path).map_err(|err| match err {
            redb::DatabaseError::DatabaseAlreadyOpen => RegistryError::Locked {
                path: PathBuf::from(path).display().to_string(),
            },
            other => storage(other),
        })?;
        let store = Self { db };
        // Create both tables so later read transactions find them.
        store.commit(&[])?;
        let snapshot = store.read_all()?;
        Ok((store, snapshot))
    }

    fn read_all(&self) -> Result<Snapshot, RegistryError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let mut snapshot = Snapshot::default();
        let identities = txn.open_table(IDENTITIES).map_err(storage)?;
        for row in identities.iter().map_err(storage)? {
            let (uuid, key) = row.map_err(storage)?;
            let uuid = Uuid::from_bytes(uuid.value());
            match VerifyingKey::from_bytes(&key.value()) {
                Ok(key) => snapshot.identities.push((uuid, key)),
                // Only keys that parsed were ever written; a bad one means the
                // file was edited. Skip it rather than refuse to start.
                Err(_) => tracing::warn!(%uuid, "skipping unreadable key in registry database"),
            }
        }
        let tokens = txn.open_table(TOKENS).map_err(storage)?;
        for row in tokens.iter().map_err(storage)? {
            let (hash, _issued) = row.map_err(storage)?;
            snapshot.tokens.push(TokenHash(hash.value()));
        }
        Ok(snapshot)
    }

    /// Applies `changes` in one transaction and returns once it is on disk.
    pub(crate) fn commit(&self, changes: &[Change]) -> Result<(), RegistryError> {
        let mut txn = self.db.begin_write().map_err(storage)?;
        txn.set_durability(Durability::Immediate).map_err(storage)?;
        {
            let mut identities = txn.open_table(IDENTITIES).map_err(storage)?;
            let mut tokens = txn.open_table(TOKENS).map_err(storage)?;
            for change in changes {
                match change {
                    Change::PutIdentity(uuid, key) => {
                        identities
                            .insert(uuid.as_bytes(), key.as_bytes())
                            .map_err(storage)?;
                    }
                    Change::RemoveIdentity(uuid) => {
                        identities.remove(uuid.as_bytes()).map_err(storage)?;
                    }
                    Change::PutToken(hash, issued) => {
                        tokens.insert(&hash.0, issued).map_err(storage)?;
                    }
                    Change::RemoveToken(hash) => {
                        tokens.remove(&hash.0).map_err(storage)?;
                    }
                }
            }
        }
        txn.commit().map_err(storage)
    }
}
