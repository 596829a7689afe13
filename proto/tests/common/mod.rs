//! Golden frames shared by the integration tests. The hex is written by hand from the
//! spec (field by field, separated by spaces) and is the same as in `docs/PROTOCOL.md`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use chatr_proto::{
    CandidateOrigin, ContactsOp, Endpoint, ExtraCandidate, LinkHints, NatHint, NatMapping, Packet,
    PacketClientInfo, PacketConnect, PacketConnected, PacketConnectionRequest,
    PacketConnectionRequestAccept, PacketConnectionRequestDenied, PacketDisconnect, PacketPing,
    PacketPong, PacketPresence, PacketPresenceContacts, PacketPresenceStatus, PacketRelayClose,
    PacketRelayData, PresenceStatus, RelayId, SessionFeatures, SessionParams,
};
use uuid::Uuid;

/// The UUID used by every golden frame: 00112233-4455-6677-8899-aabbccddeeff.
pub(crate) const UUID_HEX: &str = "00112233445566778899aabbccddeeff";

pub(crate) fn uuid() -> Uuid {
    Uuid::parse_str("00112233-4455-6677-8899-aabbccddeeff").unwrap()
}

/// One hand-written frame and the packet it must decode to.
pub(crate) struct Golden {
    pub(crate) name: &'static str,
    /// Hex with spaces between fields; `U` stands for [`UUID_HEX`].
    pub(crate) hex: &'static str,
    pub(crate) packet: Packet,
    /// Payload lengths (bytes after the opcode) shorter than the full payload at which
    /// the frame is still valid: the ends of the spec layout and of each extension field.
    pub(crate) valid_cuts: &'static [usize],
}

impl Golden {
    pub(crate) fn bytes(&self) -> Vec<u8> {
        unhex(self.hex)
    }
}

/// Decodes spaced hex; `U` expands to [`UUID_HEX`].
pub(crate) fn unhex(spaced: &str) -> Vec<u8> {
    let joined: String = spaced
        .split_whitespace()
        .map(|f| if f == "U" { UUID_HEX } else { f })
        .collect();
    hex::decode(joined).unwrap()
}

fn v4(a: u8, b: u8, c: u8, d: u8, port: Option<u16>) -> Endpoint {
    Endpoint {
        ip: IpAddr::V4(Ipv4Addr::new(a, b, c, d)),
        port,
    }
}

pub(crate) fn goldens() -> Vec<Golden> {
    vec![
        Golden {
            name: "Connect v1",
            hex: "1d 00 00000001 U 00000004 deadbeef",
            packet: Packet::Connect(PacketConnect {
                version: 1,
                uuid: uuid(),
                signature: vec![0xde, 0xad, 0xbe, 0xef],
            }),
            valid_cuts: &[],
        },
        Golden {
            name: "Connect v2, empty signature",
            hex: "19 00 00000002 U 00000000",
            packet: Packet::Connect(PacketConnect {
                version: 2,
                uuid: uuid(),
                signature: vec![],
            }),
            valid_cuts: &[],
        },
        Golden {
            name: "Disconnect",
            hex: "10 01 0e 496e76616c6964205061636b6574",
            packet: Packet::Disconnect(PacketDisconnect {
                message: "Invalid Packet".into(),
            }),
            valid_cuts: &[],
        },
        Golden {
            name: "Disconnect, non-ASCII",
            hex: "05 01 03 6f c3 a9",
            packet: Packet::Disconnect(PacketDisconnect {
                message: "oé".into(),
            }),
            valid_cuts: &[],
        },
        Golden {
            name: "Connected (spec)",
            hex: "01 02",
            packet: Packet::Connected(PacketConnected {
                udp_token: None,
                session: None,
            }),
            valid_cuts: &[],
        },
        Golden {
            name: "Connected + udp_token",
            hex: "11 02 000102030405060708090a0b0c0d0e0f",
            packet: Packet::Connected(PacketConnected {
                udp_token: Some([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]),
                session: None,
            }),
            valid_cuts: &[0],
        },
        Golden {
            name: "Connected v3: token, version 3, relays, two NAT probe ports",
            hex: "1b 02 000102030405060708090a0b0c0d0e0f 00000003 03 02 1e62 1e63",
            packet: Packet::Connected(PacketConnected {
                udp_token: Some([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]),
                session: Some(SessionParams {
                    version: 3,
                    features: SessionFeatures::RELAY_UDP.with(SessionFeatures::RELAY_TLS),
                    nat_probe_ports: vec![7778, 7779],
                }),
            }),
            valid_cuts: &[0, 16],
        },
        Golden {
            name: "Connected v3: UDP relay only, no NAT probe ports",
            hex: "17 02 000102030405060708090a0b0c0d0e0f 00000003 01 00",
            packet: Packet::Connected(PacketConnected {
                udp_token: Some([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]),
                session: Some(SessionParams {
                    version: 3,
                    features: SessionFeatures::RELAY_UDP,
                    nat_probe_ports: vec![],
                }),
            }),
            valid_cuts: &[0, 16],
        },
        Golden {
            name: "Ping",
            hex: "09 03 0102030405060708",
            packet: Packet::Ping(PacketPing {
                ping_id: 0x0102_0304_0506_0708,
            }),
            valid_cuts: &[],
        },
        Golden {
            name: "Ping, negative id",
            hex: "09 03 fffffffffffffffe",
            packet: Packet::Ping(PacketPing { ping_id: -2 }),
            valid_cuts: &[],
        },
        Golden {
            name: "Pong",
            hex: "09 04 000000000000002a",
            packet: Packet::Pong(PacketPong { ping_id: 42 }),
            valid_cuts: &[],
        },
        Golden {
            name: "ConnectionRequest (spec)",
            hex: "16 05 U 04 c0a8010a",
            packet: Packet::ConnectionRequest(PacketConnectionRequest {
                uuid: uuid(),
                private_endpoint: v4(192, 168, 1, 10, None),
                hints: None,
            }),
            valid_cuts: &[],
        },
        Golden {
            name: "ConnectionRequest + port",
            hex: "18 05 U 04 c0a8010a 1388",
            packet: Packet::ConnectionRequest(PacketConnectionRequest {
                uuid: uuid(),
                private_endpoint: v4(192, 168, 1, 10, Some(5000)),
                hints: None,
            }),
            valid_cuts: &[21],
        },
        Golden {
            name: "ConnectionRequest IPv6 + port",
            hex: "24 05 U 06 fe800000000000000000000000000001 01bb",
            packet: Packet::ConnectionRequest(PacketConnectionRequest {
                uuid: uuid(),
                private_endpoint: Endpoint {
                    ip: IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1)),
                    port: Some(443),
                },
                hints: None,
            }),
            valid_cuts: &[33],
        },
        Golden {
            name: "ConnectionRequest + port + v3 hints",
            hex: "26 05 U 04 c0a8010a 1388 04 0002 9c42 01 01 04 c6336409 1194",
            packet: Packet::ConnectionRequest(PacketConnectionRequest {
                uuid: uuid(),
                private_endpoint: v4(192, 168, 1, 10, Some(5000)),
                hints: Some(LinkHints {
                    nat: NatHint {
                        mapping: NatMapping::DependentSequential,
                        step: 2,
                        last_port: Some(40002),
                    },
                    candidates: vec![ExtraCandidate {
                        origin: CandidateOrigin::PortMapped,
                        addr: "198.51.100.9:4500".parse().unwrap(),
                    }],
                }),
            }),
            valid_cuts: &[21, 23],
        },
        Golden {
            name: "ConnectionRequestAccept, unknown port + v3 hints (public, no candidates)",
            hex: "1e 06 U 04 0a000002 0000 01 0000 0000 00",
            packet: Packet::ConnectionRequestAccept(PacketConnectionRequestAccept {
                uuid: uuid(),
                private_endpoint: v4(10, 0, 0, 2, None),
                hints: Some(LinkHints {
                    nat: NatHint {
                        mapping: NatMapping::NoNat,
                        step: 0,
                        last_port: None,
                    },
                    candidates: vec![],
                }),
            }),
            valid_cuts: &[21, 23],
        },
        Golden {
            name: "ConnectionRequestAccept (spec)",
            hex: "16 06 U 04 0a000002",
            packet: Packet::ConnectionRequestAccept(PacketConnectionRequestAccept {
                uuid: uuid(),
                private_endpoint: v4(10, 0, 0, 2, None),
                hints: None,
            }),
            valid_cuts: &[],
        },
        Golden {
            name: "ConnectionRequestAccept + port",
            hex: "18 06 U 04 0a000002 ffff",
            packet: Packet::ConnectionRequestAccept(PacketConnectionRequestAccept {
                uuid: uuid(),
                private_endpoint: v4(10, 0, 0, 2, Some(65535)),
                hints: None,
            }),
            valid_cuts: &[21],
        },
        Golden {
            name: "ConnectionRequestDenied",
            hex: "11 07 U",
            packet: Packet::ConnectionRequestDenied(PacketConnectionRequestDenied { uuid: uuid() }),
            valid_cuts: &[],
        },
        Golden {
            name: "ClientInfo (spec)",
            hex: "16 08 U 04 cb007105",
            packet: Packet::ClientInfo(PacketClientInfo {
                uuid: uuid(),
                public_endpoint: v4(203, 0, 113, 5, None),
                tcp_endpoint: None,
                link_secret: None,
                relay_id: None,
            }),
            valid_cuts: &[],
        },
        Golden {
            name: "ClientInfo + port",
            hex: "18 08 U 04 cb007105 9c40",
            packet: Packet::ClientInfo(PacketClientInfo {
                uuid: uuid(),
                public_endpoint: v4(203, 0, 113, 5, Some(40000)),
                tcp_endpoint: None,
                link_secret: None,
                relay_id: None,
            }),
            valid_cuts: &[21],
        },
        Golden {
            name: "ClientInfo, all extensions",
            hex: "3f 08 U 04 cb007105 9c40 04 c6336407 c3cb \
                  aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            packet: Packet::ClientInfo(PacketClientInfo {
                uuid: uuid(),
                public_endpoint: v4(203, 0, 113, 5, Some(40000)),
                tcp_endpoint: Some(v4(198, 51, 100, 7, Some(50123))),
                link_secret: Some([0xaa; 32]),
                relay_id: None,
            }),
            valid_cuts: &[21, 23, 30],
        },
        Golden {
            name: "ClientInfo, unknown public port + tcp_endpoint",
            hex: "1f 08 U 04 cb007105 0000 04 c6336407 c3cb",
            packet: Packet::ClientInfo(PacketClientInfo {
                uuid: uuid(),
                public_endpoint: v4(203, 0, 113, 5, None),
                tcp_endpoint: Some(v4(198, 51, 100, 7, Some(50123))),
                link_secret: None,
                relay_id: None,
            }),
            valid_cuts: &[21, 23],
        },
        Golden {
            name: "ClientInfo, link_secret only",
            hex: "3f 08 U 04 cb007105 0000 04 00000000 0000 \
                  0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20",
            packet: Packet::ClientInfo(PacketClientInfo {
                uuid: uuid(),
                public_endpoint: v4(203, 0, 113, 5, None),
                tcp_endpoint: None,
                link_secret: Some([
                    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22,
                    23, 24, 25, 26, 27, 28, 29, 30, 31, 32,
                ]),
                relay_id: None,
            }),
            valid_cuts: &[21, 23, 30],
        },
        Golden {
            name: "ClientInfo, all extensions and a relay id (v3)",
            hex: "47 08 U 04 cb007105 9c40 04 c6336407 c3cb \
                  aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa \
                  0102030405060708",
            packet: Packet::ClientInfo(PacketClientInfo {
                uuid: uuid(),
                public_endpoint: v4(203, 0, 113, 5, Some(40000)),
                tcp_endpoint: Some(v4(198, 51, 100, 7, Some(50123))),
                link_secret: Some([0xaa; 32]),
                relay_id: Some(RelayId([1, 2, 3, 4, 5, 6, 7, 8])),
            }),
            valid_cuts: &[21, 23, 30, 62],
        },
        Golden {
            name: "RelayData (v3): a 3-byte datagram",
            hex: "0c 09 0102030405060708 41dead",
            packet: Packet::RelayData(PacketRelayData {
                relay_id: RelayId([1, 2, 3, 4, 5, 6, 7, 8]),
                datagram: vec![0x41, 0xde, 0xad].into(),
            }),
            // The datagram is the rest of the frame: any non-empty prefix is a datagram.
            valid_cuts: &[9, 10],
        },
        Golden {
            name: "RelayClose (v3), reason \"idle\"",
            hex: "0e 0a 0102030405060708 04 69646c65",
            packet: Packet::RelayClose(PacketRelayClose {
                relay_id: RelayId([1, 2, 3, 4, 5, 6, 7, 8]),
                reason: "idle".into(),
            }),
            valid_cuts: &[],
        },
        Golden {
            name: "PresenceContacts (v3): add one contact",
            hex: "13 0b 00 01 U",
            packet: Packet::PresenceContacts(PacketPresenceContacts {
                op: ContactsOp::Add,
                contacts: vec![uuid()],
            }),
            valid_cuts: &[],
        },
        Golden {
            name: "PresenceContacts (v3): remove none",
            hex: "03 0b 01 00",
            packet: Packet::PresenceContacts(PacketPresenceContacts {
                op: ContactsOp::Remove,
                contacts: vec![],
            }),
            valid_cuts: &[],
        },
        Golden {
            name: "PresenceStatus (v3): away, \"lunch\"",
            hex: "08 0c 02 05 6c756e6368",
            packet: Packet::PresenceStatus(PacketPresenceStatus {
                status: PresenceStatus::Away,
                message: "lunch".into(),
            }),
            valid_cuts: &[],
        },
        Golden {
            name: "Presence (v3): available, \"hi\"",
            hex: "15 0d U 01 02 6869",
            packet: Packet::Presence(PacketPresence {
                uuid: uuid(),
                status: PresenceStatus::Available,
                message: "hi".into(),
            }),
            valid_cuts: &[],
        },
        Golden {
            name: "Presence (v3): offline",
            hex: "13 0d U 00 00",
            packet: Packet::Presence(PacketPresence {
                uuid: uuid(),
                status: PresenceStatus::Offline,
                message: String::new(),
            }),
            valid_cuts: &[],
        },
    ]
}
