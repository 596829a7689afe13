//! The hard side of birthday punching (`docs/PROTOCOL.md` §10.7): many sockets, one
//! Probe each towards the peer's endpoint, paced.
//!
//! Our NAT gives each socket its own random public port towards the peer. The peer (its
//! NAT keeps one port for all) probes random ports on our address; when one of its
//! guesses is the public port of one of these sockets, our NAT lets that Probe in
//! (the socket sent to exactly that endpoint), and when one of these sockets' Probes
//! reaches a port the peer's NAT has opened for a guess, it gets in there. Either way a
//! socket here receives the peer's Probe. The driver checks it is authentic and then
//! makes that socket carry the link's direct path ([`crate::link::LinkEndpoint`]); every
//! other socket closes at once. The sockets are closed after [`HOLD`] in any case: the
//! unanswered NAT entries they leave expire on their own (about 30 s on Linux).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, DropGuard};

/// How long the sockets wait for the peer's guesses after the last one opened.
pub(crate) const HOLD: Duration = Duration::from_secs(12);

/// A datagram one of the sockets received from the peer's address.
pub(crate) type Catch = (SocketAddr, Bytes, Arc<UdpSocket>);

/// A running set of sockets; dropping it closes them all.
pub(crate) struct Birthday {
    /// What the sockets catch (checked by the driver).
    pub(crate) caught: mpsc::Receiver<Catch>,
    _stop: DropGuard,
}

impl Birthday {
    /// Opens one socket per Probe in `probes`, at most `rate` per second, each sending
    /// its Probe to `target`.
    pub(crate) fn start(target: SocketAddr, probes: Vec<Vec<u8>>, rate: u32) -> Birthday {
        let stop = CancellationToken::new();
        let (tx, caught) = mpsc::channel(16);
        tokio::spawn(run(target, probes, rate.max(1), tx, stop.clone()));
        Birthday {
            caught,
            _stop: stop.drop_guard(),
        }
    }
}

async fn run(
    target: SocketAddr,
    probes: Vec<Vec<u8>>,
    rate: u32,
    caught: mpsc::Sender<Catch>,
    stop: CancellationToken,
) {
    let wildcard: SocketAddr = if target.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let mut pace = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let count = probes.len();
    let mut opened = 0usize;
    for probe in probes {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = pace.tick() => {}
        }
        let socket = match UdpSocket::bind(wildcard).await {
            Ok(s) => Arc::new(s),
            Err(e) => {
                tracing::debug!(error = %e, "birthday socket not opened");
                continue;
            }
        };
        if let Err(e) = socket.send_to(&probe, target).await {
            tracing::debug!(error = %e, "birthday probe not sent");
            continue;
        }
        opened += 1;
        tokio::spawn(listen(socket, target, caught.clone(), stop.clone()));
    }
    tracing::debug!(%target, opened, of = count, "birthday sockets open");
    tokio::select! {
        () = stop.cancelled() => {}
        () = tokio::time::sleep(HOLD) => {}
    }
    stop.cancel();
}

/// Waits on one socket for a datagram from the peer's address.
async fn listen(
    socket: Arc<UdpSocket>,
    target: SocketAddr,
    caught: mpsc::Sender<Catch>,
    stop: CancellationToken,
) {
    let mut buf = vec![0u8; 2048];
    loop {
        let (len, from) = tokio::select! {
            () = stop.cancelled() => return,
            r = socket.recv_from(&mut buf) => match r {
                Ok(r) => r,
                Err(_) => continue,
            },
        };
        let from = SocketAddr::new(from.ip().to_canonical(), from.port());
        if from.ip() != target.ip().to_canonical() {
            continue;
        }
        let Some(datagram) = buf.get(..len) else {
            continue;
        };
        let catch = (from, Bytes::copy_from_slice(datagram), Arc::clone(&socket));
        if caught.send(catch).await.is_err() {
            return;
        }
    }
}
