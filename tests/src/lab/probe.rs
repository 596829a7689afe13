//! A tiny UDP toolkit for checking the lab itself, before (and besides) the real client.
//!
//! - [`Observer`]: a STUN-like reflector on a public host; it answers every datagram
//!   with `SAW <observed source ip:port> <original payload>`, which tells a host behind
//!   a NAT its mapping (and, with several observers, whether the mapping depends on
//!   the destination).
//! - [`observe`], [`recv_within`]: the client side of that, with retries.
//! - [`punch`]: both sides send to the other's mapping until each has heard from the
//!   other, answering whatever source a probe arrives from (a peer-reflexive
//!   candidate, which is what gets a symmetric NAT through a cone). That is the least
//!   a hole puncher does, so the outcome per NAT pair is a property of the NATs.

use std::io;
use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::error::LabError;
use super::netns::Netns;
use super::topology::Host;

/// How long socket reads block before loops look at their clocks and flags.
const TICK: Duration = Duration::from_millis(20);
/// Interval between punch probes (and observer retries).
const PROBE_INTERVAL: Duration = Duration::from_millis(40);

/// Binds a UDP socket on `0.0.0.0:port` inside `host`'s namespace (port 0 = any).
pub fn udp_socket(host: &Host, port: u16) -> Result<UdpSocket, LabError> {
    udp_socket_in(host.netns(), port)
}

/// Binds a UDP socket on `0.0.0.0:port` inside `ns`.
pub fn udp_socket_in(ns: &Netns, port: u16) -> Result<UdpSocket, LabError> {
    let bound = ns.run_in(move || UdpSocket::bind(("0.0.0.0", port)))?;
    let sock =
        bound.map_err(|e| LabError::io(format!("binding UDP port {port} in {}", ns.name()), e))?;
    sock.set_read_timeout(Some(TICK))
        .map_err(|e| LabError::io("setting a read timeout", e))?;
    Ok(sock)
}

/// Waits up to `timeout` for one datagram on `sock`.
pub fn recv_within(
    sock: &UdpSocket,
    timeout: Duration,
) -> io::Result<Option<(Vec<u8>, SocketAddr)>> {
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; 65_536];
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        sock.set_read_timeout(Some(
            (deadline - now).min(TICK).max(Duration::from_millis(1)),
        ))?;
        match sock.recv_from(&mut buf) {
            Ok((n, from)) => return Ok(Some((buf[..n].to_vec(), from))),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e),
        }
    }
}

/// A UDP reflector on a lab host; stops on drop.
#[derive(Debug)]
pub struct Observer {
    addr: SocketAddrV4,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<io::Result<io::Result<()>>>>,
}

impl Observer {
    /// Starts a reflector on `host`, UDP port `port`.
    pub fn start(host: &Host, port: u16) -> Result<Observer, LabError> {
        let sock = udp_socket(host, port)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = host.netns().spawn(&format!("observer-{port}"), move || {
            let mut buf = vec![0u8; 65_536];
            while !flag.load(Ordering::Relaxed) {
                match sock.recv_from(&mut buf) {
                    Ok((n, from)) => {
                        let mut reply = format!("SAW {from} ").into_bytes();
                        reply.extend_from_slice(&buf[..n]);
                        // Best effort, like any UDP server.
                        let _ = sock.send_to(&reply, from);
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) => {}
                    // e.g. ECONNREFUSED from an ICMP error for an earlier reply: keep serving.
                    Err(_) => {}
                }
            }
            Ok(())
        })?;
        Ok(Observer {
            addr: SocketAddrV4::new(host.ip(), port),
            stop,
            thread: Some(thread),
        })
    }

    /// Where the reflector listens.
    pub fn addr(&self) -> SocketAddrV4 {
        self.addr
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Parses an observer reply `SAW <ip:port> <payload>` into the observed address and payload.
pub fn parse_observation(datagram: &[u8]) -> Option<(SocketAddrV4, &[u8])> {
    let rest = datagram.strip_prefix(b"SAW ")?;
    let space = rest.iter().position(|&b| b == b' ')?;
    let addr = std::str::from_utf8(&rest[..space]).ok()?.parse().ok()?;
    Some((addr, &rest[space + 1..]))
}

/// Asks `observer` which public address `sock`'s datagrams arrive from, retrying every
/// 40 ms for up to `timeout`.
pub fn observe(
    sock: &UdpSocket,
    observer: SocketAddrV4,
    timeout: Duration,
) -> io::Result<SocketAddrV4> {
    let nonce = format!("OBS {:?}", Instant::now());
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        sock.send_to(nonce.as_bytes(), observer)?;
        let wait_until = Instant::now() + PROBE_INTERVAL;
        while Instant::now() < wait_until {
            let Some((datagram, from)) = recv_within(sock, wait_until - Instant::now())? else {
                break;
            };
            if from != SocketAddr::V4(observer) {
                continue;
            }
            if let Some((seen, payload)) = parse_observation(&datagram)
                && payload == nonce.as_bytes()
            {
                return Ok(seen);
            }
        }
    }
    Err(io::Error::new(
        io::ErrorKind::TimedOut,
        format!("no answer from observer {observer} within {timeout:?}"),
    ))
}

/// Round-trip time of one exchange with `observer` (the first answer; retries every 40 ms
/// are not counted as separate samples).
pub fn round_trip(
    sock: &UdpSocket,
    observer: SocketAddrV4,
    timeout: Duration,
) -> io::Result<Duration> {
    let payload = format!("RTT {:?}", Instant::now());
    let start = Instant::now();
    sock.send_to(payload.as_bytes(), observer)?;
    while start.elapsed() < timeout {
        let Some((datagram, from)) = recv_within(sock, timeout.saturating_sub(start.elapsed()))?
        else {
            break;
        };
        if from == SocketAddr::V4(observer)
            && parse_observation(&datagram).is_some_and(|(_, p)| p == payload.as_bytes())
        {
            return Ok(start.elapsed());
        }
    }
    Err(io::Error::new(
        io::ErrorKind::TimedOut,
        "no echo within the timeout",
    ))
}

/// What each side of a [`punch`] heard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PunchOutcome {
    /// The source address side A first heard the peer from.
    pub a_heard: Option<SocketAddr>,
    /// The source address side B first heard the peer from.
    pub b_heard: Option<SocketAddr>,
}

impl PunchOutcome {
    /// Both directions got through.
    pub fn is_direct(&self) -> bool {
        self.a_heard.is_some() && self.b_heard.is_some()
    }
}

/// Punches between `a` (aiming at `a_to`) and `b` (aiming at `b_to`) for at most `budget`.
pub fn punch(
    a: &UdpSocket,
    a_to: SocketAddr,
    b: &UdpSocket,
    b_to: SocketAddr,
    budget: Duration,
) -> PunchOutcome {
    let a_done = AtomicBool::new(false);
    let b_done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let side_a = scope.spawn(|| punch_side(a, a_to, b"A", budget, &a_done, &b_done));
        let b_heard = punch_side(b, b_to, b"B", budget, &b_done, &a_done);
        let a_heard = side_a.join().unwrap_or(None);
        PunchOutcome { a_heard, b_heard }
    })
}

fn punch_side(
    sock: &UdpSocket,
    mut target: SocketAddr,
    tag: &[u8; 1],
    budget: Duration,
    done: &AtomicBool,
    peer_done: &AtomicBool,
) -> Option<SocketAddr> {
    let deadline = Instant::now() + budget;
    let mut next_send = Instant::now();
    let mut heard = None;
    let probe = [b"PUNCH ".as_slice(), tag].concat();
    let ack = [b"ACK ".as_slice(), tag].concat();
    while Instant::now() < deadline
        && !(done.load(Ordering::SeqCst) && peer_done.load(Ordering::SeqCst))
    {
        if Instant::now() >= next_send {
            let _ = sock.send_to(&probe, target);
            next_send += PROBE_INTERVAL;
        }
        let wait = next_send
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        let Ok(Some((datagram, from))) = recv_within(sock, wait) else {
            continue;
        };
        let from_peer = (datagram.starts_with(b"PUNCH ") || datagram.starts_with(b"ACK "))
            && datagram.last() != Some(&tag[0]);
        if !from_peer {
            continue;
        }
        // Peer-reflexive: answer where the peer's datagrams really come from.
        target = from;
        if heard.is_none() {
            heard = Some(from);
            done.store(true, Ordering::SeqCst);
        }
        if datagram.starts_with(b"PUNCH ") {
            let _ = sock.send_to(&ack, from);
        }
    }
    heard
}
