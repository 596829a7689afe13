//! What a link attempt reports: which path won and how long it took.
//!
//! [`LinkReport`] is what the library returns with a link. [`AttemptReport`] is
//! the `--report FILE` JSON object the CLI writes after every attempt and the
//! NAT lab reads back, one serde type for both ends:
//! `{"candidate", "error", "path", "path_class", "peer", "probes_sent", "punch_ms",
//! "relay_reason", "remote", "result": "direct"|"relayed"|"failed", "role"}` (keys in
//! this order; absent ones left out, except `peer`, which is `null` when the peer was
//! never known), and on a failed punch `"candidates_tried": [{"candidate", "probes",
//! "remote"}]`. `path_class` is `direct-lan`, `direct-public`, `relay-udp` or
//! `relay-tls`; a relayed link has no `candidate`, and `relay_reason` says why. After a
//! `chatr pipe`, `"transfer": {"direct_ms", "ms", "path_class", "probes_sent", "received",
//! "relay_reason", "sent", "switches"}` says what went through and where the link was by then.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::ClientError;
use crate::path::{LinkOutcome, PathClass, PathId};
use crate::punch::{Candidate, CandidateKind, PathKind, PunchSuccess, Role};

/// A successful link attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkReport {
    /// The peer.
    pub peer: Uuid,
    /// Our role (initiator = requested the link, QUIC client).
    pub role: Role,
    /// LAN or public path.
    pub path: PathKind,
    /// Direct (LAN, public) or relayed (UDP, TLS).
    pub class: PathClass,
    /// Which of the peer's candidates carried the link; `None` when relayed.
    pub candidate: Option<CandidateKind>,
    /// Where our datagrams went: the peer's address on a direct path, the server's for
    /// the UDP relay (unspecified for the TLS relay).
    pub remote: SocketAddr,
    /// When relayed: why, in words for a user.
    pub relay_reason: Option<String>,
    /// From `PacketClientInfo` to an authenticated QUIC link.
    pub punch_time: Duration,
    /// Probes (and nominations) we sent.
    pub probes_sent: u32,
    /// Every candidate of the peer we started with.
    pub candidates: Vec<Candidate>,
}

impl LinkReport {
    /// The report of a link on `remote` that came up `punch_time` after ClientInfo.
    ///
    /// `punch` is the punch's result when it describes this link's path: then its candidate
    /// kind, path kind and probe count are the report's. Without it, the kind is that of the
    /// candidate `remote` belongs to (else peer-reflexive), a private candidate meaning a LAN
    /// path, and no probe count is known.
    pub(crate) fn new(
        peer: Uuid,
        role: Role,
        remote: SocketAddr,
        punch_time: Duration,
        punch: Option<&PunchSuccess>,
        candidates: Vec<Candidate>,
    ) -> Self {
        let candidate = punch.map(|s| s.kind).unwrap_or_else(|| {
            candidates
                .iter()
                .find(|c| c.addr == remote)
                .map_or(CandidateKind::PeerReflexive, |c| c.kind)
        });
        let path = punch
            .map(|s| s.path)
            .unwrap_or(if candidate == CandidateKind::Private {
                PathKind::Lan
            } else {
                PathKind::Public
            });
        Self {
            peer,
            role,
            path,
            class: if path == PathKind::Lan {
                PathClass::DirectLan
            } else {
                PathClass::DirectPublic
            },
            candidate: Some(candidate),
            remote,
            relay_reason: None,
            punch_time,
            probes_sent: punch.map_or(0, |s| s.probes_sent),
            candidates,
        }
    }

    /// The report of a link that came up as `outcome` says (`relay_server`: where the
    /// UDP relay is).
    pub(crate) fn from_outcome(
        peer: Uuid,
        role: Role,
        outcome: &LinkOutcome,
        relay_server: Option<SocketAddr>,
    ) -> Self {
        match outcome.path {
            PathId::Direct(remote) => {
                let mut report = Self::new(
                    peer,
                    role,
                    remote,
                    outcome.elapsed,
                    outcome.punch.as_ref(),
                    outcome.candidates.clone(),
                );
                report.class = outcome.class;
                report.path = if outcome.class == PathClass::DirectLan {
                    PathKind::Lan
                } else {
                    PathKind::Public
                };
                report.probes_sent = outcome.probes_sent;
                report
            }
            PathId::Relay(_) => Self {
                peer,
                role,
                path: PathKind::Public,
                class: outcome.class,
                candidate: None,
                remote: match outcome.class {
                    PathClass::RelayUdp => relay_server,
                    _ => None,
                }
                .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0))),
                relay_reason: outcome.relay_reason.as_ref().map(ToString::to_string),
                punch_time: outcome.elapsed,
                probes_sent: outcome.probes_sent,
                candidates: outcome.candidates.clone(),
            },
        }
    }

    /// One line for a banner: the path, and why when relayed.
    ///
    /// "direct (internet) to 203.0.113.5:4000 (public-udp candidate) in 84 ms", or
    /// "relayed by the server (UDP) in 161 ms: no direct path worked (…)".
    pub fn describe(&self) -> String {
        let ms = self.punch_time.as_millis();
        match (self.candidate, &self.relay_reason) {
            (Some(kind), _) => format!(
                "{} to {} ({kind} candidate) in {ms} ms",
                self.class.describe(),
                self.remote
            ),
            (None, Some(reason)) => format!("{} in {ms} ms: {reason}", self.class.describe()),
            (None, None) => format!("{} in {ms} ms", self.class.describe()),
        }
    }

    /// The `--report` object of this link.
    pub fn to_attempt(&self) -> AttemptReport {
        AttemptReport {
            candidate: self.candidate,
            path: Some(self.path),
            path_class: Some(self.class),
            peer: Some(self.peer),
            probes_sent: Some(self.probes_sent),
            punch_ms: Some(millis(self.punch_time)),
            relay_reason: self.relay_reason.clone(),
            remote: Some(self.remote),
            result: if self.class.is_relayed() {
                AttemptResult::Relayed
            } else {
                AttemptResult::Direct
            },
            role: Some(self.role),
            ..AttemptReport::default()
        }
    }
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttemptResult {
    /// A direct, authenticated link came up.
    Direct,
    /// An authenticated link came up through the server's relay.
    Relayed,
    /// No link.
    #[default]
    Failed,
}

/// The `--report FILE` JSON object: one link attempt, direct or failed (see the
/// module docs for the shape). Fields are in key order, which keeps the file
/// byte for byte what earlier versions wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AttemptReport {
    /// Which of the peer's candidates carried the link.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub candidate: Option<CandidateKind>,
    /// A failed punch: every candidate tried, with the probes sent to it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub candidates_tried: Option<Vec<TriedCandidate>>,
    /// Why it failed, as the CLI printed it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// LAN or public path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathKind>,
    /// Direct (LAN, public) or relayed (UDP, TLS).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_class: Option<PathClass>,
    /// The peer (`null` when the attempt failed before the peer was known).
    pub peer: Option<Uuid>,
    /// Probes (and nominations) this side sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probes_sent: Option<u32>,
    /// ClientInfo → authenticated QUIC link (or → giving up), in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub punch_ms: Option<u64>,
    /// When relayed: why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relay_reason: Option<String>,
    /// The peer's address on the path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote: Option<SocketAddr>,
    /// Direct, relayed or failed.
    pub result: AttemptResult,
    /// This side's role.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// What went through the link afterwards (`chatr pipe` adds it when done).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transfer: Option<TransferReport>,
}

/// What one side of a link moved, how long it took, and where the link was at the end:
/// `{"ms", "path_class", "received", "relay_reason", "remote", "sent", "switches"}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TransferReport {
    /// From the stream's opening to the last byte confirmed, in milliseconds.
    pub ms: u64,
    /// The path carrying the link when the transfer ended (it may have moved since the
    /// link came up: a link that starts on the relay moves to a direct path once one works).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_class: Option<PathClass>,
    /// Bytes received from the peer.
    pub received: u64,
    /// When still relayed at the end: why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relay_reason: Option<String>,
    /// The peer's address on the direct path carrying the link when the transfer ended
    /// (`None` when relayed): tells an IPv6 path from an IPv4 one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote: Option<SocketAddr>,
    /// Bytes sent to the peer (and confirmed by it).
    pub sent: u64,
    /// How often the link changed path up to then.
    pub switches: u32,
    /// With `chatr pipe --wait-direct`: milliseconds from the start of the command's link
    /// attempt until the link was seen on a direct path, 0 when it already was when the
    /// transfer ended (then `punch_ms` tells); absent when it never was in time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direct_ms: Option<u64>,
    /// Punch probes this side sent for the link by the end (prediction and birthday
    /// probes included).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probes_sent: Option<u32>,
}

impl TransferReport {
    /// Both directions' bytes over the time, in MiB/s (`None` for no time at all).
    pub fn mib_per_s(&self) -> Option<f64> {
        (self.ms > 0).then(|| {
            (self.sent + self.received) as f64 / (1024.0 * 1024.0) / (self.ms as f64 / 1000.0)
        })
    }
}

/// One candidate a failed punch tried.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TriedCandidate {
    /// Its kind.
    pub candidate: CandidateKind,
    /// Probes sent to it.
    pub probes: u32,
    /// Its address.
    pub remote: SocketAddr,
}

impl AttemptReport {
    /// The report of a failed attempt with `peer` (if it was known).
    pub fn failure(peer: Option<Uuid>, error: &ClientError) -> Self {
        let mut report = Self {
            error: Some(error.to_string()),
            peer,
            result: AttemptResult::Failed,
            ..Self::default()
        };
        if let ClientError::PunchFailed(failure) = error {
            report.probes_sent = Some(failure.probes_sent);
            report.punch_ms = Some(millis(failure.elapsed));
            report.candidates_tried = Some(
                failure
                    .tried
                    .iter()
                    .map(|(c, probes)| TriedCandidate {
                        candidate: c.kind,
                        probes: *probes,
                        remote: c.addr,
                    })
                    .collect(),
            );
        }
        report
    }

    /// Whether a direct link came up.
    pub fn is_direct(&self) -> bool {
        self.result == AttemptResult::Direct
    }

    /// Whether a relayed link came up.
    pub fn is_relayed(&self) -> bool {
        self.result == AttemptResult::Relayed
    }

    /// Whether a link came up at all (direct or relayed).
    pub fn is_linked(&self) -> bool {
        matches!(self.result, AttemptResult::Direct | AttemptResult::Relayed)
    }

    /// The file's text: one line of JSON.
    pub fn to_json_line(&self) -> String {
        // Serialising plain data to a String cannot fail; an empty object is the
        // safe answer should serde ever disagree.
        let mut line = serde_json::to_string(self).unwrap_or_else(|_| "{}".to_owned());
        line.push('\n');
        line
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::punch::{FailReason, PunchFailure};

    fn lan_report() -> LinkReport {
        LinkReport {
            peer: Uuid::nil(),
            role: Role::Initiator,
            path: PathKind::Lan,
            class: PathClass::DirectLan,
            candidate: Some(CandidateKind::Private),
            remote: "10.0.0.2:4000".parse().unwrap(),
            relay_reason: None,
            punch_time: Duration::from_millis(1234),
            probes_sent: 7,
            candidates: vec![],
        }
    }

    #[test]
    fn success_json_has_the_contract_fields() {
        let v = serde_json::to_value(lan_report().to_attempt()).unwrap();
        assert_eq!(v["peer"], Uuid::nil().to_string());
        assert_eq!(v["result"], "direct");
        assert_eq!(v["path"], "lan");
        assert_eq!(v["candidate"], "private");
        assert_eq!(v["remote"], "10.0.0.2:4000");
        assert_eq!(v["punch_ms"], 1234);
        assert_eq!(v["probes_sent"], 7);
    }

    #[test]
    fn failure_json_names_the_error() {
        let peer = Uuid::new_v4();
        let v = serde_json::to_value(AttemptReport::failure(
            Some(peer),
            &ClientError::Denied { peer },
        ))
        .unwrap();
        assert_eq!(v["result"], "failed");
        assert_eq!(v["peer"], peer.to_string());
        assert!(v["error"].as_str().unwrap().contains("denied"));
    }

    /// The bytes earlier versions wrote with `serde_json::json!` (keys sorted), with
    /// the path class added (version 3).
    #[test]
    fn files_are_byte_for_byte_what_they_were() {
        assert_eq!(
            lan_report().to_attempt().to_json_line(),
            "{\"candidate\":\"private\",\"path\":\"lan\",\"path_class\":\"direct-lan\",\
             \"peer\":\"00000000-0000-0000-0000-000000000000\",\
             \"probes_sent\":7,\"punch_ms\":1234,\"remote\":\"10.0.0.2:4000\",\"result\":\"direct\",\
             \"role\":\"initiator\"}\n"
        );
        let mut relayed = lan_report();
        relayed.class = PathClass::RelayUdp;
        relayed.path = PathKind::Public;
        relayed.candidate = None;
        relayed.relay_reason = Some("no direct path worked".into());
        relayed.remote = "198.51.100.1:7777".parse().unwrap();
        assert_eq!(
            relayed.to_attempt().to_json_line(),
            "{\"path\":\"public\",\"path_class\":\"relay-udp\",\
             \"peer\":\"00000000-0000-0000-0000-000000000000\",\"probes_sent\":7,\"punch_ms\":1234,\
             \"relay_reason\":\"no direct path worked\",\"remote\":\"198.51.100.1:7777\",\
             \"result\":\"relayed\",\"role\":\"initiator\"}\n"
        );
        let mut responder = lan_report();
        responder.role = Role::Responder;
        responder.path = PathKind::Public;
        responder.class = PathClass::DirectPublic;
        responder.candidate = Some(CandidateKind::PeerReflexive);
        responder.remote = "[2001:db8::1]:9".parse().unwrap();
        let line = responder.to_attempt().to_json_line();
        assert!(
            line.contains("\"candidate\":\"peer-reflexive\",\"path\":\"public\""),
            "{line}"
        );
        assert!(line.contains("\"remote\":\"[2001:db8::1]:9\""), "{line}");
        assert!(line.ends_with("\"role\":\"responder\"}\n"), "{line}");

        let offline = AttemptReport::failure(None, &ClientError::UnknownPeer("bob".into()));
        assert_eq!(
            offline.to_json_line(),
            format!(
                "{{\"error\":{},\"peer\":null,\"result\":\"failed\"}}\n",
                serde_json::to_string(&ClientError::UnknownPeer("bob".into()).to_string()).unwrap()
            )
        );

        let failure = PunchFailure {
            reason: FailReason::NoPathValidated,
            tried: vec![(
                Candidate::new(
                    "203.0.113.9:5000".parse().unwrap(),
                    CandidateKind::PublicUdp,
                ),
                12,
            )],
            probes_sent: 12,
            elapsed: Duration::from_millis(8000),
        };
        let error = ClientError::PunchFailed(Box::new(failure));
        let line = AttemptReport::failure(Some(Uuid::nil()), &error).to_json_line();
        assert_eq!(
            line,
            format!(
                "{{\"candidates_tried\":[{{\"candidate\":\"public-udp\",\"probes\":12,\"remote\":\"203.0.113.9:5000\"}}],\
                 \"error\":{},\"peer\":\"00000000-0000-0000-0000-000000000000\",\"probes_sent\":12,\
                 \"punch_ms\":8000,\"result\":\"failed\"}}\n",
                serde_json::to_string(&error.to_string()).unwrap()
            )
        );
    }

    #[test]
    fn the_lab_reads_back_what_the_cli_writes() {
        let written = lan_report().to_attempt();
        let read: AttemptReport = serde_json::from_str(&written.to_json_line()).unwrap();
        assert_eq!(read, written);
        assert!(read.is_direct());
        // Names in the file are the kinds' report names.
        for kind in [
            CandidateKind::Private,
            CandidateKind::PublicUdp,
            CandidateKind::PublicTcp,
            CandidateKind::PeerReflexive,
        ] {
            assert_eq!(
                serde_json::to_value(kind).unwrap(),
                serde_json::Value::from(kind.as_str())
            );
        }
        for path in [PathKind::Lan, PathKind::Public] {
            assert_eq!(
                serde_json::to_value(path).unwrap(),
                serde_json::Value::from(path.as_str())
            );
        }
        for class in [
            PathClass::DirectLan,
            PathClass::DirectPublic,
            PathClass::RelayUdp,
            PathClass::RelayTls,
        ] {
            assert_eq!(
                serde_json::to_value(class).unwrap(),
                serde_json::Value::from(class.as_str())
            );
        }
    }
}
