//! How much a peer may make us store: checked against the file header, before any byte of
//! content is written.
//!
//! A peer is an authenticated contact, but a contact's misbehaving (or compromised) client
//! must still not be able to fill the receiver's disk. The sender announces the size up front
//! (and the receiver enforces it exactly), so the file is refused at the header if it is larger
//! than the receiver's own limit, or than the free space of the destination file system minus
//! a reserve kept for everything else on the machine. A disk that fills up anyway while the
//! content arrives (someone else wrote to it) fails the write, and the partial file is removed.

use std::io;
use std::path::Path;

/// Free space left untouched on the destination file system by default: 64 MiB.
pub const DEFAULT_DISK_RESERVE: u64 = 64 * 1024 * 1024;

/// The receiver's limits for one incoming file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceiveLimits {
    /// Largest file accepted, in bytes; `None` accepts any size that fits on the disk.
    pub max_size: Option<u64>,
    /// Bytes of free space a received file must leave on the destination file system.
    pub disk_reserve: u64,
}

impl Default for ReceiveLimits {
    fn default() -> Self {
        Self {
            max_size: None,
            disk_reserve: DEFAULT_DISK_RESERVE,
        }
    }
}

/// Why a file was refused before its content was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LimitExceeded {
    /// Larger than [`ReceiveLimits::max_size`].
    #[error(
        "the file is {size} bytes, more than the receiver accepts ({limit} bytes; `chatr receive --max-size` raises it)"
    )]
    TooLarge {
        /// Announced size.
        size: u64,
        /// The receiver's limit.
        limit: u64,
    },
    /// Would not fit on the destination file system with the reserve left free.
    #[error(
        "the file is {size} bytes, but the receiver's disk has only {available} bytes free ({reserve} of them kept in reserve); free some space and send again"
    )]
    NoSpace {
        /// Announced size.
        size: u64,
        /// Free bytes available to us on the destination file system.
        available: u64,
        /// The reserve that must stay free.
        reserve: u64,
    },
}

impl ReceiveLimits {
    /// Checks an announced `size` against these limits, given `available` free bytes on the
    /// destination (`None` when the platform cannot tell, which skips the disk check).
    pub fn check(&self, size: u64, available: Option<u64>) -> Result<(), LimitExceeded> {
        if let Some(limit) = self.max_size.filter(|limit| size > *limit) {
            return Err(LimitExceeded::TooLarge { size, limit });
        }
        if let Some(available) = available
            && size > available.saturating_sub(self.disk_reserve)
        {
            return Err(LimitExceeded::NoSpace {
                size,
                available,
                reserve: self.disk_reserve,
            });
        }
        Ok(())
    }
}

/// Bytes an unprivileged writer may still use on the file system holding `dir`.
#[cfg(unix)]
pub(crate) fn available_space(dir: &Path) -> io::Result<Option<u64>> {
    let stats = rustix::fs::statvfs(dir)?;
    Ok(Some(stats.f_bavail.saturating_mul(stats.f_frsize)))
}

/// Other platforms: unknown, so only the size limit applies.
#[cfg(not(unix))]
pub(crate) fn available_space(_dir: &Path) -> io::Result<Option<u64>> {
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_limits_only_check_the_disk() {
        let limits = ReceiveLimits::default();
        assert_eq!(limits.check(u64::MAX / 2, None), Ok(()));
        assert_eq!(
            limits.check(1000, Some(DEFAULT_DISK_RESERVE + 999)),
            Err(LimitExceeded::NoSpace {
                size: 1000,
                available: DEFAULT_DISK_RESERVE + 999,
                reserve: DEFAULT_DISK_RESERVE,
            })
        );
        assert_eq!(
            limits.check(1000, Some(DEFAULT_DISK_RESERVE + 1000)),
            Ok(())
        );
        // Less free space than the reserve: nothing fits, not even an empty-ish file.
        assert!(limits.check(1, Some(10)).is_err());
        assert_eq!(limits.check(0, Some(10)), Ok(()));
    }

    #[test]
    fn max_size_is_inclusive_and_checked_first() {
        let limits = ReceiveLimits {
            max_size: Some(100),
            disk_reserve: 0,
        };
        assert_eq!(limits.check(100, Some(100)), Ok(()));
        assert_eq!(
            limits.check(101, Some(0)),
            Err(LimitExceeded::TooLarge {
                size: 101,
                limit: 100
            })
        );
    }

    #[test]
    fn messages_say_what_to_do() {
        let too_large = LimitExceeded::TooLarge { size: 5, limit: 4 }.to_string();
        assert!(too_large.contains("--max-size"), "{too_large}");
        let no_space = LimitExceeded::NoSpace {
            size: 5,
            available: 4,
            reserve: 1,
        }
        .to_string();
        assert!(no_space.contains("free some space"), "{no_space}");
    }

    #[cfg(unix)]
    #[test]
    fn the_temp_dir_reports_some_free_space() {
        let dir = std::env::temp_dir();
        let available = available_space(&dir).unwrap();
        assert!(available.is_some_and(|bytes| bytes > 0));
        assert!(available_space(Path::new("/no/such/dir/for/chatr")).is_err());
    }
}
