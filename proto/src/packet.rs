//! The nine Connect packets (opcodes 0x0–0x8) as typed values.
//!
//! Field names follow the spec. Fields marked *extension* are trailing fields
//! that the spec does not have; a frame laid out exactly as the spec says still
//! decodes, with those fields `None`. See `docs/PROTOCOL.md`.

use uuid::Uuid;

use crate::endpoint::Endpoint;

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
}

/// Opcode 0x6, both directions: accept a connection request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacketConnectionRequestAccept {
    /// Sent: the requester's UUID. Received: the accepter's UUID.
    pub uuid: Uuid,
    /// The private endpoint of the accepter (Address, plus the port extension).
    pub private_endpoint: Endpoint,
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
}

impl PacketDisconnect {
    /// A disconnect with the given reason.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}
