//! Why a port mapping was not granted, renewed or removed.

use std::time::Duration;

/// A port-mapping failure, with the protocol crate's own error as the cause.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PortMapError {
    /// No IPv4 default gateway in the routing table (PCP and NAT-PMP talk to it).
    #[error("no IPv4 default gateway to ask")]
    NoGateway,
    /// Reading the routing table or finding our address toward the gateway failed.
    #[error("cannot find our address toward the router: {0}")]
    Local(#[source] std::io::Error),
    /// The PCP or NAT-PMP request failed (no answer, or the router refused).
    #[error("{0}")]
    Pcp(#[source] crab_nat::MappingFailure),
    /// NAT-PMP did not tell our external address.
    #[error("NAT-PMP external address: {0}")]
    NatPmpAddress(#[source] crab_nat::natpmp::Failure),
    /// No UPnP IGD answered the SSDP search.
    #[error("UPnP IGD search: {0}")]
    NoUpnpGateway(#[source] igd_next::SearchError),
    /// The UPnP IGD refused or failed the mapping.
    #[error("UPnP IGD AddPortMapping: {0}")]
    UpnpAdd(#[source] igd_next::AddAnyPortError),
    /// The UPnP IGD did not renew the mapping.
    #[error("UPnP IGD AddPortMapping (renewal): {0}")]
    UpnpRenew(#[source] igd_next::AddPortError),
    /// The UPnP IGD did not tell its external address.
    #[error("UPnP IGD GetExternalIPAddress: {0}")]
    UpnpExternalIp(#[source] igd_next::GetExternalIpError),
    /// The UPnP IGD did not remove the mapping.
    #[error("UPnP IGD DeletePortMapping: {0}")]
    UpnpRemove(#[source] igd_next::RemovePortError),
    /// The router reported an external address that is no use to peers.
    #[error("the router's external address {0} is not a public IPv4 address")]
    NotPublic(std::net::IpAddr),
    /// A request got no answer within its budget.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

impl PortMapError {
    /// Whether this says nobody answered (as opposed to a router that answered "no").
    pub fn is_silence(&self) -> bool {
        use crab_nat::MappingFailure as M;
        matches!(
            self,
            PortMapError::NoGateway
                | PortMapError::Local(_)
                | PortMapError::Timeout(_)
                | PortMapError::NoUpnpGateway(_)
                | PortMapError::Pcp(M::Pcp(
                    crab_nat::pcp::Failure::Timeout | crab_nat::pcp::Failure::Socket(_)
                ))
                | PortMapError::Pcp(M::NatPmp(
                    crab_nat::natpmp::Failure::Timeout | crab_nat::natpmp::Failure::Socket(_)
                ))
        )
    }
}
