//! Benchmark identities: UUIDs and ed25519 keys derived from a seed and an index,
//! so the load generator and the server process agree without a registration
//! round trip. The server side gets the public halves through a small file
//! (16-byte UUID ‖ 32-byte key per record).

use std::path::Path;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use uuid::Uuid;

use crate::bench::BenchError;

/// One benchmark client identity.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Its client id.
    pub uuid: Uuid,
    /// Its signing key.
    pub key: SigningKey,
}

const RECORD: usize = 16 + 32;

fn digest(label: &[u8], seed: u64, index: u64) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"chatr-bench ");
    ctx.update(label);
    ctx.update(&seed.to_be_bytes());
    ctx.update(&index.to_be_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

impl Identity {
    /// The `index`-th identity of `seed`.
    pub fn derive(seed: u64, index: u64) -> Self {
        let id = digest(b"uuid", seed, index);
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&id[..16]);
        Self {
            uuid: uuid::Builder::from_random_bytes(bytes).into_uuid(),
            key: SigningKey::from_bytes(&digest(b"key", seed, index)),
        }
    }

    /// `count` identities of `seed`, derived on all cores.
    pub fn derive_many(seed: u64, count: usize) -> Vec<Identity> {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let chunk = count.div_ceil(threads).max(1);
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..count)
                .step_by(chunk)
                .map(|start| {
                    let end = (start + chunk).min(count);
                    scope.spawn(move || {
                        (start..end)
                            .map(|i| Identity::derive(seed, i as u64))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap_or_default())
                .collect()
        })
    }

    /// The PacketConnect signature (v2: bound to this TLS connection's exporter).
    pub fn sign_v2(&self, exporter: &[u8; 32]) -> Vec<u8> {
        let message = chatr_proto::channel_binding_message(&self.uuid, exporter);
        self.key.sign(&message).to_bytes().to_vec()
    }
}

/// Writes the public halves for the server process.
pub fn write_public(path: &Path, identities: &[Identity]) -> Result<(), BenchError> {
    let mut out = Vec::with_capacity(identities.len() * RECORD);
    for id in identities {
        out.extend_from_slice(id.uuid.as_bytes());
        out.extend_from_slice(id.key.verifying_key().as_bytes());
    }
    std::fs::write(path, out).map_err(|e| BenchError::io(format!("write {}", path.display()), e))
}

/// Reads what [`write_public`] wrote.
pub fn read_public(path: &Path) -> Result<Vec<(Uuid, VerifyingKey)>, BenchError> {
    let bytes =
        std::fs::read(path).map_err(|e| BenchError::io(format!("read {}", path.display()), e))?;
    let bad = |reason: &str| BenchError::Identities {
        path: path.to_path_buf(),
        reason: reason.into(),
    };
    if bytes.len() % RECORD != 0 {
        return Err(bad("length is not a multiple of 48 bytes"));
    }
    bytes
        .chunks_exact(RECORD)
        .map(|record| {
            let (uuid, key) = record.split_at(16);
            let uuid = Uuid::from_slice(uuid).map_err(|_| bad("bad UUID"))?;
            let key: [u8; 32] = key.try_into().map_err(|_| bad("bad key length"))?;
            let key = VerifyingKey::from_bytes(&key).map_err(|_| bad("bad public key"))?;
            Ok((uuid, key))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derivation_is_deterministic_and_distinct() {
        let a = Identity::derive(1, 5);
        let b = Identity::derive(1, 5);
        let c = Identity::derive(1, 6);
        assert_eq!(a.uuid, b.uuid);
        assert_eq!(a.key.to_bytes(), b.key.to_bytes());
        assert_ne!(a.uuid, c.uuid);
        let many = Identity::derive_many(1, 7);
        assert_eq!(many.len(), 7);
        assert_eq!(many[5].uuid, a.uuid);
    }

    #[test]
    fn public_file_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ids");
        let ids = Identity::derive_many(9, 3);
        write_public(&path, &ids).unwrap();
        let back = read_public(&path).unwrap();
        assert_eq!(back.len(), 3);
        assert_eq!(back[2].0, ids[2].uuid);
        assert_eq!(back[2].1, ids[2].key.verifying_key());
    }
}
