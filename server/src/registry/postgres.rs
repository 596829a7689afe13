//! The registry of a cluster: PostgreSQL, shared by every node (feature `cluster`).
//!
//! # Tables
//!
//! ```sql
//! CREATE SEQUENCE chatr_registry_version;
//! CREATE TABLE chatr_identities (
//!     uuid uuid PRIMARY KEY,
//!     public_key bytea,          -- 32 bytes; NULL once removed (kept for its version)
//!     version bigint NOT NULL);  -- from chatr_registry_version, in commit order per UUID
//! CREATE TABLE chatr_registration_tokens (
//!     hash bytea PRIMARY KEY,    -- SHA-256 of an unused token
//!     issued bigint NOT NULL);   -- Unix seconds
//! ```
//!
//! Created at start-up if missing (under an advisory lock, so nodes starting
//! together do not race).
//!
//! # Writes
//!
//! One transaction per operation: the UUID's row is locked (`SELECT … FOR UPDATE`),
//! the precondition checked ([`plan`], the same rules as the redb store), the change
//! written with a fresh version (`nextval` taken *after* the row lock, so versions of
//! one UUID follow commit order), and `pg_notify('chatr_registry', …)` sent in the same
//! transaction. Only after `COMMIT` returns is the caller answered: an acknowledged
//! write is in PostgreSQL first. A write whose outcome is unknown (the connection broke,
//! or it took longer than [`WRITE_TIMEOUT`]) is reported as an error, never as done.
//!
//! # The cache and other nodes' changes
//!
//! Each node keeps every identity in memory ([`Cache`]). A listener connection
//! `LISTEN`s on `chatr_registry`: PostgreSQL delivers each committed change as
//! `i <uuid> <version> <hex key | ->` (or `t` when the token count changed), and the
//! cache applies it unless it has a newer version. When the listener reconnects it
//! reloads everything (after `LISTEN`, so nothing falls between), which also applies
//! what changed while it was away. A login whose UUID misses the cache reads the row
//! ([`Backend::fetch`]): it may have been registered on another node a moment ago.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use ed25519_dalek::VerifyingKey;
use futures_util::StreamExt as _;
use tokio_postgres::{AsyncMessage, Transaction};
use tokio_postgres_rustls::MakeRustlsConnect;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::Cache;
use super::backend::{Applied, Backend, BoxFuture, Op, Snapshot, Versioned, plan};
use super::error::RegistryError;
use crate::config::PostgresConfig;

/// The notification channel.
const CHANNEL: &str = "chatr_registry";

/// Longest one write may take, connection wait included; then it is an error (and
/// its outcome unknown: it was not acknowledged).
pub(crate) const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// How often a write is retried when a concurrent write to the same UUID won a race
/// for a row that did not exist yet.
const CONFLICT_RETRIES: usize = 3;

/// Longest pause between listener reconnects.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

const SCHEMA: &str = "
    SELECT pg_advisory_xact_lock(7377271);
    CREATE SEQUENCE IF NOT EXISTS chatr_registry_version;
    CREATE TABLE IF NOT EXISTS chatr_identities (
        uuid uuid PRIMARY KEY,
        public_key bytea,
        version bigint NOT NULL);
    CREATE TABLE IF NOT EXISTS chatr_registration_tokens (
        hash bytea PRIMARY KEY,
        issued bigint NOT NULL);
";

/// The PostgreSQL back-end. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct PgBackend {
    pool: Pool,
    reachable: Arc<AtomicBool>,
}

fn tls_connector(config: &PostgresConfig) -> Result<MakeRustlsConnect, RegistryError> {
    let mut roots = rustls::RootCertStore::empty();
    match &config.ca_file {
        Some(path) => {
            use rustls_pki_types::pem::PemObject as _;
            let certs = rustls_pki_types::CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|err| {
                    RegistryError::Config(format!(
                        "cannot read the PostgreSQL CA file {}: {err}",
                        path.display()
                    ))
                })?;
            for cert in certs {
                roots.add(cert).map_err(|err| {
                    RegistryError::Config(format!(
                        "bad CA certificate in {}: {err}",
                        path.display()
                    ))
                })?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| RegistryError::Config(format!("TLS set-up: {err}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(tls))
}

impl PgBackend {
    /// Connects, creates the tables if needed, loads everything into `cache` and starts
    /// the listener that keeps it current until `shutdown`.
    pub(crate) async fn connect(
        config: &PostgresConfig,
        cache: Arc<Cache>,
        shutdown: CancellationToken,
    ) -> Result<Self, RegistryError> {
        let pg_config: tokio_postgres::Config = config
            .url
            .parse()
            .map_err(|err| RegistryError::Config(format!("invalid PostgreSQL URL: {err}")))?;
        let tls = tls_connector(config)?;
        let manager = Manager::from_config(
            pg_config.clone(),
            tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(config.pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(WRITE_TIMEOUT))
            .create_timeout(Some(WRITE_TIMEOUT / 2))
            .build()
            .map_err(|err| RegistryError::Config(format!("PostgreSQL pool: {err}")))?;
        let backend = Self {
            pool,
            reachable: Arc::new(AtomicBool::new(false)),
        };
        {
            let mut client = backend.pool.get().await?;
            let txn = client.transaction().await?;
            txn.batch_execute(SCHEMA).await?;
            txn.commit().await?;
            cache.load(read_all(&client).await?);
        }
        backend.reachable.store(true, Ordering::Relaxed);
        tokio::spawn(listen(
            pg_config,
            tls,
            cache,
            Arc::clone(&backend.reachable),
            shutdown,
        ));
        Ok(backend)
    }

    fn mark(&self, result: &Result<impl Sized, RegistryError>) {
        let broken = matches!(
            result,
            Err(RegistryError::Pool(_) | RegistryError::Timeout(_))
        ) || matches!(result, Err(RegistryError::Postgres(err)) if err.is_closed() || err.as_db_error().is_none());
        self.reachable.store(!broken, Ordering::Relaxed);
    }

    async fn apply_once(&self, op: Op) -> Result<Option<Applied>, RegistryError> {
        let mut client = self.pool.get().await?;
        let txn = client.transaction().await?;
        let uuid = match op {
            Op::Register { uuid, .. }
            | Op::Rotate { uuid, .. }
            | Op::Put { uuid, .. }
            | Op::Remove { uuid } => Some(uuid),
            Op::IssueToken { .. } => None,
        };
        let current = match uuid {
            Some(uuid) => txn
                .query_opt(
                    "SELECT public_key FROM chatr_identities WHERE uuid = $1 FOR UPDATE",
                    &[&uuid],
                )
                .await?
                .and_then(|row| row.get::<_, Option<Vec<u8>>>(0))
                .and_then(|bytes| parse_key(&bytes)),
            None => None,
        };
        let token_unused = match op {
            Op::Register {
                token: Some(hash), ..
            } => txn
                .query_opt(
                    "SELECT 1 FROM chatr_registration_tokens WHERE hash = $1 FOR UPDATE",
                    &[&hash.0.as_slice()],
                )
                .await?
                .is_some(),
            _ => false,
        };
        let plan = plan(op, current, |_| token_unused)?;
        if !plan.writes() {
            return Ok(Some(plan.applied(0)));
        }
        let mut version = 0;
        if let Some((uuid, key)) = plan.identity {
            // A registration may only fill a free row: if another node inserted a live
            // key since our SELECT found none, nothing is returned and we start over.
            let overwrite = current.is_some() || matches!(op, Op::Put { .. });
            let key_bytes = key.map(|k| k.as_bytes().to_vec());
            let row = txn
                .query_opt(
                    "INSERT INTO chatr_identities (uuid, public_key, version)
                     VALUES ($1, $2, nextval('chatr_registry_version'))
                     ON CONFLICT (uuid) DO UPDATE
                        SET public_key = EXCLUDED.public_key,
                            version = nextval('chatr_registry_version')
                        WHERE $3 OR chatr_identities.public_key IS NULL
                     RETURNING version",
                    &[&uuid, &key_bytes, &overwrite],
                )
                .await?;
            let Some(row) = row else {
                return Ok(None);
            };
            version = u64::try_from(row.get::<_, i64>(0)).unwrap_or(0);
            notify(&txn, &identity_payload(uuid, key, version)).await?;
        }
        if let Some(hash) = plan.consume {
            let gone = txn
                .execute(
                    "DELETE FROM chatr_registration_tokens WHERE hash = $1",
                    &[&hash.0.as_slice()],
                )
                .await?;
            if gone != 1 {
                return Err(RegistryError::InvalidToken);
            }
        }
        if let Some((hash, issued)) = plan.issue {
            txn.execute(
                "INSERT INTO chatr_registration_tokens (hash, issued) VALUES ($1, $2)
                 ON CONFLICT (hash) DO NOTHING",
                &[
                    &hash.0.as_slice(),
                    &i64::try_from(issued).unwrap_or(i64::MAX),
                ],
            )
            .await?;
        }
        if plan.consume.is_some() || plan.issue.is_some() {
            notify(&txn, "t").await?;
        }
        txn.commit().await?;
        Ok(Some(plan.applied(version)))
    }

    async fn apply_with_retries(&self, op: Op) -> Result<Applied, RegistryError> {
        for _ in 0..CONFLICT_RETRIES {
            if let Some(applied) = self.apply_once(op).await? {
                return Ok(applied);
            }
        }
        Err(RegistryError::Task(
            "the identity kept changing under concurrent writes; retry".into(),
        ))
    }
}

async fn notify(txn: &Transaction<'_>, payload: &str) -> Result<(), RegistryError> {
    txn.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &payload])
        .await?;
    Ok(())
}

fn identity_payload(uuid: Uuid, key: Option<VerifyingKey>, version: u64) -> String {
    let key = key.map_or_else(|| "-".to_owned(), |k| hex::encode(k.as_bytes()));
    format!("i {uuid} {version} {key}")
}

/// What a notification says, if it is one of ours.
#[derive(Debug, PartialEq, Eq)]
enum Notice {
    /// Boxed: a key is large and notices are rare.
    Identity(Box<Versioned>),
    Tokens,
}

fn parse_notice(payload: &str) -> Option<Notice> {
    let mut words = payload.split(' ');
    match words.next()? {
        "t" => Some(Notice::Tokens),
        "i" => {
            let uuid = words.next()?.parse().ok()?;
            let version = words.next()?.parse().ok()?;
            let key = match words.next()? {
                "-" => None,
                hex_key => Some(parse_key(&hex::decode(hex_key).ok()?)?),
            };
            Some(Notice::Identity(Box::new(Versioned { uuid, key, version })))
        }
        _ => None,
    }
}

fn parse_key(bytes: &[u8]) -> Option<VerifyingKey> {
    let bytes: [u8; 32] = bytes.try_into().ok()?;
    VerifyingKey::from_bytes(&bytes).ok()
}

async fn read_all(client: &tokio_postgres::Client) -> Result<Snapshot, RegistryError> {
    let rows = client
        .query(
            "SELECT uuid, public_key, version FROM chatr_identities",
            &[],
        )
        .await?;
    let mut snapshot = Snapshot::default();
    for row in rows {
        let uuid: Uuid = row.get(0);
        let key: Option<Vec<u8>> = row.get(1);
        let version = u64::try_from(row.get::<_, i64>(2)).unwrap_or(0);
        let key = match key {
            Some(bytes) => match parse_key(&bytes) {
                Some(key) => Some(key),
                None => {
                    tracing::warn!(%uuid, "skipping unreadable key in the PostgreSQL registry");
                    continue;
                }
            },
            None => None,
        };
        snapshot.identities.push(Versioned { uuid, key, version });
    }
    snapshot.tokens = token_count(client).await?;
    Ok(snapshot)
}

async fn token_count(client: &tokio_postgres::Client) -> Result<usize, RegistryError> {
    let row = client
        .query_one("SELECT count(*) FROM chatr_registration_tokens", &[])
        .await?;
    Ok(usize::try_from(row.get::<_, i64>(0)).unwrap_or(0))
}

/// Keeps `cache` current: LISTEN, reload, apply notifications; on any failure
/// reconnect with back-off (and reload again).
async fn listen(
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    cache: Arc<Cache>,
    reachable: Arc<AtomicBool>,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let session = listen_once(&config, tls.clone(), &cache, &reachable);
        let ended = tokio::select! {
            () = shutdown.cancelled() => return,
            ended = session => ended,
        };
        match ended {
            Ok(()) => backoff = Duration::from_millis(200),
            Err(err) => {
                tracing::warn!(error = %err, "PostgreSQL registry listener lost; reconnecting (logins use the cached keys)");
            }
        }
        reachable.store(false, Ordering::Relaxed);
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn listen_once(
    config: &tokio_postgres::Config,
    tls: MakeRustlsConnect,
    cache: &Cache,
    reachable: &AtomicBool,
) -> Result<(), RegistryError> {
    let (client, mut connection) = tokio::time::timeout(WRITE_TIMEOUT, config.connect(tls))
        .await
        .map_err(|_| RegistryError::Timeout(WRITE_TIMEOUT))??;
    let (notices, mut received) = tokio::sync::mpsc::channel(1024);
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    if notices.send(n.payload().to_owned()).await.is_err() {
                        return Ok(());
                    }
                }
                Ok(_) => {}
                Err(err) => return Err(err),
            }
        }
        Ok(())
    });
    let run = async {
        client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
        cache.load(read_all(&client).await?);
        reachable.store(true, Ordering::Relaxed);
        tracing::info!("PostgreSQL registry listener connected; cache reloaded");
        while let Some(payload) = received.recv().await {
            match parse_notice(&payload) {
                Some(Notice::Identity(change)) => cache.apply(*change),
                Some(Notice::Tokens) => cache.set_tokens(token_count(&client).await?),
                None => tracing::debug!(payload, "unknown registry notification ignored"),
            }
        }
        Ok::<(), RegistryError>(())
    };
    let result = run.await;
    driver.abort();
    match driver.await {
        Ok(Err(err)) => Err(err.into()),
        _ => result,
    }
}

impl Backend for PgBackend {
    fn apply(&self, op: Op) -> BoxFuture<Result<Applied, RegistryError>> {
        let this = self.clone();
        Box::pin(async move {
            let result = tokio::time::timeout(WRITE_TIMEOUT, this.apply_with_retries(op))
                .await
                .unwrap_or(Err(RegistryError::Timeout(WRITE_TIMEOUT)));
            this.mark(&result);
            result
        })
    }

    fn fetch(&self, uuid: Uuid) -> Option<BoxFuture<Result<Option<Versioned>, RegistryError>>> {
        let this = self.clone();
        Some(Box::pin(async move {
            let read = async {
                let client = this.pool.get().await?;
                let row = client
                    .query_opt(
                        "SELECT public_key, version FROM chatr_identities WHERE uuid = $1",
                        &[&uuid],
                    )
                    .await?;
                Ok::<_, RegistryError>(row.map(|row| {
                    Versioned {
                        uuid,
                        key: row
                            .get::<_, Option<Vec<u8>>>(0)
                            .and_then(|bytes| parse_key(&bytes)),
                        version: u64::try_from(row.get::<_, i64>(1)).unwrap_or(0),
                    }
                }))
            };
            let result = tokio::time::timeout(WRITE_TIMEOUT, read)
                .await
                .unwrap_or(Err(RegistryError::Timeout(WRITE_TIMEOUT)));
            this.mark(&result);
            result
        }))
    }

    fn is_durable(&self) -> bool {
        true
    }

    fn is_reachable(&self) -> bool {
        self.reachable.load(Ordering::Relaxed)
    }

    fn close(&self) -> BoxFuture<()> {
        let pool = self.pool.clone();
        Box::pin(async move { pool.close() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_round_trip_and_junk_is_ignored() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[3; 32]).verifying_key();
        let uuid = Uuid::from_bytes([9; 16]);
        assert_eq!(
            parse_notice(&identity_payload(uuid, Some(key), 42)),
            Some(Notice::Identity(Box::new(Versioned {
                uuid,
                key: Some(key),
                version: 42
            })))
        );
        assert_eq!(
            parse_notice(&identity_payload(uuid, None, 43)),
            Some(Notice::Identity(Box::new(Versioned {
                uuid,
                key: None,
                version: 43
            })))
        );
        assert_eq!(parse_notice("t"), Some(Notice::Tokens));
        for junk in [
            "",
            "x",
            "i",
            "i nope 1 -",
            "i 09090909-0909-0909-0909-090909090909 x -",
            "i 09090909-0909-0909-0909-090909090909 1 zz",
        ] {
            assert_eq!(parse_notice(junk), None, "{junk:?}");
        }
    }
}
