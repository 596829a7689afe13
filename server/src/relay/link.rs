//! One relayed exchange: its two parties, which transport each last used, and when
//! it last carried anything.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use uuid::Uuid;

/// How a party reaches the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    /// Relayed datagrams on the Connect UDP port.
    Udp,
    /// `PacketRelayData` inside the party's TLS session.
    Tls,
}

impl Transport {
    pub(super) fn to_wire(self) -> u8 {
        match self {
            Self::Udp => 1,
            Self::Tls => 2,
        }
    }

    pub(super) fn from_wire(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Udp),
            2 => Some(Self::Tls),
            _ => None,
        }
    }
}

/// A relay between the initiator (party 0) and the responder (party 1) of one exchange.
///
/// Shared by the UDP port and every session task: all state is atomic, so forwarding
/// never takes a lock.
#[derive(Debug)]
pub(crate) struct RelayLink {
    parties: [Uuid; 2],
    /// Milliseconds since the relay's epoch at the last forwarded datagram.
    last_active_ms: AtomicU64,
    /// The transport each party last sent on (`Transport::to_wire`, 0 = none yet).
    via: [AtomicU8; 2],
}

impl RelayLink {
    /// A relay opened at `now_ms`.
    pub(crate) fn new(parties: [Uuid; 2], now_ms: u64) -> Self {
        Self {
            parties,
            last_active_ms: AtomicU64::new(now_ms),
            via: [AtomicU8::new(0), AtomicU8::new(0)],
        }
    }

    /// Party `i` (0: initiator, 1: responder).
    pub(crate) fn party(&self, i: usize) -> Uuid {
        self.parties.get(i).copied().unwrap_or_default()
    }

    /// Which party `uuid` is, if any.
    pub(crate) fn index_of(&self, uuid: &Uuid) -> Option<usize> {
        self.parties.iter().position(|p| p == uuid)
    }

    /// The transport party `i` last sent on.
    pub(crate) fn via(&self, i: usize) -> Option<Transport> {
        self.via
            .get(i)
            .and_then(|v| Transport::from_wire(v.load(Ordering::Relaxed)))
    }

    /// Party `from` just sent a datagram over `transport` at `now_ms`.
    pub(crate) fn record(&self, from: usize, transport: Transport, now_ms: u64) {
        if let Some(via) = self.via.get(from) {
            via.store(transport.to_wire(), Ordering::Relaxed);
        }
        self.last_active_ms.fetch_max(now_ms, Ordering::Relaxed);
    }

    /// When the relay last carried a datagram.
    pub(crate) fn last_active_ms(&self) -> u64 {
        self.last_active_ms.load(Ordering::Relaxed)
    }
}
