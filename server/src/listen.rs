//! TCP listeners with a real accept backlog.
//!
//! `tokio::net::TcpListener::bind` listens with std's backlog of 128, far
//! below what a reconnect storm needs: after a restart or
//! a network blip every client reconnects at once, the kernel's accept queue
//! overflows, SYNs are dropped (`TcpExt ListenOverflows` in
//! `/proc/net/netstat`) and each dropped client waits for its SYN
//! retransmission, a full second. The listeners are therefore built with
//! socket2 and `listen(backlog)` from the configuration (default 4096). Linux
//! silently caps the value at `net.core.somaxconn`; [`somaxconn`] reads it so
//! the server can say so at start.

use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;

/// Where Linux keeps the cap on every listen backlog.
const SOMAXCONN_PATH: &str = "/proc/sys/net/core/somaxconn";

/// Binds `addr` and listens with `backlog`, with the options
/// `TcpListener::bind` would set (`SO_REUSEADDR`, non-blocking). Must be
/// called inside a tokio runtime.
pub(crate) fn bind_tcp(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // As std and tokio do: a restarted server can bind while old connections
    // of its previous run sit in TIME_WAIT.
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    let backlog = i32::try_from(backlog.max(1)).unwrap_or(i32::MAX);
    socket.listen(backlog)?;
    TcpListener::from_std(socket.into())
}

/// `net.core.somaxconn`, the kernel's cap on every listen backlog, if readable.
pub fn somaxconn() -> Option<u32> {
    std::fs::read_to_string(SOMAXCONN_PATH)
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The backlog the kernel will really use for a requested one.
pub fn effective_backlog(requested: u32) -> u32 {
    match somaxconn() {
        Some(cap) => requested.clamp(1, cap.max(1)),
        None => requested.max(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn binds_port_zero_and_accepts() {
        let listener = bind_tcp("127.0.0.1:0".parse().unwrap(), 4096).unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (_server, peer) = listener.accept().await.unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
    }

    #[test]
    fn effective_backlog_is_within_somaxconn() {
        let cap = somaxconn().unwrap_or(u32::MAX);
        assert!(effective_backlog(u32::MAX) <= cap);
        assert_eq!(effective_backlog(0), 1);
        assert_eq!(effective_backlog(16), 16.min(cap));
    }
}
