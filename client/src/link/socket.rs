//! One UDP socket, three protocols: QUIC, our control datagrams and STUN.
//!
//! The client's UDP socket is bound to port P (the local port of its TCP session), and the NAT
//! mapping the hole-punch opens is only useful if QUIC then uses that very socket. So the socket
//! is shared:
//!
//! - **QUIC** packets always have bit `0x40` set in their first byte, because every
//!   [`LinkEndpoint`](super::LinkEndpoint) disables `grease_quic_bit`.
//! - **Control datagrams** start with `0x00 'C' 'H' 'R'` (server binding messages, hole-punch
//!   probes) and **STUN** starts with `0x00`/`0x01`: neither has `0x40` set.
//!
//! `DemuxSocket` is the [`quinn::AsyncUdpSocket`] quinn drives. On every receive it keeps the
//! QUIC datagrams for quinn and pushes every other datagram into a bounded channel read through
//! [`ControlRx`]. A full channel drops the datagram and counts it: quinn's receive path must
//! never wait on the orchestrator.
//!
//! **GRO.** On Linux a single receive can return several datagrams from the same sender glued
//! together, `stride` bytes apart (the last may be shorter). GRO stays enabled because it
//! matters for bulk throughput; instead each segment is classified on its own: control segments
//! are copied out and the remaining QUIC segments are moved together in place, which keeps the
//! "all but the last segment are exactly `stride` long" invariant quinn relies on. Receive slots
//! left with no QUIC data are moved behind the ones returned to quinn.

use std::fmt;
use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use quinn::udp::{RecvMeta, Transmit, UdpSocketState};
use quinn::{AsyncUdpSocket, UdpPoller};
use tokio::io::Interest;
use tokio::sync::mpsc;

/// The bit every QUIC packet (long or short header) has set when the QUIC bit is not greased.
const QUIC_FIXED_BIT: u8 = 0x40;

/// Whether a datagram starting with `first` belongs to QUIC (as opposed to control/STUN).
pub(crate) fn is_quic(first: u8) -> bool {
    first & QUIC_FIXED_BIT != 0
}

/// A datagram that is not QUIC, with the address it came from.
pub type ControlDatagram = (SocketAddr, Bytes);

/// Counters shared by the socket (writer) and [`ControlRx`] (reader).
#[derive(Debug, Default)]
struct ControlStats {
    delivered: AtomicU64,
    dropped: AtomicU64,
}

/// The UDP socket shared by quinn, the hole-puncher and the server binding.
pub(crate) struct DemuxSocket {
    io: tokio::net::UdpSocket,
    state: UdpSocketState,
    control: mpsc::Sender<ControlDatagram>,
    stats: Arc<ControlStats>,
    /// A dual-stack IPv6 socket needs IPv4 destinations in their mapped form.
    ipv6: bool,
}

impl fmt::Debug for DemuxSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DemuxSocket")
            .field("local", &self.io.local_addr().ok())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl DemuxSocket {
    /// Takes over `socket` (already bound) and returns it with the receiving end of its
    /// control channel. Must be called inside a tokio runtime.
    pub(crate) fn new(
        socket: std::net::UdpSocket,
        control_queue: usize,
    ) -> io::Result<(Arc<Self>, ControlRx)> {
        socket.set_nonblocking(true)?;
        let state = UdpSocketState::new((&socket).into())?;
        let ipv6 = socket.local_addr()?.is_ipv6();
        let io = tokio::net::UdpSocket::from_std(socket)?;
        let (tx, rx) = mpsc::channel(control_queue.max(1));
        let stats = Arc::new(ControlStats::default());
        let demux = Arc::new(Self {
            io,
            state,
            control: tx,
            stats: stats.clone(),
            ipv6,
        });
        Ok((demux, ControlRx { rx, stats }))
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
        let to = self.destination(to);
        let sent = self.io.send_to(datagram, to).await?;
        if sent != datagram.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "the datagram was truncated by the socket",
            ));
        }
        Ok(())
    }

    pub(crate) fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.local_addr()
    }

    /// Maps an IPv4 destination for a dual-stack IPv6 socket.
    fn destination(&self, to: SocketAddr) -> SocketAddr {
        map_destination(self.ipv6, to)
    }

    /// Hands one control datagram to the orchestrator, or drops it if nobody keeps up.
    fn divert(&self, from: SocketAddr, datagram: &[u8]) {
        // Report addresses the way the rest of the client writes them: plain IPv4, not
        // `::ffff:a.b.c.d` as a dual-stack socket sees them.
        let from = SocketAddr::new(from.ip().to_canonical(), from.port());
        match self
            .control
            .try_send((from, Bytes::copy_from_slice(datagram)))
        {
            Ok(()) => {
                self.stats.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Splits the `count` receive slots filled by the kernel: control segments go to the
    /// channel, QUIC segments stay. Returns how many slots (moved to the front) hold QUIC data.
    fn demux(&self, count: usize, bufs: &mut [IoSliceMut<'_>], metas: &mut [RecvMeta]) -> usize {
        let count = count.min(bufs.len()).min(metas.len());
        let mut kept = 0;
        for slot in 0..count {
            let (Some(meta), Some(buf)) = (metas.get(slot).copied(), bufs.get_mut(slot)) else {
                break;
            };
            let quic_len = split_segments(buf, meta.len, meta.stride, |segment| {
                self.divert(meta.addr, segment)
            });
            if quic_len == 0 {
                continue;
            }
            if let Some(meta) = metas.get_mut(slot) {
                meta.len = quic_len;
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

    /// Counters for tests and logs.
    pub(crate) fn stats(&self) -> (u64, u64) {
        (
            self.stats.delivered.load(Ordering::Relaxed),
            self.stats.dropped.load(Ordering::Relaxed),
        )
    }
}

/// An IPv6 socket reaches IPv4 peers through their mapped address `::ffff:a.b.c.d`.
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

impl AsyncUdpSocket for DemuxSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(WritablePoller {
            socket: self,
            pending: None,
        })
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        self.io.try_io(Interest::WRITABLE, || {
            self.state.send((&self.io).into(), transmit)
        })
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        loop {
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
    socket: Arc<DemuxSocket>,
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
/// link socket, with its source address (IPv4 addresses in plain, not mapped, form).
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
    socket: Arc<DemuxSocket>,
}

impl RawSender {
    pub(crate) fn new(socket: Arc<DemuxSocket>) -> Self {
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
}
