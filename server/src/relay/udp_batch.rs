//! Forwarding one UDP receive of relayed datagrams, in place.
//!
//! With GRO the kernel hands over several datagrams from one sender glued together,
//! `stride` bytes apart (the last may be shorter). A bulk transfer over the relay is one
//! QUIC connection, so such a batch is normally a run of datagrams for the same relay:
//! each starts with the same 13-byte header `00 'C' 'H' 'R' 30 ‖ relay id`. Then the
//! whole batch is checked once (relay, sender, rate), each header's type byte is turned
//! into `31`, and the buffer goes back out in one GSO send to the other party. Anything
//! else (mixed relays, a TLS-only peer) is forwarded datagram by datagram.

use std::net::SocketAddr;
use std::time::Instant;

use chatr_proto::udp::{
    RELAY_HEADER_LEN, TYPE_RELAY_FROM_SERVER, TYPE_RELAY_TO_SERVER, parse_relayed,
};

use super::remote::{HopKind, RemoteLink};
use super::{Relay, RelayDrop, Target, Transport};

/// What the UDP port must send after [`Relay::from_udp`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UdpForward {
    /// Nothing (dropped and counted, or queued for a TLS session, or already sent).
    Done,
    /// Send the first `len` bytes of the batch buffer, rewritten in place, to `to`,
    /// as segments `stride` bytes apart (`stride` ≥ `len`: one datagram).
    Send {
        /// The other party's bound UDP endpoint.
        to: SocketAddr,
        /// Bytes of the buffer to send.
        len: usize,
        /// Segment size.
        stride: usize,
    },
}

/// The datagram boundaries of a batch: `stride` apart, the last one shorter.
fn segments(len: usize, stride: usize) -> impl Iterator<Item = (usize, usize)> {
    let stride = if stride == 0 || stride > len {
        len.max(1)
    } else {
        stride
    };
    (0..len)
        .step_by(stride)
        .map(move |start| (start, (start + stride).min(len)))
}

pub(super) fn forward(
    relay: &Relay,
    source: SocketAddr,
    batch: &mut [u8],
    stride: usize,
    now: Instant,
) -> UdpForward {
    let len = batch.len();
    let uniform = match batch.get(..RELAY_HEADER_LEN) {
        Some(first) => segments(len, stride).all(|(start, end)| {
            end - start > RELAY_HEADER_LEN
                && batch.get(start..start + RELAY_HEADER_LEN) == Some(first)
        }),
        None => false,
    };
    if uniform {
        return forward_uniform(relay, source, batch, stride, now);
    }
    // One by one; each that goes out over UDP is sent here.
    for (start, end) in segments(len, stride) {
        let Some(segment) = batch.get_mut(start..end) else {
            continue;
        };
        let seg_len = segment.len();
        if let UdpForward::Send { to, .. } = forward_uniform(relay, source, segment, seg_len, now)
            && let Some(segment) = batch.get(start..end)
        {
            relay.send_udp_raw(to, segment);
        }
    }
    UdpForward::Done
}

/// A batch whose datagrams all carry the same relay header.
fn forward_uniform(
    relay: &Relay,
    source: SocketAddr,
    batch: &mut [u8],
    stride: usize,
    now: Instant,
) -> UdpForward {
    let metrics = &relay.inner.metrics;
    let count = segments(batch.len(), stride).count();
    let drop = |cause: RelayDrop| {
        for _ in 0..count {
            metrics.relay_dropped(cause);
        }
        UdpForward::Done
    };
    let Some(relayed) = parse_relayed(batch) else {
        return drop(RelayDrop::Malformed);
    };
    if relayed.kind != TYPE_RELAY_TO_SERVER {
        return drop(RelayDrop::Malformed);
    }
    let id = relayed.relay;
    // The sender is the party whose session bound exactly this UDP endpoint.
    let source = SocketAddr::new(source.ip().to_canonical(), source.port());
    let Some(link) = relay.link(&id) else {
        return match relay.remote_link(&id) {
            Some(remote) => to_home(relay, &remote, id, source, batch, stride, now),
            None => drop(RelayDrop::UnknownRelay),
        };
    };
    let from = (0..2).find(|&i| {
        relay
            .inner
            .hub
            .session_of(&link.party(i))
            .and_then(|s| s.udp_endpoint())
            == Some(source)
    });
    let Some(from) = from else {
        return drop(RelayDrop::Stranger);
    };
    let sizes = segments(batch.len(), stride).map(|(start, end)| end - start - RELAY_HEADER_LEN);
    let admitted = relay.admit_prefix(link.party(from), sizes, now);
    for _ in admitted..count {
        metrics.relay_dropped(RelayDrop::RateLimited);
    }
    if admitted == 0 {
        return UdpForward::Done;
    }
    // Only the admitted head of the batch goes on.
    let len = segments(batch.len(), stride)
        .nth(admitted - 1)
        .map_or(0, |(_, end)| end);
    let Some(batch) = batch.get_mut(..len) else {
        return UdpForward::Done;
    };
    let inner_bytes = len - admitted * RELAY_HEADER_LEN;
    link.record(from, Transport::Udp, relay.elapsed_ms(now));
    match relay.target(&link, 1 - from) {
        Ok(Target::Udp(to)) => {
            for (start, _) in segments(len, stride) {
                if let Some(kind) = batch.get_mut(start + 4) {
                    *kind = TYPE_RELAY_FROM_SERVER;
                }
            }
            metrics.relay_forwarded_many(Transport::Udp, inner_bytes, admitted);
            UdpForward::Send {
                to,
                len,
                stride: if admitted == 1 { len } else { stride },
            }
        }
        Ok(Target::Tls(queue)) => {
            for (start, end) in segments(len, stride) {
                if let Some(inner) = batch.get(start + RELAY_HEADER_LEN..end) {
                    relay.push_tls(&queue, id, bytes::Bytes::copy_from_slice(inner));
                }
            }
            UdpForward::Done
        }
        Ok(Target::Remote(node)) => {
            let to = link.party(1 - from);
            for (start, end) in segments(len, stride) {
                if let Some(inner) = batch.get(start + RELAY_HEADER_LEN..end) {
                    relay.push_remote(&node, id, to, inner);
                }
            }
            UdpForward::Done
        }
        Err(cause) => {
            for _ in 0..admitted {
                metrics.relay_dropped(cause);
            }
            UdpForward::Done
        }
    }
}

/// A batch for a relay living on another node, from our party there: each datagram
/// hops to the relay's node, which admits and forwards it.
fn to_home(
    relay: &Relay,
    remote: &RemoteLink,
    id: chatr_proto::RelayId,
    source: SocketAddr,
    batch: &[u8],
    stride: usize,
    now: Instant,
) -> UdpForward {
    let metrics = &relay.inner.metrics;
    let bound = relay
        .inner
        .hub
        .session_of(&remote.party)
        .and_then(|s| s.udp_endpoint());
    if bound != Some(source) {
        for _ in segments(batch.len(), stride) {
            metrics.relay_dropped(RelayDrop::Stranger);
        }
        return UdpForward::Done;
    }
    remote.sent(Transport::Udp, relay.elapsed_ms(now));
    for (start, end) in segments(batch.len(), stride) {
        let inner = batch.get(start + RELAY_HEADER_LEN..end).unwrap_or_default();
        let kind = HopKind::ToHome(Transport::Udp);
        if !relay.hop(&remote.home, kind, id, remote.party, inner) {
            metrics.relay_dropped(RelayDrop::QueueFull);
        }
    }
    UdpForward::Done
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_split_by_stride_with_a_short_tail() {
        assert_eq!(
            segments(10, 4).collect::<Vec<_>>(),
            vec![(0, 4), (4, 8), (8, 10)]
        );
        assert_eq!(segments(8, 4).collect::<Vec<_>>(), vec![(0, 4), (4, 8)]);
        assert_eq!(segments(5, 0).collect::<Vec<_>>(), vec![(0, 5)]);
        assert_eq!(segments(5, 9).collect::<Vec<_>>(), vec![(0, 5)]);
        assert_eq!(segments(0, 4).count(), 0);
    }
}
