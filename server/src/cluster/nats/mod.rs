//! The cluster on NATS (feature `cluster`): routing between nodes with core NATS
//! requests, session claims in a JetStream key-value bucket (`claims`).
//!
//! Each node has a random id of [`TOKEN_PREFIX_LEN`] bytes (8 hex digits) and one
//! subscription, `<prefix>.node.<id>.>`, on which other nodes ask it to deliver a
//! brokering message to one of its sessions (`peer`), to probe a session (`probe`),
//! to end one (`kick`), or to check a UDP binding request for one of its tokens
//! (`bind`); see `wire`. Where a UUID's session lives is its claim in the bucket
//! (cached per UUID, and looked up again when the cached node says "not here").
//! "No responders" from NATS means the node is gone: the peer is offline.
//!
//! When NATS is unreachable the node keeps brokering between its own sessions,
//! answers every cross-node request "offline" at once, admits logins locally, and
//! re-checks every claim of its sessions once NATS is back (`NatsCluster::reconcile`):
//! a claim another node took over in the meantime ends the local session.

mod claims;
mod metrics;
mod wire;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use async_nats::{Client, ConnectOptions, Event, Message, RequestErrorKind, ServerAddr};
use chatr_proto::{DisconnectReason, UDP_TOKEN_LEN};
use dashmap::DashMap;
use futures_util::StreamExt as _;
use tokio::sync::{Notify, Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use self::claims::{ClaimError, Claims, Current, Written};
use self::metrics::{ClaimResult, ClusterMetrics, ForwardResult, Received, ReconcileResult};
use self::wire::{
    BindMessage, ClaimValue, DeliveryReply, Heartbeat, PeerMessage, SessionRef, Subjects,
};
use super::{
    BoxFuture, Cluster, ClusterClaim, ClusterConfig, ClusterHealth, Holder, TOKEN_PREFIX_LEN,
};
use crate::hub::{Delivery, Mailbox, WeakHub};
use crate::metrics::Metrics;
use crate::relay::{RelayBroker as _, WeakRelay};
use crate::session::{HubEvent, PeerEndpoints, PeerEvent};

/// Cross-node forwards in flight at once; more are refused (the sender is told the
/// peer is unavailable) rather than queued without bound.
const MAX_FORWARDS: usize = 8192;
/// Probes of local sessions other nodes may have waiting at once.
const MAX_PROBES: usize = 1024;
/// Routed UDP binding requests in flight at once (more are dropped, like any UDP).
const MAX_BINDS: usize = 1024;
/// Claims checked at once by a reconciliation.
const RECONCILE_PARALLEL: usize = 64;
/// Cached UUID → node routes before the cache is cleared.
const MAX_ROUTES: usize = 200_000;
/// Relay hops waiting to be published; more are dropped (and counted by the relay).
const MAX_HOPS_QUEUED: usize = 8192;
/// How often claims admitted while NATS was unreachable are retried.
const RETRY_UNCONFIRMED: Duration = Duration::from_secs(2);

/// Why the cluster could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// The NATS URL does not parse.
    #[error("invalid NATS URL {url:?}: {source}")]
    Url {
        /// The URL.
        url: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The client could not be set up.
    #[error("NATS client: {0}")]
    Connect(#[from] async_nats::ConnectError),
}

/// One claim held (or to be confirmed) by a session of this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LocalClaim {
    session: u64,
    /// `None`: admitted while the bucket could not be asked.
    revision: Option<u64>,
}

/// The cluster as this node sees it. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct NatsCluster {
    inner: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    client: Client,
    js: async_nats::jetstream::Context,
    subjects: Subjects,
    config: ClusterConfig,
    node_id: String,
    node_name: String,
    prefix: [u8; TOKEN_PREFIX_LEN],
    /// How long a local session has to answer a probe from another node.
    takeover_probe: Duration,
    hub: WeakHub,
    server_metrics: Arc<Metrics>,
    metrics: ClusterMetrics,
    bucket: Mutex<Option<Claims>>,
    claims_ok: AtomicBool,
    claims: DashMap<Uuid, LocalClaim>,
    routes: DashMap<Uuid, String>,
    peers: Mutex<HashMap<String, (String, Instant)>>,
    forwards: Arc<Semaphore>,
    probes: Arc<Semaphore>,
    binds: Arc<Semaphore>,
    /// Woken when NATS (re)connects: open the bucket, reconcile.
    reconnected: Notify,
    /// This node's relay, for hops from other nodes.
    relay: OnceLock<WeakRelay>,
    /// Relay hops to publish: subject and body.
    hops: mpsc::Sender<(String, bytes::Bytes)>,
    tasks: TaskTracker,
}

fn node_id_of(prefix: &[u8; TOKEN_PREFIX_LEN]) -> String {
    hex::encode(prefix)
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "chatr-node".to_owned())
}

impl NatsCluster {
    /// Connects to NATS (in the background: the node starts even while NATS is down),
    /// subscribes to this node's subject and starts the heartbeat and the claim
    /// reconciler. `hub` is this node's hub, `takeover_probe` its probe time.
    pub(crate) async fn start(
        config: ClusterConfig,
        hub: WeakHub,
        server_metrics: Arc<Metrics>,
        takeover_probe: Duration,
        shutdown: CancellationToken,
    ) -> Result<Self, ClusterError> {
        let url = config.nats_url.clone().unwrap_or_default();
        let addrs = url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(|u| u.parse::<ServerAddr>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| ClusterError::Url {
                url: url.clone(),
                source,
            })?;
        let prefix: [u8; TOKEN_PREFIX_LEN] = rand::random();
        let node_id = node_id_of(&prefix);
        let node_name = config.node_name.clone().unwrap_or_else(host_name);
        let (event_tx, mut event_rx) = mpsc::unbounded_channel::<Event>();
        let mut options = ConnectOptions::new()
            .name(format!("chatr-server {node_name} ({node_id})"))
            // Finds a dead or hung NATS server in seconds; the server's own ping
            // (deploy/nats-server.conf) finds a dead or hung node.
            .ping_interval(Duration::from_secs(2))
            .connection_timeout(Duration::from_secs(2))
            .request_timeout(Some(config.request_timeout))
            .retry_on_initial_connect()
            .max_reconnects(None)
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis((100 * attempts as u64).min(1000))
            })
            .event_callback(move |event| {
                let event_tx = event_tx.clone();
                async move {
                    let _ = event_tx.send(event);
                }
            });
        if let Some(ca) = &config.nats_ca {
            options = options.add_root_certificates(ca.clone());
        }
        let client = options.connect(addrs).await?;
        let js = claims::context(client.clone(), config.request_timeout);
        let (hops, mut hops_rx) = mpsc::channel::<(String, bytes::Bytes)>(MAX_HOPS_QUEUED);
        let inner = Arc::new(Shared {
            client,
            js,
            subjects: Subjects::new(&config.subject_prefix),
            node_id,
            node_name,
            prefix,
            takeover_probe,
            hub,
            server_metrics,
            metrics: ClusterMetrics::default(),
            bucket: Mutex::new(None),
            claims_ok: AtomicBool::new(false),
            claims: DashMap::new(),
            routes: DashMap::new(),
            peers: Mutex::new(HashMap::new()),
            forwards: Arc::new(Semaphore::new(MAX_FORWARDS)),
            probes: Arc::new(Semaphore::new(MAX_PROBES)),
            binds: Arc::new(Semaphore::new(MAX_BINDS)),
            reconnected: Notify::new(),
            relay: OnceLock::new(),
            hops,
            tasks: TaskTracker::new(),
            config,
        });
        let cluster = Self { inner };
        tracing::info!(node = %cluster.inner.node_name, id = %cluster.inner.node_id, "joining the cluster");
        // Relay hops go out in order, one publish at a time, from a bounded queue.
        let publisher = cluster.inner.client.clone();
        let stop = shutdown.clone();
        cluster.inner.tasks.spawn(async move {
            loop {
                let next = tokio::select! {
                    () = stop.cancelled() => return,
                    next = hops_rx.recv() => next,
                };
                let Some((subject, body)) = next else { return };
                if let Err(err) = publisher.publish(subject, body).await {
                    tracing::debug!(error = %err, "relay hop not sent");
                }
            }
        });
        // Connection events: log, count, and re-check claims on every (re)connect.
        let watcher = cluster.clone();
        cluster.inner.tasks.spawn(async move {
            let mut first = true;
            while let Some(event) = event_rx.recv().await {
                match event {
                    Event::Connected => {
                        if !first {
                            watcher.inner.metrics.reconnected();
                        }
                        first = false;
                        tracing::info!("connected to NATS");
                        watcher.inner.reconnected.notify_one();
                    }
                    Event::Disconnected => {
                        tracing::warn!("lost NATS: brokering between this node's sessions only; others read offline");
                        watcher.inner.claims_ok.store(false, Ordering::Relaxed);
                    }
                    other => tracing::info!(event = %other, "NATS event"),
                }
            }
        });
        cluster
            .inner
            .tasks
            .spawn(cluster.clone().serve(shutdown.clone()));
        cluster
            .inner
            .tasks
            .spawn(cluster.clone().heartbeat(shutdown.clone()));
        cluster
            .inner
            .tasks
            .spawn(cluster.clone().keep_claims(shutdown));
        // A client that connected before the callback task ran still gets its bucket.
        if cluster.connected() {
            cluster.inner.reconnected.notify_one();
        }
        Ok(cluster)
    }

    fn connected(&self) -> bool {
        self.inner.client.connection_state() == async_nats::connection::State::Connected
    }

    fn bucket(&self) -> Option<Claims> {
        self.inner
            .bucket
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn value(&self, session: u64) -> ClaimValue {
        ClaimValue {
            node: self.inner.node_id.clone(),
            session,
        }
    }

    fn note(&self, result: &Result<impl Sized, ClaimError>) {
        self.inner
            .claims_ok
            .store(result.is_ok(), Ordering::Relaxed);
    }

    /// Opens the bucket if it is not yet (after start-up, or if it was lost).
    async fn ensure_bucket(&self) -> Result<Claims, ClaimError> {
        if let Some(bucket) = self.bucket() {
            return Ok(bucket);
        }
        let config = &self.inner.config;
        let store = claims::open_bucket(
            &self.inner.js,
            &config.claims_bucket,
            config.claim_ttl,
            config.request_timeout.max(Duration::from_secs(2)),
        )
        .await?;
        let bucket = Claims {
            store,
            timeout: config.request_timeout,
        };
        *self
            .inner
            .bucket
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(bucket.clone());
        Ok(bucket)
    }

    // ----- claims -----

    async fn claim_now(&self, uuid: Uuid, session: u64) -> ClusterClaim {
        let unconfirmed = LocalClaim {
            session,
            revision: None,
        };
        if !self.connected() {
            self.inner.claims.insert(uuid, unconfirmed);
            self.inner.metrics.claim(ClaimResult::Unavailable);
            return ClusterClaim::Unavailable;
        }
        let result = self.try_claim(uuid, session).await;
        self.note(&result);
        match result {
            Ok(Some(revision)) => {
                self.inner.claims.insert(
                    uuid,
                    LocalClaim {
                        session,
                        revision: Some(revision),
                    },
                );
                self.inner.metrics.claim(ClaimResult::Claimed);
                ClusterClaim::Claimed
            }
            Ok(None) => match self.held_by(uuid).await {
                Some(holder) => {
                    self.inner.metrics.claim(ClaimResult::Held);
                    ClusterClaim::Held(holder)
                }
                None => {
                    self.inner.claims.insert(uuid, unconfirmed);
                    self.inner.metrics.claim(ClaimResult::Unavailable);
                    ClusterClaim::Unavailable
                }
            },
            Err(err) => {
                tracing::warn!(%uuid, error = %err, "claim not confirmed cluster-wide; admitted here, rechecked later");
                self.inner.claims.insert(uuid, unconfirmed);
                self.inner.metrics.claim(ClaimResult::Unavailable);
                ClusterClaim::Unavailable
            }
        }
    }

    /// Creates our claim; `Ok(None)` when another node's session holds it. A claim
    /// left by an earlier session *of this node* is stale (this session holds the
    /// UUID in our hub) and is replaced.
    async fn try_claim(&self, uuid: Uuid, session: u64) -> Result<Option<u64>, ClaimError> {
        let bucket = self.ensure_bucket().await?;
        let value = self.value(session);
        for _ in 0..4 {
            if let Written::Ok(revision) = bucket.create(uuid, &value).await? {
                return Ok(Some(revision));
            }
            match bucket.current(uuid).await? {
                Current::Free => continue,
                Current::Held(holder) if holder.node == self.inner.node_id => {
                    if let Written::Ok(revision) =
                        bucket.update(uuid, &value, holder.revision).await?
                    {
                        return Ok(Some(revision));
                    }
                }
                Current::Held(_) => return Ok(None),
            }
        }
        Ok(None)
    }

    /// The holder of `uuid` (on another node), or `None` if it cannot be told.
    async fn held_by(&self, uuid: Uuid) -> Option<Holder> {
        let bucket = self.bucket()?;
        match bucket.current(uuid).await {
            Ok(Current::Held(holder)) => Some(holder),
            _ => None,
        }
    }

    async fn take_over_now(&self, uuid: Uuid, session: u64, holder: Holder) -> ClusterClaim {
        let Some(bucket) = self.bucket().filter(|_| self.connected()) else {
            self.inner.claims.insert(
                uuid,
                LocalClaim {
                    session,
                    revision: None,
                },
            );
            self.inner.metrics.claim(ClaimResult::Unavailable);
            return ClusterClaim::Unavailable;
        };
        let value = self.value(session);
        let result = bucket.update(uuid, &value, holder.revision).await;
        self.note(&result);
        match result {
            Ok(Written::Ok(revision)) => {
                self.inner.claims.insert(
                    uuid,
                    LocalClaim {
                        session,
                        revision: Some(revision),
                    },
                );
                self.inner.metrics.claim(ClaimResult::TakenOver);
                tracing::info!(%uuid, from = %holder.node, "took over a dead session of another node");
                self.kick_remote(uuid, &holder).await;
                ClusterClaim::Claimed
            }
            // Someone changed the claim since we probed: whoever it is, they won.
            Ok(Written::Conflict) => match bucket.current(uuid).await {
                Ok(Current::Held(now)) => {
                    self.inner.metrics.claim(ClaimResult::Held);
                    ClusterClaim::Held(now)
                }
                // Released in the meantime: claim it afresh.
                Ok(Current::Free) => Box::pin(self.claim_now(uuid, session)).await,
                Err(_) => self.unconfirmed(uuid, session),
            },
            Err(err) => {
                tracing::warn!(%uuid, error = %err, "takeover not confirmed cluster-wide; admitted here, rechecked later");
                self.unconfirmed(uuid, session)
            }
        }
    }

    fn unconfirmed(&self, uuid: Uuid, session: u64) -> ClusterClaim {
        self.inner.claims.insert(
            uuid,
            LocalClaim {
                session,
                revision: None,
            },
        );
        self.inner.metrics.claim(ClaimResult::Unavailable);
        ClusterClaim::Unavailable
    }

    /// Tells `holder`'s node to end that session (it lost its claim).
    async fn kick_remote(&self, uuid: Uuid, holder: &Holder) {
        if holder.node.is_empty() || holder.node == self.inner.node_id {
            return;
        }
        let body = wire::encode(&SessionRef {
            uuid,
            session: holder.session,
        });
        let subject = self.inner.subjects.node(&holder.node, "kick");
        if let Err(err) = self.inner.client.publish(subject, body).await {
            tracing::debug!(%uuid, error = %err, "kick for a replaced session not sent");
        }
    }

    /// Asks `holder`'s node whether its session answers a ping.
    async fn probe_remote(&self, uuid: Uuid, holder: &Holder) -> bool {
        if holder.node.is_empty() || !self.connected() || self.silent(&holder.node) {
            return false;
        }
        let body = wire::encode(&SessionRef {
            uuid,
            session: holder.session,
        });
        let subject = self.inner.subjects.node(&holder.node, "probe");
        let wait = self.inner.takeover_probe + self.inner.config.request_timeout;
        let request = async_nats::Request::new().payload(body).timeout(Some(wait));
        match self.inner.client.send_request(subject, request).await {
            Ok(reply) => reply.payload.as_ref() == b"alive",
            Err(err) => {
                tracing::debug!(%uuid, node = %holder.node, error = %err, "probe of a remote session failed: dead");
                false
            }
        }
    }

    /// Re-checks every claim of this node's sessions (after NATS came back, for claims
    /// admitted while it was away, and to refresh them before they expire).
    async fn reconcile(&self, refresh: bool) {
        let Ok(bucket) = self.ensure_bucket().await else {
            return;
        };
        let Some(hub) = self.inner.hub.upgrade() else {
            return;
        };
        let live: HashMap<Uuid, u64> = hub.sessions().into_iter().collect();
        let claims: Vec<(Uuid, LocalClaim)> = self
            .inner
            .claims
            .iter()
            .map(|e| (*e.key(), *e.value()))
            .collect();
        let work = claims.into_iter().filter_map(|(uuid, claim)| {
            if live.get(&uuid) != Some(&claim.session) {
                // The session is gone (its release raced with us, or it was replaced).
                self.inner
                    .claims
                    .remove_if(&uuid, |_, c| c.session == claim.session);
                return None;
            }
            (refresh || claim.revision.is_none()).then_some((uuid, claim))
        });
        let bucket = &bucket;
        let hub = &hub;
        futures_util::stream::iter(work)
            .for_each_concurrent(RECONCILE_PARALLEL, |(uuid, claim)| async move {
                if let Err(err) = self.reconcile_one(bucket, hub, uuid, claim).await {
                    tracing::debug!(%uuid, error = %err, "claim not re-checked; retrying later");
                    self.inner.claims_ok.store(false, Ordering::Relaxed);
                }
            })
            .await;
    }

    async fn reconcile_one(
        &self,
        bucket: &Claims,
        hub: &crate::hub::Hub,
        uuid: Uuid,
        claim: LocalClaim,
    ) -> Result<(), ClaimError> {
        let value = self.value(claim.session);
        let store = |revision| {
            self.inner.claims.alter(&uuid, |_, c| {
                if c.session == claim.session {
                    LocalClaim {
                        session: c.session,
                        revision: Some(revision),
                    }
                } else {
                    c
                }
            });
        };
        match bucket.current(uuid).await? {
            Current::Held(holder)
                if holder.node == self.inner.node_id && holder.session == claim.session =>
            {
                match bucket.update(uuid, &value, holder.revision).await? {
                    Written::Ok(revision) => store(revision),
                    Written::Conflict => return Ok(()),
                }
                self.inner.metrics.reconciled(ReconcileResult::Kept);
            }
            Current::Free => {
                if let Written::Ok(revision) = bucket.create(uuid, &value).await? {
                    store(revision);
                    self.inner.metrics.reconciled(ReconcileResult::Created);
                }
            }
            Current::Held(holder) if claim.revision.is_some() => {
                // We held it; another node took it over while we could not answer.
                tracing::info!(%uuid, by = %holder.node, "our session was taken over elsewhere; ending it here");
                self.inner
                    .claims
                    .remove_if(&uuid, |_, c| c.session == claim.session);
                hub.kick_session(&uuid, claim.session, DisconnectReason::TimeOut.as_str());
                self.inner.metrics.reconciled(ReconcileResult::Kicked);
            }
            Current::Held(holder) => {
                // Admitted here while NATS was away, and another node admitted the same
                // UUID: the older claim wins unless its session is dead.
                if self.probe_remote(uuid, &holder).await {
                    tracing::info!(%uuid, by = %holder.node, "UUID is connected on another node too; ending it here");
                    self.inner
                        .claims
                        .remove_if(&uuid, |_, c| c.session == claim.session);
                    hub.kick_session(
                        &uuid,
                        claim.session,
                        DisconnectReason::AlreadyConnected.as_str(),
                    );
                    self.inner.metrics.reconciled(ReconcileResult::Kicked);
                } else if let Written::Ok(revision) =
                    bucket.update(uuid, &value, holder.revision).await?
                {
                    store(revision);
                    self.kick_remote(uuid, &holder).await;
                    self.inner.metrics.reconciled(ReconcileResult::TakenOver);
                }
            }
        }
        Ok(())
    }

    /// Opens the bucket and reconciles on every (re)connect; retries unconfirmed
    /// claims, and a bucket that did not open, every [`RETRY_UNCONFIRMED`]; refreshes
    /// all claims every quarter TTL.
    async fn keep_claims(self, shutdown: CancellationToken) {
        let refresh_every = (self.inner.config.claim_ttl / 4).max(Duration::from_secs(1));
        let mut next_refresh = tokio::time::Instant::now() + refresh_every;
        let mut retry = tokio::time::interval(RETRY_UNCONFIRMED);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let refresh = tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.inner.reconnected.notified() => {
                    // A new connection: the bucket may be new too (NATS restarted
                    // without its store).
                    *self.inner.bucket.lock().unwrap_or_else(PoisonError::into_inner) = None;
                    false
                }
                _ = retry.tick() => {
                    let pending = self.inner.claims.iter().any(|c| c.revision.is_none());
                    // A bucket that failed to open (JetStream still starting, a slow
                    // answer) is retried too: else a node with no sessions would read
                    // "claims unavailable" until its next refresh, a quarter TTL away.
                    let unopened = self.bucket().is_none();
                    if !pending && !unopened && tokio::time::Instant::now() < next_refresh {
                        continue;
                    }
                    tokio::time::Instant::now() >= next_refresh
                }
            };
            if !self.connected() {
                continue;
            }
            match self.ensure_bucket().await {
                Ok(_) => self.inner.claims_ok.store(true, Ordering::Relaxed),
                Err(err) => {
                    tracing::warn!(error = %err, "claims bucket unavailable; retrying");
                    self.inner.claims_ok.store(false, Ordering::Relaxed);
                    continue;
                }
            }
            self.reconcile(refresh).await;
            if refresh {
                next_refresh = tokio::time::Instant::now() + refresh_every;
            }
        }
    }

    // ----- routing -----

    async fn forward_now(
        &self,
        from: Uuid,
        endpoints: PeerEndpoints,
        to: Uuid,
        event: &PeerEvent,
    ) -> ForwardResult {
        let body = wire::encode(&PeerMessage::new(
            &self.inner.node_id,
            from,
            endpoints,
            to,
            event,
        ));
        let cached = self.inner.routes.get(&to).map(|n| n.value().clone());
        let mut node = cached.clone();
        for _ in 0..2 {
            let target = match node.take() {
                Some(target) => target,
                None => match self.held_by(to).await {
                    Some(holder)
                        if holder.node != self.inner.node_id && !holder.node.is_empty() =>
                    {
                        holder.node
                    }
                    _ => return ForwardResult::Offline,
                },
            };
            if self.silent(&target) {
                return ForwardResult::Offline;
            }
            let subject = self.inner.subjects.node(&target, "peer");
            let request = async_nats::Request::new()
                .payload(body.clone())
                .timeout(Some(self.inner.config.request_timeout));
            let reply = match self.inner.client.send_request(subject, request).await {
                Ok(reply) => wire::decode::<DeliveryReply>(&reply.payload).unwrap_or_else(|err| {
                    tracing::debug!(error = %err, "unreadable delivery reply");
                    DeliveryReply::Offline
                }),
                Err(err) if err.kind() == RequestErrorKind::NoResponders => DeliveryReply::Offline,
                Err(err) if err.kind() == RequestErrorKind::TimedOut => {
                    return ForwardResult::Timeout;
                }
                Err(err) => {
                    tracing::debug!(error = %err, "cross-node forward failed");
                    return ForwardResult::Error;
                }
            };
            match reply {
                DeliveryReply::Delivered => {
                    if self.inner.routes.len() >= MAX_ROUTES {
                        self.inner.routes.clear();
                    }
                    self.inner.routes.insert(to, target);
                    return ForwardResult::Delivered;
                }
                DeliveryReply::Busy => return ForwardResult::Busy,
                DeliveryReply::Offline => {
                    self.inner.routes.remove(&to);
                    if cached.as_deref() != Some(target.as_str()) {
                        // Asked the node the bucket names: the peer really is offline.
                        return ForwardResult::Offline;
                    }
                    // The cached route was stale: ask the bucket once.
                }
            }
        }
        ForwardResult::Offline
    }

    // ----- serving other nodes -----

    /// Answers the requests other nodes send this node.
    async fn serve(self, shutdown: CancellationToken) {
        let subject = self.inner.subjects.node_all(&self.inner.node_id);
        // The subscription survives reconnects (the client re-subscribes).
        let mut messages = loop {
            match self.inner.client.subscribe(subject.clone()).await {
                Ok(sub) => break sub,
                Err(err) => {
                    tracing::warn!(error = %err, "cannot subscribe to this node's subject; retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                }
            }
        };
        loop {
            let message = tokio::select! {
                () = shutdown.cancelled() => return,
                message = messages.next() => message,
            };
            let Some(message) = message else { return };
            self.handle(message).await;
        }
    }

    async fn handle(&self, message: Message) {
        let Some(hub) = self.inner.hub.upgrade() else {
            return;
        };
        let what = message
            .subject
            .rsplit('.')
            .next()
            .unwrap_or_default()
            .to_owned();
        match what.as_str() {
            "peer" => {
                self.inner.metrics.received(Received::Peer);
                let reply = match wire::decode::<PeerMessage>(&message.payload)
                    .and_then(|m| m.event().map(|(endpoints, event)| (m, endpoints, event)))
                {
                    Ok((m, endpoints, mut event)) => {
                        let adopted = self.adopt_relay(&m, &mut event);
                        let delivery = hub.deliver_remote(m.from, endpoints, m.to, event);
                        if delivery != Delivery::Delivered
                            && let Some((relay, id)) = adopted
                        {
                            relay.close(id, m.to);
                        }
                        match delivery {
                            Delivery::Delivered => DeliveryReply::Delivered,
                            Delivery::Busy => DeliveryReply::Busy,
                            Delivery::Offline => DeliveryReply::Offline,
                        }
                    }
                    Err(err) => {
                        self.inner.metrics.received(Received::Invalid);
                        tracing::warn!(error = %err, "unreadable message from another node");
                        DeliveryReply::Offline
                    }
                };
                self.respond(&message, wire::encode(&reply)).await;
            }
            "probe" => {
                self.inner.metrics.received(Received::Probe);
                let Ok(target) = wire::decode::<SessionRef>(&message.payload) else {
                    self.inner.metrics.received(Received::Invalid);
                    self.respond(&message, "dead".into()).await;
                    return;
                };
                let Some(answer) = hub.probe_session(&target.uuid, target.session) else {
                    self.respond(&message, "dead".into()).await;
                    return;
                };
                let Ok(permit) = Arc::clone(&self.inner.probes).try_acquire_owned() else {
                    // Too many probes waiting: the session may well be alive; the
                    // newcomer is refused rather than a live session replaced.
                    self.respond(&message, "alive".into()).await;
                    return;
                };
                let this = self.clone();
                let wait = self.inner.takeover_probe;
                self.inner.tasks.spawn(async move {
                    let _permit = permit;
                    let alive = matches!(tokio::time::timeout(wait, answer).await, Ok(Ok(())));
                    let reply = if alive { "alive" } else { "dead" };
                    this.respond(&message, reply.into()).await;
                });
            }
            "kick" => {
                self.inner.metrics.received(Received::Kick);
                if let Ok(target) = wire::decode::<SessionRef>(&message.payload) {
                    self.inner
                        .claims
                        .remove_if(&target.uuid, |_, c| c.session == target.session);
                    if hub.kick_session(
                        &target.uuid,
                        target.session,
                        DisconnectReason::TimeOut.as_str(),
                    ) {
                        tracing::info!(uuid = %target.uuid, "session taken over on another node; ended here");
                    }
                }
            }
            "bind" => {
                self.inner.metrics.received(Received::Bind);
                let reply = wire::decode::<BindMessage>(&message.payload)
                    .and_then(|m| Ok((m.source, m.datagram()?)))
                    .ok()
                    .and_then(|(source, datagram)| {
                        crate::udp::handle_datagram(
                            &hub,
                            &self.inner.server_metrics,
                            source,
                            &datagram,
                        )
                    })
                    .unwrap_or_default();
                self.respond(&message, reply.into()).await;
            }
            "relay" => {
                self.inner.metrics.received(Received::Relay);
                let Some(relay) = self.inner.relay.get().and_then(WeakRelay::upgrade) else {
                    return;
                };
                if let Some((party, node)) = relay.on_hop(&message.payload, Instant::now())
                    && !node.is_empty()
                    && node != self.inner.node_id
                {
                    self.learn_route(party, node);
                }
            }
            _ => self.inner.metrics.received(Received::Invalid),
        }
    }

    /// A ClientInfo naming a relay on the sending node: our party's datagrams for it
    /// hop there. If this node cannot (no relay, cap reached), the client is not told
    /// of the relay at all, exactly as when a single node's relay is full.
    fn adopt_relay(
        &self,
        message: &PeerMessage,
        event: &mut PeerEvent,
    ) -> Option<(crate::relay::Relay, chatr_proto::RelayId)> {
        let PeerEvent::ClientInfo { relay_id, .. } = event else {
            return None;
        };
        let id = (*relay_id)?;
        let relay = self.inner.relay.get().and_then(WeakRelay::upgrade);
        match relay {
            Some(relay)
                if !message.node.is_empty()
                    && relay.adopt(id, message.node.clone(), message.to, Instant::now()) =>
            {
                Some((relay, id))
            }
            _ => {
                *relay_id = None;
                None
            }
        }
    }

    /// `uuid`'s session is on `node`.
    fn learn_route(&self, uuid: Uuid, node: String) {
        if self.inner.routes.len() >= MAX_ROUTES {
            self.inner.routes.clear();
        }
        self.inner.routes.insert(uuid, node);
    }

    async fn respond(&self, message: &Message, body: bytes::Bytes) {
        if let Some(reply) = &message.reply
            && let Err(err) = self.inner.client.publish(reply.clone(), body).await
        {
            tracing::debug!(error = %err, "reply to another node not sent");
        }
    }

    /// Announces this node and keeps the list of the others.
    async fn heartbeat(self, shutdown: CancellationToken) {
        let subject = self.inner.subjects.heartbeat();
        let mut beats = loop {
            match self.inner.client.subscribe(subject.clone()).await {
                Ok(sub) => break sub,
                Err(_) => tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(500)) => {}
                },
            }
        };
        let me = wire::encode(&Heartbeat {
            node: self.inner.node_id.clone(),
            name: self.inner.node_name.clone(),
        });
        let mut tick = tokio::time::interval(self.inner.config.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {
                    if self.connected() {
                        let _ = self.inner.client.publish(subject.clone(), me.clone()).await;
                    }
                }
                beat = beats.next() => {
                    let Some(beat) = beat else { return };
                    if let Ok(beat) = wire::decode::<Heartbeat>(&beat.payload)
                        && beat.node != self.inner.node_id
                    {
                        self.inner
                            .peers
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .insert(beat.node, (beat.name, Instant::now()));
                    }
                }
            }
        }
    }

    /// Whether `node` was heard from before but has been silent for three heartbeats:
    /// it is hung or gone. (NATS drops a hung client only once its pings go
    /// unanswered, and it skips pings while it is *sending* to that client, as it does
    /// to a hung node that keeps receiving heartbeats and requests.) A node never
    /// heard from (just started) is asked anyway.
    fn silent(&self, node: &str) -> bool {
        let horizon = self.inner.config.heartbeat * 3;
        self.inner
            .peers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(node)
            .is_some_and(|(_, seen)| seen.elapsed() > horizon)
    }

    /// Names of the other nodes heard from within three heartbeats.
    fn peers(&self) -> Vec<String> {
        let horizon = self.inner.config.heartbeat * 3;
        let mut peers = self
            .inner
            .peers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Kept long after they fall silent, so a hung node keeps reading "silent".
        peers.retain(|_, (_, seen)| seen.elapsed() <= (horizon * 10).max(Duration::from_secs(600)));
        let mut names: Vec<String> = peers
            .values()
            .filter(|(_, seen)| seen.elapsed() <= horizon)
            .map(|(name, _)| name.clone())
            .collect();
        names.sort();
        names
    }
}

impl Cluster for NatsCluster {
    fn is_clustered(&self) -> bool {
        true
    }

    fn token_prefix(&self) -> Option<[u8; TOKEN_PREFIX_LEN]> {
        Some(self.inner.prefix)
    }

    fn claim(&self, uuid: Uuid, session: u64) -> BoxFuture<ClusterClaim> {
        let this = self.clone();
        Box::pin(async move { this.claim_now(uuid, session).await })
    }

    fn take_over(&self, uuid: Uuid, session: u64, holder: Holder) -> BoxFuture<ClusterClaim> {
        let this = self.clone();
        Box::pin(async move { this.take_over_now(uuid, session, holder).await })
    }

    fn probe(&self, uuid: Uuid, holder: &Holder) -> oneshot::Receiver<()> {
        let (alive, answer) = oneshot::channel();
        let this = self.clone();
        let holder = holder.clone();
        self.inner.tasks.spawn(async move {
            if this.probe_remote(uuid, &holder).await {
                let _ = alive.send(());
            }
        });
        answer
    }

    fn release(&self, uuid: Uuid, session: u64) {
        let Some((_, claim)) = self
            .inner
            .claims
            .remove_if(&uuid, |_, c| c.session == session)
        else {
            return;
        };
        let Some(revision) = claim.revision else {
            return;
        };
        let Some(bucket) = self.bucket() else {
            return;
        };
        self.inner.tasks.spawn(async move {
            if let Err(err) = bucket.delete(uuid, revision).await {
                tracing::debug!(%uuid, error = %err, "claim not released; it expires or is taken over");
            }
        });
    }

    fn forward(
        &self,
        from: Uuid,
        endpoints: PeerEndpoints,
        to: Uuid,
        event: PeerEvent,
        sender: mpsc::Sender<Mailbox>,
    ) -> Result<(), PeerEvent> {
        if !self.connected() {
            self.inner.metrics.forward(ForwardResult::Offline);
            return Err(event);
        }
        let Ok(permit) = Arc::clone(&self.inner.forwards).try_acquire_owned() else {
            self.inner.metrics.forward(ForwardResult::Busy);
            return Err(event);
        };
        let this = self.clone();
        self.inner.tasks.spawn(async move {
            let _permit = permit;
            let result = this.forward_now(from, endpoints, to, &event).await;
            this.inner.metrics.forward(result);
            if !matches!(result, ForwardResult::Delivered) {
                let undeliverable = Mailbox::Event(Box::new(HubEvent::Undeliverable { to, event }));
                if sender.try_send(undeliverable).is_err() {
                    tracing::debug!(%to, "sender's inbox full; its request expires instead");
                }
            }
        });
        Ok(())
    }

    fn bind_elsewhere(
        &self,
        token: &[u8; UDP_TOKEN_LEN],
        datagram: &[u8],
        source: SocketAddr,
    ) -> Option<BoxFuture<Option<Vec<u8>>>> {
        let prefix = token.get(..TOKEN_PREFIX_LEN)?;
        if prefix == self.inner.prefix.as_slice() || !self.connected() {
            return None;
        }
        let permit = Arc::clone(&self.inner.binds).try_acquire_owned().ok()?;
        let subject = self.inner.subjects.node(&hex::encode(prefix), "bind");
        let body = wire::encode(&BindMessage::new(source, datagram));
        let this = self.clone();
        Some(Box::pin(async move {
            let _permit = permit;
            let request = async_nats::Request::new()
                .payload(body)
                .timeout(Some(this.inner.config.request_timeout));
            let reply = this
                .inner
                .client
                .send_request(subject, request)
                .await
                .ok()?;
            this.inner.metrics.udp_routed();
            (!reply.payload.is_empty()).then(|| reply.payload.to_vec())
        }))
    }

    fn node_id(&self) -> Option<String> {
        Some(self.inner.node_id.clone())
    }

    fn route_of(&self, uuid: &Uuid) -> Option<String> {
        self.inner.routes.get(uuid).map(|n| n.value().clone())
    }

    fn relay_hop(&self, node: &str, hop: bytes::Bytes) -> bool {
        if !self.connected() || self.silent(node) {
            return false;
        }
        let subject = self.inner.subjects.node(node, "relay");
        self.inner.hops.try_send((subject, hop)).is_ok()
    }

    fn set_relay(&self, relay: WeakRelay) {
        let _ = self.inner.relay.set(relay);
    }

    fn health(&self) -> Option<ClusterHealth> {
        Some(ClusterHealth {
            node: self.inner.node_name.clone(),
            connected: self.connected(),
            claims_ok: self.inner.claims_ok.load(Ordering::Relaxed),
            peers: self.peers(),
        })
    }

    fn close(&self) -> BoxFuture<()> {
        // Waits (briefly) for the claim releases of the sessions that just ended and
        // the replies in flight.
        let inner = Arc::clone(&self.inner);
        Box::pin(async move {
            inner.tasks.close();
            let _ = tokio::time::timeout(Duration::from_secs(3), inner.tasks.wait()).await;
            let _ = tokio::time::timeout(Duration::from_secs(2), inner.client.flush()).await;
        })
    }

    fn render_metrics(&self, out: &mut String) {
        self.inner.metrics.render(
            out,
            &self.inner.node_name,
            &self.inner.node_id,
            self.connected(),
            self.peers().len(),
            self.inner.claims.len(),
        );
    }
}
