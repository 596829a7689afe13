//! Same-port sockets: the TCP session and the UDP socket share local port P.
//!
//! The spec says the peer-to-peer socket runs "on the same port the TLS client
//! is running from". A NAT that preserves ports then maps both to the same
//! public port, and the server's TCP-observed endpoint is one more candidate for
//! the peer to try. So the UDP socket is bound first (it owns P for the life of
//! the client: links run over it), then each TCP connection to the server binds
//! P with `SO_REUSEADDR`. If P cannot be reused for TCP (the old 4-tuple is
//! still in TIME_WAIT, or something else holds it) we fall back to any port and
//! log it: the session matters more than the port match.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpSocket, TcpStream};

use crate::config::HostPort;

/// How many ports [`bind_udp`] tries when asked for "any port".
const SAME_PORT_ATTEMPTS: usize = 16;

/// Binds a UDP socket on `addr` with `SO_REUSEADDR`, non-blocking.
///
/// With port 0 the port is chosen so that it is free for TCP too: the kernel
/// hands out UDP and TCP ports independently, and a UDP port whose TCP twin is
/// taken would defeat the same-port rule from the start. A TCP socket bound to
/// an ephemeral port reserves P while UDP binds it; it is closed again (never
/// connected, so P is not left in TIME_WAIT).
pub fn bind_udp(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    if addr.port() != 0 {
        return bind_udp_exact(addr);
    }
    for _ in 0..SAME_PORT_ATTEMPTS {
        let reservation =
            Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        if addr.is_ipv6() {
            let _ = reservation.set_only_v6(false);
        }
        reservation.bind(&addr.into())?;
        let port = reservation
            .local_addr()?
            .as_socket()
            .map_or(0, |a| a.port());
        if port == 0 {
            break;
        }
        match bind_udp_exact(SocketAddr::new(addr.ip(), port)) {
            Ok(udp) => return Ok(udp),
            // UDP P is taken: try another TCP-free port.
            Err(err) if err.kind() == io::ErrorKind::AddrInUse => continue,
            Err(err) => return Err(err),
        }
    }
    bind_udp_exact(addr)
}

/// Binds the peer-to-peer socket on port `port` (0: any) of every address, IPv4 and IPv6
/// alike: `[::]` with `IPV6_V6ONLY` off, so one socket (and one port P) serves the
/// IPv4 session, the IPv4 punch and direct IPv6 paths (docs/PROTOCOL.md §15). Where the
/// host has no IPv6 at all (`AF_INET6` unsupported), it falls back to `0.0.0.0`; the
/// socket's family then tells the caller whether it can offer IPv6 candidates.
pub fn bind_udp_dual_stack(port: u16) -> io::Result<std::net::UdpSocket> {
    let v6 = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port);
    match bind_udp(v6) {
        Ok(socket) if socket_is_dual_stack(&socket) => Ok(socket),
        Ok(_) => {
            tracing::debug!("IPV6_V6ONLY could not be turned off; using an IPv4 socket");
            bind_udp(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port))
        }
        Err(err) if err.kind() == io::ErrorKind::AddrInUse => Err(err),
        Err(err) => {
            tracing::debug!(%err, "no IPv6 socket; using an IPv4 socket");
            bind_udp(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port))
        }
    }
}

/// Whether `socket` is an IPv6 socket that also carries IPv4 (`IPV6_V6ONLY` off).
pub fn socket_is_dual_stack(socket: &std::net::UdpSocket) -> bool {
    let sock = socket2::SockRef::from(socket);
    socket.local_addr().is_ok_and(|a| a.is_ipv6()) && sock.only_v6().is_ok_and(|only| !only)
}

/// Kernel buffer asked for on the peer-to-peer UDP socket, both directions.
///
/// The default (`net.core.rmem_default`, ~208 KiB) overflows during QUIC's
/// slow-start burst on a 40 ms path; the drops make the congestion controller
/// back off and a bulk pipe reached only ~60 % of TCP in the NAT lab. The
/// kernel caps the request at `net.core.rmem_max` / `wmem_max`.
const UDP_SOCKET_BUFFER: usize = 4 << 20;

/// Binds exactly `addr` (port 0: any UDP port).
fn bind_udp_exact(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    // Best effort: a smaller buffer only costs throughput.
    if let Err(err) = socket.set_recv_buffer_size(UDP_SOCKET_BUFFER) {
        tracing::debug!(%err, "could not enlarge the UDP receive buffer");
    }
    if let Err(err) = socket.set_send_buffer_size(UDP_SOCKET_BUFFER) {
        tracing::debug!(%err, "could not enlarge the UDP send buffer");
    }
    if addr.is_ipv6() {
        // Accept IPv4-mapped traffic too where the OS allows it.
        let _ = socket.set_only_v6(false);
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// The wildcard address of `server`'s family with `port`.
pub fn wildcard_for(server: SocketAddr, port: u16) -> SocketAddr {
    let ip = match server {
        SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    SocketAddr::new(ip, port)
}

/// `::ffff:a.b.c.d` → `a.b.c.d`, so addresses from a dual-stack socket compare equal to
/// announced IPv4 endpoints.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// Resolves `host:port` to one socket address (IPv4 preferred).
pub async fn resolve(target: &HostPort) -> io::Result<SocketAddr> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((target.host.as_str(), target.port))
        .await?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{target} has no address")))
}

/// A TCP connection to the server and whether it uses the requested local port.
#[derive(Debug)]
pub struct SamePortTcp {
    /// The connected stream.
    pub stream: TcpStream,
    /// `true` when the stream is bound to the requested port P.
    pub same_port: bool,
}

/// Connects to `server` from local port `port` (SO_REUSEADDR); when that port
/// cannot be used, connects from any port and logs why.
pub async fn connect_same_port(
    port: u16,
    server: SocketAddr,
    timeout: Duration,
) -> io::Result<SamePortTcp> {
    match connect_from(Some(port), server, timeout).await {
        Ok(stream) => Ok(SamePortTcp {
            stream,
            same_port: true,
        }),
        Err(e) if is_port_busy(&e) => {
            tracing::warn!(
                port,
                %server,
                error = %e,
                "local port busy for TCP (old connection still in TIME_WAIT?); using another port"
            );
            let stream = connect_from(None, server, timeout).await?;
            Ok(SamePortTcp {
                stream,
                same_port: false,
            })
        }
        Err(e) => Err(e),
    }
}

fn is_port_busy(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::AddrInUse | io::ErrorKind::AddrNotAvailable
    )
}

async fn connect_from(
    port: Option<u16>,
    server: SocketAddr,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let socket = if server.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(port) = port {
        socket.set_reuseaddr(true)?;
        socket.bind(wildcard_for(server, port))?;
    }
    let stream = tokio::time::timeout(timeout, socket.connect(server))
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connecting to {server} timed out"),
            )
        })??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_unmaps_v4_in_v6_only() {
        let mapped: SocketAddr = "[::ffff:203.0.113.5]:4000".parse().unwrap();
        assert_eq!(canonical(mapped), "203.0.113.5:4000".parse().unwrap());
        let v6: SocketAddr = "[2001:db8::1]:4000".parse().unwrap();
        assert_eq!(canonical(v6), v6);
        let v4: SocketAddr = "192.0.2.1:9".parse().unwrap();
        assert_eq!(canonical(v4), v4);
    }

    #[tokio::test]
    async fn tcp_uses_the_udp_port() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = listener.local_addr().unwrap();
        let udp = bind_udp("0.0.0.0:0".parse().unwrap()).unwrap();
        let port = udp.local_addr().unwrap().port();
        let conn = connect_same_port(port, server, Duration::from_secs(5))
            .await
            .unwrap();
        assert!(conn.same_port);
        assert_eq!(conn.stream.local_addr().unwrap().port(), port);
        let (accepted, peer) = listener.accept().await.unwrap();
        assert_eq!(peer.port(), port);
        drop(accepted);
    }

    #[test]
    fn udp_socket_asks_for_large_buffers() {
        let udp = bind_udp("127.0.0.1:0".parse().unwrap()).unwrap();
        let socket = socket2::SockRef::from(&udp);
        // Linux doubles the request and caps it at rmem_max; either way it is
        // well above the ~208 KiB default.
        let granted = socket.recv_buffer_size().unwrap();
        let cap = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .unwrap_or(usize::MAX);
        assert!(
            granted >= UDP_SOCKET_BUFFER.min(cap),
            "granted {granted}, cap {cap}"
        );
    }

    #[tokio::test]
    async fn busy_port_falls_back() {
        let server_l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = server_l.local_addr().unwrap();
        // A listener on P makes binding P for a connecting socket fail.
        let blocker = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
        let port = blocker.local_addr().unwrap().port();
        let conn = connect_same_port(port, server, Duration::from_secs(5))
            .await
            .unwrap();
        assert!(!conn.same_port);
        assert_ne!(conn.stream.local_addr().unwrap().port(), port);
    }

    #[tokio::test]
    async fn dual_stack_socket_talks_to_ipv4_and_ipv6() {
        let udp = bind_udp_dual_stack(0).unwrap();
        assert!(socket_is_dual_stack(&udp), "{:?}", udp.local_addr());
        let port = udp.local_addr().unwrap().port();
        let udp = tokio::net::UdpSocket::from_std(udp).unwrap();
        // An IPv4 peer sees our IPv4 address and port P.
        let v4 = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let to_v4 = SocketAddr::new(
            IpAddr::V6(Ipv4Addr::LOCALHOST.to_ipv6_mapped()),
            v4.local_addr().unwrap().port(),
        );
        udp.send_to(b"v4", to_v4).await.unwrap();
        let mut buf = [0u8; 8];
        let (n, from) = v4.recv_from(&mut buf).await.unwrap();
        assert_eq!(
            (&buf[..n], from),
            (&b"v4"[..], SocketAddr::from(([127, 0, 0, 1], port)))
        );
        // An IPv6 peer too, when this host has IPv6 loopback.
        if let Ok(v6) = tokio::net::UdpSocket::bind("[::1]:0").await {
            udp.send_to(b"v6", v6.local_addr().unwrap()).await.unwrap();
            let (n, from) = v6.recv_from(&mut buf).await.unwrap();
            assert_eq!(&buf[..n], b"v6");
            assert_eq!(from, SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), port));
        }
    }

    #[test]
    fn wildcard_family_matches() {
        assert_eq!(
            wildcard_for("127.0.0.1:1".parse().unwrap(), 5).to_string(),
            "0.0.0.0:5"
        );
        assert_eq!(
            wildcard_for("[::1]:1".parse().unwrap(), 5).to_string(),
            "[::]:5"
        );
    }

    #[tokio::test]
    async fn resolve_localhost() {
        let hp = HostPort::parse("127.0.0.1:9", 1).unwrap();
        assert_eq!(resolve(&hp).await.unwrap().to_string(), "127.0.0.1:9");
    }
}
