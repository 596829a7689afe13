//! Every ordered pair of NAT profiles (initiator behind the first, responder behind the
//! second), plus two peers on one LAN, in the deterministic simulator.
//!
//! Expected outcome (see `punch_sim::expect_direct`): a direct path for every pair
//! except symmetric ↔ {port-restricted, symmetric, cgnat}, where our algorithm (no port
//! prediction) honestly fails at the give-up limit with every candidate listed.
//! Times are virtual: one-way internet latency 20 ms (RTT 40 ms), no loss; success must
//! come within 3 RTT + two probe intervals of pacing slack. The peers sit on different
//! home LANs, so no private candidate is plausibly on the initiator's LAN and it must not
//! wait `lan_grace` for one.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod punch_sim;

use std::time::Duration;

use chatr_client::punch::{CandidateKind, FailReason, PathKind, PunchEvent};
use punch_sim::{Profile, Sim, SimConfig, describe, expect_direct};

/// Success bound in virtual time (no LAN grace: see the module comment).
fn bound(cfg: &SimConfig) -> Duration {
    let rtt = cfg.latency * 2;
    rtt * 3 + cfg.punch.initial_interval * 2
}

fn check_pair(a: Profile, b: Profile) {
    let cfg = SimConfig::default();
    let mut sim = Sim::pair(a, b, cfg.clone());
    let given_to_initiator = sim.given_candidates(0);
    let given_to_responder = sim.given_candidates(1);
    sim.run();
    let (io, ro) = (sim.hosts[0].outcome(), sim.hosts[1].outcome());
    let ctx = format!(
        "{a} -> {b}: initiator {} / responder {}",
        describe(&io),
        describe(&ro)
    );

    if expect_direct(a, b) {
        let (i, r) = (sim.hosts[0].success(), sim.hosts[1].success());
        assert_eq!(
            (i.path, r.path),
            (PathKind::Public, PathKind::Public),
            "{ctx}"
        );
        // A symmetric NAT's peer is reached on the port it opened for us (learned),
        // everyone else on the port the server observed.
        let expect_kind = |far: Profile| {
            if far == Profile::Symmetric {
                CandidateKind::PeerReflexive
            } else {
                CandidateKind::PublicUdp
            }
        };
        assert_eq!(i.kind, expect_kind(b), "{ctx}");
        assert_eq!(r.kind, expect_kind(a), "{ctx}");
        if b != Profile::Symmetric {
            let announced = given_to_initiator
                .iter()
                .find(|c| c.kind == CandidateKind::PublicUdp)
                .unwrap();
            assert_eq!(i.remote, announced.addr, "{ctx}");
        }
        if a == Profile::Symmetric {
            assert!(
                sim.hosts[1].learned().iter().any(|c| c.addr == r.remote),
                "{ctx}"
            );
        }
        let limit = bound(&cfg);
        assert!(i.elapsed <= limit, "{ctx}: initiator slower than {limit:?}");
        assert!(r.elapsed <= limit, "{ctx}: responder slower than {limit:?}");
        assert!(i.probes_sent > 0 && r.probes_sent > 0, "{ctx}");
        assert_eq!(
            i.probes_sent as usize,
            sim.sent_of_type(0, 0x10) + sim.sent_of_type(0, 0x12),
            "{ctx}"
        );
        // Both agree, and the agreed path carries data both ways.
        sim.check_link(0, 1);
    } else {
        let (i, r) = (sim.hosts[0].failure(), sim.hosts[1].failure());
        for (who, f, given) in [
            ("initiator", &i, &given_to_initiator),
            ("responder", &r, &given_to_responder),
        ] {
            assert_eq!(f.reason, FailReason::NoPathValidated, "{ctx}: {who}");
            assert_eq!(f.elapsed, cfg.punch.give_up_after, "{ctx}: {who}");
            let tried: Vec<_> = f.tried.iter().map(|(c, _)| *c).collect();
            for c in given {
                assert!(tried.contains(c), "{ctx}: {who} did not report {c}");
                assert!(
                    f.to_string().contains(&c.addr.to_string()),
                    "{ctx}: {who} message lacks {c}"
                );
            }
            assert!(
                f.tried.iter().all(|(_, n)| *n > 0),
                "{ctx}: {who} left a candidate unprobed"
            );
            assert_eq!(
                f.probes_sent,
                f.tried.iter().map(|(_, n)| n).sum::<u32>(),
                "{ctx}: {who}"
            );
        }
        for h in 0..2 {
            assert!(
                !sim.hosts[h]
                    .events
                    .iter()
                    .any(|(_, e)| matches!(e, PunchEvent::PathValidated { .. })),
                "{ctx}: nothing may validate"
            );
        }
    }
}

macro_rules! pairs {
    ($($name:ident: $a:ident, $b:ident;)*) => {$(
        #[test]
        fn $name() {
            check_pair(Profile::$a, Profile::$b);
        }
    )*};
}

pairs! {
    public_to_public: Public, Public;
    public_to_full_cone: Public, FullCone;
    public_to_address_restricted: Public, AddressRestricted;
    public_to_port_restricted: Public, PortRestricted;
    public_to_symmetric: Public, Symmetric;
    public_to_cgnat: Public, Cgnat;
    full_cone_to_public: FullCone, Public;
    full_cone_to_full_cone: FullCone, FullCone;
    full_cone_to_address_restricted: FullCone, AddressRestricted;
    full_cone_to_port_restricted: FullCone, PortRestricted;
    full_cone_to_symmetric: FullCone, Symmetric;
    full_cone_to_cgnat: FullCone, Cgnat;
    address_restricted_to_public: AddressRestricted, Public;
    address_restricted_to_full_cone: AddressRestricted, FullCone;
    address_restricted_to_address_restricted: AddressRestricted, AddressRestricted;
    address_restricted_to_port_restricted: AddressRestricted, PortRestricted;
    address_restricted_to_symmetric: AddressRestricted, Symmetric;
    address_restricted_to_cgnat: AddressRestricted, Cgnat;
    port_restricted_to_public: PortRestricted, Public;
    port_restricted_to_full_cone: PortRestricted, FullCone;
    port_restricted_to_address_restricted: PortRestricted, AddressRestricted;
    port_restricted_to_port_restricted: PortRestricted, PortRestricted;
    port_restricted_to_symmetric: PortRestricted, Symmetric;
    port_restricted_to_cgnat: PortRestricted, Cgnat;
    symmetric_to_public: Symmetric, Public;
    symmetric_to_full_cone: Symmetric, FullCone;
    symmetric_to_address_restricted: Symmetric, AddressRestricted;
    symmetric_to_port_restricted: Symmetric, PortRestricted;
    symmetric_to_symmetric: Symmetric, Symmetric;
    symmetric_to_cgnat: Symmetric, Cgnat;
    cgnat_to_public: Cgnat, Public;
    cgnat_to_full_cone: Cgnat, FullCone;
    cgnat_to_address_restricted: Cgnat, AddressRestricted;
    cgnat_to_port_restricted: Cgnat, PortRestricted;
    cgnat_to_symmetric: Cgnat, Symmetric;
    cgnat_to_cgnat: Cgnat, Cgnat;
}

/// The expectation table itself, so a change to it is a visible test change.
#[test]
fn expected_failures_are_exactly_symmetric_vs_port_filtering() {
    let failing: Vec<(Profile, Profile)> = Profile::ALL
        .iter()
        .flat_map(|a| Profile::ALL.iter().map(move |b| (*a, *b)))
        .filter(|(a, b)| !expect_direct(*a, *b))
        .collect();
    use Profile::*;
    assert_eq!(
        failing,
        vec![
            (PortRestricted, Symmetric),
            (Symmetric, PortRestricted),
            (Symmetric, Symmetric),
            (Symmetric, Cgnat),
            (Cgnat, Symmetric),
        ]
    );
}

/// Two peers behind one router: the LAN path wins (their public endpoints would need
/// hairpinning, which the router does not do), with no LAN grace wait.
fn check_same_lan(profile: Profile) {
    let cfg = SimConfig::default();
    let mut sim = Sim::same_lan(profile, cfg.clone());
    sim.run();
    let ctx = format!(
        "same LAN behind {profile}: initiator {} / responder {}",
        describe(&sim.hosts[0].outcome()),
        describe(&sim.hosts[1].outcome())
    );
    let (i, r) = (sim.hosts[0].success(), sim.hosts[1].success());
    assert_eq!((i.path, r.path), (PathKind::Lan, PathKind::Lan), "{ctx}");
    assert_eq!(
        (i.kind, r.kind),
        (CandidateKind::Private, CandidateKind::Private),
        "{ctx}"
    );
    assert_eq!(i.remote, sim.hosts[1].addr, "{ctx}");
    assert_eq!(r.remote, sim.hosts[0].addr, "{ctx}");
    // LAN RTT is 2 ms; validation + nomination is two LAN round trips.
    let limit = cfg.lan_latency * 2 * 3 + cfg.punch.initial_interval;
    assert!(i.elapsed <= limit, "{ctx}");
    assert!(
        sim.drops.no_hairpin > 0,
        "{ctx}: the public candidates were tried and needed hairpinning"
    );
    sim.check_link(0, 1);
}

#[test]
fn same_lan_full_cone() {
    check_same_lan(Profile::FullCone);
}
#[test]
fn same_lan_address_restricted() {
    check_same_lan(Profile::AddressRestricted);
}
#[test]
fn same_lan_port_restricted() {
    check_same_lan(Profile::PortRestricted);
}
#[test]
fn same_lan_symmetric() {
    check_same_lan(Profile::Symmetric);
}
#[test]
fn same_lan_cgnat() {
    check_same_lan(Profile::Cgnat);
}

/// Two peers behind one *hairpinning* router on a slow LAN (40 ms one way) with a fast
/// uplink (5 ms): the public (hairpinned) path validates first, the LAN path within
/// `lan_grace`. Returns the initiator's and responder's outcome.
fn hairpin_lan(
    lan_grace: Duration,
) -> (
    chatr_client::punch::PunchSuccess,
    chatr_client::punch::PunchSuccess,
    Sim,
) {
    let mut cfg = SimConfig {
        latency: Duration::from_millis(5),
        lan_latency: Duration::from_millis(40),
        ..SimConfig::default()
    };
    cfg.punch.lan_grace = lan_grace;
    let mut sim = Sim::new(cfg);
    let lan = sim.add_site_segment(Profile::FullCone, 0);
    sim.enable_hairpin(lan);
    let i = sim.add_host(lan, "192.168.1.2:4000".parse().unwrap(), "initiator");
    let r = sim.add_host(lan, "192.168.1.3:4000".parse().unwrap(), "responder");
    sim.broker(i, r);
    sim.run();
    let (si, sr) = (sim.hosts[i].success(), sim.hosts[r].success());
    (si, sr, sim)
}

#[test]
fn lan_preferred_when_it_validates_within_grace() {
    let (i, r, mut sim) = hairpin_lan(Duration::from_millis(200));
    let validated: Vec<PathKind> = sim.hosts[0]
        .events
        .iter()
        .filter_map(|(_, e)| match e {
            PunchEvent::PathValidated { path, .. } => Some(*path),
            _ => None,
        })
        .collect();
    assert_eq!(
        validated,
        vec![PathKind::Public, PathKind::Lan],
        "public answered first"
    );
    assert_eq!((i.path, r.path), (PathKind::Lan, PathKind::Lan));
    assert_eq!(i.remote, sim.hosts[1].addr);
    // LAN validation (one 80 ms LAN RTT) then nomination (another).
    assert_eq!(i.elapsed, Duration::from_millis(160));
    sim.check_link(0, 1);
}

#[test]
fn public_path_taken_when_lan_answers_after_grace() {
    let (i, r, mut sim) = hairpin_lan(Duration::from_millis(20));
    assert_eq!((i.path, r.path), (PathKind::Public, PathKind::Public));
    assert_eq!(i.kind, CandidateKind::PublicUdp);
    // Public validation after one 10 ms RTT, 20 ms grace, nomination after another RTT.
    assert_eq!(i.elapsed, Duration::from_millis(40));
    sim.check_link(0, 1);
}

/// When the initiator sent its first Nominate and when its first path validated.
fn nominated_and_first_validated(sim: &Sim, h: usize) -> (Duration, Duration) {
    let at = |want: fn(&PunchEvent) -> bool| {
        sim.hosts[h]
            .events
            .iter()
            .find(|(_, e)| want(e))
            .map(|(t, _)| *t)
            .unwrap()
    };
    (
        at(|e| matches!(e, PunchEvent::Nominating { .. })),
        at(|e| matches!(e, PunchEvent::PathValidated { .. })),
    )
}

/// Two peers behind different home routers (192.168.1.0/24 and 192.168.2.0/24): the
/// responder's private candidate cannot be on the initiator's LAN, so the initiator
/// nominates the public path the moment it validates, without the LAN grace.
#[test]
fn foreign_private_candidate_costs_no_lan_grace() {
    for (a, b) in [
        (Profile::PortRestricted, Profile::PortRestricted),
        (Profile::Cgnat, Profile::Cgnat),
        (Profile::FullCone, Profile::Symmetric),
    ] {
        let cfg = SimConfig::default();
        let mut sim = Sim::pair(a, b, cfg.clone());
        assert!(
            sim.given_candidates(0)
                .iter()
                .any(|c| c.kind == CandidateKind::Private),
            "{a} -> {b}: the responder announced a private endpoint"
        );
        sim.run();
        let (nominated, validated) = nominated_and_first_validated(&sim, 0);
        assert_eq!(nominated, validated, "{a} -> {b}: no wait for a LAN path");
        let i = sim.hosts[0].success();
        assert_eq!(i.path, PathKind::Public, "{a} -> {b}");
        // Validation, then one round trip for the nomination: well inside the grace.
        assert!(
            i.elapsed < cfg.punch.lan_grace,
            "{a} -> {b}: took {:?}",
            i.elapsed
        );
        sim.check_link(0, 1);
    }
}

/// Two peers behind different routers whose LANs use the same prefix
/// (192.168.1.0/24): the responder's private endpoint is plausibly on the initiator's
/// LAN, so the initiator still waits `lan_grace` for it (it never answers: it is
/// another network) and then nominates the public path.
#[test]
fn private_candidate_in_our_subnet_still_gets_the_lan_grace() {
    let cfg = SimConfig::default();
    let mut sim = Sim::new(cfg.clone());
    let site_a = sim.add_site_segment(Profile::PortRestricted, 0);
    let site_b = sim.add_site_segment(Profile::PortRestricted, 1);
    let i = sim.add_host(site_a, "192.168.1.2:4000".parse().unwrap(), "initiator");
    let r = sim.add_host(site_b, "192.168.1.3:4000".parse().unwrap(), "responder");
    sim.broker(i, r);
    sim.run();
    let (nominated, validated) = nominated_and_first_validated(&sim, i);
    assert_eq!(nominated, validated + cfg.punch.lan_grace);
    let (si, sr) = (sim.hosts[i].success(), sim.hosts[r].success());
    assert_eq!((si.path, sr.path), (PathKind::Public, PathKind::Public));
    assert_eq!(si.kind, CandidateKind::PublicUdp);
    sim.check_link(i, r);
}
