//! The HTTPS registry API, on its own port with the Connect server's certificate.
//!
//! Clients register their identity here before their first login (spec:
//! "After registering a UUID & public key…"), rotate keys, look keys up, and
//! fetch the server certificate to pin. Operators get `/healthz` and
//! Prometheus `/metrics`.
//!
//! | route | what |
//! |---|---|
//! | `PUT /api/1/clients/{uuid}` | register (see [`clients`]) |
//! | `POST /api/1/clients/{uuid}` | rotate the key |
//! | `GET /api/1/clients/{uuid}` | look the key up |
//! | `GET /certificate` | the Connect server's certificate chain (PEM) |
//! | `GET /healthz` | `ok`, `degraded` or `down` (503), then details (see [`Health`]) |
//! | `GET /metrics` | Prometheus text format |
//!
//! Each TCP connection is accepted here, TLS-terminated with the *current*
//! acceptor of [`TlsIdentity`] (so a SIGHUP reload applies to new connections)
//! and served by hyper's HTTP/1 connection driver.
//!
//! What one host cannot do to everyone else:
//! - hold many connections: at most `api_max_connections_per_ip` (8) per source
//!   address, IPv6 per /64, counted before any TLS work;
//! - fill the total cap (`api_max_connections`, 1024) with connections that do
//!   nothing: when it is full, a newcomer evicts the connection idle longest
//!   (handshaking, waiting for headers or a body, kept alive); only connections
//!   whose request is being handled hold their slot for sure;
//! - be slow: the TLS handshake, each request head (also the wait for the next
//!   request on a kept-alive connection) and each body must arrive within
//!   `api_timeout` (10 s); a late body is answered 408 and the connection closed;
//! - send much: bodies are limited to [`BODY_LIMIT`] bytes, every source address
//!   has a token bucket, and HTTP/1.1 without `Host` is answered 400.

pub mod clients;
mod error;
mod rate_limit;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, Method, Version, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::BytesMut;
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;

pub use error::ApiError;

use crate::config::{RegistrationPolicy, ServerConfig};
use crate::conn_limit::{ConnectionLimiter, ConnectionPermit};
use crate::metrics::{Metrics, RegistrationResult};
use crate::registry::Registry;
use crate::tls::TlsIdentity;
use rate_limit::{RateLimiter, UNKNOWN_PEER};

/// Largest accepted request body. `{"key":"…"}` is 54 bytes.
pub const BODY_LIMIT: usize = 1024;
/// How long in-flight requests get to finish on shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Whether a node is serving, as `/healthz` tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthStatus {
    /// Everything this node depends on answers (HTTP 200, `ok`).
    Ok,
    /// The node serves its own clients, but part of the cluster is missing: NATS,
    /// the claims bucket or the shared registry (HTTP 200, `degraded`; keep it in the
    /// load balancer, alert on it).
    Degraded,
    /// The node is shutting down (HTTP 503, `down`; take it out of the balancer).
    Down,
}

/// A node's health: the status, what is wrong, and details (cluster mode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// The verdict.
    pub status: HealthStatus,
    /// What is wrong, one line each.
    pub problems: Vec<String>,
    /// `key: value` lines (node, NATS, claims, peers, …).
    pub details: Vec<String>,
}

impl Health {
    /// The `/healthz` body: the status word, then the problems and details, one per line.
    pub fn render(&self) -> String {
        let word = match self.status {
            HealthStatus::Ok => "ok",
            HealthStatus::Degraded => "degraded",
            HealthStatus::Down => "down",
        };
        let mut out = format!("{word}\n");
        for line in self
            .problems
            .iter()
            .map(|p| format!("problem: {p}"))
            .chain(self.details.iter().cloned())
        {
            out.push_str(&line);
            out.push('\n');
        }
        out
    }
}

/// Where `/healthz` gets its answer.
pub trait HealthSource: Send + Sync + std::fmt::Debug {
    /// The node's health now.
    fn health(&self) -> Health;

    /// Appends metrics beyond the server's own (the cluster's), Prometheus text.
    fn render_metrics(&self, _out: &mut String) {}
}

/// Shared state of the handlers.
#[derive(Debug)]
pub(crate) struct ApiState {
    registry: Registry,
    metrics: Arc<Metrics>,
    tls: TlsIdentity,
    policy: RegistrationPolicy,
    body_limit: usize,
    limiter: Mutex<RateLimiter>,
    limits: ApiLimits,
    health: Option<Arc<dyn HealthSource>>,
}

/// The connection limits and time-out of the API (from [`ServerConfig`]).
#[derive(Debug, Clone, Copy)]
struct ApiLimits {
    max_connections: usize,
    max_connections_per_ip: usize,
    timeout: Duration,
}

/// What the API needs from the rest of the server.
#[derive(Debug, Clone)]
pub struct ApiContext {
    state: Arc<ApiState>,
}

impl ApiContext {
    /// Builds the API's state from the server configuration and shared parts.
    pub fn new(
        config: &ServerConfig,
        registry: Registry,
        metrics: Arc<Metrics>,
        tls: TlsIdentity,
    ) -> Self {
        let limiter = RateLimiter::new(
            config.limits.api_requests_per_second,
            config.limits.api_burst,
        );
        Self {
            state: Arc::new(ApiState {
                registry,
                metrics,
                tls,
                policy: config.registration,
                body_limit: BODY_LIMIT,
                limiter: Mutex::new(limiter),
                limits: ApiLimits {
                    max_connections: config.limits.api_max_connections,
                    max_connections_per_ip: config.limits.api_max_connections_per_ip,
                    timeout: config.timings.api_timeout,
                },
                health: None,
            }),
        }
    }

    /// Answers `/healthz` from `health` (without: always `ok`).
    #[must_use]
    pub fn with_health(mut self, health: Arc<dyn HealthSource>) -> Self {
        if let Some(state) = Arc::get_mut(&mut self.state) {
            state.health = Some(health);
        }
        self
    }

    /// The axum router (routes, body limit, rate limit), e.g. to drive it
    /// in-process with `tower::ServiceExt::oneshot`.
    pub fn router(&self) -> Router {
        let limited = Router::new()
            .route(
                "/api/1/clients/{uuid}",
                get(clients::get)
                    .put(clients::register)
                    .post(clients::rotate),
            )
            .route("/certificate", get(certificate))
            .route_layer(middleware::from_fn_with_state(
                Arc::clone(&self.state),
                rate_limit,
            ));
        Router::new()
            .merge(limited)
            .route("/healthz", get(healthz))
            .route("/metrics", get(metrics))
            .fallback(not_found)
            .method_not_allowed_fallback(method_not_allowed)
            .layer(DefaultBodyLimit::max(self.state.body_limit))
            .with_state(Arc::clone(&self.state))
    }
}

/// Serves the API over HTTPS on `listener` until `shutdown` is cancelled;
/// then stops accepting, lets in-flight requests finish (at most 10 s) and
/// returns. Registry writes already started always complete.
pub async fn serve_api(ctx: ApiContext, listener: TcpListener, shutdown: CancellationToken) {
    let router = ctx.router();
    let connections = ConnectionLimiter::evicting_idle(
        ctx.state.limits.max_connections,
        ctx.state.limits.max_connections_per_ip,
    );
    let tracker = TaskTracker::new();
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "registry API listening (HTTPS)");
    }
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(pair) => pair,
            Err(err) => {
                // Usually EMFILE: back off instead of spinning.
                tracing::warn!(error = %err, "API accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
        let permit = match connections.try_admit(Instant::now(), peer.ip()) {
            Ok(permit) => permit,
            Err(cap) => {
                tracing::debug!(%peer, ?cap, open = connections.open(), "API connection cap reached; closing");
                continue;
            }
        };
        let acceptor = ctx.state.tls.acceptor();
        let router = router.clone();
        let shutdown = shutdown.clone();
        let limits = ctx.state.limits;
        tracker.spawn(async move {
            serve_connection(acceptor, tcp, peer, router, permit, limits, shutdown).await;
        });
    }
    tracker.close();
    tracker.wait().await;
    tracing::info!(evicted = connections.evicted(), "registry API stopped");
}

async fn serve_connection(
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    router: Router,
    permit: ConnectionPermit,
    limits: ApiLimits,
    shutdown: CancellationToken,
) {
    let permit = Arc::new(permit);
    let evicted = permit.evicted().clone();
    let handshake = tokio::select! {
        () = shutdown.cancelled() => return,
        () = evicted.cancelled() => return,
        res = tokio::time::timeout(limits.timeout, acceptor.accept(tcp)) => res,
    };
    let tls = match handshake {
        Ok(Ok(tls)) => tls,
        Ok(Err(err)) => {
            tracing::debug!(%peer, error = %err, "API TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "API TLS handshake timed out");
            return;
        }
    };
    let service_permit = Arc::clone(&permit);
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let router = router.clone();
        let permit = Arc::clone(&service_permit);
        async move { Ok::<_, Infallible>(serve_request(req, peer, router, &permit, limits).await) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    // The header timer runs whenever hyper waits for a request head, so it
    // also closes a kept-alive connection that sends no next request.
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.timeout)
        .max_buf_size(16 * 1024);
    let conn = builder.serve_connection(TokioIo::new(tls), service);
    tokio::pin!(conn);
    tokio::select! {
        res = conn.as_mut() => {
            if let Err(err) = res {
                tracing::debug!(%peer, error = %err, "API connection ended with an error");
            }
        }
        // Evicted only while idle (no handler runs): closing loses nothing.
        () = evicted.cancelled() => {
            tracing::debug!(%peer, "API connection evicted (idle while the connection cap was full)");
        }
        () = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            if tokio::time::timeout(SHUTDOWN_GRACE, conn.as_mut()).await.is_err() {
                tracing::debug!(%peer, "API connection did not finish in time");
            }
        }
    }
}

/// One request, before the router: HTTP/1.1 needs exactly one `Host`; the
/// body (at most [`BODY_LIMIT`] bytes are read) must arrive within the time-out;
/// only then is the connection busy (not evictable) while the router answers.
async fn serve_request(
    req: hyper::Request<Incoming>,
    peer: SocketAddr,
    router: Router,
    permit: &ConnectionPermit,
    limits: ApiLimits,
) -> Response {
    let (parts, body) = req.into_parts();
    // RFC 9112 §3.2: a server MUST answer 400 to an HTTP/1.1 request without a
    // Host header field or with more than one.
    if parts.version == Version::HTTP_11 && parts.headers.get_all(header::HOST).iter().count() != 1
    {
        return ApiError::MissingHost.into_response();
    }
    let body = match tokio::time::timeout(limits.timeout, read_capped(body, BODY_LIMIT)).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(err)) => {
            tracing::debug!(%peer, error = %err, "API request body could not be read");
            return closing(ApiError::InvalidBody(format!(
                "the body could not be read: {err}"
            )));
        }
        Err(_) => {
            tracing::debug!(%peer, "API request body timed out");
            return closing(ApiError::RequestTimeout(limits.timeout));
        }
    };
    if !permit.mark_busy() {
        // Evicted while its body arrived: the connection is being closed.
        return closing(ApiError::Busy);
    }
    let mut req = Request::from_parts(parts, Body::from(body));
    req.extensions_mut().insert(ConnectInfo(peer));
    let response = router.oneshot(req).await.into_response();
    permit.mark_idle(Instant::now());
    response
}

/// Reads `body` until its end or until more than `limit` bytes are in; the
/// router's body limit then refuses what is too large, in its usual order of
/// checks. Never buffers more than `limit` + one frame.
async fn read_capped(mut body: Incoming, limit: usize) -> Result<Bytes, hyper::Error> {
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            buf.extend_from_slice(&data);
            if buf.len() > limit {
                break;
            }
        }
    }
    Ok(buf.freeze())
}

/// `error` with `Connection: close`: the rest of the request was not read.
fn closing(error: ApiError) -> Response {
    let mut response = error.into_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// Per-address token bucket, before any work is done for the request.
async fn rate_limit(State(state): State<Arc<ApiState>>, request: Request, next: Next) -> Response {
    let ip = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(UNKNOWN_PEER, |ConnectInfo(addr)| addr.ip());
    let verdict = state
        .limiter
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .check(Instant::now(), ip);
    match verdict {
        Ok(()) => next.run(request).await,
        Err(wait) => {
            if matches!(*request.method(), Method::PUT | Method::POST) {
                state.metrics.registration(RegistrationResult::RateLimited);
            }
            tracing::debug!(%ip, "API request rate-limited");
            ApiError::RateLimited(wait).into_response()
        }
    }
}

/// `GET /certificate`: the Connect server's certificate chain, as the spec's server serves it.
async fn certificate(State(state): State<Arc<ApiState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/x-pem-file")],
        state.tls.cert_pem(),
    )
        .into_response()
}

/// `GET /healthz`: 200 for `ok` and `degraded`, 503 for `down`.
async fn healthz(State(state): State<Arc<ApiState>>) -> Response {
    let Some(source) = &state.health else {
        return "ok\n".into_response();
    };
    let health = source.health();
    let code = match health.status {
        HealthStatus::Down => axum::http::StatusCode::SERVICE_UNAVAILABLE,
        HealthStatus::Ok | HealthStatus::Degraded => axum::http::StatusCode::OK,
    };
    (code, health.render()).into_response()
}

/// `GET /metrics`: Prometheus text format.
async fn metrics(State(state): State<Arc<ApiState>>) -> Response {
    let mut text = state.metrics.render();
    text.push_str(&format!(
        "# HELP chatr_registered_identities Identities in the registry.\n\
         # TYPE chatr_registered_identities gauge\n\
         chatr_registered_identities {}\n\
         # HELP chatr_registration_tokens_unused Issued registration tokens not used yet.\n\
         # TYPE chatr_registration_tokens_unused gauge\n\
         chatr_registration_tokens_unused {}\n",
        state.registry.len(),
        state.registry.unused_tokens(),
    ));
    if let Some(source) = &state.health {
        source.render_metrics(&mut text);
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn not_found() -> ApiError {
    ApiError::NotFound
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
