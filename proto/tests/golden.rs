//! Hand-written frames: decode to the expected packet, encode to the same bytes, and
//! every truncation is classified right (frame cut → Incomplete, payload cut → invalid).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::{IpAddr, Ipv4Addr};

use chatr_proto::Endpoint;
use chatr_proto::udp::UdpMessage;
use chatr_proto::varint::encode_varint;
use chatr_proto::{DecodeError, Packet, PacketDisconnect, decode_frame};
use common::{goldens, unhex};

#[test]
fn every_golden_decodes_to_its_packet() {
    for g in goldens() {
        let bytes = g.bytes();
        assert_eq!(
            decode_frame(&bytes),
            Ok((g.packet.clone(), bytes.len())),
            "{}",
            g.name
        );
    }
}

#[test]
fn every_golden_encodes_to_its_bytes() {
    for g in goldens() {
        let bytes = g.bytes();
        let mut out = Vec::new();
        g.packet.encode(&mut out);
        assert_eq!(hex::encode(&out), hex::encode(&bytes), "{}", g.name);
        assert_eq!(g.packet.encoded_len(), bytes.len(), "{}", g.name);
    }
}

#[test]
fn every_opcode_has_a_golden() {
    let mut seen: Vec<u8> = goldens().iter().map(|g| g.packet.opcode()).collect();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen, (0u8..=0x0d).collect::<Vec<_>>());
    for g in goldens() {
        assert_eq!(g.bytes().get(1), Some(&g.packet.opcode()), "{}", g.name);
    }
}

#[test]
fn golden_followed_by_more_bytes_consumes_only_its_frame() {
    for g in goldens() {
        let mut bytes = g.bytes();
        let len = bytes.len();
        bytes.extend_from_slice(&[0x01, 0x02, 0x03]);
        assert_eq!(
            decode_frame(&bytes),
            Ok((g.packet.clone(), len)),
            "{}",
            g.name
        );
    }
}

#[test]
fn every_prefix_of_a_frame_is_incomplete() {
    for g in goldens() {
        let bytes = g.bytes();
        for cut in 0..bytes.len() {
            assert_eq!(
                decode_frame(bytes.get(..cut).unwrap()),
                Err(DecodeError::Incomplete),
                "{} cut at {cut}",
                g.name
            );
        }
    }
}

/// Rebuilds a frame around `payload`, with a correct length prefix.
fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_varint(u32::try_from(payload.len() + 1).unwrap(), &mut out);
    out.push(opcode);
    out.extend_from_slice(payload);
    out
}

#[test]
fn every_field_truncated_inside_a_complete_frame_is_invalid() {
    let mut checked = 0;
    for g in goldens() {
        let bytes = g.bytes();
        // Every golden has a 1-byte length prefix.
        let payload = bytes.get(2..).unwrap();
        let opcode = g.packet.opcode();
        for cut in 0..payload.len() {
            let truncated = frame(opcode, payload.get(..cut).unwrap());
            let result = decode_frame(&truncated);
            if g.valid_cuts.contains(&cut) {
                let (packet, used) = result.unwrap_or_else(|e| panic!("{} cut {cut}: {e}", g.name));
                assert_eq!(used, truncated.len());
                assert_eq!(packet.opcode(), opcode);
            } else {
                assert!(
                    matches!(result, Err(DecodeError::Truncated { .. })),
                    "{} cut at {cut}: {result:?}",
                    g.name
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 300, "only {checked} truncations checked");
}

#[test]
fn spec_layout_prefix_of_extended_frames_decodes_without_extensions() {
    // ConnectionRequest + port, cut after the Address → port unknown.
    let (p, _) = decode_frame(&unhex("16 05 U 04 c0a8010a")).unwrap();
    let Packet::ConnectionRequest(req) = p else {
        panic!("wrong packet {p:?}")
    };
    assert_eq!(req.private_endpoint.port, None);

    // ClientInfo, all extensions, cut after the public port.
    let (p, _) = decode_frame(&unhex("18 08 U 04 cb007105 9c40")).unwrap();
    let Packet::ClientInfo(info) = p else {
        panic!("wrong packet {p:?}")
    };
    assert_eq!(info.public_endpoint.port, Some(40000));
    assert_eq!(info.tcp_endpoint, None);
    assert_eq!(info.link_secret, None);
}

#[test]
fn unknown_trailing_bytes_are_tolerated() {
    let cases = [
        ("0b 03 0102030405060708 ffff", "09 03 0102030405060708"),
        // After the last extension field of each packet (version 3: the session
        // parameters of Connected, the relay id of ClientInfo).
        (
            "19 02 000102030405060708090a0b0c0d0e0f 00000003 01 00 0102",
            "17 02 000102030405060708090a0b0c0d0e0f 00000003 01 00",
        ),
        // After the port come the version-3 hints; bytes after them are ignored.
        (
            "28 05 U 04 c0a8010a 1388 04 0002 9c42 01 01 04 c6336409 1194 dead",
            "26 05 U 04 c0a8010a 1388 04 0002 9c42 01 01 04 c6336409 1194",
        ),
        ("13 07 U 0000", "11 07 U"),
        (
            "48 08 U 04 cb007105 9c40 04 c6336407 c3cb \
             aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa 0102030405060708 00",
            "47 08 U 04 cb007105 9c40 04 c6336407 c3cb \
             aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa 0102030405060708",
        ),
        (
            "0f 0a 0102030405060708 04 69646c65 ff",
            "0e 0a 0102030405060708 04 69646c65",
        ),
        (
            "1e 00 00000001 U 00000004 deadbeef 00",
            "1d 00 00000001 U 00000004 deadbeef",
        ),
        (
            "11 01 0e 496e76616c6964205061636b6574 00",
            "10 01 0e 496e76616c6964205061636b6574",
        ),
    ];
    for (with_trailer, plain) in cases {
        let long = unhex(with_trailer);
        let (expected, _) = decode_frame(&unhex(plain)).unwrap();
        assert_eq!(
            decode_frame(&long),
            Ok((expected, long.len())),
            "{with_trailer}"
        );
    }
}

#[test]
fn partial_known_extension_is_truncated() {
    // One byte of the ConnectionRequest port.
    assert!(matches!(
        decode_frame(&unhex("17 05 U 04 c0a8010a 13")),
        Err(DecodeError::Truncated {
            field: "PacketConnectionRequest.private_endpoint.port"
        })
    ));
    // ClientInfo tcp_endpoint Address without its port.
    assert!(matches!(
        decode_frame(&unhex("1d 08 U 04 cb007105 9c40 04 c6336407")),
        Err(DecodeError::Truncated {
            field: "PacketClientInfo.tcp_endpoint.port"
        })
    ));
    // Part of the version-3 session parameters after a token, or of a relay id.
    assert!(matches!(
        decode_frame(&unhex("13 02 000102030405060708090a0b0c0d0e0f 0102")),
        Err(DecodeError::Truncated {
            field: "PacketConnected.session.version"
        })
    ));
    assert!(matches!(
        decode_frame(&unhex(
            "40 08 U 04 cb007105 9c40 04 c6336407 c3cb \
             aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa 00"
        )),
        Err(DecodeError::Truncated {
            field: "PacketClientInfo.relay_id"
        })
    ));
    // Half a udp_token.
    assert!(matches!(
        decode_frame(&unhex("09 02 0001020304050607")),
        Err(DecodeError::Truncated {
            field: "PacketConnected.udp_token"
        })
    ));
}

#[test]
fn presence_codes_and_sizes_are_checked() {
    // An unknown status, an unknown list operation.
    assert!(matches!(
        decode_frame(&unhex("03 0c 04 00")),
        Err(DecodeError::InvalidCode {
            field: "PacketPresenceStatus.status",
            value: 4
        })
    ));
    assert!(matches!(
        decode_frame(&unhex("03 0b 02 00")),
        Err(DecodeError::InvalidCode {
            field: "PacketPresenceContacts.op",
            value: 2
        })
    ));
    // 201 contacts is over the batch limit, refused before the UUIDs are read.
    assert!(matches!(
        decode_frame(&unhex("03 0b 00 c9")),
        Err(DecodeError::LengthTooLarge {
            field: "PacketPresenceContacts.count",
            ..
        })
    ));
    // A 257-byte status message is over the limit.
    let mut frame = vec![0x85, 0x02, 0x0c, 0x01, 0x81, 0x02];
    frame.extend(std::iter::repeat_n(b'a', 257));
    assert_eq!(frame.len() - 2, 261);
    assert!(matches!(
        decode_frame(&frame),
        Err(DecodeError::LengthTooLarge {
            field: "PacketPresenceStatus.message",
            ..
        })
    ));
    // Encoders cut what decoders would refuse: 300 contacts become 200, a long
    // message is cut at a character boundary.
    let long = Packet::PresenceContacts(chatr_proto::PacketPresenceContacts {
        op: chatr_proto::ContactsOp::Add,
        contacts: vec![uuid::Uuid::nil(); 300],
    });
    let (back, _) = decode_frame(&long.to_bytes()).unwrap();
    let Packet::PresenceContacts(back) = back else {
        panic!("{back:?}")
    };
    assert_eq!(back.contacts.len(), chatr_proto::MAX_PRESENCE_BATCH);
    let status = Packet::PresenceStatus(chatr_proto::PacketPresenceStatus {
        status: chatr_proto::PresenceStatus::Busy,
        message: "é".repeat(200),
    });
    let (back, _) = decode_frame(&status.to_bytes()).unwrap();
    let Packet::PresenceStatus(back) = back else {
        panic!("{back:?}")
    };
    assert_eq!(back.message, "é".repeat(128));
}

#[test]
fn port_zero_on_the_wire_is_unknown() {
    let (p, _) = decode_frame(&unhex("18 06 U 04 0a000002 0000")).unwrap();
    let Packet::ConnectionRequestAccept(acc) = p else {
        panic!("wrong packet {p:?}")
    };
    assert_eq!(acc.private_endpoint.port, None);
}

#[test]
fn two_byte_length_prefix() {
    // Disconnect with a 130-byte message: payload = 82 01 (VarInt 130) + 130 bytes,
    // frame length = 1 + 2 + 130 = 133 = VarInt 85 01.
    let mut hex = String::from("8501 01 8201");
    hex.push_str(&"61".repeat(130));
    let bytes = unhex(&hex);
    let packet = Packet::Disconnect(PacketDisconnect::new("a".repeat(130)));
    assert_eq!(decode_frame(&bytes), Ok((packet.clone(), bytes.len())));
    assert_eq!(packet.to_bytes(), bytes);
    assert_eq!(packet.encoded_len(), 135);
}

#[test]
fn examples_in_protocol_md_match_the_goldens() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/PROTOCOL.md");
    let doc = std::fs::read_to_string(path).unwrap();
    let doc_hex: String = doc
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_lowercase();
    for g in goldens() {
        let want = hex::encode(g.bytes());
        assert!(
            doc_hex.contains(&want),
            "PROTOCOL.md lacks the example for {}: {want}",
            g.name
        );
    }
    // The UDP control datagram examples (also checked in `udp.rs` unit tests).
    let udp = [
        UdpMessage::BindingRequest { token: [0xab; 16] },
        UdpMessage::BindingResponse {
            observed: Endpoint {
                ip: IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7)),
                port: Some(40000),
            },
            tcp_observed: None,
        },
        UdpMessage::BindingResponse {
            observed: Endpoint {
                ip: IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7)),
                port: Some(40000),
            },
            tcp_observed: Some(Endpoint {
                ip: IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7)),
                port: Some(40001),
            }),
        },
    ];
    for msg in udp {
        let want = hex::encode(msg.to_bytes());
        assert!(doc_hex.contains(&want), "PROTOCOL.md lacks {msg:?}: {want}");
    }
    // Version 3: an authenticated binding request, and a relayed datagram each way.
    let auth = UdpMessage::binding_request_auth(&[0x42; 32], [0xab; 16], 1);
    let want = hex::encode(auth.to_bytes());
    assert!(
        doc_hex.contains(&want),
        "PROTOCOL.md lacks {auth:?}: {want}"
    );
    let relay = chatr_proto::RelayId([1, 2, 3, 4, 5, 6, 7, 8]);
    for kind in [
        chatr_proto::udp::TYPE_RELAY_TO_SERVER,
        chatr_proto::udp::TYPE_RELAY_FROM_SERVER,
    ] {
        let mut datagram = chatr_proto::udp::relay_header(kind, &relay).to_vec();
        datagram.extend_from_slice(&[0x41, 0xde, 0xad]);
        let want = hex::encode(&datagram);
        assert!(doc_hex.contains(&want), "PROTOCOL.md lacks relayed {want}");
    }
}
