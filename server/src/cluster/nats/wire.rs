//! What the nodes say to each other over NATS: subjects and JSON bodies
//! (documented in docs/CLUSTER.md; internal to a cluster, never seen by clients).
//!
//! Every node runs the same version of this vocabulary; a body that does not parse
//! is answered as if the target were offline and logged.

use std::net::SocketAddr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chatr_proto::{
    Endpoint, LINK_SECRET_LEN, LinkHints, Packet, PacketConnectionRequest, RELAY_ID_LEN, RelayId,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::session::{PeerEndpoints, PeerEvent};

/// The subjects of one cluster (all under its prefix).
#[derive(Debug, Clone)]
pub(crate) struct Subjects {
    prefix: String,
}

impl Subjects {
    pub(crate) fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.trim_end_matches('.').to_owned(),
        }
    }

    /// `<prefix>.node.<node>.<what>`: requests for one node.
    pub(crate) fn node(&self, node: &str, what: &str) -> String {
        format!("{}.node.{node}.{what}", self.prefix)
    }

    /// Everything for one node (its single subscription).
    pub(crate) fn node_all(&self, node: &str) -> String {
        format!("{}.node.{node}.>", self.prefix)
    }

    /// `<prefix>.heartbeat`: every node announces itself here.
    pub(crate) fn heartbeat(&self) -> String {
        format!("{}.heartbeat", self.prefix)
    }
}

/// The value of a claim in the KV bucket (key: the UUID).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ClaimValue {
    /// The node holding the session.
    pub(crate) node: String,
    /// The session's id on that node.
    pub(crate) session: u64,
}

/// A private endpoint as the client gave it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct WireEndpoint {
    ip: std::net::IpAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    port: Option<u16>,
}

impl From<Endpoint> for WireEndpoint {
    fn from(e: Endpoint) -> Self {
        Self {
            ip: e.ip,
            port: e.port,
        }
    }
}

impl From<WireEndpoint> for Endpoint {
    fn from(e: WireEndpoint) -> Self {
        Self {
            ip: e.ip,
            port: e.port,
        }
    }
}

/// One brokering message ([`PeerEvent`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum WireEvent {
    Request {
        private_endpoint: WireEndpoint,
        /// Version-3 link hints in their client-protocol encoding, base64 ([`WireHints`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        hints: Option<String>,
    },
    Accepted {
        private_endpoint: WireEndpoint,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        hints: Option<String>,
    },
    Denied,
    ClientInfo {
        link_secret: String,
        /// The relay the sender's node opened for this exchange (hex), if any: it lives
        /// on the sender's node, and the receiver's node hops datagrams there.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        relay_id: Option<String>,
    },
}

/// Link hints between nodes: the bytes a client would get, as the private endpoint and
/// hints of a `PacketConnectionRequest` frame, so they pass through exactly as they would
/// on one node and are parsed by the one client-protocol parser.
struct WireHints;

impl WireHints {
    fn encode(hints: Option<&LinkHints>) -> Option<String> {
        let hints = hints?;
        let frame = Packet::ConnectionRequest(PacketConnectionRequest {
            uuid: Uuid::nil(),
            private_endpoint: Endpoint {
                ip: std::net::Ipv4Addr::UNSPECIFIED.into(),
                port: None,
            },
            hints: Some(hints.clone()),
        })
        .to_bytes();
        Some(STANDARD.encode(frame))
    }

    fn decode(text: Option<&String>) -> Result<Option<LinkHints>, WireError> {
        let Some(text) = text else {
            return Ok(None);
        };
        let frame = STANDARD.decode(text)?;
        match chatr_proto::decode_frame(&frame) {
            Ok((Packet::ConnectionRequest(p), _)) => Ok(p.hints),
            _ => Err(WireError::Hints),
        }
    }
}

/// `…node.<n>.peer`: deliver `event` from `from` to the session of `to` on node n.
/// Answered with a [`DeliveryReply`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PeerMessage {
    /// The sending node's id (where a relay it names lives).
    #[serde(default)]
    pub(crate) node: String,
    /// Whether the sender's session speaks version 3 (may be relayed).
    #[serde(default)]
    pub(crate) v3: bool,
    pub(crate) to: Uuid,
    pub(crate) from: Uuid,
    /// The sender's TLS source address as its node saw it.
    pub(crate) tcp: SocketAddr,
    /// The sender's UDP mapping as its node saw it, if bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) udp: Option<SocketAddr>,
    pub(crate) event: WireEvent,
}

/// The answer to a [`PeerMessage`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum DeliveryReply {
    Delivered,
    Busy,
    Offline,
}

/// `…node.<n>.probe`: is node n's session `session` of `uuid` alive? Answered
/// `alive` or `dead` once its client answered a ping (or did not in time).
/// `…node.<n>.kick` carries the same body: end that session (no answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SessionRef {
    pub(crate) uuid: Uuid,
    pub(crate) session: u64,
}

/// `…node.<n>.bind`: a UDP binding request another node received for one of node
/// n's tokens. Answered with the raw reply datagram to send back (empty: none).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct BindMessage {
    /// Where the datagram came from, as the receiving node saw it.
    pub(crate) source: SocketAddr,
    /// The datagram, base64.
    pub(crate) datagram: String,
}

/// `…heartbeat`: a node is alive (published every heartbeat interval).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Heartbeat {
    pub(crate) node: String,
    pub(crate) name: String,
}

/// Why a message from another node was not usable.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WireError {
    #[error("not the expected JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("bad base64: {0}")]
    Base64(#[from] base64::DecodeError),
    #[error("the link secret is not {LINK_SECRET_LEN} hex bytes")]
    LinkSecret,
    #[error("the relay id is not {RELAY_ID_LEN} non-zero hex bytes")]
    RelayId,
    #[error("the link hints are not a valid ConnectionRequest frame")]
    Hints,
}

impl PeerMessage {
    /// Encodes a brokering message sent by node `node`. Everything a session would get
    /// on one node travels: hints (the receiving node strips them for a client older
    /// than version 3, as on one node), the sender's version, and the relay id.
    pub(crate) fn new(
        node: &str,
        from: Uuid,
        endpoints: PeerEndpoints,
        to: Uuid,
        event: &PeerEvent,
    ) -> Self {
        let event = match event {
            PeerEvent::Request {
                private_endpoint,
                hints,
            } => WireEvent::Request {
                private_endpoint: (*private_endpoint).into(),
                hints: WireHints::encode(hints.as_ref()),
            },
            PeerEvent::Accepted {
                private_endpoint,
                hints,
            } => WireEvent::Accepted {
                private_endpoint: (*private_endpoint).into(),
                hints: WireHints::encode(hints.as_ref()),
            },
            PeerEvent::Denied => WireEvent::Denied,
            PeerEvent::ClientInfo {
                link_secret,
                relay_id,
            } => WireEvent::ClientInfo {
                link_secret: hex::encode(link_secret),
                relay_id: relay_id.map(|id| hex::encode(id.as_bytes())),
            },
        };
        Self {
            node: node.to_owned(),
            v3: endpoints.v3,
            to,
            from,
            tcp: endpoints.tcp,
            udp: endpoints.udp,
            event,
        }
    }

    /// What the receiving node hands its session.
    pub(crate) fn event(&self) -> Result<(PeerEndpoints, PeerEvent), WireError> {
        let event = match &self.event {
            WireEvent::Request {
                private_endpoint,
                hints,
            } => PeerEvent::Request {
                private_endpoint: (*private_endpoint).into(),
                hints: WireHints::decode(hints.as_ref())?,
            },
            WireEvent::Accepted {
                private_endpoint,
                hints,
            } => PeerEvent::Accepted {
                private_endpoint: (*private_endpoint).into(),
                hints: WireHints::decode(hints.as_ref())?,
            },
            WireEvent::Denied => PeerEvent::Denied,
            WireEvent::ClientInfo {
                link_secret,
                relay_id,
            } => {
                let bytes = hex::decode(link_secret).map_err(|_| WireError::LinkSecret)?;
                let link_secret: [u8; LINK_SECRET_LEN] =
                    bytes.try_into().map_err(|_| WireError::LinkSecret)?;
                let relay_id = match relay_id {
                    None => None,
                    Some(text) => {
                        let bytes = hex::decode(text).map_err(|_| WireError::RelayId)?;
                        let bytes: [u8; RELAY_ID_LEN] =
                            bytes.try_into().map_err(|_| WireError::RelayId)?;
                        Some(RelayId::from_wire(bytes).ok_or(WireError::RelayId)?)
                    }
                };
                PeerEvent::ClientInfo {
                    link_secret,
                    relay_id,
                }
            }
        };
        let endpoints = PeerEndpoints {
            tcp: self.tcp,
            udp: self.udp,
            v3: self.v3,
        };
        Ok((endpoints, event))
    }
}

impl BindMessage {
    pub(crate) fn new(source: SocketAddr, datagram: &[u8]) -> Self {
        Self {
            source,
            datagram: STANDARD.encode(datagram),
        }
    }

    pub(crate) fn datagram(&self) -> Result<Vec<u8>, WireError> {
        Ok(STANDARD.decode(&self.datagram)?)
    }
}

/// JSON bytes of `value` (these types always serialize).
pub(crate) fn encode<T: Serialize>(value: &T) -> bytes::Bytes {
    serde_json::to_vec(value).map_or_else(|_| bytes::Bytes::new(), bytes::Bytes::from)
}

/// `T` from JSON bytes.
pub(crate) fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, WireError> {
    Ok(serde_json::from_slice(bytes)?)
}

#[cfg(test)]
mod tests {
    use chatr_proto::{CandidateOrigin, ExtraCandidate, NatHint, NatMapping};

    use super::*;

    fn hints() -> LinkHints {
        LinkHints {
            nat: NatHint {
                mapping: NatMapping::DependentSequential,
                step: -2,
                last_port: Some(40_000),
            },
            candidates: vec![ExtraCandidate {
                origin: CandidateOrigin::PortMapped,
                addr: "[2001:db8::7]:5555".parse().unwrap(),
            }],
        }
    }

    #[test]
    fn every_event_round_trips_with_hints_version_and_relay() {
        let endpoints = PeerEndpoints {
            tcp: "198.51.100.1:4000".parse().unwrap(),
            udp: Some("198.51.100.1:5000".parse().unwrap()),
            v3: true,
        };
        let from = Uuid::from_bytes([1; 16]);
        let to = Uuid::from_bytes([2; 16]);
        let private = Endpoint::new("10.0.0.1:7000".parse().unwrap());
        for event in [
            PeerEvent::Request {
                private_endpoint: private,
                hints: Some(hints()),
            },
            PeerEvent::Request {
                private_endpoint: private,
                hints: None,
            },
            PeerEvent::Accepted {
                private_endpoint: Endpoint {
                    ip: private.ip,
                    port: None,
                },
                hints: Some(LinkHints::default()),
            },
            PeerEvent::Denied,
            PeerEvent::ClientInfo {
                link_secret: [7; LINK_SECRET_LEN],
                relay_id: None,
            },
            PeerEvent::ClientInfo {
                link_secret: [7; LINK_SECRET_LEN],
                relay_id: Some(RelayId([9; RELAY_ID_LEN])),
            },
        ] {
            let message = PeerMessage::new("0a0b0c0d", from, endpoints, to, &event);
            let back: PeerMessage = decode(&encode(&message)).unwrap();
            assert_eq!(back, message);
            assert_eq!(back.node, "0a0b0c0d");
            let (got_endpoints, got_event) = back.event().unwrap();
            assert_eq!(got_event, event);
            assert_eq!(got_endpoints, endpoints);
        }
        let v2 = PeerEndpoints {
            v3: false,
            ..endpoints
        };
        let back = PeerMessage::new("n", from, v2, to, &PeerEvent::Denied);
        assert!(!back.event().unwrap().0.v3, "a version-2 sender stays one");
    }

    #[test]
    fn bad_bodies_are_errors() {
        assert!(decode::<PeerMessage>(b"{}").is_err());
        assert!(decode::<SessionRef>(b"not json").is_err());
        let mut message = PeerMessage::new(
            "n",
            Uuid::nil(),
            PeerEndpoints {
                tcp: "127.0.0.1:1".parse().unwrap(),
                udp: None,
                v3: false,
            },
            Uuid::nil(),
            &PeerEvent::Denied,
        );
        message.event = WireEvent::ClientInfo {
            link_secret: "abcd".into(),
            relay_id: None,
        };
        assert!(matches!(message.event(), Err(WireError::LinkSecret)));
        message.event = WireEvent::ClientInfo {
            link_secret: hex::encode([1; LINK_SECRET_LEN]),
            relay_id: Some(hex::encode([0; RELAY_ID_LEN])),
        };
        assert!(matches!(message.event(), Err(WireError::RelayId)));
        message.event = WireEvent::Request {
            private_endpoint: Endpoint::new("127.0.0.1:1".parse().unwrap()).into(),
            hints: Some(STANDARD.encode(b"\x02\x05")),
        };
        assert!(matches!(message.event(), Err(WireError::Hints)));
        let bind = BindMessage {
            source: "127.0.0.1:1".parse().unwrap(),
            datagram: "%%%".into(),
        };
        assert!(bind.datagram().is_err());
        let good = BindMessage::new("127.0.0.1:1".parse().unwrap(), b"\0CHR\x01");
        assert_eq!(good.datagram().unwrap(), b"\0CHR\x01");
    }
}
