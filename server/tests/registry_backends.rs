//! One test suite for every registry back-end: the redb file of a single node, and
//! (feature `cluster`) PostgreSQL, started here on loopback. The same rules must
//! hold for both: preconditions checked in storage, tokens single-use, concurrent
//! writers with exactly one winner, everything acknowledged still there after a
//! reopen.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[cfg(feature = "cluster")]
mod cluster_support;

use chatr_server::registry::{RegisterOutcome, Registry, RegistryError, TokenHash, UpdateOutcome};
use ed25519_dalek::{SigningKey, VerifyingKey};
use uuid::Uuid;

fn key(seed: u8) -> VerifyingKey {
    SigningKey::from_bytes(&[seed; 32]).verifying_key()
}

/// A back-end under test: opens registries on one storage.
trait Storage {
    /// A registry on the storage (a second call: another node, or a reopen).
    async fn open(&self) -> Registry;
    /// Whether two registries may be open on it at once (PostgreSQL: yes; a redb file
    /// is locked by its process).
    fn shared(&self) -> bool;
}

struct Redb(tempfile::TempDir);

impl Storage for Redb {
    async fn open(&self) -> Registry {
        Registry::open_in(self.0.path()).unwrap()
    }
    fn shared(&self) -> bool {
        false
    }
}

#[cfg(feature = "cluster")]
struct Pg(
    cluster_support::Postgres,
    tokio_util::sync::CancellationToken,
);

#[cfg(feature = "cluster")]
impl Storage for Pg {
    async fn open(&self) -> Registry {
        Registry::open_postgres(&self.0.config(), self.1.clone())
            .await
            .unwrap()
    }
    fn shared(&self) -> bool {
        true
    }
}

#[cfg(feature = "cluster")]
impl Drop for Pg {
    fn drop(&mut self) {
        self.1.cancel();
    }
}

async fn registers_once_and_refuses_another_key(storage: impl Storage) {
    let reg = storage.open().await;
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
    assert_eq!(reg.len(), 1);
}

async fn rotation_checks_the_current_key(storage: impl Storage) {
    let reg = storage.open().await;
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
        reg.rotate(id, key(1), key(1)).await.unwrap(),
        UpdateOutcome::Unchanged
    );
    assert_eq!(
        reg.rotate(id, key(1), key(2)).await.unwrap(),
        UpdateOutcome::Replaced
    );
    assert_eq!(reg.lookup(&id), Some(key(2)));
    // The old key cannot rotate again.
    assert!(matches!(
        reg.rotate(id, key(1), key(3)).await,
        Err(RegistryError::KeyChanged(_))
    ));
}

async fn admin_put_and_remove(storage: impl Storage) {
    let reg = storage.open().await;
    let id = Uuid::new_v4();
    assert_eq!(reg.put(id, key(1)).await.unwrap(), UpdateOutcome::Created);
    assert_eq!(reg.put(id, key(1)).await.unwrap(), UpdateOutcome::Unchanged);
    assert_eq!(reg.put(id, key(2)).await.unwrap(), UpdateOutcome::Replaced);
    assert!(reg.remove(id).await.unwrap());
    assert!(!reg.remove(id).await.unwrap());
    assert_eq!(reg.lookup(&id), None);
    assert!(reg.is_empty());
    // Removed, it can be registered afresh, with any key.
    assert_eq!(
        reg.register(id, key(3), None).await.unwrap(),
        RegisterOutcome::Created
    );
    assert_eq!(reg.lookup(&id), Some(key(3)));
}

async fn tokens_are_single_use_even_when_raced(storage: impl Storage) {
    let reg = storage.open().await;
    assert!(matches!(
        reg.register(Uuid::new_v4(), key(1), Some(TokenHash::of("nope")))
            .await,
        Err(RegistryError::InvalidToken)
    ));
    let text = reg.issue_token().await.unwrap();
    assert_eq!(reg.unused_tokens(), 1);
    let hash = TokenHash::of(&text);
    let racers: Vec<_> = (0..8u8)
        .map(|i| {
            let reg = reg.clone();
            tokio::spawn(async move { reg.register(Uuid::new_v4(), key(10 + i), Some(hash)).await })
        })
        .collect();
    let mut won = 0;
    for racer in racers {
        match racer.await.unwrap() {
            Ok(RegisterOutcome::Created) => won += 1,
            Err(RegistryError::InvalidToken) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(won, 1, "one token, one registration");
    assert_eq!(reg.unused_tokens(), 0);
}

async fn concurrent_registrations_of_one_uuid_have_one_winner(storage: impl Storage) {
    let first = storage.open().await;
    // With shared storage the racers are on two "nodes".
    let second = if storage.shared() {
        storage.open().await
    } else {
        first.clone()
    };
    for _ in 0..10 {
        let id = Uuid::new_v4();
        let racers: Vec<_> = (0..6u8)
            .map(|i| {
                let reg = if i % 2 == 0 {
                    first.clone()
                } else {
                    second.clone()
                };
                tokio::spawn(async move { (i, reg.register(id, key(20 + i), None).await) })
            })
            .collect();
        let mut winners = Vec::new();
        for racer in racers {
            match racer.await.unwrap() {
                (i, Ok(RegisterOutcome::Created)) => winners.push(i),
                (_, Err(RegistryError::AlreadyRegistered(_))) => {}
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(winners.len(), 1, "{winners:?}");
        let winner = key(20 + winners[0]);
        assert_eq!(first.lookup(&id), Some(winner));
        assert_eq!(second.refresh(&id).await, Some(winner));
    }
}

async fn everything_acknowledged_survives_a_reopen(storage: impl Storage) {
    let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let token;
    {
        let reg = storage.open().await;
        reg.register(a, key(1), None).await.unwrap();
        reg.register(b, key(2), None).await.unwrap();
        reg.rotate(b, key(2), key(3)).await.unwrap();
        reg.put(c, key(4)).await.unwrap();
        assert!(reg.remove(c).await.unwrap());
        token = reg.issue_token().await.unwrap();
        reg.close().await;
        assert!(matches!(
            reg.remove(a).await,
            Err(RegistryError::ShuttingDown)
        ));
    }
    let reg = storage.open().await;
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

/// Two nodes on one PostgreSQL: what one writes, the other's cache learns.
#[cfg(feature = "cluster")]
#[tokio::test]
async fn postgres_nodes_see_each_others_changes() {
    let storage = Pg(
        cluster_support::Postgres::start(),
        tokio_util::sync::CancellationToken::new(),
    );
    let here = storage.open().await;
    let there = storage.open().await;
    let id = Uuid::new_v4();
    here.register(id, key(1), None).await.unwrap();
    // A login on the other node that misses its cache reads storage.
    assert_eq!(there.refresh(&id).await, Some(key(1)));
    // Rotations and removals are pushed to the other node's cache.
    here.rotate(id, key(1), key(2)).await.unwrap();
    wait_for(|| there.lookup(&id) == Some(key(2))).await;
    here.remove(id).await.unwrap();
    wait_for(|| there.lookup(&id).is_none()).await;
    let text = there.issue_token().await.unwrap();
    wait_for(|| here.unused_tokens() == 1).await;
    here.register(Uuid::new_v4(), key(3), Some(TokenHash::of(&text)))
        .await
        .unwrap();
    wait_for(|| there.unused_tokens() == 0).await;
}

#[cfg(feature = "cluster")]
async fn wait_for(check: impl Fn() -> bool) {
    for _ in 0..250 {
        if check() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("the other node was not told within 5 s");
}

macro_rules! suite {
    ($backend:ident, $storage:expr) => {
        mod $backend {
            use super::*;

            #[tokio::test]
            async fn registers_once_and_refuses_another_key() {
                super::registers_once_and_refuses_another_key($storage).await;
            }
            #[tokio::test]
            async fn rotation_checks_the_current_key() {
                super::rotation_checks_the_current_key($storage).await;
            }
            #[tokio::test]
            async fn admin_put_and_remove() {
                super::admin_put_and_remove($storage).await;
            }
            #[tokio::test]
            async fn tokens_are_single_use_even_when_raced() {
                super::tokens_are_single_use_even_when_raced($storage).await;
            }
            #[tokio::test]
            async fn concurrent_registrations_of_one_uuid_have_one_winner() {
                super::concurrent_registrations_of_one_uuid_have_one_winner($storage).await;
            }
            #[tokio::test]
            async fn everything_acknowledged_survives_a_reopen() {
                super::everything_acknowledged_survives_a_reopen($storage).await;
            }
        }
    };
}

suite!(redb, Redb(tempfile::tempdir().unwrap()));
#[cfg(feature = "cluster")]
suite!(
    postgres,
    Pg(
        cluster_support::Postgres::start(),
        tokio_util::sync::CancellationToken::new()
    )
);
