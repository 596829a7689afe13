//! What a [`super::Punch`] tells its driver: datagrams to send and progress events.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use super::candidate::{Candidate, CandidateKind, PathKind};

/// A datagram the driver must send from the punching socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Where to send it (IPv4 addresses are plain IPv4; map them for a dual-stack socket).
    pub destination: SocketAddr,
    /// The datagram, [`super::PROBE_LEN`] bytes.
    pub contents: Vec<u8>,
}

/// Progress of a hole-punching attempt, pulled with [`super::Punch::poll_event`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum PunchEvent {
    /// An authenticated datagram from the peer came from an address we did not know;
    /// it is now probed as a [`CandidateKind::PeerReflexive`] candidate.
    CandidateLearned(Candidate),
    /// The peer answered one of our probes to `remote` from `remote`: both directions
    /// of this path work.
    PathValidated {
        /// The peer's address on this path.
        remote: SocketAddr,
        /// Where the address came from.
        kind: CandidateKind,
        /// LAN or public.
        path: PathKind,
        /// Time from the answered probe to its acknowledgement.
        rtt: Duration,
    },
    /// Initiator only: this validated path was chosen and is being nominated.
    Nominating {
        /// The peer's address on the chosen path.
        remote: SocketAddr,
        /// Where the address came from.
        kind: CandidateKind,
        /// LAN or public.
        path: PathKind,
    },
    /// Both sides agree on a path. The attempt is over; the machine lingers to answer
    /// late probes (see [`super::PunchConfig::linger`]).
    Succeeded(PunchSuccess),
    /// The attempt gave up. The machine is closed.
    Failed(PunchFailure),
}

/// The agreed path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PunchSuccess {
    /// The peer's address on the path: connect (initiator) or expect (responder) QUIC here.
    pub remote: SocketAddr,
    /// Where that address came from, as this side knows it.
    pub kind: CandidateKind,
    /// LAN or public. Both sides report the initiator's classification.
    pub path: PathKind,
    /// Time from the start of the attempt ([`super::Punch::new`]) to agreement.
    pub elapsed: Duration,
    /// Probes and Nominates this side sent (acknowledgements not counted).
    pub probes_sent: u32,
    /// Round-trip time measured on this path, when this side validated it itself.
    pub rtt: Option<Duration>,
}

/// Why an attempt gave up.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailReason {
    /// No candidate answered an authenticated probe before the limit.
    NoPathValidated,
    /// Paths were validated, but none was nominated before the limit (responder: the
    /// initiator never sent a Nominate).
    NotNominated {
        /// Our addresses of the peer that did answer.
        validated: Vec<SocketAddr>,
    },
    /// Initiator: a path was validated and nominated, but the peer never acknowledged
    /// the nomination.
    NominationUnacknowledged {
        /// The nominated address of the peer.
        remote: SocketAddr,
    },
}

impl fmt::Display for FailReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoPathValidated => f.write_str("no candidate answered an authenticated probe"),
            Self::NotNominated { validated } => {
                f.write_str("paths answered (")?;
                for (i, addr) in validated.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{addr}")?;
                }
                f.write_str(") but no path was nominated in time")
            }
            Self::NominationUnacknowledged { remote } => {
                write!(
                    f,
                    "path to {remote} worked but the peer never acknowledged its nomination"
                )
            }
        }
    }
}

/// A failed attempt, with everything that was tried. Its `Display` is a complete
/// user-facing message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PunchFailure {
    /// Why it gave up.
    pub reason: FailReason,
    /// Every candidate (announced and learned) with the number of probes sent to it.
    pub tried: Vec<(Candidate, u32)>,
    /// Probes and Nominates sent in total.
    pub probes_sent: u32,
    /// Time from the start of the attempt to giving up.
    pub elapsed: Duration,
}

impl fmt::Display for PunchFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "hole punching failed after {:.1}s: {}; tried ",
            self.elapsed.as_secs_f64(),
            self.reason
        )?;
        if self.tried.is_empty() {
            f.write_str("no candidates (the peer announced no usable endpoint)")?;
        }
        for (i, (candidate, probes)) in self.tried.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{candidate} ×{probes}")?;
        }
        if self.reason == FailReason::NoPathValidated {
            f.write_str(
                ". Both NATs probably filter unsolicited traffic and at least one maps a new \
                 port per destination (symmetric NAT), or UDP is blocked; try from another \
                 network or enable port forwarding / UPnP on one side",
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for PunchFailure {}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn failure_message_lists_candidates() {
        let failure = PunchFailure {
            reason: FailReason::NoPathValidated,
            tried: vec![
                (
                    Candidate::new("10.0.0.2:4000".parse().unwrap(), CandidateKind::Private),
                    17,
                ),
                (
                    Candidate::new(
                        "203.0.113.5:4000".parse().unwrap(),
                        CandidateKind::PublicUdp,
                    ),
                    17,
                ),
            ],
            probes_sent: 34,
            elapsed: Duration::from_secs(10),
        };
        let msg = failure.to_string();
        assert!(
            msg.starts_with("hole punching failed after 10.0s: no candidate answered"),
            "{msg}"
        );
        assert!(msg.contains("10.0.0.2:4000 (private) ×17"), "{msg}");
        assert!(msg.contains("203.0.113.5:4000 (public-udp) ×17"), "{msg}");
        assert!(msg.contains("symmetric NAT"), "{msg}");
    }

    #[test]
    fn reason_messages() {
        let r = FailReason::NotNominated {
            validated: vec!["1.2.3.4:5".parse().unwrap(), "5.6.7.8:9".parse().unwrap()],
        };
        assert_eq!(
            r.to_string(),
            "paths answered (1.2.3.4:5, 5.6.7.8:9) but no path was nominated in time"
        );
        let r = FailReason::NominationUnacknowledged {
            remote: "1.2.3.4:5".parse().unwrap(),
        };
        assert!(r.to_string().contains("1.2.3.4:5"));
    }
}
