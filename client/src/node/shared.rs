//! Routing tables shared by the client's tasks.
//!
//! Three things arrive on shared channels and must reach the one waiter they
//! belong to: brokering packets from the session (by peer UUID), hole-punching
//! datagrams from the UDP socket (by exchange id), and incoming QUIC links (by
//! the peer's key, else by the address we punched). Each waiter registers here
//! and gets a guard that unregisters it when dropped, so an abandoned attempt
//! never leaks an entry. Locks are plain mutexes held for a lookup only, never
//! across an `.await`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use chatr_proto::{Endpoint, LINK_SECRET_LEN};
use ed25519_dalek::VerifyingKey;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::link::{IncomingLink, Source};
use crate::net::canonical;
use crate::punch::ExchangeId;
use crate::stun::TransactionId;

/// What the session told us about one exchange.
#[derive(Debug, Clone)]
pub(crate) enum Brokered {
    /// The peer accepted (initiator side), with its private endpoint and hints.
    Accepted(Endpoint, Option<chatr_proto::LinkHints>),
    /// The peer denied, or is offline.
    Denied,
    /// The server's `PacketClientInfo`.
    ClientInfo(ClientInfo),
    /// The session to the server was lost: no more brokering for this exchange.
    SessionLost(String),
}

/// `PacketClientInfo`, as the link attempt needs it.
#[derive(Debug, Clone)]
pub(crate) struct ClientInfo {
    pub(crate) public_endpoint: Endpoint,
    pub(crate) tcp_endpoint: Option<Endpoint>,
    pub(crate) link_secret: Option<[u8; LINK_SECRET_LEN]>,
    pub(crate) relay_id: Option<chatr_proto::RelayId>,
}

struct QuicWaiter {
    id: u64,
    key: VerifyingKey,
    /// The virtual address the peer's link will come from, once its route exists.
    virtual_addr: Option<SocketAddr>,
    tx: oneshot::Sender<IncomingLink>,
}

/// What reaches one link's agent from outside its own attempt.
#[derive(Debug)]
pub(crate) enum LinkInput {
    /// A probe of its exchange, and where it came from.
    Datagram(Source, Bytes),
    /// The server closed the exchange's relay.
    RelayClosed,
}

/// The routing tables.
#[derive(Default)]
pub(crate) struct Shared {
    exchanges: Mutex<HashMap<Uuid, mpsc::Sender<Brokered>>>,
    punches: Mutex<HashMap<ExchangeId, mpsc::Sender<LinkInput>>>,
    relays: Mutex<HashMap<chatr_proto::RelayId, ExchangeId>>,
    quic_waiters: Mutex<Vec<QuicWaiter>>,
    stun_waiters: Mutex<HashMap<TransactionId, oneshot::Sender<SocketAddr>>>,
    next_id: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks cannot leave a table half
    // updated (every update is a single insert/remove), so keep going.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    // ----- brokering -----

    /// Registers interest in brokering packets about `peer`; `None` if another
    /// attempt with that peer is in progress.
    pub(crate) fn register_exchange(
        self: &Arc<Self>,
        peer: Uuid,
    ) -> Option<(ExchangeGuard, mpsc::Receiver<Brokered>)> {
        let mut map = lock(&self.exchanges);
        if map.get(&peer).is_some_and(|tx| !tx.is_closed()) {
            return None;
        }
        let (tx, rx) = mpsc::channel(8);
        map.insert(peer, tx);
        Some((
            ExchangeGuard {
                shared: self.clone(),
                peer,
            },
            rx,
        ))
    }

    /// Hands a brokering packet to the attempt with `peer`; `false` if none.
    pub(crate) fn route_brokered(&self, peer: Uuid, msg: Brokered) -> bool {
        match lock(&self.exchanges).get(&peer) {
            Some(tx) => tx.try_send(msg).is_ok(),
            None => false,
        }
    }

    /// Tells every attempt waiting for brokering that the session is gone.
    pub(crate) fn session_lost(&self, why: &str) {
        for tx in lock(&self.exchanges).values() {
            let _ = tx.try_send(Brokered::SessionLost(why.to_string()));
        }
    }

    // ----- punching -----

    /// Routes the probes of exchange `id` (and news of its `relay`) to `tx`.
    pub(crate) fn add_punch(
        &self,
        id: ExchangeId,
        relay: Option<chatr_proto::RelayId>,
        tx: mpsc::Sender<LinkInput>,
    ) {
        lock(&self.punches).insert(id, tx);
        if let Some(relay) = relay {
            lock(&self.relays).insert(relay, id);
        }
    }

    /// Stops routing exchange `id`.
    pub(crate) fn remove_punch(&self, id: &ExchangeId) {
        lock(&self.punches).remove(id);
        lock(&self.relays).retain(|_, exchange| exchange != id);
    }

    /// Tells the link whose relay is `relay` that the server closed it.
    pub(crate) fn relay_closed(&self, relay: &chatr_proto::RelayId) {
        let id = lock(&self.relays).get(relay).copied();
        if let Some(id) = id
            && let Some(tx) = lock(&self.punches).get(&id)
        {
            let _ = tx.try_send(LinkInput::RelayClosed);
        }
    }

    /// Hands a probe to its punch; dropped if unknown or its queue is full
    /// (probes are retransmitted anyway).
    pub(crate) fn route_probe(&self, id: &ExchangeId, from: Source, datagram: Bytes) {
        if let Some(tx) = lock(&self.punches).get(id) {
            let _ = tx.try_send(LinkInput::Datagram(from, datagram));
        }
    }

    // ----- incoming QUIC links -----

    /// Waits for an incoming link from the peer with `key` (or, failing a key
    /// match, at the virtual address later set with [`Shared::set_virtual`]).
    pub(crate) fn add_quic_waiter(
        self: &Arc<Self>,
        key: VerifyingKey,
    ) -> (WaiterGuard, oneshot::Receiver<IncomingLink>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.quic_waiters).push(QuicWaiter {
            id,
            key,
            virtual_addr: None,
            tx,
        });
        (
            WaiterGuard {
                shared: self.clone(),
                id,
            },
            rx,
        )
    }

    /// The virtual address the waiter's peer connects from. A link from there with
    /// another key goes to this waiter, which refuses it as a key mismatch.
    pub(crate) fn set_virtual(&self, guard: &WaiterGuard, virtual_addr: SocketAddr) {
        if let Some(w) = lock(&self.quic_waiters)
            .iter_mut()
            .find(|w| w.id == guard.id)
        {
            w.virtual_addr = Some(virtual_addr);
        }
    }

    /// Gives an incoming link to its waiter, or returns it if nobody waits for it.
    pub(crate) fn dispatch_incoming(&self, incoming: IncomingLink) -> Option<IncomingLink> {
        let mut waiters = lock(&self.quic_waiters);
        let key = incoming.peer_key();
        let remote = canonical(incoming.remote_addr());
        let index = waiters
            .iter()
            .position(|w| w.virtual_addr == Some(remote))
            .or_else(|| waiters.iter().position(|w| w.key == key));
        match index {
            Some(i) => {
                let waiter = waiters.swap_remove(i);
                waiter.tx.send(incoming).err()
            }
            None => Some(incoming),
        }
    }

    // ----- STUN -----

    /// Waits for the STUN response with `txid`.
    pub(crate) fn add_stun(&self, txid: TransactionId) -> oneshot::Receiver<SocketAddr> {
        let (tx, rx) = oneshot::channel();
        lock(&self.stun_waiters).insert(txid, tx);
        rx
    }

    /// Delivers a STUN response.
    pub(crate) fn complete_stun(&self, txid: &TransactionId, mapped: SocketAddr) {
        if let Some(tx) = lock(&self.stun_waiters).remove(txid) {
            let _ = tx.send(mapped);
        }
    }

    /// Forgets a STUN transaction.
    pub(crate) fn cancel_stun(&self, txid: &TransactionId) {
        lock(&self.stun_waiters).remove(txid);
    }
}

/// Unregisters a brokering waiter when dropped.
pub(crate) struct ExchangeGuard {
    shared: Arc<Shared>,
    peer: Uuid,
}

impl Drop for ExchangeGuard {
    fn drop(&mut self) {
        lock(&self.shared.exchanges).remove(&self.peer);
    }
}

/// Unregisters a QUIC waiter when dropped.
pub(crate) struct WaiterGuard {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for WaiterGuard {
    fn drop(&mut self) {
        lock(&self.shared.quic_waiters).retain(|w| w.id != self.id);
    }
}
