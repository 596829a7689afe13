//! Unit tests of [`super::Punch`] with hand-delivered datagrams (no network model; the
//! NAT simulator suites live in `client/tests/punch_*.rs`).
#![allow(clippy::indexing_slicing)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use uuid::Uuid;

use super::wire::{FLAG_LAN, Probe, ProbeKeys, ProbeType};
use super::*;

const SECRET: [u8; 32] = [0x5A; 32];
const OTHER_SECRET: [u8; 32] = [0xA5; 32];

fn ini_id() -> Uuid {
    Uuid::from_bytes([1; 16])
}
fn resp_id() -> Uuid {
    Uuid::from_bytes([2; 16])
}
fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}
fn cand(s: &str, kind: CandidateKind) -> Candidate {
    Candidate::new(addr(s), kind)
}
fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn punch(now: Instant, role: Role, secret: [u8; 32], candidates: Vec<Candidate>) -> Punch {
    let (local, peer) = match role {
        Role::Initiator => (ini_id(), resp_id()),
        Role::Responder => (resp_id(), ini_id()),
    };
    Punch::new(
        now,
        PunchConfig::default(),
        role,
        local,
        peer,
        secret,
        candidates,
    )
}

fn drain_tx(p: &mut Punch) -> Vec<Transmit> {
    std::iter::from_fn(|| p.poll_transmit()).collect()
}
fn drain_ev(p: &mut Punch) -> Vec<PunchEvent> {
    std::iter::from_fn(|| p.poll_event()).collect()
}

/// A datagram as the peer `sender` would seal it for exchange `secret`.
fn sealed(secret: &[u8; 32], kind: ProbeType, sender: Uuid, txid: u64, flags: u8) -> Vec<u8> {
    ProbeKeys::new(secret).seal(&Probe {
        kind,
        sender,
        txid,
        flags,
    })
}

fn txid_of(datagram: &[u8]) -> u64 {
    u64::from_be_bytes(datagram[29..37].try_into().unwrap())
}
fn type_of(datagram: &[u8]) -> u8 {
    datagram[4]
}

/// Two machines wired back to back without NATs: I at 10.0.0.1:1000, R at 10.0.0.2:2000.
#[test]
fn direct_pair_agrees() {
    let t0 = Instant::now();
    let i_addr = addr("10.0.0.1:1000");
    let r_addr = addr("10.0.0.2:2000");
    let mut i = punch(
        t0,
        Role::Initiator,
        SECRET,
        vec![Candidate::new(r_addr, CandidateKind::Private)],
    );
    let mut r = punch(
        t0,
        Role::Responder,
        SECRET,
        vec![Candidate::new(i_addr, CandidateKind::Private)],
    );
    assert_eq!(i.exchange_id(), r.exchange_id());
    let mut now = t0;
    let mut i_done = None;
    let mut r_done = None;
    for _ in 0..50 {
        now += ms(5);
        for t in drain_tx(&mut i) {
            assert_eq!(t.destination, r_addr);
            assert_eq!(exchange_id_of(&t.contents), Some(r.exchange_id()));
            r.handle_datagram(now, i_addr, &t.contents);
        }
        for t in drain_tx(&mut r) {
            assert_eq!(t.destination, i_addr);
            i.handle_datagram(now, r_addr, &t.contents);
        }
        for e in drain_ev(&mut i) {
            if let PunchEvent::Succeeded(s) = e {
                i_done = Some(s);
            }
        }
        for e in drain_ev(&mut r) {
            if let PunchEvent::Succeeded(s) = e {
                r_done = Some(s);
            }
        }
        if i_done.is_some() && r_done.is_some() {
            break;
        }
    }
    let (i_s, r_s) = (i_done.unwrap(), r_done.unwrap());
    assert_eq!(i_s.remote, r_addr);
    assert_eq!(r_s.remote, i_addr);
    assert_eq!((i_s.path, r_s.path), (PathKind::Lan, PathKind::Lan));
    assert_eq!(
        (i_s.kind, r_s.kind),
        (CandidateKind::Private, CandidateKind::Private)
    );
    assert!(i_s.rtt.is_some());
    assert!(i.is_finished() && r.is_finished());
    assert!(!i.is_closed());
}

/// Probes to an unreachable candidate follow 100 ms ×1.5 up to 1 s, then give up at 10 s.
#[test]
fn pacing_and_give_up() {
    let t0 = Instant::now();
    let c = cand("203.0.113.9:4000", CandidateKind::PublicUdp);
    let mut p = punch(t0, Role::Initiator, SECRET, vec![c]);
    let mut sent_at = Vec::new();
    let mut now = t0;
    let mut failure = None;
    loop {
        for t in drain_tx(&mut p) {
            assert_eq!(t.destination, c.addr);
            assert_eq!(type_of(&t.contents), 0x10);
            sent_at.push(now.duration_since(t0).as_millis());
        }
        for e in drain_ev(&mut p) {
            if let PunchEvent::Failed(f) = e {
                failure = Some(f);
            }
        }
        let Some(next) = p.poll_timeout() else { break };
        assert!(next > now || sent_at.is_empty(), "timer must advance");
        now = next;
        p.handle_timeout(now);
    }
    assert_eq!(
        &sent_at[..8],
        &[0, 100, 250, 475, 812, 1318, 2078, 3078],
        "probe times (ms)"
    );
    assert!(sent_at.windows(2).skip(7).all(|w| w[1] - w[0] == 1000));
    let f = failure.unwrap();
    assert_eq!(f.reason, FailReason::NoPathValidated);
    assert_eq!(f.elapsed, Duration::from_secs(10));
    assert_eq!(f.tried, vec![(c, sent_at.len() as u32)]);
    assert_eq!(f.probes_sent, sent_at.len() as u32);
    assert!(p.is_closed());
    assert_eq!(p.poll_timeout(), None);
}

#[test]
fn spoofed_probe_is_ignored() {
    let t0 = Instant::now();
    let mut r = punch(t0, Role::Responder, SECRET, vec![]);
    assert!(drain_tx(&mut r).is_empty());
    // Right exchange id, wrong key: forge by relabelling another exchange's probe.
    let mut forged = sealed(&OTHER_SECRET, ProbeType::Probe, ini_id(), 1, 0);
    forged[5..13].copy_from_slice(r.exchange_id().as_bytes());
    r.handle_datagram(t0, addr("198.51.100.66:5000"), &forged);
    assert!(drain_tx(&mut r).is_empty(), "no ack to a forger");
    assert!(drain_ev(&mut r).is_empty(), "nothing learned from a forger");
    assert_eq!(r.candidates().count(), 0);
    assert_eq!(r.stats().ignored, 1);
    assert_eq!(r.stats().authentic_received, 0);
}

#[test]
fn probe_from_another_exchange_is_ignored() {
    let t0 = Instant::now();
    // A genuine probe between the same two UUIDs, but of an earlier exchange.
    let mut old = punch(
        t0,
        Role::Initiator,
        OTHER_SECRET,
        vec![cand("10.0.0.2:2000", CandidateKind::Private)],
    );
    let replay = drain_tx(&mut old).remove(0).contents;
    let mut r = punch(t0, Role::Responder, SECRET, vec![]);
    assert_ne!(exchange_id_of(&replay), Some(r.exchange_id()));
    r.handle_datagram(t0, addr("10.0.0.1:1000"), &replay);
    assert!(drain_tx(&mut r).is_empty());
    assert!(drain_ev(&mut r).is_empty());
    assert_eq!(r.stats().ignored, 1);
}

#[test]
fn reflected_and_wrong_direction_datagrams_are_ignored() {
    let t0 = Instant::now();
    let r_addr = addr("10.0.0.2:2000");
    let mut i = punch(
        t0,
        Role::Initiator,
        SECRET,
        vec![Candidate::new(r_addr, CandidateKind::Private)],
    );
    let own = drain_tx(&mut i).remove(0).contents;
    // Our own probe comes back (e.g. a hairpinning NAT or a probe to our own address).
    i.handle_datagram(t0 + ms(1), r_addr, &own);
    // A ProbeAck "from the peer" that is really ours: sender = local.
    let own_ack = sealed(&SECRET, ProbeType::ProbeAck, ini_id(), txid_of(&own), 0);
    i.handle_datagram(t0 + ms(1), r_addr, &own_ack);
    // The initiator never receives a Nominate.
    let nominate = sealed(&SECRET, ProbeType::Nominate, resp_id(), 77, 0);
    i.handle_datagram(t0 + ms(1), r_addr, &nominate);
    assert!(drain_tx(&mut i).is_empty());
    assert!(drain_ev(&mut i).is_empty());
    assert_eq!(i.stats().ignored, 3);

    // The responder never receives a NominateAck.
    let mut r = punch(t0, Role::Responder, SECRET, vec![]);
    let nack = sealed(&SECRET, ProbeType::NominateAck, ini_id(), 1, 0);
    r.handle_datagram(t0, addr("10.0.0.1:1000"), &nack);
    assert!(drain_tx(&mut r).is_empty());
    assert!(drain_ev(&mut r).is_empty());
    assert_eq!(r.stats().ignored, 1);
}

#[test]
fn ack_for_unknown_transaction_is_ignored() {
    let t0 = Instant::now();
    let r_addr = addr("10.0.0.2:2000");
    let mut i = punch(
        t0,
        Role::Initiator,
        SECRET,
        vec![Candidate::new(r_addr, CandidateKind::Private)],
    );
    let probe = drain_tx(&mut i).remove(0).contents;
    let ack = sealed(
        &SECRET,
        ProbeType::ProbeAck,
        resp_id(),
        txid_of(&probe) + 1000,
        0,
    );
    i.handle_datagram(t0 + ms(1), r_addr, &ack);
    assert!(drain_ev(&mut i).is_empty());
    assert_eq!(i.stats().ignored, 1);
}

#[test]
fn probe_from_unknown_port_is_learned_answered_and_probed() {
    let t0 = Instant::now();
    let announced = cand("203.0.113.5:4000", CandidateKind::PublicUdp);
    let mut r = punch(t0, Role::Responder, SECRET, vec![announced]);
    drain_tx(&mut r);
    let new_port = addr("203.0.113.5:51234");
    let probe = sealed(&SECRET, ProbeType::Probe, ini_id(), 9, 0);
    r.handle_datagram(t0 + ms(30), new_port, &probe);
    let tx = drain_tx(&mut r);
    assert_eq!(tx.len(), 2, "{tx:?}");
    assert_eq!(tx[0].destination, new_port);
    assert_eq!(type_of(&tx[0].contents), 0x11);
    assert_eq!(txid_of(&tx[0].contents), 9, "ack echoes the txid");
    assert_eq!(tx[1].destination, new_port);
    assert_eq!(type_of(&tx[1].contents), 0x10, "triggered probe");
    let learned = Candidate::new(new_port, CandidateKind::PeerReflexive);
    assert_eq!(
        drain_ev(&mut r),
        vec![PunchEvent::CandidateLearned(learned)]
    );
    assert_eq!(
        r.candidates().copied().collect::<Vec<_>>(),
        vec![announced, learned]
    );

    // The same address again: answered, not learned twice, no triggered probe so soon.
    r.handle_datagram(t0 + ms(31), new_port, &probe);
    let tx = drain_tx(&mut r);
    assert_eq!(tx.len(), 1);
    assert_eq!(type_of(&tx[0].contents), 0x11);
    assert!(drain_ev(&mut r).is_empty());
}

#[test]
fn ack_from_other_port_does_not_validate_but_is_learned() {
    let t0 = Instant::now();
    let announced = cand("203.0.113.5:4000", CandidateKind::PublicUdp);
    let mut i = punch(t0, Role::Initiator, SECRET, vec![announced]);
    let probe = drain_tx(&mut i).remove(0).contents;
    let other = addr("203.0.113.5:40001");
    let ack = sealed(&SECRET, ProbeType::ProbeAck, resp_id(), txid_of(&probe), 0);
    i.handle_datagram(t0 + ms(40), other, &ack);
    let ev = drain_ev(&mut i);
    assert_eq!(
        ev,
        vec![PunchEvent::CandidateLearned(Candidate::new(
            other,
            CandidateKind::PeerReflexive
        ))]
    );
    let tx = drain_tx(&mut i);
    assert_eq!(tx.len(), 1);
    assert_eq!(tx[0].destination, other);
    assert_eq!(type_of(&tx[0].contents), 0x10);
}

#[test]
fn learning_is_bounded() {
    let t0 = Instant::now();
    let mut r = punch(t0, Role::Responder, SECRET, vec![]);
    let probe = sealed(&SECRET, ProbeType::Probe, ini_id(), 1, 0);
    for port in 0..20u16 {
        r.handle_datagram(
            t0,
            SocketAddr::from(([203, 0, 113, 5], 40000 + port)),
            &probe,
        );
    }
    let learned = drain_ev(&mut r)
        .into_iter()
        .filter(|e| matches!(e, PunchEvent::CandidateLearned(_)))
        .count();
    assert_eq!(learned, 8);
    assert_eq!(r.candidates().count(), 8);
    // Every probe is still answered (acks are cheap and not amplifying).
    let acks = drain_tx(&mut r)
        .iter()
        .filter(|t| type_of(&t.contents) == 0x11)
        .count();
    assert_eq!(acks, 20);
}

/// Initiator with a public and a private candidate of the peer. Returns it and the
/// txids of its first probes (public, private).
fn lan_setup(t0: Instant) -> (Punch, u64, u64) {
    let mut i = punch(
        t0,
        Role::Initiator,
        SECRET,
        vec![
            cand("203.0.113.5:4000", CandidateKind::PublicUdp),
            cand("192.168.1.20:4000", CandidateKind::Private),
        ],
    );
    let tx = drain_tx(&mut i);
    assert_eq!(tx.len(), 2);
    (i, txid_of(&tx[0].contents), txid_of(&tx[1].contents))
}

#[test]
fn lan_path_that_validates_within_grace_wins() {
    let t0 = Instant::now();
    let (mut i, public_tx, private_tx) = lan_setup(t0);
    let ack = |txid| sealed(&SECRET, ProbeType::ProbeAck, resp_id(), txid, 0);
    i.handle_datagram(t0 + ms(50), addr("203.0.113.5:4000"), &ack(public_tx));
    assert!(matches!(
        &drain_ev(&mut i)[..],
        [PunchEvent::PathValidated {
            path: PathKind::Public,
            ..
        }]
    ));
    assert!(
        drain_tx(&mut i)
            .iter()
            .all(|t| type_of(&t.contents) != 0x12),
        "waits for LAN"
    );
    assert_eq!(
        i.poll_timeout(),
        Some(t0 + ms(100)),
        "next probe before the grace ends"
    );
    i.handle_datagram(t0 + ms(120), addr("192.168.1.20:4000"), &ack(private_tx));
    let ev = drain_ev(&mut i);
    assert!(
        matches!(
            &ev[..],
            [
                PunchEvent::PathValidated {
                    path: PathKind::Lan,
                    ..
                },
                PunchEvent::Nominating {
                    path: PathKind::Lan,
                    ..
                }
            ]
        ),
        "{ev:?}"
    );
    let tx = drain_tx(&mut i);
    assert_eq!(tx.len(), 1);
    assert_eq!(tx[0].destination, addr("192.168.1.20:4000"));
    assert_eq!(type_of(&tx[0].contents), 0x12);
    assert_eq!(tx[0].contents[37], FLAG_LAN);
}

#[test]
fn public_path_is_nominated_after_grace() {
    let t0 = Instant::now();
    let (mut i, public_tx, _) = lan_setup(t0);
    let ack = sealed(&SECRET, ProbeType::ProbeAck, resp_id(), public_tx, 0);
    i.handle_datagram(t0 + ms(50), addr("203.0.113.5:4000"), &ack);
    drain_ev(&mut i);
    // Run the timers until the nomination goes out.
    let mut nominated_at = None;
    for _ in 0..10 {
        let next = i.poll_timeout().unwrap();
        i.handle_timeout(next);
        if drain_tx(&mut i).iter().any(|t| {
            type_of(&t.contents) == 0x12
                && t.destination == addr("203.0.113.5:4000")
                && t.contents[37] == 0
        }) {
            nominated_at = Some(next);
            break;
        }
    }
    assert_eq!(
        nominated_at,
        Some(t0 + ms(250)),
        "first validation + lan_grace"
    );
    assert!(matches!(
        &drain_ev(&mut i)[..],
        [PunchEvent::Nominating {
            path: PathKind::Public,
            kind: CandidateKind::PublicUdp,
            ..
        }]
    ));
}

#[test]
fn no_grace_without_private_candidates() {
    let t0 = Instant::now();
    let mut i = punch(
        t0,
        Role::Initiator,
        SECRET,
        vec![cand("203.0.113.5:4000", CandidateKind::PublicUdp)],
    );
    let probe = drain_tx(&mut i).remove(0).contents;
    let ack = sealed(&SECRET, ProbeType::ProbeAck, resp_id(), txid_of(&probe), 0);
    i.handle_datagram(t0 + ms(50), addr("203.0.113.5:4000"), &ack);
    let tx = drain_tx(&mut i);
    assert_eq!(tx.len(), 1);
    assert_eq!(type_of(&tx[0].contents), 0x12, "nominates at once");
}

/// The initiator of [`lan_setup`] told its own network, then its public path answers:
/// returns whether the Nominate went out at once (no LAN grace).
fn nominates_at_once_with_local_net(net: LocalNet) -> bool {
    let t0 = Instant::now();
    let (i, public_tx, _) = lan_setup(t0);
    let mut i = i.with_local_networks([net]);
    let ack = sealed(&SECRET, ProbeType::ProbeAck, resp_id(), public_tx, 0);
    i.handle_datagram(t0 + ms(50), addr("203.0.113.5:4000"), &ack);
    let nominated = drain_tx(&mut i)
        .iter()
        .any(|t| type_of(&t.contents) == 0x12 && t.destination == addr("203.0.113.5:4000"));
    let events = drain_ev(&mut i);
    assert_eq!(
        nominated,
        events
            .iter()
            .any(|e| matches!(e, PunchEvent::Nominating { .. })),
        "{events:?}"
    );
    nominated
}

#[test]
fn no_grace_for_a_private_candidate_outside_our_network() {
    // The peer's 192.168.1.20 is another home LAN when we are 192.168.2.2/24 or 10.0.0.0/8.
    let ip = |s: &str| s.parse().unwrap();
    assert!(nominates_at_once_with_local_net(LocalNet::guess(ip(
        "192.168.2.2"
    ))));
    assert!(nominates_at_once_with_local_net(LocalNet::new(
        ip("10.1.2.3"),
        8
    )));
    assert!(nominates_at_once_with_local_net(LocalNet::guess(ip(
        "2001:db8::2"
    ))));
}

#[test]
fn grace_kept_for_a_private_candidate_in_our_network() {
    let ip = |s: &str| s.parse().unwrap();
    assert!(!nominates_at_once_with_local_net(LocalNet::guess(ip(
        "192.168.1.2"
    ))));
    assert!(!nominates_at_once_with_local_net(LocalNet::new(
        ip("192.168.0.9"),
        16
    )));
    assert!(!nominates_at_once_with_local_net(LocalNet::new(
        ip("192.168.1.20"),
        32
    )));
}

#[test]
fn nomination_ack_completes_initiator_and_must_match() {
    let t0 = Instant::now();
    let r_addr = addr("203.0.113.5:4000");
    let mut i = punch(
        t0,
        Role::Initiator,
        SECRET,
        vec![Candidate::new(r_addr, CandidateKind::PublicUdp)],
    );
    let probe = drain_tx(&mut i).remove(0).contents;
    i.handle_datagram(
        t0 + ms(50),
        r_addr,
        &sealed(&SECRET, ProbeType::ProbeAck, resp_id(), txid_of(&probe), 0),
    );
    let nominate = drain_tx(&mut i).remove(0).contents;
    drain_ev(&mut i);
    let nack = |txid| sealed(&SECRET, ProbeType::NominateAck, resp_id(), txid, 0);
    // Wrong txid, then right txid from the wrong address: both ignored.
    i.handle_datagram(t0 + ms(60), r_addr, &nack(txid_of(&nominate) + 1));
    i.handle_datagram(
        t0 + ms(60),
        addr("203.0.113.5:4001"),
        &nack(txid_of(&nominate)),
    );
    assert!(drain_ev(&mut i).is_empty());
    i.handle_datagram(t0 + ms(100), r_addr, &nack(txid_of(&nominate)));
    let ev = drain_ev(&mut i);
    let [PunchEvent::Succeeded(s)] = &ev[..] else {
        panic!("{ev:?}")
    };
    assert_eq!(s.remote, r_addr);
    assert_eq!(s.kind, CandidateKind::PublicUdp);
    assert_eq!(s.path, PathKind::Public);
    assert_eq!(s.elapsed, ms(100));
    assert_eq!(s.probes_sent, 2);
    assert_eq!(s.rtt, Some(ms(50)));
}

#[test]
fn unacknowledged_nomination_fails_with_reason() {
    let t0 = Instant::now();
    let r_addr = addr("203.0.113.5:4000");
    let mut i = punch(
        t0,
        Role::Initiator,
        SECRET,
        vec![Candidate::new(r_addr, CandidateKind::PublicUdp)],
    );
    let probe = drain_tx(&mut i).remove(0).contents;
    i.handle_datagram(
        t0 + ms(50),
        r_addr,
        &sealed(&SECRET, ProbeType::ProbeAck, resp_id(), txid_of(&probe), 0),
    );
    let mut nominates = 0;
    let mut failure = None;
    while let Some(next) = i.poll_timeout() {
        i.handle_timeout(next);
        nominates += drain_tx(&mut i)
            .iter()
            .filter(|t| type_of(&t.contents) == 0x12)
            .count();
        for e in drain_ev(&mut i) {
            if let PunchEvent::Failed(f) = e {
                failure = Some(f);
            }
        }
    }
    let f = failure.unwrap();
    assert_eq!(
        f.reason,
        FailReason::NominationUnacknowledged { remote: r_addr }
    );
    assert_eq!(f.elapsed, Duration::from_secs(10));
    assert!(nominates > 10, "nominate is retransmitted ({nominates})");
}

#[test]
fn responder_without_nomination_fails_not_nominated() {
    let t0 = Instant::now();
    let i_addr = addr("203.0.113.7:4000");
    let mut r = punch(
        t0,
        Role::Responder,
        SECRET,
        vec![Candidate::new(i_addr, CandidateKind::PublicUdp)],
    );
    let probe = drain_tx(&mut r).remove(0).contents;
    r.handle_datagram(
        t0 + ms(50),
        i_addr,
        &sealed(&SECRET, ProbeType::ProbeAck, ini_id(), txid_of(&probe), 0),
    );
    let mut failure = None;
    while let Some(next) = r.poll_timeout() {
        r.handle_timeout(next);
        drain_tx(&mut r);
        for e in drain_ev(&mut r) {
            if let PunchEvent::Failed(f) = e {
                failure = Some(f);
            }
        }
    }
    assert_eq!(
        failure.unwrap().reason,
        FailReason::NotNominated {
            validated: vec![i_addr]
        }
    );
}

#[test]
fn responder_lingers_answering_repeated_nominates_then_closes() {
    let t0 = Instant::now();
    let i_addr = addr("203.0.113.7:4000");
    let mut r = punch(
        t0,
        Role::Responder,
        SECRET,
        vec![Candidate::new(i_addr, CandidateKind::PublicUdp)],
    );
    drain_tx(&mut r);
    let nominate = sealed(&SECRET, ProbeType::Nominate, ini_id(), 42, 0);
    r.handle_datagram(t0 + ms(80), i_addr, &nominate);
    let tx = drain_tx(&mut r);
    assert_eq!(tx.len(), 1);
    assert_eq!(
        (
            tx[0].destination,
            type_of(&tx[0].contents),
            txid_of(&tx[0].contents)
        ),
        (i_addr, 0x13, 42)
    );
    let ev = drain_ev(&mut r);
    let [PunchEvent::Succeeded(s)] = &ev[..] else {
        panic!("{ev:?}")
    };
    assert_eq!(
        (s.remote, s.kind, s.path, s.elapsed),
        (i_addr, CandidateKind::PublicUdp, PathKind::Public, ms(80))
    );
    assert!(r.is_finished() && !r.is_closed());

    // Repeated nominate (our ack was lost): answered again, no second success.
    let again = sealed(&SECRET, ProbeType::Nominate, ini_id(), 43, 0);
    r.handle_datagram(t0 + ms(200), i_addr, &again);
    assert_eq!(txid_of(&drain_tx(&mut r)[0].contents), 43);
    assert!(drain_ev(&mut r).is_empty());
    // A nominate of a different path after agreement is ignored.
    r.handle_datagram(t0 + ms(210), addr("203.0.113.7:4001"), &again);
    assert!(drain_tx(&mut r).is_empty());
    // No probes are scheduled while lingering; the timer is the end of the linger.
    assert_eq!(
        r.poll_timeout(),
        Some(t0 + ms(80) + PunchConfig::default().linger)
    );
    r.handle_timeout(t0 + ms(80) + PunchConfig::default().linger);
    assert!(r.is_closed());
    assert_eq!(r.poll_timeout(), None);
    r.handle_datagram(t0 + Duration::from_secs(20), i_addr, &again);
    assert!(drain_tx(&mut r).is_empty());
}

#[test]
fn nominate_after_linger_is_not_answered_even_if_timer_is_late() {
    let t0 = Instant::now();
    let i_addr = addr("203.0.113.7:4000");
    let mut r = punch(
        t0,
        Role::Responder,
        SECRET,
        vec![Candidate::new(i_addr, CandidateKind::PublicUdp)],
    );
    drain_tx(&mut r);
    r.handle_datagram(
        t0,
        i_addr,
        &sealed(&SECRET, ProbeType::Nominate, ini_id(), 1, 0),
    );
    assert_eq!(drain_tx(&mut r).len(), 1);
    // The driver never called handle_timeout; the linger is over anyway.
    let late = t0 + PunchConfig::default().linger;
    r.handle_datagram(
        late,
        i_addr,
        &sealed(&SECRET, ProbeType::Nominate, ini_id(), 2, 0),
    );
    assert!(drain_tx(&mut r).is_empty());
    assert!(r.is_closed());
}

#[test]
fn responder_reports_initiators_lan_classification() {
    let t0 = Instant::now();
    let i_addr = addr("192.168.1.10:4000");
    let mut r = punch(
        t0,
        Role::Responder,
        SECRET,
        vec![Candidate::new(i_addr, CandidateKind::Private)],
    );
    drain_tx(&mut r);
    r.handle_datagram(
        t0 + ms(3),
        i_addr,
        &sealed(&SECRET, ProbeType::Nominate, ini_id(), 5, FLAG_LAN),
    );
    let ev = drain_ev(&mut r);
    let [PunchEvent::Succeeded(s)] = &ev[..] else {
        panic!("{ev:?}")
    };
    assert_eq!((s.path, s.kind), (PathKind::Lan, CandidateKind::Private));
}

#[test]
fn late_datagram_does_not_revive_attempt() {
    let t0 = Instant::now();
    let i_addr = addr("203.0.113.7:4000");
    let mut r = punch(
        t0,
        Role::Responder,
        SECRET,
        vec![Candidate::new(i_addr, CandidateKind::PublicUdp)],
    );
    drain_tx(&mut r);
    // The driver was late with the timer; a Nominate arrives after the limit.
    r.handle_datagram(
        t0 + Duration::from_secs(11),
        i_addr,
        &sealed(&SECRET, ProbeType::Nominate, ini_id(), 5, 0),
    );
    let ev = drain_ev(&mut r);
    assert!(matches!(&ev[..], [PunchEvent::Failed(_)]), "{ev:?}");
    assert!(drain_tx(&mut r).is_empty(), "no ack after the limit");
    assert!(r.is_closed());
}

#[test]
fn empty_candidate_list_still_works_via_learning() {
    let t0 = Instant::now();
    let i_addr = addr("203.0.113.7:4000");
    let mut r = punch(t0, Role::Responder, SECRET, vec![]);
    assert!(drain_tx(&mut r).is_empty());
    assert_eq!(r.poll_timeout(), Some(t0 + Duration::from_secs(10)));
    r.handle_datagram(
        t0 + ms(10),
        i_addr,
        &sealed(&SECRET, ProbeType::Probe, ini_id(), 1, 0),
    );
    let tx = drain_tx(&mut r);
    assert_eq!(
        tx.iter().map(|t| type_of(&t.contents)).collect::<Vec<_>>(),
        vec![0x11, 0x10]
    );
}

#[test]
fn unusable_candidates_are_dropped() {
    let t0 = Instant::now();
    let mut i = punch(
        t0,
        Role::Initiator,
        SECRET,
        vec![
            cand("0.0.0.0:4000", CandidateKind::Private),
            cand("203.0.113.5:0", CandidateKind::PublicTcp),
            cand("203.0.113.5:4000", CandidateKind::PublicUdp),
            cand("[::ffff:203.0.113.5]:4000", CandidateKind::PeerReflexive),
        ],
    );
    assert_eq!(i.candidates().count(), 1);
    assert_eq!(drain_tx(&mut i).len(), 1);
}

proptest! {
    /// Arbitrary bytes from arbitrary addresses never panic, never get an answer and
    /// never change the outcome.
    #[test]
    fn garbage_is_ignored(datagrams in proptest::collection::vec(
        (proptest::collection::vec(any::<u8>(), 0..90), any::<u16>(), 0u64..20_000), 0..40))
    {
        let t0 = Instant::now();
        let mut r = punch(t0, Role::Responder, SECRET, vec![cand("203.0.113.7:4000", CandidateKind::PublicUdp)]);
        let first = drain_tx(&mut r);
        prop_assert_eq!(first.len(), 1);
        let id = r.exchange_id();
        for (mut bytes, port, at) in datagrams {
            // Half the time make it look like ours, to get past the cheap checks.
            if port % 2 == 0 && bytes.len() >= 13 {
                bytes[..4].copy_from_slice(&[0, b'C', b'H', b'R']);
                bytes[4] = 0x10 + (port % 4) as u8;
                bytes[5..13].copy_from_slice(id.as_bytes());
            }
            let now = t0 + Duration::from_millis(at % 9_000);
            r.handle_datagram(now, SocketAddr::from(([198, 51, 100, 1], port)), &bytes);
            prop_assert!(drain_tx(&mut r).is_empty());
            prop_assert!(drain_ev(&mut r).is_empty());
        }
        prop_assert!(!r.is_finished());
        prop_assert_eq!(r.stats().authentic_received, 0);
    }
}
