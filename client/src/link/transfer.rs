//! File transfer over a peer link, checked by size and SHA-256.
//!
//! A file stream ([`StreamKind::File`]) carries one file:
//!
//! ```text
//! sender → receiver:  name_len: u16 BE (1..=255) ‖ name: UTF-8 ‖ size: u64 BE ‖ sha256: 32 bytes
//!                     ‖ exactly `size` bytes of content, then end of stream
//! receiver → sender:  status: u8 ‖ message_len: u16 BE (0..=1024) ‖ message: UTF-8, then end
//! ```
//!
//! Status `0` means the file was stored with the announced size and hash; any other status
//! ([`ReplyStatus`]) means it was not, and the receiver removed what it had written.
//!
//! The name is only a suggestion: it must be a plain file name (no `/`, `\`, `..`, control
//! characters), and the receiver never overwrites an existing file — it picks `name (1)`,
//! `name (2)`, … instead. The received bytes go straight into the destination file, created
//! exclusively, and the file is removed if anything fails.
//!
//! Before it creates the file the receiver checks the announced size against its
//! [`ReceiveLimits`] (an optional maximum, and the free space of the destination file system
//! minus a reserve), so a peer cannot fill the receiver's disk.

use std::io;
use std::path::{Path, PathBuf};

use ring::digest;
use tokio::fs::{File, OpenOptions};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::LinkError;
use super::close_code::CloseCode;
use super::peer_link::PeerLink;
use super::receive_limits::available_space;
pub use super::receive_limits::{DEFAULT_DISK_RESERVE, LimitExceeded, ReceiveLimits};
use super::stream::{LinkStream, StreamKind, wait_delivered};

/// Longest file name accepted, in bytes.
pub const MAX_NAME_LEN: usize = 255;
/// Longest reply message, in bytes.
pub const MAX_REPLY_MESSAGE: usize = 1024;
/// Read/write chunk size for file content.
const CHUNK: usize = 64 * 1024;
/// How many `name (n)` variants to try before giving up.
const MAX_RENAMES: u32 = 1000;

/// The header that precedes a file's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileHeader {
    /// Sanitized file name (see [`sanitize_name`]).
    pub name: String,
    /// Content length in bytes.
    pub size: u64,
    /// SHA-256 of the content.
    pub sha256: [u8; 32],
}

impl FileHeader {
    /// Encoded length of this header.
    pub fn encoded_len(&self) -> usize {
        2 + self.name.len() + 8 + 32
    }

    /// Appends the header to `out`. Fails if the name is not a valid file name.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), TransferError> {
        let name = sanitize_name(&self.name)?;
        let len = u16::try_from(name.len()).map_err(|_| TransferError::BadName(name.clone()))?;
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&self.size.to_be_bytes());
        out.extend_from_slice(&self.sha256);
        Ok(())
    }

    /// Decodes a header from the front of `buf`: `Ok(None)` if more bytes are needed,
    /// otherwise the header and the bytes it used. The name length is checked before the name
    /// is read, and the name is sanitized.
    pub fn decode(buf: &[u8]) -> Result<Option<(Self, usize)>, TransferError> {
        let Some(len) = buf.first_chunk::<2>() else {
            return Ok(None);
        };
        let name_len = usize::from(u16::from_be_bytes(*len));
        if name_len == 0 || name_len > MAX_NAME_LEN {
            return Err(TransferError::BadHeader("file name length out of range"));
        }
        let total = 2 + name_len + 8 + 32;
        let Some(frame) = buf.get(..total) else {
            return Ok(None);
        };
        let (name, rest) = frame
            .get(2..)
            .and_then(|b| b.split_at_checked(name_len))
            .ok_or(TransferError::BadHeader("truncated header"))?;
        let name = std::str::from_utf8(name)
            .map_err(|_| TransferError::BadHeader("file name is not UTF-8"))?;
        let name = sanitize_name(name)?;
        let (size, sha) = rest
            .split_first_chunk::<8>()
            .ok_or(TransferError::BadHeader("truncated header"))?;
        let sha256 = *sha
            .first_chunk::<32>()
            .ok_or(TransferError::BadHeader("truncated header"))?;
        let header = Self {
            name,
            size: u64::from_be_bytes(*size),
            sha256,
        };
        Ok(Some((header, total)))
    }
}

/// The receiver's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReplyStatus {
    /// `0`: stored, size and SHA-256 match.
    Ok,
    /// `1`: the header was invalid.
    BadHeader,
    /// `2`: the content was shorter or longer than announced.
    SizeMismatch,
    /// `3`: the content's SHA-256 differs from the header's.
    HashMismatch,
    /// `4`: the receiver does not want the file (or cannot find a free name).
    Refused,
    /// `5`: the receiver could not write the file.
    StorageError,
}

impl ReplyStatus {
    /// The status byte.
    pub fn to_byte(self) -> u8 {
        match self {
            Self::Ok => 0,
            Self::BadHeader => 1,
            Self::SizeMismatch => 2,
            Self::HashMismatch => 3,
            Self::Refused => 4,
            Self::StorageError => 5,
        }
    }

    /// Parses a status byte; `None` if unknown.
    pub fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            0 => Some(Self::Ok),
            1 => Some(Self::BadHeader),
            2 => Some(Self::SizeMismatch),
            3 => Some(Self::HashMismatch),
            4 => Some(Self::Refused),
            5 => Some(Self::StorageError),
            _ => None,
        }
    }
}

/// The receiver's answer after the content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The verdict.
    pub status: ReplyStatus,
    /// Human-readable detail (may be empty).
    pub message: String,
}

impl Reply {
    /// Appends the reply to `out` (the message is cut to [`MAX_REPLY_MESSAGE`] bytes).
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut end = self.message.len().min(MAX_REPLY_MESSAGE);
        while !self.message.is_char_boundary(end) {
            end -= 1;
        }
        let message = self.message.get(..end).unwrap_or_default();
        out.push(self.status.to_byte());
        // `end` ≤ 1024, so it fits.
        out.extend_from_slice(&u16::try_from(end).unwrap_or(0).to_be_bytes());
        out.extend_from_slice(message.as_bytes());
    }

    /// Decodes a reply from the front of `buf`: `Ok(None)` if more bytes are needed.
    pub fn decode(buf: &[u8]) -> Result<Option<(Self, usize)>, TransferError> {
        let Some((&status, rest)) = buf.split_first() else {
            return Ok(None);
        };
        let status =
            ReplyStatus::from_byte(status).ok_or(TransferError::BadReply("unknown status"))?;
        let Some(len) = rest.first_chunk::<2>() else {
            return Ok(None);
        };
        let len = usize::from(u16::from_be_bytes(*len));
        if len > MAX_REPLY_MESSAGE {
            return Err(TransferError::BadReply("message too long"));
        }
        let Some(message) = rest.get(2..2 + len) else {
            return Ok(None);
        };
        let message = String::from_utf8_lossy(message).into_owned();
        Ok(Some((Self { status, message }, 3 + len)))
    }
}

/// Why a transfer failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransferError {
    /// The file name is not a plain file name.
    #[error(
        "{0:?} is not an acceptable file name (no path separators, `..` or control characters)"
    )]
    BadName(String),
    /// The header is malformed.
    #[error("invalid file header: {0}")]
    BadHeader(&'static str),
    /// The receiver's reply is malformed.
    #[error("invalid reply from the receiver: {0}")]
    BadReply(&'static str),
    /// The content was shorter or longer than the header said.
    #[error("size mismatch: the header announced {expected} bytes, {detail}")]
    SizeMismatch {
        /// Announced size.
        expected: u64,
        /// What actually happened.
        detail: String,
    },
    /// The content's SHA-256 differs from the header's.
    #[error("SHA-256 mismatch: the received content is not what the sender hashed")]
    HashMismatch,
    /// The receiver refused the file or reported a failure.
    #[error("the receiver rejected the file ({status:?}): {message}")]
    Rejected {
        /// The receiver's verdict.
        status: ReplyStatus,
        /// Its explanation.
        message: String,
    },
    /// The local file changed while we were sending it.
    #[error("{0} changed while it was being sent; try again")]
    SourceChanged(PathBuf),
    /// The receiver refused the file at its header: too large, or no room on its disk.
    #[error("refused: {0}")]
    Limit(#[from] LimitExceeded),
    /// No free name in the receive directory.
    #[error("no free file name for {0:?} in the receive directory")]
    NoFreeName(String),
    /// Reading or writing the local file failed.
    #[error("file I/O error: {0}")]
    Io(#[from] io::Error),
    /// The link failed.
    #[error(transparent)]
    Link(#[from] LinkError),
}

impl From<quinn::WriteError> for TransferError {
    fn from(e: quinn::WriteError) -> Self {
        Self::Link(LinkError::Write(e))
    }
}

impl From<quinn::ReadExactError> for TransferError {
    fn from(e: quinn::ReadExactError) -> Self {
        Self::Link(LinkError::Read(e))
    }
}

/// Checks that `name` is a plain file name: non-empty, at most [`MAX_NAME_LEN`] bytes, no
/// path separators, no `..`, no control characters, not `.`.
pub fn sanitize_name(name: &str) -> Result<String, TransferError> {
    let bad = name.is_empty()
        || name.len() > MAX_NAME_LEN
        || name == "."
        || name.contains("..")
        || name.contains(['/', '\\', ':'])
        || name.chars().any(char::is_control);
    if bad {
        return Err(TransferError::BadName(name.to_owned()));
    }
    Ok(name.to_owned())
}

/// What was sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentFile {
    /// The name announced to the receiver.
    pub name: String,
    /// Bytes sent.
    pub size: u64,
    /// SHA-256 of the content.
    pub sha256: [u8; 32],
}

/// What was received and stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedFile {
    /// Where the file was stored (the name may differ from the sender's to avoid overwriting).
    pub path: PathBuf,
    /// The sender's name for it.
    pub name: String,
    /// Bytes stored.
    pub size: u64,
    /// SHA-256 of the content (equal to the header's).
    pub sha256: [u8; 32],
}

/// Size and SHA-256 of a local file.
async fn hash_file(path: &Path) -> Result<(u64, [u8; 32]), TransferError> {
    let mut file = File::open(path).await?;
    let mut hash = digest::Context::new(&digest::SHA256);
    let mut size = 0u64;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = file.read(&mut buf).await?;
        let Some(chunk) = buf.get(..n).filter(|c| !c.is_empty()) else {
            break;
        };
        hash.update(chunk);
        size += n as u64;
    }
    Ok((size, digest_bytes(hash)))
}

fn digest_bytes(hash: digest::Context) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(hash.finish().as_ref());
    out
}

/// Sends the file at `path` to the peer on a new [`StreamKind::File`] stream, and waits for
/// the receiver's verdict.
pub async fn send_file(link: &PeerLink, path: &Path) -> Result<SentFile, TransferError> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| TransferError::BadName(path.display().to_string()))?;
    let name = sanitize_name(name)?;
    let (size, sha256) = hash_file(path).await?;
    let header = FileHeader { name, size, sha256 };
    let mut head = Vec::with_capacity(header.encoded_len());
    header.encode(&mut head)?;

    let stream = link.open(StreamKind::File).await?;
    let (mut send, mut recv) = stream.into_split();
    match send_body(&mut send, &head, path, size, sha256).await {
        Ok(()) => {}
        Err(e @ TransferError::Link(LinkError::Write(quinn::WriteError::Stopped(_)))) => {
            // The receiver gave up early; its reply says why.
            return match read_reply(&mut recv).await {
                Ok(reply) if reply.status != ReplyStatus::Ok => Err(TransferError::Rejected {
                    status: reply.status,
                    message: reply.message,
                }),
                _ => Err(e),
            };
        }
        Err(e) => {
            let _ = send.reset(CloseCode::Refused.to_varint());
            return Err(e);
        }
    }
    let _ = send.finish();

    let reply = read_reply(&mut recv).await?;
    match reply.status {
        ReplyStatus::Ok => Ok(SentFile {
            name: header.name,
            size,
            sha256,
        }),
        status => Err(TransferError::Rejected {
            status,
            message: reply.message,
        }),
    }
}

/// Writes the header and the content, re-checking size and hash: the file must not change
/// while it is sent, or the receiver would reject it anyway.
async fn send_body(
    send: &mut quinn::SendStream,
    head: &[u8],
    path: &Path,
    size: u64,
    sha256: [u8; 32],
) -> Result<(), TransferError> {
    send.write_all(head).await?;
    let mut file = File::open(path).await?;
    let mut hash = digest::Context::new(&digest::SHA256);
    let mut sent = 0u64;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = file.read(&mut buf).await?;
        let Some(chunk) = buf.get(..n).filter(|c| !c.is_empty()) else {
            break;
        };
        sent += n as u64;
        if sent > size {
            break;
        }
        hash.update(chunk);
        send.write_all(chunk).await?;
    }
    if sent != size || digest_bytes(hash) != sha256 {
        return Err(TransferError::SourceChanged(path.to_path_buf()));
    }
    Ok(())
}

/// Reads the receiver's reply (at most 3 + 1024 bytes).
async fn read_reply(recv: &mut quinn::RecvStream) -> Result<Reply, TransferError> {
    let mut buf = Vec::with_capacity(16);
    let mut chunk = [0u8; 256];
    loop {
        if let Some((reply, _)) = Reply::decode(&buf)? {
            return Ok(reply);
        }
        let n = recv
            .read(&mut chunk)
            .await
            .map_err(|e| LinkError::Read(quinn::ReadExactError::ReadError(e)))?;
        match n.and_then(|n| chunk.get(..n)) {
            Some(bytes) => buf.extend_from_slice(bytes),
            None => {
                return Err(TransferError::BadReply(
                    "the receiver closed without a verdict",
                ));
            }
        }
    }
}

/// Receives one file from `stream` (a [`StreamKind::File`] stream the peer opened) into
/// `dir`, verifies size and SHA-256, and tells the sender the verdict.
///
/// Never overwrites: if the name is taken, `name (1)`, `name (2)`, … is used. On any failure
/// the partial file is removed and the sender is told why.
pub async fn receive_file(stream: LinkStream, dir: &Path) -> Result<ReceivedFile, TransferError> {
    receive_file_with(stream, dir, &ReceiveLimits::default()).await
}

/// [`receive_file`] with explicit [`ReceiveLimits`]: a file over the limits is refused at its
/// header ([`TransferError::Limit`]), before anything is written, and the sender is told why.
pub async fn receive_file_with(
    stream: LinkStream,
    dir: &Path,
    limits: &ReceiveLimits,
) -> Result<ReceivedFile, TransferError> {
    let (mut send, mut recv) = stream.into_split();
    let outcome = receive_into(&mut recv, dir, limits).await;
    if outcome.is_err() {
        // Stop the sender at once; the reply below still tells it why.
        let _ = recv.stop(CloseCode::Refused.to_varint());
    }
    let reply = match &outcome {
        Ok(_) => Reply {
            status: ReplyStatus::Ok,
            message: String::new(),
        },
        Err(e) => Reply {
            status: reply_status(e),
            message: e.to_string(),
        },
    };
    let mut out = Vec::new();
    reply.encode(&mut out);
    // Best effort: if the link is gone the sender learns nothing either way.
    if send.write_all(&out).await.is_ok() && send.finish().is_ok() {
        let _ = wait_delivered(&mut send).await;
    }
    outcome
}

fn reply_status(error: &TransferError) -> ReplyStatus {
    match error {
        TransferError::BadName(_) | TransferError::BadHeader(_) => ReplyStatus::BadHeader,
        TransferError::SizeMismatch { .. } => ReplyStatus::SizeMismatch,
        TransferError::HashMismatch => ReplyStatus::HashMismatch,
        TransferError::NoFreeName(_) => ReplyStatus::Refused,
        TransferError::Limit(LimitExceeded::TooLarge { .. }) => ReplyStatus::Refused,
        TransferError::Limit(_) => ReplyStatus::StorageError,
        TransferError::Io(_) => ReplyStatus::StorageError,
        _ => ReplyStatus::Refused,
    }
}

/// Reads header and content into a new file in `dir`; removes the file on failure.
async fn receive_into(
    recv: &mut quinn::RecvStream,
    dir: &Path,
    limits: &ReceiveLimits,
) -> Result<ReceivedFile, TransferError> {
    let header = read_header(recv).await?;
    limits.check(header.size, available_space(dir)?)?;
    let (path, mut file) = create_unique(dir, &header.name).await?;
    match write_content(recv, &mut file, &header).await {
        Ok(()) => Ok(ReceivedFile {
            path,
            name: header.name,
            size: header.size,
            sha256: header.sha256,
        }),
        Err(e) => {
            drop(file);
            if let Err(remove) = tokio::fs::remove_file(&path).await {
                tracing::warn!(path = %path.display(), error = %remove, "could not remove a partial file");
            }
            Err(e)
        }
    }
}

/// Reads exactly one header: the 2-byte name length first, so nothing unbounded is read.
async fn read_header(recv: &mut quinn::RecvStream) -> Result<FileHeader, TransferError> {
    let mut len = [0u8; 2];
    read_exact_or_bad_header(recv, &mut len).await?;
    let name_len = usize::from(u16::from_be_bytes(len));
    if name_len == 0 || name_len > MAX_NAME_LEN {
        return Err(TransferError::BadHeader("file name length out of range"));
    }
    let mut buf = vec![0u8; 2 + name_len + 8 + 32];
    let (prefix, rest) = buf.split_at_mut(2);
    prefix.copy_from_slice(&len);
    read_exact_or_bad_header(recv, rest).await?;
    match FileHeader::decode(&buf)? {
        Some((header, _)) => Ok(header),
        None => Err(TransferError::BadHeader("truncated header")),
    }
}

async fn read_exact_or_bad_header(
    recv: &mut quinn::RecvStream,
    buf: &mut [u8],
) -> Result<(), TransferError> {
    match recv.read_exact(buf).await {
        Ok(()) => Ok(()),
        Err(quinn::ReadExactError::FinishedEarly(_)) => Err(TransferError::BadHeader(
            "the stream ended inside the header",
        )),
        Err(e) => Err(e.into()),
    }
}

/// Creates `dir/name`, or `dir/name (n)` if taken, exclusively.
async fn create_unique(dir: &Path, name: &str) -> Result<(PathBuf, File), TransferError> {
    let (stem, ext) = match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => (stem, Some(ext)),
        _ => (name, None),
    };
    for attempt in 0..=MAX_RENAMES {
        let candidate = match (attempt, ext) {
            (0, _) => name.to_owned(),
            (n, Some(ext)) => format!("{stem} ({n}).{ext}"),
            (n, None) => format!("{stem} ({n})"),
        };
        let path = dir.join(&candidate);
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .await
        {
            Ok(file) => return Ok((path, file)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(TransferError::NoFreeName(name.to_owned()))
}

/// Copies exactly `header.size` bytes into `file`, then requires the end of the stream and a
/// matching SHA-256.
async fn write_content(
    recv: &mut quinn::RecvStream,
    file: &mut File,
    header: &FileHeader,
) -> Result<(), TransferError> {
    let mut hash = digest::Context::new(&digest::SHA256);
    let mut received = 0u64;
    let mut buf = vec![0u8; CHUNK];
    while received < header.size {
        let want = usize::try_from(header.size - received)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let Some(window) = buf.get_mut(..want) else {
            break;
        };
        let n = recv
            .read(window)
            .await
            .map_err(|e| LinkError::Read(quinn::ReadExactError::ReadError(e)))?;
        let Some(chunk) = n.and_then(|n| window.get(..n)) else {
            return Err(TransferError::SizeMismatch {
                expected: header.size,
                detail: format!("but the stream ended after {received}"),
            });
        };
        hash.update(chunk);
        file.write_all(chunk).await?;
        received += chunk.len() as u64;
    }
    // The content must end exactly here.
    let mut extra = [0u8; 1];
    let more = recv
        .read(&mut extra)
        .await
        .map_err(|e| LinkError::Read(quinn::ReadExactError::ReadError(e)))?;
    if more.is_some_and(|n| n > 0) {
        return Err(TransferError::SizeMismatch {
            expected: header.size,
            detail: "but more bytes followed".to_owned(),
        });
    }
    if digest_bytes(hash) != header.sha256 {
        return Err(TransferError::HashMismatch);
    }
    file.flush().await?;
    file.sync_all().await?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn header(name: &str) -> FileHeader {
        FileHeader {
            name: name.to_owned(),
            size: 5,
            sha256: [1; 32],
        }
    }

    #[test]
    fn golden_header_bytes() {
        let mut out = Vec::new();
        header("a.txt").encode(&mut out).unwrap();
        let mut expected = vec![0, 5];
        expected.extend_from_slice(b"a.txt");
        expected.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 5]);
        expected.extend_from_slice(&[1; 32]);
        assert_eq!(out, expected);
        assert_eq!(out.len(), header("a.txt").encoded_len());
    }

    #[test]
    fn protocol_md_example() {
        // docs/PROTOCOL.md §11 "File transfer": `a.txt`, 5 bytes, content `hello`.
        let mut sha256 = [0u8; 32];
        sha256.copy_from_slice(digest::digest(&digest::SHA256, b"hello").as_ref());
        let mut out = Vec::new();
        FileHeader {
            name: "a.txt".into(),
            size: 5,
            sha256,
        }
        .encode(&mut out)
        .unwrap();
        assert_eq!(
            hex::encode(&out),
            "0005612e7478740000000000000005\
             2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
    }

    #[test]
    fn header_round_trips_and_needs_more_when_cut() {
        let h = header("report final.pdf");
        let mut out = Vec::new();
        h.encode(&mut out).unwrap();
        for cut in 0..out.len() {
            assert!(
                FileHeader::decode(&out[..cut]).unwrap().is_none(),
                "cut {cut}"
            );
        }
        out.extend_from_slice(b"content follows");
        let (back, used) = FileHeader::decode(&out).unwrap().unwrap();
        assert_eq!(back, h);
        assert_eq!(used, h.encoded_len());
    }

    #[test]
    fn hostile_names_are_rejected() {
        for bad in [
            "",
            ".",
            "..",
            "../etc/passwd",
            "a/b",
            "a\\b",
            "C:evil",
            "x..y",
            "line\nbreak",
            "nul\0",
        ] {
            assert!(sanitize_name(bad).is_err(), "accepted {bad:?}");
            let mut raw = (bad.len() as u16).to_be_bytes().to_vec();
            raw.extend_from_slice(bad.as_bytes());
            raw.extend_from_slice(&[0; 40]);
            assert!(FileHeader::decode(&raw).is_err(), "decoded {bad:?}");
        }
        assert!(sanitize_name(&"a".repeat(MAX_NAME_LEN + 1)).is_err());
        assert!(sanitize_name("ok name.tar.gz").is_ok());
        assert!(sanitize_name(".hidden").is_ok());
    }

    #[test]
    fn hostile_lengths_are_rejected_before_reading_the_name() {
        assert!(FileHeader::decode(&[0xff, 0xff]).is_err());
        assert!(FileHeader::decode(&[0x00, 0x00]).is_err());
        let mut bad_utf8 = vec![0, 2, 0xff, 0xfe];
        bad_utf8.extend_from_slice(&[0; 40]);
        assert!(FileHeader::decode(&bad_utf8).is_err());
    }

    #[test]
    fn replies_round_trip_and_reject_hostile_input() {
        let reply = Reply {
            status: ReplyStatus::HashMismatch,
            message: "SHA-256 mismatch".into(),
        };
        let mut out = Vec::new();
        reply.encode(&mut out);
        assert_eq!(&out[..3], &[3, 0, 16]);
        for cut in 0..out.len() {
            assert!(Reply::decode(&out[..cut]).unwrap().is_none());
        }
        assert_eq!(Reply::decode(&out).unwrap(), Some((reply, out.len())));
        assert!(Reply::decode(&[9, 0, 0]).is_err());
        assert!(Reply::decode(&[0, 0xff, 0xff]).is_err());
    }

    #[test]
    fn long_reply_messages_are_cut_on_a_char_boundary() {
        let reply = Reply {
            status: ReplyStatus::Refused,
            message: "é".repeat(MAX_REPLY_MESSAGE),
        };
        let mut out = Vec::new();
        reply.encode(&mut out);
        let (back, _) = Reply::decode(&out).unwrap().unwrap();
        assert!(back.message.len() <= MAX_REPLY_MESSAGE);
        assert!(back.message.chars().all(|c| c == 'é'));
    }

    #[tokio::test]
    async fn unique_names_never_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.txt"), b"old").unwrap();
        std::fs::write(dir.path().join("a (1).txt"), b"old").unwrap();
        let (path, _file) = create_unique(dir.path(), "a.txt").await.unwrap();
        assert_eq!(path, dir.path().join("a (2).txt"));
        assert_eq!(std::fs::read(dir.path().join("a.txt")).unwrap(), b"old");
        let (path, _file) = create_unique(dir.path(), "noext").await.unwrap();
        assert_eq!(path, dir.path().join("noext"));
        let (path, _file) = create_unique(dir.path(), "noext").await.unwrap();
        assert_eq!(path, dir.path().join("noext (1)"));
    }
}
