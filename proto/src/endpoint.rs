//! `Address` (spec) plus the trailing `uint16` port (extension).

use std::net::{IpAddr, SocketAddr};

/// An IP address as the spec's `Address`, with the port extension.
///
/// `port` is `None` when the peer sent the spec's layout without a port, or
/// sent port 0 (which is how "unknown" is written when a later extension field follows).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// The address.
    pub ip: IpAddr,
    /// The port, when known. Never `Some(0)`.
    pub port: Option<u16>,
}

impl Endpoint {
    /// An endpoint with a known port (a port of 0 is stored as unknown).
    pub fn new(addr: SocketAddr) -> Self {
        let port = if addr.port() == 0 {
            None
        } else {
            Some(addr.port())
        };
        Self {
            ip: addr.ip(),
            port,
        }
    }

    /// The socket address, when the port is known.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        self.port.map(|p| SocketAddr::new(self.ip, p))
    }
}

impl From<SocketAddr> for Endpoint {
    fn from(addr: SocketAddr) -> Self {
        Self::new(addr)
    }
}
