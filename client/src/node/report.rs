//! What a link attempt reports: which path won and how long it took.
//!
//! The CLI writes this as the `--report FILE` JSON object the NAT lab reads:
//! `{"peer", "result": "direct"|"relayed"|"failed", "path", "path_class", "candidate",
//! "remote", "punch_ms", "probes_sent", "relay_reason", "error"}`.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};
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

    /// The `--report` JSON object.
    pub fn to_json(&self) -> Value {
        json!({
            "peer": self.peer.to_string(),
            "result": if self.class.is_relayed() { "relayed" } else { "direct" },
            "path": self.path.as_str(),
            "path_class": self.class.as_str(),
            "candidate": self.candidate.map_or("relay", CandidateKind::as_str),
            "remote": self.remote.to_string(),
            "punch_ms": u64::try_from(self.punch_time.as_millis()).unwrap_or(u64::MAX),
            "probes_sent": self.probes_sent,
            "relay_reason": self.relay_reason,
            "role": match self.role { Role::Initiator => "initiator", Role::Responder => "responder" },
        })
    }
}

/// The `--report` JSON object of a failed attempt.
pub fn failure_json(peer: Option<Uuid>, error: &ClientError) -> Value {
    let mut value = json!({
        "peer": peer.map(|p| p.to_string()),
        "result": "failed",
        "error": error.to_string(),
    });
    if let (ClientError::PunchFailed(failure), Some(obj)) = (error, value.as_object_mut()) {
        obj.insert("probes_sent".into(), json!(failure.probes_sent));
        obj.insert(
            "punch_ms".into(),
            json!(u64::try_from(failure.elapsed.as_millis()).unwrap_or(u64::MAX)),
        );
        obj.insert(
            "candidates_tried".into(),
            json!(
                failure
                    .tried
                    .iter()
                    .map(|(c, n)| json!({"remote": c.addr.to_string(), "candidate": c.kind.as_str(), "probes": n}))
                    .collect::<Vec<_>>()
            ),
        );
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success_json_has_the_contract_fields() {
        let r = LinkReport {
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
        };
        let v = r.to_json();
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
        let v = failure_json(Some(peer), &ClientError::Denied { peer });
        assert_eq!(v["result"], "failed");
        assert_eq!(v["peer"], peer.to_string());
        assert!(v["error"].as_str().unwrap().contains("denied"));
    }
}
