//! What a link attempt reports: which path won and how long it took.
//!
//! The CLI writes this as the `--report FILE` JSON object the NAT lab reads:
//! `{"peer", "result": "direct"|"failed", "path", "candidate", "remote",
//! "punch_ms", "probes_sent", "error"}`.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};
use uuid::Uuid;

use crate::error::ClientError;
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
    /// Which of the peer's candidates carried the link.
    pub candidate: CandidateKind,
    /// The peer's address on the path.
    pub remote: SocketAddr,
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
            candidate,
            remote,
            punch_time,
            probes_sent: punch.map_or(0, |s| s.probes_sent),
            candidates,
        }
    }

    /// The `--report` JSON object.
    pub fn to_json(&self) -> Value {
        json!({
            "peer": self.peer.to_string(),
            "result": "direct",
            "path": self.path.as_str(),
            "candidate": self.candidate.as_str(),
            "remote": self.remote.to_string(),
            "punch_ms": u64::try_from(self.punch_time.as_millis()).unwrap_or(u64::MAX),
            "probes_sent": self.probes_sent,
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
            candidate: CandidateKind::Private,
            remote: "10.0.0.2:4000".parse().unwrap(),
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
