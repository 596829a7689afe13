//! The storage trait of the registry: where identities and tokens are kept.
//!
//! [`super::Registry`] is the same for every back-end: the login path reads its
//! in-memory cache, writes go through [`Backend::apply`], and only an operation the
//! back-end has **committed** is acknowledged and then applied to the cache. The
//! back-end, not the cache, checks each operation's precondition ("this UUID is
//! free", "the current key is still `old`", "the token is unused") inside the same
//! transaction as the write, so several nodes sharing one database cannot both win.
//!
//! Implementations: [`super::store::RedbBackend`] (the embedded file of a single
//! node), [`MemoryBackend`] (tests), and, with the `cluster` feature,
//! `postgres::PgBackend` (shared by every node of a cluster).
//!
//! Every change carries a **version**, increasing in commit order (a redb write
//! transaction is exclusive; PostgreSQL takes it from a sequence inside the
//! transaction). The cache keeps the highest version it has seen per UUID, so a
//! change that reaches it late (one node's own write racing another node's
//! notification) never overwrites a newer one. Removals are versioned too.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, PoisonError};

use ed25519_dalek::VerifyingKey;
use uuid::Uuid;

use super::error::RegistryError;
use super::token::TokenHash;
use super::{RegisterOutcome, UpdateOutcome};

/// A boxed future, as the back-ends return them.
pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// One write, with its precondition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    /// Client self-registration: the UUID must be free (or hold this same key); the
    /// token, when given, must be unused and is consumed in the same transaction.
    Register {
        uuid: Uuid,
        key: VerifyingKey,
        token: Option<TokenHash>,
    },
    /// Key rotation: the current key must still be `old`.
    Rotate {
        uuid: Uuid,
        old: VerifyingKey,
        new: VerifyingKey,
    },
    /// Admin: set the key whatever it was.
    Put { uuid: Uuid, key: VerifyingKey },
    /// Admin: forget the UUID.
    Remove { uuid: Uuid },
    /// Admin: remember a new unused token.
    IssueToken { hash: TokenHash, issued: u64 },
}

/// What the stored state of one UUID became, at which version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Versioned {
    pub(crate) uuid: Uuid,
    /// `None`: removed.
    pub(crate) key: Option<VerifyingKey>,
    pub(crate) version: u64,
}

/// The committed answer to an [`Op`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Registered(RegisterOutcome),
    Updated(UpdateOutcome),
    Removed(bool),
    TokenIssued,
}

/// An operation the back-end committed (or found already done).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Applied {
    pub(crate) outcome: Outcome,
    /// The identity change to apply to the cache, if any.
    pub(crate) change: Option<Versioned>,
    /// How the number of unused tokens changed.
    pub(crate) tokens_delta: i64,
}

/// Everything a back-end holds, as read at start-up (or after a reconnect).
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    /// Every identity, with removals where the back-end remembers them.
    pub(crate) identities: Vec<Versioned>,
    /// Unused tokens.
    pub(crate) tokens: usize,
}

/// Where the registry keeps its data.
pub(crate) trait Backend: Send + Sync + std::fmt::Debug {
    /// Checks `op`'s precondition and commits it, in one transaction. Runs to the end
    /// once started, even if the returned future is dropped (the registry spawns it).
    fn apply(&self, op: Op) -> BoxFuture<Result<Applied, RegistryError>>;

    /// Reads one identity from storage, for a login that missed the cache (another
    /// node registered it a moment ago). `None`: everything is in the cache already.
    fn fetch(&self, _uuid: Uuid) -> Option<BoxFuture<Result<Option<Versioned>, RegistryError>>> {
        None
    }

    /// Whether the data is kept across restarts.
    fn is_durable(&self) -> bool;

    /// Whether the storage answered the last time it was used.
    fn is_reachable(&self) -> bool {
        true
    }

    /// Waits until writes that were started have ended (graceful shutdown).
    fn close(&self) -> BoxFuture<()> {
        Box::pin(async {})
    }
}

/// The stored state a back-end checks an operation against, and the writes it
/// implies: shared by [`MemoryBackend`] and the redb store, which both read the
/// current state inside their (exclusive) write transaction.
pub(crate) fn plan(
    op: Op,
    current: Option<VerifyingKey>,
    token_unused: impl FnOnce(&TokenHash) -> bool,
) -> Result<Plan, RegistryError> {
    let put = |uuid, key| Some((uuid, Some(key)));
    Ok(match op {
        Op::Register { uuid, key, token } => match current {
            Some(existing) if existing == key => {
                Plan::unchanged(Outcome::Registered(RegisterOutcome::Unchanged))
            }
            Some(_) => return Err(RegistryError::AlreadyRegistered(uuid)),
            None => {
                if let Some(hash) = &token
                    && !token_unused(hash)
                {
                    return Err(RegistryError::InvalidToken);
                }
                Plan {
                    outcome: Outcome::Registered(RegisterOutcome::Created),
                    identity: put(uuid, key),
                    consume: token,
                    issue: None,
                }
            }
        },
        Op::Rotate { uuid, old, new } => match current {
            None => return Err(RegistryError::DoesNotExist(uuid)),
            Some(current) if current != old => return Err(RegistryError::KeyChanged(uuid)),
            Some(_) if old == new => Plan::unchanged(Outcome::Updated(UpdateOutcome::Unchanged)),
            Some(_) => Plan {
                outcome: Outcome::Updated(UpdateOutcome::Replaced),
                identity: put(uuid, new),
                consume: None,
                issue: None,
            },
        },
        Op::Put { uuid, key } => match current {
            Some(current) if current == key => {
                Plan::unchanged(Outcome::Updated(UpdateOutcome::Unchanged))
            }
            other => Plan {
                outcome: Outcome::Updated(if other.is_some() {
                    UpdateOutcome::Replaced
                } else {
                    UpdateOutcome::Created
                }),
                identity: put(uuid, key),
                consume: None,
                issue: None,
            },
        },
        Op::Remove { uuid } => match current {
            None => Plan::unchanged(Outcome::Removed(false)),
            Some(_) => Plan {
                outcome: Outcome::Removed(true),
                identity: Some((uuid, None)),
                consume: None,
                issue: None,
            },
        },
        Op::IssueToken { hash, issued } => Plan {
            outcome: Outcome::TokenIssued,
            identity: None,
            consume: None,
            issue: Some((hash, issued)),
        },
    })
}

/// The writes one operation needs, decided by [`plan`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Plan {
    pub(crate) outcome: Outcome,
    /// Set (`Some` key) or remove (`None`) this UUID.
    pub(crate) identity: Option<(Uuid, Option<VerifyingKey>)>,
    /// Consume this token.
    pub(crate) consume: Option<TokenHash>,
    /// Store this new token (hash, issue time).
    pub(crate) issue: Option<(TokenHash, u64)>,
}

impl Plan {
    fn unchanged(outcome: Outcome) -> Self {
        Self {
            outcome,
            identity: None,
            consume: None,
            issue: None,
        }
    }

    /// Whether there is anything to commit.
    pub(crate) fn writes(&self) -> bool {
        self.identity.is_some() || self.consume.is_some() || self.issue.is_some()
    }

    /// The committed result, with the version the change got.
    pub(crate) fn applied(&self, version: u64) -> Applied {
        Applied {
            outcome: self.outcome,
            change: self
                .identity
                .map(|(uuid, key)| Versioned { uuid, key, version }),
            tokens_delta: i64::from(self.issue.is_some()) - i64::from(self.consume.is_some()),
        }
    }
}

/// A back-end that keeps nothing across restarts (tests, benchmarks).
#[derive(Debug, Default)]
pub(crate) struct MemoryBackend {
    state: Mutex<MemoryState>,
}

#[derive(Debug, Default)]
struct MemoryState {
    keys: HashMap<Uuid, VerifyingKey>,
    tokens: HashSet<TokenHash>,
    version: u64,
}

impl Backend for MemoryBackend {
    fn apply(&self, op: Op) -> BoxFuture<Result<Applied, RegistryError>> {
        let result = (|| {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            let current = match op {
                Op::Register { uuid, .. }
                | Op::Rotate { uuid, .. }
                | Op::Put { uuid, .. }
                | Op::Remove { uuid } => state.keys.get(&uuid).copied(),
                Op::IssueToken { .. } => None,
            };
            let plan = plan(op, current, |hash| state.tokens.contains(hash))?;
            if !plan.writes() {
                return Ok(plan.applied(0));
            }
            state.version += 1;
            match plan.identity {
                Some((uuid, Some(key))) => {
                    state.keys.insert(uuid, key);
                }
                Some((uuid, None)) => {
                    state.keys.remove(&uuid);
                }
                None => {}
            }
            if let Some(hash) = plan.consume {
                state.tokens.remove(&hash);
            }
            if let Some((hash, _)) = plan.issue {
                state.tokens.insert(hash);
            }
            Ok(plan.applied(state.version))
        })();
        Box::pin(async move { result })
    }

    fn is_durable(&self) -> bool {
        false
    }
}

impl MemoryBackend {
    /// Stores `key` without any check (tests).
    pub(crate) fn insert_unchecked(&self, uuid: Uuid, key: VerifyingKey) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.keys.insert(uuid, key);
    }
}
