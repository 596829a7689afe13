//! Which revision of the peer-link protocol two peers speak, agreed through TLS ALPN.
//!
//! Both sides offer every revision they know, newest first, and the responder (the QUIC
//! server) picks the first of its own list that the initiator offered, so two peers always
//! land on the newest revision both know, within the handshake and at no extra round trip.
//! A peer that only knows `chatr/1` offers only that and gets it.
//!
//! | ALPN | Revision | What changes |
//! |---|---|---|
//! | `chatr/1` | [`LinkVersion::V1`] | the first link protocol (PROTOCOL.md §11) |
//! | `chatr/2` | [`LinkVersion::V2`] | pipe `END`/`ACK` carry BLAKE3 instead of SHA-256 |
//! | `chatr/3` | [`LinkVersion::V3`] | pipe `END`/`ACK` carry XXH3-128 instead of BLAKE3 |

/// A revision of the peer-link protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum LinkVersion {
    /// ALPN `chatr/1`.
    V1,
    /// ALPN `chatr/2`: the pipe's end-to-end check is BLAKE3.
    V2,
    /// ALPN `chatr/3`: the pipe's end-to-end check is XXH3-128.
    V3,
}

impl LinkVersion {
    /// The newest revision this build speaks.
    pub const NEWEST: LinkVersion = LinkVersion::V3;

    /// Every revision this build speaks, newest first (the order a side offers them in).
    const KNOWN: [LinkVersion; 3] = [LinkVersion::V3, LinkVersion::V2, LinkVersion::V1];

    /// The ALPN protocol identifier of this revision, as text.
    fn name(self) -> &'static str {
        match self {
            LinkVersion::V1 => "chatr/1",
            LinkVersion::V2 => "chatr/2",
            LinkVersion::V3 => "chatr/3",
        }
    }

    /// The ALPN protocol identifier of this revision.
    pub fn alpn(self) -> &'static [u8] {
        self.name().as_bytes()
    }

    /// The revision an ALPN identifier names, if this build knows it.
    pub fn from_alpn(alpn: &[u8]) -> Option<Self> {
        Self::KNOWN.into_iter().find(|v| v.alpn() == alpn)
    }

    /// The ALPN list a side offers: every revision up to `newest`, newest first.
    pub(crate) fn offered(newest: LinkVersion) -> Vec<Vec<u8>> {
        Self::KNOWN
            .into_iter()
            .filter(|v| *v <= newest)
            .map(|v| v.alpn().to_vec())
            .collect()
    }

    /// The revision a finished handshake agreed on. The TLS configs of both roles require
    /// ALPN, so a handshake without it never completes; `V1` is the safe reading anyway.
    pub(crate) fn of(connection: &quinn::Connection) -> Self {
        connection
            .handshake_data()
            .and_then(|data| data.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
            .and_then(|data| data.protocol)
            .and_then(|alpn| Self::from_alpn(&alpn))
            .unwrap_or(LinkVersion::V1)
    }
}

impl std::fmt::Display for LinkVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alpn_round_trips_and_offers_newest_first() {
        for v in [LinkVersion::V1, LinkVersion::V2, LinkVersion::V3] {
            assert_eq!(LinkVersion::from_alpn(v.alpn()), Some(v));
        }
        assert_eq!(LinkVersion::from_alpn(b"chatr/4"), None);
        assert_eq!(LinkVersion::from_alpn(b"chatr/"), None);
        assert_eq!(
            LinkVersion::offered(LinkVersion::V3),
            vec![
                b"chatr/3".to_vec(),
                b"chatr/2".to_vec(),
                b"chatr/1".to_vec()
            ]
        );
        assert_eq!(
            LinkVersion::offered(LinkVersion::V2),
            vec![b"chatr/2".to_vec(), b"chatr/1".to_vec()]
        );
        assert_eq!(
            LinkVersion::offered(LinkVersion::V1),
            vec![b"chatr/1".to_vec()]
        );
    }
}
