//! A netcat-like byte pipe over a peer link, with end-to-end delivery confirmation.
//!
//! A pipe stream ([`StreamKind::Pipe`](super::StreamKind::Pipe)) is symmetric: each side
//! sends its input and writes what it receives to its output. Each direction carries frames:
//!
//! ```text
//! DATA  0x00 ‖ length: u32 BE (1..=65536) ‖ bytes
//! END   0x01 ‖ total: u64 BE ‖ checksum: 32 bytes   (sender's input ended)
//! ACK   0x02 ‖ total: u64 BE ‖ checksum: 32 bytes   (receiver wrote everything out)
//! ```
//!
//! The checksum is SHA-256 on a `chatr/1` link, BLAKE3 on `chatr/2` and XXH3-128 on
//! `chatr/3` ([`LinkVersion`]). QUIC already authenticates every packet against tampering;
//! the checksum only has to catch our own mistakes (framing, path switches, either side's
//! I/O), and each revision made it cheaper: SHA-256 of the whole pipe was the largest cost
//! of a fast pipe, BLAKE3 still about a tenth of the receiver's CPU, XXH3 a fiftieth of
//! that (see BENCHMARKS.md).
//!
//! 1. A side sends `DATA` frames until its input reaches EOF, then one `END` with the byte
//!    count and checksum of everything it sent.
//! 2. When a side receives `END`, it checks the count and checksum against what it received,
//!    flushes its output, and answers with `ACK` (the count and checksum it received), at once,
//!    even while its own input is still open.
//! 3. A side finishes its half of the stream after sending both `END` and `ACK`, and is done
//!    when the peer's half has ended too.
//!
//! [`PipeReport::delivered`] is true only when the peer's `ACK` matches exactly what we sent,
//! so a CLI can exit 0 only when every byte arrived and was written out.
//!
//! [`run_pipe`] works on any tokio reader and writer. [`run_pipe_blocking`] takes blocking
//! ones (stdin and stdout as files) and runs each on a thread of its own that hands whole
//! blocks across, which saves the copy tokio's stdio makes of every byte.

use std::io;
use std::os::fd::AsFd;

use std::io::IoSlice;

use bytes::{Buf as _, BufMut as _, Bytes, BytesMut};
use ring::digest;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::oneshot;
use tokio_util::codec::{Decoder, Encoder};

use super::LinkError;
use super::stream::{LinkStream, wait_delivered};
use super::version::LinkVersion;

/// Largest `DATA` payload.
pub const MAX_PIPE_CHUNK: usize = 64 * 1024;

const TAG_DATA: u8 = 0x00;
const TAG_END: u8 = 0x01;
const TAG_ACK: u8 = 0x02;
/// Tag + u32 length.
const DATA_HEADER: usize = 5;
/// Tag + u64 total + 32-byte checksum.
const SUMMARY_FRAME: usize = 1 + 8 + 32;

/// Byte count and checksum of one direction of a pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PipeSummary {
    /// Number of bytes.
    pub total: u64,
    /// Checksum of those bytes: SHA-256 on a `chatr/1` link, BLAKE3 on `chatr/2`, and on
    /// `chatr/3` XXH3-128 (big-endian) in the first 16 bytes with the other 16 zero.
    pub checksum: [u8; 32],
}

impl PipeSummary {
    /// The summary a sender on a link of `version` sends for `data`.
    pub fn of(version: LinkVersion, data: &[u8]) -> Self {
        let mut tally = Tally::new(version);
        tally.add(data);
        tally.finish()
    }
}

/// One frame of a pipe direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PipeFrame {
    /// Payload bytes (1 to [`MAX_PIPE_CHUNK`]).
    Data(Bytes),
    /// The sender's input ended; what it sent in total.
    End(PipeSummary),
    /// What the receiver received and wrote out in total.
    Ack(PipeSummary),
}

/// Why a pipe failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PipeError {
    /// A frame had an unknown tag.
    #[error("invalid pipe frame tag {0:#04x}")]
    UnknownFrame(u8),
    /// A `DATA` frame was empty or larger than [`MAX_PIPE_CHUNK`].
    #[error("invalid pipe data length {0}")]
    BadLength(u64),
    /// The stream ended in the middle of a frame.
    #[error("the pipe stream ended in the middle of a frame")]
    Truncated,
    /// The peer sent a frame that makes no sense now (data after `END`, a second `ACK`, …).
    #[error("the peer broke the pipe protocol: {0}")]
    Protocol(&'static str),
    /// The peer's stream ended before its `END` or `ACK`.
    #[error("the peer closed the pipe before it finished")]
    PeerClosedEarly,
    /// What we received does not match the peer's `END` summary.
    #[error(
        "received data does not match what the peer sent: got {received} bytes, \
         the peer sent {sent}{}",
        if *.hash_ok { "" } else { " (the checksum differs)" }
    )]
    Corrupted {
        /// Bytes we received.
        received: u64,
        /// Bytes the peer says it sent.
        sent: u64,
        /// Whether the checksums agree.
        hash_ok: bool,
    },
    /// Reading our input or writing our output failed.
    #[error("pipe I/O error: {0}")]
    Io(#[from] io::Error),
    /// The link failed.
    #[error(transparent)]
    Link(#[from] LinkError),
}

/// The sans-IO framing of one pipe direction.
#[derive(Debug, Clone, Copy, Default)]
pub struct PipeCodec;

fn read_summary(frame: &[u8]) -> Option<PipeSummary> {
    let total = u64::from_be_bytes(*frame.get(1..9)?.first_chunk::<8>()?);
    let checksum = *frame.get(9..SUMMARY_FRAME)?.first_chunk::<32>()?;
    Some(PipeSummary { total, checksum })
}

impl Decoder for PipeCodec {
    type Item = PipeFrame;
    type Error = PipeError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<PipeFrame>, PipeError> {
        let Some(&tag) = src.first() else {
            return Ok(None);
        };
        match tag {
            TAG_DATA => {
                let Some(len) = src.get(1..DATA_HEADER).and_then(|b| b.first_chunk::<4>()) else {
                    return Ok(None);
                };
                let len = u32::from_be_bytes(*len);
                let len_usize = usize::try_from(len).unwrap_or(usize::MAX);
                if len_usize == 0 || len_usize > MAX_PIPE_CHUNK {
                    return Err(PipeError::BadLength(u64::from(len)));
                }
                let total = DATA_HEADER + len_usize;
                if src.len() < total {
                    src.reserve(total - src.len());
                    return Ok(None);
                }
                src.advance(DATA_HEADER);
                Ok(Some(PipeFrame::Data(src.split_to(len_usize).freeze())))
            }
            TAG_END | TAG_ACK => {
                if src.len() < SUMMARY_FRAME {
                    return Ok(None);
                }
                let frame = src.split_to(SUMMARY_FRAME);
                let summary = read_summary(&frame).ok_or(PipeError::Truncated)?;
                Ok(Some(if tag == TAG_END {
                    PipeFrame::End(summary)
                } else {
                    PipeFrame::Ack(summary)
                }))
            }
            other => Err(PipeError::UnknownFrame(other)),
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<PipeFrame>, PipeError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() => Ok(None),
            None => {
                src.advance(src.len());
                Err(PipeError::Truncated)
            }
        }
    }
}

impl Encoder<PipeFrame> for PipeCodec {
    type Error = PipeError;

    fn encode(&mut self, frame: PipeFrame, dst: &mut BytesMut) -> Result<(), PipeError> {
        match frame {
            PipeFrame::Data(bytes) => {
                let len = u32::try_from(bytes.len())
                    .ok()
                    .filter(|&l| l > 0 && bytes.len() <= MAX_PIPE_CHUNK)
                    .ok_or(PipeError::BadLength(bytes.len() as u64))?;
                dst.reserve(DATA_HEADER + bytes.len());
                dst.put_u8(TAG_DATA);
                dst.put_u32(len);
                dst.put_slice(&bytes);
            }
            PipeFrame::End(summary) | PipeFrame::Ack(summary) => {
                let tag = if matches!(frame, PipeFrame::End(_)) {
                    TAG_END
                } else {
                    TAG_ACK
                };
                dst.reserve(SUMMARY_FRAME);
                dst.put_u8(tag);
                dst.put_u64(summary.total);
                dst.put_slice(&summary.checksum);
            }
        }
        Ok(())
    }
}

/// What happened on a finished pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PipeReport {
    /// Bytes we read from our input and sent.
    pub sent: u64,
    /// Bytes we received from the peer and wrote to our output.
    pub received: u64,
    /// Whether the peer confirmed receiving exactly what we sent (count and checksum).
    pub delivered: bool,
}

/// BLAKE3 is fed in blocks of at least this much: its SIMD hashes up to 16 of its 1 KiB
/// chunks at once, and fed packet-sized pieces it ran three times slower.
const BLAKE3_BLOCK: usize = 64 * 1024;

/// The running checksum of one direction, as the link's version says.
enum Checksum {
    // Boxed, all: a future that holds a tally stays small (the BLAKE3 hasher keeps a
    // stack of chaining values, about 1.9 KB; XXH3 keeps a 256-byte buffer and more).
    Sha256(Box<digest::Context>),
    Blake3 {
        hasher: Box<blake3::Hasher>,
        /// Small pieces gathered up to [`BLAKE3_BLOCK`] before they are hashed.
        gathered: Vec<u8>,
    },
    Xxh3(Box<twox_hash::XxHash3_128>),
}

/// Running count and checksum of a byte stream, fed in pieces of any size.
struct Tally {
    total: u64,
    checksum: Checksum,
}

impl Tally {
    fn new(version: LinkVersion) -> Self {
        let checksum = match version {
            LinkVersion::V1 => Checksum::Sha256(Box::new(digest::Context::new(&digest::SHA256))),
            LinkVersion::V2 => Checksum::Blake3 {
                hasher: Box::default(),
                gathered: Vec::new(),
            },
            LinkVersion::V3 => Checksum::Xxh3(Box::default()),
        };
        Self { total: 0, checksum }
    }

    fn add(&mut self, bytes: &[u8]) {
        self.total += bytes.len() as u64;
        match &mut self.checksum {
            Checksum::Sha256(context) => context.update(bytes),
            Checksum::Blake3 { hasher, gathered } => {
                if gathered.is_empty() && bytes.len() >= BLAKE3_BLOCK {
                    hasher.update(bytes);
                    return;
                }
                gathered.extend_from_slice(bytes);
                if gathered.len() >= BLAKE3_BLOCK {
                    hasher.update(gathered);
                    gathered.clear();
                }
            }
            Checksum::Xxh3(hasher) => hasher.write(bytes),
        }
    }

    fn finish(self) -> PipeSummary {
        let mut checksum = [0u8; 32];
        match self.checksum {
            Checksum::Sha256(context) => checksum.copy_from_slice(context.finish().as_ref()),
            Checksum::Blake3 {
                mut hasher,
                gathered,
            } => {
                hasher.update(&gathered);
                checksum = *hasher.finalize().as_bytes();
            }
            Checksum::Xxh3(hasher) => {
                let (hash, _reserved_zero) = checksum.split_at_mut(16);
                hash.copy_from_slice(&hasher.finish_128().to_be_bytes());
            }
        }
        PipeSummary {
            total: self.total,
            checksum,
        }
    }
}

/// How much of our input one read asks for. Larger reads mean fewer round trips through
/// the reader (for stdin, tokio's blocking pool) per byte; a read returns what is there,
/// so interactive input still goes out at once.
const READ_BUF: usize = 1024 * 1024;

/// Received payload is gathered up to this much (as the pieces quinn handed out, uncopied)
/// before it is written out in one vectored write, unless the stream has nothing more
/// ready (then it goes at once).
const WRITE_BUF: usize = 256 * 1024;

/// Blocks in flight between a pipe and the thread of a blocking reader or writer (of at
/// most [`READ_BUF`] or [`WRITE_BUF`] each): a bound on the memory a slow side ties up.
const THREAD_QUEUE: usize = 4;

/// Runs a pipe on `stream`: `input` goes to the peer, the peer's bytes go to `output`.
///
/// Returns when both directions are done: our input reached EOF and the peer acknowledged it,
/// and the peer's input ended and we acknowledged it. Both sides of a pipe call this (or
/// [`run_pipe_blocking`]).
pub async fn run_pipe<R, W>(
    stream: LinkStream,
    input: R,
    output: W,
) -> Result<PipeReport, PipeError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let input = Input::Async {
        reader: input,
        buf: BytesMut::new(),
    };
    pipe(stream, input, Output::Async(output)).await
}

/// [`run_pipe`] over a blocking `input` and `output` (such as stdin and stdout opened as
/// files), each driven by a thread of its own that passes whole blocks to the pipe.
///
/// A read that blocks forever (a terminal nobody types into) keeps its thread until the
/// process exits; the pipe itself returns as soon as it is done.
pub async fn run_pipe_blocking<R, W>(
    stream: LinkStream,
    input: R,
    output: W,
) -> Result<PipeReport, PipeError>
where
    R: AsFd + Send + 'static,
    W: io::Write + Send + 'static,
{
    let input = Input::<tokio::io::Empty>::Thread(spawn_reader(input)?);
    let output = Output::<tokio::io::Sink>::Thread(ThreadWriter::spawn(output)?);
    pipe(stream, input, output).await
}

async fn pipe<R, W>(
    stream: LinkStream,
    input: Input<R>,
    output: Output<W>,
) -> Result<PipeReport, PipeError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let version = stream.version();
    let (send, recv) = stream.into_split();
    let (ack_tx, ack_rx) = oneshot::channel();
    let sending = send_half(send, input, ack_rx, version);
    let receiving = receive_half(recv, output, ack_tx, version);
    let (sent, (received, peer_ack)) = tokio::try_join!(sending, receiving)?;
    Ok(PipeReport {
        sent: sent.total,
        received,
        delivered: peer_ack == sent,
    })
}

/// Encodes an `END` or `ACK` frame.
fn summary_frame(frame: PipeFrame) -> Result<Bytes, PipeError> {
    let mut out = BytesMut::with_capacity(SUMMARY_FRAME);
    PipeCodec.encode(frame, &mut out)?;
    Ok(out.freeze())
}

/// Sends our input, then `END`; sends `ACK` as soon as the receiving half asks for it;
/// finishes the stream after both. Returns the summary of what we sent.
async fn send_half<R: AsyncRead + Unpin>(
    mut send: quinn::SendStream,
    mut input: Input<R>,
    mut ack_rx: oneshot::Receiver<PipeSummary>,
    version: LinkVersion,
) -> Result<PipeSummary, PipeError> {
    let mut tally = Tally::new(version);
    let mut sent = None;
    let mut acked = false;
    let mut frames = Vec::new();
    while sent.is_none() || !acked {
        tokio::select! {
            read = input.next(), if sent.is_none() => {
                match read? {
                    Some(data) => {
                        tally.add(&data);
                        data_frames(data, &mut frames);
                        send.write_all_chunks(&mut frames).await.map_err(LinkError::from)?;
                        frames.clear();
                    }
                    None => {
                        let summary = std::mem::replace(&mut tally, Tally::new(version)).finish();
                        let end = summary_frame(PipeFrame::End(summary))?;
                        send.write_chunk(end).await.map_err(LinkError::from)?;
                        sent = Some(summary);
                    }
                }
            }
            ack = &mut ack_rx, if !acked => {
                acked = true;
                // A dropped sender means the receiving half failed; its error wins in try_join.
                if let Ok(summary) = ack {
                    let ack = summary_frame(PipeFrame::Ack(summary))?;
                    send.write_chunk(ack).await.map_err(LinkError::from)?;
                }
            }
            else => break,
        }
    }
    let _ = send.finish();
    wait_delivered(&mut send).await?;
    sent.ok_or(PipeError::Protocol("unreachable: sent without END"))
}

/// Where a pipe's input comes from, one block at a time.
enum Input<R> {
    /// A tokio reader, read into `buf`.
    Async { reader: R, buf: BytesMut },
    /// Blocks a reader thread sends (see [`spawn_reader`]).
    Thread(tokio::sync::mpsc::Receiver<io::Result<Bytes>>),
}

impl<R: AsyncRead + Unpin> Input<R> {
    /// The next block of input, `None` at EOF. Cancel-safe: a tokio read only appends to
    /// `buf` and what it appended is taken out once the read completed; a channel receive
    /// loses nothing when dropped.
    async fn next(&mut self) -> io::Result<Option<Bytes>> {
        match self {
            Input::Async { reader, buf } => {
                if buf.capacity() - buf.len() < READ_BUF / 2 {
                    buf.reserve(READ_BUF);
                }
                if reader.read_buf(buf).await? == 0 {
                    return Ok(None);
                }
                Ok(Some(buf.split().freeze()))
            }
            // A closed channel: the thread ended after EOF (or after sending its error).
            Input::Thread(blocks) => blocks.recv().await.transpose(),
        }
    }
}

/// Starts a thread that reads `input` in blocks of up to [`READ_BUF`] and sends them, then
/// ends at EOF or after sending the first error.
///
/// Each read goes into the spare capacity of a fresh vector, so no byte is zeroed first
/// (a zeroed buffer cost the sender 3 % of its CPU in memset and page clearing). The vector
/// is then shrunk to what the read filled, which glibc does in place, and handed over
/// whole: no copy, and a short read (interactive input, 64 KiB from a pipe) never pins a
/// 1 MiB block while quinn waits for its acknowledgement.
fn spawn_reader<R: AsFd + Send + 'static>(
    input: R,
) -> io::Result<tokio::sync::mpsc::Receiver<io::Result<Bytes>>> {
    let (tx, rx) = tokio::sync::mpsc::channel(THREAD_QUEUE);
    std::thread::Builder::new()
        .name("pipe-input".into())
        .spawn(move || {
            loop {
                let mut block = Vec::with_capacity(READ_BUF);
                let read = loop {
                    match rustix::io::read(&input, rustix::buffer::spare_capacity(&mut block)) {
                        Err(rustix::io::Errno::INTR) => continue,
                        other => break other,
                    }
                };
                let sent = match read {
                    Ok(0) => break,
                    Ok(_) => {
                        block.shrink_to_fit();
                        tx.blocking_send(Ok(Bytes::from(block)))
                    }
                    Err(e) => {
                        let _ = tx.blocking_send(Err(e.into()));
                        break;
                    }
                };
                if sent.is_err() {
                    break; // The pipe is gone.
                }
            }
        })?;
    Ok(rx)
}

/// Cuts `data` into `DATA` frames, as chunks quinn queues without copying: a 5-byte
/// header, then a slice of `data` of at most [`MAX_PIPE_CHUNK`] bytes.
fn data_frames(mut data: Bytes, frames: &mut Vec<Bytes>) {
    let mut headers = BytesMut::with_capacity(data.len().div_ceil(MAX_PIPE_CHUNK) * DATA_HEADER);
    while !data.is_empty() {
        let piece = data.split_to(data.len().min(MAX_PIPE_CHUNK));
        headers.put_u8(TAG_DATA);
        // A piece is at most MAX_PIPE_CHUNK (64 KiB) long: it fits a u32.
        headers.put_u32(piece.len() as u32);
        frames.push(headers.split().freeze());
        frames.push(piece);
    }
}

/// What the receiving half takes out of the stream, piece by piece.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    /// Payload of a `DATA` frame (a frame's payload may come in several pieces).
    Data(Bytes),
    /// An `END` frame.
    End(PipeSummary),
    /// An `ACK` frame.
    Ack(PipeSummary),
}

/// Sans-IO reader of pipe frames from the stream's chunks, as quinn hands them out
/// (about one packet each). Payload comes out as slices of those chunks, uncopied; only a
/// frame header split across chunks is gathered, in a buffer of at most 41 bytes.
#[derive(Debug, Default)]
struct FrameSplitter {
    /// The start of a frame header that a chunk ended in the middle of.
    head: BytesMut,
    /// Payload bytes of the current `DATA` frame still to come.
    data_left: usize,
}

impl FrameSplitter {
    /// The next piece from `chunk` (consuming what it uses), `None` once `chunk` is used up.
    fn next(&mut self, chunk: &mut Bytes) -> Result<Option<Piece>, PipeError> {
        loop {
            if self.data_left > 0 {
                if chunk.is_empty() {
                    return Ok(None);
                }
                let take = self.data_left.min(chunk.len());
                self.data_left -= take;
                return Ok(Some(Piece::Data(chunk.split_to(take))));
            }
            let Some(&tag) = self.head.first().or(chunk.first()) else {
                return Ok(None);
            };
            let need = match tag {
                TAG_DATA => DATA_HEADER,
                TAG_END | TAG_ACK => SUMMARY_FRAME,
                other => return Err(PipeError::UnknownFrame(other)),
            };
            if self.head.is_empty() && chunk.len() >= need {
                // The whole header is in this chunk: parse it in place.
                let header = chunk.split_to(need);
                if let Some(piece) = self.header(&header)? {
                    return Ok(Some(piece));
                }
                continue;
            }
            let take = (need - self.head.len()).min(chunk.len());
            self.head.extend_from_slice(&chunk.split_to(take));
            if self.head.len() < need {
                return Ok(None);
            }
            let header = self.head.split();
            if let Some(piece) = self.header(&header)? {
                return Ok(Some(piece));
            }
        }
    }

    /// Acts on one complete header: starts a `DATA` payload, or returns `END`/`ACK`.
    fn header(&mut self, header: &[u8]) -> Result<Option<Piece>, PipeError> {
        match header.first() {
            Some(&TAG_DATA) => {
                let len = header
                    .get(1..DATA_HEADER)
                    .and_then(|b| b.first_chunk::<4>())
                    .map(|b| u32::from_be_bytes(*b))
                    .ok_or(PipeError::Truncated)?;
                let len_usize = usize::try_from(len).unwrap_or(usize::MAX);
                if len_usize == 0 || len_usize > MAX_PIPE_CHUNK {
                    return Err(PipeError::BadLength(u64::from(len)));
                }
                self.data_left = len_usize;
                Ok(None)
            }
            Some(&tag) => {
                let summary = read_summary(header).ok_or(PipeError::Truncated)?;
                Ok(Some(if tag == TAG_END {
                    Piece::End(summary)
                } else {
                    Piece::Ack(summary)
                }))
            }
            None => Err(PipeError::Truncated),
        }
    }

    /// Whether the stream may end here (not inside a frame).
    fn at_boundary(&self) -> bool {
        self.head.is_empty() && self.data_left == 0
    }
}

/// Reads the next chunk of the stream (`None` at its end), without waiting if `wait` is
/// false (then `Ok(Some(None))` means nothing was ready).
async fn next_chunk(
    recv: &mut quinn::RecvStream,
    wait: bool,
) -> Result<Option<Option<Bytes>>, LinkError> {
    let read = recv.read_chunk(usize::MAX, true);
    let chunk = if wait {
        read.await
    } else {
        // read_chunk is cancel-safe: dropping it after one poll loses nothing.
        match futures_util::FutureExt::now_or_never(read) {
            Some(result) => result,
            None => return Ok(Some(None)),
        }
    };
    match chunk {
        Ok(Some(chunk)) => Ok(Some(Some(chunk.bytes))),
        Ok(None) => Ok(None),
        Err(quinn::ReadError::ConnectionLost(e)) => Err(LinkError::Connection(e)),
        Err(e) => Err(LinkError::Read(quinn::ReadExactError::ReadError(e))),
    }
}

/// Where a pipe's output goes, one block at a time.
enum Output<W> {
    /// A tokio writer.
    Async(W),
    /// A writer thread (see [`ThreadWriter`]).
    Thread(ThreadWriter),
}

impl<W: AsyncWrite + Unpin> Output<W> {
    async fn write(&mut self, block: Block) -> io::Result<()> {
        match self {
            // A tokio writer takes one buffer per call (tokio's stdout a round trip through
            // the blocking pool each), so the pieces are joined first.
            Output::Async(writer) => writer.write_all(&block.joined()).await,
            Output::Thread(writer) => writer.send(WriterJob::Write(block)).await,
        }
    }

    /// Returns once everything written so far is out of our hands (in the kernel).
    async fn flush(&mut self) -> io::Result<()> {
        match self {
            Output::Async(writer) => writer.flush().await,
            Output::Thread(writer) => {
                let (done_tx, done_rx) = oneshot::channel();
                writer.send(WriterJob::Flush(done_tx)).await?;
                match done_rx.await {
                    Ok(result) => result,
                    Err(_) => Err(writer.failure()),
                }
            }
        }
    }
}

/// Received payload on its way out: the pieces of `DATA` frames as they came off the
/// stream, each a slice of a received packet.
#[derive(Debug, Default)]
struct Block {
    pieces: Vec<Bytes>,
    len: usize,
}

impl Block {
    fn push(&mut self, piece: Bytes) {
        self.len += piece.len();
        self.pieces.push(piece);
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The pieces in one buffer (no copy if there is just one).
    fn joined(self) -> Bytes {
        match <[Bytes; 1]>::try_from(self.pieces) {
            Ok([piece]) => piece,
            Err(pieces) => {
                let mut joined = BytesMut::with_capacity(self.len);
                for piece in &pieces {
                    joined.extend_from_slice(piece);
                }
                joined.freeze()
            }
        }
    }

    /// Writes every piece to `output`, as few vectored writes as it takes (the kernel
    /// gathers the pieces, so they are copied once, into the output).
    fn write_to(&self, output: &mut impl io::Write) -> io::Result<()> {
        let mut slices: Vec<IoSlice<'_>> = self.pieces.iter().map(|p| IoSlice::new(p)).collect();
        let mut rest = &mut slices[..];
        IoSlice::advance_slices(&mut rest, 0); // Skips any empty pieces at the front.
        while !rest.is_empty() {
            match output.write_vectored(rest) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(written) => IoSlice::advance_slices(&mut rest, written),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// What the writer thread is asked to do.
enum WriterJob {
    Write(Block),
    Flush(oneshot::Sender<io::Result<()>>),
}

/// A thread that writes blocks to a blocking writer. It stops at the first error and
/// keeps it for the pipe to report.
struct ThreadWriter {
    jobs: tokio::sync::mpsc::Sender<WriterJob>,
    error: std::sync::Arc<std::sync::Mutex<Option<io::Error>>>,
}

impl ThreadWriter {
    fn spawn<W: io::Write + Send + 'static>(mut output: W) -> io::Result<Self> {
        let (jobs, mut rx) = tokio::sync::mpsc::channel::<WriterJob>(THREAD_QUEUE);
        let error = std::sync::Arc::new(std::sync::Mutex::new(None));
        let failed = error.clone();
        std::thread::Builder::new()
            .name("pipe-output".into())
            .spawn(move || {
                while let Some(job) = rx.blocking_recv() {
                    let result = match job {
                        WriterJob::Write(block) => block.write_to(&mut output),
                        WriterJob::Flush(done) => {
                            let _ = done.send(output.flush());
                            continue;
                        }
                    };
                    if let Err(e) = result {
                        if let Ok(mut slot) = failed.lock() {
                            *slot = Some(e);
                        }
                        return;
                    }
                }
                let _ = output.flush();
            })?;
        Ok(Self { jobs, error })
    }

    async fn send(&mut self, job: WriterJob) -> io::Result<()> {
        self.jobs.send(job).await.map_err(|_| self.failure())
    }

    /// Why the thread stopped.
    fn failure(&self) -> io::Error {
        let kept = self.error.lock().ok().and_then(|mut slot| slot.take());
        kept.unwrap_or_else(|| io::Error::other("the pipe's output thread stopped"))
    }
}

/// Writes the peer's data to `output`; on `END` checks it, flushes and asks the sending half
/// to `ACK`; records the peer's `ACK`. Returns bytes received and the peer's acknowledgement.
///
/// Payload is checksummed piece by piece as it comes off the stream and gathered, uncopied,
/// into blocks of up to [`WRITE_BUF`], each written as a whole; whatever is gathered goes as
/// soon as the stream has nothing more ready, so interactive data is never held back.
async fn receive_half<W: AsyncWrite + Unpin>(
    mut recv: quinn::RecvStream,
    mut output: Output<W>,
    ack_tx: oneshot::Sender<PipeSummary>,
    version: LinkVersion,
) -> Result<(u64, PipeSummary), PipeError> {
    let mut splitter = FrameSplitter::default();
    let mut tally = Some(Tally::new(version));
    let mut received = 0u64;
    let mut ack_tx = Some(ack_tx);
    let mut peer_ack = None;
    let mut pending = Block::default();
    loop {
        let chunk = match next_chunk(&mut recv, pending.is_empty()).await? {
            Some(Some(chunk)) => chunk,
            Some(None) => {
                write_block(&mut pending, &mut output).await?;
                continue;
            }
            None => break,
        };
        let mut chunk = chunk;
        while let Some(piece) = splitter.next(&mut chunk)? {
            match piece {
                Piece::Data(bytes) => {
                    let Some(tally) = tally.as_mut() else {
                        return Err(PipeError::Protocol("data after END"));
                    };
                    tally.add(&bytes);
                    pending.push(bytes);
                    if pending.len >= WRITE_BUF {
                        write_block(&mut pending, &mut output).await?;
                    }
                }
                Piece::End(claimed) => {
                    write_block(&mut pending, &mut output).await?;
                    let Some(done) = tally.take() else {
                        return Err(PipeError::Protocol("a second END"));
                    };
                    output.flush().await?;
                    let got = done.finish();
                    received = got.total;
                    if got != claimed {
                        return Err(PipeError::Corrupted {
                            received: got.total,
                            sent: claimed.total,
                            hash_ok: got.checksum == claimed.checksum,
                        });
                    }
                    if let Some(tx) = ack_tx.take() {
                        let _ = tx.send(got);
                    }
                }
                Piece::Ack(summary) => {
                    if peer_ack.replace(summary).is_some() {
                        return Err(PipeError::Protocol("a second ACK"));
                    }
                }
            }
        }
    }
    if !splitter.at_boundary() {
        return Err(PipeError::Truncated);
    }
    match (tally, peer_ack) {
        (None, Some(ack)) => Ok((received, ack)),
        _ => Err(PipeError::PeerClosedEarly),
    }
}

/// Writes the gathered payload out as one block (nothing if empty).
async fn write_block<W: AsyncWrite + Unpin>(
    pending: &mut Block,
    output: &mut Output<W>,
) -> io::Result<()> {
    if pending.is_empty() {
        return Ok(());
    }
    output.write(std::mem::take(pending)).await
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;

    /// A block of one piece.
    fn block(piece: Bytes) -> Block {
        let mut block = Block::default();
        block.push(piece);
        block
    }

    fn encode(frame: PipeFrame) -> BytesMut {
        let mut out = BytesMut::new();
        PipeCodec.encode(frame, &mut out).unwrap();
        out
    }

    #[test]
    fn golden_frames() {
        assert_eq!(
            &encode(PipeFrame::Data(Bytes::from_static(b"hi")))[..],
            &[0x00, 0, 0, 0, 2, b'h', b'i']
        );
        let summary = PipeSummary {
            total: 258,
            checksum: [0xab; 32],
        };
        let end = encode(PipeFrame::End(summary));
        assert_eq!(end.len(), SUMMARY_FRAME);
        assert_eq!(&end[..9], &[0x01, 0, 0, 0, 0, 0, 0, 1, 2]);
        assert_eq!(&end[9..], &[0xab; 32]);
        assert_eq!(encode(PipeFrame::Ack(summary))[0], 0x02);
    }

    #[test]
    fn protocol_md_example() {
        // docs/PROTOCOL.md §11 "Pipe": DATA `hi`, then END for it.
        let data = encode(PipeFrame::Data(Bytes::from_static(b"hi")));
        assert_eq!(hex::encode(&data), "00000000026869");
        let end = encode(PipeFrame::End(PipeSummary::of(LinkVersion::V1, b"hi")));
        assert_eq!(
            hex::encode(&end),
            "010000000000000002\
             8f434346648f6b96df89dda901c5176b10a6d83961dd3c1ac88b59b2dc327aa4"
        );
        // The same END on a chatr/2 link: BLAKE3.
        let end = encode(PipeFrame::End(PipeSummary::of(LinkVersion::V2, b"hi")));
        assert_eq!(
            hex::encode(&end),
            "010000000000000002\
             85052e9aab1b67b6622d94a08441b09fd5b7aca61ee360416d70de5da67d86ca"
        );
        // And on a chatr/3 link: XXH3-128 of `hi` (as Python's xxhash prints it), then
        // 16 zero bytes.
        let end = encode(PipeFrame::End(PipeSummary::of(LinkVersion::V3, b"hi")));
        assert_eq!(
            hex::encode(&end),
            "010000000000000002\
             7d596ce5fcabaf622a2300bbd7ea6e9a00000000000000000000000000000000"
        );
    }

    #[test]
    fn frames_round_trip_and_need_more_when_cut() {
        let summary = PipeSummary {
            total: 5,
            checksum: [7; 32],
        };
        for frame in [
            PipeFrame::Data(Bytes::from(vec![9u8; MAX_PIPE_CHUNK])),
            PipeFrame::End(summary),
            PipeFrame::Ack(summary),
        ] {
            let bytes = encode(frame.clone());
            for cut in 0..bytes.len() {
                let mut partial = BytesMut::from(&bytes[..cut]);
                assert!(PipeCodec.decode(&mut partial).unwrap().is_none());
            }
            let mut whole = bytes.clone();
            assert_eq!(PipeCodec.decode(&mut whole).unwrap(), Some(frame));
            assert!(whole.is_empty());
        }
    }

    #[test]
    fn hostile_frames_are_rejected() {
        let mut huge = BytesMut::from(&[0x00, 0xff, 0xff, 0xff, 0xff][..]);
        assert!(matches!(
            PipeCodec.decode(&mut huge),
            Err(PipeError::BadLength(_))
        ));
        assert!(huge.capacity() < 1024);
        let mut empty = BytesMut::from(&[0x00, 0, 0, 0, 0][..]);
        assert!(matches!(
            PipeCodec.decode(&mut empty),
            Err(PipeError::BadLength(0))
        ));
        let mut unknown = BytesMut::from(&[0x7f][..]);
        assert!(matches!(
            PipeCodec.decode(&mut unknown),
            Err(PipeError::UnknownFrame(0x7f))
        ));
        let mut cut = BytesMut::from(&[0x01, 0, 0][..]);
        assert!(matches!(
            PipeCodec.decode_eof(&mut cut),
            Err(PipeError::Truncated)
        ));
    }

    #[test]
    fn empty_or_oversized_data_is_not_encoded() {
        let mut out = BytesMut::new();
        assert!(
            PipeCodec
                .encode(PipeFrame::Data(Bytes::new()), &mut out)
                .is_err()
        );
        assert!(
            PipeCodec
                .encode(
                    PipeFrame::Data(Bytes::from(vec![0; MAX_PIPE_CHUNK + 1])),
                    &mut out
                )
                .is_err()
        );
        assert!(out.is_empty());
    }

    /// Feeds `stream` to a splitter in chunks of `sizes` (cycled) and collects what comes out,
    /// with the payload of consecutive `Data` pieces joined.
    fn split_all(stream: &[u8], sizes: &[usize]) -> Result<Vec<PipeFrame>, PipeError> {
        let mut splitter = FrameSplitter::default();
        let mut out = Vec::new();
        let mut data = BytesMut::new();
        let mut rest = Bytes::copy_from_slice(stream);
        for &size in sizes.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let mut chunk = rest.split_to(size.clamp(1, rest.len()));
            while let Some(piece) = splitter.next(&mut chunk)? {
                match piece {
                    Piece::Data(bytes) => data.extend_from_slice(&bytes),
                    Piece::End(s) | Piece::Ack(s) => {
                        if !data.is_empty() {
                            out.push(PipeFrame::Data(data.split().freeze()));
                        }
                        out.push(if matches!(piece, Piece::End(_)) {
                            PipeFrame::End(s)
                        } else {
                            PipeFrame::Ack(s)
                        });
                    }
                }
            }
        }
        if !data.is_empty() {
            out.push(PipeFrame::Data(data.freeze()));
        }
        if !splitter.at_boundary() {
            return Err(PipeError::Truncated);
        }
        Ok(out)
    }

    #[test]
    fn the_splitter_reads_frames_however_the_stream_is_cut() {
        let summary = PipeSummary {
            total: 70_000,
            checksum: [3; 32],
        };
        let payload: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
        let mut stream = BytesMut::new();
        let mut frames = Vec::new();
        data_frames(Bytes::from(payload.clone()), &mut frames);
        for f in &frames {
            stream.extend_from_slice(f);
        }
        stream.extend_from_slice(&encode(PipeFrame::End(summary)));
        stream.extend_from_slice(&encode(PipeFrame::Ack(summary)));
        // The frames data_frames makes are what the reference codec makes.
        assert_eq!(
            &stream[..DATA_HEADER + MAX_PIPE_CHUNK],
            &encode(PipeFrame::Data(Bytes::copy_from_slice(
                &payload[..MAX_PIPE_CHUNK]
            )))[..]
        );
        for sizes in [
            &[1][..],
            &[2, 3, 5],
            &[1200],
            &[1452, 7],
            &[40, 41, 42],
            &[usize::MAX],
        ] {
            let got = split_all(&stream, sizes).unwrap();
            assert_eq!(
                got,
                vec![
                    PipeFrame::Data(Bytes::from(payload.clone())),
                    PipeFrame::End(summary),
                    PipeFrame::Ack(summary),
                ],
                "chunk sizes {sizes:?}"
            );
        }
    }

    #[test]
    fn the_splitter_rejects_what_the_codec_rejects() {
        for cut in [1, 2, 3, 4, 5] {
            assert!(matches!(
                split_all(&[0x00, 0xff, 0xff, 0xff, 0xff, 1, 2], &[cut]),
                Err(PipeError::BadLength(0xffff_ffff))
            ));
            assert!(matches!(
                split_all(&[0x00, 0, 0, 0, 0], &[cut]),
                Err(PipeError::BadLength(0))
            ));
        }
        assert!(matches!(
            split_all(&[0x7f], &[1]),
            Err(PipeError::UnknownFrame(0x7f))
        ));
        // Ends inside a header, or inside a payload.
        assert!(matches!(
            split_all(&[0x01, 0, 0], &[1]),
            Err(PipeError::Truncated)
        ));
        assert!(matches!(
            split_all(&[0x00, 0, 0, 0, 4, 1, 2], &[3]),
            Err(PipeError::Truncated)
        ));
    }

    #[test]
    fn tally_matches_a_one_shot_digest() {
        let mut v1 = Tally::new(LinkVersion::V1);
        let mut v2 = Tally::new(LinkVersion::V2);
        let mut v3 = Tally::new(LinkVersion::V3);
        for tally in [&mut v1, &mut v2, &mut v3] {
            tally.add(b"hello ");
            tally.add(b"world");
        }
        let (v1, v2, v3) = (v1.finish(), v2.finish(), v3.finish());
        assert_eq!((v1.total, v2.total, v3.total), (11, 11, 11));
        assert_eq!(
            &v1.checksum[..],
            digest::digest(&digest::SHA256, b"hello world").as_ref()
        );
        assert_eq!(v2.checksum, *blake3::hash(b"hello world").as_bytes());
        assert_eq!(
            hex::encode(v3.checksum),
            "df8d09e93f874900a99b8775cc15b6c700000000000000000000000000000000"
        );
        // Published vectors for the empty input: BLAKE3's, and XXH3-128's.
        assert_eq!(
            hex::encode(PipeSummary::of(LinkVersion::V2, b"").checksum),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
        assert_eq!(
            hex::encode(&PipeSummary::of(LinkVersion::V3, b"").checksum[..16]),
            "99aa06d3014798d86001c324468d497f"
        );
    }

    #[test]
    fn tally_is_the_same_however_the_bytes_are_cut() {
        // Long enough for XXH3's long-input (SIMD) path and for several BLAKE3 blocks,
        // fed whole, in packet-sized pieces, and in pieces that straddle BLAKE3_BLOCK.
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        for version in [LinkVersion::V1, LinkVersion::V2, LinkVersion::V3] {
            let whole = PipeSummary::of(version, &data);
            for piece in [1, 1_400, BLAKE3_BLOCK - 1, BLAKE3_BLOCK + 7, 200_000] {
                let mut tally = Tally::new(version);
                for part in data.chunks(piece) {
                    tally.add(part);
                }
                assert_eq!(tally.finish(), whole, "{version}, pieces of {piece}");
            }
        }
        // XXH3-128 of that input as Python's xxhash computes it.
        assert_eq!(
            hex::encode(&PipeSummary::of(LinkVersion::V3, &data).checksum[..16]),
            "b65af738c61b5fc15d12941f4cf541c5"
        );
        assert_eq!(
            PipeSummary::of(LinkVersion::V2, &data).checksum,
            *blake3::hash(&data).as_bytes()
        );
    }

    /// A writer that takes at most `limit` bytes per call and fails every other call
    /// with `Interrupted`, as a slow pipe or a signal would.
    struct Trickle {
        got: Vec<u8>,
        limit: usize,
        calls: usize,
    }

    impl io::Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.write_vectored(&[IoSlice::new(buf)])
        }

        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            self.calls += 1;
            if self.calls.is_multiple_of(2) {
                return Err(io::ErrorKind::Interrupted.into());
            }
            let mut taken = 0;
            for buf in bufs {
                let take = buf.len().min(self.limit - taken);
                self.got.extend_from_slice(&buf[..take]);
                taken += take;
            }
            Ok(taken)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_block_is_written_whole_through_short_and_interrupted_writes() {
        let mut block = Block::default();
        let mut expected = Vec::new();
        for (i, len) in [0usize, 3, 1_400, 0, 7, 65_536, 1].into_iter().enumerate() {
            let piece = vec![i as u8; len];
            expected.extend_from_slice(&piece);
            block.push(Bytes::from(piece));
        }
        assert_eq!(block.len, expected.len());
        for limit in [1, 5, 1_000, 1 << 20] {
            let mut out = Trickle {
                got: Vec::new(),
                limit,
                calls: 0,
            };
            block.write_to(&mut out).unwrap();
            assert_eq!(out.got, expected, "at most {limit} bytes per write");
        }
        // A writer that takes nothing is an error, not a busy loop.
        let mut full = Trickle {
            got: Vec::new(),
            limit: 0,
            calls: 0,
        };
        let err = block.write_to(&mut full).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WriteZero);
        assert_eq!(block.joined(), Bytes::from(expected));
        // One piece is passed on as it is, not copied.
        let piece = Bytes::from(vec![9u8; 10]);
        let mut single = Block::default();
        single.push(piece.clone());
        assert_eq!(single.joined().as_ptr(), piece.as_ptr());
    }

    /// A blocking writer that records what reaches it, or fails every write.
    #[derive(Clone, Default)]
    struct Recorder {
        got: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
        broken: bool,
    }

    impl io::Write for Recorder {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.broken {
                return Err(io::Error::from(io::ErrorKind::BrokenPipe));
            }
            self.got.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn the_thread_writer_delivers_in_order_and_reports_the_first_error() {
        let recorder = Recorder::default();
        let mut out =
            Output::<tokio::io::Sink>::Thread(ThreadWriter::spawn(recorder.clone()).unwrap());
        for i in 0..50u8 {
            out.write(block(Bytes::from(vec![i; 1000]))).await.unwrap();
        }
        out.flush().await.unwrap();
        let got = recorder.got.lock().unwrap().clone();
        assert_eq!(got.len(), 50_000);
        assert!(
            got.chunks(1000)
                .enumerate()
                .all(|(i, c)| c.iter().all(|&b| b == i as u8))
        );

        let broken = Recorder {
            broken: true,
            ..Recorder::default()
        };
        let mut out = Output::<tokio::io::Sink>::Thread(ThreadWriter::spawn(broken).unwrap());
        out.write(block(Bytes::from_static(b"x"))).await.unwrap();
        // The failed write surfaces at the latest on the flush, with its own kind.
        let mut failure = out.flush().await.err();
        for _ in 0..10 {
            if failure.is_some() {
                break;
            }
            failure = out.write(block(Bytes::from_static(b"y"))).await.err();
        }
        assert_eq!(failure.map(|e| e.kind()), Some(io::ErrorKind::BrokenPipe));
    }

    #[tokio::test]
    async fn the_thread_reader_passes_every_byte_then_eof_then_errors() {
        let data: Vec<u8> = (0..3 * READ_BUF as u32 + 17)
            .map(|i| (i % 253) as u8)
            .collect();
        let mut file = tempfile::tempfile().unwrap();
        io::Write::write_all(&mut file, &data).unwrap();
        io::Seek::rewind(&mut file).unwrap();
        let mut input = Input::<tokio::io::Empty>::Thread(spawn_reader(file).unwrap());
        let mut got = Vec::new();
        while let Some(block) = input.next().await.unwrap() {
            assert!(!block.is_empty() && block.len() <= READ_BUF);
            got.extend_from_slice(&block);
        }
        assert_eq!(got, data);

        // A pipe's short reads arrive as blocks of their own size, in order.
        let (reader, mut writer) = io::pipe().unwrap();
        let mut input = Input::<tokio::io::Empty>::Thread(spawn_reader(reader).unwrap());
        io::Write::write_all(&mut writer, b"first line\n").unwrap();
        let first = input.next().await.unwrap().unwrap();
        assert_eq!(&first[..], b"first line\n");
        io::Write::write_all(&mut writer, b"second").unwrap();
        drop(writer);
        assert_eq!(&input.next().await.unwrap().unwrap()[..], b"second");
        assert!(input.next().await.unwrap().is_none());

        // A descriptor that cannot be read (opened for writing only) reports the error.
        let write_only = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/null")
            .unwrap();
        let mut input = Input::<tokio::io::Empty>::Thread(spawn_reader(write_only).unwrap());
        let error = input.next().await.err().map(|e| e.raw_os_error());
        assert_eq!(error, Some(Some(rustix::io::Errno::BADF.raw_os_error())));
    }
}
