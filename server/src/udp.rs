//! The Connect UDP port: learning each client's public UDP mapping, and the UDP relay.
//!
//! Over TCP the server only sees the TCP mapping of a client's NAT, but the
//! peer-to-peer path is UDP, which a NAT maps separately (often to another
//! port). So the server also listens on UDP at the same port number as TLS.
//! An extended-layout client sends `00 'C' 'H' 'R' 01 ‖ udp_token` (the token
//! from its PacketConnected) from its punching socket — a version-3 client the
//! authenticated `… 03 ‖ token ‖ counter ‖ tag` — and the server records the
//! source address it saw as that session's public endpoint for ClientInfo and
//! answers `00 'C' 'H' 'R' 02 ‖ Address ‖ port` with it. Unknown tokens, and
//! requests that fail authentication, get no answer. The same port answers
//! standard STUN Binding requests (`stun.rs`) and carries the UDP relay
//! (`relay/`: `… 30 ‖ relay id ‖ datagram`). Anything else is dropped.
//!
//! Receives and sends go through quinn-udp, so the kernel hands over a burst of
//! relayed datagrams from one sender in one receive (GRO) and the relay forwards
//! it in one send (GSO), instead of a system call per datagram.

use std::io::IoSliceMut;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use chatr_proto::Endpoint;
use chatr_proto::udp::{
    TYPE_RELAY_FROM_SERVER, TYPE_RELAY_TO_SERVER, UdpMessage, control_type, is_stun,
};
use quinn_udp::{RecvMeta, Transmit, UdpSocketState};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::relay::{Relay, UdpForward};
use crate::stun;

/// Receive slots per system call.
const SLOTS: usize = 8;

/// Bytes per receive slot: room for a full GRO batch (64 segments of a 1500-byte MTU).
const SLOT_BYTES: usize = 64 * 1024;

/// Kernel socket buffers for the port: a relayed bulk transfer bursts well past the
/// default ~208 KiB.
const SOCKET_BUFFER: usize = 4 * 1024 * 1024;

/// The reply to one (non-relay) datagram from `source`, if any.
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
    let request = UdpMessage::decode(datagram).ok()?;
    let (uuid, tcp) = match &request {
        UdpMessage::BindingRequest { token } => hub.bind_udp(token, source)?,
        UdpMessage::BindingRequestAuth { .. } => hub.bind_udp_auth(&request, source)?,
        _ => return None,
    };
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

/// Serves the UDP port until `shutdown`.
pub(crate) async fn serve(
    socket: Arc<UdpSocket>,
    hub: Hub,
    relay: Relay,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let state = match UdpSocketState::new((&*socket).into()) {
        Ok(state) => state,
        Err(err) => {
            tracing::error!(error = %err, "UDP port setup failed; UDP binding, STUN and relay are off");
            return;
        }
    };
    for result in [
        state.set_recv_buffer_size((&*socket).into(), SOCKET_BUFFER),
        state.set_send_buffer_size((&*socket).into(), SOCKET_BUFFER),
    ] {
        if let Err(err) = result {
            tracing::debug!(error = %err, "could not enlarge a UDP socket buffer");
        }
    }
    relay.set_udp_socket(Arc::clone(&socket));
    let mut storage = vec![0u8; SLOTS * SLOT_BYTES];
    let mut metas = [RecvMeta::default(); SLOTS];
    loop {
        let received = {
            let mut bufs: Vec<IoSliceMut<'_>> = storage
                .chunks_mut(SLOT_BYTES)
                .map(IoSliceMut::new)
                .collect();
            let recv = async {
                loop {
                    socket.readable().await?;
                    match socket.try_io(Interest::READABLE, || {
                        state.recv((&*socket).into(), &mut bufs, &mut metas)
                    }) {
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                        other => return other,
                    }
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                received = recv => received,
            }
        };
        let count = match received {
            Ok(count) => count,
            Err(err) => {
                // E.g. ICMP port unreachable reported on Linux: not fatal.
                tracing::debug!(error = %err, "UDP receive failed");
                continue;
            }
        };
        let now = Instant::now();
        for (meta, slot) in metas.iter().zip(storage.chunks_mut(SLOT_BYTES)).take(count) {
            let Some(batch) = slot.get_mut(..meta.len) else {
                continue;
            };
            handle_batch(&socket, &state, &hub, &relay, &metrics, meta, batch, now).await;
        }
    }
}

/// One receive slot: a relayed batch is forwarded as a whole, anything else datagram by
/// datagram.
#[allow(clippy::too_many_arguments)]
async fn handle_batch(
    socket: &Arc<UdpSocket>,
    state: &UdpSocketState,
    hub: &Hub,
    relay: &Relay,
    metrics: &Metrics,
    meta: &RecvMeta,
    batch: &mut [u8],
    now: Instant,
) {
    let source = meta.addr;
    if matches!(
        control_type(batch),
        Some(TYPE_RELAY_TO_SERVER | TYPE_RELAY_FROM_SERVER)
    ) {
        if let UdpForward::Send { to, len, stride } =
            relay.forward_udp(source, batch, meta.stride, now)
            && let Some(contents) = batch.get(..len)
        {
            let to = map_destination(socket, to);
            let transmit = Transmit {
                destination: to,
                ecn: None,
                contents,
                segment_size: (stride < len).then_some(stride),
                src_ip: None,
            };
            send(socket, state, &transmit, metrics).await;
        }
        return;
    }
    let stride = if meta.stride == 0 {
        batch.len()
    } else {
        meta.stride
    };
    for datagram in batch.chunks(stride.max(1)) {
        match handle_datagram(hub, metrics, source, datagram) {
            Some(reply) => {
                if let Err(err) = socket.send_to(&reply, source).await {
                    tracing::debug!(error = %err, %source, "UDP reply failed");
                }
            }
            None => route_binding(socket, hub, source, datagram),
        }
    }
}

/// In a cluster, a binding request whose token no session here holds may be for a
/// session on another node (the client's datagram reached this node: a UDP load
/// balancer, another address of the same name). The node that issued the token
/// (named by its first bytes) checks it and records the mapping *this* node saw;
/// its reply is sent from here.
fn route_binding(socket: &Arc<UdpSocket>, hub: &Hub, source: SocketAddr, datagram: &[u8]) {
    let token = match UdpMessage::decode(datagram) {
        Ok(UdpMessage::BindingRequest { token } | UdpMessage::BindingRequestAuth { token, .. }) => {
            token
        }
        _ => return,
    };
    if hub.has_token(&token) {
        return;
    }
    let source = SocketAddr::new(source.ip().to_canonical(), source.port());
    let Some(routed) = hub.cluster().bind_elsewhere(&token, datagram, source) else {
        return;
    };
    let socket = Arc::clone(socket);
    tokio::spawn(async move {
        if let Some(reply) = routed.await {
            let to = map_destination(&socket, source);
            if let Err(err) = socket.send_to(&reply, to).await {
                tracing::debug!(error = %err, %source, "routed UDP reply failed");
            }
        }
    });
}

/// Sends one (GSO) transmit, waiting for the socket once if its buffer is full.
async fn send(
    socket: &UdpSocket,
    state: &UdpSocketState,
    transmit: &Transmit<'_>,
    metrics: &Metrics,
) {
    for _ in 0..2 {
        match socket.try_io(Interest::WRITABLE, || state.send(socket.into(), transmit)) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if socket.writable().await.is_err() {
                    break;
                }
            }
            Err(err) => {
                tracing::debug!(error = %err, to = %transmit.destination, "relay send failed");
                break;
            }
        }
    }
    metrics.relay_dropped(crate::metrics::RelayDrop::SendFailed);
}

/// An IPv6 socket reaches IPv4 clients through their mapped address.
pub(crate) fn map_destination(socket: &UdpSocket, to: SocketAddr) -> SocketAddr {
    match (socket.local_addr(), to) {
        (Ok(local), SocketAddr::V4(v4)) if local.is_ipv6() => {
            SocketAddr::new(std::net::IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port())
        }
        _ => to,
    }
}
