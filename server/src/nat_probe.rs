//! NAT probe ports: extra UDP ports on the server's address that answer STUN Binding
//! requests and nothing else.
//!
//! A client behind a NAT sends one Binding request from its punching socket to the
//! Connect UDP port and one to each probe port, in order. Whether the answers report
//! one public port or several tells it whether its NAT maps per destination, and how
//! the ports differ (by a fixed step, or at random) tells it whether a peer can predict
//! the next one (`docs/PROTOCOL.md` §10.7). The ports are announced to version-3
//! sessions in `PacketConnected` (§5, extension 22). They hold no session state: a
//! Binding answer is no bigger than its request, so they cannot amplify traffic, and
//! they say nothing the source does not already know (its own public address).

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use crate::error::ServerError;
use crate::stun;

/// The probe ports for a Connect port bound at `connect`: `count` ports from
/// `connect + 2` (the API usually sits on `+ 1`), or any free ports when the configured
/// listen port is 0 (tests).
pub(crate) async fn bind(
    configured: SocketAddr,
    connect: SocketAddr,
    count: usize,
) -> Result<Vec<Arc<UdpSocket>>, ServerError> {
    let mut sockets = Vec::with_capacity(count);
    for i in 0..count {
        let port = if configured.port() == 0 {
            0
        } else {
            let offset = u16::try_from(i + 2).unwrap_or(u16::MAX);
            connect.port().checked_add(offset).unwrap_or(0)
        };
        let addr = SocketAddr::new(connect.ip(), port);
        let socket = UdpSocket::bind(addr)
            .await
            .map_err(|source| ServerError::Bind {
                addr,
                protocol: "UDP",
                source,
            })?;
        sockets.push(Arc::new(socket));
    }
    Ok(sockets)
}

/// The ports `sockets` are bound to (what sessions are told).
pub(crate) fn ports(sockets: &[Arc<UdpSocket>]) -> Vec<u16> {
    sockets
        .iter()
        .filter_map(|s| s.local_addr().ok())
        .map(|a| a.port())
        .collect()
}

/// Answers STUN Binding requests on `socket` until `shutdown`; drops anything else.
pub(crate) async fn serve(socket: Arc<UdpSocket>, shutdown: CancellationToken) {
    // A STUN request we answer has no attributes we read beyond the header; 2 KiB is
    // ample and anything longer is truncated, which `stun::respond` refuses.
    let mut buf = vec![0u8; 2048];
    loop {
        let (len, source) = tokio::select! {
            () = shutdown.cancelled() => return,
            r = socket.recv_from(&mut buf) => match r {
                Ok(r) => r,
                Err(err) => {
                    tracing::debug!(error = %err, "NAT probe port receive failed");
                    continue;
                }
            },
        };
        let Some(request) = buf.get(..len) else {
            continue;
        };
        let observed = SocketAddr::new(source.ip().to_canonical(), source.port());
        if let Some(reply) = stun::respond(request, observed)
            && let Err(err) = socket.send_to(&reply, source).await
        {
            tracing::debug!(error = %err, %source, "NAT probe reply failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding_request(txid: [u8; 12]) -> Vec<u8> {
        let mut out = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42];
        out.extend_from_slice(&txid);
        out
    }

    #[tokio::test]
    async fn probe_ports_answer_stun_with_the_source_and_ignore_the_rest() {
        let configured: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let sockets = bind(configured, configured, 2).await.unwrap();
        let ports = ports(&sockets);
        assert_eq!(ports.len(), 2);
        assert!(ports.iter().all(|p| *p != 0));
        assert_ne!(ports[0], ports[1]);
        let shutdown = CancellationToken::new();
        for s in &sockets {
            tokio::spawn(serve(Arc::clone(s), shutdown.clone()));
        }
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let me = client.local_addr().unwrap();
        for port in &ports {
            let to = SocketAddr::new(configured.ip(), *port);
            // Not STUN: no answer (the STUN request below is answered first).
            client.send_to(b"\x00CHR\x01garbage", to).await.unwrap();
            client.send_to(&binding_request([7; 12]), to).await.unwrap();
            let mut buf = [0u8; 256];
            let (len, from) = tokio::time::timeout(
                std::time::Duration::from_secs(5),
                client.recv_from(&mut buf),
            )
            .await
            .unwrap()
            .unwrap();
            assert_eq!(from, to);
            assert_eq!(&buf[..2], &[0x01, 0x01], "a Binding success response");
            assert_eq!(&buf[8..20], &[7; 12]);
            // XOR-MAPPED-ADDRESS carries our port xor the cookie's top half.
            let reply = &buf[..len];
            let value = &reply[24..];
            let port = u16::from_be_bytes([value[2], value[3]]) ^ 0x2112;
            assert_eq!(port, me.port());
        }
        let mut buf = [0u8; 64];
        let late = tokio::time::timeout(
            std::time::Duration::from_millis(200),
            client.recv_from(&mut buf),
        )
        .await;
        assert!(late.is_err(), "non-STUN datagrams get no answer");
        shutdown.cancel();
    }

    #[tokio::test]
    async fn fixed_listen_ports_put_probe_ports_two_above() {
        // Find a free pair above some port by binding the connect socket first.
        let connect = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = connect.local_addr().unwrap();
        match bind(addr, addr, 1).await {
            Ok(sockets) => assert_eq!(ports(&sockets), vec![addr.port() + 2]),
            // Someone else holds +2: the error names it.
            Err(ServerError::Bind { addr: a, .. }) => assert_eq!(a.port(), addr.port() + 2),
            Err(other) => panic!("unexpected error {other}"),
        }
    }
}
