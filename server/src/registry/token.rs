//! Single-use registration tokens for the `token` registration policy.
//!
//! An admin issues a token (`chatr-server token issue`); a client presents it
//! once in the `Chatr-Registration-Token` header of its `PUT`. Only the
//! SHA-256 of a token is stored, so a copy of the database does not hand out
//! usable tokens.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::{SecureRandom, SystemRandom};

/// Random bytes in a token: 256 bits, not guessable.
const TOKEN_BYTES: usize = 32;

/// The stored form of a token: SHA-256 of its text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash(pub(crate) [u8; 32]);

impl TokenHash {
    /// Hashes the token text as presented by a client.
    pub fn of(token: &str) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(digest.as_ref());
        Self(out)
    }
}

/// A freshly generated token: its text (shown once to the admin) and hash.
pub(crate) fn generate() -> Result<(String, TokenHash), ring::error::Unspecified> {
    let mut bytes = [0u8; TOKEN_BYTES];
    SystemRandom::new().fill(&mut bytes)?;
    let text = URL_SAFE_NO_PAD.encode(bytes);
    let hash = TokenHash::of(&text);
    Ok((text, hash))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_distinct_and_hash_matches() {
        let (a, ha) = generate().unwrap();
        let (b, hb) = generate().unwrap();
        assert_ne!(a, b);
        assert_ne!(ha, hb);
        assert_eq!(TokenHash::of(&a), ha);
        assert_eq!(a.len(), 43);
    }
}
