//! What a client signs to log in (the `Signature` of [`crate::PacketConnect`]).
//!
//! Version 1 (the spec) signs the 16 UUID bytes, which a TLS-terminating man in the
//! middle could replay. Version 2 binds the signature to this TLS connection: both ends
//! export 32 bytes of keying material (RFC 5705 / RFC 8446 §7.5) with
//! [`CHANNEL_BINDING_EXPORTER_LABEL`] and no context, and the client signs
//! [`channel_binding_message`]. A replay on another TLS connection has a different
//! exporter value and fails to verify.

use uuid::Uuid;

/// `PacketConnect.version` of a client speaking the spec as written.
pub const VERSION_SPEC: u32 = 1;

/// `PacketConnect.version` of a client speaking the version-2 extensions (ports,
/// channel-bound login, UDP token, ClientInfo extensions).
pub const VERSION_2: u32 = 2;

/// `PacketConnect.version` of a client that also speaks version 3: the relay
/// (packets 0x9–0xA, relay datagrams), the authenticated UDP binding, and the
/// session parameters in `PacketConnected`. Signs the same message as version 2.
pub const VERSION_3: u32 = 3;

/// The highest version this crate speaks.
pub const VERSION_CURRENT: u32 = VERSION_3;

/// TLS exporter label of the key that authenticates a version-3 session's UDP binding
/// requests (`udp::BindingRequestAuth`): 32 bytes, no context, exported by both ends
/// of the Connect TLS session, never sent.
pub const UDP_BINDING_EXPORTER_LABEL: &[u8] = b"EXPORTER-chatr-udp-binding-v3";

/// TLS exporter label for the v2 login.
pub const CHANNEL_BINDING_EXPORTER_LABEL: &[u8] = b"EXPORTER-chatr-connect-v2";

/// Length of the exported keying material, in bytes.
pub const CHANNEL_BINDING_EXPORTER_LEN: usize = 32;

/// Domain-separation prefix of the v2 signed message (NUL-terminated, 17 bytes).
pub const CHANNEL_BINDING_CONTEXT: &[u8; 17] = b"chatr connect v2\0";

/// Length of [`channel_binding_message`]: 17 + 16 + 32 bytes.
pub const CHANNEL_BINDING_MESSAGE_LEN: usize =
    CHANNEL_BINDING_CONTEXT.len() + 16 + CHANNEL_BINDING_EXPORTER_LEN;

/// The v2 signed message: `b"chatr connect v2\0"` ‖ UUID (16 bytes) ‖ exporter (32 bytes).
pub fn channel_binding_message(
    uuid: &Uuid,
    exporter: &[u8; CHANNEL_BINDING_EXPORTER_LEN],
) -> [u8; CHANNEL_BINDING_MESSAGE_LEN] {
    let mut msg = [0u8; CHANNEL_BINDING_MESSAGE_LEN];
    let (context, rest) = msg.split_at_mut(CHANNEL_BINDING_CONTEXT.len());
    let (id, exp) = rest.split_at_mut(16);
    context.copy_from_slice(CHANNEL_BINDING_CONTEXT);
    id.copy_from_slice(uuid.as_bytes());
    exp.copy_from_slice(exporter);
    msg
}

/// The v1 (spec) signed message: the 16 UUID bytes in RFC 4122 order.
pub fn v1_signed_message(uuid: &Uuid) -> [u8; 16] {
    *uuid.as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_layout() {
        let uuid = Uuid::from_bytes([0x11; 16]);
        let msg = channel_binding_message(&uuid, &[0x22; 32]);
        let mut expected = b"chatr connect v2\0".to_vec();
        expected.extend_from_slice(&[0x11; 16]);
        expected.extend_from_slice(&[0x22; 32]);
        assert_eq!(msg.to_vec(), expected);
        assert_eq!(msg.len(), 65);
        assert_eq!(v1_signed_message(&uuid), [0x11; 16]);
    }
}
