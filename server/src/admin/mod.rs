//! Operator tools: the admin socket of a running server, its client, and
//! development certificate issuance.
//!
//! redb lets only one process open the registry, so admin commands
//! (`chatr-server identity …`, `token issue`) reach a running server through a
//! Unix socket, `<data_dir>/admin.sock`:
//!
//! * The socket is created with mode 0600 (bound under a temporary name,
//!   chmod-ed, then renamed into place, so it is never reachable with wider
//!   permissions), and every connection's peer credentials are checked: only
//!   root and the user the server runs as get an answer.
//! * The protocol is line-based JSON ([`protocol`]), easy to drive with
//!   `socat` as well as with the CLI.
//! * With no server running, the CLI opens the registry directly and runs the
//!   same [`execute`] (see `main.rs`).

pub mod certs;
pub mod client;
pub mod protocol;

use std::fmt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chatr_proto::DisconnectReason;
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio_util::codec::{Framed, LinesCodec};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::api::clients::parse_key;
use crate::registry::{Registry, RegistryError, UpdateOutcome};
use protocol::{AdminRequest, AdminResponse, IdentityEntry, MAX_LINE};

/// File name of the admin socket inside the data directory.
pub const SOCKET_FILE: &str = "admin.sock";
/// Most simultaneous admin connections.
const MAX_CONNECTIONS: usize = 16;
/// An admin connection idle this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Why the admin socket or an admin call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// A live server already answers on the socket.
    #[error(
        "another chatr-server is already running with admin socket {0}; stop it or use another data dir"
    )]
    AlreadyRunning(PathBuf),
    /// Creating, binding or securing the socket failed.
    #[error("cannot set up admin socket {path}: {source}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Nothing listens on the socket.
    #[error("no server answers on {path} ({source}); is chatr-server running with this data dir?")]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The conversation with the server failed.
    #[error("admin socket {path}: {message}")]
    Protocol {
        /// The socket path.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

/// Ends live sessions; implemented by the server's session hub.
pub trait SessionControl: Send + Sync {
    /// Sends PacketDisconnect(`message`) to `uuid`'s session, if any, and
    /// closes it. Returns whether there was one.
    fn disconnect(&self, uuid: &Uuid, message: &str) -> bool;
}

/// What admin commands act on.
#[derive(Clone)]
pub struct AdminContext {
    registry: Registry,
    sessions: Option<Arc<dyn SessionControl>>,
}

impl fmt::Debug for AdminContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminContext")
            .field("registry", &self.registry)
            .field("sessions", &self.sessions.is_some())
            .finish()
    }
}

impl AdminContext {
    /// Commands act on `registry`; `identity remove` also disconnects through
    /// `sessions` (None when no server is running).
    pub fn new(registry: Registry, sessions: Option<Arc<dyn SessionControl>>) -> Self {
        Self { registry, sessions }
    }
}

/// The bound admin socket; removes its file when dropped.
#[derive(Debug)]
pub struct AdminListener {
    listener: UnixListener,
    path: PathBuf,
    owner_uid: u32,
}

impl AdminListener {
    /// Binds `<data_dir>/admin.sock` with mode 0600, replacing a stale socket
    /// file but refusing if a live server answers on it.
    pub fn bind(data_dir: &Path) -> Result<Self, AdminError> {
        Self::bind_path(&data_dir.join(SOCKET_FILE))
    }

    /// Binds the socket at `path` (see [`AdminListener::bind`]).
    pub fn bind_path(path: &Path) -> Result<Self, AdminError> {
        let fail = |source| AdminError::Bind {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(fail)?;
        }
        if path.exists() {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(AdminError::AlreadyRunning(path.to_path_buf()));
            }
            std::fs::remove_file(path).map_err(fail)?;
        }
        let mut tmp_name = path.as_os_str().to_owned();
        tmp_name.push(format!(".{}.tmp", std::process::id()));
        let tmp = PathBuf::from(tmp_name);
        let _ = std::fs::remove_file(&tmp);
        let listener = UnixListener::bind(&tmp).map_err(fail)?;
        let secure = || -> std::io::Result<u32> {
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
            let uid = std::fs::metadata(&tmp)?.uid();
            std::fs::rename(&tmp, path)?;
            Ok(uid)
        };
        let owner_uid = secure().map_err(|err| {
            let _ = std::fs::remove_file(&tmp);
            fail(err)
        })?;
        Ok(Self {
            listener,
            path: path.to_path_buf(),
            owner_uid,
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for AdminListener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Answers admin connections until `shutdown`, then waits for the open ones
/// (each finishes its current command) and removes the socket file.
pub async fn serve_admin(ctx: AdminContext, listener: AdminListener, shutdown: CancellationToken) {
    let tracker = TaskTracker::new();
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tracing::info!(socket = %listener.path.display(), "admin socket listening");
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(err) => {
                tracing::warn!(error = %err, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let allowed = match stream.peer_cred() {
            Ok(cred) => cred.uid() == 0 || cred.uid() == listener.owner_uid,
            Err(_) => false,
        };
        if !allowed {
            tracing::warn!("admin connection from another user refused");
            continue;
        }
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            continue;
        };
        let ctx = ctx.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            let _permit = permit;
            handle_connection(&ctx, stream, &shutdown).await;
        });
    }
    tracker.close();
    tracker.wait().await;
    drop(listener);
}

async fn handle_connection(ctx: &AdminContext, stream: UnixStream, shutdown: &CancellationToken) {
    let mut lines = Framed::new(stream, LinesCodec::new_with_max_length(MAX_LINE));
    loop {
        let next = tokio::select! {
            () = shutdown.cancelled() => return,
            next = tokio::time::timeout(IDLE_TIMEOUT, lines.next()) => next,
        };
        let line = match next {
            Ok(Some(Ok(line))) => line,
            Ok(Some(Err(err))) => {
                let answer = AdminResponse::error("InvalidRequest", err.to_string());
                let _ = send(&mut lines, &answer).await;
                return;
            }
            Ok(None) | Err(_) => return,
        };
        if line.trim().is_empty() {
            continue;
        }
        let answer = match serde_json::from_str::<AdminRequest>(&line) {
            Ok(request) => execute(ctx, request).await,
            Err(err) => AdminResponse::error(
                "InvalidRequest",
                format!("expected one JSON command per line ({err})"),
            ),
        };
        if send(&mut lines, &answer).await.is_err() {
            return;
        }
    }
}

async fn send(
    lines: &mut Framed<UnixStream, LinesCodec>,
    answer: &AdminResponse,
) -> Result<(), ()> {
    let text = serde_json::to_string(answer).map_err(|_| ())?;
    lines.send(text).await.map_err(|_| ())
}

/// Runs one admin command.
pub async fn execute(ctx: &AdminContext, request: AdminRequest) -> AdminResponse {
    match request {
        AdminRequest::IdentityAdd { uuid, key } => {
            let uuid = match parse_uuid(&uuid) {
                Ok(uuid) => uuid,
                Err(answer) => return *answer,
            };
            let key = match parse_key(&key) {
                Ok(key) => key,
                Err(err) => return AdminResponse::error("InvalidPublicKey", err.to_string()),
            };
            match ctx.registry.put(uuid, key).await {
                Ok(outcome) => {
                    let outcome = match outcome {
                        UpdateOutcome::Created => "created",
                        UpdateOutcome::Replaced => "replaced",
                        UpdateOutcome::Unchanged => "unchanged",
                    };
                    tracing::info!(%uuid, outcome, "identity added by admin");
                    AdminResponse {
                        outcome: Some(outcome.to_owned()),
                        ..AdminResponse::ok()
                    }
                }
                Err(err) => storage_error(&err),
            }
        }
        AdminRequest::IdentityList => {
            let identities = ctx
                .registry
                .list()
                .into_iter()
                .map(|(uuid, key)| IdentityEntry {
                    client_id: uuid.hyphenated().to_string(),
                    public_key: STANDARD.encode(key.as_bytes()),
                })
                .collect();
            AdminResponse {
                identities: Some(identities),
                ..AdminResponse::ok()
            }
        }
        AdminRequest::IdentityRemove { uuid } => {
            let uuid = match parse_uuid(&uuid) {
                Ok(uuid) => uuid,
                Err(answer) => return *answer,
            };
            // Forget the key first, so the client cannot log straight back in.
            let removed = match ctx.registry.remove(uuid).await {
                Ok(removed) => removed,
                Err(err) => return storage_error(&err),
            };
            let disconnected = ctx
                .sessions
                .as_ref()
                .is_some_and(|s| s.disconnect(&uuid, DisconnectReason::IdentityRemoved.as_str()));
            tracing::info!(%uuid, removed, disconnected, "identity removed by admin");
            AdminResponse {
                removed: Some(removed),
                disconnected: Some(disconnected),
                ..AdminResponse::ok()
            }
        }
        AdminRequest::TokenIssue => match ctx.registry.issue_token().await {
            Ok(token) => {
                tracing::info!("registration token issued");
                AdminResponse {
                    token: Some(token),
                    ..AdminResponse::ok()
                }
            }
            Err(err) => storage_error(&err),
        },
        AdminRequest::Status => AdminResponse {
            identity_count: Some(ctx.registry.len()),
            unused_tokens: Some(ctx.registry.unused_tokens()),
            ..AdminResponse::ok()
        },
    }
}

fn parse_uuid(text: &str) -> Result<Uuid, Box<AdminResponse>> {
    Uuid::try_parse(text.trim()).map_err(|_| {
        Box::new(AdminResponse::error(
            "InvalidClientId",
            format!("{text:?} is not a UUID; use the 8-4-4-4-12 hex form"),
        ))
    })
}

fn storage_error(err: &RegistryError) -> AdminResponse {
    let name = match err {
        RegistryError::ShuttingDown => "ShuttingDown",
        _ => "StorageError",
    };
    AdminResponse::error(name, err.to_string())
}
