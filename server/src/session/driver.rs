//! The tokio task of one connection: TLS handshake, then a loop feeding the
//! [`Session`] machine with packets, hub messages, probe answers and timer
//! expiries, and executing its actions.
//!
//! Writes are buffered into the `Framed` write buffer by the actions and
//! flushed once per loop turn with a deadline (`write_timeout`): a client that
//! stops reading ends its own session instead of holding the task forever.
//! While a flush blocks, the inbox is not drained; when it fills up the hub
//! kicks the session, which also interrupts the flush.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use chatr_proto::codec::{CodecError, ConnectCodec};
use chatr_proto::{CHANNEL_BINDING_EXPORTER_LABEL, DisconnectReason, Packet};
use futures_util::{SinkExt, StreamExt};
use rand::rngs::StdRng;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::Framed;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tracing::Instrument;

use super::machine::Session;
use super::{Action, ClaimOutcome, HubEvent, KeyLookup, SessionConfig};
use crate::hub::{Hub, Kick, Mailbox, SessionEntry, SessionShared};
use crate::metrics::{LoginResult, Metrics};
use crate::tls::TlsIdentity;

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
        let exporter = stream
            .get_ref()
            .1
            .export_keying_material([0u8; 32], CHANNEL_BINDING_EXPORTER_LABEL, None)
            .ok();
        run_session(
            ctx,
            stream,
            peer,
            accepted_at.into_std(),
            exporter,
            shutdown,
        )
        .await;
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
    exporter: Option<[u8; 32]>,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (inbox, rx) = mpsc::channel(ctx.queue.max(1));
    let machine = Session::new(
        accepted_at,
        exporter,
        ctx.session.clone(),
        Arc::clone(&ctx.keys),
        Arc::clone(&ctx.metrics),
        rand::make_rng::<StdRng>(),
    );
    let mut driver = Driver {
        framed: Framed::with_capacity(stream, ConnectCodec::new(), FRAME_BUFFER_CAPACITY),
        machine,
        peer,
        inbox,
        rx,
        kick: Kick::default(),
        shared: None,
        probe: None,
        probed_id: None,
        probe_waiters: Vec::new(),
        kicked: false,
        shutting_down: false,
        scratch: Vec::new(),
        ctx,
    };
    driver.run(shutdown).await;
    if let Some(shared) = driver.shared.take() {
        driver.ctx.hub.remove(&shared);
        tracing::info!("session ended");
    }
}

/// Why the select loop woke up.
enum Wake {
    Kicked,
    Shutdown,
    Frame(Option<Result<Packet, CodecError>>),
    Mail(Option<Mailbox>),
    ProbeAnswer(bool),
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
    kick: Kick,
    /// Set once the session is registered in the hub.
    shared: Option<Arc<SessionShared>>,
    /// The answer of the session we are probing (duplicate UUID).
    probe: Option<oneshot::Receiver<()>>,
    probed_id: Option<u64>,
    /// Newcomers waiting for us to prove we are alive.
    probe_waiters: Vec<oneshot::Sender<()>>,
    kicked: bool,
    shutting_down: bool,
    scratch: Vec<u8>,
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
                Wake::Frame(Some(Ok(packet))) => self.machine.handle_packet(now, packet),
                Wake::Frame(Some(Err(CodecError::Decode(err)))) => {
                    tracing::debug!(error = %err, "invalid frame");
                    self.machine.handle_malformed(now);
                }
                Wake::Frame(Some(Err(err))) => {
                    tracing::debug!(error = %err, "connection failed");
                    self.machine.handle_closed(now);
                }
                Wake::Frame(None) => self.machine.handle_closed(now),
                Wake::Mail(Some(Mailbox::Event(event))) => {
                    self.machine.handle_hub_event(now, *event);
                }
                Wake::Mail(Some(Mailbox::Probe(answer))) => {
                    self.probe_waiters.push(answer);
                    self.machine.handle_hub_event(now, HubEvent::Probe);
                }
                // We hold a sender ourselves, so the inbox never closes.
                Wake::Mail(None) => {}
                Wake::ProbeAnswer(alive) => {
                    self.probe = None;
                    self.machine.handle_probe_result(now, alive);
                }
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
            framed, rx, probe, ..
        } = self;
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
            () = timer => Wake::Timer,
            mail = rx.recv() => Wake::Mail(mail),
            frame = framed.next(), if reading => Wake::Frame(frame),
        }
    }

    /// Executes queued actions; returns whether the machine asked to close.
    fn execute_actions(&mut self) -> bool {
        let mut close = false;
        while let Some(action) = self.machine.poll_action() {
            match action {
                Action::Send(packet) => {
                    self.scratch.clear();
                    packet.encode(&mut self.scratch);
                    self.framed
                        .write_buffer_mut()
                        .extend_from_slice(&self.scratch);
                }
                Action::Claim(claim) => {
                    let entry = self.entry(claim.uuid, claim.udp_token);
                    let outcome = self.ctx.hub.claim(entry.clone());
                    self.after_claim(entry, outcome);
                }
                Action::Probe { uuid } => match self.ctx.hub.probe(&uuid) {
                    Some((id, answer)) => {
                        tracing::info!(%uuid, "UUID already online; probing the existing session");
                        self.probed_id = Some(id);
                        self.probe = Some(answer);
                    }
                    None => self.machine.handle_probe_result(now(), false),
                },
                Action::TakeOver(claim) => {
                    let entry = self.entry(claim.uuid, claim.udp_token);
                    let outcome = self.ctx.hub.take_over(entry.clone(), self.probed_id.take());
                    self.after_claim(entry, outcome);
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
                Action::Close => close = true,
            }
        }
        close
    }

    fn entry(&self, uuid: uuid::Uuid, udp_token: Option<[u8; 16]>) -> SessionEntry {
        SessionEntry {
            shared: Arc::new(SessionShared::new(
                self.ctx.hub.next_id(),
                uuid,
                self.peer,
                udp_token,
            )),
            inbox: self.inbox.clone(),
            kick: self.kick.clone(),
        }
    }

    fn after_claim(&mut self, entry: SessionEntry, outcome: ClaimOutcome) {
        if outcome == ClaimOutcome::Admitted {
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
        let ctx = Arc::new(ConnContext {
            hub: Hub::new(Arc::clone(&metrics)),
            tls: TlsIdentity::load_or_create(&config).unwrap(),
            keys: Arc::new(registry.clone()),
            metrics,
            session: SessionConfig::from_server(&config),
            queue: config.limits.session_queue,
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
    async fn slow_reader_is_disconnected_without_stalling_others() {
        let h = harness(|c| {
            c.limits.session_queue = 2;
            c.limits.request_burst = 1000;
            c.limits.requests_per_second = 1000;
            c.limits.max_pending_requests = 1000;
            c.timings.write_timeout = Duration::from_secs(60);
        });
        let (_a, mut alice) = spec_client(&h, 1, 1 << 16).await;
        // Bob's pipe holds a few dozen bytes and he never reads again.
        let (bob, _bob_pipe) = spec_client(&h, 2, 64).await;
        let request = |n: u8| {
            Packet::ConnectionRequest(PacketConnectionRequest {
                uuid: bob,
                private_endpoint: Endpoint::new(SocketAddr::from(([10, 0, 0, n], 7000))),
            })
        };
        // Keep asking for Bob until his inbox overflows and he is dropped;
        // Alice is then told Bob is unavailable.
        let denied = tokio::time::timeout(Duration::from_secs(10), async {
            let mut n = 0u8;
            loop {
                n = n.wrapping_add(1);
                alice.send(request(n)).await.unwrap();
                if let Ok(Some(Ok(packet))) =
                    tokio::time::timeout(Duration::from_millis(20), alice.next()).await
                {
                    return packet;
                }
            }
        })
        .await
        .expect("the slow reader stalled the requester");
        assert_eq!(
            denied,
            Packet::ConnectionRequestDenied(PacketConnectionRequestDenied { uuid: bob })
        );
        tokio::time::timeout(Duration::from_secs(10), async {
            while h.ctx.hub.is_connected(&bob) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("slow reader still registered");
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
