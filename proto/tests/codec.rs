//! The tokio-util codec: byte-at-a-time feeding, many frames per read, encoder output.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use bytes::BytesMut;
use chatr_proto::codec::{CodecError, ConnectCodec};
use chatr_proto::{DecodeError, Packet};
use common::goldens;
use tokio_util::codec::{Decoder, Encoder};

fn all_golden_bytes() -> (Vec<u8>, Vec<Packet>) {
    let mut bytes = Vec::new();
    let mut packets = Vec::new();
    for g in goldens() {
        bytes.extend(g.bytes());
        packets.push(g.packet);
    }
    (bytes, packets)
}

#[test]
fn decodes_when_fed_one_byte_at_a_time() {
    let (bytes, expected) = all_golden_bytes();
    let mut codec = ConnectCodec::new();
    let mut src = BytesMut::new();
    let mut got = Vec::new();
    for b in bytes {
        src.extend_from_slice(&[b]);
        while let Some(packet) = codec.decode(&mut src).unwrap() {
            got.push(packet);
        }
    }
    assert_eq!(got, expected);
    assert!(src.is_empty());
}

#[test]
fn decodes_many_frames_from_one_read() {
    let (bytes, expected) = all_golden_bytes();
    let mut codec = ConnectCodec::new();
    let mut src = BytesMut::from(&bytes[..]);
    let mut got = Vec::new();
    while let Some(packet) = codec.decode(&mut src).unwrap() {
        got.push(packet);
    }
    assert_eq!(got, expected);
}

#[test]
fn invalid_frame_after_valid_ones_is_an_error() {
    let (mut bytes, expected) = all_golden_bytes();
    bytes.extend_from_slice(&[0x01, 0x7f]);
    let mut codec = ConnectCodec::new();
    let mut src = BytesMut::from(&bytes[..]);
    let mut got = Vec::new();
    let err = loop {
        match codec.decode(&mut src) {
            Ok(Some(p)) => got.push(p),
            Ok(None) => panic!("waited on an invalid frame"),
            Err(e) => break e,
        }
    };
    assert_eq!(got, expected);
    assert!(matches!(
        err,
        CodecError::Decode(DecodeError::UnknownOpcode { opcode: 0x7f })
    ));
}

#[test]
fn eof_inside_a_frame_is_an_io_error() {
    let mut codec = ConnectCodec::new();
    let mut src = BytesMut::from(&[0x09u8, 0x03, 0x00][..]);
    assert!(matches!(codec.decode_eof(&mut src), Err(CodecError::Io(_))));
    let mut empty = BytesMut::new();
    assert!(codec.decode_eof(&mut empty).unwrap().is_none());
}

#[test]
fn encoder_writes_the_golden_bytes() {
    let mut codec = ConnectCodec::new();
    let mut dst = BytesMut::new();
    let (bytes, packets) = all_golden_bytes();
    for (i, p) in packets.into_iter().enumerate() {
        if i % 2 == 0 {
            codec.encode(&p, &mut dst).unwrap();
        } else {
            codec.encode(p, &mut dst).unwrap();
        }
    }
    assert_eq!(hex::encode(&dst), hex::encode(bytes));
}
