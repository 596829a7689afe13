//! What the router granted, in a form `chatr status` can print.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use super::config::PortMapMode;
use super::error::PortMapError;

/// The protocol a mapping was granted with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MapProtocol {
    /// Port Control Protocol (RFC 6887).
    Pcp,
    /// NAT Port Mapping Protocol (RFC 6886).
    NatPmp,
    /// UPnP Internet Gateway Device, `WANIPConnection` service version 1.
    UpnpIgdV1,
    /// UPnP Internet Gateway Device, `WANIPConnection` service version 2.
    UpnpIgdV2,
}

impl fmt::Display for MapProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MapProtocol::Pcp => "PCP",
            MapProtocol::NatPmp => "NAT-PMP",
            MapProtocol::UpnpIgdV1 => "UPnP IGD v1",
            MapProtocol::UpnpIgdV2 => "UPnP IGD v2",
        })
    }
}

/// A mapping the router granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// How it was asked for.
    pub protocol: MapProtocol,
    /// The router that granted it.
    pub gateway: IpAddr,
    /// The public endpoint that now reaches our UDP socket.
    pub external: SocketAddr,
    /// Our UDP socket's port.
    pub internal_port: u16,
    /// How long the router keeps it unless renewed (`None`: until removed, a UPnP
    /// router that grants only permanent mappings).
    pub lease: Option<Duration>,
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} from {} maps {} to our UDP port {}",
            self.protocol, self.gateway, self.external, self.internal_port
        )?;
        match self.lease {
            Some(lease) => write!(
                f,
                ", lease {} s (renewed every {} s)",
                lease.as_secs(),
                super::schedule::renew_after(lease).as_secs()
            ),
            None => f.write_str(", permanent until we remove it"),
        }
    }
}

/// Where port mapping stands.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum PortMapStatus {
    /// Turned off in the options (`--port-mapping off`).
    Off,
    /// Still asking the router.
    Asking,
    /// The router granted a mapping; peers get it as a candidate.
    Granted(Grant),
    /// No router answered a port-mapping request in the modes tried.
    NoRouter {
        /// The modes tried.
        mode: PortMapMode,
        /// The last protocol's error (why it did not answer).
        last: Arc<PortMapError>,
    },
    /// A router answered but did not grant a mapping.
    Refused(Arc<PortMapError>),
    /// The client is shutting down; the mapping was removed (or its removal attempted).
    Stopped,
}

impl PortMapStatus {
    /// Whether the attempt has reached an answer (anything but [`PortMapStatus::Asking`]).
    pub fn is_settled(&self) -> bool {
        !matches!(self, PortMapStatus::Asking)
    }

    /// The granted mapping, if any.
    pub fn grant(&self) -> Option<&Grant> {
        match self {
            PortMapStatus::Granted(g) => Some(g),
            _ => None,
        }
    }
}

impl fmt::Display for PortMapStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortMapStatus::Off => f.write_str("not asked: port mapping is turned off"),
            PortMapStatus::Asking => f.write_str("still asking the router for a port mapping"),
            PortMapStatus::Granted(grant) => grant.fmt(f),
            PortMapStatus::NoRouter { mode, last } => {
                let tried = match mode {
                    PortMapMode::Auto | PortMapMode::Off => "PCP, NAT-PMP or UPnP IGD",
                    PortMapMode::Pcp => "PCP",
                    PortMapMode::NatPmp => "NAT-PMP",
                    PortMapMode::Upnp => "UPnP IGD",
                };
                write!(
                    f,
                    "no router answered a port-mapping request ({tried}; last: {last}); \
                     links punch without one"
                )
            }
            PortMapStatus::Refused(e) => write!(
                f,
                "the router answered but granted no mapping ({e}); links punch without one"
            ),
            PortMapStatus::Stopped => f.write_str("stopped; the mapping was removed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grant_says_protocol_endpoint_and_lease() {
        let grant = Grant {
            protocol: MapProtocol::Pcp,
            gateway: "192.168.1.1".parse().unwrap(),
            external: "192.0.31.12:40000".parse().unwrap(),
            internal_port: 40000,
            lease: Some(Duration::from_secs(7200)),
        };
        let text = PortMapStatus::Granted(grant).to_string();
        assert_eq!(
            text,
            "PCP from 192.168.1.1 maps 192.0.31.12:40000 to our UDP port 40000, \
             lease 7200 s (renewed every 3600 s)"
        );
    }

    #[test]
    fn no_router_is_said_in_plain_words() {
        let status = PortMapStatus::NoRouter {
            mode: PortMapMode::Auto,
            last: Arc::new(PortMapError::NoUpnpGateway(
                igd_next::SearchError::NoResponseWithinTimeout,
            )),
        };
        let text = status.to_string();
        assert!(text.starts_with("no router answered"), "{text}");
        assert!(text.contains("PCP, NAT-PMP or UPnP IGD"), "{text}");
        assert!(!status.is_settled() || status.grant().is_none());
        assert!(!PortMapStatus::Asking.is_settled());
    }
}
