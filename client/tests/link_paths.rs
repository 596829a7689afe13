//! Link attempts end to end in virtual time (`link_sim`): which path every NAT pair
//! links on, how fast, and how the link moves between direct and relayed paths.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod link_sim;
mod punch_sim;

use std::time::Duration;

use chatr_client::path::{AgentFailure, PathClass, PathEvent, PathId};
use link_sim::{LinkSim, LinkSimConfig, Via};
use punch_sim::{Profile, SimConfig, expect_direct};

const LIMIT: Duration = Duration::from_secs(30);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn linked(sim: &LinkSim, side: usize) -> (Duration, PathClass) {
    let s = &sim.sides[side];
    match &s.linked {
        Some((at, outcome)) => (*at, outcome.class),
        None => panic!(
            "side {side} did not link (failed: {:?}; switches {:?})",
            s.failed, s.switches
        ),
    }
}

#[test]
fn every_pair_links_direct_where_it_can_and_relayed_where_it_cannot() {
    let mut table = Vec::new();
    for a in Profile::ALL {
        for b in Profile::ALL {
            let mut sim = LinkSim::pair(a, b, LinkSimConfig::default());
            sim.run_to_link(LIMIT);
            let (at, class) = linked(&sim, 0);
            let (_, responder_class) = linked(&sim, 1);
            let rtt = sim.direct_rtt();
            if expect_direct(a, b) {
                assert!(
                    !class.is_relayed() && !responder_class.is_relayed(),
                    "{a} ↔ {b}: expected direct, got {class} / {responder_class}"
                );
                // 2 RTT from ClientInfo (optimistic start); 2.5 RTT when one side is
                // symmetric (its peer-reflexive port is learned from its probes).
                let bound = if a == Profile::Symmetric || b == Profile::Symmetric {
                    rtt * 5 / 2
                } else {
                    rtt * 2
                };
                assert!(at <= bound + ms(1), "{a} ↔ {b}: direct link after {at:?}");
            } else {
                assert_eq!(
                    class,
                    PathClass::RelayUdp,
                    "{a} ↔ {b}: expected the UDP relay"
                );
                // The handshake and the confirmation cross the relay: 2 relay RTT.
                assert!(
                    at <= sim.relay_rtt() * 2 + ms(1),
                    "{a} ↔ {b}: relayed link after {at:?}"
                );
                let reason = sim.sides[0].linked.as_ref().unwrap().1.relay_reason.clone();
                assert!(reason.is_some(), "{a} ↔ {b}: a relayed link says why");
            }
            table.push(format!(
                "{a:>18} ↔ {b:<18} {class:<13} {:>4} ms",
                at.as_millis()
            ));
        }
    }
    println!("{}", table.join("\n"));
}

#[test]
fn two_peers_behind_one_router_link_over_the_lan() {
    for profile in [Profile::PortRestricted, Profile::Symmetric, Profile::Cgnat] {
        let mut sim = LinkSim::same_lan(profile, LinkSimConfig::default());
        sim.run_to_link(LIMIT);
        assert_eq!(linked(&sim, 0).1, PathClass::DirectLan, "{profile}");
        assert_eq!(linked(&sim, 1).1, PathClass::DirectLan, "{profile}");
    }
}

#[test]
fn without_a_relay_a_hard_pair_fails_with_the_punch_report() {
    let cfg = LinkSimConfig {
        relay: false,
        ..LinkSimConfig::default()
    };
    let mut sim = LinkSim::pair(Profile::Symmetric, Profile::PortRestricted, cfg);
    sim.run_to_link(LIMIT);
    let Some((at, AgentFailure::PunchFailed(failure))) = &sim.sides[0].failed else {
        panic!("{:?}", sim.sides[0].failed);
    };
    assert!(
        *at >= Duration::from_secs(10) && *at < Duration::from_secs(11),
        "{at:?}"
    );
    assert!(
        failure.to_string().contains("hole punching failed"),
        "{failure}"
    );
    // An easy pair without a relay still links directly.
    let cfg = LinkSimConfig {
        relay: false,
        ..LinkSimConfig::default()
    };
    let mut sim = LinkSim::pair(Profile::PortRestricted, Profile::Cgnat, cfg);
    sim.run_to_link(LIMIT);
    assert_eq!(linked(&sim, 0).1, PathClass::DirectPublic);
}

#[test]
fn a_network_that_blocks_udp_links_over_the_tls_relay() {
    for blocked in [[true, false], [false, true], [true, true]] {
        let cfg = LinkSimConfig {
            udp_blocked: blocked,
            ..LinkSimConfig::default()
        };
        let mut sim = LinkSim::pair(Profile::PortRestricted, Profile::PortRestricted, cfg);
        sim.run_to_link(LIMIT);
        for side in 0..2 {
            let (at, class) = linked(&sim, side);
            let expected = if blocked[side] {
                PathClass::RelayTls
            } else {
                PathClass::RelayUdp
            };
            assert_eq!(class, expected, "blocked {blocked:?}, side {side}");
            assert!(
                at <= sim.relay_rtt() * 3,
                "blocked {blocked:?}: linked after {at:?}"
            );
        }
        assert!(sim.relayed_tls > 0);
    }
}

#[test]
fn set_up_survives_loss_on_every_path() {
    for seed in 1..=20 {
        for (a, b) in [
            (Profile::PortRestricted, Profile::Cgnat),
            (Profile::Symmetric, Profile::PortRestricted),
        ] {
            let cfg = LinkSimConfig {
                net: SimConfig {
                    loss: 0.10,
                    seed,
                    ..SimConfig::default()
                },
                ..LinkSimConfig::default()
            };
            let mut sim = LinkSim::pair(a, b, cfg);
            sim.run_to_link(LIMIT);
            assert!(
                sim.sides[0].linked.is_some(),
                "{a} ↔ {b} seed {seed}: {:?}; sent {:?}",
                sim.sides[0].failed,
                sim.sides[0].quic_sent
            );
            let (at, _) = linked(&sim, 0);
            assert!(at < Duration::from_secs(5), "{a} ↔ {b} seed {seed}: {at:?}");
            // A lost probe may let the relay win the race; the link still ends up
            // direct where direct works.
            sim.run_for(Duration::from_secs(3));
            for side in 0..2 {
                let direct = matches!(sim.active(side), Some(PathId::Direct(_)));
                assert_eq!(
                    direct,
                    expect_direct(a, b),
                    "{a} ↔ {b} seed {seed} side {side}"
                );
            }
        }
    }
}

/// The first time after `after` that side `side` uses a path matching `pred`.
fn switched_to(
    sim: &LinkSim,
    side: usize,
    after: Duration,
    pred: impl Fn(PathId) -> bool,
) -> Option<Duration> {
    sim.sides[side]
        .switches
        .iter()
        .find(|(t, event)| {
            *t >= after && matches!(event, PathEvent::Switched { to, .. } if pred(*to))
        })
        .map(|(t, _)| *t)
}

#[test]
fn a_direct_path_that_opens_later_takes_the_link_over() {
    let cfg = LinkSimConfig {
        data_every: Some(ms(20)),
        ..LinkSimConfig::default()
    };
    let mut sim = LinkSim::pair(Profile::PortRestricted, Profile::Cgnat, cfg);
    // The two sites cannot reach each other at first (a firewall in between).
    sim.sim.blackhole = Some((sim.public_ip(0), sim.public_ip(1)));
    sim.run_to_link(LIMIT);
    assert_eq!(linked(&sim, 0).1, PathClass::RelayUdp);
    sim.run_for(Duration::from_secs(20));
    // The way opens.
    let opened = sim.elapsed();
    sim.sim.blackhole = None;
    sim.run_for(Duration::from_secs(10));
    for side in 0..2 {
        let moved = switched_to(&sim, side, opened, |p| matches!(p, PathId::Direct(_)))
            .unwrap_or_else(|| {
                panic!(
                    "side {side} never moved to direct: {:?}",
                    sim.sides[side].switches
                )
            });
        // Probes of unused paths back off to `probe_max` (2 s); one round trip more.
        assert!(
            moved - opened <= Duration::from_secs(3),
            "side {side} moved after {:?}",
            moved - opened
        );
        assert!(matches!(sim.active(side), Some(PathId::Direct(_))));
        let direct_data = sim.first_data_after(1 - side, moved + ms(100), |v| !v.is_relay());
        assert!(
            direct_data.is_some(),
            "no data over the direct path after the switch"
        );
    }
}

#[test]
fn a_blackholed_direct_path_falls_back_to_the_relay_within_five_seconds() {
    for (a, b) in [
        (Profile::FullCone, Profile::PortRestricted),
        (Profile::PortRestricted, Profile::Cgnat),
        (Profile::Symmetric, Profile::FullCone),
    ] {
        let cfg = LinkSimConfig {
            data_every: Some(ms(20)),
            ..LinkSimConfig::default()
        };
        let mut sim = LinkSim::pair(a, b, cfg);
        sim.run_to_link(LIMIT);
        assert!(!linked(&sim, 0).1.is_relayed(), "{a} ↔ {b}");
        sim.run_for(Duration::from_secs(5));
        let black = sim.elapsed();
        sim.sim.blackhole = Some((sim.public_ip(0), sim.public_ip(1)));
        sim.run_for(Duration::from_secs(8));
        for side in 0..2 {
            let moved = switched_to(&sim, side, black, |p| p.is_relay())
                .unwrap_or_else(|| panic!("{a} ↔ {b}: side {side} stayed on the dead path"));
            assert!(
                moved - black <= Duration::from_secs(5),
                "{a} ↔ {b}: fell back after {:?}",
                moved - black
            );
            // And the data gets through again, over the relay.
            let resumed = sim
                .first_data_after(1 - side, moved, Via::is_relay)
                .unwrap_or_else(|| panic!("{a} ↔ {b}: no data over the relay"));
            assert!(resumed - black <= Duration::from_secs(5) + sim.relay_rtt());
        }
    }
}

#[test]
fn a_flapping_path_does_not_make_the_link_flap() {
    // Direct works, then goes black for 4 s out of every 5 s: the link falls back,
    // and returns only after answers in a row — never more than once per outage.
    let cfg = LinkSimConfig {
        data_every: Some(ms(50)),
        ..LinkSimConfig::default()
    };
    let mut sim = LinkSim::pair(Profile::PortRestricted, Profile::PortRestricted, cfg);
    sim.run_to_link(LIMIT);
    let pair = (sim.public_ip(0), sim.public_ip(1));
    for outage in 0..6 {
        let black = sim.elapsed();
        sim.sim.blackhole = Some(pair);
        sim.run_for(Duration::from_secs(4));
        // Each outage is bridged by the relay before it ends.
        assert!(
            sim.first_data_after(1, black, Via::is_relay).is_some(),
            "outage {outage}: no data over the relay"
        );
        sim.sim.blackhole = None;
        sim.run_for(Duration::from_secs(1));
    }
    // Up to the first choice, then out and back at most once per outage.
    let switches = sim.sides[0].agent.paths().unwrap().switches();
    assert!(switches <= 1 + 2 * 6, "{switches} switches in 6 outages");
}
