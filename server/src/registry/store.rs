//! The durable store of a single node's registry: an embedded redb database.
//!
//! Every change is one write transaction committed with
//! [`Durability::Immediate`] (fsync) before the caller hears "done", so an
//! acknowledged registration survives `kill -9` and a power cut. The operation's
//! precondition is checked inside that same transaction ([`plan`]). The store is
//! read in full once at start-up; logins never touch it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ed25519_dalek::VerifyingKey;
use redb::TableDefinition;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata};
use uuid::Uuid;

use super::backend::{Applied, Backend, BoxFuture, Op, Snapshot, Versioned, plan};
use super::error::RegistryError;

/// UUID bytes → ed25519 public key bytes.
const IDENTITIES: TableDefinition<[u8; 16], [u8; 32]> = TableDefinition::new("identities");
/// SHA-256 of an unused registration token → issue time (Unix seconds).
const TOKENS: TableDefinition<[u8; 32], u64> = TableDefinition::new("registration_tokens");

/// An open registry database (see [`Backend`]). Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct RedbBackend {
    db: Arc<Database>,
    /// Version of the next change. A redb write transaction is exclusive and the
    /// version is taken inside it, so versions increase in commit order.
    version: Arc<AtomicU64>,
}

fn storage(err: impl Into<redb::Error>) -> RegistryError {
    RegistryError::Storage(err.into())
}

impl RedbBackend {
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
        let store = Self {
            db: Arc::new(db),
            version: Arc::new(AtomicU64::new(1)),
        };
        store.create_tables()?;
        let snapshot = store.read_all()?;
        Ok((store, snapshot))
    }

    /// Creates both tables, so later read transactions find them.
    fn create_tables(&self) -> Result<(), RegistryError> {
        let txn = self.db.begin_write().map_err(storage)?;
        txn.open_table(IDENTITIES).map_err(storage)?;
        txn.open_table(TOKENS).map_err(storage)?;
        txn.commit().map_err(storage)
    }

    fn read_all(&self) -> Result<Snapshot, RegistryError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let mut snapshot = Snapshot::default();
        let identities = txn.open_table(IDENTITIES).map_err(storage)?;
        for row in identities.iter().map_err(storage)? {
            let (uuid, key) = row.map_err(storage)?;
            let uuid = Uuid::from_bytes(uuid.value());
            match VerifyingKey::from_bytes(&key.value()) {
                Ok(key) => snapshot.identities.push(Versioned {
                    uuid,
                    key: Some(key),
                    version: 0,
                }),
                // Only keys that parsed were ever written; a bad one means the
                // file was edited. Skip it rather than refuse to start.
                Err(_) => tracing::warn!(%uuid, "skipping unreadable key in registry database"),
            }
        }
        let tokens = txn.open_table(TOKENS).map_err(storage)?;
        snapshot.tokens = usize::try_from(tokens.len().map_err(storage)?).unwrap_or(usize::MAX);
        Ok(snapshot)
    }

    /// Checks and commits `op` in one write transaction; returns once it is on disk.
    fn commit_blocking(&self, op: Op) -> Result<Applied, RegistryError> {
        let mut txn = self.db.begin_write().map_err(storage)?;
        txn.set_durability(Durability::Immediate).map_err(storage)?;
        let plan = {
            let mut identities = txn.open_table(IDENTITIES).map_err(storage)?;
            let mut tokens = txn.open_table(TOKENS).map_err(storage)?;
            let current = match op {
                Op::Register { uuid, .. }
                | Op::Rotate { uuid, .. }
                | Op::Put { uuid, .. }
                | Op::Remove { uuid } => identities
                    .get(uuid.as_bytes())
                    .map_err(storage)?
                    .and_then(|key| VerifyingKey::from_bytes(&key.value()).ok()),
                Op::IssueToken { .. } => None,
            };
            let token = match op {
                Op::Register {
                    token: Some(hash), ..
                } => tokens.get(&hash.0).map_err(storage)?.is_some(),
                _ => false,
            };
            let plan = plan(op, current, |_| token)?;
            if !plan.writes() {
                return Ok(plan.applied(0));
            }
            match plan.identity {
                Some((uuid, Some(key))) => {
                    identities
                        .insert(uuid.as_bytes(), key.as_bytes())
                        .map_err(storage)?;
                }
                Some((uuid, None)) => {
                    identities.remove(uuid.as_bytes()).map_err(storage)?;
                }
                None => {}
            }
            if let Some(hash) = plan.consume {
                tokens.remove(&hash.0).map_err(storage)?;
            }
            if let Some((hash, issued)) = plan.issue {
                tokens.insert(&hash.0, issued).map_err(storage)?;
            }
            plan
        };
        let version = self.version.fetch_add(1, Ordering::Relaxed);
        txn.commit().map_err(storage)?;
        Ok(plan.applied(version))
    }
}

impl Backend for RedbBackend {
    fn apply(&self, op: Op) -> BoxFuture<Result<Applied, RegistryError>> {
        let this = self.clone();
        Box::pin(async move {
            // redb's commit does an fsync: on tokio's blocking pool.
            tokio::task::spawn_blocking(move || this.commit_blocking(op))
                .await
                .map_err(|err| RegistryError::Task(err.to_string()))?
        })
    }

    fn is_durable(&self) -> bool {
        true
    }
}
