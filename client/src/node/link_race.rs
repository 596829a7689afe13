//! The initiator's QUIC start: optimistically at once, and on the punched path as agreed.
//!
//! Waiting for the punch to validate a path before the QUIC handshake starts costs a whole
//! round trip, and the handshake plus the responder's confirmation cost two more: about
//! 3 RTT from `PacketClientInfo` to a confirmed link. But in the common case the path the
//! punch will choose is known from the start: the peer's UDP endpoint as the server saw it.
//! Both sides start probing when their `ClientInfo` arrives, so the peer's own probes have
//! opened its NAT for us well before our first packet can cross the path. So the initiator
//! also starts QUIC on that endpoint at once, which brings a confirmed link at about 2 RTT.
//!
//! That optimistic attempt is only a shortcut; the punch still decides:
//!
//! - when the punch agrees on another path, a second attempt starts there at once; when it
//!   agrees on the optimistic address itself, the second attempt starts only if the first
//!   has not linked within about two path round trips ([`second_attempt_delay`]): its
//!   Initial may have met a NAT that was not open yet, and quinn would resend it only after a
//!   generic timeout of about a second;
//! - the first attempt the responder confirms is the link; the responder accepts one link
//!   per exchange and refuses the other, and the loser is dropped;
//! - an attempt that fails (no answer, wrong key, refused) ends the race only once nothing
//!   else is running: the responder refuses the second attempt because it took the first,
//!   and an optimistic address may even reach someone else's client;
//! - a failed punch fails the attempt, as without the shortcut.
//!
//! No optimism when the peer's public address is our own (it sits behind our NAT, which
//! may not hairpin; its private endpoint is the way) or when we do not know ours.

use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use chatr_proto::Endpoint;
use ed25519_dalek::VerifyingKey;
use futures_util::future::BoxFuture;
use tokio::sync::oneshot;

use super::punch_driver::PunchOutcome;
use crate::deadline::sleep_until_opt;
use crate::link::{LinkEndpoint, LinkError, PeerLink};
use crate::punch::{Candidate, CandidateKind, PunchFailure, PunchSuccess};

/// A confirmed link, the race's winner.
#[derive(Debug)]
pub(crate) struct Linked {
    pub(crate) link: PeerLink,
    /// The peer's address on the link.
    pub(crate) remote: SocketAddr,
    /// The punch's result, if it came before the link.
    pub(crate) punch: Option<PunchSuccess>,
    /// Otherwise, where the punch's result will arrive.
    pub(crate) pending_punch: Option<oneshot::Receiver<PunchOutcome>>,
}

/// Why no link came of the race.
#[derive(Debug)]
pub(crate) enum RaceFailure {
    /// The punch failed (and no attempt had succeeded).
    PunchFailed(Box<PunchFailure>),
    /// The link could not be set up (the punched path's error if it had one).
    Link(LinkError),
    /// The punch was abandoned (client shutting down).
    ShuttingDown,
}

/// The address for the optimistic attempt: the peer's server-observed UDP endpoint, unless
/// it shares our public IP address or ours is unknown.
pub(crate) fn optimistic_target(
    ours: Option<Endpoint>,
    candidates: &[Candidate],
) -> Option<SocketAddr> {
    let our_ip = ours.and_then(|e| e.socket_addr()).map(|a| a.ip())?;
    candidates
        .iter()
        .find(|c| c.kind == CandidateKind::PublicUdp)
        .map(|c| c.addr)
        .filter(|addr| addr.ip().to_canonical() != our_ip.to_canonical())
}

type Attempt = BoxFuture<'static, Result<PeerLink, LinkError>>;

/// Starts one QUIC attempt on `remote`, pinning `key`.
fn attempt(
    endpoint: &std::sync::Arc<LinkEndpoint>,
    remote: SocketAddr,
    key: VerifyingKey,
    rtt: Option<std::time::Duration>,
) -> Attempt {
    let endpoint = endpoint.clone();
    Box::pin(async move { endpoint.connect_with_rtt(remote, key, rtt).await })
}

/// How long the optimistic attempt still gets, once the punch agreed on `agreed`, before
/// a second attempt starts there; `None`: start it at once.
///
/// In the normal case the optimistic link is confirmed one path RTT after the punch agrees
/// (2 RTT after ClientInfo versus 1 RTT), so two RTTs and a little slack separate "on its way"
/// from "its Initial was lost", without a redundant handshake the responder would refuse.
pub(crate) fn second_attempt_delay(
    optimistic: Option<SocketAddr>,
    early_running: bool,
    agreed: &PunchSuccess,
) -> Option<Duration> {
    if !early_running || optimistic != Some(agreed.remote) {
        return None;
    }
    let rtt = agreed.rtt.unwrap_or(FALLBACK_RTT_GUESS);
    Some(rtt.saturating_mul(2).saturating_add(SECOND_ATTEMPT_SLACK))
}

/// Path RTT assumed when the punch did not measure one (the responder's path was learned
/// from its probes rather than from an answer to ours).
const FALLBACK_RTT_GUESS: Duration = Duration::from_millis(100);

/// Scheduling and processing slack on top of the two round trips.
const SECOND_ATTEMPT_SLACK: Duration = Duration::from_millis(25);

/// Polls an optional attempt; pending forever when there is none.
async fn poll_attempt(slot: &mut Option<Attempt>) -> Result<PeerLink, LinkError> {
    match slot {
        Some(fut) => Pin::new(fut).await,
        None => std::future::pending().await,
    }
}

/// Runs the optimistic attempt (if `optimistic` is set) against the punch and the attempt
/// on the path it agrees on; see the module docs.
pub(crate) async fn race_link(
    endpoint: &std::sync::Arc<LinkEndpoint>,
    key: VerifyingKey,
    optimistic: Option<SocketAddr>,
    mut punch: oneshot::Receiver<PunchOutcome>,
) -> Result<Linked, RaceFailure> {
    let mut early: Option<Attempt> = optimistic.map(|to| attempt(endpoint, to, key, None));
    let mut punched: Option<Attempt> = None;
    let mut agreed: Option<PunchSuccess> = None;
    let mut punch_pending = true;
    // Errors are kept until nothing is left running: the responder refuses whichever
    // attempt comes second because it took the other, and an optimistic address may even
    // reach someone else. The punched path's error is the one reported.
    let mut early_error: Option<LinkError> = None;
    let mut punched_error: Option<LinkError> = None;
    // When the second attempt starts on the optimistic address unless that one links first.
    let mut second_at: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            r = poll_attempt(&mut early) => {
                early = None;
                match r {
                    Ok(link) => {
                        let remote = optimistic.unwrap_or_else(|| link.remote_addr());
                        let pending_punch = punch_pending.then_some(punch);
                        return Ok(Linked { link, remote, punch: agreed, pending_punch });
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "optimistic QUIC attempt failed");
                        early_error = Some(e);
                        second_at = second_at.map(|_| tokio::time::Instant::now());
                    }
                }
            }
            r = poll_attempt(&mut punched) => {
                punched = None;
                match r {
                    Ok(link) => {
                        let remote = agreed.as_ref().map_or_else(|| link.remote_addr(), |s| s.remote);
                        return Ok(Linked { link, remote, punch: agreed, pending_punch: None });
                    }
                    Err(e) => punched_error = Some(e),
                }
            }
            r = &mut punch, if punch_pending => {
                punch_pending = false;
                match r {
                    Ok(Ok(success)) => {
                        match second_attempt_delay(optimistic, early.is_some(), &success) {
                            None => {
                                tracing::debug!(remote = %success.remote, optimistic = ?optimistic, "punch agreed; starting QUIC on its path");
                                punched = Some(attempt(endpoint, success.remote, key, success.rtt));
                            }
                            Some(delay) => {
                                tracing::debug!(remote = %success.remote, ?delay, "punch agreed on the optimistic address; giving that attempt a moment");
                                second_at = Some(tokio::time::Instant::now() + delay);
                            }
                        }
                        agreed = Some(success);
                    }
                    Ok(Err(failure)) => return Err(RaceFailure::PunchFailed(Box::new(failure))),
                    Err(_) => return Err(RaceFailure::ShuttingDown),
                }
            }
            _ = sleep_until_opt(second_at) => {
                second_at = None;
                if let Some(success) = &agreed {
                    tracing::debug!(remote = %success.remote, "optimistic attempt not linked yet; starting QUIC again on the agreed path");
                    punched = Some(attempt(endpoint, success.remote, key, success.rtt));
                }
            }
        }
        if early.is_none() && punched.is_none() && second_at.is_none() && !punch_pending {
            return Err(match punched_error.or(early_error) {
                Some(e) => RaceFailure::Link(e),
                None => RaceFailure::ShuttingDown,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(addr: &str) -> Option<Endpoint> {
        let addr: SocketAddr = addr.parse().unwrap();
        Some(Endpoint {
            ip: addr.ip(),
            port: Some(addr.port()),
        })
    }

    fn candidates() -> Vec<Candidate> {
        Candidate::from_endpoints(
            endpoint("192.168.1.20:4000"),
            endpoint("203.0.113.7:61000"),
            endpoint("203.0.113.7:4000"),
        )
    }

    #[test]
    fn the_peers_udp_endpoint_is_the_optimistic_target() {
        assert_eq!(
            optimistic_target(endpoint("198.51.100.1:5000"), &candidates()),
            Some("203.0.113.7:61000".parse().unwrap())
        );
    }

    #[test]
    fn no_optimism_behind_the_same_nat_or_without_our_public_endpoint() {
        assert_eq!(
            optimistic_target(endpoint("203.0.113.7:5000"), &candidates()),
            None
        );
        assert_eq!(optimistic_target(None, &candidates()), None);
        let no_public = Candidate::from_endpoints(endpoint("192.168.1.20:4000"), None, None);
        assert_eq!(
            optimistic_target(endpoint("198.51.100.1:5000"), &no_public),
            None
        );
    }

    /// The punch's agreement on a public `remote`, with the path RTT it measured.
    fn success(remote: SocketAddr, rtt: Option<Duration>) -> PunchSuccess {
        PunchSuccess {
            remote,
            kind: CandidateKind::PublicUdp,
            path: PathKind::Public,
            elapsed: Duration::from_millis(40),
            probes_sent: 3,
            rtt,
        }
    }

    fn ms(millis: u64) -> Option<Duration> {
        Some(Duration::from_millis(millis))
    }

    #[test]
    fn a_second_attempt_waits_only_on_the_optimistic_address_while_that_one_runs() {
        let there: SocketAddr = "203.0.113.7:61000".parse().unwrap();
        let agreed_there = success(there, ms(40));
        assert_eq!(
            second_attempt_delay(Some(there), true, &agreed_there),
            Some(Duration::from_millis(105))
        );
        // The optimistic attempt already failed: at once.
        assert_eq!(
            second_attempt_delay(Some(there), false, &agreed_there),
            None
        );
        // Another path (a symmetric NAT's fresh port), or no optimism at all: at once.
        let elsewhere = success("203.0.113.7:62000".parse().unwrap(), ms(40));
        assert_eq!(second_attempt_delay(Some(there), true, &elsewhere), None);
        assert_eq!(second_attempt_delay(None, false, &agreed_there), None);
        // No RTT measured on the path: a guess.
        let unmeasured = success(there, None);
        assert_eq!(
            second_attempt_delay(Some(there), true, &unmeasured),
            Some(FALLBACK_RTT_GUESS * 2 + SECOND_ATTEMPT_SLACK)
        );
    }

    // ---- the race itself, over real QUIC endpoints on loopback, with a scripted punch ----

    use std::sync::Arc;

    use ed25519_dalek::SigningKey;

    use crate::link::{LinkConfig, LinkEndpoint};
    use crate::punch::{FailReason, PathKind};

    fn key() -> SigningKey {
        SigningKey::from_bytes(&rand::random::<[u8; 32]>())
    }

    fn quick() -> LinkConfig {
        LinkConfig {
            handshake_timeout: Duration::from_secs(3),
            ..LinkConfig::default()
        }
    }

    fn endpoint_for(identity: &SigningKey) -> Arc<LinkEndpoint> {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        // The control channel is not used here.
        let (endpoint, _control) = LinkEndpoint::new(socket, identity, quick()).unwrap();
        Arc::new(endpoint)
    }

    /// What a test responder saw: the links it accepted, and how many it refused.
    type Served = tokio::task::JoinHandle<(Vec<PeerLink>, usize)>;

    /// A responder that, like a real one, accepts the first link with `expected` and refuses
    /// every later one. Stops after 2 s without an incoming link.
    fn responder(
        identity: &SigningKey,
        expected: VerifyingKey,
    ) -> (SocketAddr, Arc<LinkEndpoint>, Served) {
        let endpoint = endpoint_for(identity);
        let addr = endpoint.local_addr().unwrap();
        let serving = endpoint.clone();
        let task = tokio::spawn(async move {
            let mut links = Vec::new();
            let mut refused = 0;
            while let Ok(Ok(incoming)) =
                tokio::time::timeout(Duration::from_secs(2), serving.accept()).await
            {
                if links.is_empty() {
                    if let Ok(link) = incoming.accept(&expected).await {
                        links.push(link);
                    }
                } else {
                    refused += 1;
                    incoming.refuse("no link was agreed with this key");
                }
            }
            (links, refused)
        });
        (addr, endpoint, task)
    }

    /// The punch agreeing on `remote` over a loopback-fast path.
    fn agreed(remote: SocketAddr) -> PunchOutcome {
        Ok(success(remote, ms(1)))
    }

    /// An address where nobody answers: a bound UDP socket that is never read.
    fn silent() -> (std::net::UdpSocket, SocketAddr) {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = socket.local_addr().unwrap();
        (socket, addr)
    }

    #[tokio::test]
    async fn the_optimistic_attempt_links_before_the_punch_agrees() {
        let (us, them) = (key(), key());
        let (addr, _ep, served) = responder(&them, us.verifying_key());
        let ours = endpoint_for(&us);
        let (punch_tx, punch_rx) = oneshot::channel();
        let linked = race_link(&ours, them.verifying_key(), Some(addr), punch_rx)
            .await
            .unwrap();
        assert_eq!(linked.remote, addr);
        assert!(linked.punch.is_none());
        // The punch's result can still be collected for the report.
        punch_tx.send(agreed(addr)).unwrap();
        let later = linked.pending_punch.unwrap().await.unwrap().unwrap();
        assert_eq!(later.probes_sent, 3);
        assert_eq!(served.await.unwrap().0.len(), 1);
    }

    #[tokio::test]
    async fn a_dead_optimistic_address_leaves_the_link_to_the_punched_path() {
        let (us, them) = (key(), key());
        let (addr, _ep, served) = responder(&them, us.verifying_key());
        let (_hole, dead) = silent();
        let ours = endpoint_for(&us);
        let (punch_tx, punch_rx) = oneshot::channel();
        punch_tx.send(agreed(addr)).unwrap();
        let linked = race_link(&ours, them.verifying_key(), Some(dead), punch_rx)
            .await
            .unwrap();
        assert_eq!(linked.remote, addr);
        assert_eq!(linked.link.remote_addr(), addr);
        assert_eq!(linked.punch.map(|p| p.remote), Some(addr));
        assert_eq!(served.await.unwrap().0.len(), 1);
    }

    #[tokio::test]
    async fn someone_else_at_the_optimistic_address_does_not_end_the_race() {
        let (us, them, stranger) = (key(), key(), key());
        let (addr, _ep, served) = responder(&them, us.verifying_key());
        // Another client (another key) answers at the optimistic address.
        let (wrong, _ep2, _stranger_served) = responder(&stranger, us.verifying_key());
        let ours = endpoint_for(&us);
        let (punch_tx, punch_rx) = oneshot::channel();
        let race = tokio::spawn({
            let ours = ours.clone();
            let key = them.verifying_key();
            async move { race_link(&ours, key, Some(wrong), punch_rx).await }
        });
        // Let the optimistic attempt fail on the wrong key first.
        tokio::time::sleep(Duration::from_millis(300)).await;
        punch_tx.send(agreed(addr)).unwrap();
        let linked = race.await.unwrap().unwrap();
        assert_eq!(linked.remote, addr);
        assert_eq!(served.await.unwrap().0.len(), 1);
    }

    #[tokio::test]
    async fn both_attempts_to_one_responder_yield_the_one_it_confirms() {
        let (us, them) = (key(), key());
        let (addr, _ep, served) = responder(&them, us.verifying_key());
        let ours = endpoint_for(&us);
        let (punch_tx, punch_rx) = oneshot::channel();
        // The punch agrees on the same address at once: two attempts race to one responder,
        // which takes one and refuses the other.
        punch_tx.send(agreed(addr)).unwrap();
        let linked = race_link(&ours, them.verifying_key(), Some(addr), punch_rx)
            .await
            .unwrap();
        assert_eq!(linked.remote, addr);
        let (accepted, _refused) = served.await.unwrap();
        assert_eq!(accepted.len(), 1);
        // The link we kept is the one the responder accepted: a stream gets through.
        let mut out = linked
            .link
            .open(crate::link::StreamKind::Chat)
            .await
            .unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut out, b"hi")
            .await
            .unwrap();
        out.finish().unwrap();
        let mut inbound = accepted[0].accept_stream().await.unwrap();
        let mut got = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut inbound, &mut got)
            .await
            .unwrap();
        assert_eq!(got, b"hi");
    }

    #[tokio::test]
    async fn no_second_handshake_while_the_optimistic_one_is_on_time() {
        let (us, them) = (key(), key());
        let (addr, _ep, served) = responder(&them, us.verifying_key());
        let ours = endpoint_for(&us);
        let (punch_tx, punch_rx) = oneshot::channel();
        // The punch agrees on the optimistic address over a (pretend) slow path: the
        // optimistic attempt gets 2 × 5 s before a second one would start.
        punch_tx
            .send(Ok(success(addr, Some(Duration::from_secs(5)))))
            .unwrap();
        let linked = race_link(&ours, them.verifying_key(), Some(addr), punch_rx)
            .await
            .unwrap();
        assert_eq!(linked.remote, addr);
        assert_eq!(linked.punch.map(|p| p.remote), Some(addr));
        let (accepted, refused) = served.await.unwrap();
        assert_eq!((accepted.len(), refused), (1, 0));
    }

    #[tokio::test]
    async fn a_failed_punch_fails_the_race() {
        let us = key();
        let (_hole, dead) = silent();
        let ours = endpoint_for(&us);
        let (punch_tx, punch_rx) = oneshot::channel();
        punch_tx
            .send(Err(PunchFailure {
                reason: FailReason::NoPathValidated,
                tried: Vec::new(),
                probes_sent: 14,
                elapsed: Duration::from_secs(10),
            }))
            .unwrap();
        let result = race_link(&ours, key().verifying_key(), Some(dead), punch_rx).await;
        assert!(
            matches!(result, Err(RaceFailure::PunchFailed(ref f)) if f.probes_sent == 14),
            "{result:?}"
        );
    }

    #[tokio::test]
    async fn a_wrong_key_on_the_agreed_path_is_the_error_reported() {
        let (us, them, impostor) = (key(), key(), key());
        let (addr, _ep, _served) = responder(&impostor, us.verifying_key());
        let ours = endpoint_for(&us);
        let (punch_tx, punch_rx) = oneshot::channel();
        punch_tx.send(agreed(addr)).unwrap();
        let result = race_link(&ours, them.verifying_key(), Some(addr), punch_rx).await;
        assert!(
            matches!(
                result,
                Err(RaceFailure::Link(LinkError::KeyMismatch { .. }))
            ),
            "{result:?}"
        );
    }
}
