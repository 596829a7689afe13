//! PCP (RFC 6887) and NAT-PMP (RFC 6886) through `crab_nat`: both are one UDP
//! request to the default gateway's port 5351 and one answer.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU16;
use std::time::Duration;

use crab_nat::{InternetProtocol, PortMapping, PortMappingOptions, PortMappingType, TimeoutConfig};

use super::config::PortMapConfig;
use super::error::PortMapError;
use super::status::{Grant, MapProtocol};

/// Retries after the first request (each waits twice as long as the one before).
const RETRIES: usize = 2;

/// A PCP or NAT-PMP mapping held at the router.
#[derive(Debug)]
pub(super) struct PcpMapping {
    mapping: PortMapping,
    external_ip: IpAddr,
}

/// Which of the two to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Flavour {
    /// PCP, falling back to NAT-PMP if the router answers that it speaks only that.
    PcpThenNatPmp,
    /// NAT-PMP only.
    NatPmp,
}

fn timeouts(config: &PortMapConfig) -> TimeoutConfig {
    TimeoutConfig {
        initial_timeout: config.pcp_timeout,
        max_retries: RETRIES,
        max_retry_timeout: None,
    }
}

/// The longest a request can take with `config`'s timeouts (every retry unanswered),
/// plus a margin: the outer budget we hold the crate to.
fn budget(config: &PortMapConfig) -> Duration {
    let waits: u32 = (0..=RETRIES as u32).map(|i| 1 << i).sum();
    config.pcp_timeout * waits + Duration::from_millis(250)
}

/// Asks `gateway` to map UDP `port` of `client` for `config.lease`.
pub(super) async fn map(
    flavour: Flavour,
    gateway: Ipv4Addr,
    client: IpAddr,
    port: NonZeroU16,
    config: &PortMapConfig,
) -> Result<(PcpMapping, Grant), PortMapError> {
    let options = PortMappingOptions {
        // Ask for the same port outside: peers that guess ports guess it first.
        external_port: Some(port),
        lifetime_seconds: Some(u32::try_from(config.lease.as_secs()).unwrap_or(u32::MAX)),
        timeout_config: Some(timeouts(config)),
    };
    let gw = crab_nat::GatewayAddress::IpV4(gateway);
    let budget = budget(config);
    let request = async {
        match flavour {
            Flavour::PcpThenNatPmp => {
                PortMapping::new(gw, client, InternetProtocol::Udp, port, options)
                    .await
                    .map_err(PortMapError::Pcp)
            }
            Flavour::NatPmp => {
                crab_nat::natpmp::port_mapping(gw, InternetProtocol::Udp, port, options)
                    .await
                    .map_err(|e| PortMapError::Pcp(e.into()))
            }
        }
    };
    let mapping = tokio::time::timeout(budget, request)
        .await
        .map_err(|_| PortMapError::Timeout(budget))??;
    let (protocol, external_ip) = match mapping.mapping_type() {
        PortMappingType::Pcp { external_ip, .. } => (MapProtocol::Pcp, external_ip),
        PortMappingType::NatPmp => {
            let ask = crab_nat::natpmp::external_address(gw, Some(timeouts(config)));
            let ip = tokio::time::timeout(budget, ask)
                .await
                .map_err(|_| PortMapError::Timeout(budget))?
                .map_err(PortMapError::NatPmpAddress)?;
            (MapProtocol::NatPmp, IpAddr::V4(ip))
        }
    };
    let held = PcpMapping {
        mapping,
        external_ip: external_ip.to_canonical(),
    };
    let grant = held.grant(protocol, gateway);
    Ok((held, grant))
}

impl PcpMapping {
    fn grant(&self, protocol: MapProtocol, gateway: Ipv4Addr) -> Grant {
        Grant {
            protocol,
            gateway: IpAddr::V4(gateway),
            external: SocketAddr::new(self.external_ip, self.mapping.external_port().get()),
            internal_port: self.mapping.internal_port().get(),
            lease: Some(Duration::from_secs(self.mapping.lifetime().into())),
        }
    }

    /// Renews the mapping for another lease; the router may move it to another port.
    pub(super) async fn renew(
        &mut self,
        protocol: MapProtocol,
        config: &PortMapConfig,
    ) -> Result<Grant, PortMapError> {
        let budget = budget(config);
        tokio::time::timeout(budget, self.mapping.renew())
            .await
            .map_err(|_| PortMapError::Timeout(budget))?
            .map_err(PortMapError::Pcp)?;
        if let PortMappingType::Pcp { external_ip, .. } = self.mapping.mapping_type() {
            self.external_ip = external_ip.to_canonical();
        }
        let gateway = match self.mapping.gateway() {
            crab_nat::GatewayAddress::IpV4(v4) => v4,
            crab_nat::GatewayAddress::IpV6(..) => Ipv4Addr::UNSPECIFIED,
        };
        Ok(self.grant(protocol, gateway))
    }

    /// Removes the mapping at the router (a request with lifetime 0).
    pub(super) async fn release(self, budget: Duration) -> Result<(), PortMapError> {
        tokio::time::timeout(budget, self.mapping.try_drop())
            .await
            .map_err(|_| PortMapError::Timeout(budget))?
            .map_err(|(e, _)| PortMapError::Pcp(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_outer_budget_covers_every_retry() {
        let config = PortMapConfig::default();
        // 250 + 500 + 1000 ms of waiting, plus the margin.
        assert_eq!(budget(&config), Duration::from_millis(2000));
    }
}
