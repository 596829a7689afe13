//! What the nodes say to each other over NATS: subjects and JSON bodies
//! (documented in docs/CLUSTER.md; internal to a cluster, never seen by clients).
//!
//! Every node runs the same version of this vocabulary; a body that does not parse
//! is answered as if the target were offline and logged.

use std::net::SocketAddr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chatr_proto::{Endpoint, LINK_SECRET_LEN};
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
    Request { private_endpoint: WireEndpoint },
    Accepted { private_endpoint: WireEndpoint },
    Denied,
    ClientInfo { link_secret: String },
}

/// `…node.<n>.peer`: deliver `event` from `from` to the session of `to` on node n.
/// Answered with a [`DeliveryReply`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PeerMessage {
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
}

impl PeerMessage {
    /// Encodes a brokering message. Relay ids are not carried: a relay lives on one
    /// node, so exchanges between nodes are not relayed (docs/CLUSTER.md).
    pub(crate) fn new(from: Uuid, endpoints: PeerEndpoints, to: Uuid, event: &PeerEvent) -> Self {
        let event = match event {
            PeerEvent::Request { private_endpoint } => WireEvent::Request {
                private_endpoint: (*private_endpoint).into(),
            },
            PeerEvent::Accepted { private_endpoint } => WireEvent::Accepted {
                private_endpoint: (*private_endpoint).into(),
            },
            PeerEvent::Denied => WireEvent::Denied,
            PeerEvent::ClientInfo { link_secret, .. } => WireEvent::ClientInfo {
                link_secret: hex::encode(link_secret),
            },
        };
        Self {
            to,
            from,
            tcp: endpoints.tcp,
            udp: endpoints.udp,
            event,
        }
    }

    /// What the receiving node hands its session. The sender is never offered a
    /// relay from here (`v3: false`): see [`PeerMessage::new`].
    pub(crate) fn event(&self) -> Result<(PeerEndpoints, PeerEvent), WireError> {
        let event = match &self.event {
            WireEvent::Request { private_endpoint } => PeerEvent::Request {
                private_endpoint: (*private_endpoint).into(),
            },
            WireEvent::Accepted { private_endpoint } => PeerEvent::Accepted {
                private_endpoint: (*private_endpoint).into(),
            },
            WireEvent::Denied => PeerEvent::Denied,
            WireEvent::ClientInfo { link_secret } => {
                let bytes = hex::decode(link_secret).map_err(|_| WireError::LinkSecret)?;
                let link_secret: [u8; LINK_SECRET_LEN] =
                    bytes.try_into().map_err(|_| WireError::LinkSecret)?;
                PeerEvent::ClientInfo {
                    link_secret,
                    relay_id: None,
                }
            }
        };
        let endpoints = PeerEndpoints {
            tcp: self.tcp,
            udp: self.udp,
            v3: false,
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
    use super::*;

    #[test]
    fn every_event_round_trips_and_relays_are_dropped() {
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
            },
            PeerEvent::Accepted {
                private_endpoint: Endpoint {
                    ip: private.ip,
                    port: None,
                },
            },
            PeerEvent::Denied,
            PeerEvent::ClientInfo {
                link_secret: [7; LINK_SECRET_LEN],
                relay_id: None,
            },
        ] {
            let message = PeerMessage::new(from, endpoints, to, &event);
            let back: PeerMessage = decode(&encode(&message)).unwrap();
            assert_eq!(back, message);
            let (got_endpoints, got_event) = back.event().unwrap();
            assert_eq!(got_event, event);
            assert_eq!(got_endpoints.tcp, endpoints.tcp);
            assert_eq!(got_endpoints.udp, endpoints.udp);
            assert!(!got_endpoints.v3, "no relay across nodes");
        }
    }

    #[test]
    fn bad_bodies_are_errors() {
        assert!(decode::<PeerMessage>(b"{}").is_err());
        assert!(decode::<SessionRef>(b"not json").is_err());
        let mut message = PeerMessage::new(
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
        };
        assert!(matches!(message.event(), Err(WireError::LinkSecret)));
        let bind = BindMessage {
            source: "127.0.0.1:1".parse().unwrap(),
            datagram: "%%%".into(),
        };
        assert!(bind.datagram().is_err());
        let good = BindMessage::new("127.0.0.1:1".parse().unwrap(), b"\0CHR\x01");
        assert_eq!(good.datagram().unwrap(), b"\0CHR\x01");
    }
}
