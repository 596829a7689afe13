//! Hostile input, one test per attack: each must be rejected with a specific error,
//! never reported as "incomplete" (which would make a server wait forever) and never
//! allocate according to an attacker-chosen length.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use chatr_proto::{DecodeError, MAX_BYTE_ARRAY_LEN, MAX_FRAME, MAX_STRING_LEN, decode_frame};
use common::unhex;

fn decode_hex(spaced: &str) -> Result<(chatr_proto::Packet, usize), DecodeError> {
    decode_frame(&unhex(spaced))
}

#[test]
fn six_byte_varint_length() {
    assert_eq!(
        decode_hex("80 80 80 80 80 01"),
        Err(DecodeError::VarIntTooLong)
    );
    assert_eq!(
        decode_hex("ff ff ff ff ff 01 03"),
        Err(DecodeError::VarIntTooLong)
    );
}

#[test]
fn five_byte_varint_overflowing_u32() {
    assert_eq!(
        decode_hex("ff ff ff ff 1f"),
        Err(DecodeError::VarIntOverflow)
    );
}

#[test]
fn length_two_to_the_31() {
    // 2^31 as a VarInt: 80 80 80 80 08.
    assert_eq!(
        decode_hex("80 80 80 80 08 03"),
        Err(DecodeError::FrameTooLarge {
            len: 1 << 31,
            max: MAX_FRAME
        })
    );
}

#[test]
fn over_limit_length_is_rejected_before_the_body_arrives() {
    // 4097 = 81 20: no body bytes yet, still invalid at once.
    assert_eq!(
        decode_hex("81 20"),
        Err(DecodeError::FrameTooLarge {
            len: 4097,
            max: MAX_FRAME
        })
    );
    // A VarInt prefix whose value already exceeds the limit (ff ff → ≥ 16383).
    assert!(matches!(
        decode_hex("ff ff"),
        Err(DecodeError::FrameTooLarge { .. })
    ));
    // 80 80: any continuation is 0 or ≥ 2^14, so no valid frame can follow.
    assert!(matches!(
        decode_hex("80 80"),
        Err(DecodeError::FrameTooLarge { .. })
    ));
    // But 80 alone may still become 80 01..80 20 (128..4096): wait.
    assert_eq!(decode_hex("80"), Err(DecodeError::Incomplete));
    // Exactly MAX_FRAME with the body still missing: wait for it.
    assert_eq!(decode_hex("80 20 03"), Err(DecodeError::Incomplete));
}

#[test]
fn max_frame_is_accepted() {
    // A Ping padded with unknown trailing bytes to exactly MAX_FRAME.
    let mut bytes = unhex("80 20 03 0000000000000007");
    bytes.resize(2 + MAX_FRAME, 0xee);
    let (packet, used) = decode_frame(&bytes).unwrap();
    assert_eq!(used, 2 + MAX_FRAME);
    assert_eq!(
        packet,
        chatr_proto::Packet::Ping(chatr_proto::PacketPing { ping_id: 7 })
    );
}

#[test]
fn length_zero() {
    assert_eq!(decode_hex("00"), Err(DecodeError::ZeroLength));
    assert_eq!(
        decode_hex("00 03 0000000000000001"),
        Err(DecodeError::ZeroLength)
    );
}

#[test]
fn unknown_opcode() {
    assert_eq!(
        decode_hex("01 7f"),
        Err(DecodeError::UnknownOpcode { opcode: 0x7f })
    );
    assert_eq!(
        decode_hex("03 ff 0000"),
        Err(DecodeError::UnknownOpcode { opcode: 0xff })
    );
    // Known to be invalid as soon as the opcode is buffered, even if the body is not.
    assert_eq!(
        decode_hex("10 42"),
        Err(DecodeError::UnknownOpcode { opcode: 0x42 })
    );
}

#[test]
fn bad_utf8() {
    for bad in ["02 c3 28", "02 c0 80", "03 ed a0 80", "01 ff"] {
        let payload = unhex(bad);
        let mut frame = vec![u8::try_from(payload.len() + 1).unwrap(), 0x01];
        frame.extend_from_slice(&payload);
        assert_eq!(
            decode_frame(&frame),
            Err(DecodeError::InvalidUtf8 {
                field: "PacketDisconnect.message"
            }),
            "{bad}"
        );
    }
}

#[test]
fn string_length_over_the_limit() {
    // VarInt 1025 = 81 08, with only 2 bytes of body: the limit is checked first.
    assert_eq!(
        decode_hex("04 01 81 08 61"),
        Err(DecodeError::LengthTooLarge {
            field: "PacketDisconnect.message",
            len: 1025,
            max: MAX_STRING_LEN
        })
    );
}

#[test]
fn address_version_5() {
    assert_eq!(
        decode_hex("16 05 U 05 c0a8010a"),
        Err(DecodeError::InvalidAddressVersion {
            field: "PacketConnectionRequest.private_endpoint",
            version: 5
        })
    );
    assert_eq!(
        decode_hex("16 08 U 05 cb007105"),
        Err(DecodeError::InvalidAddressVersion {
            field: "PacketClientInfo.public_endpoint",
            version: 5
        })
    );
    // In the tcp_endpoint extension too.
    assert_eq!(
        decode_hex("1f 08 U 04 cb007105 9c40 05 c6336407 c3cb"),
        Err(DecodeError::InvalidAddressVersion {
            field: "PacketClientInfo.tcp_endpoint",
            version: 5
        })
    );
}

#[test]
fn other_address_versions() {
    for version in [0u8, 1, 3, 7, 0x46, 0xff] {
        let hex = format!("16 06 U {version:02x} 0a000002");
        assert_eq!(
            decode_hex(&hex),
            Err(DecodeError::InvalidAddressVersion {
                field: "PacketConnectionRequestAccept.private_endpoint",
                version
            })
        );
    }
}

#[test]
fn signature_length_negative() {
    for (len_hex, len) in [("ffffffff", -1), ("80000000", i32::MIN)] {
        assert_eq!(
            decode_hex(&format!("19 00 00000001 U {len_hex}")),
            Err(DecodeError::NegativeLength {
                field: "PacketConnect.signature",
                len
            })
        );
    }
}

#[test]
fn signature_length_over_the_limit() {
    // 1025 and i32::MAX, with only 4 signature bytes present: rejected on the length.
    for (len_hex, len) in [("00000401", 1025u32), ("7fffffff", 0x7fff_ffff)] {
        assert_eq!(
            decode_hex(&format!("1d 00 00000001 U {len_hex} deadbeef")),
            Err(DecodeError::LengthTooLarge {
                field: "PacketConnect.signature",
                len,
                max: MAX_BYTE_ARRAY_LEN
            })
        );
    }
}

#[test]
fn signature_longer_than_the_frame() {
    assert_eq!(
        decode_hex("1d 00 00000001 U 00000040 deadbeef"),
        Err(DecodeError::Truncated {
            field: "PacketConnect.signature"
        })
    );
}

#[test]
fn payload_too_short_for_fixed_fields() {
    assert_eq!(
        decode_hex("05 03 00000000"),
        Err(DecodeError::Truncated {
            field: "PacketPing.ping_id"
        })
    );
    assert_eq!(
        decode_hex("01 07"),
        Err(DecodeError::Truncated {
            field: "PacketConnectionRequestDenied.uuid"
        })
    );
}

#[test]
fn errors_say_they_are_not_incomplete() {
    assert!(DecodeError::Incomplete.is_incomplete());
    assert!(!DecodeError::ZeroLength.is_incomplete());
    assert!(!decode_hex("01 09").unwrap_err().is_incomplete());
}
