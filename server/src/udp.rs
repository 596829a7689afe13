//! The Connect UDP port: learning each client's public UDP mapping.
//!
//! Over TCP the server only sees the TCP mapping of a client's NAT, but the
//! peer-to-peer path is UDP, which a NAT maps separately (often to another
//! port). So the server also listens on UDP at the same port number as TLS.
//! An extended-layout client sends `00 'C' 'H' 'R' 01 ‖ udp_token` (the token
//! from its PacketConnected) from its punching socket; the server records the
//! source address it saw as that session's public endpoint for ClientInfo and
//! answers `00 'C' 'H' 'R' 02 ‖ Address ‖ port` with it. Unknown tokens get no
//! answer. The same port answers standard STUN Binding requests (`stun.rs`).
//! Anything else is dropped.

use std::net::SocketAddr;
use std::sync::Arc;

use chatr_proto::Endpoint;
use chatr_proto::udp::{UdpMessage, is_stun};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::stun;

/// Largest datagram we read; ours and STUN requests are far smaller.
const RECV_BUFFER: usize = 2048;

/// The reply to one datagram from `source`, if any.
pub(crate) fn handle_datagram(
    hub: &Hub,
    metrics: &Metrics,
    source: SocketAddr,
    datagram: &[u8],
) -> Option<Vec<u8>> {
    let source = SocketAddr::new(source.ip().to_canonical(), source.port());
    if is_stun(datagram) {
        return stun::respond(datagram, source);
    }
    match UdpMessage::decode(datagram) {
        Ok(UdpMessage::BindingRequest { token }) => {
            let (uuid, tcp) = hub.bind_udp(&token, source)?;
            metrics.udp_binding();
            tracing::debug!(%uuid, observed = %source, "UDP binding recorded");
            let tcp = SocketAddr::new(tcp.ip().to_canonical(), tcp.port());
            Some(
                UdpMessage::BindingResponse {
                    observed: Endpoint::new(source),
                    tcp_observed: Some(Endpoint::new(tcp)),
                }
                .to_bytes(),
            )
        }
        _ => None,
    }
}

/// Serves the UDP port until `shutdown`.
pub(crate) async fn serve(
    socket: UdpSocket,
    hub: Hub,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let mut buf = vec![0u8; RECV_BUFFER];
    loop {
        let received = tokio::select! {
            () = shutdown.cancelled() => return,
            received = socket.recv_from(&mut buf) => received,
        };
        let (len, source) = match received {
            Ok(pair) => pair,
            Err(err) => {
                // E.g. ICMP port unreachable reported on Linux: not fatal.
                tracing::debug!(error = %err, "UDP receive failed");
                continue;
            }
        };
        let Some(datagram) = buf.get(..len) else {
            continue;
        };
        if let Some(reply) = handle_datagram(&hub, &metrics, source, datagram)
            && let Err(err) = socket.send_to(&reply, source).await
        {
            tracing::debug!(error = %err, %source, "UDP reply failed");
        }
    }
}
