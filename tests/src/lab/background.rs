//! Background flows through a site's NAT: another host on the same LAN opening new UDP
//! flows at a steady rate, as the rest of a household does. Against a sequential NAT
//! they move its port counter between the client's measurement and its punch, which
//! port prediction must survive.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::error::LabError;
use super::topology::Host;

/// Flows kept running until dropped.
pub struct BackgroundFlows {
    stop: Arc<AtomicBool>,
    opened: Arc<AtomicU64>,
    threads: Vec<JoinHandle<std::io::Result<()>>>,
}

impl BackgroundFlows {
    /// Starts `per_second` new flows per second from each of `hosts` towards `sink`
    /// (one datagram from a fresh socket each, to a port nothing listens on).
    pub fn start(hosts: &[&Host], sink: SocketAddr, per_second: u32) -> Result<Self, LabError> {
        let stop = Arc::new(AtomicBool::new(false));
        let opened = Arc::new(AtomicU64::new(0));
        let mut threads = Vec::new();
        let interval = Duration::from_secs_f64(1.0 / f64::from(per_second.max(1)));
        for host in hosts {
            let (stop, opened) = (Arc::clone(&stop), Arc::clone(&opened));
            threads.push(host.netns().spawn("natlab-bg", move || {
                let mut next = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(socket) = UdpSocket::bind("0.0.0.0:0")
                        && socket.send_to(b"background", sink).is_ok()
                    {
                        opened.fetch_add(1, Ordering::Relaxed);
                    }
                    next += interval;
                    std::thread::sleep(next.saturating_duration_since(Instant::now()));
                }
            })?);
        }
        Ok(Self {
            stop,
            opened,
            threads,
        })
    }

    /// Flows opened so far.
    pub fn opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }
}

impl Drop for BackgroundFlows {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
