//! The link agent's brokering waits and failures, deterministically.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use super::*;

fn local(n: u8) -> LocalInfo {
    LocalInfo {
        uuid: Uuid::from_bytes([n; 16]),
        private_ip: "192.168.1.2".parse().unwrap(),
        public: Some(Endpoint::new("203.0.113.1:4000".parse().unwrap())),
        server_rtt: Some(Duration::from_millis(30)),
    }
}

fn exchange(relay: Option<RelayVia>) -> Exchange {
    Exchange {
        public_endpoint: Endpoint::new("198.51.100.9:5000".parse().unwrap()),
        tcp_endpoint: Some(Endpoint::new("198.51.100.9:5001".parse().unwrap())),
        link_secret: [3; 32],
        relay,
    }
}

fn actions(a: &mut LinkAgent) -> Vec<AgentAction> {
    std::iter::from_fn(|| a.poll_action()).collect()
}

fn peer_private() -> Endpoint {
    Endpoint::new("192.168.7.7:4000".parse().unwrap())
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn the_initiator_asks_then_links_after_accept_and_client_info() {
    let t0 = Instant::now();
    let mut a = LinkAgent::initiate(
        t0,
        AgentConfig::default(),
        local(1),
        Uuid::from_bytes([2; 16]),
    );
    assert_eq!(actions(&mut a), vec![AgentAction::SendRequest]);
    a.handle_accepted(t0 + ms(10), peer_private());
    assert!(actions(&mut a).is_empty());
    a.handle_client_info(t0 + ms(11), exchange(Some(RelayVia::Udp)));
    assert_eq!(
        actions(&mut a),
        vec![AgentAction::StartQuic {
            initial_rtt: Some(ms(30))
        }]
    );
    // The punch probes the three candidates (private, public UDP, public TCP).
    let mut probed: Vec<_> = std::iter::from_fn(|| a.poll_transmit())
        .map(|(p, _)| p)
        .collect();
    probed.sort();
    assert!(probed.contains(&PathId::Direct("192.168.7.7:4000".parse().unwrap())));
    assert!(probed.contains(&PathId::Relay(RelayVia::Udp)));
    // Before anything is confirmed the relay carries the link, with a copy to the
    // peer's public UDP endpoint.
    assert_eq!(a.plan().primary, Some(PathId::Relay(RelayVia::Udp)));
    a.handle_quic_established(t0 + ms(100));
    let acts = actions(&mut a);
    let [AgentAction::Linked(outcome)] = acts.as_slice() else {
        panic!("{acts:?}");
    };
    assert_eq!(outcome.class, PathClass::RelayUdp);
    assert_eq!(outcome.elapsed, ms(89));
    assert_eq!(outcome.relay_reason, Some(RelayReason::NoDirectYet));
    assert!(a.is_linked());
}

#[test]
fn a_client_info_that_overtakes_the_accept_waits_for_it_a_moment() {
    let t0 = Instant::now();
    let mut a = LinkAgent::initiate(
        t0,
        AgentConfig::default(),
        local(1),
        Uuid::from_bytes([2; 16]),
    );
    actions(&mut a);
    a.handle_client_info(t0, exchange(None));
    assert!(
        actions(&mut a).is_empty(),
        "must wait for the accept's LAN candidate"
    );
    assert_eq!(a.poll_timeout(), Some(t0 + ms(300)));
    a.handle_accepted(t0 + ms(5), peer_private());
    assert!(matches!(
        actions(&mut a).as_slice(),
        [AgentAction::StartQuic { .. }]
    ));
    // …and without an accept it goes on after the grace.
    let mut b = LinkAgent::initiate(
        t0,
        AgentConfig::default(),
        local(1),
        Uuid::from_bytes([2; 16]),
    );
    actions(&mut b);
    b.handle_client_info(t0, exchange(None));
    b.handle_timeout(t0 + ms(300));
    assert!(matches!(
        actions(&mut b).as_slice(),
        [AgentAction::StartQuic { .. }]
    ));
}

#[test]
fn brokering_failures() {
    let t0 = Instant::now();
    let cfg = AgentConfig::default();
    // No answer at all.
    let mut a = LinkAgent::initiate(t0, cfg.clone(), local(1), Uuid::from_bytes([2; 16]));
    actions(&mut a);
    assert_eq!(a.poll_timeout(), Some(t0 + Duration::from_secs(30)));
    a.handle_timeout(t0 + Duration::from_secs(30));
    assert_eq!(
        actions(&mut a),
        vec![AgentAction::Failed(AgentFailure::RequestTimeout)]
    );
    assert!(a.is_over());
    // Accepted, but ClientInfo never comes.
    let mut a = LinkAgent::initiate(t0, cfg.clone(), local(1), Uuid::from_bytes([2; 16]));
    actions(&mut a);
    a.handle_accepted(t0 + ms(1), peer_private());
    a.handle_timeout(t0 + ms(1) + Duration::from_secs(10));
    assert_eq!(
        actions(&mut a),
        vec![AgentAction::Failed(AgentFailure::ClientInfoTimeout)]
    );
    // Denied.
    let mut a = LinkAgent::initiate(t0, cfg.clone(), local(1), Uuid::from_bytes([2; 16]));
    actions(&mut a);
    a.handle_denied(t0);
    assert_eq!(
        actions(&mut a),
        vec![AgentAction::Failed(AgentFailure::Denied)]
    );
    // The session goes away while brokering: failed. While linking: no matter.
    let mut a = LinkAgent::initiate(t0, cfg.clone(), local(1), Uuid::from_bytes([2; 16]));
    actions(&mut a);
    a.handle_session_lost(t0, "server restarted");
    assert_eq!(
        actions(&mut a),
        vec![AgentAction::Failed(AgentFailure::SessionLost(
            "server restarted".into()
        ))]
    );
    let mut r = LinkAgent::respond(
        t0,
        cfg.clone(),
        local(2),
        Uuid::from_bytes([1; 16]),
        peer_private(),
    );
    assert_eq!(actions(&mut r), vec![AgentAction::SendAccept]);
    r.handle_client_info(t0, exchange(Some(RelayVia::Udp)));
    assert!(
        actions(&mut r).is_empty(),
        "the responder waits for the initiator's QUIC"
    );
    r.handle_session_lost(t0, "gone");
    r.handle_denied(t0);
    assert!(actions(&mut r).is_empty());
    // Responder: ClientInfo never comes.
    let mut r = LinkAgent::respond(t0, cfg, local(2), Uuid::from_bytes([1; 16]), peer_private());
    actions(&mut r);
    r.handle_timeout(t0 + Duration::from_secs(10));
    assert_eq!(
        actions(&mut r),
        vec![AgentAction::Failed(AgentFailure::ClientInfoTimeout)]
    );
}

#[test]
fn with_a_relay_the_handshake_has_a_deadline_of_its_own() {
    let t0 = Instant::now();
    let mut a = LinkAgent::initiate(
        t0,
        AgentConfig::default(),
        local(1),
        Uuid::from_bytes([2; 16]),
    );
    actions(&mut a);
    a.handle_accepted(t0, peer_private());
    a.handle_client_info(t0, exchange(Some(RelayVia::Tls)));
    actions(&mut a);
    let mut now = t0;
    while !a.is_over() {
        now = a.poll_timeout().unwrap();
        a.handle_timeout(now);
        while a.poll_transmit().is_some() {}
    }
    assert_eq!(now, t0 + Duration::from_secs(15));
    assert_eq!(
        actions(&mut a),
        vec![AgentAction::Failed(AgentFailure::LinkTimeout)]
    );
}

#[test]
fn a_pinned_relay_says_so() {
    let t0 = Instant::now();
    let mut a = LinkAgent::initiate(
        t0,
        AgentConfig::default(),
        local(1),
        Uuid::from_bytes([2; 16]),
    );
    a.pin(t0, Some(PathId::Relay(RelayVia::Udp)));
    actions(&mut a);
    a.handle_accepted(t0, peer_private());
    a.handle_client_info(t0, exchange(Some(RelayVia::Udp)));
    assert_eq!(a.plan().primary, Some(PathId::Relay(RelayVia::Udp)));
    assert!(a.plan().extra.is_empty());
    assert_eq!(a.relay_reason(), Some(RelayReason::Pinned));
}

/// Loopback, where the peer's punch starts a moment after ours: our first probe finds no
/// exchange there and is lost, the QUIC handshake wins over the relay copy, and the link
/// must still move to the direct path once the punch gets through.
#[test]
fn a_lost_first_probe_is_sent_again_after_the_link_is_up_on_the_relay() {
    use crate::punch::{Probe, ProbeKeys, ProbeType};
    let t0 = Instant::now();
    let peer = Uuid::from_bytes([2; 16]);
    let mut a = LinkAgent::initiate(t0, AgentConfig::default(), local(1), peer);
    actions(&mut a);
    a.handle_accepted(t0, peer_private());
    a.handle_client_info(t0, exchange(Some(RelayVia::Udp)));
    actions(&mut a);
    let public: SocketAddr = "198.51.100.9:5000".parse().unwrap();
    let keys = ProbeKeys::new(&[3; 32]);
    let first: Vec<_> = std::iter::from_fn(|| a.poll_transmit()).collect();
    assert!(first.iter().any(|(p, _)| *p == PathId::Direct(public)));
    // The peer's probe arrives (its punch started later); we answer it.
    let theirs = keys.seal(&Probe {
        kind: ProbeType::Probe,
        sender: peer,
        txid: 77,
        flags: 0,
    });
    a.handle_datagram(t0 + ms(2), PathId::Direct(public), &theirs);
    a.handle_quic_established(t0 + ms(3));
    actions(&mut a);
    // From here on, every probe we send to the public endpoint is answered.
    let mut now = t0 + ms(3);
    let mut resent = 0;
    for _ in 0..200 {
        while let Some((path, datagram)) = a.poll_transmit() {
            if path != PathId::Direct(public) {
                continue;
            }
            let Ok(probe) = keys.open(&datagram) else {
                continue;
            };
            let answer = match probe.kind {
                ProbeType::Probe => ProbeType::ProbeAck,
                ProbeType::Nominate => ProbeType::NominateAck,
                _ => continue,
            };
            if probe.kind == ProbeType::Probe {
                resent += 1;
            }
            let ack = keys.seal(&Probe {
                kind: answer,
                sender: peer,
                txid: probe.txid,
                flags: 0,
            });
            a.handle_datagram(now + ms(1), path, &ack);
        }
        if a.paths().and_then(PathManager::active) == Some(PathId::Direct(public)) {
            break;
        }
        let Some(next) = a.poll_timeout() else {
            break;
        };
        now = next.max(now);
        if now > t0 + Duration::from_secs(3) {
            break;
        }
        a.handle_timeout(now);
    }
    assert!(resent > 0, "the lost probe was never sent again");
    assert_eq!(
        a.paths().and_then(PathManager::active),
        Some(PathId::Direct(public)),
        "the link stayed on {:?}",
        a.paths().and_then(PathManager::active)
    );
}
