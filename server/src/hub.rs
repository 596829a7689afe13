//! The hub: who is online, and how sessions reach each other.
//!
//! Every logged-in session has one entry in a `DashMap<Uuid, SessionEntry>`:
//! the sender halves of its two **bounded** inboxes, a kick switch, and what the
//! server observed about it (TCP source, UDP mapping, UDP token). Brokering is
//! message passing: session A's machine asks to forward a `PeerEvent` to B;
//! the hub stamps it with A's UUID and current endpoints and `try_send`s it to
//! one of B's inboxes:
//!
//! - **owed**: what B is owed because of its own actions — answers to its
//!   requests (Accept, Denied, ClientInfo) and takeover probes. At most a few
//!   per request B made, so it cannot be filled by others.
//! - **pushed**: what others push at B — their ConnectionRequests. When it is
//!   full the *sender* is told B is unavailable (Denied); B is not harmed.
//!
//! A full inbox never disconnects anyone: a client that really stops reading is
//! ended by its own write deadline. Map guards are only held for the duration
//! of a synchronous lookup, never across an `.await`.
//!
//! Login claims go through here too ([`Hub`] decides atomically whether a UUID
//! is free), as do duplicate-UUID probes and takeovers, admin kicks and the UDP
//! binding tokens.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use chatr_proto::udp::{BINDING_KEY_LEN, UdpMessage};
use chatr_proto::{DisconnectReason, UDP_TOKEN_LEN};
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use uuid::Uuid;

use crate::metrics::Metrics;
use crate::relay::RelayOut;
use crate::session::{ClaimOutcome, HubEvent, PeerEndpoints, PeerEvent};

/// What the server knows about one logged-in session, shared between its
/// driver, the hub and the UDP endpoint.
#[derive(Debug)]
pub(crate) struct SessionShared {
    /// Unique per connection (a UUID may come back on a new connection).
    pub(crate) id: u64,
    pub(crate) uuid: Uuid,
    /// Source address of the TLS connection.
    pub(crate) tcp: SocketAddr,
    /// Token of the UDP binding message (extended-layout clients only).
    pub(crate) udp_token: Option<[u8; UDP_TOKEN_LEN]>,
    udp: Mutex<Option<SocketAddr>>,
    /// Version 3 only: what the session's client needs beyond version 2.
    v3: Option<SessionV3>,
}

/// What the server keeps for a version-3 session.
#[derive(Debug)]
pub(crate) struct SessionV3 {
    /// Authenticates the client's UDP binding requests (exported from its TLS session).
    binding_key: [u8; BINDING_KEY_LEN],
    /// The highest binding counter accepted so far.
    binding_counter: AtomicU64,
    /// Where relayed datagrams and relay notices for this client go (its TLS writer).
    relay: mpsc::Sender<RelayOut>,
}

impl SessionV3 {
    /// The version-3 state of a session whose TLS session exported `binding_key`.
    pub(crate) fn new(binding_key: [u8; BINDING_KEY_LEN], relay: mpsc::Sender<RelayOut>) -> Self {
        Self {
            binding_key,
            binding_counter: AtomicU64::new(0),
            relay,
        }
    }
}

impl SessionShared {
    pub(crate) fn new(
        id: u64,
        uuid: Uuid,
        tcp: SocketAddr,
        udp_token: Option<[u8; UDP_TOKEN_LEN]>,
    ) -> Self {
        Self {
            id,
            uuid,
            tcp,
            udp_token,
            udp: Mutex::new(None),
            v3: None,
        }
    }

    /// The same session, speaking version 3.
    pub(crate) fn with_v3(mut self, v3: SessionV3) -> Self {
        self.v3 = Some(v3);
        self
    }

    /// The endpoints as of now.
    pub(crate) fn endpoints(&self) -> PeerEndpoints {
        PeerEndpoints {
            tcp: self.tcp,
            udp: self.udp_endpoint(),
            v3: self.v3.is_some(),
        }
    }

    /// The UDP endpoint of the last accepted binding, if any.
    pub(crate) fn udp_endpoint(&self) -> Option<SocketAddr> {
        *self.udp.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The queue of relayed datagrams for this session's client (version 3 only).
    pub(crate) fn relay_queue(&self) -> Option<&mpsc::Sender<RelayOut>> {
        self.v3.as_ref().map(|v3| &v3.relay)
    }

    fn set_udp(&self, observed: SocketAddr) {
        *self.udp.lock().unwrap_or_else(PoisonError::into_inner) = Some(observed);
    }

    /// Whether an authenticated binding request with `counter` and a valid tag may
    /// move this session's endpoint: the counter must beat every one accepted before.
    fn accept_binding_counter(&self, counter: u64) -> bool {
        let Some(v3) = &self.v3 else {
            return false;
        };
        v3.binding_counter
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |last| {
                (counter > last).then_some(counter)
            })
            .is_ok()
    }
}

/// A switch that ends a session from outside (admin, takeover, slow reader).
/// The first reason given wins.
#[derive(Debug, Clone, Default)]
pub(crate) struct Kick {
    token: CancellationToken,
    reason: Arc<Mutex<Option<String>>>,
}

impl Kick {
    /// Ends the session; with `reason` its client gets PacketDisconnect(reason).
    pub(crate) fn kick(&self, reason: Option<&str>) {
        if self.token.is_cancelled() {
            return;
        }
        if let Some(reason) = reason {
            let mut slot = self.reason.lock().unwrap_or_else(PoisonError::into_inner);
            slot.get_or_insert_with(|| reason.to_string());
        }
        self.token.cancel();
    }

    /// Resolves once kicked. The future owns its token handle, so a driver
    /// can keep one pinned for the session's life instead of registering a
    /// new waiter on every loop turn.
    pub(crate) fn kicked(&self) -> WaitForCancellationFutureOwned {
        self.token.clone().cancelled_owned()
    }

    /// The message to send, if any.
    pub(crate) fn reason(&self) -> Option<String> {
        self.reason
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// What lands in a session's inbox.
///
/// Kept pointer-sized: tokio's bounded channel allocates its first block of
/// 32 slots when the channel is created, so every idle session pays 32 ×
/// `size_of::<Mailbox>()`. An inline [`HubEvent`] (UUID, two socket addresses
/// and an endpoint or link secret) made that ~4 KiB per session; boxed it is
/// ~0.5 KiB, for one small allocation per brokered message.
#[derive(Debug)]
pub(crate) enum Mailbox {
    /// Feed to the machine.
    Event(Box<HubEvent>),
    /// A newcomer with our UUID asks whether we are alive; answer (send `()`)
    /// once our client pongs. Dropping the sender means "dead".
    Probe(oneshot::Sender<()>),
}

/// A session as registered in the hub.
#[derive(Debug, Clone)]
pub(crate) struct SessionEntry {
    pub(crate) shared: Arc<SessionShared>,
    /// Requests others push at this session.
    pub(crate) inbox: mpsc::Sender<Mailbox>,
    /// What this session is owed: answers to its own requests, probes.
    pub(crate) owed: mpsc::Sender<Mailbox>,
    pub(crate) kick: Kick,
}

/// The registry of online sessions. Cheap to clone; clones share state.
#[derive(Debug, Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    sessions: DashMap<Uuid, SessionEntry>,
    tokens: DashMap<[u8; UDP_TOKEN_LEN], Arc<SessionShared>>,
    next_id: AtomicU64,
    metrics: Arc<Metrics>,
}

impl Hub {
    /// An empty hub reporting to `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            inner: Arc::new(Inner {
                sessions: DashMap::new(),
                tokens: DashMap::new(),
                next_id: AtomicU64::new(1),
                metrics,
            }),
        }
    }

    // ----- public: operators, admin, tests -----

    /// Whether `uuid` has a logged-in session.
    pub fn is_connected(&self, uuid: &Uuid) -> bool {
        self.inner.sessions.contains_key(uuid)
    }

    /// Number of logged-in sessions.
    pub fn len(&self) -> usize {
        self.inner.sessions.len()
    }

    /// Whether nobody is logged in.
    pub fn is_empty(&self) -> bool {
        self.inner.sessions.is_empty()
    }

    /// The UUIDs of all logged-in sessions, sorted.
    pub fn connected(&self) -> Vec<Uuid> {
        let mut all: Vec<Uuid> = self.inner.sessions.iter().map(|e| *e.key()).collect();
        all.sort_unstable();
        all
    }

    /// The UDP mapping observed for `uuid`'s session, if it sent a binding.
    pub fn udp_endpoint(&self, uuid: &Uuid) -> Option<SocketAddr> {
        self.session_of(uuid)?.udp_endpoint()
    }

    /// What the server knows about `uuid`'s session, if it is logged in.
    pub(crate) fn session_of(&self, uuid: &Uuid) -> Option<Arc<SessionShared>> {
        self.inner.sessions.get(uuid).map(|e| Arc::clone(&e.shared))
    }

    /// Ends `uuid`'s session: its client gets PacketDisconnect(`message`),
    /// then the connection closes. Returns whether it was online. (Admin
    /// "identity remove" uses this.)
    pub fn disconnect(&self, uuid: &Uuid, message: &str) -> bool {
        let kick = self.inner.sessions.get(uuid).map(|e| e.kick.clone());
        match kick {
            Some(kick) => {
                kick.kick(Some(message));
                true
            }
            None => false,
        }
    }

    /// Ends every logged-in session with PacketDisconnect(`message`). Returns
    /// how many were kicked. (Server shutdown reaches every connection,
    /// logged in or not, through the shutdown token as well.)
    pub fn disconnect_all(&self, message: &str) -> usize {
        let kicks: Vec<Kick> = self.inner.sessions.iter().map(|e| e.kick.clone()).collect();
        for kick in &kicks {
            kick.kick(Some(message));
        }
        kicks.len()
    }

    // ----- crate: sessions and the UDP endpoint -----

    /// A fresh connection id.
    pub(crate) fn next_id(&self) -> u64 {
        self.inner.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Registers `entry` if its UUID is free.
    pub(crate) fn claim(&self, entry: SessionEntry) -> ClaimOutcome {
        self.take_over(entry, None)
    }

    /// Registers `entry`, replacing the session `old_id` if that is the one
    /// holding the UUID (it failed the probe). Any other holder wins.
    pub(crate) fn take_over(&self, entry: SessionEntry, old_id: Option<u64>) -> ClaimOutcome {
        let uuid = entry.shared.uuid;
        let new_shared = Arc::clone(&entry.shared);
        let replaced = match self.inner.sessions.entry(uuid) {
            Entry::Vacant(slot) => {
                slot.insert(entry);
                None
            }
            Entry::Occupied(mut slot) if Some(slot.get().shared.id) == old_id => {
                Some(slot.insert(entry))
            }
            Entry::Occupied(_) => return ClaimOutcome::Occupied,
        };
        if let Some(old) = replaced {
            tracing::info!(%uuid, "dead session replaced by a new login");
            self.forget_token(&old.shared);
            old.kick.kick(Some(DisconnectReason::TimeOut.as_str()));
        }
        if let Some(token) = new_shared.udp_token {
            self.inner.tokens.insert(token, new_shared);
        }
        self.inner.metrics.client_connected();
        ClaimOutcome::Admitted
    }

    /// Asks the session holding `uuid` to prove it is alive. `None` when no
    /// session holds it any more. The receiver yields `Ok` if it answered and
    /// an error if it went away (or could not even be asked).
    pub(crate) fn probe(&self, uuid: &Uuid) -> Option<(u64, oneshot::Receiver<()>)> {
        let entry = self.inner.sessions.get(uuid).map(|e| e.value().clone())?;
        let (answer, answered) = oneshot::channel();
        if entry.owed.try_send(Mailbox::Probe(answer)).is_err() {
            // Inbox full: not reading; treated as dead (the dropped sender
            // resolves the receiver at once).
            tracing::debug!(%uuid, "could not probe the existing session");
        }
        Some((entry.shared.id, answered))
    }

    /// Delivers `event` from `from` to `to`'s session. On failure (offline, or
    /// the inbox for that kind of event full) the event is handed back; nobody
    /// is disconnected for it.
    pub(crate) fn forward(
        &self,
        from: &SessionShared,
        to: Uuid,
        event: PeerEvent,
    ) -> Result<(), PeerEvent> {
        let Some(target) = self.inner.sessions.get(&to).map(|e| e.value().clone()) else {
            return Err(event);
        };
        let pushed = matches!(event, PeerEvent::Request { .. });
        let message = Mailbox::Event(Box::new(HubEvent::Peer {
            from: from.uuid,
            endpoints: from.endpoints(),
            event: event.clone(),
        }));
        let inbox = if pushed { &target.inbox } else { &target.owed };
        match inbox.try_send(message) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => {
                if pushed {
                    tracing::debug!(uuid = %to, "too many requests queued for this session; denying");
                    self.inner
                        .metrics
                        .brokered(crate::metrics::BrokerResult::Busy);
                } else {
                    // Only a session whose task is stuck (its client does not read) can
                    // fall this far behind on its own answers; its write deadline ends it.
                    tracing::warn!(uuid = %to, "session is not taking its answers; dropping one");
                }
                Err(event)
            }
            Err(TrySendError::Closed(_)) => Err(event),
        }
    }

    /// Removes a session that ended (if it is still the one registered).
    pub(crate) fn remove(&self, shared: &SessionShared) {
        self.inner
            .sessions
            .remove_if(&shared.uuid, |_, entry| entry.shared.id == shared.id);
        self.forget_token(shared);
        self.inner.metrics.client_disconnected();
    }

    /// Records `observed` as the UDP mapping of the session that holds
    /// `token`. Returns that session's UUID and its TCP source, or `None` for
    /// an unknown token, or for a version-3 session (whose binding requests must
    /// be authenticated: [`Hub::bind_udp_auth`]).
    pub(crate) fn bind_udp(
        &self,
        token: &[u8; UDP_TOKEN_LEN],
        observed: SocketAddr,
    ) -> Option<(Uuid, SocketAddr)> {
        let shared = self
            .inner
            .tokens
            .get(token)
            .map(|e| Arc::clone(e.value()))?;
        if shared.v3.is_some() {
            return None;
        }
        shared.set_udp(observed);
        Some((shared.uuid, shared.tcp))
    }

    /// Like [`Hub::bind_udp`] for an authenticated (version-3) binding request: the
    /// tag must verify with the session's binding key and the counter must be higher
    /// than any accepted before, so a replayed or forged request moves nothing.
    pub(crate) fn bind_udp_auth(
        &self,
        request: &UdpMessage,
        observed: SocketAddr,
    ) -> Option<(Uuid, SocketAddr)> {
        let UdpMessage::BindingRequestAuth { token, counter, .. } = request else {
            return None;
        };
        let shared = self
            .inner
            .tokens
            .get(token)
            .map(|e| Arc::clone(e.value()))?;
        let key = &shared.v3.as_ref()?.binding_key;
        if !request.verify_binding_auth(key) || !shared.accept_binding_counter(*counter) {
            return None;
        }
        shared.set_udp(observed);
        Some((shared.uuid, shared.tcp))
    }

    fn forget_token(&self, shared: &SessionShared) {
        if let Some(token) = shared.udp_token {
            self.inner
                .tokens
                .remove_if(&token, |_, holder| holder.id == shared.id);
        }
    }
}

impl crate::admin::SessionControl for Hub {
    fn disconnect(&self, uuid: &Uuid, message: &str) -> bool {
        Hub::disconnect(self, uuid, message)
    }
}

#[cfg(test)]
mod tests {
    use chatr_proto::Endpoint;

    use super::*;

    fn entry(
        hub: &Hub,
        uuid: Uuid,
        token: Option<[u8; 16]>,
        queue: usize,
    ) -> (SessionEntry, mpsc::Receiver<Mailbox>) {
        let (entry, rx, _owed) = entry_both(hub, uuid, token, queue);
        (entry, rx)
    }

    /// An entry, its pushed inbox and its owed inbox (both of `queue` slots).
    fn entry_both(
        hub: &Hub,
        uuid: Uuid,
        token: Option<[u8; 16]>,
        queue: usize,
    ) -> (
        SessionEntry,
        mpsc::Receiver<Mailbox>,
        mpsc::Receiver<Mailbox>,
    ) {
        let (inbox, rx) = mpsc::channel(queue);
        let (owed, owed_rx) = mpsc::channel(queue);
        let shared = Arc::new(SessionShared::new(
            hub.next_id(),
            uuid,
            "192.0.2.1:4000".parse().unwrap(),
            token,
        ));
        (
            SessionEntry {
                shared,
                inbox,
                owed,
                kick: Kick::default(),
            },
            rx,
            owed_rx,
        )
    }

    fn hub() -> (Hub, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::default());
        (Hub::new(Arc::clone(&metrics)), metrics)
    }

    #[test]
    fn claim_is_exclusive_and_remove_frees() {
        let (hub, metrics) = hub();
        let uuid = Uuid::from_bytes([1; 16]);
        let (a, _ra) = entry(&hub, uuid, None, 4);
        let (b, _rb) = entry(&hub, uuid, None, 4);
        assert_eq!(hub.claim(a.clone()), ClaimOutcome::Admitted);
        assert_eq!(hub.claim(b.clone()), ClaimOutcome::Occupied);
        assert!(hub.is_connected(&uuid));
        assert_eq!(metrics.connected_clients(), 1);
        // Removing a session that is not the registered one changes nothing.
        hub.remove(&b.shared);
        assert!(hub.is_connected(&uuid));
        hub.remove(&a.shared);
        assert!(!hub.is_connected(&uuid));
        assert_eq!(hub.claim(b), ClaimOutcome::Admitted);
    }

    #[test]
    fn take_over_only_replaces_the_probed_session() {
        let (hub, metrics) = hub();
        let uuid = Uuid::from_bytes([1; 16]);
        let (old, _r0) = entry(&hub, uuid, Some([1; 16]), 4);
        let (new1, _r1) = entry(&hub, uuid, Some([2; 16]), 4);
        let (new2, _r2) = entry(&hub, uuid, Some([3; 16]), 4);
        hub.claim(old.clone());
        let old_id = old.shared.id;
        assert_eq!(
            hub.take_over(new1.clone(), Some(old_id)),
            ClaimOutcome::Admitted
        );
        assert!(old.kick.token.is_cancelled());
        assert_eq!(
            old.kick.reason().as_deref(),
            Some(DisconnectReason::TimeOut.as_str())
        );
        // The old token no longer binds; the new one does.
        let addr: SocketAddr = "198.51.100.1:9".parse().unwrap();
        assert_eq!(hub.bind_udp(&[1; 16], addr), None);
        assert_eq!(
            hub.bind_udp(&[2; 16], addr).map(|(bound, _tcp)| bound),
            Some(uuid)
        );
        // A second newcomer that probed the same old session loses.
        assert_eq!(hub.take_over(new2, Some(old_id)), ClaimOutcome::Occupied);
        // The replaced session ending does not unregister the new one.
        hub.remove(&old.shared);
        assert!(hub.is_connected(&uuid));
        assert_eq!(hub.udp_endpoint(&uuid), Some(addr));
        assert_eq!(metrics.connected_clients(), 1);
    }

    #[test]
    fn forward_stamps_sender_and_never_kicks_a_busy_target() {
        let (hub, _) = hub();
        let (a, _ra) = entry(&hub, Uuid::from_bytes([1; 16]), Some([7; 16]), 4);
        let (b, mut rb, mut owed) = entry_both(&hub, Uuid::from_bytes([2; 16]), None, 1);
        hub.claim(a.clone());
        hub.claim(b.clone());
        let udp: SocketAddr = "198.51.100.1:5000".parse().unwrap();
        hub.bind_udp(&[7; 16], udp);
        let event = PeerEvent::Request {
            private_endpoint: Endpoint::new("10.0.0.1:1".parse().unwrap()),
            hints: None,
        };
        assert!(hub.forward(&a.shared, b.shared.uuid, event.clone()).is_ok());
        let Mailbox::Event(delivered) = rb.try_recv().unwrap() else {
            panic!("expected an event");
        };
        match *delivered {
            HubEvent::Peer {
                from,
                endpoints,
                event: got,
            } => {
                assert_eq!(from, a.shared.uuid);
                assert_eq!(endpoints.udp, Some(udp));
                assert_eq!(endpoints.tcp, a.shared.tcp);
                assert_eq!(got, event);
            }
            other => panic!("unexpected {other:?}"),
        }
        // Fill B's pushed inbox (capacity 1): the next request is handed back to its
        // sender, and B stays.
        hub.forward(&a.shared, b.shared.uuid, event.clone())
            .unwrap();
        assert_eq!(
            hub.forward(&a.shared, b.shared.uuid, event.clone()),
            Err(event)
        );
        assert!(!b.kick.token.is_cancelled());
        // Answers go to the owed inbox, which others' requests cannot fill.
        hub.forward(&a.shared, b.shared.uuid, PeerEvent::Denied)
            .unwrap();
        assert!(matches!(owed.try_recv(), Ok(Mailbox::Event(_))));
        assert!(!b.kick.token.is_cancelled());
        // Offline target.
        assert!(
            hub.forward(&a.shared, Uuid::from_bytes([9; 16]), PeerEvent::Denied)
                .is_err()
        );
    }

    #[tokio::test]
    async fn probe_of_unresponsive_inbox_resolves_dead() {
        let (hub, _) = hub();
        let uuid = Uuid::from_bytes([1; 16]);
        let (a, _ra, _owed) = entry_both(&hub, uuid, None, 1);
        hub.claim(a.clone());
        a.owed
            .try_send(Mailbox::Event(Box::new(HubEvent::Probe)))
            .unwrap();
        let (id, answer) = hub.probe(&uuid).unwrap();
        assert_eq!(id, a.shared.id);
        assert!(answer.await.is_err());
        assert!(hub.probe(&Uuid::from_bytes([2; 16])).is_none());
    }

    #[test]
    fn inbox_slots_stay_pointer_sized() {
        // Layout check, not a speed check: every session's inbox allocates
        // 32 slots up front, so this size is paid by every idle session.
        println!(
            "size_of: HubEvent {} B, Mailbox {} B",
            std::mem::size_of::<HubEvent>(),
            std::mem::size_of::<Mailbox>()
        );
        assert!(std::mem::size_of::<Mailbox>() <= 2 * std::mem::size_of::<usize>());
    }

    #[test]
    fn v3_bindings_need_a_valid_tag_and_a_rising_counter() {
        let (hub, _) = hub();
        let uuid = Uuid::from_bytes([1; 16]);
        let (entry, _rx) = entry(&hub, uuid, Some([7; 16]), 4);
        let (relay_tx, _relay_rx) = mpsc::channel(1);
        let key = [0x42; BINDING_KEY_LEN];
        let shared = SessionShared::new(entry.shared.id, uuid, entry.shared.tcp, Some([7; 16]))
            .with_v3(SessionV3::new(key, relay_tx));
        hub.claim(SessionEntry {
            shared: Arc::new(shared),
            ..entry
        });
        let here: SocketAddr = "198.51.100.1:9".parse().unwrap();
        let there: SocketAddr = "198.51.100.66:9".parse().unwrap();
        // The plain form never binds a v3 session.
        assert_eq!(hub.bind_udp(&[7; 16], there), None);
        let first = UdpMessage::binding_request_auth(&key, [7; 16], 1);
        assert!(hub.bind_udp_auth(&first, here).is_some());
        // Replayed (same counter), from anywhere: refused.
        assert_eq!(hub.bind_udp_auth(&first, there), None);
        // A wrong key: refused however high the counter.
        let forged = UdpMessage::binding_request_auth(&[0; BINDING_KEY_LEN], [7; 16], 100);
        assert_eq!(hub.bind_udp_auth(&forged, there), None);
        assert_eq!(hub.udp_endpoint(&uuid), Some(here));
        // The owner's next counter moves it; an older one does not.
        let third = UdpMessage::binding_request_auth(&key, [7; 16], 3);
        assert!(hub.bind_udp_auth(&third, there).is_some());
        let second = UdpMessage::binding_request_auth(&key, [7; 16], 2);
        assert_eq!(hub.bind_udp_auth(&second, here), None);
        assert_eq!(hub.udp_endpoint(&uuid), Some(there));
    }

    #[test]
    fn disconnect_sets_the_reason() {
        let (hub, _) = hub();
        let uuid = Uuid::from_bytes([1; 16]);
        let (a, _ra) = entry(&hub, uuid, None, 1);
        hub.claim(a.clone());
        assert!(hub.disconnect(&uuid, "Identity removed"));
        assert!(!hub.disconnect(&Uuid::from_bytes([2; 16]), "x"));
        assert_eq!(a.kick.reason().as_deref(), Some("Identity removed"));
        // The first reason wins.
        a.kick.kick(Some("later"));
        assert_eq!(a.kick.reason().as_deref(), Some("Identity removed"));
        assert_eq!(hub.disconnect_all("bye"), 1);
    }
}
