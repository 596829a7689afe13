//! "Never panics, never over-allocates": arbitrary bytes into `decode_frame`, the codec
//! and the UDP decoder. Anything that decodes must re-encode to a frame that decodes to
//! the same packet, and decoded heap fields are bounded by the limits.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bytes::BytesMut;
use chatr_proto::codec::ConnectCodec;
use chatr_proto::udp::UdpMessage;
use chatr_proto::{
    DecodeError, MAX_BYTE_ARRAY_LEN, MAX_FRAME, MAX_STRING_LEN, Packet, decode_frame, frame_len,
};
use proptest::prelude::*;
use tokio_util::codec::Decoder;

/// Largest whole frame: 2-byte length prefix (MAX_FRAME needs 2 VarInt bytes) + body.
const MAX_WHOLE_FRAME: usize = 2 + MAX_FRAME;

fn check_packet_bounds(packet: &Packet) {
    match packet {
        Packet::Connect(c) => assert!(c.signature.capacity() <= MAX_BYTE_ARRAY_LEN),
        Packet::Disconnect(d) => assert!(d.message.capacity() <= MAX_STRING_LEN),
        _ => {}
    }
}

/// Random bytes, and random bytes behind a plausible frame header (so the payload
/// decoders are reached often, not just the length checks).
fn input() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..64),
        proptest::collection::vec(any::<u8>(), 0..6000),
        (
            1u8..0x60,
            0u8..10,
            proptest::collection::vec(any::<u8>(), 0..120)
        )
            .prop_map(|(len, op, rest)| {
                let mut v = vec![len, op];
                v.extend(rest);
                v
            }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn decode_frame_never_panics(buf in input()) {
        match decode_frame(&buf) {
            Ok((packet, used)) => {
                prop_assert!(used <= buf.len());
                prop_assert!(used <= MAX_WHOLE_FRAME);
                prop_assert_eq!(frame_len(&buf), Ok(used));
                check_packet_bounds(&packet);
                let again = packet.to_bytes();
                prop_assert_eq!(again.len(), packet.encoded_len());
                prop_assert!(again.len() <= used);
                prop_assert_eq!(decode_frame(&again), Ok((packet, again.len())));
            }
            Err(DecodeError::Incomplete) => {
                // Incomplete only while the buffer is shorter than a maximal frame.
                prop_assert!(buf.len() < MAX_WHOLE_FRAME);
            }
            Err(_) => {}
        }
    }

    #[test]
    fn codec_never_panics_nor_over_reserves(buf in input(), chunk in 1usize..64) {
        let mut codec = ConnectCodec::new();
        let mut src = BytesMut::new();
        'feed: for piece in buf.chunks(chunk) {
            src.extend_from_slice(piece);
            loop {
                let before = src.capacity();
                let result = codec.decode(&mut src);
                // The decoder reserves at most what a bounded frame needs.
                prop_assert!(src.capacity() <= before.max(2 * (MAX_WHOLE_FRAME + 64)));
                match result {
                    Ok(Some(packet)) => check_packet_bounds(&packet),
                    Ok(None) => break,
                    Err(_) => break 'feed,
                }
            }
        }
    }

    #[test]
    fn udp_decode_never_panics(buf in proptest::collection::vec(any::<u8>(), 0..64)) {
        if let Ok(msg) = UdpMessage::decode(&buf) {
            let again = msg.to_bytes();
            prop_assert_eq!(again.len(), msg.encoded_len());
            prop_assert_eq!(UdpMessage::decode(&again), Ok(msg));
        }
    }
}

#[test]
fn codec_does_not_reserve_for_a_hostile_length() {
    let mut codec = ConnectCodec::new();
    // Declares 2^31 bytes.
    let mut src = BytesMut::from(&[0x80u8, 0x80, 0x80, 0x80, 0x08][..]);
    let cap = src.capacity();
    assert!(matches!(
        codec.decode(&mut src),
        Err(chatr_proto::codec::CodecError::Decode(
            DecodeError::FrameTooLarge { .. }
        ))
    ));
    assert_eq!(src.capacity(), cap);
}

#[test]
fn codec_reserves_exactly_the_declared_frame() {
    let mut codec = ConnectCodec::new();
    // Declares a 100-byte body, 1 byte buffered so far.
    let mut src = BytesMut::from(&[0x64u8, 0x03][..]);
    assert!(codec.decode(&mut src).unwrap().is_none());
    assert!(src.capacity() >= 101);
    assert!(src.capacity() < 2 * MAX_WHOLE_FRAME);
}
