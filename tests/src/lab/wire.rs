//! The delay wire: a userspace bridge that holds every frame for a fixed time.
//!
//! This kernel has no `netem` qdisc, so latency is made in userspace. A wire sits in
//! the lab's `wire` namespace between two veth ends, `a` (towards a NAT router or
//! public host) and `b` (towards the public bridge). One thread per wire reads
//! whole Ethernet frames from both ends with `AF_PACKET` raw sockets and writes
//! each one out of the other end `delay` later, in arrival order (a fixed delay
//! never reorders). Neither end has an address, so the wire namespace's own stack
//! ignores the frames: the wire is invisible at L3, like a long cable.
//!
//! Offloads: veths hand over TCP/UDP segments with checksums still to be filled in
//! (`CHECKSUM_PARTIAL`) and as GSO super-frames. `PACKET_VNET_HDR` makes the kernel
//! prepend a `virtio_net_hdr` describing both on receive and honour it on send, so
//! frames cross the wire exactly as the kernel would have passed them, without
//! turning offloads off (and no `ethtool` needed).

use std::collections::VecDeque;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::error::LabError;
use super::netns::Netns;

const SOL_PACKET: libc::c_int = 263;
const PACKET_VNET_HDR: libc::c_int = 15;
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;
/// `sizeof(struct virtio_net_hdr)`.
const VNET_HDR_LEN: usize = 10;
/// Largest GSO frame a veth hands over (64 KiB) plus the virtio header and slack.
const MAX_FRAME: usize = 65_536 + VNET_HDR_LEN + 256;
/// Per-direction buffer, like a router's queue: beyond it frames are tail-dropped.
const QUEUE_BYTES: usize = 32 << 20;
/// How often the thread looks at the stop flag when idle.
const IDLE_TICK: Duration = Duration::from_millis(20);
/// At most this many frames are read from one end per wake-up, so a flood in one
/// direction cannot starve the other.
const READ_BATCH: usize = 256;

/// Counters of one wire, for diagnostics and tests.
#[derive(Debug, Default)]
pub struct WireStats {
    /// Frames delivered out of the other end.
    pub forwarded: AtomicU64,
    /// Frames dropped because a queue was full or the send failed.
    pub dropped: AtomicU64,
}

/// A running delay wire; stops (and joins its thread) on drop.
#[derive(Debug)]
pub(crate) struct Wire {
    stop: Arc<AtomicBool>,
    stats: Arc<WireStats>,
    thread: Option<JoinHandle<io::Result<io::Result<()>>>>,
}

impl Wire {
    /// Starts a wire between interfaces `a` and `b` of namespace `ns`, holding every frame
    /// for `delay` in both directions. Returns once both sockets are open.
    pub(crate) fn start(ns: &Netns, a: &str, b: &str, delay: Duration) -> Result<Wire, LabError> {
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(WireStats::default());
        let (ready_tx, ready_rx) = mpsc::sync_channel::<io::Result<()>>(1);
        let (a_name, b_name) = (a.to_owned(), b.to_owned());
        let (thread_stop, thread_stats) = (stop.clone(), stats.clone());
        let label = format!("{}:{a}<->{b}", ns.name());
        let thread = ns.spawn(&format!("wire-{a}"), move || {
            let sockets =
                open_packet_socket(&a_name).and_then(|sa| Ok((sa, open_packet_socket(&b_name)?)));
            match sockets {
                Ok((sa, sb)) => {
                    let _ = ready_tx.send(Ok(()));
                    pump(&sa, &sb, delay, &thread_stop, &thread_stats)
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(io::Error::new(e.kind(), e.to_string())));
                    Err(e)
                }
            }
        })?;
        let mut wire = Wire {
            stop,
            stats,
            thread: Some(thread),
        };
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(wire),
            Ok(Err(e)) => Err(LabError::Wire {
                wire: label,
                detail: e.to_string(),
            }),
            Err(_) => {
                // The thread ended without a word: it could not enter the namespace.
                let detail = match wire.thread.take().map(JoinHandle::join) {
                    Some(Ok(Err(e))) => e.to_string(),
                    _ => "wire thread exited during start-up".into(),
                };
                Err(LabError::Wire {
                    wire: label,
                    detail,
                })
            }
        }
    }

    /// The wire's counters.
    pub(crate) fn stats(&self) -> &Arc<WireStats> {
        &self.stats
    }
}

impl Drop for Wire {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn setsockopt_int(
    fd: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: passes a pointer to a live c_int and its exact size.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&raw const value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Opens a non-blocking `AF_PACKET` raw socket bound to interface `ifname`, with
/// virtio headers on and our own transmissions filtered out.
fn open_packet_socket(ifname: &str) -> io::Result<OwnedFd> {
    let cname = CString::new(ifname).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: if_nametoindex reads a NUL-terminated string.
    let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    if ifindex == 0 {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no interface {ifname} in the wire namespace"),
        ));
    }
    let protocol = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket(2) call; the result is checked before use.
    let raw = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            libc::c_int::from(protocol),
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    setsockopt_int(&fd, SOL_PACKET, PACKET_VNET_HDR, 1)?;
    setsockopt_int(&fd, SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)?;
    // Room for bursts (a QUIC flight, a TCP window) while the thread sleeps.
    let _ = setsockopt_int(&fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 8 << 20);
    let _ = setsockopt_int(&fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, 8 << 20);
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = protocol;
    addr.sll_ifindex = ifindex as libc::c_int;
    // SAFETY: passes a pointer to a live sockaddr_ll and its exact size.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const addr).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// Reads (and so clears) a socket's pending error.
fn clear_socket_error(fd: &OwnedFd) {
    let mut err: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: passes a live c_int and its size; the kernel writes at most that much.
    unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&raw mut err).cast(),
            &raw mut len,
        );
    }
}

/// One queued frame (virtio header included) and when it may leave.
struct Held {
    due: Instant,
    frame: Vec<u8>,
}

/// Frames travelling one way, with their byte total for the tail-drop limit.
#[derive(Default)]
struct Direction {
    queue: VecDeque<Held>,
    bytes: usize,
}

/// The wire's loop: read both ends, hold, forward when due, until `stop`.
fn pump(
    a: &OwnedFd,
    b: &OwnedFd,
    delay: Duration,
    stop: &AtomicBool,
    stats: &WireStats,
) -> io::Result<()> {
    let mut scratch = vec![0u8; MAX_FRAME];
    // towards[0] holds frames read on `a` that leave through `b`; towards[1] the reverse.
    let mut towards = [Direction::default(), Direction::default()];
    let ends = [a, b];
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        for (dir, queue) in towards.iter_mut().enumerate() {
            let out = ends[1 - dir];
            while queue.queue.front().is_some_and(|held| held.due <= now) {
                let Some(held) = queue.queue.pop_front() else {
                    break;
                };
                queue.bytes -= held.frame.len();
                // SAFETY: sends from a live buffer of the given length.
                let sent = unsafe {
                    libc::send(
                        out.as_raw_fd(),
                        held.frame.as_ptr().cast(),
                        held.frame.len(),
                        0,
                    )
                };
                if sent < 0 {
                    // ENOBUFS and the like: the frame is lost, as on a congested link.
                    stats.dropped.fetch_add(1, Ordering::Relaxed);
                } else {
                    stats.forwarded.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        let next_due = towards
            .iter()
            .filter_map(|d| d.queue.front().map(|h| h.due))
            .min();
        let wait = next_due.map_or(IDLE_TICK, |due| {
            due.saturating_duration_since(now).min(IDLE_TICK)
        });
        let mut fds = [
            libc::pollfd {
                fd: a.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: b.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let timeout = libc::timespec {
            tv_sec: wait.as_secs() as libc::time_t,
            tv_nsec: libc::c_long::from(wait.subsec_nanos() as i32),
        };
        // SAFETY: two live pollfds, a live timespec, no signal mask change.
        let rc = unsafe { libc::ppoll(fds.as_mut_ptr(), 2, &raw const timeout, std::ptr::null()) };
        if rc < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        for (dir, pfd) in fds.iter().enumerate() {
            if pfd.revents & libc::POLLNVAL != 0 {
                return Err(io::Error::from_raw_os_error(libc::EBADF));
            }
            if pfd.revents & libc::POLLERR != 0 {
                // e.g. ENETDOWN while an end is being torn down: reading SO_ERROR clears
                // it, so ppoll does not spin on the same error.
                clear_socket_error(ends[dir]);
            }
            if pfd.revents & libc::POLLIN == 0 {
                continue;
            }
            let arrived = Instant::now();
            for _ in 0..READ_BATCH {
                // SAFETY: receives into a live buffer of the given length.
                let n = unsafe {
                    libc::recv(
                        pfd.fd,
                        scratch.as_mut_ptr().cast(),
                        scratch.len(),
                        libc::MSG_DONTWAIT,
                    )
                };
                if n <= 0 {
                    break; // EAGAIN: drained (errors are retried on the next wake-up)
                }
                let len = n as usize;
                let queue = &mut towards[dir];
                if queue.bytes + len > QUEUE_BYTES {
                    stats.dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                queue.bytes += len;
                queue.queue.push_back(Held {
                    due: arrived + delay,
                    frame: scratch[..len].to_vec(),
                });
            }
        }
    }
    Ok(())
}
