//! The Connect packets as typed values: the spec's nine (opcodes 0x0–0x8) and this
//! project's version-3 packets (0x9–0xD, sent only to version-3 sessions: the relay and
//! presence).
//!
//! Field names follow the spec. Fields marked *extension* are trailing fields
//! that the spec does not have; a frame laid out exactly as the spec says still
//! decodes, with those fields `None`. See `docs/PROTOCOL.md`.

use uuid::Uuid;

use crate::endpoint::Endpoint;
use crate::hints::LinkHints;
use crate::presence::{PacketPresence, PacketPresenceContacts, PacketPresenceStatus};

/// Length in bytes of the per-session UDP binding token carried by
/// [`PacketConnected`] (extension).
pub const UDP_TOKEN_LEN: usize = 16;

/// Length in bytes of the per-exchange link secret carried by
/// [`PacketClientInfo`] (extension).
pub const LINK_SECRET_LEN: usize = 32;

/// Opcode 0x0, client → server: log in with a UUID and a signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacketConnect {
    /// Protocol version; says which extensions the client speaks (1 = spec as written).
    pub version: u32,
    /// The client's UUID.
    pub uuid: Uuid,
    /// Signature bytes (Int32 length prefix on the wire).
    pub signature: Vec<u8>,
}

/// Opcode 0x1, both directions: the reason a connection is being closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacketDisconnect {
    /// Disconnect reason.
    pub message: String,
}

/// Opcode 0x2, server → client: login succeeded.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PacketConnected {
    /// *Extension*: token the client sends in its UDP binding message so the
    /// server can learn the client's public UDP endpoint.
    pub udp_token: Option<[u8; UDP_TOKEN_LEN]>,
    /// *Extension (version 3)*: what the server offers this session. Only sent to a
    /// session that logged in with version 3 or later; always after a `udp_token`.
    pub session: Option<SessionParams>,
}

/// The most UDP ports a server may announce for NAT behaviour discovery.
pub const MAX_NAT_PROBE_PORTS: usize = 4;

/// What a version-3 server offers one session (the tail of [`PacketConnected`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SessionParams {
    /// The protocol version the server speaks on this session: the lower of the
    /// client's `PacketConnect.version` and the server's own.
    pub version: u32,
    /// Services the server offers this session.
    pub features: SessionFeatures,
    /// Extra UDP ports on the server's address that answer STUN Binding requests, so a
    /// client can compare its NAT mappings towards several destinations (at most
    /// [`MAX_NAT_PROBE_PORTS`]).
    pub nat_probe_ports: Vec<u16>,
}

/// Bit set of the services a version-3 server offers a session (one byte on the wire;
/// unknown bits are kept and ignored).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct SessionFeatures(pub u8);

impl SessionFeatures {
    /// Relayed datagrams on the Connect UDP port (`00 'C' 'H' 'R' 30/31`).
    pub const RELAY_UDP: Self = Self(0x01);
    /// Relayed datagrams inside this TLS session ([`PacketRelayData`]).
    pub const RELAY_TLS: Self = Self(0x02);
    /// Presence of mutual contacts (packets 0x0B–0x0D).
    pub const PRESENCE: Self = Self(0x04);

    /// Whether every bit of `other` is set.
    pub fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// Both sets together.
    #[must_use]
    pub fn with(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }
}

/// Length in bytes of a [`RelayId`].
pub const RELAY_ID_LEN: usize = 8;

/// Names one relayed exchange: random, chosen by the server, handed to both parties
/// in [`PacketClientInfo`] over their TLS sessions, and carried by every relayed
/// datagram. All zeros on the wire means "no relay".
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelayId(pub [u8; RELAY_ID_LEN]);

impl RelayId {
    /// The id's bytes.
    pub fn as_bytes(&self) -> &[u8; RELAY_ID_LEN] {
        &self.0
    }

    /// `None` for the all-zero "no relay" value.
    pub fn from_wire(bytes: [u8; RELAY_ID_LEN]) -> Option<Self> {
        (bytes != [0; RELAY_ID_LEN]).then_some(Self(bytes))
    }
}

impl std::fmt::Debug for RelayId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RelayId({self})")
    }
}

impl std::fmt::Display for RelayId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// Opcode 0x3, server → client: liveness probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketPing {
    /// The ping id to echo back.
    pub ping_id: i64,
}

/// Opcode 0x4, client → server: answer to [`PacketPing`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketPong {
    /// The ping id of the last received ping.
    pub ping_id: i64,
}

/// Opcode 0x5, both directions: ask for (or, received, be asked for) a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacketConnectionRequest {
    /// Sent: the target's UUID. Received: the requester's UUID.
    pub uuid: Uuid,
    /// The private endpoint of the sender (Address, plus the port extension).
    pub private_endpoint: Endpoint,
    /// *Extension (version 3)*: the sender's NAT and extra candidates.
    pub hints: Option<LinkHints>,
}

/// Opcode 0x6, both directions: accept a connection request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacketConnectionRequestAccept {
    /// Sent: the requester's UUID. Received: the accepter's UUID.
    pub uuid: Uuid,
    /// The private endpoint of the accepter (Address, plus the port extension).
    pub private_endpoint: Endpoint,
    /// *Extension (version 3)*: the accepter's NAT and extra candidates.
    pub hints: Option<LinkHints>,
}

/// Opcode 0x7, both directions: deny a connection request (or the target is offline).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketConnectionRequestDenied {
    /// Sent: the requester's UUID. Received: the UUID of the peer that was asked.
    pub uuid: Uuid,
}

/// Opcode 0x8, server → both parties after an accept: the other party's public endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacketClientInfo {
    /// The other party's UUID.
    pub uuid: Uuid,
    /// The other party's public endpoint: its UDP-observed mapping when the server
    /// has one, else its TCP-observed address (Address, plus the port extension).
    pub public_endpoint: Endpoint,
    /// *Extension*: the other party's TCP-observed public endpoint.
    pub tcp_endpoint: Option<Endpoint>,
    /// *Extension*: a random secret shared by both parties of this exchange,
    /// used to authenticate hole-punching probes.
    pub link_secret: Option<[u8; LINK_SECRET_LEN]>,
    /// *Extension (version 3)*: the relay the server keeps for this exchange, when it
    /// relays it (the same id in both parties' ClientInfo).
    pub relay_id: Option<RelayId>,
}

/// Largest datagram a [`PacketRelayData`] carries: what is left of [`crate::MAX_FRAME`]
/// after the opcode and the relay id.
pub const MAX_RELAY_DATAGRAM: usize = crate::MAX_FRAME - 1 - RELAY_ID_LEN;

/// Opcode 0x9, both directions (version 3): one datagram of a relayed exchange, carried
/// inside the TLS session (the TLS relay, for networks that block UDP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacketRelayData {
    /// The exchange's relay.
    pub relay_id: RelayId,
    /// The datagram, as the peer's UDP socket would have received it (1 to
    /// [`MAX_RELAY_DATAGRAM`] bytes; the rest of the frame). The codec decodes it as a
    /// slice of its read buffer, uncopied.
    pub datagram: bytes::Bytes,
}

impl PacketRelayData {
    /// Parses a `PacketRelayData` payload (after the opcode) into the relay id and where
    /// the datagram lies in `payload`; the one parser behind both the slice decoder
    /// (which copies the datagram) and the codec (which slices its buffer).
    pub(crate) fn parse(
        payload: &[u8],
    ) -> Result<(RelayId, std::ops::Range<usize>), crate::DecodeError> {
        let mut r = crate::reader::Reader::new(payload);
        let id = r.array::<RELAY_ID_LEN>("PacketRelayData.relay_id")?;
        let relay_id = RelayId::from_wire(id).ok_or(crate::DecodeError::InvalidRelayId {
            field: "PacketRelayData.relay_id",
        })?;
        // The datagram is the rest of the frame, which MAX_FRAME already bounds.
        if payload.len() == RELAY_ID_LEN {
            return Err(crate::DecodeError::Truncated {
                field: "PacketRelayData.datagram",
            });
        }
        Ok((relay_id, RELAY_ID_LEN..payload.len()))
    }
}

/// Opcode 0xA, both directions (version 3): a relay is over. From a client: it no
/// longer needs the relay. From the server: the relay was closed (idle, peer gone,
/// limits, relaying switched off); the reason is for logs and users.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacketRelayClose {
    /// The exchange's relay.
    pub relay_id: RelayId,
    /// Why, ≤ 1024 bytes of UTF-8.
    pub reason: String,
}

/// Any Connect packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// 0x0
    Connect(PacketConnect),
    /// 0x1
    Disconnect(PacketDisconnect),
    /// 0x2
    Connected(PacketConnected),
    /// 0x3
    Ping(PacketPing),
    /// 0x4
    Pong(PacketPong),
    /// 0x5
    ConnectionRequest(PacketConnectionRequest),
    /// 0x6
    ConnectionRequestAccept(PacketConnectionRequestAccept),
    /// 0x7
    ConnectionRequestDenied(PacketConnectionRequestDenied),
    /// 0x8
    ClientInfo(PacketClientInfo),
    /// 0x9 (version 3)
    RelayData(PacketRelayData),
    /// 0xA (version 3)
    RelayClose(PacketRelayClose),
    /// 0xB (version 3)
    PresenceContacts(PacketPresenceContacts),
    /// 0xC (version 3)
    PresenceStatus(PacketPresenceStatus),
    /// 0xD (version 3)
    Presence(PacketPresence),
}

macro_rules! packet_opcode {
    ($($ty:ident => $variant:ident = $op:literal),* $(,)?) => {
        $(
            impl $ty {
                /// This packet's opcode.
                pub const OPCODE: u8 = $op;
            }

            impl From<$ty> for Packet {
                fn from(p: $ty) -> Self {
                    Self::$variant(p)
                }
            }
        )*
    };
}

packet_opcode! {
    PacketConnect => Connect = 0x0,
    PacketDisconnect => Disconnect = 0x1,
    PacketConnected => Connected = 0x2,
    PacketPing => Ping = 0x3,
    PacketPong => Pong = 0x4,
    PacketConnectionRequest => ConnectionRequest = 0x5,
    PacketConnectionRequestAccept => ConnectionRequestAccept = 0x6,
    PacketConnectionRequestDenied => ConnectionRequestDenied = 0x7,
    PacketClientInfo => ClientInfo = 0x8,
    PacketRelayData => RelayData = 0x9,
    PacketRelayClose => RelayClose = 0xA,
    PacketPresenceContacts => PresenceContacts = 0xB,
    PacketPresenceStatus => PresenceStatus = 0xC,
    PacketPresence => Presence = 0xD,
}

impl PacketDisconnect {
    /// A disconnect with the given reason.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}
