//! proptest round-trips: for every packet, decode(encode(p)) == p and the encoded
//! length is exact.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use chatr_proto::{
    CandidateOrigin, Endpoint, ExtraCandidate, LinkHints, MAX_BYTE_ARRAY_LEN, NatHint, NatMapping,
    Packet, PacketClientInfo, PacketConnect, PacketConnected, PacketConnectionRequest,
    PacketConnectionRequestAccept, PacketConnectionRequestDenied, PacketDisconnect, PacketPing,
    PacketPong, PacketRelayClose, PacketRelayData, RelayId, SessionFeatures, SessionParams,
    decode_frame,
};
use proptest::prelude::*;
use uuid::Uuid;

fn any_uuid() -> impl Strategy<Value = Uuid> {
    any::<[u8; 16]>().prop_map(Uuid::from_bytes)
}

fn any_ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(|b| IpAddr::V4(Ipv4Addr::from(b))),
        any::<[u8; 16]>().prop_map(|b| IpAddr::V6(Ipv6Addr::from(b))),
    ]
}

fn any_endpoint() -> impl Strategy<Value = Endpoint> {
    (any_ip(), proptest::option::of(1u16..=u16::MAX)).prop_map(|(ip, port)| Endpoint { ip, port })
}

/// A TCP endpoint that is distinguishable from the "absent" stand-in (0.0.0.0:0).
fn any_tcp_endpoint() -> impl Strategy<Value = Endpoint> {
    any_endpoint().prop_filter("unspecified without port means absent", |e| {
        !(e.ip.is_unspecified() && e.port.is_none())
    })
}

fn any_hints() -> impl Strategy<Value = LinkHints> {
    let mapping = prop_oneof![
        Just(NatMapping::Unknown),
        Just(NatMapping::NoNat),
        Just(NatMapping::EndpointIndependent),
        Just(NatMapping::DependentRandom),
        Just(NatMapping::DependentSequential),
    ];
    let candidate = (
        prop_oneof![
            Just(CandidateOrigin::PortMapped),
            Just(CandidateOrigin::Ipv6Global)
        ],
        any_ip(),
        1u16..=u16::MAX,
    )
        .prop_map(|(origin, ip, port)| ExtraCandidate {
            origin,
            addr: std::net::SocketAddr::new(ip, port),
        });
    (
        mapping,
        any::<i16>(),
        proptest::option::of(1u16..=u16::MAX),
        proptest::collection::vec(candidate, 0..=chatr_proto::MAX_EXTRA_CANDIDATES),
    )
        .prop_map(|(mapping, step, last_port, candidates)| LinkHints {
            nat: NatHint {
                mapping,
                // Only a sequential NAT has a step; others read back as 0.
                step: if mapping == NatMapping::DependentSequential {
                    step
                } else {
                    0
                },
                last_port,
            },
            candidates,
        })
}

fn any_relay_id() -> impl Strategy<Value = RelayId> {
    any::<[u8; 8]>().prop_filter_map("the all-zero id means no relay", RelayId::from_wire)
}

fn any_packet() -> impl Strategy<Value = Packet> {
    prop_oneof![
        (
            any::<u32>(),
            any_uuid(),
            proptest::collection::vec(any::<u8>(), 0..=MAX_BYTE_ARRAY_LEN)
        )
            .prop_map(|(version, uuid, signature)| Packet::Connect(PacketConnect {
                version,
                uuid,
                signature
            })),
        // At most 250 chars of at most 4 bytes: within MAX_STRING_LEN.
        ".{0,250}".prop_map(|message| Packet::Disconnect(PacketDisconnect { message })),
        proptest::option::of(any::<[u8; 16]>()).prop_map(|udp_token| Packet::Connected(
            PacketConnected {
                udp_token,
                session: None
            }
        )),
        // The session parameters always follow a token.
        (
            any::<[u8; 16]>(),
            any::<u32>(),
            any::<u8>(),
            proptest::collection::vec(any::<u16>(), 0..=chatr_proto::MAX_NAT_PROBE_PORTS)
        )
            .prop_map(|(token, version, features, nat_probe_ports)| {
                Packet::Connected(PacketConnected {
                    udp_token: Some(token),
                    session: Some(SessionParams {
                        version,
                        features: SessionFeatures(features),
                        nat_probe_ports,
                    }),
                })
            }),
        (
            any_relay_id(),
            proptest::collection::vec(any::<u8>(), 1..=chatr_proto::MAX_RELAY_DATAGRAM)
        )
            .prop_map(|(relay_id, datagram)| Packet::RelayData(PacketRelayData {
                relay_id,
                datagram: datagram.into(),
            })),
        (any_relay_id(), ".{0,250}").prop_map(|(relay_id, reason)| Packet::RelayClose(
            PacketRelayClose { relay_id, reason }
        )),
        (
            any::<bool>(),
            proptest::collection::vec(any_uuid(), 0..=chatr_proto::MAX_PRESENCE_BATCH)
        )
            .prop_map(|(add, contacts)| Packet::PresenceContacts(
                chatr_proto::PacketPresenceContacts {
                    op: if add {
                        chatr_proto::ContactsOp::Add
                    } else {
                        chatr_proto::ContactsOp::Remove
                    },
                    contacts,
                }
            )),
        (0u8..=3, ".{0,60}").prop_map(|(status, message)| Packet::PresenceStatus(
            chatr_proto::PacketPresenceStatus {
                status: chatr_proto::PresenceStatus::from_byte(status).unwrap(),
                message,
            }
        )),
        (any_uuid(), 0u8..=3, ".{0,60}").prop_map(|(uuid, status, message)| Packet::Presence(
            chatr_proto::PacketPresence {
                uuid,
                status: chatr_proto::PresenceStatus::from_byte(status).unwrap(),
                message,
            }
        )),
        any::<i64>().prop_map(|ping_id| Packet::Ping(PacketPing { ping_id })),
        any::<i64>().prop_map(|ping_id| Packet::Pong(PacketPong { ping_id })),
        (
            any_uuid(),
            any_endpoint(),
            proptest::option::of(any_hints())
        )
            .prop_map(|(uuid, private_endpoint, hints)| {
                Packet::ConnectionRequest(PacketConnectionRequest {
                    uuid,
                    private_endpoint,
                    hints,
                })
            }),
        (
            any_uuid(),
            any_endpoint(),
            proptest::option::of(any_hints())
        )
            .prop_map(|(uuid, private_endpoint, hints)| {
                Packet::ConnectionRequestAccept(PacketConnectionRequestAccept {
                    uuid,
                    private_endpoint,
                    hints,
                })
            }),
        any_uuid().prop_map(|uuid| Packet::ConnectionRequestDenied(
            PacketConnectionRequestDenied { uuid }
        )),
        (
            any_uuid(),
            any_endpoint(),
            proptest::option::of(any_tcp_endpoint()),
            proptest::option::of((any::<[u8; 32]>(), proptest::option::of(any_relay_id())))
        )
            .prop_map(|(uuid, public_endpoint, tcp_endpoint, secret_and_relay)| {
                // A relay id always follows a link secret (the server sends both).
                let (link_secret, relay_id) = match secret_and_relay {
                    Some((secret, relay)) => (Some(secret), relay),
                    None => (None, None),
                };
                Packet::ClientInfo(PacketClientInfo {
                    uuid,
                    public_endpoint,
                    tcp_endpoint,
                    link_secret,
                    relay_id,
                })
            }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn decode_of_encode_is_identity(packet in any_packet()) {
        let mut bytes = Vec::new();
        packet.encode(&mut bytes);
        prop_assert_eq!(packet.encoded_len(), bytes.len());
        prop_assert_eq!(decode_frame(&bytes), Ok((packet.clone(), bytes.len())));
    }

    #[test]
    fn encode_appends_and_frames_concatenate(a in any_packet(), b in any_packet()) {
        let mut bytes = vec![0xAA];
        a.encode(&mut bytes);
        b.encode(&mut bytes);
        let rest = bytes.get(1..).unwrap();
        let (first, used) = decode_frame(rest).unwrap();
        prop_assert_eq!(&first, &a);
        prop_assert_eq!(used, a.encoded_len());
        let (second, used2) = decode_frame(rest.get(used..).unwrap()).unwrap();
        prop_assert_eq!(second, b);
        prop_assert_eq!(used + used2, rest.len());
    }

    #[test]
    fn opcode_decode_matches_frame(packet in any_packet()) {
        let bytes = packet.to_bytes();
        let (_, header) = chatr_proto::varint::decode_varint(&bytes).unwrap();
        let payload = bytes.get(header + 1..).unwrap();
        prop_assert_eq!(bytes.get(header), Some(&packet.opcode()));
        prop_assert_eq!(Packet::decode(packet.opcode(), payload), Ok(packet));
    }
}

#[test]
fn over_limit_fields_are_clamped_on_encode() {
    let long = "é".repeat(600); // 1200 bytes
    let packet = Packet::Disconnect(PacketDisconnect { message: long });
    let bytes = packet.to_bytes();
    assert_eq!(bytes.len(), packet.encoded_len());
    let (decoded, _) = decode_frame(&bytes).unwrap();
    assert_eq!(
        decoded,
        Packet::Disconnect(PacketDisconnect {
            message: "é".repeat(512)
        })
    );

    let packet = Packet::Connect(PacketConnect {
        version: 2,
        uuid: Uuid::nil(),
        signature: vec![7; 5000],
    });
    let bytes = packet.to_bytes();
    assert_eq!(bytes.len(), packet.encoded_len());
    let (decoded, _) = decode_frame(&bytes).unwrap();
    let Packet::Connect(c) = decoded else {
        panic!("wrong packet")
    };
    assert_eq!(c.signature, vec![7; MAX_BYTE_ARRAY_LEN]);
}

#[test]
fn absent_tcp_endpoint_before_link_secret_round_trips() {
    let packet = Packet::ClientInfo(PacketClientInfo {
        uuid: Uuid::nil(),
        public_endpoint: Endpoint {
            ip: IpAddr::V6(Ipv6Addr::LOCALHOST),
            port: Some(9),
        },
        tcp_endpoint: None,
        relay_id: None,
        link_secret: Some([3; 32]),
    });
    assert_eq!(
        decode_frame(&packet.to_bytes()),
        Ok((packet.clone(), packet.encoded_len()))
    );
}
