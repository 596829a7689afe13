//! The links a long-running client keeps: at most one per peer, shared by everything
//! that talks to that peer (two-party chat, files, every room both are in).
//!
//! [`Peers`] answers incoming link requests with a [`KeyPolicy`] (contacts, room
//! members, or deny), dials on demand ([`Peers::link`]; concurrent callers share one
//! attempt), and runs one stream-accepting task per link that hands room streams to
//! one channel and every other stream to another.
//!
//! **Both sides dialling at once.** A room mesh makes that common: A asks the server
//! for B while B asks for A, and each side's exchange slot for the other is taken. The
//! rule that settles it without a round trip: the **lower UUID's dial wins**. The
//! lower side denies the higher side's request; the higher side drops its own attempt
//! and accepts the lower side's.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use ed25519_dalek::VerifyingKey;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::error::ClientError;
use crate::link::{LinkStream, PeerLink, StreamKind};
use crate::node::{Client, IncomingRequest};

/// Decides who may link with us, and with which key.
pub trait KeyPolicy: Send + Sync + 'static {
    /// The key `peer` must prove, or `None` to deny its request.
    fn key_for(&self, peer: &Uuid) -> Option<VerifyingKey>;
}

/// Why [`Peers::link`] failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum PeersError {
    /// The link attempt failed.
    #[error(transparent)]
    Link(Arc<ClientError>),
    /// The pool stopped, or the attempt was given up for the peer's own.
    #[error("the link attempt was abandoned")]
    Abandoned,
}

type Waiter = oneshot::Sender<Result<PeerLink, PeersError>>;

enum Slot {
    Up(PeerLink),
    /// Our request is out; `task` runs it.
    Dialing {
        task: JoinHandle<()>,
        waiters: Vec<Waiter>,
    },
    /// We are accepting the peer's request.
    Accepting {
        waiters: Vec<Waiter>,
    },
}

struct Inner {
    client: Client,
    policy: Arc<dyn KeyPolicy>,
    slots: Mutex<HashMap<Uuid, Slot>>,
    rooms: mpsc::Sender<(Uuid, LinkStream)>,
    others: mpsc::Sender<(Uuid, LinkStream)>,
    shutdown: CancellationToken,
}

/// The link pool of one client. Cheap to clone.
#[derive(Clone)]
pub struct Peers {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peers").finish_non_exhaustive()
    }
}

/// The streams peers open: room streams, and everything else.
#[derive(Debug)]
pub struct PeerStreams {
    /// Streams of kind [`StreamKind::Room`].
    pub rooms: mpsc::Receiver<(Uuid, LinkStream)>,
    /// Every other kind (chat, pipe, file).
    pub others: mpsc::Receiver<(Uuid, LinkStream)>,
}

fn lock(m: &Mutex<HashMap<Uuid, Slot>>) -> MutexGuard<'_, HashMap<Uuid, Slot>> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn alive(link: &PeerLink) -> bool {
    link.connection().close_reason().is_none()
}

impl Peers {
    /// Starts answering `client`'s link requests with `policy`. Takes over
    /// [`Client::next_request`]: nothing else should read it. Stops when `client`
    /// shuts down or [`Peers::stop`] is called.
    pub fn start(client: Client, policy: Arc<dyn KeyPolicy>) -> (Peers, PeerStreams) {
        let (rooms_tx, rooms) = mpsc::channel(64);
        let (others_tx, others) = mpsc::channel(64);
        let peers = Peers {
            inner: Arc::new(Inner {
                client,
                policy,
                slots: Mutex::new(HashMap::new()),
                rooms: rooms_tx,
                others: others_tx,
                shutdown: CancellationToken::new(),
            }),
        };
        tokio::spawn(peers.clone().answer_requests());
        (peers, PeerStreams { rooms, others })
    }

    /// The client.
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    /// Stops answering requests (links stay until closed).
    pub fn stop(&self) {
        self.inner.shutdown.cancel();
    }

    /// The link to `peer` if one is up.
    pub fn get(&self, peer: &Uuid) -> Option<PeerLink> {
        match lock(&self.inner.slots).get(peer) {
            Some(Slot::Up(link)) if alive(link) => Some(link.clone()),
            _ => None,
        }
    }

    /// Every link that is up.
    pub fn links(&self) -> Vec<(Uuid, PeerLink)> {
        lock(&self.inner.slots)
            .iter()
            .filter_map(|(u, s)| match s {
                Slot::Up(link) if alive(link) => Some((*u, link.clone())),
                _ => None,
            })
            .collect()
    }

    /// The link to `peer` (which must prove `key`): the one up, the attempt under way,
    /// or a new request.
    pub async fn link(&self, peer: Uuid, key: VerifyingKey) -> Result<PeerLink, PeersError> {
        let rx = {
            let mut slots = lock(&self.inner.slots);
            let (tx, rx) = oneshot::channel();
            match slots.get_mut(&peer) {
                Some(Slot::Up(link)) if alive(link) => return Ok(link.clone()),
                Some(Slot::Dialing { waiters, .. } | Slot::Accepting { waiters }) => {
                    waiters.push(tx);
                }
                _ => {
                    let this = self.clone();
                    let task = tokio::spawn(async move {
                        let result = this.inner.client.request_link(peer, key).await;
                        this.finish(
                            peer,
                            result
                                .map(|(l, _)| l)
                                .map_err(|e| PeersError::Link(Arc::new(e))),
                        );
                    });
                    slots.insert(
                        peer,
                        Slot::Dialing {
                            task,
                            waiters: vec![tx],
                        },
                    );
                }
            }
            rx
        };
        rx.await.unwrap_or(Err(PeersError::Abandoned))
    }

    /// An attempt ended: record the link (and serve its streams) or forget the slot.
    fn finish(&self, peer: Uuid, result: Result<PeerLink, PeersError>) {
        let waiters = {
            let mut slots = lock(&self.inner.slots);
            let waiters = match slots.remove(&peer) {
                Some(Slot::Dialing { waiters, .. } | Slot::Accepting { waiters }) => waiters,
                Some(up @ Slot::Up(_)) => {
                    // A link from the other direction won meanwhile; keep it.
                    slots.insert(peer, up);
                    Vec::new()
                }
                None => Vec::new(),
            };
            if let Ok(link) = &result {
                slots.insert(peer, Slot::Up(link.clone()));
            }
            waiters
        };
        if let Ok(link) = &result {
            tokio::spawn(self.clone().serve_streams(peer, link.clone()));
        }
        for w in waiters {
            let _ = w.send(result.clone());
        }
    }

    async fn answer_requests(self) {
        loop {
            let req = tokio::select! {
                _ = self.inner.shutdown.cancelled() => return,
                r = self.inner.client.next_request() => match r {
                    Some(r) => r,
                    None => return,
                },
            };
            self.on_request(req).await;
        }
    }

    async fn on_request(&self, req: IncomingRequest) {
        let peer = req.peer();
        let Some(key) = self.inner.policy.key_for(&peer) else {
            tracing::info!(%peer, "link request from someone we do not know; denied");
            let _ = req.deny().await;
            return;
        };
        let me = self.inner.client.uuid();
        let dial = {
            let mut slots = lock(&self.inner.slots);
            match slots.remove(&peer) {
                Some(Slot::Dialing { task, waiters }) if me > peer => {
                    // The lower UUID's dial wins: give ours up and accept theirs.
                    task.abort();
                    slots.insert(peer, Slot::Accepting { waiters });
                    Ok(Some(task))
                }
                Some(other @ (Slot::Dialing { .. } | Slot::Accepting { .. })) => {
                    slots.insert(peer, other);
                    Err(())
                }
                // A new request while a link is up: the peer restarted or lost it.
                Some(Slot::Up(_)) | None => {
                    slots.insert(
                        peer,
                        Slot::Accepting {
                            waiters: Vec::new(),
                        },
                    );
                    Ok(None)
                }
            }
        };
        let Ok(dial) = dial else {
            tracing::debug!(%peer, "both sides dialled; ours wins");
            let _ = req.deny().await;
            return;
        };
        let this = self.clone();
        tokio::spawn(async move {
            if let Some(task) = dial {
                // The aborted attempt frees its exchange slot when it is dropped.
                let _ = task.await;
            }
            let result = req.accept(key).await;
            this.finish(
                peer,
                result
                    .map(|(l, _)| l)
                    .map_err(|e| PeersError::Link(Arc::new(e))),
            );
        });
    }

    async fn serve_streams(self, peer: Uuid, link: PeerLink) {
        loop {
            let stream = tokio::select! {
                _ = self.inner.shutdown.cancelled() => break,
                s = link.accept_stream() => match s {
                    Ok(s) => s,
                    Err(_) => break,
                },
            };
            let to = if stream.kind() == StreamKind::Room {
                &self.inner.rooms
            } else {
                &self.inner.others
            };
            if let Err(mpsc::error::TrySendError::Full((_, mut stream))) =
                to.try_send((peer, stream))
            {
                tracing::warn!(%peer, "too many unhandled streams; refusing one");
                stream.abort(crate::link::CloseCode::Refused);
            }
        }
        let mut slots = lock(&self.inner.slots);
        if let Some(Slot::Up(current)) = slots.get(&peer)
            && current.connection().stable_id() == link.connection().stable_id()
        {
            slots.remove(&peer);
        }
    }
}
