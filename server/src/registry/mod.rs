//! Identity registry: UUID → ed25519 public key.
//!
//! Clients register a key over the REST API (`api/`) before they can log in
//! (spec: "After registering a UUID & public key…"); admins add, list and remove
//! identities through the admin socket (`admin/`).
//!
//! * The login path reads through [`Registry::lookup`], served from an in-memory
//!   map: a login never waits on disk.
//! * Every write (registration, rotation, removal, token) is committed to the
//!   redb database with immediate durability **before** the caller gets its
//!   answer, and only then applied to the in-memory map. A rotation therefore
//!   takes effect for the next login, and an acknowledged write survives a crash.
//! * Writes run on tokio's blocking pool (redb's commit does an fsync) and are
//!   serialized by one lock, so the map always equals what is on disk.
//!   [`Registry::close`] refuses new writes and waits for in-flight ones
//!   (graceful shutdown).

mod error;
mod store;
mod token;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use ed25519_dalek::VerifyingKey;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

pub use error::RegistryError;
pub use token::TokenHash;

use store::{Change, Store};

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
#[derive(Debug, Clone, Default)]
pub struct Registry {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// The login path's view; equal to the database whenever `write_lock` is free.
    keys: RwLock<HashMap<Uuid, VerifyingKey>>,
    /// Unused registration tokens (hashes), mirrored like `keys`.
    tokens: Mutex<HashSet<TokenHash>>,
    /// `None` for [`Registry::in_memory`].
    store: Option<Store>,
    /// Serializes writes so that "check, commit, update memory" is atomic.
    write_lock: Mutex<()>,
    /// In-flight writes, awaited by [`Registry::close`].
    writes: TaskTracker,
    closed: AtomicBool,
}

impl Registry {
    /// An empty registry that keeps nothing on disk (tests).
    pub fn in_memory() -> Self {
        Self::default()
    }

    /// Opens (or creates) the registry database at `path` and loads it into memory.
    ///
    /// Fails with [`RegistryError::Locked`] if another process has it open.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, RegistryError> {
        let (store, snapshot) = Store::open(path.as_ref())?;
        let keys = snapshot.identities.into_iter().collect();
        let tokens = snapshot.tokens.into_iter().collect();
        Ok(Self {
            inner: Arc::new(Inner {
                keys: RwLock::new(keys),
                tokens: Mutex::new(tokens),
                store: Some(store),
                ..Inner::default()
            }),
        })
    }

    /// Opens `<data_dir>/registry.redb` (see [`Registry::open`]).
    pub fn open_in(data_dir: impl AsRef<Path>) -> Result<Self, RegistryError> {
        Self::open(data_dir.as_ref().join(DATABASE_FILE))
    }

    /// The registered key of `uuid`, from memory.
    pub fn lookup(&self, uuid: &Uuid) -> Option<VerifyingKey> {
        self.inner
            .keys
            .read()
            .ok()
            .and_then(|map| map.get(uuid).copied())
    }

    /// Registers or replaces a key in memory only, without persisting it or
    /// checking anything (tests).
    pub fn insert_unchecked(&self, uuid: Uuid, key: VerifyingKey) {
        let _serial = self.inner.lock_writes();
        self.inner.keys_mut().insert(uuid, key);
    }

    /// Every identity, sorted by UUID (from memory).
    pub fn list(&self) -> Vec<(Uuid, VerifyingKey)> {
        let mut all: Vec<_> = match self.inner.keys.read() {
            Ok(map) => map.iter().map(|(u, k)| (*u, *k)).collect(),
            Err(poisoned) => poisoned
                .into_inner()
                .iter()
                .map(|(u, k)| (*u, *k))
                .collect(),
        };
        all.sort_by_key(|(uuid, _)| *uuid);
        all
    }

    /// Number of registered identities.
    pub fn len(&self) -> usize {
        self.inner.keys.read().map(|m| m.len()).unwrap_or(0)
    }

    /// Whether no identity is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the registry keeps its data on disk.
    pub fn is_durable(&self) -> bool {
        self.inner.store.is_some()
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
        self.write(move |inner| {
            match inner.current(&uuid) {
                Some(existing) if existing == key => return Ok(RegisterOutcome::Unchanged),
                Some(_) => return Err(RegistryError::AlreadyRegistered(uuid)),
                None => {}
            }
            let mut changes = vec![Change::PutIdentity(uuid, key)];
            if let Some(hash) = token {
                if !inner.tokens_mut().contains(&hash) {
                    return Err(RegistryError::InvalidToken);
                }
                changes.push(Change::RemoveToken(hash));
            }
            inner.persist(&changes)?;
            if let Some(hash) = token {
                inner.tokens_mut().remove(&hash);
            }
            inner.keys_mut().insert(uuid, key);
            Ok(RegisterOutcome::Created)
        })
        .await
    }

    /// Replaces the key of `uuid` with `new`, provided the current key is still
    /// `old` (the key the caller verified the rotation signature with).
    pub async fn rotate(
        &self,
        uuid: Uuid,
        old: VerifyingKey,
        new: VerifyingKey,
    ) -> Result<UpdateOutcome, RegistryError> {
        self.write(move |inner| {
            match inner.current(&uuid) {
                None => return Err(RegistryError::DoesNotExist(uuid)),
                Some(current) if current != old => return Err(RegistryError::KeyChanged(uuid)),
                Some(_) if old == new => return Ok(UpdateOutcome::Unchanged),
                Some(_) => {}
            }
            inner.persist(&[Change::PutIdentity(uuid, new)])?;
            inner.keys_mut().insert(uuid, new);
            Ok(UpdateOutcome::Replaced)
        })
        .await
    }

    /// Sets the key of `uuid`, whatever it was (admin).
    pub async fn put(&self, uuid: Uuid, key: VerifyingKey) -> Result<UpdateOutcome, RegistryError> {
        self.write(move |inner| {
            let outcome = match inner.current(&uuid) {
                Some(current) if current == key => return Ok(UpdateOutcome::Unchanged),
                Some(_) => UpdateOutcome::Replaced,
                None => UpdateOutcome::Created,
            };
            inner.persist(&[Change::PutIdentity(uuid, key)])?;
            inner.keys_mut().insert(uuid, key);
            Ok(outcome)
        })
        .await
    }

    /// Forgets `uuid`. Returns whether it was registered.
    pub async fn remove(&self, uuid: Uuid) -> Result<bool, RegistryError> {
        self.write(move |inner| {
            if inner.current(&uuid).is_none() {
                return Ok(false);
            }
            inner.persist(&[Change::RemoveIdentity(uuid)])?;
            inner.keys_mut().remove(&uuid);
            Ok(true)
        })
        .await
    }

    /// Issues a single-use registration token and returns its text (shown once).
    pub async fn issue_token(&self) -> Result<String, RegistryError> {
        self.write(move |inner| {
            let (text, hash) = token::generate()
                .map_err(|_| RegistryError::Task("no system randomness".into()))?;
            let issued = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            inner.persist(&[Change::PutToken(hash, issued)])?;
            inner.tokens_mut().insert(hash);
            Ok(text)
        })
        .await
    }

    /// Number of issued, unused registration tokens.
    pub fn unused_tokens(&self) -> usize {
        self.inner.tokens_mut().len()
    }

    /// Refuses new writes and waits until in-flight writes are on disk.
    pub async fn close(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        self.inner.writes.close();
        self.inner.writes.wait().await;
    }

    /// Runs one write on the blocking pool, serialized with all other writes.
    async fn write<T, F>(&self, op: F) -> Result<T, RegistryError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T, RegistryError> + Send + 'static,
    {
        // Take the tracker token before checking `closed`: either we see the
        // flag, or `close()` waits for us.
        let guard = self.inner.writes.token();
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(RegistryError::ShuttingDown);
        }
        let inner = Arc::clone(&self.inner);
        // The write finishes even if the caller stops waiting (client hung up):
        // it never leaves memory and disk disagreeing.
        let task = tokio::task::spawn_blocking(move || {
            let _guard = guard;
            let _serial = inner.lock_writes();
            op(&inner)
        });
        task.await
            .map_err(|err| RegistryError::Task(err.to_string()))?
    }
}

impl Inner {
    fn lock_writes(&self) -> std::sync::MutexGuard<'_, ()> {
        self.write_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn keys_mut(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<Uuid, VerifyingKey>> {
        self.keys.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn tokens_mut(&self) -> std::sync::MutexGuard<'_, HashSet<TokenHash>> {
        self.tokens.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn current(&self, uuid: &Uuid) -> Option<VerifyingKey> {
        match self.keys.read() {
            Ok(map) => map.get(uuid).copied(),
            Err(poisoned) => poisoned.into_inner().get(uuid).copied(),
        }
    }

    fn persist(&self, changes: &[Change]) -> Result<(), RegistryError> {
        match &self.store {
            Some(store) => store.commit(changes),
            None => Ok(()),
        }
    }
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
