//! Wire format of the Chatr Connect protocol: sans-IO, no sockets, no clock.
//!
//! # Where this sits in the Connect flow
//!
//! 1. A client opens TLS to the Connect server and sends [`PacketConnect`] (version
//!    [`VERSION_CURRENT`], its UUID, and an ed25519 signature over
//!    [`channel_binding_message`], or over [`v1_signed_message`] for version 1).
//! 2. The server verifies it and answers [`PacketConnected`] (with a `udp_token`
//!    extension for v2), or [`PacketDisconnect`] with the reason (the defined messages
//!    are [`DisconnectReason`]s), and closes.
//! 3. A v2 client sends a [`udp::UdpMessage::BindingRequest`] carrying the token from
//!    its UDP socket, so the server learns its public UDP mapping.
//! 4. The server pings ([`PacketPing`]) and the client answers ([`PacketPong`]).
//! 5. A client asks for a peer with [`PacketConnectionRequest`]; the server forwards it;
//!    the peer answers [`PacketConnectionRequestAccept`] or
//!    [`PacketConnectionRequestDenied`].
//! 6. After an accept the server sends each party [`PacketClientInfo`] with the other's
//!    public endpoint (UDP-observed, else TCP-observed), TCP endpoint and a shared
//!    `link_secret`; the clients then punch a UDP path and run QUIC over it.
//! 7. Version 3 only: a client sends its contact list ([`PacketPresenceContacts`]) and
//!    status ([`PacketPresenceStatus`]); the server tells it when a *mutual* contact
//!    comes or goes ([`PacketPresence`]).
//!
//! # Layers
//!
//! - [`varint`], [`reader`], [`writer`]: the spec's data types (big-endian).
//! - [`decode_frame`] / [`Packet::encode`]: `VarInt length ‖ opcode ‖ payload`, bounded
//!   by [`MAX_FRAME`]; [`DecodeError::Incomplete`] is kept apart from invalid input.
//! - [`codec::ConnectCodec`] (feature `codec`): a thin `tokio_util::codec` adapter over
//!   those functions, for `Framed` over the TLS stream.
//! - [`udp`]: the UDP control datagrams; [`channel_binding`]: what is signed at login.
//!
//! `docs/PROTOCOL.md` is the byte-level reference, including every extension.
//!
//! # Example
//!
//! ```
//! use chatr_proto::{DecodeError, Packet, PacketPing, decode_frame};
//!
//! let ping = Packet::Ping(PacketPing { ping_id: 7 });
//! let mut wire = Vec::new();
//! ping.encode(&mut wire);
//! assert_eq!(wire, [0x09, 0x03, 0, 0, 0, 0, 0, 0, 0, 7]);
//!
//! // A partial frame asks for more bytes; a complete one decodes.
//! assert_eq!(decode_frame(&wire[..4]), Err(DecodeError::Incomplete));
//! assert_eq!(decode_frame(&wire), Ok((ping, wire.len())));
//! ```
#![deny(clippy::indexing_slicing)]

pub mod channel_binding;
#[cfg(feature = "codec")]
pub mod codec;
mod disconnect;
mod endpoint;
mod error;
mod frame;
mod hints;
mod limits;
mod packet;
mod payload;
mod presence;
pub mod reader;
pub mod udp;
pub mod varint;
pub mod writer;

pub use channel_binding::{
    CHANNEL_BINDING_CONTEXT, CHANNEL_BINDING_EXPORTER_LABEL, CHANNEL_BINDING_EXPORTER_LEN,
    CHANNEL_BINDING_MESSAGE_LEN, UDP_BINDING_EXPORTER_LABEL, VERSION_2, VERSION_3, VERSION_CURRENT,
    VERSION_SPEC, channel_binding_message, v1_signed_message,
};
pub use disconnect::DisconnectReason;
pub use endpoint::Endpoint;
pub use error::DecodeError;
pub use frame::{decode_frame, frame_len};
pub use hints::{
    CandidateOrigin, ExtraCandidate, LinkHints, MAX_EXTRA_CANDIDATES, NatHint, NatMapping,
};
pub use limits::{MAX_BYTE_ARRAY_LEN, MAX_FRAME, MAX_STRING_LEN};
pub use packet::{
    LINK_SECRET_LEN, MAX_NAT_PROBE_PORTS, MAX_RELAY_DATAGRAM, Packet, PacketClientInfo,
    PacketConnect, PacketConnected, PacketConnectionRequest, PacketConnectionRequestAccept,
    PacketConnectionRequestDenied, PacketDisconnect, PacketPing, PacketPong, PacketRelayClose,
    PacketRelayData, RELAY_ID_LEN, RelayId, SessionFeatures, SessionParams, UDP_TOKEN_LEN,
};
pub use presence::{
    ContactsOp, MAX_PRESENCE_BATCH, MAX_STATUS_MESSAGE, PacketPresence, PacketPresenceContacts,
    PacketPresenceStatus, PresenceStatus,
};
