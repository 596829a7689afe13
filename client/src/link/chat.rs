//! Chat over a peer link, following the Enclave protocol.
//!
//! A chat stream ([`StreamKind::Chat`](super::StreamKind::Chat)) carries Enclave "packets" in
//! both directions:
//!
//! ```text
//! +------------------------------+-----------------------------+
//! | length: u32, big-endian      | content: `length` bytes of  |
//! |                              | a JSON object               |
//! +------------------------------+-----------------------------+
//! ```
//!
//! The JSON object may carry any of `alias` (string), `status` (0 offline, 1 available,
//! 2 away, 3 busy), `status-message` (string), `message` (string) and `timestamp` (UNIX
//! seconds, integer). Unknown attributes are ignored; a missing timestamp is fine.
//!
//! 1. Each side first sends a **handshake** packet with `alias`, `status` and `status-message`
//!    ([`ChatSession::start`]).
//! 2. Then either side sends packets whenever something changes (a message, a new status…).
//! 3. A packet with `status: 0` says goodbye: the sender finishes its half of the stream and
//!    the receiver treats the chat as closed ([`ChatWriter::close`], [`ChatReader::recv`]).
//!
//! [`ChatCodec`] is the sans-IO framing (no socket, no clock); [`ChatSession`] drives it over
//! a [`LinkStream`]. Packets are limited to [`MAX_CHAT_PACKET`] bytes, checked before any
//! buffer is allocated.

use std::io;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Buf as _, BufMut as _, BytesMut};
use futures_util::{SinkExt as _, StreamExt as _};
use serde::{Deserialize, Serialize};
use tokio_util::codec::{Decoder, Encoder, FramedRead, FramedWrite};

use super::LinkError;
use super::stream::{LinkStream, wait_delivered};

/// Largest accepted chat packet content (the JSON), in bytes.
pub const MAX_CHAT_PACKET: usize = 64 * 1024;

/// Size of the length prefix.
const LEN_PREFIX: usize = 4;

/// A user's presence, as the Enclave `status` integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
pub enum Status {
    /// `0`: going offline; the chat ends.
    Offline,
    /// `1`: at the computer and willing to chat.
    Available,
    /// `2`: idle or away.
    Away,
    /// `3`: busy; do not expect an answer.
    Busy,
}

impl From<Status> for u8 {
    fn from(status: Status) -> u8 {
        match status {
            Status::Offline => 0,
            Status::Available => 1,
            Status::Away => 2,
            Status::Busy => 3,
        }
    }
}

impl TryFrom<u8> for Status {
    type Error = String;

    fn try_from(value: u8) -> Result<Self, String> {
        match value {
            0 => Ok(Self::Offline),
            1 => Ok(Self::Available),
            2 => Ok(Self::Away),
            3 => Ok(Self::Busy),
            other => Err(format!("unknown status {other}")),
        }
    }
}

/// One Enclave packet: every attribute is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatPacket {
    /// The sender's preferred name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    /// The sender's presence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    /// A free-form status text.
    #[serde(
        default,
        rename = "status-message",
        skip_serializing_if = "Option::is_none"
    )]
    pub status_message: Option<String>,
    /// A text message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When the packet was sent (UNIX seconds); peers may omit it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<i64>,
}

impl ChatPacket {
    /// A handshake packet for `profile`.
    pub fn handshake(profile: &ChatProfile) -> Self {
        Self {
            alias: Some(profile.alias.clone()),
            status: Some(profile.status),
            status_message: Some(profile.status_message.clone()),
            ..Self::default()
        }
    }

    /// A text message.
    pub fn message(text: impl Into<String>) -> Self {
        Self {
            message: Some(text.into()),
            ..Self::default()
        }
    }

    /// A status update (with `status: 0` this is the goodbye packet).
    pub fn status(status: Status, message: Option<String>) -> Self {
        Self {
            status: Some(status),
            status_message: message,
            ..Self::default()
        }
    }

    /// Whether this packet says the sender is going offline.
    pub fn is_goodbye(&self) -> bool {
        self.status == Some(Status::Offline)
    }
}

/// What we announce in our handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatProfile {
    /// Our preferred name.
    pub alias: String,
    /// Our presence (normally [`Status::Available`]).
    pub status: Status,
    /// Our status text (may be empty).
    pub status_message: String,
}

/// Why a chat failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChatError {
    /// A packet announced more content than [`MAX_CHAT_PACKET`].
    #[error("chat packet of {len} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// The announced (or encoded) length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The content is not valid packet JSON.
    #[error("invalid chat packet: {0}")]
    InvalidJson(#[from] serde_json::Error),
    /// The content is valid JSON but not an object.
    #[error("invalid chat packet: the content is not a JSON object")]
    NotAnObject,
    /// The stream ended in the middle of a packet.
    #[error("the chat stream ended in the middle of a packet")]
    Truncated,
    /// The stream ended before the peer's handshake.
    #[error("the peer closed the chat before its handshake")]
    NoHandshake,
    /// The stream failed.
    #[error("chat stream error: {0}")]
    Io(#[from] io::Error),
    /// The link failed.
    #[error(transparent)]
    Link(#[from] LinkError),
}

/// Decodes one packet from the front of `buf`.
///
/// Returns `Ok(None)` when more bytes are needed (and the announced length is acceptable), or
/// the packet and the number of bytes it used.
pub fn decode_packet(buf: &[u8]) -> Result<Option<(ChatPacket, usize)>, ChatError> {
    let Some(len) = announced_len(buf)? else {
        return Ok(None);
    };
    let total = LEN_PREFIX + len;
    let Some(content) = buf.get(LEN_PREFIX..total) else {
        return Ok(None);
    };
    Ok(Some((parse_content(content)?, total)))
}

/// Reads and bounds the length prefix; `None` if fewer than four bytes are there.
fn announced_len(buf: &[u8]) -> Result<Option<usize>, ChatError> {
    let Some(prefix) = buf.first_chunk::<LEN_PREFIX>() else {
        return Ok(None);
    };
    let len = usize::try_from(u32::from_be_bytes(*prefix)).unwrap_or(usize::MAX);
    if len > MAX_CHAT_PACKET {
        return Err(ChatError::TooLarge {
            len,
            max: MAX_CHAT_PACKET,
        });
    }
    Ok(Some(len))
}

fn parse_content(content: &[u8]) -> Result<ChatPacket, ChatError> {
    // serde would also accept a JSON array for a struct; the protocol says object.
    let first = content.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        if first.is_none() {
            // Let serde_json describe the empty input.
            serde_json::from_slice::<ChatPacket>(content)?;
        }
        return Err(ChatError::NotAnObject);
    }
    Ok(serde_json::from_slice(content)?)
}

/// Appends `packet`, framed, to `out`.
pub fn encode_packet(packet: &ChatPacket, out: &mut Vec<u8>) -> Result<(), ChatError> {
    let json = serde_json::to_vec(packet)?;
    let len = u32::try_from(json.len())
        .ok()
        .filter(|_| json.len() <= MAX_CHAT_PACKET)
        .ok_or(ChatError::TooLarge {
            len: json.len(),
            max: MAX_CHAT_PACKET,
        })?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&json);
    Ok(())
}

/// The sans-IO chat framing as a `tokio_util` codec.
#[derive(Debug, Clone, Copy, Default)]
pub struct ChatCodec;

impl Decoder for ChatCodec {
    type Item = ChatPacket;
    type Error = ChatError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<ChatPacket>, ChatError> {
        let Some(len) = announced_len(src)? else {
            return Ok(None);
        };
        let total = LEN_PREFIX + len;
        if src.len() < total {
            // The length is bounded above, so reserving is safe.
            src.reserve(total - src.len());
            return Ok(None);
        }
        let frame = src.split_to(total);
        let packet = parse_content(frame.get(LEN_PREFIX..).unwrap_or_default())?;
        Ok(Some(packet))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<ChatPacket>, ChatError> {
        match self.decode(src)? {
            Some(packet) => Ok(Some(packet)),
            None if src.is_empty() => Ok(None),
            None => {
                src.advance(src.len());
                Err(ChatError::Truncated)
            }
        }
    }
}

impl Encoder<&ChatPacket> for ChatCodec {
    type Error = ChatError;

    fn encode(&mut self, packet: &ChatPacket, dst: &mut BytesMut) -> Result<(), ChatError> {
        let mut out = Vec::new();
        encode_packet(packet, &mut out)?;
        dst.put_slice(&out);
        Ok(())
    }
}

/// Now, as UNIX seconds, for the `timestamp` attribute.
fn unix_now() -> Option<i64> {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).ok()?;
    i64::try_from(since.as_secs()).ok()
}

/// A chat running on one stream: both handshakes done.
#[derive(Debug)]
pub struct ChatSession {
    writer: ChatWriter,
    reader: ChatReader,
    peer: ChatPacket,
}

impl ChatSession {
    /// Sends our handshake for `profile` and waits for the peer's (its first packet).
    ///
    /// Wrap it in a timeout if the peer might never answer.
    pub async fn start(stream: LinkStream, profile: &ChatProfile) -> Result<Self, ChatError> {
        let (send, recv) = stream.into_split();
        let mut writer = ChatWriter {
            sink: FramedWrite::new(send, ChatCodec),
            closed: false,
        };
        let mut reader = ChatReader {
            source: FramedRead::new(recv, ChatCodec),
            ended: false,
        };
        writer.send(ChatPacket::handshake(profile)).await?;
        let peer = match reader.source.next().await {
            Some(packet) => packet?,
            None => return Err(ChatError::NoHandshake),
        };
        if peer.is_goodbye() {
            reader.ended = true;
        }
        Ok(Self {
            writer,
            reader,
            peer,
        })
    }

    /// The peer's handshake packet (its alias, status and status message).
    pub fn peer_handshake(&self) -> &ChatPacket {
        &self.peer
    }

    /// Sends a text message.
    pub async fn send_message(&mut self, text: &str) -> Result<(), ChatError> {
        self.writer.send_message(text).await
    }

    /// Receives the next packet; see [`ChatReader::recv`].
    pub async fn recv(&mut self) -> Result<Option<ChatPacket>, ChatError> {
        self.reader.recv().await
    }

    /// Says goodbye and closes our half; see [`ChatWriter::close`].
    pub async fn close(&mut self) -> Result<(), ChatError> {
        self.writer.close().await
    }

    /// Separates sending and receiving, e.g. to read user input and the network at once.
    pub fn split(self) -> (ChatWriter, ChatReader) {
        (self.writer, self.reader)
    }
}

/// The sending half of a chat.
#[derive(Debug)]
pub struct ChatWriter {
    sink: FramedWrite<quinn::SendStream, ChatCodec>,
    closed: bool,
}

impl ChatWriter {
    /// Sends `packet`, stamping it with the current time if it has no timestamp.
    pub async fn send(&mut self, mut packet: ChatPacket) -> Result<(), ChatError> {
        if packet.timestamp.is_none() {
            packet.timestamp = unix_now();
        }
        self.sink.send(&packet).await
    }

    /// Sends a text message.
    pub async fn send_message(&mut self, text: &str) -> Result<(), ChatError> {
        self.send(ChatPacket::message(text)).await
    }

    /// Announces a new status (not [`Status::Offline`]; use [`close`](Self::close) for that).
    pub async fn set_status(
        &mut self,
        status: Status,
        message: Option<String>,
    ) -> Result<(), ChatError> {
        self.send(ChatPacket::status(status, message)).await
    }

    /// Announces a new alias.
    pub async fn set_alias(&mut self, alias: &str) -> Result<(), ChatError> {
        self.send(ChatPacket {
            alias: Some(alias.to_owned()),
            ..ChatPacket::default()
        })
        .await
    }

    /// Says goodbye politely: sends `status: 0`, finishes our half of the stream, and waits
    /// until the peer has received it. Calling it again does nothing.
    pub async fn close(&mut self) -> Result<(), ChatError> {
        if self.closed {
            return Ok(());
        }
        self.closed = true;
        self.send(ChatPacket::status(Status::Offline, None)).await?;
        let send = self.sink.get_mut();
        // Already finished only if the stream was reset; nothing more to send then.
        let _ = send.finish();
        wait_delivered(send).await?;
        Ok(())
    }
}

/// The receiving half of a chat.
#[derive(Debug)]
pub struct ChatReader {
    source: FramedRead<quinn::RecvStream, ChatCodec>,
    ended: bool,
}

impl ChatReader {
    /// The next packet from the peer, or `None` once the chat is over.
    ///
    /// A goodbye packet (`status: 0`) is returned once, so the caller can show it; after it,
    /// and after the peer ends the stream, this returns `None`.
    pub async fn recv(&mut self) -> Result<Option<ChatPacket>, ChatError> {
        if self.ended {
            return Ok(None);
        }
        match self.source.next().await {
            Some(Ok(packet)) => {
                if packet.is_goodbye() {
                    self.ended = true;
                }
                Ok(Some(packet))
            }
            Some(Err(e)) => {
                self.ended = true;
                Err(e)
            }
            None => {
                self.ended = true;
                Ok(None)
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn framed(json: &str) -> Vec<u8> {
        let mut out = (json.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(json.as_bytes());
        out
    }

    #[test]
    fn golden_handshake_bytes() {
        let packet = ChatPacket::handshake(&ChatProfile {
            alias: "John Smith".into(),
            status: Status::Available,
            status_message: "hi".into(),
        });
        let mut out = Vec::new();
        encode_packet(&packet, &mut out).unwrap();
        let json = br#"{"alias":"John Smith","status":1,"status-message":"hi"}"#;
        assert_eq!(&out[..4], &(json.len() as u32).to_be_bytes());
        assert_eq!(&out[4..], json);
        // docs/PROTOCOL.md §11 "Chat" shows the same bytes.
        assert_eq!(hex::encode(&out[..4]), "00000037");
    }

    #[test]
    fn decodes_packet_from_the_enclave_spec() {
        let bytes = framed(
            r#"{"alias":"John Smith","status":2,"status-message":"brb","message":"hello","timestamp":1463500000}"#,
        );
        let (packet, used) = decode_packet(&bytes).unwrap().unwrap();
        assert_eq!(used, bytes.len());
        assert_eq!(packet.alias.as_deref(), Some("John Smith"));
        assert_eq!(packet.status, Some(Status::Away));
        assert_eq!(packet.status_message.as_deref(), Some("brb"));
        assert_eq!(packet.message.as_deref(), Some("hello"));
        assert_eq!(packet.timestamp, Some(1_463_500_000));
    }

    #[test]
    fn missing_timestamp_and_unknown_fields_are_tolerated() {
        let bytes = framed(r#"{"message":"yo","colour":"blue"}"#);
        let (packet, _) = decode_packet(&bytes).unwrap().unwrap();
        assert_eq!(packet.message.as_deref(), Some("yo"));
        assert_eq!(packet.timestamp, None);
    }

    #[test]
    fn round_trip_every_status() {
        for status in [
            Status::Offline,
            Status::Available,
            Status::Away,
            Status::Busy,
        ] {
            let packet = ChatPacket::status(status, Some("x".into()));
            let mut out = Vec::new();
            encode_packet(&packet, &mut out).unwrap();
            let (back, used) = decode_packet(&out).unwrap().unwrap();
            assert_eq!(back, packet);
            assert_eq!(used, out.len());
        }
    }

    #[test]
    fn incomplete_input_needs_more() {
        let bytes = framed(r#"{"message":"hello"}"#);
        for cut in 0..bytes.len() {
            assert!(decode_packet(&bytes[..cut]).unwrap().is_none(), "cut {cut}");
        }
    }

    #[test]
    fn huge_length_is_rejected_before_the_content_arrives() {
        let bytes = u32::MAX.to_be_bytes();
        assert!(matches!(
            decode_packet(&bytes),
            Err(ChatError::TooLarge { .. })
        ));
        let just_over = ((MAX_CHAT_PACKET + 1) as u32).to_be_bytes();
        assert!(matches!(
            decode_packet(&just_over),
            Err(ChatError::TooLarge { .. })
        ));
        // The codec must not reserve memory for it either.
        let mut buf = BytesMut::from(&u32::MAX.to_be_bytes()[..]);
        assert!(ChatCodec.decode(&mut buf).is_err());
        assert!(buf.capacity() < 1024);
    }

    #[test]
    fn bad_json_is_rejected() {
        for bad in [
            "{",
            "not json",
            "",
            "[\"alias\"]",
            "42",
            r#"{"status":9}"#,
            r#"{"status":"1"}"#,
            r#"{"timestamp":"yesterday"}"#,
            r#"{"message":5}"#,
        ] {
            let bytes = framed(bad);
            assert!(decode_packet(&bytes).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn oversized_packet_is_not_encoded() {
        let packet = ChatPacket::message("x".repeat(MAX_CHAT_PACKET));
        let mut out = Vec::new();
        assert!(matches!(
            encode_packet(&packet, &mut out),
            Err(ChatError::TooLarge { .. })
        ));
        assert!(out.is_empty());
    }

    #[test]
    fn codec_splits_back_to_back_packets_and_flags_truncation() {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&framed(r#"{"message":"a"}"#));
        buf.extend_from_slice(&framed(r#"{"message":"b"}"#));
        buf.extend_from_slice(&framed(r#"{"message":"c"}"#)[..5]);
        let mut codec = ChatCodec;
        assert_eq!(
            codec.decode(&mut buf).unwrap().unwrap().message.as_deref(),
            Some("a")
        );
        assert_eq!(
            codec.decode(&mut buf).unwrap().unwrap().message.as_deref(),
            Some("b")
        );
        assert!(codec.decode(&mut buf).unwrap().is_none());
        assert!(matches!(
            codec.decode_eof(&mut buf),
            Err(ChatError::Truncated)
        ));
    }
}
