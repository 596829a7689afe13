//! The background task that asks for a mapping, keeps it, and gives it back.
//!
//! Nothing waits for it: it publishes what it has on a watch channel (for
//! `Client::port_mapping`) and in the link hints (for peers), and the rest of the
//! client carries on whatever the router does.

use std::net::{IpAddr, Ipv4Addr};
use std::num::NonZeroU16;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::config::{PortMapConfig, PortMapMode};
use super::error::PortMapError;
use super::pcp::{self, Flavour, PcpMapping};
use super::schedule::{AfterFailure, LeaseSchedule};
use super::status::{Grant, MapProtocol, PortMapStatus};
use super::{gateway, upnp};
use crate::node::LocalHints;

/// A mapping held at the router, by the protocol that made it.
#[derive(Debug)]
enum Held {
    Pcp(PcpMapping, MapProtocol),
    Upnp(upnp::UpnpMapping),
}

impl Held {
    async fn renew(&mut self, config: &PortMapConfig) -> Result<Grant, PortMapError> {
        match self {
            Held::Pcp(m, protocol) => m.renew(*protocol, config).await,
            Held::Upnp(m) => m.renew(config).await,
        }
    }

    async fn release(self, config: &PortMapConfig) -> Result<(), PortMapError> {
        match self {
            Held::Pcp(m, _) => m.release(config.release_timeout).await,
            Held::Upnp(m) => m.release(config.release_timeout).await,
        }
    }
}

/// Starts asking for a mapping of UDP `port` (unless `config` turns it off); the
/// receiver follows what the router granted.
pub(crate) fn spawn(
    config: PortMapConfig,
    port: u16,
    hints: Arc<LocalHints>,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) -> watch::Receiver<PortMapStatus> {
    let port = NonZeroU16::new(port).filter(|_| config.mode != PortMapMode::Off);
    let Some(port) = port else {
        return watch::channel(PortMapStatus::Off).1;
    };
    let (tx, rx) = watch::channel(PortMapStatus::Asking);
    tracker.spawn(run(config, port, hints, tx, shutdown));
    rx
}

async fn run(
    config: PortMapConfig,
    port: NonZeroU16,
    hints: Arc<LocalHints>,
    status: watch::Sender<PortMapStatus>,
    shutdown: CancellationToken,
) {
    loop {
        let started = Instant::now();
        // Cancelled mid-request, a grant the router makes after we stopped listening is
        // never removed by us; its lease (or the router's idle expiry) ends it.
        let attempt = tokio::select! {
            r = acquire(port, &config) => r,
            _ = shutdown.cancelled() => return,
        };
        match attempt {
            Ok((held, grant)) => {
                tracing::info!(
                    protocol = %grant.protocol,
                    external = %grant.external,
                    lease_s = grant.lease.map(|l| l.as_secs()),
                    took_ms = started.elapsed().as_millis() as u64,
                    "the router granted a port mapping"
                );
                hints.set_port_mapped(Some(grant.external));
                status.send_replace(PortMapStatus::Granted(grant.clone()));
                let kept = keep(held, grant, &config, &hints, &status, &shutdown).await;
                hints.set_port_mapped(None);
                match kept {
                    Kept::Stopped => {
                        status.send_replace(PortMapStatus::Stopped);
                        return;
                    }
                    // Lost: ask again at once (the router may have rebooted).
                    Kept::Lost(e) => {
                        tracing::info!(error = %e, "the port mapping was lost");
                        status.send_replace(PortMapStatus::Refused(Arc::new(e)));
                        continue;
                    }
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "no port mapping");
                let e = Arc::new(e);
                status.send_replace(if e.is_silence() {
                    PortMapStatus::NoRouter {
                        mode: config.mode,
                        last: e,
                    }
                } else {
                    PortMapStatus::Refused(e)
                });
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(config.retry_interval) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// How holding a mapping ended.
enum Kept {
    /// Shut down (the mapping was removed, or its removal tried).
    Stopped,
    /// Renewals failed until the lease ran out.
    Lost(PortMapError),
}

/// Renews `held` until shutdown (then removes it) or until it is lost.
async fn keep(
    mut held: Held,
    grant: Grant,
    config: &PortMapConfig,
    hints: &LocalHints,
    status: &watch::Sender<PortMapStatus>,
    shutdown: &CancellationToken,
) -> Kept {
    let mut schedule = grant
        .lease
        .map(|l| LeaseSchedule::granted(Instant::now(), l));
    loop {
        let renew_at = schedule.map(|s| tokio::time::Instant::from_std(s.next_renewal()));
        let wait = async {
            match renew_at {
                Some(at) => tokio::time::sleep_until(at).await,
                // A permanent mapping: nothing to renew.
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = wait => {}
            _ = shutdown.cancelled() => {
                match held.release(config).await {
                    Ok(()) => tracing::debug!("the port mapping was removed"),
                    Err(e) => tracing::info!(error = %e, "could not remove the port mapping"),
                }
                return Kept::Stopped;
            }
        }
        let Some(current) = schedule.as_mut() else {
            continue;
        };
        let renewed = tokio::select! {
            r = held.renew(config) => r,
            _ = shutdown.cancelled() => {
                let _ = held.release(config).await;
                return Kept::Stopped;
            }
        };
        match renewed {
            Ok(grant) => {
                tracing::debug!(external = %grant.external, "the port mapping was renewed");
                hints.set_port_mapped(Some(grant.external));
                schedule = grant
                    .lease
                    .map(|l| LeaseSchedule::granted(Instant::now(), l));
                status.send_replace(PortMapStatus::Granted(grant));
            }
            Err(e) => match current.renewal_failed(Instant::now()) {
                AfterFailure::RetryAt(_) => {
                    tracing::debug!(error = %e, "renewing the port mapping failed; retrying");
                }
                AfterFailure::Expired => return Kept::Lost(e),
            },
        }
    }
}

/// Asks the router for a mapping in the order `config.mode` says.
async fn acquire(port: NonZeroU16, config: &PortMapConfig) -> Result<(Held, Grant), PortMapError> {
    let pcp_flavour = match config.mode {
        PortMapMode::Auto | PortMapMode::Pcp => Some(Flavour::PcpThenNatPmp),
        PortMapMode::NatPmp => Some(Flavour::NatPmp),
        PortMapMode::Upnp | PortMapMode::Off => None,
    };
    let try_upnp = matches!(config.mode, PortMapMode::Auto | PortMapMode::Upnp);
    let mut refused: Option<PortMapError> = None;
    let mut last = PortMapError::NoGateway;
    if let Some(flavour) = pcp_flavour {
        match map_pcp(flavour, port, config).await {
            Ok(found) => return Ok(found),
            Err(e) if e.is_silence() => last = e,
            Err(e) => refused = Some(e),
        }
    }
    if try_upnp {
        match upnp::map(port, config).await {
            Ok((held, grant)) => return public(Held::Upnp(held), grant, config).await,
            Err(e) if e.is_silence() => last = e,
            Err(e) => refused = Some(e),
        }
    }
    Err(refused.unwrap_or(last))
}

async fn map_pcp(
    flavour: Flavour,
    port: NonZeroU16,
    config: &PortMapConfig,
) -> Result<(Held, Grant), PortMapError> {
    let gateway = gateway::default_gateway()?;
    let client = gateway::local_ip_toward(IpAddr::V4(gateway))?;
    let (held, grant) = pcp::map(flavour, gateway, client, port, config).await?;
    public(Held::Pcp(held, grant.protocol), grant, config).await
}

/// Keeps a grant only if its external address can reach us from the internet; a
/// router behind another NAT reports its own private address, useless to peers.
async fn public(
    held: Held,
    grant: Grant,
    config: &PortMapConfig,
) -> Result<(Held, Grant), PortMapError> {
    let ip = grant.external.ip();
    if is_public(ip) {
        return Ok((held, grant));
    }
    let _ = held.release(config).await;
    Err(PortMapError::NotPublic(ip))
}

fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let shared = Ipv4Addr::new(100, 64, 0, 0);
            let in_shared = u32::from(v4) & 0xffc0_0000 == u32::from(shared);
            !(v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || in_shared)
        }
        IpAddr::V6(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_ipv4_external_addresses_are_kept() {
        for private in [
            "192.168.1.1",
            "10.1.2.3",
            "100.64.3.1",
            "0.0.0.0",
            "127.0.0.1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        assert!(is_public("192.0.31.12".parse().unwrap()));
        assert!(is_public("203.0.113.5".parse().unwrap()));
    }
}
