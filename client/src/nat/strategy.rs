//! How hard a punch tries, decided from both sides' NAT hints (`docs/PROTOCOL.md` §10.7).

use std::collections::HashSet;

use chatr_proto::{NatHint, NatMapping};

/// Probes per second one side sends for prediction or the birthday technique (on top
/// of the plain punch's few). Slow enough for a home router's conntrack and uplink.
pub const SPRAY_RATE: u32 = 200;
/// Birthday, hard side: sockets opened towards the easy side's endpoint (one probe each).
pub const BIRTHDAY_SOCKETS: usize = 256;
/// Birthday, easy side: random ports probed on the hard side's address. With the
/// hard side's sockets that is 1 280 probes per try, and P(hit) ≈ 1 − e^(−256·1024/64512)
/// ≈ 98 %.
pub const BIRTHDAY_PROBES: usize = 1024;
/// Prediction: steps probed past the sequential peer's last known port (every port they
/// reach), covering the ports its other candidates and other flows through its NAT take
/// in between: 128 ports are 6 s of 20 new flows a second, sprayed in 0.64 s.
pub const PREDICT_WINDOW: u16 = 128;

/// The lowest port a NAT allocates for a source port ≥ 1024 (Linux and most routers).
const LOWEST_PORT: u16 = 1024;

/// What this side does beyond the plain punch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Probe the peer's announced candidates only.
    Plain,
    /// The peer's NAT allocates in sequence: also probe the ports it will give next.
    Predict,
    /// The peer's NAT picks at random and ours keeps one port: probe random ports on
    /// the peer's address from our socket (the easy side of the birthday technique).
    BirthdaySpray,
    /// Ours picks at random and the peer's keeps one port: open many sockets towards
    /// the peer's endpoint, one of which the peer's random probes will find.
    BirthdaySockets,
    /// Both NATs pick a new random port per destination: neither side can guess, so
    /// the link stays on the relay (only the plain punch runs, for NATs that lied).
    BothRandom,
}

impl Strategy {
    /// Our part, given our NAT and the peer's (`None`: the peer sent no hints).
    pub fn choose(local: &NatHint, peer: Option<&NatHint>) -> Strategy {
        let Some(peer) = peer else {
            return Strategy::Plain;
        };
        // Only a NAT's filtering needs the birthday technique: without NAT the plain
        // punch already learns the random port from the hard side's probes.
        match (local.mapping, peer.mapping) {
            (NatMapping::DependentRandom, NatMapping::DependentRandom) => Strategy::BothRandom,
            (NatMapping::DependentRandom, NatMapping::EndpointIndependent) => {
                Strategy::BirthdaySockets
            }
            (NatMapping::EndpointIndependent, NatMapping::DependentRandom) => {
                Strategy::BirthdaySpray
            }
            (NatMapping::DependentRandom, _) => Strategy::Plain,
            (_, NatMapping::DependentSequential) if peer.last_port.is_some() => Strategy::Predict,
            _ => Strategy::Plain,
        }
    }
}

/// The ports a sequential NAT may hand out next after `hint.last_port`, nearest first:
/// *every* port from `last ± 1` on, in the step's direction, as far as `window` steps
/// reach (`window · |step|` ports, at most `4 · window`), wrapping inside 1024–65535.
///
/// Every port, not only `last + k·step`: a step measured while other flows crossed the
/// NAT is not the NAT's own (2 when one other flow took a port in between), and the
/// flows since the measurement move the next port by any amount. Guessing only every
/// second port missed about half the tries of a sequential NAT with background traffic.
pub fn predicted_ports(hint: &NatHint, window: u16) -> Vec<u16> {
    let Some(last) = hint.last_port else {
        return Vec::new();
    };
    let direction = if hint.step < 0 { -1 } else { 1 };
    let reach = i32::from(window) * i32::from(hint.step.unsigned_abs().clamp(1, 4));
    let span = i32::from(u16::MAX) - i32::from(LOWEST_PORT) + 1;
    (1..=reach)
        .filter_map(|k| {
            let raw = i32::from(last) + k * direction - i32::from(LOWEST_PORT);
            u16::try_from(raw.rem_euclid(span) + i32::from(LOWEST_PORT)).ok()
        })
        .collect()
}

/// `count` distinct random ports in 1024–65535 for the birthday technique, drawn from
/// `seed` (the exchange's secret: unpredictable to anyone else, repeatable in tests).
pub fn birthday_ports(seed: &[u8], count: usize) -> Vec<u16> {
    // Every byte of the seed counts: its SHA-256 starts the generator.
    let digest = ring::digest::digest(&ring::digest::SHA256, seed);
    let mut state = digest
        .as_ref()
        .iter()
        .take(8)
        .fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
    let span = u64::from(u16::MAX - LOWEST_PORT) + 1;
    let count = count.min(usize::from(u16::MAX - LOWEST_PORT) + 1);
    let mut seen = HashSet::with_capacity(count);
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        // splitmix64
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let port = u16::try_from(z % span).unwrap_or(0) + LOWEST_PORT;
        if seen.insert(port) {
            out.push(port);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hint(mapping: NatMapping) -> NatHint {
        NatHint {
            mapping,
            step: 0,
            last_port: Some(40000),
        }
    }

    #[test]
    fn the_hard_side_opens_sockets_and_the_easy_side_sprays() {
        use NatMapping::*;
        let c = |a, b| Strategy::choose(&hint(a), Some(&hint(b)));
        assert_eq!(
            c(DependentRandom, EndpointIndependent),
            Strategy::BirthdaySockets
        );
        assert_eq!(c(DependentRandom, NoNat), Strategy::Plain);
        assert_eq!(
            c(EndpointIndependent, DependentRandom),
            Strategy::BirthdaySpray
        );
        assert_eq!(c(NoNat, DependentRandom), Strategy::Plain);
        assert_eq!(c(DependentRandom, DependentRandom), Strategy::BothRandom);
        assert_eq!(
            c(EndpointIndependent, DependentSequential),
            Strategy::Predict
        );
        assert_eq!(c(Unknown, DependentSequential), Strategy::Predict);
        assert_eq!(c(DependentSequential, EndpointIndependent), Strategy::Plain);
        assert_eq!(c(EndpointIndependent, EndpointIndependent), Strategy::Plain);
        assert_eq!(c(Unknown, DependentRandom), Strategy::Plain);
        assert_eq!(c(DependentRandom, Unknown), Strategy::Plain);
        assert_eq!(
            Strategy::choose(&hint(EndpointIndependent), None),
            Strategy::Plain
        );
    }

    #[test]
    fn prediction_covers_every_port_the_steps_reach_and_wraps() {
        let h = NatHint {
            mapping: NatMapping::DependentSequential,
            step: 2,
            last_port: Some(1000 + 24),
        };
        // Every port the steps reach, not only multiples of the step.
        assert_eq!(
            predicted_ports(&h, 3),
            vec![1025, 1026, 1027, 1028, 1029, 1030]
        );
        let h = NatHint {
            step: 1,
            last_port: Some(65534),
            ..h
        };
        assert_eq!(predicted_ports(&h, 3), vec![65535, 1024, 1025]);
        let h = NatHint {
            step: -1,
            last_port: Some(1025),
            ..h
        };
        assert_eq!(predicted_ports(&h, 2), vec![1024, 65535]);
        let h = NatHint {
            last_port: None,
            ..h
        };
        assert!(predicted_ports(&h, 2).is_empty());
    }

    #[test]
    fn birthday_ports_are_distinct_in_range_and_seeded() {
        let a = birthday_ports(&[1; 32], BIRTHDAY_PROBES);
        assert_eq!(a.len(), BIRTHDAY_PROBES);
        assert!(a.iter().all(|p| *p >= LOWEST_PORT));
        assert_eq!(a.iter().collect::<HashSet<_>>().len(), a.len());
        assert_eq!(a, birthday_ports(&[1; 32], BIRTHDAY_PROBES));
        assert_ne!(a, birthday_ports(&[2; 32], BIRTHDAY_PROBES));
        // Spread over the range, not bunched.
        let low = a.iter().filter(|p| **p < 33_000).count();
        assert!((400..624).contains(&low), "{low} of 1024 below the middle");
    }
}
