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
//! | `GET /healthz` | `ok` |
//! | `GET /metrics` | Prometheus text format |
//!
//! Each TCP connection is accepted here, TLS-terminated with the *current*
//! acceptor of [`TlsIdentity`] (so a SIGHUP reload applies to new connections)
//! and served by hyper's HTTP/1 connection driver. Connections are capped,
//! the TLS handshake and request headers have deadlines, bodies are limited
//! to [`BODY_LIMIT`] bytes and every source address has a token bucket.

pub mod clients;
mod error;
mod rate_limit;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::http::{Method, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;

pub use error::ApiError;

use crate::config::{RegistrationPolicy, ServerConfig};
use crate::metrics::{Metrics, RegistrationResult};
use crate::registry::Registry;
use crate::tls::TlsIdentity;
use rate_limit::{RateLimiter, UNKNOWN_PEER};

/// Largest accepted request body. `{"key":"…"}` is 54 bytes.
pub const BODY_LIMIT: usize = 1024;
/// Most simultaneous API connections; more are closed at once.
const MAX_CONNECTIONS: usize = 1024;
/// TLS handshake deadline.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Request header deadline (slow-loris defence).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long in-flight requests get to finish on shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Shared state of the handlers.
#[derive(Debug)]
pub(crate) struct ApiState {
    registry: Registry,
    metrics: Arc<Metrics>,
    tls: TlsIdentity,
    policy: RegistrationPolicy,
    body_limit: usize,
    limiter: Mutex<RateLimiter>,
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
            }),
        }
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
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
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
        let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
            tracing::debug!(%peer, "API connection limit reached; closing");
            continue;
        };
        let acceptor = ctx.state.tls.acceptor();
        let router = router.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            let _permit = permit;
            serve_connection(acceptor, tcp, peer, router, shutdown).await;
        });
    }
    tracker.close();
    tracker.wait().await;
    tracing::info!("registry API stopped");
}

async fn serve_connection(
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    router: Router,
    shutdown: CancellationToken,
) {
    let handshake = tokio::select! {
        () = shutdown.cancelled() => return,
        res = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)) => res,
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
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        let router = router.clone();
        async move { Ok::<_, Infallible>(router.oneshot(req).await.into_response()) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(16 * 1024);
    let conn = builder.serve_connection(TokioIo::new(tls), service);
    tokio::pin!(conn);
    tokio::select! {
        res = conn.as_mut() => {
            if let Err(err) = res {
                tracing::debug!(%peer, error = %err, "API connection ended with an error");
            }
        }
        () = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            if tokio::time::timeout(SHUTDOWN_GRACE, conn.as_mut()).await.is_err() {
                tracing::debug!(%peer, "API connection did not finish in time");
            }
        }
    }
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

/// `GET /healthz`.
async fn healthz() -> &'static str {
    "ok\n"
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
