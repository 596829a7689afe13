//! Little helpers shared by the room encodings: a bounds-checked reader that tells a
//! frame cut short ([`WireError::Truncated`]) from bad content, and writers. All
//! integers are big-endian, as everywhere in Chatr.

use uuid::Uuid;

/// Why room bytes could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The bytes end inside a field.
    #[error("room data ends inside field {0}")]
    Truncated(&'static str),
    /// A length is over its limit (checked before anything is allocated).
    #[error("room field {field} has length {len}, over the limit of {max}")]
    TooLong {
        /// The field.
        field: &'static str,
        /// The length received.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A type or code byte this version does not know.
    #[error("room field {field} has unknown value {value}")]
    UnknownCode {
        /// The field.
        field: &'static str,
        /// The byte.
        value: u8,
    },
    /// A text field is not UTF-8.
    #[error("room field {0} is not valid UTF-8")]
    InvalidUtf8(&'static str),
    /// Bytes left over after a complete structure.
    #[error("{0} trailing bytes after a room record")]
    Trailing(usize),
    /// A key is not a valid ed25519 public key.
    #[error("room field {0} is not an ed25519 public key")]
    BadKey(&'static str),
}

/// A cursor over complete bytes.
pub(crate) struct Reader<'a>(pub(crate) &'a [u8]);

impl<'a> Reader<'a> {
    pub(crate) fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], WireError> {
        let (head, tail) = self
            .0
            .split_at_checked(n)
            .ok_or(WireError::Truncated(field))?;
        self.0 = tail;
        Ok(head)
    }

    pub(crate) fn array<const N: usize>(
        &mut self,
        field: &'static str,
    ) -> Result<[u8; N], WireError> {
        let (head, tail) = self
            .0
            .split_first_chunk::<N>()
            .ok_or(WireError::Truncated(field))?;
        self.0 = tail;
        Ok(*head)
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, WireError> {
        Ok(self.array::<1>(field)?[0])
    }

    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, WireError> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }

    pub(crate) fn u64(&mut self, field: &'static str) -> Result<u64, WireError> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }

    pub(crate) fn uuid(&mut self, field: &'static str) -> Result<Uuid, WireError> {
        Ok(Uuid::from_bytes(self.array(field)?))
    }

    /// `len-prefix ‖ UTF-8`, the prefix one byte (`short`) or two.
    pub(crate) fn text(
        &mut self,
        field: &'static str,
        max: usize,
        short: bool,
    ) -> Result<String, WireError> {
        let len = if short {
            usize::from(self.u8(field)?)
        } else {
            usize::from(self.u16(field)?)
        };
        if len > max {
            return Err(WireError::TooLong { field, len, max });
        }
        let bytes = self.take(len, field)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| WireError::InvalidUtf8(field))
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Longest prefix of `s` of at most `max` bytes ending on a char boundary.
pub(crate) fn clamp(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or_default()
}

/// Writes `len ‖ text` (cut to `max`), the prefix one byte (`short`) or two.
pub(crate) fn put_text(out: &mut Vec<u8>, s: &str, max: usize, short: bool) {
    let s = clamp(s, max);
    if short {
        out.push(u8::try_from(s.len()).unwrap_or(u8::MAX));
    } else {
        out.extend_from_slice(&u16::try_from(s.len()).unwrap_or(u16::MAX).to_be_bytes());
    }
    out.extend_from_slice(s.as_bytes());
}
