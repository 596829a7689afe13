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

//!
//! **Dual stack.** An IPv6 wildcard (`[::]`, the default) is bound with `IPV6_V6ONLY`
//! off, whatever `net.ipv6.bindv6only` says, so one TCP listener and one UDP socket
//! serve IPv4 and IPv6 clients alike (IPv4 ones as `::ffff:a.b.c.d`, which every
//! consumer unmaps before use: the bytes an IPv4 client gets are those of an IPv4-only
//! server). Where the host has no IPv6 at all the wildcard falls back to `0.0.0.0`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, UdpSocket};

/// Where Linux keeps the cap on every listen backlog.
const SOMAXCONN_PATH: &str = "/proc/sys/net/core/somaxconn";

/// Binds `addr` and listens with `backlog`, with the options
/// `TcpListener::bind` would set (`SO_REUSEADDR`, non-blocking). Must be
/// called inside a tokio runtime.
pub(crate) fn bind_tcp(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let (socket, addr) = new_socket(addr, Type::STREAM, Protocol::TCP)?;
    // As std and tokio do: a restarted server can bind while old connections
    // of its previous run sit in TIME_WAIT.
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    let backlog = i32::try_from(backlog.max(1)).unwrap_or(i32::MAX);
    socket.listen(backlog)?;
    TcpListener::from_std(socket.into())
}

/// Binds a UDP socket on `addr` (dual-stack for an IPv6 wildcard), non-blocking. Must be
/// called inside a tokio runtime.
pub(crate) fn bind_udp(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let (socket, addr) = new_socket(addr, Type::DGRAM, Protocol::UDP)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

/// A socket for `addr`, and the address to bind: an IPv6 socket with `IPV6_V6ONLY` off
/// for an IPv6 address, or, for the IPv6 wildcard on a host without IPv6, an IPv4
/// socket and `0.0.0.0`.
fn new_socket(
    addr: SocketAddr,
    kind: Type,
    protocol: Protocol,
) -> std::io::Result<(Socket, SocketAddr)> {
    match Socket::new(Domain::for_address(addr), kind, Some(protocol)) {
        Ok(socket) => {
            if addr.is_ipv6() {
                socket.set_only_v6(false)?;
            }
            Ok((socket, addr))
        }
        Err(err) if addr.is_ipv6() && addr.ip().is_unspecified() => {
            tracing::warn!(%err, %addr, "no IPv6 on this host; listening on IPv4 only");
            let v4 = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), addr.port());
            Ok((Socket::new(Domain::IPV4, kind, Some(protocol))?, v4))
        }
        Err(err) => Err(err),
    }
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

    #[tokio::test]
    async fn the_ipv6_wildcard_serves_ipv4_and_ipv6() {
        let listener = bind_tcp("[::]:0".parse().unwrap(), 16).unwrap();
        let port = listener.local_addr().unwrap().port();
        let v4 = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let (_server, peer) = listener.accept().await.unwrap();
        assert_eq!(peer.ip().to_canonical(), v4.local_addr().unwrap().ip());
        let udp = bind_udp(SocketAddr::new("::".parse().unwrap(), port)).unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client.send_to(b"x", ("127.0.0.1", port)).await.unwrap();
        let mut buf = [0u8; 4];
        let (_, from) = udp.recv_from(&mut buf).await.unwrap();
        assert_eq!(
            SocketAddr::new(from.ip().to_canonical(), from.port()),
            client.local_addr().unwrap()
        );
        if tokio::net::UdpSocket::bind("[::1]:0").await.is_ok() {
            let v6 = tokio::net::TcpStream::connect(("::1", port)).await.unwrap();
            let (_server, peer) = listener.accept().await.unwrap();
            assert_eq!(peer, v6.local_addr().unwrap());
        }
    }

    #[test]
    fn effective_backlog_is_within_somaxconn() {
        let cap = somaxconn().unwrap_or(u32::MAX);
        assert!(effective_backlog(u32::MAX) <= cap);
        assert_eq!(effective_backlog(0), 1);
        assert_eq!(effective_backlog(16), 16.min(cap));
    }
}
