//! Identity registry: UUID → ed25519 public key.
//!
//! Clients register a key over the REST API (`api/`) before they can log in
//! (spec: "After registering a UUID & public key…"); admins add, list and remove
//! identities through the admin socket (`admin/`).
//!
//! * The login path reads through [`Registry::lookup`], served from an in-memory
//!   cache: a login never waits on storage.
//! * Every write (registration, rotation, removal, token) is checked and committed
//!   by the storage back-end (`backend::Backend`: the embedded redb file of a
//!   single node, or PostgreSQL shared by the nodes of a cluster) **before** the
//!   caller gets its answer, and only then applied to the cache. A rotation
//!   therefore takes effect for the next login, and an acknowledged write survives
//!   a crash.
//! * Changes carry versions in commit order and the cache keeps the newest per
//!   UUID, so concurrent writes (and, in a cluster, other nodes' changes, which
//!   PostgreSQL notifies) land in the cache in the order they were committed.
//! * A write runs in its own task: it finishes even if its caller stops waiting.
//!   [`Registry::close`] refuses new writes and waits for in-flight ones
//!   (graceful shutdown).

mod backend;
mod error;
#[cfg(feature = "cluster")]
mod postgres;
mod store;
mod token;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use ed25519_dalek::VerifyingKey;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

pub use error::RegistryError;
pub use token::TokenHash;

use backend::{Applied, Backend, MemoryBackend, Op, Outcome, Snapshot, Versioned};
use store::RedbBackend;

/// File name of the registry database inside the data directory.
pub const DATABASE_FILE: &str = "registry.redb";

/// What a registration did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegisterOutcome {
    /// A new identity was stored (HTTP 201).
    Created,
    /// The same key was already registered for this UUID; nothing changed (HTTP 200).
    Unchanged,
}

/// What a rotation or an admin add did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateOutcome {
    /// The UUID had no key and now has one (admin add only).
    Created,
    /// The key was replaced.
    Replaced,
    /// The UUID already had exactly this key.
    Unchanged,
}

/// Shared handle to the identity registry. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

impl Default for Registry {
    fn default() -> Self {
        Self::in_memory()
    }
}

#[derive(Debug)]
struct Inner {
    cache: Arc<Cache>,
    backend: Arc<dyn Backend>,
    /// The back-end of [`Registry::in_memory`], for [`Registry::insert_unchecked`].
    memory: Option<Arc<MemoryBackend>>,
    /// In-flight writes, awaited by [`Registry::close`].
    writes: TaskTracker,
    closed: AtomicBool,
    /// Bounds the storage reads of logins that missed the cache.
    fetches: Arc<tokio::sync::Semaphore>,
}

/// Storage reads for cache misses in flight at once.
const MAX_FETCHES: usize = 32;

/// The login path's view of the stored identities.
#[derive(Debug, Default)]
pub(crate) struct Cache {
    keys: RwLock<CacheMap>,
    /// Unused registration tokens.
    tokens: AtomicI64,
}

#[derive(Debug, Default)]
struct CacheMap {
    /// Newest known state per UUID; `None` keys are removals (kept for their version).
    entries: HashMap<Uuid, (Option<VerifyingKey>, u64)>,
    /// Entries with a key.
    live: usize,
}

impl Cache {
    fn from_snapshot(snapshot: Snapshot) -> Self {
        let cache = Self::default();
        cache.load(snapshot);
        cache
    }

    /// Applies every identity of `snapshot` (newest version wins) and takes its
    /// token count.
    pub(crate) fn load(&self, snapshot: Snapshot) {
        for change in snapshot.identities {
            self.apply(change);
        }
        self.set_tokens(snapshot.tokens);
    }

    /// Applies one committed change unless the cache already has a newer one.
    pub(crate) fn apply(&self, change: Versioned) {
        let mut map = self.keys.write().unwrap_or_else(PoisonError::into_inner);
        let map = &mut *map;
        let before = match map.entries.get(&change.uuid) {
            Some((_, version)) if *version > change.version => return,
            Some((key, _)) => key.is_some(),
            None => false,
        };
        if change.key.is_none() && change.version == 0 {
            // A removal without a version has nothing to order it by: just forget.
            map.entries.remove(&change.uuid);
        } else {
            map.entries
                .insert(change.uuid, (change.key, change.version));
        }
        match (before, change.key.is_some()) {
            (false, true) => map.live += 1,
            (true, false) => map.live = map.live.saturating_sub(1),
            _ => {}
        }
    }

    /// Sets the number of unused tokens.
    pub(crate) fn set_tokens(&self, count: usize) {
        self.tokens
            .store(i64::try_from(count).unwrap_or(i64::MAX), Ordering::Relaxed);
    }

    fn lookup(&self, uuid: &Uuid) -> Option<VerifyingKey> {
        let map = self.keys.read().unwrap_or_else(PoisonError::into_inner);
        map.entries.get(uuid).and_then(|(key, _)| *key)
    }
}

impl Registry {
    /// An empty registry that keeps nothing on disk (tests).
    pub fn in_memory() -> Self {
        let memory = Arc::new(MemoryBackend::default());
        Self::with_backend(Arc::new(Cache::default()), memory.clone(), Some(memory))
    }

    fn with_backend(
        cache: Arc<Cache>,
        backend: Arc<dyn Backend>,
        memory: Option<Arc<MemoryBackend>>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                cache,
                backend,
                memory,
                writes: TaskTracker::new(),
                closed: AtomicBool::new(false),
                fetches: Arc::new(tokio::sync::Semaphore::new(MAX_FETCHES)),
            }),
        }
    }

    /// Opens (or creates) the registry database at `path` and loads it into memory.
    ///
    /// Fails with [`RegistryError::Locked`] if another process has it open.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, RegistryError> {
        let (store, snapshot) = RedbBackend::open(path.as_ref())?;
        Ok(Self::with_backend(
            Arc::new(Cache::from_snapshot(snapshot)),
            Arc::new(store),
            None,
        ))
    }

    /// Opens `<data_dir>/registry.redb` (see [`Registry::open`]).
    pub fn open_in(data_dir: impl AsRef<Path>) -> Result<Self, RegistryError> {
        Self::open(data_dir.as_ref().join(DATABASE_FILE))
    }

    /// Connects to the PostgreSQL registry shared by the nodes of a cluster, creates
    /// its tables if needed, loads every identity into memory and keeps listening for
    /// other nodes' changes (rotations, removals) until `shutdown`.
    #[cfg(feature = "cluster")]
    pub async fn open_postgres(
        config: &crate::config::PostgresConfig,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Result<Self, RegistryError> {
        let cache = Arc::new(Cache::default());
        let backend = postgres::PgBackend::connect(config, Arc::clone(&cache), shutdown).await?;
        Ok(Self::with_backend(cache, Arc::new(backend), None))
    }

    /// The registered key of `uuid`, from memory.
    pub fn lookup(&self, uuid: &Uuid) -> Option<VerifyingKey> {
        self.inner.cache.lookup(uuid)
    }

    /// For a login whose UUID missed the cache: reads it from shared storage (another
    /// node may have registered it a moment ago) and caches what it finds. Returns
    /// the key, if any. Without shared storage this is just [`Registry::lookup`].
    pub async fn refresh(&self, uuid: &Uuid) -> Option<VerifyingKey> {
        if let Some(fetch) = self.inner.backend.fetch(*uuid) {
            match fetch.await {
                Ok(Some(found)) => self.inner.cache.apply(found),
                Ok(None) => {}
                Err(err) => tracing::debug!(%uuid, error = %err, "registry lookup failed"),
            }
        }
        self.lookup(uuid)
    }

    /// Like [`Registry::refresh`], as a future the login path can await, or `None`
    /// when there is no shared storage to read or too many reads are in flight (a
    /// flood of logins for unknown UUIDs does not become a flood of queries).
    pub(crate) fn fetch_missing(&self, uuid: Uuid) -> Option<crate::cluster::BoxFuture<()>> {
        let permit = Arc::clone(&self.inner.fetches).try_acquire_owned().ok()?;
        let fetch = self.inner.backend.fetch(uuid)?;
        let cache = Arc::clone(&self.inner.cache);
        Some(Box::pin(async move {
            let _permit = permit;
            match fetch.await {
                Ok(Some(found)) => cache.apply(found),
                Ok(None) => {}
                Err(err) => tracing::debug!(%uuid, error = %err, "registry lookup failed"),
            }
        }))
    }

    /// Registers or replaces a key without persisting it or checking anything
    /// (tests and benchmarks).
    pub fn insert_unchecked(&self, uuid: Uuid, key: VerifyingKey) {
        if let Some(memory) = &self.inner.memory {
            memory.insert_unchecked(uuid, key);
        }
        let version = {
            let map = self
                .inner
                .cache
                .keys
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            map.entries.get(&uuid).map_or(0, |(_, v)| *v)
        };
        self.inner.cache.apply(Versioned {
            uuid,
            key: Some(key),
            version,
        });
    }

    /// Every identity, sorted by UUID (from memory).
    pub fn list(&self) -> Vec<(Uuid, VerifyingKey)> {
        let map = self
            .inner
            .cache
            .keys
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let mut all: Vec<_> = map
            .entries
            .iter()
            .filter_map(|(uuid, (key, _))| key.map(|key| (*uuid, key)))
            .collect();
        drop(map);
        all.sort_by_key(|(uuid, _)| *uuid);
        all
    }

    /// Number of registered identities.
    pub fn len(&self) -> usize {
        self.inner
            .cache
            .keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .live
    }

    /// Whether no identity is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the registry keeps its data across restarts.
    pub fn is_durable(&self) -> bool {
        self.inner.backend.is_durable()
    }

    /// Whether the storage answered the last time it was used (a cluster's
    /// PostgreSQL may be unreachable; logins keep working from the cache).
    pub fn is_reachable(&self) -> bool {
        self.inner.backend.is_reachable()
    }

    /// Registers `key` for `uuid` (client self-registration).
    ///
    /// The same key again is [`RegisterOutcome::Unchanged`] and consumes no
    /// token; a different key for a taken UUID is
    /// [`RegistryError::AlreadyRegistered`]. With `token`, the token must be
    /// unused; it is consumed in the same transaction as the registration.
    pub async fn register(
        &self,
        uuid: Uuid,
        key: VerifyingKey,
        token: Option<TokenHash>,
    ) -> Result<RegisterOutcome, RegistryError> {
        match self.write(Op::Register { uuid, key, token }).await? {
            Outcome::Registered(outcome) => Ok(outcome),
            other => Err(unexpected(other)),
        }
    }

    /// Replaces the key of `uuid` with `new`, provided the current key is still
    /// `old` (the key the caller verified the rotation signature with).
    pub async fn rotate(
        &self,
        uuid: Uuid,
        old: VerifyingKey,
        new: VerifyingKey,
    ) -> Result<UpdateOutcome, RegistryError> {
        match self.write(Op::Rotate { uuid, old, new }).await? {
            Outcome::Updated(outcome) => Ok(outcome),
            other => Err(unexpected(other)),
        }
    }

    /// Sets the key of `uuid`, whatever it was (admin).
    pub async fn put(&self, uuid: Uuid, key: VerifyingKey) -> Result<UpdateOutcome, RegistryError> {
        match self.write(Op::Put { uuid, key }).await? {
            Outcome::Updated(outcome) => Ok(outcome),
            other => Err(unexpected(other)),
        }
    }

    /// Forgets `uuid`. Returns whether it was registered.
    pub async fn remove(&self, uuid: Uuid) -> Result<bool, RegistryError> {
        match self.write(Op::Remove { uuid }).await? {
            Outcome::Removed(removed) => Ok(removed),
            other => Err(unexpected(other)),
        }
    }

    /// Issues a single-use registration token and returns its text (shown once).
    pub async fn issue_token(&self) -> Result<String, RegistryError> {
        let (text, hash) =
            token::generate().map_err(|_| RegistryError::Task("no system randomness".into()))?;
        let issued = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        match self.write(Op::IssueToken { hash, issued }).await? {
            Outcome::TokenIssued => Ok(text),
            other => Err(unexpected(other)),
        }
    }

    /// Number of issued, unused registration tokens.
    pub fn unused_tokens(&self) -> usize {
        usize::try_from(self.inner.cache.tokens.load(Ordering::Relaxed)).unwrap_or(0)
    }

    /// Refuses new writes and waits until in-flight writes are committed.
    pub async fn close(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        self.inner.writes.close();
        self.inner.writes.wait().await;
        self.inner.backend.close().await;
    }

    /// Commits `op` in its own task, then applies it to the cache.
    async fn write(&self, op: Op) -> Result<Outcome, RegistryError> {
        // Take the tracker token before checking `closed`: either we see the
        // flag, or `close()` waits for us.
        let guard = self.inner.writes.token();
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(RegistryError::ShuttingDown);
        }
        let inner = Arc::clone(&self.inner);
        // The write finishes even if the caller stops waiting (client hung up): an
        // acknowledged-to-storage change always reaches the cache.
        let task = tokio::spawn(async move {
            let _guard = guard;
            let applied: Applied = inner.backend.apply(op).await?;
            if let Some(change) = applied.change {
                inner.cache.apply(change);
            }
            if applied.tokens_delta != 0 {
                inner
                    .cache
                    .tokens
                    .fetch_add(applied.tokens_delta, Ordering::Relaxed);
            }
            Ok(applied.outcome)
        });
        task.await
            .map_err(|err| RegistryError::Task(err.to_string()))?
    }
}

/// A back-end answered an operation with another operation's outcome (a bug).
fn unexpected(outcome: Outcome) -> RegistryError {
    RegistryError::Task(format!("storage answered with {outcome:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;

    fn key(seed: u8) -> VerifyingKey {
        SigningKey::from_bytes(&[seed; 32]).verifying_key()
    }

    #[tokio::test]
    async fn register_same_key_is_unchanged_and_other_key_refused() {
        let reg = Registry::in_memory();
        let id = Uuid::new_v4();
        assert_eq!(
            reg.register(id, key(1), None).await.unwrap(),
            RegisterOutcome::Created
        );
        assert_eq!(
            reg.register(id, key(1), None).await.unwrap(),
            RegisterOutcome::Unchanged
        );
        assert!(matches!(
            reg.register(id, key(2), None).await,
            Err(RegistryError::AlreadyRegistered(u)) if u == id
        ));
        assert_eq!(reg.lookup(&id), Some(key(1)));
    }

    #[tokio::test]
    async fn rotate_checks_the_old_key() {
        let reg = Registry::in_memory();
        let id = Uuid::new_v4();
        assert!(matches!(
            reg.rotate(id, key(1), key(2)).await,
            Err(RegistryError::DoesNotExist(_))
        ));
        reg.register(id, key(1), None).await.unwrap();
        assert!(matches!(
            reg.rotate(id, key(3), key(2)).await,
            Err(RegistryError::KeyChanged(_))
        ));
        assert_eq!(
            reg.rotate(id, key(1), key(2)).await.unwrap(),
            UpdateOutcome::Replaced
        );
        assert_eq!(reg.lookup(&id), Some(key(2)));
    }

    #[tokio::test]
    async fn tokens_are_single_use() {
        let reg = Registry::in_memory();
        let text = reg.issue_token().await.unwrap();
        let hash = TokenHash::of(&text);
        assert!(matches!(
            reg.register(Uuid::new_v4(), key(1), Some(TokenHash::of("nope")))
                .await,
            Err(RegistryError::InvalidToken)
        ));
        reg.register(Uuid::new_v4(), key(1), Some(hash))
            .await
            .unwrap();
        assert!(matches!(
            reg.register(Uuid::new_v4(), key(2), Some(hash)).await,
            Err(RegistryError::InvalidToken)
        ));
        assert_eq!(reg.unused_tokens(), 0);
    }

    #[tokio::test]
    async fn everything_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let token;
        {
            let reg = Registry::open_in(dir.path()).unwrap();
            reg.register(a, key(1), None).await.unwrap();
            reg.register(b, key(2), None).await.unwrap();
            reg.rotate(b, key(2), key(3)).await.unwrap();
            assert_eq!(reg.put(c, key(4)).await.unwrap(), UpdateOutcome::Created);
            assert!(reg.remove(c).await.unwrap());
            assert!(!reg.remove(c).await.unwrap());
            token = reg.issue_token().await.unwrap();
            reg.close().await;
            assert!(matches!(
                reg.remove(a).await,
                Err(RegistryError::ShuttingDown)
            ));
        }
        let reg = Registry::open_in(dir.path()).unwrap();
        assert_eq!(reg.lookup(&a), Some(key(1)));
        assert_eq!(reg.lookup(&b), Some(key(3)));
        assert_eq!(reg.lookup(&c), None);
        assert_eq!(reg.len(), 2);
        assert_eq!(reg.unused_tokens(), 1);
        reg.register(Uuid::new_v4(), key(5), Some(TokenHash::of(&token)))
            .await
            .unwrap();
        assert_eq!(reg.unused_tokens(), 0);
    }

    #[tokio::test]
    async fn second_open_is_locked() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Registry::open_in(dir.path()).unwrap();
        assert!(matches!(
            Registry::open_in(dir.path()),
            Err(RegistryError::Locked { .. })
        ));
    }
}
