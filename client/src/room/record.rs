//! Membership records: who created a room, who invited whom, who left. Each is signed
//! by the member it speaks for, with its ed25519 identity key, so any member can check
//! any record it is handed — the server never sees them, and a member can neither
//! forge another's invitation nor its departure.
//!
//! Byte layout (`docs/PROTOCOL.md` §11 "Room"):
//!
//! ```text
//! record := kind u8 ‖ room id (16) ‖ body ‖ signer UUID (16) ‖ signature (64)
//! signed := "chatr room record v1\0" ‖ kind ‖ room id ‖ body ‖ signer UUID
//! ```
//!
//! | kind | body |
//! | ---- | ---- |
//! | `01` genesis | name (u8 length ‖ UTF-8, ≤ 64) ‖ nonce (16) ‖ creator key (32) |
//! | `02` invite  | invite id (8) ‖ invitee UUID (16) ‖ invitee key (32) ‖ alias (u8 length ‖ ≤ 64) ‖ time (u64 ms) |
//! | `03` leave   | invite id ended (8; zeros: the creator's genesis membership) ‖ time (u64 ms) |

use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use uuid::Uuid;

use super::codec::{Reader, WireError, put_text};
use super::id::RoomId;

/// Longest room name and invitee alias, in bytes.
pub const MAX_NAME: usize = 64;

/// Longest encoded record (a genesis or invite with 64-byte texts).
pub const MAX_RECORD: usize = 1 + 16 + 8 + 16 + 32 + 1 + MAX_NAME + 8 + 16 + 64;

const SIGNED_PREFIX: &[u8] = b"chatr room record v1\0";
const ROOM_ID_PREFIX: &[u8] = b"chatr room id v1\0";

/// Identifies one invitation (random; a leave names the one it ends).
pub type InviteId = [u8; 8];

/// What a record says.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RecordBody {
    /// The room exists; the signer created it and is its first member.
    Genesis {
        /// The room's name (a label; ids are what count).
        name: String,
        /// Random bytes that make the room id unique.
        nonce: [u8; 16],
        /// The creator's key.
        creator_key: [u8; 32],
    },
    /// The signer, a member, invites `invitee` (with key `key`).
    Invite {
        /// This invitation.
        id: InviteId,
        /// Who is invited.
        invitee: Uuid,
        /// The invitee's key, as the inviter pinned it.
        key: [u8; 32],
        /// What the inviter calls the invitee.
        alias: String,
        /// Inviter's clock, UNIX milliseconds (orders two invitations of one person).
        time_ms: u64,
    },
    /// The signer leaves the room: ends its membership from invitation `ends`.
    Leave {
        /// The invitation this ends (zeros: the creator's own membership).
        ends: InviteId,
        /// Leaver's clock, UNIX milliseconds.
        time_ms: u64,
    },
}

/// A signed membership record.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Record {
    /// The room it belongs to.
    pub room: RoomId,
    /// What it says.
    pub body: RecordBody,
    /// The member it speaks for.
    pub signer: Uuid,
    /// ed25519 over the signed bytes.
    pub signature: [u8; 64],
}

impl RecordBody {
    fn kind(&self) -> u8 {
        match self {
            Self::Genesis { .. } => 1,
            Self::Invite { .. } => 2,
            Self::Leave { .. } => 3,
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Self::Genesis {
                name,
                nonce,
                creator_key,
            } => {
                put_text(out, name, MAX_NAME, true);
                out.extend_from_slice(nonce);
                out.extend_from_slice(creator_key);
            }
            Self::Invite {
                id,
                invitee,
                key,
                alias,
                time_ms,
            } => {
                out.extend_from_slice(id);
                out.extend_from_slice(invitee.as_bytes());
                out.extend_from_slice(key);
                put_text(out, alias, MAX_NAME, true);
                out.extend_from_slice(&time_ms.to_be_bytes());
            }
            Self::Leave { ends, time_ms } => {
                out.extend_from_slice(ends);
                out.extend_from_slice(&time_ms.to_be_bytes());
            }
        }
    }

    fn read(kind: u8, r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(match kind {
            1 => Self::Genesis {
                name: r.text("genesis.name", MAX_NAME, true)?,
                nonce: r.array("genesis.nonce")?,
                creator_key: r.array("genesis.creator_key")?,
            },
            2 => Self::Invite {
                id: r.array("invite.id")?,
                invitee: r.uuid("invite.invitee")?,
                key: r.array("invite.key")?,
                alias: r.text("invite.alias", MAX_NAME, true)?,
                time_ms: r.u64("invite.time")?,
            },
            3 => Self::Leave {
                ends: r.array("leave.ends")?,
                time_ms: r.u64("leave.time")?,
            },
            value => {
                return Err(WireError::UnknownCode {
                    field: "record.kind",
                    value,
                });
            }
        })
    }
}

/// The id of the room that creator `uuid` with `key` makes with `nonce`.
pub fn room_id_for(uuid: &Uuid, key: &[u8; 32], nonce: &[u8; 16]) -> RoomId {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(ROOM_ID_PREFIX);
    ctx.update(uuid.as_bytes());
    ctx.update(key);
    ctx.update(nonce);
    let digest = ctx.finish();
    let mut id = [0u8; 16];
    id.copy_from_slice(digest.as_ref().get(..16).unwrap_or(&[0; 16]));
    RoomId(id)
}

impl Record {
    /// Signs `body` for `room` as `signer`.
    pub fn sign(room: RoomId, body: RecordBody, signer: Uuid, key: &SigningKey) -> Self {
        let mut record = Self {
            room,
            body,
            signer,
            signature: [0; 64],
        };
        record.signature = key.sign(&record.signed_bytes()).to_bytes();
        record
    }

    /// A new room named `name`, created by `creator`: its genesis record.
    pub fn genesis(name: &str, nonce: [u8; 16], creator: Uuid, key: &SigningKey) -> Self {
        let creator_key = key.verifying_key().to_bytes();
        let room = room_id_for(&creator, &creator_key, &nonce);
        Self::sign(
            room,
            RecordBody::Genesis {
                name: super::codec::clamp(name, MAX_NAME).to_owned(),
                nonce,
                creator_key,
            },
            creator,
            key,
        )
    }

    /// The bytes the signature covers.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(MAX_RECORD);
        out.extend_from_slice(SIGNED_PREFIX);
        out.push(self.body.kind());
        out.extend_from_slice(self.room.as_bytes());
        self.body.write(&mut out);
        out.extend_from_slice(self.signer.as_bytes());
        out
    }

    /// Whether the signature verifies with `key` (strictly; weak keys fail).
    pub fn verify(&self, key: &VerifyingKey) -> bool {
        key.verify_strict(
            &self.signed_bytes(),
            &Signature::from_bytes(&self.signature),
        )
        .is_ok()
    }

    /// The record on the wire.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(MAX_RECORD);
        out.push(self.body.kind());
        out.extend_from_slice(self.room.as_bytes());
        self.body.write(&mut out);
        out.extend_from_slice(self.signer.as_bytes());
        out.extend_from_slice(&self.signature);
        out
    }

    /// Parses exactly one record (nothing may follow it).
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        if bytes.len() > MAX_RECORD {
            return Err(WireError::TooLong {
                field: "record",
                len: bytes.len(),
                max: MAX_RECORD,
            });
        }
        let mut r = Reader(bytes);
        let kind = r.u8("record.kind")?;
        let room = RoomId(r.array("record.room")?);
        let body = RecordBody::read(kind, &mut r)?;
        let signer = r.uuid("record.signer")?;
        let signature = r.array("record.signature")?;
        if !r.is_empty() {
            return Err(WireError::Trailing(r.0.len()));
        }
        Ok(Self {
            room,
            body,
            signer,
            signature,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_verify_only_with_their_signer() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let other = SigningKey::from_bytes(&[8; 32]);
        let me = Uuid::from_bytes([1; 16]);
        let genesis = Record::genesis("friends", [9; 16], me, &key);
        let back = Record::decode(&genesis.encode()).unwrap();
        assert_eq!(back, genesis);
        assert!(back.verify(&key.verifying_key()));
        assert!(!back.verify(&other.verifying_key()));
        assert_eq!(
            genesis.room,
            room_id_for(&me, &key.verifying_key().to_bytes(), &[9; 16])
        );
        // A changed byte breaks the signature; a cut record is truncated.
        let mut bytes = genesis.encode();
        bytes[20] ^= 1;
        assert!(!Record::decode(&bytes).unwrap().verify(&key.verifying_key()));
        let whole = genesis.encode();
        assert!(matches!(
            Record::decode(&whole[..whole.len() - 1]),
            Err(WireError::Truncated(_))
        ));
        let mut longer = whole.clone();
        longer.push(0);
        assert_eq!(Record::decode(&longer), Err(WireError::Trailing(1)));
    }
}
