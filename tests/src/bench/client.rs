//! A minimal Connect client written from the spec, for generating load.
//!
//! It speaks raw frames ([`chatr_proto::decode_frame`] / [`Packet::encode`]) over
//! tokio-rustls and keeps as little per-connection state as possible (one small
//! read buffer), so that the benchmark measures the server, not this client.
//! [`Conn::recv`] is cancel-safe (its only await is a `read_buf` into the
//! connection's own buffer), so one task can `select!` over several connections.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;

use chatr_proto::{
    CHANNEL_BINDING_EXPORTER_LABEL, Endpoint, Packet, PacketConnect, PacketDisconnect,
    VERSION_CURRENT, decode_frame,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::bench::BenchError;
use crate::bench::identity::Identity;

/// How much the read buffer grows by before a read.
const READ_CHUNK: usize = 256;

/// One TLS connection to a Connect server (or to the bare baseline).
#[derive(Debug)]
pub struct Conn {
    tls: TlsStream<TcpStream>,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    local: SocketAddr,
}

/// `IP_BIND_ADDRESS_NO_PORT`: bind the source address now, pick the port at
/// connect time (by 4-tuple), so 100 000 connections from a few source
/// addresses do not run out of ports at bind.
fn bind_address_no_port(socket: &TcpSocket) {
    let one: libc::c_int = 1;
    // SAFETY: valid fd, valid pointer/length for an int option. A failure only
    // means the kernel picks the port at bind time, which still works.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

impl Conn {
    /// TCP connect (from `source` when given) and TLS handshake.
    pub async fn connect(
        source: Option<IpAddr>,
        server: SocketAddr,
        tls: &TlsConnector,
    ) -> Result<Self, BenchError> {
        let socket = if server.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(|e| BenchError::io("socket", e))?;
        if let Some(ip) = source {
            bind_address_no_port(&socket);
            socket
                .bind(SocketAddr::new(ip, 0))
                .map_err(|e| BenchError::io(format!("bind {ip}"), e))?;
        }
        let tcp = socket
            .connect(server)
            .await
            .map_err(|e| BenchError::io(format!("connect {server}"), e))?;
        let _ = tcp.set_nodelay(true);
        let local = tcp
            .local_addr()
            .map_err(|e| BenchError::io("local_addr", e))?;
        let tls = tls
            .connect(crate::bench::tls::server_name(), tcp)
            .await
            .map_err(|e| BenchError::io("TLS handshake", e))?;
        Ok(Self {
            tls,
            rbuf: Vec::new(),
            wbuf: Vec::new(),
            local,
        })
    }

    /// Our TCP source address (what the server sees).
    pub fn local(&self) -> SocketAddr {
        self.local
    }

    /// Our endpoint as a packet field.
    pub fn endpoint(&self) -> Endpoint {
        Endpoint::new(self.local)
    }

    /// The channel-binding exporter value of this TLS connection.
    pub fn exporter(&self) -> Result<[u8; 32], BenchError> {
        Ok(self.tls.get_ref().1.export_keying_material(
            [0u8; 32],
            CHANNEL_BINDING_EXPORTER_LABEL,
            None,
        )?)
    }

    /// Logs in as `id` with a version-2 (channel-bound) PacketConnect and waits
    /// for PacketConnected. A PacketDisconnect instead is an error carrying its message.
    pub async fn login(&mut self, id: &Identity) -> Result<(), BenchError> {
        let signature = id.sign_v2(&self.exporter()?);
        self.send(&Packet::Connect(PacketConnect {
            version: VERSION_CURRENT,
            uuid: id.uuid,
            signature,
        }))
        .await?;
        loop {
            match self.recv().await? {
                Some(Packet::Connected(_)) => return Ok(()),
                // A ping may only come after Connected, but be lenient with order.
                Some(Packet::Ping(_)) => {}
                Some(Packet::Disconnect(d)) => {
                    return Err(BenchError::Protocol(format!(
                        "login refused: {:?}",
                        d.message
                    )));
                }
                Some(other) => {
                    return Err(BenchError::Protocol(format!(
                        "expected PacketConnected, got {}",
                        other.name()
                    )));
                }
                None => return Err(BenchError::Closed("before PacketConnected".into())),
            }
        }
    }

    /// Writes one packet and flushes it.
    pub async fn send(&mut self, packet: &Packet) -> Result<(), BenchError> {
        self.wbuf.clear();
        packet.encode(&mut self.wbuf);
        self.send_raw_buffered().await
    }

    /// Writes several packets in one TLS write.
    pub async fn send_all(&mut self, packets: &[Packet]) -> Result<(), BenchError> {
        self.wbuf.clear();
        for p in packets {
            p.encode(&mut self.wbuf);
        }
        self.send_raw_buffered().await
    }

    async fn send_raw_buffered(&mut self) -> Result<(), BenchError> {
        self.tls
            .write_all(&self.wbuf)
            .await
            .map_err(|e| BenchError::io("write", e))?;
        self.tls
            .flush()
            .await
            .map_err(|e| BenchError::io("flush", e))?;
        // Do not keep a large buffer per connection.
        if self.wbuf.capacity() > 4096 {
            self.wbuf = Vec::new();
        }
        Ok(())
    }

    /// The next packet; `None` on a clean close. Cancel-safe.
    pub async fn recv(&mut self) -> Result<Option<Packet>, BenchError> {
        loop {
            if !self.rbuf.is_empty() {
                match decode_frame(&self.rbuf) {
                    Ok((packet, used)) => {
                        self.rbuf.drain(..used);
                        if self.rbuf.is_empty() && self.rbuf.capacity() > 4 * READ_CHUNK {
                            self.rbuf = Vec::new();
                        }
                        return Ok(Some(packet));
                    }
                    Err(e) if e.is_incomplete() => {}
                    Err(e) => return Err(BenchError::Protocol(format!("invalid frame: {e}"))),
                }
            }
            self.rbuf.reserve(READ_CHUNK);
            let n = self
                .tls
                .read_buf(&mut self.rbuf)
                .await
                .map_err(|e| BenchError::io("read", e))?;
            if n == 0 {
                return if self.rbuf.is_empty() {
                    Ok(None)
                } else {
                    Err(BenchError::Closed("in the middle of a frame".into()))
                };
            }
        }
    }

    /// Sends PacketDisconnect (the polite goodbye) and shuts the write side.
    pub async fn goodbye(mut self) {
        let _ = self
            .send(&Packet::Disconnect(PacketDisconnect::new("bench done")))
            .await;
        let _ = self.tls.shutdown().await;
    }
}
