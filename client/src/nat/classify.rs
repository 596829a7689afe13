//! The pure NAT classifier: public addresses seen by several server ports → a hint.

use std::net::SocketAddr;

use chatr_proto::{NatHint, NatMapping};

/// Consecutive new ports closer than this (in the same direction) count as a sequence:
/// background traffic through the same NAT takes some ports between two of ours, but a
/// NAT picking at random lands this close twice in a row with odds of about 1 in 10⁵.
const MAX_SEQUENTIAL_GAP: i32 = 64;

/// One STUN answer: the server port asked, and the public address it saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observation {
    /// The server's port the request went to.
    pub server_port: u16,
    /// Our public address and port as that port saw it.
    pub mapped: SocketAddr,
}

/// Classifies our NAT from `observations`, in the order the requests were sent: the
/// Connect port first (whose mapping may be old: it was made at login), then the probe
/// ports (fresh mappings, made one after the other just now). `local` is our socket's
/// own address (the interface address and port P).
///
/// Fewer than two answers cannot tell a mapping per destination from one for all:
/// [`NatMapping::Unknown`].
pub fn classify(local: SocketAddr, observations: &[Observation]) -> NatHint {
    let unknown = NatHint::default();
    let (Some(first), true) = (observations.first(), observations.len() >= 2) else {
        return unknown;
    };
    let last_port = observations.last().map(|o| o.mapped.port());
    let canonical = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
    let local = canonical(local);
    if observations.iter().all(|o| canonical(o.mapped) == local) {
        return NatHint {
            mapping: NatMapping::NoNat,
            step: 0,
            last_port,
        };
    }
    if observations.iter().all(|o| o.mapped == first.mapped) {
        return NatHint {
            mapping: NatMapping::EndpointIndependent,
            step: 0,
            last_port,
        };
    }
    let random = NatHint {
        mapping: NatMapping::DependentRandom,
        step: 0,
        last_port,
    };
    // A NAT that spreads one host over several public addresses is not predictable.
    if observations
        .iter()
        .any(|o| o.mapped.ip() != first.mapped.ip())
    {
        return random;
    }
    let ports: Vec<i32> = observations
        .iter()
        .map(|o| i32::from(o.mapped.port()))
        .collect();
    let gaps: Vec<i32> = ports.windows(2).map(|w| w[1] - w[0]).collect();
    // The gaps between probe ports are fresh; the one from the Connect port may span
    // everything the NAT allocated since login, so it only has to point the same way.
    let (stale, fresh) = match gaps.split_first() {
        Some((stale, fresh)) if !fresh.is_empty() => (Some(*stale), fresh),
        _ => (None, gaps.as_slice()),
    };
    let sequential = !fresh.is_empty()
        && fresh
            .iter()
            .all(|g| *g != 0 && g.abs() <= MAX_SEQUENTIAL_GAP && g.signum() == fresh[0].signum())
        && stale.is_none_or(|s| s != 0 && s.signum() == fresh[0].signum());
    if !sequential {
        return random;
    }
    // The smallest gap is the NAT's own step; larger ones had other flows in between.
    let step = fresh.iter().map(|g| g.abs()).min().unwrap_or(1) * fresh[0].signum();
    NatHint {
        mapping: NatMapping::DependentSequential,
        step: i16::try_from(step).unwrap_or(1),
        last_port,
    }
}

/// What `hint` means, in plain words for `chatr status`.
pub fn describe(hint: &NatHint) -> String {
    match hint.mapping {
        NatMapping::Unknown => "not measured: the server offers no NAT probe ports (an older \
                                server, or turned off), or they did not answer"
            .to_owned(),
        NatMapping::NoNat => "no NAT: the server sees this machine's own address and port, \
                              so peers can reach it directly"
            .to_owned(),
        NatMapping::EndpointIndependent => "your NAT keeps one public port for every \
                                            destination (endpoint-independent): hole \
                                            punching works with most peers"
            .to_owned(),
        NatMapping::DependentSequential => format!(
            "your NAT gives a new port for every destination, in steps of {}: port \
             prediction will be tried",
            hint.step
        ),
        NatMapping::DependentRandom => "your NAT gives a new random port for every \
                                        destination (symmetric): birthday punching will be \
                                        tried against peers with an easier NAT; with \
                                        another such NAT the link is relayed"
            .to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(list: &[(u16, &str)]) -> Vec<Observation> {
        list.iter()
            .map(|(port, mapped)| Observation {
                server_port: *port,
                mapped: mapped.parse().unwrap(),
            })
            .collect()
    }

    fn local() -> SocketAddr {
        "10.0.0.2:5000".parse().unwrap()
    }

    #[test]
    fn one_answer_is_not_enough() {
        assert_eq!(classify(local(), &[]).mapping, NatMapping::Unknown);
        let one = obs(&[(7777, "203.0.113.1:5000")]);
        assert_eq!(classify(local(), &one).mapping, NatMapping::Unknown);
    }

    #[test]
    fn own_address_everywhere_is_no_nat() {
        let o = obs(&[(7777, "10.0.0.2:5000"), (7779, "10.0.0.2:5000")]);
        let hint = classify(local(), &o);
        assert_eq!(hint.mapping, NatMapping::NoNat);
        assert_eq!(hint.last_port, Some(5000));
        // IPv4-mapped IPv6 spelling of the same address is the same address.
        let o = obs(&[(7777, "[::ffff:10.0.0.2]:5000"), (7779, "10.0.0.2:5000")]);
        assert_eq!(classify(local(), &o).mapping, NatMapping::NoNat);
    }

    #[test]
    fn one_public_port_for_all_is_endpoint_independent() {
        let o = obs(&[
            (7777, "203.0.113.1:40000"),
            (7779, "203.0.113.1:40000"),
            (7780, "203.0.113.1:40000"),
        ]);
        let hint = classify(local(), &o);
        assert_eq!(hint.mapping, NatMapping::EndpointIndependent);
        assert_eq!(hint.step, 0);
    }

    #[test]
    fn ports_in_steps_are_sequential_with_the_step() {
        let o = obs(&[
            (7777, "203.0.113.1:1030"),
            (7779, "203.0.113.1:1100"),
            (7780, "203.0.113.1:1101"),
        ]);
        let hint = classify(local(), &o);
        assert_eq!(hint.mapping, NatMapping::DependentSequential);
        assert_eq!(hint.step, 1);
        assert_eq!(hint.last_port, Some(1101));
        // Background flows in between: the smallest gap is the step.
        let o = obs(&[
            (7777, "203.0.113.1:2000"),
            (7779, "203.0.113.1:2010"),
            (7780, "203.0.113.1:2016"),
            (7781, "203.0.113.1:2018"),
        ]);
        let hint = classify(local(), &o);
        assert_eq!(hint.mapping, NatMapping::DependentSequential);
        assert_eq!(hint.step, 2);
        // Downwards counts too.
        let o = obs(&[
            (7777, "203.0.113.1:9000"),
            (7779, "203.0.113.1:8000"),
            (7780, "203.0.113.1:7998"),
        ]);
        assert_eq!(classify(local(), &o).step, -2);
    }

    #[test]
    fn scattered_ports_are_random() {
        let o = obs(&[
            (7777, "203.0.113.1:40000"),
            (7779, "203.0.113.1:12345"),
            (7780, "203.0.113.1:55001"),
        ]);
        let hint = classify(local(), &o);
        assert_eq!(hint.mapping, NatMapping::DependentRandom);
        assert_eq!(hint.last_port, Some(55001));
        // A close pair going the other way than the stale gap is no sequence.
        let o = obs(&[
            (7777, "203.0.113.1:40000"),
            (7779, "203.0.113.1:30000"),
            (7780, "203.0.113.1:30003"),
        ]);
        assert_eq!(classify(local(), &o).mapping, NatMapping::DependentRandom);
        // Another public address per destination.
        let o = obs(&[
            (7777, "203.0.113.1:40000"),
            (7779, "203.0.113.2:40001"),
            (7780, "203.0.113.2:40002"),
        ]);
        assert_eq!(classify(local(), &o).mapping, NatMapping::DependentRandom);
    }

    #[test]
    fn with_one_probe_port_the_only_gap_decides() {
        let o = obs(&[(7777, "203.0.113.1:3000"), (7779, "203.0.113.1:3001")]);
        let hint = classify(local(), &o);
        assert_eq!(hint.mapping, NatMapping::DependentSequential);
        assert_eq!(hint.step, 1);
        let o = obs(&[(7777, "203.0.113.1:3000"), (7779, "203.0.113.1:33001")]);
        assert_eq!(classify(local(), &o).mapping, NatMapping::DependentRandom);
    }

    #[test]
    fn descriptions_say_what_will_be_tried() {
        let seq = NatHint {
            mapping: NatMapping::DependentSequential,
            step: 1,
            last_port: Some(1),
        };
        assert_eq!(
            describe(&seq),
            "your NAT gives a new port for every destination, in steps of 1: port prediction will be tried"
        );
        let random = NatHint {
            mapping: NatMapping::DependentRandom,
            ..NatHint::default()
        };
        assert!(describe(&random).contains("birthday"));
        assert!(describe(&NatHint::default()).starts_with("not measured"));
    }
}
