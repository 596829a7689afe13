//! Probes are bound to the brokered exchange: while two peers punch, an attacker on the
//! internet sprays forged probes, probes replayed from another exchange between the same
//! two UUIDs, and the peers' own probes reflected back. None of it is answered, learned
//! or able to change the outcome.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod punch_sim;

use std::net::SocketAddr;
use std::time::Duration;

use chatr_client::punch::{PROBE_LEN, PunchEvent, exchange_id_of, is_probe};
use punch_sim::{INTERNET, Profile, Sim, SimConfig};

const ATTACKER: &str = "198.51.100.66:6666";

fn attacker_addr() -> SocketAddr {
    ATTACKER.parse().unwrap()
}

/// Genuine probe datagrams of *another* exchange (another link secret) between the same
/// two UUIDs, captured from a complete run.
fn other_exchange_probes() -> Vec<Vec<u8>> {
    let mut other = Sim::pair(
        Profile::Public,
        Profile::Public,
        SimConfig {
            seed: 999,
            ..SimConfig::default()
        },
    );
    other.run();
    other.hosts[0].success();
    let probes: Vec<Vec<u8>> = other
        .tap
        .iter()
        .filter(|t| is_probe(&t.bytes))
        .map(|t| t.bytes.clone())
        .collect();
    // Probe, ProbeAck, Nominate and NominateAck are all there.
    for kind in 0x10..=0x13u8 {
        assert!(
            probes.iter().any(|p| p[4] == kind),
            "missing type {kind:#x}"
        );
    }
    probes
}

/// Runs `a -> b` while the attacker sends `junk(sim)` every 20 ms, each datagram to
/// peer 0 or 1 (its public endpoint). Returns the attacked sim and an unattacked
/// baseline.
fn attacked(
    a: Profile,
    b: Profile,
    mut junk: impl FnMut(&Sim) -> Vec<(usize, Vec<u8>)>,
) -> (Sim, Sim) {
    let mut baseline = Sim::pair(a, b, SimConfig::default());
    baseline.run();

    let mut sim = Sim::pair(a, b, SimConfig::default());
    let attacker = sim.add_host(INTERNET, attacker_addr(), "attacker");
    assert_eq!(attacker, 2);
    // The peers' public endpoints, as the server (and an observer) sees them.
    let targets = [sim.observe_udp(0), sim.observe_udp(1)];
    let mut t = Duration::ZERO;
    while sim.hosts[0].outcome().is_none() || sim.hosts[1].outcome().is_none() {
        for (peer, bytes) in junk(&sim) {
            sim.send(attacker, targets[peer], bytes);
        }
        t += Duration::from_millis(20);
        sim.run_until(t, |_| false);
        assert!(t < Duration::from_secs(11), "did not finish");
    }
    (sim, baseline)
}

fn to_both(datagrams: impl IntoIterator<Item = Vec<u8>>) -> Vec<(usize, Vec<u8>)> {
    datagrams
        .into_iter()
        .flat_map(|d| [(0, d.clone()), (1, d)])
        .collect()
}

fn assert_same_outcome(sim: &Sim, baseline: &Sim) {
    let (i, r) = (sim.hosts[0].success(), sim.hosts[1].success());
    let (bi, br) = (baseline.hosts[0].success(), baseline.hosts[1].success());
    assert_eq!((i.remote, i.kind, i.path), (bi.remote, bi.kind, bi.path));
    assert_eq!((r.remote, r.kind, r.path), (br.remote, br.kind, br.path));
    assert_eq!(
        i.elapsed, bi.elapsed,
        "the attack did not even slow it down"
    );
}

fn assert_unaffected(sim: &mut Sim, baseline: &Sim) {
    assert_same_outcome(sim, baseline);
    // Nothing was ever sent to the attacker, nothing about it was learned.
    assert!(
        sim.tap.iter().all(|t| t.destination != attacker_addr()),
        "a peer answered the attacker"
    );
    assert!(sim.hosts[2].received.is_empty() && sim.hosts[2].stray_probes == 0);
    for h in 0..2 {
        for (_, e) in &sim.hosts[h].events {
            if let PunchEvent::CandidateLearned(c) = e {
                assert_ne!(c.addr.ip(), attacker_addr().ip(), "learned the attacker");
            }
        }
    }
    sim.check_link(0, 1);
}

#[test]
fn forged_probes_with_our_exchange_id_are_ignored() {
    let stolen = other_exchange_probes();
    let (mut sim, baseline) = attacked(Profile::FullCone, Profile::Public, |sim| {
        // The attacker saw our exchange id on the wire and pastes it into well-formed
        // probes it sealed without our secret.
        let Some(ours) = sim.tap.iter().find_map(|t| exchange_id_of(&t.bytes)) else {
            return Vec::new();
        };
        to_both(stolen.iter().map(|p| {
            let mut forged = p.clone();
            forged[5..13].copy_from_slice(ours.as_bytes());
            forged
        }))
    });
    let ignored: u32 = (0..2)
        .map(|h| sim.hosts[h].punch.as_ref().unwrap().stats().ignored)
        .sum();
    assert!(
        ignored >= 20,
        "forgeries reached the machines and were rejected there ({ignored})"
    );
    assert_unaffected(&mut sim, &baseline);
}

#[test]
fn probes_replayed_from_another_exchange_are_ignored() {
    let stolen = other_exchange_probes();
    let (mut sim, baseline) = attacked(Profile::FullCone, Profile::Public, |_| {
        to_both(stolen.clone())
    });
    // Another exchange id: the hosts' demux does not even route them to the machine.
    let strays: u32 = (0..2).map(|h| sim.hosts[h].stray_probes).sum();
    assert!(strays >= 20, "{strays}");
    assert_unaffected(&mut sim, &baseline);
}

#[test]
fn replay_fed_straight_to_the_machine_is_ignored_too() {
    // Same as above but bypassing the demux (a driver that routes by peer, not by id).
    let stolen = other_exchange_probes();
    let mut sim = Sim::pair(Profile::Public, Profile::Public, SimConfig::default());
    sim.step(Duration::from_secs(1));
    let now = sim.now;
    let punch = sim.hosts[1].punch.as_mut().unwrap();
    while punch.poll_transmit().is_some() {}
    let before = punch.stats();
    for p in &stolen {
        assert_eq!(p.len(), PROBE_LEN);
        punch.handle_datagram(now, attacker_addr(), p);
    }
    assert!(punch.poll_transmit().is_none());
    assert!(punch.poll_event().is_none());
    assert_eq!(punch.stats().ignored - before.ignored, stolen.len() as u32);
    assert_eq!(punch.stats().authentic_received, before.authentic_received);
}

#[test]
fn reflected_own_probes_are_ignored() {
    // The attacker (or a hairpinning middlebox) sends each peer its own datagrams back.
    let (mut sim, baseline) = attacked(Profile::FullCone, Profile::Public, |sim| {
        sim.tap
            .iter()
            .filter(|t| t.host < 2 && is_probe(&t.bytes))
            .rev()
            .take(6)
            .map(|t| (t.host, t.bytes.clone()))
            .collect()
    });
    assert_unaffected(&mut sim, &baseline);
}

#[test]
fn garbage_and_truncated_datagrams_are_ignored() {
    let (mut sim, baseline) = attacked(Profile::FullCone, Profile::Public, |sim| {
        let mut junk = vec![
            vec![],
            vec![0x00, b'C', b'H', b'R'],
            vec![0xC0; 1200],
            vec![0x00, b'C', b'H', b'R', 0x10],
        ];
        if let Some(t) = sim.tap.iter().find(|t| t.host < 2 && is_probe(&t.bytes)) {
            junk.push(t.bytes[..PROBE_LEN - 1].to_vec());
            let mut long = t.bytes.clone();
            long.push(0);
            junk.push(long);
        }
        to_both(junk)
    });
    assert_unaffected(&mut sim, &baseline);
}

/// Documented limit: an on-path observer that replays a peer's genuine probe of *this*
/// exchange from its own address is learned as a peer-reflexive candidate and gets
/// answers (one ack per datagram, plus backed-off probes: no amplification beyond
/// that). It cannot validate itself (that needs the other peer's ProbeAck for a probe
/// sent to the attacker's address, i.e. acting as a working relay) and cannot change
/// the outcome; the QUIC link authenticates the peers' keys on top.
#[test]
fn same_exchange_replay_from_third_address_cannot_divert() {
    let (mut sim, baseline) = attacked(Profile::FullCone, Profile::Public, |sim| {
        sim.tap
            .iter()
            .filter(|t| t.host < 2 && is_probe(&t.bytes) && t.bytes[4] == 0x10)
            .rev()
            .take(2)
            .map(|t| (1 - t.host, t.bytes.clone()))
            .collect()
    });
    assert_same_outcome(&sim, &baseline);
    let to_attacker = sim
        .tap
        .iter()
        .filter(|t| t.destination == attacker_addr())
        .count();
    let from_attacker = sim.tap.iter().filter(|t| t.host == 2).count();
    assert!(to_attacker > 0, "the replay is answered (documented)");
    let probes_to_attacker = sim
        .tap
        .iter()
        .filter(|t| t.destination == attacker_addr() && t.bytes[4] == 0x10)
        .count();
    let acks_to_attacker = to_attacker - probes_to_attacker;
    assert!(
        acks_to_attacker <= from_attacker,
        "at most one ack per replayed datagram"
    );
    for h in 0..2 {
        assert!(
            !sim.hosts[h].events.iter().any(|(_, e)| matches!(e,
                PunchEvent::PathValidated { remote, .. } if *remote == attacker_addr())),
            "the attacker's address never validates"
        );
    }
    sim.check_link(0, 1);
}
