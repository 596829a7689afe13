//! Fuzzes the Connect frame decoder: arbitrary bytes must never panic, anything that
//! decodes must round-trip through the encoder, and the codec (fed in two pieces) must
//! agree with `decode_frame`.
#![no_main]

use bytes::BytesMut;
use chatr_proto::codec::ConnectCodec;
use chatr_proto::{DecodeError, MAX_FRAME, decode_frame};
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    let direct = decode_frame(data);
    match &direct {
        Ok((packet, used)) => {
            assert!(*used <= data.len() && *used <= MAX_FRAME + 2);
            let again = packet.to_bytes();
            assert_eq!(again.len(), packet.encoded_len());
            assert_eq!(decode_frame(&again), Ok((packet.clone(), again.len())));
        }
        Err(DecodeError::Incomplete) => assert!(data.len() < MAX_FRAME + 2),
        Err(_) => {}
    }

    // The codec must reach the same verdict however the bytes are split.
    let split = data.first().map_or(0, |b| usize::from(*b)).min(data.len());
    let (a, b) = data.split_at(split);
    let mut codec = ConnectCodec::new();
    let mut src = BytesMut::from(a);
    let first = codec.decode(&mut src);
    let verdict = match first {
        Ok(Some(p)) => Ok(Some(p)),
        Ok(None) => {
            src.extend_from_slice(b);
            codec.decode(&mut src)
        }
        Err(e) => Err(e),
    };
    match (direct, verdict) {
        (Ok((p, _)), Ok(Some(q))) => assert_eq!(p, q),
        (Err(DecodeError::Incomplete), Ok(None)) | (Err(_), Err(_)) => {}
        (d, v) => panic!("decode_frame {d:?} but codec {v:?}"),
    }

    let _ = chatr_proto::udp::UdpMessage::decode(data);
});
