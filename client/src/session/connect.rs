//! Opening a connection to the Connect server: resolve, TCP from port P (shared
//! with the UDP socket), TLS with the configured trust, and the channel-binding
//! exporter the login signature covers.
//!
//! The driver takes connections through [`Connect`], so it runs over any byte
//! stream: [`ServerTls`] in the client, in-memory pipes in its tests.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use chatr_proto::{CHANNEL_BINDING_EXPORTER_LABEL, CHANNEL_BINDING_EXPORTER_LEN};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::config::SessionConfig;
use super::error::{ConnectError, SessionError};
use crate::net::{connect_same_port, resolve};
use crate::trust::{is_cert_rejection, server_name};

/// A connection to the Connect server, ready for a session to log in on.
#[derive(Debug)]
pub struct Connected<S> {
    /// The (TLS) byte stream.
    pub stream: S,
    /// The server's address (TCP, and UDP for the binding messages).
    pub server: SocketAddr,
    /// Our end of the TCP connection.
    pub local: SocketAddr,
    /// Whether the TCP connection uses the UDP socket's port P.
    pub same_port: bool,
    /// The TLS exporter value the login signature is bound to.
    pub exporter: [u8; CHANNEL_BINDING_EXPORTER_LEN],
    /// The TLS exporter value that keys authenticated UDP bindings (version 3).
    pub binding_key: Option<[u8; chatr_proto::udp::BINDING_KEY_LEN]>,
    /// How long the TCP connect took: a round-trip estimate to the server.
    pub rtt: Option<std::time::Duration>,
}

/// Opens connections for the session driver, one per round.
pub(crate) trait Connect: Send + Sync + 'static {
    /// The stream a session runs over.
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    /// Opens one connection (the driver bounds it with `connect_timeout`).
    fn connect(
        &self,
        config: &SessionConfig,
    ) -> impl Future<Output = Result<Connected<Self::Stream>, SessionError>> + Send;
}

/// The real thing: TLS over TCP from port P, see [`connect`].
pub(crate) struct ServerTls;

impl Connect for ServerTls {
    type Stream = TlsStream<TcpStream>;

    fn connect(
        &self,
        config: &SessionConfig,
    ) -> impl Future<Output = Result<Connected<Self::Stream>, SessionError>> + Send {
        connect(config)
    }
}

/// Resolves the server, connects TCP from `config.local_port` (another port if
/// P is busy), does TLS with `config.tls` and computes the channel-binding
/// exporter.
pub async fn connect(
    config: &SessionConfig,
) -> Result<Connected<TlsStream<TcpStream>>, SessionError> {
    let unreachable = |cause: ConnectError| SessionError::Unreachable {
        server: config.server.to_string(),
        cause,
    };
    let server = resolve(&config.server)
        .await
        .map_err(|e| unreachable(ConnectError::Resolve(Arc::new(e))))?;
    let started = std::time::Instant::now();
    let tcp = connect_same_port(config.local_port, server, config.connect_timeout)
        .await
        .map_err(|e| unreachable(ConnectError::Tcp(Arc::new(e))))?;
    let rtt = started.elapsed();
    let local = tcp
        .stream
        .local_addr()
        .map_err(|e| unreachable(ConnectError::Tcp(Arc::new(e))))?;
    let name = server_name(&config.server.host)
        .map_err(|_| unreachable(ConnectError::BadServerName(config.server.host.clone())))?;
    let tls = TlsConnector::from(config.tls.clone())
        .connect(name, tcp.stream)
        .await
        .map_err(|e| match is_cert_rejection(&e) {
            Some(why) => SessionError::ServerCertMismatch(why),
            None => unreachable(ConnectError::Tls(Arc::new(e))),
        })?;
    let exporter = tls
        .get_ref()
        .1
        .export_keying_material(
            [0u8; CHANNEL_BINDING_EXPORTER_LEN],
            CHANNEL_BINDING_EXPORTER_LABEL,
            None,
        )
        .map_err(|e| unreachable(ConnectError::Exporter(e)))?;
    let binding_key = tls
        .get_ref()
        .1
        .export_keying_material(
            [0u8; chatr_proto::udp::BINDING_KEY_LEN],
            chatr_proto::UDP_BINDING_EXPORTER_LABEL,
            None,
        )
        .ok();
    Ok(Connected {
        stream: tls,
        server,
        local,
        same_port: tcp.same_port,
        exporter,
        binding_key,
        rtt: Some(rtt),
    })
}
