//! UPnP IGD through `igd-next`: an SSDP search (multicast to 239.255.255.250:1900)
//! finds the router's description, then SOAP calls over HTTP add the mapping
//! (`AddPortMapping`, or `AddAnyPortMapping` when our port is taken), ask for the
//! external address and finally remove it. Both `WANIPConnection:1` (IGD v1) and
//! `WANIPConnection:2` (IGD v2) are understood.

use std::future::Future;
use std::net::SocketAddr;
use std::num::NonZeroU16;
use std::time::Duration;

use igd_next::aio::Gateway;
use igd_next::aio::tokio::Tokio;
use igd_next::{AddAnyPortError, AddPortError, PortMappingProtocol, SearchOptions};

use super::config::PortMapConfig;
use super::error::PortMapError;
use super::status::{Grant, MapProtocol};

/// What the router's mapping table shows next to ours.
const DESCRIPTION: &str = "chatr";

/// A UPnP IGD mapping held at the router.
#[derive(Debug)]
pub(super) struct UpnpMapping {
    gateway: Gateway<Tokio>,
    local: SocketAddr,
    external_port: u16,
    /// Seconds asked for (0: the router grants only permanent mappings).
    lease_secs: u32,
}

async fn bounded<T, E>(
    budget: Duration,
    call: impl Future<Output = Result<T, E>>,
    wrap: impl FnOnce(E) -> PortMapError,
) -> Result<T, PortMapError> {
    tokio::time::timeout(budget, call)
        .await
        .map_err(|_| PortMapError::Timeout(budget))?
        .map_err(wrap)
}

fn protocol_of(gateway: &Gateway<Tokio>) -> MapProtocol {
    if gateway.service_type.ends_with(":2") {
        MapProtocol::UpnpIgdV2
    } else {
        MapProtocol::UpnpIgdV1
    }
}

/// Finds the LAN's IGD and maps our UDP `port` (on the address that reaches the IGD)
/// for `config.lease`.
pub(super) async fn map(
    port: NonZeroU16,
    config: &PortMapConfig,
) -> Result<(UpnpMapping, Grant), PortMapError> {
    let mut options = SearchOptions::default();
    options.timeout = Some(config.ssdp_timeout);
    options.single_search_timeout = Some(config.ssdp_timeout);
    let search = igd_next::aio::tokio::search_gateway(options);
    let gateway = bounded(
        config.ssdp_timeout + Duration::from_millis(250),
        search,
        PortMapError::NoUpnpGateway,
    )
    .await?;
    let client = super::gateway::local_ip_toward(gateway.addr.ip())?;
    let local = SocketAddr::new(client, port.get());
    let lease_secs = u32::try_from(config.lease.as_secs()).unwrap_or(u32::MAX);
    let (external_port, lease_secs) = add(&gateway, local, lease_secs, config).await?;
    let mut held = UpnpMapping {
        gateway,
        local,
        external_port,
        lease_secs,
    };
    match held.grant(config).await {
        Ok(grant) => Ok((held, grant)),
        Err(e) => {
            held.lease_secs = 0;
            let _ = held.release(config.soap_timeout).await;
            Err(e)
        }
    }
}

/// `AddPortMapping` for our own port first, then whatever port the router picks; with
/// a lease of 0 when the router grants only permanent mappings.
async fn add(
    gateway: &Gateway<Tokio>,
    local: SocketAddr,
    lease_secs: u32,
    config: &PortMapConfig,
) -> Result<(u16, u32), PortMapError> {
    let budget = config.soap_timeout;
    let udp = PortMappingProtocol::UDP;
    let same = |lease| gateway.add_port(udp, local.port(), local, lease, DESCRIPTION);
    let same_port = match tokio::time::timeout(budget, same(lease_secs)).await {
        Err(_) => return Err(PortMapError::Timeout(budget)),
        Ok(Ok(())) => Some(lease_secs),
        Ok(Err(AddPortError::OnlyPermanentLeasesSupported)) => {
            match tokio::time::timeout(budget, same(0)).await {
                Ok(Ok(())) => Some(0),
                _ => None,
            }
        }
        Ok(Err(_)) => None,
    };
    if let Some(lease) = same_port {
        return Ok((local.port(), lease));
    }
    let any = |lease| gateway.add_any_port(udp, local, lease, DESCRIPTION);
    match tokio::time::timeout(budget, any(lease_secs)).await {
        Err(_) => Err(PortMapError::Timeout(budget)),
        Ok(Ok(port)) => Ok((port, lease_secs)),
        Ok(Err(AddAnyPortError::OnlyPermanentLeasesSupported)) => {
            bounded(budget, any(0), PortMapError::UpnpAdd)
                .await
                .map(|port| (port, 0))
        }
        Ok(Err(e)) => Err(PortMapError::UpnpAdd(e)),
    }
}

impl UpnpMapping {
    async fn grant(&self, config: &PortMapConfig) -> Result<Grant, PortMapError> {
        let ip = bounded(
            config.soap_timeout,
            self.gateway.get_external_ip(),
            PortMapError::UpnpExternalIp,
        )
        .await?;
        Ok(Grant {
            protocol: protocol_of(&self.gateway),
            gateway: self.gateway.addr.ip(),
            external: SocketAddr::new(ip.to_canonical(), self.external_port),
            internal_port: self.local.port(),
            lease: (self.lease_secs > 0).then(|| Duration::from_secs(self.lease_secs.into())),
        })
    }

    /// Renews the lease: `AddPortMapping` again for the same ports (an IGD treats it as
    /// an update of our own entry).
    pub(super) async fn renew(&mut self, config: &PortMapConfig) -> Result<Grant, PortMapError> {
        let call = self.gateway.add_port(
            PortMappingProtocol::UDP,
            self.external_port,
            self.local,
            self.lease_secs,
            DESCRIPTION,
        );
        bounded(config.soap_timeout, call, PortMapError::UpnpRenew).await?;
        self.grant(config).await
    }

    /// Removes the mapping (`DeletePortMapping`).
    pub(super) async fn release(self, budget: Duration) -> Result<(), PortMapError> {
        let call = self
            .gateway
            .remove_port(PortMappingProtocol::UDP, self.external_port);
        bounded(budget, call, PortMapError::UpnpRemove).await
    }
}
