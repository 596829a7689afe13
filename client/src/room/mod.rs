//! Rooms: group chat over a mesh of peer links, in the spirit of PeerChat, with
//! membership decided by the members and every message signed end to end.
//!
//! # Where this sits in the flow
//!
//! The Connect server only brokers links between members (and tells mutual contacts
//! who is online); it never sees a room. Every pair of members that are online links
//! (directly, or through the server's relay when the path layer has to) and runs one
//! **room stream** (stream kind `04`) per room on that link.
//!
//! - [`record`]: signed membership records (genesis, invite, leave);
//!   [`membership`]: who is a member, computed from the records alone.
//! - [`wire`]: the frames of a room stream, with size limits checked before anything
//!   is allocated.
//! - [`machine`]: the sans-IO [`RoomMachine`] of one room: sessions, the mesh,
//!   exactly-once in-order delivery, keep-alives.
//! - [`store`]: a room's records and delivery state in the home directory.
//! - [`host`]: the tokio driver, [`RoomHost`], that runs every room of one client
//!   over its links ([`crate::peers::Peers`]).
//!
//! `docs/ROOMS.md` explains the design (membership, delivery, partitions, cost);
//! `docs/PROTOCOL.md` §11 "Room" has the bytes.

mod codec;
pub mod host;
mod id;
pub mod machine;
pub mod membership;
pub mod record;
pub mod store;
pub mod wire;

pub use codec::WireError;
pub use host::{RoomHost, RoomHostEvent, RoomInfo};
pub use id::RoomId;
pub use machine::{Delivered, RoomConfig, RoomError, RoomEvent, RoomMachine};
pub use membership::{Member, Membership, MembershipError};
pub use record::{Record, RecordBody};
pub use wire::{Frame, MessageId, RoomMessage};
