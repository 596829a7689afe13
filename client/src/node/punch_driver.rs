//! The tokio loop that drives one [`Punch`] on the shared UDP socket.
//!
//! It sends what the machine wants sent, feeds it the probes the router hands
//! over (by exchange id) and its own timer, and reports the outcome once. After
//! success it keeps running while the machine lingers (answering a peer whose
//! acknowledgement was lost), then removes its route.
//!
//! The initiator's outcome is reported as soon as the machine *nominates* a
//! path, not when the NominateAck returns: the path is validated (both
//! directions work), and the QUIC handshake that starts on it at once proves it
//! again, so waiting for the acknowledgement would only cost a round trip. The
//! machine keeps nominating until acknowledged (the responder learns the path
//! from the Nominate) and then lingers, as after any success.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::shared::Shared;
use crate::deadline::sleep_until_opt;
use crate::link::RawSender;
use crate::punch::{Punch, PunchEvent, PunchFailure, PunchSuccess};

/// The outcome of a punch, reported once.
pub(crate) type PunchOutcome = Result<PunchSuccess, PunchFailure>;

/// Runs `punch` until it is closed (or shutdown, or the caller lost interest
/// before an outcome), sending its datagrams through `raw`.
pub(crate) async fn drive_punch(
    punch: Punch,
    datagrams: mpsc::Receiver<(SocketAddr, Bytes)>,
    raw: RawSender,
    shared: Arc<Shared>,
    outcome: oneshot::Sender<PunchOutcome>,
    shutdown: CancellationToken,
) {
    let span = tracing::debug_span!("punch", peer = %punch.peer(), exchange = %punch.exchange_id(), role = ?punch.role());
    // `instrument`, not `span.enter()`: an entered guard held across `.await` files
    // other tasks' log lines under this span.
    run_punch(punch, datagrams, raw, shared, outcome, shutdown)
        .instrument(span)
        .await;
}

async fn run_punch(
    mut punch: Punch,
    mut datagrams: mpsc::Receiver<(SocketAddr, Bytes)>,
    raw: RawSender,
    shared: Arc<Shared>,
    outcome: oneshot::Sender<PunchOutcome>,
    shutdown: CancellationToken,
) {
    let id = punch.exchange_id();
    let mut outcome = Some(outcome);
    // Round-trip times of validated paths, to describe an early (nominated) outcome.
    let mut validated: Vec<(SocketAddr, Duration)> = Vec::new();
    loop {
        while let Some(t) = punch.poll_transmit() {
            if let Err(e) = raw.send_raw(t.destination, &t.contents).await {
                tracing::debug!(to = %t.destination, error = %e, "probe not sent");
            }
        }
        while let Some(event) = punch.poll_event() {
            match event {
                PunchEvent::Succeeded(success) => {
                    tracing::debug!(remote = %success.remote, kind = %success.kind, path = %success.path, "punch succeeded");
                    if let Some(tx) = outcome.take() {
                        let _ = tx.send(Ok(success));
                    }
                }
                PunchEvent::Failed(failure) => {
                    tracing::debug!(%failure, "punch failed");
                    if let Some(tx) = outcome.take() {
                        let _ = tx.send(Err(failure));
                    }
                }
                PunchEvent::PathValidated { remote, rtt, .. } => {
                    tracing::trace!(%remote, ?rtt, "path validated");
                    validated.push((remote, rtt));
                }
                PunchEvent::Nominating { remote, kind, path } => {
                    let now = Instant::now();
                    let success = PunchSuccess {
                        remote,
                        kind,
                        path,
                        elapsed: now.saturating_duration_since(punch.started_at()),
                        probes_sent: punch.stats().probes_sent,
                        rtt: validated
                            .iter()
                            .find(|(addr, _)| *addr == remote)
                            .map(|(_, rtt)| *rtt),
                    };
                    tracing::debug!(%remote, %kind, %path, "nominated; starting QUIC at once");
                    if let Some(tx) = outcome.take() {
                        let _ = tx.send(Ok(success));
                    }
                }
                other => tracing::trace!(?other, "punch progress"),
            }
        }
        if punch.is_closed() {
            break;
        }
        // Nobody waits for the result any more (the request was cancelled).
        if outcome.as_ref().is_some_and(|tx| tx.is_closed()) {
            break;
        }
        let deadline = punch.poll_timeout().map(tokio::time::Instant::from_std);
        tokio::select! {
            _ = shutdown.cancelled() => break,
            d = datagrams.recv() => match d {
                Some((from, bytes)) => punch.handle_datagram(Instant::now(), from, &bytes),
                None => break,
            },
            _ = sleep_until_opt(deadline) => punch.handle_timeout(Instant::now()),
        }
    }
    shared.remove_punch(&id);
}
