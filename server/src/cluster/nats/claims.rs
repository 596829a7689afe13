//! The session claims: one JetStream KV entry per logged-in UUID,
//! `<uuid> → {"node": …, "session": …}`.
//!
//! - A login **creates** the entry (fails if it exists: another session holds the
//!   UUID, which is then probed).
//! - A takeover **updates** it with the revision it saw (fails if anyone changed it
//!   since: someone else won), so of two racing logins exactly one ends up holding it.
//! - A session that ends **deletes** it with its own revision (so it never deletes a
//!   newer holder's claim).
//! - Entries expire after the bucket's max age unless refreshed (a node that died
//!   leaves claims behind; they are also taken over on the next login, since the dead
//!   node answers no probe).
//!
//! The bucket's stream is created directly (`KV_<bucket>`, the layout async-nats'
//! `create_key_value` would make), then opened with `get_key_value`: Debian's
//! nats-server 2.9.10 lacks account-info fields that `create_key_value` expects.

use std::time::Duration;

use async_nats::jetstream::kv::{CreateErrorKind, Operation, Store, UpdateErrorKind};
use async_nats::jetstream::stream::{Config as StreamConfig, DiscardPolicy, StorageType};
use async_nats::jetstream::{self, Context};
use uuid::Uuid;

use super::wire::{self, ClaimValue};
use crate::cluster::Holder;

/// Why a claim operation could not be done (the cluster is unreachable or slow).
#[derive(Debug, thiserror::Error)]
pub(crate) enum ClaimError {
    #[error("the claims bucket did not answer within {0:?}")]
    Timeout(Duration),
    #[error("creating the claims bucket failed: {0}")]
    Bucket(String),
    #[error("claims bucket: {0}")]
    Kv(String),
}

/// What the bucket says about one UUID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Current {
    /// Nobody holds it.
    Free,
    /// Held, at this revision.
    Held(Holder),
}

/// The outcome of a conditional write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Written {
    /// Done; the entry's new revision.
    Ok(u64),
    /// Someone else's write came first.
    Conflict,
}

/// Opens (creating if needed) the claims bucket.
pub(crate) async fn open_bucket(
    js: &Context,
    bucket: &str,
    max_age: Duration,
    timeout: Duration,
) -> Result<Store, ClaimError> {
    let config = StreamConfig {
        name: format!("KV_{bucket}"),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        max_age,
        storage: StorageType::File,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: DiscardPolicy::New,
        num_replicas: 1,
        ..StreamConfig::default()
    };
    let open = async {
        js.get_or_create_stream(config)
            .await
            .map_err(|err| ClaimError::Bucket(err.to_string()))?;
        js.get_key_value(bucket)
            .await
            .map_err(|err| ClaimError::Bucket(err.to_string()))
    };
    tokio::time::timeout(timeout, open)
        .await
        .map_err(|_| ClaimError::Timeout(timeout))?
}

/// A handle on the bucket, with the time-out every call gets.
#[derive(Debug, Clone)]
pub(crate) struct Claims {
    pub(crate) store: Store,
    pub(crate) timeout: Duration,
}

fn key(uuid: Uuid) -> String {
    uuid.hyphenated().to_string()
}

impl Claims {
    async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, ClaimError>>,
    ) -> Result<T, ClaimError> {
        tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| ClaimError::Timeout(self.timeout))?
    }

    /// Who holds `uuid` now.
    pub(crate) async fn current(&self, uuid: Uuid) -> Result<Current, ClaimError> {
        self.bounded(async {
            let entry = self
                .store
                .entry(key(uuid))
                .await
                .map_err(|err| ClaimError::Kv(err.to_string()))?;
            Ok(match entry {
                Some(entry) if entry.operation == Operation::Put => {
                    match wire::decode::<ClaimValue>(&entry.value) {
                        Ok(value) => Current::Held(Holder {
                            node: value.node,
                            session: value.session,
                            revision: entry.revision,
                        }),
                        Err(err) => {
                            // Not ours to read: treat as a holder nobody can answer for,
                            // so the next login takes it over after its probe.
                            tracing::warn!(%uuid, error = %err, "unreadable claim");
                            Current::Held(Holder {
                                node: String::new(),
                                session: 0,
                                revision: entry.revision,
                            })
                        }
                    }
                }
                _ => Current::Free,
            })
        })
        .await
    }

    /// Creates the claim of `uuid` for `value`; `Conflict` if anyone holds it.
    pub(crate) async fn create(
        &self,
        uuid: Uuid,
        value: &ClaimValue,
    ) -> Result<Written, ClaimError> {
        self.bounded(async {
            match self.store.create(key(uuid), wire::encode(value)).await {
                Ok(revision) => Ok(Written::Ok(revision)),
                Err(err) if err.kind() == CreateErrorKind::AlreadyExists => Ok(Written::Conflict),
                Err(err) => Err(ClaimError::Kv(err.to_string())),
            }
        })
        .await
    }

    /// Replaces the claim at `revision` with `value`; `Conflict` if it changed since.
    pub(crate) async fn update(
        &self,
        uuid: Uuid,
        value: &ClaimValue,
        revision: u64,
    ) -> Result<Written, ClaimError> {
        self.bounded(async {
            match self
                .store
                .update(key(uuid), wire::encode(value), revision)
                .await
            {
                Ok(revision) => Ok(Written::Ok(revision)),
                Err(err) if err.kind() == UpdateErrorKind::WrongLastRevision => {
                    Ok(Written::Conflict)
                }
                Err(err) => Err(ClaimError::Kv(err.to_string())),
            }
        })
        .await
    }

    /// Deletes the claim if it is still at `revision`.
    pub(crate) async fn delete(&self, uuid: Uuid, revision: u64) -> Result<(), ClaimError> {
        self.bounded(async {
            self.store
                .delete_expect_revision(key(uuid), Some(revision))
                .await
                .map_err(|err| ClaimError::Kv(err.to_string()))
        })
        .await
    }
}

/// The JetStream context for `client`, with requests bounded by `timeout`.
pub(crate) fn context(client: async_nats::Client, timeout: Duration) -> Context {
    let mut js = jetstream::new(client);
    js.set_timeout(timeout);
    js
}
