//! Hole punching under link conditions: latency, loss, jitter (reordering), skewed
//! start times, the give-up limit, an absent peer; plus a seeded property test over
//! all of them. All times are virtual (deterministic), never wall-clock.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod punch_sim;

use std::time::Duration;

use chatr_client::punch::{FailReason, PathKind, PunchConfig};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, RngSeed};
use punch_sim::{Profile, Sim, SimConfig, describe, expect_direct};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// 3 RTT + LAN grace + two probe intervals, plus the skew of the start times: the side
/// that started first has backed off by then, and its next probe (the one a symmetric
/// peer's late probes cannot replace) comes up to half the skew later (the interval
/// grows to `elapsed / 2 + initial_interval` under ×1.5 backoff).
fn bound(cfg: &SimConfig) -> Duration {
    let late = cfg.initiator_start.max(cfg.responder_start);
    cfg.latency * 2 * 3
        + cfg.jitter * 3
        + cfg.punch.lan_grace
        + cfg.punch.initial_interval * 2
        + late
        + late / 2
}

/// Representative pairs: both EIM, one symmetric side each way, double NAT, public.
const PAIRS: [(Profile, Profile); 6] = [
    (Profile::PortRestricted, Profile::PortRestricted),
    (Profile::Symmetric, Profile::FullCone),
    (Profile::AddressRestricted, Profile::Symmetric),
    (Profile::Cgnat, Profile::AddressRestricted),
    (Profile::Public, Profile::Symmetric),
    (Profile::Cgnat, Profile::Cgnat),
];

fn assert_direct(sim: &mut Sim, cfg: &SimConfig, check_bound: bool) {
    let ctx = format!(
        "{} / {}: {} | {}",
        sim.hosts[0].name,
        sim.hosts[1].name,
        describe(&sim.hosts[0].outcome()),
        describe(&sim.hosts[1].outcome())
    );
    let (i, r) = (sim.hosts[0].success(), sim.hosts[1].success());
    assert_eq!(i.path, r.path, "{ctx}");
    if check_bound {
        let limit = bound(cfg);
        // Elapsed is measured from each side's own start.
        assert!(
            i.elapsed + cfg.initiator_start <= limit,
            "{ctx}: over {limit:?}"
        );
        assert!(
            r.elapsed + cfg.responder_start <= limit,
            "{ctx}: over {limit:?}"
        );
    }
    sim.check_link(0, 1);
}

fn latency_suite(latency: Duration) {
    for (a, b) in PAIRS {
        let cfg = SimConfig {
            latency,
            ..SimConfig::default()
        };
        let mut sim = Sim::pair(a, b, cfg.clone());
        sim.run();
        assert_direct(&mut sim, &cfg, true);
        let i = sim.hosts[0].success();
        // The measured RTT is the simulated one (validated on the chosen path).
        if let Some(rtt) = i.rtt {
            assert_eq!(rtt, latency * 2, "{a} -> {b}");
        }
    }
}

#[test]
fn latency_20ms() {
    latency_suite(ms(20));
}

#[test]
fn latency_50ms() {
    latency_suite(ms(50));
}

#[test]
fn latency_150ms_intercontinental() {
    latency_suite(ms(150));
}

#[test]
fn loss_30_percent_still_connects() {
    let mut lost = 0;
    for a in Profile::ALL {
        for b in Profile::ALL {
            if !expect_direct(a, b) {
                continue;
            }
            for seed in 1..=3 {
                let cfg = SimConfig {
                    loss: 0.3,
                    seed,
                    ..SimConfig::default()
                };
                let mut sim = Sim::pair(a, b, cfg.clone());
                sim.run();
                lost += sim.drops.lost;
                assert_direct(&mut sim, &cfg, false);
            }
        }
    }
    assert!(
        lost > 100,
        "the loss model must actually drop datagrams ({lost})"
    );
}

#[test]
fn jitter_reorders_but_connects() {
    for (a, b) in PAIRS {
        let cfg = SimConfig {
            latency: ms(20),
            jitter: ms(40),
            seed: 7,
            ..SimConfig::default()
        };
        let mut sim = Sim::pair(a, b, cfg.clone());
        sim.run();
        assert_direct(&mut sim, &cfg, true);
    }
}

#[test]
fn skewed_start_times() {
    // PacketClientInfo reaches one side later than the other: its NAT is still closed
    // when the first probes arrive, and they are dropped.
    for (ini, resp) in [(ms(0), ms(300)), (ms(300), ms(0))] {
        for (a, b) in PAIRS {
            let cfg = SimConfig {
                initiator_start: ini,
                responder_start: resp,
                ..SimConfig::default()
            };
            let mut sim = Sim::pair(a, b, cfg.clone());
            sim.run();
            assert_direct(&mut sim, &cfg, true);
        }
    }
}

#[test]
fn gives_up_at_configured_limit_listing_candidates() {
    let cfg = SimConfig {
        punch: PunchConfig {
            give_up_after: Duration::from_secs(2),
            ..PunchConfig::default()
        },
        ..SimConfig::default()
    };
    let mut sim = Sim::pair(Profile::Symmetric, Profile::Symmetric, cfg);
    let given = sim.given_candidates(0);
    assert_eq!(
        given.len(),
        3,
        "private, public-udp and public-tcp: {given:?}"
    );
    sim.run();
    let f = sim.hosts[0].failure();
    assert_eq!(f.reason, FailReason::NoPathValidated);
    assert_eq!(f.elapsed, Duration::from_secs(2));
    // Probes at 0, 100, 250, 475, 812, 1318 ms; the next (2078 ms) is past the limit.
    assert_eq!(f.tried, given.iter().map(|c| (*c, 6)).collect::<Vec<_>>());
    assert_eq!(f.probes_sent, 18);
    let msg = f.to_string();
    assert!(msg.starts_with("hole punching failed after 2.0s"), "{msg}");
    for c in &given {
        assert!(
            msg.contains(&format!("{} ({}) ×6", c.addr, c.kind)),
            "{msg}"
        );
    }
    assert_eq!(sim.hosts[1].failure().elapsed, Duration::from_secs(2));
    // Closed machines stop sending: nothing after the limit.
    assert!(sim.tap.iter().all(|t| t.at < Duration::from_secs(2)));
    assert!(sim.hosts[0].punch.as_ref().unwrap().is_closed());
}

#[test]
fn absent_peer_times_out() {
    // The responder's host is up behind a full cone but never starts its punch (its
    // PacketClientInfo never arrived).
    let mut sim = Sim::new(SimConfig::default());
    let i = sim.add_site(Profile::PortRestricted, 0, "initiator");
    let r = sim.add_site(Profile::FullCone, 1, "responder");
    sim.broker(i, r);
    sim.forget_pending(r);
    sim.run_until(Duration::from_secs(11), |s| s.hosts[i].outcome().is_some());
    let f = sim.hosts[i].failure();
    assert_eq!(f.reason, FailReason::NoPathValidated);
    assert_eq!(f.elapsed, Duration::from_secs(10));
    assert!(
        sim.hosts[r].stray_probes > 0,
        "probes reached the idle host"
    );
    assert!(sim.hosts[r].punch.is_none());
}

#[test]
fn measured_path_kinds_are_public_across_sites() {
    let mut sim = Sim::pair(
        Profile::FullCone,
        Profile::PortRestricted,
        SimConfig::default(),
    );
    sim.run();
    assert_eq!(sim.hosts[0].success().path, PathKind::Public);
}

fn pair_at(index: usize) -> (Profile, Profile) {
    let n = Profile::ALL.len();
    (Profile::ALL[index / n % n], Profile::ALL[index % n])
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 96,
        rng_seed: RngSeed::Fixed(0xC4A7),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Any pair, any seed, latency 1–150 ms, loss up to 30 %, jitter, skewed starts:
    /// the outcome is the expected one, both sides agree and the path carries data.
    #[test]
    fn outcome_matches_expectation(
        pair in 0usize..36,
        seed in any::<u64>(),
        latency_ms in 1u64..150,
        loss_pct in 0u32..=30,
        jitter_ms in 0u64..30,
        ini_start in 0u64..300,
        resp_start in 0u64..300,
    ) {
        let (a, b) = pair_at(pair);
        let cfg = SimConfig {
            latency: ms(latency_ms),
            jitter: ms(jitter_ms),
            loss: f64::from(loss_pct) / 100.0,
            seed,
            initiator_start: ms(ini_start),
            responder_start: ms(resp_start),
            ..SimConfig::default()
        };
        let mut sim = Sim::pair(a, b, cfg.clone());
        sim.run();
        let ctx = format!("{a} -> {b} {cfg:?}: {} | {}", describe(&sim.hosts[0].outcome()), describe(&sim.hosts[1].outcome()));
        if expect_direct(a, b) {
            let (i, r) = (sim.hosts[0].success(), sim.hosts[1].success());
            prop_assert_eq!(i.path, PathKind::Public, "{}", ctx);
            prop_assert_eq!(r.path, PathKind::Public, "{}", ctx);
            prop_assert!(i.elapsed < cfg.punch.give_up_after, "{}", ctx);
            if loss_pct == 0 {
                let limit = bound(&cfg);
                prop_assert!(i.elapsed + cfg.initiator_start <= limit, "{}", ctx);
            }
            sim.check_link(0, 1);
        } else {
            let (i, r) = (sim.hosts[0].failure(), sim.hosts[1].failure());
            prop_assert_eq!(i.reason, FailReason::NoPathValidated, "{}", ctx);
            prop_assert_eq!(r.reason, FailReason::NoPathValidated, "{}", ctx);
        }
    }
}
