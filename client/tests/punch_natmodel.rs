//! The simulator's NAT models behave as RFC 4787 describes them. The punch suites are
//! only as honest as these models, so they are checked on their own, with raw
//! (non-probe) datagrams and no `Punch` involved.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod punch_sim;

use std::net::SocketAddr;
use std::time::Duration;

use punch_sim::{INTERNET, Profile, SERVER, Sim, SimConfig};

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

const OBSERVER_1: &str = "198.51.100.200:5000";
const OBSERVER_2: &str = "198.51.100.201:6000";

/// A host behind `profile` plus two public observer hosts.
fn site(profile: Profile) -> (Sim, usize, usize, usize) {
    let mut sim = Sim::new(SimConfig::default());
    let h = sim.add_site(profile, 0, "h");
    let o1 = sim.add_host(INTERNET, addr(OBSERVER_1), "o1");
    let o2 = sim.add_host(INTERNET, addr(OBSERVER_2), "o2");
    (sim, h, o1, o2)
}

fn last_source(sim: &Sim, host: usize) -> Option<SocketAddr> {
    sim.hosts[host].received.last().map(|(_, src, _)| *src)
}

#[test]
fn mapping_behaviour() {
    for profile in Profile::ALL {
        let (mut sim, h, o1, o2) = site(profile);
        sim.send(h, addr(OBSERVER_1), b"x".to_vec());
        sim.send(h, addr(OBSERVER_2), b"x".to_vec());
        sim.run_for(Duration::from_millis(100));
        let (m1, m2) = (
            last_source(&sim, o1).unwrap(),
            last_source(&sim, o2).unwrap(),
        );
        match profile {
            Profile::Public => {
                assert_eq!(m1, sim.hosts[h].addr);
                assert_eq!(m2, m1);
            }
            Profile::Symmetric => {
                assert_ne!(m1, m2, "symmetric: new port per destination");
                assert_eq!(m1.ip(), m2.ip());
                assert_eq!(m1.ip(), "203.0.113.10".parse::<std::net::IpAddr>().unwrap());
            }
            _ => {
                assert_eq!(m1, m2, "{profile}: endpoint-independent mapping");
                assert_eq!(m1.port(), 4000, "{profile}: port preserved");
            }
        }
        let expected_ip = match profile {
            Profile::Public => "198.51.100.10",
            Profile::Cgnat => "203.0.113.100",
            _ => "203.0.113.10",
        };
        assert_eq!(
            m1.ip(),
            expected_ip.parse::<std::net::IpAddr>().unwrap(),
            "{profile}"
        );
        // What the server observes for UDP is that same kind of mapping.
        let observed = sim.observe_udp(h);
        if profile == Profile::Symmetric {
            assert_ne!(observed, m1);
        } else {
            assert_eq!(observed, m1);
        }
    }
}

#[test]
fn symmetric_ports_are_deterministic_per_seed() {
    let ports = |seed| {
        let mut sim = Sim::new(SimConfig {
            seed,
            ..SimConfig::default()
        });
        let h = sim.add_site(Profile::Symmetric, 0, "h");
        (sim.observe_udp(h), sim.observe_tcp(h))
    };
    assert_eq!(ports(7), ports(7));
    assert_ne!(ports(7), ports(8));
}

/// Who may send to the mapping `h` opened towards OBSERVER_1:5000.
#[test]
fn filtering_behaviour_and_unsolicited_inbound() {
    for profile in Profile::ALL {
        let (mut sim, h, o1, o2) = site(profile);
        sim.send(h, addr(OBSERVER_1), b"open".to_vec());
        sim.run_for(Duration::from_millis(100));
        let mapped = last_source(&sim, o1).unwrap();

        // Same IP and port: always admitted.
        sim.send(o1, mapped, b"same".to_vec());
        // Same IP, other port.
        sim.send_from(
            o1,
            addr("198.51.100.200:5001"),
            mapped,
            b"other-port".to_vec(),
        );
        // Another IP that h never contacted: unsolicited.
        sim.send(o2, mapped, b"stranger".to_vec());
        // A port with no mapping at all.
        sim.send(
            o2,
            std::net::SocketAddr::new(mapped.ip(), 55_555),
            b"unmapped".to_vec(),
        );
        sim.run_for(Duration::from_millis(100));

        let got: Vec<&[u8]> = sim.hosts[h]
            .received
            .iter()
            .map(|(_, _, b)| b.as_slice())
            .collect();
        let expected: Vec<&[u8]> = match profile {
            Profile::Public => vec![b"same", b"other-port", b"stranger"],
            Profile::FullCone => vec![b"same", b"other-port", b"stranger"],
            Profile::AddressRestricted => vec![b"same", b"other-port"],
            Profile::PortRestricted | Profile::Symmetric | Profile::Cgnat => vec![b"same"],
        };
        assert_eq!(got, expected, "{profile}");
        let dropped_at_nat = sim.drops.filtered;
        let expected_drops = match profile {
            Profile::Public => 0, // the unmapped one hits a closed port instead
            _ => 4 - expected.len() as u32,
        };
        assert_eq!(dropped_at_nat, expected_drops, "{profile}: {:?}", sim.drops);
    }
}

#[test]
fn server_binding_only_admits_the_server() {
    // After the binding, the server-observed port admits nobody else on a
    // port-dependent filter (this is why symmetric needs peer-reflexive learning).
    let (mut sim, h, o1, _) = site(Profile::PortRestricted);
    let observed = sim.observe_udp(h);
    sim.send(o1, observed, b"hi".to_vec());
    sim.run_for(Duration::from_millis(100));
    assert!(sim.hosts[h].received.is_empty());
    assert_eq!(sim.drops.filtered, 1);
    assert_eq!(observed.port(), 4000);
    let _ = SERVER;
}

#[test]
fn no_hairpin_and_private_addresses_do_not_route() {
    let mut sim = Sim::new(SimConfig::default());
    let lan = sim.add_site_segment(Profile::PortRestricted, 0);
    sim.add_host(lan, addr("192.168.1.2:4000"), "a");
    sim.add_host(lan, addr("192.168.1.3:4000"), "b");
    let public_of_0 = sim.observe_udp(0);
    let public_of_1 = sim.observe_udp(1);
    let private_of_1 = sim.hosts[1].addr;
    sim.send(0, public_of_1, b"hairpin".to_vec());
    sim.send(0, private_of_1, b"lan".to_vec());
    sim.run_for(Duration::from_millis(100));
    let got: Vec<&[u8]> = sim.hosts[1]
        .received
        .iter()
        .map(|(_, _, b)| b.as_slice())
        .collect();
    assert_eq!(got, vec![b"lan".as_slice()]);
    assert_eq!(sim.drops.no_hairpin, 1);
    // Two hosts on one LAN share a router: the second one's port is not preserved.
    assert_eq!(public_of_0.port(), 4000);
    assert_ne!(public_of_1.port(), 4000);
    assert_eq!(
        sim.observe_udp(0),
        public_of_0,
        "endpoint-independent: stable"
    );

    // A private address of another site does not route over the internet.
    let mut sim = Sim::new(SimConfig::default());
    let a = sim.add_site(Profile::FullCone, 0, "a");
    let b = sim.add_site(Profile::FullCone, 1, "b");
    assert_eq!((a, b), (0, 1));
    let private_of_1 = sim.hosts[1].addr;
    sim.send(0, private_of_1, b"lost".to_vec());
    sim.run_for(Duration::from_millis(100));
    assert!(sim.hosts[1].received.is_empty());
    assert_eq!(sim.drops.unroutable, 1);
}

#[test]
fn latency_and_loss() {
    let cfg = SimConfig {
        latency: Duration::from_millis(50),
        ..SimConfig::default()
    };
    let (mut sim, h, o1, _) = site(Profile::FullCone);
    sim.cfg = cfg;
    sim.send(h, addr(OBSERVER_1), b"x".to_vec());
    sim.run_for(Duration::from_secs(1));
    assert_eq!(sim.hosts[o1].received[0].0, Duration::from_millis(50));

    let (mut sim, h, o1, _) = site(Profile::Public);
    sim.cfg.loss = 0.3;
    for _ in 0..1000 {
        sim.send(h, addr(OBSERVER_1), b"x".to_vec());
    }
    sim.run_for(Duration::from_secs(1));
    let arrived = sim.hosts[o1].received.len();
    assert!(
        (600..800).contains(&arrived),
        "{arrived} of 1000 arrived at 30% loss"
    );
    assert_eq!(sim.drops.lost as usize + arrived, 1000);
}
