//! The tokio task of one connection: TLS handshake, then a loop feeding the
//! [`Session`] machine with packets, hub messages, probe answers and timer
//! expiries, and executing its actions.
//!
//! Writes are buffered into the `Framed` write buffer by the actions and
//! flushed once per loop turn with a deadline (`write_timeout`): a client that
//! stops reading (its TCP window stays full past the deadline) ends its own
//! session instead of holding the task forever. While a flush blocks, the
//! inboxes are not drained; when one fills up, the hub refuses further messages
//! to it (their senders are told the session is busy) and nobody is kicked for it.
//! The inbox of what the session is owed (answers to its own requests, probes) is
//! read before the one of what others push at it.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use chatr_proto::codec::{CodecError, ConnectCodec, encode_relay_data, make_room_for_relay_data};
use chatr_proto::{
    CHANNEL_BINDING_EXPORTER_LABEL, DisconnectReason, Packet, PacketRelayClose,
    UDP_BINDING_EXPORTER_LABEL,
};
use futures_util::{FutureExt as _, SinkExt, StreamExt};
use rand::rngs::StdRng;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::Framed;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tracing::Instrument;

use super::machine::Session;
use super::{Action, ClaimOutcome, HubEvent, KeyLookup, SessionConfig};
use crate::cluster::{BoxFuture, ClusterClaim, Holder};
use crate::hub::{Hub, Kick, Mailbox, SessionEntry, SessionShared, SessionV3};
use crate::metrics::{LoginResult, Metrics};
use crate::presence::{Presence, PresenceInbox, Who};
use crate::relay::{Relay, RelayOut};
use crate::tls::TlsIdentity;

/// Relayed datagrams written into the TLS buffer per loop turn, before a flush: enough
/// to amortise the flush, few enough that one turn stays short on a slow link.
const RELAY_BATCH: usize = 64;

/// Keying material exported from one TLS connection (RFC 5705 / RFC 8446 §7.5).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ExportedKeys {
    /// What a version-2/3 login signs (`EXPORTER-chatr-connect-v2`).
    pub(crate) channel_binding: [u8; 32],
    /// What authenticates a version-3 session's UDP binding requests
    /// (`EXPORTER-chatr-udp-binding-v3`).
    pub(crate) udp_binding: [u8; 32],
}

/// Initial capacity of each session's `Framed` read and write buffers (and
/// the write backpressure boundary, which the driver does not use: it writes
/// into the buffer and flushes itself). tokio-util's default is 8 KiB each,
/// 16 KiB per session for frames that are ~100 bytes apart from the rare
/// PacketConnect; both buffers grow on demand up to a whole `MAX_FRAME`
/// (the codec reserves a frame's declared length), so this only trims idle
/// sessions.
const FRAME_BUFFER_CAPACITY: usize = 512;

/// What every connection task shares.
pub(crate) struct ConnContext {
    pub(crate) hub: Hub,
    pub(crate) tls: TlsIdentity,
    pub(crate) keys: Arc<dyn KeyLookup>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) session: SessionConfig,
    /// Capacity of each session's inbox.
    pub(crate) queue: usize,
    /// Relays accepted exchanges of version-3 clients.
    pub(crate) relay: Relay,
    /// Presence of mutual contacts (version 3).
    pub(crate) presence: Presence,
}

/// Serves one accepted TCP connection until it closes.
pub(crate) async fn serve_tcp(
    ctx: Arc<ConnContext>,
    tcp: TcpStream,
    peer: SocketAddr,
    shutdown: CancellationToken,
) {
    let accepted_at = tokio::time::Instant::now();
    let span = tracing::info_span!("conn", %peer, uuid = tracing::field::Empty);
    async move {
        let deadline = accepted_at + ctx.session.timings.login_timeout;
        let acceptor = ctx.tls.acceptor();
        let handshake = tokio::select! {
            () = shutdown.cancelled() => return,
            result = tokio::time::timeout_at(deadline, acceptor.accept(tcp)) => result,
        };
        let stream = match handshake {
            Ok(Ok(stream)) => stream,
            Ok(Err(err)) => {
                tracing::debug!(error = %err, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!("TLS handshake not done within the login timeout");
                ctx.metrics.login(LoginResult::Timeout);
                return;
            }
        };
        let tls = stream.get_ref().1;
        let keys = tls
            .export_keying_material([0u8; 32], CHANNEL_BINDING_EXPORTER_LABEL, None)
            .and_then(|channel_binding| {
                let udp_binding =
                    tls.export_keying_material([0u8; 32], UDP_BINDING_EXPORTER_LABEL, None)?;
                Ok(ExportedKeys {
                    channel_binding,
                    udp_binding,
                })
            })
            .ok();
        run_session(ctx, stream, peer, accepted_at.into_std(), keys, shutdown).await;
    }
    .instrument(span)
    .await;
}

/// Runs the session protocol over an established (TLS) stream.
pub(crate) async fn run_session<S>(
    ctx: Arc<ConnContext>,
    stream: S,
    peer: SocketAddr,
    accepted_at: Instant,
    keys: Option<ExportedKeys>,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (inbox, rx) = mpsc::channel(ctx.queue.max(1));
    // Answers to our own requests: at most a few per request we may have pending.
    let (owed, owed_rx) = mpsc::channel(3 * ctx.session.max_pending_requests.max(1) + 4);
    let machine = Session::new(
        accepted_at,
        keys.map(|k| k.channel_binding),
        ctx.session.clone(),
        Arc::clone(&ctx.keys),
        Arc::clone(&ctx.metrics),
        rand::make_rng::<StdRng>(),
    )
    .with_relays(Arc::new(ctx.relay.clone()));
    let mut driver = Driver {
        framed: Framed::with_capacity(stream, ConnectCodec::new(), FRAME_BUFFER_CAPACITY),
        machine,
        peer,
        inbox,
        rx,
        owed,
        owed_rx,
        kick: Kick::default(),
        shared: None,
        probe: None,
        probed_id: None,
        probe_waiters: Vec::new(),
        cluster_claim: None,
        remote_holder: None,
        kicked: false,
        shutting_down: false,
        scratch: Vec::new(),
        udp_binding_key: keys.map(|k| k.udp_binding),
        relay_rx: None,
        presence: Arc::default(),
        ctx,
    };
    driver.run(shutdown).await;
    driver.finish();
    if let Some(shared) = driver.shared.take() {
        // Contacts see us go offline however the session ended (logout, time-out, kick).
        driver.ctx.presence.leave(shared.uuid, shared.id);
        driver.ctx.hub.remove(&shared);
        tracing::info!("session ended");
    }
    if let Some((entry, answer)) = driver.cluster_claim.take() {
        // Gone while the cluster was still answering our claim: free the local slot,
        // and the cluster-wide one once it is known to be ours.
        driver.ctx.hub.remove(&entry.shared);
        let hub = driver.ctx.hub.clone();
        tokio::spawn(async move {
            if answer.await == ClusterClaim::Claimed {
                hub.cluster().release(entry.shared.uuid, entry.shared.id);
            }
        });
    }
}

/// A login for `uuid` is about to be checked: if its key is not cached, the registry
/// may know it already (registered on another node a moment ago).
async fn refresh_key(ctx: &ConnContext, uuid: uuid::Uuid) {
    if ctx.keys.lookup(&uuid).is_some() {
        return;
    }
    if let Some(fetch) = ctx.keys.fetch(uuid) {
        let budget = ctx.session.timings.login_timeout;
        if tokio::time::timeout(budget, fetch).await.is_err() {
            tracing::debug!(%uuid, "registry lookup for a login timed out");
        }
    }
}

/// Why the select loop woke up.
enum Wake {
    Kicked,
    Shutdown,
    Frame(Option<Result<Packet, CodecError>>),
    Mail(Option<Mailbox>),
    Relay(Option<RelayOut>),
    Presence,
    ProbeAnswer(bool),
    /// The cluster answered our claim of the UUID.
    ClusterClaim(ClusterClaim),
    Timer,
}

enum Flush {
    Done,
    Failed,
    /// Kicked while flushing: handle the kick (it may send a last packet).
    Interrupted,
}

struct Driver<S> {
    ctx: Arc<ConnContext>,
    framed: Framed<S, ConnectCodec>,
    machine: Session,
    peer: SocketAddr,
    inbox: mpsc::Sender<Mailbox>,
    rx: mpsc::Receiver<Mailbox>,
    owed: mpsc::Sender<Mailbox>,
    owed_rx: mpsc::Receiver<Mailbox>,
    kick: Kick,
    /// Set once the session is registered in the hub.
    shared: Option<Arc<SessionShared>>,
    /// The answer of the session we are probing (duplicate UUID).
    probe: Option<oneshot::Receiver<()>>,
    probed_id: Option<u64>,
    /// Newcomers waiting for us to prove we are alive.
    probe_waiters: Vec<oneshot::Sender<()>>,
    /// Our cluster-wide claim of the UUID, on its way (the local one is held).
    cluster_claim: Option<(SessionEntry, BoxFuture<ClusterClaim>)>,
    /// The session on another node that holds our UUID (probed, maybe taken over).
    remote_holder: Option<Holder>,
    kicked: bool,
    shutting_down: bool,
    scratch: Vec<u8>,
    /// This TLS connection's key for authenticated UDP bindings (version 3).
    udp_binding_key: Option<[u8; 32]>,
    /// Relayed datagrams for our (version-3) client. They are written straight to
    /// the TLS stream, not through the machine: they are opaque data for a session
    /// that already logged in as version 3, and only such a session has this queue.
    relay_rx: Option<mpsc::Receiver<RelayOut>>,
    /// What the presence registry has for our client (only ever filled once our client
    /// sent a presence packet, which only a version-3 session offered presence may).
    presence: Arc<PresenceInbox>,
}

fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

impl<S> Driver<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    async fn run(&mut self, shutdown: CancellationToken) {
        // One waiter per token for the whole session, polled by reference:
        // re-creating `cancelled()` futures each turn would register and
        // deregister a waiter on the token every wake-up, and the shutdown
        // token's waiter list is shared by every connection.
        let kicked = self.kick.kicked();
        let shutdown = shutdown.cancelled_owned();
        tokio::pin!(kicked, shutdown);
        loop {
            let close = self.execute_actions();
            match self.flush(kicked.as_mut()).await {
                Flush::Done | Flush::Interrupted => {}
                Flush::Failed => return,
            }
            if close {
                self.close_stream().await;
                return;
            }
            let wake = self.wait(kicked.as_mut(), shutdown.as_mut()).await;
            let now = now();
            match wake {
                Wake::Kicked => {
                    self.kicked = true;
                    let reason = self.kick.reason();
                    if reason.is_none() {
                        // Slow reader or replaced: nothing more will be read.
                        return;
                    }
                    self.machine.handle_kick(now, reason.as_deref());
                }
                Wake::Shutdown => {
                    self.shutting_down = true;
                    self.machine
                        .handle_kick(now, Some(DisconnectReason::ServerShuttingDown.as_str()));
                }
                Wake::Frame(frame) => self.read_frames(now, frame).await,
                Wake::Mail(Some(Mailbox::Event(event))) => {
                    self.machine.handle_hub_event(now, *event);
                }
                Wake::Mail(Some(Mailbox::Probe(answer))) => {
                    self.probe_waiters.push(answer);
                    self.machine.handle_hub_event(now, HubEvent::Probe);
                }
                // We hold a sender ourselves, so the inbox never closes.
                Wake::Mail(None) => {}
                Wake::Relay(Some(out)) => self.write_relayed(out),
                // The sender lives in our own SessionShared while we are registered.
                Wake::Relay(None) => self.relay_rx = None,
                Wake::Presence => {
                    let pending = self.presence.take();
                    if !pending.is_empty() {
                        self.machine.handle_presence(now, pending);
                    }
                }
                Wake::ProbeAnswer(alive) => {
                    self.probe = None;
                    self.machine.handle_probe_result(now, alive);
                }
                Wake::ClusterClaim(answer) => self.after_cluster_claim(answer),
                Wake::Timer => self.machine.handle_timeout(now),
            }
        }
    }

    async fn wait(
        &mut self,
        kick: Pin<&mut WaitForCancellationFutureOwned>,
        shutdown: Pin<&mut WaitForCancellationFutureOwned>,
    ) -> Wake {
        let deadline = self.machine.poll_timeout();
        let reading = self.machine.wants_packets();
        let kicked = self.kicked;
        let shutting_down = self.shutting_down;
        let Self {
            framed,
            rx,
            owed_rx,
            probe,
            relay_rx,
            cluster_claim,
            presence,
            ..
        } = self;
        let claimed = async {
            match cluster_claim.as_mut() {
                Some((_, answer)) => answer.await,
                None => std::future::pending().await,
            }
        };
        let relayed = async {
            match relay_rx.as_mut() {
                Some(relay) => relay.recv().await,
                None => std::future::pending().await,
            }
        };
        let timer = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        let probe_answer = async {
            match probe.as_mut() {
                Some(answer) => answer.await.is_ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            () = kick, if !kicked => Wake::Kicked,
            () = shutdown, if !shutting_down => Wake::Shutdown,
            alive = probe_answer => Wake::ProbeAnswer(alive),
            answer = claimed => Wake::ClusterClaim(answer),
            () = timer => Wake::Timer,
            mail = owed_rx.recv() => Wake::Mail(mail),
            mail = rx.recv() => Wake::Mail(mail),
            out = relayed => Wake::Relay(out),
            () = presence.notified() => Wake::Presence,
            frame = framed.next(), if reading => Wake::Frame(frame),
        }
    }

    /// Hands `first` to the machine, and after a relayed datagram whatever further
    /// frames are already buffered, up to [`RELAY_BATCH`].
    ///
    /// A TLS-relayed link sends one frame per QUIC datagram: taking each through its
    /// own turn of the select loop (and its own flush) would cost more than the frame.
    /// Other packets end the batch, so login and brokering keep their one-turn order.
    async fn read_frames(&mut self, now: Instant, first: Option<Result<Packet, CodecError>>) {
        let mut frame = first;
        for _ in 0..RELAY_BATCH {
            let relayed = matches!(frame, Some(Ok(Packet::RelayData(_))));
            self.on_frame(now, frame).await;
            if !relayed || !self.machine.wants_packets() {
                return;
            }
            make_room_for_relay_data(self.framed.read_buffer_mut());
            match self.framed.next().now_or_never() {
                Some(next) => frame = next,
                None => return,
            }
        }
    }

    async fn on_frame(&mut self, now: Instant, frame: Option<Result<Packet, CodecError>>) {
        match frame {
            Some(Ok(packet)) => {
                if let Packet::Connect(connect) = &packet {
                    refresh_key(&self.ctx, connect.uuid).await;
                }
                // The lookup may have waited: time moved on.
                let after = tokio::time::Instant::now().into_std().max(now);
                self.machine.handle_packet(after, packet);
            }
            Some(Err(CodecError::Decode(err))) => {
                tracing::debug!(error = %err, "invalid frame");
                self.machine.handle_malformed(now);
            }
            Some(Err(err)) => {
                tracing::debug!(error = %err, "connection failed");
                self.machine.handle_closed(now);
            }
            None => self.machine.handle_closed(now),
        }
    }

    /// Writes one relayed datagram (or relay notice) and whatever else is queued, up
    /// to [`RELAY_BATCH`], into the TLS buffer.
    fn write_relayed(&mut self, first: RelayOut) {
        let mut next = Some(first);
        let mut written = 0;
        while let Some(out) = next.take() {
            match out {
                RelayOut::Data(relay_id, datagram) => {
                    encode_relay_data(&relay_id, &datagram, self.framed.write_buffer_mut());
                }
                RelayOut::Closed(relay_id, reason) => {
                    self.queue_packet(&Packet::RelayClose(PacketRelayClose {
                        relay_id,
                        reason: reason.to_owned(),
                    }));
                }
            }
            written += 1;
            if written < RELAY_BATCH {
                next = self.relay_rx.as_mut().and_then(|rx| rx.try_recv().ok());
            }
        }
    }

    /// Appends `packet`'s frame to the TLS write buffer (written out at the next flush).
    fn queue_packet(&mut self, packet: &Packet) {
        self.scratch.clear();
        packet.encode(&mut self.scratch);
        self.framed
            .write_buffer_mut()
            .extend_from_slice(&self.scratch);
    }

    /// The connection is gone (however it ended): lets the machine close, and does what
    /// it still owes others (it tells requesters waiting for our client's answer).
    fn finish(&mut self) {
        self.machine.handle_closed(now());
        while let Some(action) = self.machine.poll_action() {
            if let Action::Forward { to, event } = action
                && let Some(shared) = &self.shared
            {
                let _ = self.ctx.hub.forward(shared, to, event);
            }
        }
    }

    /// Executes queued actions; returns whether the machine asked to close.
    fn execute_actions(&mut self) -> bool {
        let mut close = false;
        while let Some(action) = self.machine.poll_action() {
            match action {
                Action::Send(packet) => self.queue_packet(&packet),
                Action::Claim(claim) => {
                    let entry = self.entry(&claim);
                    let outcome = self.ctx.hub.claim(entry.clone());
                    self.claim_cluster_wide(entry, outcome, None);
                }
                Action::Probe { uuid } => {
                    if let Some(holder) = &self.remote_holder {
                        tracing::info!(%uuid, node = %holder.node, "UUID online on another node; probing that session");
                        self.probe = Some(self.ctx.hub.cluster().probe(uuid, holder));
                    } else {
                        match self.ctx.hub.probe(&uuid) {
                            Some((id, answer)) => {
                                tracing::info!(%uuid, "UUID already online; probing the existing session");
                                self.probed_id = Some(id);
                                self.probe = Some(answer);
                            }
                            None => self.machine.handle_probe_result(now(), false),
                        }
                    }
                }
                Action::TakeOver(claim) => {
                    let entry = self.entry(&claim);
                    let holder = self.remote_holder.take();
                    let old_id = if holder.is_some() {
                        None
                    } else {
                        self.probed_id.take()
                    };
                    let outcome = self.ctx.hub.take_over(entry.clone(), old_id);
                    if outcome == ClaimOutcome::Admitted
                        && let Some(old) = old_id
                    {
                        // The replaced session is dead: its contacts see it go offline now,
                        // not once its driver has given up writing to it.
                        self.ctx.presence.leave(claim.uuid, old);
                    }
                    self.claim_cluster_wide(entry, outcome, holder);
                }
                Action::Forward { to, event } => {
                    if let Some(shared) = &self.shared
                        && let Err(event) = self.ctx.hub.forward(shared, to, event)
                    {
                        self.machine
                            .handle_hub_event(now(), HubEvent::Undeliverable { to, event });
                    }
                }
                Action::ProbeAnswered => {
                    for waiter in self.probe_waiters.drain(..) {
                        let _ = waiter.send(());
                    }
                }
                Action::Relay(data) => {
                    if let Some(shared) = &self.shared {
                        self.ctx
                            .relay
                            .forward_tls(shared, data.relay_id, data.datagram, now());
                    }
                }
                Action::Presence(change) => {
                    if let Some(shared) = &self.shared {
                        let who = Who {
                            uuid: shared.uuid,
                            id: shared.id,
                            inbox: &self.presence,
                        };
                        match change {
                            super::PresenceAction::Contacts(op, list) => {
                                let ignored = self.ctx.presence.contacts(who, op, &list);
                                if ignored > 0 {
                                    tracing::debug!(ignored, "contact list full; names ignored");
                                }
                            }
                            super::PresenceAction::Status(status, message) => {
                                self.ctx.presence.status(who, status, &message);
                            }
                        }
                    }
                }
                Action::Close => close = true,
            }
        }
        close
    }

    /// The hub entry for `claim`; a version-3 session also gets its relay queue.
    fn entry(&mut self, claim: &super::action::Claim) -> SessionEntry {
        let mut shared = SessionShared::new(
            self.ctx.hub.next_id(),
            claim.uuid,
            self.peer,
            claim.udp_token,
        );
        if claim.layout.is_version3()
            && let Some(key) = self.udp_binding_key
        {
            let (tx, rx) = mpsc::channel(self.ctx.relay.config().tls_queue.max(1));
            shared = shared.with_v3(SessionV3::new(key, tx));
            self.relay_rx = Some(rx);
        }
        SessionEntry {
            shared: Arc::new(shared),
            inbox: self.inbox.clone(),
            owed: self.owed.clone(),
            kick: self.kick.clone(),
        }
    }

    /// The local hub answered `outcome` for `entry`: in a cluster, a local admission
    /// still needs the UUID cluster-wide (a fresh claim, or the takeover of `holder`
    /// on another node) before the machine hears "admitted".
    fn claim_cluster_wide(
        &mut self,
        entry: SessionEntry,
        outcome: ClaimOutcome,
        holder: Option<Holder>,
    ) {
        let cluster = self.ctx.hub.cluster();
        if outcome != ClaimOutcome::Admitted || !cluster.is_clustered() {
            self.after_claim(entry, outcome);
            return;
        }
        let (uuid, id) = (entry.shared.uuid, entry.shared.id);
        let answer = match holder {
            Some(holder) => cluster.take_over(uuid, id, holder),
            None => cluster.claim(uuid, id),
        };
        self.cluster_claim = Some((entry, answer));
    }

    fn after_cluster_claim(&mut self, answer: ClusterClaim) {
        let Some((entry, _)) = self.cluster_claim.take() else {
            return;
        };
        match answer {
            ClusterClaim::Claimed => self.after_claim(entry, ClaimOutcome::Admitted),
            ClusterClaim::Unavailable => {
                tracing::warn!(
                    "cluster unreachable: admitted on this node only; the claim is checked when it is back"
                );
                self.after_claim(entry, ClaimOutcome::Admitted);
            }
            ClusterClaim::Held(holder) => {
                // Give the local slot back; the machine probes the holder (or, after a
                // probe already, refuses: someone else won the race).
                self.ctx.hub.remove(&entry.shared);
                self.remote_holder = Some(holder);
                self.after_claim(entry, ClaimOutcome::Occupied);
            }
        }
    }

    fn after_claim(&mut self, entry: SessionEntry, outcome: ClaimOutcome) {
        if outcome == ClaimOutcome::Admitted {
            entry.shared.mark_ready();
            tracing::Span::current().record("uuid", tracing::field::display(entry.shared.uuid));
            let extended = entry.shared.udp_token.is_some();
            tracing::info!(extended, "logged in");
            self.shared = Some(entry.shared);
        }
        self.machine.handle_claim(now(), outcome);
    }

    async fn flush(&mut self, kick: Pin<&mut WaitForCancellationFutureOwned>) -> Flush {
        if self.framed.write_buffer().is_empty() {
            return Flush::Done;
        }
        let write_timeout = self.ctx.session.timings.write_timeout;
        let kicked = self.kicked;
        let framed = &mut self.framed;
        tokio::select! {
            biased;
            () = kick, if !kicked => Flush::Interrupted,
            result = tokio::time::timeout(write_timeout, SinkExt::<Packet>::flush(framed)) => match result {
                Ok(Ok(())) => Flush::Done,
                Ok(Err(err)) => {
                    tracing::debug!(error = %err, "write failed");
                    Flush::Failed
                }
                Err(_) => {
                    tracing::info!("client is not reading; write timed out");
                    Flush::Failed
                }
            },
        }
    }

    /// Sends TLS close_notify and shuts the socket down, within the write timeout.
    async fn close_stream(&mut self) {
        let write_timeout = self.ctx.session.timings.write_timeout;
        let _ =
            tokio::time::timeout(write_timeout, SinkExt::<Packet>::close(&mut self.framed)).await;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chatr_proto::{
        Endpoint, PacketConnect, PacketConnectionRequest, PacketConnectionRequestDenied,
    };
    use ed25519_dalek::{Signer, SigningKey};
    use futures_util::SinkExt;
    use tokio::io::DuplexStream;
    use uuid::Uuid;

    use super::*;
    use crate::config::ServerConfig;
    use crate::registry::Registry;

    struct Harness {
        ctx: Arc<ConnContext>,
        registry: Registry,
        shutdown: CancellationToken,
        _dir: tempfile::TempDir,
    }

    fn harness(tweak: impl FnOnce(&mut ServerConfig)) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let mut config = ServerConfig::for_tests(dir.path());
        tweak(&mut config);
        let metrics = Arc::new(Metrics::default());
        let registry = Registry::in_memory();
        let hub = Hub::new(Arc::clone(&metrics));
        let relay = Relay::new(
            config.relay.clone(),
            hub.clone(),
            Arc::clone(&metrics),
            Instant::now(),
        );
        let ctx = Arc::new(ConnContext {
            hub,
            tls: TlsIdentity::load_or_create(&config).unwrap(),
            keys: Arc::new(registry.clone()),
            presence: Presence::new(config.presence.clone(), Arc::clone(&metrics)),
            metrics,
            session: SessionConfig::from_server(&config),
            queue: config.limits.session_queue,
            relay,
        });
        Harness {
            ctx,
            registry,
            shutdown: CancellationToken::new(),
            _dir: dir,
        }
    }

    /// Starts a session over an in-memory pipe of `pipe` bytes and logs in
    /// as a spec client (no TLS, so no channel binding).
    async fn spec_client(
        h: &Harness,
        seed: u8,
        pipe: usize,
    ) -> (Uuid, Framed<DuplexStream, ConnectCodec>) {
        let key = SigningKey::from_bytes(&[seed; 32]);
        let uuid = Uuid::from_bytes([seed; 16]);
        h.registry.insert_unchecked(uuid, key.verifying_key());
        let (client, server) = tokio::io::duplex(pipe);
        tokio::spawn(run_session(
            Arc::clone(&h.ctx),
            server,
            SocketAddr::from(([127, 0, 0, 1], 1000 + u16::from(seed))),
            now(),
            None,
            h.shutdown.clone(),
        ));
        let mut framed = Framed::new(client, ConnectCodec::new());
        framed
            .send(Packet::Connect(PacketConnect {
                version: 1,
                uuid,
                signature: key.sign(uuid.as_bytes()).to_bytes().to_vec(),
            }))
            .await
            .unwrap();
        let reply = framed.next().await.unwrap().unwrap();
        assert!(matches!(reply, Packet::Connected(_)), "{reply:?}");
        (uuid, framed)
    }

    #[tokio::test]
    async fn slow_reader_is_disconnected_by_its_write_deadline_without_stalling_others() {
        let h = harness(|c| {
            c.limits.session_queue = 2;
            c.limits.request_burst = 1000;
            c.limits.requests_per_second = 1000;
            c.limits.max_pending_requests = 1000;
            c.timings.write_timeout = Duration::from_millis(500);
        });
        let (_a, mut alice) = spec_client(&h, 1, 1 << 16).await;
        // Bob's pipe holds a few dozen bytes and he never reads again.
        let (bob, _bob_pipe) = spec_client(&h, 2, 64).await;
        let (carol, mut carol_pipe) = spec_client(&h, 3, 1 << 16).await;
        let request = |to: Uuid, n: u8| {
            Packet::ConnectionRequest(PacketConnectionRequest {
                uuid: to,
                private_endpoint: Endpoint::new(SocketAddr::from(([10, 0, 0, n], 7000))),
                hints: None,
            })
        };
        // Alice asks for Bob over and over (collapsed into one pending request), and
        // others ask for him too, until his writes stall; Alice also asks Carol, who
        // reads: Alice is never stalled by Bob.
        for n in 0..50u8 {
            alice.send(request(bob, n)).await.unwrap();
        }
        let mut others = Vec::new();
        for seed in 10..20u8 {
            let (_, mut other) = spec_client(&h, seed, 1 << 16).await;
            other.send(request(bob, seed)).await.unwrap();
            others.push(other);
        }
        alice.send(request(carol, 1)).await.unwrap();
        let asked = tokio::time::timeout(Duration::from_secs(10), carol_pipe.next())
            .await
            .expect("the slow reader stalled the requester")
            .unwrap()
            .unwrap();
        assert!(matches!(asked, Packet::ConnectionRequest(_)), "{asked:?}");
        // Bob's write stalls past the deadline: he is dropped, and Alice is told at once
        // (not when her request expires).
        let denied = tokio::time::timeout(Duration::from_secs(10), alice.next())
            .await
            .expect("the requester was not told")
            .unwrap()
            .unwrap();
        assert_eq!(
            denied,
            Packet::ConnectionRequestDenied(PacketConnectionRequestDenied { uuid: bob })
        );
        assert!(!h.ctx.hub.is_connected(&bob));
        assert!(h.ctx.hub.is_connected(&carol));
    }

    /// A PacketConnect from a spec client, padded with trailing bytes (which
    /// the decoder tolerates as future extensions) to a frame whose length
    /// VarInt says `body_len`.
    fn padded_connect(key: &SigningKey, uuid: Uuid, body_len: usize) -> Vec<u8> {
        let packet = Packet::Connect(PacketConnect {
            version: 1,
            uuid,
            signature: key.sign(uuid.as_bytes()).to_bytes().to_vec(),
        });
        let encoded = packet.to_bytes();
        let (len, prefix) = chatr_proto::varint::decode_varint(&encoded).unwrap();
        assert_eq!(len as usize, encoded.len() - prefix);
        let mut body = encoded[prefix..].to_vec();
        assert!(body.len() < body_len);
        body.resize(body_len, 0xA5);
        let mut frame = Vec::new();
        let mut rest = u32::try_from(body_len).unwrap();
        while rest >= 0x80 {
            frame.push((rest & 0x7F) as u8 | 0x80);
            rest >>= 7;
        }
        frame.push(rest as u8);
        frame.extend_from_slice(&body);
        frame
    }

    /// Sends `frame` in one write over a pipe much smaller than it (so the
    /// session's small initial read buffer must grow) and returns the reply.
    async fn reply_to_raw_frame(h: &Harness, seed: u8, frame: &[u8]) -> Option<Packet> {
        use tokio::io::AsyncWriteExt;
        let (client, server) = tokio::io::duplex(256);
        tokio::spawn(run_session(
            Arc::clone(&h.ctx),
            server,
            SocketAddr::from(([127, 0, 0, 1], 2000 + u16::from(seed))),
            now(),
            None,
            h.shutdown.clone(),
        ));
        let (read, mut write) = tokio::io::split(client);
        let mut replies = tokio_util::codec::FramedRead::new(read, ConnectCodec::new());
        // The server may refuse the frame (and drop the pipe) before reading
        // all of it, so the write is allowed to fail; the reply says which.
        let (_, reply) = tokio::join!(write.write_all(frame), async {
            tokio::time::timeout(Duration::from_secs(10), replies.next())
                .await
                .expect("no reply")
        });
        reply.map(|reply| reply.unwrap())
    }

    #[tokio::test]
    async fn max_size_frame_is_read_and_one_byte_more_is_refused() {
        let h = harness(|_| {});
        let key = SigningKey::from_bytes(&[7; 32]);
        let uuid = Uuid::from_bytes([7; 16]);
        h.registry.insert_unchecked(uuid, key.verifying_key());
        // MAX_FRAME is well above the initial buffer capacity: the whole
        // frame must still be read and the login it carries accepted.
        const { assert!(chatr_proto::MAX_FRAME > 2 * FRAME_BUFFER_CAPACITY) };
        let reply = reply_to_raw_frame(&h, 7, &padded_connect(&key, uuid, chatr_proto::MAX_FRAME))
            .await
            .unwrap();
        assert!(matches!(reply, Packet::Connected(_)), "{reply:?}");
        assert!(h.ctx.hub.is_connected(&uuid));

        let key = SigningKey::from_bytes(&[8; 32]);
        let uuid = Uuid::from_bytes([8; 16]);
        h.registry.insert_unchecked(uuid, key.verifying_key());
        let reply = reply_to_raw_frame(
            &h,
            8,
            &padded_connect(&key, uuid, chatr_proto::MAX_FRAME + 1),
        )
        .await
        .unwrap();
        assert_eq!(
            reply,
            Packet::Disconnect(DisconnectReason::InvalidPacket.into())
        );
        assert!(!h.ctx.hub.is_connected(&uuid));
    }

    #[tokio::test(start_paused = true)]
    async fn login_timeout_with_paused_time() {
        let h = harness(|c| c.timings.login_timeout = Duration::from_secs(10));
        let (client, server) = tokio::io::duplex(1024);
        let task = tokio::spawn(run_session(
            Arc::clone(&h.ctx),
            server,
            SocketAddr::from(([127, 0, 0, 1], 1)),
            now(),
            None,
            h.shutdown.clone(),
        ));
        let started = tokio::time::Instant::now();
        let mut framed = Framed::new(client, ConnectCodec::new());
        tokio::time::sleep(Duration::from_secs(9)).await;
        assert!(!task.is_finished());
        // Nothing is said: the connection just ends, at the deadline.
        assert!(framed.next().await.is_none());
        assert!(started.elapsed() >= Duration::from_secs(10));
        task.await.unwrap();
    }
}
