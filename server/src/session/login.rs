//! Verifying PacketConnect: which signature is accepted, and what layout it implies.
//!
//! Version ≥ 2 clients sign `channel_binding_message(uuid, exporter)`, where
//! the exporter value is unique to this TLS connection, so a captured signature
//! is useless on any other connection. Version-1 (spec) clients sign the UUID
//! bytes; that is accepted unless the server requires channel binding. A client
//! announcing version ≥ 2 whose signature only covers the UUID is treated as a
//! spec client (the spec says the server ignores the version), so it is never
//! sent layouts it may not parse.

use chatr_proto::{
    PacketConnect, VERSION_2, VERSION_3, channel_binding_message, v1_signed_message,
};
use ed25519_dalek::{Signature, VerifyingKey};

use super::action::Layout;

/// Why a PacketConnect was refused ("Failed to verify!" on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LoginRefusal {
    /// No key is registered for the UUID.
    UnknownUuid,
    /// The signature bytes are not a 64-byte ed25519 signature.
    MalformedSignature,
    /// The signature does not verify for any accepted message.
    BadSignature,
}

/// Checks `connect` against the registered `key` (if any).
///
/// `exporter` is this TLS connection's keying material for the channel
/// binding label, `None` when unavailable (then only v1 can verify).
pub(crate) fn verify(
    connect: &PacketConnect,
    key: Option<&VerifyingKey>,
    exporter: Option<&[u8; 32]>,
    require_channel_binding: bool,
) -> Result<Layout, LoginRefusal> {
    let key = key.ok_or(LoginRefusal::UnknownUuid)?;
    let signature =
        Signature::from_slice(&connect.signature).map_err(|_| LoginRefusal::MalformedSignature)?;
    if connect.version >= VERSION_2
        && let Some(exporter) = exporter
    {
        let message = channel_binding_message(&connect.uuid, exporter);
        if key.verify_strict(&message, &signature).is_ok() {
            return Ok(if connect.version >= VERSION_3 {
                Layout::Version3
            } else {
                Layout::Extended
            });
        }
    }
    if require_channel_binding {
        return Err(LoginRefusal::BadSignature);
    }
    key.verify_strict(&v1_signed_message(&connect.uuid), &signature)
        .map(|()| Layout::Spec)
        .map_err(|_| LoginRefusal::BadSignature)
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::{Signer, SigningKey};
    use uuid::Uuid;

    use super::*;

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[7u8; 32])
    }

    fn connect(version: u32, signature: Vec<u8>) -> PacketConnect {
        PacketConnect {
            version,
            uuid: Uuid::from_bytes([1; 16]),
            signature,
        }
    }

    #[test]
    fn v2_binds_to_the_exporter() {
        let sk = key();
        let uuid = Uuid::from_bytes([1; 16]);
        let sig = sk.sign(&channel_binding_message(&uuid, &[9; 32]));
        let c = connect(2, sig.to_bytes().to_vec());
        let vk = sk.verifying_key();
        assert_eq!(
            verify(&c, Some(&vk), Some(&[9; 32]), true),
            Ok(Layout::Extended)
        );
        // Same signature on another TLS connection (other exporter): refused.
        assert_eq!(
            verify(&c, Some(&vk), Some(&[8; 32]), false),
            Err(LoginRefusal::BadSignature)
        );
    }

    #[test]
    fn v3_signs_like_v2_and_gets_the_version3_layout() {
        let sk = key();
        let uuid = Uuid::from_bytes([1; 16]);
        let sig = sk.sign(&channel_binding_message(&uuid, &[9; 32]));
        let vk = sk.verifying_key();
        for version in [3, 4, u32::MAX] {
            let c = connect(version, sig.to_bytes().to_vec());
            assert_eq!(
                verify(&c, Some(&vk), Some(&[9; 32]), true),
                Ok(Layout::Version3),
                "version {version}"
            );
        }
        // A version-3 announcement with only a UUID signature is a spec client.
        let spec = sk.sign(uuid.as_bytes()).to_bytes().to_vec();
        assert_eq!(
            verify(&connect(3, spec), Some(&vk), Some(&[9; 32]), false),
            Ok(Layout::Spec)
        );
    }

    #[test]
    fn v1_accepted_unless_binding_required() {
        let sk = key();
        let uuid = Uuid::from_bytes([1; 16]);
        let sig = sk.sign(uuid.as_bytes()).to_bytes().to_vec();
        let vk = sk.verifying_key();
        assert_eq!(
            verify(&connect(1, sig.clone()), Some(&vk), Some(&[9; 32]), false),
            Ok(Layout::Spec)
        );
        // A spec client may send any version: an unbound signature means spec layout.
        assert_eq!(
            verify(&connect(2, sig.clone()), Some(&vk), Some(&[9; 32]), false),
            Ok(Layout::Spec)
        );
        assert_eq!(
            verify(&connect(1, sig), Some(&vk), Some(&[9; 32]), true),
            Err(LoginRefusal::BadSignature)
        );
    }

    #[test]
    fn unknown_and_malformed() {
        let vk = key().verifying_key();
        assert_eq!(
            verify(&connect(1, vec![0; 64]), None, None, false),
            Err(LoginRefusal::UnknownUuid)
        );
        assert_eq!(
            verify(&connect(1, vec![0; 10]), Some(&vk), None, false),
            Err(LoginRefusal::MalformedSignature)
        );
        assert_eq!(
            verify(&connect(1, vec![0; 64]), Some(&vk), None, false),
            Err(LoginRefusal::BadSignature)
        );
    }
}
