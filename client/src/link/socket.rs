//! One UDP socket, three protocols and every path: QUIC, our control datagrams and STUN,
//! sent directly or through the Connect server's relay.
//!
//! The client's UDP socket is bound to port P (the local port of its TCP session), and the
//! NAT mapping the hole-punch opens is only useful if QUIC then uses that very socket. So
//! the socket is shared:
//!
//! - **QUIC** packets always have bit `0x40` set in their first byte, because every
//!   [`LinkEndpoint`](super::LinkEndpoint) disables `grease_quic_bit`.
//! - **Control datagrams** start with `0x00 'C' 'H' 'R'` (server binding messages, punch
//!   and path probes, relayed datagrams) and **STUN** starts with `0x00`/`0x01`: neither
//!   has `0x40` set.
//!
//! `PathSocket` is the [`quinn::AsyncUdpSocket`] quinn drives. On every receive it keeps
//! the QUIC datagrams for quinn and pushes every other datagram into a bounded channel
//! read through [`ControlRx`]. A full channel drops the datagram and counts it: quinn's
//! receive path must never wait on the orchestrator.
//!
//! **Paths.** A link set up by the node talks to a virtual address of the peer
//! (`link::routes`). A datagram quinn sends there goes out on every path of the link's
//! current plan: straight to one of the peer's addresses, to the server's UDP port behind
//! a relay header (`00 'C' 'H' 'R' 30 ‖ relay id`), or into the Connect TLS session (the
//! TLS relay, through a bounded channel to the session driver). Datagrams that arrive from
//! a known direct address of the peer, or relayed for the link's relay id (over UDP, or
//! from the TLS session), are handed to quinn as coming from the virtual address, so QUIC
//! never notices a path change. Control datagrams relayed for a link reach [`ControlRx`]
//! tagged with their [`Source`].
//!
//! **Auxiliary sockets.** The hard side of birthday punching (`docs/PROTOCOL.md` §10.7)
//! finds its peer through one of many extra sockets, whose NAT mapping is the only one
//! the peer's NAT lets in. `PathSocket::adopt_aux` makes that socket carry the direct
//! path to that peer address: whatever goes to the address (QUIC, probes) leaves from
//! it, and what it receives joins this socket's receive path, as if it had arrived here.
//!
//! **Batches.** On Linux a single receive can return several datagrams from the same
//! sender glued together, `stride` bytes apart (the last may be shorter: GRO), and one
//! send can carry several (GSO). Both stay enabled because they matter for bulk
//! throughput. On receive each segment is classified on its own: control segments are
//! copied out and the remaining QUIC segments (relay headers stripped) are moved together
//! in place, which keeps the "all but the last segment are exactly `stride` long"
//! invariant quinn relies on. On send, a relayed batch gets a header in front of each
//! segment and goes out as one GSO send too.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chatr_proto::RelayId;
use chatr_proto::udp::{
    RELAY_HEADER_LEN, TYPE_RELAY_FROM_SERVER, TYPE_RELAY_TO_SERVER, parse_relayed, relay_header,
};
use quinn::udp::{RecvMeta, Transmit, UdpSocketState};
use quinn::{AsyncUdpSocket, UdpPoller};
use tokio::io::Interest;
use tokio::sync::mpsc;

use super::routes::{Route, Routes, is_virtual};
use crate::net::canonical;
use crate::path::{PathId, RelayVia, SendPlan};

/// The bit every QUIC packet (long or short header) has set when the QUIC bit is not greased.
const QUIC_FIXED_BIT: u8 = 0x40;

/// Relayed datagrams queued from the Connect TLS session.
const TLS_RELAY_QUEUE: usize = 1024;

/// Sends (each up to a GSO batch of datagrams) queued towards the Connect TLS session.
const TLS_OUT_QUEUE: usize = 256;

/// Datagrams received on auxiliary sockets, queued for the receive path.
const AUX_QUEUE: usize = 1024;

/// Handshake datagrams of a link kept to send again when its primary path changes
/// during set-up, and how long they stay worth it.
const REPLAY_DATAGRAMS: usize = 8;
const REPLAY_AGE: Duration = Duration::from_secs(2);

/// Whether a datagram starting with `first` belongs to QUIC (as opposed to control/STUN).
pub(crate) fn is_quic(first: u8) -> bool {
    first & QUIC_FIXED_BIT != 0
}

/// Where a control datagram came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// Straight from this address (IPv4 in plain form).
    Direct(SocketAddr),
    /// Relayed by the Connect server for `relay`, over UDP or inside TLS.
    Relay {
        /// The exchange's relay.
        relay: RelayId,
        /// How it reached us.
        via: RelayVia,
    },
}

/// A datagram that is not QUIC, with where it came from.
pub type ControlDatagram = (Source, Bytes);

/// A relayed datagram on its way between the socket and the Connect TLS session.
pub type TlsRelayed = (RelayId, Bytes);

/// Datagrams of one send on their way into the TLS session: one `PacketRelayData` each.
///
/// One send of quinn's is a GSO batch (datagrams back to back, `segment` bytes apart, the
/// last maybe shorter); it crosses the channel as one message, copied once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsOutgoing {
    /// The exchange's relay.
    pub relay: RelayId,
    /// The datagrams, back to back.
    pub datagrams: Bytes,
    /// Every datagram but the last is this long.
    pub segment: usize,
}

impl TlsOutgoing {
    /// One datagram.
    pub fn single(relay: RelayId, datagram: Bytes) -> Self {
        let segment = datagram.len();
        Self {
            relay,
            datagrams: datagram,
            segment,
        }
    }

    /// The datagrams, in order.
    pub fn segments(&self) -> impl Iterator<Item = &[u8]> {
        self.datagrams.chunks(self.segment.max(1))
    }
}

/// The session driver's end of the TLS relay: what to send inside the TLS session, and
/// where to put what arrives in it.
#[derive(Debug)]
pub struct TlsRelayPort {
    /// Datagrams the socket wants sent as `PacketRelayData`.
    pub outgoing: mpsc::Receiver<TlsOutgoing>,
    /// Where `PacketRelayData` from the server goes (full: dropped, like UDP).
    pub incoming: mpsc::Sender<TlsRelayed>,
}

/// Counters shared by the socket (writer) and [`ControlRx`] (reader).
#[derive(Debug, Default)]
struct ControlStats {
    delivered: AtomicU64,
    dropped: AtomicU64,
}

/// Counters of relayed traffic, for tests and logs.
#[derive(Debug, Default)]
pub(crate) struct RelayStats {
    /// QUIC datagrams sent on relay paths.
    pub(crate) sent: AtomicU64,
    /// QUIC datagrams received from the relay.
    pub(crate) received: AtomicU64,
    /// Relayed datagrams for a relay we know nothing about, or not QUIC-sized.
    pub(crate) dropped: AtomicU64,
}

/// The UDP socket shared by quinn, the hole-puncher, the server binding and the relay.
pub(crate) struct PathSocket {
    io: tokio::net::UdpSocket,
    state: UdpSocketState,
    control: mpsc::Sender<ControlDatagram>,
    stats: Arc<ControlStats>,
    relay_stats: RelayStats,
    /// A dual-stack IPv6 socket needs IPv4 destinations in their mapped form.
    ipv6: bool,
    /// Every link is path-managed ([`crate::link::LinkConfig::virtual_only`]): QUIC from
    /// an address no route knows is dropped here rather than shown to quinn at that address.
    virtual_only: bool,
    routes: Arc<Routes>,
    tls_out: mpsc::Sender<TlsOutgoing>,
    tls_in: Mutex<mpsc::Receiver<TlsRelayed>>,
    /// Recent handshake (long-header) datagrams per link.
    replay: Mutex<VecDeque<Remembered>>,
    /// Direct paths carried by an auxiliary socket: peer address → socket.
    aux: Mutex<HashMap<SocketAddr, Arc<tokio::net::UdpSocket>>>,
    /// What the auxiliary sockets received (their reader tasks fill it).
    aux_tx: mpsc::Sender<(SocketAddr, Bytes)>,
    aux_in: Mutex<mpsc::Receiver<(SocketAddr, Bytes)>>,
}

/// A handshake datagram kept for [`PathSocket::set_plan`].
#[derive(Debug)]
struct Remembered {
    link: SocketAddr,
    at: Instant,
    ecn: Option<quinn::udp::EcnCodepoint>,
    segment_size: Option<usize>,
    contents: Vec<u8>,
}

impl fmt::Debug for PathSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PathSocket")
            .field("local", &self.io.local_addr().ok())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl PathSocket {
    /// Takes over `socket` (already bound) and returns it with the receiving end of its
    /// control channel and the session driver's end of the TLS relay. Must be called
    /// inside a tokio runtime.
    pub(crate) fn new(
        socket: std::net::UdpSocket,
        control_queue: usize,
        virtual_only: bool,
    ) -> io::Result<(Arc<Self>, ControlRx, TlsRelayPort)> {
        socket.set_nonblocking(true)?;
        let state = UdpSocketState::new((&socket).into())?;
        let ipv6 = socket.local_addr()?.is_ipv6();
        let io = tokio::net::UdpSocket::from_std(socket)?;
        let (tx, rx) = mpsc::channel(control_queue.max(1));
        let (tls_out, outgoing) = mpsc::channel(TLS_OUT_QUEUE);
        let (incoming, tls_in) = mpsc::channel(TLS_RELAY_QUEUE);
        let stats = Arc::new(ControlStats::default());
        let (aux_tx, aux_in) = mpsc::channel(AUX_QUEUE);
        let socket = Arc::new(Self {
            io,
            state,
            control: tx,
            stats: stats.clone(),
            relay_stats: RelayStats::default(),
            ipv6,
            virtual_only,
            routes: Arc::new(Routes::default()),
            tls_out,
            tls_in: Mutex::new(tls_in),
            replay: Mutex::new(VecDeque::new()),
            aux: Mutex::new(HashMap::new()),
            aux_tx,
            aux_in: Mutex::new(aux_in),
        });
        Ok((
            socket,
            ControlRx { rx, stats },
            TlsRelayPort { outgoing, incoming },
        ))
    }

    /// The table of path-managed links.
    pub(crate) fn routes(&self) -> &Arc<Routes> {
        &self.routes
    }

    /// Relay counters.
    pub(crate) fn relay_stats(&self) -> &RelayStats {
        &self.relay_stats
    }

    /// Sends one non-QUIC datagram (a probe, a binding request) from this socket.
    pub(crate) async fn send_raw(&self, to: SocketAddr, datagram: &[u8]) -> io::Result<()> {
        if datagram.first().copied().is_some_and(is_quic) {
            // The peer would hand it to QUIC, which would drop it silently.
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "raw datagrams must not have bit 0x40 set in their first byte (reserved for QUIC)",
            ));
        }
        let sent = match self.aux_for(to) {
            Some(aux) => aux.send_to(datagram, to).await?,
            None => self.io.send_to(datagram, self.destination(to)).await?,
        };
        if sent != datagram.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "the datagram was truncated by the socket",
            ));
        }
        Ok(())
    }

    /// Sends a control datagram of the link at `route` on `path` (probes through the
    /// relay go behind a relay header, or into the TLS session).
    pub(crate) async fn send_on_path(
        &self,
        route: &Route,
        path: PathId,
        datagram: &[u8],
    ) -> io::Result<()> {
        match path {
            PathId::Direct(addr) => self.send_raw(addr, datagram).await,
            PathId::Relay(via) => {
                let Some((relay, server)) = route.relay else {
                    return Err(io::Error::new(
                        io::ErrorKind::NotConnected,
                        "this link has no relay",
                    ));
                };
                match via {
                    RelayVia::Udp => {
                        let mut out = Vec::with_capacity(RELAY_HEADER_LEN + datagram.len());
                        out.extend_from_slice(&relay_header(TYPE_RELAY_TO_SERVER, &relay));
                        out.extend_from_slice(datagram);
                        self.send_raw(server, &out).await
                    }
                    RelayVia::Tls => self
                        .tls_out
                        .try_send(TlsOutgoing::single(relay, Bytes::copy_from_slice(datagram)))
                        .map_err(|_| io::Error::from(io::ErrorKind::WouldBlock)),
                }
            }
        }
    }

    /// Replaces the plan of `route`, learning `direct` addresses for receiving. When the
    /// primary path changed, the link's recent handshake datagrams are sent again on the
    /// new one: a first Initial may have met a NAT that was not open yet, and QUIC would
    /// send it again only after about a second.
    pub(crate) fn set_plan(
        &self,
        route: &Route,
        plan: &SendPlan,
        direct: impl Iterator<Item = SocketAddr>,
    ) {
        let previous = self.routes.set_plan(route, plan, direct);
        let Some(primary) = plan.primary else {
            return;
        };
        // From no path at all too: those datagrams went nowhere.
        if previous == Some(primary) {
            return;
        }
        let now = Instant::now();
        let again: Vec<(Option<quinn::udp::EcnCodepoint>, Option<usize>, Vec<u8>)> = {
            let mut replay = self.replay.lock().unwrap_or_else(PoisonError::into_inner);
            replay.retain(|r| now.saturating_duration_since(r.at) < REPLAY_AGE);
            replay
                .iter()
                .filter(|r| r.link == route.virtual_addr)
                .map(|r| (r.ecn, r.segment_size, r.contents.clone()))
                .collect()
        };
        for (ecn, segment_size, contents) in again {
            let transmit = Transmit {
                destination: route.virtual_addr,
                ecn,
                contents: &contents,
                segment_size,
                src_ip: None,
            };
            let _ = self.send_path(route, primary, &transmit);
        }
    }

    pub(crate) fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.local_addr()
    }

    /// Makes `socket` carry the direct path to `remote` (see the module docs), replacing
    /// any earlier one for it. A task reads it until [`PathSocket::release_aux`] or until
    /// this socket is gone.
    pub(crate) fn adopt_aux(&self, remote: SocketAddr, socket: Arc<tokio::net::UdpSocket>) {
        let remote = canonical(remote);
        self.aux
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(remote, Arc::clone(&socket));
        let tx = self.aux_tx.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let received = tokio::select! {
                    () = tx.closed() => return,
                    r = socket.recv_from(&mut buf) => r,
                };
                match received {
                    Ok((len, from)) => {
                        let Some(datagram) = buf.get(..len) else {
                            continue;
                        };
                        // Full: dropped, like a full kernel buffer.
                        let _ = tx.try_send((canonical(from), Bytes::copy_from_slice(datagram)));
                    }
                    Err(e) => tracing::debug!(error = %e, "auxiliary socket receive failed"),
                }
                // Released: the socket is no longer in the table.
                if Arc::strong_count(&socket) == 1 {
                    return;
                }
            }
        });
    }

    /// Stops using the auxiliary socket of `remote` (the link closed).
    pub(crate) fn release_aux(&self, remote: SocketAddr) {
        self.aux
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&canonical(remote));
    }

    /// Feeds a datagram an auxiliary socket received before it was adopted (the Probe
    /// that won it) into the receive path.
    pub(crate) fn inject_aux(&self, from: SocketAddr, datagram: Bytes) {
        let _ = self.aux_tx.try_send((canonical(from), datagram));
    }

    fn aux_for(&self, remote: SocketAddr) -> Option<Arc<tokio::net::UdpSocket>> {
        let aux = self.aux.lock().unwrap_or_else(PoisonError::into_inner);
        if aux.is_empty() {
            return None;
        }
        aux.get(&canonical(remote)).cloned()
    }

    /// Takes what the auxiliary sockets received, up to the free slots: QUIC datagrams
    /// of a known direct path into the slots, control ones to the channel.
    fn poll_aux(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        metas: &mut [RecvMeta],
    ) -> usize {
        let mut rx = self.aux_in.lock().unwrap_or_else(PoisonError::into_inner);
        let mut filled = 0;
        while filled < bufs.len().min(metas.len()) {
            let Poll::Ready(Some((from, datagram))) = rx.poll_recv(cx) else {
                break;
            };
            if !datagram.first().copied().is_some_and(is_quic) {
                self.divert(Source::Direct(from), &datagram);
                continue;
            }
            let Some(virtual_addr) = self.routes.virtual_of_direct(from) else {
                continue;
            };
            let (Some(buf), Some(meta)) = (bufs.get_mut(filled), metas.get_mut(filled)) else {
                break;
            };
            if self.deliver(virtual_addr, &datagram, buf, meta) {
                filled += 1;
            }
        }
        filled
    }

    /// Hands one QUIC datagram of the link at `virtual_addr` to quinn in a receive slot
    /// (and marks its route active); `false` when it does not fit the slot.
    fn deliver(
        &self,
        virtual_addr: SocketAddr,
        datagram: &[u8],
        buf: &mut IoSliceMut<'_>,
        meta: &mut RecvMeta,
    ) -> bool {
        let Some(dst) = buf.get_mut(..datagram.len()) else {
            return false;
        };
        dst.copy_from_slice(datagram);
        if let Some(route) = self.routes.get(virtual_addr) {
            route.touch();
        }
        *meta = RecvMeta {
            addr: self.as_seen_by_quinn(virtual_addr),
            len: datagram.len(),
            stride: datagram.len(),
            ecn: None,
            dst_ip: None,
        };
        true
    }

    /// Maps an IPv4 destination for a dual-stack IPv6 socket.
    fn destination(&self, to: SocketAddr) -> SocketAddr {
        map_destination(self.ipv6, to)
    }

    /// How quinn expects to see `addr` (mapped on an IPv6 socket).
    fn as_seen_by_quinn(&self, addr: SocketAddr) -> SocketAddr {
        map_destination(self.ipv6, addr)
    }

    /// Hands one control datagram to the orchestrator, or drops it if nobody keeps up.
    fn divert(&self, source: Source, datagram: &[u8]) {
        match self
            .control
            .try_send((source, Bytes::copy_from_slice(datagram)))
        {
            Ok(()) => {
                self.stats.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Sends `transmit` (for the link at `route`) on one path.
    fn send_path(&self, route: &Route, path: PathId, transmit: &Transmit<'_>) -> io::Result<()> {
        match path {
            PathId::Direct(addr) => {
                if let Some(aux) = self.aux_for(addr) {
                    // No GSO on the auxiliary socket: segment by segment.
                    let segment = transmit
                        .segment_size
                        .unwrap_or(transmit.contents.len())
                        .max(1);
                    for chunk in transmit.contents.chunks(segment) {
                        // A full buffer is a lost datagram; QUIC recovers.
                        let _ = aux.try_send_to(chunk, addr);
                    }
                    return Ok(());
                }
                let destination = self.destination(addr);
                let out = Transmit {
                    destination,
                    // quinn pins the local address its last datagram of the link arrived
                    // on, which may be another path's, even another family's (the IPv4
                    // relay before a direct IPv6 path): a source of the wrong family is
                    // EINVAL, so let the kernel choose then.
                    src_ip: transmit
                        .src_ip
                        .filter(|src| same_family(*src, destination.ip())),
                    ..transmit.clone()
                };
                self.io.try_io(Interest::WRITABLE, || {
                    self.state.send((&self.io).into(), &out)
                })
            }
            PathId::Relay(via) => {
                let Some((relay, server)) = route.relay else {
                    return Ok(());
                };
                let segment = transmit
                    .segment_size
                    .unwrap_or(transmit.contents.len())
                    .max(1);
                match via {
                    RelayVia::Udp => {
                        let header = relay_header(TYPE_RELAY_TO_SERVER, &relay);
                        let count = transmit.contents.len().div_ceil(segment);
                        let mut wrapped =
                            Vec::with_capacity(transmit.contents.len() + count * header.len());
                        for chunk in transmit.contents.chunks(segment) {
                            wrapped.extend_from_slice(&header);
                            wrapped.extend_from_slice(chunk);
                        }
                        let out = Transmit {
                            destination: self.destination(server),
                            ecn: transmit.ecn,
                            contents: &wrapped,
                            segment_size: transmit.segment_size.map(|s| s + header.len()),
                            src_ip: None,
                        };
                        self.relay_stats
                            .sent
                            .fetch_add(count as u64, Ordering::Relaxed);
                        self.io.try_io(Interest::WRITABLE, || {
                            self.state.send((&self.io).into(), &out)
                        })
                    }
                    RelayVia::Tls => {
                        let count = transmit.contents.len().div_ceil(segment);
                        let batch = TlsOutgoing {
                            relay,
                            datagrams: Bytes::copy_from_slice(transmit.contents),
                            segment,
                        };
                        // A full queue is lost datagrams, as on UDP.
                        if self.tls_out.try_send(batch).is_ok() {
                            self.relay_stats
                                .sent
                                .fetch_add(count as u64, Ordering::Relaxed);
                        }
                        Ok(())
                    }
                }
            }
        }
    }

    /// Keeps a copy of a link's handshake datagram (see [`PathSocket::set_plan`]).
    fn remember_handshake(&self, virtual_addr: SocketAddr, transmit: &Transmit<'_>) {
        if transmit.contents.first().is_none_or(|b| b & 0x80 == 0) {
            return;
        }
        let mut replay = self.replay.lock().unwrap_or_else(PoisonError::into_inner);
        if replay.len() >= REPLAY_DATAGRAMS {
            replay.pop_front();
        }
        replay.push_back(Remembered {
            link: virtual_addr,
            at: Instant::now(),
            ecn: transmit.ecn,
            segment_size: transmit.segment_size,
            contents: transmit.contents.to_vec(),
        });
    }

    /// Splits the `count` receive slots filled by the kernel: control segments go to the
    /// channel, relayed QUIC segments lose their header, QUIC segments of a path-managed
    /// link are attributed to its virtual address. Returns how many slots (moved to the
    /// front) hold QUIC data.
    fn demux(&self, count: usize, bufs: &mut [IoSliceMut<'_>], metas: &mut [RecvMeta]) -> usize {
        let count = count.min(bufs.len()).min(metas.len());
        let mut kept = 0;
        for slot in 0..count {
            let (Some(meta), Some(buf)) = (metas.get(slot).copied(), bufs.get_mut(slot)) else {
                break;
            };
            let from = canonical(meta.addr);
            // The header and the first byte of what it wraps (`parse_relayed` refuses an
            // empty relayed datagram).
            let relayed = buf
                .get(..meta.len.min(RELAY_HEADER_LEN + 1))
                .and_then(parse_relayed)
                .filter(|r| r.kind == TYPE_RELAY_FROM_SERVER)
                .map(|r| r.relay);
            let (quic_len, stride, addr) = match relayed {
                Some(relay) if self.routes.is_relay_server(from) => {
                    let Some(virtual_addr) = self.routes.virtual_of_relay(&relay) else {
                        self.relay_stats.dropped.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    let mut others = 0u64;
                    let len =
                        strip_relayed(buf, meta.len, meta.stride, &relay, &mut others, |inner| {
                            self.divert(
                                Source::Relay {
                                    relay,
                                    via: RelayVia::Udp,
                                },
                                inner,
                            )
                        });
                    if others > 0 {
                        self.relay_stats
                            .dropped
                            .fetch_add(others, Ordering::Relaxed);
                    }
                    let stride = meta.stride.saturating_sub(RELAY_HEADER_LEN).max(1);
                    self.relay_stats.received.fetch_add(1, Ordering::Relaxed);
                    if let Some(route) = self.routes.get(virtual_addr) {
                        route.touch();
                    }
                    (len, stride, self.as_seen_by_quinn(virtual_addr))
                }
                _ => {
                    let len = split_segments(buf, meta.len, meta.stride, |segment| {
                        self.divert(Source::Direct(from), segment)
                    });
                    let addr = match self.routes.virtual_of_direct(from) {
                        Some(v) => {
                            if let Some(route) = self.routes.get(v) {
                                route.touch();
                            }
                            self.as_seen_by_quinn(v)
                        }
                        // A copy of a handshake (or a packet of a link) from an address
                        // the path manager has not learned yet, e.g. the peer's fresh
                        // port behind a symmetric NAT. quinn must not see it: it would
                        // open a pending connection at that address, hold the same
                        // packet's relayed copy (same connection ID) in it, and lose both
                        // when the acceptor ignores it, costing the initiator a
                        // retransmission (about 50 ms of set-up). The copy through the
                        // known path carries the link.
                        None if self.virtual_only => continue,
                        None => meta.addr,
                    };
                    (len, meta.stride, addr)
                }
            };
            if quic_len == 0 {
                continue;
            }
            if let Some(meta) = metas.get_mut(slot) {
                meta.len = quic_len;
                meta.stride = stride;
                meta.addr = addr;
            }
            // Keep QUIC slots contiguous at the front; quinn reads slots 0..kept. Swapping the
            // slices themselves (not their bytes) is enough: quinn zips `metas` with the same
            // `bufs` array after this call.
            if slot != kept {
                metas.swap(slot, kept);
                bufs.swap(slot, kept);
            }
            kept += 1;
        }
        kept
    }

    /// Takes relayed datagrams that arrived inside the TLS session, up to the free slots:
    /// QUIC ones into the slots, control ones to the channel.
    fn poll_tls(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        metas: &mut [RecvMeta],
    ) -> usize {
        let mut rx = self.tls_in.lock().unwrap_or_else(PoisonError::into_inner);
        let mut filled = 0;
        while filled < bufs.len().min(metas.len()) {
            let Poll::Ready(Some((relay, datagram))) = rx.poll_recv(cx) else {
                break;
            };
            if !datagram.first().copied().is_some_and(is_quic) {
                self.divert(
                    Source::Relay {
                        relay,
                        via: RelayVia::Tls,
                    },
                    &datagram,
                );
                continue;
            }
            let Some(virtual_addr) = self.routes.virtual_of_relay(&relay) else {
                self.relay_stats.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let (Some(buf), Some(meta)) = (bufs.get_mut(filled), metas.get_mut(filled)) else {
                break;
            };
            if !self.deliver(virtual_addr, &datagram, buf, meta) {
                self.relay_stats.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            self.relay_stats.received.fetch_add(1, Ordering::Relaxed);
            filled += 1;
        }
        filled
    }

    /// Counters for tests and logs.
    pub(crate) fn stats(&self) -> (u64, u64) {
        (
            self.stats.delivered.load(Ordering::Relaxed),
            self.stats.dropped.load(Ordering::Relaxed),
        )
    }
}

/// An IPv6 socket reaches IPv4 peers through their mapped address `::ffff:a.b.c.d`.
/// Whether a datagram from `src` to `dst` stays in one family (IPv4-mapped counts as
/// IPv4).
fn same_family(src: IpAddr, dst: IpAddr) -> bool {
    src.to_canonical().is_ipv4() == dst.to_canonical().is_ipv4()
}

fn map_destination(socket_is_ipv6: bool, to: SocketAddr) -> SocketAddr {
    match to.ip() {
        IpAddr::V4(v4) if socket_is_ipv6 => {
            SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), to.port())
        }
        _ => to,
    }
}

/// Walks the GRO segments of one receive slot (`len` bytes, segments `stride` apart), passes
/// every non-QUIC segment to `divert`, and moves the QUIC segments together at the start of
/// `buf`. Returns the number of QUIC bytes left at the start of `buf`.
fn split_segments(
    buf: &mut [u8],
    len: usize,
    stride: usize,
    mut divert: impl FnMut(&[u8]),
) -> usize {
    let len = len.min(buf.len());
    // A stride of 0 or beyond `len` means "one datagram".
    let stride = if stride == 0 || stride > len {
        len
    } else {
        stride
    };
    let mut read = 0;
    let mut write = 0;
    while read < len {
        let end = read.saturating_add(stride).min(len);
        let Some(segment) = buf.get(read..end) else {
            break;
        };
        match segment.first() {
            Some(&first) if is_quic(first) => {
                if write != read {
                    buf.copy_within(read..end, write);
                }
                write += end - read;
            }
            Some(_) => divert(segment),
            None => {}
        }
        read = end;
    }
    write
}

/// Like [`split_segments`] for a slot of relayed datagrams (`00 'C' 'H' 'R' 31 ‖ relay id ‖
/// inner`): keeps the QUIC inner datagrams of `relay`, headers stripped, moved together
/// (so they are `stride − header` apart), passes control inner datagrams to `divert`, and
/// counts in `others` the segments that are not relayed for `relay` (dropped).
fn strip_relayed(
    buf: &mut [u8],
    len: usize,
    stride: usize,
    relay: &RelayId,
    others: &mut u64,
    mut divert: impl FnMut(&[u8]),
) -> usize {
    let len = len.min(buf.len());
    let stride = if stride == 0 || stride > len {
        len
    } else {
        stride
    };
    let mut read = 0;
    let mut write = 0;
    while read < len {
        let end = read.saturating_add(stride).min(len);
        let inner = match buf.get(read..end).and_then(parse_relayed) {
            Some(r) if r.kind == TYPE_RELAY_FROM_SERVER && r.relay == *relay => Some((
                read + RELAY_HEADER_LEN,
                r.inner.first().copied().is_some_and(is_quic),
            )),
            _ => None,
        };
        match inner {
            Some((start, true)) => {
                buf.copy_within(start..end, write);
                write += end - start;
            }
            Some((start, false)) => {
                if let Some(inner) = buf.get(start..end) {
                    divert(inner);
                }
            }
            None => *others += 1,
        }
        read = end;
    }
    write
}

impl AsyncUdpSocket for PathSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(WritablePoller {
            socket: self,
            pending: None,
        })
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        if !is_virtual(transmit.destination) {
            return self.io.try_io(Interest::WRITABLE, || {
                self.state.send((&self.io).into(), transmit)
            });
        }
        let Some(route) = self.routes.get(transmit.destination) else {
            // A link that is gone: nothing to send to.
            return Ok(());
        };
        route.touch();
        self.remember_handshake(route.virtual_addr, transmit);
        let mut result = Ok(());
        for (i, path) in route.paths().into_iter().flatten().enumerate() {
            let sent = self.send_path(&route, path, transmit);
            // Only the primary path's outcome matters to quinn (WouldBlock: try again
            // later); a copy that does not go out is a lost copy.
            if i == 0 {
                result = sent;
            }
        }
        result
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        loop {
            let from_tls = self.poll_tls(cx, bufs, meta);
            if from_tls > 0 {
                return Poll::Ready(Ok(from_tls));
            }
            let from_aux = self.poll_aux(cx, bufs, meta);
            if from_aux > 0 {
                return Poll::Ready(Ok(from_aux));
            }
            ready!(self.io.poll_recv_ready(cx))?;
            let received = self.io.try_io(Interest::READABLE, || {
                self.state.recv((&self.io).into(), bufs, meta)
            });
            match received {
                Ok(count) => {
                    let kept = self.demux(count, bufs, meta);
                    if kept > 0 {
                        return Poll::Ready(Ok(kept));
                    }
                    // Only control datagrams this time: read on (or park until readable).
                }
                // `try_io` cleared readiness; the next `poll_recv_ready` parks the task.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // Like quinn's own tokio socket: a failed receive (e.g. an ICMP error surfacing)
                // must not stop the endpoint.
                Err(e) => {
                    tracing::debug!(error = %e, "UDP receive failed");
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.state.max_gso_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.state.gro_segments()
    }

    fn may_fragment(&self) -> bool {
        self.state.may_fragment()
    }
}

type WritableFuture = Pin<Box<dyn Future<Output = io::Result<()>> + Send + Sync>>;

/// Wakes one quinn task when the socket becomes writable (one poller per task, so each can
/// keep its own waker).
struct WritablePoller {
    socket: Arc<PathSocket>,
    pending: Option<WritableFuture>,
}

impl fmt::Debug for WritablePoller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WritablePoller").finish_non_exhaustive()
    }
}

impl UdpPoller for WritablePoller {
    fn poll_writable(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let socket = &this.socket;
        let pending = this.pending.get_or_insert_with(|| {
            let socket = socket.clone();
            Box::pin(async move { socket.io.writable().await })
        });
        let result = pending.as_mut().poll(cx);
        if result.is_ready() {
            // A finished future must not be polled again; the next call makes a fresh one.
            this.pending = None;
        }
        result
    }
}

/// The orchestrator's end of the control channel: every non-QUIC datagram received on the
/// link socket (or relayed to it), with its [`Source`].
#[derive(Debug)]
pub struct ControlRx {
    rx: mpsc::Receiver<ControlDatagram>,
    stats: Arc<ControlStats>,
}

impl ControlRx {
    /// Waits for the next control datagram; `None` once the endpoint is gone.
    pub async fn recv(&mut self) -> Option<ControlDatagram> {
        self.rx.recv().await
    }

    /// Takes a control datagram if one is queued.
    pub fn try_recv(&mut self) -> Option<ControlDatagram> {
        self.rx.try_recv().ok()
    }

    /// How many control datagrams were queued for this receiver so far.
    pub fn delivered(&self) -> u64 {
        self.stats.delivered.load(Ordering::Relaxed)
    }

    /// How many control datagrams were dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.stats.dropped.load(Ordering::Relaxed)
    }
}

/// Sends raw (non-QUIC) datagrams from the link socket; cheap to clone.
///
/// Used for hole-punch probes and the server binding request, so they leave from the same
/// port as QUIC.
#[derive(Debug, Clone)]
pub struct RawSender {
    socket: Arc<PathSocket>,
}

impl RawSender {
    pub(crate) fn new(socket: Arc<PathSocket>) -> Self {
        Self { socket }
    }

    /// Sends `datagram` to `to`. Fails with `InvalidInput` if the first byte has bit `0x40` set,
    /// since the peer would take it for QUIC.
    pub async fn send_raw(&self, to: SocketAddr, datagram: &[u8]) -> io::Result<()> {
        self.socket.send_raw(to, datagram).await
    }

    /// The local address of the link socket.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn collect(buf: &mut [u8], len: usize, stride: usize) -> (usize, Vec<Vec<u8>>) {
        let mut diverted = Vec::new();
        let kept = split_segments(buf, len, stride, |s| diverted.push(s.to_vec()));
        (kept, diverted)
    }

    #[test]
    fn single_quic_datagram_is_kept_in_place() {
        let mut buf = [0x41, 1, 2, 3, 0, 0];
        let (kept, diverted) = collect(&mut buf, 4, 4);
        assert_eq!(kept, 4);
        assert!(diverted.is_empty());
        assert_eq!(&buf[..4], &[0x41, 1, 2, 3]);
    }

    #[test]
    fn single_control_datagram_is_diverted() {
        let mut buf = *b"\0CHR\x01rest";
        let (kept, diverted) = collect(&mut buf, 9, 0);
        assert_eq!(kept, 0);
        assert_eq!(diverted, vec![b"\0CHR\x01rest".to_vec()]);
    }

    #[test]
    fn gro_batch_with_control_in_the_middle_is_compacted() {
        // Three 4-byte segments and a 2-byte tail: Q1, C, Q2, Q3(short).
        let mut buf = [
            0x40, 1, 1, 1, //
            0x00, b'C', b'H', b'R', //
            0x41, 2, 2, 2, //
            0x42, 3,
        ];
        let (kept, diverted) = collect(&mut buf, 14, 4);
        assert_eq!(diverted, vec![b"\0CHR".to_vec()]);
        assert_eq!(kept, 10);
        assert_eq!(&buf[..10], &[0x40, 1, 1, 1, 0x41, 2, 2, 2, 0x42, 3]);
    }

    #[test]
    fn gro_batch_with_control_tail_keeps_full_segments() {
        let mut buf = [0x40, 1, 1, 0x01, 0x01, 0x00];
        let (kept, diverted) = collect(&mut buf, 6, 3);
        assert_eq!(kept, 3);
        assert_eq!(diverted, vec![vec![0x01, 0x01, 0x00]]);
        assert_eq!(&buf[..3], &[0x40, 1, 1]);
    }

    #[test]
    fn length_beyond_buffer_is_clamped() {
        let mut buf = [0x40, 1];
        let (kept, diverted) = collect(&mut buf, 100, 0);
        assert_eq!(kept, 2);
        assert!(diverted.is_empty());
    }

    #[test]
    fn a_source_address_of_another_family_is_not_kept() {
        let v4: IpAddr = "192.168.1.2".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.168.1.2".parse().unwrap();
        let v6: IpAddr = "2001:2:0:2::2".parse().unwrap();
        let other4: IpAddr = "::ffff:203.0.113.1".parse().unwrap();
        assert!(same_family(mapped, other4) && same_family(v4, other4));
        assert!(!same_family(mapped, v6) && !same_family(v6, other4));
        assert!(same_family(v6, "2001:2::1".parse().unwrap()));
    }

    #[test]
    fn ipv4_destinations_are_mapped_only_for_ipv6_sockets() {
        let v4: SocketAddr = "192.0.2.1:4000".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::1]:4000".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:192.0.2.1]:4000".parse().unwrap();
        assert_eq!(map_destination(true, v4), mapped);
        assert_eq!(map_destination(false, v4), v4);
        assert_eq!(map_destination(true, v6), v6);
        // And back: what the control channel reports.
        assert_eq!(mapped.ip().to_canonical(), v4.ip());
    }

    #[test]
    fn empty_receive_keeps_nothing() {
        let mut buf = [0u8; 4];
        let (kept, diverted) = collect(&mut buf, 0, 0);
        assert_eq!(kept, 0);
        assert!(diverted.is_empty());
    }

    fn relayed(relay: &RelayId, inner: &[u8]) -> Vec<u8> {
        let mut d = relay_header(TYPE_RELAY_FROM_SERVER, relay).to_vec();
        d.extend_from_slice(inner);
        d
    }

    #[test]
    fn a_relayed_gro_batch_loses_its_headers_and_keeps_its_stride() {
        let relay = RelayId([9; 8]);
        let other = RelayId([8; 8]);
        // Four 17-byte segments (13 header + 4) and a 15-byte tail:
        // QUIC, probe, QUIC of another relay, QUIC, QUIC (short).
        let mut buf = Vec::new();
        buf.extend(relayed(&relay, &[0x40, 1, 1, 1]));
        buf.extend(relayed(&relay, &[0x00, b'C', b'H', b'R']));
        buf.extend(relayed(&other, &[0x41, 9, 9, 9]));
        buf.extend(relayed(&relay, &[0x42, 2, 2, 2]));
        buf.extend(relayed(&relay, &[0x43, 3]));
        let len = buf.len();
        let mut diverted = Vec::new();
        let mut others = 0;
        let kept = strip_relayed(&mut buf, len, 17, &relay, &mut others, |s| {
            diverted.push(s.to_vec())
        });
        assert_eq!(kept, 10);
        assert_eq!(&buf[..10], &[0x40, 1, 1, 1, 0x42, 2, 2, 2, 0x43, 3]);
        assert_eq!(diverted, vec![b"\0CHR".to_vec()]);
        assert_eq!(others, 1);
    }
}
