//! The rest of the client's view of a running session driver: its state on a
//! `watch` ([`SessionStatus`]) and commands over a bounded channel, each
//! answered through a oneshot.

use std::net::SocketAddr;
use std::time::Duration;

use chatr_proto::Endpoint;
use chatr_proto::udp::UdpMessage;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use uuid::Uuid;

use super::error::{OfflineReason, SessionError};

/// Facts about a logged-in session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnlineInfo {
    /// The server's address (TCP and UDP).
    pub server: SocketAddr,
    /// Our end of the TCP connection (our private endpoint: interface address, port).
    pub local: SocketAddr,
    /// Whether the TCP connection uses the UDP socket's port P.
    pub same_port: bool,
    /// Our public UDP endpoint as the server saw it, once known.
    pub udp_observed: Option<Endpoint>,
    /// Our public TCP endpoint as the server sees it (from the BindingResponse).
    pub tcp_observed: Option<Endpoint>,
    /// The server never answered our binding requests.
    pub udp_binding_failed: bool,
    /// How many logins this driver has completed (1 for the first).
    pub logins: u64,
    /// A round-trip estimate to the server (the TCP connect time), a first estimate
    /// for a new link's QUIC.
    pub server_rtt: Option<Duration>,
    /// Whether the server relays over TLS for this session (version 3).
    pub tls_relay: bool,
    /// Whether the server relays over its UDP port for this session (version 3).
    pub udp_relay: bool,
    /// Whether the server tells this session which mutual contacts are online (version 3).
    pub presence: bool,
    /// The server's NAT probe ports (version 3; empty when it has none).
    pub nat_probe_ports: Vec<u16>,
}

/// What we share through the server's presence (version 3): whom we consent to share
/// it with (they see us only if they name us too) and our status. The driver keeps it
/// across reconnects and sends it after every login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceWanted {
    /// Contacts that may see us, and whom we want to see.
    pub contacts: std::collections::BTreeSet<Uuid>,
    /// Our status.
    pub status: chatr_proto::PresenceStatus,
    /// Our status message.
    pub message: String,
}

impl Default for PresenceWanted {
    /// Nobody, available, no message.
    fn default() -> Self {
        Self {
            contacts: std::collections::BTreeSet::new(),
            status: chatr_proto::PresenceStatus::Available,
            message: String::new(),
        }
    }
}

/// The driver's current state.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum SessionStatus {
    /// Connecting or logging in.
    Connecting {
        /// Reconnect attempt number (0 for the first connection).
        attempt: u32,
    },
    /// Logged in.
    Online(OnlineInfo),
    /// Lost; retrying after a delay.
    Offline {
        /// What went wrong.
        reason: OfflineReason,
        /// Delay before the next attempt.
        retry_in: Duration,
    },
    /// The driver stopped (shutdown, or a problem retrying cannot fix).
    Stopped(Option<SessionError>),
}

/// What the handle asks the driver to do; each carries its answer channel.
pub(super) enum Command {
    Request(Uuid, Endpoint, oneshot::Sender<Result<(), SessionError>>),
    Accept(Uuid, Endpoint, oneshot::Sender<Result<(), SessionError>>),
    Deny(Uuid, oneshot::Sender<Result<(), SessionError>>),
    CloseRelay(
        chatr_proto::RelayId,
        oneshot::Sender<Result<(), SessionError>>,
    ),
    SetPresence(PresenceWanted, oneshot::Sender<Result<(), SessionError>>),
}

impl Command {
    /// Answers the caller.
    pub(super) fn reply(self, result: Result<(), SessionError>) {
        let tx = match self {
            Command::Request(_, _, tx)
            | Command::Accept(_, _, tx)
            | Command::Deny(_, tx)
            | Command::CloseRelay(_, tx)
            | Command::SetPresence(_, tx) => tx,
        };
        let _ = tx.send(result);
    }
}

/// Handle to a running session driver. Cheap to clone.
#[derive(Clone)]
pub struct SessionHandle {
    pub(super) commands: mpsc::Sender<Command>,
    pub(super) status: watch::Receiver<SessionStatus>,
    pub(super) udp_in: mpsc::Sender<(SocketAddr, UdpMessage)>,
    /// What our requests and accepts tell peers about us (version 3).
    pub(super) hints: std::sync::Arc<watch::Sender<chatr_proto::LinkHints>>,
}

impl std::fmt::Debug for SessionHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionHandle")
            .field("status", &*self.status.borrow())
            .finish()
    }
}

impl SessionHandle {
    /// The current state.
    pub fn status(&self) -> SessionStatus {
        self.status.borrow().clone()
    }

    /// A receiver that sees every state change.
    pub fn watch(&self) -> watch::Receiver<SessionStatus> {
        self.status.clone()
    }

    /// Info about the current login, if online.
    pub fn online(&self) -> Option<OnlineInfo> {
        match &*self.status.borrow() {
            SessionStatus::Online(info) => Some(info.clone()),
            _ => None,
        }
    }

    /// Waits until the session is online (returns at once if it is), or fails
    /// when the driver stops or `timeout` passes.
    pub async fn wait_online(&self, timeout: Duration) -> Result<OnlineInfo, SessionError> {
        self.wait_for(timeout, |s| match s {
            SessionStatus::Online(info) => Some(info.clone()),
            _ => None,
        })
        .await
    }

    /// Waits until the session is online and its UDP binding is settled
    /// (answered, or given up).
    pub async fn wait_udp_bound(&self, timeout: Duration) -> Result<OnlineInfo, SessionError> {
        self.wait_for(timeout, |s| match s {
            SessionStatus::Online(info)
                if info.udp_observed.is_some() || info.udp_binding_failed =>
            {
                Some(info.clone())
            }
            _ => None,
        })
        .await
    }

    async fn wait_for(
        &self,
        timeout: Duration,
        want: impl Fn(&SessionStatus) -> Option<OnlineInfo>,
    ) -> Result<OnlineInfo, SessionError> {
        let mut rx = self.status.clone();
        let deadline = Instant::now() + timeout;
        let mut last_problem = None;
        loop {
            {
                let status = rx.borrow_and_update();
                if let Some(info) = want(&status) {
                    return Ok(info);
                }
                match &*status {
                    SessionStatus::Stopped(Some(e)) => return Err(e.clone()),
                    SessionStatus::Stopped(None) => return Err(SessionError::Stopped),
                    SessionStatus::Offline { reason, .. } => {
                        last_problem = Some(Box::new(reason.clone()));
                    }
                    _ => {}
                }
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(SessionError::Stopped),
                Err(_) => {
                    return Err(SessionError::NotOnline {
                        waited: timeout,
                        last_problem,
                    });
                }
            }
        }
    }

    /// Sends `PacketConnectionRequest` for `peer` with our private endpoint.
    pub async fn request(
        &self,
        peer: Uuid,
        private_endpoint: Endpoint,
    ) -> Result<(), SessionError> {
        self.command(|tx| Command::Request(peer, private_endpoint, tx))
            .await
    }

    /// Sends `PacketConnectionRequestAccept` for `peer` with our private endpoint.
    pub async fn accept(&self, peer: Uuid, private_endpoint: Endpoint) -> Result<(), SessionError> {
        self.command(|tx| Command::Accept(peer, private_endpoint, tx))
            .await
    }

    /// Sends `PacketConnectionRequestDenied` for `peer`.
    pub async fn deny(&self, peer: Uuid) -> Result<(), SessionError> {
        self.command(|tx| Command::Deny(peer, tx)).await
    }

    /// Sets what we share through presence (kept across reconnects: it is sent after
    /// every login to a server that offers presence). Works offline too.
    pub async fn set_presence(&self, wanted: PresenceWanted) -> Result<(), SessionError> {
        self.command(|tx| Command::SetPresence(wanted, tx)).await
    }

    /// What every following request and accept tells the peer about our NAT and extra
    /// candidates (sent to version-3 servers only).
    pub fn set_link_hints(&self, hints: chatr_proto::LinkHints) {
        self.hints.send_replace(hints);
    }

    /// The hints our requests and accepts carry now.
    pub fn link_hints(&self) -> chatr_proto::LinkHints {
        self.hints.borrow().clone()
    }

    /// Tells the server we no longer need `relay` (version 3; best effort, never
    /// waits): it can free the relay at once instead of at its idle timeout.
    pub fn close_relay(&self, relay: chatr_proto::RelayId) {
        let (tx, _) = oneshot::channel();
        let _ = self.commands.try_send(Command::CloseRelay(relay, tx));
    }

    /// Hands a control datagram that arrived on the shared UDP socket to the
    /// session (binding responses). Never blocks; drops when the queue is full.
    pub fn deliver_udp(&self, from: SocketAddr, message: UdpMessage) {
        let _ = self.udp_in.try_send((from, message));
    }

    async fn command(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<(), SessionError>>) -> Command,
    ) -> Result<(), SessionError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| SessionError::Stopped)?;
        rx.await.map_err(|_| SessionError::Stopped)?
    }
}
