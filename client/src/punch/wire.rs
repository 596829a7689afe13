//! Bytes of a hole-punching probe and how they are authenticated.
//!
//! Every probe is a Chatr control datagram ([`UDP_MAGIC`], then a type byte from
//! [`PUNCH_TYPES`]) of exactly [`PROBE_LEN`] bytes:
//!
//! ```text
//! offset size field
//!  0     4    magic            00 43 48 52 ("\0CHR")
//!  4     1    type             0x10 Probe, 0x11 ProbeAck, 0x12 Nominate, 0x13 NominateAck
//!  5     8    exchange id      first 8 bytes of HMAC-SHA256(link_secret, "chatr punch v1 exchange id")
//! 13    16    sender UUID      who sent this datagram
//! 29     8    transaction id   uint64 BE; requests pick a fresh one, acks echo the request's
//! 37     1    flags            Nominate: bit 0 = the path is a LAN path; other bits 0
//! 38    32    tag              HMAC-SHA256(mac_key, bytes 0..38),
//!                              mac_key = HMAC-SHA256(link_secret, "chatr punch v1 probe mac")
//! ```
//!
//! The exchange id is in clear so a socket demultiplexer can route a datagram to the
//! right [`super::Punch`] before any cryptography; the tag binds every field to the
//! `link_secret` the server handed to exactly the two parties of this brokered exchange.
//! Someone who does not know the secret can neither forge a probe nor turn a probe of
//! another exchange into one of this exchange.

use chatr_proto::LINK_SECRET_LEN;
use chatr_proto::udp::{PUNCH_TYPES, UDP_MAGIC};
use ring::hmac;
use uuid::Uuid;

/// Length in bytes of every hole-punching datagram.
pub const PROBE_LEN: usize = 70;

/// Length in bytes of an [`ExchangeId`].
pub const EXCHANGE_ID_LEN: usize = 8;

/// Length of the authenticated part (everything before the tag).
const SIGNED_LEN: usize = 38;
const TAG_LEN: usize = PROBE_LEN - SIGNED_LEN;

const OFF_TYPE: usize = 4;
const OFF_EXCHANGE: usize = 5;
const OFF_SENDER: usize = 13;
const OFF_TXID: usize = 29;
const OFF_FLAGS: usize = 37;

/// Label for deriving the exchange id from the link secret.
const LABEL_EXCHANGE_ID: &[u8] = b"chatr punch v1 exchange id";
/// Label for deriving the HMAC key from the link secret.
const LABEL_MAC_KEY: &[u8] = b"chatr punch v1 probe mac";

/// Flag bit in a Nominate: the initiator classified the nominated path as a LAN path.
pub(crate) const FLAG_LAN: u8 = 0x01;

/// The kinds of hole-punching datagram (the type byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProbeType {
    /// 0x10: "can you hear me on this path?" Both sides send it to every candidate.
    Probe,
    /// 0x11: answer to a Probe, echoing its transaction id, sent back to its source.
    ProbeAck,
    /// 0x12: initiator → responder: "this is the path we use".
    Nominate,
    /// 0x13: responder → initiator: answer to a Nominate, echoing its transaction id.
    NominateAck,
}

impl ProbeType {
    fn byte(self) -> u8 {
        match self {
            Self::Probe => 0x10,
            Self::ProbeAck => 0x11,
            Self::Nominate => 0x12,
            Self::NominateAck => 0x13,
        }
    }

    fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            0x10 => Some(Self::Probe),
            0x11 => Some(Self::ProbeAck),
            0x12 => Some(Self::Nominate),
            0x13 => Some(Self::NominateAck),
            _ => None,
        }
    }
}

/// Identifies one brokered exchange (one `link_secret`) in clear on the wire.
///
/// A client may punch several peers at once from one UDP socket; its demultiplexer reads
/// the id with [`exchange_id_of`] and hands the datagram to the [`super::Punch`] whose
/// [`super::Punch::exchange_id`] matches. The id is not a secret and proves nothing by
/// itself; the probe's tag does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExchangeId(pub [u8; EXCHANGE_ID_LEN]);

impl ExchangeId {
    /// Derives the id of the exchange that uses `link_secret`.
    pub fn from_secret(link_secret: &[u8; LINK_SECRET_LEN]) -> Self {
        let key = hmac::Key::new(hmac::HMAC_SHA256, link_secret);
        let tag = hmac::sign(&key, LABEL_EXCHANGE_ID);
        let mut id = [0u8; EXCHANGE_ID_LEN];
        // A SHA-256 tag is 32 bytes, so the first 8 always exist; zip never indexes.
        for (dst, src) in id.iter_mut().zip(tag.as_ref()) {
            *dst = *src;
        }
        Self(id)
    }

    /// The eight id bytes as they appear on the wire.
    pub fn as_bytes(&self) -> &[u8; EXCHANGE_ID_LEN] {
        &self.0
    }
}

impl std::fmt::Display for ExchangeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

/// Whether `datagram` is a hole-punching datagram (magic plus a type in 0x10–0x1F).
///
/// Cheap and unauthenticated: it only tells the socket demultiplexer "not QUIC, not
/// STUN, not the server's binding reply, give it to the punch layer".
pub fn is_probe(datagram: &[u8]) -> bool {
    datagram.starts_with(&UDP_MAGIC)
        && datagram
            .get(OFF_TYPE)
            .is_some_and(|kind| PUNCH_TYPES.contains(kind))
}

/// The exchange id a hole-punching datagram claims, for routing it to its [`super::Punch`].
///
/// `None` when the datagram is not a probe of the length this version defines. The
/// claim is checked later by the `Punch` (tag), so a forged id only costs one HMAC.
pub fn exchange_id_of(datagram: &[u8]) -> Option<ExchangeId> {
    if !is_probe(datagram) || datagram.len() != PROBE_LEN {
        return None;
    }
    let bytes = datagram.get(OFF_EXCHANGE..OFF_EXCHANGE + EXCHANGE_ID_LEN)?;
    let id: [u8; EXCHANGE_ID_LEN] = bytes.try_into().ok()?;
    Some(ExchangeId(id))
}

/// A probe after its tag was verified: every field is authentic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Probe {
    pub(crate) kind: ProbeType,
    pub(crate) sender: Uuid,
    pub(crate) txid: u64,
    pub(crate) flags: u8,
}

/// Why a datagram was not accepted as a probe of this exchange (kept for tracing/stats).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rejected {
    /// Not a probe, wrong length or an unknown type byte.
    Malformed,
    /// A probe of some other exchange.
    OtherExchange,
    /// The tag does not verify: forged, corrupted, or sealed with another secret.
    BadTag,
}

/// The keys of one exchange, derived from its `link_secret`.
pub(crate) struct ProbeKeys {
    exchange_id: ExchangeId,
    mac: hmac::Key,
}

impl std::fmt::Debug for ProbeKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("ProbeKeys")
            .field("exchange_id", &self.exchange_id)
            .finish_non_exhaustive()
    }
}

impl ProbeKeys {
    pub(crate) fn new(link_secret: &[u8; LINK_SECRET_LEN]) -> Self {
        let root = hmac::Key::new(hmac::HMAC_SHA256, link_secret);
        let mac_key = hmac::sign(&root, LABEL_MAC_KEY);
        Self {
            exchange_id: ExchangeId::from_secret(link_secret),
            mac: hmac::Key::new(hmac::HMAC_SHA256, mac_key.as_ref()),
        }
    }

    pub(crate) fn exchange_id(&self) -> ExchangeId {
        self.exchange_id
    }

    /// Builds the datagram for `probe`, sealed with this exchange's key.
    pub(crate) fn seal(&self, probe: &Probe) -> Vec<u8> {
        let mut out = Vec::with_capacity(PROBE_LEN);
        out.extend_from_slice(&UDP_MAGIC);
        out.push(probe.kind.byte());
        out.extend_from_slice(self.exchange_id.as_bytes());
        out.extend_from_slice(probe.sender.as_bytes());
        out.extend_from_slice(&probe.txid.to_be_bytes());
        out.push(probe.flags);
        let tag = hmac::sign(&self.mac, &out);
        out.extend_from_slice(tag.as_ref());
        debug_assert_eq!(out.len(), PROBE_LEN);
        out
    }

    /// Parses and authenticates `datagram`. Never panics on any input.
    pub(crate) fn open(&self, datagram: &[u8]) -> Result<Probe, Rejected> {
        let id = exchange_id_of(datagram).ok_or(Rejected::Malformed)?;
        let kind = datagram
            .get(OFF_TYPE)
            .copied()
            .and_then(ProbeType::from_byte)
            .ok_or(Rejected::Malformed)?;
        if id != self.exchange_id {
            return Err(Rejected::OtherExchange);
        }
        let (signed, tag) = datagram
            .split_at_checked(SIGNED_LEN)
            .ok_or(Rejected::Malformed)?;
        if tag.len() != TAG_LEN {
            return Err(Rejected::Malformed);
        }
        // Constant-time comparison inside ring.
        hmac::verify(&self.mac, signed, tag).map_err(|_| Rejected::BadTag)?;

        let sender: [u8; 16] = signed
            .get(OFF_SENDER..OFF_TXID)
            .and_then(|b| b.try_into().ok())
            .ok_or(Rejected::Malformed)?;
        let txid: [u8; 8] = signed
            .get(OFF_TXID..OFF_FLAGS)
            .and_then(|b| b.try_into().ok())
            .ok_or(Rejected::Malformed)?;
        let flags = signed.get(OFF_FLAGS).copied().ok_or(Rejected::Malformed)?;
        Ok(Probe {
            kind,
            sender: Uuid::from_bytes(sender),
            txid: u64::from_be_bytes(txid),
            flags,
        })
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SECRET: [u8; 32] = [7u8; 32];

    fn sender() -> Uuid {
        Uuid::from_bytes([0xAA; 16])
    }

    #[test]
    fn golden_layout() {
        let keys = ProbeKeys::new(&SECRET);
        let probe = Probe {
            kind: ProbeType::Nominate,
            sender: sender(),
            txid: 0x0102_0304_0506_0708,
            flags: FLAG_LAN,
        };
        let bytes = keys.seal(&probe);
        assert_eq!(bytes.len(), PROBE_LEN);

        // Exchange id and MAC key computed independently of the code under test.
        let root = hmac::Key::new(hmac::HMAC_SHA256, &SECRET);
        let id = hmac::sign(&root, b"chatr punch v1 exchange id");
        let mac_key = hmac::sign(&root, b"chatr punch v1 probe mac");

        let mut expected = vec![0x00, 0x43, 0x48, 0x52, 0x12];
        expected.extend_from_slice(&id.as_ref()[..8]);
        expected.extend_from_slice(&[0xAA; 16]);
        expected.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        expected.push(0x01);
        let tag = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, mac_key.as_ref()),
            &expected,
        );
        expected.extend_from_slice(tag.as_ref());
        assert_eq!(bytes, expected);

        assert_eq!(keys.open(&bytes), Ok(probe));
        assert!(is_probe(&bytes));
        assert_eq!(exchange_id_of(&bytes), Some(keys.exchange_id()));
    }

    /// The examples in docs/PROTOCOL.md §10, computed with an independent HMAC
    /// implementation (Python `hmac`).
    #[test]
    fn protocol_doc_examples() {
        let secret: [u8; 32] = std::array::from_fn(|i| i as u8);
        let keys = ProbeKeys::new(&secret);
        assert_eq!(keys.exchange_id().to_string(), "681fdafddab1268a");
        let sender = Uuid::from_bytes([0x11; 16]);
        let probe = keys.seal(&Probe {
            kind: ProbeType::Probe,
            sender,
            txid: 1,
            flags: 0,
        });
        assert_eq!(
            hex::encode(&probe),
            "0043485210681fdafddab1268a11111111111111111111111111111111\
             0000000000000001005ba3e79a3663d3095e9078e73b83b726cc65df7a37a5fd99a7665f7c70adf077"
        );
        let nominate = keys.seal(&Probe {
            kind: ProbeType::Nominate,
            sender,
            txid: 7,
            flags: FLAG_LAN,
        });
        assert_eq!(
            hex::encode(&nominate),
            "0043485212681fdafddab1268a11111111111111111111111111111111\
             00000000000000070164a2b627fd6aa5d5722ddf83048da0327ecc2a2b488bde72982d56e61c0ebc3c"
        );
    }

    #[test]
    fn type_bytes() {
        for (kind, byte) in [
            (ProbeType::Probe, 0x10),
            (ProbeType::ProbeAck, 0x11),
            (ProbeType::Nominate, 0x12),
            (ProbeType::NominateAck, 0x13),
        ] {
            assert_eq!(kind.byte(), byte);
            assert_eq!(ProbeType::from_byte(byte), Some(kind));
            assert!(PUNCH_TYPES.contains(&byte));
        }
        assert_eq!(ProbeType::from_byte(0x14), None);
        assert_eq!(ProbeType::from_byte(0x01), None);
    }

    #[test]
    fn exchange_id_depends_on_secret() {
        let a = ExchangeId::from_secret(&[1u8; 32]);
        let b = ExchangeId::from_secret(&[2u8; 32]);
        assert_ne!(a, b);
        assert_eq!(a, ExchangeId::from_secret(&[1u8; 32]));
        assert_eq!(a.to_string().len(), 16);
    }

    #[test]
    fn rejects_other_secret_and_tampering() {
        let keys = ProbeKeys::new(&SECRET);
        let other = ProbeKeys::new(&[8u8; 32]);
        let probe = Probe {
            kind: ProbeType::Probe,
            sender: sender(),
            txid: 9,
            flags: 0,
        };
        let bytes = other.seal(&probe);
        assert_eq!(keys.open(&bytes), Err(Rejected::OtherExchange));

        // Another exchange's probe relabelled with our exchange id: the tag fails.
        let mut relabelled = bytes.clone();
        relabelled[OFF_EXCHANGE..OFF_EXCHANGE + 8].copy_from_slice(keys.exchange_id().as_bytes());
        assert_eq!(keys.open(&relabelled), Err(Rejected::BadTag));

        // Flipping any single bit of a good probe (after the magic/type/id) breaks the tag.
        let good = keys.seal(&probe);
        for i in OFF_SENDER..PROBE_LEN {
            let mut bad = good.clone();
            bad[i] ^= 0x01;
            assert_eq!(keys.open(&bad), Err(Rejected::BadTag), "byte {i}");
        }
        // Turning a Probe into a ProbeAck breaks the tag too.
        let mut retyped = good.clone();
        retyped[OFF_TYPE] = 0x11;
        assert_eq!(keys.open(&retyped), Err(Rejected::BadTag));
    }

    #[test]
    fn rejects_malformed() {
        let keys = ProbeKeys::new(&SECRET);
        let good = keys.seal(&Probe {
            kind: ProbeType::ProbeAck,
            sender: sender(),
            txid: 1,
            flags: 0,
        });
        assert_eq!(keys.open(&good[..PROBE_LEN - 1]), Err(Rejected::Malformed));
        let mut long = good.clone();
        long.push(0);
        assert_eq!(keys.open(&long), Err(Rejected::Malformed));
        let mut unknown = good.clone();
        unknown[OFF_TYPE] = 0x1F;
        assert_eq!(keys.open(&unknown), Err(Rejected::Malformed));
        assert!(is_probe(&unknown), "0x1F is reserved for probes");
        let mut binding = good.clone();
        binding[OFF_TYPE] = 0x01;
        assert!(!is_probe(&binding));
        assert_eq!(exchange_id_of(&binding), None);
        assert!(!is_probe(&[]));
        assert!(!is_probe(&UDP_MAGIC));
        // A QUIC long header (bit 0x40 set) is never a probe.
        assert!(!is_probe(&[0xC0, b'C', b'H', b'R', 0x10]));
    }

    proptest! {
        #[test]
        fn open_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            let keys = ProbeKeys::new(&SECRET);
            let _ = keys.open(&bytes);
            let _ = exchange_id_of(&bytes);
            let _ = is_probe(&bytes);
        }

        #[test]
        fn roundtrip(kind in 0x10u8..=0x13, txid in any::<u64>(), flags in any::<u8>(), uuid in any::<[u8; 16]>()) {
            let keys = ProbeKeys::new(&SECRET);
            let probe = Probe {
                kind: ProbeType::from_byte(kind).unwrap(),
                sender: Uuid::from_bytes(uuid),
                txid,
                flags,
            };
            let bytes = keys.seal(&probe);
            prop_assert_eq!(bytes.len(), PROBE_LEN);
            prop_assert_eq!(keys.open(&bytes), Ok(probe));
        }
    }
}
