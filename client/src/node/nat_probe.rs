//! NAT behaviour discovery from the link socket (`docs/PROTOCOL.md` §10.7).
//!
//! After each login to a server that announces NAT probe ports, one STUN Binding
//! request goes to the Connect UDP port and then one to each probe port, each only
//! after the previous one was answered, so the NAT allocates its mappings in that
//! order. [`crate::nat::classify`] turns the answers into the hint our requests and
//! accepts carry. A NAT found to allocate in sequence is measured again (probe ports
//! only) just before each link attempt, so the peer predicts from a fresh port.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chatr_proto::{NatHint, NatMapping};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::local_hints::LocalHints;
use super::shared::Shared;
use crate::link::RawSender;
use crate::nat::{Observation, classify};
use crate::session::{OnlineInfo, SessionHandle, SessionStatus};
use crate::stun;

/// How long one port may take to answer (its request is sent again meanwhile).
const PORT_TIMEOUT: Duration = Duration::from_millis(1500);
/// Resend interval of an unanswered request.
const RESEND: Duration = Duration::from_millis(250);
/// How long a link attempt waits for the first measurement after login.
const FIRST_MEASUREMENT: Duration = Duration::from_millis(1500);

/// What the measurement needs from the client.
#[derive(Clone)]
pub(crate) struct Prober {
    pub(crate) raw: RawSender,
    pub(crate) shared: Arc<Shared>,
    pub(crate) hints: Arc<LocalHints>,
    pub(crate) port: u16,
    /// The last measurement (`None` until one finished).
    pub(crate) measured: Arc<watch::Sender<Option<NatHint>>>,
}

impl Prober {
    /// One STUN round trip to `to` from the link socket.
    async fn ask(&self, to: SocketAddr) -> Option<SocketAddr> {
        let txid: stun::TransactionId = rand::random();
        let rx = self.shared.add_stun(txid);
        let request = stun::binding_request(&txid);
        let mut rx = std::pin::pin!(rx);
        let deadline = tokio::time::Instant::now() + PORT_TIMEOUT;
        let answer = loop {
            if self.raw.send_raw(to, &request).await.is_err() {
                break None;
            }
            tokio::select! {
                r = &mut rx => break r.ok(),
                () = tokio::time::sleep(RESEND) => {}
            }
            if tokio::time::Instant::now() >= deadline {
                break None;
            }
        };
        self.shared.cancel_stun(&txid);
        answer
    }

    /// Asks the Connect port (when `with_main`) and then each probe port, in order.
    async fn observe(&self, online: &OnlineInfo, with_main: bool) -> Vec<Observation> {
        let main = with_main.then_some(online.server.port());
        let mut out = Vec::new();
        for port in main
            .into_iter()
            .chain(online.nat_probe_ports.iter().copied())
        {
            let to = SocketAddr::new(online.server.ip(), port);
            if let Some(mapped) = self.ask(to).await {
                out.push(Observation {
                    server_port: port,
                    mapped,
                });
            }
        }
        out
    }

    /// Measures our NAT and publishes the result.
    pub(crate) async fn measure(&self, online: &OnlineInfo) -> NatHint {
        let observations = self.observe(online, true).await;
        let local = SocketAddr::new(online.local.ip().to_canonical(), self.port);
        let hint = classify(local, &observations);
        tracing::info!(
            mapping = hint.mapping.as_str(),
            step = hint.step,
            last_port = ?hint.last_port,
            answers = observations.len(),
            "NAT behaviour measured"
        );
        self.hints.set_nat(hint);
        self.measured.send_replace(Some(hint));
        hint
    }

    /// Before a link attempt: waits (bounded) for the first measurement, which decides
    /// the punch, and refreshes a sequential NAT's last port, which moves with every flow
    /// through it (two round trips, only for such NATs).
    pub(crate) async fn before_attempt(&self, online: &OnlineInfo) {
        if online.nat_probe_ports.is_empty() {
            return;
        }
        let mut rx = self.measured.subscribe();
        let _ = tokio::time::timeout(FIRST_MEASUREMENT, rx.wait_for(Option::is_some)).await;
        self.refresh_if_sequential(online).await;
    }

    async fn refresh_if_sequential(&self, online: &OnlineInfo) {
        let current = self.hints.nat();
        if current.mapping != NatMapping::DependentSequential {
            return;
        }
        let fresh = self.observe(online, false).await;
        if let Some(last) = fresh.last() {
            let hint = NatHint {
                last_port: Some(last.mapped.port()),
                ..current
            };
            self.hints.set_nat(hint);
            self.measured.send_replace(Some(hint));
        }
    }
}

/// Measures after every login to a server with probe ports, until `shutdown`.
pub(crate) async fn watch_logins(
    prober: Prober,
    session: SessionHandle,
    shutdown: CancellationToken,
) {
    let mut status = session.watch();
    let mut measured_login = 0;
    loop {
        let online = match &*status.borrow_and_update() {
            SessionStatus::Online(info) => Some(info.clone()),
            _ => None,
        };
        if let Some(online) = online
            && online.logins != measured_login
        {
            measured_login = online.logins;
            if online.nat_probe_ports.is_empty() {
                prober.measured.send_replace(Some(NatHint::default()));
            } else {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    _ = prober.measure(&online) => {}
                }
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = status.changed() => if changed.is_err() { return },
        }
    }
}
