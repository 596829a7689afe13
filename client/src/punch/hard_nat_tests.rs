//! The birthday technique and port prediction in virtual time: two [`Punch`] machines,
//! a hand-written NAT model on each side, and the drivers' parts (the hard side's many
//! sockets, its adopting the one the peer's Probe reaches) written out as the node does
//! them (`node::birthday`, `node::link_driver`).
#![allow(clippy::indexing_slicing)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use chatr_proto::{NatHint, NatMapping};
use uuid::Uuid;

use super::wire::{ProbeKeys, ProbeType};
use super::*;
use crate::nat::{
    BIRTHDAY_PROBES, BIRTHDAY_SOCKETS, PREDICT_WINDOW, SPRAY_RATE, birthday_ports, predicted_ports,
};

const ONE_WAY: Duration = Duration::from_millis(10);
const LIMIT: Duration = Duration::from_secs(15);

fn easy_public() -> SocketAddr {
    "198.51.100.1:5000".parse().unwrap()
}
fn hard_ip() -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7))
}

/// How the hard side's NAT picks a new public port.
enum HardNat {
    /// At random (seeded): masquerade `fully-random`.
    Random(u64),
    /// In sequence from `next`, step 1 (background flows already took some).
    Sequential { next: u16 },
}

impl HardNat {
    fn allocate(&mut self, taken: &HashSet<u16>) -> u16 {
        match self {
            HardNat::Random(state) => loop {
                *state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let port = 1024 + ((*state >> 33) % 64512) as u16;
                if !taken.contains(&port) {
                    return port;
                }
            },
            HardNat::Sequential { next } => {
                let port = *next;
                *next = next.wrapping_add(1);
                port
            }
        }
    }
}

/// Datagrams in flight: (arrival, sequence) → (to the easy side?, hard socket, from, bytes).
type Wire = BTreeMap<(Instant, u64), (bool, usize, SocketAddr, Vec<u8>)>;

struct Outcome {
    /// Virtual time to both sides agreeing, if they did.
    agreed: Option<Duration>,
    /// Probes both machines sent (spray and extra probes included).
    probes: u32,
    /// The easy side's spray probes.
    sprayed: u32,
}

/// One try. The easy side (port-restricted: one public port, replies only from where it
/// sent) sprays `spray` guesses; the hard side opens `sockets` extra sockets towards the
/// easy side's endpoint, one Probe each, at [`SPRAY_RATE`].
fn run(
    mut nat: HardNat,
    background: u16,
    secret: [u8; 32],
    spray: impl FnOnce(&NatHint) -> Vec<u16>,
    sockets: usize,
) -> Outcome {
    let t0 = Instant::now();
    let (hard_id, easy_id) = (Uuid::from_bytes([1; 16]), Uuid::from_bytes([2; 16]));
    let mut taken = HashSet::new();
    // (socket, destination) → public port; socket 0 is the link socket.
    let mut mappings: HashMap<(usize, SocketAddr), u16> = HashMap::new();
    // The hard side measured its NAT just before: its last mapping.
    let server: SocketAddr = "192.0.2.1:7779".parse().unwrap();
    let last = nat.allocate(&taken);
    taken.insert(last);
    mappings.insert((0, server), last);
    // Other flows through the same NAT between the measurement and the punch.
    if let HardNat::Sequential { next } = &mut nat {
        *next = next.wrapping_add(background);
    }
    let hint = NatHint {
        mapping: match nat {
            HardNat::Random(_) => NatMapping::DependentRandom,
            HardNat::Sequential { .. } => NatMapping::DependentSequential,
        },
        step: 1,
        last_port: Some(last),
    };
    let hard_seen = SocketAddr::new(hard_ip(), last);
    let mut hard = Punch::new(
        t0,
        PunchConfig::default(),
        Role::Initiator,
        hard_id,
        easy_id,
        secret,
        vec![Candidate::new(easy_public(), CandidateKind::PublicUdp)],
    );
    let guesses: Vec<SocketAddr> = spray(&hint)
        .into_iter()
        .map(|p| SocketAddr::new(hard_ip(), p))
        .collect();
    let mut easy = Punch::new(
        t0,
        PunchConfig::default(),
        Role::Responder,
        easy_id,
        hard_id,
        secret,
        vec![Candidate::new(hard_seen, CandidateKind::PublicUdp)],
    )
    .with_spray(t0, guesses, SPRAY_RATE);
    let keys = ProbeKeys::new(&secret);
    let mut easy_sent_to: HashSet<SocketAddr> = HashSet::new();
    // Arrival time → (to the easy side?, socket, from, bytes), in order.
    let mut wire: Wire = BTreeMap::new();
    let mut seq = 0u64;
    let mut adopted: Option<usize> = None;
    let mut opened = 0usize;
    let open_every = Duration::from_secs_f64(1.0 / f64::from(SPRAY_RATE));
    let mut agreed = None;

    let mut now = t0;
    while now.duration_since(t0) < LIMIT {
        // The hard side's transmits leave from the adopted socket towards the easy side.
        let mut hard_out: Vec<(usize, Transmit)> = std::iter::from_fn(|| hard.poll_transmit())
            .map(|t| (adopted.unwrap_or(0), t))
            .collect();
        for t in &mut hard_out {
            if t.1.destination != easy_public() {
                t.0 = 0;
            }
        }
        while opened < sockets && t0 + open_every * opened as u32 <= now {
            opened += 1;
            let probe = hard.extra_probe();
            hard_out.push((
                opened,
                Transmit {
                    destination: easy_public(),
                    contents: probe,
                },
            ));
        }
        for (socket, t) in hard_out {
            let port = *mappings.entry((socket, t.destination)).or_insert_with(|| {
                let p = nat.allocate(&taken);
                taken.insert(p);
                p
            });
            seq += 1;
            wire.insert(
                (now + ONE_WAY, seq),
                (true, 0, SocketAddr::new(hard_ip(), port), t.contents),
            );
        }
        for t in std::iter::from_fn(|| easy.poll_transmit()) {
            easy_sent_to.insert(t.destination);
            if t.destination.ip() != hard_ip() {
                continue;
            }
            // The hard NAT lets it in only on a mapping made towards exactly us.
            let socket = mappings
                .iter()
                .find(|((_, dst), port)| *dst == easy_public() && **port == t.destination.port())
                .map(|((s, _), _)| *s);
            if let Some(socket) = socket {
                seq += 1;
                wire.insert(
                    (now + ONE_WAY, seq),
                    (false, socket, easy_public(), t.contents),
                );
            }
        }
        let both = matches!(hard.succeeded(), Some(true)) && matches!(easy.succeeded(), Some(true));
        if both && agreed.is_none() {
            agreed = Some(now.duration_since(t0));
            break;
        }
        // The next thing that happens.
        let next_open = (opened < sockets).then(|| t0 + open_every * opened as u32);
        let next = [
            wire.keys().next().map(|k| k.0),
            hard.poll_timeout(),
            easy.poll_timeout(),
            next_open,
        ]
        .into_iter()
        .flatten()
        .min();
        let Some(next) = next else { break };
        now = next.max(now);
        while let Some(entry) = wire.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let (to_easy, socket, from, bytes) = entry.remove();
            if to_easy {
                // Port-restricted: only from where the easy side has sent.
                if easy_sent_to.contains(&from) {
                    easy.handle_datagram(now, from, &bytes);
                }
            } else {
                if socket > 0 && adopted.is_none() {
                    let authentic = keys
                        .open(&bytes)
                        .is_ok_and(|p| p.sender == easy_id && p.kind == ProbeType::Probe);
                    if authentic {
                        adopted = Some(socket);
                    }
                }
                hard.handle_datagram(now, from, &bytes);
            }
        }
        hard.handle_timeout(now);
        easy.handle_timeout(now);
    }
    Outcome {
        agreed,
        probes: hard.stats().probes_sent + easy.stats().probes_sent,
        sprayed: easy.spray_sent(),
    }
}

impl Punch {
    /// Test helper: whether the machine has succeeded (without draining its events).
    fn succeeded(&self) -> Option<bool> {
        Some(self.is_finished() && !self.is_closed())
    }
}

#[test]
fn birthday_punching_finds_a_random_port_within_budget() {
    let tries = 40u64;
    let mut direct = 0;
    for seed in 0..tries {
        let mut secret = [0u8; 32];
        secret[..8].copy_from_slice(&seed.to_be_bytes());
        let out = run(
            HardNat::Random(seed.wrapping_mul(0x9E37_79B9) + 7),
            0,
            secret,
            |_| birthday_ports(&secret, BIRTHDAY_PROBES),
            BIRTHDAY_SOCKETS,
        );
        assert!(out.sprayed as usize <= BIRTHDAY_PROBES);
        // The budget: 1 024 guesses + 256 sockets, plus the plain punch's few dozen.
        assert!(
            out.probes <= 1_300 + 60,
            "seed {seed}: {} probes",
            out.probes
        );
        if let Some(t) = out.agreed {
            assert!(t < LIMIT);
            direct += 1;
        }
    }
    // P ≈ 1 − e^(−256·1024/64512) ≈ 98 %.
    assert!(direct >= 36, "{direct} of {tries} tries found a path");
}

#[test]
fn without_the_hard_sides_sockets_a_random_port_is_not_found() {
    let mut direct = 0;
    for seed in 0..10u64 {
        let secret = [seed as u8; 32];
        let out = run(
            HardNat::Random(seed + 1),
            0,
            secret,
            |_| birthday_ports(&secret, BIRTHDAY_PROBES),
            0,
        );
        direct += usize::from(out.agreed.is_some());
    }
    // One random port among 64 512, 1 024 guesses: a few percent at best.
    assert!(direct <= 2, "{direct} of 10");
}

/// The lab's sequential NAT with 20 new flows a second: the login's measurement saw a
/// step of 2 (a background flow took a port between two of its probes), while the NAT
/// hands out every port. Guesses at `last + 2k` alone missed every odd offset.
#[test]
fn prediction_finds_the_port_when_the_measured_step_was_inflated_by_other_flows() {
    for background in [0u16, 20, 40, 100] {
        let out = run(
            HardNat::Sequential { next: 20_000 },
            background,
            [9; 32],
            |hint| {
                let measured = NatHint { step: 2, ..*hint };
                predicted_ports(&measured, PREDICT_WINDOW)
            },
            0,
        );
        let t = out
            .agreed
            .unwrap_or_else(|| panic!("background {background}: no path"));
        assert!(t < Duration::from_secs(3), "background {background}: {t:?}");
    }
}

#[test]
fn prediction_finds_a_sequential_port_despite_background_flows() {
    for background in [0u16, 5, 20, 40] {
        let out = run(
            HardNat::Sequential { next: 20_000 },
            background,
            [9; 32],
            |hint| predicted_ports(hint, PREDICT_WINDOW),
            0,
        );
        let t = out
            .agreed
            .unwrap_or_else(|| panic!("background {background}: no path"));
        assert!(t < Duration::from_secs(2), "background {background}: {t:?}");
        assert!(out.sprayed <= u32::from(PREDICT_WINDOW));
    }
    // Past the window the guesses miss.
    let out = run(
        HardNat::Sequential { next: 20_000 },
        200,
        [9; 32],
        |hint| predicted_ports(hint, PREDICT_WINDOW),
        0,
    );
    assert!(out.agreed.is_none());
}
