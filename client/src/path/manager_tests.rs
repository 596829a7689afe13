//! Deterministic tests of the path manager: made-up instants, probes sealed by a
//! stand-in peer, no sockets.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use super::*;

const SECRET: [u8; 32] = [7; 32];

fn me() -> Uuid {
    Uuid::from_bytes([1; 16])
}
fn peer() -> Uuid {
    Uuid::from_bytes([2; 16])
}
fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}
const PUBLIC: &str = "203.0.113.7:4000";
const RELAY: PathId = PathId::Relay(RelayVia::Udp);

fn candidates() -> Vec<Candidate> {
    vec![
        Candidate::new(addr("192.168.9.2:4000"), CandidateKind::Private),
        Candidate::new(addr(PUBLIC), CandidateKind::PublicUdp),
    ]
}

fn manager(t0: Instant, relay: bool, punching: bool) -> PathManager {
    PathManager::new(
        t0,
        PathConfig::default(),
        me(),
        peer(),
        &SECRET,
        &candidates(),
        relay.then_some(RelayVia::Udp),
        Some(addr(PUBLIC)),
        punching,
    )
}

/// The peer's side of the probes.
fn peer_keys() -> ProbeKeys {
    ProbeKeys::new(&SECRET)
}

fn drain(m: &mut PathManager) -> Vec<(PathId, Probe)> {
    let keys = peer_keys();
    std::iter::from_fn(|| m.poll_transmit())
        .map(|(path, bytes)| (path, keys.open(&bytes).unwrap()))
        .collect()
}

/// The peer answers every probe we sent on `path` (at `now`).
fn answer(m: &mut PathManager, now: Instant, sent: &[(PathId, Probe)], path: PathId) {
    let keys = peer_keys();
    for (p, probe) in sent {
        if *p == path && probe.kind == ProbeType::Probe {
            let ack = keys.seal(&Probe {
                kind: ProbeType::ProbeAck,
                sender: peer(),
                txid: probe.txid,
                flags: 0,
            });
            m.handle_datagram(now, path, &ack);
        }
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn starts_on_the_relay_with_copies_to_the_plausible_direct_paths() {
    let t0 = Instant::now();
    let m = manager(t0, true, true);
    assert_eq!(m.active(), Some(RELAY));
    assert_eq!(m.plan().extra, vec![PathId::Direct(addr(PUBLIC))]);
    assert_eq!(m.active_class(), Some(PathClass::RelayUdp));
}

#[test]
fn without_a_relay_the_optimistic_address_carries_the_set_up() {
    let t0 = Instant::now();
    let m = manager(t0, false, true);
    assert_eq!(m.active(), Some(PathId::Direct(addr(PUBLIC))));
    assert!(m.plan().extra.is_empty());
}

#[test]
fn a_punched_path_takes_over_and_the_copies_stop() {
    let t0 = Instant::now();
    let mut m = manager(t0, true, true);
    m.handle_punch_event(
        t0 + ms(40),
        &PunchEvent::PathValidated {
            remote: addr(PUBLIC),
            kind: CandidateKind::PublicUdp,
            path: PathKind::Public,
            rtt: ms(40),
        },
    );
    assert_eq!(m.active(), Some(PathId::Direct(addr(PUBLIC))));
    assert!(m.plan().extra.is_empty());
    assert_eq!(m.active_class(), Some(PathClass::DirectPublic));
    assert_eq!(m.active_rtt(), Some(ms(40)));
    assert_eq!(
        m.poll_event(),
        Some(PathEvent::Switched {
            from: None,
            to: RELAY,
            why: "link set up"
        })
    );
    assert!(matches!(
        m.poll_event(),
        Some(PathEvent::Switched {
            from: Some(RELAY),
            to: PathId::Direct(_),
            ..
        })
    ));
}

#[test]
fn a_dead_direct_path_falls_back_to_the_relay_within_the_bound() {
    let t0 = Instant::now();
    let mut m = manager(t0, true, false);
    let direct = PathId::Direct(addr(PUBLIC));
    // The first round of probes is answered: direct.
    let sent = drain(&mut m);
    answer(&mut m, t0 + ms(30), &sent, direct);
    answer(&mut m, t0 + ms(30), &sent, RELAY);
    assert_eq!(m.active(), Some(direct));
    // Heartbeats keep it while answered…
    let mut now = t0 + ms(30);
    for _ in 0..5 {
        now = m.poll_timeout().unwrap();
        m.handle_timeout(now);
        let sent = drain(&mut m);
        answer(&mut m, now + ms(30), &sent, direct);
        assert_eq!(m.active(), Some(direct));
    }
    // …then the path goes black: nothing is answered any more.
    let black_at = now + ms(30);
    while m.active() == Some(direct) {
        now = m.poll_timeout().unwrap();
        m.handle_timeout(now);
        drain(&mut m);
        assert!(
            now < black_at + ms(5_000),
            "still on the dead path at {:?}",
            now - black_at
        );
    }
    assert_eq!(m.active(), Some(RELAY));
    assert!(now - black_at <= PathConfig::default().dead_after + ms(10));
}

#[test]
fn a_path_that_died_needs_answers_in_a_row_to_come_back() {
    let t0 = Instant::now();
    let mut m = manager(t0, true, false);
    let direct = PathId::Direct(addr(PUBLIC));
    let sent = drain(&mut m);
    answer(&mut m, t0, &sent, direct);
    assert_eq!(m.active(), Some(direct));
    // It dies.
    let mut now;
    while m.active() == Some(direct) {
        now = m.poll_timeout().unwrap();
        m.handle_timeout(now);
        drain(&mut m);
    }
    // One answer is not enough, the second is.
    let mut answered = 0;
    while m.active() != Some(direct) {
        now = m.poll_timeout().unwrap();
        m.handle_timeout(now);
        let sent = drain(&mut m);
        if sent.iter().any(|(p, _)| *p == direct) {
            answer(&mut m, now + ms(20), &sent, direct);
            answered += 1;
            if answered == 1 {
                assert_eq!(m.active(), Some(RELAY), "back after a single answer");
            }
        }
        assert!(answered <= 2);
    }
    assert_eq!(answered, 2);
    // relay → direct → relay → direct.
    assert_eq!(m.switches(), 3);
}

#[test]
fn peer_probes_are_answered_on_their_path_and_teach_new_addresses() {
    let t0 = Instant::now();
    let mut m = manager(t0, true, false);
    drain(&mut m);
    let keys = peer_keys();
    let probe = keys.seal(&Probe {
        kind: ProbeType::Probe,
        sender: peer(),
        txid: 99,
        flags: 0,
    });
    // From an address the peer never announced (its NAT rebound).
    let rebound = PathId::Direct(addr("203.0.113.7:61000"));
    m.handle_datagram(t0, rebound, &probe);
    let sent = drain(&mut m);
    assert!(
        sent.iter().any(|(p, probe)| *p == rebound
            && probe.kind == ProbeType::ProbeAck
            && probe.txid == 99),
        "{sent:?}"
    );
    assert!(m.direct_addrs().any(|a| a == addr("203.0.113.7:61000")));
    // Through the relay: answered through the relay.
    m.handle_datagram(t0, RELAY, &probe);
    assert!(
        drain(&mut m)
            .iter()
            .any(|(p, probe)| *p == RELAY && probe.kind == ProbeType::ProbeAck)
    );
    // Our own probes reflected back, or another exchange's: ignored.
    let mine = ProbeKeys::new(&SECRET).seal(&Probe {
        kind: ProbeType::Probe,
        sender: me(),
        txid: 5,
        flags: 0,
    });
    m.handle_datagram(t0, rebound, &mine);
    let other = ProbeKeys::new(&[8; 32]).seal(&Probe {
        kind: ProbeType::Probe,
        sender: peer(),
        txid: 6,
        flags: 0,
    });
    m.handle_datagram(t0, rebound, &other);
    assert!(drain(&mut m).is_empty());
}

#[test]
fn while_punching_the_punch_answers_direct_probes() {
    let t0 = Instant::now();
    let mut m = manager(t0, true, true);
    drain(&mut m);
    let probe = peer_keys().seal(&Probe {
        kind: ProbeType::Probe,
        sender: peer(),
        txid: 1,
        flags: 0,
    });
    m.handle_datagram(t0, PathId::Direct(addr(PUBLIC)), &probe);
    assert!(drain(&mut m).is_empty());
    m.punch_finished(t0);
    m.handle_datagram(t0, PathId::Direct(addr(PUBLIC)), &probe);
    assert_eq!(drain(&mut m).len(), 1);
}

#[test]
fn a_lan_path_beats_a_public_one_and_a_pin_beats_everything() {
    let t0 = Instant::now();
    let mut m = manager(t0, true, false);
    let sent = drain(&mut m);
    answer(&mut m, t0, &sent, PathId::Direct(addr(PUBLIC)));
    assert_eq!(m.active(), Some(PathId::Direct(addr(PUBLIC))));
    answer(&mut m, t0, &sent, PathId::Direct(addr("192.168.9.2:4000")));
    assert_eq!(m.active(), Some(PathId::Direct(addr("192.168.9.2:4000"))));
    assert_eq!(m.active_class(), Some(PathClass::DirectLan));
    m.pin(t0, Some(PathId::Relay(RelayVia::Udp)));
    assert_eq!(m.active(), Some(RELAY));
    assert!(m.plan().extra.is_empty());
    m.pin(t0, None);
    assert_eq!(m.active(), Some(PathId::Direct(addr("192.168.9.2:4000"))));
}

#[test]
fn the_set_up_copies_end_with_the_window() {
    let t0 = Instant::now();
    let mut m = manager(t0, true, true);
    assert!(!m.plan().extra.is_empty());
    let end = t0 + PathConfig::default().setup_window;
    let mut now = t0;
    while now < end {
        now = m.poll_timeout().unwrap();
        m.handle_timeout(now);
        drain(&mut m);
    }
    assert!(m.plan().extra.is_empty());
    assert_eq!(m.active(), Some(RELAY));
}
