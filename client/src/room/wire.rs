//! Frames of a room stream (stream kind `04` on a peer link).
//!
//! ```text
//! frame := type u8 ‖ length u32 (≤ MAX_FRAME) ‖ body
//! ```
//!
//! [`decode_frame`] checks the length before anything is buffered for the body and
//! returns `Ok(None)` while a frame is incomplete, so a stream reader can feed it
//! whatever arrived. Bodies (all integers big-endian; `docs/PROTOCOL.md` §11 "Room"):
//!
//! | type | frame | body |
//! | ---- | ----- | ---- |
//! | `01` | Hello | room id (16) ‖ epoch (8) ‖ alias (u8 len ‖ ≤ 64) ‖ count (u16) ‖ count × (u16 len ‖ record) |
//! | `02` | Records | count (u16) ‖ count × (u16 len ‖ record) |
//! | `03` | Who | – |
//! | `04` | WhoReply | count (u16) ‖ count × UUID |
//! | `05` | Message | sender (16) ‖ epoch (8) ‖ seq (8) ‖ time ms (8) ‖ text (u16 len ‖ ≤ 4096) ‖ signature (64) |
//! | `06` | Ping | digest (8) |
//! | `07` | Have | reply u8 (0/1) ‖ count (u16) ‖ count × (sender 16 ‖ epoch 8 ‖ seq 8) |
//! | `08` | Gap | sender (16) ‖ epoch (8) ‖ up to seq (8) |
//! | `09` | Present | UUID (16) ‖ present u8 (0/1) |
//! | `0a` | Bye | reason (u8 len ‖ ≤ 200) |
//! | `0b` | Refuse | reason (u8 len ‖ ≤ 200) |

use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use uuid::Uuid;

use super::codec::{Reader, WireError, put_text};
use super::id::RoomId;
use super::membership::MAX_RECORDS;
use super::record::{MAX_NAME, Record};

/// Largest frame body.
pub const MAX_FRAME: usize = 64 * 1024;
/// Longest message text, in bytes of UTF-8.
pub const MAX_TEXT: usize = 4096;
/// Longest Bye / Refuse reason.
pub const MAX_REASON: usize = 200;
/// The most entries of a Have or WhoReply.
pub const MAX_ENTRIES: usize = 1024;

const HEADER: usize = 5;
const MESSAGE_PREFIX: &[u8] = b"chatr room message v1\0";

/// Names one message: its sender, the sender's session (epoch) and its place in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId {
    /// Who wrote it.
    pub sender: Uuid,
    /// The sender's room session (random per start).
    pub epoch: u64,
    /// 1, 2, 3… within the epoch.
    pub seq: u64,
}

/// One room message, signed by its sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomMessage {
    /// Its id.
    pub id: MessageId,
    /// Sender's clock, UNIX milliseconds.
    pub time_ms: u64,
    /// The text.
    pub text: String,
    /// ed25519 over `"chatr room message v1\0" ‖ room id ‖ sender ‖ epoch ‖ seq ‖ time ‖ text`.
    pub signature: [u8; 64],
}

impl RoomMessage {
    fn signed_bytes(room: &RoomId, id: &MessageId, time_ms: u64, text: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(MESSAGE_PREFIX.len() + 56 + text.len());
        out.extend_from_slice(MESSAGE_PREFIX);
        out.extend_from_slice(room.as_bytes());
        out.extend_from_slice(id.sender.as_bytes());
        out.extend_from_slice(&id.epoch.to_be_bytes());
        out.extend_from_slice(&id.seq.to_be_bytes());
        out.extend_from_slice(&time_ms.to_be_bytes());
        out.extend_from_slice(text.as_bytes());
        out
    }

    /// A message signed with `key`; the text is cut to [`MAX_TEXT`].
    pub fn sign(room: &RoomId, id: MessageId, time_ms: u64, text: &str, key: &SigningKey) -> Self {
        let text = super::codec::clamp(text, MAX_TEXT).to_owned();
        let signature = key
            .sign(&Self::signed_bytes(room, &id, time_ms, &text))
            .to_bytes();
        Self {
            id,
            time_ms,
            text,
            signature,
        }
    }

    /// Whether the sender's `key` signed it for `room`.
    pub fn verify(&self, room: &RoomId, key: &VerifyingKey) -> bool {
        key.verify_strict(
            &Self::signed_bytes(room, &self.id, self.time_ms, &self.text),
            &Signature::from_bytes(&self.signature),
        )
        .is_ok()
    }
}

/// A frame of a room stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Opens a session (both sides send one): the room, the sender's epoch and alias,
    /// and every membership record it has.
    Hello {
        /// The room.
        room: RoomId,
        /// The sender's room session.
        epoch: u64,
        /// The sender's own name for itself.
        alias: String,
        /// Its records.
        records: Vec<Record>,
    },
    /// New membership records (an invite, a leave), passed on to every member.
    Records(Vec<Record>),
    /// "Who else is here?" (PeerChat `who`).
    Who,
    /// The members the sender has a session with, except the receiver (PeerChat
    /// `who-reply`).
    WhoReply(Vec<Uuid>),
    /// A message.
    Message(RoomMessage),
    /// Keep-alive, with a digest of what the sender has delivered (differing digests
    /// start a [`Frame::Have`] exchange).
    Ping {
        /// See `machine.rs`.
        digest: u64,
    },
    /// What the sender has delivered: per (sender, epoch), the highest seq up to which it
    /// has everything. `reply` is set on the answer to a Have, which is not answered.
    Have {
        /// Whether this answers a Have.
        reply: bool,
        /// (sender, epoch, seq) entries.
        entries: Vec<MessageId>,
    },
    /// Messages of (sender, epoch) up to `seq` are gone from the sender's memory: stop
    /// waiting for them.
    Gap(MessageId),
    /// The sender now has (or no longer has) a session with this member.
    Present {
        /// The member.
        member: Uuid,
        /// Whether it is there.
        present: bool,
    },
    /// The sender goes offline (it stays a member); the stream ends after it.
    Bye(String),
    /// The receiver's Hello is refused (not a member, unknown room); the stream ends.
    Refuse(String),
}

fn put_records(out: &mut Vec<u8>, records: &[Record]) {
    let records = records.get(..MAX_RECORDS).unwrap_or(records);
    out.extend_from_slice(&u16::try_from(records.len()).unwrap_or(0).to_be_bytes());
    for r in records {
        let bytes = r.encode();
        out.extend_from_slice(&u16::try_from(bytes.len()).unwrap_or(0).to_be_bytes());
        out.extend_from_slice(&bytes);
    }
}

fn read_records(r: &mut Reader<'_>) -> Result<Vec<Record>, WireError> {
    let count = usize::from(r.u16("records.count")?);
    if count > MAX_RECORDS {
        return Err(WireError::TooLong {
            field: "records.count",
            len: count,
            max: MAX_RECORDS,
        });
    }
    let mut records = Vec::with_capacity(count);
    for _ in 0..count {
        let len = usize::from(r.u16("records.len")?);
        records.push(Record::decode(r.take(len, "records.record")?)?);
    }
    Ok(records)
}

fn put_id(out: &mut Vec<u8>, id: &MessageId) {
    out.extend_from_slice(id.sender.as_bytes());
    out.extend_from_slice(&id.epoch.to_be_bytes());
    out.extend_from_slice(&id.seq.to_be_bytes());
}

fn read_id(r: &mut Reader<'_>) -> Result<MessageId, WireError> {
    Ok(MessageId {
        sender: r.uuid("id.sender")?,
        epoch: r.u64("id.epoch")?,
        seq: r.u64("id.seq")?,
    })
}

fn read_count(r: &mut Reader<'_>, field: &'static str) -> Result<usize, WireError> {
    let count = usize::from(r.u16(field)?);
    if count > MAX_ENTRIES {
        return Err(WireError::TooLong {
            field,
            len: count,
            max: MAX_ENTRIES,
        });
    }
    Ok(count)
}

fn read_bool(r: &mut Reader<'_>, field: &'static str) -> Result<bool, WireError> {
    match r.u8(field)? {
        0 => Ok(false),
        1 => Ok(true),
        value => Err(WireError::UnknownCode { field, value }),
    }
}

impl Frame {
    fn kind(&self) -> u8 {
        match self {
            Self::Hello { .. } => 0x01,
            Self::Records(_) => 0x02,
            Self::Who => 0x03,
            Self::WhoReply(_) => 0x04,
            Self::Message(_) => 0x05,
            Self::Ping { .. } => 0x06,
            Self::Have { .. } => 0x07,
            Self::Gap(_) => 0x08,
            Self::Present { .. } => 0x09,
            Self::Bye(_) => 0x0a,
            Self::Refuse(_) => 0x0b,
        }
    }

    /// The frame on the wire.
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::new();
        match self {
            Self::Hello {
                room,
                epoch,
                alias,
                records,
            } => {
                body.extend_from_slice(room.as_bytes());
                body.extend_from_slice(&epoch.to_be_bytes());
                put_text(&mut body, alias, MAX_NAME, true);
                put_records(&mut body, records);
            }
            Self::Records(records) => put_records(&mut body, records),
            Self::Who => {}
            Self::WhoReply(members) => {
                let members = members.get(..MAX_ENTRIES).unwrap_or(members);
                body.extend_from_slice(&u16::try_from(members.len()).unwrap_or(0).to_be_bytes());
                for m in members {
                    body.extend_from_slice(m.as_bytes());
                }
            }
            Self::Message(m) => {
                put_id(&mut body, &m.id);
                body.extend_from_slice(&m.time_ms.to_be_bytes());
                put_text(&mut body, &m.text, MAX_TEXT, false);
                body.extend_from_slice(&m.signature);
            }
            Self::Ping { digest } => body.extend_from_slice(&digest.to_be_bytes()),
            Self::Have { reply, entries } => {
                let entries = entries.get(..MAX_ENTRIES).unwrap_or(entries);
                body.push(u8::from(*reply));
                body.extend_from_slice(&u16::try_from(entries.len()).unwrap_or(0).to_be_bytes());
                for e in entries {
                    put_id(&mut body, e);
                }
            }
            Self::Gap(id) => put_id(&mut body, id),
            Self::Present { member, present } => {
                body.extend_from_slice(member.as_bytes());
                body.push(u8::from(*present));
            }
            Self::Bye(reason) | Self::Refuse(reason) => {
                put_text(&mut body, reason, MAX_REASON, true);
            }
        }
        let mut out = Vec::with_capacity(HEADER + body.len());
        out.push(self.kind());
        out.extend_from_slice(&u32::try_from(body.len()).unwrap_or(0).to_be_bytes());
        out.extend_from_slice(&body);
        out
    }

    fn decode_body(kind: u8, body: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader(body);
        let frame = match kind {
            0x01 => Self::Hello {
                room: RoomId(r.array("hello.room")?),
                epoch: r.u64("hello.epoch")?,
                alias: r.text("hello.alias", MAX_NAME, true)?,
                records: read_records(&mut r)?,
            },
            0x02 => Self::Records(read_records(&mut r)?),
            0x03 => Self::Who,
            0x04 => {
                let count = read_count(&mut r, "who_reply.count")?;
                let mut members = Vec::with_capacity(count);
                for _ in 0..count {
                    members.push(r.uuid("who_reply.member")?);
                }
                Self::WhoReply(members)
            }
            0x05 => {
                let id = read_id(&mut r)?;
                let time_ms = r.u64("message.time")?;
                let text = r.text("message.text", MAX_TEXT, false)?;
                let signature = r.array("message.signature")?;
                Self::Message(RoomMessage {
                    id,
                    time_ms,
                    text,
                    signature,
                })
            }
            0x06 => Self::Ping {
                digest: r.u64("ping.digest")?,
            },
            0x07 => {
                let reply = read_bool(&mut r, "have.reply")?;
                let count = read_count(&mut r, "have.count")?;
                let mut entries = Vec::with_capacity(count);
                for _ in 0..count {
                    entries.push(read_id(&mut r)?);
                }
                Self::Have { reply, entries }
            }
            0x08 => Self::Gap(read_id(&mut r)?),
            0x09 => Self::Present {
                member: r.uuid("present.member")?,
                present: read_bool(&mut r, "present.present")?,
            },
            0x0a => Self::Bye(r.text("bye.reason", MAX_REASON, true)?),
            0x0b => Self::Refuse(r.text("refuse.reason", MAX_REASON, true)?),
            value => {
                return Err(WireError::UnknownCode {
                    field: "frame.type",
                    value,
                });
            }
        };
        if !r.is_empty() {
            return Err(WireError::Trailing(r.0.len()));
        }
        Ok(frame)
    }
}

/// Decodes one frame from the front of `buf`: `Ok(None)` while it is incomplete (and
/// could still be valid), else the frame and the bytes it used. A bad type or an
/// over-long length is refused as soon as the 5-byte header is there.
pub fn decode_frame(buf: &[u8]) -> Result<Option<(Frame, usize)>, WireError> {
    let Some(header) = buf.first_chunk::<HEADER>() else {
        if let Some(&kind) = buf.first()
            && !(0x01..=0x0b).contains(&kind)
        {
            return Err(WireError::UnknownCode {
                field: "frame.type",
                value: kind,
            });
        }
        return Ok(None);
    };
    let [kind, l0, l1, l2, l3] = *header;
    let len = usize::try_from(u32::from_be_bytes([l0, l1, l2, l3])).unwrap_or(usize::MAX);
    if len > MAX_FRAME {
        return Err(WireError::TooLong {
            field: "frame.length",
            len,
            max: MAX_FRAME,
        });
    }
    if !(0x01..=0x0b).contains(&kind) {
        return Err(WireError::UnknownCode {
            field: "frame.type",
            value: kind,
        });
    }
    let Some(body) = buf.get(HEADER..HEADER + len) else {
        return Ok(None);
    };
    Ok(Some((Frame::decode_body(kind, body)?, HEADER + len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_prefixes_are_incomplete() {
        let key = SigningKey::from_bytes(&[1; 32]);
        let me = Uuid::from_bytes([1; 16]);
        let genesis = Record::genesis("r", [2; 16], me, &key);
        let room = genesis.room;
        let id = MessageId {
            sender: me,
            epoch: 7,
            seq: 1,
        };
        let frames = vec![
            Frame::Hello {
                room,
                epoch: 7,
                alias: "alice".into(),
                records: vec![genesis.clone()],
            },
            Frame::Records(vec![genesis]),
            Frame::Who,
            Frame::WhoReply(vec![me]),
            Frame::Message(RoomMessage::sign(&room, id, 5, "hi", &key)),
            Frame::Ping { digest: 9 },
            Frame::Have {
                reply: true,
                entries: vec![id],
            },
            Frame::Gap(id),
            Frame::Present {
                member: me,
                present: true,
            },
            Frame::Bye("bye".into()),
            Frame::Refuse("not a member".into()),
        ];
        for f in frames {
            let bytes = f.encode();
            assert_eq!(decode_frame(&bytes), Ok(Some((f.clone(), bytes.len()))));
            for cut in 0..bytes.len() {
                assert_eq!(decode_frame(&bytes[..cut]), Ok(None), "{f:?} cut at {cut}");
            }
        }
    }

    #[test]
    fn limits_are_checked_before_the_body() {
        // A 1 MiB length is refused from the header alone.
        assert!(matches!(
            decode_frame(&[0x05, 0x00, 0x10, 0x00, 0x00]),
            Err(WireError::TooLong { .. })
        ));
        assert!(matches!(
            decode_frame(&[0x7f]),
            Err(WireError::UnknownCode { .. })
        ));
        // A body cut inside a field is truncated, not incomplete, once the frame is whole.
        assert!(matches!(
            decode_frame(&[0x06, 0, 0, 0, 2, 1, 2]),
            Err(WireError::Truncated(_))
        ));
        // A message signed for one room does not verify for another.
        let key = SigningKey::from_bytes(&[1; 32]);
        let id = MessageId {
            sender: Uuid::nil(),
            epoch: 1,
            seq: 1,
        };
        let m = RoomMessage::sign(&RoomId([1; 16]), id, 0, "x", &key);
        assert!(m.verify(&RoomId([1; 16]), &key.verifying_key()));
        assert!(!m.verify(&RoomId([2; 16]), &key.verifying_key()));
    }
}
