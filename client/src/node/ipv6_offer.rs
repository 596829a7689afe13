//! The IPv6 candidates we offer peers (`docs/PROTOCOL.md` §15, "IPv6").
//!
//! Two sources, both announced as `Ipv6Global` extra candidates in our link hints with
//! the port of our dual-stack socket:
//! - the global addresses of our own interfaces ([`crate::global_ipv6`]), re-read before
//!   every link attempt (addresses come and go with the network);
//! - what the Connect server observes when we reach it over IPv6: our session's UDP
//!   binding when the session itself runs over IPv6, else one STUN request from our
//!   socket to the server's IPv6 address when its name has one (a network that
//!   translates IPv6 too, NPTv6 or NAT66, shows up here and nowhere else).
//!
//! A client whose server address is IPv4-only still offers its interfaces' addresses.
//! Nothing is offered when the socket could not be made dual-stack (no IPv6 on the host).

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::local_hints::LocalHints;
use super::shared::Shared;
use crate::config::HostPort;
use crate::global_ipv6::{interface_addresses, is_global_unicast};
use crate::link::RawSender;
use crate::session::{OnlineInfo, SessionHandle};

/// How long the one STUN request over IPv6 may take (a server whose IPv6 does not
/// answer costs nothing else: links do not wait for it).
const OBSERVE_TIMEOUT: Duration = Duration::from_secs(3);

/// Our IPv6 candidates, kept in our link hints.
#[derive(Debug)]
pub(crate) struct Ipv6Offer {
    /// Our socket's port P.
    port: u16,
    /// Whether our socket carries IPv6 at all.
    dual_stack: bool,
    /// Our address as the server saw it over IPv6 (STUN), if it answered.
    observed: Mutex<Option<SocketAddr>>,
    hints: Arc<LocalHints>,
}

impl Ipv6Offer {
    pub(crate) fn new(port: u16, dual_stack: bool, hints: Arc<LocalHints>) -> Self {
        Self {
            port,
            dual_stack,
            observed: Mutex::new(None),
            hints,
        }
    }

    /// Whether our socket can send and receive IPv6.
    pub(crate) fn dual_stack(&self) -> bool {
        self.dual_stack
    }

    /// Our address as the server observed it over IPv6, if it did.
    pub(crate) fn observed(&self) -> Option<SocketAddr> {
        *self.observed.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Re-reads our interfaces, puts every candidate in our hints and returns them:
    /// interface addresses first, then what the server observed (when it differs).
    pub(crate) fn refresh(&self, online: Option<&OnlineInfo>) -> Vec<SocketAddr> {
        if !self.dual_stack {
            return Vec::new();
        }
        let from_session = online
            .and_then(|o| o.udp_observed)
            .and_then(|e| e.socket_addr())
            .filter(|a| a.is_ipv6());
        let endpoints = compose(
            self.port,
            &interface_addresses(),
            [self.observed(), from_session],
        );
        self.hints.set_ipv6(endpoints.clone());
        endpoints
    }

    fn set_observed(&self, addr: SocketAddr) {
        *self.observed.lock().unwrap_or_else(PoisonError::into_inner) = Some(addr);
    }
}

/// Interface addresses with our port, then the observed endpoints that are global and
/// not already listed.
fn compose(
    port: u16,
    interfaces: &[std::net::Ipv6Addr],
    observed: [Option<SocketAddr>; 2],
) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = interfaces
        .iter()
        .map(|ip| SocketAddr::new(IpAddr::V6(*ip), port))
        .collect();
    for addr in observed.into_iter().flatten() {
        let global = matches!(addr.ip(), IpAddr::V6(ip) if is_global_unicast(&ip));
        if global && addr.port() != 0 && !out.contains(&addr) {
            out.push(addr);
        }
    }
    out
}

/// What the background task that asks the server over IPv6 needs.
pub(crate) struct ObserveContext {
    pub(crate) offer: Arc<Ipv6Offer>,
    pub(crate) session: SessionHandle,
    pub(crate) shared: Arc<Shared>,
    pub(crate) raw: RawSender,
    pub(crate) server: HostPort,
    pub(crate) online_timeout: Duration,
    pub(crate) shutdown: CancellationToken,
}

/// Once the session is online over IPv4: when the server's name also has an IPv6
/// address, sends it one STUN request from our socket and records what it saw.
pub(crate) async fn observe_over_ipv6(ctx: ObserveContext) {
    if !ctx.offer.dual_stack() {
        return;
    }
    let online = tokio::select! {
        () = ctx.shutdown.cancelled() => return,
        o = ctx.session.wait_online(ctx.online_timeout) => match o {
            Ok(o) => o,
            Err(_) => return,
        },
    };
    if online.server.is_ipv6() {
        // The session's own UDP binding already tells the server's IPv6 view.
        ctx.offer.refresh(Some(&online));
        return;
    }
    let Ok(addrs) = tokio::net::lookup_host((ctx.server.host.as_str(), ctx.server.port)).await
    else {
        return;
    };
    let Some(server_v6) = addrs
        .filter(|a| matches!(a.ip(), IpAddr::V6(ip) if ip.to_ipv4_mapped().is_none()))
        .find(|a| !a.ip().is_unspecified())
    else {
        return;
    };
    let probe = super::stun_request(&ctx.shared, &ctx.raw, server_v6, OBSERVE_TIMEOUT);
    let mapped = tokio::select! {
        () = ctx.shutdown.cancelled() => return,
        r = probe => r,
    };
    match mapped {
        Ok(mapped) => {
            tracing::debug!(server = %server_v6, %mapped, "the server observed us over IPv6");
            ctx.offer.set_observed(mapped);
            ctx.offer.refresh(Some(&online));
        }
        Err(err) => tracing::debug!(server = %server_v6, %err, "no STUN answer over IPv6"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interfaces_first_then_new_global_observations() {
        let iface: std::net::Ipv6Addr = "2001:2:0:3::2".parse().unwrap();
        let same: SocketAddr = "[2001:2:0:3::2]:4000".parse().unwrap();
        let translated: SocketAddr = "[2a00::7]:5000".parse().unwrap();
        let loopback: SocketAddr = "[::1]:4000".parse().unwrap();
        assert_eq!(
            compose(4000, &[iface], [Some(same), Some(translated)]),
            vec![same, translated]
        );
        assert_eq!(compose(4000, &[], [Some(loopback), None]), vec![]);
        assert_eq!(
            compose(4000, &[], [None, Some(translated)]),
            vec![translated]
        );
    }
}
