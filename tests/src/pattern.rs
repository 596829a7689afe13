//! Test data that cannot hide a corruption: pseudo-random bytes (xorshift), which no
//! zero run or compression on the path can shortcut, and their SHA-256.

/// Xorshift64 words, from a non-zero state.
#[derive(Debug, Clone)]
pub struct Xorshift(u64);

impl Xorshift {
    /// A generator starting from `seed` (its low bit is forced on: zero is a fixed point).
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }
}

impl Iterator for Xorshift {
    type Item = u64;

    fn next(&mut self) -> Option<u64> {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        Some(x)
    }
}

/// `len` pseudo-random bytes from `seed`.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut out: Vec<u8> = Xorshift::new(seed)
        .take(len.div_ceil(8))
        .flat_map(u64::to_le_bytes)
        .collect();
    out.truncate(len);
    out
}

/// The SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_are_deterministic_and_differ_by_seed() {
        assert_eq!(pattern(1001, 7), pattern(1001, 7));
        assert_ne!(pattern(64, 7), pattern(64, 9));
        assert_eq!(pattern(13, 7).len(), 13);
    }
}
